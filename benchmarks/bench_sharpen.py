"""Benchmark sharpen.py on this machine: blur speed, model speed, tiled-inference memory.

Run from the repository root:  python benchmarks/bench_sharpen.py [--threads 2]

Prints three tables:
1. batched ``gaussian_blur`` (64 RGB 256x256 dead-leaves images, float32) against Pillow's
   ``ImageFilter.GaussianBlur`` applied image by image (uint8), in ms per image;
2. teacher vs student forward time per image at 256x256, fp32 NCHW and channels_last + bf16
   autocast, batch 1 and 4, with parameters and convolution MACs;
3. peak resident memory of ``sharpen(student(), 3x3000x4000 image)``, measured in a fresh
   subprocess with ``resource.getrusage`` (ru_maxrss), next to the memory of the input alone.
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from timing import wall_times  # noqa: E402

import sharpen  # noqa: E402


def best_ms(fn, repeats):
    """Best wall time of ``fn()`` over ``repeats`` runs (after one warm-up), in ms."""
    return 1e3 * min(wall_times(fn, repeats=repeats))


def bench_blur(repeats):
    g = torch.Generator().manual_seed(0)
    x = sharpen.dead_leaves(64, 256, generator=g)
    u8 = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    pil = [Image.fromarray(im) for im in u8]
    t_torch = best_ms(lambda: sharpen.gaussian_blur(x, 1.5), repeats) / 64
    t_pil = best_ms(lambda: [im.filter(ImageFilter.GaussianBlur(1.5)) for im in pil], repeats) / 64
    print("1. Gaussian blur, sigma 1.5, 64 RGB 256x256 images, per image")
    print(f"   sharpen.gaussian_blur (batched, float32): {t_torch:7.3f} ms")
    print(f"   Pillow GaussianBlur (one by one, uint8):  {t_pil:7.3f} ms")
    print(f"   speed-up: {t_pil / t_torch:.1f}x (target >= 10x)")


def bench_models(repeats):
    print("2. Forward pass per image at 256x256 (eval, no_grad)")
    models = {"teacher": sharpen.teacher().eval(), "student": sharpen.student().eval()}
    for name, m in models.items():
        params, macs = sharpen.count_params(m), sharpen.count_macs(m, 256, 256)
        print(f"   {name}: {params / 1e6:.3f} M params, {macs / 1e9:.2f} GMAC")
    print(f"   {'setting':32s} {'teacher ms':>10s} {'student ms':>10s} {'ratio':>6s}")
    for batch in (1, 4):
        for layout in ("fp32 NCHW", "channels_last + bf16 autocast"):
            x = torch.rand(batch, 3, 256, 256)
            times = {}
            for name, m in models.items():
                if layout == "fp32 NCHW":
                    m, xi = m.to(memory_format=torch.contiguous_format), x

                    def run(m=m, xi=xi):
                        with torch.no_grad():
                            m(xi)
                else:
                    m, xi = m.to(memory_format=torch.channels_last), x.to(
                        memory_format=torch.channels_last
                    )

                    def run(m=m, xi=xi):
                        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                            m(xi)

                times[name] = best_ms(run, repeats) / batch
            t, s = times["teacher"], times["student"]
            print(f"   {layout + f', batch {batch}':32s} {t:10.1f} {s:10.1f} {t / s:5.1f}x")


MEMORY_SCRIPT = """
import resource, sys, time, torch
sys.path.insert(0, {root!r})
import sharpen
torch.set_num_threads({threads})
model = sharpen.student()
img = torch.rand(3, 3000, 4000)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
out = sharpen.sharpen(model, img)
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(base / 2**20, peak / 2**20, dt)
"""


def bench_memory(threads):
    code = MEMORY_SCRIPT.format(root=str(ROOT), threads=threads)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    base, peak, seconds = map(float, r.stdout.split())
    print("3. Peak memory at 4000x3000 with student(), tile 512, overlap 128 (fresh processes)")
    print(f"   sharpen() on a float32 tensor: peak RSS {peak:.2f} GB (before the call, with the "
          f"input: {base:.2f} GB); {seconds:.1f} s (target < 2 GB)")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        small = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
        Image.fromarray(small).resize((4000, 3000), Image.BICUBIC).save(Path(tmp) / "big.png")
        sharpen.save_model(Path(tmp) / "student.pt", sharpen.student())
        cmd = [sys.executable, str(ROOT / "sharpen.py"), str(Path(tmp) / "big.png"),
               "--weights", str(Path(tmp) / "student.pt")]  # fmt: skip
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        seconds = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"   CLI `python sharpen.py big.png` (load PNG, sharpen, save PNG): peak RSS of the "
          f"largest child process {peak:.2f} GB; {seconds:.1f} s")  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs, best kept (5)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, {args.threads} threads, {cpu}; load {os.getloadavg()}")
    bench_blur(args.repeats)
    bench_models(args.repeats)
    bench_memory(args.threads)


if __name__ == "__main__":
    main()
