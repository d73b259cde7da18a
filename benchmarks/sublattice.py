"""A weak sublattice with the truth known: does ``denoise`` keep it, and invent none?

The real MoS2 image of ``benchmarks/real.py`` showed the dense network erasing the weak S2
columns (1 % of their sites kept, 34 % in the raw image); ``denoise`` now folds data and output
into the unit cell and puts the data back at the sites of such an erased motif column
(``stem_ae._crystal.erased_columns``, ``restore_sites``). This benchmark measures that step
where the truth is known.

Scenes: ``simulate_scene`` with a MoS2-like honeycomb (a = 3.16 Å, strong columns 1.0 at
(0, 0), weak ones :data:`WEAK` at (1/3, 2/3): about the HAADF ratio of S2 to Mo, ∝ Z^1.7; column
σ 0.35 Å), 5 % of the columns removed (vacancies of either kind), 0.127 Å/px (the real MoS2
image's sampling), white Poisson noise at 1, 4, 16 and 64 counts/px, three seeds, 256² px.

Methods: the raw counts; the oracle Gaussian (best σ by PSNR against the truth; an oracle no
user has); BM3D (Anscombe); ``denoise`` default; the same without the sublattice step
(``stem_ae.denoising.erased_columns`` replaced by one that finds nothing: the default before
it); the network alone (``residual="none"``); ``general_conv`` with the default pipeline.

Scores: PSNR against the expected counts; columns located by ``find_columns`` (separation half
the nearest-neighbour distance, NN) and matched one to one to the true columns within 0.3 NN
(``match_columns``, half a spacing of border left out): the fraction of strong and of weak
columns found, invented columns per true column, the fraction of weak-column vacancies filled
by an invented column, and the position error of the matched strong and weak columns (RMS per
coordinate, pm, as ``match_columns``).

Run ``python benchmarks/sublattice.py`` (about 6 minutes on 2 cores; ``--quick``: one seed,
doses 1 and 16, no BM3D). Writes ``benchmarks/results/sublattice.md`` and ``sublattice.csv``.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _machine
import quality

import stem_ae
from stem_ae import denoising
from stem_ae.analysis import find_columns, match_columns, psnr
from stem_ae.io import _atomic_write
from stem_ae.simulate import Lattice, simulate_scene

RESULTS = Path(__file__).resolve().parent / "results"
PIXEL_SIZE = 0.127  # Å/px
WEAK = 0.35  # weak column height over the strong one's
SHAPE = (256, 256)
DOSES = (1.0, 4.0, 16.0, 64.0)
SEEDS = (7001, 7002, 7003)
VACANCIES = 0.05
LATTICE = Lattice(
    3.16 / PIXEL_SIZE,
    3.16 / PIXEL_SIZE,
    120.0,
    ((0, 0, 1.0), (1 / 3, 2 / 3, WEAK)),
    0.35 / PIXEL_SIZE,
)


def _no_sublattice_step(*args, **kwargs):
    return np.empty((0, 2)), 0.0


def run_without_restore(noisy, ctx):
    original = denoising.erased_columns
    denoising.erased_columns = _no_sublattice_step
    try:
        return stem_ae.denoise(noisy)
    finally:
        denoising.erased_columns = original


METHODS = {
    "noisy": ("raw", quality.run_noisy),
    "gaussian": ("Gaussian (oracle σ)", quality.run_gaussian),
    "bm3d": ("BM3D (Anscombe)", quality.run_bm3d),
    "default": ("`denoise` default", lambda noisy, ctx: stem_ae.denoise(noisy)),
    "no_restore": ("`denoise` default without the sublattice step", run_without_restore),
    "network": (
        'network alone (`residual="none"`)',
        lambda noisy, ctx: stem_ae.denoise(noisy, residual="none"),
    ),
    "general_conv": (
        "`general_conv`, default pipeline",
        lambda noisy, ctx: stem_ae.denoise(noisy, model="general_conv"),
    ),
}
COLUMNS = (
    "method",
    "dose",
    "seed",
    "psnr",
    "found_strong",
    "found_weak",
    "invented",
    "weak_vacancies_filled",
    "position_error_strong_pm",
    "position_error_weak_pm",
    "seconds",
)


def _rms_pm(error: np.ndarray) -> float:
    """RMS position error per coordinate (pm) of matched columns (error rows dy, dx in px)."""
    return float(np.sqrt(np.mean(error**2))) * PIXEL_SIZE * 100.0 if len(error) else float("nan")


def run_case(dose: float, seed: int, methods) -> list[dict]:
    scene = simulate_scene(
        SHAPE,
        lattice=LATTICE,
        pixel_size=PIXEL_SIZE,
        dose=dose,
        defect="vacancies",
        vacancy_fraction=VACANCIES,
        rng=seed,
    )
    clean, noisy = scene.clean.astype(np.float64), scene.noisy.astype(np.float64)
    nn = float(LATTICE.nearest_neighbour())
    border = 0.5 * nn
    truth, types = scene.columns, scene.column_types
    vacancies = np.asarray(scene.metadata["vacancies"]["positions"], float).reshape(-1, 2)
    weak_holes = vacancies[np.asarray(scene.metadata["vacancies"]["types"]) == 1]
    weak_holes = weak_holes[quality._inside(weak_holes, SHAPE, border)]
    rows = []
    for name in methods:
        ctx = {"clean": clean, "pixel_size": PIXEL_SIZE, "nn_px": nn}
        start = time.perf_counter()
        out = np.asarray(METHODS[name][1](noisy, ctx), np.float64)
        seconds = ctx.get("seconds", time.perf_counter() - start)
        try:
            found = find_columns(out, min_distance=0.5 * nn)
        except ValueError:
            found = np.zeros((0, 2))
        match = match_columns(
            found, truth, 0.3 * nn, pixel_size=PIXEL_SIZE, shape=SHAPE, border=border
        )
        matched = np.zeros(len(truth), bool)
        matched[match.pairs[:, 1]] = True
        inside = quality._inside(truth, SHAPE, border)
        error = found[match.pairs[:, 0]] - truth[match.pairs[:, 1]]
        kind = types[match.pairs[:, 1]]
        rows.append(
            {
                "method": name,
                "dose": dose,
                "seed": seed,
                "psnr": psnr(clean, out),
                "found_strong": float(matched[inside & (types == 0)].mean()),
                "found_weak": float(matched[inside & (types == 1)].mean()),
                "invented": match.invented,
                "weak_vacancies_filled": quality._filled_vacancies(
                    found, match, weak_holes, 0.3 * nn
                ),
                "position_error_strong_pm": _rms_pm(error[kind == 0]),
                "position_error_weak_pm": _rms_pm(error[kind == 1]),
                "seconds": seconds,
            }
        )
    return rows


def _mean(rows, key) -> float:
    values = np.array([r[key] for r in rows], float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else float("nan")


def report(rows, methods, doses, seeds, wall, rss) -> str:
    lines = [
        "# Weak sublattice: kept or erased, with the truth known",
        "",
        f"Command: `python {' '.join(sys.argv)}`  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; stem_ae {stem_ae.__version__}  ",
        f"Machine: {_machine.describe()}; wall time {wall / 60:.1f} min; peak RSS {rss:.2f} GiB",
        "",
        f"MoS2-like honeycomb (a = 3.16 Å; strong columns 1.0, weak {WEAK:g}; σ 0.35 Å), "
        f"{100 * VACANCIES:g} % vacancies, {PIXEL_SIZE} Å/px, {SHAPE[0]}×{SHAPE[1]} px, white "
        f"Poisson; mean of seeds {', '.join(map(str, seeds))}. Protocol: the module docstring.",
        "",
        "| dose | method | PSNR dB | strong found | weak found | invented | weak vacancies "
        "filled | position error pm, strong / weak | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dose in doses:
        for name in methods:
            cell = [r for r in rows if r["method"] == name and r["dose"] == dose]
            if not cell:
                continue
            lines.append(
                f"| {dose:g} | {METHODS[name][0]} | {_mean(cell, 'psnr'):.2f} | "
                f"{100 * _mean(cell, 'found_strong'):.0f} % | "
                f"{100 * _mean(cell, 'found_weak'):.0f} % | "
                f"{100 * _mean(cell, 'invented'):.1f} % | "
                f"{100 * _mean(cell, 'weak_vacancies_filled'):.0f} % | "
                f"{_mean(cell, 'position_error_strong_pm'):.2f} / "
                f"{_mean(cell, 'position_error_weak_pm'):.2f} | {_mean(cell, 'seconds'):.2f} |"
            )
    return "\n".join(lines) + "\n"


def _save(path: Path, text: str) -> None:
    _atomic_write(path, lambda temporary: Path(temporary).write_text(text), overwrite=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, doses 1 and 16, no BM3D")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder")
    args = parser.parse_args(argv)
    doses, seeds, methods = DOSES, SEEDS, list(METHODS)
    if args.quick:
        doses, seeds = (1.0, 16.0), SEEDS[:1]
        methods = [m for m in methods if m != "bm3d"]
    stem_ae.denoise(simulate_scene((96, 96), pixel_size=0.2, rng=0).noisy)  # load, trace
    stem_ae.denoise(simulate_scene((96, 96), pixel_size=0.2, rng=0).noisy, model="general_conv")
    start = time.perf_counter()
    rows = []
    for dose in doses:
        for seed in seeds:
            rows += run_case(dose, seed, methods)
            done = [r for r in rows if r["dose"] == dose and r["seed"] == seed]
            print(
                f"dose {dose:g} seed {seed}: "
                + ", ".join(f"{r['method']} {100 * r['found_weak']:.0f} %" for r in done),
                flush=True,
            )
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    args.out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _save(args.out / "sublattice.csv", buffer.getvalue())
    text = report(rows, methods, doses, seeds, wall, rss)
    _save(args.out / "sublattice.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
