"""Data-consistent residual correction of an auto-encoder output, its bandwidth chosen by SURE.

A dense auto-encoder has an error floor: it returns a plausible lattice, not exactly the measured
one (on simulated scenes its output saturates near 25 dB PSNR whatever the dose), and it can fill
a vacancy with a column it has seen a thousand times. The measured data still hold what the
network missed. This step adds back a low-passed copy of the residual,

    x̂ = a + G_s * (y − a),

where ``y`` is the noisy image, ``a`` the auto-encoder output and ``G_s`` a Gaussian of standard
deviation ``s`` px. ``s = 0`` keeps the auto-encoder output as it is; a small ``s`` returns nearly
the data. ``s`` is chosen per image by Stein's unbiased risk estimate (SURE), treating ``a`` as
fixed::

    SURE(s) = mean((G_s * r − r)²) − v + 2 v g_s(0),   r = y − a,

with ``g_s(0)`` the centre tap of the Gaussian kernel and ``v`` the mean noise variance, measured
from the residual's fourth-order differences (:func:`noise_variance`: the auto-encoder's own
error is smooth at that scale, the noise is white; a mean, not a median, so that Poisson noise's
bright pixels count). Where the network invented a column that the data do not show, the
correction removes most of it: on simulated RP-fault scenes at 0.3 Å/px it cut the invented
columns from 37 to 10 (of 413) and raised PSNR from 25 to 31 dB at 16 counts/px.

SURE assumes white noise; scan-line offsets (streaks) are correlated along a row, so
:func:`stem_ae.denoise` never lets the bandwidth drop below a fraction of the lattice
spacing. (Removing the streaks from the residual first was tried and rejected: on lattices whose
rows run along the scan it also removed real structure.) :func:`spectrum_whiteness` tells white
noise from correlated noise on the residual's spectrum: only under white noise, where SURE's risk
is unbiased, does :func:`stem_ae.denoise` let SURE decide alone.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from scipy import ndimage as ndi

from stem_ae._filters import TRUNCATE as _TRUNCATE
from stem_ae._filters import gaussian_filter, gaussian_taps, lowpass_errors, power_spectra

RESIDUAL_SIGMAS = (0.0, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
"""Candidate bandwidths (px of the input image) for the residual low-pass; 0 means none."""

CONSISTENCY_WIDTH = 0.2
"""Width of the column-scale consistency test, as a fraction of the dominant lattice spacing."""

CONSISTENCY_THRESHOLD = 2.0
"""Significance (in noise standard deviations) above which the residual is put back locally."""

CONSISTENCY_SURROUND = 2.0
"""Width of the surround that :func:`remove_unsupported` subtracts from its column-scale average,
as a multiple of that average's width: the test sees a column-sized bump, not a smooth offset."""

UNSUPPORTED_MIN_LOWPASS = 0.8
"""What ``denoise`` passes as :func:`remove_unsupported`'s ``min_lowpass`` (px) for a dense
network. The data go back into a flagged spot low-passed by half the test's width (0.1 × the
spacing); at a coarse sampling (spacings under 8 px) that leaves the pixel noise, and a noise
spike in an otherwise smooth output is found as a column: on the coarse scenes of
``benchmarks/coarse.py`` (0.6 Å/px, a 4.6 px spacing) the dense ``general`` left 23 % and 32 %
of the vacancies filled at 16 and 4 counts/px; with the data low-passed by 0.8 px there, 0.8 %
and 8 % (1.0 px: 0.8 % and 6 %). The convolutional network paints no vacancy (0–2 % filled
either way) and lost up to 1.4 dB to it (its flagged spots are the test's false alarms, where
the smoothed data are worse than its output), so it keeps 0."""


PEAK_THRESHOLD = 2.5
"""What ``denoise`` passes as :func:`remove_unsupported`'s ``peak_threshold`` (noise standard
deviations) where it passes ``min_lowpass`` too: a dense network at a coarse sampling (spacings
under 8 px). There a column painted into a vacancy at 1 count/px stands only about 3σ above the
data in the test (medians 2.9–3.2 over the 0.6 Å/px scenes of ``benchmarks/coarse.py``), so the
4σ bar of the whole image left 69 % of the vacancies filled at 0.6 Å/px and 44 % at 0.5 Å/px;
2.5σ at the network's own columns (where the data show too little of the column drawn,
:data:`PEAK_SHOWN`) leaves 21 % and 2.4 % (6 % and 1.9 % with ``lattice_vectors``,
:data:`PEAK_TYPICAL`), at a cost of at most 0.1 dB and 0.23 pm there. 2σ
left 10 % and 1.2 %, but moved the real REBCO image's columns (lattice-fit RMS 0.2714 → 0.2809
px; 2.5σ: 0.2713). An ideal observer that knows every column's shape and place tells a vacancy
from a column at d' ≈ 4.9 there (5.8 at 0.5 Å/px), and at 99 % of the columns found would still
leave 3 % of the vacancies at 0.6 Å/px filled (``benchmarks/experiments/ideal_vacancy.py``)."""


