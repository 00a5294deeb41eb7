"""Training by knowledge distillation: losses, one-step functions, data, evaluation, checkpoints.

The method (Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015,
applied to restoration as in Team Falcons, "Image Sharpening Using Knowledge Distillation"):
a large teacher is trained on (blurred, sharp) pairs; a small student is then trained to match
both the sharp image and the teacher's output,

    loss = alpha * MSE(student(x), teacher(x)) + (1 - alpha) * L(student(x), sharp)
           + feature_weight * sum_levels MSE(adapter(student_features), teacher_features),

the last term being the "hint" loss of FitNets (Romero et al., 2015). ``L`` is by default the
paper's L1 + 0.5 (1 - SSIM), with an SSIM that carries a gradient (the paper's did not).

The functions here are pieces of a training loop, not a framework: ``train_step`` and
``distill_step`` do one optimisation step and return plain floats; the caller owns the loop,
the schedule and the logging. ``main()`` at the bottom composes them into the paper's Table 1.

Imports torch, numpy, pillow (through ``sharpen``) and the two sibling modules.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import metrics
import sharpen

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


# -- Losses ----------------------------------------------------------------------------------------


def l1_ssim_loss(pred: torch.Tensor, target: torch.Tensor, *, ssim_weight: float = 0.5
                 ) -> torch.Tensor:
    """The source paper's teacher loss: ``L1 + ssim_weight * (1 - SSIM)``, both batch means.

    SSIM is ``metrics.ssim`` with scikit-image's defaults (7x7 uniform window), so its term
    carries a gradient.

    Args:
        pred: ``(B, C, H, W)`` with H, W >= 7, values nominally in [0, 1].
        target: same shape.
        ssim_weight: weight of the SSIM term, >= 0.

    Returns:
        0-dim loss tensor.

    Raises:
        ValueError: ``ssim_weight`` is negative, or the shapes differ (from ``metrics.ssim``).
    """
    if not ssim_weight >= 0:
        raise ValueError(f"ssim_weight must be >= 0, got {ssim_weight!r}")
    loss = F.l1_loss(pred, target)
    if ssim_weight:
        loss = loss + ssim_weight * (1 - metrics.ssim(pred, target).mean())
    return loss


def charbonnier_loss(pred: torch.Tensor, target: torch.Tensor, *, eps: float = 1e-3
                     ) -> torch.Tensor:
    """Charbonnier loss ``mean(sqrt((pred - target)^2 + eps^2))``: a smooth L1.

    Raises:
        ValueError: ``eps`` is not positive.
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    return torch.sqrt((pred - target).square() + eps * eps).mean()


# -- One optimisation step -------------------------------------------------------------------------


def _check_pair(blurred: object, sharp: object) -> None:
    for name, t in (("blurred", blurred), ("sharp", sharp)):
        sharpen._check_tensor(name, t)
        if t.dim() != 4:
            raise ValueError(f"{name} must be (B, C, H, W), got {tuple(t.shape)}")
    if blurred.shape != sharp.shape:
        raise ValueError(f"blurred and sharp must have the same shape, got "
                         f"{tuple(blurred.shape)} and {tuple(sharp.shape)}")


def _autocast(x: torch.Tensor, amp: bool):
    """bf16 autocast on the tensor's device when ``amp``, else a no-op context."""
    return torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp)


def _finish_step(
    loss: torch.Tensor, terms: dict[str, float], optimizer: torch.optim.Optimizer,
    clip_grad_norm: float | None,
) -> dict[str, float]:
    """Backward, gradient-norm check and clipping, optimizer step; never steps on a non-finite
    loss or gradient, so a bad batch cannot corrupt the weights."""
    if not torch.isfinite(loss):
        listed = ", ".join(f"{k}={v:.6g}" for k, v in terms.items())
        raise FloatingPointError(f"non-finite loss, the optimizer did not step ({listed})")
    loss.backward()
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    max_norm = float("inf") if clip_grad_norm is None else clip_grad_norm
    grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, max_norm))
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        raise FloatingPointError(f"non-finite gradient norm {grad_norm}, the optimizer did not "
                                 f"step (loss={float(loss):.6g})")
    optimizer.step()
    return {**terms, "grad_norm": grad_norm}


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    blurred: torch.Tensor,
    sharp: torch.Tensor,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = l1_ssim_loss,
    amp: bool = False,
    clip_grad_norm: float | None = None,
) -> dict[str, float]:
    """One supervised step: ``loss_fn(model(blurred), sharp)``, backward, ``optimizer.step()``.

    Args:
        model: the network being trained (put in train mode), plain or DistributedDataParallel.
        optimizer: holds the model's parameters.
        blurred: input batch ``(B, C, H, W)``.
        sharp: target batch, same shape.
        loss_fn: ``(pred, target) -> 0-dim tensor``, computed in float32.
        amp: run the forward pass under bf16 autocast (CPU or CUDA).
        clip_grad_norm: clip the global gradient norm to this value.

    Returns:
        ``{"loss": float, "grad_norm": float}`` (the norm before clipping).

    Raises:
        TypeError: a batch is not a floating-point tensor.
        ValueError: a batch is not ``(B, C, H, W)``, or the two shapes differ.
        FloatingPointError: the loss or the gradient is not finite; the weights are untouched.

    Example:
        >>> model = sharpen.student()
        >>> opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        >>> x = torch.rand(2, 3, 32, 32)
        >>> sorted(train_step(model, opt, x, x))
        ['grad_norm', 'loss']
    """
    _check_pair(blurred, sharp)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with _autocast(blurred, amp):
        pred = model(blurred)
    loss = loss_fn(pred.float(), sharp)
    return _finish_step(loss, {"loss": loss.item()}, optimizer, clip_grad_norm)


