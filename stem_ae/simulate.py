"""Simulated atomic-resolution STEM images: training windows and ground-truth scenes.

NumPy and SciPy only (no Keras). Everything random takes ``rng`` (an int seed, ``None`` or a
:class:`numpy.random.Generator`), normalised through :func:`as_generator`; the same seed gives the
same bytes.

Units follow ``docs/design.md``: positions in px as ``(y, x)`` (row, column); pixel size in Å/px;
angles in degrees counter-clockwise from +x as the image is displayed (rows grow downwards, so a
direction at angle ``phi`` is ``(y, x) = (-sin phi, cos phi)``); dose in mean counts per pixel.

Paper recipe (:data:`PAPER`)
----------------------------
The paper trains on 28×28 windows of the [001] projection of SrTiO3 — Sr columns (intensity 1.0)
at the cell corners, Ti–O columns (0.7) at the cell centre — each translated randomly by up to one
period, rotated uniformly in 0–45°, normalised to a maximum of 1, with uniform noise at SNR 0.33.
It gives neither the period nor the column width. We choose

* ``PAPER_PERIOD_PX = 9.0``: the Sr–Sr period ``a`` in px, so that about three unit cells
  (28 / 9 ≈ 3.1) span a window — enough lattice for the encoder to "see" periodicity, while each
  column still covers several pixels;
* ``PAPER_SIGMA_PX = 1.0``: the Gaussian column standard deviation (FWHM 2.35 px ≈ 0.26 a), which
  matches the ratio of column width to Sr–Sr distance of a typical HAADF image of SrTiO3
  (FWHM ≈ 1 Å for a = 3.905 Å).

The strongest Fourier reflection of this lattice is {110} (structure factor 1 + 0.7 against
1 − 0.7 for {100}), so its dominant spacing is ``a / √2 ≈ 6.36`` px: that is the
``spacing_range`` recorded in :data:`PAPER`.

SNR is defined per window as ``std(clean) / std(noise)``; "uniform" noise is zero-mean noise drawn
from a uniform distribution (the paper's wording; 2**16 discrete levels), scaled per window so that
its standard deviation is ``std(clean) / snr``.

Broad recipe (:data:`GENERAL`)
------------------------------
Square, rectangular, centred-rectangular and hexagonal lattices with 1–3 column types, scaled so
that :meth:`Lattice.dominant_spacing` is log-uniform in 6–10 px, with local disorder in 30 % of the
windows, and physical noise: Poisson at 1–100 counts/px, read noise, scan-line offsets, row
jitter, occasional probe blur (10 % of windows get paper-like uniform noise instead). Every range
is a field of :class:`TrainingDistribution` and is saved with a model (``to_dict``).

Scenes (:func:`simulate_scene`, :func:`simulate_mixed_scene`)
-------------------------------------------------------------
Whole images in physical units (Å/px, counts/px) with ground-truth column positions and defects:
a Ruddlesden–Popper fault, vacancies, a smooth strain field. The truth for Figure 3 and for the
quantitative tests of reconstruction. ``contrast="dark"`` draws ABF-like scenes (dark columns
with a weak bright rim on a bright background). :func:`simulate_mixed_scene` draws images that
are not one crystal — crystal, a second grain at another orientation, amorphous blobs, vacuum —
with the true region of every pixel (:data:`REGIONS`).

Noise (:class:`NoiseModel`)
---------------------------
White: Poisson shot noise at a dose, uniform or Gaussian noise at an SNR, read noise. Correlated,
as in real scans: per-row offsets (in counts, ``row_offset``, or relative to the signal,
``row_offset_rel``) and a slow row gain, drift-corrected averages of sub-pixel shifted frames, and
detector afterglow along the fast scan. Row jitter, drift and probe blur act on the geometry.

Speed
-----
An isotropic Gaussian is separable in any rotated frame, so a window is
``Gy.T @ diag(I) @ Gx`` with ``Gy[k, y] = exp(-(y - y_k)² / 2σ²)`` over the columns ``k`` that touch
the window: one small batched matrix product per window. For fixed-width lattices (:data:`PAPER`)
the rows of ``Gy``/``Gx`` are copied from a table of the Gaussian sampled at 1/1024-px sub-pixel
offsets (error < 5e-4 of the peak) instead of evaluating ``exp``. See ``benchmarks/simulate.py``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from stem_ae._common import PAPER_PERIOD_PX, WINDOW

__all__ = [
    "GENERAL",
    "PAPER",
    "PAPER_NOISE",
    "PAPER_PERIOD_PX",
    "PAPER_SIGMA_PX",
    "PAPER_SNR",
    "REALISTIC",
    "REALISTIC_DARK",
    "WINDOW",
    "Lattice",
    "NoiseModel",
    "Scene",
    "TrainingDistribution",
    "as_generator",
    "random_lattice",
    "simulate_mixed_scene",
    "simulate_scene",
    "srtio3_lattice",
    "training_batch",
]

MIN_WINDOW = 8
"""Smallest accepted window side, px."""
MIN_PERIOD = 2.0
"""Smallest accepted lattice period / spacing, px (below it columns are not resolved)."""
PAPER_SIGMA_PX = 1.0
"""Gaussian column standard deviation of the paper's windows, px."""
PAPER_TIO_INTENSITY = 0.7
"""Peak height of the Ti–O column relative to Sr (1.0)."""
PAPER_SNR = 0.33
"""The paper's SNR, ``std(clean) / std(noise)`` per window."""
PAPER_MAX_ANGLE = 45.0
"""Paper windows are rotated uniformly in ``[0, PAPER_MAX_ANGLE]`` degrees."""
SRTIO3_CELL = 3.905
"""Cubic lattice parameter of SrTiO3, Å."""
GAUSS_CUTOFF = 4.0
"""Columns further than this many sigma outside a window are not rendered (exp(-8) ≈ 3e-4)."""
ROW_GAIN_LENGTH = 16.0
"""Default correlation length (px, along y) of the slow row gain of :class:`NoiseModel`."""
CONTRASTS = ("bright", "dark")
"""Contrasts of :func:`simulate_scene`: HAADF-like bright columns, or ABF-like dark ones."""
DARK_DEPTH = 0.5
"""Dip of the strongest column below the bright background in a dark-contrast scene (fraction)."""
DARK_RIM = 0.1
"""Peak of the bright rim around the strongest column in a dark-contrast scene (fraction)."""
DARK_RIM_SCALE = 1.5
"""Rim width in units of the column sigma: the rim peaks at ``1.5·√2·σ ≈ 2.1σ`` from the centre."""

_TINY = 1e-18  # Gaussian rows are floored/zeroed below this (no denormals in the matmul)
_LOG_TINY = math.log(_TINY)
_TABLE_BITS = 10
_TABLE_STEPS = 2**_TABLE_BITS  # sub-pixel steps of the Gaussian table (fixed-sigma fast path)
_CHUNK = 512  # windows rendered per chunk (keeps the temporaries in cache)

