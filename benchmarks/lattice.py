"""Benchmark of the lattice measurement (``stem_ae.lattice``): refusals, spacing errors and
wrong acceptances.

Usage::

    python benchmarks/lattice.py                  # 100 images per row, 2 workers, ~4 min
    python benchmarks/lattice.py --n 20           # a quick look

Rows of simulated lattices (:func:`stem_ae.simulate.simulate_scene`, SrTiO3 [001], SrTiO3 [110]-
like rectangular and hexagonal honeycomb) draw, per image, a side of 128–256 px, a pixel size of
0.1–0.3 Å/px, a dose of 0.5–1 counts/px, a random angle and seed; they count the refusals
(``ValueError``) and the relative error of the dominant spacing against the nearest of the
lattice's reflections within 15 % of the strongest's amplitude (which one is "dominant" is
ambiguous between them). Rows without a lattice draw the same sizes and pixel sizes at a dose
of 0.5–16 counts/px: pure Poisson noise, amorphous films (random Gaussian blobs at the column
density, :func:`stem_ae.simulate.simulate_mixed_scene`), vacuum, scan streaks only (random
per-row offsets, or periodic ones as mains interference puts them) and a noiseless smooth random
field; they count the wrong acceptances. Each row runs without calibration and with the pixel
size (and, for lattices, the lattice constant) as :func:`stem_ae.lattice.estimate_lattice`
takes them. The real images of ``benchmarks/realdata.py`` are measured too (when cached).

Writes ``benchmarks/results/lattice.md`` (written to a temporary file, then moved into place).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # one thread per worker: BLAS threads only contend

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from stem_ae.lattice import FALSE_ALARM, estimate_lattice, estimate_spacing  # noqa: E402
from stem_ae.simulate import simulate_mixed_scene, simulate_scene  # noqa: E402

LATTICES = {"srtio3": 3.905, "rectangular": 3.905, "hexagonal": 3.2}
"""Simulated lattices and the lattice constant (Å) given as the prior when calibrated."""

NULLS = ("poisson", "amorphous", "vacuum", "streaks", "periodic streaks", "smooth field")

#: expected spacings of the real images: (lattice constant Å or None, text)
REAL_EXPECTED = {
    "tecnai_srtio3": (3.905, "{100} 3.905 Å = 25.6 px (at the lattice's 0.153 Å/px)"),
    "rebco": (3.85, "a ≈ 3.85 Å ≈ 7.1 px"),
    "mos2_se": (3.16, "{100} 2.74 Å = 21.6 px"),
    "au_particle": (4.08, "Au {111} 2.36 Å = 31.4 px, {200} 2.04 Å = 27.2 px"),
    "sto110_adf": (3.905, "(001) 3.905 Å = 41.9 px, (1-10) 2.76 Å = 29.6 px"),
    "sto110_abf": (3.905, "(001) 3.905 Å = 41.9 px, (1-10) 2.76 Å = 29.6 px"),
}


NOTES = """Notes (read with the tables; they do not change between runs of the same code):

