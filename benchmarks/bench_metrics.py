"""Speed of metrics.ssim / metrics.psnr against what users would pick instead, in one run.

    pip install -e ".[bench]" && python benchmarks/bench_metrics.py

Per-image times on 16 RGB 256x256 photographs (float32), for SSIM with scikit-image's default
7x7 box window and with Wang et al.'s 11x11 Gaussian window, and for PSNR: ours eager and
compiled (``torch.compile(..., fullgraph=True)``), scikit-image, torchmetrics, kornia and
pytorch-msssim, each where it offers the convention. Every implementation runs once per round,
the rounds interleaved; each row prints the median and the min-max over the rounds, the largest
difference from scikit-image, and the speed-up of ours (compiled) over it. Then the cost of
compiling, SSIM forward + backward (the training loss), and one 3x2160x3840 pair (time and peak
memory, in a fresh subprocess).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from skimage import data, transform
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from timing import interleaved  # noqa: E402

import metrics  # noqa: E402

WANG = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}


def photo_batch(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n resized scikit-image photographs, and noisy copies of them (float32)."""
    g = torch.Generator().manual_seed(0)
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    imgs = [transform.resize(photos[i % 4], (size, size), anti_aliasing=True) for i in range(n)]
    sharp = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().contiguous()
    noisy = (sharp + 0.05 * torch.randn(sharp.shape, generator=g)).clamp(0, 1)
    return noisy, sharp


def peers(pred: torch.Tensor, target: torch.Tensor) -> dict[str, dict[str, object]]:
    """{convention: {implementation: call}} for every implementation that is installed."""
    p_np, t_np = pred.permute(0, 2, 3, 1).numpy(), target.permute(0, 2, 3, 1).numpy()
    box = {"scikit-image": lambda: [structural_similarity(t, p, channel_axis=-1, data_range=1.0)
                                    for p, t in zip(p_np, t_np)]}
    wang = {"scikit-image": lambda: [structural_similarity(t, p, channel_axis=-1, data_range=1.0,
                                                           **WANG) for p, t in zip(p_np, t_np)]}
    psnr = {"scikit-image": lambda: [peak_signal_noise_ratio(t, p, data_range=1.0)
                                     for p, t in zip(p_np, t_np)]}
    try:
        from torchmetrics.functional.image import peak_signal_noise_ratio as tm_psnr
        from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim
    except ImportError:
        print("torchmetrics not installed: skipped")
    else:
        box["torchmetrics"] = lambda: tm_ssim(pred, target, gaussian_kernel=False, kernel_size=7,
                                              data_range=1.0, reduction="none")
        wang["torchmetrics"] = lambda: tm_ssim(pred, target, data_range=1.0, reduction="none")
        psnr["torchmetrics"] = lambda: tm_psnr(pred, target, data_range=1.0, reduction="none",
                                               dim=(1, 2, 3))
    try:
        import kornia
    except ImportError:
        print("kornia not installed: skipped")
    else:
        wang["kornia"] = lambda: kornia.metrics.ssim(pred, target, 11).mean((1, 2, 3))
        psnr["kornia"] = lambda: kornia.metrics.psnr(pred, target, 1.0)
    try:
        import pytorch_msssim
    except ImportError:
        print("pytorch-msssim not installed: skipped")
    else:
        wang["pytorch-msssim"] = lambda: pytorch_msssim.ssim(pred, target, data_range=1.0,
                                                             size_average=False)
    return {"ssim, scikit-image's 7x7 box": box, "ssim, Wang's 11x11 Gaussian": wang,
            "psnr": psnr}


def as_list(values: object) -> list[float] | None:
    """Per-image values as floats; None for a peer that returns one value for the batch."""
    if isinstance(values, torch.Tensor):
        return values.tolist() if values.ndim else None
    return [float(v) for v in values]


def per_image_rows(rounds: int) -> None:
    pred, target = photo_batch(16, 256)
    n = len(pred)
    ours = {"ssim, scikit-image's 7x7 box": (metrics.ssim, {}),
            "ssim, Wang's 11x11 Gaussian": (metrics.ssim, WANG), "psnr": (metrics.psnr, {})}
    for convention, calls in peers(pred, target).items():
        fn, kw = ours[convention]
        compiled = torch.compile(fn, fullgraph=True)
        start = time.perf_counter()
        compiled(pred, target, **kw)
        compile_s = time.perf_counter() - start
        calls = {"ours": lambda fn=fn, kw=kw: fn(pred, target, **kw),
                 "ours, compiled": lambda c=compiled, kw=kw: c(pred, target, **kw), **calls}
        reference = as_list(calls["scikit-image"]())
        times = interleaved(calls, rounds=rounds)
        sk = np.median(times["scikit-image"])
        print(f"{convention} (compiled in {compile_s:.0f} s), ms per image over {rounds} "
              "interleaved rounds:")
        for name, seconds in times.items():
            values = as_list(calls[name]())
            diff = ("n/a (one value per batch)" if values is None else
                    f"{max(abs(a - b) for a, b in zip(values, reference)):.1e}")
            med, lo, hi = (1e3 * v / n for v in (np.median(seconds), min(seconds), max(seconds)))
            speed = sk / np.median(seconds)
            print(f"  {name:16s} {med:7.3f}  ({lo:6.3f}-{hi:6.3f})   {speed:5.1f}x scikit-image's "
                  f"speed   max |diff| from scikit-image {diff}")


def training_loss_row(rounds: int) -> None:
    """SSIM forward + backward, as a loss, eager and compiled."""
    pred, target = photo_batch(16, 256)
    pred = pred.requires_grad_()

    def step(fn) -> None:
        pred.grad = None
        (1 - fn(pred, target).mean()).backward()

    compiled = torch.compile(metrics.ssim, fullgraph=True)
    step(compiled)
    times = interleaved({"eager": lambda: step(metrics.ssim), "compiled": lambda: step(compiled)},
                        rounds=rounds)
    print("ssim forward + backward (a training loss), ms per image: " + ", ".join(
        f"{k} {1e3 * np.median(v) / 16:.2f} ({1e3 * min(v) / 16:.2f}-{1e3 * max(v) / 16:.2f})"
        for k, v in times.items()))


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (7)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}; 16 x 3 x 256 x 256 float32")
    per_image_rows(args.rounds)
    training_loss_row(args.rounds)
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