KINDS = ("srtio3", "square", "rectangular", "centred", "hexagonal")
"""Lattice kinds understood by :func:`random_lattice` and :class:`TrainingDistribution`."""


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def as_generator(rng: Any = None) -> np.random.Generator:
    """Return a :class:`numpy.random.Generator` for ``rng``.

    ``rng`` may be ``None`` (fresh entropy), an int seed, a :class:`numpy.random.SeedSequence` or
    an existing Generator (returned unchanged, so its stream is shared).

    >>> int(as_generator(0).integers(10)) == int(as_generator(0).integers(10))
    True
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, np.random.SeedSequence):
        return np.random.default_rng(rng)
    if isinstance(rng, (bool, np.bool_)):
        raise TypeError(f"rng must be None, an int seed or a numpy Generator, got {rng!r}")
    if isinstance(rng, (int, np.integer)):
        if rng < 0:
            raise ValueError(f"rng seed must be a non-negative int, got {rng}")
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be None, an int seed or a numpy Generator, got {type(rng).__name__}")


def _direction(angle_deg):
    """Unit vector(s) ``(y, x)`` at ``angle_deg`` counter-clockwise from +x (y grows downwards)."""
    t = np.deg2rad(angle_deg)
    return np.stack([-np.sin(t), np.cos(t)], axis=-1)


def _rotation(angle_deg):
    """Matrix (or stack) rotating ``(y, x)`` row vectors by ``angle_deg`` counter-clockwise.

    ``v @ R`` rotates ``v``; R has rows = images of the unit vectors (1, 0) and (0, 1).
    """
    t = np.deg2rad(np.asarray(angle_deg, dtype=float))
    c, s = np.cos(t), np.sin(t)
    # +x=(0,1) -> (-s, c); +y (down) = (1, 0) -> (c, s)
    return np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], -2)


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not (ok and math.isfinite(value)):
        rng_txt = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {rng_txt}, got {value!r}")
    return value


def _check_range(name: str, rng_: Sequence[float], lo: float, hi: float = math.inf) -> tuple:
    try:
        a, b = (float(v) for v in rng_)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair, got {rng_!r}") from None
    if not (lo <= a <= b <= hi) or not (math.isfinite(a) and math.isfinite(b)):
        hi_txt = "" if hi == math.inf else f" <= {hi}"
        raise ValueError(f"{name} must satisfy {lo} <= low <= high{hi_txt}, got {rng_!r}")
    return (a, b)


def _check_window(window: int) -> int:
    if int(window) != window or window < MIN_WINDOW:
        raise ValueError(f"window must be an int >= {MIN_WINDOW} px, got {window!r}")
    return int(window)


# --------------------------------------------------------------------------------------------
# lattices
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lattice:
    """A 2-D Bravais lattice with a basis of isotropic Gaussian columns, in px.

    ``a1 = a · (0, 1)`` points along +x and ``a2`` is at ``gamma`` degrees counter-clockwise from
    it (both ``(y, x)``). ``basis`` holds ``(u, v, intensity)``: fractional coordinates along
    ``a1``, ``a2`` and the peak height. Column *types* are the distinct intensities, strongest
    first (type 0).

    >>> lat = srtio3_lattice()
    >>> round(lat.nearest_neighbour(), 3), round(lat.dominant_spacing(), 3)
    (6.364, 6.364)
    """

    a: float
    b: float
    gamma: float
    basis: tuple[tuple[float, float, float], ...]
    sigma: float

    def __post_init__(self):
        a = _check_positive("Lattice.a", self.a)
        b = _check_positive("Lattice.b", self.b)
        if not (0.0 < float(self.gamma) < 180.0):
            raise ValueError(f"Lattice.gamma must be in (0, 180) degrees, got {self.gamma!r}")
        basis = tuple(tuple(float(v) for v in site) for site in self.basis)
        if not basis or any(len(site) != 3 for site in basis):
            raise ValueError(f"Lattice.basis must be a non-empty list of (u, v, I), got {basis!r}")
        if any(not (site[2] >= 0 and math.isfinite(site[2])) for site in basis):
            raise ValueError(f"Lattice.basis intensities must be >= 0, got {basis!r}")
        sigma = _check_positive("Lattice.sigma", self.sigma)
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "gamma", float(self.gamma))
        object.__setattr__(self, "basis", basis)
        object.__setattr__(self, "sigma", sigma)

    # geometry ---------------------------------------------------------------------------------
    def vectors(self, angle: float = 0.0) -> np.ndarray:
        """Lattice vectors as rows ``[a1, a2]`` in ``(y, x)`` px, rotated by ``angle`` degrees."""
        a1 = self.a * _direction(angle)
        a2 = self.b * _direction(angle + self.gamma)
        return np.stack([a1, a2])

    @property
    def cell_area(self) -> float:
        """Area of the primitive cell, px²."""
        return self.a * self.b * math.sin(math.radians(self.gamma))

    def column_types(self) -> np.ndarray:
        """Type index of each basis site: 0 for the strongest intensity, then decreasing."""
        levels = sorted({site[2] for site in self.basis}, reverse=True)
        return np.array([levels.index(site[2]) for site in self.basis], dtype=int)

    def nearest_neighbour(self) -> float:
        """Shortest distance between two columns, px."""
        vec = self.vectors()
        uv = np.array([site[:2] for site in self.basis])
        ij = np.array([(i, j) for i in range(-2, 3) for j in range(-2, 3)], dtype=float)
        diffs = (uv[:, None, None, :] - uv[None, :, None, :] + ij[None, None]).reshape(-1, 2)
        d = np.linalg.norm(diffs @ vec, axis=1)
        return float(d[d > 1e-9].min())

    def reciprocal(self) -> np.ndarray:
        """Reciprocal vectors as rows ``[b1, b2]`` (``a_i · b_j = δ_ij``), 1/px, at angle 0."""
        return np.linalg.inv(self.vectors()).T

    def reflections(self, order: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """Reciprocal vectors ``g`` (1/px, ``(y, x)``) with ``|h|, |k| <= order`` and amplitudes.

        The amplitude is ``|F(g)| · exp(-2π²σ²|g|²)``: the structure factor of the basis times the
        Fourier transform of the Gaussian column, i.e. what an FFT of the image shows.
        """
        hk = np.array(
            [(h, k) for h in range(-order, order + 1) for k in range(-order, order + 1) if h or k],
            dtype=float,
        )
        g = hk @ self.reciprocal()
        uvi = np.array(self.basis)
        phase = 2j * np.pi * (hk @ uvi[:, :2].T)
        f = np.abs(np.exp(phase) @ uvi[:, 2])
        amp = f * np.exp(-2 * np.pi**2 * self.sigma**2 * np.sum(g * g, axis=1))
        return g, amp

    def dominant_spacing(self) -> float:
        """Plane spacing (px) of the strongest Fourier reflection of the lattice with its basis.

        The strongest non-zero ``g`` among the few shortest reciprocal vectors, weighting the
        structure factor by the Gaussian form factor; ties go to the longest spacing. This is the
        spacing of the brightest peak of an FFT of the (noise-free) image.
        """
        g, amp = self.reflections()
        norm = np.linalg.norm(g, axis=1)
        best = amp.max()
        cand = np.flatnonzero(amp >= best * (1 - 1e-9))
        return float(1.0 / norm[cand].min())

    def scaled(self, factor: float) -> Lattice:
        """The same lattice magnified by ``factor`` (periods and column width)."""
        factor = _check_positive("factor", factor)
        return dataclasses.replace(
            self, a=self.a * factor, b=self.b * factor, sigma=self.sigma * factor
        )

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        return {
            "a": self.a,
            "b": self.b,
            "gamma": self.gamma,
            "basis": [list(s) for s in self.basis],
            "sigma": self.sigma,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> Lattice:
        return cls(d["a"], d["b"], d["gamma"], tuple(tuple(s) for s in d["basis"]), d["sigma"])


def srtio3_lattice(period: float = PAPER_PERIOD_PX, sigma: float = PAPER_SIGMA_PX) -> Lattice:
    """SrTiO3 [001]: Sr (1.0) at the cell corners, Ti–O (0.7) at the centre; period ``a`` in px.

    >>> srtio3_lattice().basis
    ((0.0, 0.0, 1.0), (0.5, 0.5, 0.7))
    """
    if not float(period) >= MIN_PERIOD:
        raise ValueError(f"period must be >= {MIN_PERIOD} px, got {period!r}")
    _check_positive("sigma", sigma)
    return Lattice(
        a=period, b=period, gamma=90.0, basis=((0.0, 0.0, 1.0), (0.5, 0.5, PAPER_TIO_INTENSITY)),
        sigma=sigma,
    )  # fmt: skip


# Basis sites per kind as (u, v, type): a lattice with n column types uses the sites of type < n.
_BASIS_SITES = {
    "srtio3": ((0.0, 0.0, 0), (0.5, 0.5, 1)),
    # perovskite-like: A at the corners, B at the centre, O on the edges
    "square": ((0.0, 0.0, 0), (0.5, 0.5, 1), (0.5, 0.0, 2), (0.0, 0.5, 2)),
    "rectangular": ((0.0, 0.0, 0), (0.5, 0.5, 1), (0.5, 0.0, 2)),
    # centred rectangular: (0, 0) and (1/2, 1/2) alike, other types on the edges
    "centred": ((0.0, 0.0, 0), (0.5, 0.5, 0), (0.5, 0.0, 1), (0.0, 0.5, 2)),
    # hexagonal: triangular; honeycomb-like with 2 types; three sub-lattices with 3 types
    "hexagonal": ((0.0, 0.0, 0), (1 / 3, 2 / 3, 1), (2 / 3, 1 / 3, 2)),
}
_MAX_SITES = 4
_HK = np.array([(h, k) for h in range(-3, 4) for k in range(-3, 4) if h or k], dtype=float)
_IJ = np.array([(i, j) for i in range(-2, 3) for j in range(-2, 3)], dtype=float)


def _nearest_neighbours(vec, uv, inten):
    """Shortest column distance of many lattices: vec (n, 2, 2), uv (n, S, 2), inten (n, S)."""
    du = (uv[:, :, None, None, 0] - uv[:, None, :, None, 0] + _IJ[:, 0]).reshape(len(vec), -1)
    dv = (uv[:, :, None, None, 1] - uv[:, None, :, None, 1] + _IJ[:, 1]).reshape(len(vec), -1)
    py = du * vec[:, 0, 0, None] + dv * vec[:, 1, 0, None]
    px = du * vec[:, 0, 1, None] + dv * vec[:, 1, 1, None]
    s = uv.shape[1]
    dist = np.sqrt(py * py + px * px).reshape(len(vec), s, s, len(_IJ))
    present = inten > 0
    ok = present[:, :, None, None] & present[:, None, :, None] & (dist > 1e-9)
    return np.where(ok, dist, np.inf).reshape(len(vec), -1).min(1)


def _dominant_spacings(vec, uv, inten, sigma):
    """Vectorised :meth:`Lattice.dominant_spacing` (same reflections, same tie rule)."""
    recip = np.linalg.inv(vec).transpose(0, 2, 1)  # rows b1, b2
    g = np.einsum("hj,njk->nhk", _HK, recip)
    g2 = (g**2).sum(-1)
    phase = 2 * np.pi * np.einsum("hj,nsj->nhs", _HK, uv)
    re = (np.cos(phase) * inten[:, None, :]).sum(-1)
    im = (np.sin(phase) * inten[:, None, :]).sum(-1)
    amp = np.sqrt(re**2 + im**2) * np.exp(-2 * np.pi**2 * sigma[:, None] ** 2 * g2)
    best = amp.max(1, keepdims=True)
    gmin = np.where(amp >= best * (1 - 1e-9), g2, np.inf).min(1)
    return 1.0 / np.sqrt(gmin)


def _draw_structures(n, gen, *, min_sigma_px=0.0, min_nn_fraction=0.0, **kw):
    """Draw ``n`` lattices (see :func:`_draw_structures_once`), redrawing those whose column sigma
    is below ``min_sigma_px`` or whose nearest-neighbour distance is below ``min_nn_fraction`` ×
    their dominant spacing (under-sampled or crowded columns); after 50 rounds they are kept."""
    out = list(_draw_structures_once(n, gen, **kw))
    spacing = out[5]
    for _ in range(50):
        bad = (out[3] < min_sigma_px) | (out[4] < min_nn_fraction * spacing)
        bad &= ~out[6]
        if not bad.any():
            break
        new = _draw_structures_once(int(bad.sum()), gen, **kw)
        for arr, v in zip(out, new, strict=True):
            arr[bad] = v
    return out[:5]


def _draw_structures_once(
    n,
    gen,
    *,
    kinds,
    kind_weights=None,
    n_types=(1, 3),
    intensity_range=(0.2, 1.0),
    sigma_range=(0.1, 0.22),
    aspect_range=(0.5, 2.0),
    spacing_range=(6.0, 10.0),
    log_uniform=False,
    sigma_px=None,
    period_px=None,
):
    """Draw ``n`` lattices as arrays, scaled to their target dominant spacing.

    Returns ``vec`` (n, 2, 2) lattice vectors (rows a1, a2, (y, x) px, unrotated), ``uv``
    (n, S, 2) fractional basis sites, ``inten`` (n, S) peak heights (0 = absent site), ``sigma``
    (n,) and ``nn`` (n,) px. The ``"srtio3"`` kind with ``period_px`` and ``sigma_px`` set keeps
    that fixed geometry.
    """
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown lattice kind {k!r}; accepted: {', '.join(KINDS)}")
    lo_s, hi_s = _check_range("spacing_range", spacing_range, MIN_PERIOD)
    lo_t, hi_t = (int(v) for v in n_types)
    if not 1 <= lo_t <= hi_t <= 3:
        raise ValueError(f"n_types must satisfy 1 <= low <= high <= 3, got {n_types!r}")
    w = None if kind_weights is None else np.asarray(kind_weights, float) / np.sum(kind_weights)
    kind_idx = gen.choice(len(kinds), size=n, p=w)
    types = gen.integers(lo_t, hi_t + 1, size=n)
    levels = gen.uniform(*intensity_range, size=(n, 3))
    levels[:, 0] = 1.0
    aspect = np.exp(gen.uniform(*np.log(aspect_range), size=n))
    ratio = gen.uniform(*sigma_range, size=n)
    u = gen.random(n)
    if log_uniform:
        spacing = np.exp(np.log(lo_s) + u * np.log(hi_s / lo_s))
    else:
        spacing = lo_s + u * (hi_s - lo_s)
    uv = np.zeros((n, _MAX_SITES, 2))
    inten = np.zeros((n, _MAX_SITES))
    gamma = np.full(n, 90.0)
    b = np.ones(n)
    fixed = np.zeros(n, bool)
    for ki, kind in enumerate(kinds):
        sel = kind_idx == ki
        if not sel.any():
            continue
        for si, (su, sv, t) in enumerate(_BASIS_SITES[kind]):
            uv[sel, si] = (su, sv)
            if kind == "srtio3":
                inten[sel, si] = (1.0, PAPER_TIO_INTENSITY)[t]
            else:
                inten[sel, si] = np.where(types[sel] > t, levels[sel, t], 0.0)
        if kind == "hexagonal":
            gamma[sel] = 120.0
        elif kind in ("rectangular", "centred"):
            b[sel] = aspect[sel]
        elif kind == "srtio3" and period_px is not None and sigma_px is not None:
            fixed[sel] = True
    vec = np.zeros((n, 2, 2))
    vec[:, 0] = (0.0, 1.0)
    vec[:, 1] = b[:, None] * _direction(gamma)
    nn = _nearest_neighbours(vec, uv, inten)
    sigma = ratio * nn
    scale = np.empty(n)
    if fixed.any():
        sigma[fixed] = sigma_px / period_px
        scale[fixed] = period_px
    free = ~fixed
    if free.any():
        scale[free] = spacing[free] / _dominant_spacings(
            vec[free], uv[free], inten[free], sigma[free]
        )
    ds = np.where(fixed, scale, spacing)
    return vec * scale[:, None, None], uv, inten, sigma * scale, nn * scale, ds, fixed


def random_lattice(
    rng: Any = None,
    *,
    spacing_range: tuple[float, float] = (6.0, 10.0),
    kinds: Sequence[str] = ("square", "rectangular", "centred", "hexagonal"),
    n_types: tuple[int, int] = (1, 3),
    intensity_range: tuple[float, float] = (0.2, 1.0),
    sigma_range: tuple[float, float] = (0.1, 0.22),
    aspect_range: tuple[float, float] = (0.5, 2.0),
    log_uniform: bool = False,
    min_sigma_px: float = 0.5,
    min_nn_fraction: float = 0.4,
) -> Lattice:
    """Draw one random lattice whose :meth:`Lattice.dominant_spacing` lies in ``spacing_range``.

    ``kinds`` from :data:`KINDS`; ``n_types`` column types (the strongest 1.0, others uniform in
    ``intensity_range``); column sigma uniform in ``sigma_range`` × the nearest-neighbour distance;
    ``aspect_range`` is ``b / a`` for rectangular and centred lattices (log-uniform); the target
    spacing is uniform (or log-uniform) in ``spacing_range``. Lattices with column sigma below
    ``min_sigma_px`` or a nearest-neighbour distance below ``min_nn_fraction`` × the dominant
    spacing are redrawn.

    >>> lat = random_lattice(0)
    >>> 6.0 <= lat.dominant_spacing() <= 10.0
    True
    """
    vec, uv, inten, sigma, _ = _draw_structures(
        1,
        as_generator(rng),
        kinds=tuple(kinds),
        n_types=n_types,
        intensity_range=intensity_range,
        sigma_range=sigma_range,
        aspect_range=aspect_range,
        spacing_range=spacing_range,
        log_uniform=log_uniform,
        min_sigma_px=min_sigma_px,
        min_nn_fraction=min_nn_fraction,
    )
    a1, a2 = vec[0]
    gamma = math.degrees(math.atan2(-a2[0], a2[1]))
    basis = tuple(
        (float(p[0]), float(p[1]), float(i)) for p, i in zip(uv[0], inten[0], strict=True) if i > 0
    )
    return Lattice(float(np.hypot(*a1)), float(np.hypot(*a2)), gamma, basis, float(sigma[0]))


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------


def _columns_in_windows(vec, basis_uv, basis_i, trans, half, margin):
    """Columns of many lattices that touch their windows.

    vec (n, 2, 2) rotated lattice vectors (rows a1, a2, (y, x)); basis_uv (n, B, 2); basis_i (n, B)
    (0 = absent); trans (n, 2) fractional translation; a window spans ``|y|, |x| <= half`` about
    its centre; columns with centres within ``half + margin[n]`` are kept.
    Returns positions (n, K, 2) float32 relative to the centre and intensities (n, K) (0 = padding).
    """
    n = vec.shape[0]
    lim = half + margin  # (n,)
    # index range needed along each lattice direction: |i| <= R |b_i| (+2 for basis/translation)
    bnorm = np.linalg.norm(np.linalg.inv(vec), axis=1)  # (n, 2): |b1|, |b2|
    m = (np.ceil(lim[:, None] * math.sqrt(2.0) * bnorm) + 2).astype(int)
    groups = []
    for key in np.unique(m, axis=0):
        sel = np.flatnonzero((m == key).all(1))
        ii, jj = np.meshgrid(np.arange(-key[0], key[0] + 1), np.arange(-key[1], key[1] + 1))
        ij = np.stack([ii.ravel(), jj.ravel()], -1).astype(np.float64)  # (C, 2)
        ns = len(sel)
        frac = ij[None, :, None, :] + basis_uv[sel, None] + trans[sel, None, None]
        frac = frac.reshape(ns, -1, 2)
        inten = np.broadcast_to(basis_i[sel, None], (ns, len(ij), basis_i.shape[1])).reshape(ns, -1)
        pos = frac @ vec[sel]  # (ns, C*B, 2)
        mask = (np.abs(pos) <= lim[sel, None, None]).all(-1) & (inten > 0)
        groups.append((sel, *_compact(mask, pos, inten)))
    k = max(g[1].shape[1] for g in groups)
    pos_out = np.zeros((n, k, 2), np.float32)
    int_out = np.zeros((n, k), np.float32)
    for sel, p, i in groups:
        pos_out[sel, : p.shape[1]] = p
        int_out[sel, : i.shape[1]] = i
    return pos_out, int_out


def _compact(mask, pos, inten):
    """Gather the True entries of each row of ``mask`` to the front, padding with zeros."""
    n = mask.shape[0]
    counts = mask.sum(1)
    k = max(int(counts.max()) if n else 0, 1)
    rank = np.cumsum(mask, axis=1) - 1
    rows, cols = np.nonzero(mask)
    slot = rank[rows, cols]
    out_pos = np.zeros((n, k, 2), np.float32)
    out_i = np.zeros((n, k), np.float32)
    out_pos[rows, slot] = pos[rows, cols]
    out_i[rows, slot] = inten[rows, cols]
    return out_pos, out_i


def _gauss_rows(centres, sigma, size):
    """``exp(-(p - c)² / 2σ²)``, p = 0..size-1: (n, K) centres px, sigma (n,) -> (n, K, size)."""
    p = np.arange(size, dtype=np.float32)
    d = p[None, None, :] - centres[..., None].astype(np.float32)
    np.multiply(d, d, out=d)
    np.multiply(d, (-0.5 / np.asarray(sigma, np.float32) ** 2)[:, None, None], out=d)
    # floor the exponent: exp(-40) ≈ 4e-18, so products of two rows stay clear of denormal floats
    np.maximum(d, np.float32(_LOG_TINY), out=d)
    np.exp(d, out=d)
    return d


def _render_windows(pos, inten, sigma, window, table=None):
    """Sum of Gaussians: (n, K, 2) positions about the window centre -> (n, window, window)."""
    c = (window - 1) / 2.0
    cy = pos[..., 0] + np.float32(c)
    cx = pos[..., 1] + np.float32(c)
    if table is not None:
        gy = table.rows(cy)
        gx = table.rows(cx)
        gy = gy * inten[..., None]
    else:
        gy = _gauss_rows(cy, sigma, window)
        gy *= inten[..., None]
        gx = _gauss_rows(cx, sigma, window)
    return np.matmul(gy.transpose(0, 2, 1), gx)


def _tiles_with_columns(shape, columns, reach, tile):
    """Tiles ``(y0, y1, x0, x1, sel)`` of ``shape`` with the columns within ``reach`` px of each
    (``sel`` a boolean mask over ``columns``); tiles no column reaches are skipped."""
    h, w = shape
    for y0 in range(0, h, tile):
        y1 = min(y0 + tile, h)
        for x0 in range(0, w, tile):
            x1 = min(x0 + tile, w)
            sel = (
                (columns[:, 0] >= y0 - reach)
                & (columns[:, 0] <= y1 - 1 + reach)
                & (columns[:, 1] >= x0 - reach)
                & (columns[:, 1] <= x1 - 1 + reach)
            )
            if sel.any():
                yield y0, y1, x0, x1, sel


def _render_image(shape, columns, intensities, sigma, tile=128):
    """Render columns ((N, 2) (y, x) px, intensities (N,), sigma scalar or (N,)) into ``shape``.

    Tiled so that the cost grows with the area, not with area × number of columns.
    """
    h, w = shape
    out = np.zeros((h, w), np.float32)
    sig = np.broadcast_to(np.asarray(sigma, float), (len(columns),))
    if len(columns) == 0:
        return out
    reach = GAUSS_CUTOFF * sig.max() + 1
    for y0, y1, x0, x1, sel in _tiles_with_columns((h, w), columns, reach, tile):
        s = sig[sel]
        inv = -0.5 / s**2
        gy = np.exp((np.arange(y0, y1)[None, :] - columns[sel, 0, None]) ** 2 * inv[:, None])
        gx = np.exp((np.arange(x0, x1)[None, :] - columns[sel, 1, None]) ** 2 * inv[:, None])
        out[y0:y1, x0:x1] = (gy * intensities[sel, None]).T @ gx
    return out


def _render_rims(shape, columns, intensities, sigma, tile=128):
    """Render bright rims: ``Σ I · e · (ρ² / 2s²) · exp(−ρ² / 2s²)`` (peak ``I`` at ρ = s√2).

    ``ρ² g(ρ) = y² g(y) g(x) + g(y) x² g(x)`` is a sum of two separable terms, so the rims are
    rendered tile by tile like :func:`_render_image` (same arguments, ``sigma`` the scalar ``s``).
    """
    h, w = shape
    out = np.zeros((h, w), np.float32)
    if len(columns) == 0:
        return out
    s = float(sigma)
    reach = 6.0 * s + 1
    for y0, y1, x0, x1, sel in _tiles_with_columns((h, w), columns, reach, tile):
        ty = (np.arange(y0, y1)[None, :] - columns[sel, 0, None]) ** 2 / (2 * s * s)
        tx = (np.arange(x0, x1)[None, :] - columns[sel, 1, None]) ** 2 / (2 * s * s)
        gy, gx = np.exp(-ty), np.exp(-tx)
        weight = (math.e * intensities[sel])[:, None]
        out[y0:y1, x0:x1] = (ty * gy * weight).T @ gx + (gy * weight).T @ (tx * gx)
    return out


# --------------------------------------------------------------------------------------------
# noise
# --------------------------------------------------------------------------------------------


def _per_image(value, n, dtype=np.float32):
    """Broadcast a scalar or (n,) parameter to shape (n, 1, 1)."""
    return np.broadcast_to(np.asarray(value, dtype), (n,)).reshape(n, 1, 1)


def _shift_rows(img, shifts):
    """Shift each row of ``img`` (n, H, W) right by ``shifts`` (n, H) px (linear, edge-clamped)."""
    w = img.shape[-1]
    src = np.arange(w, dtype=np.float32)[None, None, :] - shifts[..., None].astype(np.float32)
    np.clip(src, 0, w - 1, out=src)
    i0 = np.floor(src).astype(np.intp)
    f = (src - i0).astype(np.float32)
    i1 = np.minimum(i0 + 1, w - 1)
    v0 = np.take_along_axis(img, i0, axis=-1)
    v1 = np.take_along_axis(img, i1, axis=-1)
    return v0 + (v1 - v0) * f


def _afterglow(img, length):
    """Causal exponential decay along x (the fast scan) of each image of ``img`` (n, H, W).

    ``y[x] = (1 − q)·s[x] + q·y[x − 1]`` with ``q = exp(−1 / length)`` (length in px, per image;
    0 = off) and ``y[0] = s[0]``: the gains sum to 1, so the mean is kept. Returns float32.
    """
    length = np.asarray(length, float)
    q = np.where(length > 0, np.exp(-1.0 / np.where(length > 0, length, 1.0)), 0.0)
    q = q.reshape(-1, 1)
    src = np.asarray(img, np.float64)
    out = np.empty_like(src)
    out[..., 0] = src[..., 0]
    for x in range(1, src.shape[-1]):
        out[..., x] = (1.0 - q) * src[..., x] + q * out[..., x - 1]
    return out.astype(np.float32)


def _row_gain(gen, n, h, std, length):
    """Slow multiplicative gain per scan row, (n, H, 1): ``1 + std·g(y)``, clipped at 0.

    ``g`` is white noise smoothed along y by a Gaussian of ``length`` px and scaled to unit
    variance (exactly, for the discrete kernel).
    """
    m = math.ceil(4 * length)
    t = np.arange(-m, m + 1, dtype=float)
    kernel = np.exp(-0.5 * (t / length) ** 2)
    kernel /= math.sqrt(float(np.sum(kernel**2)))
    white = gen.standard_normal((n, h + 2 * m))
    smooth = ndimage.correlate1d(white, kernel, axis=1, mode="constant")[:, m : m + h]
    gain = 1.0 + np.asarray(std, float)[:, None] * smooth
    return np.maximum(gain, 0.0).astype(np.float32)[:, :, None]


def _frame_average(expected, clean, gen, frames, shift_std, order, afterglow):
    """Drift-corrected sum of ``frames`` Poisson frames of one image (H, W) at dose / frames each.

    Each frame sees the specimen shifted by a random ``(dy, dx)`` (std ``shift_std`` px; a cubic
    spline shift of the expected image, clipped at 0), is detected (Poisson counts, then the
    detector ``afterglow``), shifted back by the registration (``ndimage.shift`` of spline
    ``order`` 1 or 3, edges ``nearest``) and added. Returns ``(noisy, clean)``: the counts and
    their expected value (the same chain applied to ``clean``), float32, in the units of
    ``expected``.
    """
    expected = np.asarray(expected, np.float64)
    clean = np.asarray(clean, np.float64)
    noisy = np.zeros_like(expected)
    mean = np.zeros_like(clean)
    for _ in range(frames):
        shift = gen.standard_normal(2) * shift_std
        # the spline may overshoot below 0 next to sharp columns: intensities are >= 0
        seen = np.maximum(ndimage.shift(expected, shift, order=3, mode="nearest"), 0.0) / frames
        seen_clean = np.maximum(ndimage.shift(clean, shift, order=3, mode="nearest"), 0.0) / frames
        counts = gen.poisson(seen).astype(np.float64)
        if afterglow > 0:
            counts = _afterglow(counts[None], afterglow)[0].astype(np.float64)
            seen_clean = _afterglow(seen_clean[None], afterglow)[0].astype(np.float64)
        noisy += ndimage.shift(counts, -shift, order=order, mode="nearest")
        mean += ndimage.shift(seen_clean, -shift, order=order, mode="nearest")
    return noisy.astype(np.float32), mean.astype(np.float32)


def _apply_noise(
    clean,
    gen,
    *,
    snr=None,
    snr_noise="uniform",
    dose=None,
    read_noise=0.0,
    row_offset=0.0,
    row_jitter=0.0,
    drift=0.0,
    blur=0.0,
    blur_done=False,
    frames=1,
    frame_shift=0.0,
    frame_order=1,
    row_offset_rel=0.0,
    row_gain=0.0,
    row_gain_length=ROW_GAIN_LENGTH,
    afterglow=0.0,
):
    """Vectorised noise: every parameter is a scalar or an (n,) array (per image; 0/NaN = off).

    ``frame_order`` and ``row_gain_length`` are scalars. Returns ``(noisy, clean)``, float32
    (n, H, W); ``clean`` is the expected image in the units of ``noisy`` (probe blur, drift, the
    interpolation of frame averages and afterglow included; row jitter, row gain and offsets not:
    those are noise). The correlated terms draw random numbers only when they are on, so a model
    without them gives the same bytes as before they existed.
    """
    clean = np.asarray(clean, np.float32)
    n, h, w = clean.shape

    def per(v):
        return np.nan_to_num(np.broadcast_to(np.asarray(v, float), (n,)).astype(float), nan=0.0)

    blur_a, drift_a, jit_a = per(blur), per(drift), per(row_jitter)
    if not blur_done and np.any(blur_a > 0):
        clean = clean.copy()
        for i in np.flatnonzero(blur_a > 0):
            clean[i] = ndimage.gaussian_filter(clean[i], blur_a[i], mode="nearest")
    if np.any(drift_a != 0):
        rows = np.arange(h, dtype=float) - (h - 1) / 2.0
        clean = _shift_rows(clean, drift_a[:, None] * rows[None, :])
    if dose is not None:
        dose_a = per(dose)
        mean = clean.mean(axis=(1, 2), dtype=np.float64)
        # images with dose 0 (or an empty clean image) keep their units and get no shot noise
        scale = np.where((mean > 0) & (dose_a > 0), dose_a / np.where(mean > 0, mean, 1.0), 1.0)
        clean = clean * scale.astype(np.float32)[:, None, None]
    expected = clean
    if np.any(jit_a > 0):
        shifts = gen.standard_normal((n, h)) * jit_a[:, None]
        expected = _shift_rows(clean, shifts)
    gain_a = per(row_gain)
    if np.any(gain_a > 0):
        _check_positive("row_gain_length", row_gain_length)
        expected = expected * _row_gain(gen, n, h, gain_a, float(row_gain_length))
    frames_a = np.broadcast_to(np.asarray(frames, int), (n,))
    fshift_a, glow_a = per(frame_shift), per(afterglow)
    framed = (frames_a > 1) | (fshift_a > 0)
    if framed.any() and (dose is None or np.any(per(dose)[framed] <= 0)):
        raise ValueError(
            "frames > 1 or frame_shift > 0 need Poisson counts to split into frames; give a "
            "dose > 0 (mean counts/px) or set frames=1 and frame_shift=0"
        )
    if framed.any() and frame_order not in (1, 3):
        raise ValueError(f"frame_order must be 1 (linear) or 3 (cubic), got {frame_order!r}")
    if dose is not None:
        on = per(dose) > 0
        noisy = expected.copy() if expected is clean else expected
        plain = on & ~framed
        if plain.all():
            noisy[on] = gen.poisson(np.maximum(expected[on], 0)).astype(np.float32)
        elif framed.any():
            noisy = np.array(noisy, np.float32)
            clean = np.array(clean, np.float32)
            for i in range(n):
                if framed[i]:
                    noisy[i], clean[i] = _frame_average(
                        expected[i], clean[i], gen, int(frames_a[i]), fshift_a[i], frame_order,
                        glow_a[i],
                    )  # fmt: skip
                elif plain[i]:
                    noisy[i] = gen.poisson(np.maximum(expected[i], 0)).astype(np.float32)
        elif on.any():
            noisy[on] = gen.poisson(np.maximum(expected[on], 0)).astype(np.float32)
    else:
        noisy = expected.copy() if expected is clean else expected.astype(np.float32)
    if snr is not None:
        snr_a = np.broadcast_to(np.asarray(snr, float), (n,))
        on = np.isfinite(snr_a) & (snr_a > 0)
        if on.any():
            std = clean[on].std(axis=(1, 2), dtype=np.float64) / snr_a[on]
            if snr_noise == "uniform":
                # uint16 levels: 2**16 steps of a uniform variable, std of U(-1/2, 1/2) = 1/sqrt(12)
                u = gen.integers(0, 65536, size=(int(on.sum()), h, w), dtype=np.uint16)
                step = (std * math.sqrt(12.0) / 65536.0).astype(np.float32)[:, None, None]
                offset = np.float32(32767.5) * step
                noise = u * step - offset
            else:
                noise = gen.standard_normal((int(on.sum()), h, w), dtype=np.float32)
                noise *= std.astype(np.float32)[:, None, None]
            noisy[on] += noise
    glow = (glow_a > 0) & ~framed
    if glow.any():
        noisy[glow] = _afterglow(noisy[glow], glow_a[glow])
        clean = np.array(clean, np.float32)
        clean[glow] = _afterglow(clean[glow], glow_a[glow])
    rn = per(read_noise)
    if np.any(rn > 0):
        noisy += (
            gen.standard_normal((n, h, w), dtype=np.float32) * rn.astype(np.float32)[:, None, None]
        )
    ro = per(row_offset)
    if np.any(ro > 0):
        noisy += (
            gen.standard_normal((n, h, 1), dtype=np.float32) * ro.astype(np.float32)[:, None, None]
        )
    rel = per(row_offset_rel)
    if np.any(rel > 0):
        level = rel * clean.mean(axis=(1, 2), dtype=np.float64)
        noisy += (
            gen.standard_normal((n, h, 1), dtype=np.float32)
            * level.astype(np.float32)[:, None, None]
        )
    return noisy, clean


_SNR_NOISES = ("uniform", "gaussian")


@dataclass(frozen=True)
class NoiseModel:
    """Composable STEM noise; ``None`` / 0 switches a term off.

    Applied in physical order: probe ``blur`` (Gaussian, px) and slow ``drift`` (shear, px of
    x-shift per row about the centre row) act on the clean image; the clean image is then scaled to
    ``dose`` mean counts per pixel; the scan position jitters per row (``row_jitter``, std px,
    sub-pixel, linear interpolation); Poisson shot noise at that dose; uniform (or Gaussian,
    ``snr_noise``) noise at ``snr = std(clean) / std(noise)`` per image; Gaussian ``read_noise``
    (std in counts, or in clean units without a dose); per-row additive offsets ``row_offset``
    (std, same units: the horizontal streaks of real scans).

    Correlated noise (all off by default; a model without them gives the same bytes as before
    they existed):

    * **Scan-line streaks at a realistic strength.** ``row_offset`` is in counts, so its
      visibility depends on the dose; ``row_offset_rel`` gives the per-row offset std as a
      fraction of the image's mean signal instead (real HAADF scans show line-to-line offsets of
      about 0.5–5 % of the mean: ``row_offset_rel`` 0.005–0.05). ``row_gain`` is a slow
      multiplicative gain per row (beam current, detector gain): ``1 + row_gain · g(y)`` with
      ``g`` unit-variance white noise smoothed along y over ``row_gain_length`` px, applied to
      the expected counts before the shot noise.
    * **Drift-corrected frame averages.** ``frames`` Poisson frames at ``dose / frames`` each;
      each frame sees the specimen shifted by a random sub-pixel ``(dy, dx)`` of std
      ``frame_shift`` px, is detected, shifted back by interpolation (``scipy.ndimage.shift``,
      spline order ``frame_order``, 1 = linear as most registration tools, or 3) and summed, so
      the result stays at ``dose`` mean counts/px. The interpolation correlates neighbouring
      pixels in both axes and lowers the noise's high-frequency power. Needs a dose.
    * **Detector afterglow** along the fast scan (+x): a causal exponential decay of length
      ``afterglow`` px, ``y[x] = (1 − q)·s[x] + q·y[x − 1]``, ``q = exp(−1 / afterglow)``,
      applied to the detected signal (per frame with ``frames``; the mean is kept). The lag-1
      autocorrelation of white noise along x becomes ``q``. Like probe blur it is part of the
      expected image, so the column peaks of ``clean`` trail by a fraction of ``afterglow``
      along +x.

    Read noise and row offsets are added once, to the final image.

    :meth:`apply` returns ``(noisy, clean)`` where ``clean`` is the noise-free expected image in
    the same units (blur, drift, the frames' interpolation and afterglow included; jitter, row
    gain and offsets are noise and excluded), so ``noisy − clean`` is the zero-mean noise.

    >>> noisy, clean = PAPER_NOISE.apply(np.ones((4, 4)) * np.arange(4), rng=0)
    >>> noisy.shape, noisy.dtype.name
    ((4, 4), 'float32')
    >>> model = NoiseModel(dose=16.0, frames=4, frame_shift=0.5, afterglow=1.5)
    >>> NoiseModel.from_dict(model.to_dict()) == model
    True
    """

    snr: float | None = None
    dose: float | None = None
    read_noise: float = 0.0
    row_offset: float = 0.0
    row_jitter: float = 0.0
    drift: float = 0.0
    blur: float = 0.0
    snr_noise: str = "uniform"
    frames: int = 1
    frame_shift: float = 0.0
    frame_order: int = 1
    row_offset_rel: float = 0.0
    row_gain: float = 0.0
    row_gain_length: float = ROW_GAIN_LENGTH
    afterglow: float = 0.0

    def __post_init__(self):
        if self.snr is not None and not (float(self.snr) > 0 and math.isfinite(self.snr)):
            raise ValueError(f"snr must be > 0 (or None for off), got {self.snr!r}")
        if self.dose is not None:
            _check_positive("dose", self.dose, allow_zero=True)
        names = ("read_noise", "row_offset", "row_jitter", "blur", "frame_shift")
        for name in (*names, "row_offset_rel", "row_gain", "afterglow"):
            _check_positive(name, getattr(self, name), allow_zero=True)
        _check_positive("row_gain_length", self.row_gain_length)
        if isinstance(self.frames, (bool, np.bool_)) or int(self.frames) != self.frames:
            raise ValueError(f"frames must be an int >= 1 (1 = one frame), got {self.frames!r}")
        if self.frames < 1:
            raise ValueError(f"frames must be an int >= 1 (1 = one frame), got {self.frames!r}")
        object.__setattr__(self, "frames", int(self.frames))
        if self.frame_order not in (1, 3):
            raise ValueError(
                f"frame_order must be 1 (linear) or 3 (cubic spline), got {self.frame_order!r}"
            )
        if not math.isfinite(float(self.drift)):
            raise ValueError(f"drift must be finite, got {self.drift!r}")
        if self.snr_noise not in _SNR_NOISES:
            raise ValueError(f"snr_noise must be one of {_SNR_NOISES}, got {self.snr_noise!r}")

    @property
    def is_correlated(self) -> bool:
        """True when a term correlates the noise (frames, streaks, row gain, afterglow)."""
        return bool(
            self.frames > 1
            or self.frame_shift > 0
            or self.row_offset > 0
            or self.row_offset_rel > 0
            or self.row_gain > 0
            or self.afterglow > 0
        )

    def apply(self, clean, rng: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Add noise to ``clean`` (2-D image or (n, H, W) stack; SNR and dose per image).

        Raises
        ------
        ValueError
            If ``frames > 1`` or ``frame_shift > 0`` without a dose (frames split counts).
        """
        arr = np.asarray(clean, np.float32)
        if arr.ndim not in (2, 3):
            raise ValueError(f"clean must be 2-D or a (n, H, W) stack, got shape {arr.shape}")
        stack = arr[None] if arr.ndim == 2 else arr
        noisy, out = _apply_noise(
            stack,
            as_generator(rng),
            snr=self.snr,
            snr_noise=self.snr_noise,
            dose=self.dose,
            read_noise=self.read_noise,
            row_offset=self.row_offset,
            row_jitter=self.row_jitter,
            drift=self.drift,
            blur=self.blur,
            frames=self.frames,
            frame_shift=self.frame_shift,
            frame_order=self.frame_order,
            row_offset_rel=self.row_offset_rel,
            row_gain=self.row_gain,
            row_gain_length=self.row_gain_length,
            afterglow=self.afterglow,
        )
        if arr.ndim == 2:
            return noisy[0], out[0]
        return noisy, out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> NoiseModel:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


