"""What the benchmark scripts share: interleaved medians (imported by ``scripts/bench_*.py``)."""

from __future__ import annotations

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
