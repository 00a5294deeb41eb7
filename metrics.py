"""PSNR and SSIM in plain PyTorch: batched, differentiable, on any device, equal to scikit-image.

Two image-quality measures that restoration papers report:

* PSNR, ``10 * log10(data_range**2 / MSE)`` per image, the MSE taken over all channels and
  pixels in float64.
* SSIM, the structural similarity of Wang, Bovik, Sheikh and Simoncelli, "Image Quality
  Assessment: From Error Visibility to Structural Similarity", IEEE TIP 13(4), 2004.

The keyword names mirror ``skimage.metrics`` so calls move across unchanged, and the defaults give
scikit-image's numbers (the convention behind the source paper's table): a 7x7 uniform window,
sample covariance, ``K1=0.01``, ``K2=0.03``, the SSIM map cropped by the window radius and
averaged over pixels, then over channels. ``gaussian_weights=True, use_sample_covariance=False``
gives the Wang et al. / MATLAB convention (11x11 Gaussian, sigma 1.5, truncated at 3.5 sigma), and
``crop_border`` with ``y_channel=True`` the one of BasicSR-style super-resolution papers.

Because scikit-image crops exactly the window radius, its border mode never reaches the result:
filtering only the 'valid' region gives the same numbers without padding. Two details keep float32
close to float64: the local moments are computed around each image's mean, so that
``E[x^2] - E[x]^2`` does not cancel on images with a large offset, and on CUDA the window sums are
plain additions, never convolutions that TF32 could round to 10 bits.

This file imports torch only; copy it into a project on its own if that is all you need.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "rgb_to_y"]

# ITU-R BT.601 luma as MATLAB's rgb2ycbcr computes it: Y in [16, 235] for RGB in [0, 1].
_Y_WEIGHTS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0

# On the CPU, planes are filtered a few at a time so that their moment maps stay in cache.
_CPU_CHUNK_ELEMENTS = 2**18


def _check_images(pred: object, target: object) -> None:
    """Validate a pair of image tensors: same type, shape, dtype and device."""
    for name, img in (("pred", pred), ("target", target)):
        if not isinstance(img, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(img).__name__}")
        if not img.is_floating_point():
            raise TypeError(
                f"{name} must be a floating-point tensor, got {img.dtype}; convert it first, "
                "for example img.float() / 255 for 8-bit images (then data_range=1.0)"
            )
        if img.dim() not in (3, 4) or img.numel() == 0:
            raise ValueError(
                f"{name} must be a non-empty (C, H, W) or (B, C, H, W), got shape "
                f"{tuple(img.shape)}"
            )
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    if pred.dtype != target.dtype:
        raise TypeError(f"pred and target must have the same dtype, got {pred.dtype} and "
                        f"{target.dtype}")
    if pred.device != target.device:
        raise ValueError(f"pred and target must be on the same device, got {pred.device} and "
                         f"{target.device}")


def _check_number(name: str, value: object, *, low: float = 0.0, strict: bool = True) -> float:
    """``value`` as a float; raise unless it is a finite real > ``low`` (>= if not ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < low or (strict and value == low):
        raise ValueError(f"{name} must be finite and {'>' if strict else '>='} {low:g}, "
                         f"got {value!r}")
    return float(value)


def _check_int(name: str, value: object, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return int(value)


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


def _prepare(
    pred: torch.Tensor, target: torch.Tensor, data_range: float, crop_border: int,
    y_channel: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared steps of psnr and ssim: validate, crop the border, convert to Y if asked."""
    _check_images(pred, target)
    _check_number("data_range", data_range)
    crop_border = _check_int("crop_border", crop_border, low=0)
    _check_bool("y_channel", y_channel)
    H, W = pred.shape[-2:]
    if 2 * crop_border >= min(H, W):
        raise ValueError(
            f"crop_border={crop_border} leaves no pixels of images of size {H}x{W}"
        )
    if y_channel and pred.shape[-3] != 3:
        raise ValueError(
            f"y_channel=True needs 3 (RGB) channels, got shape {tuple(pred.shape)}"
        )
    if crop_border:
        c = crop_border
        pred, target = pred[..., c:-c, c:-c], target[..., c:-c, c:-c]
    if y_channel:
        pred = rgb_to_y(pred, data_range=data_range)
        target = rgb_to_y(target, data_range=data_range)
    return pred, target


def rgb_to_y(img: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """ITU-R BT.601 luma of an RGB image, as MATLAB's ``rgb2ycbcr`` computes it.

    ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` for RGB in [0, 1], giving Y in [16, 235] on the
    8-bit scale; here the result is scaled back to ``[0, data_range]``.

    Args:
        img: RGB image ``(3, H, W)`` or batch ``(B, 3, H, W)``, values in ``[0, data_range]``.
        data_range: the value of full white, 1.0 for float images, 255 for 8-bit values.

    Returns:
        The luma, ``(1, H, W)`` or ``(B, 1, H, W)``, same dtype and device as ``img``.

    Raises:
        TypeError: ``img`` is not a floating-point tensor, or ``data_range`` not a number.
        ValueError: ``img`` is not 3-D or 4-D with 3 channels, or ``data_range`` is not finite
            and > 0.

    Example:
        >>> rgb_to_y(torch.ones(2, 3, 4, 4)).shape
        torch.Size([2, 1, 4, 4])
    """
    if not isinstance(img, torch.Tensor) or not img.is_floating_point():
        got = img.dtype if isinstance(img, torch.Tensor) else type(img).__name__
        raise TypeError(f"img must be a floating-point tensor, got {got}")
    if img.dim() not in (3, 4) or img.shape[-3] != 3:
        raise ValueError(f"img must be (3, H, W) or (B, 3, H, W), got shape {tuple(img.shape)}")
    _check_number("data_range", data_range)
    r, g, b = img.unbind(-3)
    y = (_Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b) / 255.0
    return (y + _Y_OFFSET / 255.0 * data_range).unsqueeze(-3)


def psnr(
    pred: torch.Tensor, target: torch.Tensor, *, data_range: float = 1.0, crop_border: int = 0,
    y_channel: bool = False,
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, one value per image.

    Equals ``skimage.metrics.peak_signal_noise_ratio(target, pred, data_range=data_range)`` for
    each image. The MSE is taken over channels and pixels in float64; identical images give
    ``inf``; non-finite input gives a non-finite result.

    Args:
        pred: restored image ``(C, H, W)`` or batch ``(B, C, H, W)``, floating point.
        target: reference image, same shape, dtype and device as ``pred``.
        data_range: the value of full white, 1.0 for float images, 255 for 8-bit values.
        crop_border: pixels removed from every side before measuring (BasicSR convention).
        y_channel: measure the BT.601 luma of RGB images instead of the three channels.

    Returns:
        float64 tensor of shape ``(B,)`` for a batch, or 0-dim for a single image. The values
        are not checked against ``[0, data_range]`` (the caller's duty, as in scikit-image).

    Raises:
        TypeError: an input is not a floating-point tensor, the dtypes differ, or an option is
            of the wrong type.
        ValueError: bad or empty shapes, a non-finite or non-positive ``data_range``,
            ``crop_border`` too large or negative, or ``y_channel=True`` with other than 3
            channels.

    Example:
        >>> x = torch.rand(4, 3, 16, 16)
        >>> psnr(x.clamp(0.1, 0.9), x).shape
        torch.Size([4])
    """
    pred, target = _prepare(pred, target, data_range, crop_border, y_channel)
    # Differences in the input's precision, as scikit-image; squares summed in float64, and
    # divided by data_range before squaring so that no data_range overflows.
    n = pred.shape[-3:].numel()
    err = (pred - target).flatten(start_dim=-3)
    if err.dtype == torch.float64 and data_range != 1:  # float64 squares overflow beyond 1e154
        err, data_range = err / data_range, 1.0
    norm = torch.linalg.vector_norm(err, dim=-1, dtype=torch.float64) / data_range
    return -10 * torch.log10(norm.square() / n)


def _correlate_valid(maps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' correlation of every channel of ``maps`` ``(N, K, H, W)`` with the 1-D
    ``weights`` along both axes; returns ``(N, K, H - k + 1, W - k + 1)``."""
    k = weights.numel()
    if maps.device.type == "cpu" and maps.dtype == torch.float32:
        # oneDNN's depthwise convolution on channels_last is the fastest CPU path for float32.
        K = maps.shape[1]
        maps = maps.contiguous(memory_format=torch.channels_last)
        out = F.conv2d(maps, weights.view(1, 1, 1, k).expand(K, 1, 1, k), groups=K)
        return F.conv2d(out, weights.view(1, 1, k, 1).expand(K, 1, k, 1), groups=K)
    # Elsewhere, weighted sums of shifted views: exact in float64, and free of TF32 on CUDA.
    w = weights.tolist()
    H, W = maps.shape[-2:]
    rows = maps[..., :, : W - k + 1] * w[0]
    for i in range(1, k):
        rows = rows.add_(maps[..., :, i : W - k + 1 + i], alpha=w[i])
    out = rows[..., : H - k + 1, :] * w[0]
    for i in range(1, k):
        out = out.add_(rows[..., i : H - k + 1 + i, :], alpha=w[i])
    return out


def _ssim_planes(
    x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, cov_norm: float, C1: float,
    C2: float, scale: float,
) -> torch.Tensor:
    """Mean SSIM of each plane of ``x`` and ``y``, both ``(P, H, W)``; returns ``(P,)``.

    The maps are multiplied by ``scale = 1 / data_range`` (SSIM does not change when images and
    data_range scale together), so that no data_range overflows the dtype.

    Four maps are filtered instead of five: with ``a = x + y`` and ``b = x - y``,
    ``4 mu_x mu_y = mu_a^2 - mu_b^2`` and ``4 cov_xy = var_a - var_b``, while the sums
    ``2 (mu_x^2 + mu_y^2)`` and ``2 (var_x + var_y)`` are the same with a plus sign.
    """
    P, H, W = x.shape
    # Moments around a value near each plane's mean: SSIM is unchanged, cancellation is not.
    shift = (x[:, ::8, ::8].mean(dim=(-2, -1)) + y[:, ::8, ::8].mean(dim=(-2, -1))).detach() / 2
    # Planes last, so that the 4P maps form one channels_last image for the filter.
    xp, yp = x.permute(1, 2, 0), y.permute(1, 2, 0)
    a = (xp + yp).sub_(2 * shift)
    b = xp - yp
    if scale != 1:
        a, b, shift = a.mul_(scale), b.mul_(scale), shift * scale
    maps = torch.stack([a, b, a * a, b * b], dim=-1).view(1, H, W, 4 * P).permute(0, 3, 1, 2)
    # Window sums with unnormalised weights (exact ones for the box). The formula below is
    # scaled so that it needs no division by the weights' total N: a float32 window whose
    # weights do not sum exactly to 1 would bias every variance.
    N = weights.sum().item() ** 2
    with torch.autocast(maps.device.type, enabled=False):  # CPU autocast would use bf16
        sums = _correlate_valid(maps, weights.to(x.dtype))
    A, B, SA, SB = sums[0].permute(1, 2, 0).unflatten(-1, (P, 4)).unbind(-1)
    # N^2 (mu_a^2 -+ mu_b^2 + 2 C1), with mu_a = A / N + 2 shift.
    mu_a = A + (2 * N) * shift
    lum = torch.addcmul(x.new_tensor(2 * C1 * N * N), mu_a, mu_a)
    mu_b2 = B * B
    lum_num, lum_den = lum - mu_b2, lum.add_(mu_b2)
    # N^2 (cov_norm (var_a -+ var_b) + 2 C2) / N, with N var_a = SA - A^2 / N.
    var_a = torch.addcmul(SA, A, A, value=-1 / N)
    var_b = torch.addcmul(SB, B, B, value=-1 / N)
    c2 = x.new_tensor(2 * C2 * N)
    cs_num = torch.add(c2, var_a - var_b, alpha=cov_norm)
    cs_den = torch.add(c2, var_a.add_(var_b), alpha=cov_norm)
    return lum_num.mul_(cs_num).div_(lum_den.mul_(cs_den)).mean(dim=(0, 1))


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    data_range: float = 1.0,
    win_size: int | None = None,
    gaussian_weights: bool = False,
    sigma: float = 1.5,
    use_sample_covariance: bool = True,
    K1: float = 0.01,
    K2: float = 0.03,
    crop_border: int = 0,
    y_channel: bool = False,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004), one value per image, differentiable.

    With the defaults it equals, for each image,
    ``skimage.metrics.structural_similarity(t, p, channel_axis=-1, data_range=data_range)``
    with ``t, p`` as ``(H, W, C)`` arrays. ``gaussian_weights=True, use_sample_covariance=False``
    gives the Wang et al. / MATLAB numbers. ``1 - ssim(pred, target).mean()`` is a training loss.

    Args:
        pred: restored image ``(C, H, W)`` or batch ``(B, C, H, W)``, floating point, any C >= 1.
        target: reference image, same shape, dtype and device as ``pred``.
        data_range: the value of full white, 1.0 for float images, 255 for 8-bit values.
        win_size: odd window side >= 3. Default: 7, or the Gaussian's extent
            ``2 * int(3.5 * sigma + 0.5) + 1`` (11 for sigma 1.5) with ``gaussian_weights``.
        gaussian_weights: weight the window with a Gaussian of std ``sigma`` truncated at 3.5
            sigma, instead of uniformly.
        sigma: std of the Gaussian window, in pixels.
        use_sample_covariance: divide by N - 1 (scikit-image's default) instead of N (Wang).
        K1: luminance stabiliser; ``C1 = (K1 * data_range) ** 2``.
        K2: contrast stabiliser; ``C2 = (K2 * data_range) ** 2``.
        crop_border: pixels removed from every side before measuring (BasicSR convention).
        y_channel: measure the BT.601 luma of RGB images instead of the three channels.

    Returns:
        Tensor of shape ``(B,)`` for a batch, or 0-dim for a single image, on the input's device,
        in its dtype (float32 for half-precision inputs). The values are not checked against
        ``[0, data_range]``, as in scikit-image: that is the caller's duty. Non-finite input
        gives a non-finite result.

    Raises:
        TypeError: an input is not a floating-point tensor, the dtypes differ, or an option is
            of the wrong type (a bool where a number is expected, a float ``win_size``...).
        ValueError: bad or empty shapes, images smaller than the window, an even or too small
            ``win_size``, a non-finite or non-positive ``data_range`` or ``sigma`` (or a
            ``sigma`` under 1/7 with ``gaussian_weights``, whose window is 1 pixel), a negative
            or non-finite ``K1``/``K2``, ``crop_border`` too large or negative, or
            ``y_channel=True`` with other than 3 channels.

    Example:
        >>> x = torch.rand(2, 3, 32, 32)
        >>> ssim(x, x)
        tensor([1., 1.])
    """
    sigma = _check_number("sigma", sigma)
    K1, K2 = _check_number("K1", K1, strict=False), _check_number("K2", K2, strict=False)
    _check_bool("gaussian_weights", gaussian_weights)
    _check_bool("use_sample_covariance", use_sample_covariance)
    if gaussian_weights:
        radius = int(3.5 * sigma + 0.5)  # scipy.ndimage's extent for truncate=3.5
        if radius < 1:
            raise ValueError(f"sigma={sigma} gives a {2 * radius + 1}x{2 * radius + 1} Gaussian "
                             "window: SSIM needs 3x3 or more (sigma >= 1/7)")
        if win_size is not None and win_size != 2 * radius + 1:
            raise ValueError(
                f"win_size={win_size!r} does not match the Gaussian window of sigma={sigma}, "
                f"which is {2 * radius + 1} wide; leave win_size=None with gaussian_weights"
            )
        win_size = 2 * radius + 1
    elif win_size is None:
        win_size = 7
    if _check_int("win_size", win_size, low=3) % 2 == 0:
        raise ValueError(f"win_size must be odd, got {win_size!r}")
    pred, target = _prepare(pred, target, data_range, crop_border, y_channel)
    H, W = pred.shape[-2:]
    if min(H, W) < win_size:
        layout = " (an (H, W, C) image? permute it to (C, H, W))" if W in (1, 3, 4) and \
            pred.shape[-3] > 4 else ""
        raise ValueError(
            f"images of size {H}x{W} (after crop_border={crop_border}) are smaller than the "
            f"{win_size}x{win_size} window{layout}; give larger images, or ssim a smaller odd "
            f"win_size (kd's SSIM losses use its default, 7)"
        )

    # Half-precision inputs are measured in float32: their steps of 0.004 would show in SSIM.
    dtype = pred.dtype if pred.dtype in (torch.float32, torch.float64) else torch.float32
    if gaussian_weights:
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
        weights = torch.exp(-0.5 * offsets**2 / sigma**2)
    else:
        weights = torch.ones(win_size, dtype=torch.float64)
    n = win_size * win_size
    cov_norm = n / (n - 1) if use_sample_covariance else 1.0
    C1, C2 = K1**2, K2**2  # the maps are divided by data_range

    planes_x = pred.reshape(-1, H, W).to(dtype)
    planes_y = target.reshape(-1, H, W).to(dtype)
    chunk = planes_x.shape[0]
    if pred.device.type == "cpu":
        chunk = max(1, _CPU_CHUNK_ELEMENTS // (H * W))
    per_plane = torch.cat([
        _ssim_planes(planes_x[i : i + chunk], planes_y[i : i + chunk], weights, cov_norm, C1, C2,
                     1 / data_range)
        for i in range(0, planes_x.shape[0], chunk)
    ])
    return per_plane.view(pred.shape[:-2]).mean(dim=-1)

