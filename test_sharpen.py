"""Tests for sharpen-kd: metrics.py, sharpen.py and kd.py. CPU-only and offline; CUDA tests skip
where no GPU is present. References: scikit-image for the metrics, float64 gradcheck for the
gradients, hand-computed values for kernels."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage import transform
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import metrics

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parent
WANG = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def photo(name: str, height: int, width: int) -> torch.Tensor:
    """One of scikit-image's bundled colour photographs as a (3, H, W) float64 tensor."""
    img = transform.resize(getattr(skdata, name)(), (height, width), anti_aliasing=True)
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


def noisy(img: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return img + std * torch.randn(img.shape, generator=g, dtype=img.dtype)


def sk_ssim(pred: torch.Tensor, target: torch.Tensor, **kw) -> list[float]:
    """scikit-image's SSIM of each image of a (B, C, H, W) batch, computed in float64."""
    return [
        structural_similarity(t.double().permute(1, 2, 0).numpy(),
                              p.double().permute(1, 2, 0).numpy(), channel_axis=-1, **kw)
        for p, t in zip(pred, target)
    ]


def sk_psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float) -> list[float]:
    return [peak_signal_noise_ratio(t.double().numpy(), p.double().numpy(), data_range=data_range)
            for p, t in zip(pred, target)]


def metric_cases() -> list[tuple[str, torch.Tensor, torch.Tensor, float]]:
    """(name, pred, target, data_range): random and real images, odd and window-sized shapes,
    C = 1 and 3, data_range 1 and 255, and a large constant offset."""
    g = torch.Generator().manual_seed(1)
    rand = torch.rand(2, 3, 33, 47, generator=g, dtype=torch.float64)
    gray = torch.rand(3, 1, 24, 17, generator=g, dtype=torch.float64)
    tiny = torch.rand(2, 3, 11, 11, generator=g, dtype=torch.float64)
    photos = torch.stack([photo("astronaut", 96, 131), photo("coffee", 96, 131)])
    offset = 200 + 10 * torch.rand(1, 3, 40, 40, generator=g, dtype=torch.float64)
    return [
        ("random", noisy(rand, 0.1).clamp(0, 1), rand, 1.0),
        ("gray", noisy(gray, 0.2).clamp(0, 1), gray, 1.0),
        ("window-sized", torch.rand(tiny.shape, generator=g, dtype=torch.float64), tiny, 1.0),
        ("photos", noisy(photos, 0.03).clamp(0, 1), photos, 1.0),
        ("photos-255", (noisy(photos, 0.05) * 255).clamp(0, 255), photos * 255, 255.0),
        ("offset-255", noisy(offset, 1.0), offset, 255.0),
    ]


CASES = metric_cases()


# ---------------------------------------------------------------------------------------------
# metrics.py
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("convention", [{}, WANG], ids=["skimage", "wang"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-6)])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_ssim_equals_scikit_image(case, dtype, tol, convention):
    _, pred, target, data_range = case
    pred, target = pred.to(dtype), target.to(dtype)
    ours = metrics.ssim(pred, target, data_range=data_range, **convention)
    ref = sk_ssim(pred, target, data_range=data_range, **convention)
    assert ours.shape == (pred.shape[0],) and ours.dtype == dtype
    np.testing.assert_allclose(ours.double().numpy(), ref, rtol=0, atol=tol)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_psnr_equals_scikit_image(case, dtype, tol):
    _, pred, target, data_range = case
    pred, target = pred.to(dtype), target.to(dtype)
    ours = metrics.psnr(pred, target, data_range=data_range)
    assert ours.shape == (pred.shape[0],) and ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), sk_psnr(pred, target, data_range), rtol=0, atol=tol)


def test_single_image_gives_a_scalar_and_identical_images_are_perfect():
    x = photo("chelsea", 32, 40).float()
    assert metrics.ssim(x, x).shape == () and metrics.ssim(x, x).item() == pytest.approx(1.0)
    assert metrics.psnr(x, x).shape == () and metrics.psnr(x, x).item() == float("inf")


def test_ssim_win_size_and_constants_follow_scikit_image():
    _, pred, target, _ = CASES[3]
    kw = {"win_size": 9, "K1": 0.02, "K2": 0.05, "use_sample_covariance": False}
    np.testing.assert_allclose(metrics.ssim(pred, target, **kw).numpy(),
                               sk_ssim(pred, target, data_range=1.0, **kw), atol=1e-10)
    wide = {"gaussian_weights": True, "sigma": 2.0}
    np.testing.assert_allclose(metrics.ssim(pred, target, **wide).numpy(),
                               sk_ssim(pred, target, data_range=1.0, **wide), atol=1e-10)


