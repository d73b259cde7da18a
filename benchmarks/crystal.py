"""Where is an image a crystal? Peak contrast of lattice, ABF, amorphous and vacuum tiles.

The crystal map of ``denoise`` (``stem_ae._crystal``) judges each tile of about four lattice
spacings by its *peak contrast*: the strongest bins of its power spectrum on the lattice's
annulus (or at the measured reflections) over the annulus's median. This script measures that
number on simulated tiles — SrTiO3 in bright (HAADF) and dark (ABF) contrast, amorphous blobs of
the same size and density, and vacuum — at 0.1–0.3 Å/px and 1–64 counts/px, three 256² scenes
each, and prints the 1st, 50th and 99th percentiles, from which ``CONTRAST_RANGE`` was chosen.

Run ``python benchmarks/crystal.py``; writes ``benchmarks/results/crystal.md``.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np

from stem_ae._crystal import CONTRAST_RANGE, peak_contrast, tile_side
from stem_ae.io import _atomic_write
from stem_ae.simulate import simulate_mixed_scene, simulate_scene

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("crystal", "abf", "amorphous", "vacuum")


def tiles(image: np.ndarray, side: int):
    for y in range(0, image.shape[0] - side + 1, side // 2):
        for x in range(0, image.shape[1] - side + 1, side // 2):
            yield image[y : y + side, x : x + side].astype(float)


def scene(part: str, pixel_size: float, dose: float, seed: int) -> np.ndarray:
    if part in ("crystal", "abf"):
        contrast = "dark" if part == "abf" else "bright"
        return simulate_scene(
            (256, 256), pixel_size=pixel_size, dose=dose, contrast=contrast, rng=seed
        ).noisy
    return simulate_mixed_scene(
        (256, 256), parts=(part,), pixel_size=pixel_size, dose=dose, rng=seed
    ).noisy


def main() -> None:
    start = time.perf_counter()
    rows = ["| Å/px | dose | " + " | ".join(PARTS) + " |", "|---|---|" + "---|" * len(PARTS)]
    for pixel_size in (0.1, 0.2, 0.3):
        a = 3.905 / pixel_size  # SrTiO3 cell, px
        reciprocal = np.array([[1 / a, 1 / a], [1 / a, -1 / a]])  # the centred a/√2 cell
        spacing = a / np.sqrt(2)
        side = tile_side(spacing)
        for dose in (1.0, 4.0, 16.0, 64.0):
            cells = []
            for part in PARTS:
                values = [
                    peak_contrast(tile, spacing, reciprocal)
                    for seed in range(3)
                    for tile in tiles(scene(part, pixel_size, dose, seed), side)
                ]
                low, mid, high = np.percentile(values, (1, 50, 99))
                cells.append(f"{low:.1f} / {mid:.1f} / {high:.1f}")
            rows.append(f"| {pixel_size} | {dose:g} | " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    elapsed = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    text = "\n".join(
        [
            "# Crystal map: peak contrast of simulated tiles",
            "",
            "Command: `python benchmarks/crystal.py`. Percentiles 1 / 50 / 99 of the peak contrast",
            f"of half-overlapping tiles (three 256² scenes per cell); the map goes from 0 at "
            f"{CONTRAST_RANGE[0]:g} to 1 at {CONTRAST_RANGE[1]:g}. Ran in {elapsed:.0f} s, "
            f"peak RSS {rss:.2f} GiB.",
            "",
            *rows,
            "",
        ]
    )
    RESULTS.mkdir(exist_ok=True)
    _atomic_write(RESULTS / "crystal.md", lambda tmp: tmp.write_text(text), overwrite=True)
    print(f"{elapsed:.0f} s, peak RSS {rss:.2f} GiB -> {RESULTS / 'crystal.md'}")


if __name__ == "__main__":
    main()
