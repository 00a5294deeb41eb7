"""Speed of sharpen.py on this machine against what users would pick instead, in one run.

    pip install -e ".[bench]" && python benchmarks/bench_sharpen.py [--threads 2]

1. Gaussian blur, sigma 1.5, 64 RGB 256x256 images: ``sharpen.gaussian_blur`` (batched,
   float32) against OpenCV's ``GaussianBlur`` (float32, one image at a time: the limit anchor),
   kornia's ``gaussian_blur2d`` (batched) and Pillow's ``GaussianBlur`` (8-bit box
   approximation); interleaved rounds, median and min-max per image, and the largest difference
   from OpenCV.
2. The networks: milliseconds per megapixel and frames per second at 1280x720 and 1920x1080 for
   the teacher and the student, float32 and, where ``sharpen.fast_bf16`` says the hardware
   computes it natively, bf16, with input and weights channels_last (as ``sharpen()`` runs
   them) against weights left as built (the input alone channels_last); the student at 720p
   under ``torch.compile`` (inductor, frozen weights), for video, with its compile time; with
   torchao installed, the student quantized to int8 (torchao's PT2E flow, its x86 inductor
   quantizer: static, weights per channel, calibrated on three blurred photographs), compiled,
   interleaved with the compiled float32 and bf16 ones, and the PSNR between its output and
   float32's at 720p; the PSNR between the bf16 and float32 outputs of trained models (the
   shipped weights, when present) on a photograph.
3. ``sharpen()`` on a 4000x3000 photo with the student: wall time and peak memory in fresh
   processes, with the overlap derived from the receptive field against the former fixed 128;
   ``estimate_levels`` with the level estimator on it, as the CLI runs it (precision "auto")
   against float32; and the CLI end to end (load PNG, estimate the levels, sharpen, save PNG).
"""

from __future__ import annotations

import argparse
import copy
import functools
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
from torch._inductor import config as inductor_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from timing import interleaved, machine  # noqa: E402

import metrics  # noqa: E402
import sharpen  # noqa: E402


def spread(seconds: list[float], per: float = 1.0) -> str:
    med, lo, hi = (1e3 * v / per for v in (np.median(seconds), min(seconds), max(seconds)))
    return f"{med:8.3f} ms ({lo:.3f}-{hi:.3f})"


