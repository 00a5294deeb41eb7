"""Score model files on the robustness table of ``python train.py``, without training.

    pip install -e ".[eval]"
    python docs/robustness.py weights/teacher.pt weights/student.pt --out runs/shipped

Each MODEL.pt is scored as train.py scores the models it trains, under the name of its file
stem: blind; a conditioned model also told each condition's levels (``<name>_told``), and one
given a Wiener estimate (``unet(conditioned=2)`` to ``4``) also told the true blur kernel
(``<name>_kernel``, ``sharpen(..., kernel=)``). The images and every random draw are those of a
``python train.py --blur real --train-photos --train-images 192`` run (weights/README.md's
commands), so the blind and told rows of the shipped models equal those of the run that made
them. Writes OUT/report.json (``robustness`` rows as train.py's report holds them, which
``docs/compare_runs.py OUT`` reads) and OUT/report.md. About 5 minutes for the shipped teacher
and student on 2 cores.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import sharpen  # noqa: E402
import train  # noqa: E402

RUN = ["--blur", "real", "--train-photos", "--train-images", "192"]  # fixes the images and draws


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python docs/robustness.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", type=Path, metavar="MODEL.pt",
                   help="model files (sharpen.save_model), named by their stems")
    p.add_argument("--out", type=Path, default=Path("runs/robustness"),
                   help="output folder (runs/robustness)")
    args = p.parse_args(argv)
    names = [m.stem for m in args.models]
    if len(set(names)) < len(names):
        p.error(f"the models' file stems name their rows and must differ, got {names}")
    if not train._has_skimage():
        p.error("scikit-image is needed for the photos: pip install -e \".[eval]\"")
    start = time.perf_counter()
    try:
        models = {name: sharpen.load_model(path).eval() for name, path in zip(names, args.models)}
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run = train._parse_args(RUN)
    degrade = functools.partial(train._degrade_8bit, kind=run.blur, sigma=run.sigma)
    _, eval_sets, data = train._datasets(run, degrade, torch.Generator().manual_seed(run.seed))
    sets = {name: sharp for name, (sharp, _) in eval_sets.items() if sharp is not None}
    settings = train._tune_baselines(train._validation_photos(run.eval_size))
    rows = train._robustness(models, sets, settings)
    protocol = {
        "models": {name: {"file": str(path),
                          "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
                   for name, path in zip(names, args.models)},
        "images_of": "python train.py " + " ".join(RUN), "data": data,
        "image_size": run.eval_size, "seed": train.ROBUSTNESS_SEED,
        "baseline_settings": settings, "torch": torch.__version__,
        "wall_seconds": round(time.perf_counter() - start, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    train._write_text(args.out / "report.json", json.dumps(
        {"protocol": protocol, "rows": [], "robustness": rows}, indent=2) + "\n")
    train._write_text(args.out / "report.md", train._robustness_markdown(rows))
    print(train._robustness_markdown(rows) + f"\nwrote {args.out}/report.json, report.md "
          f"({protocol['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
