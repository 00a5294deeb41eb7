"""The compiled student's frames per second at 1280x720, fresh processes, allocator as is or tuned.

    pip install -e ".[bench]" && python benchmarks/bench_video.py [--processes 3] [--frames 10]

The way "Many frames of one size" in the README runs a video: the shipped student (or a new one
without ``weights/``), channels_last, compiled with frozen weights, called on one blurred 720p
photograph again and again. In each process, float32, bf16 (where ``sharpen.fast_bf16`` says the
hardware computes it natively) and, with torchao installed, int8 (``bench_sharpen.int8_student``)
are compiled, then timed frame by frame, interleaved; the process prints the median frames per
second of each, with the min-max over its frames. Processes alternate between glibc's allocator
as it comes and the allocator told to keep freed memory (``GLIBC_TUNABLES`` below), which in one
process can decide whether each frame's large buffers are mapped afresh; last, the median over
the processes of each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TUNED = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"


def one_process(frames: int, threads: int) -> None:
    """Compiles the variants, times them over ``frames`` interleaved frames, prints one line."""
    import torch
    from torch._inductor import config as inductor_config

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_sharpen import blurred_720p, int8_student, trained

    import sharpen

    torch.set_num_threads(threads)
    inductor_config.freezing = True
    student = trained("student").eval().to(memory_format=torch.channels_last)
    x = blurred_720p("astronaut")
    compiled = torch.compile(student)
    variants = {"fp32": compiled}
    if sharpen.fast_bf16():
        variants["bf16"] = compiled
    int8 = int8_student(student, x)
    if int8 is not None:
        variants["int8"] = int8
    seconds = {name: [] for name in variants}
    with torch.no_grad():
        for i in range(frames + 1):  # frame 0 compiles
            for name, model in variants.items():
                with torch.autocast("cpu", torch.bfloat16, enabled=name == "bf16"):
                    start = time.perf_counter()
                    model(x)
                    if i:
                        seconds[name].append(time.perf_counter() - start)
    print(" ".join(f"{name}={1 / np.median(s):.2f},{1 / max(s):.2f},{1 / min(s):.2f}"
                   for name, s in seconds.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=3,
                        help="fresh processes per allocator setting (default 3)")
    parser.add_argument("--frames", type=int, default=10,
                        help="timed frames per variant in each process (default 10)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.processes < 1 or args.frames < 1 or args.threads < 1:
        parser.error("--processes, --frames and --threads must be at least 1, got "
                     f"{args.processes}, {args.frames}, {args.threads}")
    if args.child:
        one_process(args.frames, args.threads)
        return
    import torch

    print(f"torch {torch.__version__}, {args.threads} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}; load {os.getloadavg()}")
    print(f"student at 1280x720, compiled, {args.frames} frames per process; fps median "
          "(min-max over its frames):")
    settings = {"as is": None, "tuned": TUNED}
    fps = {setting: {} for setting in settings}
    for _ in range(args.processes):
        for setting, tunables in settings.items():
            env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
            if tunables:
                env["GLIBC_TUNABLES"] = tunables
            out = subprocess.run([sys.executable, __file__, "--child", "--frames",
                                  str(args.frames), "--threads", str(args.threads)],
                                 env=env, capture_output=True, text=True, check=True).stdout
            cells = dict(cell.split("=") for cell in out.strip().splitlines()[-1].split())
            line = []
            for name, cell in cells.items():
                med, lo, hi = (float(v) for v in cell.split(","))
                fps[setting].setdefault(name, []).append(med)
                line.append(f"{name} {med:5.2f} ({lo:.2f}-{hi:.2f})")
            print(f"   allocator {setting:5s}: " + "   ".join(line), flush=True)
    print(f"median over {args.processes} processes (min-max of their medians); "
          f"tuned: GLIBC_TUNABLES={TUNED}")
    for setting, by_name in fps.items():
        print(f"   allocator {setting:5s}: " + "   ".join(
            f"{name} {np.median(v):5.2f} ({min(v):.2f}-{max(v):.2f})"
            for name, v in by_name.items()))


if __name__ == "__main__":
    main()
