"""The timers the benchmark scripts share (each script's folder is on sys.path when run)."""

import time
from collections.abc import Callable


def interleaved(calls: dict[str, Callable[[], object]], *, rounds: int, warmup: int = 1
                ) -> dict[str, list[float]]:
    """Seconds of each call in each of ``rounds`` rounds, every call once per round, so that a
    slow spell of a shared machine hits them all alike; ``warmup`` untimed rounds first."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(warmup + rounds):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times
