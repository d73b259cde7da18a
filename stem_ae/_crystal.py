"""Where an image is a crystal: a local lattice-strength map (NumPy/SciPy only).

Most real STEM images are not one clean lattice: particles sit on an amorphous support, grains
meet at other orientations, there is vacuum and contamination. The auto-encoder has only seen
lattices; on amorphous material it draws worm-like swirls. :func:`crystal_map` tells the two
apart locally, whatever the orientation of each grain.

A crystal concentrates its power in a few sharp reflections; amorphous material spreads the same
power evenly over a ring of spatial frequencies (its blobs have the same size and density), and
noise or vacuum over everything. Each half-overlapping, Hann-tapered tile of about four lattice
spacings is Fourier transformed, and its *peak contrast* is measured on the annulus of spatial
frequencies where the lattice reflections lie (0.6–1.8 × the reciprocal of the dominant
spacing): the mean power of its :data:`TOP_BINS` strongest bins over the annulus's median power.
Noise and amorphous tiles give about 4–6 whatever the dose (the largest of some hundred
exponentially distributed bins); a lattice gives far more. The contrast's logarithm is mapped
linearly from 0 at :data:`CONTRAST_RANGE` [0] to 1 at [1], interpolated between tile centres and
smoothed, so the map blends smoothly across boundaries. Tiles sit on a grid anchored at global
pixel (0, 0), so the tiles of a large image give the same map as the whole image.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

TOP_BINS = 8
"""Strongest frequency bins whose mean power measures a tile's peak contrast."""

CONTRAST_RANGE = (9.0, 15.0)
"""Peak contrast (top bins over the annulus median) mapped to 0 and to 1: below the first the
tile is taken as not a lattice (noise, amorphous, vacuum), above the second as a lattice.
On simulated tiles at 0.1–0.3 Å/px and 1–64 counts/px (``benchmarks/crystal.py``) amorphous and
vacuum tiles gave at most 14.3 (99th percentile; median 4–6), SrTiO3 in HAADF contrast at least
17.7 (1st percentile). Dark-contrast (ABF) tiles at low dose reach only 3–12: there the map
finds too few clear tiles and takes the whole image as crystal (:data:`MIN_CRYSTAL_TILES`)."""

ANNULUS = (0.6, 1.8)
"""Radii of the searched annulus, in units of the reciprocal of the lattice spacing."""

MIN_CRYSTAL_TILES = 0.2
"""The map is used only when at least this fraction of the tiles is clearly a lattice (peak
contrast above :data:`CONTRAST_RANGE` [1]); otherwise the lattice that the whole image shows is
too weak to be located tile by tile, and all of it is taken as crystal."""


def tile_side(spacing: float) -> int:
    """Tile side (px) for a dominant lattice spacing (px): about four spacings, even, 32–128."""
    return int(min(128, max(32, 2 * math.ceil(2.0 * spacing))))


def peak_contrast(tile: np.ndarray, spacing: float, reciprocal: np.ndarray | None = None) -> float:
    """Peak contrast of one tile: its strongest bins on the lattice annulus over the median.

    Parameters
    ----------
    tile : ndarray, shape (T, T)
        Image tile, any units.
    spacing : float
        Lattice spacing, px: the larger primitive plane spacing (the cell's size).
    reciprocal : ndarray, shape (2, 2), optional
        The image's reciprocal basis (rows g1, g2, 1/px). When given, the power at the known
        reflections ``±g1, ±g2, ±(g1 + g2), ±(g1 − g2)`` (the largest in 3×3 bins around each)
        over the median counts too, whichever is larger: far more sensitive for the measured
        lattice (no search), while the search still finds grains at other orientations.

    Returns
    -------
    float
        Mean of the :data:`TOP_BINS` largest powers on the annulus (or at the known
        reflections) over the annulus's median power.

    Examples
    --------
    >>> y, x = np.mgrid[:64, :64]
    >>> lattice = np.cos(2 * np.pi * x / 8) + np.cos(2 * np.pi * y / 8)
    >>> noise = np.random.default_rng(0).normal(size=(64, 64))
    >>> peak_contrast(lattice + noise, 8.0) > 16 > peak_contrast(noise, 8.0)
    True
    """
    return float(_peak_contrasts(tile[None], float(spacing), reciprocal)[0])


