"""Speed of metrics.ssim / metrics.psnr against scikit-image, measured in one run.

    python benchmarks/bench_metrics.py

Prints per-image times on 16 RGB 256x256 images (float32 and float64) for both SSIM conventions
and PSNR, with the speed-up over scikit-image on the same inputs, then the time and peak memory
of one 3x2160x3840 pair, measured in a fresh subprocess so that the peak belongs to that call.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage import data, transform
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from timing import wall_times  # noqa: E402

import metrics  # noqa: E402

WANG = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}


def best_of(fn, repeats: int = 5) -> float:
    """Smallest wall time of ``repeats`` calls, in seconds (after one warm-up call)."""
    return min(wall_times(fn, repeats=repeats))


def photo_batch(n: int, size: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """n crops of scikit-image's photographs, and noisy copies of them."""
    g = torch.Generator().manual_seed(0)
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    imgs = [transform.resize(photos[i % 4], (size, size), anti_aliasing=True) for i in range(n)]
    sharp = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).to(dtype).contiguous()
    noisy = (sharp + 0.05 * torch.randn(sharp.shape, generator=g, dtype=dtype)).clamp(0, 1)
    return noisy, sharp


def per_image_rows(dtype: torch.dtype) -> None:
    pred, target = photo_batch(16, 256, dtype)
    p_np = pred.permute(0, 2, 3, 1).numpy()
    t_np = target.permute(0, 2, 3, 1).numpy()
    n = pred.shape[0]
    cases = [
        ("ssim (skimage default)", lambda: metrics.ssim(pred, target),
         lambda: [structural_similarity(t, p, channel_axis=-1, data_range=1.0)
                  for p, t in zip(p_np, t_np)]),
        ("ssim (Wang, Gaussian 11)", lambda: metrics.ssim(pred, target, **WANG),
         lambda: [structural_similarity(t, p, channel_axis=-1, data_range=1.0, **WANG)
                  for p, t in zip(p_np, t_np)]),
        ("psnr", lambda: metrics.psnr(pred, target),
         lambda: [peak_signal_noise_ratio(t, p, data_range=1.0) for p, t in zip(p_np, t_np)]),
    ]
    for name, ours, theirs in cases:
        t_ours, t_sk = best_of(ours) / n * 1e3, best_of(theirs) / n * 1e3
        print(f"{name:26s} {str(dtype):14s} ours {t_ours:7.3f} ms/img   scikit-image "
              f"{t_sk:7.3f} ms/img   speed-up {t_sk / t_ours:5.1f}x")


def four_k() -> None:
    """Child process: one 4K pair; prints seconds and the peak-RSS growth of the ssim call."""
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 2160, 3840, generator=g)
    pred = (target + 0.05 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    metrics.ssim(pred[:, :64, :64], target[:, :64, :64])  # load kernels before measuring
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    metrics.ssim(pred, target)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{seconds} {(peak - base) / 2**20} {peak / 2**20}")  # ru_maxrss is in KiB


def main() -> None:
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 16 x 3 x 256 x 256")
    for dtype in (torch.float32, torch.float64):
        per_image_rows(dtype)
    out = subprocess.run([sys.executable, __file__, "--4k"], capture_output=True, text=True,
                         check=True).stdout.split()
    seconds, grown, peak = map(float, out)
    print(f"4K pair (3 x 2160 x 3840, float32): ssim {seconds:.2f} s, peak memory of the call "
          f"{grown:.2f} GiB (process peak {peak:.2f} GiB, inputs 0.19 GiB included)")


if __name__ == "__main__":
    if sys.argv[1:] == ["--4k"]:
        torch.set_num_threads(2)
        four_k()
    else:
        main()
