"""Blur synthesis, dead-leaves images, sharpening networks, image I/O and tiled inference.

One self-contained page (torch, numpy, Pillow) that makes (blurred, sharp) training pairs, builds
the teacher and student networks for knowledge distillation, and sharpens photographs of any size
(``python sharpen.py --help``). Images are float ``(B, C, H, W)`` or ``(C, H, W)`` in [0, 1];
outputs keep the input's device and dtype. Randomness comes only from an explicit
``torch.Generator``, drawn on its own device (CPU when None) and then moved, so a seed gives the
same tensors on every device. Bad arguments raise ``TypeError`` or ``ValueError`` naming the
argument and showing the value received.

References:
* G. Boracchi & A. Foi, "Modeling the Performance of Image Restoration from Motion Blur",
  IEEE TIP 21(8), 2012: camera shake (``random_motion_kernel``).
* Dead leaves: G. Matheron 1968; A. Lee, D. Mumford & J. Huang, "Occlusion models for natural
  images", IJCV 2001; the texture target of ISO 19567-2 (``dead_leaves``).
* O. Ronneberger, P. Fischer & T. Brox, "U-Net", MICCAI 2015 (``unet``).
* Team Falcons, "Image Sharpening Using Knowledge Distillation", the source paper: its networks
  (``paper_teacher``, ``paper_student``) and degradation (``degrade``'s defaults).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import numbers
import os
import pickle
import secrets
import struct
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, PngImagePlugin, UnidentifiedImageError
from torch import Tensor, nn

__all__ = [
    "gaussian_kernel", "gaussian_blur", "resample_blur", "motion_kernel", "random_motion_kernel",
    "disk_kernel", "anisotropic_gaussian_kernel", "blur", "add_noise", "jpeg", "unsharp_mask",
    "wiener", "kernel_sigma", "degrade", "dead_leaves", "LEVELS", "check_levels", "UNet",
    "PaperNet", "unet", "teacher", "student", "paper_teacher", "paper_student", "fast_bf16",
    "count_params", "count_macs", "LevelNet", "level_estimator", "scaled_levels",
    "estimate_levels",
    "atomic_write", "save_model", "load_model", "load_image", "jpeg_quality", "load_kernel",
    "save_image",
    "eval_mode", "sharpen", "main",
]

Device = torch.device | str | None
Generator = torch.Generator | None
_CHUNK_ELEMENTS = 1 << 20  # filter about this many values at a time, so they stay in cache
_LEAF_COVER = 6.0  # dead leaves: mean disks over a pixel; e^-6 = 0.25% of pixels stay background

# -- Private helpers -------------------------------------------------------------------------------


def _check_number(name: str, value: object, *, low: float = 0.0, strict: bool = True) -> float:
    """``value`` as a float; raise unless it is a finite real > ``low`` (>= if not ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < low or (strict and value == low):
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be finite and {op} {low:g}, got {value!r}")
    return float(value)


def _check_int(name: str, value: object, *, low: int, high: float = math.inf) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be >= {low}" + (f" and <= {high}" if high < math.inf
                                                        else "") + f", got {value}")
    return int(value)


def _check_tensor(name: str, x: object) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = f"dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        hint = ": an 8-bit image (a decoder's frame) is x.float() / 255" \
            if isinstance(x, Tensor) and x.dtype == torch.uint8 else ""
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {got}{hint}")


def _check_module(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")


_MAX_SIDE = 4097  # the widest 2-D kernel a factory builds (a 2 x 4096 px blur)
_MAX_ELEMENTS = 1 << 31  # the most values dead_leaves allocates for its images or disks


def _check_side(what: str, side: float, *, limit: int = _MAX_SIDE) -> None:
    """Refuse a kernel ``side`` pixels wide (a float: no overflow) above ``limit``, before
    allocating it."""
    if side > limit:
        raise ValueError(f"{what} makes a kernel {side:.6g} px wide, over the {limit} px this "
                         "builds")


def _wide(x: Tensor) -> Tensor:
    """``x`` in float32 where it is half precision, which CPU resampling, FFTs and JPEG lack."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _non_finite(state: dict) -> list[str]:
    """The names of the floating-point tensors of a state dict that hold NaN or inf."""
    return [k for k, v in state.items() if isinstance(v, Tensor) and v.is_floating_point()
            and not bool(torch.isfinite(v).all())]


def _check_path(name: str, path: object) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        got = type(path).__name__ + ("" if path is None else f" {path!r}")
        raise TypeError(f"{name} must be a str or os.PathLike, got {got}")
    return Path(path)


def _check_device(name: str, device: object) -> torch.device | None:
    """``device`` (None, a torch.device, its name or a CUDA index) as a torch.device."""
    if device is None:
        return None
    if not isinstance(device, (torch.device, str, int)) or isinstance(device, bool):
        raise TypeError(f"{name} must be a torch.device, str or int, got "
                        f"{type(device).__name__}")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"{name} must be a device such as 'cpu' or 'cuda', got {device!r}") \
            from e


def _check_placement(device: object, dtype: object) -> torch.device | None:
    """``_check_device("device", device)``, and ``dtype`` a floating torch.dtype."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float32, got "
                        f"{type(dtype).__name__} {dtype!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    return _check_device("device", device)


def _check_pixels(name: str, x: Tensor) -> None:
    """Finite image values in [0, 1], or as far outside as noise takes them (not a 0-255
    image), in one pass over ``x`` unless they fail."""
    lo, hi = (float(v) for v in torch.aminmax(x))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} has {bad} non-finite value{'s' if bad > 1 else ''} (NaN or inf)")
    if lo < -0.5 or hi > 1.5:
        hint = ": an 8-bit image is divided by 255 first" if hi > 2 else ""
        raise ValueError(f"{name} values must lie in [0, 1] (noise may take them a little "
                         f"outside), got min {lo:.4g}, max {hi:.4g}{hint}")


def _bf16(precision: str, weights: Tensor) -> bool:
    """Whether to run in bf16 autocast: ``precision`` "bf16", or "auto" with float32 ``weights``
    on a device where ``fast_bf16``."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    return precision == "bf16" or (precision == "auto" and weights.dtype == torch.float32
                                   and fast_bf16(weights.device))


_HWC = " (an (H, W, C) image? permute it to (C, H, W))"  # where its last side is the channels


def _image_channels(model: nn.Module) -> int:
    """The image channels a model takes: ``model.in_channels``, else its first conv's."""
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))
    return int(getattr(model, "in_channels", first.in_channels))


def _check_generator(generator: object) -> torch.device:
    """Validate ``generator`` and return the device its draws are made on."""
    if generator is None:
        return torch.device("cpu")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator)}")
    return generator.device


def _as_batch(name: str, img: object) -> tuple[Tensor, bool]:
    """``img`` as ``(B, C, H, W)``, and whether it was a single ``(C, H, W)`` image."""
    _check_tensor(name, img)
    if img.ndim not in (3, 4) or img.numel() == 0:
        raise ValueError(f"{name} must be a non-empty (B, C, H, W) or (C, H, W), "
                         f"got {tuple(img.shape)}")
    return (img.unsqueeze(0), True) if img.ndim == 3 else (img, False)


def _gaussians(sigma: Tensor, truncate: float) -> Tensor:
    """Normalized Gaussians ``(n, 2R + 1)`` for float64 sigmas ``(n,)``, each cut at its own
    radius ``int(truncate * sigma + 0.5)`` as in scipy; R is the largest radius."""
    radii = (truncate * sigma + 0.5).floor()
    R = int(radii.max())
    grid = torch.arange(-R, R + 1, dtype=torch.float64, device=sigma.device)
    k = torch.exp(-0.5 * (grid / sigma[:, None]) ** 2) * (grid.abs() <= radii[:, None])
    return k / k.sum(1, keepdim=True)


def _no_autocast(x: Tensor) -> torch.autocast:
    """Autocast off on ``x``'s device, so that filters keep the input's precision inside a
    caller's autocast region (CPU autocast would run conv2d in bf16)."""
    return torch.autocast(x.device.type, enabled=False)


