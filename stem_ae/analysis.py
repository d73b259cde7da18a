"""Measure what a denoised image shows: atom columns, sublattices, lattice maps, and image quality.

Microscopists denoise in order to *measure*. This module turns an image into column positions
(sub-pixel, by a batched 2-D Gaussian fit), separates the Sr and Ti–O sublattices of a perovskite,
maps the local lattice parameters and the strain, measures the cell elongation against the distance
from a planar fault, and scores an image or a set of columns against the simulated truth (PSNR,
SSIM, column position error, found and invented columns). :func:`crlb_position` gives the physical
limit — the Cramér–Rao lower bound on a column's position under Poisson noise.

Units: positions in px as ``(y, x)`` (row, column); pixel size in Å/px; lattice parameters in Å
when a pixel size is given (px otherwise); strain is dimensionless; angles in degrees. Strain and
rotation are expressed in the right-handed frame ``(x, y_up)`` — x to the right, y up the screen —
so a positive rotation is counter-clockwise as seen on the screen.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from stem_ae._crystal import cell_average, cell_maxima, nearest_neighbour

__all__ = [
    "ColumnMatch",
    "ElongationProfile",
    "LatticeFit",
    "LatticeMap",
    "MethodNoise",
    "assign_sublattices",
    "column_crlb",
    "crlb_position",
    "elongation_profile",
    "find_columns",
    "fit_columns",
    "fit_lattice",
    "lattice_map",
    "lattice_motif",
    "lattice_vectors",
    "match_columns",
    "method_noise",
    "psnr",
    "ssim",
]

#: Minimum distance between columns, as a fraction of the measured lattice period.
SEPARATION_FRACTION = 0.38
#: Column × pixel elements fitted together in one batch (bounds temporary memory to ~200 MB).
_FIT_ELEMENTS = 1_000_000
#: Radius of the fitting patch around each column, as a fraction of the lattice period.
PATCH_FRACTION = 0.45


# --------------------------------------------------------------------------------------------
# argument checks


def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray):
        image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (H, W); got shape {image.shape}")
    if image.size == 0 or min(image.shape) < 3:
        raise ValueError(
            f"{name} is empty or smaller than 3x3 px (shape {image.shape}); pass an image"
        )
    if not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
        raise TypeError(f"{name} must be a real numeric array; got dtype {image.dtype}")
    image = image.astype(np.float64)
    if not np.all(np.isfinite(image)):
        raise ValueError(f"{name} contains NaN or infinite values; replace them before analysis")
    return image


def _check_pixel_size(pixel_size: float | None) -> float | None:
    if pixel_size is None:
        return None
    pixel_size = float(pixel_size)
    if not np.isfinite(pixel_size) or pixel_size <= 0:
        raise ValueError(f"pixel_size must be a positive number of Å/px; got {pixel_size}")
    return pixel_size


def _check_columns(columns: np.ndarray, name: str = "columns") -> np.ndarray:
    columns = np.asarray(columns, dtype=np.float64)
    if columns.ndim != 2 or columns.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) of (y, x) px; got {columns.shape}")
    if not np.all(np.isfinite(columns)):
        raise ValueError(f"{name} contains NaN or infinite positions; drop them first")
    return columns


# --------------------------------------------------------------------------------------------
# column finding


def _period(image: np.ndarray, pixel_size: float | None) -> float:
    """Lattice period (px) for the column separation, measured with ``estimate_period``."""
    from stem_ae.lattice import estimate_period

    try:
        period, _ = estimate_period(image)
    except ValueError as error:
        if pixel_size is None:
            raise ValueError(
                f"cannot measure the lattice period of this image ({error}); pass min_distance in "
                "px, or pixel_size to assume a typical 2.5 Å column spacing"
            ) from error
        period = 2.5 / pixel_size
    return float(period)


def _gaussian_model(params: np.ndarray, dy: np.ndarray, dx: np.ndarray, jacobian: bool = True):
    """Model and Jacobian of ``B + A exp(-r²/2s²)`` on patches; params (N, 5) = y0, x0, A, B, s."""
    y0, x0, amp, back, sig = (params[:, k, None] for k in range(5))
    ry = dy[None, :] - y0
    rx = dx[None, :] - x0
    r2 = ry * ry + rx * rx
    inv_s2 = 1.0 / (sig * sig)
    g = np.exp(-0.5 * r2 * inv_s2)
    model = back + amp * g
    if not jacobian:
        return model
    ag_s2 = amp * g * inv_s2
    jac = np.empty((*g.shape, 5))
    jac[..., 0] = ag_s2 * ry
    jac[..., 1] = ag_s2 * rx
    jac[..., 2] = g
    jac[..., 3] = 1.0
    jac[..., 4] = ag_s2 * r2 / sig
    return model, jac


def fit_columns(
    image: np.ndarray,
    starts: np.ndarray,
    *,
    radius: float,
    sigma: float | None = None,
    poisson: bool = False,
    n_iter: int = 30,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit an isotropic 2-D Gaussian on a background to every column at once.

    Each column is fitted on a disc of ``radius`` px around its start position by a batched
    Levenberg–Marquardt (all columns advance together, one small 5×5 system per column), so
    thousands of columns take well under a second.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Image, any real units.
    starts : ndarray, shape (N, 2)
        Start positions (y, x), px.
    radius : float
        Radius of the fitted disc, px (about half the nearest-neighbour distance).
    sigma : float, optional
        Start value of the Gaussian width, px. Default: from the second moment of each patch.
    poisson : bool
        If True the image is in expected-count units (electrons) and the fit is the Poisson
        maximum-likelihood one (iteratively reweighted by 1/model); otherwise least squares.
    n_iter : int
        Number of Levenberg–Marquardt iterations.

    Returns
    -------
    params : ndarray, shape (N, 5)
        ``y0, x0`` (px), amplitude ``A`` above the background, background ``B`` (image units),
        width ``s`` (px).
    ok : ndarray of bool, shape (N,)
        False where the fit failed (negative amplitude, width out of range, or the position left
        the disc).

    Examples
    --------
    >>> yy, xx = np.mgrid[:32, :32]
    >>> image = 2.0 + 5.0 * np.exp(-((yy - 15.3) ** 2 + (xx - 16.6) ** 2) / (2 * 2.0**2))
    >>> params, ok = fit_columns(image, np.array([[15.0, 17.0]]), radius=6)
    >>> np.round(params[0], 3).tolist(), ok.tolist()
    ([15.3, 16.6, 5.0, 2.0, 2.0], [True])
    """
    image = _check_image(image)
    starts = _check_columns(starts, "starts")
    if not radius >= 1:
        raise ValueError(f"radius must be at least 1 px; got {radius}")
    n = len(starts)
    if n == 0:
        return np.zeros((0, 5)), np.zeros(0, dtype=bool)
    r = int(np.ceil(radius))
    oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
    disc = (oy * oy + ox * ox) <= radius * radius
    oy, ox = oy[disc].astype(np.float64), ox[disc].astype(np.float64)
    padded = np.pad(image, r, mode="constant", constant_values=np.nan)
    params = np.empty((n, 5))
    ok = np.empty(n, dtype=bool)
    chunk = max(64, _FIT_ELEMENTS // len(oy))
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        params[lo:hi], ok[lo:hi] = _fit_batch(
            padded, starts[lo:hi], r, radius, oy, ox, sigma, poisson, n_iter
        )
    return params, ok


def _fit_batch(padded, starts, r, radius, oy, ox, sigma, poisson, n_iter):
    """Levenberg–Marquardt on one batch of columns; see :func:`fit_columns`."""
    n = len(starts)
    centres = np.rint(starts).astype(np.int64)
    rows = centres[:, 0, None] + oy.astype(np.int64)[None, :] + r
    cols = centres[:, 1, None] + ox.astype(np.int64)[None, :] + r
    rows = np.clip(rows, 0, padded.shape[0] - 1)
    cols = np.clip(cols, 0, padded.shape[1] - 1)
    data = padded[rows, cols]
    inside = np.isfinite(data)
    data = np.where(inside, data, 0.0)
    weight = inside.astype(np.float64)

    # moment start: background = low percentile of the disc, centroid of what lies above it
    count = weight.sum(axis=1).astype(np.int64)
    ordered = np.sort(np.where(inside, data, np.inf), axis=1)
    low_index = np.clip((0.1 * (count - 1)).astype(np.int64), 0, None)
    back = np.take_along_axis(ordered, low_index[:, None], axis=1)[:, 0]
    back = np.where(np.isfinite(back), back, 0.0)
    peak = np.take_along_axis(ordered, np.clip(count - 1, 0, None)[:, None], axis=1)[:, 0]
    peak = np.where(np.isfinite(peak), peak, 0.0)
    above = np.clip(data - back[:, None], 0, None) * weight
    total = above.sum(axis=1)
    total_safe = np.where(total > 0, total, 1.0)
    cy = (above * oy).sum(axis=1) / total_safe
    cx = (above * ox).sum(axis=1) / total_safe
    if sigma is None:
        var = (above * ((oy - cy[:, None]) ** 2 + (ox - cx[:, None]) ** 2)).sum(axis=1)
        sig0 = np.sqrt(np.clip(var / total_safe / 2.0, 0.25, radius * radius))
        sig0 = np.clip(sig0, 0.5, 0.6 * radius)
    else:
        sig0 = np.full(n, float(sigma))
    params = np.stack([cy, cx, np.clip(peak - back, 1e-12, None), back, sig0], axis=1)
    floor = 1e-3 * np.maximum(np.abs(peak), 1e-12)[:, None]

    def weights_of(model: np.ndarray) -> np.ndarray:
        return weight / np.maximum(model, floor) if poisson else weight

    def cost_of(p: np.ndarray) -> np.ndarray:
        model = _gaussian_model(p, oy, ox, jacobian=False)
        res = data - model
        return (weights_of(model) * res * res).sum(axis=1)

    lam = np.full(n, 1e-3)
    eye = np.eye(5)
    for _ in range(n_iter):
        model, jac = _gaussian_model(params, oy, ox)
        res = data - model
        w = weights_of(model)
        cost = (w * res * res).sum(axis=1)
        jw = jac * w[:, :, None]
        jtj = np.matmul(jw.transpose(0, 2, 1), jac)
        jtr = np.matmul(jw.transpose(0, 2, 1), res[:, :, None])[:, :, 0]
        diag = np.einsum("nii->ni", jtj)
        diag = np.maximum(diag, 1e-12 * diag.sum(axis=1, keepdims=True) + 1e-30)
        damped = jtj + (lam[:, None] * diag)[:, :, None] * eye
        try:
            step = np.linalg.solve(damped, jtr[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:  # a degenerate patch: pseudo-inverse for the batch
            step = np.matmul(np.linalg.pinv(damped), jtr[:, :, None])[:, :, 0]
        trial = params + step
        trial[:, 4] = np.abs(trial[:, 4]) + 1e-6
        better = cost_of(trial) < cost  # False for NaN
        params = np.where(better[:, None], trial, params)
        lam = np.clip(np.where(better, lam / 3.0, lam * 4.0), 1e-9, 1e9)
        if np.all(np.abs(step[:, :2]).max(axis=1) < 1e-6):
            break

    ok = (
        np.all(np.isfinite(params), axis=1)
        & (params[:, 2] > 0)
        & (params[:, 4] > 0.2)
        & (params[:, 4] < 1.5 * radius)
        & (np.hypot(params[:, 0], params[:, 1]) <= radius)
    )
    params = params.copy()
    params[:, 0] += centres[:, 0]
    params[:, 1] += centres[:, 1]
    return params, ok


def find_columns(
    image: np.ndarray,
    *,
    pixel_size: float | None = None,
    min_distance: float | None = None,
    refine: bool = True,
    threshold: float = 0.25,
    poisson: bool = False,
    return_params: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Find atom columns and locate them to sub-pixel precision.

    Local maxima (:func:`skimage.feature.peak_local_max`) at least ``min_distance`` apart — by
    default 0.38 × the lattice period measured by :func:`stem_ae.lattice.estimate_period` —
    are refined by a batched 2-D Gaussian fit (:func:`fit_columns`) on a disc of 0.45 × the
    period. Candidates whose fit fails or whose amplitude is below ``threshold`` × the median
    amplitude are dropped, and candidates that converge onto the same column are merged.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Atomic-resolution image with bright columns (HAADF), any real units.
    pixel_size : float, optional
        Å/px. Used only when the period cannot be measured: then a 2.5 Å column spacing is
        assumed.
    min_distance : float, optional
        Smallest column separation, px. Default: from the measured period.
    refine : bool
        Fit a Gaussian to each column (sub-pixel). If False, return the integer maxima that pass
        the amplitude threshold.
    threshold : float
        Keep columns whose amplitude above the local background is at least this fraction of the
        median amplitude (0.25 keeps Ti–O next to Sr, whose height ratio is ~0.7).
    poisson : bool
        The image is in raw counts: fit by Poisson maximum likelihood (see :func:`fit_columns`).
    return_params : bool
        Also return the fitted parameters (N, 5): y0, x0, A, B, s.

    Returns
    -------
    columns : ndarray, shape (N, 2)
        Column positions (y, x), px, sorted by row (rounded to 1 px) then column.
    params : ndarray, shape (N, 5)
        Only if ``return_params``.

    Raises
    ------
    ValueError
        If the image is empty or non-finite, the pixel size is not positive, or no column is found.

    Examples
    --------
    >>> yy, xx = np.mgrid[:64, :64]
    >>> truth = np.array([(y, x) for y in (10.2, 30.2, 50.2) for x in (12.7, 32.7, 52.7)])
    >>> image = sum(np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 8.0) for y, x in truth)
    >>> columns = find_columns(image, min_distance=7)
    >>> len(columns), bool(np.abs(columns - truth).max() < 0.01)
    (9, True)
    """
    from skimage.feature import peak_local_max

    image = _check_image(image)
    pixel_size = _check_pixel_size(pixel_size)
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must lie in [0, 1); got {threshold}")
    if min_distance is None:
        period = _period(image, pixel_size)
        min_distance = SEPARATION_FRACTION * period
        radius = PATCH_FRACTION * period
    else:
        if not min_distance > 0:
            raise ValueError(f"min_distance must be a positive number of px; got {min_distance}")
        radius = PATCH_FRACTION / SEPARATION_FRACTION * float(min_distance)
    radius = max(float(radius), 1.5)
    separation = max(1, int(np.floor(min_distance)))
    if np.ptp(image) == 0:
        raise ValueError("image is constant: no columns to find")
    peaks = peak_local_max(image, min_distance=separation, exclude_border=False)
    if len(peaks) == 0:
        raise ValueError("no local maxima found; is this an atomic-resolution image?")
    starts = peaks.astype(np.float64)
    if refine:
        params, ok = fit_columns(image, starts, radius=radius, poisson=poisson)
        # keep candidates that stayed near their maximum (others ran off to a neighbour)
        ok &= np.hypot(*(params[:, :2] - starts).T) <= max(min_distance, 1.0)
    else:
        # amplitude above the local background (10th percentile of a disc), no fit
        r = int(np.ceil(radius))
        footprint = np.hypot(*np.mgrid[-r : r + 1, -r : r + 1]) <= radius
        low = ndimage.percentile_filter(image, 10, footprint=footprint, mode="nearest")
        amp = image[peaks[:, 0], peaks[:, 1]] - low[peaks[:, 0], peaks[:, 1]]
        params = np.column_stack([starts, amp, low[peaks[:, 0], peaks[:, 1]], np.zeros(len(amp))])
        ok = amp > 0
    if not np.any(ok):
        raise ValueError("no column could be fitted; is this an atomic-resolution image?")
    params = params[ok]
    amp = params[:, 2]
    params = params[amp >= threshold * np.median(amp)]
    params = _merge_duplicates(params, 0.5 * min_distance)
    # columns whose fitted centre left the image are not in the image
    h, w = image.shape
    inside = (
        (params[:, 0] >= -0.5)
        & (params[:, 0] <= h - 0.5)
        & (params[:, 1] >= -0.5)
        & (params[:, 1] <= w - 0.5)
    )
    params = params[inside]
    if len(params) == 0:
        raise ValueError("no column passed the amplitude threshold; lower threshold")
    order = np.lexsort((params[:, 1], np.round(params[:, 0])))
    params = params[order]
    columns = params[:, :2].copy()
    return (columns, params) if return_params else columns


def _merge_duplicates(params: np.ndarray, distance: float) -> np.ndarray:
    """Keep the brighter of any two columns closer than ``distance`` px."""
    if len(params) < 2 or distance <= 0:
        return params
    order = np.argsort(-params[:, 2])
    params = params[order]
    tree = cKDTree(params[:, :2])
    pairs = tree.query_pairs(distance, output_type="ndarray")
    keep = np.ones(len(params), dtype=bool)
    if len(pairs):
        pairs = np.sort(pairs, axis=1)
        for i, j in pairs[np.argsort(pairs[:, 0])]:
            if keep[i]:
                keep[j] = False
    return params[keep]


# --------------------------------------------------------------------------------------------
# sublattices


def assign_sublattices(
    image: np.ndarray,
    columns: np.ndarray,
    *,
    radius: float | None = None,
    neighbour_weight: float = 0.5,
) -> np.ndarray:
    """Separate the two column types of a perovskite seen along [001] (Sr and Ti–O).

    Each column's intensity is the mean of the image over a disc of ``radius`` px at its position.
    Intensities are split in two by Otsu's threshold; a column's standardised distance from the
    threshold is then combined with the position in the cell: in a perovskite along [001] each
    column's four nearest neighbours belong to the other sublattice, so the (negated) mean score
    of the four nearest neighbours votes too, with weight ``neighbour_weight``. This corrects
    columns whose intensity alone is ambiguous (noise, a vacancy-thinned column).

    Two sublattices are only reported when the data show them: neighbours must alternate, i.e.
    the correlation of a column's score with its four neighbours' mean must be at most
    :data:`MAX_NEIGHBOUR_CORRELATION`. Columns all on one lattice (e.g. only the Sr columns
    found, 1 a apart) get one type.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        The image the columns were found in.
    columns : ndarray, shape (N, 2)
        Column positions (y, x), px.
    radius : float, optional
        Integration radius, px. Default: 0.25 × the median nearest-neighbour distance.
    neighbour_weight : float
        Weight of the neighbours' vote, 0 for intensity only.

    Returns
    -------
    types : ndarray of int, shape (N,)
        0 for the brighter sublattice (Sr), 1 for the other (Ti–O); all 0 when the columns form
        one lattice.

    Warns
    -----
    UserWarning
        When the columns form one lattice (all types 0), saying why.

    Examples
    --------
    >>> yy, xx = np.mgrid[:60, :60]
    >>> cols = np.array([(y, x) for y in range(5, 60, 10) for x in range(5, 60, 10)], float)
    >>> kinds = ((cols[:, 0] + cols[:, 1]) // 10 % 2).astype(int)
    >>> image = sum(
    ...     (1.0 if k == 0 else 0.7) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4.5)
    ...     for (y, x), k in zip(cols, kinds)
    ... )
    >>> bool(np.all(assign_sublattices(image, cols) == kinds))
    True
    """
    from skimage.filters import threshold_otsu

    image = _check_image(image)
    columns = _check_columns(columns)
    if len(columns) < 5:
        raise ValueError(f"need at least 5 columns to separate sublattices; got {len(columns)}")
    tree = cKDTree(columns)
    dist, idx = tree.query(columns, k=5)
    if radius is None:
        radius = 0.25 * float(np.median(dist[:, 1]))
    radius = max(float(radius), 1.0)
    intensity = _disc_mean(image, columns, radius)
    if np.ptp(intensity) == 0:
        return np.zeros(len(columns), dtype=np.int64)
    thr = threshold_otsu(intensity)
    spread = np.std(intensity) + 1e-12
    score = (intensity - thr) / spread
    neighbours = np.mean(score[idx[:, 1:]], axis=1)
    alternation = float(np.corrcoef(score, neighbours)[0, 1]) if np.std(neighbours) else 1.0
    if not alternation <= MAX_NEIGHBOUR_CORRELATION:
        warnings.warn(
            f"assign_sublattices sees one lattice, not two: neighbouring columns do not "
            f"alternate in intensity (correlation {alternation:+.2f}; two sublattices give "
            f"<= {MAX_NEIGHBOUR_CORRELATION}); every column gets type 0. Lower find_columns' "
            f"threshold if the weaker columns were missed.",
            UserWarning,
            stacklevel=2,
        )
        return np.zeros(len(columns), dtype=np.int64)
    combined = score - neighbour_weight * neighbours
    return np.where(combined >= 0, 0, 1).astype(np.int64)


MAX_NEIGHBOUR_CORRELATION = -0.2
"""Largest correlation of a column's intensity score with its four nearest neighbours' mean for
:func:`assign_sublattices` to report two sublattices. Simulated SrTiO3 along [001]: −0.80 to
−0.92 on the columns found at dose 4–100, −0.32 on those found in a raw dose-1 scene (many
spurious); one lattice: −0.08 to +0.23 on simulated hexagonal lattices, +0.62 on the denoised
Tecnai SrTiO3 image, whose columns found are all Sr."""


def _disc_mean(image: np.ndarray, columns: np.ndarray, radius: float) -> np.ndarray:
    """Mean over the part inside the image of a disc of ``radius`` px around each position."""
    r = int(np.ceil(radius))
    oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
    disc = (oy * oy + ox * ox) <= radius * radius
    oy, ox = oy[disc], ox[disc]
    ys = columns[:, 0, None] + oy[None, :]
    xs = columns[:, 1, None] + ox[None, :]
    h, w = image.shape
    inside = (ys >= 0) & (ys <= h - 1) & (xs >= 0) & (xs <= w - 1)
    values = ndimage.map_coordinates(image, [ys.ravel(), xs.ravel()], order=1, mode="nearest")
    values = np.where(inside, values.reshape(ys.shape), 0.0)
    return values.sum(axis=1) / np.maximum(inside.sum(axis=1), 1)


# --------------------------------------------------------------------------------------------
# lattice vectors and maps


def _to_xy(vectors_yx: np.ndarray) -> np.ndarray:
    """(…, 2) image vectors (dy, dx) -> right-handed (x, y_up)."""
    return np.stack([vectors_yx[..., 1], -vectors_yx[..., 0]], axis=-1)


def lattice_vectors(columns: np.ndarray) -> np.ndarray:
    """The two shortest non-collinear lattice vectors of a set of columns.

    Neighbour displacement vectors (to the six nearest neighbours), folded into a half plane,
    are histogrammed; the two most common short, non-collinear vectors, refined by the mean of
    the displacements near them, are returned.

    Parameters
    ----------
    columns : ndarray, shape (N, 2)
        Column positions (y, x), px; at least 6.

    Returns
    -------
    vectors : ndarray, shape (2, 2)
        ``[a1, a2]`` as (dy, dx) px; ``a1`` is the one closest to +x, and ``a2`` is
        counter-clockwise from it on the screen.

    Examples
    --------
    >>> cols = np.array([(3.0 * i, 4.0 * j) for i in range(8) for j in range(8)])
    >>> lattice_vectors(cols).round(3).tolist()
    [[0.0, 4.0], [-3.0, 0.0]]
    """
    columns = _check_columns(columns)
    if len(columns) < 6:
        raise ValueError(f"need at least 6 columns to measure lattice vectors; got {len(columns)}")
    tree = cKDTree(columns)
    k = min(7, len(columns))
    dist, idx = tree.query(columns, k=k)
    nn = float(np.median(dist[:, 1]))
    if nn <= 0:
        raise ValueError("columns contain duplicate positions; remove them first")
    disp = (columns[idx[:, 1:]] - columns[:, None, :]).reshape(-1, 2)
    disp = disp[np.hypot(*disp.T) < 1.6 * nn]
    # fold into the half plane dx > 0 (or dx == 0, dy < 0)
    flip = (disp[:, 1] < 0) | ((disp[:, 1] == 0) & (disp[:, 0] > 0))
    disp[flip] *= -1
    candidates: list[tuple[np.ndarray, int]] = []
    remaining = disp
    tol = 0.25 * nn
    for _ in range(6):
        if len(remaining) == 0:
            break
        # densest vector: the one with most displacements within tol (on a sample for speed)
        sample = remaining[:: max(1, len(remaining) // 2000)]
        counts = cKDTree(remaining).query_ball_point(sample, tol, return_length=True)
        centre = sample[np.argmax(counts)]
        near = np.hypot(*(remaining - centre).T) < tol
        mean = remaining[near].mean(axis=0)
        near = np.hypot(*(remaining - mean).T) < tol
        candidates.append((remaining[near].mean(axis=0), int(near.sum())))
        remaining = remaining[~near]
    if not candidates:
        raise ValueError("could not find lattice vectors; are these columns on a lattice?")
    top = max(c for _, c in candidates)
    strong = [v for v, c in candidates if c >= 0.3 * top]
    strong.sort(key=lambda v: float(np.hypot(*v)))
    a1 = strong[0]
    a2 = None
    for v in strong[1:]:
        cross = abs(a1[0] * v[1] - a1[1] * v[0]) / (np.hypot(*a1) * np.hypot(*v))
        if cross > 0.3:
            a2 = v
            break
    if a2 is None:
        raise ValueError("found only one lattice direction; columns must form a 2-D lattice")
    vecs = np.array([a1, a2])
    xy = _to_xy(vecs)
    # choose signs/order: a1 nearest +x, a2 counter-clockwise from a1
    best = None
    for first in (0, 1):
        for s1 in (1, -1):
            v1 = s1 * xy[first]
            ang1 = np.degrees(np.arctan2(v1[1], v1[0]))
            if best is None or abs(ang1) < best[0] - 1e-9:
                best = (abs(ang1), first, s1)
    _, first, s1 = best
    v1 = s1 * xy[first]
    v2 = xy[1 - first]
    if v1[0] * v2[1] - v1[1] * v2[0] < 0:
        v2 = -v2
    return np.array([[-v1[1], v1[0]], [-v2[1], v2[0]]])


@dataclass(frozen=True)
class LatticeMap:
    """Local lattice parameters and strain at every column.

    Attributes
    ----------
    columns : ndarray, shape (N, 2)
        Column positions (y, x), px.
    a1, a2 : ndarray, shape (N, 2)
        Local lattice vectors (dy, dx), px; NaN where a neighbour is missing.
    a, b : ndarray, shape (N,)
        Their lengths, Å if ``pixel_size`` was given, otherwise px.
    angle : ndarray, shape (N,)
        Angle between ``a1`` and ``a2``, degrees.
    exx, eyy, exy : ndarray, shape (N,)
        Strain relative to the reference cell (x right, y up), dimensionless.
    rotation : ndarray, shape (N,)
        Local lattice rotation relative to the reference, degrees counter-clockwise.
    reference : ndarray, shape (2, 2)
        Reference lattice vectors ``[a1, a2]`` (dy, dx), px.
    pixel_size : float or None
        Å/px.
    central : ndarray of bool, shape (N,)
        True where both vectors come from neighbours on both sides (central differences, the
        local value at the column); False at edges, vacancies and faults (one-sided: the value
        belongs half a cell away), where ``exx`` etc. may still be finite.
    """

    columns: np.ndarray
    a1: np.ndarray
    a2: np.ndarray
    a: np.ndarray
    b: np.ndarray
    angle: np.ndarray
    exx: np.ndarray
    eyy: np.ndarray
    exy: np.ndarray
    rotation: np.ndarray
    reference: np.ndarray
    pixel_size: float | None
    central: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """Columns with both local lattice vectors measured, bool (N,)."""
        return np.isfinite(self.exx)

    def to_grid(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        """Interpolate a per-column map (e.g. ``"exx"``) onto a (H, W) pixel grid (NaN outside)."""
        from scipy.interpolate import griddata

        values = np.asarray(getattr(self, name), dtype=np.float64)
        if values.shape != (len(self.columns),):
            raise ValueError(f"{name!r} is not a per-column scalar map")
        good = np.isfinite(values)
        yy, xx = np.mgrid[: shape[0], : shape[1]]
        return griddata(self.columns[good], values[good], (yy, xx), method="linear")


def _local_vectors(
    columns: np.ndarray, vectors: np.ndarray, tol: float
) -> tuple[np.ndarray, np.ndarray]:
    """Local (dy, dx) for each global vector, (K, N, 2), from matched neighbours at ±vector.

    Also returns (K, N) bool: True where both neighbours were found (central difference).
    """
    tree = cKDTree(columns)
    out = np.full((len(vectors), len(columns), 2), np.nan)
    central = np.zeros((len(vectors), len(columns)), dtype=bool)
    for k, g in enumerate(vectors):
        dp, ip = tree.query(columns + g, distance_upper_bound=tol)
        dm, im = tree.query(columns - g, distance_upper_bound=tol)
        has_p, has_m = np.isfinite(dp), np.isfinite(dm)
        ip = np.where(has_p, ip, 0)
        im = np.where(has_m, im, 0)
        plus = columns[ip] - columns
        minus = columns - columns[im]
        both = has_p & has_m
        out[k, both] = 0.5 * (plus[both] + minus[both])
        only_p = has_p & ~has_m
        only_m = has_m & ~has_p
        out[k, only_p] = plus[only_p]
        out[k, only_m] = minus[only_m]
        central[k] = both
    return out, central


REFERENCE_LATTICE_CONSTANT = 3.905
"""Default ``lattice_constant`` (Å) of the ``pixel_size`` checks of :func:`lattice_map` and
:func:`elongation_profile`: SrTiO3, as :data:`stem_ae.denoising.REFERENCE_LATTICE_CONSTANT`."""


def _check_calibration_of(
    function: str,
    spacings_px: np.ndarray,
    pixel_size: float | None,
    lattice_constant: float | None,
) -> None:
    """Warn when ``pixel_size`` puts no measured spacing within 10 % of the lattice constant."""
    if pixel_size is None or lattice_constant is None:
        return
    if not (np.isfinite(lattice_constant) and lattice_constant > 0):
        raise ValueError(
            f"lattice_constant must be a positive number of Å or None; got {lattice_constant}"
        )
    from stem_ae.lattice import CalibrationWarning

    spacings = [float(s) for s in np.atleast_1d(spacings_px) if np.isfinite(s) and s > 0]
    if not spacings:
        return
    measured = [s * pixel_size for s in spacings]
    expected = (lattice_constant, lattice_constant / np.sqrt(2.0))
    if any(abs(m / e - 1.0) <= 0.10 for m in measured for e in expected):
        return
    implied = lattice_constant / spacings[0]
    warnings.warn(
        f"{function}: pixel_size={pixel_size:g} Å/px makes the lattice spacing "
        f"{' and '.join(f'{m:.3f}' for m in measured)} Å, more than 10 % from lattice_constant="
        f"{lattice_constant:g} Å (that would need {implied:.4f} Å/px) — pass this image's "
        f"calibration (read_image(path)[1].pixel_size), or lattice_constant=None for another "
        f"crystal.",
        CalibrationWarning,
        stacklevel=3,
    )


def lattice_map(
    columns: np.ndarray,
    *,
    pixel_size: float | None = None,
    reference: np.ndarray | tuple[float, float, float, float] | None = None,
    vectors: np.ndarray | None = None,
    tolerance: float = 0.3,
    lattice_constant: float | None = REFERENCE_LATTICE_CONSTANT,
) -> LatticeMap:
    """Map the local lattice parameters and the strain at every column.

    The two global lattice vectors (:func:`lattice_vectors`, or ``vectors``) are matched at each
    column to the neighbours nearest ``position ± vector``; the local vector is half the distance
    between the two matched neighbours (or the one-sided difference at an edge). The local
    deformation gradient ``F = L R⁻¹`` (``L`` the local vectors, ``R`` the reference cell, both in
    the right-handed frame x right, y up) gives the strain ``(F + Fᵀ)/2 − I`` and the rotation.

    Parameters
    ----------
    columns : ndarray, shape (N, 2)
        Positions (y, x), px, of one sublattice (or of all columns of a simple lattice).
    pixel_size : float, optional
        Å/px, to report ``a`` and ``b`` in Å.
    reference : optional
        The unstrained reference cell: None (median over all columns), a boolean mask (N,) of the
        reference columns, a box ``(y0, y1, x0, x1)`` px, or a (2, 2) array of reference vectors.
    vectors : ndarray, shape (2, 2), optional
        Global lattice vectors (dy, dx) px to match; default measured from the columns.
    tolerance : float
        Matching radius as a fraction of the shorter global vector.
    lattice_constant : float or None
        Å; with ``pixel_size``, the median ``a`` or ``b`` must be within 10 % of it (or of
        ``lattice_constant / √2``), as :func:`stem_ae.denoise` checks; default 3.905 Å
        (SrTiO3). None switches the check off (other crystals).

    Returns
    -------
    LatticeMap

    Warns
    -----
    stem_ae.lattice.CalibrationWarning
        When ``pixel_size`` makes the lattice more than 10 % off ``lattice_constant``: most
        likely a pixel size copied from another image or a simulated scene.

    Examples
    --------
    >>> cols = np.array([(10.0 * i, 10.0 * j * (1 + 0.002 * j)) for i in range(8)
    ...                  for j in range(8)])
    >>> m = lattice_map(cols, pixel_size=0.39)
    >>> round(float(np.nanmedian(m.a)), 2), bool(np.nanmax(m.exx) > 0.01)
    (3.95, True)
    """
    columns = _check_columns(columns)
    pixel_size = _check_pixel_size(pixel_size)
    if vectors is None:
        vectors = lattice_vectors(columns)
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.shape != (2, 2):
        raise ValueError(f"vectors must have shape (2, 2) ([a1, a2], dy dx); got {vectors.shape}")
    tol = tolerance * float(np.min(np.hypot(*vectors.T)))
    local, central = _local_vectors(columns, vectors, tol)
    lengths = np.hypot(local[..., 0], local[..., 1])
    _check_calibration_of(
        "lattice_map", np.nanmedian(lengths, axis=1), pixel_size, lattice_constant
    )
    scale = 1.0 if pixel_size is None else pixel_size
    xy = _to_xy(local)  # (2, N, 2)
    cosang = np.sum(xy[0] * xy[1], axis=1) / (lengths[0] * lengths[1])
    angle = np.degrees(np.arccos(np.clip(cosang, -1, 1)))

    big_l = np.stack([xy[0], xy[1]], axis=-1)  # (N, 2, 2), columns are the vectors (x, y_up)
    if reference is None:
        ref = np.nanmedian(big_l, axis=0)
    else:
        ref_arr = np.asarray(reference)
        if ref_arr.dtype == bool:
            if ref_arr.shape != (len(columns),):
                raise ValueError(
                    f"reference mask must have shape ({len(columns)},); got {ref_arr.shape}"
                )
            ref = np.nanmedian(big_l[ref_arr], axis=0)
        elif ref_arr.shape == (4,):
            y0, y1, x0, x1 = (float(v) for v in ref_arr)
            box = (
                (columns[:, 0] >= y0)
                & (columns[:, 0] < y1)
                & (columns[:, 1] >= x0)
                & (columns[:, 1] < x1)
            )
            if not box.any():
                raise ValueError(
                    f"reference box {tuple(ref_arr)} (y0, y1, x0, x1) contains no column"
                )
            ref = np.nanmedian(big_l[box], axis=0)
        elif ref_arr.shape == (2, 2):
            ref = np.stack(list(_to_xy(ref_arr.astype(np.float64))), axis=-1)
        else:
            raise ValueError(
                "reference must be None, a bool mask (N,), a box (y0, y1, x0, x1) or (2, 2) vectors"
            )
    if not np.all(np.isfinite(ref)) or abs(np.linalg.det(ref)) < 1e-12:
        raise ValueError("reference cell could not be measured (no complete neighbours there)")
    f = big_l @ np.linalg.inv(ref)
    exx = f[:, 0, 0] - 1.0
    eyy = f[:, 1, 1] - 1.0
    exy = 0.5 * (f[:, 0, 1] + f[:, 1, 0])
    rotation = np.degrees(0.5 * (f[:, 1, 0] - f[:, 0, 1]))
    ref_yx = np.stack([ref[:, 0], ref[:, 1]])  # rows are vectors (x, y_up)
    ref_yx = np.stack([-ref_yx[:, 1], ref_yx[:, 0]], axis=-1)
    return LatticeMap(
        columns=columns,
        a1=local[0],
        a2=local[1],
        a=lengths[0] * scale,
        b=lengths[1] * scale,
        angle=angle,
        exx=exx,
        eyy=eyy,
        exy=exy,
        rotation=rotation,
        reference=ref_yx,
        pixel_size=pixel_size,
        central=central.all(axis=0),
    )


# --------------------------------------------------------------------------------------------
# elongation against distance from a planar fault


@dataclass(frozen=True)
class ElongationProfile:
    """Cell elongation perpendicular to a fault, against the distance from it.

    Attributes
    ----------
    distance : ndarray, shape (M,)
        Bin centres of the signed distance from the fault line (positive along the normal), Å if
        a pixel size was given, else px.
    elongation : ndarray, shape (M,)
        Mean relative elongation of the bonds along the fault normal in each bin (0 = reference).
    spread : ndarray, shape (M,)
        Standard deviation within the bin.
    count : ndarray of int, shape (M,)
        Bonds in each bin.
    bond_distance : ndarray, shape (K,)
        Signed distance of each bond's midpoint from the fault (same units as ``distance``).
    bond_elongation : ndarray, shape (K,)
        Per-bond elongation.
    bonds : ndarray of int, shape (K, 2)
        Column indices ``(i, j)`` of each bond, ``j`` one lattice vector beyond ``i``.
    """

    distance: np.ndarray
    elongation: np.ndarray
    spread: np.ndarray
    count: np.ndarray
    bond_distance: np.ndarray
    bond_elongation: np.ndarray
    bonds: np.ndarray


def elongation_profile(
    columns: np.ndarray,
    fault_x: float | None = None,
    *,
    fault_point: tuple[float, float] | None = None,
    fault_normal: tuple[float, float] = (0.0, 1.0),
    pixel_size: float | None = None,
    vectors: np.ndarray | None = None,
    reference_spacing: float | None = None,
    reference_distance: float | None = None,
    bin_width: float | None = None,
    lattice_constant: float | None = None,
) -> ElongationProfile:
    """Local cell elongation perpendicular to a planar fault against the distance from it.

    Every column is joined to its neighbour one lattice vector further along the fault normal
    (the lattice vector most nearly parallel to it); the bond's projection on the normal,
    divided by the reference spacing, minus one, is the elongation, placed at the bond's
    midpoint. Bonds that cross the fault find no neighbour at the lattice position and drop out.
    Figure 3 of the paper claims cells near a Ruddlesden–Popper fault are elongated
    perpendicular to it; this measures it (compare with
    :func:`stem_ae.simulate.rp_elongation_profile` at the bond midpoints).

    Parameters
    ----------
    columns : ndarray, shape (N, 2)
        Positions (y, x), px, of one sublattice (e.g. Sr), or all columns of a simple lattice.
    fault_x : float, optional
        x (px) of a vertical fault line (normal along +x); short for ``fault_point=(0, fault_x)``.
    fault_point : (float, float), optional
        A point (y, x) px on the fault line.
    fault_normal : (float, float)
        Normal of the fault (dy, dx); default (0, 1), a vertical fault.
    pixel_size : float, optional
        Å/px, to report distances in Å.
    vectors : ndarray, shape (2, 2), optional
        Global lattice vectors (dy, dx) px; default measured (:func:`lattice_vectors`).
    reference_spacing : float, optional
        Unstrained plane spacing along the normal, px. Default: the median bond projection
        farther than ``reference_distance`` from the fault.
    reference_distance : float, optional
        px; default a third of the largest distance of a column from the fault.
    bin_width : float, optional
        px; default half the plane spacing along the normal.
    lattice_constant : float or None
        Å; with ``pixel_size``, the lattice vector along the normal must be within 10 % of it
        (or of ``lattice_constant / √2``), as in :func:`lattice_map` (e.g. 3.905 for SrTiO3).
        None (default): no check.

    Returns
    -------
    ElongationProfile

    Raises
    ------
    ValueError
        If the fault line does not pass between the columns (all on one side of it).

    Warns
    -----
    stem_ae.lattice.CalibrationWarning
        When ``pixel_size`` disagrees with ``lattice_constant``.

    Examples
    --------
    >>> xs = np.cumsum([10.0] * 6 + [11.0, 11.0] + [10.0] * 6)
    >>> cols = np.array([(10.0 * i, x) for i in range(10) for x in xs])
    >>> p = elongation_profile(cols, fault_x=float(xs[7]))
    >>> round(float(np.nanmax(p.elongation)), 2)
    0.1
    """
    columns = _check_columns(columns)
    pixel_size = _check_pixel_size(pixel_size)
    if fault_point is None:
        if fault_x is None:
            raise ValueError("give the fault as fault_x (px) or fault_point (y, x) px")
        fault_point = (0.0, float(fault_x))
    normal = np.asarray(fault_normal, dtype=np.float64)
    if normal.shape != (2,) or np.hypot(*normal) == 0:
        raise ValueError(f"fault_normal must be a non-zero (dy, dx) vector; got {fault_normal}")
    normal = normal / np.hypot(*normal)
    side = (columns - np.asarray(fault_point, dtype=np.float64)) @ normal
    if not (side.min() < 0 < side.max()):
        raise ValueError(
            f"the fault line through {tuple(float(v) for v in fault_point)} (y, x) px with normal "
            f"{tuple(float(v) for v in normal)} does not pass between the columns (they lie "
            f"{side.min():.1f} to {side.max():.1f} px from it) — give the fault position in "
            f"this image's px."
        )
    if vectors is None:
        vectors = lattice_vectors(columns)
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.shape != (2, 2):
        raise ValueError(f"vectors must have shape (2, 2) ([a1, a2], dy dx); got {vectors.shape}")
    along = np.abs(vectors @ normal) / np.hypot(*vectors.T)
    g = vectors[int(np.argmax(along))]
    g = g if g @ normal > 0 else -g
    tol = 0.3 * float(np.min(np.hypot(*vectors.T)))
    dist_j, j = cKDTree(columns).query(columns + g, distance_upper_bound=tol)
    has = np.isfinite(dist_j)
    bonds = np.column_stack([np.flatnonzero(has), j[has]]).astype(np.int64)
    if len(bonds) == 0:
        raise ValueError("no column has a neighbour along the fault normal; check vectors")
    proj = (columns[bonds[:, 1]] - columns[bonds[:, 0]]) @ normal
    mid = 0.5 * (columns[bonds[:, 0]] + columns[bonds[:, 1]])
    dist = (mid - np.asarray(fault_point, dtype=np.float64)) @ normal
    _check_calibration_of("elongation_profile", [float(np.hypot(*g))], pixel_size, lattice_constant)
    if reference_spacing is None:
        if reference_distance is None:
            reference_distance = np.max(np.abs((columns - fault_point) @ normal)) / 3.0
        far = np.abs(dist) > reference_distance
        if not far.any():
            raise ValueError(
                f"no bond farther than reference_distance={reference_distance} px from the fault"
            )
        reference_spacing = float(np.median(proj[far]))
    if not reference_spacing > 0:
        raise ValueError(f"reference_spacing must be positive px; got {reference_spacing}")
    elong = proj / reference_spacing - 1.0
    if bin_width is None:
        bin_width = 0.5 * float(g @ normal)
    if not bin_width > 0:
        raise ValueError(f"bin_width must be positive px; got {bin_width}")
    edges = np.arange(dist.min() - 0.5 * bin_width, dist.max() + bin_width, bin_width)
    which = np.digitize(dist, edges) - 1
    nbin = len(edges) - 1
    count = np.bincount(which, minlength=nbin)[:nbin]
    total = np.bincount(which, weights=elong, minlength=nbin)[:nbin]
    total2 = np.bincount(which, weights=elong**2, minlength=nbin)[:nbin]
    keep = count > 0
    mean = total[keep] / count[keep]
    spread = np.sqrt(np.clip(total2[keep] / count[keep] - mean**2, 0, None))
    centres = 0.5 * (edges[:-1] + edges[1:])
    scale = 1.0 if pixel_size is None else pixel_size
    return ElongationProfile(
        distance=centres[keep] * scale,
        elongation=mean,
        spread=spread,
        count=count[keep],
        bond_distance=dist * scale,
        bond_elongation=elong,
        bonds=bonds,
    )


# --------------------------------------------------------------------------------------------
# image and column metrics


def _data_range(truth: np.ndarray) -> float:
    span = float(np.ptp(truth))
    if span == 0:
        raise ValueError("truth is constant; PSNR/SSIM need a truth with some contrast")
    return span


def _check_pair(truth: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both images checked, and of one shape."""
    truth = _check_image(truth, "truth")
    image = _check_image(image)
    if truth.shape != image.shape:
        raise ValueError(f"image shape {image.shape} differs from truth shape {truth.shape}")
    return truth, image


def psnr(truth: np.ndarray, image: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of ``image`` against ``truth``, data range from the truth.

    Examples
    --------
    >>> truth = np.zeros((8, 8)); truth[4, 4] = 1.0
    >>> round(psnr(truth, truth + 0.01), 1)
    40.0
    """
    from skimage.metrics import peak_signal_noise_ratio

    truth, image = _check_pair(truth, image)
    return float(peak_signal_noise_ratio(truth, image, data_range=_data_range(truth)))


def ssim(truth: np.ndarray, image: np.ndarray) -> float:
    """Structural similarity of ``image`` to ``truth`` (scikit-image, data range from the truth).

    Examples
    --------
    >>> truth = np.random.default_rng(0).random((16, 16))
    >>> ssim(truth, truth)
    1.0
    """
    from skimage.metrics import structural_similarity

    truth, image = _check_pair(truth, image)
    return float(structural_similarity(truth, image, data_range=_data_range(truth)))


@dataclass(frozen=True)
class ColumnMatch:
    """Found columns matched one to one with the true ones.

    Attributes
    ----------
    rms_px : float
        Root-mean-square position error per coordinate, ``sqrt(mean(dy² + dx²) / 2)``, px, over
        matched columns (comparable with :func:`crlb_position`); NaN if none matched.
    rms_pm : float or None
        The same in pm (None without a pixel size).
    found : float
        Fraction of true columns matched.
    invented : float
        Unmatched found columns per true column (false positives; 0 is the goal).
    n_true, n_found, n_matched, n_invented : int
        Counts.
    pairs : ndarray of int, shape (n_matched, 2)
        Indices ``(found_index, truth_index)`` of the matches.
    """

    rms_px: float
    rms_pm: float | None
    found: float
    invented: float
    n_true: int
    n_found: int
    n_matched: int
    n_invented: int
    pairs: np.ndarray


def match_columns(
    found: np.ndarray,
    truth: np.ndarray,
    radius: float | None = None,
    *,
    pixel_size: float | None = None,
    shape: tuple[int, int] | None = None,
    border: float = 0.0,
) -> ColumnMatch:
    """Match found columns to true ones (one to one, closest pairs first, within ``radius``).

    Parameters
    ----------
    found, truth : ndarray, shape (N, 2) and (M, 2)
        Positions (y, x), px.
    radius : float, optional
        Largest matching distance, px. Default 0.3 × the median nearest-neighbour distance of the
        true columns.
    pixel_size : float, optional
        Å/px, to report the error in pm.
    shape : (int, int), optional
        Image shape; with ``border``, columns (true and found) closer than ``border`` px to the
        image edge are left out of the score.
    border : float
        Edge margin, px.

    Returns
    -------
    ColumnMatch

    Examples
    --------
    >>> truth = np.array([[10.0, 10.0], [10.0, 20.0], [20.0, 10.0], [20.0, 20.0]])
    >>> found = np.array([[10.1, 10.0], [10.0, 19.9], [20.0, 10.0], [15.0, 15.0]])
    >>> m = match_columns(found, truth, radius=2.0, pixel_size=0.2)
    >>> m.found, m.invented, round(m.rms_pm, 3)
    (0.75, 0.25, 1.155)
    """
    found = np.asarray(found, dtype=np.float64).reshape(-1, 2)
    found = _check_columns(found, "found")
    truth = _check_columns(truth, "truth")
    pixel_size = _check_pixel_size(pixel_size)
    if shape is not None and border > 0:
        h, w = shape

        def inside(p: np.ndarray) -> np.ndarray:
            return (
                (p[:, 0] >= border)
                & (p[:, 0] <= h - 1 - border)
                & (p[:, 1] >= border)
                & (p[:, 1] <= w - 1 - border)
            )

        truth_in = inside(truth)
    else:
        truth_in = np.ones(len(truth), dtype=bool)
    if not truth_in.any():
        raise ValueError("no true column lies inside the scored region; reduce border")
    if radius is None:
        if len(truth) < 2:
            raise ValueError("give a matching radius (px) when there is only one true column")
        d, _ = cKDTree(truth).query(truth, k=2)
        radius = 0.3 * float(np.median(d[:, 1]))
    if not radius > 0:
        raise ValueError(f"radius must be a positive number of px; got {radius}")
    pairs = np.zeros((0, 2), dtype=np.int64)
    if len(found):
        tree = cKDTree(truth)
        neighbours = tree.query_ball_point(found, radius)
        cand_f = np.repeat(np.arange(len(found)), [len(n) for n in neighbours])
        cand_t = np.fromiter((j for n in neighbours for j in n), dtype=np.int64, count=len(cand_f))
        if len(cand_f):
            d = np.hypot(*(found[cand_f] - truth[cand_t]).T)
            order = np.argsort(d, kind="stable")
            used_f = np.zeros(len(found), dtype=bool)
            used_t = np.zeros(len(truth), dtype=bool)
            chosen = []
            for i in order:
                f, t = cand_f[i], cand_t[i]
                if not used_f[f] and not used_t[t]:
                    used_f[f] = used_t[t] = True
                    chosen.append((f, t))
            pairs = np.array(chosen, dtype=np.int64).reshape(-1, 2)
    # score only the region inside the border: true columns there, and found columns matched to
    # them or (if unmatched) lying there themselves
    scored_pairs = pairs[truth_in[pairs[:, 1]]] if len(pairs) else pairs
    matched_f = np.zeros(len(found), dtype=bool)
    if len(pairs):
        matched_f[pairs[:, 0]] = True
    if shape is not None and border > 0 and len(found):
        found_in = inside(found)
    else:
        found_in = np.ones(len(found), dtype=bool)
    n_invented = int(np.sum(~matched_f & found_in))
    n_true = int(truth_in.sum())
    n_matched = len(scored_pairs)
    if n_matched:
        err = found[scored_pairs[:, 0]] - truth[scored_pairs[:, 1]]
        rms = float(np.sqrt(np.mean(np.sum(err * err, axis=1)) / 2.0))
    else:
        rms = float("nan")
    return ColumnMatch(
        rms_px=rms,
        rms_pm=None if pixel_size is None else rms * pixel_size * 100.0,
        found=n_matched / n_true,
        invented=n_invented / n_true,
        n_true=n_true,
        n_found=int(found_in.sum()),
        n_matched=n_matched,
        n_invented=n_invented,
        pairs=scored_pairs,
    )


# --------------------------------------------------------------------------------------------
# Cramér–Rao lower bound


def _fisher_crlb(mu: np.ndarray, derivs: np.ndarray) -> np.ndarray:
    """Square root of the (y0, x0) diagonal of the inverse Fisher matrix.

    ``mu`` (..., P) expected counts, ``derivs`` (..., P, K) their derivatives.
    """
    info = np.einsum("...pi,...pj,...p->...ij", derivs, derivs, 1.0 / mu)
    cov = np.linalg.inv(info)
    return np.sqrt(np.stack([cov[..., 0, 0], cov[..., 1, 1]], axis=-1))


def crlb_position(
    amplitude: float,
    background: float,
    sigma_px: float,
    *,
    pixel_size: float | None = None,
    fit_width: bool = True,
    offset: tuple[float, float] = (0.25, 0.25),
) -> float:
    """Cramér–Rao lower bound on the position of one Gaussian column under Poisson noise.

    Model: the expected counts in the pixel centred at integer (i, j) are
    ``μ = B + A exp(−((i − y0)² + (j − x0)²) / 2s²)`` (the Gaussian sampled at pixel centres, as
    the simulator renders it), and the counts are independent Poisson variables. The Fisher
    information ``I_kl = Σ (∂μ/∂θ_k)(∂μ/∂θ_l) / μ`` over a ±6s pixel grid, for the unknowns
    θ = (y0, x0, A, B[, s]), is inverted; the bound is the square root of its x0 (equivalently y0)
    diagonal element, averaged over the two axes. An isolated column is assumed, so neighbours'
    tails (which add counts, and so variance) make a real crystal's bound slightly higher; see
    :func:`column_crlb` for the bound in a given scene.

    Parameters
    ----------
    amplitude : float
        Peak height ``A`` above the background, expected counts (electrons) per pixel.
    background : float
        Background ``B``, expected counts per pixel (> 0 keeps the information finite far out).
    sigma_px : float
        Column width ``s`` (Gaussian standard deviation), px.
    pixel_size : float, optional
        Å/px; if given the bound is returned in pm, otherwise in px.
    fit_width : bool
        Whether the width is also unknown (as in a Gaussian fit that frees it).
    offset : (float, float)
        Sub-pixel position of the column relative to a pixel centre (the bound barely depends on
        it for s ≳ 1 px).

    Returns
    -------
    float
        Smallest possible standard deviation of an unbiased estimate of one coordinate, px (or pm).

    Examples
    --------
    >>> round(crlb_position(100.0, 1e-6, 2.0, fit_width=False), 4)  # s / sqrt(N), N = 2πs²A
    0.0399
    """
    pixel_size = _check_pixel_size(pixel_size)
    for name, value in (("amplitude", amplitude), ("sigma_px", sigma_px)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be positive; got {value}")
    if not (np.isfinite(background) and background >= 0):
        raise ValueError(f"background must be non-negative counts per pixel; got {background}")
    r = int(np.ceil(6 * sigma_px)) + 1
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    ry = (yy - offset[0]).ravel()
    rx = (xx - offset[1]).ravel()
    r2 = ry * ry + rx * rx
    g = np.exp(-0.5 * r2 / sigma_px**2)
    mu = background + amplitude * g
    mu = np.maximum(mu, 1e-12)
    parts = [amplitude * g * ry / sigma_px**2, amplitude * g * rx / sigma_px**2, g]
    if background > 0:
        parts.append(np.ones_like(g))
    if fit_width:
        parts.append(amplitude * g * r2 / sigma_px**3)
    std = _fisher_crlb(mu, np.stack(parts, axis=-1))
    value = float(np.sqrt(np.mean(std**2)))
    return value if pixel_size is None else value * pixel_size * 100.0


def column_crlb(
    clean: np.ndarray,
    columns: np.ndarray,
    *,
    radius: float,
    pixel_size: float | None = None,
) -> np.ndarray:
    """Cramér–Rao bound on each column's position in a given noise-free scene (Poisson noise).

    ``clean`` is the expected-count image (a simulated scene's ``clean`` at its dose). Each
    column's own Gaussian (amplitude, width, local background) is fitted on the clean image
    (:func:`fit_columns`); the Fisher information of that column's parameters is summed over its
    disc of ``radius`` px with the *full* expected counts μ = ``clean`` (neighbours included) in
    the denominator.

    Parameters
    ----------
    clean : ndarray, shape (H, W)
        Expected counts per pixel (> 0).
    columns : ndarray, shape (N, 2)
        True column positions (y, x), px.
    radius : float
        Disc radius used by the estimator, px.
    pixel_size : float, optional
        Å/px; bounds in pm if given, otherwise px.

    Returns
    -------
    ndarray, shape (N,)
        Per-coordinate standard-deviation bound of each column (NaN where the fit failed).
    """
    clean = _check_image(clean, "clean")
    columns = _check_columns(columns)
    pixel_size = _check_pixel_size(pixel_size)
    if np.any(clean < 0):
        raise ValueError("clean must be expected counts (non-negative) for a Poisson bound")
    params, ok = fit_columns(clean, columns, radius=radius)
    r = int(np.ceil(radius))
    oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
    disc = (oy * oy + ox * ox) <= radius * radius
    oy, ox = oy[disc], ox[disc]
    centres = np.rint(columns).astype(np.int64)
    ys = centres[:, 0, None] + oy[None, :]
    xs = centres[:, 1, None] + ox[None, :]
    inside = (ys >= 0) & (ys < clean.shape[0]) & (xs >= 0) & (xs < clean.shape[1])
    mu = clean[np.clip(ys, 0, clean.shape[0] - 1), np.clip(xs, 0, clean.shape[1] - 1)]
    mu = np.where(inside, np.maximum(mu, 1e-9), np.inf)
    value = np.full(len(columns), np.nan)
    if ok.any():
        local = params[ok].copy()
        local[:, 0] -= centres[ok, 0]
        local[:, 1] -= centres[ok, 1]
        _, jac = _gaussian_model(local, oy.astype(np.float64), ox.astype(np.float64))
        std = _fisher_crlb(mu[ok], jac)
        value[ok] = np.sqrt(np.mean(std**2, axis=1))
    return value if pixel_size is None else value * pixel_size * 100.0


# --------------------------------------------------------------------------------------------
# real-image scores (no ground truth): lattice fit and method noise

#: Match radius of a column to its lattice site, as a fraction of the nearest-neighbour distance.
LATTICE_MATCH_FRACTION = 0.3
#: Least relative height (of the cell average's range) for a motif column, see lattice_motif.
MOTIF_MIN_HEIGHT = 0.2
#: A reflection enters the method-noise score when its raw power is this many times the
#: background power around it (the reflection holds signal, not noise).
REFLECTION_MIN_RATIO = 10.0


def _check_reciprocal(reciprocal: np.ndarray) -> np.ndarray:
    reciprocal = np.asarray(reciprocal, dtype=np.float64)
    if reciprocal.shape != (2, 2) or not np.all(np.isfinite(reciprocal)):
        raise ValueError(
            f"reciprocal must be a finite (2, 2) array of rows g1, g2 in 1/px (y, x); got "
            f"shape {reciprocal.shape}; pass stem_ae.estimate_lattice(raw).reciprocal"
        )
    if abs(np.linalg.det(reciprocal)) < 1e-12:
        raise ValueError("reciprocal rows g1, g2 are collinear: not a 2-D lattice basis")
    return reciprocal


def lattice_motif(
    image: np.ndarray,
    reciprocal: np.ndarray,
    *,
    min_height: float = MOTIF_MIN_HEIGHT,
) -> np.ndarray:
    """Find the columns of one unit cell by folding an image into its cell.

    Every pixel is assigned its fractional coordinates ``f = G r`` in the lattice ``G``
    (``reciprocal``, rows g1, g2); the image averaged over all cells as a function of ``f``
    (a histogram of about 0.5 px bins, smoothed by one bin, periodic) keeps the cell's columns
    while the noise averages out over hundreds of cells. Its local maxima at least
    ``min_height`` of the way from its minimum to its maximum, and at least 0.25 × the smaller
    plane spacing apart, are the motif.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Bright-column image (invert dark-column ABF/BF images first), any units.
    reciprocal : ndarray, shape (2, 2)
        Reciprocal basis, rows ``g1, g2`` as ``(y, x)`` in 1/px, e.g.
        ``stem_ae.estimate_lattice(image).reciprocal``.
    min_height : float
        Least height of a motif column, as a fraction of the cell average's range (0–1).

    Returns
    -------
    motif : ndarray, shape (K, 2)
        Fractional coordinates (along ``g1``, ``g2``) in [0, 1) of the cell's columns, brightest
        first. Site ``n`` of motif column ``k`` lies at ``r = G⁻¹ (n + motif[k])`` px.

    Raises
    ------
    ValueError
        If the arguments are malformed or the cell average holds no maximum (flat image).

    Examples
    --------
    >>> yy, xx = np.mgrid[:96, :96]
    >>> image = np.cos(2 * np.pi * (xx - 3) / 12) + np.cos(2 * np.pi * (yy - 6) / 12)
    >>> lattice_motif(image, np.array([[1 / 12, 0], [0, 1 / 12]])).round(2)
    array([[0.5 , 0.25]])
    """
    image = _check_image(image)
    reciprocal = _check_reciprocal(reciprocal)
    if not 0 < min_height < 1:
        raise ValueError(f"min_height must lie in (0, 1); got {min_height}")
    return cell_maxima(cell_average(image, reciprocal), reciprocal, min_height)


@dataclass(frozen=True)
class LatticeFit:
    """Columns fitted to a lattice plus a smooth displacement field (:func:`fit_lattice`).

    Attributes
    ----------
    rms : float
        Root-mean-square distance (px, both coordinates together) of the matched columns to their
        fitted sites; NaN when no column matched.
    sites_kept : float
        Fraction (0–1) of the lattice sites inside the margin that keep a column within
        ``radius``.
    invented : float
        Fraction (0–1) of the columns inside the margin that lie further than ``radius`` from
        every fitted site (off the lattice).
    radius : float
        Match radius, px: ``LATTICE_MATCH_FRACTION`` × ``nn_distance``.
    nn_distance : float
        Nearest-neighbour distance between sites of the motif lattice, px.
    sites : ndarray, shape (M, 2)
        Fitted site positions ``(y, x)`` px inside the margin.
    matched : ndarray, shape (M,)
        Index into ``columns`` of the column each site kept, −1 for none.
    kind : ndarray, shape (M,)
        Index into ``motif`` of each site.
    columns : ndarray, shape (N, 2)
        The columns inside the margin, px.
    n_sites, n_columns, n_matched : int
        Sites and columns inside the margin, and matched pairs.
    off_lattice : ndarray of bool, shape (N,)
        Per column of ``columns``: further than ``radius`` from every site (the columns that
        ``invented`` counts; at a real defect, the defect's columns).
    """

    rms: float
    sites_kept: float
    invented: float
    radius: float
    nn_distance: float
    sites: np.ndarray
    matched: np.ndarray
    kind: np.ndarray
    columns: np.ndarray
    n_sites: int
    n_columns: int
    n_matched: int
    off_lattice: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


def _poly_terms(points: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    """Monomials y^i x^j, 1 <= i + j <= order, of positions scaled to [-1, 1]."""
    y = 2.0 * points[:, 0] / max(shape[0] - 1, 1) - 1.0
    x = 2.0 * points[:, 1] / max(shape[1] - 1, 1) - 1.0
    terms = [y**i * x ** (d - i) for d in range(1, order + 1) for i in range(d + 1)]
    return np.stack(terms, axis=1) if terms else np.empty((len(points), 0))


def _one_to_one(sites: np.ndarray, columns: np.ndarray, radius: float):
    """Pairs (site, column) nearest first, each used once, within ``radius`` px."""
    tree = cKDTree(columns)
    distance, column = tree.query(sites, k=1, distance_upper_bound=radius)
    site = np.nonzero(np.isfinite(distance))[0]
    column, distance = column[site], distance[site]
    order = np.argsort(distance)
    site, column = site[order], column[order]
    _, first = np.unique(column, return_index=True)
    return site[first], column[first]


def fit_lattice(
    columns: np.ndarray,
    reciprocal: np.ndarray,
    motif: np.ndarray,
    shape: tuple[int, int],
    *,
    order: int = 3,
    radius_fraction: float = LATTICE_MATCH_FRACTION,
    margin: float | None = None,
    n_iter: int = 10,
) -> LatticeFit:
    """Fit columns to a reference lattice plus a smooth displacement field; score the fit.

    The sites are ``G⁻¹ (n + motif[k])`` for all integer ``n`` (the lattice ``G`` and its motif
    measured on the *raw* image, so the reference favours no method). Each site is then moved by
    ``c_k + P(r)``: a constant per motif column (a sublattice may sit off its nominal place) plus
    a polynomial of total degree ``order`` in the position, for each coordinate — a smooth scan
    distortion or drift that the method under test is free to have. The field is fitted by
    robust (Huber-weighted) least squares to one-to-one matches of sites and columns, first
    within half the nearest-neighbour distance at first order, then within ``radius`` at full
    order, until the matches stop changing.

    Parameters
    ----------
    columns : ndarray, shape (N, 2)
        Column positions ``(y, x)`` px, e.g. from :func:`find_columns`.
    reciprocal : ndarray, shape (2, 2)
        Reciprocal basis (rows g1, g2, 1/px), e.g. ``stem_ae.estimate_lattice(raw).reciprocal``.
    motif : ndarray, shape (K, 2)
        Fractional positions of the cell's columns, from :func:`lattice_motif`.
    shape : (H, W)
        Image shape, px.
    order : int
        Total degree (0–5) of the displacement polynomial.
    radius_fraction : float
        Match radius as a fraction of the nearest-neighbour distance (0.3 by default).
    margin : float, optional
        Sites and columns closer than this to the image edge are left out of the scores, px.
        Default: half the nearest-neighbour distance.
    n_iter : int
        Most match-and-fit rounds per stage.

    Returns
    -------
    LatticeFit
        ``rms`` (px), ``sites_kept`` and ``invented`` (fractions) and the fitted sites.

    Raises
    ------
    ValueError
        If an argument is malformed or no site lies inside the margin.

    Examples
    --------
    >>> reciprocal = np.array([[0.1, 0.0], [0.0, 0.1]])
    >>> truth = np.array([(y, x) for y in range(5, 100, 10) for x in range(5, 100, 10)], float)
    >>> columns = np.vstack([truth + 0.3, [[50.0, 45.0]]])  # shifted lattice and one stray column
    >>> fit = fit_lattice(columns, reciprocal, np.array([[0.5, 0.5]]), (100, 100))
    >>> round(fit.rms, 3), fit.sites_kept, round(fit.invented, 4)
    (0.0, 1.0, 0.0122)
    """
    columns = _check_columns(columns)
    reciprocal = _check_reciprocal(reciprocal)
    motif = np.asarray(motif, dtype=np.float64)
    if motif.ndim != 2 or motif.shape[1] != 2 or len(motif) == 0:
        raise ValueError(f"motif must have shape (K, 2) of fractional positions; got {motif.shape}")
    height, width = (int(v) for v in shape)
    if not 0 <= order <= 5:
        raise ValueError(f"order must be an integer in 0..5; got {order}")
    if not 0 < radius_fraction <= 0.5:
        raise ValueError(f"radius_fraction must lie in (0, 0.5]; got {radius_fraction}")
    direct = np.linalg.inv(reciprocal)  # r = direct @ f
    nn_distance = nearest_neighbour(motif, reciprocal)
    radius = radius_fraction * nn_distance
    margin = 0.5 * nn_distance if margin is None else float(margin)
    # every site whose nominal position lies within one nearest-neighbour distance of the image
    corners = np.array([(0, 0), (0, width), (height, 0), (height, width)], float) @ reciprocal.T
    low = np.floor(corners.min(axis=0)) - 2
    high = np.ceil(corners.max(axis=0)) + 2
    n1, n2 = np.meshgrid(np.arange(low[0], high[0] + 1), np.arange(low[1], high[1] + 1))
    cells = np.stack([n1.ravel(), n2.ravel()], axis=1)
    kind = np.repeat(np.arange(len(motif)), len(cells))
    nominal = (np.tile(cells, (len(motif), 1)) + motif[kind]) @ direct.T
    near = (
        (nominal[:, 0] > -nn_distance)
        & (nominal[:, 0] < height + nn_distance)
        & (nominal[:, 1] > -nn_distance)
        & (nominal[:, 1] < width + nn_distance)
    )
    nominal, kind = nominal[near], kind[near]
    indicator = (kind[:, None] == np.arange(len(motif))[None, :]).astype(np.float64)
    sites = nominal.copy()
    site_idx = column_idx = np.empty(0, dtype=int)
    if len(columns):
        for stage_order, stage_radius in ((min(order, 1), 0.5 * nn_distance), (order, radius)):
            design = np.hstack([indicator, _poly_terms(nominal, (height, width), stage_order)])
            previous = None
            for _ in range(n_iter):
                site_idx, column_idx = _one_to_one(sites, columns, stage_radius)
                key = (site_idx.tobytes(), column_idx.tobytes())
                if key == previous or len(site_idx) < design.shape[1]:
                    break
                previous = key
                target = columns[column_idx] - nominal[site_idx]
                a = design[site_idx]
                weight = np.ones(len(site_idx))
                for _ in range(3):  # Huber IRLS, threshold 1.5 × the robust residual scale
                    root = np.sqrt(weight)[:, None]
                    coef, *_ = np.linalg.lstsq(a * root, target * root, rcond=None)
                    norm = np.hypot(*(target - a @ coef).T)
                    scale = max(1.4826 * np.median(norm), 1e-6)
                    weight = np.minimum(1.0, 1.5 * scale / np.maximum(norm, 1e-12))
                sites = nominal + design @ coef
        site_idx, column_idx = _one_to_one(sites, columns, radius)

    def inside(points: np.ndarray) -> np.ndarray:
        return (
            (points[:, 0] >= margin)
            & (points[:, 0] <= height - 1 - margin)
            & (points[:, 1] >= margin)
            & (points[:, 1] <= width - 1 - margin)
        )

    site_in = inside(sites)
    if not site_in.any():
        raise ValueError(
            f"no lattice site lies inside the {margin:.1f} px margin of a {height}x{width} image"
        )
    column_in = inside(columns) if len(columns) else np.zeros(0, dtype=bool)
    matched = np.full(len(sites), -1)
    matched[site_idx] = column_idx
    pairs = site_in[site_idx]
    distance = np.hypot(*(columns[column_idx[pairs]] - sites[site_idx[pairs]]).T)
    n_sites, n_columns, n_matched = int(site_in.sum()), int(column_in.sum()), int(pairs.sum())
    off_lattice = np.zeros(n_columns, dtype=bool)
    if n_columns:
        nearest, _ = cKDTree(sites).query(columns[column_in])
        off_lattice = nearest > radius
        invented = float(np.mean(off_lattice))
    else:
        invented = float("nan")
    # column indices re-based onto the columns inside the margin
    rebase = np.full(len(columns), -1)
    rebase[column_in] = np.arange(n_columns)
    kept = matched[site_in]
    kept = np.where(kept >= 0, rebase[kept], -1) if len(columns) else np.full(len(kept), -1)
    return LatticeFit(
        rms=float(np.sqrt(np.mean(distance**2))) if n_matched else float("nan"),
        sites_kept=n_matched / n_sites,
        invented=invented,
        radius=float(radius),
        nn_distance=nn_distance,
        sites=sites[site_in],
        matched=kept,
        kind=kind[site_in],
        columns=columns[column_in],
        n_sites=n_sites,
        n_columns=n_columns,
        n_matched=n_matched,
        off_lattice=off_lattice,
    )


@dataclass(frozen=True)
class MethodNoise:
    """What a denoiser removed (Buades, Coll & Morel 2005), see :func:`method_noise`.

    Attributes
    ----------
    lattice_removed : float
        Lattice-reflection power of the residual ``raw − output`` over that of ``raw`` (0: no
        lattice signal removed, 1: all of it); NaN when no reflection stands out.
    streak_left : float
        Power on the scan-row frequencies (``k_x = 0``) of ``output`` over that of ``raw``
        (1: row noise and streaks untouched, 0: removed).
    n_reflections : int
        Reflections that entered ``lattice_removed``.
    """

    lattice_removed: float
    streak_left: float
    n_reflections: int


def _reflections(reciprocal: np.ndarray) -> np.ndarray:
    """All reflections h g1 + k g2 (not 0) inside the Nyquist square, 1/px (y, x)."""
    direct = np.linalg.inv(reciprocal)  # columns a1, a2: h = g · a1, k = g · a2
    extent = int(np.ceil(0.71 * np.hypot(*direct).max())) + 1
    h, k = np.meshgrid(np.arange(-extent, extent + 1), np.arange(-extent, extent + 1))
    hk = np.stack([h.ravel(), k.ravel()], axis=1)
    hk = hk[np.any(hk != 0, axis=1)]
    g = hk @ reciprocal
    return g[np.all(np.abs(g) < 0.5, axis=1)]


def method_noise(
    raw: np.ndarray,
    output: np.ndarray,
    reciprocal: np.ndarray,
    *,
    min_ratio: float = REFLECTION_MIN_RATIO,
) -> MethodNoise:
    """Measure the lattice signal a denoiser removed and the scan-row noise it left.

    **Lattice power removed.** Both ``raw`` and the residual ``raw − output`` are Hann-tapered
    and Fourier transformed. At each lattice reflection (``h g1 + k g2`` inside the Nyquist
    square) whose raw power is at least ``min_ratio`` × the median power of an annulus 3–6
    frequency bins around it — a reflection that holds signal rather than noise — the power above
    that annulus background is summed; the score is the residual's sum over the raw image's. A
    denoiser that only removes noise scores near 0; one that blurs or moves the columns removes
    lattice power.

    **Streak power left.** The scan-row profile of an image — each row's Hann-weighted mean along
    x — carries exactly the ``k_x = 0`` column of its 2-D spectrum: line offsets, streaks and
    afterglow along rows, plus the white noise averaged over a row. Its power spectrum (Hann in
    y) is summed above half the lowest lattice frequency (the slow background and thickness
    variation are signal) and away (±3 bins) from the lattice reflections that fall on that
    column; the score is ``output``'s sum over ``raw``'s.

    Parameters
    ----------
    raw, output : ndarray, shape (H, W)
        The raw image and the method's output, same units.
    reciprocal : ndarray, shape (2, 2)
        Reciprocal basis (rows g1, g2, 1/px) measured on ``raw``.
    min_ratio : float
        Peak-over-background power for a reflection to count.

    Returns
    -------
    MethodNoise
        ``lattice_removed`` and ``streak_left``, dimensionless fractions.

    Raises
    ------
    ValueError
        If the images are malformed or differ in shape.

    Examples
    --------
    >>> yy, xx = np.mgrid[:128, :128]
    >>> clean = np.cos(2 * np.pi * xx / 10) + np.cos(2 * np.pi * yy / 10)
    >>> raw = clean + 0.3 * np.random.default_rng(0).standard_normal((128, 1))  # row streaks
    >>> score = method_noise(raw, clean, np.array([[0.1, 0.0], [0.0, 0.1]]))
    >>> score.lattice_removed < 0.05, score.streak_left < 0.01
    (True, True)
    """
    raw = _check_image(raw, "raw")
    output = _check_image(output, "output")
    if raw.shape != output.shape:
        raise ValueError(f"raw {raw.shape} and output {output.shape} must have the same shape")
    reciprocal = _check_reciprocal(reciprocal)
    height, width = raw.shape
    taper = np.outer(np.hanning(height), np.hanning(width))

    def power(image: np.ndarray) -> np.ndarray:
        return np.abs(np.fft.fft2((image - image.mean()) * taper)) ** 2

    p_raw, p_res = power(raw), power(raw - output)
    g = _reflections(reciprocal)
    by = np.rint(g[:, 0] * height).astype(int)
    bx = np.rint(g[:, 1] * width).astype(int)
    oy, ox = np.mgrid[-6:7, -6:7]
    ring = (np.hypot(oy, ox) >= 3) & (np.hypot(oy, ox) <= 6)
    core = np.hypot(oy, ox) <= 1.5
    signal_raw = signal_res = 0.0
    used = 0
    for y0, x0 in zip(by, bx, strict=True):
        ys, xs = (y0 + oy) % height, (x0 + ox) % width
        patch_raw, patch_res = p_raw[ys, xs], p_res[ys, xs]
        background = np.median(patch_raw[ring])
        peak = patch_raw[core].max()
        if peak < min_ratio * background:
            continue
        used += 1
        signal_raw += peak - background
        signal_res += max(patch_res[core].max() - np.median(patch_res[ring]), 0.0)
    removed = signal_res / signal_raw if used else float("nan")
    # scan-row profiles: the k_x = 0 column of the spectrum
    weight_x = np.hanning(width) if width > 2 else np.ones(width)
    taper_y = np.hanning(height)

    def row_power(image: np.ndarray) -> np.ndarray:
        profile = image @ weight_x / weight_x.sum()
        return np.abs(np.fft.rfft((profile - profile.mean()) * taper_y)) ** 2

    frequency = np.fft.rfftfreq(height)
    keep = frequency >= 0.5 * np.hypot(*reciprocal.T).min()
    for gy, gx in g:
        if abs(gx) * width < 3:
            keep &= np.abs(frequency - abs(gy)) * height > 3
    rows_raw, rows_out = row_power(raw)[keep].sum(), row_power(output)[keep].sum()
    streak = rows_out / rows_raw if rows_raw > 0 else float("nan")
    return MethodNoise(float(removed), float(streak), used)