def bench_blur(rounds: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = sharpen.dead_leaves(64, 256, generator=g, supersample=2, texture=0.5)
    u8 = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    pil = [Image.fromarray(im) for im in u8]
    hwc = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
    calls = {"sharpen.gaussian_blur": lambda: sharpen.gaussian_blur(x, 1.5)}
    reference = None
    try:
        import cv2
    except ImportError:
        print("opencv-python-headless not installed: skipped")
    else:
        cv2.setNumThreads(torch.get_num_threads())

        def opencv():
            return [cv2.GaussianBlur(im, (13, 13), 1.5, borderType=cv2.BORDER_REFLECT_101)
                    for im in hwc]

        calls["OpenCV (float32)"] = opencv
        reference = torch.from_numpy(np.stack(opencv())).permute(0, 3, 1, 2)
    try:
        import kornia
    except ImportError:
        print("kornia not installed: skipped")
    else:
        calls["kornia"] = lambda: kornia.filters.gaussian_blur2d(x, (13, 13), (1.5, 1.5),
                                                                 border_type="reflect")
    calls["Pillow (8-bit boxes)"] = lambda: [im.filter(ImageFilter.GaussianBlur(1.5))
                                             for im in pil]
    times = interleaved(calls, rounds=rounds)
    print(f"1. Gaussian blur, sigma 1.5, 64 RGB 256x256 images, per image, {rounds} rounds "
          "(median, min-max):")
    for name, seconds in times.items():
        line = f"   {name:22s} {spread(seconds, 64)}"
        if reference is not None and name in ("sharpen.gaussian_blur", "kornia"):
            diff = (torch.as_tensor(calls[name]()) - reference).abs().max().item()
            line += f"   max |diff| from OpenCV {diff:.1e}"
        print(line)


def trained(name: str) -> torch.nn.Module:
    path = ROOT / "weights" / f"{name}.pt"
    return sharpen.load_model(path) if path.is_file() else getattr(sharpen, name)()


def bench_models(rounds: int) -> None:
    print("2. Forward passes (eval, no_grad, channels_last input), median of rounds:")
    models = {name: trained(name) for name in ("teacher", "student")}
    precisions = ["fp32"] + (["bf16"] if sharpen.fast_bf16() else [])
    for name, model in models.items():
        print(f"   {name}: {sharpen.count_params(model) / 1e6:.3f} M params, "
              f"{sharpen.count_macs(model, 1000, 1000) / 1e9:.1f} GMAC per megapixel")

    def run(model: torch.nn.Module, x: torch.Tensor, precision: str) -> None:
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            model(x)

    layouts = {"weights channels_last": torch.channels_last, "weights as built": None}
    for precision in precisions:
        for name, model in models.items():
            x = {(h, w): torch.rand(1, 3, h, w).contiguous(memory_format=torch.channels_last)
                 for h, w in ((512, 512), (720, 1280), (1080, 1920))}
            variants = {label: copy.deepcopy(model).to(memory_format=layout) if layout else model
                        for label, layout in layouts.items()}
            cells = {label: [] for label in layouts}
            for (h, w), image in x.items():  # the two layouts interleaved, round by round
                times = interleaved({label: functools.partial(run, m, image, precision)
                                     for label, m in variants.items()}, rounds=rounds)
                for label, seconds in times.items():
                    seconds = float(np.median(seconds))
                    cells[label].append(f"{1e3 * seconds / (h * w / 1e6):.0f} ms/MP" if h == 512
                                        else f"{h}p {1 / seconds:.2f} fps")
            for label, row in cells.items():
                print(f"   {name:8s} {precision}, {label:21s}: " + ", ".join(row))
    inductor_config.freezing = True  # weights folded into the compiled graph: inference only
    x = torch.rand(1, 3, 720, 1280).contiguous(memory_format=torch.channels_last)
    for precision in precisions:
        model = copy.deepcopy(models["student"]).eval().to(memory_format=torch.channels_last)
        compiled = torch.compile(model)
        start = time.perf_counter()
        run(compiled, x, precision)
        compile_s = time.perf_counter() - start
        times = interleaved({"compiled": functools.partial(run, compiled, x, precision),
                             "eager": functools.partial(run, model, x, precision)},
                            rounds=rounds)
        fps = {k: 1 / float(np.median(v)) for k, v in times.items()}
        print(f"   student  {precision}, torch.compile: 720p {fps['compiled']:.2f} fps against "
              f"{fps['eager']:.2f} eager (channels_last), {fps['compiled'] / fps['eager']:.2f}x; "
              f"compiling took {compile_s:.0f} s")
    bench_int8(models["student"], precisions, rounds=rounds)
    from skimage import data

    photo = torch.from_numpy(data.astronaut()[:256, :256]).permute(2, 0, 1).float() / 255
    blurred = sharpen.gaussian_blur(photo, 1.5)
    for name, model in models.items():
        fp32 = sharpen.sharpen(model, blurred, precision="fp32")
        bf16 = sharpen.sharpen(model, blurred, precision="bf16")
        print(f"   {name}: PSNR between its bf16 and float32 outputs on a 256x256 photo: "
              f"{metrics.psnr(bf16, fp32).item():.1f} dB")


def blurred_720p(name: str) -> torch.Tensor:
    """A scikit-image photograph resized to 1280x720 and blurred by sigma 1.5.

    Args:
        name: The photograph's function in ``skimage.data`` (a colour one).

    Returns:
        (1, 3, 720, 1280) float32, channels_last.
    """
    from skimage import data

    photo = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).float()[None] / 255
    photo = torch.nn.functional.interpolate(photo, size=(720, 1280), mode="bilinear")
    return sharpen.gaussian_blur(photo, 1.5).contiguous(memory_format=torch.channels_last)


def int8_student(student: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module | None:
    """The student quantized to int8 by torchao's PT2E flow and compiled.

    Static quantization by torchao's x86 inductor quantizer (weights per channel), calibrated on
    three blurred photographs at 720p apart from ``x``, compiled with frozen weights on ``x``.

    Args:
        student: The float32 model; a copy is quantized.
        x: ``(1, 3, H, W)``, the input it will be called on.

    Returns:
        The compiled int8 model, or None where torchao's PT2E API cannot be imported.
    """
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError:
        return None
    model = copy.deepcopy(student).eval().to(memory_format=torch.channels_last)
    with torch.no_grad(), inductor_config.patch(freezing=True):
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(torch.export.export(model, (x,)).module(), quantizer)
        for name in ("coffee", "chelsea", "rocket"):
            prepared(blurred_720p(name))
        int8 = torch.compile(convert_pt2e(prepared))
        int8(x)
    return int8


def bench_int8(student: torch.nn.Module, precisions: list[str], *, rounds: int) -> None:
    """Prints the student's 720p frames per second in int8 against compiled float32 and bf16.

    Args:
        student: The float32 model.
        precisions: "fp32", and "bf16" where native, compiled for comparison.
        rounds: Interleaved timed rounds.
    """
    x = blurred_720p("astronaut")
    start = time.perf_counter()
    try:
        int8 = int8_student(student, x)
    except Exception as e:  # torchao is tied to torch's versions: report, run the rest
        print(f"   int8 failed, skipped: {type(e).__name__}: {str(e)[:300]}")
        return
    if int8 is None:
        print("   torchao's PT2E quantization not importable (pip install torchao): int8 skipped")
        return
    quantize_s = time.perf_counter() - start
    compiled = torch.compile(copy.deepcopy(student).eval().to(memory_format=torch.channels_last))

    def run(precision: str) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16,
                                             enabled=precision == "bf16"):
            return int8(x) if precision == "int8" else compiled(x)

    outputs = {p: run(p).float() for p in ["int8", *precisions]}  # compiled once each
    times = interleaved({p: functools.partial(run, p) for p in outputs}, rounds=rounds)
    fps = {p: 1 / float(np.median(v)) for p, v in times.items()}
    others = ", ".join(f"{fps[p]:.2f} compiled {p}" for p in precisions)
    print(f"   student  int8, torch.compile: 720p {fps['int8']:.2f} fps against {others} "
          f"(quantized and compiled in {quantize_s:.0f} s); PSNR between its int8 and float32 "
          f"outputs on a blurred photo at 720p: "
          f"{metrics.psnr(outputs['int8'].clamp(0, 1), outputs['fp32'].clamp(0, 1)).item():.1f} dB")


