"""How much a model of a given size can gain on JPEG alone: a bound for the JPEG targets.

    pip install -e ".[eval]" && python docs/jpeg_bound.py weights/student.pt --steps 1500
    python docs/jpeg_bound.py weights/student.pt --scored --colour-photos --steps 1000
    python docs/jpeg_bound.py weights/student.pt --where

Fine-tunes a copy of a conditioned model (``unet(conditioned>=1)``) on JPEG alone: the training
images of ``train_levels.py`` (dead leaves and photo tiles), compressed at qualities 30-95 and
told their quality, PSNR loss (``kd.psnr_loss``), Adam with a cosine-annealed learning rate, no
gradient clipping. Every 500 steps and at the start it prints the mean gain (worst image's in
brackets) on the grey and colour validation photos under JPEG 50 and JPEG 90, told the quality,
as ``docs/validate.py`` draws them (``--scored``: on the three scored photo sets, for reporting).
``--colour-photos`` adds tiles of the four colour validation photos to the training images (are
colour photographs what the training images lack?), and leaves them out of the scoring. Such a
specialist no longer sharpens anything else: it is a bound on what the size can reach on JPEG,
not a model to ship. Writes nothing.

``--where`` instead splits JPEG's loss on the colour validation photos between luma and chroma
(each put back from the original), and scores a luma-guided chroma step, classical and
untrained: the chroma gains the luma's detail that 4:2:0 subsampling took from it, scaled by the
local slope of chroma on luma (guided-filter style), alone and in front of the model, and on a
JPEG saved without chroma subsampling (4:4:4), which has no such loss.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import kd  # noqa: E402
import metrics  # noqa: E402
import sharpen  # noqa: E402
import train  # noqa: E402
import train_levels  # noqa: E402


def _jpeg(sharp: torch.Tensor, *, generator: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image compressed at a quality drawn from 30-95, and its levels (0, 0, quality)."""
    quality = torch.randint(30, 96, (len(sharp),), generator=generator)
    x = torch.cat([sharpen.jpeg(s[None], int(q)) for s, q in zip(sharp, quality)])
    zeros = torch.zeros(len(quality))
    return x, torch.stack([zeros, zeros, quality.float()], 1)


def _scores(model: torch.nn.Module, sets: dict[str, torch.Tensor]) -> str:
    out = []
    for set_name, sharp in sets.items():
        for name in ("jpeg 50", "jpeg 90"):
            x, kernels = train._condition(sharp, name, train._validation_seed(name))
            levels = train._condition_levels(name, kernels)
            y = sharpen.sharpen(model, x, precision="fp32", levels=levels)
            gain = metrics.psnr(y, sharp) - metrics.psnr(x, sharp)
            out.append(f"{set_name} {name} {gain.mean():+.2f} ({gain.min():+.2f})")
    return ", ".join(out)


_YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5],
                     [0.5, -0.418688, -0.081312]])  # JPEG's RGB -> YCbCr, offsets left out


def _ycc(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", _YCC, x)


def _rgb(y: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_YCC), y).clamp(0, 1)


def _box(x: torch.Tensor, r: int) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (r,) * 4, mode="replicate"), 2 * r + 1, stride=1)


def guided_chroma(x: torch.Tensor, *, radius: int = 2, eps: float = 1e-3) -> torch.Tensor:
    """``x`` (B, 3, H, W) with each chroma plane given back the luma's detail that 4:2:0 loses
    (luma minus luma 2x2-averaged and upsampled as libjpeg does), times the chroma's local
    regression slope on that smoothed luma in (2 radius + 1)-pixel windows."""
    h, w = x.shape[-2:]
    y = _ycc(F.pad(x, (0, w % 2, 0, h % 2), mode="replicate"))  # odd sides padded, as libjpeg does
    luma, chroma = y[:, :1], y[:, 1:]
    smooth = F.interpolate(F.avg_pool2d(luma, 2), scale_factor=2, mode="bilinear")
    mean_l, mean_c = _box(smooth, radius), _box(chroma, radius)
    slope = (_box(smooth * chroma, radius) - mean_l * mean_c) / (
        _box(smooth * smooth, radius) - mean_l**2 + eps)
    return _rgb(torch.cat([luma, chroma + _box(slope, radius) * (luma - smooth)], 1))[..., :h, :w]


