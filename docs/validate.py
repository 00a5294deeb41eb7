"""Models on the validation photos, where the shipped models are chosen: the score of the choice.

    pip install -e ".[eval]" && python docs/validate.py weights/student.pt runs/x/student.pt

For each model file, the mean PSNR gain over the input on ``train.py``'s four validation photos
(never scored), area-resized to 256x256 and 8-bit, under each of the 16 degraded conditions of
the robustness table, drawn as ``train.py`` draws them to tune the baselines; blind and, for a
conditioned model, told the condition's levels. Prints the mean over the 16 conditions, told
and blind, and their mean (the rule that chose the shipped students: the highest), then the
gain per condition. ``--estimate`` also scores, for a model with a Wiener estimate
(``conditioned`` 2 or 3), that estimate alone, told the same levels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import metrics  # noqa: E402
import sharpen  # noqa: E402
import train  # noqa: E402


def gains(models: dict[str, torch.nn.Module], *, estimate: bool = False
          ) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {"blind" | "told" | "estimate": {condition: mean gain in dB}}}`` on the
    validation photos."""
    sharp = train._8bit(torch.stack([train._resized(train._photo(p), 256)
                                     for p in train.VALIDATION_PHOTOS]))
    out = {m: {"blind": {}, "told": {}, "estimate": {}} for m in models}
    for i, name in enumerate(train.CONDITIONS):
        if name == "sharp":
            continue
        x, kernels = train._condition(sharp, name, train.ROBUSTNESS_SEED - 1 - i)
        levels = train._condition_levels(name, kernels)
        base = metrics.psnr(x, sharp)
        for m, model in models.items():
            told = (("told", levels),) if getattr(model, "conditioned", 0) else ()
            for mode, lv in (("blind", None), *told):
                y = sharpen.sharpen(model, x, precision="fp32", levels=lv)
                out[m][mode][name] = (metrics.psnr(y, sharp) - base).mean().item()
            if estimate and getattr(model, "conditioned", 0) >= 2:
                with torch.no_grad():
                    y = (x + model._estimate(x, levels, None)).clamp(0, 1)
                out[m]["estimate"][name] = (metrics.psnr(y, sharp) - base).mean().item()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("models", nargs="+", help="model files written by sharpen.save_model")
    parser.add_argument("--estimate", action="store_true",
                        help="also score each model's Wiener estimate alone, told the levels")
    args = parser.parse_args(argv)
    try:
        models = {path: sharpen.load_model(path) for path in args.models}
    except (OSError, ValueError) as e:
        parser.error(str(e))
    for m, result in gains(models, estimate=args.estimate).items():
        mean = {mode: sum(g.values()) / len(g) for mode, g in result.items() if g}
        print(m + ": " + ", ".join(f"{mode} {v:+.2f} dB" for mode, v in mean.items())
              + (f"; mean of told and blind {(mean['told'] + mean['blind']) / 2:.2f}"
                 if "told" in mean else ""))
        for mode, g in result.items():
            if g:
                print(f"  {mode}: " + ", ".join(f"{c} {v:+.2f}" for c, v in g.items()))


if __name__ == "__main__":
    main()
