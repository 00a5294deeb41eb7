"""The compiled student's frames per second at 1280x720, one precision per fresh process.

    pip install -e ".[bench]" && python benchmarks/bench_video.py [--processes 3] [--frames 20]

The way "Many frames of one size" in the README runs a video, blind: the shipped student (or a
new one without ``weights/``), channels_last, compiled with frozen weights, called on one
blurred 720p photograph again and again, the frames in memory (no PNG reading or writing). Each
process compiles one precision (float32; bf16 where ``sharpen.fast_bf16`` says the hardware
computes it natively; int8 from ``bench_sharpen.int8_student`` with torchao installed) and times
``--frames`` frames after the first, which compiles; it reports the median frames per second,
the min-max over its frames, the minor page faults per timed frame and its peak resident
memory (the summary: the largest).

Each precision runs in ``--processes`` processes with glibc's allocator as it comes, as many
with the allocator told to keep the memory it frees before Python starts (``TUNED``, set as
``GLIBC_TUNABLES``), and as many told so from inside the process (``keep_freed_memory``, as the
README's video recipe does), the three in turn, which goes first rotated each round. Last, the
median over the processes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TUNED = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"
MARK = "RESULT "


def keep_freed_memory() -> bool:
    """glibc's ``mallopt``, from inside the process: buffers under 32 MiB (a 720p frame's in
    bf16) come from the heap, which is not trimmed back to the system between frames. Returns
    whether glibc took both settings (False elsewhere)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mmap_threshold, trim_threshold = -3, -1  # glibc's malloc.h
    return bool(libc.mallopt(mmap_threshold, 32 << 20)) & bool(libc.mallopt(trim_threshold,
                                                                            1 << 30))


def one_process(*, precision: str, frames: int, threads: int) -> dict[str, float]:
    """Times the student at one precision in this process.

    Args:
        precision: "fp32", "bf16" or "int8".
        frames: Timed frames, after one that compiles.
        threads: Torch threads.

    Returns:
        fps (median), slowest and fastest (frames per second), faults (minor page faults per
        timed frame) and peak_gb (the process's peak resident memory); empty if the precision
        cannot run here (bf16 not native, or torchao's PT2E API not importable).
    """
    import torch
    from torch._inductor import config as inductor_config

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_sharpen import blurred_720p, int8_student, trained

    import sharpen

    if precision == "bf16" and not sharpen.fast_bf16():
        return {}
    torch.set_num_threads(threads)
    inductor_config.freezing = True
    student = trained("student").eval().to(memory_format=torch.channels_last)
    x = blurred_720p("astronaut")
    model = int8_student(student, x) if precision == "int8" else torch.compile(student)
    if model is None:
        return {}
    seconds = []
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        model(x)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(frames):
            start = time.perf_counter()
            model(x)
            seconds.append(time.perf_counter() - start)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"fps": 1 / float(np.median(seconds)), "slowest": 1 / max(seconds),
            "fastest": 1 / min(seconds), "faults": faults / frames,
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def child(*, precision: str, frames: int, threads: int, setting: str) -> dict[str, float] | str:
    """Runs ``one_process`` in a fresh interpreter.

    Args:
        precision: "fp32", "bf16" or "int8".
        frames: Timed frames.
        threads: Torch threads.
        setting: glibc's allocator "as is" (``GLIBC_TUNABLES`` unset), "tuned" (told
            ``TUNED``) or "mallopt" (``keep_freed_memory`` called in the process first).

    Returns:
        ``one_process``'s result, or the end of the process's stderr if it failed.
    """
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if setting == "tuned":
        env["GLIBC_TUNABLES"] = TUNED
    mallopt = ["--mallopt"] if setting == "mallopt" else []
    r = subprocess.run([sys.executable, __file__, "--child", precision, "--frames", str(frames),
                        "--threads", str(threads), *mallopt], env=env, capture_output=True,
                       text=True)
    lines = [line for line in r.stdout.splitlines() if line.startswith(MARK)]
    if r.returncode or len(lines) != 1:
        return f"exit {r.returncode}: {r.stderr.strip()[-2000:]}"
    return json.loads(lines[0][len(MARK):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=3,
                        help="fresh processes per precision and allocator setting (default 3)")
    parser.add_argument("--frames", type=int, default=20,
                        help="timed frames in each process (default 20)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--child", choices=["fp32", "bf16", "int8"], help=argparse.SUPPRESS)
    parser.add_argument("--mallopt", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.processes < 1 or args.frames < 1 or args.threads < 1:
        parser.error("--processes, --frames and --threads must be at least 1, got "
                     f"{args.processes}, {args.frames}, {args.threads}")
    if args.child:
        if args.mallopt and not keep_freed_memory():
            raise SystemExit("mallopt: not glibc, or it refused the settings")
        print(MARK + json.dumps(one_process(precision=args.child, frames=args.frames,
                                            threads=args.threads)))
        return
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from timing import machine

    try:
        from importlib.metadata import version
        torchao = f"torchao {version('torchao')}"
    except Exception:
        torchao = "no torchao"
    print(f"torch {torch.__version__}, {torchao}, {args.threads} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}; {machine()}; load {os.getloadavg()}")
    print(f"the compiled student at 1280x720, blind, {args.frames} frames per process: fps "
          "median (min-max over its frames), minor page faults per frame")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    settings = ["as is", "tuned", "mallopt"]
    for precision in ("fp32", "bf16", "int8"):
        for i in range(args.processes):
            for setting in settings[i % 3:] + settings[: i % 3]:
                r = child(precision=precision, frames=args.frames, threads=args.threads,
                          setting=setting)
                if not r or isinstance(r, str):
                    break
                results.setdefault((precision, setting), []).append(r)
                print(f"   {precision} allocator {setting:7s}: {r['fps']:6.2f} fps "
                      f"({r['slowest']:.2f}-{r['fastest']:.2f}), {r['faults']:8.0f} faults, "
                      f"peak {r['peak_gb']:.2f} GB", flush=True)
            if isinstance(r, str):
                print(f"   {precision}: the process failed, {r}")
                break
            if not r:
                print(f"   {precision}: not run here (bf16 not native, or no torchao)")
                break
    print(f"median over the processes ({args.processes} each; min-max of their medians); tuned: "
          f"GLIBC_TUNABLES={TUNED}; mallopt: keep_freed_memory() in the process")
    for (precision, setting), rs in results.items():
        fps = [r["fps"] for r in rs]
        print(f"   {precision} allocator {setting:7s}: {np.median(fps):6.2f} fps "
              f"({min(fps):.2f}-{max(fps):.2f}), "
              f"{np.median([r['faults'] for r in rs]):8.0f} faults, "
              f"peak {max(r['peak_gb'] for r in rs):.2f} GB")


if __name__ == "__main__":
    main()