def _jpeg444(x: torch.Tensor, quality: int) -> torch.Tensor:
    """``sharpen.jpeg`` without chroma subsampling (4:4:4), as some cameras and editors save."""
    out = []
    for img in x:
        buf = io.BytesIO()
        pixels = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(buf, "JPEG", quality=quality, subsampling=0)
        out.append(torch.from_numpy(np.array(Image.open(buf))).permute(2, 0, 1) / 255)
    return torch.stack(out)


def _where(model: torch.nn.Module, sharp: torch.Tensor) -> None:
    print("colour validation photos, mean gain in dB over the input (worst image's)")
    for name in ("jpeg 50", "jpeg 90"):
        x, kernels = train._condition(sharp, name, train._validation_seed(name))
        levels = train._condition_levels(name, kernels)
        truth, given = _ycc(sharp), _ycc(x)
        rows = {"true luma": _rgb(torch.cat([truth[:, :1], given[:, 1:]], 1)),
                "true chroma": _rgb(torch.cat([given[:, :1], truth[:, 1:]], 1)),
                "guided chroma": guided_chroma(x),
                "model told": sharpen.sharpen(model, x, precision="fp32", levels=levels),
                "guided chroma, then model told": sharpen.sharpen(
                    model, guided_chroma(x), precision="fp32", levels=levels)}
        full = _jpeg444(sharp, int(name.split()[1]))
        gains = {row: metrics.psnr(y, sharp) - metrics.psnr(x, sharp) for row, y in rows.items()}
        gains["guided chroma on the photo saved 4:4:4, against that JPEG"] = (
            metrics.psnr(guided_chroma(full), sharp) - metrics.psnr(full, sharp))
        print(f"{name} (input {metrics.psnr(x, sharp).mean():.2f} dB): " + ", ".join(
            f"{row} {gain.mean():+.2f} ({gain.min():+.2f})" for row, gain in gains.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python docs/jpeg_bound.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path,
                   help="a conditioned sharpening model file, such as weights/student.pt")
    p.add_argument("--steps", type=int, default=1500, help="fine-tuning steps (1500)")
    p.add_argument("--lr", type=float, default=5e-4,
                   help="Adam's learning rate, cosine-annealed to 0 (0.0005)")
    p.add_argument("--scored", action="store_true",
                   help="score on the three scored photo sets, not the validation photos "
                        "(reporting only)")
    p.add_argument("--colour-photos", action="store_true",
                   help="also train on tiles of the four colour validation photos, which then "
                        "do not score")
    p.add_argument("--where", action="store_true",
                   help="split JPEG's loss between luma and chroma instead, and score the "
                        "luma-guided chroma step (no training)")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    if not args.lr >= 0:
        p.error(f"--lr must be >= 0, got {args.lr}")
    if args.where and (args.scored or args.colour_photos):
        p.error("--where runs on the colour validation photos, without training: it takes "
                "neither --scored nor --colour-photos")
    try:
        model = sharpen.load_model(args.model)
    except (OSError, ValueError) as e:
        p.error(f"model: {e}")
    if not getattr(model, "conditioned", 0):
        what = "a level estimator" if isinstance(model, sharpen.LevelNet) else "blind"
        p.error(f"{args.model} is {what}, not a sharpening model told levels (such as "
                f"weights/student.pt): it cannot be told the quality")
    if args.where:
        try:
            _where(model.eval(), train._colour_validation_photos(256))
        except ImportError as e:
            p.error(f'the photos need the eval extra, pip install -e ".[eval]" ({e})')
        return 0
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    try:
        images = train_levels.training_images(192, generator)
        if args.colour_photos:
            images = torch.cat([images, train._8bit(
                train._photo_tiles(train.COLOUR_VALIDATION_PHOTOS, 128))])
        sets = train._docs_photo_sets(256, scored=args.scored)
        if args.colour_photos:
            sets.pop("colour", None)  # trained on
    except ImportError as e:
        p.error(f'the photos need the eval extra, pip install -e ".[eval]" ({e})')
    data = kd.batches(images, size=64, batch_size=16, generator=generator, degrade=_jpeg)
    print("mean gain in dB over the input (worst image's), told the quality", flush=True)
    print(f"start: {_scores(model, sets)}", flush=True)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, sharp, levels = next(data)
        kd.train_step(model.train(), opt, x, sharp, levels=levels, loss_fn=kd.psnr_loss)
        schedule.step()
        if step % 500 == 0 or step == args.steps:
            print(f"step {step} ({time.perf_counter() - start:.0f} s): "
                  f"{_scores(model.eval(), sets)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