PEAK_SHOWN = 0.15
"""The lower bar of ``peak_threshold`` holds only where the data show less than this fraction of
the column the estimate drew (both as the test's column-sized average minus its surround). A
painted vacancy shows none; a real column that noise pushed past the bar, or a clean image whose
noise estimate is a rounding error, shows most of it and is left alone (without this condition
the bar's false alarms cost up to 0.09 dB and 0.12 pm on ``benchmarks/coarse.py`` at 3σ, and
blurred the columns of a clean image: 1 % of the level)."""


PEAK_TYPICAL = 0.15
"""With ``lattice_vectors``, :func:`remove_unsupported` also flags a column of the estimate where
the data show less than this fraction of the column it draws one lattice vector away. At 1
count/px the dense network paints faint columns into vacancies (the drawn column itself under 3σ),
so the data's dip below the drawn column is small; below the same site's column in the next
cells it is a whole column. ``benchmarks/coarse.py`` at 0.6 Å/px, 1 count/px: vacancies filled
21 → 6 %, invented 1.2 → 0.6 % (the target met in 9 of 9 cases), found 99.8 → 99.5 %. At 0.3
the vacancies went to 4.5 %, but 1.2–1.5 % of the columns of a scene without vacancies were lost
(noise makes a real column show under 30 % of its neighbours there); at 0.15, 0.2 %. The bar
(2.5–3.5σ) hardly matters, this fraction does."""


def _column_reach(spacing: float) -> int:
    """Odd side (px) of a column's reach, 0.6 × the spacing: the window of its local maximum."""
    return max(3, round(0.6 * spacing) | 1)


def _weaker_than_translates(peaks, drawn, shown, vectors, bar):
    """The ``peaks`` whose data average (``shown``) is below :data:`PEAK_TYPICAL` of the column
    drawn (``drawn``) at their lattice translates, and below it by more than ``bar``."""
    local = ndi.maximum_filter(drawn, size=3, mode="nearest")  # strain: within 1 px
    steps = [np.rint(sign * np.asarray(v, float)).astype(int) for v in vectors for sign in (1, -1)]
    pad = int(np.abs(steps).max())
    padded = np.pad(local, pad, mode="edge")  # beyond the border: the edge's values
    h, w = local.shape
    typical = np.median(
        [padded[pad + dy : pad + dy + h, pad + dx : pad + dx + w] for dy, dx in steps], axis=0
    )
    return peaks & (typical - shown > bar) & (shown < PEAK_TYPICAL * typical)


