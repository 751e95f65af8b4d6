"""What the benchmark scripts share: interleaved medians (imported by ``scripts/bench_*.py``)."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable


def interleaved_medians(measures: dict[str, Callable[[], float]], repeats: int, warmup: int = 0) -> dict[str, float]:
    """Median of what each function returns over ``repeats`` rounds, called round-robin after ``warmup``
    calls each, so slow drifts of a shared machine affect all of them alike."""
    for measure in measures.values():
        for _ in range(warmup):
            measure()
    values: dict[str, list[float]] = {k: [] for k in measures}
    for _ in range(repeats):
        for name, measure in measures.items():
            values[name].append(measure())
    return {k: statistics.median(v) for k, v in values.items()}


def median_ms(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each function in milliseconds (:func:`interleaved_medians` of their timings)."""

    def timed(fn: Callable[[], object]) -> Callable[[], float]:
        def measure() -> float:
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1000

        return measure

    return interleaved_medians({k: timed(fn) for k, fn in fns.items()}, repeats, warmup)


def machine() -> dict[str, object]:
    """What a benchmark ran on: CPU model, core count, torch's thread count and versions."""
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}  # fmt: skip


def write_json(path: str | None, script: str, argv: list[str], ms: dict[str, float], ratios: dict[str, float]) -> None:
    """Save one run's timings and ratios (and the machine) as JSON for ``scripts/gen_perf_section.py``."""
    if not path:
        return
    import json
    import time
    from pathlib import Path

    record = {"script": script, "command": " ".join(["python", f"scripts/{script}", *argv]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
              "ms": {k: round(v, 2) for k, v in ms.items()}, "ratios": {k: round(v, 3) for k, v in ratios.items()}}  # fmt: skip
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=2) + "\n")


def add_run_options(p: argparse.ArgumentParser, repeats: int) -> None:
    """The options every timing script shares: repeats, warm-up calls, threads and the JSON output."""
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--warmup", type=int, default=2, help="untimed calls of each function first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", metavar="FILE", help="write the timings and ratios of this run as JSON")
