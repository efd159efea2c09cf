"""Soak test: repeated chat turns on the tiny model through the real app (window offscreen).

``python -m bench.soak --minutes 60`` (default 2). Reports RSS after warm-up vs at the end (target:
growth ≤ 5 %) and GUI stalls measured by a 10 ms heartbeat timer (target: none > 100 ms). Exit code 1
when a target is missed. Conversations rotate every 20 turns so context never fills.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import sys
import tempfile
import threading
import time
import traceback
import tracemalloc
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["HF_HUB_OFFLINE"] = "1"


class StallTracer:
    """Samples the GUI thread's Python stack while the heartbeat is late (a poor man's profiler
    that only looks at stalls). Started on the GUI thread; ``beat()`` from the heartbeat."""

    def __init__(self, threshold_ms: float = 40.0, interval_s: float = 0.005) -> None:
        self._gui = threading.get_ident()
        self._threshold_s = threshold_ms / 1000
        self._interval_s = interval_s
        self._last = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-tracer", daemon=True)
        self.samples: collections.Counter[str] = collections.Counter()  # innermost app frames
        self.stacks: dict[str, str] = {}

    def start(self) -> None:
        self._last = time.perf_counter()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def beat(self) -> None:
        self._last = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            if time.perf_counter() - self._last < self._threshold_s:
                continue
            frame = sys._current_frames().get(self._gui)
            if frame is None:
                continue
            stack = traceback.extract_stack(frame)
            ours = [f for f in stack if "/app/" in f.filename or "/bench/" in f.filename]
            key = " < ".join(f"{Path(f.filename).stem}.{f.name}:{f.lineno}" for f in reversed(ours[-3:]))
            self.samples[key or "(Qt, outside Python)"] += 1
            self.stacks.setdefault(key, "".join(traceback.format_list(stack[-14:])))

    def report(self, top: int = 8) -> str:
        total = sum(self.samples.values())
        if not total:
            return "stall tracer: no samples over the threshold"
        lines = [f"stall tracer: {total} samples of {self._interval_s * 1000:.0f} ms while the GUI was late"]
        for key, n in self.samples.most_common(top):
            lines.append(f"  {n:5d}  {key}")
        return "\n".join(lines)


class GapStats:
    """Heartbeat gaps in constant memory: count, worst, how many exceeded the stall limit, and for
    the late ones whether the GUI thread was running (our work, or Qt's) or waiting for a CPU
    (the scheduler: other threads had the cores), from the kernel's per-thread ``schedstat``.

    (The first one-hour soak kept every gap in a list: 303,501 floats, ~9.4 MiB of the +12 MiB RSS
    it then reported as the app's growth.)"""

    LATE_MS = 50.0

    def __init__(self, limit_ms: float = 100.0) -> None:
        self.limit_ms = limit_ms
        self.count = 0
        self.worst = 0.0
        self.over = 0
        self.late = 0  # gaps > LATE_MS
        self.late_ran_ms = 0.0
        self.late_waited_ms = 0.0
        self.over_detail: list[tuple[float, float, float]] = []  # (gap, ran, waited) of the worst

    def add(self, gap_ms: float, ran_ms: float = 0.0, waited_ms: float = 0.0) -> None:
        self.count += 1
        self.worst = max(self.worst, gap_ms)
        if gap_ms > self.LATE_MS:
            self.late += 1
            self.late_ran_ms += ran_ms
            self.late_waited_ms += waited_ms
        if gap_ms > self.limit_ms:
            self.over += 1
            self.over_detail = sorted([*self.over_detail, (gap_ms, ran_ms, waited_ms)], reverse=True)[:10]

    def report(self) -> str:
        if not self.late:
            return f"no gap > {self.LATE_MS:.0f} ms"
        total = self.late_ran_ms + self.late_waited_ms
        share = self.late_waited_ms / total * 100 if total else 0.0
        lines = [
            f"{self.late} gaps > {self.LATE_MS:.0f} ms: the GUI thread ran {self.late_ran_ms:.0f} ms "
            f"and waited {self.late_waited_ms:.0f} ms for a CPU during them ({share:.0f} % waiting)"
        ]
        for gap, ran, waited in self.over_detail:
            lines.append(f"  gap {gap:.1f} ms: ran {ran:.1f} ms, waited {waited:.1f} ms for a CPU")
        return "\n".join(lines)


def thread_cpu_ns() -> tuple[int, int]:
    """(time on a CPU, time waiting on a run queue) of the calling thread, in ns (Linux; else 0)."""
    try:
        with open("/proc/thread-self/schedstat", encoding="ascii") as fh:
            ran, waited, _slices = fh.read().split()
        return int(ran), int(waited)
    except (OSError, ValueError):
        return 0, 0


def python_growth(before: tracemalloc.Snapshot, top: int = 8) -> str:
    """Where Python's own allocations grew since ``before`` (grouped by the allocating line)."""
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stats = after.compare_to(before, "traceback")
    total = sum(stat.size_diff for stat in stats)
    lines = [f"Python allocations since warm-up: {total / 2**20:+.2f} MiB (tracemalloc)"]
    for stat in stats[:top]:
        frames = list(stat.traceback)  # oldest first
        ours = [f for f in frames if "/app/" in f.filename or "/bench/" in f.filename]
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}"
        if ours and ours[-1] is not frames[-1]:
            where += f" < {Path(ours[-1].filename).name}:{ours[-1].lineno}"
        size, blocks = stat.size_diff / 2**10, stat.count_diff
        lines.append(f"  {size:+9.1f} KiB {blocks:+7d} blocks  {where}")
    return "\n".join(lines)


class GcTimes:
    """Pauses of Python's cyclic garbage collector, by generation (a gen-2 pass walks every
    tracked object: with a big Qt tree it can take long enough to be a GUI stall)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.worst_ms = [0.0, 0.0, 0.0]
        self.total_ms = [0.0, 0.0, 0.0]
        self.collected = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        gen = info["generation"]
        took = (time.perf_counter() - self._started) * 1000
        self.count[gen] += 1
        self.total_ms[gen] += took
        self.worst_ms[gen] = max(self.worst_ms[gen], took)
        self.collected[gen] += info["collected"]

    def report(self) -> str:
        return "garbage collector: " + "; ".join(
            f"gen {g}: {self.count[g]} passes, worst {self.worst_ms[g]:.1f} ms, "
            f"{self.total_ms[g]:.0f} ms in all, {self.collected[g]} objects freed"
            for g in range(3)
        )


def trimmed_rss() -> int:
    """RSS after a full collection and glibc's ``malloc_trim(0)``: the memory in use, without what
    the allocator holds free (0 where there is no glibc)."""
    from app.core.heap import release_free_heap

    gc.collect()
    return rss_bytes() if release_free_heap() else 0


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak")
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--warmup-turns", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--trace", action="store_true", help="sample the GUI thread's stack during stalls")
    parser.add_argument(
        "--conversations", type=int, default=0, help="start with this many saved conversations (a heavy user)"
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace Python allocations from warm-up to the end and print where memory grew (slower)",
    )
    parser.add_argument(
        "--rss-every", type=float, default=5.0, help="minutes between RSS samples in the report (0: none)"
    )
    args = parser.parse_args(argv)

    from PySide6.QtCore import QElapsedTimer, QTimer
    from PySide6.QtWidgets import QApplication

    from app.core.tiny_model import write_tiny_model
    from app.main import build_application, parse_args

    qapp = QApplication.instance() or QApplication(sys.argv[:1])
    tmp = tempfile.TemporaryDirectory(prefix="scout-soak-")
    model = write_tiny_model(Path(tmp.name) / "tiny-llama4.gguf")[0]
    application = build_application(
        parse_args(["--data-dir", str(Path(tmp.name) / "data"), "--model", str(model)])
    )
    store = application.store
    for n in range(args.conversations):
        conversation = store.create_conversation(f"Earlier chat {n}: planning the harbour survey", "tiny")
        store.add_message(conversation.id, "user", "What did the survey find?")
        store.add_message(conversation.id, "assistant", "The east pier needs repairs.")
    if args.conversations:
        application.controller.conversations.conversations_changed.emit()
    application.window.resize(1100, 760)
    application.window.show()
    controller = application.controller

    warmup, after = GapStats(), GapStats()
    gaps = warmup  # the heartbeat's current bucket; switched to ``after`` once warm
    clock = QElapsedTimer()
    clock.start()
    last = [clock.nsecsElapsed()]
    sched = list(thread_cpu_ns())

    tracer = StallTracer() if args.trace else None

    def beat() -> None:
        if tracer is not None:
            tracer.beat()
        now = clock.nsecsElapsed()
        ran, waited = thread_cpu_ns()
        gaps.add((now - last[0]) / 1e6, (ran - sched[0]) / 1e6, (waited - sched[1]) / 1e6)
        last[0] = now
        sched[:] = [ran, waited]

    heartbeat = QTimer()
    heartbeat.setInterval(10)
    heartbeat.timeout.connect(beat)

    snapshots: list[tracemalloc.Snapshot] = []
    state = {"turns": 0, "rss_warm": 0, "live_warm": 0, "start": 0.0, "tokens": 0}
    deadline = time.monotonic() + args.minutes * 60

    rss_samples: list[tuple[float, int, int]] = []  # (minutes, turns, RSS): one every few minutes

    def sample_rss() -> None:
        rss_samples.append(((time.monotonic() - state["start"]) / 60, state["turns"], rss_bytes()))

    gc_times = GcTimes()
    gc.callbacks.append(gc_times)
    sampler = QTimer()
    sampler.timeout.connect(sample_rss)

    def next_turn(*_args: object) -> None:
        nonlocal gaps
        if time.monotonic() >= deadline:
            qapp.quit()
            return
        state["turns"] += 1
        if state["turns"] == args.warmup_turns:
            if args.tracemalloc:
                gc.collect()
                tracemalloc.start(8)
                snapshots.append(tracemalloc.take_snapshot())
            state["rss_warm"] = rss_bytes()
            state["live_warm"] = trimmed_rss()
            gaps = after
        if state["turns"] % 20 == 0:
            controller.conversations.new_conversation()
        QTimer.singleShot(
            0, lambda: controller.conversations.send(f"Turn {state['turns']}: tell me about lighthouses.")
        )

    def on_finished(_mid: int, stats: object) -> None:
        state["tokens"] += getattr(stats, "completion_tokens", 0)
        next_turn()

    def on_loaded(_info: object) -> None:
        controller.update_settings(controller.settings.replace(max_tokens=args.max_tokens))
        state["start"] = time.monotonic()
        last[0] = clock.nsecsElapsed()
        sched[:] = thread_cpu_ns()
        heartbeat.start()
        if args.rss_every > 0:
            sampler.start(int(args.rss_every * 60_000))
        if tracer is not None:
            tracer.start()
        next_turn()

    controller.conversations.generation_finished.connect(on_finished)
    controller.conversations.generation_failed.connect(
        lambda _m, text, _d: (print(f"generation failed: {text}"), qapp.quit())
    )
    controller.models.model_load_failed.connect(lambda text, _d: (print(f"load failed: {text}"), qapp.quit()))
    if controller.models.model_info is not None:
        on_loaded(controller.models.model_info)
    else:
        controller.models.model_loaded.connect(on_loaded)
    qapp.exec()
    heartbeat.stop()
    if tracer is not None:
        tracer.stop()
    sampler.stop()
    gc.callbacks.remove(gc_times)
    rss_end = rss_bytes()
    rss_trimmed = trimmed_rss()
    growth_report = python_growth(snapshots[0]) if snapshots else ""
    controller.shutdown()
    application.window.close()
    application.store.close()
    tmp.cleanup()

    worst_all = max(warmup.worst, after.worst)
    worst, stalls = after.worst, after.over
    growth = (rss_end - state["rss_warm"]) / state["rss_warm"] * 100 if state["rss_warm"] else float("nan")
    elapsed = time.monotonic() - state["start"] if state["start"] else 0.0
    lines = [
        f"soak: {elapsed / 60:.1f} min, {state['turns']} turns, {state['tokens']} tokens",
        f"RSS after {args.warmup_turns} warm-up turns: {state['rss_warm'] / 2**20:.1f} MiB; "
        f"at the end: {rss_end / 2**20:.1f} MiB; growth {growth:+.2f} % (target ≤ 5 %)",
        f"heartbeat (10 ms): {after.count} beats after warm-up, worst gap {worst:.1f} ms "
        f"(worst incl. warm-up/load {worst_all:.1f} ms), gaps > 100 ms: {stalls} (target 0)",
    ]
    lines.append(after.report())
    lines.append(gc_times.report())
    if rss_trimmed and state["live_warm"]:
        live_growth = (rss_trimmed - state["live_warm"]) / state["live_warm"] * 100
        lines.append(
            f"memory in use (RSS after gc + malloc_trim(0)): {state['live_warm'] / 2**20:.1f} MiB after "
            f"warm-up, {rss_trimmed / 2**20:.1f} MiB at the end ({live_growth:+.2f} %)"
        )
    if rss_samples:
        lines.append(
            "RSS over time (min / turns / MiB): "
            + ", ".join(f"{m:.0f}/{t}/{r / 2**20:.1f}" for m, t, r in rss_samples)
        )
    if tracer is not None:
        lines.append(tracer.report())
    if growth_report:
        lines.append(growth_report)
    sys.stdout.write("\n".join(lines) + "\n")
    return 0 if growth <= 5 and stalls == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