- The decision rules are in `stem_ae/lattice.py` (`estimate_lattice`'s docstring): Welch
  pooling, a ring background, an F law per bin and Bonferroni over the searched bins for a 1 %
  false-alarm probability per image; the second reflection at a lattice-consistent position.
- Known weak corner: the smallest fields at the finest sampling (128² px at 0.10–0.15 Å/px, 4–5
  SrTiO3 cells across, 0.5 counts/px) — in about 1 of 3 seeds there the first-order reflections
  sit 4–5 bins from the origin, below the threshold, and the lattice is measured from its
  second orders (dominant spacing a/2 instead of a/√2) or refused. The random draw above
  rarely lands there; `tests/test_lattice.py` keeps 0.12 Å/px.
- The rectangular row's maximum error is one scene whose basis was built from (2 0) and (1 3)
  (a lattice of index 6): the half-order check (`_finer_basis`) does not reach it.
"""


def _draw(gen: np.random.Generator) -> tuple[tuple[int, int], float, float, int]:
    side = int(gen.integers(128, 257))
    return (
        (side, side),
        float(gen.uniform(0.1, 0.3)),
        float(gen.uniform(0, 180)),
        int(gen.integers(1 << 30)),
    )


def lattice_case(args) -> tuple[bool, float]:
    """(refused, relative error of the dominant spacing) for one simulated lattice."""
    kind, calibrated, seed = args
    gen = np.random.default_rng(seed)
    shape, pixel_size, angle, scene_seed = _draw(gen)
    dose = float(gen.uniform(0.5, 1.0))
    scene = simulate_scene(
        shape, lattice=kind, pixel_size=pixel_size, dose=dose, angle=angle, rng=scene_seed
    )
    options = {"pixel_size": pixel_size, "lattice_constant": LATTICES[kind]} if calibrated else {}
    try:
        spacing = estimate_lattice(scene.noisy, **options).dominant_spacing
    except ValueError:
        return True, math.nan
    g, amplitude = scene.lattice.reflections()
    candidates = 1 / np.linalg.norm(g[amplitude >= 0.85 * amplitude.max()], axis=1)
    return False, float(np.min(np.abs(spacing / candidates - 1)))


def null_image(kind: str, gen: np.random.Generator) -> tuple[np.ndarray, float]:
    shape, pixel_size, _, seed = _draw(gen)
    dose = float(np.exp(gen.uniform(np.log(0.5), np.log(16))))
    if kind == "poisson":
        return gen.poisson(dose, shape).astype(np.float32), pixel_size
    if kind in ("amorphous", "vacuum"):
        scene = simulate_mixed_scene(
            shape, parts=(kind,), pixel_size=pixel_size, dose=dose, rng=seed
        )
        return scene.noisy, pixel_size
    if kind == "streaks":
        offsets = gen.normal(0, gen.uniform(0.1, 1.0) * math.sqrt(dose), (shape[0], 1))
        return (gen.poisson(dose, shape) + offsets).astype(np.float32), pixel_size
    if kind == "periodic streaks":
        rows = np.arange(shape[0])[:, None]
        period = gen.uniform(3, 40)
        hum = gen.uniform(0.1, 1.0) * math.sqrt(dose) * np.sin(2 * np.pi * rows / period)
        return (gen.poisson(dose, shape) + hum).astype(np.float32), pixel_size
    if kind == "smooth field":
        from scipy import ndimage

        field = ndimage.gaussian_filter(gen.normal(size=shape), gen.uniform(1.0, 4.0))
        return field.astype(np.float32), pixel_size
    raise ValueError(kind)


def null_case(args) -> bool:
    """Whether a lattice is (wrongly) accepted in one image without a lattice."""
    kind, calibrated, seed = args
    gen = np.random.default_rng(seed)
    image, pixel_size = null_image(kind, gen)
    try:
        estimate_lattice(image, **({"pixel_size": pixel_size} if calibrated else {}))
    except ValueError:
        return False
    return True


def real_rows() -> list[str]:
    import realdata

    rows = []
    for image in realdata.IMAGES:
        try:
            array, pixel_size = realdata.load(image)
        except realdata.DataUnavailable as error:
            rows.append(f"| {image.name} | — | — | — | not available: {error} |")
            continue
        constant, expected = REAL_EXPECTED[image.name]
        regions = [("whole", array)]
        if image.crop is not None:
            regions.append(("crop", realdata.crop(image, array)))
        for label, region in regions:
            cells = []
            for options in ({}, {"pixel_size": pixel_size, "lattice_constant": constant}):
                start = time.perf_counter()
                try:
                    lattice = estimate_lattice(region, **options)
                    text = (
                        f"{lattice.dominant_spacing:.1f} px = "
                        f"{lattice.dominant_spacing * pixel_size:.2f} Å "
                        f"(basis {lattice.spacings[0]:.1f}, {lattice.spacings[1]:.1f} px)"
                    )
                except ValueError as error:
                    text = f"refused: {str(error).split(':')[0].split('(')[0].strip()}"
                    try:
                        radial = estimate_spacing(region, **options)
                        text += f"; radial {radial:.1f} px = {radial * pixel_size:.2f} Å"
                    except ValueError:
                        pass
                cells.append(f"{text} [{time.perf_counter() - start:.1f} s]")
            shape = "×".join(str(n) for n in region.shape)
            rows.append(
                f"| {image.name} ({label}, {shape}) | {pixel_size:.4f} | {cells[0]} | "
                f"{cells[1]} | {expected} |"
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="images per row (default 100)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-real", action="store_true", help="skip the real images")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/lattice.md")
    args = parser.parse_args()
    start = time.perf_counter()
    lines = []
    with mp.get_context("fork").Pool(args.workers) as pool:
        lines += [
            "| simulated lattice (0.1–0.3 Å/px, 0.5–1 counts/px, 128²–256² px) | calibration "
            "| refused | spacing error: median | 95th pct | max |",
            "|---|---|---|---|---|---|",
        ]
        refusal_total = [0, 0]
        for kind in LATTICES:
            for calibrated in (False, True):
                seeds = [(kind, calibrated, 1000 * i + 7) for i in range(args.n)]
                results = pool.map(lattice_case, seeds)
                refused = sum(r for r, _ in results)
                errors = np.array([e for r, e in results if not r])
                refusal_total[0] += refused
                refusal_total[1] += len(results)
                quantiles = (np.median(errors), np.percentile(errors, 95), errors.max())
                stats = [f"{100 * q:.2f} %" for q in quantiles] if errors.size else ["—"] * 3
                lines.append(
                    f"| {kind} | {'pixel size + a' if calibrated else 'none'} | "
                    f"{refused}/{len(results)} ({100 * refused / len(results):.0f} %) | "
                    + " | ".join(stats)
                    + " |"
                )
        lines += [
            "",
            "| image without a lattice (128²–256² px, 0.5–16 counts/px) | calibration "
            "| wrongly accepted |",
            "|---|---|---|",
        ]
        accepted_total = [0, 0]
        for kind in NULLS:
            for calibrated in (False, True):
                seeds = [(kind, calibrated, 1000 * i + 11) for i in range(args.n)]
                accepted = sum(pool.map(null_case, seeds))
                if kind != "smooth field":  # noiseless: reported on its own row
                    accepted_total[0] += accepted
                    accepted_total[1] += args.n
                lines.append(
                    f"| {kind} | {'pixel size' if calibrated else 'none'} | "
                    f"{accepted}/{args.n} ({100 * accepted / args.n:.0f} %) |"
                )
    simulated = time.perf_counter() - start
    summary = [
        "# Lattice measurement",
        "",
        f"`python benchmarks/lattice.py --n {args.n}` ({args.workers} workers, "
        f"{os.cpu_count()} CPUs): simulated rows {simulated:.0f} s.",
        "",
        f"- **Refusal rate on low-dose lattices: {refusal_total[0]}/{refusal_total[1]} "
        f"({100 * refusal_total[0] / refusal_total[1]:.1f} %)** (target 0 %).",
        f"- **Wrong acceptance without a lattice (Poisson noise, amorphous, vacuum, streaks): "
        f"{accepted_total[0]}/{accepted_total[1]} "
        f"({100 * accepted_total[0] / accepted_total[1]:.1f} %)** (target ≤ 1 %; the threshold "
        f"is set for a false-alarm probability of {FALSE_ALARM:.0%} per image). The noiseless "
        "smooth field (Gaussian-filtered white noise, no shot noise) is listed on its own: its "
        "spectrum falls by 30+ decades to a floor of the filter's truncation artefacts, "
        "concentrated near the scan axes, which no detector noise floor would leave visible.",
        "",
    ]
    lines = summary + lines
    if not args.no_real:
        lines += [
            "",
            "Real images (`benchmarks/realdata.py`): dominant spacing without calibration, and "
            "with the file's pixel size and the crystal's lattice constant (seconds in brackets).",
            "",
            "| image | Å/px | no calibration | pixel size + lattice constant | expected |",
            "|---|---|---|---|---|",
        ]
        lines += real_rows()
    lines += ["", f"Total {time.perf_counter() - start:.0f} s.", "", NOTES]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    part = args.out.with_name(args.out.name + ".part")
    part.write_text("\n".join(lines), encoding="utf-8")
    os.replace(part, args.out)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
