"""Resampling between the image's grid and the model's sampling (pixel-centre convention).

Tiles of a large image are resampled on their own but land on the whole image's grid:
:func:`scaled_region` says which pixels of the resampled image a tile covers, :func:`resample`
computes them.
"""

from __future__ import annotations

import numpy as np


def ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def resample(
    data: np.ndarray, origin: tuple[int, int], sizes: tuple, first: tuple, count: tuple
) -> np.ndarray:
    """Pixels ``first .. first+count`` of the whole image resampled from ``n_in`` to ``n_out`` px.

    ``data`` is a tile of the input grid whose pixel (0, 0) is global pixel ``origin``. Output
    pixel ``i`` samples input coordinate ``(i + 0.5) * n_in / n_out - 0.5`` (pixel centres, the
    convention of ``scipy.ndimage.zoom(grid_mode=True)``), so a down-then-up round trip does not
    shift the image. Downsampling is anti-aliased with a Gaussian of sigma ``(n_in/n_out - 1)/2``
    input px; interpolation is a cubic spline, mirrored at the tile edge.
    """
    from scipy import ndimage

    ratios = [n_in / n_out for n_in, n_out in sizes]
    sigma = [max(0.0, (r - 1.0) / 2.0) for r in ratios]
    if any(sigma):
        data = ndimage.gaussian_filter(data, sigma, mode="mirror", output=np.float32)
        coefficients = data  # a new array: its spline coefficients can overwrite it
    else:
        coefficients = np.empty(data.shape, np.float32)
    # cubic-spline prefilter done here, in float32, instead of in float64 inside affine_transform
    ndimage.spline_filter(data, order=3, mode="mirror", output=coefficients)
    offset = [(f + 0.5) * r - 0.5 - o for f, r, o in zip(first, ratios, origin, strict=True)]
    return ndimage.affine_transform(
        coefficients,
        ratios,
        offset=offset,
        output_shape=tuple(count),
        output=np.float32,
        order=3,
        mode="mirror",
        prefilter=False,
    )
