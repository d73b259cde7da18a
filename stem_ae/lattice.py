"""Lattice measurement from the Fourier transform (NumPy/SciPy only).

One measurement shared by :func:`stem_ae.denoise` (its sampling match), :mod:`stem_ae.analysis`
(the default column radius) and ``stem-ae info`` / ``stem-ae denoise`` (what is reported):
:func:`measure_lattice` sums the power spectra of the frames of a series, :func:`estimate_lattice`
and :func:`estimate_period` measure one image, and all return or use one
:class:`LatticeEstimate`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from stem_ae._common import WINDOW, as_image

LATTICE_CROP = 1024
"""Side (px) of the central square on which the lattice is measured (the whole image if smaller)."""

BACKGROUND_PERCENTILE = 20.0
"""The background power at a spatial frequency is this percentile of the power on its ring."""

MIN_PEAK_RATIO = 200.0
"""A Fourier peak counts as a lattice reflection when its power is at least this many times the
background at its spatial frequency (white noise reaches ~50–100 on 128²–1024² crops)."""

_MIN_RADIUS = 3.0  # frequency bins: longest measurable spacing is crop/3 px
_REFINED_PEAKS = 12  # strongest peaks refined by a zoomed DFT


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
        Power of the strongest reflection over the background power at its frequency (the
        :data:`BACKGROUND_PERCENTILE` percentile of its ring); at least :data:`MIN_PEAK_RATIO`.
    """

    reciprocal: np.ndarray
    spacings: tuple[float, float]
    angles: tuple[float, float]
    dominant_spacing: float
    dominant_angle: float
    second_spacing: float
    quality: float


def _angle(g: np.ndarray) -> float:
    return float(round(float(np.degrees(np.arctan2(-g[0], g[1]))), 6) % 180.0)


def _tapered_crop(image: np.ndarray) -> np.ndarray:
    """Central square crop (≤ LATTICE_CROP px), clipped to its 0.1–99.9 %, mean-free, Hann."""
    side = min(min(image.shape), LATTICE_CROP)
    y0 = (image.shape[0] - side) // 2
    x0 = (image.shape[1] - side) // 2
    crop = np.asarray(image[y0 : y0 + side, x0 : x0 + side], np.float64)
    low, high = np.percentile(crop, [0.1, 99.9])
    crop = np.clip(crop, low, high)
    crop = crop - crop.mean()
    taper = np.hanning(side + 2)[1:-1]
    return crop * np.outer(taper, taper)


def _power_spectrum(crop: np.ndarray) -> np.ndarray:
    """Power spectrum of a tapered crop, fftshifted, shape (n, n)."""
    spectrum = np.fft.fftshift(np.fft.fft2(crop))
    return spectrum.real**2 + spectrum.imag**2


def _refine_peak(crops: list[np.ndarray], g: np.ndarray) -> tuple[np.ndarray, float]:
    """Frequency (1/px) and power of a Fourier peak near ``g``, from a zoomed DFT.

    The DFT of the tapered crops is evaluated on a 21×21 grid of ±1 bin around ``g`` (separable
    matrix products), then a parabola through the log power around the best grid point gives
    the sub-bin position (about 0.01 bin).
    """
    side = crops[0].shape[0]
    offsets = np.linspace(-1.0, 1.0, 21) / side
    positions = np.arange(side)
    power = 0.0
    for crop in crops:
        ey = np.exp(-2j * np.pi * np.outer(g[0] + offsets, positions))
        ex = np.exp(-2j * np.pi * np.outer(g[1] + offsets, positions))
        zoom = ey @ crop @ ex.T
        power = power + zoom.real**2 + zoom.imag**2
    iy, ix = np.unravel_index(np.argmax(power), power.shape)
    iy, ix = min(max(iy, 1), 19), min(max(ix, 1), 19)
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


