"""The main job: the paper's Table 1, with an honest distillation ablation.

    python train.py            # no download; ~50 min on 2 CPU cores without native bf16
    python train.py --help     # options

Trains a teacher, distils a student, trains the same student without the teacher (for equal
steps and for equal time), evaluates everything on held-out images and writes ``runs/demo/``:
the four models (each loads with ``sharpen.load_model``), ``report.json``, ``report.md`` and
``comparison.png``. Composed from the public API of ``sharpen``, ``kd`` and ``metrics`` only,
as nanoGPT's ``train.py`` uses its ``model.py``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import kd
import metrics
import sharpen

POOL_REUSE = 4  # each precomputed teacher batch serves this many distillation steps
POOL_BYTES = 2**30  # teacher outputs held at once, with their batches: longer runs draw new pools
UNKNOWN = 0.25  # --conditioned: the share of training images whose levels are not told
GAUSSIAN_TOLD = 0.3  # --conditioned 4: the share of blurred images made isotropic Gaussians, told
ESTIMATOR = Path("weights") / "levels.pt"  # --estimated: the level estimator, in this folder
RUN_FILES = [f"{name}.pt" for name in ("teacher", "student", "student_nokd",
                                       "student_nokd_time")] + [
    "report.json", "report.md", "comparison.png", "robustness.png"]  # what a run writes
CLIP = 1.0  # gradient-norm clip: typical norms are 0.1-0.5, rare bf16 spikes reach 100
PSNR_CLIP = 200.0  # the same with a PSNR term (--loss or --kd-loss psnr): norms of 10-100 in dB
LOSSES = {"l1_ssim": kd.l1_ssim_loss, "psnr": kd.psnr_loss}
KD_LOSSES = {"mse": F.mse_loss, **LOSSES}
LEAVES = {"supersample": 2, "texture": 0.5}  # anti-aliased, textured: chosen on validation photos
# scikit-image's bundled photographs. The colour ones score and choose nothing; the grey ones
# (as RGB) choose settings (texture, alpha, the baselines' strengths) and never score.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle")
VALIDATION_PHOTOS = ("camera", "coins", "moon", "clock")
# docs/validate.py --colour: colour photos from matplotlib's and scikit-learn's wheels, and
# data/raccoon.png (sharp fur: data/README.md)
COLOUR_VALIDATION_PHOTOS = ("grace_hopper", "china", "flower", "raccoon")
# --train-photos: scikit-image's photographs that are neither scored nor validation photos
TRAIN_PHOTOS = ("hubble_deep_field", "immunohistochemistry", "retina", "cell", "page", "text",
                "grass", "gravel", "brick")

# The robustness table: named conditions, each (blur, noise std, JPEG quality), applied in that
# order to the sharp images rounded to 8 bits; the results are clipped to [0, 1] and rounded to
# 8 bits, as a photo file is. Random draws (shake paths, anisotropic angles, noise) come from
# ROBUSTNESS_SEED, so every run scores the same images.
ROBUSTNESS_SEED = 20261130
CONDITIONS = {
    "sharp": (None, 0.0, None),
    **{f"gaussian {s}": (("gaussian", s), 0.0, None) for s in (0.5, 1.0, 1.5, 2.0, 3.0)},
    "anisotropic 2.0 x 0.7": (("anisotropic", 2.0, 0.7), 0.0, None),
    "camera shake": (("shake", 13), 0.0, None),
    "defocus 2.0": (("disk", 2.0), 0.0, None),
    **{f"{b}noise {n}": (blur, n, None) for b, blur in (("", None), ("gaussian 1.5 + ",
                                                                     ("gaussian", 1.5)))
       for n in (0.01, 0.03)},
    **{f"{b}jpeg {q}": (blur, 0.0, q) for b, blur in (("", None), ("gaussian 1.5 + ",
                                                                   ("gaussian", 1.5)))
       for q in (50, 90)},
}
# Validation only (docs/validate.py --grain, train_levels.py): photo grain the table does not
# hold, each (blur, noise std, JPEG quality, grey): grey noise is the same in every channel, as
# in a camera's photos; per-channel noise under JPEG loses its colour to chroma subsampling.
GRAIN_CONDITIONS = {
    "grey noise 0.01": (None, 0.01, None, True),
    "grey noise 0.03": (None, 0.03, None, True),
    "grey noise 0.01 + jpeg 75": (None, 0.01, 75, True),
    "grey noise 0.03 + jpeg 75": (None, 0.03, 75, True),
    "noise 0.01 + jpeg 75": (None, 0.01, 75, False),
    "noise 0.03 + jpeg 75": (None, 0.03, 75, False),
    "gaussian 1.5 + grey noise 0.03": (("gaussian", 1.5), 0.03, None, True),
    "gaussian 1.5 + noise 0.03 + jpeg 75": (("gaussian", 1.5), 0.03, 75, False),
}
BALANCES = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0)  # Wiener, chosen per condition
UNSHARP = [(s, a) for s in (0.5, 1.0, 1.5, 2.0, 3.0)
           for a in (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python train.py",
        description="Train a teacher, distil a student, train the same student without the "
        "teacher (equal steps and equal time), and print the paper's Table 1. With no "
        "arguments: dead-leaves training images, Gaussian blur sigma 1.5, about 50 minutes on "
        "2 CPU cores without native bf16.",
    )
    p.add_argument("--steps", type=int, default=1000, help="teacher training steps (1000)")
    p.add_argument("--teacher", type=Path, default=None, metavar="MODEL.pt",
                   help="distil from this trained teacher (sharpen.save_model's file, such as "
                   "weights/teacher.pt) instead of training one; --steps is then ignored")
    p.add_argument("--init-teacher", type=Path, default=None, metavar="MODEL.pt",
                   help="fine-tune: start the teacher from this trained model and train it for "
                   "--steps more, with a fresh optimizer and learning-rate schedule")
    p.add_argument("--init-student", type=Path, default=None, metavar="MODEL.pt",
                   help="fine-tune: start every student (distilled and twins) from this trained "
                   "model, given --conditioned's inputs as --init-teacher is, instead of from "
                   "scratch")
    p.add_argument("--student-steps", type=int, default=1000,
                   help="steps of the distilled student and of its equal-steps twin (1000)")
    p.add_argument("--size", type=int, default=64, help="training crop size in pixels (64)")
    p.add_argument("--eval-size", type=int, default=256,
                   help="evaluation images are this size square, as the paper's 256x256 (256)")
    p.add_argument("--train-images", type=int, default=256,
                   help="dead-leaves training images (128x128) when no --data is given (256)")
    p.add_argument("--train-photos", action="store_true",
                   help="also train on 128x128 tiles of scikit-image's photographs that are "
                   "neither scored nor validation photos, native and halved (needs scikit-image)")
    p.add_argument("--batch-size", type=int, default=16, help="training crops per step (16)")
    p.add_argument("--sigma", type=float, default=1.5, help="blur strength, pixels (1.5)")
    p.add_argument("--blur", choices=("gaussian", "motion", "mixed", "real"), default="gaussian",
                   help="how training and evaluation images are degraded: the paper's Gaussian, "
                   "camera shake, a mix of blurs, or real: what photos meet (blur or none, "
                   "noise, JPEG; sharpen.degrade)")
    p.add_argument("--conditioned", type=int, nargs="?", const=1, default=0, choices=(1, 2, 3, 4),
                   help="models told what was done to each image (blur, noise, JPEG: "
                   "sharpen.unet(conditioned=1)), trained with a quarter of the images' levels "
                   "unknown so that they also sharpen blind; the robustness table adds them "
                   "told. 2: also given a Wiener estimate from the told levels "
                   "(unet(conditioned=2)); 3: the same, with an estimate that also smooths "
                   "where the told blur is 0; 4: as 3, and told whether the blur is an "
                   "isotropic Gaussian (whose estimate is exact), 30%% of the blurred images "
                   "blurred so instead and told. Needs --blur gaussian or real and the U-Net; an "
                   "--init-teacher or --init-student with fewer inputs gets them added, "
                   "starting at zero")
    p.add_argument("--gaussian-told", type=float, default=None, metavar="SHARE",
                   help=f"with --conditioned 4: the share of the blurred training images "
                   f"blurred by an isotropic Gaussian instead and told so (default "
                   f"{GAUSSIAN_TOLD:g})")
    p.add_argument("--kernel-told", type=float, default=0.0, metavar="SHARE",
                   help="with --conditioned 2 to 4 and --blur real: this share of the blurred "
                   "training images that have a kernel (not resampled) are told it, and get its "
                   "Wiener estimate (and gaussian 1 with --conditioned 4, the estimate being "
                   "exact), as sharpen(..., kernel=) tells them (default 0)")
    p.add_argument("--estimated", type=float, default=0.0, metavar="SHARE",
                   help="with --conditioned and --blur real: this share of the training images "
                   "told their levels (not unknown, not told their shape or kernel) are told "
                   "the levels --estimator reads from them instead, as python sharpen.py "
                   "photo.jpg tells a photo by default; the teacher, trained here or given by "
                   "--teacher, is told them too (default 0)")
    p.add_argument("--estimator", type=Path, default=None, metavar="ESTIMATOR.pt",
                   help="with --estimated: the level estimator (default: weights/levels.pt)")
    p.add_argument("--arch", choices=("unet", "paper"), default="unet",
                   help="our U-Net teacher/student, or the source paper's networks")
    p.add_argument("--alpha", type=float, default=0.9,
                   help="weight of the teacher term (0.9; the paper: 0.5)")
    p.add_argument("--loss", choices=tuple(LOSSES), default="l1_ssim",
                   help="sharp term of every model: the paper's L1 + 0.5 (1 - SSIM) (the "
                   "default), or minus the mean PSNR over the images (kd.psnr_loss: every image "
                   "counts by its dB)")
    p.add_argument("--kd-loss", choices=tuple(KD_LOSSES), default="l1_ssim",
                   help="teacher term: L1 + SSIM (the default), the paper's MSE, or minus the "
                   "mean PSNR")
    p.add_argument("--feature-weight", type=float, default=0.0,
                   help="weight of the feature (hint) distillation term (0)")
    p.add_argument("--seeds", type=int, default=1,
                   help="repeat the three students for this many seeds (same teacher) (1)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="training precision: bf16 autocast or float32; auto: bf16 where the "
                   "hardware computes it natively (sharpen.fast_bf16), else float32")
    p.add_argument("--no-robustness", action="store_true",
                   help="skip the robustness table (the slowest part of the evaluation)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the data and the teacher; the students take it and the "
                   "next --seeds - 1 (0)")
    p.add_argument("--lr", type=float, default=2e-3,
                   help="Adam's learning rate, decayed to zero over each model's steps "
                   "(2e-3; lower fine-tunes more gently)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (runs/demo)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out: its models, reports and figures are "
                        "deleted first (without it, such a folder is refused)")
    p.add_argument("--data", type=Path, default=None,
                   help="a GoPro_Large folder: train on its sharp train frames resized to 256x256 "
                   "and blurred as --blur says (the paper's protocol), evaluate on its test split")
    p.add_argument("--real-blur", action="store_true",
                   help="with --data: use GoPro's real blurred frames instead of synthetic blur")
    p.add_argument("--eval-images", type=int, default=100,
                   help="with --data: evaluate on this many test frames, evenly spaced (100)")
    args = p.parse_args(argv)
    for name in ("steps", "student_steps", "batch_size", "seeds", "eval_images", "train_images"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.eval_size < 16:
        p.error(f"--eval-size must be >= 16, got {args.eval_size}")
    largest = 128 if args.data is None else args.eval_size  # the training images' size
    if not 16 <= args.size <= largest:
        p.error(f"--size must be between 16 and {largest} (the training images' size), "
                f"got {args.size}")
    if not 0 < args.sigma < math.inf:
        p.error(f"--sigma must be finite and > 0, got {args.sigma}")
    if not 0 < args.lr < math.inf:
        p.error(f"--lr must be finite and > 0, got {args.lr}")
    try:  # the blur's largest kernel must fit the crops: degrade checks it before any work
        sharpen.degrade(torch.zeros(1, 3, args.size, args.size), kind=args.blur, sigma=args.sigma)
    except ValueError as e:
        p.error(f"--sigma {args.sigma:g}: {e}")
    if not 0 <= args.alpha <= 1:
        p.error(f"--alpha must be in [0, 1], got {args.alpha}")
    if not 0 <= args.feature_weight < math.inf:
        p.error(f"--feature-weight must be finite and >= 0, got {args.feature_weight}")
    if args.teacher is not None and args.init_teacher is not None:
        p.error("--teacher and --init-teacher exclude each other: --teacher is used as it is")
    if args.conditioned and (args.blur not in ("gaussian", "real") or args.arch != "unet"
                             or args.real_blur):
        p.error("--conditioned needs --blur gaussian or real, --arch unet and no --real-blur")
    if not 0 <= args.kernel_told <= 1:
        p.error(f"--kernel-told must be in [0, 1], got {args.kernel_told}")
    if args.gaussian_told is not None and (args.conditioned != 4
                                           or not 0 <= args.gaussian_told <= 1):
        p.error(f"--gaussian-told needs --conditioned 4 and a share in [0, 1], got "
                f"{args.gaussian_told} with --conditioned {args.conditioned}")
    if args.conditioned == 4 and args.blur != "real":
        p.error(f"--conditioned 4 needs --blur real (its Gaussian share is drawn from the real "
                f"mix), got --blur {args.blur}")
    if args.conditioned == 4 and args.gaussian_told is None:
        args.gaussian_told = GAUSSIAN_TOLD
    if args.kernel_told and (args.conditioned < 2 or args.blur != "real"):
        p.error("--kernel-told needs --conditioned 2, 3 or 4 (a model given an estimate) and "
                "--blur real")
    if not 0 <= args.estimated <= 1:
        p.error(f"--estimated must be in [0, 1], got {args.estimated}")
    if args.estimated and (not args.conditioned or args.blur != "real"):
        given = f"--conditioned {args.conditioned}" if args.conditioned else "no --conditioned"
        p.error(f"--estimated needs --conditioned and --blur real, got {given} and --blur "
                f"{args.blur}")
    if args.estimator is not None and not args.estimated:
        p.error(f"--estimator {args.estimator} needs --estimated SHARE > 0")
    if args.real_blur and args.data is None:
        p.error("--real-blur needs --data ROOT")
    if args.data is None and args.eval_size > 512 and _has_skimage():
        p.error(f"--eval-size must be at most 512 without --data (photo_crops are native-size "
                f"crops, and the largest scored photo is 512 pixels on its short side), got "
                f"{args.eval_size}")
    if args.train_photos and (args.data is not None or not _has_skimage()):
        p.error("--train-photos needs scikit-image (pip install -e \".[eval]\") and no --data")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is available")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} is a file, not a folder")
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.clip = PSNR_CLIP if "psnr" in (args.loss, args.kd_loss) else CLIP
    args.amp = args.precision == "bf16" or (args.precision == "auto"
                                            and sharpen.fast_bf16(args.device))
    return args


def _8bit(x: torch.Tensor) -> torch.Tensor:
    """Clipped to [0, 1] and rounded to 8 bits, as an image file is."""
    return (x.clamp(0, 1) * 255).round() / 255


def _degrade_8bit(sharp: torch.Tensor, *, kind: str, sigma: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """``sharpen.degrade``, then 8 bits, as the paper's Pillow pipeline gave its blurred images:
    a network trained on unrounded blur learns to amplify the rounding of every photo file."""
    return _8bit(sharpen.degrade(sharp, kind=kind, sigma=sigma, generator=generator))


def _degrade_told(sharp: torch.Tensor, *, kind: str, sigma: float, gaussian_told: float = 0.0,
                  kernel_told: float = 0.0, estimated: float = 0.0,
                  estimator: nn.Module | None = None, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, ...]:
    """``_degrade_8bit`` and the levels ``(B, 3)`` (``(B, 4)`` with ``gaussian_told``), a share
    ``UNKNOWN`` of them unknown (NaN), never one told Gaussian: the blind images are drawn from
    the mix as without ``gaussian_told``. With ``kernel_told``, that share of the blurred images
    that have a kernel are told it, and never unknown: also the kernels ``(B, k, k)``, all NaN
    for the others (their gaussian level, if any, is then 1). With ``estimated``, that share of
    the images told neither unknown nor exact are told the levels ``estimator`` reads from them
    instead, as the CLI tells a photo by default."""
    degraded = sharpen.degrade(sharp, kind=kind, sigma=sigma, generator=generator,
                               gaussian_told=gaussian_told, return_levels=True,
                               return_kernels=kernel_told > 0)
    blurred, levels = degraded[:2]
    device = generator.device if generator is not None else "cpu"
    exact = levels[:, 3].cpu() == 1 if gaussian_told else torch.zeros(len(sharp), dtype=bool)
    if kernel_told:
        kernels = degraded[2]
        told = kernels.isfinite().flatten(1).all(1).cpu() & (levels[:, 0].cpu() > 0) & ~exact
        told &= torch.rand(len(sharp), generator=generator, device=device).cpu() < kernel_told
        kernels = kernels.masked_fill(~told.to(kernels.device)[:, None, None], math.nan)
        if levels.shape[1] == 4:
            levels[told.to(levels.device), 3] = 1
        exact |= told
    others = ~exact
    unknown = torch.rand(len(sharp), generator=generator, device=device) < UNKNOWN * len(
        sharp) / max(1, int(others.sum()))
    unknown = unknown.cpu() & others
    levels = levels.masked_fill(unknown.to(levels.device)[:, None], math.nan)
    blurred = _8bit(blurred)
    if estimated:
        read = others & ~unknown & (torch.rand(len(sharp), generator=generator,
                                               device=device).cpu() < estimated)
        if read.any():
            read = read.to(levels.device)
            # as the CLI tells them: the blur at most estimate_levels's max_blur (from 3af9aa6)
            levels[read, :3] = sharpen.estimate_levels(estimator, blurred[read],
                                                       precision="fp32").to(levels)
    return (blurred, levels, *([kernels] if kernel_told else []))


def _told(model: nn.Module, conditioned: int) -> nn.Module:
    """A ``unet`` of fewer inputs (blind, or ``conditioned=1``) as a ``conditioned`` one, the
    new inputs added with zero weights: it starts out the same, plus the Wiener estimate's
    correction for ``conditioned`` 2 or 3, told no gaussian column for 4. A model with the
    estimate (2 or 3) keeps its weights as the other kind; given fewer inputs than it has (a
    ``conditioned=4`` one, any other), a model is returned as it is."""
    if model.conditioned in (conditioned, 4) or conditioned < min(model.conditioned, 2):
        return model
    kwargs = {**model.config["kwargs"], "conditioned": conditioned}
    told = sharpen.unet(**kwargs).to(next(model.parameters()).device)
    state = model.state_dict()
    head = told.head.weight.detach().clone().zero_()
    old = state["head.weight"]
    maps = model.in_channels * model.shuffle**2 + (1 + len(sharpen.LEVELS) if model.conditioned
                                                   else 0)
    head[:, :maps] = old[:, :maps]  # the image and the level maps; then the estimate, if any
    if old.shape[1] > maps:
        head[:, head.shape[1] - (old.shape[1] - maps):] = old[:, maps:]
    told.load_state_dict({**state, "head.weight": head})
    return told


def _resized(img: torch.Tensor, size: int, mode: str = "area") -> torch.Tensor:
    """``(3, H, W)`` resized to ``size`` x ``size``, by area averaging as the paper resized, or
    bicubically (antialiased, clipped to [0, 1])."""
    if mode == "area":
        return F.interpolate(img[None], size=(size, size), mode="area")[0]
    return F.interpolate(img[None], size=(size, size), mode="bicubic", antialias=True,
                         align_corners=False)[0].clamp(0, 1)


def _center(img: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` window of ``img`` (all of it if smaller)."""
    H, W = img.shape[-2:]
    top, left = max(0, (H - size) // 2), max(0, (W - size) // 2)
    return img[..., top : top + size, left : left + size]


def _photo(name: str) -> torch.Tensor:
    """One of scikit-image's bundled photographs, or of ``COLOUR_VALIDATION_PHOTOS`` (which need
    matplotlib and scikit-learn, the eval extra), as ``(3, H, W)`` float32 (grey copied to RGB)."""
    if name == "grace_hopper":
        from matplotlib import cbook

        return sharpen.load_image(cbook.get_sample_data(f"{name}.jpg", asfileobj=False))
    if name == "raccoon":
        return sharpen.load_image(Path(__file__).resolve().parent / "data" / f"{name}.png")
    if name in COLOUR_VALIDATION_PHOTOS:
        from sklearn.datasets import load_sample_image

        return torch.from_numpy(load_sample_image(f"{name}.jpg").copy()).permute(2, 0, 1) / 255
    from skimage import data as skdata

    img = skdata.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skdata, name)()
    img = torch.from_numpy(img).float() / 255
    return img.expand(3, -1, -1) if img.ndim == 2 else img.permute(2, 0, 1)[:3]


