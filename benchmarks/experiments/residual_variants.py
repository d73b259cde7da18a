"""Residual-correction variants that were measured and not shipped (see README.md here).

Needs ``periodic_residual.diff`` applied to the package (``git apply``); the variant is chosen by
the environment variable ``STEM_AE_EXP`` that the patch reads. Runs the scenes of
``benchmarks/quality.py`` (seed 9001; white Poisson at 0.1/0.2/0.3 Å/px, the correlated-noise,
ABF and mixed scenes at 0.2 Å/px; doses 1, 4, 16, 64) with ``denoise(model="general")`` for each
variant and prints PSNR / position error (pm) / vacancies filled per scene and dose.

    git apply benchmarks/experiments/periodic_residual.diff
    python benchmarks/experiments/residual_variants.py base nogate cell combpredatanarrow
    git apply -R benchmarks/experiments/periodic_residual.diff
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quality

KINDS = ("poisson", "frames", "streaks", "afterglow", "abf", "mixed")
DOSES = (1.0, 4.0, 16.0, 64.0)


def run(variant: str, seed: int = 9001) -> list[dict]:
    os.environ["STEM_AE_EXP"] = "" if variant == "base" else variant
    rows = []
    for kind in KINDS:
        for size in (0.1, 0.2, 0.3) if kind == "poisson" else (0.2,):
            for dose in DOSES:
                rows += quality.run_case(size, dose, seed, ["general"], (192, 192), kind)
    for row in rows:
        row["method"] = variant
    return rows


def main(variants: list[str]) -> int:
    quality.load_models(["general"])
    cells = defaultdict(dict)
    for variant in variants:
        groups = defaultdict(list)
        for row in run(variant):
            groups[(row["scene"], row["dose"])].append(row)
        for key, rows in groups.items():
            psnr = np.nanmean([r["psnr"] for r in rows])
            error = np.nanmean([r["position_error_pm"] for r in rows])
            filled = 100 * np.nanmean([r["filled"] for r in rows])
            cells[key][variant] = f"{psnr:.2f} / {error:.2f} / {filled:.0f} %"
    print("| scene | dose | " + " | ".join(variants) + " |")
    print("|---|---|" + "---|" * len(variants))
    for (kind, dose), by in cells.items():
        print(f"| {kind} | {dose:g} | " + " | ".join(by.get(v, "–") for v in variants) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["base"]))
