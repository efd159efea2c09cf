"""Benchmark: our resumable, hashing downloader vs plain urllib from the same loopback server.

Run: ``python -m bench.download [--size-mb 1024] [--repeat 2]``. A generated file (deterministic
random bytes) is served by ``tests/hub_server.FakeHub`` on 127.0.0.1 from a temp dir that is
deleted afterwards. Prints:

- throughput of ``Downloader.download`` (Range transfer + streaming sha256 + verify + rename)
  relative to ``urllib.request`` copying the same URL to a file without hashing (target >= 0.9);
- CPU time spent hashing (and the process CPU of each run);
- bytes re-fetched after the server cuts the connection half way (target <= 1 % of the file).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from app.core.downloads import Downloader
from app.core.manifest import Build, parse_manifest
from tests.hub_server import FakeHub, HubFile

REPO = "bench/Scout-Bench-GGUF"
NAME = "bench-1gb.gguf"


def _generate(path: Path, size: int) -> str:
    rng = random.Random(1234)
    h = hashlib.sha256()
    block = 16 << 20
    with open(path, "wb") as fh:
        left = size
        while left:
            data = rng.randbytes(min(block, left))
            fh.write(data)
            h.update(data)
            left -= len(data)
    return h.hexdigest()


def _build(size: int, sha: str) -> Build:
    return parse_manifest(
        {
            "schema_version": 1,
            "builds": [
                {
                    "id": "bench",
                    "display_name": "bench",
                    "repo_id": REPO,
                    "revision": "main",
                    "revision_note": "benchmark",
                    "quantization": "Q4_K_M",
                    "bits_per_weight": 4.8,
                    "approx_size_bytes": size,
                    "files": [{"path": NAME, "size": size, "sha256": sha}],
                    "projector": None,
                    "gated": False,
                    "licence": {"name": "n/a", "url": "n/a", "note": "n/a"},
                    "recommended": {"context": 8192, "temperature": 0.6, "top_p": 0.9, "min_p": 0.01},
                    "who_for": "benchmark",
                }
            ],
        }
    ).builds[0]


def _urllib(url: str, dest: Path) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    with urllib.request.urlopen(url) as resp, open(dest, "wb") as fh:
        shutil.copyfileobj(resp, fh, 1 << 20)
    return time.perf_counter() - t0, time.process_time() - c0


def _ours(
    hub: FakeHub, models: Path, build: Build, threaded: bool, fsync: bool = True
) -> tuple[float, float, Downloader]:
    shutil.rmtree(models, ignore_errors=True)
    downloader = Downloader(
        models, endpoint=hub.url, threaded_hash=threaded, backoff_base_s=0.01, fsync=fsync
    )
    c0, t0 = time.process_time(), time.perf_counter()
    downloader.download(build)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, downloader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    size = args.size_mb << 20

    with tempfile.TemporaryDirectory(prefix="scout-bench-dl-") as tmp:
        root = Path(tmp)
        source = root / NAME
        print(f"generating {size / 1e9:.2f} GB test file…")
        sha = _generate(source, size)
        build = _build(size, sha)
        hub = FakeHub()
        hub.add_repo(REPO, {NAME: HubFile(disk_path=source, sha256_hex=sha)})
        with hub:
            url = f"{hub.url}/{REPO}/resolve/main/{NAME}"
            models = root / "models"
            base_walls, base_cpus, our_walls, our_cpus, hash_cpus, st_walls, nosync_walls = (
                [] for _ in range(7)
            )
            for _ in range(args.repeat):
                dest = root / "urllib.out"
                wall, cpu = _urllib(url, dest)
                dest.unlink()
                base_walls.append(wall)
                base_cpus.append(cpu)
                wall, cpu, dl = _ours(hub, models, build, threaded=True)
                our_walls.append(wall)
                our_cpus.append(cpu)
                hash_cpus.append(dl.stats.hash_cpu_s)
                wall, _cpu, _dl = _ours(hub, models, build, threaded=False)
                st_walls.append(wall)
                wall, _cpu, _dl = _ours(hub, models, build, threaded=True, fsync=False)
                nosync_walls.append(wall)

            # interruption: the server cuts the connection half way through
            hub.drop_connection(NAME, at=size // 2)
            _wall, _cpu, dl = _ours(hub, models, build, threaded=True)
            refetched = dl.stats.bytes_received - size
            ranges = hub.ranges_seen(NAME)[-2:]
            shutil.rmtree(models, ignore_errors=True)

    base, ours, single, nosync = min(base_walls), min(our_walls), min(st_walls), min(nosync_walls)
    gb = size / 1e9
    print(f"file: {gb:.2f} GB, best of {args.repeat} runs, loopback, {os.cpu_count()} CPUs")
    print(f"urllib (no hash):            {gb / base:6.2f} GB/s  cpu {statistics.median(base_cpus):.2f} s")
    print(f"ours (hash thread):          {gb / ours:6.2f} GB/s  cpu {statistics.median(our_cpus):.2f} s")
    print(f"ours (hash inline):          {gb / single:6.2f} GB/s")
    print(f"ours (hash thread, no fsync):{gb / nosync:6.2f} GB/s")
    print(f"throughput ratio ours/urllib: {base / ours:.2f}  (target >= 0.9)")
    print(f"throughput ratio ours-without-fsync/urllib (same durability as urllib): {base / nosync:.2f}")
    print(f"throughput ratio inline-hash/urllib: {base / single:.2f}")
    print(
        f"sha256 CPU: {statistics.median(hash_cpus):.2f} s per GB-file "
        f"({gb / statistics.median(hash_cpus):.2f} GB/s of hashing)"
    )
    print(
        f"interruption at 50 %: re-fetched {refetched} bytes = {refetched / size:.4%} of the file "
        f"(target <= 1 %); ranges seen {ranges}"
    )


if __name__ == "__main__":
    main()
