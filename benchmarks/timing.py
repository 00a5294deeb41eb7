"""The one timer the benchmark scripts share (each script's folder is on sys.path when run)."""

import time


def wall_times(fn, *, repeats: int, warmup: int = 1) -> list[float]:
    """Wall time in seconds of each of ``repeats`` calls of ``fn()``, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times
