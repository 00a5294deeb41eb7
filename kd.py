"""Training by knowledge distillation: losses, one-step functions, data, evaluation, checkpoints.

The method (Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015,
applied to restoration as in Team Falcons, "Image Sharpening Using Knowledge Distillation"):
a large teacher is trained on (blurred, sharp) pairs; a small student is then trained to match
both the sharp image and the teacher's output,

    loss = alpha * KD(student(x), teacher(x)) + (1 - alpha) * L(student(x), sharp)
           + feature_weight * mean_levels MSE(adapter(student_features), teacher_features),

the last term being the "hint" loss of FitNets (Romero et al., 2015). ``L`` is by default the
paper's L1 + 0.5 (1 - SSIM), with an SSIM that carries a gradient (the paper's did not); ``KD``
is by default L1 + SSIM too, with ``alpha = 0.9``, as ``train.py`` uses (chosen on an earlier
measurement: README, "What distillation adds"). The paper's MSE with ``alpha = 0.5``
(``kd_loss_fn=F.mse_loss, alpha=0.5``) is tiny next to L1 + SSIM and steers little.

These are pieces of a training loop, not a framework. ``train_loss`` and ``distill_loss``
return the loss with its graph, for gradient accumulation, ``torch.amp.GradScaler`` or another
trainer; ``train_step`` and ``distill_step`` add the backward pass, the checks and the optimizer
step, and return plain floats. The caller owns the loop, the schedule and the logging:
``train.py`` is one such loop, the paper's Table 1.

Imports torch, numpy and pillow (through ``sharpen``) and the two sibling modules.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import math
import numbers
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import metrics
import sharpen

__all__ = [
    "IMAGE_SUFFIXES", "l1_ssim_loss", "charbonnier_loss", "psnr_loss", "train_loss",
    "distill_loss", "teacher_levels", "train_step", "distill_step", "level_loss", "level_step",
    "feature_adapters", "AdaptedStudent", "image_files", "folder_pairs", "gopro_pairs",
    "batches", "PairDataset", "evaluate", "save_checkpoint", "load_checkpoint",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# -- Checks ----------------------------------------------------------------------------------------


def _check_number(name: str, value: object, *, low: float = 0.0, high: float = math.inf,
                  positive: bool = False) -> float:
    """``value`` as a float; raise unless it is a real number in ``[low, high]`` (and > 0 if
    ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if positive and not 0 < value < math.inf:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    if not (low <= value <= high and math.isfinite(value)):
        bounds = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise ValueError(f"{name} must be finite and {bounds}, got {value!r}")
    return float(value)


def _check_int(name: str, value: object, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _check_float_tensor(name: str, value: object) -> None:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        got = f"dtype {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {got}")


def _check_type(name: str, value: object, kind: type, what: str) -> None:
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")


def _check_module(name: str, value: object) -> None:
    _check_type(name, value, nn.Module, "an nn.Module")


def _check_options(amp: object, **losses: object) -> None:
    if not isinstance(amp, bool):
        raise TypeError(f"amp must be a bool, got {type(amp).__name__} {amp!r}")
    for name, fn in losses.items():
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")


def _check_dtype(blurred: torch.Tensor, amp: bool, **models: nn.Module) -> None:
    """The batch must have each model's image channels, and without autocast be in the dtype
    of its weights."""
    for name, model in models.items():
        channels = getattr(_unwrapped(model), "in_channels", None)
        if isinstance(channels, int) and blurred.shape[1] != channels:
            raise ValueError(f"blurred has {blurred.shape[1]} channels, {name} takes {channels}")
    if amp or _autocasting(blurred.device.type):
        return
    for name, model in models.items():
        p = next(model.parameters(), None)
        if p is not None and p.is_floating_point() and p.dtype != blurred.dtype:
            raise TypeError(f"blurred is {blurred.dtype} but the weights of {name} are "
                            f"{p.dtype}: convert one to the other")


def _check_pair(blurred: object, sharp: object) -> None:
    for name, t in (("blurred", blurred), ("sharp", sharp)):
        _check_float_tensor(name, t)
        if t.dim() != 4:
            raise ValueError(f"{name} must be (B, C, H, W), got {tuple(t.shape)}")
    if blurred.shape != sharp.shape:
        raise ValueError(f"blurred and sharp must have the same shape, got "
                         f"{tuple(blurred.shape)} and {tuple(sharp.shape)}")
    _check_device("sharp", sharp, blurred)


def _check_scale(**images: torch.Tensor) -> None:
    """Image values in [0, 1], or as far outside as noise takes them: not a 0-255 image (one
    host sync for all of them). NaN and inf pass here: a step's loss check names them."""
    images = {name: t for name, t in images.items() if t.numel()}
    if not images:
        return
    ranges = torch.stack([torch.stack(torch.aminmax(t.detach())).float()
                          for t in images.values()]).tolist()
    for name, (lo, hi) in zip(images, ranges):
        if math.isfinite(lo) and math.isfinite(hi) and (lo < -0.5 or hi > 1.5):
            hint = ": an 8-bit image is divided by 255 first" if hi > 2 else ""
            raise ValueError(f"{name} values must lie in [0, 1] (noise may take them a little "
                             f"outside), got min {lo:.4g}, max {hi:.4g}{hint}")


def _check_device(name: str, t: torch.Tensor, blurred: torch.Tensor) -> None:
    if t.device != blurred.device:
        raise ValueError(f"{name} is on {t.device} and blurred on {blurred.device}: put them on "
                         "one device")


def _check_loss(name: str, loss: object, pred: torch.Tensor) -> None:
    """A loss function's result: a 0-dim tensor, with a graph where ``pred`` has one."""
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        got = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else \
            type(loss).__name__
        raise ValueError(f"{name} must return a 0-dim tensor, got {got}")
    if pred.requires_grad and not loss.requires_grad:
        raise ValueError(f"{name} returned a tensor without a graph (detached): no gradient "
                         "would reach the model")


def _check_levels(levels: object, blurred: torch.Tensor) -> None:
    if levels is None:
        return
    _check_float_tensor("levels", levels)
    if tuple(levels.shape) not in ((len(blurred), 3), (len(blurred), 4)):
        raise ValueError(f"levels must be (B, 3) = ({len(blurred)}, 3), one (blur, noise, jpeg) "
                         f"per image (or (B, 4), with gaussian), got {tuple(levels.shape)}")
    sharpen.check_levels(levels, len(blurred))  # the values


def _check_told(levels: torch.Tensor | None, kernel: object, blurred: torch.Tensor,
                **models: nn.Module) -> None:
    """Levels only for conditioned models (``unet(conditioned=1)``), and kernels ``(B, kh, kw)``
    only with levels, for models given a Wiener estimate (``conditioned`` 2 to 4): checked
    before any compute."""
    if kernel is not None:
        _check_float_tensor("kernel", kernel)
        if levels is None:
            raise ValueError("kernel given without levels: the estimate it makes needs them")
        if kernel.dim() != 3 or len(kernel) != len(blurred):
            raise ValueError(f"kernel must be (B, kh, kw) with B = {len(blurred)}, one per image "
                             f"(all NaN where not told), got {tuple(kernel.shape)}")
    for name, model in models.items():
        model = _unwrapped(model)
        model = _unwrapped(getattr(model, "student", model))  # an AdaptedStudent's student
        conditioned = getattr(model, "conditioned", 0)
        if levels is not None and not conditioned:
            raise ValueError(f"levels given, but the {name} ({type(model).__name__}) was built "
                             f"without them (unet(conditioned=1) takes them)")
        if kernel is not None and conditioned < 2:
            raise ValueError(f"kernel given, but the {name} ({type(model).__name__}) is given "
                             f"no Wiener estimate (unet(conditioned=2 to 4) takes one)")


def _check_adapters(adapters: object) -> None:
    _check_type("adapters", adapters, (nn.ModuleList, type(None)), "an nn.ModuleList (from "
                "feature_adapters)")


def _check_step_options(optimizer: object, clip_grad_norm: object, model: nn.Module,
                        adapters: nn.Module | None = None) -> None:
    """Gradients on, and ``model`` with a trainable parameter; the optimizer must hold every
    trainable parameter of ``model`` and ``adapters``; the clip must be None or a finite number
    > 0 (NaN would fill the weights with NaN, 0 would stop learning)."""
    _check_type("optimizer", optimizer, torch.optim.Optimizer, "a torch.optim.Optimizer")
    if clip_grad_norm is not None:
        if isinstance(clip_grad_norm, numbers.Real) and not isinstance(clip_grad_norm, bool) \
                and clip_grad_norm == 0:
            raise ValueError("clip_grad_norm=0 would stop learning: pass a finite number > 0, "
                             "or None for no clipping")
        _check_number("clip_grad_norm", clip_grad_norm, positive=True)
    if not torch.is_grad_enabled():
        raise ValueError("a step under torch.no_grad() has no gradient: call it outside, or "
                         "use the loss functions for a loss without one")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the trained model has no trainable parameter (all requires_grad "
                         "False): a step would not change it")
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for module in (model, adapters) if module is not None
               for name, p in module.named_parameters() if p.requires_grad and id(p) not in held]
    if missing:
        raise ValueError(f"the optimizer does not hold {len(missing)} trainable parameters of the "
                         f"trained model, for example {missing[:3]}: build it from "
                         "model.parameters() (and the adapters' parameters)")


