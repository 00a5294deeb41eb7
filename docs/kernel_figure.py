"""The README's figure of the shipped student told a blur's kernel, not only its size.

    pip install -e ".[eval]" && python docs/kernel_figure.py

Two scored photographs under the three blurs of the robustness table that one number does not
describe (camera shake, the anisotropic Gaussian, defocus), with the table's draws, as given,
then through Wiener and the unsharp mask (Wiener told the true kernel; both tuned per condition
on the validation photos, as ``train.py`` tunes them), and through ``weights/student.pt`` told
the blur's size alone (``--blur``, ``kernel_sigma`` of the kernel) and told the kernel itself
(``--kernel``, ``sharpen(..., kernel=)``). Each label gives the PSNR / SSIM against the sharp
photo. Writes docs/kernel_told.jpg.
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

BLURS = ("camera shake", "anisotropic 2.0 x 0.7", "defocus 2.0")
PICKED = (0, 2)  # of train.PHOTOS, as in docs/robustness_figure.py


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog=f"python docs/{Path(__file__).name}", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter
                            ).parse_args(argv)  # --help, and nothing else
    student = sharpen.load_model(ROOT / "weights" / "student.pt")
    settings = train._tune_baselines(train._validation_photos(256))
    photos = train._photo_sets(train.PHOTOS, 256)["photos"]  # the table's set 1
    rows = []
    for i in PICKED:
        for name in BLURS:
            seed = train.ROBUSTNESS_SEED + 100 + list(train.CONDITIONS).index(name)
            x, kernels = train._condition(photos, name, seed)  # the table's draws
            x, kernel = x[i : i + 1], kernels[i : i + 1]
            size = float(sharpen.kernel_sigma(kernel[0]))
            outputs = {f"{name}: input": x, **train._baselines(x, kernel, settings[name]),
                       f"told {size:.2f} px": sharpen.sharpen(
                           student, x, levels=(size, 0.0, 100.0), precision="fp32"),
                       "told the kernel": sharpen.sharpen(student, x, kernel=kernel,
                                                          precision="fp32")}
            rows.append([(text, img[0], photos[i]) for text, img in outputs.items()])
    out = ROOT / "docs" / "kernel_told.jpg"
    train._grid(out, rows)
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
