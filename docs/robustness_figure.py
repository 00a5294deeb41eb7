"""The README's robustness figure for the shipped student, as ``python sharpen.py`` runs it.

    pip install -e ".[eval]" && python docs/robustness_figure.py

Two scored photographs, each sharp, under Gaussian sigma 1.0, under sigma 1.5 and under sigma
1.5 with noise 0.01 and JPEG quality 50, as given, then through the unsharp mask and Wiener
(told the true blur; both tuned per condition on the validation photos, as ``train.py`` tunes
them), and through ``weights/student.pt`` blind (``--blind``) and told the levels that
``weights/levels.pt`` reads from the image (the CLI's default). Each label gives the PSNR /
SSIM against the sharp photo. Writes docs/robustness_real.jpg.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import sharpen  # noqa: E402
import train  # noqa: E402

CONDITIONS = {"sharp": "sharp", "sigma 1.0": "gaussian 1.0", "sigma 1.5": "gaussian 1.5",
              "sigma 1.5, noise, JPEG 50": None}


def _condition(photo: torch.Tensor, name: str | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The photo ``(1, 3, H, W)`` degraded, its blur kernels, and the condition whose tuned
    baselines it takes."""
    if name is not None:
        x, kernels = train._condition(photo, name, train.ROBUSTNESS_SEED)
        return x, kernels, name
    x, kernels = train._condition(photo, "gaussian 1.5 + noise 0.01", train.ROBUSTNESS_SEED)
    return sharpen.jpeg(x, 50), kernels, "gaussian 1.5 + jpeg 50"


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog=f"python docs/{Path(__file__).name}", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter
                            ).parse_args(argv)  # --help, and nothing else
    student = sharpen.load_model(ROOT / "weights" / "student.pt")
    estimator = sharpen.load_model(ROOT / "weights" / "levels.pt")
    settings = train._tune_baselines(train._validation_photos(256))
    photos = train._photo_sets(train.PHOTOS, 256)["photos"]
    rows = []
    for photo in photos[[0, 2]]:
        for label, name in CONDITIONS.items():
            x, kernels, tuned = _condition(photo[None], name)
            levels = sharpen.estimate_levels(estimator, x, precision="fp32")
            b, n, q = levels[0].tolist()
            outputs = {f"{label}: input": x, **train._baselines(x, kernels, settings[tuned]),
                       "student, blind": sharpen.sharpen(student, x, precision="fp32"),
                       f"estimated {b:.1f} px, {n:.3f}, q{q:.0f}": sharpen.sharpen(
                           student, x, levels=levels, precision="fp32")}
            rows.append([(text, img[0], photo) for text, img in outputs.items()])
    out = ROOT / "docs" / "robustness_real.jpg"
    train._grid(out, rows)
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
