"""What the benchmark scripts share: interleaved median timings (imported by ``scripts/bench_*.py``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_ms(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each function in milliseconds, runs interleaved round-robin after ``warmup``
    calls each, so slow drifts of a shared machine affect all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}
