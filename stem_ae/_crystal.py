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

from stem_ae._filters import gaussian_filter, power_spectra

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
    power = power_spectra(centred)
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
    pixels = gaussian_filter(pixels, hop / 2, mode="nearest")
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


# --------------------------------------------------------------------------------------------
# the unit cell: its average, its columns, and the motif columns an estimate erased

ERASED_FRACTION = 0.5
"""A motif column counts as erased by an estimate when its height in the estimate's cell average,
relative to the strongest column's, is below this fraction of its relative height in the data's
(:func:`erased_columns`)."""

ERASED_SIGNIFICANCE = 5.0
"""Least height of a motif column above the data's cell-average median, in standard deviations
of that average's noise (from two halves of the cells), for :func:`erased_columns` to act."""

SITE_WIDTH = 0.15
"""Gaussian radius of the data put back at an erased column's sites (:func:`restore_sites`), as
a fraction of the nearest-neighbour column distance."""

SITE_LOWPASS = 0.08
"""Gaussian low-pass of the data put back at an erased column's sites, as a fraction of the
nearest-neighbour column distance (the pixel noise averaged, a column's shape kept)."""


def cell_bins(reciprocal: np.ndarray) -> np.ndarray:
    """Bins per cell axis of :func:`cell_average`: about 0.5 px each, 8 to 64."""
    spacings = 1.0 / np.hypot(reciprocal[:, 0], reciprocal[:, 1])
    return np.clip(np.round(2.0 * spacings), 8, 64).astype(int)


def _fractions(shape, reciprocal, origin=(0, 0)) -> list[np.ndarray]:
    """Each pixel's fractional coordinates along g1 and g2 (two (H, W) arrays, ``f = G r``),
    pixel (0, 0) at global ``origin``: the same values for a pixel in any tile."""
    y = np.arange(shape[0], dtype=np.float64)[:, None] + origin[0]
    x = np.arange(shape[1], dtype=np.float64)[None, :] + origin[1]
    return [y * reciprocal[axis, 0] + x * reciprocal[axis, 1] for axis in range(2)]


