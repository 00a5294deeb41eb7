"""Training-step throughput of kd.train_step / kd.distill_step on this machine, in one run.

    python benchmarks/bench_train.py [--bf16]

Prints images per second of ``train_step`` for the teacher and the student on 128x128 crops,
batch 8, float32 with NCHW tensors against channels_last (and bf16 autocast, ``amp=True``, where
``sharpen.fast_bf16`` says the CPU computes bf16 natively, or with ``--bf16``); then the cost of
a ``distill_step`` with the default L1 + SSIM teacher term relative to a ``train_step`` for the
student, with the teacher run at every step and with its output precomputed (as ``train.py``
does for a pool of batches); then the cost of making a batch with ``sharpen.degrade`` (the
paper's Gaussian and ``kind="real"``, without and with the levels that ``--conditioned`` trains
on) against a student step on 16 crops of 64x64, the shape
``train.py`` trains on. Medians of interleaved rounds, with the min-max.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from timing import interleaved  # noqa: E402

import kd  # noqa: E402
import sharpen  # noqa: E402


def setup(make, channels_last: bool, batch: int = 8, size: int = 128):
    torch.manual_seed(0)
    model = make()
    x, y = torch.rand(batch, 3, size, size), torch.rand(batch, 3, size, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x, y = (t.contiguous(memory_format=torch.channels_last) for t in (x, y))
    return model, torch.optim.Adam(model.parameters(), lr=1e-4), x, y


def median(seconds: list[float]) -> str:
    return f"{1e3 * np.median(seconds):.1f} ms ({1e3 * min(seconds):.1f}-{1e3 * max(seconds):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bf16", action="store_true", help="time bf16 even where not native")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    bf16 = args.bf16 or sharpen.fast_bf16()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {sharpen.fast_bf16()}")
    print("1. train_step on batches of 8 x 3 x 128 x 128, images per second (median of "
          f"{args.rounds} interleaved rounds)")
    for name, make in (("teacher", sharpen.teacher), ("student", sharpen.student)):
        settings = {"fp32 NCHW": (False, False), "fp32 channels_last": (True, False)}
        if bf16:
            settings["bf16 channels_last"] = (True, True)
        calls = {}
        for label, (cl, amp) in settings.items():
            model, opt, x, y = setup(make, cl)
            calls[label] = lambda m=model, o=opt, x=x, y=y, amp=amp: kd.train_step(m, o, x, y,
                                                                                   amp=amp)
        times = interleaved(calls, rounds=args.rounds)
        print(f"   {name:8s} " + "   ".join(f"{label} {8 / np.median(t):6.1f} img/s"
                                          for label, t in times.items()))

    teacher, _, _, _ = setup(sharpen.teacher, True)
    student, opt, x, y = setup(sharpen.student, True)
    with torch.no_grad():
        t_out = teacher(x)
    kw = {"alpha": 0.9, "kd_loss_fn": kd.l1_ssim_loss}
    times = interleaved({
        "train_step": lambda: kd.train_step(student, opt, x, y),
        "distill_step, teacher run": lambda: kd.distill_step(student, teacher, opt, x, y, **kw),
        "distill_step, output precomputed": lambda: kd.distill_step(
            student, teacher, opt, x, y, teacher_output=t_out, **kw),
    }, rounds=args.rounds)
    plain = np.median(times["train_step"])
    print("2. student, fp32 channels_last, L1 + SSIM teacher term (alpha 0.9): a distill_step "
          "costs " + ", ".join(f"{np.median(t) / plain:.2f}x a train_step with the {k[14:]}"
                               for k, t in times.items() if k != "train_step"))

    student, opt, _, _ = setup(sharpen.student, True, batch=16, size=64)
    sharp = (sharpen.dead_leaves(16, 64, supersample=2, texture=0.5) * 255).round() / 255
    g = torch.Generator().manual_seed(0)
    blurred = sharpen.degrade(sharp, kind="real", generator=g)
    times = interleaved({
        "student train_step": lambda: kd.train_step(student, opt, blurred, sharp),
        "degrade gaussian": lambda: sharpen.degrade(sharp, generator=g),
        "degrade real": lambda: sharpen.degrade(sharp, kind="real", generator=g),
        "degrade real with levels": lambda: sharpen.degrade(sharp, kind="real", generator=g,
                                                            return_levels=True),
    }, rounds=args.rounds)
    step = np.median(times["student train_step"])
    print("3. a batch of 16 x 3 x 64 x 64: " + ", ".join(
        f"{k} {median(t)}" + ("" if k.startswith("student") else f" = {np.median(t) / step:.3f}x"
                              " a student step") for k, t in times.items()))


if __name__ == "__main__":
    main()