def _autocast(x: torch.Tensor, amp: bool):
    """bf16 autocast on the tensor's device when ``amp``, else a no-op context: a caller's own
    autocast (fp16 with a ``GradScaler``) stays on."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)


def _autocasting(device_type: str) -> bool:
    """Whether the caller runs under autocast on this device type."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return (torch.is_autocast_cpu_enabled() if device_type == "cpu"
                else torch.is_autocast_enabled())


def _loss_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """Losses are computed in the widest dtype of the tensors, float32 at least."""
    return functools.reduce(torch.promote_types, (t.dtype for t in tensors), torch.float32)


# -- Losses ----------------------------------------------------------------------------------------


def _run(model: nn.Module, x: torch.Tensor, levels: torch.Tensor | None,
         kernel: torch.Tensor | None = None, **kwargs: bool):
    """``model(x)``, told ``levels`` when given (a conditioned model, ``unet(conditioned=1)``),
    and ``kernel`` when given (``conditioned`` 2 to 4)."""
    if levels is None:
        return model(x, **kwargs)
    return model(x, levels=levels, **kwargs, **({} if kernel is None else {"kernel": kernel}))


def teacher_levels(teacher: nn.Module, levels: torch.Tensor | None) -> torch.Tensor | None:
    """The levels to tell ``teacher``: ``levels`` ``(B, 4)`` cut to their first three columns
    where the teacher takes no gaussian column (it is not ``unet(conditioned=4)``), else as
    given. For loops that compute the teacher's outputs themselves (``teacher_output=``), as
    ``distill_loss`` tells its teacher.

    Example:
        >>> teacher = sharpen.teacher(width=4, conditioned=2)
        >>> teacher_levels(teacher, torch.tensor([[1.5, 0.0, 100.0, 1.0]])).shape
        torch.Size([1, 3])
    """
    if levels is None or getattr(_unwrapped(teacher), "conditioned", 0) == 4:
        return levels
    return levels[..., :3]