def _validation_photos(size: int) -> torch.Tensor:
    """The validation photos ``(N, 3, size, size)``, area-resized and 8-bit: settings are chosen
    on them, and they never score."""
    return _8bit(torch.stack([_resized(_photo(p), size) for p in VALIDATION_PHOTOS]))


def _colour_validation_photos(size: int) -> torch.Tensor:
    """``COLOUR_VALIDATION_PHOTOS`` as ``(4, 3, size, size)``, area-resized and 8-bit like the
    validation photos; needs matplotlib and scikit-learn (the eval extra)."""
    return _8bit(torch.stack([_resized(_photo(p), size) for p in COLOUR_VALIDATION_PHOTOS]))


def _load_estimator(flag: str, path: Path, *, map_location: str | None = None
                    ) -> sharpen.LevelNet:
    """The level estimator file given as ``flag``; a ValueError naming the flag otherwise."""
    try:
        estimator = sharpen.load_model(path, map_location=map_location)
    except (OSError, ValueError) as e:
        raise ValueError(f"{flag}: {e}") from e
    if not isinstance(estimator, sharpen.LevelNet):
        raise ValueError(f"{flag} {path} is not a level estimator (train_levels.py's)")
    return estimator


def _docs_photo_sets(size: int, *, scored: bool = False) -> dict[str, torch.Tensor]:
    """The docs scripts' photos of ``size``: ``{"grey": _validation_photos, "colour":
    _colour_validation_photos}``, or with ``scored`` (their ``--scored``) ``_photo_sets``."""
    if scored:
        return _photo_sets(PHOTOS, size)
    return {"grey": _validation_photos(size), "colour": _colour_validation_photos(size)}


