"""The README's robustness figure for the shipped models, drawn by ``train.py``'s own figure code.

    pip install -e ".[eval]" && python docs/robustness_figure.py

Two scored photographs sharp, under Gaussian sigma 1.0 and under sigma 1.5, each as given, then
through Wiener (told the true blur), the unsharp mask (both tuned on the validation photos, as
``train.py`` tunes them), and ``weights/teacher.pt`` and ``weights/student.pt``, blind. Writes
docs/robustness_real.jpg.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import sharpen  # noqa: E402
import train  # noqa: E402


def main() -> None:
    models = {name: sharpen.load_model(ROOT / "weights" / f"{name}.pt")
              for name in ("teacher", "student")}
    validation = train._validation_photos(256)
    settings = train._tune_baselines(validation)
    photos = train._photo_sets(train.PHOTOS, 256)["photos"]
    pairs = [(train._8bit(sharpen.gaussian_blur(photo, 1.5)), photo) for photo in photos[:3]]
    with tempfile.TemporaryDirectory() as tmp:
        train._figures(Path(tmp), models, pairs, photos, settings)
        figure = Image.open(Path(tmp) / "robustness.png").convert("RGB")
    out = ROOT / "docs" / "robustness_real.jpg"
    figure.save(out, quality=90)
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