def _check_loss_pair(pred: object, target: object, *, batch: bool) -> None:
    """Floating-point tensors of one shape, ``(B, C, H, W)`` where ``batch``."""
    _check_float_tensor("pred", pred)
    _check_float_tensor("target", target)
    if (batch and pred.dim() != 4) or pred.shape != target.shape:
        raise ValueError(f"pred and target must both be {'(B, C, H, W) ' * batch}of one shape, "
                         f"got {tuple(pred.shape)} and {tuple(target.shape)}")


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
        TypeError: ``ssim_weight`` is not a number, or a batch not a floating-point tensor.
        ValueError: ``ssim_weight`` is negative, or the batches are not both ``(B, C, H, W)``
            of one shape.

    Example:
        >>> x = torch.rand(2, 3, 16, 16)
        >>> l1_ssim_loss(x, x).item()
        0.0
    """
    ssim_weight = _check_number("ssim_weight", ssim_weight)
    _check_loss_pair(pred, target, batch=True)
    loss = F.l1_loss(pred, target)
    if ssim_weight:
        loss = loss + ssim_weight * (1 - metrics.ssim(pred, target).mean())
    return loss


def charbonnier_loss(pred: torch.Tensor, target: torch.Tensor, *, eps: float = 1e-3
                     ) -> torch.Tensor:
    """Charbonnier loss ``mean(sqrt((pred - target)^2 + eps^2))``: a smooth L1.

    Raises:
        TypeError: ``eps`` is not a number, or ``pred`` or ``target`` not a floating-point
            tensor.
        ValueError: ``eps`` is not positive and finite, or the shapes differ.
    """
    eps = _check_number("eps", eps, positive=True)
    _check_loss_pair(pred, target, batch=False)
    return torch.sqrt((pred - target).square() + eps * eps).mean()


def psnr_loss(pred: torch.Tensor, target: torch.Tensor, *, eps: float = 3e-5) -> torch.Tensor:
    """Minus the mean PSNR over the images, in dB: ``mean_b 10 log10(MSE_b + eps)``.

    Every image counts by its dB, as the robustness table scores it: an image already close to
    its target (mild blur, a sharp photo) weighs as much as a badly blurred one, where L1 lets
    the large errors dominate. HINet (Chen et al. 2021) trains with such a loss. ``eps`` caps
    the PSNR that pays at ``-10 log10(eps)`` (45.2 dB by default), so that no image already
    that close takes over the batch. Its gradients are some 100x larger than L1's: clip or
    scale accordingly (``train.py --loss psnr`` clips at 200).

    Args:
        pred: ``(B, C, H, W)``, data range 1.
        target: same shape.
        eps: added to each image's MSE, finite and > 0.

    Returns:
        0-dim loss tensor.

    Raises:
        TypeError: ``eps`` is not a number, or a batch not a floating-point tensor.
        ValueError: ``eps`` is not finite and > 0, or the batches are not both
            ``(B, C, H, W)`` of one shape.
    """
    eps = _check_number("eps", eps, positive=True)
    _check_loss_pair(pred, target, batch=True)
    mse = (pred - target).square().mean((1, 2, 3))
    return 10 * torch.log10(mse + eps).mean()


def train_loss(
    model: nn.Module,
    blurred: torch.Tensor,
    sharp: torch.Tensor,
    *,
    loss_fn: Loss = l1_ssim_loss,
    amp: bool = False,
    levels: torch.Tensor | None = None,
    kernel: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The supervised loss ``loss_fn(model(blurred), sharp)``, with its graph.

    For loops that do their own backward pass: gradient accumulation, ``torch.amp.GradScaler``,
    Lightning or Accelerate. The model runs in its current mode (``train_step`` sets train mode).

    Args:
        model: the network being trained.
        blurred: input batch ``(B, C, H, W)``.
        sharp: target batch, same shape.
        loss_fn: ``(pred, target) -> 0-dim tensor``, computed in the widest dtype of the
            prediction and the target, float32 at least.
        amp: run the forward pass under bf16 autocast (CPU or CUDA).
        levels: ``(B, 3)`` what was done to each image, for a conditioned model
            (``sharpen.unet(conditioned=1)``, levels from ``sharpen.degrade(...,
            return_levels=True)``; NaN rows unknown), or ``(B, 4)`` with the gaussian column for
            ``conditioned=4``; the model is then run as ``model(blurred, levels=levels)``.
            None: ``model(blurred)``.
        kernel: ``(B, kh, kw)`` with ``levels``, the true blur kernel of each image (all NaN
            where not told), whose Wiener estimate a model given one (``conditioned`` 2 to 4)
            then gets, as ``sharpen.degrade(..., return_kernels=True)`` gives them.

    Returns:
        ``(loss, {"loss": float})``: the 0-dim loss tensor and its value.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, a batch or ``levels`` is not a
            floating-point tensor, the batch is not in the dtype of the model's weights
            (without ``amp``), ``amp`` is not a bool, or ``loss_fn`` is not callable.
        ValueError: a batch is not ``(B, C, H, W)`` or holds values beyond [-0.5, 1.5] (a
            0-255 image), the two shapes differ (or the model's output differs from
            ``sharp``), ``sharp`` is on another device than ``blurred``,
            ``levels`` is not ``(B, 3)``, the model takes no levels, ``kernel`` is not
            ``(B, kh, kw)``, comes without levels or goes to a model given no estimate, or
            ``loss_fn`` returns other than a 0-dim tensor (with a graph where the output has
            one).

    Example:
        >>> model = sharpen.student()
        >>> x = torch.rand(2, 3, 32, 32)
        >>> loss, terms = train_loss(model, x, x)
        >>> loss.requires_grad, sorted(terms)
        (True, ['loss'])
    """
    _check_module("model", model)
    _check_pair(blurred, sharp)
    _check_options(amp, loss_fn=loss_fn)
    _check_dtype(blurred, amp, model=model)
    _check_levels(levels, blurred)
    _check_scale(blurred=blurred, sharp=sharp)
    _check_told(levels, kernel, blurred, model=model)
    with _autocast(blurred, amp):
        pred = _run(model, blurred, levels, kernel)
    if pred.shape != sharp.shape:
        raise ValueError(f"model output {tuple(pred.shape)} and sharp {tuple(sharp.shape)} "
                         "differ in shape")
    dtype = _loss_dtype(pred, sharp)
    loss = loss_fn(pred.to(dtype), sharp.to(dtype))
    _check_loss("loss_fn", loss, pred)
    return loss, {"loss": loss.item()}