def _peak_contrasts(
    tiles: np.ndarray, spacing: float, reciprocal: np.ndarray | None = None
) -> np.ndarray:
    """:func:`peak_contrast` of a stack of tiles, shape (N, T, T): one batched FFT, one annulus."""
    side = tiles.shape[-1]
    taper = np.hanning(side + 2)[1:-1]
    window = np.outer(taper, taper)
    centred = np.stack([window * (tile - tile.mean()) for tile in tiles])
    power = np.abs(np.fft.fft2(centred)) ** 2
    annulus = _annulus(side, float(spacing))
    values = power[:, annulus]
    median = np.median(values, axis=1)
    top = np.partition(values, -TOP_BINS, axis=1)[:, -TOP_BINS:].mean(axis=1)
    if reciprocal is not None:
        g1, g2 = np.asarray(reciprocal, np.float64) * side
        known = []
        for g in (g1, g2, g1 + g2, g1 - g2):
            centre = np.rint(g).astype(int)
            if np.all(np.abs(centre) < side // 2 - 1):
                rows = (centre[0] + np.arange(-1, 2)) % side
                cols = (centre[1] + np.arange(-1, 2)) % side
                known.append(power[:, rows[:, None], cols[None, :]].max(axis=(1, 2)))
        if known:
            top = np.maximum(top, np.mean(known, axis=0))
    peaks = values.max(axis=1)
    safe = np.where(median > 0, median, 1.0)
    return np.where(median > 0, top / safe, np.where(peaks <= 0, 0.0, math.inf))


def _annulus(side: int, spacing: float) -> np.ndarray:
    k = np.fft.fftfreq(side)
    radius = np.hypot(*np.meshgrid(k, k, indexing="ij")) * spacing
    annulus = (radius >= ANNULUS[0]) & (radius <= ANNULUS[1])
    if annulus.sum() < 4 * TOP_BINS:  # a tile too small for the spacing: widen inwards
        annulus = (radius > 0) & (radius <= ANNULUS[1])
    return annulus


def crystal_map(
    image: np.ndarray,
    spacing: float,
    *,
    reciprocal: np.ndarray | None = None,
    origin: tuple[int, int] = (0, 0),
    localize: bool | None = None,
) -> np.ndarray:
    """Local lattice strength of an image, 0 (no lattice) to 1 (a lattice), per pixel.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        The (noisy) image, any units.
    spacing : float
        Lattice spacing, px: the larger primitive plane spacing of
        :class:`stem_ae.lattice.LatticeEstimate` (``max(spacings)``).
    reciprocal : ndarray, shape (2, 2), optional
        The measured reciprocal basis, see :func:`peak_contrast`.
    origin : (int, int)
        Global ``(y, x)`` of ``image[0, 0]`` when it is a tile of a larger image.
    localize : bool, optional
        None: decide from this image whether the lattice can be located tile by tile (at least
        :data:`MIN_CRYSTAL_TILES` of the tiles clearly a lattice), else return all ones. True:
        always map (the decision was taken on the whole image, e.g. for its tiles).

    Returns
    -------
    ndarray, shape (H, W), float32
        The map, smooth over about a tile.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> y, x = np.mgrid[:128, :256]
    >>> crystal = (np.cos(np.pi * x / 8) * np.cos(np.pi * y / 8)) ** 8
    >>> image = np.where(x < 128, crystal, 0.05) + rng.normal(0, 0.05, x.shape)
    >>> strength = crystal_map(image, 8.0)
    >>> bool(strength[64, 32] > 0.9 and strength[64, 224] < 0.1)
    True
    """
    image = np.asarray(image, np.float64)
    height, width = image.shape
    side = min(tile_side(spacing), height - height % 2, width - width % 2)
    hop = side // 2
    # tile starts on the global grid (multiples of hop), covering the block, clamped inside it
    starts = [_starts(o, n, side, hop) for o, n in zip(origin, image.shape, strict=True)]
    scores = np.empty((len(starts[0]), len(starts[1])))
    for i, y0 in enumerate(starts[0]):  # a row of tiles at a time: one FFT, bounded memory
        row = np.stack([image[y0 : y0 + side, x0 : x0 + side] for x0 in starts[1]])
        scores[i] = _peak_contrasts(row, spacing, reciprocal)
    low, high = (math.log(c) for c in CONTRAST_RANGE)
    strength = np.clip((np.log(np.maximum(scores, 1e-12)) - low) / (high - low), 0.0, 1.0)
    if localize is None and np.mean(strength >= 1.0) < MIN_CRYSTAL_TILES:
        # the lattice found in the whole image is too weak to be located tile by tile (low
        # dose, dark columns): the whole image is taken as the crystal
        return np.ones(image.shape, np.float32)
    # tile centres -> pixels (bilinear, held at the edges), then smoothed over half a tile
    centres = [np.asarray(s, float) + (side - 1) / 2 for s in starts]
    coords = [
        np.interp(np.arange(n), c, np.arange(len(c)))
        for c, n in zip(centres, (height, width), strict=True)
    ]
    yy, xx = np.meshgrid(*coords, indexing="ij")
    pixels = ndimage.map_coordinates(strength, [yy, xx], order=1, mode="nearest")
    pixels = ndimage.gaussian_filter(pixels, hop / 2, mode="nearest")
    return np.clip(pixels, 0.0, 1.0).astype(np.float32)


def _starts(origin: int, length: int, side: int, hop: int) -> list[int]:
    """Tile starts (block coordinates) on the global hop grid, every tile inside the block."""
    if length <= side:
        return [0]
    first = (-origin) % hop
    starts = list(range(first, length - side + 1, hop))
    if not starts or starts[0] > 0:
        starts.insert(0, 0)
    if starts[-1] + side < length:
        starts.append(length - side)
    return starts


DARK_ASYMMETRY = 0.75
"""A lattice image whose unit-cell average rises above its median less than this fraction of
what it falls below it has dark columns (ABF, BF). Simulated HAADF scenes at 0.1–0.5 Å/px and
0.5–64 counts/px gave 3.4–61, simulated ABF 0.08–0.21; real images: HAADF 1.2–5.1 (the Au
particles on their support lowest), the atomap ABF of SrTiO3 [110] 0.48."""


def cell_asymmetry(image: np.ndarray, reciprocal: np.ndarray, bins: int = 16) -> float:
    """How far the unit-cell average of a lattice image rises above its median, over how far below.

    Every pixel is put into its cell by its fractional coordinates ``G r mod 1`` (``G`` the
    reciprocal basis, rows ``g1, g2`` in 1/px) and the image averaged per ``bins × bins`` cell
    bin (then over 3×3 bins, periodically): hundreds of cells average the noise out at any dose.
    Bright columns on a dark background (HAADF) rise far above the median and the background
    hardly falls below it: a ratio well above 1. Dark columns (ABF, BF) give the inverse.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Any units.
    reciprocal : ndarray, shape (2, 2)
        Reciprocal lattice basis, 1/px (:class:`stem_ae.lattice.LatticeEstimate`).
    bins : int
        Bins per cell axis.

    Returns
    -------
    float
        ``(max − median) / (median − min)`` of the cell average.

    Examples
    --------
    >>> y, x = np.mgrid[:128, :128]
    >>> columns = (np.cos(np.pi * x / 8) * np.cos(np.pi * y / 8)) ** 8
    >>> g = np.array([[1 / 16, 0.0], [0.0, 1 / 16]])
    >>> cell_asymmetry(columns, g) > 1 > cell_asymmetry(-columns, g)
    True
    """
    image = np.asarray(image, np.float64)
    y, x = np.indices(image.shape)
    fractions = (np.asarray(reciprocal, np.float64) @ np.stack([y.ravel(), x.ravel()])) % 1.0
    index = np.minimum((fractions * bins).astype(int), bins - 1)
    flat = index[0] * bins + index[1]
    sums = np.bincount(flat, image.ravel(), bins * bins)
    counts = np.bincount(flat, None, bins * bins)
    cell = (sums / np.maximum(counts, 1)).reshape(bins, bins)
    cell = ndimage.uniform_filter(cell, 3, mode="wrap")
    median = float(np.median(cell))
    return float((cell.max() - median) / max(median - cell.min(), 1e-12 * (abs(median) + 1)))