def test_rgb_to_y_matches_matlab_rgb2ycbcr_by_hand():
    img = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 1.0]])
    y = metrics.rgb_to_y(img.view(3, 1, 4) * 255, data_range=255).flatten()
    # white 235, black 16, pure green 16 + 128.553, pure blue 16 + 24.966
    np.testing.assert_allclose(y.numpy(), [235.0, 16.0, 144.553, 40.966], atol=1e-4)


def basicsr_reference(pred: np.ndarray, target: np.ndarray, crop: int, y: bool):
    """BasicSR's calculate_psnr / calculate_ssim, rewritten in numpy from their published
    formulas: (H, W, 3) RGB in [0, 255], border crop, optional BT.601 Y, 11x11 Gaussian SSIM
    with population covariance over the 'valid' region."""
    from scipy.signal import correlate2d

    def prepare(img):
        img = img[crop:img.shape[0] - crop, crop:img.shape[1] - crop] if crop else img
        if y:
            img = (img @ np.array([65.481, 128.553, 24.966]) / 255.0 + 16.0)[..., None]
        return img

    p, t = prepare(pred), prepare(target)
    psnr = 10 * np.log10(255.0**2 / np.mean((p - t) ** 2))
    g = np.exp(-0.5 * (np.arange(11) - 5) ** 2 / 1.5**2)
    win = np.outer(g, g) / np.outer(g, g).sum()
    C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for c in range(p.shape[-1]):
        a, b = p[..., c], t[..., c]
        f = lambda m: correlate2d(m, win, mode="valid")  # noqa: E731
        ma, mb = f(a), f(b)
        va, vb, cab = f(a * a) - ma**2, f(b * b) - mb**2, f(a * b) - ma * mb
        s = (2 * ma * mb + C1) * (2 * cab + C2) / ((ma**2 + mb**2 + C1) * (va + vb + C2))
        values.append(s.mean())
    return psnr, float(np.mean(values))


@pytest.mark.parametrize("crop, y", [(0, False), (4, False), (4, True), (0, True)])
def test_basicsr_convention(crop, y):
    target = photo("astronaut", 48, 53) * 255
    pred = noisy(target, 6.0).clamp(0, 255).round()
    ref_psnr, ref_ssim = basicsr_reference(pred.permute(1, 2, 0).numpy(),
                                           target.permute(1, 2, 0).numpy(), crop, y)
    kw = {"data_range": 255, "crop_border": crop, "y_channel": y}
    assert metrics.psnr(pred, target, **kw).item() == pytest.approx(ref_psnr, abs=1e-9)
    assert metrics.ssim(pred, target, **WANG, **kw).item() == pytest.approx(ref_ssim, abs=1e-10)


@pytest.mark.parametrize("convention", [{}, WANG], ids=["skimage", "wang"])
def test_ssim_gradcheck_float64(convention):
    g = torch.Generator().manual_seed(3)
    target = torch.rand(2, 2, 12, 13, generator=g, dtype=torch.float64)
    pred = torch.rand(2, 2, 12, 13, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: metrics.ssim(p, target, **convention), (pred,))


def test_psnr_gradcheck_float64_and_ssim_loss_trains():
    g = torch.Generator().manual_seed(4)
    target = torch.rand(2, 3, 9, 9, generator=g, dtype=torch.float64)
    pred = torch.rand(2, 3, 9, 9, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: metrics.psnr(p, target), (pred,))
    pred32 = torch.rand(2, 3, 16, 16, generator=g).requires_grad_()
    loss = 1 - metrics.ssim(pred32, target.float().repeat(1, 1, 2, 2)[..., :16, :16]).mean()
    loss.backward()
    assert pred32.grad is not None and pred32.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_gives_non_finite_result(bad):
    target = torch.rand(2, 3, 16, 16)
    pred = target.clone()
    pred[1, 0, 5, 5] = bad
    assert torch.isfinite(metrics.ssim(pred, target)).tolist() == [True, False]
    assert torch.isfinite(metrics.ssim(pred, target, **WANG)).tolist() == [True, False]
    assert not torch.isfinite(metrics.psnr(pred, target)[1])


def test_metrics_py_is_vendorable_alone(tmp_path):
    shutil.copy(ROOT / "metrics.py", tmp_path / "metrics.py")
    code = ("import torch, metrics; x = torch.rand(2, 3, 16, 16); "
            "print(metrics.ssim(x, x).tolist(), metrics.psnr(x, x * 0.5).shape)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env={"PYTHONPATH": "", "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1.0, 1.0] torch.Size([2])"


