"""What one blur number costs a told model: fine-tune the shipped student on isotropic Gaussian
blur only, and (as a control) on the training mix, then score both on the validation photos.

    pip install -e ".[eval]" && python docs/kernel_shape_check.py

A told model hears a blur's spread (``kernel_sigma``), not its shape: a Gaussian, a camera shake
or a disk of the same spread are told alike, so the model must hedge between them. Each copy
of ``weights/student.pt`` is trained ``--steps`` steps (Adam, learning rate 5e-4 with cosine
decay, 16 crops of 64x64) on ``train.py --train-photos``'s training images, told each image's
levels: ``gaussian`` on isotropic Gaussian blur of sigma log-uniform in [0.3, 3] and no noise
or JPEG; ``mix`` on ``sharpen.degrade(kind="real")``, as the student was trained. Prints, per
condition, the mean PSNR over the grey and colour validation photos of the input, of the Wiener
estimate the student is given (``docs/validate.py --estimate``), and of the three students
told the true levels. About 5 minutes on 2 cores. Nothing here is shipped.
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import kd  # noqa: E402
import metrics  # noqa: E402
import sharpen  # noqa: E402
import train  # noqa: E402


def gaussian_only(sharp: torch.Tensor, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 3, H, W)`` 8-bit images blurred by isotropic Gaussians of sigma log-uniform in
    [0.3, 3], and their levels ``(B, 3)`` as ``degrade(return_levels=True)`` reports them."""
    sigmas = [0.3 * 10 ** float(u) for u in torch.rand(len(sharp), generator=generator)]
    out = torch.cat([sharpen.gaussian_blur(x[None], s) for x, s in zip(sharp, sigmas)])
    told = []
    for s in sigmas:
        g = sharpen.gaussian_kernel(s)
        told.append([float(sharpen.kernel_sigma(g[:, None] * g[None, :])), 0.0, 100.0])
    return (out.clamp(0, 1) * 255).round() / 255, torch.tensor(told)


def fine_tuned(student: torch.nn.Module, images: torch.Tensor, degrade, steps: int
               ) -> torch.nn.Module:
    """A copy of ``student`` trained ``steps`` steps on ``images`` degraded by ``degrade``."""
    model = copy.deepcopy(student)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    data = kd.batches(images, size=64, batch_size=16, degrade=degrade,
                      generator=torch.Generator().manual_seed(2))
    for _ in range(steps):
        blurred, sharp, levels = next(data)
        kd.train_step(model, opt, blurred, sharp, levels=levels, clip_grad_norm=train.CLIP)
        schedule.step()
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python docs/kernel_shape_check.py", description=__doc__)
    p.add_argument("--steps", type=int, default=400, help="fine-tuning steps per copy (400)")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    images = torch.cat([train._8bit(sharpen.dead_leaves(192, 128, generator=g, **train.LEAVES)),
                        train._8bit(train._photo_tiles(train.TRAIN_PHOTOS, 128))])
    shipped = sharpen.load_model(ROOT / "weights" / "student.pt")
    models = {"shipped": shipped.eval()}
    for name, degrade in (("gaussian", gaussian_only), ("mix", functools.partial(
            sharpen.degrade, kind="real", return_levels=True))):
        start = time.perf_counter()
        models[name] = fine_tuned(shipped, images, degrade, args.steps)
        print(f"fine-tuned on {name}: {args.steps} steps, {time.perf_counter() - start:.0f} s",
              flush=True)
    val = torch.cat([train._validation_photos(256), train._colour_validation_photos(256)])
    print(f"mean PSNR (dB) over the {len(val)} validation photos, told the true levels")
    print(f"{'condition':26s} {'input':>7s} {'estimate':>9s}" + "".join(
        f" {n:>9s}" for n in models))
    with torch.no_grad():
        for name in train.CONDITIONS:
            x, kernels = train._condition(val, name, train._validation_seed(name))
            levels = train._condition_levels(name, kernels)
            estimate = (x + sharpen._told_wiener(x, levels, at_zero=True)).clamp(0, 1)
            outs = [x, estimate] + [sharpen.sharpen(m, x, precision="fp32", levels=levels)
                                    for m in models.values()]
            psnr = [metrics.psnr(o, val).mean().item() for o in outs]
            print(f"{name:26s} {psnr[0]:7.2f} {psnr[1]:9.2f}" + "".join(
                f" {v:9.2f}" for v in psnr[2:]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
