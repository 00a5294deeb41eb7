"""Training-step throughput of kd.train_step / kd.distill_step on this machine, in one run.

    python benchmarks/bench_train.py

Prints images per second of ``train_step`` for the teacher and the student on 128x128 crops,
batch 8: fp32 with NCHW tensors against channels_last with bf16 autocast (``amp=True``), with
the speed-up; then the cost of a ``distill_step`` relative to a ``train_step`` for the student,
with the teacher run at every step, and with its outputs precomputed (``teacher_output=``, as
``python train.py`` does for a pool of batches).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from timing import wall_times  # noqa: E402

import kd  # noqa: E402
import sharpen  # noqa: E402

BATCH, SIZE, STEPS = 8, 128, 8


def steps_per_second(step, warmup: int = 2) -> float:
    """Median rate of ``step()`` calls, per second, after ``warmup`` calls."""
    times = sorted(wall_times(step, repeats=STEPS, warmup=warmup))
    return 1 / times[len(times) // 2]


def setup(make, channels_last: bool):
    torch.manual_seed(0)
    model = make()
    x, y = torch.rand(BATCH, 3, SIZE, SIZE), torch.rand(BATCH, 3, SIZE, SIZE)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x, y = (t.contiguous(memory_format=torch.channels_last) for t in (x, y))
    return model, torch.optim.Adam(model.parameters(), lr=1e-4), x, y


def main() -> None:
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; train_step on batches "
          f"of {BATCH} x 3 x {SIZE} x {SIZE}, images per second (median of {STEPS} steps)")
    for name, make in (("teacher", sharpen.teacher), ("student", sharpen.student)):
        rates = {}
        for label, cl, amp in (("fp32 NCHW", False, False), ("channels_last + bf16", True, True)):
            model, opt, x, y = setup(make, cl)
            rates[label] = BATCH * steps_per_second(
                lambda: kd.train_step(model, opt, x, y, amp=amp))  # noqa: B023
        fp32, fast = rates.values()
        print(f"{name:8s} fp32 NCHW {fp32:6.1f} img/s   channels_last + bf16 {fast:6.1f} img/s"
              f"   speed-up {fast / fp32:4.2f}x")

    teacher, _, _, _ = setup(sharpen.teacher, True)
    student, opt, x, y = setup(sharpen.student, True)
    plain = steps_per_second(lambda: kd.train_step(student, opt, x, y, amp=True))
    online = steps_per_second(lambda: kd.distill_step(student, teacher, opt, x, y, amp=True))
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        t_out = teacher(x).float()
    pooled = steps_per_second(
        lambda: kd.distill_step(student, teacher, opt, x, y, amp=True, teacher_output=t_out))
    print(f"student, channels_last + bf16: a distill_step costs {plain / online:4.2f}x a "
          f"train_step with the teacher run each step, {plain / pooled:4.2f}x with its output "
          "precomputed")


if __name__ == "__main__":
    main()