def feature_adapters(student: nn.Module, teacher: nn.Module) -> nn.ModuleList:
    """1x1 convolutions mapping each student feature level to the teacher's channel count.

    Both models must support ``model(x, return_features=True) -> (out, [features...])`` with
    the same number of levels at the same resolutions (true of ``sharpen.teacher()`` and
    ``sharpen.student()``, and of ``sharpen.paper_teacher()`` and ``paper_student()``). The
    adapters are trained with the student, so give their parameters to the optimizer:

        adapters = feature_adapters(student, teacher)
        opt = torch.optim.Adam([*student.parameters(), *adapters.parameters()], lr=1e-3)
        distill_step(student, teacher, opt, x, y, feature_weight=0.1, adapters=adapters)

    Returns:
        ``nn.ModuleList`` of ``nn.Conv2d(c_student, c_teacher, 1)``, on the student's device.

    Raises:
        ValueError: the two models give different numbers of levels or resolutions.
    """
    device = next(student.parameters()).device
    channels = next(m for m in student.modules() if isinstance(m, nn.Conv2d)).in_channels
    probe = torch.zeros(1, channels, 32, 32, device=device)
    with torch.no_grad():
        _, fs = student(probe, return_features=True)
        _, ft = teacher(probe.to(next(teacher.parameters()).device), return_features=True)
    shapes_s = [tuple(f.shape[-2:]) for f in fs]
    shapes_t = [tuple(f.shape[-2:]) for f in ft]
    if shapes_s != shapes_t:
        raise ValueError(f"student and teacher features do not line up: student levels "
                         f"{shapes_s}, teacher levels {shapes_t} (for a 32x32 input)")
    return nn.ModuleList(
        nn.Conv2d(s.shape[1], t.shape[1], kernel_size=1) for s, t in zip(fs, ft)
    ).to(device)


def distill_step(
    student: nn.Module,
    teacher: nn.Module,
    optimizer: torch.optim.Optimizer,
    blurred: torch.Tensor,
    sharp: torch.Tensor,
    *,
    alpha: float = 0.5,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = l1_ssim_loss,
    kd_loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.mse_loss,
    feature_weight: float = 0.0,
    adapters: nn.ModuleList | None = None,
    teacher_output: torch.Tensor | None = None,
    amp: bool = False,
    clip_grad_norm: float | None = None,
) -> dict[str, float]:
    """One distillation step of the student towards the teacher and the sharp target.

    ``loss = alpha * kd + (1 - alpha) * gt + feature_weight * feat`` with
    ``kd = kd_loss_fn(student(blurred), teacher(blurred))`` (MSE, as in the paper),
    ``gt = loss_fn(student(blurred), sharp)``
    and ``feat`` the mean over levels of ``MSE(adapter(student feature), teacher feature)``.
    The teacher runs in eval mode under ``no_grad`` and is left exactly as it was (weights,
    buffers and train/eval mode).

    Args:
        student: the network being trained, plain or DistributedDataParallel.
        teacher: a trained network with the same output shape; never changed.
        optimizer: holds the student's parameters (and the adapters', if any).
        blurred: input batch ``(B, C, H, W)``.
        sharp: target batch, same shape.
        alpha: weight of the teacher term, in [0, 1]; 0 is plain training, 1 pure imitation.
        loss_fn: the ground-truth loss, ``(pred, target) -> 0-dim tensor``.
        kd_loss_fn: the teacher loss. The paper's MSE is tiny next to L1 + SSIM (its gradient
            scales with the student-teacher gap), so it steers little; ``kd_loss_fn=loss_fn``
            weighs both targets alike.
        feature_weight: weight of the feature (hint) term, >= 0; needs ``adapters``.
        adapters: from :func:`feature_adapters`, when ``feature_weight > 0``.
        teacher_output: the teacher's output for ``blurred``, if already computed (for example
            once for a pool of batches); then the teacher is not run unless features are needed.
        amp: bf16 autocast for the forward passes (CPU or CUDA).
        clip_grad_norm: clip the global gradient norm of the trained parameters.

    Returns:
        ``{"loss", "kd", "gt", "feat", "grad_norm"}`` as floats.

    Raises:
        TypeError: a batch is not a floating-point tensor.
        ValueError: bad batch shapes, ``alpha`` outside [0, 1], negative ``feature_weight``,
            ``feature_weight > 0`` without matching adapters, or teacher and student outputs of
            different shapes.
        FloatingPointError: the loss or the gradient is not finite; the weights are untouched.
    """
    _check_pair(blurred, sharp)
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if not feature_weight >= 0:
        raise ValueError(f"feature_weight must be >= 0, got {feature_weight!r}")
    features = feature_weight > 0
    if features and adapters is None:
        raise ValueError("feature_weight > 0 needs adapters: pass "
                         "adapters=feature_adapters(student, teacher)")

    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad(), _autocast(blurred, amp):
            t_feats: list[torch.Tensor] = []
            if features:
                teacher_output, t_feats = teacher(blurred, return_features=True)
            elif teacher_output is None:
                teacher_output = teacher(blurred)
    finally:
        teacher.train(was_training)

    student.train()
    optimizer.zero_grad(set_to_none=True)
    with _autocast(blurred, amp):
        if features:
            out, s_feats = student(blurred, return_features=True)
        else:
            out = student(blurred)
    if out.shape != teacher_output.shape:
        raise ValueError(f"teacher output {tuple(teacher_output.shape)} and student output "
                         f"{tuple(out.shape)} differ in shape")
    out = out.float()
    kd = kd_loss_fn(out, teacher_output.float())
    gt = loss_fn(out, sharp)
    feat = out.new_zeros(())
    if features:
        if len(adapters) != len(s_feats) or len(s_feats) != len(t_feats):
            raise ValueError(f"{len(adapters)} adapters for {len(s_feats)} student and "
                             f"{len(t_feats)} teacher feature levels")
        with _autocast(blurred, amp):
            mapped = [a(f) for a, f in zip(adapters, s_feats)]
        feat = sum(F.mse_loss(m.float(), t.float()) for m, t in zip(mapped, t_feats))
        feat = feat / len(mapped)
    loss = alpha * kd + (1 - alpha) * gt + feature_weight * feat
    terms = {k: v.item() for k, v in (("loss", loss), ("kd", kd), ("gt", gt), ("feat", feat))}
    return _finish_step(loss, terms, optimizer, clip_grad_norm)


