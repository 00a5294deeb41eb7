"""Models on the validation photos, where the shipped models are chosen: the score of the choice.

    pip install -e ".[eval]" && python docs/validate.py weights/student.pt runs/x/student.pt

For each model file, the mean PSNR gain over the input on ``train.py``'s four validation photos
(never scored), area-resized to 256x256 and 8-bit, under each of the 16 degraded conditions of
the robustness table, drawn as ``train.py`` draws them to tune the baselines; blind and, for a
conditioned model, told the condition's levels, and for a model given a Wiener estimate
(``conditioned`` 2 to 4), told the true blur kernel too ("kernel", ``sharpen(..., kernel=)``).
Prints the mean over the 16 conditions, told
and blind, and their mean (the rule that chose the shipped students: the highest), then the
gain per condition. ``--estimate`` also scores, for a model with a Wiener estimate
(``conditioned`` 2 or 3), that estimate alone, told the same levels. ``--levels
ESTIMATOR.pt`` also scores each conditioned model told the levels that estimator
(``train_levels.py``) reads from each image ("auto", what the CLI does when told nothing of an
image in memory or a lossless file), those levels read as the CLI reads a file of the
condition's images, a JPEG at its quality where it has one ("auto file"), and told its blur
with the true noise and JPEG ("auto blur") and the reverse ("true blur"); the blur read at
most ``--max-blur`` pixels, as the CLI reads it (1.75; ``none``: as read).
``--colour`` also runs on four colour photos (``train.COLOUR_VALIDATION_PHOTOS``, from
matplotlib's and scikit-learn's wheels, in the eval extra, and ``data/raccoon.png``, sharp
fur), as the four validation photos are grey (and ``clock`` motion-blurred as photographed).
``--grain`` also scores the grain conditions (``train.GRAIN_CONDITIONS``: noise the same in
every channel, and noise under JPEG), which the robustness table does not hold.
``--scored`` runs on the three scored photo sets instead (for reporting only: choices are made
on the validation photos). On every set but the grey validation photos it also prints the
worst image's gain. For the sharp condition it prints the PSNR (and the SSIM where it prints
the worst image), not a gain.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import metrics  # noqa: E402
import sharpen  # noqa: E402
import train  # noqa: E402


def gains(models: dict[str, torch.nn.Module], *, estimate: bool = False,
          estimator: torch.nn.Module | None = None, sharp: torch.Tensor | None = None,
          grain: bool = False, max_blur: float | None = sharpen._MAX_BLUR
          ) -> dict[str, dict[str, dict[str, tuple[float, float, float | None]]]]:
    """``{model: {mode: {condition: (mean gain, worst image's gain in dB, None)}}}`` on ``sharp``
    (default: the validation photos), under the robustness table's conditions (with ``grain``,
    ``train.GRAIN_CONDITIONS``'s); for ``"sharp"``, the PSNR (mean, worst image's) and the
    mean SSIM instead. Modes: "blind", "told", "kernel", "estimate", and with an estimator
    "auto" (its levels), "auto file" (its levels told the JPEG quality that the images' file
    would tell, as the CLI reads a file: a JPEG at the condition's quality, else a PNG), "true
    blur" (its noise and JPEG, the true blur) and "auto blur" (its blur, the true noise and
    JPEG); the estimator's blur read at most ``max_blur`` (``estimate_levels``'s)."""
    if sharp is None:
        sharp = train._validation_photos(256)
    out = {m: {mode: {} for mode in ("blind", "told", "kernel", "estimate", "auto",
                                     "auto file", "true blur", "auto blur")} for m in models}
    for name in train.GRAIN_CONDITIONS if grain else train.CONDITIONS:
        x, kernels = train._condition(sharp, name, train._validation_seed(name))
        shaped = train._condition_levels(name, kernels, gaussian=True)  # for conditioned=4
        levels = shaped[:, :3]
        read = {}
        if estimator is not None:
            auto = sharpen.estimate_levels(estimator, x, max_blur=max_blur,
                                           precision="fp32")
            file = sharpen.estimate_levels(estimator, x, quality=train._file_quality(name),
                                           precision="fp32",
                                           max_blur=max_blur)
            read = {"auto": auto, "auto file": file,
                    "true blur": torch.cat([levels[:, :1], auto[:, 1:]], 1),
                    "auto blur": torch.cat([auto[:, :1], levels[:, 1:]], 1)}
        base = metrics.psnr(x, sharp)

        def gain(y: torch.Tensor) -> tuple[float, float, float | None]:
            if name == "sharp":  # noqa: B023
                p = metrics.psnr(y, sharp)
                return p.mean().item(), p.min().item(), metrics.ssim(y, sharp).mean().item()
            g = metrics.psnr(y, sharp) - base  # noqa: B023
            return g.mean().item(), g.min().item(), None

        for m, model in models.items():
            conditioned = getattr(model, "conditioned", 0)
            modes = {"blind": None} | ({"told": shaped if conditioned == 4 else levels} | read
                                       if conditioned else {})
            for mode, lv in modes.items():
                out[m][mode][name] = gain(sharpen.sharpen(model, x, precision="fp32", levels=lv))
            if conditioned >= 2:  # where the kernel says no more than the levels, as told
                out[m]["kernel"][name] = gain(sharpen.sharpen(
                    model, x, precision="fp32", levels=levels, kernel=kernels)) \
                    if train._kernel_tells_more(name) else out[m]["told"][name]
            if estimate and conditioned >= 2:
                with torch.no_grad():
                    out[m]["estimate"][name] = gain((x + model._estimate(x, levels, None))
                                                    .clamp(0, 1))
    return out


def _ceiling(text: str) -> float | None:
    """``--max-blur``'s value: a number of pixels > 0, or "none"."""
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be > 0 and finite, or none, got {text}")
    return value


def _cell(condition: str, mean: float, worst: float, ssim: float | None, *, detail: bool) -> str:
    """One condition's result: the mean, and with ``detail`` the worst image (and the SSIM); a
    PSNR in dB for the sharp condition, a gain for the others."""
    f = ".2f" if condition == "sharp" else "+.2f"
    if not detail:
        return f"{condition} {mean:{f}}"
    extra = "" if ssim is None else f", SSIM {ssim:.4f}"
    return f"{condition} {mean:{f}} ({worst:{f}}{extra})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("models", nargs="+", help="model files written by sharpen.save_model")
    parser.add_argument("--estimate", action="store_true",
                        help="also score each model's Wiener estimate alone, told the levels")
    parser.add_argument("--levels", metavar="ESTIMATOR.pt",
                        help="also score conditioned models told this estimator's levels")
    parser.add_argument("--colour", action="store_true",
                        help="also the colour validation photos (needs matplotlib, scikit-learn)")
    parser.add_argument("--grain", action="store_true",
                        help="also the grain conditions (train.GRAIN_CONDITIONS): grey noise, "
                             "noise under JPEG")
    parser.add_argument("--max-blur", type=_ceiling, default=sharpen._MAX_BLUR, metavar="PX",
                        help="the most blur an estimate tells, as estimate_levels's max_blur "
                             f"({sharpen._MAX_BLUR}, the CLI's; none: as read)")
    parser.add_argument("--scored", action="store_true",
                        help="the scored photo sets, not the validation photos (reporting only)")
    args = parser.parse_args(argv)
    if args.colour and args.scored:
        parser.error("--colour adds validation photos; the scored sets (--scored) are apart")
    try:
        models = {path: sharpen.load_model(path) for path in args.models}
        estimator = None if args.levels is None else train._load_estimator("--levels",
                                                                            args.levels)
    except (OSError, ValueError) as e:
        parser.error(str(e))
    for path, model in models.items():
        if isinstance(model, sharpen.LevelNet):
            parser.error(f"{path} is a level estimator, not a sharpening model: give it as "
                         "--levels")
    sets = train._photo_sets(train.PHOTOS, 256) if args.scored else {"validation": None}
    if args.colour:
        try:
            sets["colour validation"] = train._colour_validation_photos(256)
        except ImportError as e:
            parser.error(f"--colour needs matplotlib and scikit-learn ({e})")
    runs = [(name, sharp, grain) for name, sharp in sets.items()
            for grain in ((False, True) if args.grain else (False,))]
    for set_name, sharp, grain in runs:
        print(f"== {set_name}" + (", grain conditions" if grain else ""))
        result = gains(models, estimate=args.estimate, estimator=estimator, sharp=sharp,
                       grain=grain, max_blur=args.max_blur)
        detail = set_name != "validation"  # the worst image, and the sharp photos' SSIM
        for m, modes in result.items():
            mean = {mode: sum(v[0] for c, v in g.items() if c != "sharp")
                    / sum(c != "sharp" for c in g) for mode, g in modes.items() if g}
            print(m + ": " + ", ".join(f"{mode} {v:+.2f} dB" for mode, v in mean.items())
                  + (f"; mean of told and blind {(mean['told'] + mean['blind']) / 2:.2f}"
                     if "told" in mean else ""))
            for mode, g in modes.items():
                if g:
                    print(f"  {mode}: " + ", ".join(_cell(c, *v, detail=detail)
                                                    for c, v in g.items()))


if __name__ == "__main__":
    main()
