"""Constants and checks shared by several modules (the lowest room of the house: NumPy only).

Each is defined here once and imported where it is used (``stem_ae.simulate``, ``stem_ae.model``,
``stem_ae.windows``, ``stem_ae.cli``), so that changing one cannot leave another copy behind.
"""

import math

import numpy as np

WINDOW = 28
"""Side of the auto-encoder's square window, px (the paper's 28×28)."""

PAPER_PERIOD_PX = 9.0
"""Sr–Sr period of the paper's SrTiO3 [001] windows, px (about three unit cells per window)."""

PAPER_SPACING_PX = 1.0 / math.hypot(1.0 / PAPER_PERIOD_PX, 1.0 / PAPER_PERIOD_PX)
"""Dominant lattice spacing of the paper's windows, px: the {110} planes of SrTiO3, ``a / √2``
(computed from the reflection ``(1/a, 1/a)`` as :meth:`stem_ae.Lattice.dominant_spacing` does)."""


def as_image(image, name: str = "image") -> np.ndarray:
    """``image`` as a finite, real, 2-D ndarray, or a ValueError/TypeError naming the fix."""
    array = np.asarray(image)
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} has dtype {array.dtype}; give a real-valued (integer or float) array."
        )
    if array.ndim != 2:
        raise ValueError(
            f"{name} has shape {array.shape}; expected a 2-D image (H, W). "
            "Denoise a stack (frames, H, W) frame by frame with stem_ae.denoise."
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or Inf; replace or mask them before denoising.")
    return array