def _filter(x: Tensor, kernels: list[Tensor]) -> Tensor:
    """Correlate each image of ``x`` with each kernel ``(1 or B, kh, kw)`` in turn, reflect border;
    channels fold into one grouped convolution, run over chunks of ~``_CHUNK_ELEMENTS`` values.
    The border is padded once for all the kernels: reflecting commutes with the filters."""
    B, C, H, W = x.shape
    ph, pw = sum(k.shape[-2] // 2 for k in kernels), sum(k.shape[-1] // 2 for k in kernels)
    step = max(1, _CHUNK_ELEMENTS // (C * H * W))
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    for i in range(0, B, step):
        n = min(step, B - i)
        y = F.pad(x[i : i + n].reshape(1, n * C, H, W), (pw, pw, ph, ph), mode="reflect")
        for k in kernels:
            kh, kw = k.shape[-2:]
            k = k.expand(n, kh, kw) if k.shape[0] == 1 else k[i : i + n]
            with _no_autocast(y):
                y = F.conv2d(y, k.repeat_interleave(C, dim=0).unsqueeze(1), groups=n * C)
        out[i : i + n] = y.view(n, C, H, W)
    return out


def _splat(ys: Tensor, xs: Tensor, size: int) -> Tensor:
    """Rasterize points ``(n, P)`` bilinearly into ``(n, size, size)`` kernels summing to 1."""
    y0, x0 = ys.floor(), xs.floor()
    fy, fx = ys - y0, xs - x0
    y0, x0 = y0.long(), x0.long()
    out = ys.new_zeros(ys.shape[0], size * size)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            out.scatter_add_(1, (y0 + dy) * size + (x0 + dx), wy * wx)
    return (out / out.sum(1, keepdim=True)).view(-1, size, size)


def _shake_kernels(n: int, size: int, generator: Generator) -> Tensor:
    """``n`` camera-shake kernels ``(n, size, size)``, float64, on the generator's device: paths of
    64 steps (Boracchi & Foi 2012) with inertia, jitter, a pull back to the start and rare jerks."""
    dev, steps = _check_generator(generator), 64

    def u(*shape: int) -> Tensor:
        return torch.rand(shape, generator=generator, device=dev, dtype=torch.float64)

    def normal() -> Tensor:
        return torch.randn(n, generator=generator, device=dev, dtype=torch.float64)

    jitter, pull, p_jerk = u(n), 2 * u(n), 0.05 * u(n)
    direction = torch.polar(torch.ones_like(jitter), 2 * math.pi * u(n))
    path = [torch.zeros(n, dtype=torch.complex128, device=dev)]
    for _ in range(steps):
        jerk = (u(n) < p_jerk) * 2 * torch.polar(torch.ones_like(jitter), math.pi + u(n) - 0.5)
        d = direction * (1 + jerk) + jitter * torch.complex(normal(), normal()) - pull * path[-1]
        direction = d / d.abs().clamp_min(1e-12)
        path.append(path[-1] + direction / steps)
    traj = torch.stack(path, 1)  # (n, steps + 1), total length 1
    xs, ys = traj.real, traj.imag
    xs = xs - (xs.amax(1, keepdim=True) + xs.amin(1, keepdim=True)) / 2
    ys = ys - (ys.amax(1, keepdim=True) + ys.amin(1, keepdim=True)) / 2
    extent = torch.maximum(xs.amax(1) - xs.amin(1), ys.amax(1) - ys.amin(1)).clamp_min(1e-9)
    scale = ((0.3 + 0.7 * u(n)) * (size - 3) / extent)[:, None]  # pixels per unit length
    sub = max(1, math.ceil(2 * float(scale.max()) / steps))  # resample: samples < 0.5 px apart
    t = torch.arange(sub, dtype=torch.float64, device=dev) / sub

    def dense(v: Tensor) -> Tensor:
        seg = v[:, :-1, None] + (v[:, 1:, None] - v[:, :-1, None]) * t
        return torch.cat([seg.flatten(1), v[:, -1:]], 1) * scale + (size - 1) / 2

    return _splat(dense(ys), dense(xs), size)


# -- Blur synthesis --------------------------------------------------------------------------------


def _check_kernel(kernel: object, batch: int, *, finite: bool = True) -> tuple[int, int]:
    """A blur kernel for ``batch`` images: a float tensor ``(kh, kw)`` or ``(batch, kh, kw)``
    of odd sides (and, with ``finite``, finite values), whose sides it returns."""
    _check_tensor("kernel", kernel)
    if kernel.ndim not in (2, 3) or (kernel.ndim == 3 and kernel.shape[0] != batch):
        raise ValueError(f"kernel must have shape (kh, kw) or (B, kh, kw) with B={batch} and odd "
                         f"sides, got {tuple(kernel.shape)}")
    kh, kw = kernel.shape[-2:]
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel must have shape (kh, kw) or (B, kh, kw) with B={batch} and odd "
                         f"sides, got {tuple(kernel.shape)} (sides must be odd, got {kh}x{kw})")
    if finite and not bool(torch.isfinite(kernel).all()):
        raise ValueError(f"kernel must be finite, got {int((~torch.isfinite(kernel)).sum())} "
                         "NaN or infinite values")
    return kh, kw


def gaussian_kernel(sigma: float, *, truncate: float = 4.0, device: Device = None,
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """Sampled, normalized 1-D Gaussian, truncated like ``scipy.ndimage.gaussian_filter``.

    Args:
        sigma: Standard deviation in pixels, > 0.
        truncate: Half-width in sigmas: radius ``int(truncate * sigma + 0.5)``.
        device, dtype: Placement of the result (computed in float64).

    Returns:
        ``(2 * radius + 1,)``, non-negative, summing to 1.

    Raises:
        ValueError: If ``sigma`` or ``truncate`` is not finite and positive.
    """
    device = _check_placement(device, dtype)
    sigma, truncate = _check_number("sigma", sigma), _check_number("truncate", truncate)
    _check_side(f"sigma={sigma:g}, truncate={truncate:g}", 2 * truncate * sigma + 1,
                limit=1 << 20)
    s = torch.tensor([sigma], dtype=torch.float64, device=device)
    return _gaussians(s, truncate)[0].to(dtype)


def gaussian_blur(img: Tensor, sigma: float | Tensor, *, truncate: float = 4.0) -> Tensor:
    """Separable Gaussian blur with a reflect border; one sigma, or one per image.

    Equals ``scipy.ndimage.gaussian_filter(x, (0, sigma, sigma), mode='mirror')`` per channel;
    differentiable. Pillow's ``GaussianBlur(radius=sigma)``, the source paper's blur, approximates
    it with box blurs on 8 bits; the README measures how close the two are.

    Args:
        img: ``(B, C, H, W)`` or ``(C, H, W)``.
        sigma: Standard deviation in pixels, > 0: a number, or a ``(B,)`` tensor, one per image.
        truncate: Kernel half-width in sigmas, as in scipy.

    Returns:
        Blurred images, shaped like ``img``.

    Raises:
        ValueError: If a sigma is not positive or not ``(B,)``, or the radius is not below H and W.
    """
    x, single = _as_batch("img", img)
    B, _, H, W = x.shape
    truncate = _check_number("truncate", truncate)
    if isinstance(sigma, Tensor):
        if sigma.shape != (B,):
            raise ValueError(f"sigma as a tensor must be (B,) = ({B},), got {tuple(sigma.shape)}")
        s = sigma.detach().to("cpu", torch.float64)
        if not torch.isfinite(s).all() or (s <= 0).any():
            raise ValueError(f"sigma must be finite and > 0, got {s.tolist()}")
    else:
        s = torch.tensor([_check_number("sigma", sigma)], dtype=torch.float64)
    if (radius := math.floor(truncate * float(s.max()) + 0.5)) >= min(H, W):  # before building
        raise ValueError(f"kernel radius {radius} (sigma={float(s.max()):g}, truncate="
                         f"{truncate:g}) must be smaller than the image height and width, got "
                         f"H={H}, W={W}")
    k = _gaussians(s, truncate).to(x.device, x.dtype)  # (1 or B, 2 * radius + 1)
    out = _filter(x, [k[:, None, :], k[:, :, None]])
    return out[0] if single else out


def resample_blur(img: Tensor, scale: float, *, mode: str = "bilinear") -> Tensor:
    """Antialiased downsampling by ``scale``, then upsampling back (the source paper's).

    Args:
        img: ``(B, C, H, W)`` or ``(C, H, W)``.
        scale: Factor, > 1: the small image is ``round(H / scale) x round(W / scale)``.
        mode: ``"bilinear"`` or ``"bicubic"`` (which may overshoot [0, 1]; nothing is clamped).

    Returns:
        Images shaped like ``img``.

    Raises:
        ValueError: If ``scale <= 1``, ``mode`` is unknown, or the small image would be empty.
    """
    x, single = _as_batch("img", img)
    scale = _check_number("scale", scale, low=1.0)
    if mode not in ("bilinear", "bicubic"):
        raise ValueError(f"mode must be 'bilinear' or 'bicubic', got {mode!r}")
    H, W = x.shape[-2:]
    h, w = round(H / scale), round(W / scale)
    if h < 1 or w < 1:
        raise ValueError(f"scale={scale} shrinks a {H}x{W} image to nothing ({h}x{w})")
    with _no_autocast(x):
        small = F.interpolate(_wide(x), size=(h, w), mode=mode, antialias=True, align_corners=False)
        out = F.interpolate(small, size=(H, W), mode=mode, align_corners=False).to(x.dtype)
    return out[0] if single else out


def motion_kernel(length: float, angle: float, *, device: Device = None,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """Straight-line motion kernel: a segment rasterized by bilinear splatting.

    Args:
        length: Segment length in pixels, > 0.
        angle: Direction in degrees, counter-clockwise from +x as seen on screen.
        device, dtype: Placement of the result.

    Returns:
        ``(k, k)`` with ``k = 2 * ceil(length / 2) + 3``, non-negative, summing to 1.

    Raises:
        ValueError: If ``length`` is not positive or ``angle`` is not finite.
    """
    device = _check_placement(device, dtype)
    length = _check_number("length", length)
    rad = math.radians(_check_number("angle", angle, low=-math.inf))
    _check_side(f"length={length:g}", length + 3)
    size = 2 * math.ceil(length / 2) + 3
    t = torch.linspace(-0.5, 0.5, max(2, math.ceil(4 * length) + 1), dtype=torch.float64)
    c = (size - 1) / 2
    xs, ys = c + length * t * math.cos(rad), c - length * t * math.sin(rad)
    return _splat(ys[None], xs[None], size)[0].to(device=device, dtype=dtype)


def random_motion_kernel(size: int, *, generator: Generator = None, device: Device = None,
                         dtype: torch.dtype = torch.float32) -> Tensor:
    """Random camera-shake kernel after Boracchi & Foi (2012), splatted bilinearly.

    Args:
        size: Kernel side, odd, >= 5; the path spans U(0.3, 1) * (size - 3) pixels.
        generator: Source of randomness.
        device, dtype: Placement of the result.

    Returns:
        ``(size, size)``, non-negative, summing to 1.

    Raises:
        ValueError: If ``size`` is even or smaller than 5.
    """
    device = _check_placement(device, dtype)
    if (size := _check_int("size", size, low=5)) % 2 == 0:
        raise ValueError(f"size must be odd, got {size}")
    _check_side(f"size={size}", size)
    return _shake_kernels(1, size, generator)[0].to(device=device, dtype=dtype)


def disk_kernel(radius: float, *, device: Device = None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Anti-aliased disk (defocus) kernel: a pixel at distance d gets ``clamp(radius + 0.5 - d)``.

    Args:
        radius: Disk radius in pixels, > 0.
        device, dtype: Placement of the result.

    Returns:
        ``(k, k)`` with ``k = 2 * ceil(radius) + 1``, non-negative, summing to 1.

    Raises:
        ValueError: If ``radius`` is not finite and positive.
    """
    device = _check_placement(device, dtype)
    radius = _check_number("radius", radius)
    _check_side(f"radius={radius:g}", 2 * radius + 1)
    g = torch.arange(-math.ceil(radius), math.ceil(radius) + 1, dtype=torch.float64)
    k = (radius + 0.5 - torch.sqrt(g[:, None] ** 2 + g[None, :] ** 2)).clamp(0, 1)
    return (k / k.sum()).to(device=device, dtype=dtype)


def blur(img: Tensor, kernel: Tensor) -> Tensor:
    """Convolve images with a kernel (flipped: a true convolution), reflect border.

    Args:
        img: ``(B, C, H, W)`` or ``(C, H, W)``.
        kernel: ``(kh, kw)`` shared or ``(B, kh, kw)`` per image, odd sides with ``kh // 2 < H``
            and ``kw // 2 < W``; cast to the image's device and dtype, not normalized.

    Returns:
        Blurred images, shaped like ``img``.

    Raises:
        ValueError: If ``kernel`` has the wrong rank or batch, even sides, is not finite, or is
            too large.
    """
    x, single = _as_batch("img", img)
    B, _, H, W = x.shape
    kh, kw = _check_kernel(kernel, B)
    if kh // 2 >= H or kw // 2 >= W:
        raise ValueError(f"kernel {kh}x{kw} is too large for a reflect border on a {H}x{W} image")
    out = _filter(x, [kernel.reshape(-1, kh, kw).flip(-1, -2).to(x.device, x.dtype)])
    return out[0] if single else out


def anisotropic_gaussian_kernel(sigma_u: float, sigma_v: float, angle: float, *,
                                truncate: float = 4.0, device: Device = None,
                                dtype: torch.dtype = torch.float32) -> Tensor:
    """Sampled 2-D Gaussian with standard deviations ``sigma_u`` along the direction ``angle``
    and ``sigma_v`` across it, normalized; equal sigmas give the isotropic kernel.

    Args:
        sigma_u, sigma_v: Standard deviations in pixels, > 0.
        angle: Direction of the u axis in degrees, counter-clockwise from +x as seen on screen.
        truncate: Half-width in the larger sigma: radius ``int(truncate * max_sigma + 0.5)``.
        device, dtype: Placement of the result (computed in float64).

    Returns:
        ``(2 * radius + 1, 2 * radius + 1)``, non-negative, summing to 1.

    Raises:
        TypeError: If an argument is not a number.
        ValueError: If a sigma or ``truncate`` is not finite and positive, or ``angle`` not finite.

    Example:
        >>> anisotropic_gaussian_kernel(2.0, 0.5, 30.0).shape
        torch.Size([17, 17])
    """
    device = _check_placement(device, dtype)
    su, sv = _check_number("sigma_u", sigma_u), _check_number("sigma_v", sigma_v)
    rad = math.radians(_check_number("angle", angle, low=-math.inf))
    truncate = _check_number("truncate", truncate)
    _check_side(f"sigma_u={su:g}, sigma_v={sv:g}, truncate={truncate:g}",
                2 * truncate * max(su, sv) + 1)
    R = math.floor(truncate * max(su, sv) + 0.5)
    grid = torch.arange(-R, R + 1, dtype=torch.float64)
    y, x = grid[:, None], grid[None, :]  # rows go down the screen
    u, v = x * math.cos(rad) - y * math.sin(rad), x * math.sin(rad) + y * math.cos(rad)
    k = torch.exp(-0.5 * ((u / su) ** 2 + (v / sv) ** 2))
    return (k / k.sum()).to(device=device, dtype=dtype)


def add_noise(img: Tensor, sigma: float, *, generator: Generator = None) -> Tensor:
    """Add white Gaussian noise, unclamped (so it stays zero-mean).

    Args:
        img: Images of any shape.
        sigma: Standard deviation in image units, >= 0.
        generator: Source of randomness.

    Returns:
        ``img + sigma * N(0, 1)``, shaped like ``img``.

    Raises:
        ValueError: If ``sigma`` is negative or not finite.
    """
    _check_tensor("img", img)
    sigma, dev = _check_number("sigma", sigma, strict=False), _check_generator(generator)
    noise = torch.randn(img.shape, generator=generator, device=dev, dtype=img.dtype)
    return img + sigma * noise.to(img.device)


def jpeg(img: Tensor, quality: int) -> Tensor:
    """Compress each image as JPEG with Pillow and decode it, as saving a photo would.

    Values are clipped to [0, 1] and rounded to 8 bits, as any 8-bit file does; colour images
    use Pillow's default chroma subsampling (4:2:0).

    Args:
        img: ``(B, C, H, W)`` or ``(C, H, W)`` with C = 1 or 3.
        quality: JPEG quality, 1 to 95 (Pillow's scale).

    Returns:
        The decoded images, shaped like ``img``, on its device and dtype.

    Raises:
        ValueError: If ``quality`` is out of range or C is not 1 or 3.
    """
    x, single = _as_batch("img", img)
    quality = _check_int("quality", quality, low=1, high=95)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"img must have 1 or 3 channels for JPEG, got {tuple(img.shape)}")
    u8 = (x.detach().to("cpu", torch.float32).clamp(0, 1) * 255).round().to(torch.uint8)
    out = torch.empty(x.shape, dtype=torch.float32)
    for i, arr in enumerate(u8.permute(0, 2, 3, 1).numpy()):
        buffer = io.BytesIO()
        Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).save(
            buffer, format="JPEG", quality=quality)
        decoded = np.array(Image.open(buffer))
        out[i] = torch.from_numpy(decoded.reshape(*decoded.shape[:2], -1)).permute(2, 0, 1)
    out = out.div_(255).to(x.device, x.dtype)
    return out[0] if single else out


def unsharp_mask(img: Tensor, *, sigma: float = 1.0, amount: float = 1.0) -> Tensor:
    """Unsharp masking, what most photo editors call sharpening: ``img + amount * (img -
    gaussian_blur(img, sigma))``, unclamped (as ``skimage.filters.unsharp_mask`` before it clips).

    Args:
        img: ``(B, C, H, W)`` or ``(C, H, W)``.
        sigma: Standard deviation of the blur that defines the detail, in pixels, > 0.
        amount: How much detail to add, >= 0; 0 returns ``img``.

    Returns:
        Sharpened images, shaped like ``img``.

    Raises:
        ValueError: If ``sigma`` or ``amount`` is out of range, or the blur too large.
    """
    amount = _check_number("amount", amount, strict=False)
    return torch.lerp(gaussian_blur(img, sigma), img, 1 + amount)


def _transfer(k: Tensor, size: torch.Size) -> Tensor:
    """The real FFT of kernels ``(..., kh, kw)`` centred on pixel (0, 0) of a ``size`` grid."""
    kh, kw = k.shape[-2:]
    full = k.new_zeros(*k.shape[:-2], *size)
    full[..., :kh, :kw] = k
    return torch.fft.rfft2(full.roll((-(kh // 2), -(kw // 2)), dims=(-2, -1)))


def _fft_blur(x: Tensor, kernels: Tensor) -> Tensor:
    """``blur(x, kernels)`` for ``(B, C, H, W)`` and ``(B, k, k)`` through the FFT: the same
    reflect border, and a cost that does not grow with the kernel."""
    p = kernels.shape[-1] // 2
    padded = F.pad(x, (p, p, p, p), mode="reflect") if p else x
    K = _transfer(kernels[:, None].to(x.device, x.dtype), padded.shape[-2:])
    out = torch.fft.irfft2(torch.fft.rfft2(padded) * K, s=padded.shape[-2:])
    return out[..., p : p + x.shape[-2], p : p + x.shape[-1]]


def wiener(img: Tensor, kernel: Tensor, *, balance: float = 0.01) -> Tensor:
    """Non-blind Wiener deconvolution of images blurred by a known ``kernel``.

    The filter of scikit-image's ``restoration.wiener``: ``conj(K) / (|K|^2 + balance |L|^2)``
    in the frequency domain, with ``K`` the kernel's transfer function and ``L`` the Laplacian's
    (a smoothness prior). The image is first padded by reflection by the kernel's width (at most
    ``H - 1``, ``W - 1``), so the borders do not wrap around; the result is cropped back,
    unclamped. Computed in float64 for float64 input, else in float32.

    Args:
        img: ``(B, C, H, W)`` or ``(C, H, W)``, blurred by ``blur(sharp, kernel)``.
        kernel: ``(kh, kw)`` shared or ``(B, kh, kw)`` per image, odd sides; a ``(1, 1)`` kernel
            of 1 (no blur) makes the filter a pure Laplacian-regularised smoother.
        balance: Weight of the prior, >= 0: larger is smoother and less noisy; 0 is the plain
            inverse filter, which explodes where ``K`` vanishes.

    Returns:
        Deconvolved images, shaped like ``img``, in its dtype and on its device.

    Raises:
        ValueError: If ``kernel`` has the wrong rank, batch or even sides, is not finite, sums to
            0 or less, is larger than the padded images, or ``balance < 0``.
    """
    x, single = _as_batch("img", img)
    B, C, H, W = x.shape
    kh, kw = _check_kernel(kernel, B)
    if (least := kernel.reshape(-1, kh * kw).sum(1).min().item()) <= 0:
        raise ValueError(f"kernel must sum to more than 0 (a blur), each; got a sum of {least:g}")
    balance = _check_number("balance", balance, strict=False)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    p = min(max(kernel.shape[-2:]), H - 1, W - 1)
    if kernel.shape[-2] > H + 2 * p or kernel.shape[-1] > W + 2 * p:
        raise ValueError(f"kernel {tuple(kernel.shape[-2:])} is too large for {H}x{W} images "
                         f"(padded by {p}, as far as reflection reaches)")
    padded = F.pad(x.to(dtype), (p, p, p, p), mode="reflect") if p else x.to(dtype)
    size = padded.shape[-2:]
    lap = torch.tensor([[0.0, -1, 0], [-1, 4, -1], [0, -1, 0]], dtype=dtype, device=x.device)
    K = _transfer(kernel.to(x.device, dtype).reshape(-1, 1, *kernel.shape[-2:]), size)
    filt = K.conj() / (K.abs().square() + balance * _transfer(lap, size).abs().square())
    out = torch.fft.irfft2(torch.fft.rfft2(padded) * filt, s=size)
    out = out[..., p : p + H, p : p + W].to(x.dtype)
    return out[0] if single else out


def kernel_sigma(kernel: Tensor) -> Tensor:
    """The Gaussian-equivalent size of blur kernels: ``sqrt((var_y + var_x) / 2)`` of each kernel,
    normalised to sum 1, about its own centroid (a Gaussian of std s gives s).

    Args:
        kernel: ``(kh, kw)`` or ``(N, kh, kw)``, finite, non-negative, each summing to more
            than 0.

    Returns:
        ``()`` or ``(N,)``, float32 on the kernel's device.

    Raises:
        TypeError: If ``kernel`` is not a floating-point tensor.
        ValueError: If it is not ``(kh, kw)`` or ``(N, kh, kw)``, holds a negative, NaN or inf
            value, or a kernel does not sum to > 0.

    Example:
        >>> round(kernel_sigma(disk_kernel(2.0)).item(), 2)  # a disk of radius r: about r / 2
        1.08
    """
    _check_tensor("kernel", kernel)
    if kernel.ndim not in (2, 3) or kernel.numel() == 0:
        hint = ": a 1-D kernel (gaussian_kernel's) is torch.outer(k, k) in 2-D" if \
            kernel.ndim == 1 else ""
        raise ValueError(f"kernel must be (kh, kw) or (N, kh, kw), got {tuple(kernel.shape)}"
                         f"{hint}")
    k = kernel.double()
    if not bool(torch.isfinite(k).all()) or bool((k < 0).any()):
        raise ValueError(f"kernel values must be finite and >= 0, got min {k.min().item():g}, "
                         f"max {k.max().item():g}")
    total = k.sum((-2, -1), keepdim=True)
    if not bool((total > 0).all()):
        raise ValueError("every kernel must sum to more than 0")
    k = k / total
    rows, cols = k.sum(-1), k.sum(-2)
    variance = 0.0
    for marginal in (rows, cols):
        r = torch.arange(marginal.shape[-1], dtype=torch.float64, device=k.device)
        mean = (marginal * r).sum(-1)
        variance = variance + (marginal * r**2).sum(-1) - mean**2
    return (variance / 2).clamp(min=0).sqrt().float()


def _resample_sigma(scale: float, mode: str) -> float:
    """``kernel_sigma`` of ``resample_blur(., scale, mode=mode)``'s response to a point."""
    size = 2 * math.ceil(4 * scale) + 9
    point = torch.zeros(1, 1, size, size, dtype=torch.float64)
    point[..., size // 2, size // 2] = 1
    return kernel_sigma(resample_blur(point, scale, mode=mode)[0].clamp(min=0)).item()


def _log_uniform(low: float, high: float, u: float | Tensor) -> float | Tensor:
    """``u`` in [0, 1] mapped log-uniformly onto [low, high] (low, high > 0)."""
    return low * (high / low) ** u


def _realistic(x: Tensor, sigma: float, generator: Generator, grey_noise: float,
               gaussian_told: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """``degrade(kind="real")``, its levels ``(N, 3)``, or ``(N, 4)`` with ``gaussian_told``,
    and its kernels ``(N, k, k)`` (see ``degrade``): the distribution and its sources are in
    ``degrade``'s docstring."""
    n, dev, s_max = len(x), _check_generator(generator), 2 * sigma
    draws = torch.rand(n, 10, generator=generator, device=dev, dtype=torch.float64).cpu()
    if gaussian_told > 0:  # drawn only then, as grey noise is; blurred isotropically instead
        told = torch.rand(n, generator=generator, device=dev, dtype=torch.float64).cpu()
        told = (told < gaussian_told) & (draws[:, 0] >= 0.30)  # the sharp ones stay sharp
        draws[told, 0] = 0.30  # the isotropic Gaussian branch
    R = math.floor(4 * s_max + 0.5)  # every kernel fits (2R + 1) x (2R + 1)
    kernels = torch.zeros(n, 2 * R + 1, 2 * R + 1, dtype=torch.float64)
    kernels[:, R, R] = 1  # unblurred, until a kernel is drawn
    shaken, resampled = [], []
    for i, (kind, a, b, c, *_) in enumerate(draws.tolist()):
        if kind < 0.30:  # left sharp: a sharp photo must come back unchanged
            continue
        if kind < 0.55:  # Gaussian, isotropic (a == b) or not, sigma up to s_max
            su = _log_uniform(0.3, s_max, a)
            sv = su if kind < 0.42 else _log_uniform(0.3, su, b)
            k = anisotropic_gaussian_kernel(su, sv, 180 * c, dtype=torch.float64)
        elif kind < 0.70:
            shaken.append(i)
            continue
        elif kind < 0.85:  # defocus
            k = disk_kernel(_log_uniform(0.5, s_max / 1.5, a), dtype=torch.float64)
        else:
            mode = "bilinear" if b < 0.5 else "bicubic"
            resampled.append((i, _log_uniform(1.2, s_max, a), mode))
            continue
        r = k.shape[-1] // 2
        kernels[i] = F.pad(k, (R - r, R - r, R - r, R - r))
    if shaken:  # camera shake, paths of (0.3 to 1) x 2 s_max pixels
        size = 2 * math.ceil(s_max) + 3
        k = _shake_kernels(len(shaken), size, generator).cpu()
        kernels[shaken] = F.pad(k, [R - size // 2] * 4)
    blur_sigma = kernel_sigma(kernels).double()
    out = _fft_blur(x, kernels)
    for i, scale, mode in resampled:
        out[i] = resample_blur(out[i], scale, mode=mode)
        blur_sigma[i] = _resample_sigma(scale, mode)
    # Noise: white on half the images, signal-dependent (shot) on a third of them; none, and no
    # JPEG, on two thirds of those left sharp, which come back exactly as they were.
    clean = draws[:, 0] < 0.2
    white = torch.where((draws[:, 4] < 0.5) & ~clean, _log_uniform(0.002, 0.04, draws[:, 5]), 0.0)
    shot = torch.where((draws[:, 6] < 0.33) & ~clean, _log_uniform(1e-4, 2e-3, draws[:, 7]), 0.0)
    white, shot = white.to(x), shot.to(x)
    normal = torch.randn((2, *x.shape), generator=generator, device=dev, dtype=x.dtype).to(x)
    if grey_noise > 0:  # drawn only then: grey_noise=0 draws exactly as before it existed
        draw = torch.rand(n, generator=generator, device=dev, dtype=torch.float64).cpu()
        grey = draw < grey_noise
        normal[:, grey] = normal[:, grey, :1].expand(-1, -1, x.shape[1], -1, -1)
    noise_std = (white**2 + shot * out.clamp(0, 1).mean((1, 2, 3))).sqrt()  # shot: at the mean
    out = out + white[:, None, None, None] * normal[0] + \
        (out.clamp(0, 1) * shot[:, None, None, None]).sqrt() * normal[1]
    out = (out.clamp(0, 1) * 255).round() / 255  # an 8-bit photo
    quality = torch.full((n,), 100.0, dtype=torch.float64)
    for i in ((draws[:, 8] < 0.5) & ~clean).nonzero().flatten().tolist():
        quality[i] = int(30 + 65.99 * draws[i, 9])
        out[i] = jpeg(out[i], int(quality[i]))
    levels = [blur_sigma, noise_std.double().cpu(), quality]
    if gaussian_told > 0:
        levels.append(told.double())
    kernels[[i for i, *_ in resampled]] = math.nan  # no kernel: resampling
    return out, torch.stack(levels, 1).to(x.device, torch.float32), kernels.float().to(x.device)


def degrade(sharp: Tensor, *, kind: str = "gaussian", sigma: float = 1.5, noise: float = 0.0,
            grey_noise: float = 0.0, gaussian_told: float = 0.0, generator: Generator = None,
            return_levels: bool = False, return_kernels: bool = False
            ) -> Tensor | tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """Make blurred training inputs from sharp images, then add noise if ``noise > 0``.

    * ``"gaussian"``: the source paper's protocol, exactly ``gaussian_blur(sharp, sigma)``.
    * ``"motion"``: per image, a ``random_motion_kernel`` of side ``2 * ceil(3 * sigma) + 1``.
    * ``"mixed"``: per image, ``s = sigma * U(0.5, 1.5)`` and, with equal odds, a Gaussian blur of
      std ``s``, ``resample_blur`` by ``1 + 1.5 * s``, camera shake of side ``2 * ceil(3 * s) + 1``
      or ``disk_kernel(2 * s)``; noise std ``noise * U(0, 1)``.
    * ``"real"``: what photographs meet, after the mixes of Real-ESRGAN (Wang et al. 2021: blur,
      resampling, noise, JPEG q30-95), BSRGAN (Zhang et al. 2021), DeblurGAN (Kupyn et al. 2018:
      about a quarter of its motion kernels are nearly a point, so sharp input stays sharp) and
      RSBlur (Rim et al. 2022: noise on synthetic blur was its largest gain on real blur). Per
      image, with ``s = 2 * sigma`` (3 px by default) and L(a, b) log-uniform on [a, b] (mild
      degradations as common as strong ones): 30% left sharp; 25% Gaussian blur of std
      L(0.3, s), isotropic or (half of them) anisotropic in a random direction; 15% camera shake
      (paths of 0.3-1 x ``2 ceil(s) + 1`` px); 15% defocus (a disk of radius L(0.5, s / 1.5));
      15% down-up resampling by L(1.2, s), bilinear or bicubic. Then white noise of std
      L(0.002, 0.04) on half the images and shot noise (variance L(1e-4, 2e-3) x the signal) on a
      third, clipping to [0, 1] and 8 bits, and JPEG of quality U(30, 95) on half; but two thirds
      of the images left sharp (20% of all) get no noise and no JPEG, and so come back exactly as
      they were if they were 8-bit. ``noise`` adds more. With ``grey_noise``, that share of the
      images get noise that is the same in every channel (Real-ESRGAN's gray noise, drawn for
      40% of its images), as in photos whose colour was interpolated (demosaicing) or
      subsampled (JPEG): a grain of brightness, where per-channel noise is a grain of colour.
      With ``gaussian_told``, that share of the blurred images are blurred by an isotropic
      Gaussian (std L(0.3, s)) instead, and told so: their levels get a fourth column,
      gaussian, 1 (0 for the rest, isotropic Gaussians among them), for ``unet(conditioned=4)``.

    With ``return_levels``, also what was done to each image, as a conditioned model
    (``unet(conditioned=1)``) is told it: ``(blur, noise, jpeg)`` with blur the
    ``kernel_sigma`` of the blur (of its response to a point for resampling; 0 when unblurred),
    noise the standard deviation of the added noise (shot noise taken at the image's mean) and
    jpeg the JPEG quality (100 when not compressed). With ``return_kernels`` too, also each
    image's blur kernel, as ``model(x, levels, kernel=...)`` is told it: ``(B, k, k)``, a
    point for an image left sharp, all NaN for resampling (no kernel).

    Args:
        sharp: ``(B, C, H, W)`` or ``(C, H, W)``, in [0, 1].
        kind: ``"gaussian"``, ``"motion"``, ``"mixed"`` or ``"real"``.
        sigma: Blur strength in pixels, > 0.
        noise: Standard deviation of ``add_noise`` (unclamped), >= 0.
        grey_noise: For ``"real"``: the share of images whose noise is the same in every
            channel, in [0, 1].
        gaussian_told: For ``"real"``: the share of the blurred images blurred by an isotropic
            Gaussian instead and told so (a fourth level), in [0, 1].
        generator: Source of randomness.
        return_levels: Also return the levels (``kind`` ``"gaussian"`` or ``"real"``).
        return_kernels: With ``return_levels``, also return the kernels.

    Returns:
        Degraded images, shaped like ``sharp``; with ``return_levels``, ``(images, levels)``,
        levels ``(B, 3)`` or ``(3,)`` float32 on the images' device (4 columns with
        ``gaussian_told``); with ``return_kernels``, ``(images, levels, kernels)``, kernels
        ``(B, k, k)`` or ``(k, k)`` float32 on the images' device.

    Raises:
        TypeError: If ``sigma``, ``noise``, ``grey_noise`` or ``gaussian_told`` is not a
            number, or ``return_levels`` or ``return_kernels`` not a bool.
        ValueError: If ``kind``, ``sigma``, ``noise``, ``grey_noise`` or ``gaussian_told`` is
            out of range (for ``"real"``, ``sigma >= 0.5``, and 1 or 3 channels), the blur too
            large, levels asked of ``"motion"`` or ``"mixed"``,
            kernels without levels, or grey noise or told Gaussians of a kind other than
            ``"real"``.
    """
    x, single = _as_batch("sharp", sharp)
    if kind not in (kinds := ("gaussian", "motion", "mixed", "real")):
        raise ValueError(f"kind must be one of {kinds}, got {kind!r}")
    if return_levels and kind not in ("gaussian", "real"):
        raise ValueError(f"return_levels needs kind 'gaussian' or 'real', got {kind!r}")
    for name, flag in (("return_levels", return_levels), ("return_kernels", return_kernels)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    if return_kernels and not return_levels:
        raise ValueError("return_kernels needs return_levels: the kernels come with the levels")
    sigma, noise = _check_number("sigma", sigma), _check_number("noise", noise, strict=False)
    if noise > 1:
        raise ValueError(f"noise must be <= 1 (a std on the 0-1 scale), got {noise:g}")
    grey_noise = _check_number("grey_noise", grey_noise, strict=False)
    if grey_noise > 1:
        raise ValueError(f"grey_noise must be in [0, 1], got {grey_noise:g}")
    if grey_noise > 0 and kind != "real":
        raise ValueError(f"grey_noise is for kind 'real', got kind {kind!r}")
    gaussian_told = _check_number("gaussian_told", gaussian_told, strict=False)
    if gaussian_told > 1:
        raise ValueError(f"gaussian_told must be in [0, 1], got {gaussian_told:g}")
    if gaussian_told > 0 and kind != "real":
        raise ValueError(f"gaussian_told is for kind 'real', got kind {kind!r}")
    if kind == "real" and sigma < 0.5:
        raise ValueError(f"kind 'real' resamples by factors from 1.2 to 2 sigma, which must be "
                         f"over 1: sigma must be >= 0.5, got {sigma:g}")
    if kind == "real" and x.shape[1] not in (1, 3):
        raise ValueError(f"kind 'real' saves images as JPEG: sharp must have 1 or 3 channels, "
                         f"got {tuple(sharp.shape)}")
    dev = _check_generator(generator)
    s_max = {"mixed": 1.5, "real": 2.0}.get(kind, 1.0) * sigma  # the largest kernel, up front
    radius = max(math.floor(4 * s_max + 0.5) if kind != "motion" else 0, math.ceil(3 * s_max))
    if radius >= min(x.shape[-2:]):
        raise ValueError(f"sigma={sigma:g} blurs with kernels up to {2 * radius + 1}x"
                         f"{2 * radius + 1} ({kind}), too large for {tuple(x.shape[-2:])} images")
    if kind == "gaussian":
        out = gaussian_blur(x, sigma)
    elif kind == "motion":
        out = blur(x, _shake_kernels(len(x), 2 * math.ceil(3 * sigma) + 1, generator))
    elif kind == "real":
        out, levels, kernels = _realistic(_wide(x), sigma, generator, grey_noise, gaussian_told)
        out = out.to(x.dtype)
    if kind != "mixed":
        out = add_noise(out, noise, generator=generator) if noise > 0 else out
        if not return_levels:
            return out[0] if single else out
        if kind == "gaussian":  # the blur as the sampled kernel spreads, as _realistic reports it
            g = gaussian_kernel(sigma, device=x.device)
            kernels = (g[:, None] * g[None, :]).expand(len(x), len(g), len(g))
            told = [float(kernel_sigma(kernels[0])), 0.0, 100.0]
            levels = torch.tensor([told] * len(x), device=x.device)
        levels[:, 1] = levels[:, 1].hypot(torch.tensor(noise))
        returned = (out, levels, kernels) if return_kernels else (out, levels)
        return tuple(r[0] for r in returned) if single else returned
    draws = torch.rand(len(x), 3, generator=generator, device=dev, dtype=torch.float64)
    parts = []
    for xi, (strength, choice, level) in zip(x.split(1), draws.tolist()):
        s = sigma * (0.5 + strength)
        if choice < 0.25:
            yi = gaussian_blur(xi, s)
        elif choice < 0.5:
            yi = resample_blur(xi, 1 + 1.5 * s)
        elif choice < 0.75:
            yi = blur(xi, _shake_kernels(1, 2 * math.ceil(3 * s) + 1, generator)[0])
        else:
            yi = blur(xi, disk_kernel(2 * s, device=x.device, dtype=x.dtype))
        parts.append(add_noise(yi, noise * level, generator=generator) if noise > 0 else yi)
    out = torch.cat(parts)
    return out[0] if single else out


# -- Dead-leaves training images -------------------------------------------------------------------


def dead_leaves(n: int, size: int, *, r_min: float = 0.01, r_max: float = 0.3,
                contrast: float = 1.0, texture: float = 0.0, supersample: int = 1,
                generator: Generator = None, device: Device = None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Random dead-leaves images: occluding disks with power-law radii and random colours.

    Radii have density ~ ``r^-3`` (scale-invariant, as in ISO 19567-2), centres are uniform on a
    torus, colours ``0.5 + contrast * (U[0, 1]^3 - 0.5)``; disks cover each pixel six times on
    average. The defaults give the classic chart: flat disks with hard edges. Networks trained on
    it transfer better to photographs with anti-aliased edges and shading (``supersample=2,
    texture=0.5`` in ``python train.py``: see the README).

    Args:
        n: Number of images, >= 1.
        size: Side in pixels, >= 2.
        r_min: Smallest radius as a fraction of ``size``, > 0.
        r_max: Largest radius as a fraction of ``size``, in (``r_min``, 1].
        contrast: Spread of the colours around mid-grey, in (0, 1].
        texture: Largest amplitude of a random texture with the power spectrum of natural
            images (~ 1/f^2), multiplied into each image, >= 0; each image draws its own
            amplitude in [0, ``texture``].
        supersample: Render at this many times ``size`` and average down (1 gives hard,
            aliased edges; 2 gives anti-aliased edges, as a camera's).
        generator: Source of randomness.
        device, dtype: Placement of the result.

    Returns:
        ``(n, 3, size, size)`` with values in [0, 1].

    Raises:
        ValueError: If ``n < 1``, ``size < 2``, or another argument is out of range.
    """
    device = _check_placement(device, dtype)
    n, size = _check_int("n", n, low=1), _check_int("size", size, low=2)
    supersample = _check_int("supersample", supersample, low=1)
    texture = _check_number("texture", texture, strict=False)
    r_min, r_max = _check_number("r_min", r_min), _check_number("r_max", r_max)
    if not r_min < r_max <= 1:
        raise ValueError(f"need 0 < r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
    if not 0 < _check_number("contrast", contrast) <= 1:
        raise ValueError(f"contrast must be in (0, 1], got {contrast}")
    dev = _check_generator(generator)
    final, size = size, size * supersample
    a, b = r_min * size, r_max * size
    mean_area = math.pi * 2 * math.log(b / a) / (a**-2 - b**-2)  # E[pi r^2] for p(r) ~ r^-3
    k = math.ceil(_LEAF_COVER * size * size / mean_area)
    for what, count in (("images", n * size * size * 4), ("disks", n * k * 6)):
        if count > _MAX_ELEMENTS:  # indices and colours, or radii, centres and colours
            raise ValueError(f"n={n}, size={final}, supersample={supersample}, r_min={r_min:g} "
                             f"need {count:,} values for the {what}, over {_MAX_ELEMENTS:,}")
    u = torch.rand(n, k, generator=generator, device=dev)
    radius = ((a**-2 - u * (a**-2 - b**-2)) ** -0.5).to(device)  # inverse CDF of p(r)
    centre = (torch.rand(n, k, 2, generator=generator, device=dev) * size).to(device)
    colour = torch.rand(n, k + 1, 3, generator=generator, device=dev).to(device)  # k: background
    colour = 0.5 + contrast * (colour - 0.5)
    # Render disks by size group; scatter_reduce(amin) of the disk index keeps the topmost one.
    group = torch.log2(radius + 1).ceil().long()  # box half-width 2**group >= radius + 1
    top = torch.full((n * size * size,), k, dtype=torch.long, device=radius.device)
    for g in group.unique().tolist():
        img_idx, leaf = (group == g).nonzero(as_tuple=True)
        off = torch.arange(-(2**g), 2**g + 1, device=radius.device)
        chunk = max(1, (1 << 22) // off.numel() ** 2)  # bound memory: 4M candidate pixels
        for i in range(0, img_idx.numel(), chunk):
            im, lf = img_idx[i : i + chunk], leaf[i : i + chunk]
            cy, cx, r = centre[im, lf, 0, None], centre[im, lf, 1, None], radius[im, lf, None]
            iy, ix = cy.floor().long() + off, cx.floor().long() + off  # (m, D) rows and columns
            d2 = ((iy + 0.5 - cy) ** 2)[:, :, None] + ((ix + 0.5 - cx) ** 2)[:, None, :]
            inside = d2 <= (r * r)[:, :, None]  # (m, D, D)
            flat = (im[:, None] * size + iy % size)[:, :, None] * size + (ix % size)[:, None, :]
            top.scatter_reduce_(0, flat[inside], lf[:, None, None].expand_as(flat)[inside], "amin")
    img = colour.gather(1, top.view(n, -1, 1).expand(n, size * size, 3))
    img = F.avg_pool2d(img.view(n, size, size, 3).permute(0, 3, 1, 2), supersample)
    if texture > 0:
        f2 = torch.fft.fftfreq(final, device=dev)[:, None] ** 2 + \
            torch.fft.rfftfreq(final, device=dev) ** 2
        spectrum = torch.randn(n, 1, final, final // 2 + 1, 2, generator=generator, device=dev)
        shade = torch.fft.irfft2(torch.view_as_complex(spectrum) / f2.clamp(min=final**-2).sqrt(),
                                 s=(final, final))
        shade = (shade - shade.mean((-2, -1), True)) / shade.std(dim=(-2, -1), keepdim=True)
        amount = texture * torch.rand(n, 1, 1, 1, generator=generator, device=dev)
        img = (img * (1 + amount * shade).to(img.device)).clamp_(0, 1)
    return img.to(dtype).contiguous()


# -- Networks --------------------------------------------------------------------------------------


def _unet_radius(depth: int, blocks: int, shuffle: int) -> int:
    """Receptive-field radius in pixels of a ``UNet``: the input positions one output pixel
    depends on, walked back from the output through every layer (worst phase of the pixel)."""

    def encoder(level: int, lo: int, hi: int) -> tuple[int, int]:  # behind feats[level][lo:hi]
        lo, hi = lo - 2 * blocks, hi + 2 * blocks  # the level's residual blocks
        if level == 0:
            return lo - 1, hi + 1  # the head conv
        return encoder(level - 1, 2 * lo - 1, 2 * hi + 1)  # the stride-2 conv from level - 1

    def decoder(level: int, lo: int, hi: int) -> tuple[int, int]:
        if level == depth - 1:
            return encoder(level, lo, hi)
        lo, hi = lo - 2 * blocks, hi + 2 * blocks
        (a, b), (c, d) = encoder(level, lo, hi), decoder(level + 1, lo // 2, hi // 2)  # skip, up
        return min(a, c), max(b, d)

    r = max(max(p - lo, hi - p) for p in range(2 ** (depth - 1))
            for lo, hi in [decoder(0, p - 1, p + 1)])  # p - 1, p + 1: the tail conv
    return shuffle * r + shuffle - 1


LEVELS = ("blur", "noise", "jpeg")  # what a conditioned model is told, per image
_LEVEL_SIDE = 8  # estimate_levels reads images of at least this side
_MAX_BLUR = 1.75  # estimate_levels's default max_blur, which the CLI prints it applies
_GRID_PEAK = 1.2  # a JPEG's block edges stand out by this much: chosen on the validation photos
_LEVEL_SCALE = (3.0, 0.04, 70.0)  # blur, noise, 100 - jpeg: degrade(kind="real")'s largest


def check_levels(levels: object, n: int) -> Tensor:
    """Check what a conditioned model is to be told about ``n`` images.

    Args:
        levels: ``(blur, noise, jpeg)`` numbers, or a float tensor ``(3,)`` (one row for all
            images) or ``(n, 3)``: blur sigma >= 0, noise std 0-1, JPEG quality 1-100 (100:
            none). A row of NaN means unknown. A fourth column, ``gaussian``, for a
            ``unet(conditioned=4)``: 1 if the blur is an isotropic Gaussian, so that the told
            blur is exact, 0 if its shape is not told.
        n: the number of images.

    Returns:
        The levels as an ``(n, 3)`` or ``(n, 4)`` tensor (a view where one row was given).

    Raises:
        TypeError: If ``levels`` is neither numbers nor a floating-point tensor, or ``n`` not
            an int.
        ValueError: If ``n < 1``, the shape is wrong, a value is out of range or infinite, or a
            row is partly NaN.

    Example:
        >>> check_levels((1.5, 0.0, 100), 2).tolist()
        [[1.5, 0.0, 100.0], [1.5, 0.0, 100.0]]
    """
    n = _check_int("n", n, low=1)
    if isinstance(levels, (tuple, list)):
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in levels):
            raise TypeError(f"levels must be numbers (blur, noise, jpeg), got {levels!r}")
        levels = torch.tensor(levels, dtype=torch.float32)
    elif not isinstance(levels, Tensor):
        raise TypeError(f"levels must be numbers (blur, noise, jpeg) or a floating-point "
                        f"torch.Tensor, got {type(levels).__name__}")
    _check_tensor("levels", levels)
    c = levels.shape[-1] if levels.dim() else 0
    if c not in (3, 4) or levels.shape not in ((c,), (n, c)):
        raise ValueError(f"levels must be ({len(LEVELS)},) or (B, {len(LEVELS)}) = ({n}, "
                         f"{len(LEVELS)}) (or 4 columns, with gaussian), got "
                         f"{tuple(levels.shape)}")
    rows = levels.reshape(-1, c)
    if bool((rows.isnan().any(1) != rows.isnan().all(1)).any()):
        raise ValueError(f"a row of levels is either all NaN (unknown) or all numbers, got "
                         f"{levels.tolist()}")
    known = rows[~rows.isnan().any(1)]
    if not bool(known.isfinite().all()) or bool((known[:, :2] < 0).any()) or \
            bool((known[:, 1] > 1).any()) or bool(((known[:, 2] < 1) | (known[:, 2] > 100)).any()):
        raise ValueError(f"levels must be blur >= 0, 0 <= noise <= 1 and 1 <= jpeg <= 100 "
                         f"(noise on a 0-1 scale; NaN for unknown), got {levels.tolist()}")
    if c == 4 and not bool(((known[:, 3] == 0) | (known[:, 3] == 1)).all()):
        raise ValueError(f"the fourth level, gaussian, must be 0 or 1, got {levels.tolist()}")
    return levels.expand(n, c)


def _level_maps(levels: Tensor | None, h: Tensor, *, shape: bool = False) -> Tensor:
    """Constant maps ``(B, 4, h, w)``: known (1 or 0), then blur / 3, noise / 0.04 and
    (100 - jpeg) / 70, zero where unknown (levels None or a NaN row); with ``shape``
    (``conditioned=4``) a fifth, gaussian (0 where not given)."""
    n, c = h.shape[0], 4 if shape else 3
    if levels is None:
        v = h.new_zeros(n, 1 + c)
    else:
        if not isinstance(levels, Tensor):
            raise TypeError(f"levels must be a (3,) or ({n}, 3) tensor, got "
                            f"{type(levels).__name__}")
        if levels.shape[-1:] == (4,) and not shape:
            raise ValueError("levels of 4 columns (gaussian) need unet(conditioned=4), got "
                             f"{tuple(levels.shape)}")
        if levels.shape not in ((3,), (n, 3), (c,), (n, c)):
            raise ValueError(f"levels must be a (3,) or ({n}, 3) tensor, got "
                             f"{tuple(levels.shape)}")
        levels = levels.to(h.device, h.dtype).expand(n, -1)
        known = ~levels.isnan().any(1, keepdim=True)
        v = scaled_levels(levels[:, :3]).nan_to_num() * known
        if shape:  # a blur of 0 has no shape
            flag = levels[:, 3:].nan_to_num() if levels.shape[1] == 4 else v.new_zeros(n, 1)
            v = torch.cat([v, flag * (v[:, :1] > 0)], 1)
        v = torch.cat([known.to(h.dtype), v], 1)
    return v[:, :, None, None].expand(-1, -1, *h.shape[-2:])


def _told_kernel(kernel: object, x: Tensor, *, unknown: bool = False) -> Tensor:
    """A blur kernel told for images ``x (B, C, H, W)``, checked: ``(B, kh, kw)`` float32,
    each normalised to sum 1; with ``unknown``, a kernel all NaN stays so (not told)."""
    B, _, H, W = x.shape
    kh, kw = _check_kernel(kernel, B, finite=False)  # NaN: not told, checked below
    if kh // 2 >= H or kw // 2 >= W:
        raise ValueError(f"kernel {kh}x{kw} is too large for a {H}x{W} image")
    k = kernel.reshape(-1, kh, kw).float()
    told = ~k.isnan().flatten(1).all(1) if unknown else torch.ones(len(k), dtype=torch.bool,
                                                                   device=k.device)
    if not bool(k[told].isfinite().all()) or bool((k[told] < 0).any()) or \
            not bool((k[told].sum((-2, -1)) > 0).all()):
        raise ValueError("kernel must be finite and non-negative, each summing to more than 0"
                         + (" (or all NaN: not told)" if unknown else ""))
    return (k / k.sum((-2, -1), keepdim=True)).expand(B, kh, kw)


def _sampled_gaussian_std(told: Tensor) -> Tensor:
    """The sigma ``s`` whose sampled Gaussian (``gaussian_kernel(s)``) spreads by ``told``
    (``kernel_sigma``; they differ below about 0.7 px), by bisection; ``(B,)`` to ``(B,)``."""
    k = torch.arange(-16.0, 17.0, dtype=told.dtype, device=told.device)
    lo, hi = torch.zeros_like(told), told + 1
    for _ in range(24):
        mid = (lo + hi) / 2
        w = torch.exp(-0.5 * (k / mid[:, None].clamp_min(1e-3)) ** 2)
        spread = ((k**2 * w).sum(1) / w.sum(1)).sqrt()
        lo, hi = torch.where(spread < told, mid, lo), torch.where(spread < told, hi, mid)
    return torch.where(told < 3, (lo + hi) / 2, told)


def _told_wiener(x: Tensor, levels: Tensor | None, *, at_zero: bool = False,
                 kernel: Tensor | None = None) -> Tensor:
    """``wiener(x, Gaussian of the told blur) - x`` per image, zero where the levels are unknown
    or the blur 0: a classical estimate for ``unet(conditioned=2)``. The balance grows with the
    told noise and JPEG loss as ``wiener``'s tuned balances do. ``at_zero`` (``conditioned=3``):
    told blur 0, the same filter with no blur (a smoothing), zero only where the balance is 0.
    ``kernel`` (``_told_kernel``'s ``(B, kh, kw)``): the filter of that blur, not the
    Gaussian, but for images whose kernel is NaN (not told).
    ``(B, C, H, W)`` to the same."""
    if levels is None:
        return torch.zeros_like(x)
    n, (H, W) = x.shape[0], x.shape[-2:]
    xf = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    levels = levels.to(x.device, xf.dtype).expand(n, -1)[:, :3]
    blur, noise, jpeg = levels.nan_to_num().unbind(1)
    balance = 1e-3 * blur**2 + 1000 * (noise**2 + (0.01 * (100 - jpeg) / 70) ** 2)
    use = ~levels.isnan().any(1) & ((blur > 0) | (at_zero & (balance > 0)))
    s = _sampled_gaussian_std(blur * use)
    reach = max(32, math.ceil(12 * float(blur.max())),  # of the filter; torch.export cannot
                *(kernel.shape[-2:] if kernel is not None else ()))  # follow it, so told, it
    ph, pw = min(reach, H - 1), min(reach, W - 1)  # is not exported
    padded = F.pad(xf, (pw, pw, ph, ph), mode="reflect") if ph or pw else xf
    size = padded.shape[-2:]
    fy = torch.fft.fftfreq(size[0], device=x.device, dtype=xf.dtype)
    fx = torch.fft.rfftfreq(size[1], device=x.device, dtype=xf.dtype)

    def response(f: Tensor) -> Tensor:  # the sampled Gaussian's: periodic, 1 at f = 0
        g = torch.exp(-2 * math.pi**2 * s[:, None, None] ** 2
                      * (f[None, :, None] + torch.arange(-2, 3, device=x.device)) ** 2).sum(-1)
        return g / g[:, :1]

    lap = 4 - 2 * torch.cos(2 * math.pi * fy)[:, None] - 2 * torch.cos(2 * math.pi * fx)
    K = response(fy)[:, :, None] * response(fx)[:, None, :]
    filt = K / (K**2 + balance[:, None, None] * lap**2)
    if kernel is not None:
        kernel = kernel.to(x.device, xf.dtype)
        told = ~kernel.isnan().flatten(1).any(1)
        K = _transfer(kernel.nan_to_num(), size)
        filt = torch.where(told[:, None, None], K.conj() / (K.abs().square() + balance[
            :, None, None] * lap**2), filt)
    out = torch.fft.irfft2(torch.fft.rfft2(padded) * filt[:, None], s=size)
    return ((out[..., ph : ph + H, pw : pw + W] - xf) * use[:, None, None, None]).to(x.dtype)


class _ResBlock(nn.Module):
    """conv3x3 - ReLU - conv3x3 plus identity; no normalization, so batch-size independent."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class UNet(nn.Module):
    """Residual U-Net with a global residual; build it with ``unet``, ``teacher`` or ``student``.

    With ``shuffle = s > 1`` the image is first folded into ``s * s`` times the channels at 1/s of
    the resolution (``pixel_unshuffle``), and unfolded at the end: the network then runs on
    1/s^2 of the pixels. Level l has ``width * 2**l`` channels and ``blocks`` residual blocks in
    the encoder and decoder; stride-2 conv3x3 down, stride-2 transposed conv2x2 up plus skip. The
    last conv starts at zero (an untrained net is the identity). Inputs are padded to a multiple
    of ``self.multiple = m = s * 2**(depth - 1)``, then cropped; ``torch.export`` dynamic sizes:
    ``{2: m * Dim("h"), ...}``.
    """

    def __init__(self, width: int, depth: int, blocks: int, in_channels: int,
                 shuffle: int = 1, conditioned: int = 0) -> None:
        super().__init__()
        ch = [width * 2**level for level in range(depth)]
        self.shuffle, self.in_channels = shuffle, in_channels  # image channels
        self.conditioned = conditioned
        self.multiple = shuffle * 2 ** (depth - 1)
        self.receptive_radius = _unet_radius(depth, blocks, shuffle)
        in_channels *= shuffle * shuffle
        maps = 1 + len(LEVELS) + (conditioned == 4) if conditioned else 0
        told = maps + (in_channels if conditioned >= 2 else 0)
        self.head = nn.Conv2d(in_channels + told, width, 3, padding=1)
        self.enc = nn.ModuleList(nn.Sequential(*(_ResBlock(c) for _ in range(blocks))) for c in ch)
        self.down = nn.ModuleList(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1) for c in ch[:-1])
        self.up = nn.ModuleList(nn.ConvTranspose2d(2 * c, c, 2, stride=2) for c in ch[:-1])
        self.dec = nn.ModuleList(nn.Sequential(*(_ResBlock(c) for _ in range(blocks)))
                                 for c in ch[:-1])
        self.tail = nn.Conv2d(width, in_channels, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    @torch.compiler.disable  # eager under torch.compile: its checks read values, its FFT is complex
    def _estimate(self, x: Tensor, levels: Tensor | None, given: Tensor | None,
                  kernel: Tensor | None = None) -> Tensor:
        """The Wiener estimate's change for ``x``, made from ``levels`` (and the checked
        ``kernel``, if told) or checked if given."""
        if levels is not None:
            check_levels(levels, len(x))  # the estimate is made from their values
        if given is None:
            return _told_wiener(x, levels, at_zero=self.conditioned >= 3, kernel=kernel)
        _check_tensor("estimate", given)
        if given.shape != x.shape or given.device != x.device:
            raise ValueError(f"estimate must be shaped like x, {tuple(x.shape)}, on {x.device}, "
                             f"got {tuple(given.shape)} on {given.device}")
        if levels is None:
            raise ValueError("estimate given without levels: it is made from them")
        return given.to(x.dtype)

    def forward(self, x: Tensor, levels: Tensor | None = None, return_features: bool = False,
                estimate: Tensor | None = None, kernel: Tensor | None = None
                ) -> Tensor | tuple[Tensor, list]:
        """Sharpen ``x (B, C, H, W)``; see ``unet`` for ``levels``, ``return_features``,
        ``estimate`` and ``kernel``."""
        if kernel is not None:
            if self.conditioned < 2:
                raise ValueError(f"kernel given, but this model is given no Wiener estimate "
                                 f"(unet(conditioned={self.conditioned}))")
            if levels is None or estimate is not None:
                raise ValueError("kernel needs levels (its estimate is made with their noise "
                                 "and JPEG quality), and no estimate (it makes one)")
            kernel = _told_kernel(kernel, x, unknown=True)
        H, W = x.shape[-2:]
        m, s = self.multiple, self.shuffle  # padded size m * ceil(H / m): torch.export follows it
        pad = (0, -(-W // m) * m - W, 0, -(-H // m) * m - H)
        parts = [F.pad(x, pad, mode="replicate")]
        if self.conditioned:
            parts.append(_level_maps(levels, parts[0][..., ::s, ::s],  # checks levels
                                     shape=self.conditioned == 4))
            if self.conditioned >= 2:  # blind, no estimate: zero, in the compiled graph
                estimate = torch.zeros_like(x) if levels is None and estimate is None else \
                    self._estimate(x, levels, estimate, kernel)
                parts.append(F.pad(estimate, pad, mode="replicate"))
        elif levels is not None:
            raise ValueError("levels given, but this model was built without them "
                             "(unet(conditioned=0)): it sharpens blind")
        if estimate is not None and self.conditioned < 2:
            raise ValueError(f"estimate given, but this model was built without it "
                             f"(unet(conditioned={self.conditioned}))")
        if s > 1:  # the image and the estimate; the level maps are made at 1/s already
            parts[0::2] = [F.pixel_unshuffle(part, s) for part in parts[0::2]]
        h = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        h = self.head(h)
        feats = []
        for level, stage in enumerate(self.enc):
            feats.append(h := stage(h))
            if level < len(self.down):
                h = self.down[level](h)
        for level in reversed(range(len(self.up))):
            feats.append(h := self.dec[level](self.up[level](h) + feats[level]))
        h = self.tail(h)
        out = x + (F.pixel_shuffle(h, s) if s > 1 else h)[..., :H, :W]
        if self.conditioned >= 2:  # the network corrects the estimate
            out = out + estimate
        if not return_features:
            return out
        levels = [*range(len(self.enc)), *reversed(range(len(self.up)))]
        return out, [f[..., : -(-H // (s * 2**i)), : -(-W // (s * 2**i))]
                     for f, i in zip(feats, levels)]


class PaperNet(nn.Module):
    """The source paper's network: conv3x3 3->64, stride-2 conv3x3 64->128, ``blocks`` residual
    blocks, transposed conv2x2 128->64, conv3x3 64->3 (ReLUs between), sigmoid; no skips."""

    def __init__(self, blocks: int) -> None:
        super().__init__()
        self.multiple, self.in_channels = 2, 3
        # tail 1, then (through the transposed conv) the body's 2 * blocks convs at half
        # resolution, the stride-2 conv and the head: worst phase of the output pixel.
        self.receptive_radius = 4 * blocks + 4
        self.head = nn.Conv2d(3, 64, 3, padding=1)
        self.down = nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.body = nn.Sequential(*(_ResBlock(128) for _ in range(blocks)))
        self.up = nn.ConvTranspose2d(128, 64, 2, stride=2)
        self.tail = nn.Conv2d(64, 3, 3, padding=1)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, list]:
        """Sharpen ``x (B, 3, H, W)``; see ``paper_teacher`` for ``return_features``."""
        H, W = x.shape[-2:]
        f1 = F.relu(self.head(F.pad(x, (0, W % 2, 0, H % 2), mode="replicate")))
        f2 = F.relu(self.down(f1))
        f3 = self.body(f2)
        out = torch.sigmoid(self.tail(F.relu(self.up(f3))))[..., :H, :W]
        if not return_features:
            return out
        h, w = -(-H // 2), -(-W // 2)
        return out, [f1[..., :H, :W], f2[..., :h, :w], f3[..., :h, :w]]


def unet(*, width: int = 32, depth: int = 3, blocks: int = 2, in_channels: int = 3,
         shuffle: int = 1, conditioned: int = 0) -> UNet:
    """Residual U-Net (``UNet``): no normalization, output unclamped, any H and W.

    ``model(x, return_features=True)`` returns ``(out, feats)``: encoder outputs of levels 0 to
    depth - 1, then decoder outputs of levels depth - 2 to 0, level l at ``ceil(H / (s 2**l)) x
    ceil(W / (s 2**l))`` with ``s = shuffle``; models of equal depth and shuffle give features
    that differ only in channels.

    Args:
        width: Channels of the first level, 1 to 1024.
        depth: Number of resolution levels, 1 to 8.
        blocks: Residual blocks per level in the encoder and in the decoder, 0 to 32.
        in_channels: Image channels (input and output), 1 to 64.
        shuffle: Run on ``pixel_unshuffle``-d images of 1/shuffle the resolution: 1, 2 or 4.
        conditioned: 1: the model is told per image what was done to it, ``model(x, levels)``
            with ``levels (B, 3)`` or ``(3,)`` of (blur, noise, jpeg) as ``degrade(...,
            return_levels=True)`` gives them (FFDNet's noise map, for three degradations): blur
            the ``kernel_sigma`` in pixels, noise the std, jpeg the quality (100: none). A NaN
            row, or ``levels=None``, means unknown: the model then sharpens blind, as it learns
            to when trained with some rows unknown. 2: the same, and also given a classical
            estimate made from the told levels, which the network corrects (the idea of USRNet
            and deep Wiener deconvolution): the image Wiener-deconvolved by a Gaussian of the
            told blur, with a balance that grows with the told noise and JPEG loss; the output
            is the estimate plus the network's correction. Where the levels are unknown or the
            blur is 0, the estimate is the image itself. ``model(x, levels, estimate=e)`` takes
            the estimate's change, ``e = estimate - x`` ``(B, C, H, W)`` on ``x``'s device, made
            already, as ``sharpen`` makes it once for a whole image; ``model(x, levels,
            kernel=k)``, with ``k (B, kh, kw)`` or ``(kh, kw)`` the true blur kernels (odd
            sides, normalised here to sum 1; all NaN for an image whose kernel is not told),
            makes it with those kernels instead of the Gaussians (``sharpen(..., kernel=)``).
            Told, such a model does not go through ``torch.export`` (its padding follows the
            told blur). 3: as 2, but told
            blur 0 and some noise or JPEG loss, the estimate is the same filter without blur, a
            smoothing (students trained from scratch learn to denoise with it, and did not with
            2). 4: as 3, and levels may have a fourth column, gaussian: 1 if the estimate is
            exact, the blur an isotropic Gaussian or its kernel told, 0 (or three columns) if
            its shape is not told (ignored where the blur is 0). 0: blind only.

    Returns:
        The model, with ``model.config = {"factory": "unet", "kwargs": {...}}``.

    Raises:
        ValueError: If an argument is out of range.
    """
    kwargs = {"width": width, "depth": depth, "blocks": blocks, "in_channels": in_channels,
              "shuffle": shuffle, "conditioned": conditioned}
    limits = {"width": (1, 1024), "depth": (1, 8), "blocks": (0, 32), "in_channels": (1, 64),
              "shuffle": (1, 4), "conditioned": (0, 4)}
    kwargs = {k: _check_int(k, v, low=limits[k][0], high=limits[k][1]) for k, v in kwargs.items()}
    if kwargs["shuffle"] == 3:
        raise ValueError("shuffle must be 1, 2 or 4, got 3")
    model = UNet(**kwargs)
    model.config = {"factory": "unet", "kwargs": kwargs}
    return model


def teacher(**overrides: int) -> UNet:
    """Teacher preset ``unet(width=32, depth=3, blocks=2)``.

    Example:
        >>> count_params(teacher()), count_macs(teacher(), 256, 256)
        (1094915, 13065256960)
    """
    return unet(**{"width": 32, "depth": 3, "blocks": 2, **overrides})


def student(**overrides: int) -> UNet:
    """Student preset ``unet(width=16, depth=3, blocks=1)``.

    Its levels line up with the teacher's, so ``kd.feature_adapters`` can pair their features.

    Example:
        >>> count_params(student()), count_macs(student(), 256, 256)
        (154435, 1784676352)
    """
    return unet(**{"width": 16, "depth": 3, "blocks": 1, **overrides})


def _paper(factory: str, blocks: int) -> PaperNet:
    model = PaperNet(blocks := _check_int("blocks", blocks, low=0, high=32))
    model.config = {"factory": factory, "kwargs": {"blocks": blocks}}
    return model


def paper_teacher(*, blocks: int = 4) -> PaperNet:
    """The source paper's teacher (``PaperNet``, 4 residual blocks).

    ``model(x, return_features=True)`` returns ``(out, [f1, f2, f3])``: the first conv's output
    (64, H x W), the stride-2 conv's and the residual blocks' (128, ceil(H/2) x ceil(W/2)).
    """
    return _paper("paper_teacher", blocks)


def paper_student(*, blocks: int = 2) -> PaperNet:
    """The source paper's student: ``paper_teacher`` with 2 residual blocks."""
    return _paper("paper_student", blocks)


class LevelNet(nn.Module):
    """Estimates what was done to an image, as a conditioned model is told it; build it with
    ``level_estimator`` and run it with ``estimate_levels``.

    The image and its high-pass (the image minus its 3x3 mean, times 20) go through conv3x3-ReLU
    layers that halve the size ``depth - 1`` times; a last 1x1 conv gives, at each place, a guess
    of each scaled level (blur / 3, noise / 0.04, (100 - jpeg) / 70, as ``scaled_levels``) and a
    weight, and the output is the guesses' softmax-weighted mean over the image, so that each
    level is read where it shows (noise in flat areas, blur at edges). ``forward``: ``(B, C, H,
    W)`` to ``(B, 3)`` scaled levels; ``parts``: the guesses and weights ``(B, 6, h, w)``.
    """

    def __init__(self, width: int, depth: int, in_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        ch = [width * 2 ** (level // 2) for level in range(depth)]  # doubling every other level
        layers: list[nn.Module] = [nn.Conv2d(2 * in_channels, ch[0], 3, padding=1), nn.ReLU()]
        for a, b in zip(ch[:-1], ch[1:]):
            layers += [nn.Conv2d(a, a, 3, padding=1), nn.ReLU(),
                       nn.Conv2d(a, b, 3, stride=2, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(ch[-1], ch[-1], 3, padding=1), nn.ReLU(),
                   nn.Conv2d(ch[-1], 2 * len(LEVELS), 1)]
        self.body = nn.Sequential(*layers)

    def parts(self, x: Tensor) -> Tensor:
        """Per place, the guesses of the scaled levels and their weights' logits."""
        high = x - F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
        return self.body(torch.cat([x - 0.5, 20 * high], 1))

    def forward(self, x: Tensor) -> Tensor:
        guess, logit = self.parts(x).flatten(2).split(len(LEVELS), 1)
        return (guess * logit.softmax(-1)).sum(-1)


def level_estimator(*, width: int = 24, depth: int = 4, in_channels: int = 3) -> LevelNet:
    """A level estimator (``LevelNet``) for ``estimate_levels``, untrained; ``kd.level_step``
    trains it on ``degrade(..., return_levels=True)``'s images and levels.

    Args:
        width: Channels of the first level, 1 to 1024 (doubling every other level).
        depth: Number of resolution levels, 1 to 8.
        in_channels: Image channels, 1 to 64.

    Returns:
        The model, with ``model.config = {"factory": "level_estimator", "kwargs": {...}}``.

    Raises:
        ValueError: If an argument is out of range.
    """
    kwargs = {"width": _check_int("width", width, low=1, high=1024),
              "depth": _check_int("depth", depth, low=1, high=8),
              "in_channels": _check_int("in_channels", in_channels, low=1, high=64)}
    model = LevelNet(**kwargs)
    model.config = {"factory": "level_estimator", "kwargs": kwargs}
    return model


def scaled_levels(levels: Tensor) -> Tensor:
    """Levels ``(B, 3)`` (blur, noise, jpeg) as a ``LevelNet`` outputs them: blur / 3,
    noise / 0.04, (100 - jpeg) / 70; NaN rows stay NaN."""
    blur, noise, jpeg = levels.unbind(1)
    return torch.stack([blur / _LEVEL_SCALE[0], noise / _LEVEL_SCALE[1],
                        (100 - jpeg) / _LEVEL_SCALE[2]], 1)


def _jpeg_grid(x: Tensor) -> tuple[Tensor, Tensor]:
    """The rows and columns ``(B,)`` to crop from each image of ``x`` ``(B, C, H, W)`` so that
    a JPEG's 8x8 block grid starts at its corner: where the mean step between neighbouring
    pixels, by position mod 8, peaks ``_GRID_PEAK`` times above both its median and the
    position of a grid that already starts there; else 0."""
    y = x.mean(1, dtype=torch.float32)
    crops = []
    for dim in (-2, -1):
        n = y.shape[dim] - 1
        if n < 16:  # fewer than two blocks: no grid to see
            crops.append(torch.zeros(len(x), dtype=torch.long, device=x.device))
            continue
        step = (y.narrow(dim, 1, n) - y.narrow(dim, 0, n)).abs().mean(-1 if dim == -2 else -2)
        phase = step[:, : n // 8 * 8].reshape(len(x), -1, 8).mean(1)  # (B, 8)
        peak, where = phase.max(1)
        clear = (peak > _GRID_PEAK * phase.median(1).values) & (peak > _GRID_PEAK * phase[:, 7])
        crops.append(torch.where(clear, (where + 1) % 8, 0))
    return crops[0], crops[1]


def _read_levels(estimator: LevelNet, x: Tensor, tile: int, amp: bool) -> Tensor:
    """``estimator``'s levels ``(B, 3)`` for ``x`` ``(B, C, H, W)``, read in tiles whose guesses
    are weighted over the whole image (``estimate_levels``), with ``amp`` in bf16 autocast."""
    first = next(estimator.parameters())
    top = torch.full((len(x), len(LEVELS)), -math.inf, device=x.device)  # running max logit
    weight, total = torch.zeros_like(top), torch.zeros_like(top)
    with torch.no_grad(), torch.autocast(first.device.type, torch.bfloat16, enabled=amp):
        for y0 in range(0, x.shape[-2], tile):
            for x0 in range(0, x.shape[-1], tile):
                part = x[..., y0 : y0 + tile, x0 : x0 + tile].to(
                    first.device, first.dtype, memory_format=torch.channels_last)
                out = estimator.parts(part)
                guess, logit = out.float().to(x.device).flatten(2).split(len(LEVELS), 1)
                new_top = torch.maximum(top, logit.amax(-1))
                shrink, w = (top - new_top).exp(), (logit - new_top[..., None]).exp()
                weight = weight * shrink + w.sum(-1)
                total = total * shrink + (w * guess).sum(-1)
                top = new_top
    scaled = total / weight
    blur, noise, lost = (scaled[:, i] * _LEVEL_SCALE[i] for i in range(len(LEVELS)))
    return torch.stack([blur.clamp_min(0), noise.clamp(0, 1), (100 - lost).clamp(1, 100)], 1)


def estimate_levels(estimator: nn.Module, img: Tensor, *, tile: int = 1024,
                    quality: float | None = None, max_blur: float | None = _MAX_BLUR,
                    precision: str = "auto") -> Tensor:
    """What was done to each image, estimated: levels for a conditioned model (``sharpen(model,
    img, levels=estimate_levels(estimator, img))``), so that it sharpens as if told.

    Images larger than ``tile`` x ``tile`` are read in tiles (memory stays bounded), whose
    guesses are weighted over the whole image as if in one piece. Where a JPEG's 8x8 block
    grid stands out but does not start at the image's corner (a cropped photo), the image is
    read again from the first row and column of that grid, as the estimator learnt JPEG loss on
    aligned grids, and that reading is kept if it finds more JPEG loss.
    A copy of the estimator runs (the caller's is left as it is), in eval mode, with tiles and
    weights laid out channels_last (faster with oneDNN: see the README's Performance).

    Args:
        estimator: A ``level_estimator`` (``LevelNet``), trained.
        img: ``(B, C, H, W)`` or ``(C, H, W)`` in [0, 1], each side at least 8.
        tile: Tile side in pixels, >= 64, a multiple of 8.
        quality: The JPEG quality the images were saved at, where known (``jpeg_quality`` of
            their file): the levels' quality is the lower of it and the estimate, which errs
            toward too high a quality by design; an older, lossier JPEG keeps the estimate.
        max_blur: The most blur, in pixels, that a reading may tell (None: as read). On the
            validation photos the shipped estimator read more than 1.75 px mostly where it
            over-read a blur of 1.5 px on fur, and telling too much blur over-sharpens; 1.75
            was chosen there (the README's "A ceiling on the blur read").
        precision: ``"fp32"``, ``"bf16"`` (bf16 autocast) or ``"auto"``: bf16 where
            ``fast_bf16`` says it is faster, as ``sharpen``'s; its readings differ from float32's
            by a few hundredths of a pixel.

    Returns:
        ``(B, 3)`` or ``(3,)`` float32 levels on the image's device: blur sigma >= 0, noise std
        0-1, JPEG quality 1-100, as ``check_levels`` takes them.

    Raises:
        TypeError: If ``estimator`` is not a ``LevelNet``, ``img`` not a float tensor, or
            ``quality`` or ``max_blur`` not a number.
        ValueError: If ``img`` has the wrong shape, channels or size, or holds NaN or inf, or
            ``tile`` is too small or not a multiple of 8, ``quality`` outside 1-100,
            ``max_blur`` not finite and > 0, or ``precision`` not one of the three.
    """
    if not isinstance(estimator, LevelNet):
        raise TypeError(f"estimator must be a LevelNet (sharpen.level_estimator), got "
                        f"{type(estimator).__name__}")
    x, single = _as_batch("img", img)
    _check_pixels("img", x)
    tile = _check_int("tile", tile, low=64)
    if quality is not None and _check_number("quality", quality, low=1, strict=False) > 100:
        raise ValueError(f"quality must be from 1 to 100, got {quality!r}")
    if max_blur is not None:
        max_blur = _check_number("max_blur", max_blur)
    if tile % 8:
        raise ValueError(f"tile must be a multiple of 8 (a JPEG's block grid), got {tile}")
    amp = _bf16(precision, next(estimator.parameters()))
    if x.shape[1] != estimator.in_channels:
        raise ValueError(f"img has {x.shape[1]} channels, the estimator takes "
                         f"{estimator.in_channels}"
                         f"{_HWC if x.shape[-1] == estimator.in_channels else ''}")
    if min(x.shape[-2:]) < _LEVEL_SIDE:
        raise ValueError(f"img must be at least {_LEVEL_SIDE}x{_LEVEL_SIDE}, got "
                         f"{tuple(x.shape[-2:])}")
    estimator = copy.deepcopy(estimator).eval().to(memory_format=torch.channels_last)
    levels = _read_levels(estimator, x, tile, amp)
    for i, (r, c) in enumerate(zip(*(t.tolist() for t in _jpeg_grid(x)))):
        if r or c:  # a cropped JPEG: read it again from where its grid starts, on its own
            grid = _read_levels(estimator, x[i : i + 1, :, r:, c:], tile, amp)[0]
            if grid[2] < levels[i, 2]:  # else periodic detail, not a JPEG's grid
                levels[i] = grid
    if quality is not None:
        levels[:, 2] = levels[:, 2].clamp(max=quality)
    if max_blur is not None:
        levels[:, 0] = levels[:, 0].clamp(max=max_blur)
    return levels[0] if single else levels


_FACTORIES = {f.__name__: f for f in (unet, teacher, student, paper_teacher, paper_student,
                                         level_estimator)}


def fast_bf16(device: Device = None) -> bool:
    """Whether bf16 autocast speeds convolutions up on ``device`` (CPU when None).

    True on CUDA GPUs that support bf16, and on CPUs where oneDNN computes bf16 natively
    (AVX-512 or AMX); on other CPUs (AVX2) bf16 is emulated and many times slower than float32.
    """
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return device.type == "cpu" and check is not None and bool(check())
    except RuntimeError:
        return False


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model``, trainable or not."""
    _check_module(model)
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, height: int, width: int) -> int:
    """Convolution multiply-accumulates of one forward pass of a ``(1, C, height, width)`` input.

    Counts ``Conv2d`` and ``ConvTranspose2d`` by forward hooks; C: the image channels the model
    takes (``model.in_channels``, else its first convolution's input channels).

    Raises:
        ValueError: If a size is < 1 or the model has no convolution.
    """
    _check_module(model)
    height, width = _check_int("height", height, low=1), _check_int("width", width, low=1)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    if not convs:
        raise ValueError("model has no Conv2d or ConvTranspose2d layer to count")
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        nonlocal total
        grid = output if isinstance(module, nn.Conv2d) else inputs[0]
        total += grid[0].numel() * module.weight[0].numel()

    handles = [m.register_forward_hook(hook) for m in convs]
    try:
        with torch.no_grad():
            model(convs[0].weight.new_zeros(1, _image_channels(model), height, width))
    finally:
        for h in handles:
            h.remove()
    return total


# -- Files: models and images ----------------------------------------------------------------------


def atomic_write(path: str | os.PathLike, write: Callable[[object], None], *,
                 mode: int = 0o666) -> None:
    """Write a file so that a crash leaves the old file or the new one, never a truncated one:
    ``write(file)`` on a new temporary file beside ``path``, fsync it, ``os.replace`` it over
    ``path``, then fsync the folder where that is allowed.

    Args:
        path: The file to write.
        write: Writes the contents to the binary file object it is given.
        mode: The new file's permissions, 0 to 0o777, less the umask.

    Raises:
        TypeError: If ``mode`` is not an int.
        ValueError: If ``mode`` is outside 0 to 0o777.
        OSError: If the file cannot be written; it names ``path``, not the temporary file.
    """
    path = Path(path)
    mode = _check_int("mode", mode, low=0, high=0o777)
    short = os.fsencode(path.name)[:200].decode(sys.getfilesystemencoding(), "ignore")  # bytes
    tmp = path.with_name(f".{short}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as e:
        raise type(e)(e.errno, f"cannot write {path}: {e.strerror}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)  # the writer's own errors pass as they are
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise type(e)(e.errno, f"cannot write {path}: {e.strerror}") from e
    try:  # the rename survives a crash once the folder is synced; not every folder allows it
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError:
        pass


def save_model(path: str | os.PathLike, model: nn.Module) -> None:
    """Atomically save ``{"factory", "kwargs", "state_dict"}`` (weights on CPU) for ``load_model``.

    A model inside ``DistributedDataParallel`` or ``torch.compile`` is saved as the plain model.

    Raises:
        TypeError: If ``path`` is not a str or os.PathLike, or ``model`` not an ``nn.Module``.
        ValueError: If ``model`` has no ``config`` from one of this module's factories, or
            weights that are not finite (``load_model`` would refuse the file).
    """
    _check_path("path", path)
    _check_module(model)
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    if isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's wrapper
        model = model._orig_mod
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or config.get("factory") not in _FACTORIES:
        raise ValueError(f"model must be built by one of {sorted(_FACTORIES)} (they set "
                         f"model.config), got config={config!r}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if bad := _non_finite(state):  # load_model would refuse the file
        raise ValueError(f"model has weights that are not finite (NaN or inf), not saved: "
                         f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    data = {"factory": config["factory"], "kwargs": dict(config["kwargs"]), "state_dict": state}
    atomic_write(path, lambda f: torch.save(data, f))


def load_model(path: str | os.PathLike, *, map_location: Device = None) -> nn.Module:
    """Rebuild a model written by ``save_model`` (``torch.load(weights_only=True)``).

    Nothing is built before the file is checked: the network is first laid out on the meta
    device (no memory), its parameter names and shapes compared with the file's, and its weights
    must be finite; a small file cannot make it allocate more than the weights it holds.

    Args:
        path: The model file.
        map_location: Device for the model; CPU when None.

    Returns:
        The model with its weights and ``model.config``, in eval mode.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        IsADirectoryError: If ``path`` is a folder.
        ValueError: If the file is not a fitting model file; the message names it and the cause.
        TypeError: If ``path`` is not a str or os.PathLike.
    """
    path = _check_path("path", path)
    device = _check_device("map_location", map_location) or torch.device("cpu")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a model file")
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: not a readable model file: the file is empty")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's own message advises loading a pickle unsafely
        if isinstance(e, OSError):  # not read at all
            raise ValueError(f"{path}: not a readable model file ({type(e).__name__}: {e})") \
                from e
        if not zipfile.is_zipfile(path):  # what pickle makes of other bytes says nothing
            raise ValueError(f"{path}: not a readable model file: corrupt or not a PyTorch "
                             "file") from e
        if isinstance(e, pickle.UnpicklingError):
            raise ValueError(f"{path}: not a readable model file: it holds Python objects "
                             "other than weights, which are not loaded (loading them could "
                             "run code)") from e
        raise ValueError(f"{path}: not a readable model file ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict) or not {"factory", "kwargs", "state_dict"} <= data.keys() \
            or not isinstance(data["kwargs"], dict) or not isinstance(data["state_dict"], dict):
        raise ValueError(f"{path}: not a sharpen model file (expected factory, kwargs, state_dict)")
    factory, kwargs, state = data["factory"], data["kwargs"], data["state_dict"]
    if not isinstance(factory, str) or factory not in _FACTORIES:
        raise ValueError(f"{path}: unknown factory {factory!r}; known: {sorted(_FACTORIES)}")
    if bad := [k for k in [*state, *kwargs] if not isinstance(k, str)]:
        raise ValueError(f"{path}: weight names must be str, got {bad[0]!r}")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)] + _non_finite(state)
    if bad:
        raise ValueError(f"{path}: non-finite weights in {', '.join(map(str, bad[:3]))}")
    try:
        with torch.device("meta"):
            model = _FACTORIES[factory](**kwargs)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if wrong := sorted(shapes.keys() ^ state.keys()):
            raise ValueError(f"missing or unexpected weights {wrong[:3]}")
        if wrong := [k for k in shapes if shapes[k] != tuple(state[k].shape)]:
            k = wrong[0]
            raise ValueError(f"{k} has shape {tuple(state[k].shape)}, the model {shapes[k]}")
        model = model.to_empty(device="cpu")
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: cannot rebuild {factory}({kwargs}): {e}") from e
    return model.to(device).eval()


def _image_file(path: object, *, name: str = "") -> Path:
    """``path`` as a Path to a file; errors name it after ``name`` ("like ")."""
    path = _check_path(name.strip() or "path", path)
    if path.is_dir():
        raise IsADirectoryError(f"{name}{path} is a folder, not an image file")
    if not path.is_file():
        why = " (a broken link or a link loop)" if path.is_symlink() else ""
        raise FileNotFoundError(f"image file not found: {name}{path}{why}")
    return path


_ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                 4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                 8: Image.Transpose.ROTATE_90}  # EXIF orientation: how to turn the pixels upright


def load_image(path: str | os.PathLike) -> Tensor:
    """Read an image as ``(3, H, W)`` float32 in [0, 1], EXIF orientation applied.

    8-bit values are divided by 255, 16-bit grey ("I;16*", or "I" in [0, 65535]) by 65535; grey is
    copied to 3 channels, transparency composited over white, other modes converted by Pillow.
    An 8-bit image needs about 16 bytes per pixel at the peak, the 12 of the result included
    (1.4 GB for 90 megapixels); Pillow refuses images over 179 megapixels (twice
    ``PIL.Image.MAX_IMAGE_PIXELS``) as decompression bombs.

    Warns:
        UserWarning: If the file holds several frames (a multi-page TIFF, an animated GIF):
            only the first is read. Not for a phone's JPEG with a depth or gain map (MPO). If
            it holds 16-bit colour, which Pillow reads at 8 bits.

    Raises:
        IsADirectoryError: If ``path`` is a folder.
        FileNotFoundError: If ``path`` is not a file (missing, a broken link or a loop).
        ValueError: If the file is unreadable or of an unsupported mode; the message names it.
        TypeError: If ``path`` is not a str or os.PathLike.
    """
    path = _image_file(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: not a readable image: the file is empty")
    try:
        with Image.open(path) as im:
            try:
                frames = 1 if im.format == "MPO" else getattr(im, "n_frames", 1)  # MPO: a
                # phone's photo and its depth or gain map
            except Exception:  # a TIFF's broken link to a next page: its first still reads
                frames = 1
            if frames > 1:
                warnings.warn(f"{path} holds {frames} frames (pages or an animation): only the "
                              "first is read", stacklevel=2)
            if im.mode in ("RGB", "RGBA") and any(";16" in str(t.args) for t in im.tile):
                warnings.warn(f"{path} has 16 bits per channel in colour, which Pillow reads as "
                              "8: the low 8 bits are lost", stacklevel=2)
            im.load()
            turn = _ORIENTATIONS.get(im.getexif().get(0x0112))  # not exif_transpose: it
            im = im if turn is None else im.transpose(turn)  # rewrites EXIF, and fails on odd tags
    except UnidentifiedImageError as e:
        raise ValueError(f"{path}: not a readable image (not a format Pillow knows)") from e
    except Exception as e:
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    if im.mode.startswith("I;16") or im.mode == "I":
        raw = np.asarray(im)
        arr = raw.astype(np.float32)
        if arr.min() < 0 or arr.max() > 65535:
            raise ValueError(f"{path}: mode {im.mode} values outside [0, 65535]")
        arr /= 65535
        if isinstance(clear := im.info.get("transparency"), int):  # a PNG's transparent grey
            arr[raw == clear] = 1.0  # over white, as below
        arr = np.repeat(arr[..., None], 3, axis=2)
    else:
        if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, im.convert("RGBA"))
        if im.mode not in ("RGB", "RGBA", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV"):
            raise ValueError(f"{path}: unsupported image mode {im.mode!r}")
        arr = np.array(im if im.mode == "RGB" else im.convert("RGB"))  # (H, W, 3) uint8
        del im  # 8 bits to float32 in place: the peak stays near the result's 12 bytes a pixel
        out = torch.empty(3, *arr.shape[:2])
        return out.copy_(torch.from_numpy(arr).permute(2, 0, 1)).div_(255)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


# JPEG's example luminance table (ITU-T T.81 Annex K), libjpeg's at quality 50, row by row
_JPEG_LUMA = torch.tensor([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69,
    56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104,
    113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    dtype=torch.float64)


def jpeg_quality(path: str | os.PathLike) -> float | None:
    """The quality a JPEG file was saved at, read from its luminance quantization table.

    Args:
        path: An image file.

    Returns:
        The quality 1-100 whose libjpeg table (as Pillow, and most software, scale the standard
        one) is nearest to the file's in log scale: exact for files libjpeg wrote, the nearest
        such quality for others (a camera's own tables). None for a file of another format, or
        a JPEG whose first component's table is missing or holds a 0.

    Raises:
        IsADirectoryError, FileNotFoundError, TypeError: As ``load_image``.
        ValueError: If the file is not a readable image.
    """
    path = _image_file(path)
    try:
        with Image.open(path) as im:
            jpeg = im.format in ("JPEG", "MPO")
            tables, layers = getattr(im, "quantization", {}), getattr(im, "layer", [])
    except Exception as e:
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    luma = tables.get(layers[0][3]) if jpeg and layers else None  # the first component's table
    if luma is None or len(luma) != 64 or min(luma) < 1:  # 0: not a table JPEG allows
        return None
    q = torch.arange(1, 101, dtype=torch.float64)[:, None]
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q)
    libjpeg = ((_JPEG_LUMA * scale + 50) / 100).floor().clamp(1, 255)  # (100, 64)
    table = torch.tensor(list(luma), dtype=torch.float64)
    return float((libjpeg.log() - table.log()).square().sum(1).argmin()) + 1


def load_kernel(path: str | os.PathLike) -> Tensor:
    """Read a blur kernel from an image of it, for ``sharpen(..., kernel=)``: a measured point
    spread function or a camera-shake path, as a point of light appears in the photo.

    The image must be opaque, bright on a black background, of odd sides, with the blur's
    centre at its centre pixel; its grey levels (the mean of the channels) are normalised to
    sum 1. Save it losslessly (PNG): a JPEG's speckle widens the kernel.

    Returns:
        ``(kh, kw)`` float32, non-negative, summing to 1.

    Warns:
        UserWarning: If its centre of mass is more than 2 px from its centre pixel: a photo
            sharpened with it is shifted by as much, unless the blur shifted the photo too.

    Raises:
        IsADirectoryError, FileNotFoundError, TypeError: As ``load_image``.
        ValueError: If the file is unreadable, has transparency, even sides, is black, or has
            a background that is not black (checked on its border where both sides are 3 px or
            more: a kernel cropped to one row or column is all blur).
    """
    kernel = load_image(path).mean(0).double()
    with Image.open(path) as img:
        if ("A" in img.getbands() or "transparency" in img.info) and \
                img.convert("RGBA").getchannel("A").getextrema()[0] < 255:
            raise ValueError(f"kernel {path} has transparency: save it as an opaque grey "
                             "image, bright on black")
    h, w = kernel.shape
    if h % 2 == 0 or w % 2 == 0:
        raise ValueError(f"kernel {path} must have odd sides (its centre pixel is the blur's "
                         f"centre), got {w}x{h}: pad it by a row or column of black")
    if not kernel.sum() > 0:
        raise ValueError(f"kernel {path} is black: a blur kernel sums to more than 0")
    ring = torch.cat([kernel[0], kernel[-1], kernel[1:-1, 0], kernel[1:-1, -1]])
    if min(h, w) >= 3 and float(ring.median()) > 0.02 * float(kernel.max()):
        raise ValueError(f"kernel {path} has a background that is not black (the median of its "
                         f"border is {float(ring.median() / kernel.max()):.1%} of its peak): "
                         "subtract the background, so that only the blur is left")
    kernel = kernel / kernel.sum()
    dy, dx = ((kernel.sum(1 - i) * torch.arange(n, dtype=kernel.dtype)).sum() - n // 2
              for i, n in enumerate(kernel.shape))
    if math.hypot(dy, dx) > 2:
        warnings.warn(f"the centre of mass of kernel {path} is {float(dx):+.1f}, {float(dy):+.1f} "
                      "px (x, y) from its centre pixel: a photo sharpened with it is shifted by "
                      "as much, unless the blur shifted the photo too", stacklevel=2)
    return kernel.float()


def _upright_exif(exif: bytes) -> bytes:
    """Raw EXIF (as JPEG, PNG or WebP hold it) as JPEG's APP1 holds it, its orientation set to
    1 in place (``load_image`` turns the pixels upright) and its thumbnail of the original
    unlinked, nothing moved, so that maker notes at fixed offsets stay valid.

    Raises:
        ValueError: If it has no TIFF header or its first IFD's entries are cut short.
    """
    tiff = exif[6:] if exif.startswith(b"Exif\x00\x00") else exif
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    try:
        if order is None or struct.unpack_from(order + "H", tiff, 2)[0] != 42:
            raise ValueError("no TIFF header")
        ifd = struct.unpack_from(order + "I", tiff, 4)[0]
        end = ifd + 2 + 12 * struct.unpack_from(order + "H", tiff, ifd)[0]
        out = bytearray(tiff)
        for at in range(ifd + 2, end, 12):
            if struct.unpack_from(order + "H", tiff, at)[0] == 0x0112:  # the orientation, in
                struct.pack_into(order + "HHIHH", out, at, 0x0112, 3, 1, 1, 0)  # any type: SHORT 1
        if end + 4 <= len(out):
            struct.pack_into(order + "I", out, end, 0)  # no next IFD: the thumbnail's
    except struct.error as e:
        raise ValueError(f"no TIFF header, or its first IFD cut short ({e})") from e
    return b"Exif\x00\x00" + bytes(out)


def _icc_space(icc: bytes | None) -> bytes | None:
    """The colour space of an ICC profile (b"RGB ", b"GRAY"...) from its 128-byte header."""
    return icc[16:20] if icc and len(icc) >= 128 else None


def _profile_space(path: Path) -> bytes | None:
    """The colour space of an image file's ICC profile, None without one."""
    with Image.open(path) as im:
        return _icc_space(im.info.get("icc_profile"))


def _metadata(like: Path, *, rgb: bool, fmt: str) -> dict[str, object]:
    """Pillow save options for format ``fmt`` with ``like``'s EXIF, upright, its colour profile
    if that is for RGB (``rgb``) or grey images, and a PNG's gamma, chromaticities and sRGB
    chunks (which a profile supersedes); what cannot be kept is dropped with a warning."""
    try:
        with Image.open(like) as im:
            if im.format == "PNG" and "exif" not in im.info:
                im.load()  # an eXIf chunk after the pixels is read with them
            exif, icc = im.info.get("exif"), im.info.get("icc_profile")
            chunks = _png_colour_chunks(im.info) if im.format == "PNG" else {}
    except Exception as e:
        raise ValueError(f"like {like}: not a readable image ({type(e).__name__}: {e})") from e
    options, kept, jpeg = {}, [], fmt in ("JPEG", "MPO")
    if exif:
        try:
            options["exif"] = _upright_exif(exif)
        except ValueError as e:
            kept.append(f"its EXIF, unreadable ({e})")
        if jpeg and len(options.get("exif", b"")) > 65533:  # the most a JPEG segment holds
            kept.append(f"its EXIF, {len(options.pop('exif')):,} bytes, over JPEG's 65,533")
    if icc:
        space, wanted = _icc_space(icc), b"RGB " if rgb else b"GRAY"
        if space == wanted:
            options["icc_profile"] = icc
        else:
            what = "no" if space is None else space.decode("latin-1").strip()
            kept.append(f"its colour profile, for {what} images, not {wanted.decode().strip()}")
    if "icc_profile" in options:  # a kept profile supersedes the PNG's own colour chunks
        chunks = {}
    if chunks and fmt == "PNG":
        options["pnginfo"] = PngImagePlugin.PngInfo()
        for name, data in chunks.items():
            options["pnginfo"].add(name, data)
    elif b"gAMA" in chunks or b"cHRM" in chunks:  # sRGB alone is what other files assume
        kept.append("its PNG gamma or chromaticities (gAMA, cHRM), which only a PNG holds: "
                    "its colours may look different")
    for what in kept:
        warnings.warn(f"{like}: written without {what}", stacklevel=3)
    return options


def _png_colour_chunks(info: dict) -> dict[bytes, bytes]:
    """A PNG's gAMA, cHRM and sRGB chunks, rebuilt from what Pillow read of them (``info``)."""
    chunks = {}
    if isinstance(gamma := info.get("gamma"), (int, float)) and 0 < gamma < 42949:
        chunks[b"gAMA"] = struct.pack(">I", round(gamma * 100000))
    if isinstance(c := info.get("chromaticity"), tuple) and len(c) == 8 and \
            all(isinstance(v, (int, float)) and 0 <= v < 42949 for v in c):
        chunks[b"cHRM"] = struct.pack(">8I", *(round(v * 100000) for v in c))
    if isinstance(intent := info.get("srgb"), int) and 0 <= intent <= 3:
        chunks[b"sRGB"] = bytes([intent])
    return chunks


_SAVE_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "PPM")  # whole images, read back


def save_image(img: Tensor, path: str | os.PathLike, *,
               like: str | os.PathLike | None = None, comment: str | None = None) -> None:
    """Write ``img`` rounded to 8 bits, atomically, in the format of the suffix (JPEG: quality 95).

    Args:
        img: ``(3, H, W)``, ``(1, H, W)`` or ``(H, W)`` in [0, 1]; values over half an 8-bit step
            outside raise (nothing is silently clamped).
        path: Destination, such as ``photo.png``.
        like: The image file ``img`` was made from, whose EXIF metadata (from a JPEG, PNG or
            WebP; its orientation set to upright, as ``load_image`` turns the pixels) and
            colour profile (ICC, if it is for images of ``img``'s channels: RGB or grey) the
            file takes, in formats that hold them, and its read and write permissions (less
            the umask), as ``cp`` gives them. Without its profile, a wide-gamut photo (Display
            P3) would look duller in a colour-managed viewer. A PNG's gamma and chromaticities
            (gAMA, cHRM, sRGB chunks, where it has no profile) go to a PNG.
        comment: Text stored in a PNG's ``Comment`` (``Image.open(path).info``), as the CLI
            records what it did; PNG only, at most Pillow's ``MAX_TEXT_CHUNK`` bytes (1 MB),
            which it reads back.

    Warns:
        UserWarning: If ``like``'s EXIF or colour profile cannot be kept (unreadable, a
            profile for other channels, EXIF too long for a JPEG, a PNG's gamma in another
            format): the file is written without.

    Raises:
        TypeError: If ``img`` is not a floating-point tensor, ``path`` or ``like`` not a str
            or os.PathLike, or ``comment`` not a str.
        ValueError: If the shape, the values or the suffix is wrong (a format other than PNG,
            JPEG, WebP, TIFF, BMP or PPM: GIF would keep 256 colours, ICO 256 pixels a side,
            and PDF is not read back), ``like`` unreadable, or ``comment`` given for another
            format than PNG.
        IsADirectoryError, FileNotFoundError: If ``like`` is a folder or not a file.
    """
    _check_tensor("img", img)
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[0] in (1, 3))) or img.numel() == 0:
        raise ValueError(f"img must be (3, H, W), (1, H, W) or (H, W), got {tuple(img.shape)}")
    path = _check_path("path", path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image suffix {path.suffix!r}")
    if fmt not in _SAVE_FORMATS:  # GIF keeps 256 colours, ICO 256 pixels, PDF is not read back
        raise ValueError(f"{path}: {fmt} would not hold the image as it is (or not be read "
                         f"back): save as .png, .jpg, .webp, .tif, .bmp or .ppm")
    if comment is not None and not isinstance(comment, str):
        raise TypeError(f"comment must be a str, got {type(comment).__name__}")
    if comment is not None and fmt != "PNG":
        raise ValueError(f"comment is stored in a PNG only, not in {path}")
    if comment is not None and len(comment.encode()) > PngImagePlugin.MAX_TEXT_CHUNK:
        raise ValueError(f"comment is {len(comment.encode()):,} bytes, more than the "
                         f"{PngImagePlugin.MAX_TEXT_CHUNK:,} Pillow reads")
    like = None if like is None else _image_file(like, name="like ")
    x = img.detach().to("cpu", torch.float32)
    lo, hi, tol = x.min().item(), x.max().item(), 0.5 / 255
    if not torch.isfinite(x).all() or lo < -tol or hi > 1 + tol:
        raise ValueError(f"img values must lie in [0, 1], got min {lo:.4g}, max {hi:.4g}")
    rgb = img.ndim == 3 and img.shape[0] == 3
    options, mode = {"quality": 95} if fmt == "JPEG" else {}, 0o666
    if like is not None:
        options.update(_metadata(like, rgb=rgb, fmt=fmt))
        mode = like.stat().st_mode & 0o666  # a private photo's output stays private
    if comment is not None:
        options.setdefault("pnginfo", PngImagePlugin.PngInfo()).add_text("Comment", comment)
    arr = (x * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    pil = Image.fromarray(arr.transpose(1, 2, 0) if rgb else arr.reshape(arr.shape[-2:]))
    atomic_write(path, lambda f: pil.save(f, format=fmt, **options), mode=mode)


# -- Tiled inference -------------------------------------------------------------------------------


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """The models in eval mode for a ``with`` block; then every submodule's own mode back, as
    ``sharpen`` and ``kd``'s teacher runs leave them (``model.train(was)`` would put a model in
    training with frozen normalisation all in training).

    Args:
        models: ``nn.Module``s.

    Raises:
        TypeError: If one is not an ``nn.Module``.

    Example:
        >>> model = student().train()
        >>> with eval_mode(model):
        ...     model.training
        False
        >>> model.training
        True
    """
    if bad := [type(m).__name__ for m in models if not isinstance(m, nn.Module)]:
        raise TypeError(f"models must be nn.Modules, got {bad[0]}")
    tops = [(model, model.training) for model in models]
    modes = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for model, mode in tops:  # a model's own train() runs, as on entry
            model.train(mode)
        for m, mode in modes:
            m.training = mode


def _tiles(length: int, tile: int, overlap: int, align: int) -> list[tuple[int, int, Tensor]]:
    """Tiles ``(start, end, weight)`` along one axis, starts multiples of ``align``, weights
    summing to 1. From an interior tile edge the weight is 0 for ``_margin(overlap)`` pixels
    (where the tile's zero padding shows), then ramps to 1 over ``max(1, overlap // 4)``."""
    if length <= tile:
        return [(0, length, torch.ones(length, dtype=torch.float64))]
    step = (tile - overlap) // align * align
    starts = list(range(0, length - tile, step))
    if (last := (length - tile) // align * align) > starts[-1]:
        starts.append(last)
    ends = [s + tile for s in starts[:-1]] + [length]
    m = _margin(overlap)
    span = max(1, overlap - 2 * m)
    total, raw = torch.zeros(length, dtype=torch.float64), []
    for s, e in zip(starts, ends):
        d = torch.arange(e - s, dtype=torch.float64)  # distance from the tile's first pixel
        w = torch.ones(e - s, dtype=torch.float64)
        if overlap > 0 and s > 0:
            w = w * ((d - m + 0.5) / span).clamp(0, 1)
        if overlap > 0 and e < length:
            w = w * ((e - s - 1 - d - m + 0.5) / span).clamp(0, 1)
        total[s:e] += w
        raw.append(w)
    return [(s, e, w / total[s:e]) for s, e, w in zip(starts, ends, raw)]


def _margin(overlap: int) -> int:
    """The pixels of a tile's interior edge that ``_tiles`` gives no weight."""
    return (overlap - max(1, overlap // 4)) // 2


def _overlap(radius: int) -> int:
    """The smallest tile overlap whose unused margin (``_margin``) covers a receptive-field
    radius, so that tiled inference equals untiled inference."""
    overlap = 2 * radius
    while _margin(overlap) < radius:
        overlap += 1
    return overlap


def _tiling(model: nn.Module, tile: object, overlap: object) -> tuple[int, int, int]:
    """``sharpen``'s tile, overlap (None: from the model's receptive field) and alignment,
    checked against the model."""
    tile = _check_int("tile", tile, low=1)
    if overlap is None:
        radius = getattr(model, "receptive_radius", None)
        overlap = 128 if radius is None else _overlap(int(radius))
        if overlap > tile // 2:
            raise ValueError(f"tile {tile} is too small for this model: tiles of {2 * overlap} px "
                             f"or more give the same result as one piece (its receptive field "
                             f"needs an overlap of {overlap} px); give a larger tile, or an "
                             f"overlap to accept seams")
    overlap = _check_int("overlap", overlap, low=0)
    if overlap > tile // 2:
        raise ValueError(f"overlap must be <= tile // 2, got tile={tile}, overlap={overlap}")
    align = int(getattr(model, "multiple", 1))
    if (tile - overlap) // align < 1:
        raise ValueError(f"tile - overlap = {tile - overlap} must be >= model.multiple = {align}")
    return tile, overlap, align


def _kernel_levels(model: nn.Module, kernel: object, levels: Tensor | None, x: Tensor
                   ) -> tuple[Tensor, Tensor]:
    """``sharpen``'s told ``kernel``, checked, and the levels ``(B, 3)`` (``(B, 4)`` for a
    ``conditioned=4`` model) that go with it."""
    conditioned = getattr(model, "conditioned", 0)
    if conditioned < 2:
        raise ValueError(f"kernel given, but the model is given no Wiener estimate (unet("
                         f"conditioned={conditioned})): conditioned=2 to 4 take a kernel")
    kernel = _told_kernel(kernel, x)
    spread = kernel_sigma(kernel).cpu()
    if levels is None:
        levels = torch.stack([spread, torch.zeros_like(spread), torch.full_like(spread, 100)], 1)
    elif bool(levels.isnan().any()):
        raise ValueError(f"levels told with a kernel must be known (no NaN), got "
                         f"{levels.tolist()}")
    elif bool(((levels[:, 0].cpu() - spread).abs() > 1e-3 * (1 + spread)).any()):
        raise ValueError(f"levels told with a kernel must have its blur, kernel_sigma(kernel) = "
                         f"{[round(v, 4) for v in spread.tolist()]}, got blur "
                         f"{levels[:, 0].tolist()}: pass levels=(kernel_sigma(kernel), noise, "
                         "jpeg)")
    elif levels.shape[1] == 4 and bool((levels[:, 3] != 1).any()):
        raise ValueError(f"gaussian must be 1 or left out with a kernel (the estimate is made "
                         f"from the kernel, so it is exact), got {levels[:, 3].tolist()}")
    levels = levels[:, :3].float()
    if conditioned == 4:
        levels = torch.cat([levels, torch.ones_like(levels[:, :1])], 1)
    return kernel, levels


def sharpen(model: nn.Module, img: Tensor, *, tile: int = 512, overlap: int | None = None,
            precision: str = "auto", levels: Tensor | tuple[float, ...] | None = None,
            kernel: Tensor | None = None) -> Tensor:
    """Run ``model`` over an image of any size in overlapping, cross-faded tiles.

    Tiles run one at a time on the model's device and dtype, in eval mode under ``no_grad`` (the
    mode is restored), with tiles and weights laid out channels_last (1.3-1.9x faster with oneDNN;
    the model itself is left as it is: a channels_last copy of its 4-D weights), starting at
    multiples of ``model.multiple``. By default the overlap is the smallest whose unused margin
    ``(overlap - max(1, overlap // 4)) // 2`` covers ``model.receptive_radius``, so that in
    float32 the result equals untiled inference (to 1e-4). Outputs are clamped to [0, 1].

    Args:
        model: A network mapping ``(B, C, H, W)`` to ``(B, C, H, W)``.
        img: ``(B, C, H, W)`` or ``(C, H, W)``, in [0, 1].
        tile: Tile side in pixels, >= 1; peak memory grows with ``tile ** 2`` (and with the
            image for a ``conditioned=2`` or ``3`` model told levels, whose estimate is made
            whole).
        overlap: Overlap between tiles in pixels, ``0 <= overlap <= tile // 2``; None: from the
            model's ``receptive_radius`` (128 for a model without one), which then needs a
            ``tile`` of at least twice that.
        precision: ``"fp32"``; ``"bf16"`` (bf16 autocast); or ``"auto"``: bf16 where
            :func:`fast_bf16` says the device computes it natively and the model is float32,
            else fp32. The README measures what bf16 costs in PSNR.
        levels: For a conditioned model (``unet(conditioned=1)``, or ``2`` to ``4``, whose
            estimate is then made once for the whole image), what was done to the image:
            (blur, noise, jpeg) as a tuple, a ``(3,)`` tensor or ``(B, 3)`` for a batch, with
            blur >= 0 (pixels), 0 <= noise <= 1 and 1 <= jpeg <= 100 (100: not compressed); NaN
            for unknown; for a ``conditioned=4`` model, a fourth, gaussian (1: the blur is an
            isotropic Gaussian). None: unknown (the model sharpens blind).
        kernel: For a model given a Wiener estimate (``conditioned`` 2 to 4), the blur itself
            when it is known (a measured PSF, a motion path; ``load_kernel`` reads one from an
            image of it): ``(kh, kw)`` or ``(B, kh, kw)``,
            odd sides, non-negative, normalised here to sum 1. The estimate is then made with
            this kernel instead of a Gaussian, and a ``conditioned=4`` model is told that it
            is exact (gaussian 1). ``levels`` then default to ``(kernel_sigma(kernel), 0, 100)``
            (no noise, no JPEG: tell those if there are any, as ``estimate_levels`` reads
            them); given, their blur must be ``kernel_sigma(kernel)``.

    Returns:
        Sharpened images, shaped like ``img``, on its device and dtype.

    Raises:
        TypeError: If ``model`` is not a sharpening network (a level estimator is refused),
            ``levels`` are neither numbers nor a floating-point tensor, or ``kernel`` is not a
            floating-point tensor.
        ValueError: If ``img`` holds NaN or inf or does not fit the model, ``tile`` or
            ``overlap`` is out of range (``tile`` too small for the receptive field when
            ``overlap`` is None),
            ``precision`` is unknown, ``levels`` are out of range or given to a model built
            without them, or ``kernel`` is malformed, given to a model without an estimate, or
            told with levels of another blur, unknown levels or gaussian 0.
    """
    _check_module(model)
    if isinstance(model, LevelNet):
        raise TypeError("model is a level estimator (LevelNet), not a sharpening network: it "
                        "goes to estimate_levels, whose levels sharpen() takes")
    x, single = _as_batch("img", img)
    _check_pixels("img", x)
    if levels is not None:
        if not getattr(model, "conditioned", 0):
            raise ValueError("levels given, but the model was built without them "
                             "(unet(conditioned=0)): it sharpens blind")
        levels = check_levels(levels, len(x))
        if levels.shape[1] == 4 and model.conditioned != 4:
            raise ValueError(f"levels of 4 columns (gaussian) need unet(conditioned=4), the "
                             f"model is conditioned={model.conditioned}")
    if kernel is not None:
        kernel, levels = _kernel_levels(model, kernel, levels, x)
    tile, overlap, align = _tiling(model, tile, overlap)
    p = next(model.parameters(), x)
    amp = _bf16(precision, p)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if convs and _image_channels(model) != x.shape[1]:
        raise ValueError(f"img has {x.shape[1]} channels but the model takes "
                         f"{_image_channels(model)}, got shape {tuple(img.shape)}"
                         f"{_HWC if x.shape[-1] == _image_channels(model) else ''}")
    weights = {name: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
               for name, t in (*model.named_parameters(), *model.named_buffers())}
    out = torch.zeros_like(x)
    estimate = None  # a conditioned>=2 model's, made once for the whole image: tiles then agree
    if levels is not None and getattr(model, "conditioned", 0) >= 2:
        with torch.no_grad():
            estimate = model._estimate(x, levels, None, kernel)  # the model's own kind
    with eval_mode(model), torch.no_grad(), torch.autocast(p.device.type, torch.bfloat16,
                                                           enabled=amp):
        for y0, y1, wy in _tiles(x.shape[-2], tile, overlap, align):
            for x0, x1, wx in _tiles(x.shape[-1], tile, overlap, align):
                piece = x[..., y0:y1, x0:x1].to(p.device, p.dtype)
                piece = piece.contiguous(memory_format=torch.channels_last)
                args = (piece,) if levels is None else (piece, levels)
                told = {} if estimate is None else {
                    "estimate": estimate[..., y0:y1, x0:x1].to(p.device, p.dtype)}
                y = torch.func.functional_call(model, weights, args, told).to(p.dtype)
                y = y * (wy[:, None] * wx[None, :]).to(y.device, y.dtype)
                out[..., y0:y1, x0:x1] += y.to(x.device, x.dtype)
    out = out.clamp_(0, 1)
    return out[0] if single else out


# -- Command line ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python sharpen.py INPUT... [--weights MODEL.pt]``: write ``<stem>_sharp.png`` per input.

    Without ``--weights``, the student shipped beside this file (``weights/student.pt``). A
    conditioned model told nothing (no ``--blur``, ``--noise``, ``--jpeg``, ``--kernel`` or
    ``--blind``) is told the levels the shipped estimator (``weights/levels.pt``, or ``--levels``)
    reads from each image, but a JPEG file's own quality (``jpeg_quality``) where lower; with no
    such file (``sharpen.py`` copied alone), that is a usage error.
    Returns 0 if all succeeded, 1 if some inputs failed (reported on stderr), 2 on a usage error.
    """
    shipped = Path(__file__).resolve().parent / "weights" / "student.pt"
    shipped_levels = shipped.with_name("levels.pt")
    parser = argparse.ArgumentParser(
        prog="sharpen.py",
        epilog="Without --weights: the shipped student, weights/student.pt beside sharpen.py.",
        description="Sharpen (deblur) photographs with a trained model. Each INPUT is written as "
        "OUT_DIR/<stem>_sharp.png, which records what was done in its Comment; inputs are never "
        "overwritten, existing outputs only with --overwrite. Any size runs in overlapping "
        "tiles, so memory stays bounded.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files to sharpen")
    parser.add_argument("--weights", metavar="MODEL.pt",
                        help="model file written by save_model (default: the shipped student)")
    parser.add_argument("-o", "--out-dir", help="output folder (default: each input's folder)")
    parser.add_argument("--tile", type=int, default=512,
                        help="tile side in pixels (512; at least twice the overlap)")
    parser.add_argument("--overlap", type=int, default=None,
                        help="tile overlap in pixels (default: from the model's receptive field)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="bf16 autocast or float32, for the model and the level estimator; "
                        "auto: bf16 where the hardware computes it natively (default)")
    parser.add_argument("--blur", type=float, metavar="SIGMA",
                        help="tell the model the blur, in pixels (the std of a Gaussian of "
                        "like size; 0: sharp; at most 3 with the shipped student); needs a "
                        "conditioned model. Of --blur, --noise and "
                        "--jpeg, those not given count as none (0, 0, 100) when any is given")
    parser.add_argument("--noise", type=float, metavar="STD",
                        help="tell the model the noise std, on a 0-1 scale (0.01 is 2.55 of "
                        "255; at most 0.04 with the shipped student); needs a conditioned model")
    parser.add_argument("--jpeg", type=int, metavar="QUALITY",
                        help="tell the model the JPEG quality (1-100, at least 30 with the "
                        "shipped student; 100: not compressed); needs a conditioned model")
    parser.add_argument("--gaussian", action="store_true",
                        help="the blur told with --blur is an isotropic Gaussian, as a Gaussian "
                        "filter makes (not a shake, a defocus disk or resampling): a model told "
                        "so (unet(conditioned=4)) trusts its Wiener estimate and sharpens more. "
                        "Needs --blur > 0")
    parser.add_argument("--kernel", metavar="PSF.png",
                        help="tell the model the blur itself: an image of the blur kernel, as "
                        "a point of light appears in the photo (a measured point spread "
                        "function, a shake path): opaque, bright on black, odd sides, centred; "
                        "sharpen.py normalises its grey levels to sum 1 (avoid JPEG for it). "
                        "The model corrects that kernel's Wiener estimate. Excludes --blur and "
                        "--gaussian; the noise and JPEG quality are read from each image as "
                        "without --kernel, unless --noise or --jpeg is given. Needs a model "
                        "given an estimate, as the shipped student is (unet(conditioned=2 to 4))")
    parser.add_argument("--blind", action="store_true",
                        help="sharpen blind: tell a conditioned model nothing, not even estimates")
    parser.add_argument("--levels", metavar="ESTIMATOR.pt",
                        help="level estimator (train_levels.py) whose estimates a conditioned "
                        "model is told when --blur, --noise, --jpeg and --blind are not given "
                        f"(blur at most {_MAX_BLUR} px; a JPEG file's own quality, from its "
                        "quantization table, where lower) "
                        f"(default: {shipped_levels.name} beside the shipped student; "
                        "without either, the levels must be told, or --blind given)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="(cpu)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace outputs that already exist (inputs are never replaced)")
    args = parser.parse_args(argv)
    if args.tile < 1:
        parser.error(f"--tile must be >= 1, got {args.tile}")
    if args.overlap is not None and args.overlap < 0:
        parser.error(f"--overlap must be >= 0, got {args.overlap}")
    if args.overlap is not None and args.overlap > args.tile // 2:
        parser.error(f"--overlap must be <= --tile // 2 = {args.tile // 2}, got {args.overlap}")
    for name in ("blur", "noise"):
        if (v := getattr(args, name)) is not None and not (math.isfinite(v) and v >= 0):
            parser.error(f"--{name} must be finite and >= 0, got {v}")
    if args.noise is not None and args.noise > 1:
        parser.error(f"--noise must be <= 1 (a 0-1 scale: 0.01 is 2.55 of 255), got {args.noise}")
    if args.jpeg is not None and not 1 <= args.jpeg <= 100:
        parser.error(f"--jpeg must be from 1 to 100, got {args.jpeg}")
    trained = [("--blur", args.blur, _LEVEL_SCALE[0], "<=", "largest blur"),
               ("--noise", args.noise, _LEVEL_SCALE[1], "<=", "largest noise"),
               ("--jpeg", args.jpeg, 100 - _LEVEL_SCALE[2], ">=", "lowest quality")]
    for flag, value, limit, op, what in trained:  # the shipped student's training ranges
        outside = value is not None and (value > limit if op == "<=" else value < limit)
        if args.weights is None and outside:
            parser.error(f"{flag} must be {op} {limit:g} with the shipped student (the {what} "
                         f"it was trained on), got {value}")
    if "" in args.inputs:
        parser.error("an INPUT is an empty string, not a file name")
    outputs = [_output(args.out_dir, src) for src in args.inputs]
    there = [(src, dst) for src, dst in zip(args.inputs, outputs) if os.path.isfile(src)]
    inputs: dict[object, int] = {}  # of the files there are (others are reported as not found)
    for i, (src, _) in enumerate(there):
        if (first := inputs.setdefault(_identity(src), i)) != i:
            other = there[first][0]
            parser.error(f"{src} is given twice" if other == src else
                         f"{other} and {src} are the same file")
    written: dict[object, int] = {}
    for i, (src, dst) in enumerate(there):
        if (other := inputs.get(key := _identity(dst))) is not None:
            parser.error(f"{src}'s output {dst} would overwrite the input {there[other][0]}")
        if (first := written.setdefault(key, i)) != i:
            parser.error(f"{there[first][0]} and {src} would both be written to {dst}: sharpen "
                         "them in separate runs, with separate -o")
    if args.out_dir is not None and os.path.isfile(args.out_dir):
        parser.error(f"--out-dir {args.out_dir} is a file, not a folder")
    if args.kernel is not None and (args.blur is not None or args.gaussian):
        parser.error("--kernel tells the blur: it excludes --blur and --gaussian")
    if args.gaussian and not args.blur:
        parser.error("--gaussian needs --blur > 0 (the blur whose shape it tells), " + (
            "and no --blur was given" if args.blur is None else f"got --blur {args.blur}"))
    told = [args.blur, args.noise, args.jpeg]
    if args.blind and (told != [None] * 3 or args.kernel is not None):
        parser.error("--blind excludes --blur, --noise, --jpeg and --kernel")
    if args.blind and args.levels is not None:
        parser.error("--blind excludes --levels")
    if args.levels is not None and told != [None] * 3 and (
            args.kernel is None or told[1:] != [None] * 2):
        parser.error("--levels reads the levels not told: with --blur, --noise or --jpeg "
                     "(with --kernel, --noise or --jpeg) none is left to read; drop --levels")
    levels = None if told == [None] * 3 and args.kernel is None else (
        args.blur or 0.0, args.noise or 0.0, 100 if args.jpeg is None else args.jpeg,
        *([1.0] if args.gaussian else []))
    kernel = None
    try:
        if args.kernel is not None:
            try:
                kernel = _warned(Path(args.kernel), load_kernel, args.kernel)
            except (OSError, ValueError) as e:
                raise ValueError(f"--kernel: {e}") from e
            levels = (float(kernel_sigma(kernel)), *levels[1:])
            if args.weights is None and levels[0] > _LEVEL_SCALE[0]:
                raise ValueError(f"--kernel {args.kernel} spreads by {levels[0]:.2f} px "
                                 f"(kernel_sigma): at most {_LEVEL_SCALE[0]:g} with the shipped "
                                 f"student (the largest blur it was trained on)")
        if args.weights is None and not shipped.is_file():
            raise ValueError(f"no model given (--weights), and no shipped student at {shipped}: "
                             "copy the repository's weights/ folder beside sharpen.py, or "
                             "train one with `python train.py`, which writes "
                             "runs/demo/student.pt, then: python sharpen.py INPUT... "
                             "--weights runs/demo/student.pt")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda requested but CUDA is not available")
        model = load_model(args.weights or shipped, map_location=args.device)
        if isinstance(model, LevelNet):
            raise ValueError(f"--weights {args.weights} is a level estimator (LevelNet), not a "
                             "sharpening model: give it as --levels")
        try:
            _tiling(model, args.tile, args.overlap)
        except ValueError as e:
            raise ValueError(f"--tile {args.tile}: {e}") from e
        conditioned = getattr(model, "conditioned", 0)
        if kernel is not None and conditioned < 2:
            raise ValueError(f"--kernel needs a model given a Wiener estimate (unet(conditioned="
                             f"2 to 4)); {args.weights or shipped} is conditioned={conditioned}")
        if levels is not None and not conditioned:
            raise ValueError(f"--blur, --noise and --jpeg need a conditioned model (unet("
                             f"conditioned=1 to 4)); {args.weights or shipped} sharpens blind")
        if args.gaussian and conditioned != 4:
            raise ValueError(f"--gaussian needs a model told the blur's shape (unet(conditioned="
                             f"4)); {args.weights or shipped} is conditioned={conditioned}")
        if args.levels is not None and not conditioned:
            raise ValueError(f"--levels needs a conditioned model (unet(conditioned=1 to 4)); "
                             f"{args.weights or shipped} sharpens blind")
        estimator = None  # reads all the levels, or with --kernel alone the noise and JPEG
        unread = levels is None or (kernel is not None and args.noise is None
                                    and args.jpeg is None)
        if conditioned and unread and not args.blind:
            if args.levels is None and not shipped_levels.is_file():
                what, options = ("levels", "tell them (--blur, --noise, --jpeg), or sharpen "
                                 "blind (--blind)") if kernel is None else (
                    "noise and JPEG quality", "or tell them (--noise, --jpeg)")
                raise ValueError(f"no level estimator at {shipped_levels} to read the {what} "
                                 "from the photo: give one with --levels ESTIMATOR.pt (the "
                                 f"repository's weights/levels.pt), {options}")
            estimator = load_model(args.levels or shipped_levels, map_location=args.device)
            if not isinstance(estimator, LevelNet):
                raise ValueError(f"{args.levels or shipped_levels} is a "
                                 f"{type(estimator).__name__}, not a level estimator")
    except (OSError, ValueError) as e:
        print(f"sharpen.py: {e}", file=sys.stderr)
        return 2
    return _sharpen_files(args, outputs, set(inputs), model, estimator, levels, kernel)


def _warned(about: Path, call: Callable[..., object], *args: object,
            **kwargs: object) -> object:
    """``call(*args, **kwargs)``, its warnings printed as the CLI's one-line warnings, each
    naming the file ``about`` once."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call(*args, **kwargs)
    for warning in caught:
        where = "" if str(about) in str(warning.message) else f"{about}: "
        print(f"sharpen.py: warning: {where}{warning.message}", file=sys.stderr)
    return result


def _sharpened_here(path: Path) -> str:
    """The ``Comment`` of a PNG that the CLI wrote, saying what it did; "" for other files."""
    with Image.open(path) as im:
        note = im.info.get("Comment", "") if im.format == "PNG" else ""
    return note if isinstance(note, str) and note.startswith("sharpened by sharpen.py") else ""


def _writable(folder: Path) -> bool:
    """Whether files can be made in ``folder``, or in the nearest folder above it that exists
    (where ``mkdir`` would make it)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return os.access(folder, os.W_OK | os.X_OK)


def _identity(path: str | os.PathLike) -> object:
    """What tells files apart: a file's device and inode where it exists (so two names of one
    file match: a link, or another spelling on a case-insensitive disk), else its real path
    (``os.path.realpath``, which never raises on a link loop)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return os.path.realpath(path)
    return st.st_dev, st.st_ino


def _output(out_dir: str | None, src: str) -> Path:
    """Where the CLI writes the input ``src``: ``OUT_DIR/<stem>_sharp.png``."""
    return Path(out_dir or Path(src).parent) / f"{Path(src).stem}_sharp.png"


def _sharpen_files(args: argparse.Namespace, outputs: list[Path], taken: set[object],
                   model: nn.Module, estimator: LevelNet | None, levels: tuple | None,
                   kernel: Tensor | None) -> int:
    """The CLI's loop over its inputs, each written to its ``outputs``, none of them a file in
    ``taken`` (the inputs' ``_identity``, then each output's as it is written): the exit
    status, 1 if any failed."""
    failed, name = 0, Path(args.weights).name if args.weights else "the shipped student"
    for src, dst in zip(map(Path, args.inputs), outputs):
        try:
            if _identity(dst) in taken:  # on a case-insensitive disk, as outputs are written
                raise ValueError(f"output {dst} is the file of an input or of another output "
                                 "(a case-insensitive disk?): give another -o")
            if os.path.lexists(dst) and not args.overwrite:
                raise ValueError(f"output {dst} already exists; pass --overwrite to replace it")
            if not _writable(dst.parent):
                raise PermissionError(f"cannot write in {dst.parent} (no permission, or a "
                                      "read-only file system)")
            img, given, source, ceiling = _warned(src, load_image, src), levels, "", ""
            if levels is None and (before := _sharpened_here(src)):
                advice = "; tell the levels (--blur 0 ...) to clean it without sharpening" if \
                    getattr(model, "conditioned", 0) else ""
                print(f"sharpen.py: warning: {src} was {before} already: a second pass "
                      f"over-sharpens (halos, colour fringes){advice}", file=sys.stderr)
            if estimator is not None:
                if min(img.shape[-2:]) < _LEVEL_SIDE:
                    raise ValueError(f"{src} is {img.shape[-1]} pixels wide and "
                                     f"{img.shape[-2]} high: levels are estimated from "
                                     f"{_LEVEL_SIDE} x {_LEVEL_SIDE} or more; tell them " + (
                                         "(--noise, --jpeg)" if kernel is not None else
                                         "(--blur, --noise, --jpeg) or pass --blind"))
                saved = jpeg_quality(src)
                given = tuple(estimate_levels(estimator, img, quality=saved,  # tiles go to
                                              max_blur=None,  # --device
                                              precision=args.precision).tolist())
                if kernel is not None:
                    given = (levels[0], *given[1:])
                elif given[0] > _MAX_BLUR:  # estimate_levels's ceiling, said
                    ceiling = f" (read as {given[0]:.2f}: at most {_MAX_BLUR} px told)"
                    given = (_MAX_BLUR, *given[1:])
                below = saved is not None and round(given[2]) < round(saved)
                source = " from the file" if given[2] == saved else \
                    f" (read below the file's own, {saved:.0f})" if below else ""
            out = sharpen(model, img, tile=args.tile, overlap=args.overlap,
                          precision=args.precision, levels=given, kernel=kernel)
            if torch.equal(img[0], img[1]) and torch.equal(img[1], img[2]):  # grey stays grey,
                out = out.mean(0, keepdim=True)  # in 3 channels where its profile is for RGB
                if _profile_space(src) == b"RGB ":
                    out = out.expand(3, -1, -1)
            read = "estimated " if estimator else ""
            blur = "kernel" if kernel is not None else f"{read or 'told '}blur"
            what = "blind" if given is None else (
                f"{blur} {given[0]:.2f} px{ceiling}, {'a Gaussian, ' if args.gaussian else ''}"
                f"{read if kernel is not None else ''}noise {given[1]:.3f}, JPEG quality "
                f"{given[2]:.0f}{source}")
            dst.parent.mkdir(parents=True, exist_ok=True)
            _warned(src, save_image, out, dst, like=src,
                    comment=f"sharpened by sharpen.py with {name} ({what})")
            taken.add(_identity(dst))
            print(f"{src} -> {dst}" + ("" if estimator is None else f" ({what})"))
        except (OSError, ValueError) as e:
            where = "" if str(src) in str(e) else f"{src}: "  # name the input once
            print(f"sharpen.py: {where}{e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _run() -> int:
    """``python sharpen.py``: ``main()`` on the command line's arguments, Ctrl-C ending it with
    one line (the writes are atomic: no output is left half written)."""
    try:
        return main()
    except KeyboardInterrupt:
        print("sharpen.py: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(_run())