@cache
def _centre_tap(sigma: float) -> float:
    """Centre value of the 2-D Gaussian kernel that ``ndimage.gaussian_filter`` applies."""
    if sigma == 0:
        return 0.0
    taps = gaussian_taps(sigma)
    return float(taps[len(taps) // 2] ** 2)


_DIFFERENCE = np.array([1.0, -4.0, 6.0, -4.0, 1.0])
"""Fourth-order finite difference; its outer product with itself annihilates any signal that is
a cubic polynomial along rows or along columns."""


@cache
def _kernel_energy(sigma: float) -> float:
    """Sum of squares of the 2-D Gaussian kernel that ``ndimage.gaussian_filter`` applies."""
    return float(np.sum(gaussian_taps(sigma) ** 2) ** 2)


@cache
def _surround_energy(width: float, surround: float) -> float:
    """Sum of squares of the 2-D kernel ``G_width − G_(surround·width)`` (ndimage's Gaussians).

    The kernel is a difference of two separable ones, so its energy is
    ``(Σa²)² + (Σb²)² − 2 (Σab)²`` with ``a``, ``b`` the 1-D taps on a common support.
    """
    outer = gaussian_taps(surround * width)
    inner = gaussian_taps(width, radius=len(outer) // 2)
    return float(np.sum(inner**2) ** 2 + np.sum(outer**2) ** 2 - 2 * np.sum(inner * outer) ** 2)


def noise_variance(residual: np.ndarray) -> float:
    """Mean noise variance of a residual from its fourth-order differences, in its units².

    The residual is filtered with the separable 5×5 kernel ``d ⊗ d``, ``d = (1, -4, 6, -4, 1)``
    (interior pixels only), and the mean square is divided by the kernel's energy ``Σ(d⊗d)² =
    4900``: exact for white noise of any distribution (Poisson's mean variance included), and
    nearly blind to what the auto-encoder got wrong, which is smooth at that scale. (The 2×2
    diagonal Haar detail used before saw the network's error at fine lattice spacings as noise:
    up to 4.5× the true variance at 0.3 Å/px and 100 counts/px, which made SURE over-smooth.)

    Parameters
    ----------
    residual : ndarray, shape (H, W)
        Noisy image minus an estimate of it (H, W ≥ 5).

    Returns
    -------
    float
        Estimated mean per-pixel noise variance.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> v = noise_variance(rng.normal(0, 2.0, (256, 256)))  # true variance 4
    >>> bool(abs(v - 4.0) < 0.2)
    True
    """
    r = np.asarray(residual, dtype=np.float64)
    size = len(_DIFFERENCE)
    if r.ndim != 2 or min(r.shape) < size:
        raise ValueError(f"residual of shape {r.shape} is too small; give at least 5×5 px")
    detail = ndi.correlate1d(r, _DIFFERENCE, axis=0, mode="reflect")
    ndi.correlate1d(detail, _DIFFERENCE, axis=1, mode="reflect", output=detail)
    margin = size // 2
    interior = detail[margin:-margin, margin:-margin]
    if interior.size == 0:
        raise ValueError(f"residual of shape {r.shape} is too small; give at least 5×5 px")
    return float(np.mean(interior**2) / np.sum(_DIFFERENCE**2) ** 2)


NOISE_TILE = 128
"""Side (px) of the Welch tiles of :func:`noise_spectrum` (half-overlapping, Hann-tapered)."""

_PEAK_RADIUS = 2.5  # frequency bins masked around each lattice reflection (Hann main lobe: 2)
_MAX_TILES = 64  # Welch tiles used at most (1024² px: 0.3 s)
_FILL_RADIUS = 5  # masked bins take the median of the unmasked bins within this many bins


def noise_spectrum(
    residual: np.ndarray,
    reciprocal: np.ndarray | None = None,
    tile: int = NOISE_TILE,
    *,
    where: np.ndarray | None = None,
) -> np.ndarray:
    """Power spectrum of the noise in a residual, valid for correlated noise (Welch).

    The residual ``y − a`` of a good estimate ``a`` is the noise plus what the estimate got wrong.
    That error is mostly periodic (the same column shape missed in every cell), so it sits on
    the lattice reflections; the noise of a real scan is correlated (scan-line streaks,
    interpolation of drift-corrected frames, detector afterglow) and is spread over frequencies
    in ways no single variance describes. The spectrum is averaged over half-overlapping
    Hann-tapered tiles (Welch), the bins around every reflection ``h g1 + k g2`` and around zero
    frequency are masked, and each masked bin takes the median of the unmasked bins around it.

    Parameters
    ----------
    residual : ndarray, shape (H, W)
        Noisy image minus an estimate of it.
    reciprocal : ndarray, shape (2, 2), optional
        Reciprocal lattice basis (rows ``g1, g2``, ``(y, x)`` in 1/px) whose reflections are
        masked; None masks only zero frequency.
    tile : int
        Welch tile side, px (smaller images use one tile of their own size).
    where : ndarray of bool, shape (H, W), optional
        Use only the tiles whose centre pixel is True (e.g. the crystalline part, where the
        estimate is good); all tiles when none is.

    Returns
    -------
    ndarray, shape (T, T)
        Noise power per frequency bin (unshifted FFT order), normalised so that its mean is the
        per-pixel noise variance: white noise of variance ``v`` gives ``v`` everywhere.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> white = noise_spectrum(rng.normal(0, 2.0, (256, 256)))
    >>> bool(abs(white.mean() - 4.0) < 0.2)
    True
    """
    r = np.asarray(residual, dtype=np.float64)
    if r.ndim != 2 or min(r.shape) < 16:
        raise ValueError(f"residual of shape {r.shape} is too small; give at least 16×16 px")
    side = int(min(tile, *r.shape))
    taper = np.hanning(side + 2)[1:-1]
    window = np.outer(taper, taper)
    hop = max(1, side // 2)
    starts = [
        (i, j)
        for i in range(0, r.shape[0] - side + 1, hop)
        for j in range(0, r.shape[1] - side + 1, hop)
    ]
    if where is not None:
        chosen = [(i, j) for i, j in starts if where[i + side // 2, j + side // 2]]
        starts = chosen or starts
    starts = starts[:: max(1, len(starts) // _MAX_TILES)]  # evenly thinned: bounded time
    blocks = np.stack([r[i : i + side, j : j + side] for i, j in starts])
    blocks -= blocks.mean(axis=(1, 2), keepdims=True)
    blocks *= window
    power = power_spectra(blocks).sum(axis=0)
    power /= len(starts) * np.sum(window**2)
    mask = _reflection_mask(side, reciprocal)
    return _fill_masked(power, mask)


def _reflection_mask(side: int, reciprocal: np.ndarray | None) -> np.ndarray:
    """Bins (side × side, FFT order) within ``_PEAK_RADIUS`` of zero or of a reflection."""
    k = np.fft.fftfreq(side) * side  # bin coordinates, signed
    centres = np.zeros((1, 2))
    if reciprocal is not None:
        g = np.asarray(reciprocal, np.float64) * side  # reflections in bins
        extent = int(np.ceil(0.75 * side / max(np.linalg.norm(g, axis=1).min(), 1e-9))) + 1
        extent = min(extent, 64)
        h, l_ = (a.ravel() for a in np.mgrid[-extent : extent + 1, -extent : extent + 1])
        found = h[:, None] * g[0] + l_[:, None] * g[1]
        keep = ((h != 0) | (l_ != 0)) & np.all(np.abs(found) <= side / 2 + _PEAK_RADIUS, axis=1)
        centres = np.concatenate([centres, found[keep]])
    # each centre marks the bins of a small box around it that lie within the radius
    # (periodic distance in bins, as on the whole grid)
    span = int(np.ceil(_PEAK_RADIUS)) + 1
    offsets = np.arange(-span, span + 1)
    base = np.floor(centres).astype(int)
    rows = (base[:, :1] + offsets) % side  # (centres, box)
    cols = (base[:, 1:] + offsets) % side
    dy = (k[rows] - centres[:, :1] + side / 2) % side - side / 2
    dx = (k[cols] - centres[:, 1:] + side / 2) % side - side / 2
    inside = dy[:, :, None] * dy[:, :, None] + dx[:, None, :] * dx[:, None, :] <= _PEAK_RADIUS**2
    shape = inside.shape
    mask = np.zeros((side, side), bool)
    mask[
        np.broadcast_to(rows[:, :, None], shape)[inside],
        np.broadcast_to(cols[:, None, :], shape)[inside],
    ] = True
    return mask


def _fill_masked(power: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked bins replaced by the median of the unmasked ones within ``_FILL_RADIUS`` bins."""
    if mask.all():
        return np.full_like(power, np.median(power))
    r = _FILL_RADIUS
    holed = np.where(mask, np.nan, power)
    padded = np.pad(holed, r, mode="wrap")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (2 * r + 1, 2 * r + 1))
    rows, cols = np.nonzero(mask)
    around = windows[rows, cols].reshape(len(rows), -1)
    empty = np.all(np.isnan(around), axis=1)
    around[empty] = np.median(power[~mask])
    filled = power.copy()
    filled[rows, cols] = np.nanmedian(around, axis=1)
    return filled


WHITE_BAND = 0.25
"""Cycles/px: :func:`spectrum_whiteness` compares noise power only at frequencies of at least
this (in either axis), where the network's smooth error has little power."""

WHITE_MIN_SIDE = 64
"""Spectra (Welch tiles) smaller than this many bins a side are not judged white: too few bins."""


def spectrum_whiteness(spectrum: np.ndarray) -> float:
    """How far a noise spectrum is from white: the largest of four power ratios (1 = flat).

    Over the frequencies of at least :data:`WHITE_BAND` cycles/px in either axis (where an
    auto-encoder's smooth error has little power, so that the spectrum of ``image − output``
    shows the noise), four ratios of mean power, each taken as ``max(r, 1/r)``:

    * the outer half of that band over its inner half (interpolated frame averages and detector
      afterglow lose power towards Nyquist);
    * high ``k_x`` over high ``k_y`` (afterglow smooths along the fast scan only);
    * the line ``k_x = 0`` over the bulk (scan-row offsets: streaks), and ``k_y = 0`` likewise.

    Spectra of fewer than :data:`WHITE_MIN_SIDE` bins a side give ``inf`` (never judged white).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> white = noise_spectrum(rng.normal(0, 1.0, (256, 256)))
    >>> bool(spectrum_whiteness(white) < 1.2)
    True
    >>> streaks = rng.normal(0, 1.0, (256, 256)) + rng.normal(0, 0.5, (256, 1))
    >>> bool(spectrum_whiteness(noise_spectrum(streaks)) > 2)
    True
    """
    side = spectrum.shape[0]
    if side < WHITE_MIN_SIDE:
        return float("inf")
    k = np.abs(np.fft.fftfreq(side))
    ky, kx = k[:, None], k[None, :]
    largest = np.maximum(ky, kx)
    split = 0.5 * (WHITE_BAND + 0.5)
    line = 1.5 / side  # the single bin k = 0

    def mean(where):
        return float(np.mean(spectrum[np.broadcast_to(where, spectrum.shape)]))

    bulk = mean((kx >= WHITE_BAND) & (ky >= WHITE_BAND))
    ratios = (
        mean(largest >= split) / mean((largest >= WHITE_BAND) & (largest < split)),
        mean((kx >= WHITE_BAND) & (ky < WHITE_BAND)) / mean((ky >= WHITE_BAND) & (kx < WHITE_BAND)),
        mean((kx < line) & (ky >= WHITE_BAND)) / bulk,
        mean((ky < line) & (kx >= WHITE_BAND)) / bulk,
    )
    return float(max(max(r, 1.0 / r) for r in ratios))


@cache
def _transfer(sigma: float, side: int) -> np.ndarray:
    """Transfer function (side × side, FFT order) of ``ndimage.gaussian_filter``'s kernel."""
    if sigma == 0:
        return np.zeros((side, side))
    kernel = gaussian_taps(sigma)
    x = np.arange(len(kernel)) - len(kernel) // 2
    k = np.fft.fftfreq(side)
    one = kernel @ np.cos(2 * np.pi * np.outer(x, k))
    return np.outer(one, one)


def filtered_noise_variance(spectrum: np.ndarray, sigma: float) -> float:
    """Variance of noise of power ``spectrum`` after a Gaussian filter of ``sigma`` px.

    Examples
    --------
    >>> flat = np.full((64, 64), 1.0)  # white noise of unit variance
    >>> round(filtered_noise_variance(flat, 2.0), 4) == round(_kernel_energy(2.0), 4)
    True
    """
    return float(np.mean(_transfer(float(sigma), spectrum.shape[0]) ** 2 * spectrum))


def equivalent_variance(spectrum: np.ndarray, width: float) -> float:
    """The white-noise variance that a Gaussian average of ``width`` px sees as ``spectrum``.

    :func:`consistency_correction` compares a column-scale average of the residual with
    ``variance · ΣG²``; for correlated noise that average is noisier than the per-pixel variance
    says, and this is the variance that makes the comparison right.
    """
    return filtered_noise_variance(spectrum, width) / _kernel_energy(float(width))


def surround_variance(
    spectrum: np.ndarray, width: float, surround: float = CONSISTENCY_SURROUND
) -> float:
    """The white-noise variance that the column-against-surround test sees as ``spectrum``.

    :func:`remove_unsupported` compares ``(G_width − G_(surround·width)) * (y − a)`` with
    ``variance · Σ(G_width − G_(surround·width))²``; for noise of power ``spectrum`` (FFT order,
    mean = per-pixel variance, as :func:`noise_spectrum` returns it) this is the variance that
    makes the comparison right. The band-pass leaves out the slow part of correlated noise (scan
    streaks, drift), which a plain column-scale average keeps.

    Examples
    --------
    >>> flat = np.full((128, 128), 0.5)  # white noise of variance 0.5
    >>> round(surround_variance(flat, 3.0), 6)
    0.5
    """
    side = spectrum.shape[0]
    transfer = _transfer(float(width), side) - _transfer(float(surround * width), side)
    return float(np.mean(transfer**2 * spectrum)) / _surround_energy(float(width), surround)


def choose_residual_sigma(
    noisy: np.ndarray,
    estimate: np.ndarray,
    sigmas: tuple[float, ...] = RESIDUAL_SIGMAS,
    spectrum: np.ndarray | None = None,
) -> float:
    """Pick the residual low-pass bandwidth that minimises SURE.

    With a noise ``spectrum`` (:func:`noise_spectrum`) the risk is that of correlated noise,
    ``mean((G_s r − r)²) − v + 2 · mean_k(H_s(k) N(k))``, ``H_s`` the filter's transfer function
    and ``N`` the spectrum, ``v`` its mean: streaks and afterglow that a low-pass would put back
    count against it. Without one the noise is taken as white, of the variance
    :func:`noise_variance` measures.

    Parameters
    ----------
    noisy : ndarray, shape (H, W)
        The measured image.
    estimate : ndarray, shape (H, W)
        The auto-encoder's reconstruction of it, same units.
    sigmas : tuple of float
        Candidate Gaussian standard deviations, px (0 = no correction).
    spectrum : ndarray, shape (T, T), optional
        Noise power spectrum of ``noisy`` (:func:`noise_spectrum`); None assumes white noise.

    Returns
    -------
    float
        The chosen bandwidth, px.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> y, x = np.mgrid[:128, :128]
    >>> truth = np.cos(x / 3.0) * np.cos(y / 3.0)
    >>> noisy = truth + rng.normal(0, 0.3, truth.shape)
    >>> choose_residual_sigma(noisy, truth)  # a perfect estimate needs no correction
    0.0
    >>> choose_residual_sigma(noisy, np.zeros_like(truth)) > 0  # a blank one needs the data
    True
    """
    y = np.asarray(noisy, dtype=np.float64)
    a = np.asarray(estimate, dtype=np.float64)
    if y.shape != a.shape or y.ndim != 2:
        raise ValueError(
            f"noisy {y.shape} and estimate {a.shape} must be 2-D images of the same shape"
        )
    residual = y - a
    variance = noise_variance(residual) if spectrum is None else float(np.mean(spectrum))
    for sigma in sigmas:
        if sigma < 0:
            raise ValueError(f"residual sigma {sigma} is negative; use values ≥ 0 px")
    best_sigma, best_risk = 0.0, np.inf
    # the data term mean((G_s r − r)²) of every bandwidth from one cosine transform
    for sigma, error in zip(sigmas, lowpass_errors(residual, sigmas, _TRUNCATE), strict=True):
        if spectrum is None:
            passed = variance * _centre_tap(sigma)
        else:
            passed = float(np.mean(_transfer(float(sigma), spectrum.shape[0]) * spectrum))
        risk = error - variance + 2 * passed
        if risk < best_risk:
            best_sigma, best_risk = float(sigma), risk
    return best_sigma


def smoothing_sigma(
    noisy: np.ndarray,
    spectrum: np.ndarray,
    where: np.ndarray | None = None,
    sigmas: tuple[float, ...] = RESIDUAL_SIGMAS[1:],
) -> float:
    """The Gaussian filter bandwidth (px) of least SURE risk for ``noisy`` itself.

    The risk of ``G_s * y`` under noise of power ``spectrum`` is
    ``mean((G_s y − y)²) − v + 2 · mean_k(H_s(k) N(k))``, averaged over the pixels ``where`` is
    True (all by default): the data-consistent estimate for the parts of an image that are not
    a lattice.
    """
    y = np.asarray(noisy, dtype=np.float64)
    variance = float(np.mean(spectrum))
    best_sigma, best_risk = float(sigmas[0]), np.inf
    for sigma in sigmas:
        change = gaussian_filter(y, sigma, mode="reflect", truncate=_TRUNCATE) - y
        fit = np.mean(change[where] ** 2) if where is not None else np.mean(change**2)
        passed = float(np.mean(_transfer(float(sigma), spectrum.shape[0]) * spectrum))
        risk = fit - variance + 2 * passed
        if risk < best_risk:
            best_sigma, best_risk = float(sigma), risk
    return best_sigma


def network_excess(residual: np.ndarray, spectrum: np.ndarray) -> float:
    """How far an estimate is from the truth compared with the noise: ``MSE / noise variance``.

    SURE's risk of the estimate itself (no correction) under the noise ``spectrum`` is
    ``mean(r²) − mean(N)``: what the residual holds beyond the noise is the estimate's own error.
    Below 1 the estimate is closer to the truth than the data are; well above 1 the data are the
    better guide (a high dose, or a lattice the network does not know).
    """
    noise = float(np.mean(spectrum))
    if noise <= 0:
        return float("inf")
    return max(float(np.mean(np.square(residual))) - noise, 0.0) / noise


def apply_residual(
    noisy: np.ndarray,
    estimate: np.ndarray,
    sigma: float,
    *,
    overwrite: bool = False,
    weight: float = 1.0,
) -> np.ndarray:
    """Return ``estimate + weight · G_sigma * (noisy − estimate)``; ``sigma = 0`` gives a copy.

    Computed in float32 when both images are float32, else in float64. With ``overwrite=True``
    and an ``estimate`` of that dtype, the result is written into ``estimate`` (one image-sized
    buffer fewer, for large tiles).

    Examples
    --------
    >>> a = np.zeros((8, 8)); y = np.ones((8, 8))
    >>> float(apply_residual(y, a, 1.0).mean())
    1.0
    """
    single = np.asarray(noisy).dtype == np.float32 and np.asarray(estimate).dtype == np.float32
    dtype = np.float32 if single else np.float64
    y = np.asarray(noisy, dtype=dtype)
    a = np.asarray(estimate, dtype=dtype)
    residual = y - a
    if sigma == 0:
        residual[...] = 0.0
    else:  # separable: scipy filters line by line through a buffer, so in place is safe
        gaussian_filter(residual, sigma, mode="reflect", truncate=_TRUNCATE, output=residual)
        if weight != 1.0:
            residual *= weight
    if overwrite and a is estimate:
        a += residual
        return a
    residual += a
    return residual


def consistency_correction(
    noisy: np.ndarray,
    estimate: np.ndarray,
    width: float,
    variance: float,
    threshold: float = CONSISTENCY_THRESHOLD,
) -> np.ndarray:
    """Put the column-scale residual back wherever the estimate disagrees with the data.

    A global bandwidth cannot tell a vacancy from noise at low dose: SURE then smooths the
    residual so much that a column the network painted into a vacancy stays. This step tests
    the estimate locally instead. The residual ``y − a`` is averaged over a column-sized
    Gaussian of ``width`` px, ``m = G_width * (y − a)``, and compared with its noise level,
    ``z = |m| / sqrt(variance · ΣG²)``; where ``z`` exceeds ``threshold`` the average is added
    back, with a weight rising linearly from 0 at ``threshold`` to 1 at twice it::

        x̂ = a + clip((z − t) / t, 0, 1) · m

    Where the estimate agrees with the data within the noise nothing changes. On simulated
    SrTiO3 scenes at 1 count/px this halved the vacancies filled by an invented column (29 % →
    14 %) and the invented columns (1.5 % → 0.7 %), PSNR +0.05 dB, position error unchanged;
    at 4–64 counts/px it changed nothing measurable (``python benchmarks/quality.py``).

    Parameters
    ----------
    noisy, estimate : ndarray, shape (H, W)
        The measured image and the estimate of it (float32 in, float32 out; else float64).
    width : float
        Gaussian standard deviation, px (about a column's width).
    variance : float
        Mean noise variance of ``noisy`` (:func:`noise_variance` of a residual), or for
        correlated noise its :func:`equivalent_variance`.
    threshold : float
        Significance in standard deviations of the averaged noise.

    Returns
    -------
    ndarray
        The corrected estimate.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> truth = np.zeros((64, 64)); truth[28:36, 28:36] = 1.0  # a column the estimate lacks
    >>> noisy = truth + rng.normal(0, 0.5, truth.shape)
    >>> fixed = consistency_correction(noisy, np.zeros_like(truth), 2.0, 0.25)
    >>> bool(fixed[32, 32] > 0.5), bool(np.abs(fixed[:16, :16]).max() < 0.1)
    (True, True)
    """
    if width <= 0 or variance <= 0:
        raise ValueError(
            f"width {width} and variance {variance} must be positive; use the lattice-derived "
            "width and noise_variance() of a residual"
        )
    single = np.asarray(noisy).dtype == np.float32 and np.asarray(estimate).dtype == np.float32
    dtype = np.float32 if single else np.float64
    a = np.asarray(estimate, dtype=dtype)
    mean = np.asarray(noisy, dtype=dtype) - a
    gaussian_filter(mean, width, mode="reflect", truncate=_TRUNCATE, output=mean)
    z = np.abs(mean) / np.sqrt(variance * _kernel_energy(float(width)))
    z -= threshold
    z /= threshold
    np.clip(z, 0.0, 1.0, out=z)
    mean *= z
    mean += a
    return mean


def remove_unsupported(
    noisy: np.ndarray,
    estimate: np.ndarray,
    width: float,
    variance: float,
    threshold: float,
    spacing: float,
    surround: float = CONSISTENCY_SURROUND,
    *,
    fallback: np.ndarray | None = None,
    min_lowpass: float = 0.0,
    peak_threshold: float | None = None,
    lattice_vectors: np.ndarray | None = None,
) -> np.ndarray:
    """Take out what the estimate shows and the data do not: a column painted into a vacancy.

    The residual ``y − a`` averaged over a column-sized Gaussian of ``width`` px, minus its
    average over a surround ``surround`` times wider, is tested against its noise
    (``variance``, the :func:`surround_variance` of correlated noise): where the estimate shows
    a column-sized bump brighter than the data by more than ``threshold`` standard deviations,
    the spot is widened to a column's reach (0.6 × ``spacing``, smoothed over 0.1 × it) and
    there the residual, low-passed by a Gaussian of half ``width``, is added back in full. So a
    painted column goes whole, with no noise peak left behind, and where the estimate agrees
    with the data nothing changes.

    The surround makes the test blind to a smooth offset between estimate and data. The
    network's background between the columns of a real image sits a little above the data's:
    a plain column-scale average flagged 2.1 % of the Tecnai SrTiO3 image and 21 % of the Au
    particle crop, where there are no vacancies, and the surround test 0.8 % and 1.1 %. On
    simulated SrTiO3 at 1 count/px it leaves no vacancy filled (the plain average 0.6 %; the
    network alone 92 %) (``benchmarks/real.py``, ``benchmarks/quality.py``).

    Parameters
    ----------
    noisy, estimate : ndarray, shape (H, W)
        The measured image and the estimate of it (float32 in, float32 out; else float64).
    width : float
        Gaussian standard deviation of the test, px (about a column's width).
    variance : float
        White-noise-equivalent variance of ``noisy`` for the test (:func:`surround_variance`).
    threshold : float
        Significance, standard deviations of the band-passed noise.
    spacing : float
        Lattice spacing, px.
    surround : float
        Width of the subtracted surround, as a multiple of ``width`` (> 1).
    fallback : ndarray, shape (H, W), optional
        An estimate without the additions of ``estimate`` (the network's output before its
        periodic error was added): a spot flagged in either is corrected from it, so what was
        added at a vacancy goes too.
    min_lowpass : float
        Where half of ``width`` is narrower than this (px), a flagged spot takes the data
        low-passed by this width instead (no pixel noise put back; :data:`UNSUPPORTED_MIN_LOWPASS`).
    peak_threshold : float, optional
        A lower significance that holds at the estimate's own columns only: a spot within 1 px of
        a local maximum of the estimate (over a column's reach) is flagged from this many
        standard deviations on. The estimate's columns are a few hundred tests where the whole
        image is tens of thousands of pixels, so a lower bar there keeps few false alarms, and a
        false alarm at a real column puts the data, which show that column, back. None: off
        (what ``denoise`` passes: :data:`PEAK_THRESHOLD`).
    lattice_vectors : ndarray, shape (2, 2), optional
        With ``peak_threshold``: the lattice's real-space basis vectors, rows (y, x) in px. A
        column of the estimate is then also flagged where the data show less than
        :data:`PEAK_TYPICAL` of the column the estimate draws at the same site one lattice
        vector away (the median over the four translates ±a₁, ±a₂, each the largest within
        1 px), and fall short of it by ``peak_threshold`` standard deviations: a vacancy the
        network painted faintly, which its own faint column hides from the test above.

    Returns
    -------
    ndarray
        The corrected estimate.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> painted = np.zeros((64, 64)); painted[28:36, 28:36] = 1.0  # a column the data lack
    >>> noisy = rng.normal(0, 0.3, painted.shape)
    >>> fixed = remove_unsupported(noisy, painted, 2.0, 0.09, 4.0, 10.0)
    >>> bool(fixed[32, 32] < 0.3), bool(np.array_equal(fixed[:8, :8], painted[:8, :8]))
    (True, True)
    """
    if width <= 0 or variance <= 0 or spacing <= 0:
        raise ValueError(
            f"width {width}, variance {variance} and spacing {spacing} must be positive; use "
            "the lattice-derived width and spacing and surround_variance() of a residual"
        )
    if not surround > 1:
        raise ValueError(f"surround {surround} must be above 1 (a wider Gaussian); use 2.0")
    single = np.asarray(noisy).dtype == np.float32 and np.asarray(estimate).dtype == np.float32
    dtype = np.float32 if single else np.float64
    a = np.asarray(estimate, dtype=dtype)
    limit = threshold * np.sqrt(variance * _surround_energy(float(width), surround))
    reach = _column_reach(spacing)

    def unsupported(b):
        residual = np.asarray(noisy, dtype=dtype) - b
        mean = gaussian_filter(residual, width, mode="reflect", truncate=_TRUNCATE)
        mean -= gaussian_filter(residual, surround * width, mode="reflect", truncate=_TRUNCATE)
        flagged = -mean > limit
        if peak_threshold is not None and peak_threshold < threshold:
            bar = limit * (peak_threshold / threshold)
            centres = b >= ndi.maximum_filter(b, size=reach, mode="nearest")
            peaks = ndi.binary_dilation(centres, structure=np.ones((3, 3), bool))
            peaks &= -mean > bar
            # and the data show less than PEAK_SHOWN of the column drawn there (the same
            # average minus surround of the estimate): not a rounding error on clean data
            bump = gaussian_filter(b, width, mode="reflect", truncate=_TRUNCATE)
            bump -= gaussian_filter(b, surround * width, mode="reflect", truncate=_TRUNCATE)
            flagged |= peaks & (-mean > (1.0 - PEAK_SHOWN) * bump)
            if lattice_vectors is not None:
                flagged |= _weaker_than_translates(centres, bump, bump + mean, lattice_vectors, bar)
        return flagged, residual

    flagged, residual = unsupported(a)
    if fallback is not None:
        base = np.asarray(fallback, dtype=dtype)
        flagged |= unsupported(base)[0]
        if not flagged.any():
            return a.copy()
        residual = np.asarray(noisy, dtype=dtype) - base
    elif not flagged.any():
        return a.copy()
    mask = ndi.maximum_filter(flagged.astype(dtype), size=reach, mode="constant")
    mask = gaussian_filter(mask, 0.1 * spacing, mode="constant", truncate=_TRUNCATE)
    if 0.5 * width < min_lowpass:  # coarse sampling: the data, without their pixel noise
        residual[...] = noisy  # the buffer reused (the filter runs through one of its own)
        gaussian_filter(residual, min_lowpass, mode="reflect", truncate=_TRUNCATE, output=residual)
        residual -= a
    else:
        gaussian_filter(residual, 0.5 * width, mode="reflect", truncate=_TRUNCATE, output=residual)
        if fallback is not None:  # in flagged spots: fallback + its low-passed residual
            residual += base
            residual -= a
    residual *= mask
    residual += a
    return residual
