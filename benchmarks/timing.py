"""The timers and the machine header that the benchmark scripts share.

Each script's folder is on sys.path when it runs, so they import this as ``timing``.
"""

import platform
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


def machine() -> str:
    """The CPU's model name, its AMX and AVX-512 bf16 flags, and the C library, for a header."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    wanted = sorted(f for f in flags if f.startswith("amx") or f == "avx512_bf16")
    libc = " ".join(filter(None, platform.libc_ver())) or "unknown libc"
    return f"{model}, flags {' '.join(wanted) or 'no amx or avx512_bf16'}, {libc}"
