"""How well could any method tell a vacancy from a column at coarse sampling and low dose?

An ideal observer knows every column's shape and position and asks at one site: column or
vacancy? For Poisson counts its log-likelihood ratio has a detectability (Fisher's SNR)

    d'² = Σ (λ₁ − λ₀)² / λ̄

over the pixels near the site, where λ₁ and λ₀ are the expected counts with and without the
column (here the noise-free images of the same ``benchmarks/coarse.py`` scene simulated with and
without its vacancies, which differ only at the vacancies) and λ̄ their mean. With the threshold
that keeps 99 % of the real columns, the vacancies it would still call columns are
``1 − Φ(d' − z₀.₉₉)``: the least any method can leave filled at that rate of columns found.

Usage (from the repository root)::

    python benchmarks/experiments/ideal_vacancy.py     # a few seconds

Result (2026-12-02): d' ≈ 7.3 / 5.8 / 4.9 at 0.4 / 0.5 / 0.6 Å/px and 1 count/px (twice that at
4 counts/px); ideal filled at 99 % found: 0 / 0 / 3 %. ``denoise`` leaves 0 / 1.9 / 6 % filled
(``benchmarks/results/coarse.md``; 17 / 44 / 69 % before the lower bar at the network's columns).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import coarse
import quality

from stem_ae.simulate import simulate_scene

SEEDS = (9001, 9002, 9003)
FOUND = 0.99  # fraction of the real columns the observer's threshold keeps


def detectability(pixel_size: float, dose: float, seed: int) -> np.ndarray:
    """d' of every vacancy (away from the border) of one ``coarse.py`` scene."""
    shape = quality.SHAPE
    common = dict(strain=quality.STRAIN, pixel_size=pixel_size, dose=dose, rng=seed)
    defects = ["rp", "strain", "vacancies"]
    with_vacancies = simulate_scene(
        shape, defect=defects, vacancy_fraction=quality.VACANCIES, **common
    )
    without = simulate_scene(shape, defect=defects, vacancy_fraction=0.0, **common)
    nn = float(with_vacancies.lattice.nearest_neighbour())
    full = without.clean.astype(np.float64)
    holed = with_vacancies.clean.astype(np.float64)
    positions = np.asarray(with_vacancies.metadata["vacancies"]["positions"], float)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    values = []
    for y, x in positions.reshape(-1, 2):
        if not (nn < y < shape[0] - nn and nn < x < shape[1] - nn):
            continue
        near = (yy - y) ** 2 + (xx - x) ** 2 <= (0.5 * nn) ** 2
        mean = np.maximum(0.5 * (full[near] + holed[near]), 1e-12)
        values.append(np.sqrt(np.sum((full[near] - holed[near]) ** 2 / mean)))
    return np.array(values)


def main() -> int:
    print("| Å/px | counts/px | vacancies | d' median (range) | ideal filled at 99 % found |")
    print("|---|---|---|---|---|")
    for pixel_size in coarse.PIXEL_SIZES:
        for dose in (1.0, 4.0):
            d = np.concatenate([detectability(pixel_size, dose, seed) for seed in SEEDS])
            filled = 1.0 - norm.cdf(d - norm.ppf(FOUND))
            print(
                f"| {pixel_size} | {dose:g} | {len(d)} | {np.median(d):.2f} "
                f"({d.min():.2f}–{d.max():.2f}) | {100 * filled.mean():.0f} % |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
