"""Put the robustness tables of several ``python train.py`` runs (or ``docs/robustness.py``
outputs) side by side, and check the shipped models' targets.

    python docs/compare_runs.py runs/demo runs/real [--set photos] [--check runs/real]
        [--student student_nokd]
    python docs/compare_runs.py weights/robustness.json --check weights/robustness.json

Prints a markdown table of one evaluation set: the input and the two baselines (from the first
run), then each run's teacher and student (and, for conditioned models, both again told the
condition's levels, and for those given a Wiener estimate, told the true kernel), as mean
PSNR in dB with the worst image's gain over the input in brackets.
``--check RUN`` then prints RUN's models against the targets of the robust models, on every
photo set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BLURS = ("gaussian 0.5", "gaussian 1.0", "gaussian 1.5", "gaussian 2.0", "gaussian 3.0",
         "anisotropic 2.0 x 0.7", "camera shake", "defocus 2.0")
PHOTO_SETS = ("photos", "photos_bicubic", "photo_crops")
MODELS = ("teacher", "student", "teacher_told", "student_told", "teacher_kernel", "student_kernel")


def report_file(run: Path) -> Path:
    """A run's report: ``RUN/report.json``, or RUN itself where it names a ``.json`` file."""
    return run if run.suffix == ".json" else run / "report.json"


def models_of(rows: dict[tuple[str, str, str], dict]) -> list[str]:
    """The run's teacher and student, and their told rows where the models are conditioned (and
    told the kernel where they are given an estimate)."""
    return [m for m in MODELS if any(n == m for _, _, n in rows)]


def rows_of(run: Path, student: str = "student") -> dict[tuple[str, str, str], dict]:
    """The run's robustness rows by (set, condition, name), the model ``student`` (and its told
    rows) named ``student``."""
    report = json.loads(report_file(run).read_text())
    rename = {student + told: "student" + told for told in ("", "_told", "_kernel")}
    return {(r["eval_set"], r["condition"], rename.get(r["name"], r["name"])): r
            for r in report["robustness"]
            if r["name"] in rename or r["name"] not in rename.values()}


def cell(row: dict) -> str:
    if row["psnr"] is None:
        return "∞"
    if row["name"] == "input":
        return f"{row['psnr']:.2f}"
    worst = row["gain_worst"] if row["gain_worst"] is not None else row["psnr_worst"]
    sign = "+" if row["gain_worst"] is not None and worst >= 0 else ""
    return f"{row['psnr']:.2f} ({sign}{worst:.2f})"


def table(runs: list[Path], eval_set: str, student: str = "student") -> str:
    all_rows = [rows_of(run, student) for run in runs]
    conditions = list(dict.fromkeys(c for s, c, _ in all_rows[0] if s == eval_set))
    head = ["condition", "input", "Wiener (true kernel)", "unsharp mask"]
    head += [f"{run.stem if run.suffix == '.json' else run.name}: "
             f"{m.replace('_told', ', told').replace('_kernel', ', told the kernel')}"
             for run, rows in zip(runs, all_rows) for m in models_of(rows)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in conditions:
        cells = [cell(all_rows[0][eval_set, c, n]) for n in ("input", "wiener", "unsharp")]
        cells += [cell(rows[eval_set, c, m]) for rows in all_rows for m in models_of(rows)]
        lines.append("| " + " | ".join([c, *cells]) + " |")
    return "\n".join(lines)


def table1(run: Path) -> str:
    """The run's Table 1 on one line per model: PSNR / SSIM on each evaluation set, and cost."""
    rows = json.loads(report_file(run).read_text())["rows"]
    sets = list(dict.fromkeys(r["eval_set"] for r in rows))
    head = ["model", *sets, "params", "GMACs at 256²", "ms / image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in dict.fromkeys(r["name"] for r in rows):
        by_set = {r["eval_set"]: r for r in rows if r["name"] == name}
        first = next(iter(by_set.values()))
        cells = [f"{by_set[s]['psnr']:.2f} / {by_set[s]['ssim']:.4f}" for s in sets]
        cells += [f"{first['params']:,}", f"{first['macs'] / 1e9:.2f}",
                  f"{first['ms_per_image']:.1f}"]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def check(run: Path, student: str = "student") -> str:
    """Each target of the robust models, measured on each photo set of ``run``."""
    rows, out = rows_of(run, student), []
    for s in (s for s in PHOTO_SETS if (s, "sharp", "teacher") in rows):
        degraded = [c for (e, c, n) in rows if e == s and n == "input" and c != "sharp"]
        for m in models_of(rows):
            def r(c, name=m, s=s):
                return rows[s, c, name]
            gains = {c: r(c)["gain_mean"] for c in degraded}
            worst = min(degraded, key=lambda c: r(c)["gain_worst"])
            beaten = [c for c in BLURS if r(c)["psnr"] <= r(c, "unsharp")["psnr"]]
            wiener = sum(r(c, "wiener")["psnr"] - r(c)["psnr"] for c in BLURS) / len(BLURS)
            out.append(
                f"{s}, {m}: sharp {r('sharp')['psnr']:.2f} dB "
                f"(worst {r('sharp')['psnr_worst']:.2f}) / SSIM {r('sharp')['ssim']:.4f} "
                f"[>= 37 dB, >= 0.98]; smallest mean gain "
                f"{min(gains.values()):+.2f} dB ({min(gains, key=gains.get)}) [>= +1]; worst "
                f"image {r(worst)['gain_worst']:+.2f} dB ({worst}) [>= 0]; at or below the "
                f"unsharp mask on {len(beaten)} of {len(BLURS)} blurs {beaten} [0]; behind Wiener "
                f"by {wiener:.2f} dB on average over the blurs [<= 1.5]; gaussian 1.5 gain "
                f"{gains['gaussian 1.5']:+.2f} dB [>= +3]")
        for told in (t for t in ("", "_told", "_kernel") if (s, "sharp", "teacher" + t) in rows):
            gap = {c: rows[s, c, "teacher" + told]["psnr"] - rows[s, c, "student" + told]["psnr"]
                   for c in [*degraded, "sharp"]}
            mean = sum(gap[c] for c in degraded) / len(degraded)
            out.append(f"{s}: teacher{told} minus student{told} {mean:+.2f} dB on average over "
                       f"the {len(degraded)} degraded conditions [<= 0.5], "
                       f"{max(gap.values()):+.2f} at most; {gap['sharp']:+.2f} on sharp input")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("runs", nargs="+", type=Path,
                        help="output folders of python train.py (or their report.json files)")
    parser.add_argument("--set", default="photos", choices=("dead_leaves", *PHOTO_SETS),
                        help="evaluation set (photos)")
    parser.add_argument("--check", type=Path, help="a run whose models to check against targets")
    parser.add_argument("--student", default="student",
                        choices=("student", "student_nokd", "student_nokd_time"),
                        help="which of the run's students to show as the student: student (the "
                        "distilled one), student_nokd or student_nokd_time")
    args = parser.parse_args()
    for run in [*args.runs, *([args.check] if args.check else [])]:
        if not report_file(run).is_file():
            parser.error(f"{run} is neither a report.json nor a folder holding one (an output "
                         "folder of python train.py or docs/robustness.py)")
    for run in args.runs:
        if json.loads(report_file(run).read_text())["rows"]:  # docs/robustness.py's have none
            print(f"{run}:\n{table1(run)}\n")
    print(table(args.runs, args.set, args.student))
    if args.check:
        print("\n" + check(args.check, args.student))


if __name__ == "__main__":
    main()