PAPER_NOISE = NoiseModel(snr=PAPER_SNR)
"""The paper's noise: uniform, SNR 0.33 per window."""


# --------------------------------------------------------------------------------------------
# training distributions
# --------------------------------------------------------------------------------------------


def _tuple(v):
    if isinstance(v, (list, tuple)):
        return tuple(_tuple(x) for x in v)
    return v


@dataclass(frozen=True)
class TrainingDistribution:
    """What a model was trained on: lattices and noise of the training windows (JSON round trip).

    Geometry: each window draws a lattice ``kind`` (weights ``kind_weights``), 1–3 column types
    (``n_types``; strongest 1.0, others uniform in ``intensity_range``), column sigma uniform in
    ``sigma_range`` × the nearest-neighbour distance (or fixed ``sigma_px`` with ``period_px`` for
    the ``"srtio3"`` kind of the paper; lattices with sigma below ``min_sigma_px`` or nearest
    neighbour below ``min_nn_fraction`` × dominant spacing are redrawn), aspect ``b / a``
    log-uniform in ``aspect_range`` (rectangular/centred), scale such that
    :meth:`Lattice.dominant_spacing` is uniform (or log-uniform) in ``spacing_range``, rotation
    uniform in ``angle_range`` and translation uniform over one unit cell. A fraction
    ``disorder_fraction`` of windows gets local disorder: column vacancies (probability uniform in
    ``vacancy_range``), Gaussian column displacements (std uniform in ``displacement_range`` ×
    nearest neighbour) and per-column intensity variations (uniform ±``intensity_jitter``). The
    clean window is normalised to maximum 1 and then lifted onto a constant background ``bg``
    (uniform in ``background_range``): ``clean · (1 − bg) + bg``, so its maximum stays 1.

    Noise: with ``dose_range`` set, a fraction ``1 - uniform_fraction`` of windows is scaled to a
    dose log-uniform in ``dose_range`` (mean counts/px) and gets Poisson noise, Gaussian read noise
    of std uniform in ``read_noise_range`` × √dose counts, per-row offsets of std uniform in
    ``row_offset_range`` × √dose, row jitter of std uniform in ``row_jitter_range`` px and, with
    probability ``blur_probability``, probe blur of sigma uniform in ``blur_range`` × the column
    sigma. The other windows (all when ``dose_range`` is None) get ``snr_noise`` noise at an SNR
    log-uniform in ``snr_range``. ``clean`` is returned in the units of ``noisy``.

    Optional, all off by default (so :data:`PAPER` and :data:`GENERAL` draw the same bytes as
    before these fields existed), for a distribution closer to real images; the correlated noise
    of :class:`NoiseModel` goes to Poisson windows only and needs ``dose_range``:

    * drift-corrected frame averages in a fraction ``frames_probability`` of the Poisson windows:
      an integer number of frames uniform in ``frames_range``, shift std uniform in
      ``frame_shift_range`` px (linear registration);
    * detector afterglow in a fraction ``afterglow_probability``: decay length uniform in
      ``afterglow_range`` px along x;
    * scan streaks: per-row offsets of std uniform in ``row_offset_rel_range`` × the window's mean
      signal, and a slow row gain of std uniform in ``row_gain_range`` (correlation length
      ``row_gain_length`` px);
    * a fraction ``clean_fraction`` of windows with no noise at all (``noisy == clean``), beside
      the nearly clean ones that a high dose gives (``dose_range`` may reach 1000 counts/px and
      go down to 0.5);
    * dark contrast (ABF-like, as ``simulate_scene(contrast="dark")``) in a fraction
      ``dark_fraction`` of windows: ``1 − depth · window + rim · rims`` with ``depth`` uniform in
      ``dark_depth_range`` and the rim peak in ``dark_rim_range`` (instead of the background);
      with ``dark_inverted`` these windows are turned upside down after the noise (noisy and
      clean alike, ``max(clean) − x``), as ``stem_ae.denoise`` turns a dark image before the
      network: bright columns in dark rims, with the noise of the bright background.

    Weak columns come from ``intensity_range`` (e.g. ``(0.1, 1.0)``).

    >>> real = TrainingDistribution.from_dict({**GENERAL.to_dict(), "name": "real",
    ...     "dose_range": (0.5, 1000.0), "intensity_range": (0.1, 1.0),
    ...     "frames_probability": 0.3, "frames_range": (2, 10), "frame_shift_range": (0.2, 1.0),
    ...     "afterglow_probability": 0.3, "afterglow_range": (0.3, 2.0),
    ...     "row_offset_rel_range": (0.0, 0.03), "row_gain_range": (0.0, 0.02),
    ...     "clean_fraction": 0.05, "dark_fraction": 0.2, "dark_depth_range": (0.2, 0.6),
    ...     "dark_rim_range": (0.0, 0.15)})
    >>> noisy, clean = training_batch(64, rng=0, distribution=real)
    >>> noisy.shape, bool(np.isfinite(noisy).all())
    ((64, 28, 28), True)
    """

    name: str = "custom"
    kinds: tuple[str, ...] = ("srtio3",)
    kind_weights: tuple[float, ...] | None = None
    spacing_range: tuple[float, float] = (6.0, 10.0)
    spacing_log_uniform: bool = False
    period_px: float | None = None
    sigma_px: float | None = None
    n_types: tuple[int, int] = (1, 3)
    intensity_range: tuple[float, float] = (0.2, 1.0)
    sigma_range: tuple[float, float] = (0.1, 0.22)
    aspect_range: tuple[float, float] = (0.5, 2.0)
    min_sigma_px: float = 0.5
    min_nn_fraction: float = 0.4
    angle_range: tuple[float, float] = (0.0, 360.0)
    disorder_fraction: float = 0.0
    vacancy_range: tuple[float, float] = (0.0, 0.05)
    displacement_range: tuple[float, float] = (0.0, 0.08)
    intensity_jitter: float = 0.1
    background_range: tuple[float, float] = (0.0, 0.0)
    snr_range: tuple[float, float] = (PAPER_SNR, PAPER_SNR)
    snr_noise: str = "uniform"
    dose_range: tuple[float, float] | None = None
    uniform_fraction: float = 0.0
    read_noise_range: tuple[float, float] = (0.0, 0.0)
    row_offset_range: tuple[float, float] = (0.0, 0.0)
    row_jitter_range: tuple[float, float] = (0.0, 0.0)
    blur_probability: float = 0.0
    blur_range: tuple[float, float] = (0.0, 0.0)
    frames_probability: float = 0.0
    frames_range: tuple[int, int] = (1, 1)
    frame_shift_range: tuple[float, float] = (0.0, 0.0)
    afterglow_probability: float = 0.0
    afterglow_range: tuple[float, float] = (0.0, 0.0)
    row_offset_rel_range: tuple[float, float] = (0.0, 0.0)
    row_gain_range: tuple[float, float] = (0.0, 0.0)
    row_gain_length: float = ROW_GAIN_LENGTH
    clean_fraction: float = 0.0
    dark_fraction: float = 0.0
    dark_depth_range: tuple[float, float] = (DARK_DEPTH, DARK_DEPTH)
    dark_rim_range: tuple[float, float] = (DARK_RIM, DARK_RIM)
    dark_inverted: bool = False

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _tuple(getattr(self, f.name)))
        for k in self.kinds:
            if k not in KINDS:
                raise ValueError(f"unknown lattice kind {k!r}; accepted: {', '.join(KINDS)}")
        if not self.kinds:
            raise ValueError("kinds must name at least one lattice kind")
        if self.kind_weights is not None and (
            len(self.kind_weights) != len(self.kinds)
            or min(self.kind_weights) < 0
            or sum(self.kind_weights) <= 0
        ):
            raise ValueError(f"kind_weights must be {len(self.kinds)} weights >= 0, got "
                             f"{self.kind_weights!r}")  # fmt: skip
        _check_range("spacing_range", self.spacing_range, MIN_PERIOD)
        if self.period_px is not None and not float(self.period_px) >= MIN_PERIOD:
            raise ValueError(f"period must be >= {MIN_PERIOD} px, got {self.period_px!r}")
        if self.sigma_px is not None:
            _check_positive("sigma_px", self.sigma_px)
        lo_t, hi_t = self.n_types
        if not 1 <= lo_t <= hi_t <= 3:
            raise ValueError(f"n_types must satisfy 1 <= low <= high <= 3, got {self.n_types!r}")
        _check_range("intensity_range", self.intensity_range, 0.0, 1.0)
        _check_range("sigma_range", self.sigma_range, 1e-3, 1.0)
        _check_range("aspect_range", self.aspect_range, 1e-2)
        _check_range("angle_range", self.angle_range, -math.inf)
        fractions = ("disorder_fraction", "uniform_fraction", "blur_probability")
        more = ("frames_probability", "afterglow_probability", "clean_fraction", "dark_fraction")
        for name in (*fractions, *more):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        lo_f, hi_f = self.frames_range
        if int(lo_f) != lo_f or int(hi_f) != hi_f or not 1 <= lo_f <= hi_f:
            raise ValueError(
                f"frames_range must be ints with 1 <= low <= high, got {self.frames_range!r}"
            )
        for name in ("frame_shift_range", "afterglow_range", "row_offset_rel_range"):
            _check_range(name, getattr(self, name), 0.0)
        _check_range("row_gain_range", self.row_gain_range, 0.0)
        _check_positive("row_gain_length", self.row_gain_length)
        _check_range("dark_depth_range", self.dark_depth_range, 1e-3, 1.0)
        _check_range("dark_rim_range", self.dark_rim_range, 0.0)
        if not isinstance(self.dark_inverted, (bool, np.bool_)):
            raise ValueError(f"dark_inverted must be True or False, got {self.dark_inverted!r}")
        object.__setattr__(self, "dark_inverted", bool(self.dark_inverted))
        if self.dose_range is None:
            correlated = ("frames_probability", "afterglow_probability")
            on = [name for name in correlated if getattr(self, name) > 0]
            on += [name for name in ("row_offset_rel_range", "row_gain_range")
                   if getattr(self, name) != (0.0, 0.0)]  # fmt: skip
            if on:
                raise ValueError(
                    f"{', '.join(on)} need Poisson windows: set dose_range (counts/px) too"
                )
        _check_range("vacancy_range", self.vacancy_range, 0.0, 1.0)
        _check_range("displacement_range", self.displacement_range, 0.0)
        _check_range("background_range", self.background_range, 0.0)
        if not 0.0 <= self.intensity_jitter < 1.0:
            raise ValueError(f"intensity_jitter must be in [0, 1), got {self.intensity_jitter!r}")
        lo, _ = self.snr_range
        if not lo > 0:
            raise ValueError(f"snr must be > 0, got snr_range={self.snr_range!r}")
        _check_range("snr_range", self.snr_range, 0.0)
        if self.snr_noise not in _SNR_NOISES:
            raise ValueError(f"snr_noise must be one of {_SNR_NOISES}, got {self.snr_noise!r}")
        if self.dose_range is not None:
            if min(self.dose_range) <= 0:
                raise ValueError(f"dose must be > 0 counts/px, got dose_range={self.dose_range!r}")
            _check_range("dose_range", self.dose_range, 0.0)
        for name in ("read_noise_range", "row_offset_range", "row_jitter_range", "blur_range"):
            _check_range(name, getattr(self, name), 0.0)

    @property
    def is_paper(self) -> bool:
        """True for the fixed-geometry SrTiO3 recipe that has the fast rendering path."""
        return (
            self.kinds == ("srtio3",)
            and self.period_px is not None
            and self.sigma_px is not None
            and self.disorder_fraction == 0.0
            and self.dose_range is None
            and self.background_range == (0.0, 0.0)
            and self.clean_fraction == 0.0
            and self.dark_fraction == 0.0
        )

    def to_dict(self) -> dict:
        """JSON-ready dictionary (tuples become lists)."""

        def conv(v):
            return [conv(x) for x in v] if isinstance(v, tuple) else v

        return {f.name: conv(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping) -> TrainingDistribution:
        """Inverse of :meth:`to_dict`; unknown keys (e.g. ``n_samples``, ``epochs``) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


_PAPER_SPACING = srtio3_lattice().dominant_spacing()

PAPER = TrainingDistribution(
    name="paper",
    kinds=("srtio3",),
    spacing_range=(_PAPER_SPACING, _PAPER_SPACING),
    period_px=PAPER_PERIOD_PX,
    sigma_px=PAPER_SIGMA_PX,
    n_types=(2, 2),
    intensity_range=(PAPER_TIO_INTENSITY, PAPER_TIO_INTENSITY),
    angle_range=(0.0, PAPER_MAX_ANGLE),
    snr_range=(PAPER_SNR, PAPER_SNR),
)
"""The paper's recipe: SrTiO3 [001], period 9 px, sigma 1 px, 0–45°, uniform noise at SNR 0.33."""

GENERAL = TrainingDistribution(
    name="general",
    kinds=("square", "rectangular", "centred", "hexagonal"),
    kind_weights=(0.3, 0.2, 0.2, 0.3),
    spacing_range=(6.0, 10.0),
    spacing_log_uniform=True,
    n_types=(1, 3),
    intensity_range=(0.2, 1.0),
    sigma_range=(0.1, 0.22),
    aspect_range=(0.5, 2.0),
    angle_range=(0.0, 360.0),
    disorder_fraction=0.3,
    vacancy_range=(0.0, 0.05),
    displacement_range=(0.0, 0.08),
    intensity_jitter=0.1,
    background_range=(0.0, 0.3),
    snr_range=(0.25, 1.0),
    dose_range=(1.0, 100.0),
    uniform_fraction=0.1,
    read_noise_range=(0.0, 0.5),
    row_offset_range=(0.0, 0.3),
    row_jitter_range=(0.0, 0.3),
    blur_probability=0.2,
    blur_range=(0.2, 0.7),
)
"""Broad recipe: square/rectangular/centred/hexagonal lattices, 1–3 column types, local disorder,
Poisson + read + scan-line noise at 1–100 counts/px (10 % paper-like uniform-noise windows)."""

REALISTIC = TrainingDistribution.from_dict(
    {
        **GENERAL.to_dict(),
        "name": "realistic",
        "intensity_range": (0.1, 1.0),
        "vacancy_range": (0.0, 0.1),
        "dose_range": (0.5, 1000.0),
        "uniform_fraction": 0.05,
        "frames_probability": 0.3,
        "frames_range": (2, 10),
        "frame_shift_range": (0.2, 1.0),
        "afterglow_probability": 0.3,
        "afterglow_range": (0.3, 2.0),
        "row_offset_rel_range": (0.0, 0.03),
        "row_gain_range": (0.0, 0.02),
        "clean_fraction": 0.05,
    }
)
"""The shipped ``general_conv`` model's recipe: :data:`GENERAL` plus what real images have —
weak columns down to 0.1 of the strongest, up to 10 % vacancies, doses 0.5–1000 counts/px and
5 % noise-free windows (so that clean data pass through), drift-corrected frame averages,
afterglow and scan streaks (the correlated noise of :class:`NoiseModel`). Dark contrast is left
out: ``denoise`` inverts dark-column images before the network."""

REALISTIC_DARK = dataclasses.replace(
    REALISTIC,
    name="realistic_dark",
    dark_fraction=0.2,
    dark_inverted=True,
    dark_depth_range=(0.2, 0.6),
    dark_rim_range=(0.0, 0.15),
)
""":data:`REALISTIC` with a fifth of the windows ABF-like and turned upside down after the noise
(``dark_inverted``): what ``denoise`` feeds the network for a dark-column image, bright columns in
dark rims with the noise of the bright background. Column depth 0.2–0.6 of the background, rims
up to 0.15."""

_DISTRIBUTIONS = {
    "paper": PAPER,
    "general": GENERAL,
    "realistic": REALISTIC,
    "realistic_dark": REALISTIC_DARK,
}


def _resolve_distribution(distribution) -> TrainingDistribution:
    if isinstance(distribution, TrainingDistribution):
        return distribution
    if isinstance(distribution, str) and distribution.lower() in _DISTRIBUTIONS:
        return _DISTRIBUTIONS[distribution.lower()]
    if isinstance(distribution, Mapping):
        return TrainingDistribution.from_dict(distribution)
    names = ", ".join(repr(name) for name in _DISTRIBUTIONS)
    raise ValueError(
        f"unknown training distribution {distribution!r}; accepted: {names}, a "
        "TrainingDistribution or its to_dict()"
    )


def _log_uniform(gen, lo, hi, size):
    return np.exp(gen.uniform(math.log(lo), math.log(hi), size=size))


def training_batch(
    n: int,
    *,
    rng: Any = None,
    window: int = WINDOW,
    distribution: TrainingDistribution | str = PAPER,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` training windows: ``(noisy, clean)``, float32, shape ``(n, window, window)``.

    With the defaults this is the paper's recipe (:data:`PAPER`): SrTiO3 [001] windows, randomly
    translated and rotated (0–45°), clean normalised to maximum 1, uniform noise at SNR 0.33.
    ``distribution`` may be :data:`PAPER`, :data:`GENERAL` (or their names) or any
    :class:`TrainingDistribution`. The same ``rng`` seed gives the same bytes.

    >>> noisy, clean = training_batch(4, rng=0)
    >>> noisy.shape, clean.dtype.name, float(clean.max(axis=(1, 2)).min())
    ((4, 28, 28), 'float32', 1.0)
    """
    if int(n) != n or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    n = int(n)
    window = _check_window(window)
    dist = _resolve_distribution(distribution)
    gen = as_generator(rng)
    noisy = np.empty((n, window, window), np.float32)
    clean = np.empty((n, window, window), np.float32)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        if dist.is_paper:
            _paper_chunk(stop - start, gen, window, dist, noisy[start:stop], clean[start:stop])
        else:
            nz, cl = _general_chunk(stop - start, gen, window, dist)
            noisy[start:stop] = nz
            clean[start:stop] = cl
    return noisy, clean


class _FixedLatticeRenderer:
    """Fast renderer for windows of one fixed lattice at random rotation and translation.

    Precomputes, per bin of (angle, fractional translation), the list of columns that can touch
    the window (conservatively), and tables of Gaussian rows sampled every 1/1024 px with each
    column type's intensity folded in, plus each row's sum, sum of squares and maximum. A window
    then costs two row gathers and one small matrix product; its peak, mean and standard deviation
    follow from the row tables (exact up to the overlap of neighbouring columns, which must be
    ``< 1e-6`` of the peak: nearest neighbour >= 6 sigma, else they are measured on the image).
    """

    def __init__(self, lat: Lattice, window: int, angle_range, n_angle=None, n_trans=8):
        self.lat, self.window = lat, window
        lo, hi = (float(v) for v in angle_range)
        self.angle_lo, self.angle_span = lo, max(hi - lo, 1e-12)
        self.n_angle = n_angle or max(1, math.ceil((hi - lo) / 1.0))
        self.n_trans = n_trans
        half = (window - 1) / 2.0
        lim = half + GAUSS_CUTOFF * lat.sigma
        # rows are clipped at ``reach`` px outside the window, where the Gaussian is exactly 0
        self.reach = reach = math.ceil(math.sqrt(-2 * _LOG_TINY) * lat.sigma) + 1
        self.exact_stats = lat.nearest_neighbour() >= 6 * lat.sigma
        # --- candidate columns per bin
        basis = np.array(lat.basis)
        m = math.ceil(lim * math.sqrt(2) * np.linalg.norm(lat.reciprocal(), axis=1).max()) + 2
        ii, jj = np.meshgrid(np.arange(-m, m + 1), np.arange(-m, m + 1), indexing="ij")
        ij = np.stack([ii.ravel(), jj.ravel()], -1).astype(float)
        uv = (ij[:, None, :] + basis[None, :, :2]).reshape(-1, 2)
        types = np.tile(lat.column_types(), len(ij))
        dth = math.radians(self.angle_span / self.n_angle)
        cell = lat.vectors()
        tslack = 0.5 * (np.linalg.norm(cell[0]) + np.linalg.norm(cell[1])) / n_trans
        lists = []
        for ia in range(self.n_angle):
            vec = cell @ _rotation(lo + (ia + 0.5) * self.angle_span / self.n_angle)
            for iu in range(n_trans):
                for iv in range(n_trans):
                    pos = (uv + (np.array([iu, iv]) + 0.5) / n_trans) @ vec
                    slack = np.linalg.norm(pos, axis=1) * 0.5 * dth + tslack + 1e-6
                    keep = (np.abs(pos) <= (lim + slack)[:, None]).all(1)
                    lists.append(np.flatnonzero(keep))
        self.kmax = k = max(len(x) for x in lists)
        # padding columns sit far outside every window, where the table rows are exactly zero
        self.cand_uv = np.full((len(lists), k, 2), 1e4, np.float32)
        self.cand_type = np.zeros((len(lists), k), np.intp)
        for b, idx in enumerate(lists):
            self.cand_uv[b, : len(idx)] = uv[idx]
            self.cand_type[b, : len(idx)] = types[idx]
        # --- tables of Gaussian rows: row (q * M + start) for sub-pixel step q and start
        # table[q, s] = g(s - s0 - q / steps): offsets p - c from -(w - 1 + reach) to w - 1 + reach
        self.s0 = s0 = window - 1 + reach
        q = np.arange(_TABLE_STEPS)[:, None] / _TABLE_STEPS
        s = np.arange(2 * s0 + 2)[None, :] - s0
        table = np.exp(-((s - q) ** 2) / (2 * lat.sigma**2))
        table[table < _TINY] = 0.0  # exact zeros instead of denormals (20× slower matmul)
        rows = np.lib.stride_tricks.sliding_window_view(table, window, axis=1)
        self.m_starts = rows.shape[1]
        rows = rows.reshape(-1, window)
        self.levels = np.array(sorted({site[2] for site in lat.basis}, reverse=True))
        self.block = rows.shape[0]
        self.gx_rows = rows.astype(np.float32)
        self.gy_rows = np.concatenate([rows * lv for lv in self.levels]).astype(np.float32)
        # per row: max, sum, sum of squares (for the analytic peak, mean and std of a window)
        self.row_stats = np.stack([rows.max(1), rows.sum(1), (rows * rows).sum(1)], -1)
        self.lat_vec = cell

    def _row_index(self, c):
        """Flat row index of the Gaussian rows for centres ``c`` (window px)."""
        reach = self.reach
        np.clip(c, -reach, self.window - 1 + reach, out=c)
        c *= np.float32(_TABLE_STEPS)
        k = np.rint(c).astype(np.intp)
        fl = k >> _TABLE_BITS  # floor(c)
        k &= _TABLE_STEPS - 1  # sub-pixel step
        k *= self.m_starts
        k += self.s0  # row start = s0 - floor(c)
        k -= fl
        return k

    def render(self, gen, n, out):
        """Draw ``n`` windows into ``out`` (n, w, w), normalised to maximum 1; return std(clean)."""
        lo, span = self.angle_lo, self.angle_span
        angle = lo + span * gen.random(n)
        trans = gen.random((n, 2))
        ia = np.minimum(((angle - lo) * (self.n_angle / span)).astype(np.intp), self.n_angle - 1)
        it = np.minimum((trans * self.n_trans).astype(np.intp), self.n_trans - 1)
        b = (ia * self.n_trans + it[:, 0]) * self.n_trans + it[:, 1]
        uv = self.cand_uv[b]  # (n, K, 2)
        uv += trans.astype(np.float32)[:, None, :]
        vec = (self.lat_vec @ _rotation(angle)).astype(np.float32)  # (n, 2, 2)
        c = np.float32((self.window - 1) / 2.0)
        u, v = uv[..., 0], uv[..., 1]
        cy = u * vec[:, 0, 0, None]
        cy += v * vec[:, 1, 0, None]
        cy += c
        cx = u * vec[:, 0, 1, None]
        cx += v * vec[:, 1, 1, None]
        cx += c
        iy = self._row_index(cy)
        ix = self._row_index(cx)
        typ = self.cand_type[b]
        gy = np.take(self.gy_rows, iy + typ * self.block, axis=0)  # (n, K, w)
        gx = np.take(self.gx_rows, ix, axis=0)
        np.matmul(gy.transpose(0, 2, 1), gx, out=out)
        npx = self.window * self.window
        if self.exact_stats:
            inten = self.levels[typ]
            prod = np.take(self.row_stats, iy, axis=0)
            prod *= np.take(self.row_stats, ix, axis=0)  # (n, K, 3)
            peak = (inten * prod[..., 0]).max(1)
            mean = (inten * prod[..., 1]).sum(1) / npx
            msq = (inten * inten * prod[..., 2]).sum(1) / npx
        else:
            flat = out.reshape(n, npx)
            peak = flat.max(1).astype(float)
            mean = flat.sum(1, dtype=np.float64) / npx
            msq = np.einsum("ni,ni->n", flat, flat, dtype=np.float64) / npx
        out *= (1.0 / peak).astype(np.float32)[:, None, None]
        return np.sqrt(np.maximum(msq - mean * mean, 0.0)) / peak


_RENDERERS: dict = {}


def _fixed_renderer(lat, window, angle_range) -> _FixedLatticeRenderer:
    key = (lat, window, tuple(angle_range))
    if key not in _RENDERERS:
        if len(_RENDERERS) > 4:
            _RENDERERS.clear()
        _RENDERERS[key] = _FixedLatticeRenderer(lat, window, angle_range)
    return _RENDERERS[key]


# discrete uniform noise: int16 from the raw 64-bit output of the bit generator (4 per word),
# 2**16 levels, std sqrt((2**32 - 1) / 12); its mean, -1/2 level, is 3e-5 of its std
_I16_STD = math.sqrt((2.0**32 - 1) / 12.0)


def _paper_chunk(n, gen, window, dist, noisy, clean):
    """Fast path: one fixed SrTiO3 lattice, table Gaussians, uniform noise; fills the outputs."""
    lat = srtio3_lattice(dist.period_px, dist.sigma_px)
    std = _fixed_renderer(lat, window, dist.angle_range).render(gen, n, clean)
    lo, hi = dist.snr_range
    std /= lo if lo == hi else _log_uniform(gen, lo, hi, size=n)
    if dist.snr_noise == "uniform":
        npx = n * window * window
        raw = gen.bit_generator.random_raw(-(-npx // 4)).view("<i2")[:npx]
        np.multiply(
            raw.reshape(n, window, window),
            (std / _I16_STD).astype(np.float32)[:, None, None],
            out=noisy,
        )
    else:
        gen.standard_normal(out=noisy, dtype=np.float32)
        noisy *= std.astype(np.float32)[:, None, None]
    noisy += clean


def _general_chunk(n, gen, window, dist):
    """Any distribution: per-window lattices, disorder, physical noise."""
    base_vec, uv, basis_i, sigma, nn = _draw_structures(
        n,
        gen,
        kinds=dist.kinds,
        kind_weights=dist.kind_weights,
        n_types=dist.n_types,
        intensity_range=dist.intensity_range,
        sigma_range=dist.sigma_range,
        aspect_range=dist.aspect_range,
        spacing_range=dist.spacing_range,
        log_uniform=dist.spacing_log_uniform,
        sigma_px=dist.sigma_px,
        period_px=dist.period_px,
        min_sigma_px=dist.min_sigma_px,
        min_nn_fraction=dist.min_nn_fraction,
    )
    angle = gen.uniform(*dist.angle_range, size=n)
    trans = gen.random((n, 2))
    vec = np.einsum("nij,njk->nik", base_vec, _rotation(angle))
    # probe blur widens every Gaussian column exactly: sigma' = sigma sqrt(1 + beta^2)
    use_dose = dist.dose_range is not None
    blur = np.zeros(n)
    if use_dose and dist.blur_probability > 0:
        on = gen.random(n) < dist.blur_probability
        blur = np.where(on, gen.uniform(*dist.blur_range, size=n), 0.0) * sigma
    sig_eff = np.sqrt(sigma**2 + blur**2)
    half = (window - 1) / 2.0
    disp_std = np.zeros(n)
    disorder = gen.random(n) < dist.disorder_fraction
    disp_std[disorder] = gen.uniform(*dist.displacement_range, size=int(disorder.sum()))
    disp_std *= nn
    margin = GAUSS_CUTOFF * sig_eff + 3 * disp_std
    pos, inten = _columns_in_windows(vec, uv, basis_i, trans, half, margin)
    if disorder.any():
        k = pos.shape[1]
        d = disorder
        pos[d] += (gen.standard_normal((int(d.sum()), k, 2)) * disp_std[d, None, None]).astype(
            np.float32
        )
        jit = dist.intensity_jitter
        inten[d] *= gen.uniform(1 - jit, 1 + jit, size=(int(d.sum()), k)).astype(np.float32)
        vac = gen.uniform(*dist.vacancy_range, size=int(d.sum()))
        keep = gen.random((int(d.sum()), k)) >= vac[:, None]
        inten[d] *= keep
    clean = _render_windows(pos, inten, sig_eff, window)
    peak = clean.max(axis=(1, 2), keepdims=True)
    clean /= np.where(peak > 0, peak, 1.0)
    bright = clean
    bg = gen.uniform(*dist.background_range, size=n).astype(np.float32)
    clean = clean * (1 - bg[:, None, None]) + bg[:, None, None]
    dark = np.zeros(0, dtype=int)
    if dist.dark_fraction > 0:
        clean, dark = _dark_windows(clean, bright, pos, inten, sig_eff, peak, window, gen, dist)
    snr = _log_uniform(gen, *dist.snr_range, size=n)
    if not use_dose:
        noisy, clean = _apply_noise(clean, gen, snr=snr, snr_noise=dist.snr_noise)
        noisy, clean = _keep_clean_windows(noisy, clean, gen, dist.clean_fraction)
        return _invert_dark(noisy, clean, dark if dist.dark_inverted else dark[:0])
    uniform = gen.random(n) < dist.uniform_fraction
    dose = _log_uniform(gen, *dist.dose_range, size=n)
    root = np.sqrt(dose)
    read = gen.uniform(*dist.read_noise_range, size=n) * root
    offs = gen.uniform(*dist.row_offset_range, size=n) * root
    jitter = gen.uniform(*dist.row_jitter_range, size=n)
    dose = np.where(uniform, 0.0, dose)
    correlated = _draw_correlated_noise(n, gen, dist, uniform)
    noisy, clean = _apply_noise(
        clean,
        gen,
        snr=np.where(uniform, snr, np.nan),
        snr_noise=dist.snr_noise,
        dose=dose,
        read_noise=np.where(uniform, 0.0, read),
        row_offset=np.where(uniform, 0.0, offs),
        row_jitter=np.where(uniform, 0.0, jitter),
        **correlated,
    )
    noisy, clean = _keep_clean_windows(noisy, clean, gen, dist.clean_fraction)
    return _invert_dark(noisy, clean, dark if dist.dark_inverted else dark[:0])


def _invert_dark(noisy, clean, dark):
    """Windows ``dark`` turned upside down, noisy and clean alike: ``max(clean) − x``."""
    if len(dark):
        top = clean[dark].max(axis=(1, 2), keepdims=True)
        noisy[dark] = top - noisy[dark]
        clean[dark] = top - clean[dark]
    return noisy, clean


def _draw_correlated_noise(n, gen, dist, uniform) -> dict:
    """Per-window correlated-noise parameters of ``dist`` (none drawn when all are off)."""
    out: dict[str, Any] = {}
    dosed = ~uniform
    if dist.frames_probability > 0:
        on = (gen.random(n) < dist.frames_probability) & dosed
        lo, hi = dist.frames_range
        out["frames"] = np.where(on, gen.integers(lo, hi + 1, size=n), 1)
        out["frame_shift"] = np.where(on, gen.uniform(*dist.frame_shift_range, size=n), 0.0)
    if dist.afterglow_probability > 0:
        on = (gen.random(n) < dist.afterglow_probability) & dosed
        out["afterglow"] = np.where(on, gen.uniform(*dist.afterglow_range, size=n), 0.0)
    if dist.row_offset_rel_range != (0.0, 0.0):
        out["row_offset_rel"] = np.where(dosed, gen.uniform(*dist.row_offset_rel_range, size=n), 0)
    if dist.row_gain_range != (0.0, 0.0):
        out["row_gain"] = np.where(dosed, gen.uniform(*dist.row_gain_range, size=n), 0.0)
        out["row_gain_length"] = dist.row_gain_length
    return out


def _dark_windows(clean, bright, pos, inten, sigma, peak, window, gen, dist):
    """Turn a fraction ``dist.dark_fraction`` of the windows into dark contrast (ABF-like).

    ``1 − depth · bright + rim · rims``: ``bright`` the window normalised to peak 1 (before the
    background), ``rims`` the columns' bright rims (as :func:`simulate_scene`) on the same scale,
    depth and rim uniform in ``dark_depth_range`` and ``dark_rim_range``; clipped at 0. Returns
    the windows and the indices of the dark ones.
    """
    dark = np.flatnonzero(gen.random(len(clean)) < dist.dark_fraction)
    if not len(dark):
        return clean, dark
    depth = gen.uniform(*dist.dark_depth_range, size=len(dark)).astype(np.float32)
    rim = gen.uniform(*dist.dark_rim_range, size=len(dark)).astype(np.float32)
    rims = _render_window_rims(pos[dark], inten[dark], DARK_RIM_SCALE * sigma[dark], window)
    rims /= np.where(peak[dark] > 0, peak[dark], 1.0)
    out = clean.copy()
    out[dark] = 1.0 - depth[:, None, None] * bright[dark] + rim[:, None, None] * rims
    np.maximum(out, 0.0, out=out)
    return out, dark


def _render_window_rims(pos, inten, sigma, window):
    """Rims ``e·(ρ²/2s²)·exp(−ρ²/2s²)`` per column, (n, K, 2) positions -> (n, window, window)."""
    c = np.float32((window - 1) / 2.0)
    p = np.arange(window, dtype=np.float32)
    cy, cx = pos[..., 0] + c, pos[..., 1] + c
    s2 = (2 * np.asarray(sigma, np.float32) ** 2)[:, None, None]
    ty = (p[None, None, :] - cy[..., None]) ** 2 / s2
    tx = (p[None, None, :] - cx[..., None]) ** 2 / s2
    gy = np.exp(-ty) * (np.float32(math.e) * inten[..., None])
    gx = np.exp(-tx)
    return np.matmul((ty * gy).transpose(0, 2, 1), gx) + np.matmul(gy.transpose(0, 2, 1), tx * gx)


def _keep_clean_windows(noisy, clean, gen, fraction):
    """A fraction of windows without any noise (the network learns to pass clean data)."""
    if fraction > 0:
        keep = gen.random(len(noisy)) < fraction
        noisy[keep] = clean[keep]
    return noisy, clean


# --------------------------------------------------------------------------------------------
# scenes with ground truth
# --------------------------------------------------------------------------------------------

SCENE_LATTICES = {
    # name: (a Å, b Å, gamma, basis ((u, v, intensity), ...), description)
    "srtio3": (
        SRTIO3_CELL,
        SRTIO3_CELL,
        90.0,
        ((0.0, 0.0, 1.0), (0.5, 0.5, PAPER_TIO_INTENSITY)),
        "SrTiO3 [001]: Sr (1.0) at the corners, Ti-O (0.7) at the centre; a = cell",
    ),
    "rectangular": (
        SRTIO3_CELL,
        SRTIO3_CELL * math.sqrt(2.0),
        90.0,
        ((0.0, 0.0, 1.0), (0.5, 0.5, 0.55)),
        "SrTiO3 [110]-like: a = cell along x, b = cell·√2 (5.52 Å); heavy (1.0) at the corners, "
        "light (0.55) at the centre",
    ),
    "hexagonal": (
        3.2,
        3.2,
        120.0,
        ((0.0, 0.0, 1.0), (1 / 3, 2 / 3, 1.0)),
        "hcp [0001]-like projection: a = 3.2 Å, honeycomb of two equal columns (A and B layers)",
    ),
}
"""Lattice presets of :func:`simulate_scene` (lengths in Å; ``cell`` rescales ``"srtio3"`` and
``"rectangular"``)."""

DEFECTS = ("rp", "vacancies", "strain")
"""Defects understood by :func:`simulate_scene`."""

DEFAULT_STRAIN = 0.02
"""Amplitude of the smooth strain field of the ``"strain"`` defect when ``strain`` is not given."""
RP_ELONGATION = 0.08
"""Peak elongation of the cells next to a Ruddlesden–Popper fault (perpendicular to the plane)."""
RP_DECAY_CELLS = 1.0
"""Decay length of the RP elongation, in unit cells."""


@dataclass(frozen=True, eq=False)
class Scene:
    """A simulated image with its ground truth.

    ``clean`` is the expected image (mean counts per pixel when a dose is given), ``noisy`` one
    noisy realisation, ``columns`` the true column centres ``(y, x)`` px (those inside the image;
    they sit on the peaks of ``clean``), ``column_types`` their type (0 strongest), ``lattice`` the
    unstrained lattice in px (before rotation), ``metadata`` the defects and their parameters.

    ``metadata`` keys: ``defect`` (list or None), ``lattice`` (preset name), ``pixel_size``,
    ``angle``, ``sigma_px``, ``background``, ``noise`` (``NoiseModel.to_dict()``), ``contrast``
    (``"bright"`` or ``"dark"``; with ``"dark"`` also ``dark``: ``depth``, ``rim``, ``rim_scale``),
    ``reference_columns`` (the columns before the strain field is applied, same order as
    ``columns``); with ``"rp"``: ``rp`` (``fault_point``, ``fault_normal``, ``fault_direction``,
    ``fault_x`` (None unless the plane is vertical), shifts, and ``elongation`` with its
    ``amplitude``, ``decay_length_px`` and profile formula: see :func:`rp_elongation_profile`);
    with ``"vacancies"``: ``vacancies`` (``fraction``, removed ``positions`` and ``types``); with a
    strain field: ``strain`` (parameters for :func:`strain_displacement`/:func:`strain_tensor`).
    Scenes of :func:`simulate_mixed_scene` add ``regions`` (the true region of every pixel and a
    crystal mask), ``column_region``, ``amorphous``, ``grain`` and ``vacuum_level``.
    """

    clean: np.ndarray
    noisy: np.ndarray
    columns: np.ndarray
    column_types: np.ndarray
    pixel_size: float
    lattice: Lattice
    metadata: dict


def _scene_lattice(lattice, pixel_size, cell, sigma_angstrom):
    if isinstance(lattice, Lattice):
        return lattice, "custom"
    if not isinstance(lattice, str) or lattice not in SCENE_LATTICES:
        raise ValueError(
            f"unknown lattice {lattice!r}; accepted: {', '.join(SCENE_LATTICES)} or a Lattice"
        )
    a, b, gamma, basis, _ = SCENE_LATTICES[lattice]
    if lattice in ("srtio3", "rectangular"):
        a, b = a * cell / SRTIO3_CELL, b * cell / SRTIO3_CELL
    lat = Lattice(a / pixel_size, b / pixel_size, gamma, basis, sigma_angstrom / pixel_size)
    return lat, lattice


def _parse_defects(defect) -> tuple[str, ...]:
    if defect is None:
        return ()
    items = (defect,) if isinstance(defect, str) else tuple(defect)
    for d in items:
        if d not in DEFECTS:
            raise ValueError(
                f"unknown defect {d!r}; accepted: None, {', '.join(DEFECTS)} or a list"
            )
    return items


def rp_elongation_profile(distance, amplitude=RP_ELONGATION, decay_length=1.0):
    """Local elongation (strain perpendicular to an RP fault) at signed ``distance`` from it.

    ``amplitude * exp(-|distance| / decay_length)``; the displacement it integrates to is
    :func:`rp_displacement`.
    """
    return amplitude * np.exp(-np.abs(np.asarray(distance, float)) / decay_length)


def rp_displacement(distance, amplitude=RP_ELONGATION, decay_length=1.0):
    """Displacement (same units as ``distance``) away from the fault plane of a point at signed
    ``distance``: ``sign(d) · amplitude · L · (1 − exp(−|d| / L))``."""
    d = np.asarray(distance, float)
    return np.sign(d) * amplitude * decay_length * (1.0 - np.exp(-np.abs(d) / decay_length))


def strain_displacement(y, x, params: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """Displacement ``(dy, dx)`` px of the smooth strain field recorded in
    ``scene.metadata["strain"]`` at undisplaced positions ``(y, x)`` px.

    ``dy = A·Ly/2π·sin(2πy/Ly + φy)``, ``dx = A·Lx/2π·sin(2πx/Lx + φx)``, so the strain is
    ``e_yy = A·cos(2πy/Ly + φy)``, ``e_xx = A·cos(2πx/Lx + φx)``, ``e_xy = 0``, |e| <= A.
    """
    amp = params["amplitude"]
    ly, lx = params["wavelength_px"]
    py, px = params["phase"]
    y, x = np.asarray(y, float), np.asarray(x, float)
    dy = amp * ly / (2 * np.pi) * np.sin(2 * np.pi * y / ly + py)
    dx = amp * lx / (2 * np.pi) * np.sin(2 * np.pi * x / lx + px)
    return dy, dx


def strain_tensor(y, x, params: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """Strain ``(e_yy, e_xx)`` of the field in ``scene.metadata["strain"]`` at ``(y, x)`` px."""
    amp = params["amplitude"]
    ly, lx = params["wavelength_px"]
    py, px = params["phase"]
    y, x = np.asarray(y, float), np.asarray(x, float)
    return amp * np.cos(2 * np.pi * y / ly + py), amp * np.cos(2 * np.pi * x / lx + px)


@dataclass
class _SceneColumns:
    """Columns of a scene while it is being built: fractional and image coordinates, px."""

    fu: np.ndarray  # (N,) fractional coordinate along a1
    fv: np.ndarray  # (N,) fractional coordinate along a2
    inten: np.ndarray  # (N,) peak heights
    types: np.ndarray  # (N,) column types, 0 strongest
    origin: np.ndarray  # (2,) image position of the site (0, 0), (y, x) px
    vec: np.ndarray  # (2, 2) rotated lattice vectors, rows a1, a2, (y, x) px
    centre: np.ndarray  # (2,) image centre, (y, x) px
    radius: float  # columns further than this from the image (px) are not rendered
    pos: np.ndarray | None = None  # (N, 2) image positions, (y, x) px
    reference: np.ndarray | None = None  # (N, 2) positions before strain (and with drift)


def _scene_shape(shape) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (height, width), got {shape!r}") from None
    if h < MIN_WINDOW or w < MIN_WINDOW:
        raise ValueError(f"shape must be at least {MIN_WINDOW}×{MIN_WINDOW} px, got {shape!r}")
    return h, w


def _scene_noise(noise, dose) -> NoiseModel:
    """The scene's noise model: ``NoiseModel(dose=dose)``, or ``noise`` with ``dose`` filled in."""
    if dose is not None:
        if not (float(dose) >= 0 and math.isfinite(dose)):
            raise ValueError(f"dose must be >= 0 counts/px (or None), got {dose!r}")
    if noise is None:
        return NoiseModel(dose=dose)
    if not isinstance(noise, NoiseModel):
        raise ValueError(f"noise must be a NoiseModel or None, got {type(noise).__name__}")
    if noise.dose is None and noise.snr is None and dose is not None:
        return dataclasses.replace(noise, dose=dose)
    return noise


def _check_contrast(contrast, depth, rim) -> tuple[float, float] | None:
    """None for bright contrast, ``(depth, rim)`` for dark; ValueError naming the fix."""
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be 'bright' (HAADF) or 'dark' (ABF/BF), got {contrast!r}")
    if contrast == "bright":
        return None
    if not (0.0 < float(depth) <= 1.0):
        raise ValueError(
            f"dark_depth must be in (0, 1] (fraction of the background), got {depth!r}"
        )
    rim = _check_positive("dark_rim", rim, allow_zero=True)
    return float(depth), rim


def _check_scene_period(lat: Lattice, pixel_size: float) -> None:
    if lat.a < MIN_PERIOD or lat.b < MIN_PERIOD:
        raise ValueError(
            f"period must be >= {MIN_PERIOD} px, got a = {lat.a:.3g}, b = {lat.b:.3g} px "
            f"(pixel_size {pixel_size} Å/px)"
        )


def _scene_columns(lat: Lattice, angle: float, shape, gen) -> _SceneColumns:
    """Perfect lattice in lattice coordinates, with a column of type 0 near the image centre.

    Draws the origin (2 uniform numbers) from ``gen``; covers the image and a margin of
    ``radius`` px around it.
    """
    h, w = shape
    vec = lat.vectors(angle)
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    t = gen.random(2)
    origin = centre - t @ vec  # a Sr column near the centre
    radius = 0.5 * math.hypot(h, w) + GAUSS_CUTOFF * lat.sigma + 2 * max(lat.a, lat.b)
    bnorm = np.linalg.norm(np.linalg.inv(vec), axis=0)
    m = np.ceil(radius * bnorm).astype(int) + 2
    ii, jj = np.meshgrid(np.arange(-m[0], m[0] + 1), np.arange(-m[1], m[1] + 1), indexing="ij")
    basis = np.array(lat.basis)
    types_site = lat.column_types()
    return _SceneColumns(
        fu=(ii.ravel()[:, None] + basis[None, :, 0]).ravel(),
        fv=(jj.ravel()[:, None] + basis[None, :, 1]).ravel(),
        inten=np.tile(basis[:, 2], ii.size),
        types=np.tile(types_site, ii.size),
        origin=origin,
        vec=vec,
        centre=centre,
        radius=radius,
    )


def _place_columns(cols: _SceneColumns) -> None:
    """Image positions of the perfect lattice: ``origin + u·a1 + v·a2``."""
    cols.pos = cols.origin + np.outer(cols.fu, cols.vec[0]) + np.outer(cols.fv, cols.vec[1])
    cols.reference = cols.pos.copy()


def _apply_rp_fault(cols: _SceneColumns, lat: Lattice, elongation, decay_cells) -> dict:
    """Insert a Ruddlesden–Popper fault through the Sr plane at the origin; return its record.

    The block beyond the plane is shifted by half a cell along and across it (the SrO plane
    appears twice), and the cells next to it are elongated (:func:`rp_displacement`).
    """
    fu, fv, inten, types = cols.fu, cols.fv, cols.inten, cols.types
    vec, origin = cols.vec, cols.origin
    e1, e2 = vec[0] / lat.a, vec[1] / lat.b  # unit vectors of a1, a2 (y, x)
    i0 = 0  # the Sr plane through the origin (nearest the centre)
    left = fu <= i0 + 1e-9
    right = fu >= i0 - 1e-9
    fu = np.concatenate([fu[left], fu[right] + 0.5])
    fv = np.concatenate([fv[left], fv[right] + 0.5])
    cols.inten = np.concatenate([inten[left], inten[right]])
    cols.types = np.concatenate([types[left], types[right]])
    cols.fu, cols.fv = fu, fv
    fault_u = i0 + 0.25  # mid-plane of the rock-salt gap, fractional
    decay = decay_cells * lat.a
    d = (fu - fault_u) * lat.a  # signed distance from the fault plane, px
    du = rp_displacement(d, elongation, decay)
    cols.pos = origin + np.outer(fu, vec[0]) + np.outer(fv, vec[1]) + np.outer(du, e1)
    cols.reference = cols.pos.copy()
    fault_point = origin + fault_u * vec[0]
    return {
        "fault_point": fault_point.tolist(),
        "fault_normal": e1.tolist(),
        "fault_direction": e2.tolist(),
        "fault_x": float(fault_point[1]) if abs(e1[0]) < 1e-12 else None,
        "shift_along_px": 0.5 * lat.b,
        "shift_perpendicular_px": 0.5 * lat.a,
        "shift_sign": [1, 1],
        "elongation": {
            "amplitude": float(elongation),
            "decay_length_px": float(decay),
            "profile": "amplitude * exp(-|d| / decay_length_px)",
            "displacement": "sign(d) * amplitude * decay_length_px * (1 - exp(-|d| / L))",
        },
        "description": (
            "columns beyond the fault (d > 0 along fault_normal) are shifted by "
            "(shift_perpendicular_px along fault_normal, shift_along_px along "
            "fault_direction) relative to the perfect continuation minus the duplicated "
            "SrO plane; d is the signed distance of a column from the fault plane"
        ),
    }


def _apply_strain(cols: _SceneColumns, amplitude: float, shape, gen) -> dict:
    """Displace the columns by a smooth strain field (phases drawn from ``gen``); its record."""
    h, w = shape
    params = {
        "amplitude": float(amplitude),
        "wavelength_px": [float(h), float(w)],
        "phase": gen.uniform(0, 2 * np.pi, size=2).tolist(),
        "displacement": "dy = A*Ly/2pi*sin(2pi*y/Ly + py); dx = A*Lx/2pi*sin(2pi*x/Lx + px)",
        "strain": "e_yy = A*cos(2pi*y/Ly + py); e_xx = A*cos(2pi*x/Lx + px); e_xy = 0",
    }
    dy, dx = strain_displacement(cols.pos[:, 0], cols.pos[:, 1], params)
    cols.pos = cols.pos + np.stack([dy, dx], -1)
    return params


def _apply_scan_drift(cols: _SceneColumns, drift: float) -> None:
    """Scan drift (shear, px of x per row about the centre row) moves the truth too."""
    cols.pos[:, 1] += drift * (cols.pos[:, 0] - cols.centre[0])
    cols.reference[:, 1] += drift * (cols.reference[:, 0] - cols.centre[0])


def _inside_image(pos: np.ndarray, shape) -> np.ndarray:
    """Columns whose centres lie on a pixel of the image (within half a pixel of its edge)."""
    h, w = shape
    return (
        (pos[:, 0] >= -0.5) & (pos[:, 0] <= h - 0.5) & (pos[:, 1] >= -0.5) & (pos[:, 1] <= w - 0.5)
    )


def _apply_vacancies(cols: _SceneColumns, inside, fraction: float, gen) -> tuple[np.ndarray, dict]:
    """Remove ``fraction`` of the columns inside the image; return the kept mask and a record."""
    keep = np.ones(len(cols.pos), bool)
    idx = np.flatnonzero(inside)
    n_vac = round(fraction * len(idx))
    gone = np.sort(gen.choice(idx, size=n_vac, replace=False)) if n_vac else idx[:0]
    keep[gone] = False
    record = {
        "fraction": float(fraction),
        "positions": cols.pos[gone].copy(),
        "types": cols.types[gone].copy(),
    }
    return keep, record


def _render_scene(
    shape, cols: _SceneColumns, keep, lat: Lattice, blur: float, background, dark=None
):
    """The noise-free image; probe blur widens the Gaussian columns exactly.

    Bright contrast (HAADF, ``dark`` None): the columns on a constant ``background`` (a fraction
    of the strongest peak). Dark contrast (ABF-like, ``dark = (depth, rim)``): a background of 1
    with each column a dip of ``depth × I`` and a bright rim of peak ``rim × I`` at
    ``DARK_RIM_SCALE × σ√2`` from its centre, clipped at 0.
    """
    h, w = shape
    radius = cols.radius
    pos = cols.pos
    sigma = math.hypot(lat.sigma, blur)
    near = keep & (
        (pos[:, 0] > -radius)
        & (pos[:, 0] < h + radius)
        & (pos[:, 1] > -radius)
        & (pos[:, 1] < w + radius)
    )
    clean = _render_image((h, w), pos[near], cols.inten[near], sigma)
    if dark is None:
        clean += np.float32(background * max(site[2] for site in lat.basis))
        return clean
    depth, rim = dark
    peak = max(site[2] for site in lat.basis)
    rims = _render_rims((h, w), pos[near], cols.inten[near], DARK_RIM_SCALE * sigma)
    clean *= np.float32(-depth / peak)
    clean += np.float32(rim / peak) * rims
    clean += np.float32(1.0)
    return np.maximum(clean, np.float32(0.0))


def _apply_scene_noise(clean, noise: NoiseModel, gen) -> tuple[np.ndarray, np.ndarray]:
    """Noise of a rendered scene: blur and drift were applied to the columns, the rest here."""
    model = dataclasses.replace(noise, blur=0.0, drift=0.0)
    return model.apply(clean, gen)


def simulate_scene(
    shape,
    *,
    lattice: str | Lattice = "srtio3",
    defect=None,
    pixel_size: float = 0.2,
    cell: float = SRTIO3_CELL,
    dose: float | None = 16.0,
    noise: NoiseModel | None = None,
    strain: float | None = None,
    angle: float = 0.0,
    sigma_angstrom: float = 0.35,
    background: float = 0.05,
    vacancy_fraction: float = 0.05,
    rp_elongation: float = RP_ELONGATION,
    rp_decay_cells: float = RP_DECAY_CELLS,
    contrast: str = "bright",
    dark_depth: float = DARK_DEPTH,
    dark_rim: float = DARK_RIM,
    rng: Any = None,
) -> Scene:
    """Simulate an atomic-resolution image with ground truth.

    The steps: a perfect lattice about the image centre; a Ruddlesden–Popper fault; a smooth
    strain field; scan drift (the truth follows it); vacancies; rendering of Gaussian columns
    (bright on a constant background, or dark on a bright one); noise.

    Parameters
    ----------
    shape : (H, W) in px.
    lattice : ``"srtio3"`` (SrTiO3 [001]), ``"rectangular"`` (SrTiO3 [110]-like, a = 3.905 Å,
        b = 5.52 Å, two column types), ``"hexagonal"`` (hcp [0001]-like honeycomb, a = 3.2 Å)
        — see :data:`SCENE_LATTICES` — or a :class:`Lattice` in px (then ``cell`` and
        ``sigma_angstrom`` are ignored).
    defect : None, ``"rp"``, ``"vacancies"``, ``"strain"`` or a list of them.
        ``"rp"``: a Ruddlesden–Popper fault, a {100} plane (along ``a2``; vertical at
        ``angle=0``) through the Sr plane nearest the image centre. The block beyond it is shifted
        by half a cell along the plane and half a cell perpendicular to it (the SrO plane at the
        fault appears twice: rock-salt SrO–SrO stacking), and the cells next to the plane are
        elongated perpendicular to it by ``rp_elongation · exp(−|d| / L)`` with
        ``L = rp_decay_cells`` cells (``d`` the distance from the fault plane; see
        :func:`rp_elongation_profile`). Needs a lattice with ``gamma = 90``.
        ``"vacancies"``: a fraction ``vacancy_fraction`` of the columns is removed (recorded).
        ``"strain"``: a smooth strain field of amplitude ``strain`` (default 2 %), see
        :func:`strain_displacement`.
    pixel_size : Å/px. cell : SrTiO3 lattice parameter, Å. sigma_angstrom : column sigma, Å.
    dose : mean counts per pixel over the image (Poisson noise); None for no shot noise.
    noise : a :class:`NoiseModel`; default ``NoiseModel(dose=dose)``. When it has neither a dose
        nor an SNR, ``dose`` is used. Its probe blur and drift are applied exactly to the columns
        (the truth follows the drift).
    strain : amplitude of the smooth strain field (also without the ``"strain"`` defect), 0–0.2.
    angle : rotation of the lattice, degrees counter-clockwise.
    background : constant background as a fraction of the strongest column's peak (bright
        contrast only).
    contrast : ``"bright"`` (default: HAADF, bright columns on a dark background) or ``"dark"``
        (ABF/BF-like: dark columns on a bright background with a weak bright rim). Dark: the
        clean image is ``1 − dark_depth · Σ I_k G_k + dark_rim · Σ I_k R_k`` before the dose
        scaling, with ``G_k`` the Gaussian column (sigma σ, peak 1), ``R_k`` a ring
        ``e·(ρ²/2s²)·exp(−ρ²/2s²)`` of peak 1 at ``ρ = s√2``, ``s = DARK_RIM_SCALE·σ`` (≈ 2.1σ
        from the centre, outside the dip), ``I_k`` the column's intensity relative to the
        strongest; clipped at 0. ``dose`` is still the mean counts per pixel, so most counts
        fall on the background. ``columns`` are the dips' centres, as in bright contrast.
    dark_depth : dip of the strongest column, fraction of the background, in (0, 1].
    dark_rim : peak of the strongest column's rim, fraction of the background, >= 0.
    rng : seed or Generator (lattice origin, vacancies, strain phases, noise).

    Examples
    --------
    >>> scene = simulate_scene((64, 64), defect="rp", rng=0)
    >>> scene.clean.shape, scene.columns.shape[1], scene.metadata["defect"]
    ((64, 64), 2, ['rp'])
    >>> abf = simulate_scene((64, 64), contrast="dark", dose=None, rng=0)
    >>> bool(abf.clean.min() < 0.6 < 1.0 < float(np.median(abf.clean)))
    True
    """
    h, w = _scene_shape(shape)
    pixel_size = _check_positive("pixel_size", pixel_size)
    cell = _check_positive("cell", cell)
    sigma_angstrom = _check_positive("sigma_angstrom", sigma_angstrom)
    noise = _scene_noise(noise, dose)
    background = _check_positive("background", background, allow_zero=True)
    if not 0.0 <= vacancy_fraction < 1.0:
        raise ValueError(f"vacancy_fraction must be in [0, 1), got {vacancy_fraction!r}")
    if not (-0.5 < rp_elongation < 0.5):
        raise ValueError(f"rp_elongation must be in (-0.5, 0.5), got {rp_elongation!r}")
    rp_decay_cells = _check_positive("rp_decay_cells", rp_decay_cells)
    dark = _check_contrast(contrast, dark_depth, dark_rim)
    defects = _parse_defects(defect)
    if strain is None:
        strain = DEFAULT_STRAIN if "strain" in defects else 0.0
    if not 0.0 <= float(strain) <= 0.2:
        raise ValueError(f"strain must be in [0, 0.2], got {strain!r}")
    gen = as_generator(rng)
    lat, lattice_name = _scene_lattice(lattice, pixel_size, cell, sigma_angstrom)
    _check_scene_period(lat, pixel_size)
    if "rp" in defects and abs(lat.gamma - 90.0) > 1e-9:
        raise ValueError(f"defect 'rp' needs a rectangular lattice (gamma 90), got {lat.gamma}")
    metadata: dict[str, Any] = {
        "defect": list(defects) or None,
        "lattice": lattice_name,
        "pixel_size": pixel_size,
        "angle": float(angle),
        "sigma_px": lat.sigma,
        "background": background,
        "noise": noise.to_dict(),
        "contrast": contrast,
    }
    if dark is not None:
        metadata["dark"] = {"depth": dark[0], "rim": dark[1], "rim_scale": DARK_RIM_SCALE}

    cols = _scene_columns(lat, angle, (h, w), gen)
    if "rp" in defects:
        metadata["rp"] = _apply_rp_fault(cols, lat, rp_elongation, rp_decay_cells)
    else:
        _place_columns(cols)
    if strain > 0:
        metadata["strain"] = _apply_strain(cols, strain, (h, w), gen)
    if noise.drift:
        _apply_scan_drift(cols, noise.drift)
    inside = _inside_image(cols.pos, (h, w))
    keep = np.ones(len(cols.pos), bool)
    if "vacancies" in defects:
        keep, metadata["vacancies"] = _apply_vacancies(cols, inside, vacancy_fraction, gen)
    clean = _render_scene((h, w), cols, keep, lat, noise.blur, background, dark)
    noisy, clean = _apply_scene_noise(clean, noise, gen)

    sel = inside & keep
    metadata["reference_columns"] = cols.reference[sel]
    return Scene(
        clean=clean.astype(np.float32),
        noisy=noisy.astype(np.float32),
        columns=cols.pos[sel].astype(np.float64),
        column_types=cols.types[sel].astype(int),
        pixel_size=float(pixel_size),
        lattice=lat,
        metadata=metadata,
    )


# --------------------------------------------------------------------------------------------
# scenes that are not one crystal
# --------------------------------------------------------------------------------------------

REGIONS = {"vacuum": 0, "amorphous": 1, "crystal": 2, "grain": 3}
"""Region codes of :func:`simulate_mixed_scene` (``scene.metadata["regions"]["labels"]``)."""
MIXED_PARTS = ("crystal", "amorphous", "vacuum", "grain")
"""Default parts of :func:`simulate_mixed_scene`."""
VACUUM_LEVEL = 0.02
"""Constant level of vacuum in :func:`simulate_mixed_scene`, fraction of the strongest peak."""
GRAIN_ROTATION = 30.0
"""Default rotation of the second grain relative to the first, degrees."""
AMORPHOUS_INTENSITY = (0.5, 1.5)
"""Peak heights of amorphous blobs, uniform in this range × the crystal's mean column height."""


def _check_parts(parts) -> tuple[str, ...]:
    items = (parts,) if isinstance(parts, str) else tuple(parts)
    if not items:
        raise ValueError(f"parts must name at least one of {', '.join(REGIONS)}, got {parts!r}")
    for part in items:
        if part not in REGIONS:
            raise ValueError(f"unknown part {part!r}; accepted: {', '.join(REGIONS)}")
    if len(set(items)) != len(items):
        raise ValueError(f"parts must not repeat a region, got {parts!r}")
    return items


def _region_layout(shape, parts, labels, gen):
    """The label map (H, W) int8 of region codes, and a function ``(N, 2) (y, x) px -> (N,)``
    giving the code of the nearest pixel (clipped to the image), so that a column's region is
    that of its pixel in the map.

    Given ``labels``, that map. Otherwise one region per part: two parts split the image into a
    left and a right half; three or more are Voronoi cells of points on a circle of radius 0.3 ×
    the shorter side about the centre, at a random rotation (drawn from ``gen``).
    """
    h, w = shape
    if labels is not None:
        table = np.asarray(labels)
        if table.shape != (h, w) or not np.isin(table, list(REGIONS.values())).all():
            raise ValueError(
                f"labels must be an int array of shape {(h, w)} holding region codes "
                f"{REGIONS}, got shape {table.shape}"
            )
        table = table.astype(np.int8)
    else:
        codes = np.array([REGIONS[p] for p in parts], np.int8)
        cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
        if len(parts) == 1:
            seeds = np.array([[cy, cx]])
        elif len(parts) == 2:
            seeds = np.array([[cy, (w - 1) / 4.0], [cy, 3 * (w - 1) / 4.0]])
        else:
            step = 360.0 / len(parts)
            turn = gen.uniform(0.0, step) + np.arange(len(parts)) * step
            seeds = np.array([cy, cx]) + 0.3 * min(h, w) * _direction(turn)
        yy, xx = np.ogrid[0:h, 0:w]
        dist = np.stack([(yy - sy) ** 2 + (xx - sx) ** 2 for sy, sx in seeds])
        table = codes[np.argmin(dist, axis=0)]

    def region_at(points):
        iy = np.clip(np.rint(points[:, 0]), 0, h - 1).astype(np.intp)
        ix = np.clip(np.rint(points[:, 1]), 0, w - 1).astype(np.intp)
        return table[iy, ix]

    return region_at, table


def _amorphous_blobs(lat: Lattice, shape, margin, region_at, gen):
    """Random Gaussian blobs at the crystal's column density and mean peak height.

    Positions are a uniform Poisson process over the image and a ``margin`` px border, kept where
    the region is amorphous; heights uniform in :data:`AMORPHOUS_INTENSITY` × the mean height of
    the crystal's columns, so the mean intensity matches the crystal's. Returns positions (M, 2),
    heights (M,) and the density, blobs per px².
    """
    h, w = shape
    density = len(lat.basis) / lat.cell_area
    mean_height = float(np.mean([site[2] for site in lat.basis]))
    area = (h + 2 * margin) * (w + 2 * margin)
    count = gen.poisson(density * area)
    pos = gen.random((count, 2)) * [h + 2 * margin, w + 2 * margin] - margin
    heights = gen.uniform(*AMORPHOUS_INTENSITY, size=count) * mean_height
    mine = region_at(pos) == REGIONS["amorphous"]
    return pos[mine], heights[mine], density


def simulate_mixed_scene(
    shape,
    *,
    parts: Sequence[str] = MIXED_PARTS,
    labels: np.ndarray | None = None,
    lattice: str | Lattice = "srtio3",
    grain_lattice: str | Lattice | None = None,
    pixel_size: float = 0.2,
    cell: float = SRTIO3_CELL,
    dose: float | None = 16.0,
    noise: NoiseModel | None = None,
    angle: float = 0.0,
    grain_angle: float | None = None,
    sigma_angstrom: float = 0.35,
    background: float = 0.05,
    vacuum_level: float = VACUUM_LEVEL,
    rng: Any = None,
) -> Scene:
    """Simulate an image that is not one crystal: crystal, amorphous, vacuum and a second grain.

    The image is split into regions, one per entry of ``parts``:

    * ``"crystal"``: the lattice of ``lattice`` at ``angle`` (as :func:`simulate_scene`);
    * ``"grain"``: a second crystal, ``grain_lattice`` (default: the same) at ``grain_angle``
      (default ``angle + GRAIN_ROTATION``) with its own random origin;
    * ``"amorphous"``: random Gaussian blobs of the crystal's column width, at its column
      density and mean peak height (so a similar mean intensity), with no order;
    * ``"vacuum"``: a low constant level ``vacuum_level`` and nothing else.

    Two parts split the image into a left and a right half (``parts=("crystal", "amorphous")``
    is the half-and-half scene of the amorphous benchmark); three or more are Voronoi cells of
    points on a circle about the centre at a random rotation; ``labels`` gives any layout
    instead. A column or blob belongs to the region of its centre and is rendered whole, so
    tails cross the boundaries; the constant background follows the regions pixel by pixel.

    Parameters
    ----------
    shape : (H, W), px.
    parts : region names from :data:`REGIONS`, each at most once.
    labels : ndarray of int, shape (H, W), optional
        Region codes (:data:`REGIONS`) per pixel; overrides ``parts``.
    lattice, grain_lattice : preset name (:data:`SCENE_LATTICES`) or :class:`Lattice` in px.
    pixel_size : Å/px. cell : SrTiO3 lattice parameter, Å. sigma_angstrom : column sigma, Å.
    dose : mean counts per pixel over the whole image (vacuum included); None for none.
    noise : a :class:`NoiseModel`, as for :func:`simulate_scene` (probe blur widens columns and
        blobs; drift shears them and the truth follows, the region map does not).
    angle, grain_angle : lattice rotations, degrees counter-clockwise.
    background : constant level of crystal, grain and amorphous regions, fraction of the
        strongest peak. vacuum_level : that of vacuum.
    rng : seed or Generator (layout, origins, blobs, noise).

    Returns
    -------
    Scene
        ``columns``/``column_types``: the true columns of both crystals inside the image (none in
        amorphous or vacuum regions); ``lattice``: the crystal's. ``metadata["regions"]``:
        ``labels`` (H, W) int8 codes, ``legend`` (:data:`REGIONS`), ``crystal_mask`` (H, W)
        bool (crystal or grain), ``parts``; ``metadata["column_region"]``: the region code of
        each column (2 crystal, 3 grain); ``metadata["amorphous"]``: blob ``positions`` (M, 2)
        px, ``heights``, ``density_per_px2``; ``metadata["grain"]``: its ``lattice``
        (``Lattice.to_dict()``) and ``angle``; plus the keys of :func:`simulate_scene`.

    Examples
    --------
    >>> scene = simulate_mixed_scene((96, 128), parts=("crystal", "amorphous"), rng=0)
    >>> regions = scene.metadata["regions"]
    >>> bool(regions["crystal_mask"][:, :63].all()), bool(regions["crystal_mask"][:, 65:].any())
    (True, False)
    >>> bool((scene.columns[:, 1] < 64).all())
    True
    """
    h, w = _scene_shape(shape)
    parts = _check_parts(parts)
    pixel_size = _check_positive("pixel_size", pixel_size)
    cell = _check_positive("cell", cell)
    sigma_angstrom = _check_positive("sigma_angstrom", sigma_angstrom)
    noise = _scene_noise(noise, dose)
    background = _check_positive("background", background, allow_zero=True)
    vacuum_level = _check_positive("vacuum_level", vacuum_level, allow_zero=True)
    gen = as_generator(rng)
    lat, lattice_name = _scene_lattice(lattice, pixel_size, cell, sigma_angstrom)
    grain_lat, grain_name = _scene_lattice(
        lattice if grain_lattice is None else grain_lattice, pixel_size, cell, sigma_angstrom
    )
    _check_scene_period(lat, pixel_size)
    _check_scene_period(grain_lat, pixel_size)
    if grain_angle is None:
        grain_angle = float(angle) + GRAIN_ROTATION

    region_at, region_map = _region_layout((h, w), parts, labels, gen)
    crystal, crystal_region = _crystal_part(lat, angle, (h, w), REGIONS["crystal"], region_at, gen)
    grain, grain_region = _crystal_part(
        grain_lat, grain_angle, (h, w), REGIONS["grain"], region_at, gen
    )
    margin = GAUSS_CUTOFF * lat.sigma + 1
    blobs, heights, density = _amorphous_blobs(lat, (h, w), margin, region_at, gen)
    if noise.drift:
        centre = (h - 1) / 2.0
        for pos in (crystal.pos, grain.pos, blobs):
            pos[:, 1] += noise.drift * (pos[:, 0] - centre)
    keep = np.concatenate([crystal_region, grain_region])
    peak = max(site[2] for site in lat.basis)
    clean = _render_mixed(
        (h, w),
        (crystal, grain),
        keep,
        (blobs, heights),
        region_map,
        sigma=(lat.sigma, grain_lat.sigma),
        blur=noise.blur,
        levels=(background * peak, vacuum_level * peak),
    )
    noisy, clean = _apply_scene_noise(clean, noise, gen)

    pos = np.concatenate([crystal.pos, grain.pos])
    on_crystal = keep & _inside_image(pos, (h, w))
    codes = np.repeat(
        [REGIONS["crystal"], REGIONS["grain"]], [len(crystal.pos), len(grain.pos)]
    ).astype(np.int8)
    types = np.concatenate([crystal.types, grain.types])
    crystal_mask = np.isin(region_map, [REGIONS["crystal"], REGIONS["grain"]])
    metadata: dict[str, Any] = {
        "defect": None,
        "lattice": lattice_name,
        "pixel_size": pixel_size,
        "angle": float(angle),
        "sigma_px": lat.sigma,
        "background": background,
        "noise": noise.to_dict(),
        "contrast": "bright",
        "reference_columns": pos[on_crystal],
        "regions": {
            "labels": region_map,
            "legend": dict(REGIONS),
            "crystal_mask": crystal_mask,
            "parts": list(parts) if labels is None else None,
        },
        "column_region": codes[on_crystal],
        "amorphous": {
            "positions": blobs,
            "heights": heights,
            "density_per_px2": float(density),
        },
        "grain": {"lattice": grain_lat.to_dict(), "name": grain_name, "angle": float(grain_angle)},
        "vacuum_level": vacuum_level,
    }
    return Scene(
        clean=clean.astype(np.float32),
        noisy=noisy.astype(np.float32),
        columns=pos[on_crystal].astype(np.float64),
        column_types=types[on_crystal].astype(int),
        pixel_size=float(pixel_size),
        lattice=lat,
        metadata=metadata,
    )


def _crystal_part(lat: Lattice, angle: float, shape, code: int, region_at, gen):
    """Columns of one crystal at ``angle`` (own random origin) and the mask of those whose
    centre lies in the region ``code``."""
    cols = _scene_columns(lat, angle, shape, gen)
    _place_columns(cols)
    return cols, region_at(cols.pos) == code


def _render_mixed(shape, crystals, keep, blobs, region_map, *, sigma, blur, levels):
    """Columns of the crystals (kept ones) and amorphous blobs, on a background per region."""
    h, w = shape
    pos = np.concatenate([c.pos for c in crystals])[keep]
    inten = np.concatenate([c.inten for c in crystals])[keep]
    sig = np.concatenate(
        [np.full(len(c.pos), math.hypot(s, blur)) for c, s in zip(crystals, sigma, strict=True)]
    )[keep]
    blob_pos, blob_heights = blobs
    clean = _render_image(
        (h, w),
        np.concatenate([pos, blob_pos]),
        np.concatenate([inten, blob_heights]),
        np.concatenate([sig, np.full(len(blob_pos), math.hypot(sigma[0], blur))]),
    )
    crystal_level, vacuum = levels
    clean += np.where(region_map == REGIONS["vacuum"], vacuum, crystal_level).astype(np.float32)
    return clean
