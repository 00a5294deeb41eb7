"""The README's before/after figure, made by the command line itself.

    pip install -e ".[eval]" && python docs/cli_examples.py [--weights MODEL.pt]

Writes seven photos to docs/examples/ (native-resolution crops of scikit-image's photographs:
one as it is, one softened by a Gaussian blur of sigma 1.2, one blurred, noisy and saved as a
JPEG of quality 60, one with a camera's grain (noise the same in every channel); and a crop of
``data/raccoon.png``, which is soft at the pixel level, as it is and noisy and saved as a JPEG
of quality 60; and one shaken by a 15-pixel camera-shake path, whose kernel it also writes as
``shaken_psf.png``), runs ``python sharpen.py`` on them exactly as a user would, and puts each
input beside its output, with the PSNR against the untouched crop, in docs/cli_examples.png.
For a conditioned model, a third column: ``python sharpen.py`` told what was done to each photo
(``--blur``, ``--noise``, ``--jpeg``, and for a ``conditioned=4`` model ``--gaussian``; the
shaken one ``--kernel shaken_psf.png``, for a model given an estimate).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from skimage import data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import metrics  # noqa: E402
import sharpen  # noqa: E402


def crop(img, top: int, left: int, size: int = 320) -> torch.Tensor:
    return torch.from_numpy(img[top : top + size, left : left + size]).permute(2, 0, 1) / 255.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="model file (default: the CLI's, the shipped student)")
    args = parser.parse_args(argv)
    try:
        model = sharpen.load_model(args.weights or ROOT / "weights" / "student.pt")
    except (OSError, ValueError) as e:
        parser.error(f"--weights: {e}")
    if isinstance(model, sharpen.LevelNet):
        parser.error(f"--weights {args.weights} is a level estimator, not a sharpening model")
    out = ROOT / "docs" / "examples"
    out.mkdir(exist_ok=True)
    g = torch.Generator().manual_seed(0)
    originals = {"sharp": crop(data.coffee(), 40, 140),
                 "soft": crop(data.astronaut(), 20, 100),
                 "noisy_jpeg": crop(data.chelsea(), 0, 60),
                 "grainy": crop(data.rocket(), 60, 200)}
    raccoon = sharpen.load_image(ROOT / "data" / "raccoon.png").permute(1, 2, 0).numpy() * 255
    full_size = crop(raccoon, 280, 440)
    originals |= {"full_size": full_size, "full_size_noisy_jpeg": full_size,
                  "shaken": crop(data.stereo_motorcycle()[0], 100, 200)}
    shake = sharpen.random_motion_kernel(15, generator=torch.Generator().manual_seed(4))
    psf = out / "shaken_psf.png"
    sharpen.save_image((shake / shake.max()).expand(3, -1, -1), psf)
    inputs = {"sharp": originals["sharp"],
              "soft": sharpen.gaussian_blur(originals["soft"], 1.2),
              "noisy_jpeg": sharpen.add_noise(sharpen.gaussian_blur(originals["noisy_jpeg"], 1.0),
                                              0.02, generator=g),
              "grainy": originals["grainy"] + 0.02 * torch.randn(
                  (1, 320, 320), generator=torch.Generator().manual_seed(1)),
              "full_size": full_size,
              "full_size_noisy_jpeg": sharpen.add_noise(full_size, 0.02, generator=g),
              "shaken": sharpen.blur(originals["shaken"], shake)}
    files = []
    for name, img in inputs.items():
        img = img.clamp(0, 1)
        path = out / (f"{name}.jpg" if name.endswith("noisy_jpeg") else f"{name}.png")
        arr = (img * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(path, **({"quality": 60} if path.suffix == ".jpg" else {}))
        files.append(str(path))
    told = {"sharp": ["--blur", "0"], "soft": ["--blur", "1.2", "--gaussian"],
            "noisy_jpeg": ["--blur", "1.0", "--gaussian", "--noise", "0.02", "--jpeg", "60"],
            "grainy": ["--blur", "0", "--noise", "0.02"],
            "full_size": ["--blur", "0"],
            "full_size_noisy_jpeg": ["--blur", "0", "--noise", "0.02", "--jpeg", "60"],
            "shaken": ["--kernel", str(psf)]}
    weights = ["--weights", args.weights] if args.weights else []
    cmds = [[*files, "--overwrite", *weights]]
    conditioned = getattr(model, "conditioned", 0)
    if conditioned != 4:  # only such a model is told the blur's shape
        told = {name: [a for a in flags if a != "--gaussian"] for name, flags in told.items()}
    if conditioned < 2:  # only a model given an estimate is told a kernel
        told["shaken"] = ["--blur", f"{float(sharpen.kernel_sigma(shake)):.2f}"]
    if conditioned:
        cmds += [[f, "-o", str(out / "told"), "--overwrite", *weights, *told[name]]
                 for name, f in zip(told, files)]
    for cmd in cmds:
        print("+ python sharpen.py " + " ".join(cmd))
        subprocess.run([sys.executable, str(ROOT / "sharpen.py"), *cmd], check=True)

    label_h, size = 16, 320
    columns = 3 if conditioned else 2
    canvas = Image.new("RGB", (columns * size, len(files) * (size + label_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (name, path) in enumerate(zip(originals, files)):
        stem = Path(path).stem + "_sharp.png"
        shown = [("input", sharpen.load_image(path)),
                 ("python sharpen.py", sharpen.load_image(Path(path).with_name(stem)))]
        if conditioned:
            flags = " ".join(told[name]).replace(str(psf), psf.name)
            shown.append((flags, sharpen.load_image(out / "told" / stem)))
        reference = (originals[name] * 255).round() / 255
        for c, (what, img) in enumerate(shown):
            top = r * (size + label_h)
            arr = (img * 255).round().byte().permute(1, 2, 0).numpy()
            canvas.paste(Image.fromarray(arr), (c * size, top + label_h))
            psnr = metrics.psnr(img, reference).item()
            score = "identical to the original" if psnr == float("inf") else f"{psnr:.2f} dB"
            label = f"{name}, {what}" if c == 0 else what
            draw.text((c * size + 3, top + 2), f"{label}: {score}", fill="black")
    sharpen.atomic_write(ROOT / "docs" / "cli_examples.png", lambda f: canvas.save(f, "PNG"))
    print("wrote docs/cli_examples.png")


if __name__ == "__main__":
    main()