SHARPEN_SCRIPT = """
import resource, sys, time, torch
sys.path.insert(0, {root!r})
import sharpen
torch.set_num_threads({threads})
model = sharpen.load_model({weights!r}) if {weights!r} else sharpen.student()
img = torch.rand(3, 3000, 4000)
sharpen.sharpen(model, img[:, :600, :600], overlap={overlap})  # load kernels first
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
sharpen.sharpen(model, img, overlap={overlap})
dt = time.perf_counter() - t
print(base / 2**20, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, dt)
"""


def bench_big(threads: int, runs: int) -> None:
    weights = str(ROOT / "weights" / "student.pt") if (ROOT / "weights" / "student.pt").is_file() \
        else ""
    print(f"3. sharpen() on a 4000x3000 photo with the student, fresh processes, {runs} runs "
          "(median, min-max):")
    for overlap in ("None", "128"):
        results = []
        for _ in range(runs):
            code = SHARPEN_SCRIPT.format(root=str(ROOT), threads=threads, weights=weights,
                                         overlap=overlap)
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True)
            results.append(list(map(float, r.stdout.split())))
        base, peak, seconds = (sorted(c) for c in zip(*results))
        what = "derived from the receptive field" if overlap == "None" else "128 (the former)"
        print(f"   overlap {what}: {np.median(seconds):.2f} s ({seconds[0]:.2f}-{seconds[-1]:.2f})"
              f", peak RSS {max(peak):.2f} GB (input alone: {max(base):.2f} GB)")
    levels_path = ROOT / "weights" / "levels.pt"
    estimator = (sharpen.load_model(levels_path) if levels_path.is_file()
                 else sharpen.level_estimator())
    img = torch.rand(1, 3, 3000, 4000)
    seconds = {"auto": [], "fp32": []}  # auto: bf16 where fast_bf16, as the CLI runs it
    for _ in range(runs):
        for precision, times in seconds.items():
            t = time.perf_counter()
            sharpen.estimate_levels(estimator, img, precision=precision)
            times.append(time.perf_counter() - t)
    (auto, fp32) = (np.median(t) for t in seconds.values())
    print(f"   estimate_levels (the CLI's default) on it, in this process, interleaved: "
          f"{auto:.2f} s ({min(seconds['auto']):.2f}-{max(seconds['auto']):.2f}) with "
          f"precision auto ({'bf16' if sharpen.fast_bf16() else 'float32'} here), {fp32:.2f} s "
          f"({min(seconds['fp32']):.2f}-{max(seconds['fp32']):.2f}) in float32: "
          f"{fp32 / auto:.2f}x")
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        small = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
        Image.fromarray(small).resize((4000, 3000), Image.BICUBIC).save(Path(tmp) / "big.png")
        cmd = [sys.executable, str(ROOT / "sharpen.py"), str(Path(tmp) / "big.png"),
               "--overwrite"] + (["--weights", weights] if weights else [])
        if not weights:
            sharpen.save_model(Path(tmp) / "student.pt", sharpen.student())
            cmd += ["--weights", str(Path(tmp) / "student.pt")]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        seconds = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"   CLI `python sharpen.py big.png` (load PNG, estimate, sharpen, save PNG): "
          f"{seconds:.1f} s, peak RSS of the largest child process {peak:.2f} GB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (7)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, {args.threads} threads, {cpu}, native bf16: "
          f"{sharpen.fast_bf16()}; {machine()}; load {os.getloadavg()}; GLIBC_TUNABLES "
          f"{os.environ.get('GLIBC_TUNABLES', 'unset')}")
    bench_blur(args.rounds)
    bench_models(max(3, args.rounds // 2))
    bench_big(args.threads, 3)


if __name__ == "__main__":
    main()