def distill_loss(
    student: nn.Module,
    teacher: nn.Module,
    blurred: torch.Tensor,
    sharp: torch.Tensor,
    *,
    alpha: float = 0.9,
    loss_fn: Loss = l1_ssim_loss,
    kd_loss_fn: Loss = l1_ssim_loss,
    feature_weight: float = 0.0,
    adapters: nn.ModuleList | None = None,
    teacher_output: torch.Tensor | None = None,
    amp: bool = False,
    levels: torch.Tensor | None = None,
    kernel: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The distillation loss of the student towards the teacher and the sharp target.

    ``loss = alpha * kd + (1 - alpha) * gt + feature_weight * feat`` with
    ``kd = kd_loss_fn(student(blurred), teacher(blurred))`` (by default L1 + SSIM, the default
    sharp term),
    ``gt = loss_fn(student(blurred), sharp)``
    and ``feat`` the mean over levels of ``MSE(adapter(student feature), teacher feature)``.
    The teacher runs in eval mode under ``no_grad`` and is left exactly as it was (weights,
    buffers and train/eval mode); the student runs in its current mode.

    Args:
        student: the network being trained, plain, ``AdaptedStudent`` or DistributedDataParallel.
        teacher: a trained network with the same output shape; never changed.
        blurred: input batch ``(B, C, H, W)``.
        sharp: target batch, same shape.
        alpha: weight of the teacher term, in [0, 1]; 0 is plain training, 1 pure imitation.
        loss_fn: the ground-truth loss, ``(pred, target) -> 0-dim tensor``.
        kd_loss_fn: the teacher loss: by default L1 + SSIM, as the default ``loss_fn``, which
            weighs both targets alike; the paper's ``F.mse_loss`` is tiny next to L1 + SSIM, so
            it steers little.
        feature_weight: weight of the feature (hint) term, >= 0. The student's features must
            match the teacher's in shape: map them with ``adapters``, or pass an
            ``AdaptedStudent`` (which maps them itself).
        adapters: from :func:`feature_adapters`, applied to the student's features.
        teacher_output: the teacher's output for ``blurred``, if already computed (for example
            once for a pool of batches); then the teacher is not run unless features are needed.
        amp: bf16 autocast for the forward passes (CPU or CUDA).
        levels: ``(B, 3)`` what was done to each image, told to both models (as in
            :func:`train_loss`): both must then be conditioned. ``(B, 4)``, with the gaussian
            column, for a ``conditioned=4`` model; a teacher of fewer inputs gets the first
            three.
        kernel: ``(B, kh, kw)`` the true blur kernels (as in :func:`train_loss`), told to both
            models, which must then be given an estimate (``conditioned`` 2 to 4).

    Returns:
        ``(loss, {"loss", "kd", "gt", "feat"})``: the 0-dim loss tensor and the terms as floats.

    Raises:
        TypeError: a model is not an ``nn.Module``, a batch, ``teacher_output`` or ``levels``
            is not a floating-point tensor, the batch is not in the dtype of a model's weights
            (without ``amp``), ``alpha`` or ``feature_weight`` is not a number, ``amp`` is not
            a bool, or a loss is not callable.
        ValueError: bad batch shapes or values beyond [-0.5, 1.5] (a 0-255 image), a tensor
            on another device than ``blurred``, ``alpha``
            outside [0, 1], negative ``feature_weight``, a loss function that returns other than
            a 0-dim tensor with a graph, teacher and student outputs of different shapes,
            features that do not match,
            ``levels`` not ``(B, 3)``, levels for a model that takes none, or a ``kernel`` as
            :func:`train_loss` refuses it.
    """
    _check_module("student", student)
    _check_module("teacher", teacher)
    _check_pair(blurred, sharp)
    _check_levels(levels, blurred)
    _check_scale(blurred=blurred, sharp=sharp)
    _check_options(amp, loss_fn=loss_fn, kd_loss_fn=kd_loss_fn)
    run_teacher = {"teacher": teacher} if teacher_output is None or feature_weight else {}
    _check_dtype(blurred, amp, student=student, **run_teacher)
    _check_told(levels, kernel, blurred, student=student, **run_teacher)
    alpha = _check_number("alpha", alpha, high=1.0)
    feature_weight = _check_number("feature_weight", feature_weight)
    if teacher_output is not None:
        _check_float_tensor("teacher_output", teacher_output)
        _check_device("teacher_output", teacher_output, blurred)
    _check_adapters(adapters)
    features = feature_weight > 0

    t_feats: list[torch.Tensor] = []
    if features or teacher_output is None:
        told = teacher_levels(teacher, levels)
        with sharpen.eval_mode(teacher), torch.no_grad(), _autocast(blurred, amp):
            if features:
                teacher_output, t_feats = _run(teacher, blurred, told, kernel,
                                               return_features=True)
            else:
                teacher_output = _run(teacher, blurred, told, kernel)
    teacher_output = teacher_output.detach()  # given with a graph, it must not train the teacher

    with _autocast(blurred, amp):
        if features:
            out, s_feats = _run(student, blurred, levels, kernel, return_features=True)
            if adapters is not None:
                if len(adapters) != len(s_feats):
                    raise ValueError(f"{len(adapters)} adapters for {len(s_feats)} student "
                                     "feature levels")
                s_feats = [a(f) for a, f in zip(adapters, s_feats)]
        else:
            out = _run(student, blurred, levels, kernel)
    if out.shape != teacher_output.shape:
        raise ValueError(f"teacher output {tuple(teacher_output.shape)} and student output "
                         f"{tuple(out.shape)} differ in shape")
    dtype = _loss_dtype(out, sharp)
    out = out.to(dtype)
    kd = kd_loss_fn(out, teacher_output.to(dtype))
    gt = loss_fn(out, sharp.to(dtype))
    _check_loss("kd_loss_fn", kd, out)
    _check_loss("loss_fn", gt, out)
    feat = out.new_zeros(())
    if features:
        shapes_s = [tuple(f.shape[1:]) for f in s_feats]
        shapes_t = [tuple(f.shape[1:]) for f in t_feats]
        if shapes_s != shapes_t:
            raise ValueError(f"student features {shapes_s} do not match the teacher's "
                             f"{shapes_t}: pass adapters=feature_adapters(student, teacher), "
                             "or an AdaptedStudent")
        feat = sum(F.mse_loss(s.to(dtype), t.to(dtype)) for s, t in zip(s_feats, t_feats))
        feat = feat / len(s_feats)
    loss = alpha * kd + (1 - alpha) * gt + feature_weight * feat
    terms = {k: v.item() for k, v in (("loss", loss), ("kd", kd), ("gt", gt), ("feat", feat))}
    return loss, terms


# -- One optimisation step -------------------------------------------------------------------------


def _in_train_mode(model: nn.Module, loss: Callable[[], object]) -> object:
    """``loss()`` with ``model`` in train mode, left so; if it raises (a bad argument), every
    submodule's mode is put back as it was."""
    top, modes = model.training, [(m, m.training) for m in model.modules()]
    model.train()
    try:
        return loss()
    except BaseException:
        model.train(top)  # its own train() runs, as it did on the way in
        for m, mode in modes:
            m.training = mode
        raise


