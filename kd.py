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

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import metrics
import sharpen

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# One optimisation step
# ---------------------------------------------------------------------------------------------


def _check_pair(blurred: object, sharp: object) -> None:
    for name, t in (("blurred", blurred), ("sharp", sharp)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 4:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a float tensor (B, C, H, W), got {got}")
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
    if not torch.isfinite(torch.tensor(grad_norm)):
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
        ValueError: bad or mismatched batches.
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
    feature_weight: float = 0.0,
    adapters: nn.ModuleList | None = None,
    teacher_output: torch.Tensor | None = None,
    amp: bool = False,
    clip_grad_norm: float | None = None,
) -> dict[str, float]:
    """One distillation step of the student towards the teacher and the sharp target.

    ``loss = alpha * kd + (1 - alpha) * gt + feature_weight * feat`` with
    ``kd = MSE(student(blurred), teacher(blurred))``, ``gt = loss_fn(student(blurred), sharp)``
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
        feature_weight: weight of the feature (hint) term, >= 0; needs ``adapters``.
        adapters: from :func:`feature_adapters`, when ``feature_weight > 0``.
        teacher_output: the teacher's output for ``blurred``, if already computed (for example
            once for a pool of batches); then the teacher is not run unless features are needed.
        amp: bf16 autocast for the forward passes (CPU or CUDA).
        clip_grad_norm: clip the global gradient norm of the trained parameters.

    Returns:
        ``{"loss", "kd", "gt", "feat", "grad_norm"}`` as floats.

    Raises:
        ValueError: bad batches, ``alpha`` outside [0, 1], negative ``feature_weight``,
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
    kd = F.mse_loss(out, teacher_output.float())
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


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


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
        ValueError: an empty source, bad ``size``/``batch_size``, or an image smaller than
            ``size`` (raised when that image is drawn).
        TypeError: a source of another kind.
    """
    for name, value in (("size", size), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(source, torch.Tensor):
        if source.dim() != 4 or not source.is_floating_point():
            raise ValueError(f"a tensor source must be float (N, C, H, W), got "
                             f"{source.dtype} {tuple(source.shape)}")
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
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        self.pairs, self.size = list(pairs), size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = [sharpen.load_image(p) for p in self.pairs[i]]
        blurred, sharp = _random_crop(images, self.pairs[i], size=self.size, generator=None)
        return blurred.contiguous(), sharp.contiguous()


# ---------------------------------------------------------------------------------------------
# Evaluation and checkpoints
# ---------------------------------------------------------------------------------------------


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
        blurred, sharp = (sharpen.load_image(x) if not isinstance(x, torch.Tensor) else x
                          for x in (blurred, sharp))
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


def _atomic_save(obj: object, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``: a
    crash leaves either the old file or the new one, never a truncated one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    _atomic_save(payload, Path(path))


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
