"""The command line's default on JPEGs cropped off their 8x8 block grid.

    pip install -e ".[eval]" && python docs/jpeg_grid.py [--scored]

A photo saved as JPEG and then cropped by a few pixels keeps its compression, but its 8x8
block grid no longer starts at the image's corner, where the level estimator learnt to see it.
For the validation photos (``--scored``: the scored sets, for reporting only) saved as JPEG of
quality 30, 50, 75 and 90 and cropped by 0, 1, 3 and 6 rows and columns, this prints the JPEG
quality read, and the mean gain in dB over the input (worst image's in brackets) of the shipped
student told the levels read, as ``python sharpen.py photo.jpg`` runs it: once read as the
image comes, and once by ``sharpen.estimate_levels``, which finds the grid; last, each
reading's mean gain over the cropped ones. ``--estimator`` reads with another level estimator
(``train_levels.py``'s).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import metrics  # noqa: E402
import sharpen  # noqa: E402
import train  # noqa: E402


def _capped(levels: torch.Tensor) -> torch.Tensor:
    """``levels`` with the blur at most ``estimate_levels``'s ceiling, as the CLI tells it."""
    return torch.cat([levels[:, :1].clamp(max=sharpen._MAX_BLUR), levels[:, 1:]], 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python docs/jpeg_grid.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scored", action="store_true",
                   help="the scored photo sets instead of the validation photos")
    p.add_argument("--estimator", type=Path, default=ROOT / "weights" / "levels.pt",
                   metavar="LEVELS.pt", help="the level estimator (weights/levels.pt)")
    args = p.parse_args(argv)
    try:
        estimator = train._load_estimator("--estimator", args.estimator)
    except ValueError as e:
        p.error(str(e))
    try:
        sets = train._docs_photo_sets(256, scored=args.scored)
    except ImportError as e:
        p.error(f'the photos need the eval extra, pip install -e ".[eval]" ({e})')
    student = sharpen.load_model(ROOT / "weights" / "student.pt")
    as_it_comes = copy.deepcopy(estimator).eval().to(memory_format=torch.channels_last)
    readers = {"as it comes": lambda x: _capped(sharpen._read_levels(as_it_comes, x, 1024,
                                                                     amp=False)),
               "grid found": lambda x: sharpen.estimate_levels(estimator, x, precision="fp32")}
    print("JPEG quality read, and the student's mean gain told the levels read (worst image's)")
    cropped = {name: [] for name in readers}
    for set_name, photos in sets.items():
        for quality in (30, 50, 75, 90):
            jpeg = sharpen.jpeg(photos, quality)
            for crop in (0, 1, 3, 6):
                x, sharp = jpeg[..., crop:, crop:], photos[..., crop:, crop:]
                base = metrics.psnr(x, sharp)
                cells = []
                for name, read in readers.items():
                    levels = read(x)
                    y = sharpen.sharpen(student, x, precision="fp32", levels=levels)
                    gain = metrics.psnr(y, sharp) - base
                    if crop:
                        cropped[name].append(gain.mean().item())
                    cells.append(f"{name}: read {levels[:, 2].mean():5.1f}, "
                                 f"{gain.mean():+.2f} ({gain.min():+.2f})")
                print(f"{set_name} JPEG {quality} cropped by {crop}: " + " | ".join(cells),
                      flush=True)
    print("mean gain over the cropped JPEGs: " + ", ".join(
        f"{name} {sum(g) / len(g):+.2f} dB" for name, g in cropped.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