# -- Data ------------------------------------------------------------------------------------------


def _images_in(folder: Path, *, recursive: bool) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist or is not a folder")
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"no images ({' '.join(IMAGE_SUFFIXES)}) in {str(folder)!r}")
    return files


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Sharp-only training images: every image file under ``folder`` (recursively), sorted.

    Use them with synthetic blur (the paper's protocol) through :func:`batches`.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: it holds no image files.
    """
    return _images_in(Path(folder), recursive=True)


def folder_pairs(blur_dir: str | os.PathLike, sharp_dir: str | os.PathLike
                 ) -> list[tuple[Path, Path]]:
    """Pairs ``(blurred, sharp)`` of two folders, matched by file stem (``0001.png`` with
    ``0001.jpg``), sorted.

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: a folder holds no images, two files share a stem, or some files have no
            partner (the message names the first few).
    """
    sides = {}
    for name, folder in (("blur", Path(blur_dir)), ("sharp", Path(sharp_dir))):
        files = _images_in(folder, recursive=False)
        by_stem = {p.stem: p for p in files}
        if len(by_stem) != len(files):
            raise ValueError(f"two images share a file stem in {str(folder)!r}")
        sides[name] = by_stem
    blur, sharp = sides["blur"], sides["sharp"]
    unmatched = sorted(blur.keys() ^ sharp.keys())
    if unmatched:
        raise ValueError(
            f"{len(unmatched)} images of {str(blur_dir)!r} and {str(sharp_dir)!r} have no "
            f"partner, for example {unmatched[:5]}"
        )
    return [(blur[k], sharp[k]) for k in sorted(blur)]


def gopro_pairs(root: str | os.PathLike, *, split: str | None = None, blur: str = "blur"
                ) -> list[tuple[Path, Path]]:
    """Real (blurred, sharp) pairs of the GoPro dataset (Nah, Kim and Lee, CVPR 2017).

    Expects the GoPro_Large layout ``root/{train,test}/<scene>/{blur,blur_gamma,sharp}/*.png``.

    Args:
        root: the GoPro_Large folder.
        split: ``"train"``, ``"test"``, or None for both.
        blur: ``"blur"`` (linear-light averaging) or ``"blur_gamma"`` (gamma-space averaging).

    Raises:
        ValueError: a bad ``split`` or ``blur``, a split without scenes, unmatched frames.
        FileNotFoundError: ``root`` or one of its folders does not exist.
    """
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
    if blur not in ("blur", "blur_gamma"):
        raise ValueError(f"blur must be 'blur' or 'blur_gamma', got {blur!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"GoPro root {str(root)!r} does not exist or is not a folder")
    pairs = []
    for part in [split] if split else ["train", "test"]:
        folder = root / part
        if not folder.is_dir():
            raise FileNotFoundError(f"{str(folder)!r} is missing: expected the GoPro_Large "
                                    "layout root/{train,test}/<scene>/{blur,blur_gamma,sharp}/")
        scenes = sorted(p for p in folder.iterdir() if p.is_dir())
        if not scenes:
            raise ValueError(f"no scene folders in {str(folder)!r}")
        for scene in scenes:
            pairs += folder_pairs(scene / blur, scene / "sharp")
    return pairs


def _random_crop(images: Sequence[torch.Tensor], name: object, *, size: int,
                 generator: torch.Generator | None) -> list[torch.Tensor]:
    """The same random ``size`` x ``size`` window and flips of every image in ``images``."""
    H, W = images[0].shape[-2:]
    if any(img.shape[-2:] != (H, W) for img in images):
        raise ValueError(f"{name}: paired images differ in size: "
                         f"{[tuple(img.shape) for img in images]}")
    if H < size or W < size:
        raise ValueError(f"{name}: image of size {H}x{W} is smaller than the crop size {size}")
    top, left, flip_h, flip_v = (
        int(v) for v in torch.randint(2**31, (4,), generator=generator) % torch.tensor(
            [H - size + 1, W - size + 1, 2, 2]))
    out = []
    for img in images:
        img = img[..., top : top + size, left : left + size]
        if flip_h:
            img = img.flip(-1)
        if flip_v:
            img = img.flip(-2)
        out.append(img)
    return out


def batches(
    source: torch.Tensor | Sequence[str | os.PathLike] | Sequence[tuple],
    *,
    size: int = 128,
    batch_size: int = 8,
    generator: torch.Generator | None = None,
    degrade: Callable[..., torch.Tensor] = sharpen.degrade,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless random ``(blurred, sharp)`` training batches of ``size`` x ``size`` crops.

    Every crop comes from an image drawn at random (with replacement), at a random position,
    with random horizontal and vertical flips. The iterator keeps no state of its own: restoring
    ``generator`` (say from a checkpoint) and calling ``batches`` again continues the stream.

    Args:
        source: one of
            - a tensor of sharp images ``(N, 3, H, W)`` in [0, 1], such as
              ``sharpen.dead_leaves(...)``;
            - a list of sharp image files (``image_files(folder)``), read from disk batch by
              batch, so a folder larger than memory works;
            - a list of ``(blurred_file, sharp_file)`` pairs (``gopro_pairs``,
              ``folder_pairs``), cropped identically.
        size: crop side in pixels; every image must be at least this large.
        batch_size: crops per batch.
        generator: the source of all randomness (order, crops, flips, blur).
        degrade: ``degrade(sharp, generator=g) -> blurred``, applied on ``device`` to sources
            without blurred images. The default is ``sharpen.degrade``, the paper's protocol
            (Gaussian blur, sigma 1.5); ``functools.partial(sharpen.degrade, kind="mixed")``
            picks another.
        device: where the batches are made and returned.

    Yields:
        ``(blurred, sharp)``, each ``(batch_size, 3, size, size)`` float32 on ``device``.

    Raises:
        ValueError: an empty source, ``size`` or ``batch_size`` below 1, or an image smaller than
            ``size`` (raised when that image is drawn).
        TypeError: a source of another kind, a non-float tensor, or a non-int size or batch_size.
    """
    sharpen._check_int("size", size, low=1)
    sharpen._check_int("batch_size", batch_size, low=1)
    if isinstance(source, torch.Tensor):
        sharpen._check_tensor("source", source)
        if source.dim() != 4:
            raise ValueError(f"a tensor source must be (N, C, H, W), got {tuple(source.shape)}")
        paired = False
    elif isinstance(source, (list, tuple)):
        paired = bool(source) and isinstance(source[0], (list, tuple))
    else:
        raise TypeError(f"source must be a tensor or a list of files or file pairs, got "
                        f"{type(source).__name__}")
    if len(source) == 0:
        raise ValueError("source holds no images")
    device = torch.device(device)
    generator = generator or torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
    # Blur noise on another device needs a generator there; it is reseeded from ``generator``
    # every batch, so that ``generator``'s state alone says where the stream is (exact resume).
    blur_generator = generator if device.type == "cpu" else torch.Generator(device)

    def load(i: int) -> tuple[list[torch.Tensor], object]:
        if isinstance(source, torch.Tensor):
            return [source[i]], f"image {i}"
        files = source[i] if paired else [source[i]]
        return [sharpen.load_image(f) for f in files], source[i]

    while True:
        crops = [_random_crop(*load(i), size=size, generator=generator)
                 for i in torch.randint(len(source), (batch_size,), generator=generator).tolist()]
        stacked = [torch.stack(c).to(device, torch.float32) for c in zip(*crops)]
        if paired:
            yield stacked[0], stacked[1]
            continue
        if device.type != "cpu":
            blur_generator.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        yield degrade(stacked[0], generator=blur_generator), stacked[0]


class PairDataset(torch.utils.data.Dataset):
    """Random crops of paired files, for ``torch.utils.data.DataLoader`` with workers.

    ``dataset[i]`` reads pair ``i`` and returns ``(blurred, sharp)`` crops ``(3, size, size)``
    with the same window and flips. Crops are drawn from torch's default generator, which the
    DataLoader seeds in each worker from its own ``generator`` argument: pass one for
    reproducible runs::

        loader = DataLoader(PairDataset(gopro_pairs(root, split="train"), size=256),
                            batch_size=8, shuffle=True, num_workers=4,
                            generator=torch.Generator().manual_seed(0))
    """

    def __init__(self, pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]], *,
                 size: int = 256) -> None:
        if not pairs:
            raise ValueError("pairs is empty")
        self.pairs, self.size = list(pairs), sharpen._check_int("size", size, low=1)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = [sharpen.load_image(p) for p in self.pairs[i]]
        blurred, sharp = _random_crop(images, self.pairs[i], size=self.size, generator=None)
        return blurred.contiguous(), sharp.contiguous()


# -- Evaluation and checkpoints --------------------------------------------------------------------


def _as_image(img: torch.Tensor | str | os.PathLike) -> torch.Tensor:
    return img if isinstance(img, torch.Tensor) else sharpen.load_image(img)


def evaluate(
    model: nn.Module,
    pairs: Sequence[tuple[torch.Tensor | str | os.PathLike, torch.Tensor | str | os.PathLike]],
    *,
    ssim_kwargs: dict | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Mean PSNR and SSIM of a model's outputs, and of its blurred inputs, over whole images.

    Each image is sharpened whole by ``sharpen.sharpen`` (tiled beyond 512 pixels, output
    clamped to [0, 1]) and compared with its sharp reference with ``metrics.psnr`` and
    ``metrics.ssim`` (scikit-image's convention unless ``ssim_kwargs`` says otherwise). The
    blurred inputs are measured the same way: the "Input (Blurred)" row of the paper's table.

    Args:
        model: the network; its train/eval mode is restored afterwards.
        pairs: ``(blurred, sharp)`` items, each a tensor ``(3, H, W)`` or ``(B, 3, H, W)`` in
            [0, 1] or an image file; sizes may differ between items.
        ssim_kwargs: keyword arguments for ``metrics.ssim``, such as the Wang convention.
        device: where to run; default the model's device.

    Returns:
        ``{"psnr", "ssim", "input_psnr", "input_ssim", "images"}``: means over all images, and
        their count.

    Raises:
        ValueError: no pairs, or a pair whose images differ in shape.
    """
    if len(pairs) == 0:
        raise ValueError("pairs is empty: nothing to evaluate")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    kwargs = dict(ssim_kwargs or {})
    sums = dict.fromkeys(("psnr", "ssim", "input_psnr", "input_ssim"), 0.0)
    count = 0
    for i, (blurred, sharp) in enumerate(pairs):
        blurred, sharp = _as_image(blurred), _as_image(sharp)
        if blurred.shape != sharp.shape:
            raise ValueError(f"pair {i}: blurred {tuple(blurred.shape)} and sharp "
                             f"{tuple(sharp.shape)} differ in shape")
        blurred = blurred.to(device, torch.float32)
        sharp = sharp.to(device, torch.float32)
        out = sharpen.sharpen(model, blurred)
        for prefix, img in (("", out), ("input_", blurred)):
            sums[prefix + "psnr"] += float(metrics.psnr(img, sharp).sum())
            sums[prefix + "ssim"] += float(metrics.ssim(img, sharp, **kwargs).sum())
        count += 1 if sharp.dim() == 3 else sharp.shape[0]
    return {**{k: v / count for k, v in sums.items()}, "images": count}


def save_checkpoint(path: str | os.PathLike, **state: object) -> None:
    """Save a training state atomically: ``save_checkpoint(path, step=s, student=model,
    optimizer=opt, generator=g, ...)``.

    Modules (DistributedDataParallel unwrapped), optimizers and learning-rate schedulers are
    stored as their ``state_dict()``, generators as ``get_state()``; numbers, strings, lists,
    dicts and tensors as they are. A state holding a non-finite tensor is refused, so a diverged
    run never replaces a good checkpoint.

    Raises:
        ValueError: a tensor in the state holds NaN or infinity; the file is left untouched.
    """
    payload: dict[str, object] = {}
    for name, value in state.items():
        if isinstance(value, nn.parallel.DistributedDataParallel):
            value = value.module
        if isinstance(value, (nn.Module, torch.optim.Optimizer,
                              torch.optim.lr_scheduler.LRScheduler)):
            value = value.state_dict()
        elif isinstance(value, torch.Generator):
            value = value.get_state()
        payload[name] = value
    bad = [name for name, t in _tensors(payload)
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"refusing to write {str(path)!r}: non-finite values in {bad[:3]}; "
                         "any checkpoint already there is kept")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sharpen.atomic_write(path, lambda f: torch.save(payload, f))


def _tensors(obj: object, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts and lists, with a dotted name."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for k, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}.{k}")


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device | None = None
                    ) -> dict:
    """Load what :func:`save_checkpoint` wrote, with ``torch.load(..., weights_only=True)``.

    Restore with the objects' own methods: ``model.load_state_dict(ckpt["student"])``,
    ``opt.load_state_dict(ckpt["optimizer"])``, ``generator.set_state(ckpt["generator"])``.

    Raises:
        FileNotFoundError: no file at ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    return torch.load(path, map_location=map_location, weights_only=True)


# -- The main job: the paper's Table 1, with an honest distillation ablation -----------------------

POOL_REUSE = 4  # each precomputed teacher batch serves this many distillation steps
CLIP = 1.0  # gradient-norm clip: typical norms are 0.1-0.5, rare bf16 spikes reach 100
KD_LOSSES = {"mse": F.mse_loss, "l1_ssim": l1_ssim_loss}
LEAVES = {"supersample": 2, "texture": 0.5}  # anti-aliased, textured: chosen on validation photos
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # scikit-image's bundled colour photos


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python kd.py",
        description="Train a teacher, distil a student, train the same student without the "
        "teacher (equal steps and equal time), and print the paper's Table 1. With no "
        "arguments: dead-leaves training images, Gaussian blur sigma 1.5, a few minutes on a "
        "CPU.",
    )
    p.add_argument("--steps", type=int, default=1000, help="teacher training steps")
    p.add_argument("--student-steps", type=int, default=1000,
                   help="steps of the distilled student and of its equal-steps twin")
    p.add_argument("--size", type=int, default=64, help="training crop size in pixels")
    p.add_argument("--eval-size", type=int, default=256,
                   help="evaluation images are this size square, as the paper's 256x256")
    p.add_argument("--train-images", type=int, default=256,
                   help="dead-leaves training images (128x128) when no --data is given")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--sigma", type=float, default=1.5, help="blur strength, pixels")
    p.add_argument("--blur", choices=("gaussian", "motion", "mixed"), default="gaussian",
                   help="how training and evaluation images are blurred")
    p.add_argument("--arch", choices=("unet", "paper"), default="unet",
                   help="our U-Net teacher/student, or the source paper's networks")
    p.add_argument("--alpha", type=float, default=0.9,
                   help="weight of the teacher term (the paper: 0.5)")
    p.add_argument("--kd-loss", choices=tuple(KD_LOSSES), default="l1_ssim",
                   help="teacher term: L1 + SSIM like the sharp term, or the paper's MSE")
    p.add_argument("--feature-weight", type=float, default=0.0,
                   help="weight of the feature (hint) distillation term")
    p.add_argument("--seeds", type=int, default=1,
                   help="repeat the three students for this many seeds (same teacher)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    p.add_argument("--data", type=Path, default=None,
                   help="a GoPro_Large folder: train on its sharp train frames resized to 256x256 "
                   "and blurred as --blur says (the paper's protocol), evaluate on its test split")
    p.add_argument("--real-blur", action="store_true",
                   help="with --data: use GoPro's real blurred frames instead of synthetic blur")
    p.add_argument("--eval-images", type=int, default=100,
                   help="with --data: evaluate on this many test frames, evenly spaced")
    args = p.parse_args(argv)
    for name in ("steps", "student_steps", "batch_size", "seeds", "eval_images", "train_images"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    largest = 128 if args.data is None else args.eval_size  # the training images' size
    if not 16 <= args.size <= largest:
        p.error(f"--size must be between 16 and {largest} (the training images' size), "
                f"got {args.size}")
    if not args.sigma > 0:
        p.error(f"--sigma must be > 0, got {args.sigma}")
    if not 0 <= args.alpha <= 1:
        p.error(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.feature_weight < 0:
        p.error(f"--feature-weight must be >= 0, got {args.feature_weight}")
    if args.real_blur and args.data is None:
        p.error("--real-blur needs --data ROOT")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is available")
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return args


def _resized(img: torch.Tensor, size: int) -> torch.Tensor:
    """``(3, H, W)`` resized to ``size`` x ``size`` by area averaging, as the paper resized."""
    return F.interpolate(img[None], size=(size, size), mode="area")[0]


def _datasets(args: argparse.Namespace, degrade: Callable, generator: torch.Generator):
    """Training source, evaluation sets ``{name: [(blurred, sharp), ...]}`` and a description.
    Evaluation images are made apart from training images and never trained on."""
    if args.data is not None:
        split = gopro_pairs(args.data, split="train")
        test = gopro_pairs(args.data, split="test")
        test = [test[round(i)] for i in torch.linspace(0, len(test) - 1,
                                                       min(args.eval_images, len(test))).tolist()]
        if args.real_blur:
            return split, {"gopro_test": test}, f"GoPro real blur ({args.data}), full frames"
        size = args.eval_size
        print(f"loading {len(split)} GoPro training frames, resized to {size}x{size}")
        train = torch.stack([_resized(sharpen.load_image(s), size) for _, s in split])
        sharp = torch.stack([_resized(sharpen.load_image(s), size) for _, s in test])
        pairs = list(zip(degrade(sharp, generator=generator), sharp))
        return train, {"gopro_test": pairs}, (f"GoPro sharp frames ({args.data}) resized to "
                                              f"{size}x{size}")
    size = args.eval_size
    train = sharpen.dead_leaves(args.train_images, 128, generator=generator, **LEAVES)
    held_out = sharpen.dead_leaves(16, size, generator=generator, **LEAVES)
    sets = {"dead_leaves": list(zip(degrade(held_out, generator=generator), held_out))}
    desc = (f"dead leaves ({', '.join(f'{k}={v}' for k, v in LEAVES.items())}): "
            f"{args.train_images} training images of 128x128, 16 held-out of {size}x{size}")
    try:
        from skimage import data as skdata
    except ImportError:
        print("scikit-image is not installed: evaluating on dead-leaves images only")
    else:
        photos = torch.stack([
            _resized(torch.from_numpy(getattr(skdata, name)()).permute(2, 0, 1).float() / 255,
                     size) for name in PHOTOS])
        sets["photos"] = list(zip(degrade(photos, generator=generator), photos))
        desc += f"; photos: scikit-image's {', '.join(PHOTOS)} resized to {size}x{size}"
    return train, sets, desc


class _Progress:
    """Prints a line every few seconds: stage, step/total, loss, images per second, time left."""

    def __init__(self, stage: str, total: int, batch: int):
        self.stage, self.total, self.batch = stage, total, batch
        self.start = self.last = time.perf_counter()

    def __call__(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        if now - self.last < 3 and step != self.total:
            return
        self.last, elapsed = now, now - self.start
        left = elapsed / step * (self.total - step)
        print(f"[{self.stage}] step {step}/{self.total}  loss {loss:.4f}  "
              f"{step * self.batch / elapsed:.0f} img/s  {left:.0f} s left", flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _new_model(make: Callable[[], nn.Module], seed: int, device: torch.device) -> nn.Module:
    """``make()`` initialised from ``seed`` without touching torch's global generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make()
    return model.to(device, memory_format=torch.channels_last)


def _adam(params, steps: int) -> tuple[torch.optim.Optimizer, object]:
    """Adam with a cosine decay to zero over ``steps``: short runs need the decay."""
    opt = torch.optim.Adam(params, lr=2e-3)
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
        yield from batches(train, size=args.size, batch_size=args.batch_size, generator=generator,
                           degrade=degrade, device=args.device)
    loader = torch.utils.data.DataLoader(PairDataset(train, size=args.size), shuffle=True,
                                         batch_size=args.batch_size, drop_last=True,
                                         num_workers=min(4, os.cpu_count() or 1),
                                         generator=generator, persistent_workers=True)
    while True:
        for blurred, sharp in loader:
            yield blurred.to(args.device), sharp.to(args.device)


def _cycle(pool: list, seed: int) -> Iterator:
    """The pool's batches in a random order per pass: the same sequence for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        for i in torch.randperm(len(pool), generator=generator).tolist():
            yield pool[i]


def _fit(model: nn.Module, steps: int, stage: str, args: argparse.Namespace, data: Iterator,
         step: Callable, extra: nn.Module | None = None) -> float:
    """``steps`` calls of ``step(model, optimizer, batch)`` under Adam with cosine decay, also
    training ``extra``'s parameters; returns the wall time in seconds."""
    opt, schedule = _adam([*model.parameters(), *(extra.parameters() if extra else [])], steps)
    progress = _Progress(stage, steps, args.batch_size)
    _sync(args.device)
    start = time.perf_counter()
    for i in range(1, steps + 1):
        progress(i, step(model, opt, next(data))["loss"])
        schedule.step()
    _sync(args.device)
    return time.perf_counter() - start


def _students(args, teacher, make_student, train, degrade, seed: int) -> dict:
    """Distil a student, then train two twins without the teacher on the same batches: for the
    same steps, and for the steps that fit in the distillation's wall time."""
    n = args.student_steps
    pool_size = max(1, n // POOL_REUSE)
    start = time.perf_counter()
    data = _train_stream(args, train, degrade, seed)
    teacher.eval()
    pool = []
    with torch.no_grad(), torch.autocast(args.device.type, torch.bfloat16):
        for _ in range(pool_size):
            blurred, sharp = next(data)
            pool.append((blurred, sharp, teacher(blurred).float()))
    pool_seconds = time.perf_counter() - start

    models = {name: _new_model(make_student, seed, args.device)
              for name in ("student", "student_nokd", "student_nokd_time")}
    adapters = feature_adapters(models["student"], teacher) if args.feature_weight else None

    def distil(model, opt, batch):
        blurred, sharp, t_out = batch
        return distill_step(model, teacher, opt, blurred, sharp, alpha=args.alpha, amp=True,
                            kd_loss_fn=KD_LOSSES[args.kd_loss], teacher_output=t_out,
                            feature_weight=args.feature_weight, adapters=adapters,
                            clip_grad_norm=CLIP)

    def plain(model, opt, batch):
        return train_step(model, opt, batch[0], batch[1], amp=True, clip_grad_norm=CLIP)

    seconds = {"student": pool_seconds + _fit(models["student"], n, f"distil, seed {seed}", args,
                                              _cycle(pool, seed), distil, extra=adapters)}
    seconds["student_nokd"] = _fit(models["student_nokd"], n, f"no teacher, seed {seed}", args,
                                   _cycle(pool, seed), plain)
    time_steps = max(1, round(n * seconds["student"] / seconds["student_nokd"]))
    seconds["student_nokd_time"] = _fit(models["student_nokd_time"], time_steps,
                                        f"no teacher, equal time, seed {seed}", args,
                                        _cycle(pool, seed), plain)
    return {"models": models, "seconds": seconds, "time_steps": time_steps,
            "pool_batches": pool_size, "pool_seconds": pool_seconds}


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


def _center(img: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` window of ``img`` (all of it if smaller)."""
    H, W = img.shape[-2:]
    top, left = max(0, (H - size) // 2), max(0, (W - size) // 2)
    return img[..., top : top + size, left : left + size]


def _figure(path: Path, models: dict[str, nn.Module], pairs: list, count: int = 3) -> None:
    """Rows of blurred | student | teacher | sharp, each labelled with its PSNR / SSIM."""
    from PIL import Image, ImageDraw

    label_h, tiles = 14, []
    for blurred, sharp in pairs[:count]:
        blurred, sharp = (_center(_as_image(x), 256) for x in (blurred, sharp))
        row = [("blurred", blurred)]
        row += [(name, sharpen.sharpen(models[name], blurred)) for name in ("student", "teacher")]
        row.append(("sharp", sharp))
        tiles.append(row)
    size = tiles[0][0][1].shape[-1]
    canvas = Image.new("RGB", (4 * size, len(tiles) * (size + label_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(tiles):
        sharp = row[-1][1]
        for c, (name, img) in enumerate(row):
            arr = (img.clamp(0, 1).cpu() * 255).round().byte().permute(1, 2, 0).numpy()
            top = r * (size + label_h)
            canvas.paste(Image.fromarray(arr), (c * size, top + label_h))
            text = name if name == "sharp" else (
                f"{name} {metrics.psnr(img, sharp).item():.2f} dB / "
                f"{metrics.ssim(img.clamp(0, 1), sharp).item():.3f}")
            draw.text((c * size + 3, top + 1), text, fill="black")
    sharpen.atomic_write(path, lambda f: canvas.save(f, format="PNG"))


def _write_text(path: Path, text: str) -> None:
    sharpen.atomic_write(path, lambda f: f.write(text.encode()))


def main(argv: list[str] | None = None) -> int:
    """Reproduce the paper's Table 1 with a distillation ablation; see ``--help``."""
    args = _parse_args(argv)
    run_start = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    degrade = functools.partial(sharpen.degrade, kind=args.blur, sigma=args.sigma)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        train, eval_sets, data_desc = _datasets(args, degrade, generator)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    make_teacher, make_student = ((sharpen.teacher, sharpen.student) if args.arch == "unet"
                                  else (sharpen.paper_teacher, sharpen.paper_student))
    print(f"device {args.device}, torch {torch.__version__}; data: {data_desc}")

    teacher = _new_model(make_teacher, args.seed, args.device)
    teacher_seconds = _fit(teacher, args.steps, "teacher", args,
                           _train_stream(args, train, degrade, args.seed),
                           lambda m, o, b: train_step(m, o, *b, amp=True, clip_grad_norm=CLIP))
    seeds = [args.seed + i for i in range(args.seeds)]
    runs = [_students(args, teacher, make_student, train, degrade, seed) for seed in seeds]

    models = {"teacher": teacher, **runs[0]["models"]}
    size = args.eval_size
    cost = {"input": {"params": 0, "macs": 0, "ms_per_image": 0.0}}
    for name in ("teacher", "student"):  # the three students share one architecture
        cost[name] = {"params": sharpen.count_params(models[name]),
                      "macs": sharpen.count_macs(models[name], size, size),
                      "ms_per_image": _ms_per_image(models[name], size, args.device)}
    cost |= dict.fromkeys(("student_nokd", "student_nokd_time"), cost["student"])
    rows = []
    for set_name, pairs in eval_sets.items():
        print(f"evaluating on {set_name} ({len(pairs)} images)", flush=True)
        teacher_result = evaluate(teacher, pairs)
        common = {"set_name": set_name, "n_sets": len(eval_sets)}
        rows.append(_row("input", cost["input"], [teacher_result], prefix="input_", **common))
        rows.append(_row("teacher", cost["teacher"], [teacher_result], **common))
        for name in runs[0]["models"]:
            results = [evaluate(run["models"][name], pairs) for run in runs]
            rows.append(_row(name, cost[name], results, **common))

    for name, model in models.items():
        sharpen.save_model(args.out / f"{name}.pt", model)
    figure_set = "photos" if "photos" in eval_sets else next(iter(eval_sets))
    _figure(args.out / "comparison.png", models, eval_sets[figure_set])
    protocol = {
        "blur": args.blur, "sigma": args.sigma, "image_size": args.eval_size, "data": data_desc,
        "real_blur": args.real_blur,
        "metric": "PSNR (data_range 1) and SSIM with scikit-image's defaults (7x7 uniform "
                  "window, sample covariance), mean over whole images; outputs clamped to [0, 1]",
        "arch": args.arch, "teacher_steps": args.steps, "student_steps": args.student_steps,
        "time_matched_steps": [run["time_steps"] for run in runs],
        "teacher_pool_batches": runs[0]["pool_batches"], "crop_size": args.size,
        "batch_size": args.batch_size, "alpha": args.alpha, "kd_loss": args.kd_loss,
        "feature_weight": args.feature_weight, "seeds": seeds, "device": str(args.device),
        "precision": "bf16 autocast, channels_last (training); fp32 (evaluation, timing)",
        "grad_clip": CLIP,
        "torch": torch.__version__,
        "stage_seconds": {"teacher": round(teacher_seconds, 1),
                          **{k: round(sum(r["seconds"][k] for r in runs) / len(runs), 1)
                             for k in runs[0]["seconds"]}},
        "wall_seconds": round(time.perf_counter() - run_start, 1),
    }
    protocol["summary"] = (
        f"{args.blur} blur (sigma {args.sigma}), {data_desc}; teacher {args.steps} steps, "
        f"students {args.student_steps} steps (time-matched twin: "
        f"{', '.join(str(s) for s in protocol['time_matched_steps'])}), batch "
        f"{args.batch_size} of {args.size}x{args.size} crops, alpha {args.alpha} "
        f"({args.kd_loss} teacher term), "
        f"{len(seeds)} seed(s), {args.device}, torch {torch.__version__}, "
        f"{protocol['wall_seconds']:.0f} s; {protocol['metric']}.")
    _write_text(args.out / "report.json", json.dumps({"protocol": protocol, "rows": rows},
                                                     indent=2) + "\n")
    report = _markdown(protocol, rows)
    _write_text(args.out / "report.md", report)
    print("\n" + report + f"\nwrote {args.out}/: teacher.pt, student.pt, student_nokd.pt, "
          "student_nokd_time.pt, report.json, report.md, comparison.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
