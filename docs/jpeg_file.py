"""The command line's default on JPEG files: the quality estimated, or read from the file.

    pip install -e ".[eval]" && python docs/jpeg_file.py [--scored]

``python sharpen.py photo.jpg`` tells the shipped student the levels that the level estimator
reads from the image, but the JPEG quality the file's quantization table gives
(``sharpen.jpeg_quality``) where that is lower: the estimate errs high by design. For the
validation photos (``--scored``: the scored sets, for reporting only), sharp and under a
Gaussian blur of sigma 1.5, saved as JPEG files of quality 30, 50, 75, 90 and 95 and read back,
this prints the quality read by the estimator and the student's mean gain in dB over the input
(worst image's in brackets), told the estimate alone and told the file's quality as the CLI
does; last, the means over all conditions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import metrics  # noqa: E402
import sharpen  # noqa: E402
import train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python docs/jpeg_file.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scored", action="store_true",
                   help="the scored photo sets instead of the validation photos")
    args = p.parse_args(argv)
    try:
        sets = train._docs_photo_sets(256, scored=args.scored)
    except ImportError as e:
        p.error(f'the photos need the eval extra, pip install -e ".[eval]" ({e})')
    student = sharpen.load_model(ROOT / "weights" / "student.pt")
    estimator = sharpen.load_model(ROOT / "weights" / "levels.pt")
    print("quality read by the estimator, and the student's mean gain (worst image's) told it "
          "| told the file's quality where lower, as the CLI does")
    means = {"estimated": [], "file": []}
    with tempfile.TemporaryDirectory() as folder:
        for set_name, photos in sets.items():
            for blur in (0.0, 1.5):
                soft = train._8bit(sharpen.gaussian_blur(photos, blur)) if blur else photos
                for quality in (30, 50, 75, 90, 95):
                    files = [Path(folder) / f"{i}.jpg" for i in range(len(soft))]
                    for img, file in zip(soft, files):
                        _save_jpeg(img, quality, file)
                    x = torch.stack([sharpen.load_image(f) for f in files])
                    read = sharpen.estimate_levels(estimator, x, precision="fp32")
                    saved = sharpen.jpeg_quality(files[0])  # every file's: one quality
                    told = sharpen.estimate_levels(estimator, x, quality=saved,
                                                   precision="fp32")  # as the CLI
                    base, cells = metrics.psnr(x, photos), []
                    for name, levels in (("estimated", read), ("file", told)):
                        y = sharpen.sharpen(student, x, precision="fp32", levels=levels)
                        gain = metrics.psnr(y, photos) - base
                        means[name].append(gain.mean().item())
                        cells.append(f"{gain.mean():+.2f} ({gain.min():+.2f})")
                    print(f"{set_name}, blur {blur}, JPEG {quality}: read "
                          f"{read[:, 2].mean():5.1f}, {cells[0]} | {cells[1]}", flush=True)
    print("mean gain: " + ", ".join(f"{name} {sum(g) / len(g):+.2f} dB"
                                    for name, g in means.items()))
    return 0


def _save_jpeg(img: torch.Tensor, quality: int, file: Path) -> None:
    """``img (3, H, W)`` in [0, 1], 8-bit, written to ``file`` as a JPEG of ``quality``, as
    ``sharpen.jpeg`` compresses (Pillow's default 4:2:0 chroma subsampling)."""
    from PIL import Image

    arr = (img * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(file, format="JPEG", quality=quality)


if __name__ == "__main__":
    sys.exit(main())
