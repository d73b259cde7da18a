"""Lattice measurement from the Fourier transform (NumPy/SciPy only).

One measurement shared by :func:`stem_ae.denoise` (its sampling match), :mod:`stem_ae.analysis`
(the default column radius) and ``stem-ae info`` / ``stem-ae denoise`` (what is reported):
:func:`measure_lattice` pools the power spectra of the frames of a series, :func:`estimate_lattice`
and :func:`estimate_period` measure one image, and all return or use one
:class:`LatticeEstimate`; :func:`estimate_spacing` falls back on the radial power profile when
no single 2-D lattice stands out (several grains or particles).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, replace

import numpy as np

from stem_ae._common import WINDOW, as_image
from stem_ae._filters import power_spectra

LATTICE_CROP = 1024
"""Side (px) of the central square on which the lattice is measured (the whole image if smaller)."""

FALSE_ALARM = 0.01
"""Probability that an image of pure noise (white or smoothly coloured: shot noise, amorphous
film, vacuum, scan streaks) yields a lattice reflection: the detection threshold at each
searched spatial frequency is set for ``FALSE_ALARM / M`` (Bonferroni over the ``M`` searched
frequency bins)."""

MIN_SPACING_PX = 2.5
"""Shortest plane spacing (px) searched for a lattice reflection. Nyquist is 2 px; between 2 and
2.5 px only pixel-level artefacts (detector read-out patterns, scan interference, aliasing)
appear in practice, and no atomic-resolution image is recorded that coarse (at least ~3 px per
plane spacing are needed to see a column)."""

PLANE_SPACING_RANGE = (1.0, 20.0)
"""Plane spacings (Å) searched when the pixel size is known. Lower bound: a projected lattice of
atom columns seen along any zone axis has first-order reflections (its primitive reciprocal
vectors) no finer than ≈1.26 Å (diamond [001], 220; Be [0001] 1.98 Å, Au [001] 200 at 2.04 Å,
SrTiO3 [001] 110 at 2.76 Å): 1.0 Å keeps a margin for strain and miscalibration, while periods
below it (the 0.25 Å of a scan artefact) can only be noise. Finer higher-order reflections
still refine the lattice once found. Upper bound: cells of the largest common crystals
(complex oxides, superstructures) stay below ~20 Å; coarser periods are moiré or thickness
fringes, not columns."""

PRIOR_TOLERANCE = 0.10
"""Relative window about the spacings implied by ``lattice_constant`` (``a``, ``a/√2``, ``a/2``,
``a·√3/2``) searched first at a lower threshold (as :func:`check_calibration`'s 10 %)."""

FOLD_FRACTION = 0.25
"""A strongest reflection that is the sum or difference of two shorter lattice reflections, each
with at least this fraction of its power, is folded onto the stronger of them for
:attr:`LatticeEstimate.low_order_spacings`. The bright rims of an ABF image (a ring-shaped contrast
about each dark column) make the second order the strongest: on simulated SrTiO3 [001] ABF
scenes (``benchmarks/quality.py``, scene ``abf``) the (2, 0) reflection at a/2 outshines the
(1, 1) at the column spacing a/√2, which still holds 0.3–0.6 of its power; on bright-column images
the first orders are the strongest and nothing folds."""

_SPLIT_BINS = 8.0  # spacings above tile/8 px are searched on the whole crop's periodogram
_SEARCH_RADIUS = 4.0  # frequency bins: nearer the origin a ring's background is too uncertain
_MIN_RADIUS = 3.0  # frequency bins: nearest the origin that a reflection is looked up
_REFINED_PEAKS = 8  # strongest significant peaks refined by a zoomed DFT
_AXIS_HALF_WIDTH = 1  # bins either side of the k_x = 0 and k_y = 0 lines (scan axes)
_AXIS_WINDOW = 15  # bins along a scan axis over which its own (streak) background is estimated
_HANN_BINS = 7.6  # Fourier bins per independent sample: ±k symmetry (2) x Hann neighbours (3.8)
_FIT_RINGS = 2  # the background at a ring is a log-linear fit over rings r-2..r+2
_MASK_TAIL = 1e-4  # bins beyond this tail of the first background pass are left out of the second
_MEDIAN_EFFICIENCY = 0.5  # samples a median is worth, per sample (exponential noise: 0.48)
_MIN_BACKGROUND_BINS = 80  # the ring fit widens until it holds this many bins


_ONE_FAMILY = (
    "only one family of lattice planes stands out in the Fourier transform (fringes, or "
    "particles too weak or too few for a 2-D lattice); stem_ae needs an atomic-column lattice "
    "(estimate_spacing can still measure the spacing from the radial power profile)."
)


@dataclass(frozen=True)
class LatticeEstimate:
    """A 2-D lattice measured from an image's Fourier transform.

    Attributes
    ----------
    reciprocal : ndarray, shape (2, 2)
        Primitive reciprocal basis as rows ``[g1, g2]``, ``(y, x)`` in 1/px (``|g1| <= |g2|``):
        every indexed reflection is ``h*g1 + k*g2``.
    spacings : tuple of float
        Plane spacings ``1/|g1|, 1/|g2|``, px.
    angles : tuple of float
        Directions of ``g1``, ``g2`` in degrees counter-clockwise from +x (y grows downwards),
        folded into [0, 180).
    dominant_spacing : float
        Spacing of the strongest reflection, px (what :meth:`stem_ae.Lattice.dominant_spacing`
        predicts for a simulated lattice).
    dominant_angle : float
        Direction of the strongest reflection, degrees as ``angles``.
    second_spacing : float
        Spacing of the strongest reflection not collinear with the dominant one, px.
    quality : float
        Power of the strongest reflection over the mean noise power at its frequency (the
        background of its ring, lattice peaks left out); above the threshold of
        :data:`FALSE_ALARM` (typically 10–60 on one 128² periodogram, 2–5 when averaged over
        many tiles).
    radial_spacing : float
        Spacing (px) of the strongest peak of the azimuthally averaged power spectrum over its
        smooth background, NaN when no ring stands out: the size of the lattice spacing
        whatever the orientations (several grains or particles). See :func:`estimate_spacing`.
    low_order_spacings : tuple of float
        ``dominant_spacing`` and ``second_spacing`` after folding: where the strongest
        reflection is the sum or difference of two shorter lattice reflections that each hold
        at least :data:`FOLD_FRACTION` of its power, the stronger of those takes its place (as
        often as that applies). Equal to them on bright-column images; longer on ABF images,
        whose bright rims make the second order the strongest (:meth:`sampling_spacings`).
        NaN for :meth:`from_spacing`.
    """

    reciprocal: np.ndarray
    spacings: tuple[float, float]
    angles: tuple[float, float]
    dominant_spacing: float
    dominant_angle: float
    second_spacing: float
    quality: float
    radial_spacing: float = math.nan
    low_order_spacings: tuple[float, float] = (math.nan, math.nan)

    def sampling_spacings(self, dark: bool = False) -> tuple[float, float]:
        """``(dominant, second)`` spacings (px) that set the model's sampling.

        For bright columns, :attr:`dominant_spacing` and :attr:`second_spacing`. For dark
        columns (``dark=True``: ABF, BF), :attr:`low_order_spacings` where measured: the rims
        about the columns make a higher order the strongest reflection, and the columns'
        own repeat is the lower order it folds onto (:data:`FOLD_FRACTION`).
        """
        if dark and all(math.isfinite(s) for s in self.low_order_spacings):
            return self.low_order_spacings
        return self.dominant_spacing, self.second_spacing

    @classmethod
    def from_spacing(cls, spacing: float) -> LatticeEstimate:
        """An isotropic stand-in when only a spacing is known (radial profile, px)."""
        spacing = float(spacing)
        return cls(
            np.eye(2) / spacing,
            (spacing, spacing),
            (0.0, 90.0),
            spacing,
            0.0,
            spacing,
            math.nan,
            spacing,
        )

    @property
    def radial_only(self) -> bool:
        """True for :meth:`from_spacing`: a spacing, but no 2-D lattice (no orientation)."""
        return math.isnan(self.quality)


def _angle(g: np.ndarray) -> float:
    return float(round(float(np.degrees(np.arctan2(-g[0], g[1]))), 6) % 180.0)


# ---------------------------------------------------------------------------------------------
# spectra


def _clipped_crop(image: np.ndarray) -> np.ndarray:
    """Central square crop (≤ LATTICE_CROP px), clipped to its 0.1–99.9 %, mean-free."""
    side = min(min(image.shape), LATTICE_CROP)
    y0 = (image.shape[0] - side) // 2
    x0 = (image.shape[1] - side) // 2
    crop = np.asarray(image[y0 : y0 + side, x0 : x0 + side], np.float64)
    low, high = np.percentile(crop, [0.1, 99.9])
    crop = np.clip(crop, low, high)
    return crop - crop.mean()


def _prewhiten(crop: np.ndarray) -> np.ndarray:
    """The discrete Laplacian of ``crop`` (side - 2 px): a spectrum flattened by |k|^4 near 0.

    A linear filter scales a reflection and the noise at its frequency alike, so their ratio
    is unchanged; but the Hann taper's leakage of the strong low-frequency power (thickness,
    particles, a smooth amorphous spectrum), which falls along the k_x = 0 and k_y = 0 lines
    and would otherwise pass for reflections at high frequency, is suppressed.
    """
    return (
        4 * crop[1:-1, 1:-1] - crop[:-2, 1:-1] - crop[2:, 1:-1] - crop[1:-1, :-2] - crop[1:-1, 2:]
    )


def _dewhiten(spectrum: _Spectrum) -> _Spectrum:
    """Divide out what :func:`_prewhiten` and the Hann taper make of white noise.

    The expected periodogram of prewhitened white noise is the filter's power gain (anisotropic
    at high frequency, ~|k|^4 near 0) convolved with the taper's spectral window; dividing by it
    makes white noise flat again, while the leakage of coloured low-frequency power stays gone.
    """
    scale, expected = _white_response(spectrum.n)
    spectrum.amplitude = spectrum.power / scale
    spectrum.power = spectrum.power / expected
    return spectrum


@functools.lru_cache(maxsize=8)
def _white_response(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, expected)`` of :func:`_dewhiten` for side ``n`` (the prewhitening gain times the
    taper's power, and the periodogram white noise is expected to give), fftshifted and
    read-only: they depend on the side alone, so a batch of same-sized images computes them
    once."""
    k = np.fft.fftfreq(n)
    gain_y = 4 * np.sin(np.pi * k) ** 2
    gain = (gain_y[:, None] + gain_y[None, :]) ** 2
    window = np.abs(np.fft.fft2(np.outer(_hann(n), _hann(n)))) ** 2
    expected = np.fft.ifft2(np.fft.fft2(window) * np.fft.fft2(gain)).real
    expected = np.fft.fftshift(np.maximum(expected, 1e-12 * expected.max()))
    taper_sum = float(_hann(n).sum()) ** 2
    scale = np.fft.fftshift(np.maximum(gain, 1e-300) * taper_sum**2)
    scale.flags.writeable = expected.flags.writeable = False
    return scale, expected


def _gain(g: np.ndarray) -> float:
    """Power gain of :func:`_prewhiten` at frequency ``g`` (1/px)."""
    return float((4 * math.sin(math.pi * g[0]) ** 2 + 4 * math.sin(math.pi * g[1]) ** 2) ** 2)


def _hann(n: int) -> np.ndarray:
    return np.hanning(n + 2)[1:-1]


def _tapered(crop: np.ndarray) -> np.ndarray:
    taper = _hann(crop.shape[0])
    return (crop - crop.mean()) * np.outer(taper, taper)


def _tile_side(side: int) -> int:
    """Welch tile side (px) for a crop of ``side`` px: 128 up to 511 px, 256 above; the crop
    itself below 256 px (a 128-px tile would not hold the 3–4 periods of a coarse lattice)."""
    if side < 256:
        return side
    return 128 if side < 512 else 256


def _tile_starts(side: int, tile: int) -> np.ndarray:
    """Evenly spread tile origins that overlap by at least half a tile and cover the crop."""
    count = 1 if tile >= side else math.ceil((side - tile) / (tile / 2)) + 1
    return np.rint(np.linspace(0, side - tile, count)).astype(int)


def _overlap_sum(starts: np.ndarray, tile: int) -> float:
    """Σ over tile pairs of the squared Hann overlap correlation along one axis (Welch 1967)."""
    taper = _hann(tile)
    norm = float(taper @ taper)
    total = 0.0
    for a in starts:
        for b in starts:
            shift = abs(int(a) - int(b))
            if shift < tile:
                total += (float(taper[shift:] @ taper[: tile - shift]) / norm) ** 2
    return total


@dataclass
class _Spectrum:
    """One power spectrum (fftshifted, side ``n``), its noise law and its searched band."""

    power: np.ndarray
    dof: float  # degrees of freedom of a noise bin (2 per independent periodogram)
    ratio: np.ndarray = None  # power over the noise background at the same frequency
    bg_dof: np.ndarray = None  # degrees of freedom of that background estimate
    search: np.ndarray = None  # bins searched for reflections (one of each ±g pair)
    amplitude: np.ndarray = None  # squared amplitude of a cosine that would give the power

    @property
    def n(self) -> int:
        return self.power.shape[0]

    def frequency(self, index) -> np.ndarray:
        """(y, x) frequency in 1/px of the bins ``index`` (row, column arrays)."""
        return (np.stack(index, -1) - self.n // 2) / self.n

    def bin_of(self, g: np.ndarray) -> tuple[int, int] | None:
        """Nearest bin of frequency ``g`` (1/px), None outside the spectrum's usable ring."""
        v, u = np.rint(np.asarray(g) * self.n).astype(int)
        if not _MIN_RADIUS <= math.hypot(v, u) <= self.n / 2 - 1:
            return None
        return int(v + self.n // 2), int(u + self.n // 2)


def _welch(crops: list[np.ndarray], tile: int) -> _Spectrum:
    """Average of the tiles' Hann-tapered periodograms over all crops (frames)."""
    side = crops[0].shape[0]
    starts = _tile_starts(side, tile)
    taper = np.outer(_hann(tile), _hann(tile))
    power = np.zeros((tile, tile))
    for crop in crops:
        for y0 in starts:  # a row of tiles at a time: one batched FFT, bounded memory
            pieces = np.stack([crop[y0 : y0 + tile, x0 : x0 + tile] for x0 in starts])
            pieces -= pieces.mean(axis=(1, 2), keepdims=True)
            pieces *= taper
            power += power_spectra(pieces).sum(axis=0)
    count = len(starts) ** 2
    power = np.fft.fftshift(power) / (count * len(crops))
    # equivalent degrees of freedom of the average of correlated (overlapping) periodograms
    dof = len(crops) * 2.0 * count**2 / _overlap_sum(starts, tile) ** 2
    return _Spectrum(power, dof)


def _gamma_quantile(dof: float, q: float) -> float:
    """Quantile ``q`` of a noise bin over its mean: Gamma(dof/2) of mean 1."""
    from scipy import special

    return float(special.gammaincinv(dof / 2, q) / (dof / 2))


def _f_tail(ratio, dof, bg_dof):
    """P(F > ratio) for F(dof, bg_dof): a noise bin over an independent background estimate."""
    from scipy import special

    ratio = np.maximum(np.asarray(ratio, np.float64), 0.0)
    return special.betainc(bg_dof / 2, dof / 2, bg_dof / (bg_dof + dof * ratio))


def _f_threshold(probability: float, dof: float, bg_dof: float) -> float:
    """The ratio that a noise bin exceeds with ``probability``."""
    from scipy import stats

    return float(stats.f.isf(probability, dof, bg_dof))


@functools.lru_cache(maxsize=8)
def _geometry(n: int):
    """Centred frequency indices ``v, u``, their radius and the scan-axis mask of an n × n
    spectrum (cached and read-only: every spectrum of a measurement asks for the same)."""
    v, u = np.indices((n, n)) - n // 2
    radius = np.hypot(v, u)
    axis = (np.abs(u) <= _AXIS_HALF_WIDTH) | (np.abs(v) <= _AXIS_HALF_WIDTH)
    for array in (v, u, radius, axis):
        array.flags.writeable = False
    return v, u, radius, axis


def _ring_order(values, ring, size):
    """Indices that sort ``values`` by ring, then by value within each ring."""
    by_value = np.argsort(values)
    # rings fit 16 bits (a spectrum is at most a few thousand bins wide): numpy's radix sort
    narrow = ring.astype(np.uint16) if size <= np.iinfo(np.uint16).max else ring
    return by_value[np.argsort(narrow[by_value], kind="stable")]


def _sorted_ring_median(ordered, ring, size):
    """Per-ring medians of ``ordered``, values already sorted by ring, then by value (NaN for
    an empty ring): the middle value, or the mean of the two middle values, as ``np.median``."""
    counts = np.bincount(ring, minlength=size)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    filled = counts > 0
    low = starts + np.maximum(counts - 1, 0) // 2
    high = starts + counts // 2
    median = np.full(size, np.nan)
    median[filled] = (ordered[low[filled]] + ordered[high[filled]]) / 2
    return median


def _ring_median(values, ring, size):
    """The median of ``values`` per ring (NaN for an empty ring), as ``np.median`` per ring."""
    order = _ring_order(values, ring, size)
    return _sorted_ring_median(values[order], ring[order], size)


def _ring_fit(values, ring, size) -> tuple[np.ndarray, np.ndarray]:
    """Smooth log background per ring from per-bin ``values``: weighted log-linear fits of the
    ring means over at least ``±_FIT_RINGS`` rings, widened until they hold
    ``_MIN_BACKGROUND_BINS`` bins. Returns the fitted log mean per ring and the number of bins
    whose plain mean would be as precise as the fit's value at the ring."""
    sums = np.bincount(ring, values, minlength=size)
    counts = np.bincount(ring, minlength=size).astype(float)
    present = counts > 0
    log_mean = np.log(np.maximum(np.where(present, sums / np.maximum(counts, 1), 1), 1e-300))
    rings = np.arange(size, dtype=float)
    # prefix sums of the weighted moments, so that every window is two look-ups
    moments = [
        counts,
        counts * rings,
        counts * rings**2,
        counts * log_mean,
        counts * rings * log_mean,
    ]
    prefix = [np.concatenate([[0.0], np.cumsum(m)]) for m in moments]
    occupied = np.concatenate([[0], np.cumsum(present)])
    reach = np.full(size, 8 * _FIT_RINGS)
    for width in range(8 * _FIT_RINGS, _FIT_RINGS - 1, -1):
        lo = np.clip(rings - width, 0, size - 1).astype(int)
        hi = np.clip(rings + width, 0, size - 1).astype(int)
        enough = prefix[0][hi + 1] - prefix[0][lo] >= _MIN_BACKGROUND_BINS
        reach = np.where(enough, width, reach)
    lo = np.clip(rings - reach, 0, size - 1).astype(int)
    hi = np.clip(rings + reach, 0, size - 1).astype(int)
    s0, s1, s2, sy, sxy = (p[hi + 1] - p[lo] for p in prefix)
    # moments about the ring itself: x = ring' - r
    r = rings
    m1 = s1 - r * s0
    m2 = s2 - 2 * r * s1 + r**2 * s0
    my = sxy - r * sy
    determinant = s0 * m2 - m1**2
    linear = (occupied[hi + 1] - occupied[lo] >= 3) & (determinant > 1e-9 * np.maximum(s0 * m2, 1))
    safe = np.where(linear, determinant, 1.0)
    intercept = np.where(linear, (m2 * sy - m1 * my) / safe, sy / np.maximum(s0, 1e-300))
    # the intercept's variance is (X'WX)^-1[0, 0] = m2 / det per unit-weight variance
    pooled = np.where(linear, safe / np.maximum(m2, 1e-300), s0)
    valid = s0 > 0
    fitted = np.interp(rings, rings[valid], intercept[valid])
    return fitted, np.where(valid, pooled, 0.0)


def _background(spectrum: _Spectrum) -> None:
    """Fill ``ratio`` and ``bg_dof``: each bin over the noise power expected at its frequency.

    Off the scan axes, the background is the median power of the bin's ring (rounded radius)
    over the median of the noise law, smoothed by a log-linear fit over at least 5 rings and 80
    bins (it follows the steep fall of an amorphous or thickness background) and interpolated
    at the bin's exact radius. The lattice peaks are left out by iteration: bins beyond the
    0.9999 quantile of the noise law over the current background, dilated by 2 bins (the Hann
    main lobe), are dropped and the fit repeated; the medians ignore the shoulders of weaker
    reflections. The background's degrees of freedom are those of the fit under pure noise.
    On the scan axes (``k_x = 0`` or ``k_y = 0`` within one bin: where scan streaks put their
    power) the background is the larger of that and a running median along the axis itself, so
    that a streak spectrum is not read as reflections.
    """
    from scipy import ndimage

    power, dof = spectrum.power, spectrum.dof
    n = power.shape[0]
    v, u, radius, axis = _geometry(n)
    ring = np.rint(radius).astype(int)
    size = int(ring.max()) + 1
    usable = ~axis & (radius > 0)
    # the bins sorted once by ring and power: each pass's ring medians over the bins it keeps
    # are then read off in linear time (the same values as np.median per ring)
    candidates = np.flatnonzero(usable)
    order = candidates[_ring_order(power.ravel()[candidates], ring.ravel()[candidates], size)]
    sorted_power, sorted_ring = power.ravel()[order], ring.ravel()[order]

    def ring_median(mask):
        chosen = mask.ravel()[order]
        return _sorted_ring_median(sorted_power[chosen], sorted_ring[chosen], size)

    median = ring_median(usable)
    median = np.where(np.isfinite(median), median, 0.0) / _gamma_quantile(dof, 0.5)
    per_bin = median[ring[usable]]
    keep = usable
    cut = _gamma_quantile(dof, 1 - _MASK_TAIL)
    # the precision of the background under the null hypothesis (pure noise: nothing masked)
    _, pooled = _ring_fit(power[usable], ring[usable], size)
    for _ in range(3):
        fitted, _ = _ring_fit(per_bin, ring[keep], size)
        background = np.exp(np.interp(radius, np.arange(size), fitted))
        # dilation by the 5 × 5 square (zero border): a separable maximum filter, as exact
        high = ndimage.maximum_filter(power > cut * background, size=5, mode="constant")
        if np.count_nonzero(usable & ~high) < np.count_nonzero(usable) // 2:
            # no noise floor (a noise-free simulation): the peaks' leakage stands out of the
            # background everywhere; the last mask stays
            break
        keep = usable & ~high
        # ring medians (the shoulders of weak reflections left unmasked do not raise them)
        median = ring_median(keep)
        per_bin = np.nan_to_num(median)[ring[keep]] / _gamma_quantile(dof, 0.5)
    fitted, _ = _ring_fit(per_bin, ring[keep], size)
    background = np.exp(np.interp(radius, np.arange(size), fitted))
    bg_dof = _MEDIAN_EFFICIENCY * dof * np.maximum(pooled[ring], 1.0) / _HANN_BINS
    # the scan axes: their own background along the line, from few samples
    centre = n // 2
    factor = _gamma_quantile(dof, 0.5)
    line_y = ndimage.median_filter(power[:, centre], _AXIS_WINDOW, mode="nearest") / factor
    line_x = ndimage.median_filter(power[centre, :], _AXIS_WINDOW, mode="nearest") / factor
    on_y = np.abs(u) <= _AXIS_HALF_WIDTH  # the k_x = 0 line (row-to-row streaks)
    on_x = np.abs(v) <= _AXIS_HALF_WIDTH
    background = np.where(on_y, np.maximum(background, line_y[:, None]), background)
    background = np.where(on_x, np.maximum(background, line_x[None, :]), background)
    # a running median of correlated bins along a line: ~1/3 of them count as independent
    axis_dof = dof * _AXIS_WINDOW / 3.0
    bg_dof = np.where(axis, np.minimum(bg_dof, axis_dof), bg_dof)
    spectrum.ratio = power / np.maximum(background, np.finfo(float).tiny)
    spectrum.bg_dof = bg_dof


def _spectra(crops: list[np.ndarray], lo: float, hi: float) -> list[_Spectrum]:
    """The spectra searched for reflections with plane spacings in ``[lo, hi]`` px.

    A Welch average over half-overlapping tiles (:func:`_tile_side`) holds spacings up to an
    eighth of the tile (nearer the origin its main lobes fill the small rings); longer spacings
    (when the tile is smaller than the crop) are searched
    on the periodogram of the whole tapered crop, at its finer frequency resolution.
    """
    tile = _tile_side(crops[0].shape[0])
    crops = [_prewhiten(crop) for crop in crops]
    side = crops[0].shape[0]
    tile = min(tile, side)
    result = []
    welch = _dewhiten(_welch(crops, tile))
    _background(welch)
    split = tile / _SPLIT_BINS if tile < side else math.inf
    _, _, radius, _ = _geometry(tile)
    welch.search = _search_band(radius, tile, lo, min(hi, split))
    result.append(welch)
    if tile < side:
        full = _dewhiten(_welch(crops, side))
        _background(full)
        _, _, radius, _ = _geometry(side)
        full.search = _search_band(radius, side, max(lo, split), hi) & (radius < side / split)
        result.append(full)
    return result


def _search_band(radius: np.ndarray, n: int, lo: float, hi: float) -> np.ndarray:
    """Bins of one half-plane whose spacing ``n / radius`` lies in ``[lo, hi]`` px."""
    v, u, _, _ = _geometry(n)
    band = (radius >= max(_SEARCH_RADIUS, n / hi)) & (radius <= min(n / 2 - 1, n / lo))
    return band & ((v > 0) | ((v == 0) & (u > 0)))


# ---------------------------------------------------------------------------------------------
# detection


@dataclass(eq=False)
class _Peak:
    g: np.ndarray  # (y, x) 1/px
    ratio: float
    probability: float  # tail probability of its ratio under noise
    spectrum: int
    power: float = 0.0  # refined power on the whole crop


def _on_axis(g: np.ndarray, side: int) -> bool:
    """Whether a refined reflection lies on a scan axis (within one bin of the whole crop)."""
    return bool(min(abs(g[0]), abs(g[1])) * side <= 1.0)


def _square_pair(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal lengths (2 %) at right angles (3°): a square lattice, which scan artefacts at two
    unrelated frequencies do not mimic."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return abs(na / nb - 1) <= 0.02 and abs(a @ b) <= math.sin(math.radians(3)) * na * nb


def _refine_peak(crops: list[np.ndarray], g: np.ndarray, half_width: float, points: int = 21):
    """Frequency (1/px) and power of a Fourier peak within ``half_width`` (1/px) of ``g``.

    The DFT of the tapered crops is evaluated on a ``points``² grid about ``g`` (separable matrix
    products), then a parabola through the log power around the best grid point gives the
    sub-step position (about 0.01 bin of the crop).
    """
    side = crops[0].shape[0]
    offsets = np.linspace(-half_width, half_width, points)
    positions = np.arange(side)
    ey = np.exp(-2j * np.pi * np.outer(g[0] + offsets, positions))
    ex = np.exp(-2j * np.pi * np.outer(g[1] + offsets, positions))
    stacked = np.concatenate([ey.real, ey.imag])  # the crops are real: real products, no copy
    power = 0.0
    for crop in crops:
        rows = stacked @ crop
        zoom = (rows[:points] + 1j * rows[points:]) @ ex.T
        power = power + zoom.real**2 + zoom.imag**2
    iy, ix = np.unravel_index(np.argmax(power), power.shape)
    iy, ix = min(max(iy, 1), points - 2), min(max(ix, 1), points - 2)
    logp = np.log(np.maximum(power, np.finfo(float).tiny))
    shift = []
    for left, mid, right in (
        (logp[iy - 1, ix], logp[iy, ix], logp[iy + 1, ix]),
        (logp[iy, ix - 1], logp[iy, ix], logp[iy, ix + 1]),
    ):
        curvature = left - 2 * mid + right
        shift.append(
            float(np.clip(0.5 * (left - right) / curvature, -1, 1)) if curvature < 0 else 0.0
        )
    step = offsets[1] - offsets[0]
    refined = np.array([g[0] + offsets[iy] + shift[0] * step, g[1] + offsets[ix] + shift[1] * step])
    return refined, float(power[iy, ix])


def _amplitude_at(spectrum: _Spectrum, g: np.ndarray) -> float:
    """Squared amplitude of the cosine that the power at ``g`` implies (comparable between
    spectra of different sides)."""
    return float(spectrum.amplitude[spectrum.bin_of(g)])


def _refine(peak: _Peak, spectra: list[_Spectrum], tapered: list[np.ndarray]) -> _Peak:
    side = tapered[0].shape[0]
    g = peak.g
    n = spectra[peak.spectrum].n
    if n < side:
        g, _ = _refine_peak(tapered, g, 1.0 / n, points=9)
    g, power = _refine_peak(tapered, g, 1.0 / side)
    return _Peak(g, peak.ratio, peak.probability, peak.spectrum, power)


def _candidates(spectra: list[_Spectrum]) -> list[_Peak]:
    """Local maxima (3×3) of the ratio over the searched bins, most significant first."""
    from scipy import ndimage

    peaks = []
    for index, spectrum in enumerate(spectra):
        ratio = spectrum.ratio
        maxima = spectrum.search & (ratio == ndimage.maximum_filter(ratio, size=3))
        rows, cols = np.nonzero(maxima)
        probability = _f_tail(ratio[rows, cols], spectrum.dof, spectrum.bg_dof[rows, cols])
        g = spectrum.frequency((rows, cols))
        for k in range(rows.size):
            peaks.append(_Peak(g[k], float(ratio[rows[k], cols[k]]), float(probability[k]), index))
    peaks.sort(key=lambda peak: (peak.probability, -peak.ratio))
    return peaks


def _prior_mask(spectra, spacings):
    """Per spectrum, the searched bins within PRIOR_TOLERANCE of one of ``spacings`` (px)."""
    masks = []
    for spectrum in spectra:
        _, _, radius, _ = _geometry(spectrum.n)
        spacing = spectrum.n / np.maximum(radius, 1e-9)
        near = np.zeros_like(spectrum.search)
        for expected in spacings:
            near |= np.abs(spacing / expected - 1) <= PRIOR_TOLERANCE
        masks.append(spectrum.search & near)
    return masks


def _lookup(spectra: list[_Spectrum], index: int, g: np.ndarray, reach: int = 0):
    """(ratio, dof, bg_dof) at frequency ``g`` (max over ±``reach`` bins), None if outside."""
    spectrum = spectra[index]
    where = spectrum.bin_of(g)
    if where is None:
        return None
    y, x = where
    if reach:
        lo_y, lo_x = max(y - reach, 0), max(x - reach, 0)
        window = spectrum.ratio[lo_y : y + reach + 1, lo_x : x + reach + 1]
        dy, dx = np.unravel_index(np.argmax(window), window.shape)
        y, x = lo_y + dy, lo_x + dx
    return float(spectrum.ratio[y, x]), spectrum.dof, float(spectrum.bg_dof[y, x])


def _spectrum_for(spectra: list[_Spectrum], g: np.ndarray) -> int:
    """The spectrum in whose search band a frequency of this size lies."""
    norm = float(np.linalg.norm(g))
    if len(spectra) > 1 and norm * spectra[0].n < _SPLIT_BINS:
        return 1
    return 0


def _rotate(g: np.ndarray, degrees: float) -> np.ndarray:
    t = math.radians(degrees)
    return np.array(
        [g[0] * math.cos(t) + g[1] * math.sin(t), -g[0] * math.sin(t) + g[1] * math.cos(t)]
    )


def _collinear(a: np.ndarray, b: np.ndarray) -> bool:
    cross = abs(a[0] * b[1] - a[1] * b[0])
    return cross <= 0.2 * np.linalg.norm(a) * np.linalg.norm(b)


def _harmonic_support(spectra, g1, g2) -> float:
    """Tail probability of the mean ratio at ``g1 + g2`` and ``g1 - g2`` under noise (1 if
    neither is inside a spectrum)."""
    values, dofs, bg_dofs = [], [], []
    for h in (g1 + g2, g1 - g2):
        found = _lookup(spectra, _spectrum_for(spectra, h), h, reach=1)
        if found is not None:
            values.append(found[0])
            dofs.append(found[1])
            bg_dofs.append(found[2])
    if not values:
        return 1.0
    # the max over 3×3 bins: Bonferroni factor 9 on each
    return float(min(1.0, 9 * _f_tail(np.mean(values), sum(dofs), min(bg_dofs))))


def _second_reflection(spectra, peaks, first: _Peak, budget: float) -> _Peak | None:
    """A reflection not collinear with ``first``, accepted at a lattice-consistent position.

    Two routes, each at false-alarm probability ``budget / 2`` given that ``first`` is real:
    the positions where square and hexagonal lattices put their second reflection
    (``first`` rotated by 60°, 90° and 120°, ±1 bin: 27 bins), and any local maximum whose
    power together with that at ``first ± it`` (the lattice's combination reflections) stands
    out — their mean ratio has three times the degrees of freedom of one bin, so a weaker
    reflection suffices when the lattice's harmonics support it.
    """
    g1 = first.g
    index = _spectrum_for(spectra, g1)
    best = None
    for degrees in (60.0, 90.0, 120.0):
        g = _rotate(g1, degrees)
        found = _lookup(spectra, index, g, reach=1)
        if found is None:
            continue
        probability = 9 * 3 * float(_f_tail(found[0], found[1], found[2]))
        if probability <= budget / 2 and (best is None or probability < best.probability):
            best = _Peak(g, found[0], probability, index)
    searched = sum(int(s.search.sum()) for s in spectra)
    for peak in peaks:
        if _collinear(peak.g, g1):
            continue
        values, dofs, bg_dofs = [peak.ratio], [spectra[peak.spectrum].dof], []
        bg_dofs.append(_lookup(spectra, peak.spectrum, peak.g)[2])
        for h in (g1 + peak.g, g1 - peak.g):
            found = _lookup(spectra, _spectrum_for(spectra, h), h)
            if found is not None:
                values.append(found[0])
                dofs.append(found[1])
                bg_dofs.append(found[2])
        combined = float(_f_tail(np.mean(values), sum(dofs), min(bg_dofs)))
        probability = 2 * searched * min(peak.probability, combined)
        if probability <= budget / 2 and (best is None or probability < best.probability):
            best = _Peak(peak.g, peak.ratio, probability, peak.spectrum)
    return best


def _lattice_from_spectra(
    spectra: list[_Spectrum],
    tapered: list[np.ndarray],
    whitened: list[np.ndarray],
    prior: tuple[float, ...] = (),
    lo: float = MIN_SPACING_PX,
) -> LatticeEstimate:
    searched = sum(int(spectrum.search.sum()) for spectrum in spectra)
    if searched == 0:
        raise ValueError(
            "the image is too small for the spacings searched: no spatial frequency to look at; "
            "give a larger field of view."
        )
    peaks = _candidates(spectra)
    # per-bin tail probability allowed: FALSE_ALARM over all searched bins, or, with a prior,
    # half of it over the bins near the expected spacings and half over all
    limits = {id(p): FALSE_ALARM / searched for p in peaks}
    if prior:
        masks = _prior_mask(spectra, prior)
        near = sum(int(m.sum()) for m in masks)
        for p in peaks:
            inside = near and masks[p.spectrum][spectra[p.spectrum].bin_of(p.g)]
            limits[id(p)] = FALSE_ALARM / (2 * near) if inside else FALSE_ALARM / (2 * searched)
    significant = [p for p in peaks if p.probability <= limits[id(p)]]
    if not significant:
        best = peaks[0] if peaks else None
        if best is None:
            detail = "no spatial frequency to search"
        else:
            spectrum = spectra[best.spectrum]
            where = spectrum.bin_of(best.g)
            needed = _f_threshold(limits[id(best)], spectrum.dof, spectrum.bg_dof[where])
            detail = (
                f"best peak {best.ratio:.1f}× the noise background at its frequency, "
                f"{needed:.1f}× needed for a {FALSE_ALARM:.0%} false-alarm rate"
            )
        raise ValueError(
            f"no lattice reflection stands out in the image's Fourier transform ({detail}): "
            "vacuum, amorphous or too noisy. stem_ae denoises crystalline lattice images only."
        )
    # the strongest (not the most significant) are refined: coherent power scales as side**4
    significant.sort(key=lambda p: -_amplitude_at(spectra[p.spectrum], p.g))
    reflections = [_refine(p, spectra, tapered) for p in significant[:_REFINED_PEAKS]]
    reflections.sort(key=lambda p: -p.power)
    side = tapered[0].shape[0]
    kept: list[_Peak] = []  # refined candidates that converged onto a stronger one are dropped
    for peak in reflections:
        if peak.power < 1e-4 * reflections[0].power:
            continue
        if all(np.abs(peak.g - other.g).max() * side > 1.0 for other in kept):
            kept.append(peak)
    first = kept[0]
    # a partner weaker than 1e-3 in power is a taper sidelobe (Hann: -31 dB) or not a lattice
    partners = [
        p for p in kept[1:] if not _collinear(p.g, first.g) and p.power >= 1e-3 * first.power
    ]
    if not partners:
        second = _second_reflection(spectra, peaks, first, FALSE_ALARM)
        if second is None:
            raise ValueError(_ONE_FAMILY)
        second = _refine(second, spectra, tapered)
        if second.power < 1e-3 * first.power:
            raise ValueError(_ONE_FAMILY)
        kept.append(second)
        partners = [second]
    second = partners[0]
    if _on_axis(first.g, side) and all(_on_axis(p.g, side) for p in partners):
        support = min(_harmonic_support(spectra, first.g, p.g) for p in partners)
        if support > FALSE_ALARM and not any(_square_pair(first.g, p.g) for p in partners):
            raise ValueError(
                "the only periodicities in the image lie on the scan axes (k_x = 0 or k_y = 0: "
                "scan-line or flyback artefacts) and no combination reflection supports a 2-D "
                "lattice; stem_ae needs an atomic-column lattice."
            )
    return _assemble(kept, first, second, side, whitened, lo, spectra)


def _assemble(
    kept: list[_Peak],
    first: _Peak,
    second: _Peak,
    side: int,
    whitened: list[np.ndarray],
    lo: float,
    spectra: list[_Spectrum],
) -> LatticeEstimate:
    """Primitive basis from two reflections, refined by least squares over all it indexes.

    The dominant reflection is then the strongest, in power refined on the whole crop, of the
    lattice's reflections ``h*g1 + k*g2`` with ``|h|, |k| <= 2`` and spacings of at least
    ``lo`` px, detected or not (the threshold sees power over its local background, which
    near the origin is higher), measured on the prewhitened tapered crops ``whitened`` (no
    leakage of thickness or particle contrast) with the filter's gain divided out.
    """
    g = np.stack([p.g for p in kept])
    strong = np.array([p.power >= 1e-3 * kept[0].power for p in kept])
    strong[[k for k, p in enumerate(kept) if p is first or p is second]] = True
    g_strong = g[strong]
    norms = np.linalg.norm(g_strong, axis=1)
    shortest = int(np.argmin(norms))
    others = [k for k in range(len(g_strong)) if not _collinear(g_strong[k], g_strong[shortest])]
    if others:
        pair = (g_strong[shortest], g_strong[min(others, key=lambda k: norms[k])])
    else:
        pair = (first.g, second.g)
    basis = _reduce(np.stack(pair))
    hk = g @ np.linalg.inv(basis)
    integral = np.rint(hk)
    residual = np.abs(g - integral @ basis).max(axis=1) * side  # frequency bins
    good = (residual < 0.3) & (np.abs(integral).max(axis=1) <= 6)
    if good.sum() >= 2 and np.linalg.matrix_rank(integral[good]) == 2:
        basis = np.linalg.lstsq(integral[good], g[good], rcond=None)[0]
    basis = _finer_basis(basis, spectra, lo)
    orders = [(h, k) for h in range(3) for k in range(-2, 3) if h > 0 or k > 0]
    predicted = [h * basis[0] + k * basis[1] for h, k in orders]
    predicted = [q for q in predicted if lo <= 1 / np.linalg.norm(q) <= side / _MIN_RADIUS]
    if predicted:
        powers = [_whitened_power(whitened, q) for q in predicted]
        ranked = [predicted[k] for k in np.argsort(powers)[::-1]]
        dominant_g = ranked[0]
        second_g = next((q for q in ranked if not _collinear(q, dominant_g)), basis[1])
        low = [_fold(q, predicted, powers) for q in (dominant_g, second_g)]
    else:
        dominant_g = np.rint(hk[0]) @ basis if good[0] else g[0]
        j = next((k for k in range(len(g)) if not _collinear(g[k], g[0])), 0)
        second_g = np.rint(hk[j]) @ basis if good[j] else g[j]
        low = [dominant_g, second_g]
    if np.linalg.norm(basis[0]) > np.linalg.norm(basis[1]):
        basis = basis[::-1]
    norms = np.linalg.norm(basis, axis=1)
    return LatticeEstimate(
        reciprocal=basis,
        spacings=(float(1 / norms[0]), float(1 / norms[1])),
        angles=(_angle(basis[0]), _angle(basis[1])),
        dominant_spacing=float(1 / np.linalg.norm(dominant_g)),
        dominant_angle=_angle(dominant_g),
        second_spacing=float(1 / np.linalg.norm(second_g)),
        quality=float(kept[0].ratio),
        low_order_spacings=(float(1 / np.linalg.norm(low[0])), float(1 / np.linalg.norm(low[1]))),
    )


def _fold(g: np.ndarray, predicted: list[np.ndarray], powers: list[float]) -> np.ndarray:
    """Fold ``g`` onto lower orders while it is ``±p ± q`` of two shorter reflections among
    ``predicted`` (powers ``powers``) that each hold :data:`FOLD_FRACTION` of its power; each
    fold takes the stronger of the pair (see :attr:`LatticeEstimate.low_order_spacings`)."""
    vectors = np.asarray(predicted, float)
    power = np.asarray(powers, float)
    norms = np.linalg.norm(vectors, axis=1)
    for _ in range(len(predicted)):
        k = int(np.argmin(np.abs(vectors - g).sum(axis=1)))
        tolerance = 1e-6 * norms[k]
        if np.abs(vectors[k] - g).max() > tolerance:  # not a predicted reflection: kept
            return g
        shorter = np.flatnonzero(
            (norms < norms[k] * (1 - 1e-6)) & (power >= FOLD_FRACTION * power[k])
        )
        best = None
        for i in shorter:
            for j in shorter:
                for sign in (1.0, -1.0):
                    combined = vectors[i] + sign * vectors[j]
                    if min(np.abs(combined - g).max(), np.abs(combined + g).max()) > tolerance:
                        continue
                    stronger = i if power[i] >= power[j] else j
                    if best is None or min(power[i], power[j]) > best[0]:
                        best = (min(power[i], power[j]), stronger)
        if best is None:
            return g
        g = vectors[best[1]]
    return g


def _whitened_power(whitened: list[np.ndarray], g: np.ndarray) -> float:
    """Refined power at ``g`` (±1 bin) of the prewhitened crops, the filter's gain divided out:
    free of the leakage of thickness or particle contrast, comparable across frequencies."""
    refined, power = _refine_peak(whitened, g, 1.0 / whitened[0].shape[0], points=9)
    return power / _gain(refined)


def _finer_basis(basis: np.ndarray, spectra: list[_Spectrum], lo: float) -> np.ndarray:
    """The basis of a finer reciprocal lattice (a larger real cell) when its new reflections
    stand out: the points ``(i*g1 + j*g2)/m`` of the lattices of index ``m`` = 2 and 3 (twice).
    One counts when it passes :data:`FALSE_ALARM` over these 11 points (±1 bin). A basis built
    from the strongest detected reflections misses a cell whose first-order reflections are
    weaker or sit near the origin, where the background (and the threshold) is highest.
    """
    # the points of the finer lattices of index 2 and 3: (i g1 + j g2) / m, fractional (i, j)
    points = [(2, i, j) for i in range(2) for j in range(2) if i or j]
    for _ in range(2):
        shortest = min(np.linalg.norm(basis[0]), np.linalg.norm(basis[1]))
        best = None
        for m, i, j in points:
            q = (i * basis[0] + j * basis[1]) / m
            # a cell at most ~twice as large each way (not the difference of two grains' peaks)
            if 1 / np.linalg.norm(q) < lo or np.linalg.norm(q) < 0.55 * shortest:
                continue
            found = _lookup(spectra, _spectrum_for(spectra, q), q, reach=1)
            if found is None:
                continue
            probability = 9 * len(points) * float(_f_tail(*found))
            if probability <= FALSE_ALARM and (best is None or probability < best[0]):
                best = (probability, m, i, j)
        if best is None:
            break
        _, m, i, j = best
        if i:  # the finer lattice Z² + Z(i, j)/m has the basis (1, c)/m, (0, 1): c = j/i mod m
            c = (j * pow(i, -1, m)) % m
            basis = _reduce(np.stack([(basis[0] + c * basis[1]) / m, basis[1]]))
        else:
            basis = _reduce(np.stack([basis[0], basis[1] / m]))
    return basis


def _reduce(basis: np.ndarray) -> np.ndarray:
    """Lagrange–Gauss reduction of a 2-D basis (rows): shortest, nearly orthogonal pair."""
    a, b = basis.astype(np.float64)
    for _ in range(64):
        if a @ a > b @ b:
            a, b = b, a
        k = np.rint((a @ b) / (a @ a))
        if k == 0:
            break
        b = b - k * a
    return np.stack([a, b])


# ---------------------------------------------------------------------------------------------
# the radial route


def _radial_spacing(power: np.ndarray, dof: float, lo: float, hi: float) -> float:
    """Spacing (px) of the strongest significant peak of the azimuthal mean of ``power``.

    Each ring's mean power (scan axes left out) is compared with a baseline: the mean of the
    medians of the ring means on either side, from 8 % to 30 % of its radius away (at least
    3 to 6 rings), so that a smooth, steep background does not count while the broad peak of
    small particles does. The ratio of a ring of ``m`` noise bins is F-distributed with
    ``dof·m/7.6`` degrees of freedom (Hann-correlated, ±k-symmetric bins) and must pass
    :data:`FALSE_ALARM` with Bonferroni over the rings of ``[lo, hi]`` px. Among the local
    maxima that pass, the one holding the most excess power wins; a parabola through the ring
    means gives its sub-ring radius. NaN when none passes.
    """
    n = power.shape[0]
    _, _, radius, axis = _geometry(n)
    ring = np.rint(radius).astype(int)
    size = n // 2
    inside = ~axis & (ring < size)
    sums = np.bincount(ring[inside], power[inside], minlength=size)[:size]
    counts = np.bincount(ring[inside], minlength=size)[:size].astype(float)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    rings = np.arange(size)
    first = max(math.ceil(max(_SEARCH_RADIUS, n / hi)), 3)
    last = min(int(n / lo), size - 4)
    if last < first:
        return math.nan
    candidates = []
    for r in range(first, last + 1):
        reach, gap = max(6, round(0.3 * r)), max(2, round(0.08 * r))
        distance = rings - r
        usable = (
            (counts > 0) & (rings >= 1) & (np.abs(distance) > gap) & (np.abs(distance) <= reach)
        )
        sides = [means[usable & (distance < 0)], means[usable & (distance > 0)]]
        sides = [side for side in sides if side.size >= 2]
        if not sides or not np.isfinite(means[r]):
            continue
        baseline = float(np.mean([np.median(side) for side in sides]))
        near = usable
        if not baseline > 0:
            continue
        ring_dof = dof * counts[r] / _HANN_BINS
        base_dof = dof * counts[near].sum() / _HANN_BINS
        candidates.append((r, means[r] / baseline, ring_dof, base_dof, baseline))
    if not candidates:
        return math.nan
    limit = FALSE_ALARM / len(candidates)
    passing = [
        c
        for c in candidates
        if means[c[0]] >= means[c[0] - 1]
        and means[c[0]] >= means[c[0] + 1]
        and _f_tail(c[1], c[2], c[3]) <= limit
    ]
    if not passing:
        return math.nan
    r, _, _, _, baseline = max(passing, key=lambda c: (means[c[0]] - c[4]) * counts[c[0]])
    left, mid, right = np.log(means[r - 1 : r + 2])
    curvature = left - 2 * mid + right
    shift = float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5)) if curvature < 0 else 0.0
    return float(n / (r + shift))


# ---------------------------------------------------------------------------------------------
# public functions


def _search_range(pixel_size, lattice_constant, side: int) -> tuple[float, float, tuple]:
    """Spacing band ``(lo, hi)`` px and prior spacings (px) from the calibration, if any."""
    lo, hi = MIN_SPACING_PX, math.inf
    prior: tuple[float, ...] = ()
    if pixel_size is not None:
        if not (
            isinstance(pixel_size, (int, float, np.integer, np.floating))
            and not isinstance(pixel_size, bool)
            and math.isfinite(pixel_size)
            and pixel_size > 0
        ):
            raise ValueError(f"pixel_size={pixel_size!r} must be a positive number of Å/px.")
        lo = max(lo, PLANE_SPACING_RANGE[0] / pixel_size)
        hi = PLANE_SPACING_RANGE[1] / pixel_size
        if lattice_constant is not None:
            if not (
                isinstance(lattice_constant, (int, float, np.integer, np.floating))
                and math.isfinite(lattice_constant)
                and lattice_constant > 0
            ):
                raise ValueError(
                    f"lattice_constant={lattice_constant!r} must be a positive number of Å."
                )
            a = lattice_constant / pixel_size
            prior = tuple(a * f for f in (1.0, 1 / math.sqrt(2), 0.5, math.sqrt(3) / 2))
            prior = tuple(s for s in prior if lo <= s <= hi)
    elif lattice_constant is not None:
        raise ValueError(
            f"lattice_constant={lattice_constant!r} needs pixel_size (Å/px) to be a prior; "
            "pass both, or neither."
        )
    return lo, min(hi, side / _SEARCH_RADIUS), prior


def _frames(frames) -> list[np.ndarray]:
    if isinstance(frames, np.ndarray) and frames.ndim == 2:
        frames = [frames]
    frames = [as_image(frame, "frame") for frame in frames]
    if not frames:
        raise ValueError("no frames to measure a lattice on; give at least one image.")
    if min(min(frame.shape) for frame in frames) < WINDOW:
        raise ValueError(f"a frame of shape {frames[0].shape} is too small to measure a lattice.")
    if all(np.ptp(frame) == 0 for frame in frames):
        raise ValueError("the image is constant: there is no lattice to measure.")
    return frames


def _measure(frames, pixel_size, lattice_constant) -> LatticeEstimate:
    crops = [_clipped_crop(frame) for frame in frames]
    side = crops[0].shape[0]
    if any(crop.shape != (side, side) for crop in crops):
        raise ValueError("the frames differ in shape; give frames of one shape.")
    lo, hi, prior = _search_range(pixel_size, lattice_constant, side)
    spectra = _spectra(crops, lo, hi)
    tapered = [_tapered(crop) for crop in crops]
    whitened = [_tapered(_prewhiten(crop)) for crop in crops]
    lattice = _lattice_from_spectra(spectra, tapered, whitened, prior, lo)
    full = spectra[-1]
    radial = _radial_spacing(full.power, full.dof, lo, hi)
    return replace(lattice, radial_spacing=radial)


def estimate_lattice(
    image: np.ndarray,
    *,
    pixel_size: float | None = None,
    lattice_constant: float | None = None,
) -> LatticeEstimate:
    """Measure the 2-D lattice of an atomic-resolution image from its Fourier transform.

    The central square (at most :data:`LATTICE_CROP` px) is clipped to its 0.1–99.9 percentiles
    (hot pixels). Its power spectrum is averaged over half-overlapping Hann-tapered tiles
    (Welch: 128 px tiles for 256–511 px crops, 256 px above, the whole crop below 256 px), plus
    the whole crop's periodogram for spacings longer than an eighth of a tile. Each frequency bin is
    divided by the noise background at its frequency (its ring's median, lattice peaks left out;
    on the scan axes, the axis's own running median). Under noise that ratio follows an
    F law whose degrees of freedom are set by the number of averaged tiles and background bins,
    so the threshold is calibrated: an image of pure noise yields a reflection with probability
    :data:`FALSE_ALARM` (Bonferroni over the searched bins; measured in
    ``benchmarks/results/lattice.md``).

    The searched band holds the plane spacings an atomic lattice can have: at least
    :data:`MIN_SPACING_PX`; with ``pixel_size``, :data:`PLANE_SPACING_RANGE` Å. A 2-D lattice
    needs two non-collinear reflections: the second is accepted at a lower threshold where a
    lattice puts it (60°, 90°, 120° from the first at the same spacing) or when the
    combination reflections ``g1 ± g2`` support it. Reflections on the scan axes (``k_x = 0``
    or ``k_y = 0``, where scan streaks put their power) are tested against the axis's own
    background and, when both reflections lie there, count only with support from ``g1 ± g2``
    off the axes. Peak positions are refined to ~0.01 bin by a zoomed DFT of the whole crop;
    the two shortest non-collinear reflections are reduced to a primitive basis, refined by
    least squares over all reflections it indexes.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Any real dtype and intensity units; at least 28×28 px and a few lattice periods wide.
    pixel_size : float, optional
        Calibration, Å/px: the search is restricted to :data:`PLANE_SPACING_RANGE`.
    lattice_constant : float, optional
        Expected lattice parameter, Å (needs ``pixel_size``): spacings near ``a``, ``a/√2``,
        ``a/2`` and ``a·√3/2`` (±:data:`PRIOR_TOLERANCE`) are searched at a lower threshold.

    Returns
    -------
    LatticeEstimate

    Raises
    ------
    ValueError
        If the image is not a finite 2-D array, ``pixel_size``/``lattice_constant`` are not
        positive, or no 2-D lattice stands out (vacuum, amorphous, constant, fringes only, scan
        artefacts only).

    Examples
    --------
    >>> y, x = np.mgrid[:128, :128]
    >>> image = np.cos(2 * np.pi * x / 8.0) + np.cos(2 * np.pi * y / 12.0)
    >>> lattice = estimate_lattice(image)
    >>> [round(s, 2) for s in lattice.spacings]
    [12.0, 8.0]
    """
    image = as_image(image)
    if min(image.shape) < WINDOW:
        raise ValueError(f"image of shape {image.shape} is too small to measure a lattice.")
    if np.ptp(image) == 0:
        raise ValueError("the image is constant: there is no lattice to measure.")
    return _measure([image], pixel_size, lattice_constant)


def estimate_period(image: np.ndarray) -> tuple[float, float]:
    """Measure the dominant lattice spacing of an atomic-resolution image.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Any real dtype and intensity units.

    Returns
    -------
    period : float
        Spacing of the strongest lattice reflection, px.
    angle : float
        Its direction (the plane normal), degrees counter-clockwise from +x, in [0, 180).

    Raises
    ------
    ValueError
        If no lattice reflection stands out of the noise (vacuum, amorphous).

    Examples
    --------
    >>> y, x = np.mgrid[:128, :128]
    >>> image = np.cos(2 * np.pi * x / 10.0) + 0.5 * np.cos(2 * np.pi * y / 10.0)
    >>> period, angle = estimate_period(image)
    >>> round(period, 2), round(angle, 1)
    (10.0, 0.0)
    """
    lattice = estimate_lattice(image)
    return lattice.dominant_spacing, lattice.dominant_angle


def measure_lattice(
    frames,
    *,
    pixel_size: float | None = None,
    lattice_constant: float | None = None,
) -> LatticeEstimate:
    """Measure the lattice of an image or a series from the frames' pooled power spectra.

    Each frame's central square (at most :data:`LATTICE_CROP` px) is treated as in
    :func:`estimate_lattice`; the tiles' power spectra of all frames are averaged (the noise
    averages out, the lattice reflections add up, and the threshold falls with the degrees of
    freedom) and the reflections refined on all frames together. This is the measurement
    :func:`stem_ae.denoise` plans with and ``stem-ae info`` reports.

    Parameters
    ----------
    frames : ndarray, shape (H, W) or (frames, H, W), or a sequence of (H, W) arrays
        Any real dtype and intensity units (the caller normalises, if it wants to); frames of
        one shape.
    pixel_size, lattice_constant : float, optional
        Calibration (Å/px) and expected lattice parameter (Å), as for :func:`estimate_lattice`.

    Returns
    -------
    LatticeEstimate

    Raises
    ------
    ValueError
        As :func:`estimate_lattice`.

    Examples
    --------
    >>> y, x = np.mgrid[:96, :96]
    >>> rng = np.random.default_rng(0)
    >>> series = [np.cos(2 * np.pi * x / 8.0) + np.cos(2 * np.pi * y / 8.0)
    ...           + rng.normal(0, 2.0, x.shape) for _ in range(4)]
    >>> round(measure_lattice(series).dominant_spacing, 1)
    8.0
    """
    return _measure(_frames(frames), pixel_size, lattice_constant)


def measure_lattice_or_spacing(frames, *, pixel_size: float | None = None) -> LatticeEstimate:
    """:func:`measure_lattice`, or, with a calibration, the radial spacing when that fails.

    Several grains or particles at different orientations show no single 2-D lattice, but the
    radial power profile still gives the spacing's size (:func:`estimate_spacing`), which is all
    a sampling match needs. Without ``pixel_size`` nothing bounds that search to spacings a
    lattice of atom columns can have, so the failure stands. What ``denoise`` and ``stem-ae``
    measure.

    Returns
    -------
    LatticeEstimate
        The lattice, or :meth:`LatticeEstimate.from_spacing` (``radial_only``).

    Raises
    ------
    ValueError
        As :func:`measure_lattice`, when no spacing stands out either.
    """
    try:
        return measure_lattice(frames, pixel_size=pixel_size)
    except ValueError:
        if pixel_size is None:
            raise
    return LatticeEstimate.from_spacing(estimate_spacing(frames, pixel_size=pixel_size))


def estimate_spacing(
    image,
    *,
    pixel_size: float | None = None,
    lattice_constant: float | None = None,
) -> float:
    """The lattice spacing (px) to match the model's sampling to, even without one 2-D lattice.

    The dominant spacing of :func:`measure_lattice` when a 2-D lattice stands out; otherwise
    (several grains or particles at different orientations, fringes of one family) the spacing
    of the strongest peak of the azimuthally averaged power spectrum over its smooth
    background (``LatticeEstimate.radial_spacing``), which has the size of the lattice
    spacing whatever the orientations.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (frames, H, W), or a sequence of (H, W) arrays
        Any real dtype and intensity units.
    pixel_size, lattice_constant : float, optional
        As for :func:`estimate_lattice`.

    Returns
    -------
    float
        Plane spacing, px.

    Raises
    ------
    ValueError
        If neither a 2-D lattice nor a ring of the radial profile stands out of the noise.

    Examples
    --------
    >>> y, x = np.mgrid[:128, :128]
    >>> left = np.cos(2 * np.pi * x / 9.0) + np.cos(2 * np.pi * y / 9.0)
    >>> t = np.radians(30)
    >>> u, v = x * np.cos(t) + y * np.sin(t), -x * np.sin(t) + y * np.cos(t)
    >>> right = np.cos(2 * np.pi * u / 9.0) + np.cos(2 * np.pi * v / 9.0)
    >>> round(estimate_spacing(np.where(x < 64, left, right)), 1)
    9.0
    """
    frames = _frames(image if not isinstance(image, np.ndarray) or image.ndim != 2 else [image])
    try:
        return _measure(frames, pixel_size, lattice_constant).dominant_spacing
    except ValueError as error:
        crops = [_clipped_crop(frame) for frame in frames]
        side = crops[0].shape[0]
        lo, hi, _ = _search_range(pixel_size, lattice_constant, side)
        full = _dewhiten(_welch([_prewhiten(crop) for crop in crops], side - 2))
        spacing = _radial_spacing(full.power, full.dof, lo, hi)
        if math.isnan(spacing):
            raise ValueError(
                f"{error} Nor does a ring of the azimuthally averaged power spectrum stand out."
            ) from None
        return spacing


class CalibrationWarning(UserWarning):
    """The pixel size given by the user disagrees with the lattice measured in the image."""


def check_calibration(
    lattice: LatticeEstimate, pixel_size: float, lattice_constant: float | None
) -> None:
    if not (isinstance(pixel_size, (int, float, np.floating)) and pixel_size > 0):
        raise ValueError(f"pixel_size={pixel_size!r} must be a positive number of Å/px.")
    if lattice_constant is None:
        return
    measured = [s * pixel_size for s in lattice.spacings]
    # When the two column types of a perovskite look alike (low dose, similar Z), the measured
    # primitive cell is the centred one, a/√2 on a side: that agrees with the calibration too.
    expected = (lattice_constant, lattice_constant / math.sqrt(2))
    if any(abs(m / e - 1) <= 0.10 for m in measured for e in expected):
        return
    implied = lattice_constant / lattice.spacings[0]
    warnings.warn(
        f"pixel_size={pixel_size:g} Å/px makes the measured lattice spacings "
        f"{measured[0]:.3f} and {measured[1]:.3f} Å, more than 10 % from lattice_constant="
        f"{lattice_constant:g} Å (that would need {implied:.4f} Å/px). The calibration is "
        "ignored: the sampling match uses the lattice measured in px. Pass the right "
        "lattice_constant (or None) for other crystals.",
        CalibrationWarning,
        stacklevel=3,
    )