X = torch.rand(1, 3, 16, 16)


@pytest.mark.parametrize("fn", [metrics.ssim, metrics.psnr])
@pytest.mark.parametrize("pred, target, kw, error, match", [
    ("not a tensor", X, {}, TypeError, "pred must be a torch.Tensor, got str"),
    (X, X.numpy(), {}, TypeError, "target must be a torch.Tensor, got ndarray"),
    ((X * 255).to(torch.uint8), X, {}, TypeError, r"floating-point tensor, got torch.uint8.*/ 255"),
    (X, X > 0.5, {}, TypeError, "target must be a floating-point tensor, got torch.bool"),
    (X, X.double(), {}, TypeError, "same dtype, got torch.float32 and torch.float64"),
    (X[0, 0], X[0, 0], {}, ValueError, r"\(C, H, W\) or \(B, C, H, W\), got shape \(16, 16\)"),
    (X, X[0], {}, ValueError, r"same shape, got \(1, 3, 16, 16\) and \(3, 16, 16\)"),
    (X, X, {"data_range": 0}, ValueError, "data_range must be a positive number, got 0"),
    (X, X, {"data_range": -1.0}, ValueError, "data_range must be a positive number, got -1.0"),
    (X, X, {"crop_border": -1}, ValueError, "crop_border must be a non-negative int, got -1"),
    (X, X, {"crop_border": 8}, ValueError, "crop_border=8 leaves no pixels of images of size"),
    (X[:, :2], X[:, :2], {"y_channel": True}, ValueError, "y_channel=True needs 3 .* channels"),
])
def test_bad_input_is_rejected_with_a_clear_message(fn, pred, target, kw, error, match):
    with pytest.raises(error, match=match):
        fn(pred, target, **kw)


@pytest.mark.parametrize("kw, match", [
    ({"win_size": 4}, "win_size must be an odd int >= 3, got 4"),
    ({"win_size": 1}, "win_size must be an odd int >= 3, got 1"),
    ({"win_size": 7.0}, "win_size must be an odd int >= 3, got 7.0"),
    ({"win_size": 17}, r"images of size 16x16 .* smaller than the 17x17 window"),
    ({"crop_border": 5}, r"images of size 6x6 \(after crop_border=5\) are smaller than the 7x7"),
    ({"sigma": -1.5, "gaussian_weights": True}, "sigma must be a positive number, got -1.5"),
    ({"sigma": 0}, "sigma must be a positive number, got 0"),
    ({"K1": -0.01}, "K1 must be a non-negative number, got -0.01"),
    ({"K2": "0.03"}, "K2 must be a non-negative number, got '0.03'"),
    ({"gaussian_weights": True, "win_size": 7}, "does not match the Gaussian window"),
    ({"gaussian_weights": True, "sigma": 3.0}, "smaller than the 23x23 window"),
])
def test_bad_ssim_options_are_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        metrics.ssim(X, X, **kw)


def test_rgb_to_y_rejects_bad_input():
    with pytest.raises(TypeError, match="img must be a floating-point tensor, got torch.int64"):
        metrics.rgb_to_y(torch.zeros(3, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"or \(B, 3, H, W\), got shape \(1, 4, 2, 2\)"):
        metrics.rgb_to_y(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="data_range must be a positive number, got 0"):
        metrics.rgb_to_y(torch.zeros(3, 2, 2), data_range=0)


@cuda
@pytest.mark.parametrize("convention", [{}, WANG], ids=["skimage", "wang"])
def test_cuda_matches_cpu_float64_whatever_tf32(convention):
    _, pred, target, _ = CASES[3]
    ref = metrics.ssim(pred, target, **convention)
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        for tf32 in (True, False):
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
            got = metrics.ssim(pred.float().cuda(), target.float().cuda(), **convention)
            assert got.device.type == "cuda"
            np.testing.assert_allclose(got.cpu().double().numpy(), ref.numpy(), atol=1e-6)
            got64 = metrics.ssim(pred.cuda(), target.cuda(), **convention)
            np.testing.assert_allclose(got64.cpu().numpy(), ref.numpy(), atol=1e-10)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
    np.testing.assert_allclose(metrics.psnr(pred.cuda(), target.cuda()).cpu().numpy(),
                               metrics.psnr(pred, target).numpy(), atol=1e-9)
