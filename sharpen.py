"""Blur synthesis, dead-leaves training images, sharpening networks, image I/O and tiled inference.

One self-contained page that imports torch, numpy and Pillow only, so it can be copied into
another project alone. It makes (blurred, sharp) training pairs, builds the teacher and student
networks used for knowledge distillation, and sharpens real photographs of any size.

* Degradations: ``gaussian_blur`` (equal to ``scipy.ndimage.gaussian_filter(mode='mirror')``),
  ``resample_blur`` (down- then upsampling), ``blur`` with straight-motion, camera-shake and
  defocus kernels, ``add_noise``, and ``degrade`` which mixes them. Camera shake follows
  G. Boracchi & A. Foi, "Modeling the Performance of Image Restoration from Motion Blur",
  IEEE TIP 21(8), 2012.
* Training images: ``dead_leaves``, random occluding disks with power-law radii (Matheron 1968;
  Lee, Mumford & Huang, "Occlusion models for natural images", IJCV 2001), the texture target of
  ISO 19567-2. No download needed.
* Networks: ``unet``, a residual U-Net (O. Ronneberger, P. Fischer & T. Brox, "U-Net", MICCAI
  2015) with presets ``teacher`` and ``student``; ``paper_teacher`` and ``paper_student``, the
  network of the source paper, Team Falcons, "Image Sharpening Using Knowledge Distillation".
* Inference: ``sharpen`` runs a model over overlapping, cross-faded tiles in bounded memory;
  ``python sharpen.py --help`` is the command line.

Conventions: images are float tensors ``(B, C, H, W)`` (or ``(C, H, W)``) in [0, 1]; outputs keep
the input's device and dtype; randomness comes only from an explicit ``torch.Generator`` whose
draws are made on its own device (CPU when None) and then moved, so a seed gives the same tensors
on every device. Bad arguments raise ``TypeError`` (wrong type) or ``ValueError`` (wrong value)
with a message naming the argument and showing what was received.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor, nn

Device = torch.device | str | None
_CHUNK_ELEMENTS = 1 << 20  # filter about this many values at a time, so they stay in cache
_LEAF_COVER = 6.0  # dead leaves: mean disks over a pixel; e^-6 = 0.25% of pixels stay background
_KINDS = ("gaussian", "motion", "mixed")

# -- Small private helpers -------------------------------------------------------------------------


def _check_number(name: str, value: object, *, low: float = 0.0, strict: bool = True) -> float:
    """Return ``value`` as a float, raising unless it is a finite number > ``low`` (or >=)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < low or (strict and value == low):
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be finite and {op} {low:g}, got {value!r}")
    return float(value)


def _check_int(name: str, value: object, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _check_generator(generator: object) -> torch.device:
    """Validate ``generator`` and return the device its draws are made on."""
    if generator is None:
        return torch.device("cpu")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator)}")
    return generator.device


def _as_batch(name: str, img: object) -> tuple[Tensor, bool]:
    """Return ``img`` as ``(B, C, H, W)`` and whether it was a single ``(C, H, W)`` image."""
    if not isinstance(img, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(img).__name__}")
    if img.ndim not in (3, 4):
        raise ValueError(f"{name} must be (B, C, H, W) or (C, H, W), got {tuple(img.shape)}")
    if not img.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {img.dtype}")
    if img.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(img.shape)}")
    return (img.unsqueeze(0), True) if img.ndim == 3 else (img, False)