def _photo_sets(names: tuple[str, ...], size: int) -> dict[str, torch.Tensor]:
    """The photos three ways, ``(N, 3, size, size)`` each: area-resized (the paper's protocol),
    bicubically resized, and native-resolution central crops (camera detail, no resizing)."""
    photos = [_photo(name) for name in names]
    return {"photos": _8bit(torch.stack([_resized(p, size) for p in photos])),
            "photos_bicubic": _8bit(torch.stack([_resized(p, size, "bicubic") for p in photos])),
            "photo_crops": torch.stack([_center(p, size) for p in photos
                                        if min(p.shape[-2:]) >= size])}


def _photo_tiles(names: tuple[str, ...], size: int) -> torch.Tensor:
    """Non-overlapping ``size`` x ``size`` tiles ``(N, 3, size, size)`` of the photos at native
    resolution and area-halved (the soft, 1411-pixel retina and ``grace_hopper``, a JPEG of
    quality 80 with subsampled chroma, halved only)."""
    tiles = []
    for name in names:
        photo = _photo(name)
        for img in ([] if name in ("retina", "grace_hopper") else [photo]) + [F.interpolate(
                photo[None], scale_factor=0.5, mode="area")[0]]:
            rows, cols = img.shape[-2] // size, img.shape[-1] // size
            grid = img[:, : rows * size, : cols * size].reshape(3, rows, size, cols, size)
            tiles.append(grid.permute(1, 3, 0, 2, 4).reshape(-1, 3, size, size))
    return torch.cat(tiles)