def _lattice_from_power(power: np.ndarray, crops: list[np.ndarray]) -> LatticeEstimate:
    from scipy import ndimage

    side = power.shape[0]
    centre = side // 2
    v, u = np.indices(power.shape) - centre
    radius = np.hypot(v, u)
    ring = np.rint(radius).astype(int)
    # background: a low percentile of each ring, so that the lattice peaks themselves (which can
    # fill half of a small ring) do not raise it
    order = np.argsort(ring, axis=None, kind="stable")
    counts = np.bincount(ring.ravel())
    sorted_power = power.ravel()[order]
    background = np.array(
        [
            np.percentile(chunk, BACKGROUND_PERCENTILE) if chunk.size else 0.0
            for chunk in np.split(sorted_power, np.cumsum(counts)[:-1])
        ]
    )
    background = np.maximum(background, np.finfo(float).tiny)
    ratio = power / background[ring]
    usable = (radius >= _MIN_RADIUS) & (radius <= side / 2 - 1)
    usable &= (v > 0) | ((v == 0) & (u > 0))  # one of each ±g pair
    peaks = usable & (ratio >= MIN_PEAK_RATIO)
    peaks &= power == ndimage.maximum_filter(power, size=5, mode="wrap")
    if not np.any(peaks):
        raise ValueError(
            "no lattice reflection stands out in the image's Fourier transform (best peak "
            f"{float(ratio[usable].max()) if np.any(usable) else 0.0:.1f}× the background at its "
            f"frequency, {MIN_PEAK_RATIO:g}× needed): vacuum, amorphous or too noisy. "
            "stem_ae denoises crystalline lattice images only."
        )
    index = np.flatnonzero(peaks.ravel())
    # sub-pixel position and height from a parabola through log power along each axis
    logp = np.log(np.maximum(power, np.finfo(float).tiny))
    iy, ix = np.unravel_index(index, power.shape)
    offsets, heights = [], []
    for axis_y, axis_x in ((1, 0), (0, 1)):
        left = logp[(iy - axis_y) % side, (ix - axis_x) % side]
        mid = logp[iy, ix]
        right = logp[(iy + axis_y) % side, (ix + axis_x) % side]
        curvature = left - 2 * mid + right
        delta = np.where(
            curvature < 0, 0.5 * (left - right) / np.where(curvature < 0, curvature, -1), 0
        )
        delta = np.clip(delta, -0.5, 0.5)
        offsets.append(delta)
        heights.append(mid - 0.25 * (left - right) * delta)
    g = np.stack([(iy - centre + offsets[0]) / side, (ix - centre + offsets[1]) / side], 1)
    height = np.exp(0.5 * (heights[0] + heights[1]))
    order = np.argsort(-height)[:_REFINED_PEAKS]
    g, height, strength = g[order], height[order], ratio.ravel()[index][order]
    for k in range(len(g)):
        g[k], height[k] = _refine_peak(crops, g[k])
    order = np.argsort(-height)
    g, height, strength = g[order], height[order], strength[order]
    keep = []  # refined candidates that converged onto a stronger one are dropped
    for k in range(len(g)):
        if height[k] < 1e-4 * height[0]:
            continue  # a faint artefact, not worth indexing
        if all(np.abs(g[k] - g[j]).max() * side > 1.0 for j in keep):
            keep.append(k)
    g, height, strength = g[keep], height[keep], strength[keep]
    strong = height >= 1e-3 * height[0]
    g_strong = g[strong]
    norms = np.linalg.norm(g_strong, axis=1)
    first = int(np.argmin(norms))
    cross = np.abs(g_strong[:, 0] * g_strong[first, 1] - g_strong[:, 1] * g_strong[first, 0])
    others = np.flatnonzero(cross > 0.2 * norms * norms[first])
    if others.size == 0:
        raise ValueError(
            "only one family of lattice planes stands out in the Fourier transform (fringes, "
            "not a 2-D lattice of columns); stem_ae needs an atomic-column lattice."
        )
    second = others[np.argmin(norms[others])]
    basis = _reduce(np.stack([g_strong[first], g_strong[second]]))
    # least-squares refinement over all reflections that index on the basis
    hk = g @ np.linalg.inv(basis)
    integral = np.rint(hk)
    residual = np.abs(g - integral @ basis).max(axis=1) * side  # frequency bins
    good = (residual < 0.3) & (np.abs(integral).max(axis=1) <= 6)
    if good.sum() >= 2 and np.linalg.matrix_rank(integral[good]) == 2:
        basis = np.linalg.lstsq(integral[good], g[good], rcond=None)[0]
    dominant_g = np.rint(hk[0]) @ basis if good[0] else g[0]
    cross = np.abs(g[:, 0] * g[0, 1] - g[:, 1] * g[0, 0])
    noncollinear = np.flatnonzero(cross > 0.2 * np.linalg.norm(g, axis=1) * np.linalg.norm(g[0]))
    j = int(noncollinear[0]) if noncollinear.size else 0
    second_g = np.rint(hk[j]) @ basis if good[j] else g[j]
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
        quality=float(strength[0]),
    )


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


def estimate_lattice(image: np.ndarray) -> LatticeEstimate:
    """Measure the 2-D lattice of an atomic-resolution image from its Fourier transform.

    The central square (at most :data:`LATTICE_CROP` px) is clipped to its 0.1–99.9 percentiles
    (hot pixels), Hann-tapered and Fourier transformed. Local maxima of the power spectrum that
    exceed :data:`MIN_PEAK_RATIO` times the background power at the same spatial frequency are
    lattice reflections; their positions are refined to sub-pixel precision (parabola through
    the log power), the two shortest non-collinear strong ones are reduced to a primitive basis,
    and that basis is refined by least squares over all reflections it indexes.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Any real dtype and intensity units; at least 28×28 px and a few lattice periods wide.

    Returns
    -------
    LatticeEstimate

    Raises
    ------
    ValueError
        If the image is not a finite 2-D array, or no 2-D lattice stands out (vacuum, amorphous,
        constant, fringes only).

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
    crop = _tapered_crop(image)
    return _lattice_from_power(_power_spectrum(crop), [crop])


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


def measure_lattice(frames) -> LatticeEstimate:
    """Measure the lattice of an image or a series from the sum of the frames' power spectra.

    Each frame's central square (at most :data:`LATTICE_CROP` px) is tapered as in
    :func:`estimate_lattice`; the power spectra are summed (the noise averages out, the lattice
    reflections add up) and the reflections refined on all frames together. This is the
    measurement :func:`stem_ae.denoise` plans with and ``stem-ae info`` reports.

    Parameters
    ----------
    frames : ndarray, shape (H, W) or (frames, H, W), or a sequence of (H, W) arrays
        Any real dtype and intensity units (the caller normalises, if it wants to).

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
    if isinstance(frames, np.ndarray) and frames.ndim == 2:
        frames = [frames]
    frames = [as_image(frame, "frame") for frame in frames]
    if not frames:
        raise ValueError("no frames to measure a lattice on; give at least one image.")
    if min(min(frame.shape) for frame in frames) < WINDOW:
        raise ValueError(f"a frame of shape {frames[0].shape} is too small to measure a lattice.")
    if all(np.ptp(frame) == 0 for frame in frames):
        raise ValueError("the image is constant: there is no lattice to measure.")
    crops = [_tapered_crop(frame) for frame in frames]
    return _lattice_from_power(sum(_power_spectrum(c) for c in crops), crops)


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