def _filter(x: Tensor, kernels: list[Tensor]) -> Tensor:
    """Correlate every image of ``x (B, C, H, W)`` with each kernel in turn, reflect border.

    A kernel is ``(1, kh, kw)`` (shared) or ``(B, kh, kw)`` (one per image). Channels are folded
    into the batch so that one grouped convolution filters every plane; the batch is cut into
    chunks of about a million values so that intermediates stay in cache.
    """
    B, C, H, W = x.shape
    step = max(1, _CHUNK_ELEMENTS // (C * H * W))
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    for i in range(0, B, step):
        n = min(step, B - i)
        y = x[i : i + n].reshape(1, n * C, H, W)
        for k in kernels:
            kh, kw = k.shape[-2:]
            k = k.expand(n, kh, kw) if k.shape[0] == 1 else k[i : i + n]
            y = F.pad(y, (kw // 2, kw // 2, kh // 2, kh // 2), mode="reflect")
            y = F.conv2d(y, k.repeat_interleave(C, dim=0).unsqueeze(1), groups=n * C)
        out[i : i + n] = y.view(n, C, H, W)
    return out


def _splat(ys: Tensor, xs: Tensor, size: int) -> Tensor:
    """Rasterize points ``(n, P)`` in ``[0, size - 1)`` into ``(n, size, size)`` kernels.

    Each point spreads unit mass bilinearly over its four neighbouring pixels; each kernel is
    then normalized to sum to 1.
    """
    y0, x0 = ys.floor(), xs.floor()
    fy, fx = ys - y0, xs - x0
    y0, x0 = y0.long(), x0.long()
    out = ys.new_zeros(ys.shape[0], size * size)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            out.scatter_add_(1, (y0 + dy) * size + (x0 + dx), wy * wx)
    return (out / out.sum(1, keepdim=True)).view(-1, size, size)


def _shake_kernels(n: int, size: int, generator: torch.Generator | None) -> Tensor:
    """``n`` camera-shake kernels ``(n, size, size)``, float64, on the generator's device.

    After Boracchi & Foi (2012): a path of 64 equal steps whose direction keeps its previous value
    (inertia), is perturbed by Gaussian jitter, pulled back towards the start (so the path stays
    compact), and with a small probability turns abruptly (a jerk). Each kernel draws its jitter
    in U(0, 1), pull in U(0, 2), jerk probability per step in U(0, 0.05), start direction, and
    extent (longest side) in U(0.3, 1) * (size - 3) pixels; exposure is uniform along the path.
    """
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


def gaussian_kernel(
    sigma: float,
    *,
    truncate: float = 4.0,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Sampled, normalized 1-D Gaussian, truncated like ``scipy.ndimage.gaussian_filter``.

    Args:
        sigma: Standard deviation in pixels, > 0.
        truncate: Half-width in standard deviations: radius ``int(truncate * sigma + 0.5)``.
        device: Device of the result.
        dtype: Dtype of the result (computed in float64, then cast).

    Returns:
        Tensor ``(2 * radius + 1,)``, non-negative, summing to 1.

    Raises:
        ValueError: If ``sigma`` or ``truncate`` is not finite and positive.

    Example:
        >>> gaussian_kernel(1.5).shape
        torch.Size([13])
    """
    sigma = _check_number("sigma", sigma)
    radius = int(_check_number("truncate", truncate) * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def gaussian_blur(img: Tensor, sigma: float | Tensor, *, truncate: float = 4.0) -> Tensor:
    """Separable Gaussian blur with a reflect border, one sigma or one per image.

    Equal (to float rounding) to ``scipy.ndimage.gaussian_filter(x, (0, sigma, sigma),
    mode='mirror', truncate=truncate)`` per channel: torch's 'reflect' padding is scipy's 'mirror'
    (the edge pixel is not repeated). Differentiable in ``img``.

    Pillow's ``ImageFilter.GaussianBlur(radius=sigma)``, the source paper's blur, approximates a
    Gaussian of standard deviation ``radius`` by extended box blurs on 8-bit values. Measured on
    ``skimage.data.astronaut()`` resized to 256x256 (Pillow bicubic) at sigma 1.5, the PSNR
    between the two outputs is 50.3 dB (49.9 dB with ours rounded to 8 bits; ``chelsea()``:
    54.7 dB; Pillow 13, torch 2.13), far above the 24-31 dB between blurred and sharp photos:
    either reproduces the paper's degradation.

    Args:
        img: Images ``(B, C, H, W)`` or ``(C, H, W)``, floating point.
        sigma: Standard deviation in pixels, > 0: a number, or a tensor ``(B,)`` with one value
            per image (each image gets its own truncated kernel, as in separate calls).
        truncate: Kernel half-width in standard deviations, as in scipy.

    Returns:
        Blurred images, same shape, dtype and device as ``img``.

    Raises:
        ValueError: If ``img`` is not 3-D/4-D, a sigma is not finite and positive, a tensor
            ``sigma`` is not ``(B,)``, or the kernel radius is not smaller than H and W.

    Example:
        >>> gaussian_blur(torch.rand(2, 3, 32, 32), 1.5).shape
        torch.Size([2, 3, 32, 32])
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
        radii = (truncate * s + 0.5).floor()
        radius = int(radii.max())
        grid = torch.arange(-radius, radius + 1, dtype=torch.float64)
        k = torch.exp(-0.5 * (grid / s[:, None]) ** 2) * (grid.abs() <= radii[:, None])
        k = (k / k.sum(1, keepdim=True)).to(x.device, x.dtype)  # (B, 2 * radius + 1)
    else:
        k = gaussian_kernel(sigma, truncate=truncate, device=x.device, dtype=x.dtype)[None]
        radius = k.shape[1] // 2
    if radius >= min(H, W):
        raise ValueError(
            f"kernel radius {radius} (sigma={sigma}, truncate={truncate}) must be smaller than the "
            f"image height and width for a reflect border, got H={H}, W={W}"
        )
    out = _filter(x, [k[:, None, :], k[:, :, None]])
    return out[0] if single else out


def resample_blur(img: Tensor, scale: float, *, mode: str = "bilinear") -> Tensor:
    """Antialiased downsampling by ``scale``, then upsampling back to the exact input size.

    The source paper's "downsampling then upsampling" degradation: ``F.interpolate`` with
    ``antialias=True`` (a filter widened by ``scale``, as in Pillow's ``resize``) to
    ``round(H / scale) x round(W / scale)``, then back with the same ``mode``. Bicubic may
    overshoot [0, 1] slightly; nothing is clamped.

    Args:
        img: Images ``(B, C, H, W)`` or ``(C, H, W)``, floating point.
        scale: Downsampling factor, > 1.
        mode: ``"bilinear"`` or ``"bicubic"``.

    Returns:
        Tensor of the same shape, dtype and device as ``img``.

    Raises:
        ValueError: If ``scale <= 1``, ``mode`` is unknown, or the small image would be empty.

    Example:
        >>> resample_blur(torch.rand(3, 30, 40), 2.5).shape
        torch.Size([3, 30, 40])
    """
    x, single = _as_batch("img", img)
    scale = _check_number("scale", scale, low=1.0)
    if mode not in ("bilinear", "bicubic"):
        raise ValueError(f"mode must be 'bilinear' or 'bicubic', got {mode!r}")
    H, W = x.shape[-2:]
    h, w = round(H / scale), round(W / scale)
    if h < 1 or w < 1:
        raise ValueError(f"scale={scale} shrinks a {H}x{W} image to nothing ({h}x{w})")
    small = F.interpolate(x, size=(h, w), mode=mode, antialias=True, align_corners=False)
    out = F.interpolate(small, size=(H, W), mode=mode, align_corners=False)
    return out[0] if single else out


def motion_kernel(
    length: float, angle: float, *, device: Device = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Straight-line motion kernel: a segment rasterized by bilinear splatting.

    Args:
        length: Segment length in pixels, > 0.
        angle: Direction in degrees, counter-clockwise from the +x axis as seen on screen.
        device: Device of the result.
        dtype: Dtype of the result.

    Returns:
        Tensor ``(k, k)``, ``k = 2 * ceil(length / 2) + 3``, non-negative, summing to 1.

    Raises:
        ValueError: If ``length`` is not positive or ``angle`` is not finite.

    Example:
        >>> motion_kernel(7.0, 30.0).shape
        torch.Size([11, 11])
    """
    length = _check_number("length", length)
    rad = math.radians(_check_number("angle", angle, low=-math.inf))
    size = 2 * math.ceil(length / 2) + 3
    t = torch.linspace(-0.5, 0.5, max(2, math.ceil(4 * length) + 1), dtype=torch.float64)
    c = (size - 1) / 2
    xs, ys = c + length * t * math.cos(rad), c - length * t * math.sin(rad)
    return _splat(ys[None], xs[None], size)[0].to(device=device, dtype=dtype)


def random_motion_kernel(
    size: int,
    *,
    generator: torch.Generator | None = None,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Random camera-shake kernel after Boracchi & Foi (2012).

    A path of 64 steps with inertia, Gaussian jitter, a pull back towards its start and rare
    abrupt jerks, spanning U(0.3, 1) * (size - 3) pixels, rasterized by bilinear splatting.

    Args:
        size: Kernel side, odd, >= 5.
        generator: Source of randomness; same seed, same kernel.
        device: Device of the result.
        dtype: Dtype of the result.

    Returns:
        Tensor ``(size, size)``, non-negative, summing to 1.

    Raises:
        ValueError: If ``size`` is even or smaller than 5.

    Example:
        >>> random_motion_kernel(15, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([15, 15])
    """
    if (size := _check_int("size", size, low=5)) % 2 == 0:
        raise ValueError(f"size must be odd, got {size}")
    return _shake_kernels(1, size, generator)[0].to(device=device, dtype=dtype)


def disk_kernel(
    radius: float, *, device: Device = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Anti-aliased disk (defocus) kernel.

    A pixel whose centre lies at distance ``d`` from the kernel's centre gets
    ``clamp(radius + 0.5 - d, 0, 1)``, a linear approximation of its coverage by the disk.

    Args:
        radius: Disk radius in pixels, > 0.
        device: Device of the result.
        dtype: Dtype of the result.

    Returns:
        Tensor ``(k, k)``, ``k = 2 * ceil(radius) + 1``, non-negative, summing to 1.

    Raises:
        ValueError: If ``radius`` is not finite and positive.

    Example:
        >>> disk_kernel(2.5).shape
        torch.Size([7, 7])
    """
    radius = _check_number("radius", radius)
    g = torch.arange(-math.ceil(radius), math.ceil(radius) + 1, dtype=torch.float64)
    k = (radius + 0.5 - torch.sqrt(g[:, None] ** 2 + g[None, :] ** 2)).clamp(0, 1)
    return (k / k.sum()).to(device=device, dtype=dtype)


def blur(img: Tensor, kernel: Tensor) -> Tensor:
    """Convolve images with a kernel (a true convolution: the kernel is flipped), reflect border.

    Args:
        img: Images ``(B, C, H, W)`` or ``(C, H, W)``, floating point.
        kernel: ``(kh, kw)`` shared by all images or ``(B, kh, kw)`` one per image, floating
            point, odd sides with ``kh // 2 < H`` and ``kw // 2 < W``. It is cast to the image's
            device and dtype, and not normalized.

    Returns:
        Tensor of the same shape, dtype and device as ``img``.

    Raises:
        ValueError: If ``kernel`` has the wrong rank, a batch other than B, even sides, or is too
            large for the image.

    Example:
        >>> blur(torch.rand(2, 3, 16, 16), disk_kernel(2.0)).shape
        torch.Size([2, 3, 16, 16])
    """
    x, single = _as_batch("img", img)
    B, _, H, W = x.shape
    if not isinstance(kernel, Tensor) or not kernel.is_floating_point():
        raise TypeError(f"kernel must be a floating-point torch.Tensor, got {type(kernel)}")
    if kernel.ndim not in (2, 3) or (kernel.ndim == 3 and kernel.shape[0] != B):
        raise ValueError(
            f"kernel must have shape (kh, kw) or (B, kh, kw) with B={B}, got {tuple(kernel.shape)}"
        )
    kh, kw = kernel.shape[-2:]
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel sides must be odd, got {kh}x{kw}")
    if kh // 2 >= H or kw // 2 >= W:
        raise ValueError(f"kernel {kh}x{kw} is too large for a reflect border on a {H}x{W} image")
    k = kernel.reshape(-1, kh, kw).flip(-1, -2).to(device=x.device, dtype=x.dtype)
    out = _filter(x, [k])
    return out[0] if single else out


def add_noise(img: Tensor, sigma: float, *, generator: torch.Generator | None = None) -> Tensor:
    """Add white Gaussian noise of standard deviation ``sigma``, without clamping.

    Values may leave [0, 1], which keeps the noise zero-mean; clamp the result yourself to model
    a camera's saturation.

    Args:
        img: Images of any shape, floating point.
        sigma: Noise standard deviation in image units, >= 0.
        generator: Source of randomness; the draw is made on its device, then moved.

    Returns:
        ``img + sigma * N(0, 1)``, same shape, dtype and device as ``img``.

    Raises:
        ValueError: If ``sigma`` is negative or not finite.

    Example:
        >>> add_noise(torch.zeros(3, 8, 8), 0.01).shape
        torch.Size([3, 8, 8])
    """
    if not isinstance(img, Tensor) or not img.is_floating_point():
        raise TypeError(f"img must be a floating-point torch.Tensor, got {type(img)}")
    sigma = _check_number("sigma", sigma, strict=False)
    dev = _check_generator(generator)
    noise = torch.randn(img.shape, generator=generator, device=dev, dtype=img.dtype)
    return img + sigma * noise.to(img.device)


def degrade(
    sharp: Tensor,
    *,
    kind: str = "gaussian",
    sigma: float = 1.5,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Make blurred training inputs from sharp images.

    ``kind`` chooses the degradation and ``sigma`` its strength in pixels:

    * ``"gaussian"``: the source paper's protocol, exactly ``gaussian_blur(sharp, sigma)``
      (deterministic; the defaults are the paper's preset, sigma 1.5).
    * ``"motion"``: each image gets its own ``random_motion_kernel`` of side
      ``2 * ceil(3 * sigma) + 1``.
    * ``"mixed"``: each image draws a strength ``s = sigma * U(0.5, 1.5)`` and, with equal odds,
      a Gaussian blur of std ``s``, ``resample_blur`` by ``1 + 1.5 * s``, camera shake of side
      ``2 * ceil(3 * s) + 1``, or defocus ``disk_kernel(2 * s)`` (a disk of radius R has std R/2).

    If ``noise > 0``, ``add_noise`` follows (not clamped): std ``noise`` for "gaussian" and
    "motion", ``noise * U(0, 1)`` per image for "mixed".

    Args:
        sharp: Images ``(B, C, H, W)`` or ``(C, H, W)``, floating point, in [0, 1].
        kind: ``"gaussian"``, ``"motion"`` or ``"mixed"``.
        sigma: Blur strength in pixels, > 0.
        noise: Noise standard deviation, >= 0.
        generator: Source of randomness; same seed, same tensors.

    Returns:
        Degraded images, same shape, dtype and device as ``sharp``.

    Raises:
        ValueError: If ``kind`` is unknown, ``sigma`` not positive, ``noise`` negative, or the
            blur too large for the image.

    Example:
        >>> degrade(torch.rand(4, 3, 32, 32), kind="mixed", generator=torch.Generator()).shape
        torch.Size([4, 3, 32, 32])
    """
    x, single = _as_batch("sharp", sharp)
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    sigma = _check_number("sigma", sigma)
    noise = _check_number("noise", noise, strict=False)
    dev = _check_generator(generator)
    B = x.shape[0]
    if kind != "mixed":
        if kind == "gaussian":
            out = gaussian_blur(x, sigma)
        else:
            out = blur(x, _shake_kernels(B, 2 * math.ceil(3 * sigma) + 1, generator))
        out = add_noise(out, noise, generator=generator) if noise > 0 else out
        return out[0] if single else out
    draws = torch.rand(B, 3, generator=generator, device=dev, dtype=torch.float64).tolist()
    parts = []
    for xi, (strength, choice, level) in zip(x.split(1), draws):
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


def dead_leaves(
    n: int,
    size: int,
    *,
    r_min: float = 0.01,
    r_max: float = 0.3,
    contrast: float = 1.0,
    generator: torch.Generator | None = None,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Random dead-leaves images: occluding disks with power-law radii and random colours.

    Disks fall one over another. Radii have density proportional to ``r^-3`` between
    ``r_min * size`` and ``r_max * size`` pixels (the scale-invariant law behind ISO 19567-2),
    centres are uniform on a torus (so every pixel is equally likely covered), and colours are
    ``0.5 + contrast * (U - 0.5)`` with U uniform in [0, 1]^3. Enough disks are drawn to cover each
    pixel six times on average; the 0.25% of pixels left uncovered take a per-image background
    colour. Edges are hard (a pixel takes the colour of the topmost disk containing its centre).
    At the defaults these are harder than photos: a Gaussian blur of sigma 1.5 leaves 15-19 dB
    PSNR at 64-128 px, against 24-31 dB for photos at 256 px; ``contrast=0.5`` adds 6 dB.

    Rendering is vectorised: disks are grouped by size, all their pixels are listed at once, and
    ``scatter_reduce(amin)`` of the disk index keeps the topmost disk per pixel.

    Args:
        n: Number of images, >= 1.
        size: Side in pixels, >= 2.
        r_min: Smallest radius as a fraction of ``size``, > 0.
        r_max: Largest radius as a fraction of ``size``, in (``r_min``, 1].
        contrast: Spread of the colours around mid-grey, in (0, 1].
        generator: Source of randomness; same seed, same images.
        device: Device of the result.
        dtype: Dtype of the result.

    Returns:
        Tensor ``(n, 3, size, size)`` with values in [0, 1].

    Raises:
        ValueError: If ``n < 1``, ``size < 2``, or the radii or contrast are out of range.

    Example:
        >>> dead_leaves(2, 32, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([2, 3, 32, 32])
    """
    n, size = _check_int("n", n, low=1), _check_int("size", size, low=2)
    r_min, r_max = _check_number("r_min", r_min), _check_number("r_max", r_max)
    if not r_min < r_max <= 1:
        raise ValueError(f"need 0 < r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
    if not 0 < _check_number("contrast", contrast) <= 1:
        raise ValueError(f"contrast must be in (0, 1], got {contrast}")
    dev = _check_generator(generator)
    a, b = r_min * size, r_max * size
    mean_area = math.pi * 2 * math.log(b / a) / (a**-2 - b**-2)  # E[pi r^2] for p(r) ~ r^-3
    k = math.ceil(_LEAF_COVER * size * size / mean_area)
    u = torch.rand(n, k, generator=generator, device=dev)
    radius = ((a**-2 - u * (a**-2 - b**-2)) ** -0.5).to(device)  # inverse CDF of p(r)
    centre = (torch.rand(n, k, 2, generator=generator, device=dev) * size).to(device)
    colour = torch.rand(n, k + 1, 3, generator=generator, device=dev).to(device)  # k: background
    colour = 0.5 + contrast * (colour - 0.5)
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
    return img.view(n, size, size, 3).permute(0, 3, 1, 2).to(dtype).contiguous()


# -- Networks --------------------------------------------------------------------------------------


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

    Level l (0 = full resolution) has ``width * 2**l`` channels and ``blocks`` residual blocks in
    the encoder and again in the decoder (one stack at the deepest level). Down: stride-2 conv3x3.
    Up: stride-2 transposed conv2x2, plus the encoder's output at that level (skip). A last
    conv3x3 predicts a correction added to the input; it starts at zero, so an untrained network
    is the identity. The input is padded (replicate) at the bottom and right to a multiple of
    ``self.multiple = 2**(depth - 1)`` and the output cropped back, so any H, W works. For
    ``torch.export`` declare dynamic sizes as multiples: ``{2: m * Dim("h"), 3: m * Dim("w")}``.
    """

    def __init__(self, width: int, depth: int, blocks: int, in_channels: int) -> None:
        super().__init__()
        ch = [width * 2**level for level in range(depth)]
        self.multiple = 2 ** (depth - 1)
        self.head = nn.Conv2d(in_channels, width, 3, padding=1)
        self.enc = nn.ModuleList(nn.Sequential(*(_ResBlock(c) for _ in range(blocks))) for c in ch)
        self.down = nn.ModuleList(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1) for c in ch[:-1])
        self.up = nn.ModuleList(nn.ConvTranspose2d(2 * c, c, 2, stride=2) for c in ch[:-1])
        self.dec = nn.ModuleList(
            nn.Sequential(*(_ResBlock(c) for _ in range(blocks))) for c in ch[:-1]
        )
        self.tail = nn.Conv2d(width, in_channels, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, list]:
        """Sharpen ``x (B, C, H, W)``; see ``unet`` for ``return_features``."""
        H, W = x.shape[-2:]
        m = self.multiple  # padded size written as m * ceil(H / m), which torch.export can follow
        h = self.head(F.pad(x, (0, -(-W // m) * m - W, 0, -(-H // m) * m - H), mode="replicate"))
        feats = []
        for level, stage in enumerate(self.enc):
            feats.append(h := stage(h))
            if level < len(self.down):
                h = self.down[level](h)
        for level in reversed(range(len(self.up))):
            feats.append(h := self.dec[level](self.up[level](h) + feats[level]))
        out = x + self.tail(h)[..., :H, :W]
        if not return_features:
            return out
        levels = [*range(len(self.enc)), *reversed(range(len(self.up)))]
        return out, [f[..., : -(-H // 2**i), : -(-W // 2**i)] for f, i in zip(feats, levels)]


class PaperNet(nn.Module):
    """The source paper's network; build it with ``paper_teacher`` or ``paper_student``.

    conv3x3 3->64, ReLU; stride-2 conv3x3 64->128, ReLU; ``blocks`` residual blocks at 128;
    stride-2 transposed conv2x2 128->64, ReLU; conv3x3 64->3; sigmoid. No skip connections. Odd
    sizes are padded (replicate) to even and cropped back.
    """

    def __init__(self, blocks: int) -> None:
        super().__init__()
        self.multiple = 2
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


def unet(*, width: int = 32, depth: int = 3, blocks: int = 2, in_channels: int = 3) -> UNet:
    """Residual U-Net: skip connections, global residual, no normalization, no sigmoid or clamp.

    ``model(x)`` returns the sharpened ``(B, C, H, W)`` for any H, W, unclamped (``sharpen``
    clamps). ``model(x, return_features=True)`` returns ``(out, feats)``, ``feats`` a list of
    ``2 * depth - 1`` maps: the encoder output of levels 0, 1, ..., depth - 1 (the last is the
    bottleneck), then the decoder output of levels depth - 2, ..., 0. Level l has ``width * 2**l``
    channels and size ``ceil(H / 2**l) x ceil(W / 2**l)``, so two models of the same depth give
    lists of the same length and sizes; only channel counts differ.

    Args:
        width: Channels at full resolution, >= 1.
        depth: Number of resolution levels, >= 1.
        blocks: Residual blocks per level in the encoder and in the decoder, >= 0.
        in_channels: Image channels (input and output), >= 1.

    Returns:
        The model, with ``model.config = {"factory": "unet", "kwargs": {...}}``.

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> unet(width=8, depth=2)(torch.rand(1, 3, 17, 23)).shape
        torch.Size([1, 3, 17, 23])
    """
    kwargs = {
        "width": _check_int("width", width, low=1),
        "depth": _check_int("depth", depth, low=1),
        "blocks": _check_int("blocks", blocks, low=0),
        "in_channels": _check_int("in_channels", in_channels, low=1),
    }
    model = UNet(**kwargs)
    model.config = {"factory": "unet", "kwargs": kwargs}
    return model


def teacher(**overrides: int) -> UNet:
    """Teacher preset ``unet(width=32, depth=3, blocks=2)``: 1.09 M params, 13.1 GMAC at 256².

    Keyword ``overrides`` go to ``unet``; the saved config is the resolved ``unet`` call.
    """
    return unet(**{"width": 32, "depth": 3, "blocks": 2, **overrides})


def student(**overrides: int) -> UNet:
    """Student preset ``unet(width=16, depth=3, blocks=1)``: 0.15 M params, 1.8 GMAC at 256².

    14% of the teacher's parameters, same depth (so its features pair with the teacher's), and
    4.9x (batch 1) to 6.7x (batch 4) faster in fp32 on 2 CPU cores at 256x256
    (``benchmarks/bench_sharpen.py``). ``overrides`` go to ``unet``.
    """
    return unet(**{"width": 16, "depth": 3, "blocks": 1, **overrides})


def _paper(factory: str, blocks: int) -> PaperNet:
    model = PaperNet(_check_int("blocks", blocks, low=0))
    model.config = {"factory": factory, "kwargs": {"blocks": blocks}}
    return model


def paper_teacher(*, blocks: int = 4) -> PaperNet:
    """The source paper's teacher: 4 residual blocks at 128 channels, 1.29 M parameters.

    ``model(x, return_features=True)`` returns ``(out, [f1, f2, f3])``: the first conv's output
    (64 channels, H x W), the stride-2 conv's (128, ceil(H/2) x ceil(W/2)) and the residual
    blocks' (128, same size). The output passes through a sigmoid.

    Example:
        >>> paper_teacher()(torch.rand(1, 3, 17, 23)).shape
        torch.Size([1, 3, 17, 23])
    """
    return _paper("paper_teacher", blocks)


def paper_student(*, blocks: int = 2) -> PaperNet:
    """The source paper's student: ``paper_teacher`` with 2 residual blocks, 0.70 M parameters."""
    return _paper("paper_student", blocks)


_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "unet": unet,
    "teacher": teacher,
    "student": student,
    "paper_teacher": paper_teacher,
    "paper_student": paper_student,
}


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model``, trainable or not.

    Example:
        >>> count_params(unet(width=4, depth=1, blocks=0))
        223
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, height: int, width: int) -> int:
    """Convolution multiply-accumulates of one forward pass of a ``(1, C, height, width)`` input.

    Forward hooks count every ``Conv2d`` (output elements x input channels per group x kernel
    area) and ``ConvTranspose2d`` (input elements x output channels per group x kernel area);
    other layers are ignored. C is the first convolution's input channels. Hooks are removed.

    Raises:
        ValueError: If a size is < 1 or the model has no convolution.

    Example:
        >>> count_macs(unet(width=4, depth=1, blocks=0), 8, 8)
        13824
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    height, width = _check_int("height", height, low=1), _check_int("width", width, low=1)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    if not convs:
        raise ValueError("model has no Conv2d or ConvTranspose2d layer to count")
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        nonlocal total
        grid = output if isinstance(module, nn.Conv2d) else inputs[0]
        total += grid[0].numel() * module.weight[0].numel()  # weight[0]: channels/group * kh * kw

    handles = [m.register_forward_hook(hook) for m in convs]
    try:
        with torch.no_grad():
            model(convs[0].weight.new_zeros(1, convs[0].in_channels, height, width))
    finally:
        for h in handles:
            h.remove()
    return total


# -- Files: models and images ----------------------------------------------------------------------


def _atomic_write(path: str | os.PathLike, write: Callable[[object], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync, then rename it over.

    A crash leaves the old file or the new one, never a truncated one. The temporary file gets
    mode 0o666 minus the umask, like any new file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_model(path: str | os.PathLike, model: nn.Module) -> None:
    """Save a model built by this module's factories: factory name, kwargs and weights.

    One ``torch.save`` dict ``{"factory", "kwargs", "state_dict"}`` (weights on CPU), written
    atomically; ``load_model`` rebuilds the model from it alone.

    Raises:
        ValueError: If ``model`` has no ``config`` from one of this module's factories.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or config.get("factory") not in _FACTORIES:
        raise ValueError(
            f"model must be built by one of {sorted(_FACTORIES)} (they set model.config), "
            f"got config={config!r}"
        )
    data = {
        "factory": config["factory"],
        "kwargs": dict(config["kwargs"]),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    _atomic_write(path, lambda f: torch.save(data, f))


def load_model(path: str | os.PathLike, *, map_location: Device = None) -> nn.Module:
    """Load a model written by ``save_model`` (``torch.load(weights_only=True)``), in eval mode.

    Args:
        path: The model file.
        map_location: Device to put the model on; CPU when None.

    Returns:
        The rebuilt model with its weights and ``model.config``, in eval mode.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is unreadable, not a model file, names an unknown factory, or
            holds kwargs or weights that do not fit; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable model file ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict) or not {"factory", "kwargs", "state_dict"} <= data.keys():
        raise ValueError(f"{path}: not a sharpen model file (expected factory, kwargs, state_dict)")
    factory = data["factory"]
    if factory not in _FACTORIES:
        raise ValueError(f"{path}: unknown factory {factory!r}; known: {sorted(_FACTORIES)}")
    try:
        model = _FACTORIES[factory](**data["kwargs"])
        model.load_state_dict(data["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: cannot rebuild {factory}({data['kwargs']}): {e}") from e
    return model.to(map_location or "cpu").eval()


def load_image(path: str | os.PathLike) -> Tensor:
    """Read an image file as ``(3, H, W)`` float32 in [0, 1], with its EXIF orientation applied.

    Conversions are explicit: 8-bit values are divided by 255 and 16-bit grayscale ("I;16*", or
    "I" holding values in [0, 65535]) by 65535; grayscale is copied to three channels; palettes
    are expanded; transparency (RGBA, LA, PA, palette with transparency) is composited over white,
    as on a white page; CMYK and YCbCr use Pillow's conversion (no colour management).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a readable image or has an unsupported mode (such as
            "F"); the message names the file.

    Example:
        >>> load_image("photo_4000x3000.jpg").shape  # doctest: +SKIP
        torch.Size([3, 3000, 4000])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
    except Exception as e:
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    if im.mode.startswith("I;16") or im.mode == "I":
        arr = np.asarray(im).astype(np.float32)
        if arr.min() < 0 or arr.max() > 65535:
            raise ValueError(f"{path}: mode {im.mode} values outside [0, 65535]")
        arr = np.repeat((arr / 65535)[..., None], 3, axis=2)
    else:
        if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, im.convert("RGBA"))
        if im.mode not in ("RGB", "RGBA", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV"):
            raise ValueError(f"{path}: unsupported image mode {im.mode!r}")
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def save_image(img: Tensor, path: str | os.PathLike) -> None:
    """Write ``img`` rounded to 8 bits, atomically, in the format named by the suffix.

    Args:
        img: ``(3, H, W)``, ``(1, H, W)`` or ``(H, W)``, floating point, in [0, 1]. Values within
            half an 8-bit step outside [0, 1] round into range; farther ones raise (nothing is
            silently clamped).
        path: Destination; its suffix (.png, .jpg, .tif, ...) picks the format. JPEG: quality 95.

    Raises:
        ValueError: If the shape, the values or the suffix is wrong.
    """
    if not isinstance(img, Tensor) or not img.is_floating_point():
        raise TypeError(f"img must be a floating-point torch.Tensor, got {type(img)}")
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[0] in (1, 3))) or img.numel() == 0:
        raise ValueError(f"img must be (3, H, W), (1, H, W) or (H, W), got {tuple(img.shape)}")
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image suffix {path.suffix!r}")
    x = img.detach().to("cpu", torch.float32)
    lo, hi, tol = x.min().item(), x.max().item(), 0.5 / 255
    if not torch.isfinite(x).all() or lo < -tol or hi > 1 + tol:
        raise ValueError(f"img values must lie in [0, 1], got min {lo:.4g}, max {hi:.4g}")
    arr = (x * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    rgb = img.ndim == 3 and img.shape[0] == 3
    pil = Image.fromarray(arr.transpose(1, 2, 0) if rgb else arr.reshape(arr.shape[-2:]))
    options = {"quality": 95} if fmt == "JPEG" else {}
    _atomic_write(path, lambda f: pil.save(f, format=fmt, **options))


# -- Tiled inference -------------------------------------------------------------------------------


def _tiles(length: int, tile: int, overlap: int, align: int) -> list[tuple[int, int, Tensor]]:
    """Tiles ``(start, end, weight)`` along one axis, with weights summing to 1 everywhere.

    Starts are multiples of ``align``, so a network's stride-2 grids line up with the whole
    image's. From an interior tile edge inwards the weight is 0 for ``m`` pixels, then ramps
    linearly to 1 over about ``overlap // 4`` pixels, with ``m = (overlap - overlap // 4) // 2``:
    neighbours cross-fade, and a tile's ``m`` border pixels, where its zero padding differs from
    the real surroundings, are never used.
    """
    if length <= tile:
        return [(0, length, torch.ones(length, dtype=torch.float64))]
    step = (tile - overlap) // align * align
    starts = list(range(0, length - tile, step))
    if (last := (length - tile) // align * align) > starts[-1]:
        starts.append(last)
    ends = [s + tile for s in starts[:-1]] + [length]
    m = (overlap - max(1, overlap // 4)) // 2
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


def sharpen(model: nn.Module, img: Tensor, *, tile: int = 512, overlap: int = 128) -> Tensor:
    """Run ``model`` over an image of any size, tile by tile, in bounded memory.

    Tiles of ``tile x tile`` pixels, overlapping by at least ``overlap``, run one at a time on the
    model's device and dtype and are cross-faded (``_tiles``) into an output on ``img``'s device,
    so no seams show. The result equals untiled inference (checked to 1e-4) when the unused
    margin ``(overlap - overlap // 4) // 2`` (48 px at the default 128) is at least the model's
    receptive-field radius: 48 px for ``teacher()``, 26 for ``student()``, 20 for
    ``paper_teacher()`` (measured by gradients). With less, results differ near tile edges (by
    ~2e-5 for a random-weight teacher at overlap 32) and the cross-fade hides it. Tile starts
    align to ``model.multiple`` (its downsampling factor) when present. The model runs in eval
    mode under ``torch.no_grad()``; its train/eval mode is restored. Outputs are clamped to [0, 1].

    Args:
        model: A network mapping ``(B, C, H, W)`` to ``(B, C, H, W)``.
        img: ``(C, H, W)`` or ``(B, C, H, W)``, floating point, in [0, 1].
        tile: Tile side in pixels, >= 1; peak memory grows with ``tile ** 2``.
        overlap: Overlap between tiles in pixels, ``0 <= overlap <= tile // 2``.

    Returns:
        Sharpened images, same shape, dtype and device as ``img``.

    Raises:
        ValueError: If ``img`` is not 3-D/4-D or its channels do not fit the model, ``tile`` or
            ``overlap`` is out of range, or ``tile - overlap < model.multiple``.

    Example:
        >>> sharpen(student(), torch.rand(3, 40, 50), tile=32, overlap=8).shape
        torch.Size([3, 40, 50])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    x, single = _as_batch("img", img)
    tile, overlap = _check_int("tile", tile, low=1), _check_int("overlap", overlap, low=0)
    if overlap > tile // 2:
        raise ValueError(f"overlap must be <= tile // 2, got tile={tile}, overlap={overlap}")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if convs and convs[0].in_channels != x.shape[1]:
        raise ValueError(
            f"img has {x.shape[1]} channels but the model takes {convs[0].in_channels}, "
            f"got shape {tuple(img.shape)}"
        )
    align = int(getattr(model, "multiple", 1))
    if (tile - overlap) // align < 1:
        raise ValueError(f"tile - overlap = {tile - overlap} must be >= model.multiple = {align}")
    p = next(model.parameters(), x)
    H, W = x.shape[-2:]
    out = torch.zeros_like(x)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for y0, y1, wy in _tiles(H, tile, overlap, align):
                for x0, x1, wx in _tiles(W, tile, overlap, align):
                    y = model(x[..., y0:y1, x0:x1].to(p.device, p.dtype))
                    y = y * (wy[:, None] * wx[None, :]).to(y.device, y.dtype)
                    out[..., y0:y1, x0:x1] += y.to(x.device, x.dtype)
    finally:
        model.train(was_training)
    out = out.clamp_(0, 1)
    return out[0] if single else out


# -- Command line ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python sharpen.py INPUT... --weights MODEL.pt``: write ``<stem>_sharp.png`` per input.

    Returns 0 when every input was sharpened; 1 when some failed (each is reported on stderr and
    the others still run); 2 on a usage error, such as a missing ``--weights``.
    """
    parser = argparse.ArgumentParser(
        prog="sharpen.py",
        description="Sharpen (deblur) photographs with a trained model. Each INPUT is written as "
        "OUT_DIR/<stem>_sharp.png; inputs are never overwritten. Images of any size run in "
        "overlapping tiles, so memory stays bounded.",
        epilog="No model yet? `python kd.py` trains one and writes runs/demo/student.pt.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files to sharpen")
    parser.add_argument("--weights", metavar="MODEL.pt", help="model file written by save_model")
    parser.add_argument("-o", "--out-dir", help="output folder (default: each input's folder)")
    parser.add_argument("--tile", type=int, default=512, help="tile side in pixels (512)")
    parser.add_argument("--overlap", type=int, default=128, help="tile overlap in pixels (128)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="(cpu)")
    args = parser.parse_args(argv)
    if args.weights is None:
        print(
            "sharpen.py: no model given (--weights). Train one with `python kd.py`, which writes "
            "runs/demo/student.pt, then: python sharpen.py INPUT... --weights runs/demo/student.pt",
            file=sys.stderr,
        )
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("sharpen.py: --device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    try:
        model = load_model(args.weights, map_location=args.device)
    except (OSError, ValueError) as e:
        print(f"sharpen.py: {e}", file=sys.stderr)
        return 2
    taken = {Path(p).resolve() for p in args.inputs}  # inputs, then outputs as they are written
    failed = 0
    for src in map(Path, args.inputs):
        dst = Path(args.out_dir or src.parent) / f"{src.stem}_sharp.png"
        try:
            if dst.resolve() in taken:
                raise ValueError(f"output {dst} would overwrite an input or another output")
            out = sharpen(model, load_image(src), tile=args.tile, overlap=args.overlap)
            dst.parent.mkdir(parents=True, exist_ok=True)
            save_image(out, dst)
            taken.add(dst.resolve())
            print(f"{src} -> {dst}")
        except (OSError, ValueError) as e:
            print(f"sharpen.py: {src}: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