def _finish_step(loss: torch.Tensor, terms: dict[str, float], optimizer: torch.optim.Optimizer,
                 clip_grad_norm: float | None) -> dict[str, float]:
    """Backward, gradient-norm check and clipping, optimizer step; never steps on a non-finite
    loss or gradient (before or after clipping), so a bad batch cannot corrupt the weights."""
    if not torch.isfinite(loss):
        listed = ", ".join(f"{k}={v:.6g}" for k, v in terms.items())
        raise FloatingPointError(f"non-finite loss, the optimizer did not step ({listed})")
    if not loss.requires_grad:
        raise ValueError("the loss has no graph, so no gradient: is the model frozen "
                         "(requires_grad False), or run under torch.no_grad()?")
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]
              if p.grad is not None]
    max_norm = math.inf if clip_grad_norm is None else clip_grad_norm
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    finite = math.isfinite(grad_norm) and all(bool(torch.isfinite(p.grad).all()) for p in params)
    if not finite:
        optimizer.zero_grad(set_to_none=True)
        raise FloatingPointError(f"non-finite gradient (norm {grad_norm}), the optimizer did not "
                                 f"step (loss={float(loss):.6g})")
    optimizer.step()
    return {**terms, "grad_norm": grad_norm}


def level_loss(estimator: nn.Module, degraded: torch.Tensor, levels: torch.Tensor, *,
               quantile: float | tuple[float, float, float] = 0.5) -> torch.Tensor:
    """The pinball (quantile) loss of a level estimator's output against the true levels, both
    scaled as the estimator gives them (``sharpen.scaled_levels``), averaged over images and
    levels: at ``quantile`` 0.5, half the L1; below 0.5 the estimator learns to err low, where
    telling a model too little costs less than telling it too much.

    Args:
        estimator: A ``sharpen.level_estimator`` (plain or DistributedDataParallel).
        degraded: ``(B, C, H, W)`` float images, as ``sharpen.degrade`` makes them.
        levels: ``(B, 3)`` what was done to them (``degrade(..., return_levels=True)``), all
            known (no NaN rows).
        quantile: Of the estimate, in (0, 1): one for all levels, or one per level (blur,
            noise, jpeg).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If the levels are misshaped, out of range or unknown (NaN), or
            ``degraded`` holds values beyond [-0.5, 1.5] (a 0-255 image).
    """
    _check_module("estimator", estimator)
    if not isinstance(_unwrapped(estimator), sharpen.LevelNet):
        raise TypeError(f"estimator must be a sharpen.LevelNet (sharpen.level_estimator), got "
                        f"{type(_unwrapped(estimator)).__name__}")
    _check_float_tensor("degraded", degraded)
    if degraded.dim() != 4:
        raise ValueError(f"degraded must be (B, C, H, W), got {tuple(degraded.shape)}")
    _check_levels(levels, degraded)
    if levels.shape[1] != 3:
        raise ValueError(f"levels must be (B, 3): an estimator reads no gaussian column, got "
                         f"{tuple(levels.shape)}")
    quantiles = quantile if isinstance(quantile, (tuple, list)) else (quantile,) * 3
    if len(quantiles) != 3:
        raise ValueError(f"quantile must be one number or three (blur, noise, jpeg), got "
                         f"{quantile!r}")
    for q in quantiles:
        if not 0 < _check_number("quantile", q, high=1) < 1:
            raise ValueError(f"quantile must be in (0, 1), got {q}")
    if bool(levels.isnan().any()):
        raise ValueError("levels must all be known to train on them, got NaN rows")
    _check_scale(degraded=degraded)
    error = sharpen.scaled_levels(levels.to(degraded.device, torch.float32)) \
        - estimator(degraded).float()
    q = torch.tensor(quantiles, device=error.device, dtype=error.dtype)
    return torch.maximum(q * error, (q - 1) * error).mean()


def level_step(estimator: nn.Module, optimizer: torch.optim.Optimizer, degraded: torch.Tensor,
               levels: torch.Tensor, *, quantile: float | tuple[float, float, float] = 0.5,
               clip_grad_norm: float | None = None) -> dict[str, float]:
    """One step of a level estimator: :func:`level_loss` in train mode, backward,
    ``optimizer.step()``; the arguments as there and as :func:`train_step`'s.

    Returns:
        ``{"loss": float, "grad_norm": float}`` (the norm before clipping).

    Raises:
        TypeError, ValueError: as :func:`level_loss`, and as :func:`train_step` for the
            optimizer, the clip and a loss without a graph.
        FloatingPointError: the loss or the gradient is not finite; the weights are untouched.

    Example:
        >>> estimator = sharpen.level_estimator()
        >>> opt = torch.optim.Adam(estimator.parameters(), lr=2e-3)
        >>> x, levels = sharpen.degrade(torch.rand(2, 3, 32, 32), kind="real", return_levels=True)
        >>> sorted(level_step(estimator, opt, x, levels))
        ['grad_norm', 'loss']
    """
    _check_step_options(optimizer, clip_grad_norm, estimator)
    loss = _in_train_mode(estimator, lambda: level_loss(estimator, degraded, levels,
                                                        quantile=quantile))
    optimizer.zero_grad(set_to_none=True)
    return _finish_step(loss, {"loss": float(loss.detach())}, optimizer, clip_grad_norm)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    blurred: torch.Tensor,
    sharp: torch.Tensor,
    *,
    loss_fn: Loss = l1_ssim_loss,
    amp: bool = False,
    clip_grad_norm: float | None = None,
    levels: torch.Tensor | None = None,
    kernel: torch.Tensor | None = None,
) -> dict[str, float]:
    """One supervised step: :func:`train_loss` in train mode, backward, ``optimizer.step()``.
    The arguments are those of :func:`train_loss` (the model plain or DistributedDataParallel),
    plus:

    Args:
        optimizer: holds all of the model's trainable parameters.
        clip_grad_norm: clip the global gradient norm to this finite value > 0; None: no clip.

    Returns:
        ``{"loss": float, "grad_norm": float}`` (the norm before clipping).

    Raises:
        TypeError, ValueError: as :func:`train_loss`, and for a ``clip_grad_norm`` that is not
            finite and > 0, an optimizer that misses trainable parameters, or a loss without a
            graph (a frozen model, or ``torch.no_grad()``).
        FloatingPointError: the loss or the gradient is not finite; the weights are untouched.

    Example:
        >>> model = sharpen.student()
        >>> opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        >>> x = torch.rand(2, 3, 32, 32)
        >>> sorted(train_step(model, opt, x, x))
        ['grad_norm', 'loss']
    """
    _check_module("model", model)
    _check_pair(blurred, sharp)
    _check_step_options(optimizer, clip_grad_norm, model)
    loss, terms = _in_train_mode(model, lambda: train_loss(
        model, blurred, sharp, loss_fn=loss_fn, amp=amp, levels=levels, kernel=kernel))
    optimizer.zero_grad(set_to_none=True)
    return _finish_step(loss, terms, optimizer, clip_grad_norm)