def _cell_index(shape, reciprocal, bins, origin=(0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's cell bin (flat index, (H·W,)) and integer cell ((H·W, 2), along g1 and g2),
    pixel (0, 0) at global ``origin``. Integer arithmetic in exact float64 (faster)."""
    flat = np.zeros(shape, np.float64)
    cells = np.empty((shape[0] * shape[1], 2), np.int32)
    for axis, frac in enumerate(_fractions(shape, reciprocal, origin)):
        scaled = np.rint(frac * bins[axis])
        cell = np.floor(scaled / bins[axis])
        flat = flat * bins[axis] + (scaled - cell * bins[axis])  # bin k is centred on k / bins
        cells[:, axis] = cell.ravel()
    return flat.astype(np.intp).ravel(), cells


def _binned_average(flat, values, bins, select=None) -> np.ndarray:
    """Average of ``values`` per cell bin (over the pixels in ``select``), smoothed by one bin
    (periodic); NaN where no pixel falls near a bin."""
    if select is not None:
        flat, values = flat[select], values[select]
    size = int(bins[0] * bins[1])
    total = np.bincount(flat, weights=values, minlength=size)
    count = np.bincount(flat, minlength=size).astype(np.float64)
    total = ndimage.gaussian_filter(total.reshape(bins), 1.0, mode="wrap")
    count = ndimage.gaussian_filter(count.reshape(bins), 1.0, mode="wrap")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.where(count > 0, count, 1.0), np.nan)


def cell_average(
    image: np.ndarray, reciprocal: np.ndarray, *, origin=(0, 0), where=None
) -> np.ndarray:
    """The image averaged over all its unit cells, as a function of the fractional coordinates.

    Every pixel gets its fractional coordinates ``f = G r`` (``G`` the reciprocal basis, rows
    ``g1, g2`` in 1/px; ``r`` the global pixel position, pixel (0, 0) at ``origin``) and is
    put into one of :func:`cell_bins` bins per axis; the per-bin average is smoothed by one bin
    (periodically). Hundreds of cells average the noise out. ``where``: only these pixels.

    Raises
    ------
    ValueError
        If the image does not fill its unit cell.
    """
    image = np.asarray(image, np.float64)
    reciprocal = np.asarray(reciprocal, np.float64)
    bins = cell_bins(reciprocal)
    flat, _ = _cell_index(image.shape, reciprocal, bins, tuple(origin))
    select = None if where is None else np.asarray(where, bool).ravel()
    mean = _binned_average(flat, image.ravel(), bins, select)
    if not np.all(np.isfinite(mean)):
        raise ValueError("image is too small to fill its unit cell; pass a larger image")
    return mean


def fractional_distance(delta: np.ndarray, direct: np.ndarray) -> np.ndarray:
    """Real-space length (px) of fractional differences ``delta`` (..., 2), nearest image;
    ``direct`` the inverse of the reciprocal basis."""
    delta = delta - np.round(delta)
    best = np.full(delta.shape[:-1], np.inf)
    for sy in (-1, 0, 1):
        for sx in (-1, 0, 1):
            real = (delta + np.array([sy, sx])) @ direct.T
            best = np.minimum(best, np.hypot(real[..., 0], real[..., 1]))
    return best


def cell_maxima(mean: np.ndarray, reciprocal: np.ndarray, min_height: float) -> np.ndarray:
    """Columns of a cell average (:func:`cell_average`): fractional positions (K, 2), brightest
    first, of its local maxima at least ``min_height`` of the way from its minimum to its
    maximum and at least 0.25 × the smaller plane spacing apart (sub-bin: the centroid of the
    3×3 neighbourhood above its minimum).

    Raises
    ------
    ValueError
        If the cell average is flat.
    """
    bins = np.asarray(mean.shape)
    spacings = 1.0 / np.hypot(reciprocal[:, 0], reciprocal[:, 1])
    low, high = mean.min(), mean.max()
    if not high > low:
        raise ValueError("the cell average is flat: no columns to find")
    peak = (mean == ndimage.maximum_filter(mean, size=3, mode="wrap")) & (
        mean >= low + min_height * (high - low)
    )
    iy, ix = np.nonzero(peak)
    order = np.argsort(-mean[iy, ix])
    iy, ix = iy[order], ix[order]
    motif = []
    for y, x in zip(iy, ix, strict=True):
        oy, ox = np.mgrid[-1:2, -1:2]
        patch = mean[(y + oy) % bins[0], (x + ox) % bins[1]]
        weight = patch - patch.min()
        if weight.sum() > 0:
            dy, dx = (weight * oy).sum() / weight.sum(), (weight * ox).sum() / weight.sum()
        else:
            dy = dx = 0.0
        motif.append(((y + dy) / bins[0], (x + dx) / bins[1]))
    motif = np.mod(np.asarray(motif), 1.0)
    direct = np.linalg.inv(reciprocal)
    keep: list[int] = []
    for k in range(len(motif)):
        if all(
            fractional_distance(motif[k] - motif[j], direct) >= 0.25 * spacings.min() for j in keep
        ):
            keep.append(k)
    motif = motif[keep]
    # a maximum on a bin edge may be reported at 1.0 - ε; map values within 1e-9 of 1 to 0
    motif[motif > 1 - 1e-9] = 0.0
    return motif


def nearest_neighbour(motif: np.ndarray, reciprocal: np.ndarray) -> float:
    """Shortest distance (px) between two columns of a lattice with this motif (fractions, (K,
    2)): between motif columns, or from a column to its own image one lattice vector away."""
    motif = np.asarray(motif, np.float64)
    direct = np.linalg.inv(np.asarray(reciprocal, np.float64))  # r = direct @ f
    shifts = np.array([(i, j) for i in range(-2, 3) for j in range(-2, 3)], dtype=np.float64)
    cell = (shifts[:, None, :] + motif[None, :, :]).reshape(-1, 2) @ direct.T
    distances = np.hypot(*(cell[None, :, :] - (motif @ direct.T)[:, None, :]).transpose(2, 0, 1))
    return float(distances[distances > 1e-6].min())


def erased_columns(
    noisy: np.ndarray,
    estimate: np.ndarray,
    reciprocal: np.ndarray,
    *,
    origin=(0, 0),
    where=None,
    min_height: float = 0.2,
    fraction: float = ERASED_FRACTION,
    significance: float = ERASED_SIGNIFICANCE,
) -> tuple[np.ndarray, float]:
    """The motif columns that the data show and an estimate has lost: ``(fractions, nn)``.

    Both images are folded into the unit cell (:func:`cell_average`, pixels in ``where``
    only). The data's cell average gives the motif (:func:`cell_maxima`, ``min_height``); a
    column other than the strongest counts as erased when it stands out of the data's average
    by at least ``significance`` times that average's noise (half the standard deviation of the
    difference between the averages of the two checkerboard halves of the cells: correlated
    noise included) and its height over the median, relative to the strongest column's, is in
    the estimate below ``fraction`` of the data's. A network that has learnt a lattice without
    a weak sublattice (the S2 columns of a noisy MoS2 image) erases that sublattice
    everywhere; the fold finds it, whatever the noise, because every cell contributes.

    Returns
    -------
    fractions : ndarray, shape (K, 2)
        Fractional positions of the erased columns (K = 0: none).
    nn : float
        Nearest-neighbour column distance of the data's motif, px (0 when nothing is erased).
    """
    none = (np.empty((0, 2)), 0.0)
    reciprocal = np.asarray(reciprocal, np.float64)
    bins = cell_bins(reciprocal)
    noisy = np.asarray(noisy, np.float64)
    flat, cells = _cell_index(noisy.shape, reciprocal, bins, tuple(origin))
    select = np.ones(flat.shape, bool) if where is None else np.asarray(where, bool).ravel()
    data = _binned_average(flat, noisy.ravel(), bins, select)
    model = _binned_average(flat, np.asarray(estimate, np.float64).ravel(), bins, select)
    if not (np.all(np.isfinite(data)) and np.all(np.isfinite(model))):
        return none
    try:
        motif = cell_maxima(data, reciprocal, min_height)
    except ValueError:
        return none
    if len(motif) < 2:
        return none
    even = (cells[:, 0] + cells[:, 1]) % 2 == 0
    half = [_binned_average(flat, noisy.ravel(), bins, select & side) for side in (even, ~even)]
    if not all(np.all(np.isfinite(h)) for h in half):
        return none
    noise = 0.5 * float(np.std(half[0] - half[1]))
    at = tuple(np.mod(np.rint(motif * bins).astype(int), bins).T)
    rise_data = data[at] - np.median(data)
    rise_model = model[at] - np.median(model)
    if rise_data[0] <= 0 or rise_model[0] <= 0:
        return none
    relative_data = rise_data / rise_data[0]
    relative_model = rise_model / rise_model[0]
    erased = (
        (np.arange(len(motif)) > 0)
        & (rise_data >= significance * noise)
        & (relative_model < fraction * relative_data)
    )
    if not erased.any():
        return none
    return motif[erased], nearest_neighbour(motif, reciprocal)


def restore_sites(
    noisy: np.ndarray,
    estimate: np.ndarray,
    reciprocal: np.ndarray,
    fractions: np.ndarray,
    nn: float,
    *,
    origin=(0, 0),
) -> np.ndarray:
    """Put the data back at the sites of erased motif columns (:func:`erased_columns`).

    Around every site of each erased column (a Gaussian of :data:`SITE_WIDTH` × ``nn``) the
    residual ``noisy − estimate``, low-passed by a Gaussian of :data:`SITE_LOWPASS` × ``nn``,
    is added to the estimate: where the data show a column it comes back with its own
    intensity and position, where they show none (a vacancy) only low-passed noise does.
    Pixel (0, 0) is global pixel ``origin``. Returns a new float32 array.
    """
    reciprocal = np.asarray(reciprocal, np.float64)
    direct = np.linalg.inv(reciprocal)
    shape = np.shape(estimate)
    frac = _fractions(shape, reciprocal, tuple(origin))
    mask = np.zeros(shape, np.float64)
    scale = -0.5 / (SITE_WIDTH * nn) ** 2
    for site in np.asarray(fractions, np.float64):
        # to the nearest site (within half a cell: where the mask is)
        delta = [f - s - np.rint(f - s) for f, s in zip(frac, site, strict=True)]
        dy = direct[0, 0] * delta[0] + direct[0, 1] * delta[1]
        dx = direct[1, 0] * delta[0] + direct[1, 1] * delta[1]
        np.maximum(mask, np.exp(scale * (dy**2 + dx**2)), out=mask)
    residual = np.asarray(noisy, np.float32) - np.asarray(estimate, np.float32)
    residual = ndimage.gaussian_filter(residual, SITE_LOWPASS * nn, mode="reflect", truncate=4.0)
    return (np.asarray(estimate, np.float32) + mask.astype(np.float32) * residual).astype(
        np.float32, copy=False
    )


PHASE_WIDTH = 2.0
"""Gaussian low-pass of the local lattice phase (:func:`local_fractions`), in unit cells."""


def local_fractions(
    reference: np.ndarray, reciprocal: np.ndarray, cell: float, *, origin=(0, 0)
) -> list[np.ndarray]:
    """Each pixel's fractional coordinates along g1 and g2, following the local lattice.

    Geometric phase analysis (Hÿtch, Snoeck & Kilaas 1998): ``reference`` (a clean estimate of
    the image, e.g. the auto-encoder's output) is demodulated at each reflection ``g`` and
    low-passed by a Gaussian of :data:`PHASE_WIDTH` × ``cell`` px; its phase ``ψ`` gives the
    local position in the cell, ``f = g·r + ψ / 2π``. Where the lattice is strained, distorted
    by the scan or shifted across a fault, the fraction follows it, which a fold with the
    global lattice (:func:`_fractions`) does not. Pixel (0, 0) is global pixel ``origin``, so
    tiles give the values of the whole image (up to the low-pass's reach). The low-pass runs
    in Fourier space on the image mirrored by 5 widths at its edges (as ``mode="reflect"`` of
    :func:`scipy.ndimage.gaussian_filter`, without its truncation; 5× faster at 1024² px).
    """
    from scipy import fft

    reference = np.asarray(reference, np.float64)
    reciprocal = np.asarray(reciprocal, np.float64)
    width = PHASE_WIDTH * float(cell)
    pad = math.ceil(5.0 * width)
    shape = [fft.next_fast_len(n + 2 * pad) for n in reference.shape]
    # the Gaussian's transfer function on that grid (cycles/px)
    transfer = [np.exp(-2.0 * (np.pi * width * fft.fftfreq(n)) ** 2) for n in shape]
    kernel = transfer[0][:, None] * transfer[1][None, :]
    out = []
    for frac in _fractions(reference.shape, reciprocal, tuple(origin)):
        demodulated = reference * np.exp(-2j * np.pi * frac)
        padded = np.zeros(shape, np.complex128)
        padded[: reference.shape[0] + 2 * pad, : reference.shape[1] + 2 * pad] = np.pad(
            demodulated, pad, mode="symmetric"
        )
        smooth = fft.ifft2(fft.fft2(padded, workers=-1) * kernel, workers=-1)
        smooth = smooth[pad : pad + reference.shape[0], pad : pad + reference.shape[1]]
        out.append(frac + np.angle(smooth) / (2.0 * np.pi))
    return out


def _flat_bins(fractions: list[np.ndarray], bins: np.ndarray) -> np.ndarray:
    """Flat cell-bin index (H·W,) of fractional coordinates (bin k centred on k / bins)."""
    flat = np.zeros(fractions[0].shape, np.intp)
    for axis, frac in enumerate(fractions):
        flat = flat * bins[axis] + np.mod(np.rint(frac * bins[axis]), bins[axis]).astype(np.intp)
    return flat.ravel()


def periodic_part(
    residual: np.ndarray, fractions: list[np.ndarray], bins: np.ndarray, where=None
) -> np.ndarray | None:
    """The residual averaged over all unit cells, per cell bin (None if a bin stays empty).

    With the local fractions of :func:`local_fractions` this is the part of an estimate's error
    that repeats in every cell (a column shape or a sublattice intensity missed everywhere):
    hundreds of cells average the noise out of it.
    """
    select = None if where is None else np.asarray(where, bool).ravel()
    flat = _flat_bins(fractions, bins)
    table = _binned_average(flat, np.asarray(residual, np.float64).ravel(), bins, select)
    return table if np.all(np.isfinite(table)) else None


def periodic_image(table: np.ndarray, fractions: list[np.ndarray]) -> np.ndarray:
    """The per-cell-bin ``table`` laid out on the image of ``fractions`` (float32).

    Interpolated linearly between bins (periodically): the image is continuous in the
    fractions, so a tile, whose fractions differ from the whole image's by rounding, gives the
    same values, and no bin edge shows.
    """
    coordinates = [np.mod(f * n, n) for f, n in zip(fractions, table.shape, strict=True)]
    out = ndimage.map_coordinates(
        np.asarray(table, np.float64), coordinates, order=1, mode="grid-wrap"
    )
    return out.astype(np.float32)