def _datasets(args: argparse.Namespace, degrade: Callable, generator: torch.Generator):
    """Training source, evaluation sets ``{name: (sharp images or None, [(blurred, sharp)...])}``
    and a description. Evaluation images are made apart from training images and never trained
    on."""
    if args.data is not None:
        split = kd.gopro_pairs(args.data, split="train")
        test = kd.gopro_pairs(args.data, split="test")
        test = [test[round(i)] for i in torch.linspace(0, len(test) - 1,
                                                       min(args.eval_images, len(test))).tolist()]
        if args.real_blur:
            if len(split) < args.batch_size:  # the loader drops an incomplete last batch
                raise ValueError(f"--data {args.data} has {len(split)} training pairs, fewer "
                                 f"than --batch-size {args.batch_size}")
            desc = f"GoPro real blur ({args.data}), full frames"
            return split, {"gopro_test": (None, test)}, desc
        size = args.eval_size
        print(f"loading {len(split)} GoPro training frames, resized to {size}x{size}")
        train = _8bit(torch.stack([_resized(sharpen.load_image(s), size) for _, s in split]))
        sharp = _8bit(torch.stack([_resized(sharpen.load_image(s), size) for _, s in test]))
        pairs = list(zip(degrade(sharp, generator=generator), sharp))
        return train, {"gopro_test": (sharp, pairs)}, (
            f"GoPro sharp frames ({args.data}) resized to {size}x{size}")
    size = args.eval_size
    train = sharpen.dead_leaves(args.train_images, 128, generator=generator, **LEAVES)
    train = _8bit(train)  # 8-bit, like photos: an image left sharp is then its own target
    if args.train_photos:
        tiles = _8bit(_photo_tiles(TRAIN_PHOTOS, 128))
        train = torch.cat([train, tiles])
    held_out = _8bit(sharpen.dead_leaves(16, size, generator=generator, **LEAVES))
    sets = {"dead_leaves": held_out}
    desc = (f"dead leaves ({', '.join(f'{k}={v}' for k, v in LEAVES.items())}): "
            f"{args.train_images} training images of 128x128, 16 held-out of {size}x{size}")
    if args.train_photos:
        desc += (f"; and {len(tiles)} training tiles of 128x128 from scikit-image's "
                 f"{', '.join(TRAIN_PHOTOS)}, at native resolution and halved (retina halved only)")
    if _has_skimage():
        sets |= _photo_sets(PHOTOS, size)
        desc += (f"; photos: scikit-image's {', '.join(PHOTOS)}, {size}x{size}, area-resized "
                 f"(photos), bicubically resized (photos_bicubic) and as native-resolution "
                 f"central crops (photo_crops)")
    else:
        print("scikit-image is not installed: evaluating on dead-leaves images only")
    sets = {name: (x, list(zip(degrade(x, generator=generator), x))) for name, x in sets.items()}
    return train, sets, desc


def _has_skimage() -> bool:
    try:
        import skimage  # noqa: F401
    except ImportError:
        return False
    return True