def distill_step(
    student: nn.Module,
    teacher: nn.Module,
    optimizer: torch.optim.Optimizer,
    blurred: torch.Tensor,
    sharp: torch.Tensor,
    *,
    alpha: float = 0.9,
    loss_fn: Loss = l1_ssim_loss,
    kd_loss_fn: Loss = l1_ssim_loss,
    feature_weight: float = 0.0,
    adapters: nn.ModuleList | None = None,
    teacher_output: torch.Tensor | None = None,
    amp: bool = False,
    clip_grad_norm: float | None = None,
    levels: torch.Tensor | None = None,
    kernel: torch.Tensor | None = None,
) -> dict[str, float]:
    """One distillation step: :func:`distill_loss` with the student in train mode, backward,
    ``optimizer.step()``. The arguments are those of :func:`distill_loss`, plus:

    Args:
        optimizer: holds all trainable parameters of the student (and of the adapters).
        clip_grad_norm: clip the global gradient norm to this finite value > 0; None: no clip.

    Returns:
        ``{"loss", "kd", "gt", "feat", "grad_norm"}`` as floats (the norm before clipping).

    Raises:
        TypeError, ValueError: as :func:`distill_loss`, and for a ``clip_grad_norm`` that is
            not finite and > 0, an optimizer that misses trainable parameters, or a loss without
            a graph (a frozen student, or ``torch.no_grad()``).
        FloatingPointError: the loss or the gradient is not finite; the weights are untouched.
    """
    _check_module("student", student)
    _check_pair(blurred, sharp)
    _check_adapters(adapters)
    _check_step_options(optimizer, clip_grad_norm, student, adapters)
    loss, terms = _in_train_mode(student, lambda: distill_loss(
        student, teacher, blurred, sharp, alpha=alpha, loss_fn=loss_fn, kd_loss_fn=kd_loss_fn,
        feature_weight=feature_weight, adapters=adapters, teacher_output=teacher_output, amp=amp,
        levels=levels, kernel=kernel))
    optimizer.zero_grad(set_to_none=True)
    return _finish_step(loss, terms, optimizer, clip_grad_norm)


def feature_adapters(student: nn.Module, teacher: nn.Module) -> nn.ModuleList:
    """1x1 convolutions mapping each student feature level to the teacher's channel count.

    Both models must support ``model(x, return_features=True) -> (out, [features...])`` with
    the same number of levels at the same resolutions (as ``sharpen.teacher()`` and ``student()``,
    or ``paper_teacher()`` and ``paper_student()``). The adapters train with the student: give
    their parameters to the optimizer (under DistributedDataParallel, use :class:`AdaptedStudent`).
    They are initialised from torch's global generator, like any ``nn.Conv2d``.

    Returns:
        ``nn.ModuleList`` of ``nn.Conv2d(c_student, c_teacher, 1)``, on the student's device
        and in its dtype.

    Raises:
        TypeError: a model is not an ``nn.Module``.
        ValueError: a model has no weights, or the two give different numbers of levels or
            resolutions.
    """
    _check_module("student", student)
    _check_module("teacher", teacher)
    weights = [next(m.parameters(), None) for m in (student, teacher)]
    for name, model, w in zip(("student", "teacher"), (student, teacher), weights):
        if w is None:
            raise ValueError(f"{name} ({type(model).__name__}) has no weights: features are "
                             "matched between two networks")
    (device, dtype), (t_device, t_dtype) = ((w.device, w.dtype) for w in weights)
    channels = getattr(student, "in_channels", None) or next(
        m for m in student.modules() if isinstance(m, nn.Conv2d)).in_channels
    probe = torch.zeros(1, channels, 32, 32, device=device, dtype=dtype)
    with sharpen.eval_mode(student, teacher), torch.no_grad():
        _, fs = student(probe, return_features=True)
        _, ft = teacher(probe.to(t_device, t_dtype), return_features=True)
    shapes_s = [tuple(f.shape[-2:]) for f in fs]
    shapes_t = [tuple(f.shape[-2:]) for f in ft]
    if shapes_s != shapes_t:
        raise ValueError(f"student and teacher features do not line up: student levels "
                         f"{shapes_s}, teacher levels {shapes_t} (for a 32x32 input)")
    return nn.ModuleList(
        nn.Conv2d(s.shape[1], t.shape[1], kernel_size=1) for s, t in zip(fs, ft)
    ).to(device, dtype)


