"""Child process for the download-kill test: ``python -m tests.reliability.download_child
ENDPOINT MODELS_DIR MANIFEST_JSON CHUNK SIDE_FILE``. Downloads the
one build with the real Downloader (``started`` goes to SIDE_FILE when the
transfer begins), then writes ``done <received bytes>`` (the parent SIGKILLs it
at random moments first)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from app.core.downloads import Downloader, DownloadProgress, Phase
    from app.core.manifest import parse_manifest

    endpoint, models_dir, manifest, chunk, side = argv
    out = open(side, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    started: list[bool] = []

    def on_progress(p: DownloadProgress) -> None:
        if p.phase is Phase.DOWNLOADING and not started:  # resolved: the file transfer begins
            started.append(True)
            out.write("started\n")
            out.flush()

    build = parse_manifest(json.loads(Path(manifest).read_text(encoding="utf-8"))).builds[0]
    downloader = Downloader(
        Path(models_dir),
        endpoint=endpoint,
        chunk_size=int(chunk),
        backoff_base_s=0.01,
        queue_state=Path(models_dir) / "downloads.json",
        progress=on_progress,
    )
    downloader.download(build)
    out.write(f"done {downloader.stats.bytes_received} {downloader.stats.bytes_rehashed}\n")
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
