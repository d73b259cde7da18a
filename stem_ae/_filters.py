"""Gaussian filtering as ``scipy.ndimage.gaussian_filter`` does it, by cosine transform for wide
kernels (NumPy and SciPy only).

``ndimage.gaussian_filter`` convolves line by line with the sampled, truncated and normalised
Gaussian: its cost grows with the kernel's width (0.17 s for σ = 16 px on 1024² px on two cores,
against 0.03 s for σ = 1). With ``mode="reflect"`` (half-sample symmetric extension, ``d c b a |
a b c d``) that convolution is diagonal in the type-II discrete cosine transform, with the
kernel's own cosine series as the gain (symmetric convolution, Martucci 1994): one transform
there and back gives the same numbers, to float rounding, at any width. ``"nearest"`` and
``"constant"`` are the same after padding by the kernel's radius. :func:`lowpass_errors` uses
the same diagonal form with Parseval's theorem for SURE's data term at many bandwidths from one
transform. :func:`power_spectra` is the batched, threaded periodogram that the Welch averages of
``lattice``, ``_residual`` and ``_crystal`` share.
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np
from scipy import fft as sfft
from scipy import ndimage as ndi

TRUNCATE = 4.0
"""Kernel radius in standard deviations, as ``ndimage.gaussian_filter``'s default."""

COSINE_MIN_TAPS = 25
"""Kernels of this many taps or more (σ ≥ 3 px) go through the cosine transform: below, the
direct convolution is as fast (1024² px, two cores: 0.04 s at σ = 3 either way)."""

_WORKERS = max(1, min(4, os.cpu_count() or 1))
"""Threads per transform (few: ``denoise`` may already run tiles in parallel)."""

_MODES = ("reflect", "nearest", "constant")


def power_spectra(stack: np.ndarray) -> np.ndarray:
    """``|FFT|²`` over the last two axes (a stack of tapered tiles; threads as :data:`_WORKERS`)."""
    spectrum = sfft.fft2(np.asarray(stack, np.float64), workers=_WORKERS)
    return spectrum.real**2 + spectrum.imag**2


def gaussian_taps(sigma: float, truncate: float = TRUNCATE, radius: int | None = None):
    """The 1-D taps that ``ndimage.gaussian_filter`` applies, zero-padded to ``radius``."""
    own = int(truncate * sigma + 0.5)
    x = np.arange(-own, own + 1, dtype=float)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    pad = 0 if radius is None else radius - own
    return np.pad(kernel, pad)


@cache
def _cosine_gain(sigma: float, n: int, truncate: float) -> np.ndarray:
    """Gain of each type-II cosine coefficient (length ``n``) under the reflect-mode filter."""
    taps = gaussian_taps(sigma, truncate)
    offsets = np.arange(len(taps)) - len(taps) // 2
    gain = taps @ np.cos(np.pi * np.outer(offsets, np.arange(n)) / n)
    gain.flags.writeable = False
    return gain


def _radius(sigma: float, truncate: float) -> int:
    return int(truncate * sigma + 0.5)


def gaussian_filter(
    image: np.ndarray,
    sigma: float,
    *,
    mode: str = "reflect",
    truncate: float = TRUNCATE,
    output: np.ndarray | None = None,
) -> np.ndarray:
    """``ndimage.gaussian_filter(image, sigma, mode=mode, truncate=truncate)`` for a 2-D image.

    Wide kernels (:data:`COSINE_MIN_TAPS`) on an image larger than the kernel go through the
    cosine transform, narrow ones through ``ndimage``; the result has the input's float dtype,
    or is written into ``output`` (which may be ``image`` itself) and returned.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> image = rng.normal(size=(96, 80))
    >>> fast = gaussian_filter(image, 5.0, mode="nearest")
    >>> bool(np.allclose(fast, ndi.gaussian_filter(image, 5.0, mode="nearest"), atol=1e-12))
    True
    """
    image = np.asarray(image)
    dtype = image.dtype if image.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    radius = _radius(sigma, truncate)
    if (
        image.ndim != 2
        or mode not in _MODES
        or sigma <= 0
        or 2 * radius + 1 < COSINE_MIN_TAPS
        or radius >= min(image.shape)
    ):
        if output is not None:
            ndi.gaussian_filter(image, sigma, mode=mode, truncate=truncate, output=output)
            return output
        return ndi.gaussian_filter(
            image.astype(dtype, copy=False), sigma, mode=mode, truncate=truncate
        )
    data = np.asarray(image, np.float64)
    if mode != "reflect":  # the kernel never reaches past the padding: reflect it there
        data = np.pad(data, radius, mode="edge" if mode == "nearest" else "constant")
    coefficients = sfft.dctn(data, type=2, norm="ortho", workers=_WORKERS)
    coefficients *= _cosine_gain(float(sigma), data.shape[0], truncate)[:, None]
    coefficients *= _cosine_gain(float(sigma), data.shape[1], truncate)[None, :]
    out = sfft.idctn(coefficients, type=2, norm="ortho", workers=_WORKERS, overwrite_x=True)
    if mode != "reflect":
        out = out[radius:-radius, radius:-radius]
    if output is not None:
        output[...] = out
        return output
    return out.astype(dtype, copy=False)


def lowpass_errors(residual: np.ndarray, sigmas, truncate: float = TRUNCATE) -> list[float]:
    """``mean((G_s * r − r)²)`` for every ``s`` in ``sigmas`` (reflect mode; ``s = 0``: the
    low-pass is taken as zero, giving ``mean(r²)``), from one cosine transform of ``r``.

    With ``c`` the coefficients and ``h`` the separable gain, Parseval gives
    ``Σ c² (h_y h_x − 1)² = h_y²ᵀ P h_x² − 2 h_yᵀ P h_x + Σ P`` for ``P = c²``: three
    matrix–vector products per bandwidth. A bandwidth whose kernel outreaches the image is
    filtered directly.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> r = rng.normal(size=(64, 48))
    >>> direct = np.mean((ndi.gaussian_filter(r, 2.0) - r) ** 2)
    >>> bool(np.isclose(lowpass_errors(r, [2.0])[0], direct, rtol=1e-10))
    True
    """
    r = np.asarray(residual, np.float64)
    height, width = r.shape
    power = sfft.dctn(r, type=2, norm="ortho", workers=_WORKERS) ** 2
    total = float(power.sum())
    errors = []
    for sigma in sigmas:
        if sigma == 0:
            errors.append(total / r.size)
        elif _radius(sigma, truncate) >= min(r.shape):
            smoothed = ndi.gaussian_filter(r, sigma, mode="reflect", truncate=truncate)
            errors.append(float(np.mean((smoothed - r) ** 2)))
        else:
            gy = _cosine_gain(float(sigma), height, truncate)
            gx = _cosine_gain(float(sigma), width, truncate)
            cross = float(gy @ power @ gx)
            square = float((gy * gy) @ power @ (gx * gx))
            errors.append((square - 2 * cross + total) / r.size)
    return errors