class AdaptedStudent(nn.Module):
    """A student and its feature adapters as one module, for DistributedDataParallel.

    DDP averages the gradients of the module it wraps, and only of it: adapters kept apart
    would drift between ranks. Wrap both, then wrap that::

        model = AdaptedStudent(student, feature_adapters(student, teacher))
        ddp = DistributedDataParallel(model)
        opt = torch.optim.Adam(ddp.parameters(), lr=1e-3)
        distill_step(ddp, teacher, opt, x, y, feature_weight=0.05)  # no adapters= here

    ``model(x)`` is ``student(x)``; ``model(x, return_features=True)`` returns the student's
    output and its features mapped to the teacher's channels. Save ``model.student``.
    """

    def __init__(self, student: nn.Module, adapters: nn.ModuleList) -> None:
        super().__init__()
        _check_module("student", student)
        if adapters is None:
            raise TypeError("adapters must be an nn.ModuleList (from feature_adapters), got None")
        _check_adapters(adapters)
        self.student, self.adapters = student, adapters

    def forward(self, x: torch.Tensor, levels: torch.Tensor | None = None,
                return_features: bool = False, kernel: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        if not return_features:
            return _run(self.student, x, levels, kernel)
        out, feats = _run(self.student, x, levels, kernel, return_features=True)
        return out, [a(f) for a, f in zip(self.adapters, feats, strict=True)]


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
) -> Iterator[tuple[torch.Tensor, ...]]:
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
            picks another. One that returns ``(blurred, levels)``, such as
            ``partial(sharpen.degrade, kind="real", return_levels=True)``, makes the batches
            ``(blurred, sharp, levels)``, for a conditioned model; one that returns
            ``(blurred, levels, kernels)`` (``return_kernels=True`` too) makes them
            ``(blurred, sharp, levels, kernels)``.
        device: where the batches are made and returned.

    Yields:
        ``(blurred, sharp)``, each ``(batch_size, 3, size, size)`` float32 on ``device``; and
        ``levels`` third (and ``kernels`` fourth) if ``degrade`` returns them.

    Raises:
        ValueError: an empty source, ``size`` or ``batch_size`` below 1, or an image smaller than
            ``size`` (raised when that image is drawn).
        TypeError: a source of another kind, a non-float tensor, a non-int size or batch_size,
            a ``generator`` that is not a ``torch.Generator``, or a ``degrade`` not callable.
    """
    _check_int("size", size, low=1)
    _check_int("batch_size", batch_size, low=1)
    if isinstance(source, torch.Tensor):
        _check_float_tensor("source", source)
        if source.dim() != 4:
            raise ValueError(f"a tensor source must be (N, C, H, W), got {tuple(source.shape)}")
        if bad := int((~torch.isfinite(source)).sum()):
            raise ValueError(f"source has {bad} non-finite value{'s' if bad > 1 else ''} (NaN "
                             "or inf)")
        _check_scale(source=source)
        paired = False
    elif isinstance(source, (list, tuple)):
        paired = bool(source) and isinstance(source[0], (list, tuple))
    else:
        raise TypeError(f"source must be a tensor or a list of files or file pairs, got "
                        f"{type(source).__name__}")
    if len(source) == 0:
        raise ValueError("source holds no images")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got "
                        f"{type(generator).__name__}")
    if not callable(degrade):
        raise TypeError(f"degrade must be callable, got {type(degrade).__name__}")
    device = torch.device(device)
    if generator is None:
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
    # Blur noise on another device needs a generator there; it is reseeded from ``generator``
    # every batch, so that ``generator``'s state alone says where the stream is (exact resume).
    blur_generator = generator if device.type == "cpu" else torch.Generator(device)

    def load(i: int) -> tuple[list[torch.Tensor], object]:
        if isinstance(source, torch.Tensor):
            return [source[i]], f"image {i}"
        files = source[i] if paired else [source[i]]
        return [sharpen.load_image(f) for f in files], source[i]

    def stream() -> Iterator[tuple[torch.Tensor, ...]]:  # the checks above run at the call
        while True:
            crops = [_random_crop(*load(i), size=size, generator=generator) for i in
                     torch.randint(len(source), (batch_size,), generator=generator).tolist()]
            stacked = [torch.stack(c).to(device, torch.float32) for c in zip(*crops)]
            if paired:
                yield stacked[0], stacked[1]
                continue
            if device.type != "cpu":
                blur_generator.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            blurred = degrade(stacked[0], generator=blur_generator)
            if isinstance(blurred, tuple):  # (blurred, levels) or (blurred, levels, kernels)
                yield blurred[0], stacked[0], *blurred[1:]
            else:
                yield blurred, stacked[0]

    return stream()


class PairDataset(torch.utils.data.Dataset):
    """Random crops of paired files, for ``torch.utils.data.DataLoader`` with workers.

    ``dataset[i]`` reads pair ``i`` and returns ``(blurred, sharp)`` crops ``(3, size, size)``
    with the same window and flips. Crops are drawn from torch's default generator, which the
    DataLoader seeds in each worker from its own ``generator`` argument: pass one for
    reproducible runs (with ``num_workers=0`` the crops come from the main process's default
    generator, which the DataLoader does not seed: call ``torch.manual_seed`` first)::

        loader = DataLoader(PairDataset(gopro_pairs(root, split="train"), size=256),
                            batch_size=8, shuffle=True, num_workers=4,
                            generator=torch.Generator().manual_seed(0))

    Raises:
        TypeError: ``pairs`` is not a list, or ``size`` not an int.
        ValueError: ``pairs`` is empty or holds other than (blurred, sharp) pairs, or
            ``size < 1``; an image smaller than ``size`` when it is read.
    """

    def __init__(self, pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]], *,
                 size: int = 256) -> None:
        if not isinstance(pairs, (list, tuple)):
            raise TypeError(f"pairs must be a list of (blurred, sharp) files, got "
                            f"{type(pairs).__name__}")
        if not pairs:
            raise ValueError("pairs is empty")
        bad = next((p for p in pairs if not isinstance(p, (list, tuple)) or len(p) != 2), None)
        if bad is not None:
            raise ValueError(f"pairs must hold (blurred, sharp) file pairs, got {bad!r}")
        self.pairs, self.size = list(pairs), _check_int("size", size, low=1)

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

    Each image is sharpened whole by ``sharpen.sharpen`` in float32 (tiled beyond 512 pixels,
    output clamped to [0, 1]) and compared with its sharp reference with ``metrics.psnr`` and
    ``metrics.ssim`` (scikit-image's convention unless ``ssim_kwargs`` says otherwise). The
    blurred inputs are measured the same way: the "Input (Blurred)" row of the paper's table.

    Args:
        model: the network; its train/eval mode is restored afterwards.
        pairs: ``(blurred, sharp)`` items, each a tensor ``(3, H, W)`` or ``(B, 3, H, W)`` in
            [0, 1] or an image file; sizes may differ between items.
        ssim_kwargs: keyword arguments for ``metrics.ssim``, such as the Wang convention.
        device: where the model runs and the metrics are computed; default the model's device.
            A model elsewhere is copied there for the call, and left where it is.

    Returns:
        ``{"psnr", "ssim", "input_psnr", "input_ssim", "images"}``: means over all images, and
        their count.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or ``pairs`` has no ``len()`` (a
            generator: make it a list).
        ValueError: no pairs, or a pair whose images differ in shape.
    """
    _check_module("model", model)
    if not hasattr(pairs, "__len__"):
        raise TypeError(f"pairs must be a sequence of (blurred, sharp), such as a list, got "
                        f"{type(pairs).__name__} (no len())")
    if len(pairs) == 0:
        raise ValueError("pairs is empty: nothing to evaluate")
    if len(pairs) == 2 and all(isinstance(p, torch.Tensor) for p in pairs):
        raise TypeError("pairs must be a sequence of (blurred, sharp) pairs, got one pair of "
                        "tensors: pass [(blurred, sharp)]")
    own = next(model.parameters()).device
    device = torch.device(device) if device is not None else own
    if device != own:
        model = copy.deepcopy(model).to(device)
    kwargs = dict(ssim_kwargs or {})
    sums = dict.fromkeys(("psnr", "ssim", "input_psnr", "input_ssim"), 0.0)
    count = 0
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            what = f"{type(pair).__name__} of {len(pair)}" if isinstance(pair, (tuple, list)) \
                else type(pair).__name__
            raise TypeError(f"pairs[{i}] must be a (blurred, sharp) pair, got {what}")
        blurred, sharp = _as_image(pair[0]), _as_image(pair[1])
        if blurred.shape != sharp.shape:
            raise ValueError(f"pair {i}: blurred {tuple(blurred.shape)} and sharp "
                             f"{tuple(sharp.shape)} differ in shape")
        blurred = blurred.to(device, torch.float32)
        sharp = sharp.to(device, torch.float32)
        out = sharpen.sharpen(model, blurred, precision="fp32")
        for prefix, img in (("", out), ("input_", blurred)):
            sums[prefix + "psnr"] += float(metrics.psnr(img, sharp).sum())
            sums[prefix + "ssim"] += float(metrics.ssim(img, sharp, **kwargs).sum())
        count += 1 if sharp.dim() == 3 else sharp.shape[0]
    return {**{k: v / count for k, v in sums.items()}, "images": count}


