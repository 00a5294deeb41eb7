"""Train a level estimator (``sharpen.level_estimator``): what ``python sharpen.py photo.jpg``
tells a conditioned model when the user tells it nothing (``sharpen.estimate_levels``).

    pip install -e ".[eval]" && python train_levels.py --out runs/levels

It learns from ``train.py --blur real --train-photos``'s training images, degraded by
``sharpen.degrade(kind="real")`` with 8-bit rounding, the levels it returns being the targets
(with ``--keep-blur``, the blur another estimator reads instead).
It writes ``OUT/estimator.pt`` and prints its errors on the validation photos under each
condition of the robustness table and of ``train.GRAIN_CONDITIONS``. ``python docs/validate.py
--levels OUT/estimator.pt weights/student.pt`` then scores the student told its estimates.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from pathlib import Path

import torch

import kd
import sharpen
import train


def _degrade(sharp: torch.Tensor, *, generator: torch.Generator, grey_noise: float,
             asymmetric_blur: float = 1.0, off_grid: float = 0.0) -> tuple[torch.Tensor, ...]:
    """Degraded 8-bit images and their target levels: the blur of an image whose kernel is not
    point-symmetric (camera shake) times ``asymmetric_blur``; with ``off_grid``, cut by
    ``_off_grid``."""
    blurred, levels, kernels = sharpen.degrade(sharp, kind="real", generator=generator,
                                               grey_noise=grey_noise, return_levels=True,
                                               return_kernels=True)
    asymmetric = (kernels - kernels.flip(-2, -1)).abs().flatten(1).sum(1) > 1e-3  # NaN: False
    levels[asymmetric, 0] *= asymmetric_blur
    blurred = train._8bit(blurred)
    return (_off_grid(blurred, off_grid, generator) if off_grid else blurred), levels


def _off_grid(x: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """``x`` ``(B, C, H, W)`` cut to ``(B, C, H - 8, W - 8)``: a ``share`` of the images from a
    random row and column 0-7, so that a JPEG's 8x8 block grid no longer starts at the corner,
    as in a cropped photo; the others from the corner."""
    start = torch.randint(8, (len(x), 2), generator=generator)
    start[torch.rand(len(x), generator=generator) >= share] = 0
    h, w = x.shape[-2] - 8, x.shape[-1] - 8
    return torch.stack([img[:, r : r + h, c : c + w] for img, (r, c) in zip(x, start.tolist())])


def _kept_blur(keep: sharpen.LevelNet, degraded: torch.Tensor,
               levels: torch.Tensor) -> torch.Tensor:
    """``levels`` ``(B, 3)`` with the blur replaced by ``keep``'s reading of each image of
    ``degraded`` (``--keep-blur``): the targets of a fine-tune that keeps its blur readings."""
    kept = levels.clone()
    kept[:, 0] = sharpen.estimate_levels(keep, degraded, max_blur=None,
                                          precision="fp32")[:, 0]
    return kept


def training_images(n: int, generator: torch.Generator) -> torch.Tensor:
    """The sharp training images: ``n`` dead-leaves images and ``train.py``'s photo tiles, all
    128x128 and 8-bit."""
    return train._8bit(torch.cat([
        sharpen.dead_leaves(n, 128, generator=generator, **train.LEAVES),
        train._photo_tiles(train.TRAIN_PHOTOS, 128)]))


def _errors(estimator: sharpen.LevelNet) -> None:
    """Mean estimate against the truth per condition, on the validation photos."""
    sharp = train._validation_photos(256)
    print(f"on the {len(sharp)} validation photos, mean (blur, noise, jpeg): true -> estimated")
    for name in [*train.CONDITIONS, *train.GRAIN_CONDITIONS]:
        x, kernels = train._condition(sharp, name, train._validation_seed(name))
        true = train._condition_levels(name, kernels).mean(0)
        est = sharpen.estimate_levels(estimator, x, max_blur=None,  # its own readings
                                      precision="fp32")
        spread = est[:, 0].min().item(), est[:, 0].max().item()
        print(f"  {name:35} ({true[0]:.2f}, {true[1]:.3f}, {true[2]:3.0f}) -> "
              f"({est[:, 0].mean():.2f}, {est[:, 1].mean():.3f}, {est[:, 2].mean():3.0f}); "
              f"blur {spread[0]:.2f}-{spread[1]:.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python train_levels.py",
                                description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--steps", type=int, default=3000, help="training steps (3000)")
    p.add_argument("--batch-size", type=int, default=64, help="(64)")
    p.add_argument("--size", type=int, default=64, help="training crop size in pixels (64)")
    p.add_argument("--width", type=int, help="the estimator's width (24)")
    p.add_argument("--init", type=Path, metavar="ESTIMATOR.pt",
                   help="start from this estimator (train_levels.py's) instead of a new one")
    p.add_argument("--lr", type=float, default=2e-3,
                   help="Adam's learning rate, cosine-annealed to 0 (0.002)")
    p.add_argument("--train-images", type=int, default=192,
                   help="dead-leaves training images (192), beside the photo tiles")
    p.add_argument("--quantile", type=float, nargs="+", default=[0.5], metavar="Q",
                   help="of the estimates (kd.level_loss), one for all levels or three (blur, "
                        "noise, jpeg): below 0.5 they err low (0.5)")
    p.add_argument("--grey-noise", type=float, default=0.0,
                   help="the share of noisy images whose noise is the same in every channel, "
                        "a grain of brightness (sharpen.degrade's grey_noise) (0.0)")
    p.add_argument("--asymmetric-blur", type=float, default=1.0, metavar="FACTOR",
                   help="read the blur of a kernel that is not point-symmetric (camera shake) as "
                        "FACTOR (0 to 1) times its spread: 0 teaches it to read shake as no "
                        "blur (a model told one blur number cannot undo a shake anyway) (1.0)")
    p.add_argument("--off-grid", type=float, default=0.0, metavar="SHARE",
                   help="the share of training crops cut, after compression, from a random row "
                        "and column 0-7, so that a JPEG's block grid no longer starts at the "
                        "corner, as in a cropped photo; with it every crop loses 8 pixels of "
                        "its side (0.0)")
    p.add_argument("--keep-blur", type=Path, metavar="ESTIMATOR.pt",
                   help="learn the blur as this estimator reads each training crop "
                        "(sharpen.estimate_levels, so a crop off the JPEG grid is read from its "
                        "grid), at the median: a fine-tune of it that changes its noise and "
                        "JPEG readings, not its blur; --quantile then applies to the noise and "
                        "JPEG unless three are given")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/levels"), help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the estimator.pt already in --out (else refused)")
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "train_images"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 32 <= args.size <= 128:
        p.error(f"--size must be from 32 to 128 (the training images' size), got {args.size}")
    if len(args.quantile) not in (1, 3):
        p.error(f"--quantile takes one number or three (blur, noise, jpeg), got "
                f"{len(args.quantile)}")
    for q in args.quantile:
        if not 0 < q < 1:
            p.error(f"--quantile must be in (0, 1), got {q}")
    if not 0 <= args.lr < math.inf:
        p.error(f"--lr must be finite and >= 0, got {args.lr}")
    if args.width is not None and args.width < 1:
        p.error(f"--width must be >= 1, got {args.width}")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} is a file, not a folder")
    target = args.out / "estimator.pt"
    if args.init is not None and args.init.exists() and target.exists() and \
            os.path.samefile(args.init, target):
        p.error(f"--init {args.init} is the estimator.pt that --out would replace: copy it "
                "elsewhere first")
    if os.path.lexists(target) and not args.overwrite:
        p.error(f"--out {args.out} already holds an estimator.pt: give another folder, or "
                "--overwrite to replace it")
    if args.init is not None and args.width is not None:
        p.error("--init starts from an estimator of its own width: drop --width")
    if not 0 <= args.grey_noise <= 1:
        p.error(f"--grey-noise must be in [0, 1], got {args.grey_noise}")
    if not 0 <= args.asymmetric_blur <= 1:
        p.error(f"--asymmetric-blur must be in [0, 1], got {args.asymmetric_blur}")
    if not 0 <= args.off_grid <= 1:
        p.error(f"--off-grid must be in [0, 1], got {args.off_grid}")
    if args.keep_blur is not None and args.asymmetric_blur != 1:
        p.error("--keep-blur takes the blur targets from its estimator: drop --asymmetric-blur")
    if not train._has_skimage():
        p.error('needs scikit-image for the photos: pip install -e ".[eval]"')
    keep = None
    if args.keep_blur is not None:
        try:
            keep = train._load_estimator("--keep-blur", args.keep_blur).eval()
        except ValueError as e:
            p.error(str(e))
    torch.manual_seed(args.seed)
    if args.init is None:
        estimator = sharpen.level_estimator(width=24 if args.width is None else args.width)
    else:
        try:
            estimator = train._load_estimator("--init", args.init)
        except ValueError as e:
            p.error(str(e))
    generator = torch.Generator().manual_seed(args.seed)
    images = training_images(args.train_images, generator)
    data = kd.batches(images, size=args.size, batch_size=args.batch_size, generator=generator,
                      degrade=functools.partial(_degrade, grey_noise=args.grey_noise,
                                                asymmetric_blur=args.asymmetric_blur,
                                                off_grid=args.off_grid))
    opt = torch.optim.Adam(estimator.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    start, mean = time.perf_counter(), None
    quantile = args.quantile[0] if len(args.quantile) == 1 else tuple(args.quantile)
    if keep is not None and len(args.quantile) == 1:
        quantile = (0.5, quantile, quantile)
    for step in range(1, args.steps + 1):
        degraded, _, levels = next(data)
        if keep is not None:
            levels = _kept_blur(keep, degraded, levels)
        try:
            loss = kd.level_step(estimator, opt, degraded, levels, quantile=quantile)["loss"]
        except FloatingPointError as e:
            print(f"error: the estimator diverged at step {step} ({e}): a lower --lr may help",
                  file=sys.stderr)
            return 1
        schedule.step()
        mean = loss if mean is None else 0.98 * mean + 0.02 * loss
        if step % 200 == 0 or step == args.steps:
            print(f"step {step}/{args.steps}: loss {mean:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    try:
        sharpen.save_model(args.out / "estimator.pt", estimator)
    except ValueError as e:  # weights that are not finite: a file that would not load
        print(f"error: {e}: a lower --lr may help", file=sys.stderr)
        return 1
    print(f"wrote {args.out / 'estimator.pt'} ({sharpen.count_params(estimator):,} parameters, "
          f"{time.perf_counter() - start:.0f} s)")
    _errors(estimator.eval())
    return 0


if __name__ == "__main__":
    sys.exit(main())