class _Progress:
    """Prints a line every few seconds: stage, step/total, loss, images per second, time left,
    timed from the end of the first step, which also pays for set-up (the teacher's outputs)."""

    def __init__(self, stage: str, total: int, batch: int):
        self.stage, self.total, self.batch = stage, total, batch
        self.start = self.last = self.first = time.perf_counter()  # first: step 1's end

    def __call__(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        if step == 1:
            self.first = now
        if now - self.last < 3 and step != self.total:
            return
        self.last = now
        line = f"[{self.stage}] step {step}/{self.total}  loss {loss:.4f}  "
        if step == 1:
            print(line + f"(first step {now - self.start:.0f} s)", flush=True)
            return
        per_step = (now - self.first) / (step - 1)
        print(line + f"{self.batch / per_step:.0f} img/s  "
              f"{per_step * (self.total - step):.0f} s left", flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _new_model(make: Callable[[], nn.Module], seed: int, device: torch.device) -> nn.Module:
    """``make()`` initialised from ``seed`` without touching torch's global generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make()
    return model.to(device, memory_format=torch.channels_last)


def _adam(params, steps: int, lr: float) -> tuple[torch.optim.Optimizer, object]:
    """Adam with a cosine decay from ``lr`` to zero over ``steps``: short runs need the decay."""
    opt = torch.optim.Adam(params, lr=lr)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)


def _ms_per_image(model: nn.Module, size: int, device: torch.device) -> float:
    """Median milliseconds of one forward pass on a 1 x 3 x size x size image."""
    x = torch.rand(1, 3, size, size, device=device)
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(8):
            _sync(device)
            start = time.perf_counter()
            model(x)
            _sync(device)
            if i >= 2:
                times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def _train_stream(args: argparse.Namespace, train, degrade: Callable, seed: int) -> Iterator:
    """Endless training batches on the run's device, drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    if not args.real_blur:
        yield from kd.batches(train, size=args.size, batch_size=args.batch_size,
                              generator=generator, degrade=degrade, device=args.device)
    loader = torch.utils.data.DataLoader(kd.PairDataset(train, size=args.size), shuffle=True,
                                         batch_size=args.batch_size, drop_last=True,
                                         num_workers=min(4, os.cpu_count() or 1),
                                         generator=generator, persistent_workers=True)
    while True:
        for blurred, sharp in loader:
            yield blurred.to(args.device), sharp.to(args.device)


def _pool_batches(args: argparse.Namespace) -> int:
    """Batches whose teacher outputs are held at once: enough for ``--student-steps``, at most
    ``POOL_BYTES`` of (blurred, sharp, teacher output) triples."""
    batch_bytes = 3 * 4 * args.batch_size * 3 * args.size**2
    return max(1, min(-(-args.student_steps // POOL_REUSE), POOL_BYTES // batch_bytes))


def _pooled(args: argparse.Namespace, train, degrade: Callable, seed: int,
            teacher: nn.Module | None) -> Iterator:
    """Endless ``(blurred, sharp, teacher output or None, levels or None, kernels or None)``
    batches, drawn from ``seed``.

    The batches come in pools: the teacher's outputs for a pool are computed once, then the
    pool is served ``POOL_REUSE`` times in a new random order each pass before the next pool is
    drawn, as large as the remaining ``--student-steps`` need (the last pool keeps serving). With
    or without a teacher, the same seed gives the same batches in the same order, so the students
    without a teacher see what the distilled one saw.
    """
    data, order = _train_stream(args, train, degrade, seed), torch.Generator().manual_seed(seed)
    most, served = _pool_batches(args), 0
    while True:
        pool, size = [], max(1, min(most, -(-(args.student_steps - served) // POOL_REUSE)))
        for _ in range(size):
            blurred, sharp, *extra = next(data)
            levels, kernels = (extra + [None, None])[:2]
            t_out = None
            if teacher is not None:
                with torch.no_grad(), torch.autocast(args.device.type, torch.bfloat16,
                                                     enabled=args.amp):
                    told = {} if levels is None else {
                        "levels": kd.teacher_levels(teacher, levels)}
                    if told and kernels is not None and teacher.conditioned >= 2:
                        told["kernel"] = kernels
                    t_out = teacher.eval()(blurred, **told).float()
            pool.append((blurred, sharp, t_out, levels, kernels))
        served += POOL_REUSE * size
        passes = 0
        while passes < POOL_REUSE or served >= args.student_steps:
            for i in torch.randperm(size, generator=order).tolist():
                yield pool[i]
            passes += 1


def _fit(model: nn.Module, steps: int, stage: str, args: argparse.Namespace, data: Iterator,
         step: Callable, extra: nn.Module | None = None) -> float:
    """``steps`` calls of ``step(model, optimizer, batch)`` under Adam with cosine decay, also
    training ``extra``'s parameters; returns the wall time in seconds."""
    opt, schedule = _adam([*model.parameters(), *(extra.parameters() if extra else [])], steps,
                          args.lr)
    progress = _Progress(stage, steps, args.batch_size)
    _sync(args.device)
    start = time.perf_counter()
    for i in range(1, steps + 1):
        try:
            progress(i, step(model, opt, next(data))["loss"])
        except FloatingPointError as e:  # the weights are as they were before this step
            print(f"error: {stage} diverged at step {i} ({e}): a lower --lr may help",
                  file=sys.stderr)
            raise SystemExit(1) from e
        schedule.step()
    _sync(args.device)
    return time.perf_counter() - start


def _students(args, teacher, make_student, train, degrade, seed: int) -> dict:
    """Distil a student, then train two twins without the teacher on the same batches: for the
    same steps, and for the steps that fit in the distillation's wall time (teacher included)."""
    n = args.student_steps
    models = {name: _new_model(make_student, seed, args.device)
              for name in ("student", "student_nokd", "student_nokd_time")}
    adapters = None
    if args.feature_weight:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            adapters = kd.feature_adapters(models["student"], teacher)

    def distil(model, opt, batch):
        blurred, sharp, t_out, levels, kernels = batch
        return kd.distill_step(model, teacher, opt, blurred, sharp, alpha=args.alpha, amp=args.amp,
                               loss_fn=LOSSES[args.loss], kd_loss_fn=KD_LOSSES[args.kd_loss],
                               teacher_output=t_out, feature_weight=args.feature_weight,
                               adapters=adapters, clip_grad_norm=args.clip, levels=levels,
                               kernel=kernels)

    def plain(model, opt, batch):
        return kd.train_step(model, opt, batch[0], batch[1], loss_fn=LOSSES[args.loss],
                             amp=args.amp, clip_grad_norm=args.clip, levels=batch[3],
                             kernel=batch[4])

    def fit(name: str, steps: int, stage: str, step: Callable) -> float:
        pooled = step is distil and not args.feature_weight  # features: the teacher every step
        data = _pooled(args, train, degrade, seed, teacher if pooled else None)
        return _fit(models[name], steps, f"{stage}, seed {seed}", args, data, step,
                    extra=adapters if step is distil else None)

    seconds = {"student": fit("student", n, "distil", distil)}
    seconds["student_nokd"] = fit("student_nokd", n, "no teacher", plain)
    time_steps = max(1, round(n * seconds["student"] / seconds["student_nokd"]))
    seconds["student_nokd_time"] = fit("student_nokd_time", time_steps, "no teacher, equal time",
                                       plain)
    return {"models": models, "seconds": seconds, "time_steps": time_steps,
            "pool_batches": 0 if args.feature_weight else _pool_batches(args)}


def _row(name: str, cost: dict, results: list[dict], set_name: str, n_sets: int,
         prefix: str = "") -> dict:
    """One row of the report: a model's cost, and the mean (and spread, over seeds) of its
    metrics on one evaluation set."""
    psnr = torch.tensor([r[prefix + "psnr"] for r in results], dtype=torch.float64)
    ssim = torch.tensor([r[prefix + "ssim"] for r in results], dtype=torch.float64)
    row = {"name": name, **cost, "psnr": psnr.mean().item(), "ssim": ssim.mean().item()}
    if len(results) > 1:
        row |= {"psnr_std": psnr.std().item(), "ssim_std": ssim.std().item(),
                "psnr_per_seed": psnr.tolist(), "ssim_per_seed": ssim.tolist()}
    if n_sets > 1:
        row["eval_set"] = set_name
    return row


LABELS = {"input": "Input (blurred)", "teacher": "Teacher", "student": "Student (distilled)",
          "student_nokd": "Student, no teacher, equal steps",
          "student_nokd_time": "Student, no teacher, equal time"}


def _markdown(protocol: dict, rows: list[dict]) -> str:
    """The report as Markdown: one table per evaluation set, in the layout of the paper's
    Table 1, plus the distillation gains."""
    lines = ["# Sharpening by knowledge distillation: results", "",
             f"Protocol: {protocol['summary']}", ""]
    for set_name in dict.fromkeys(r.get("eval_set", "") for r in rows):
        table = {r["name"]: r for r in rows if r.get("eval_set", "") == set_name}
        if set_name:
            lines += [f"## {set_name}", ""]
        size = protocol["image_size"]
        lines += [f"| Model | PSNR (dB) | SSIM | Params | GMACs at {size}² | ms / image |",
                  "|---|---|---|---|---|---|"]
        for name, r in table.items():
            spread = (f" ± {r['psnr_std']:.2f}", f" ± {r['ssim_std']:.4f}") if "psnr_std" in r \
                else ("", "")
            lines.append(f"| {LABELS[name]} | {r['psnr']:.2f}{spread[0]} | {r['ssim']:.4f}"
                         f"{spread[1]} | {r['params']:,} | {r['macs'] / 1e9:.2f} | "
                         f"{r['ms_per_image']:.1f} |")
        kd_row = table["student"]
        for twin, what in (("student_nokd", "equal steps"), ("student_nokd_time", "equal time")):
            gains = [a - b for a, b in zip(kd_row.get("psnr_per_seed", [kd_row["psnr"]]),
                                           table[twin].get("psnr_per_seed", [table[twin]["psnr"]]))]
            per_seed = f" (per seed: {', '.join(f'{g:+.2f}' for g in gains)})" if len(gains) > 1 \
                else ""
            lines.append(f"\nDistilled minus no-teacher student, {what}: "
                         f"{sum(gains) / len(gains):+.2f} dB{per_seed}.")
        lines.append("")
    if not protocol["real_blur"]:
        size = protocol["image_size"]
        paper = " (the source paper's protocol)" if protocol["blur"] == "gaussian" else ""
        lines.append(f"Synthetic {protocol['blur']}-blur numbers on {size}x{size} images{paper}: "
                     "not comparable with published GoPro real-blur scores.")
    return "\n".join(lines) + "\n"


def _robustness_markdown(rows: list[dict]) -> str:
    """One table per evaluation set: a row per condition, a column per model or baseline."""
    if not rows:
        return ""
    lines = ["## Robustness: photos and images blurred otherwise than in training", "",
             "Mean PSNR (dB) of each model's output, and in brackets the worst image's gain over "
             "the input (for `sharp`, whose input is perfect, the worst image's PSNR). Wiener is "
             "told the true blur kernel; its balance and the unsharp mask's sigma and amount "
             "were chosen per condition on the validation photos.", ""]
    names = list(dict.fromkeys(r["name"] for r in rows))
    for set_name in dict.fromkeys(r["eval_set"] for r in rows):
        table = {(r["condition"], r["name"]): r for r in rows if r["eval_set"] == set_name}
        lines += [f"### {set_name}", "", "| condition | " + " | ".join(
            _robust_label(n) for n in names) + " |", "|---" * (len(names) + 1) + "|"]
        for condition in dict.fromkeys(c for c, _ in table):
            cells = []
            for name in names:
                r = table[condition, name]
                value = "∞" if r["psnr"] is None else f"{r['psnr']:.2f}"
                if name != "input":
                    extra = r["psnr_worst"] if condition == "sharp" else r["gain_worst"]
                    value += " (∞)" if extra is None else (
                        f" ({extra:.1f})" if condition == "sharp" else f" ({extra:+.2f})")
                cells.append(value)
            lines.append(f"| {condition} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _robust_label(name: str) -> str:
    """A robustness row's column title: ``student_nokd_told`` is "student, no teacher, told"."""
    if name == "wiener":
        return "Wiener (true kernel)"
    return name.replace("unsharp", "unsharp mask").replace("_nokd", ", no teacher").replace(
        "_time", ", equal time").replace("_told", ", told").replace("_kernel", ", told the kernel")


def _as_image(img: torch.Tensor | str | os.PathLike) -> torch.Tensor:
    return img if isinstance(img, torch.Tensor) else sharpen.load_image(img)


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A model's output as evaluated here: float32 whatever the hardware, clamped to [0, 1]."""
    return sharpen.sharpen(model, x, precision="fp32")


def _kernels(blur: tuple | None, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` blur kernels ``(n, k, k)`` of a condition; a 1 x 1 kernel of 1 when none."""
    if blur is None:
        return torch.ones(n, 1, 1)
    kind, *p = blur
    if kind == "anisotropic":  # a random direction per image
        return torch.stack([sharpen.anisotropic_gaussian_kernel(p[0], p[1], 180 * float(a))
                            for a in torch.rand(n, generator=generator)])
    if kind == "shake":
        return torch.stack([sharpen.random_motion_kernel(p[0], generator=generator)
                            for _ in range(n)])
    if kind == "gaussian":
        g = sharpen.gaussian_kernel(p[0])
        k = g[:, None] * g[None, :]
    else:
        k = sharpen.disk_kernel(p[0])
    return k.expand(n, *k.shape)


def _validation_seed(name: str) -> int:
    """The seed of a condition's draws on the validation photos, apart from the table's."""
    if name in CONDITIONS:
        return ROBUSTNESS_SEED - 1 - list(CONDITIONS).index(name)
    return ROBUSTNESS_SEED - 1001 - list(GRAIN_CONDITIONS).index(name)


def _condition(sharp: torch.Tensor, name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit sharp images ``(N, 3, H, W)`` under a named condition (of ``CONDITIONS`` or
    ``GRAIN_CONDITIONS``), as 8-bit images, and their blur kernels."""
    blur, noise, quality, *grey = {**CONDITIONS, **GRAIN_CONDITIONS}[name]
    generator = torch.Generator().manual_seed(seed)
    kernels = _kernels(blur, len(sharp), generator)
    x = sharpen.blur(sharp, kernels) if blur else sharp
    if noise and any(grey):
        x = x + noise * torch.randn((len(x), 1, *x.shape[-2:]), generator=generator)
    elif noise:
        x = sharpen.add_noise(x, noise, generator=generator)
    return (sharpen.jpeg(x, quality) if quality else _8bit(x)), kernels


def _file_quality(name: str) -> float | None:
    """The JPEG quality that a file of a condition's images tells (``sharpen.jpeg_quality``):
    None where the condition has no JPEG (a lossless file)."""
    quality = {**CONDITIONS, **GRAIN_CONDITIONS}[name][2]
    return None if quality is None else float(quality)


def _condition_levels(name: str, kernels: torch.Tensor, *, gaussian: bool = False
                      ) -> torch.Tensor:
    """What a conditioned model is told about a condition's images: ``(N, 3)`` levels, or with
    ``gaussian`` (for ``conditioned=4``) ``(N, 4)``, also whether the blur is an isotropic
    Gaussian."""
    blur, noise, quality, *_ = {**CONDITIONS, **GRAIN_CONDITIONS}[name]
    n = len(kernels)
    columns = [sharpen.kernel_sigma(kernels), torch.full((n,), noise),
               torch.full((n,), float(quality or 100))]
    if gaussian:
        columns.append(torch.full((n,), float(blur is not None and blur[0] == "gaussian")))
    return torch.stack(columns, 1)


def _kernel_tells_more(name: str) -> bool:
    """Whether a condition's blur kernel tells a model more than its levels: not a Gaussian
    (told exactly by its levels and the gaussian column) and not none."""
    blur = {**CONDITIONS, **GRAIN_CONDITIONS}[name][0]
    return blur is not None and blur[0] != "gaussian"


def _baselines(x: torch.Tensor, kernels: torch.Tensor, settings: dict) -> dict[str, torch.Tensor]:
    """The classical alternatives' outputs, clamped to [0, 1] like the networks'."""
    wiener = sharpen.wiener(x, kernels, balance=settings["wiener_balance"])
    unsharp = sharpen.unsharp_mask(x, sigma=settings["unsharp_sigma"],
                                   amount=settings["unsharp_amount"])
    return {"wiener": wiener.nan_to_num().clamp(0, 1), "unsharp": unsharp.clamp(0, 1)}


def _tune_baselines(validation: torch.Tensor) -> dict[str, dict]:
    """Wiener's balance, and the unsharp mask's sigma and amount, for each condition: those of
    the best mean PSNR on the validation photos, which never score."""
    settings = {}
    for name in CONDITIONS:
        x, kernels = _condition(validation, name, _validation_seed(name))

        def score(out: torch.Tensor) -> float:
            return metrics.psnr(out.nan_to_num().clamp(0, 1), validation).mean().item()

        balance = max(BALANCES, key=lambda b: score(sharpen.wiener(x, kernels, balance=b)))  # noqa: B023
        blurred = {s: sharpen.gaussian_blur(x, s) for s in dict.fromkeys(s for s, _ in UNSHARP)}
        # unsharp_mask(x, sigma=s, amount=a), with the blur shared by the amounts:
        sigma, amount = max(UNSHARP, key=lambda p: score(torch.lerp(blurred[p[0]], x, 1 + p[1])))  # noqa: B023
        settings[name] = {"wiener_balance": balance, "unsharp_sigma": sigma,
                          "unsharp_amount": amount}
    return settings


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _robustness(models: dict[str, nn.Module], sets: dict, settings: dict) -> list[dict]:
    """Every model and baseline on every evaluation set under every condition (conditioned
    models blind, and again as ``<name>_told``, told the condition's levels, and those given a
    Wiener estimate as ``<name>_kernel``, told the true blur kernel too, which repeats the told
    output where the kernel says no more than the levels): mean PSNR and
    SSIM, the worst image's PSNR, and the mean and worst-image PSNR gain over the input (None
    for ``sharp``, whose input is perfect). Infinite PSNRs (exact copies) are None in JSON."""
    rows = []
    for s, (set_name, sharp) in enumerate(sets.items()):
        print(f"robustness on {set_name} ({len(sharp)} images, {len(CONDITIONS)} conditions)",
              flush=True)
        for c, name in enumerate(CONDITIONS):
            x, kernels = _condition(sharp, name, ROBUSTNESS_SEED + 100 * s + c)
            outputs = {"input": x, **_baselines(x, kernels, settings[name]),
                       **{m: _run(model, x) for m, model in models.items()}}
            outputs |= {f"{m}_told": sharpen.sharpen(
                model, x, precision="fp32", levels=_condition_levels(
                    name, kernels, gaussian=model.conditioned == 4))
                for m, model in models.items() if getattr(model, "conditioned", 0)}
            outputs |= {f"{m}_kernel": sharpen.sharpen(
                model, x, precision="fp32", levels=_condition_levels(name, kernels),
                kernel=kernels) if _kernel_tells_more(name) else outputs[f"{m}_told"]
                for m, model in models.items() if getattr(model, "conditioned", 0) >= 2}
            base = metrics.psnr(x, sharp)
            for label, out in outputs.items():
                psnr, ssim = metrics.psnr(out, sharp), metrics.ssim(out, sharp)
                gain = None if name == "sharp" else psnr - base
                rows.append({
                    "eval_set": set_name, "condition": name, "name": label,
                    "psnr": _finite(psnr.mean().item()), "ssim": ssim.mean().item(),
                    "psnr_worst": _finite(psnr.min().item()),
                    "gain_mean": None if gain is None else gain.mean().item(),
                    "gain_worst": None if gain is None else gain.min().item()})
    return rows


def _grid(path: Path, rows: list[list[tuple[str, torch.Tensor, torch.Tensor | None]]]) -> None:
    """A figure of labelled images, PNG or (for a ``.jpg`` path) JPEG of quality 90: each cell
    ``(label, image, reference)``, the label followed by the PSNR / SSIM against the reference
    when there is one."""
    from PIL import Image, ImageDraw

    label_h, size = 14, rows[0][0][1].shape[-1]
    canvas = Image.new("RGB", (max(map(len, rows)) * size, len(rows) * (size + label_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        for c, (label, img, ref) in enumerate(row):
            img = img.clamp(0, 1).cpu()
            arr = (img * 255).round().byte().permute(1, 2, 0).numpy()
            top = r * (size + label_h)
            canvas.paste(Image.fromarray(arr), (c * size, top + label_h))
            if ref is not None:
                psnr = metrics.psnr(img, ref).item()
                label += f" {psnr:.2f} dB / {metrics.ssim(img, ref).item():.3f}" if \
                    math.isfinite(psnr) else " (identical)"
            draw.text((c * size + 3, top + 1), label, fill="black")
    jpeg = {"format": "JPEG", "quality": 90} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    sharpen.atomic_write(path, lambda f: canvas.save(f, **(jpeg or {"format": "PNG"})))


def _figures(out: Path, models: dict[str, nn.Module], pairs: list, photos: torch.Tensor | None,
             settings: dict | None) -> None:
    """comparison.png: blurred | student | teacher | sharp for three evaluation images. With
    photos, robustness.png: two photos sharp, under Gaussian sigma 1.0 and sigma 1.5, as given to
    the unsharp mask, Wiener, the teacher and the student."""
    rows = []
    for blurred, sharp in pairs[:3]:
        blurred, sharp = (_center(_as_image(x), 256) for x in (blurred, sharp))
        rows.append([("blurred", blurred, sharp),
                     *[(name, _run(models[name], blurred), sharp)
                       for name in ("student", "teacher")], ("sharp", sharp, None)])
    _grid(out / "comparison.png", rows)
    if photos is None:
        return
    rows = []
    for photo in photos[[0, 2]]:
        for name in ("sharp", "gaussian 1.0", "gaussian 1.5"):
            x, kernels = _condition(photo[None], name, ROBUSTNESS_SEED)
            outputs = {"input": x, **_baselines(x, kernels, settings[name])}
            outputs |= {m: _run(models[m], x) for m in ("teacher", "student")}
            rows.append([(f"{name}: {label}" if label == "input" else label, img[0], photo)
                         for label, img in outputs.items()])
    _grid(out / "robustness.png", rows)


def _write_text(path: Path, text: str) -> None:
    sharpen.atomic_write(path, lambda f: f.write(text.encode()))


def main(argv: list[str] | None = None) -> int:
    """Reproduce the paper's Table 1 with a distillation ablation; see ``--help``."""
    args = _parse_args(argv)
    run_start = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    degrade = functools.partial(_degrade_8bit, kind=args.blur, sigma=args.sigma)
    train_degrade = functools.partial(
        _degrade_told, kind=args.blur, sigma=args.sigma, kernel_told=args.kernel_told,
        gaussian_told=args.gaussian_told or 0.0, estimated=args.estimated) \
        if args.conditioned else degrade
    try:
        if args.estimated:  # before any work
            path = args.estimator or Path(__file__).resolve().parent / ESTIMATOR
            estimator = _load_estimator("--estimator", path, map_location=args.device)
            train_degrade = functools.partial(train_degrade, estimator=estimator)
        given_teacher, init_teacher, init_student = (  # before any work
            None if path is None else sharpen.load_model(path, map_location=args.device)
            for path in (args.teacher, args.init_teacher, args.init_student))
        for flag, path, model in (("--teacher", args.teacher, given_teacher),
                                  ("--init-teacher", args.init_teacher, init_teacher),
                                  ("--init-student", args.init_student, init_student)):
            if isinstance(model, sharpen.LevelNet):
                raise ValueError(f"{flag} {path} is a level estimator (train_levels.py's), "
                                 "not a sharpening model")
        if args.conditioned and given_teacher is not None and not getattr(
                given_teacher, "conditioned", 0):
            raise ValueError(f"--conditioned needs a conditioned --teacher; {args.teacher} "
                             "sharpens blind (fine-tune it with --init-teacher instead)")
        if args.conditioned and init_teacher is not None:
            if not isinstance(init_teacher, sharpen.UNet):
                raise ValueError(f"--conditioned needs a U-Net --init-teacher, {args.init_teacher}"
                                 f" is a {type(init_teacher).__name__}")
            init_teacher = _told(init_teacher, args.conditioned)
        if args.conditioned and init_student is not None:
            if not isinstance(init_student, sharpen.UNet):
                raise ValueError(f"--conditioned needs a U-Net --init-student, {args.init_student}"
                                 f" is a {type(init_student).__name__}")
            init_student = _told(init_student, args.conditioned)
        held = [args.out / f for f in RUN_FILES if os.path.lexists(args.out / f)]
        if held and not args.overwrite:
            raise ValueError(f"--out {args.out} already holds a run ("
                             f"{', '.join(f.name for f in held)}): give another folder, or "
                             "--overwrite to replace it")
        for f in held:
            if f.is_dir() and not f.is_symlink():
                raise ValueError(f"--overwrite: {f} is a folder, not a file of a run")
        for flag in ("--teacher", "--init-teacher", "--init-student", "--estimator"):
            given = getattr(args, flag[2:].replace("-", "_"))
            if given is not None and given.exists() and any(
                    f.exists() and os.path.samefile(given, f) for f in held):
                raise ValueError(f"{flag} {given} is a file of the run in --out, which "
                                 "--overwrite would replace: copy it elsewhere first")
        train, eval_sets, data_desc = _datasets(args, degrade, generator)
        for f in held:  # --overwrite: nothing of the old run is left beside the new one
            f.unlink()
        args.out.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    make_teacher, make_student = ((sharpen.teacher, sharpen.student) if args.arch == "unet"
                                  else (sharpen.paper_teacher, sharpen.paper_student))
    if args.conditioned:
        make_teacher, make_student = (functools.partial(make, conditioned=args.conditioned)
                                      for make in (make_teacher, make_student))
    if init_student is not None:
        make_student = functools.partial(copy.deepcopy, init_student)
    print(f"device {args.device}, torch {torch.__version__}; data: {data_desc}")

    if given_teacher is not None:
        teacher, teacher_seconds = given_teacher.to(memory_format=torch.channels_last), 0.0
    else:
        teacher = _new_model(make_teacher, args.seed, args.device) if init_teacher is None \
            else init_teacher.to(memory_format=torch.channels_last)
        teacher_seconds = _fit(teacher, args.steps, "teacher", args,
                               _train_stream(args, train, train_degrade, args.seed),
                               lambda m, o, b: kd.train_step(m, o, b[0], b[1], amp=args.amp,
                                                             loss_fn=LOSSES[args.loss],
                                                             clip_grad_norm=args.clip,
                                                             levels=b[2] if len(b) > 2 else None,
                                                             kernel=b[3] if len(b) > 3 else None))
        sharpen.save_model(args.out / "teacher.pt", teacher)  # kept if the run is cut short
    seeds = [args.seed + i for i in range(args.seeds)]
    runs = [_students(args, teacher, make_student, train, train_degrade, seed) for seed in seeds]
    models = {"teacher": teacher, **runs[0]["models"]}
    for name, model in models.items():
        sharpen.save_model(args.out / f"{name}.pt", model)
    size = args.eval_size
    cost = {"input": {"params": 0, "macs": 0, "ms_per_image": 0.0}}
    for name in ("teacher", "student"):  # the three students share one architecture
        cost[name] = {"params": sharpen.count_params(models[name]),
                      "macs": sharpen.count_macs(models[name], size, size),
                      "ms_per_image": _ms_per_image(models[name], size, args.device)}
    cost |= dict.fromkeys(("student_nokd", "student_nokd_time"), cost["student"])
    rows, clock = [], time.perf_counter()
    for set_name, (_, pairs) in eval_sets.items():
        print(f"evaluating on {set_name} ({len(pairs)} images)", flush=True)
        teacher_result = kd.evaluate(teacher, pairs)
        common = {"set_name": set_name, "n_sets": len(eval_sets)}
        rows.append(_row("input", cost["input"], [teacher_result], prefix="input_", **common))
        rows.append(_row("teacher", cost["teacher"], [teacher_result], **common))
        for name in runs[0]["models"]:
            results = [kd.evaluate(run["models"][name], pairs) for run in runs]
            rows.append(_row(name, cost[name], results, **common))

    seconds = {"evaluation": time.perf_counter() - clock}
    robustness, settings = [], None
    robust_sets = {name: sharp for name, (sharp, _) in eval_sets.items() if sharp is not None}
    if robust_sets and _has_skimage() and not args.no_robustness:
        print(f"choosing the baselines' settings on {len(VALIDATION_PHOTOS)} validation photos",
              flush=True)
        clock = time.perf_counter()
        validation = _validation_photos(args.eval_size)
        settings = _tune_baselines(validation)
        seconds["baseline_tuning"] = time.perf_counter() - clock
        robustness = _robustness(models, robust_sets, settings)
        seconds["robustness"] = time.perf_counter() - clock - seconds["baseline_tuning"]

    figure_set = "photos" if "photos" in eval_sets else next(iter(eval_sets))
    _figures(args.out, models, eval_sets[figure_set][1],
             robust_sets["photos"] if settings and "photos" in eval_sets else None, settings)
    origin = f" from {args.init_teacher}" if args.init_teacher else ""
    protocol = {
        "blur": args.blur, "sigma": args.sigma, "image_size": args.eval_size, "data": data_desc,
        "real_blur": args.real_blur,
        "metric": "PSNR (data_range 1) and SSIM with scikit-image's defaults (7x7 uniform "
                  "window, sample covariance), mean over whole images; outputs clamped to [0, 1]",
        "arch": args.arch,
        "conditioned": {"inputs": models["student"].conditioned,  # an --init-student's own
                        "teacher_inputs": teacher.conditioned,
                        "unknown_share": UNKNOWN, "kernel_told": args.kernel_told,
                        "gaussian_told": args.gaussian_told or 0.0,
                        "estimated": args.estimated,
                        "estimator": str(args.estimator or ESTIMATOR) if args.estimated
                        else None}
        if args.conditioned else False,
        "teacher_steps": 0 if args.teacher else args.steps,
        "teacher": str(args.teacher) if args.teacher else f"trained here{origin}",
        "init_student": None if args.init_student is None else str(args.init_student),
        "student_steps": args.student_steps, "lr": args.lr,
        "time_matched_steps": [run["time_steps"] for run in runs],
        "teacher_pool_batches": runs[0]["pool_batches"], "crop_size": args.size,
        "batch_size": args.batch_size, "alpha": args.alpha, "loss": args.loss,
        "kd_loss": args.kd_loss,
        "feature_weight": args.feature_weight, "seeds": seeds, "device": str(args.device),
        "precision": (f"{'bf16 autocast' if args.amp else 'fp32'}, channels_last (training); "
                      "fp32 (evaluation, timing)"),
        "grad_clip": args.clip,
        "robustness": {"conditions": {name: {"blur": c[0], "noise": c[1], "jpeg_quality": c[2]}
                                      for name, c in CONDITIONS.items()},
                       "seed": ROBUSTNESS_SEED, "validation_photos": VALIDATION_PHOTOS,
                       "baseline_settings": settings,
                       "models": "the first seed's" if len(seeds) > 1 else "all"},
        "torch": torch.__version__,
        "stage_seconds": {"teacher": round(teacher_seconds, 1),
                          **{k: round(sum(r["seconds"][k] for r in runs) / len(runs), 1)
                             for k in runs[0]["seconds"]},
                          **{k: round(v, 1) for k, v in seconds.items()}},
        "wall_seconds": round(time.perf_counter() - run_start, 1),
    }
    extra = f", {args.kernel_told:.0%} of the blurred told their kernel" \
        if args.kernel_told else ""
    if args.estimated:
        extra += (f", {args.estimated:.0%} of those told neither their shape nor kernel told "
                  f"what {(args.estimator or ESTIMATOR).name} reads")
    told = f"models told the levels ({UNKNOWN:.0%} unknown in training{extra}); " \
        if args.conditioned else ""
    protocol["summary"] = (
        f"{args.blur} blur (sigma {args.sigma}), {data_desc}; {told}teacher "
        f"{args.teacher or f'{args.steps} steps{origin}'}, "
        f"students {args.student_steps} steps"
        f"{f' from {args.init_student}' if args.init_student else ''} (time-matched twin: "
        f"{', '.join(str(s) for s in protocol['time_matched_steps'])}), batch "
        f"{args.batch_size} of {args.size}x{args.size} crops, {args.loss} loss, alpha "
        f"{args.alpha} ({args.kd_loss} teacher term), "
        f"{len(seeds)} seed(s), {args.device}, torch {torch.__version__}, "
        f"{protocol['wall_seconds']:.0f} s; {protocol['metric']}.")
    _write_text(args.out / "report.json", json.dumps(
        {"protocol": protocol, "rows": rows, "robustness": robustness}, indent=2) + "\n")
    report = _markdown(protocol, rows) + _robustness_markdown(robustness)
    _write_text(args.out / "report.md", report)
    written = ", ".join(p.name for p in sorted(args.out.iterdir()) if p.suffix in (".pt", ".json",
                                                                                 ".md", ".png"))
    print("\n" + report + f"\nwrote {args.out}/: {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