def _unwrapped(value: object) -> object:
    """The module inside DistributedDataParallel or ``torch.compile``, else ``value``."""
    if isinstance(value, nn.parallel.DistributedDataParallel):
        value = value.module
    if isinstance(value, nn.Module) and isinstance(getattr(value, "_orig_mod", None), nn.Module):
        value = value._orig_mod
    return value


def _tensors(obj: object, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor (and NaN float, as a tensor) inside nested dicts and lists, with a dotted
    name."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, float) and math.isnan(obj):  # inf is a scheduler's "none yet"
        yield prefix, torch.tensor(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for k, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}.{k}")


def _reason(e: BaseException) -> str:
    """``e``'s type and the first line of its message, without terminal colour codes; of
    ``torch.load(weights_only=True)``'s refusal, the cause it names, not its advice."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    cause = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", text)
    lines = [cause.group(1)] if cause else text.strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _reads_back(value: object) -> bool:
    """Whether ``torch.save`` writes ``value`` and ``torch.load(weights_only=True)`` reads it
    back."""
    buffer = io.BytesIO()
    try:
        torch.save(value, buffer)
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    except Exception:
        return False
    return True


def save_checkpoint(path: str | os.PathLike, **state: object) -> None:
    """Save a training state atomically: ``save_checkpoint(path, step=s, student=model,
    optimizer=opt, generator=g, ...)``.

    Objects with a ``state_dict()`` (modules, with DistributedDataParallel and
    ``torch.compile`` unwrapped; optimizers; learning-rate schedulers; ``GradScaler``) are stored
    as their state dict, generators as ``get_state()``; numbers, strings, lists, dicts and
    tensors as they are. The bytes are read back with ``weights_only=True`` before anything is
    written, so the file on disk always loads with :func:`load_checkpoint`.

    Raises:
        ValueError: a tensor in the state holds NaN or infinity, or a float is NaN (an
            infinite float, as ``ReduceLROnPlateau`` keeps, is stored), or a value cannot
            be read back (such as a numpy scalar or array, a ``Path`` or an
            ``argparse.Namespace``; the message names it). Any file already at ``path`` is left
            untouched.
    """
    payload: dict[str, object] = {}
    for name, value in state.items():
        value = _unwrapped(value)
        if callable(getattr(value, "state_dict", None)):
            value = value.state_dict()
        elif isinstance(value, torch.Generator):
            value = value.get_state()
        payload[name] = value
    bad = [name for name, t in _tensors(payload)
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"refusing to write {str(path)!r}: non-finite values in {bad[:3]}; "
                         "any checkpoint already there is kept")
    buffer, saved = io.BytesIO(), False
    try:
        torch.save(payload, buffer)
        saved = True
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    except Exception as e:
        name = next((k for k, v in payload.items() if not _reads_back(v)), "?")
        what = "be read back with weights_only=True" if saved else "be saved"
        raise ValueError(
            f"refusing to write {str(path)!r}: {name!r} ({type(state.get(name)).__name__}) "
            f"cannot {what}; store plain numbers, strings, lists, dicts and tensors "
            f"({_reason(e)})") from e
    data = buffer.getvalue()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sharpen.atomic_write(path, lambda f: f.write(data))


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device | None = None
                    ) -> dict:
    """Load what :func:`save_checkpoint` wrote, with ``torch.load(..., weights_only=True)``.

    Restore with the objects' own methods: ``model.load_state_dict(ckpt["student"])``,
    ``opt.load_state_dict(ckpt["optimizer"])``, ``generator.set_state(ckpt["generator"])``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable checkpoint; the message names it and the cause.
    """
    path = Path(path)
    if not path.is_file():
        what = "a folder, not a checkpoint file" if path.is_dir() else "not found"
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}: {what}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{str(path)!r}: not a readable checkpoint ({_reason(e)})") from e
