"""Figures of stem_ae: pure functions that return a :class:`matplotlib.figure.Figure`.

Every ``plot_*`` function builds a new figure (or draws into the ``fig``/``ax`` it is given) in one
house style (:data:`STYLE`) and returns it; none of them shows or saves anything. Saving is
:func:`save_figure`, which writes each format to a temporary file beside the target and moves it
into place, so an interrupted run never leaves a half-written figure.

Conventions: images are ``(H, W)`` arrays in their own units (counts, or the normalised units of a
training window); positions are ``(y, x)`` in px; ``pixel_size`` is in Å/px and scale bars are
labelled in nm. This module imports only NumPy and Matplotlib (never Keras or the simulator), and
figures are created with :class:`~matplotlib.figure.Figure` directly, not through ``pyplot``, so
no global figure is left open.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> truth = rng.random((2, 28, 28))
>>> fig = plot_triplets(truth + rng.normal(size=truth.shape), truth, truth)
>>> len(fig.axes)
6
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.patches import Rectangle

__all__ = [
    "METHOD_COLORS",
    "STYLE",
    "add_scale_bar",
    "new_figure",
    "plot_benchmark",
    "plot_contact_sheet",
    "plot_elongation_profile",
    "plot_lattice_map",
    "plot_loss",
    "plot_noise_models",
    "plot_preview",
    "plot_reconstruction",
    "plot_triplets",
    "plot_windows",
    "save_figure",
    "scale_bar_length",
]

#: Matplotlib rc settings shared by every figure (a journal column is ~3.4 in, a page ~7 in).
STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "image.cmap": "gray",
    "image.interpolation": "nearest",
    "image.origin": "upper",
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.03,
    "pdf.fonttype": 42,
}

#: One colour per method, used by every figure that compares methods.
METHOD_COLORS: dict[str, str] = {
    "noisy": "#7f7f7f",
    "gaussian": "#8c564b",
    "nlm": "#9467bd",
    "bm3d": "#d62728",
    "paper": "#1f77b4",
    "general": "#2ca02c",
    "stem_ae paper": "#1f77b4",
    "stem_ae general": "#2ca02c",
    "crlb": "#000000",
}

# the colours a method without one of its own takes, in turn: tab20 without the colours above
_TAB20 = (
    "#aec7e8 #ff7f0e #ffbb78 #98df8a #ff9896 #c5b0d5 #c49c94 #e377c2 #f7b6d2 #c7c7c7 #bcbd22 "
    "#dbdb8d #17becf #9edae5"
).split()
_SPARE_COLORS = tuple(c for c in _TAB20 if c not in METHOD_COLORS.values())


def _method_colors(names: Sequence[str]) -> list[str]:
    """A colour per method name: :data:`METHOD_COLORS` where it has one (any case), else the
    next of the spare colours, so that no two lines of one plot share a colour (while there
    are spare colours; then they repeat)."""
    colors, spare = [], 0
    for name in names:
        fixed = METHOD_COLORS.get(name, METHOD_COLORS.get(name.lower()))
        if fixed is None:
            fixed = _SPARE_COLORS[spare % len(_SPARE_COLORS)]
            spare += 1
        colors.append(fixed)
    return colors


_UNCERTAINTY_CMAP = "magma"
_MAP_CMAP = "coolwarm"
_NICE_STEPS = (1.0, 2.0, 5.0)


def _styled(function: Callable[..., Figure]) -> Callable[..., Figure]:
    """Run a plotting function under :data:`STYLE` so every artist it creates uses the style."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with mpl.rc_context(STYLE):
            return function(*args, **kwargs)

    return wrapper


@_styled
def new_figure(width: float = 7.0, height: float = 3.0) -> Figure:
    """Create an empty figure in the house style, with constrained layout.

    Parameters
    ----------
    width, height : float
        Size in inches (7 in is a two-column journal page).

    Returns
    -------
    Figure
        Not attached to ``pyplot``: it is garbage-collected when no longer referenced. Split it
        with ``fig.subfigures(...)`` and pass the parts as ``fig=`` to the ``plot_*`` functions to
        compose a multi-panel figure.

    Examples
    --------
    >>> fig = new_figure(4, 2)
    >>> fig.get_size_inches().tolist()
    [4.0, 2.0]
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"figure size must be positive, got {width} x {height} in")
    return Figure(figsize=(width, height), layout="constrained")


def _root(fig: Figure | SubFigure) -> Figure:
    """The top-level Figure of a Figure or SubFigure."""
    return fig.get_figure(root=True) if isinstance(fig, SubFigure) else fig


def _target(fig: Figure | SubFigure | None, width: float, height: float) -> Figure | SubFigure:
    if fig is None:
        return new_figure(width, height)
    if not isinstance(fig, Figure | SubFigure):
        raise TypeError(f"fig must be a matplotlib Figure or SubFigure, got {type(fig).__name__}")
    return fig


def _as_image(array: Any, name: str) -> np.ndarray:
    image = np.asarray(array, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"{name} must be a 2-D image (H, W), got shape {image.shape}")
    return image


def _as_stack(array: Any, name: str) -> np.ndarray:
    stack = np.asarray(array, dtype=np.float64)
    if stack.ndim == 2:
        stack = stack[np.newaxis]
    if stack.ndim != 3:
        raise ValueError(f"{name} must have shape (n, H, W) or (H, W), got shape {stack.shape}")
    return stack


def _limits(image: np.ndarray, percentile: float = 0.5) -> tuple[float, float]:
    """Robust display range: the given percentile at each end, ignoring NaN."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, [percentile, 100.0 - percentile])
    if high <= low:
        high = low + 1.0
    return float(low), float(high)


def scale_bar_length(width_px: float, pixel_size: float, *, fraction: float = 0.25) -> float:
    """Pick a round scale-bar length (1, 2 or 5 × 10^k nm) no longer than ``fraction`` of a width.

    Parameters
    ----------
    width_px : float
        Width of the image, px.
    pixel_size : float
        Å/px.
    fraction : float
        Largest fraction of the width the bar may cover.

    Returns
    -------
    float
        Length in nm.

    Examples
    --------
    >>> scale_bar_length(512, 0.2)  # 512 px at 0.2 Å/px is 10.24 nm wide
    2.0
    """
    if pixel_size <= 0 or not np.isfinite(pixel_size):
        raise ValueError(f"pixel_size must be a positive number of Å/px, got {pixel_size}")
    if width_px <= 0:
        raise ValueError(f"width_px must be positive, got {width_px}")
    target_nm = fraction * width_px * pixel_size / 10.0
    exponent = np.floor(np.log10(target_nm))
    candidates = [step * 10.0**exponent for step in _NICE_STEPS]
    return float(max(c for c in candidates if c <= target_nm * (1 + 1e-9)))


def add_scale_bar(
    ax: Axes, pixel_size: float, *, length_nm: float | None = None, color: str = "white"
) -> Rectangle:
    """Draw a scale bar in the lower-left corner of an image axes.

    Parameters
    ----------
    ax : Axes
        Axes holding an image drawn with ``imshow`` (data coordinates in px).
    pixel_size : float
        Å/px.
    length_nm : float, optional
        Bar length in nm; by default a round length of at most a quarter of the image width.
    color : str
        Bar and label colour.

    Returns
    -------
    Rectangle
        The bar, in data coordinates (px); its ``gid`` is ``"scale_bar"`` and its label the text
        shown (e.g. ``"2 nm"``).

    Examples
    --------
    >>> fig = new_figure(2, 2)
    >>> ax = fig.add_subplot()
    >>> _ = ax.imshow(np.zeros((100, 100)))
    >>> bar = add_scale_bar(ax, pixel_size=0.5)  # 100 px = 5 nm wide
    >>> bar.get_label(), bar.get_width()
    ('1 nm', 20.0)
    """
    x_left, x_right = sorted(ax.get_xlim())
    y_bottom, y_top = ax.get_ylim()  # images: y grows downwards, so bottom > top
    width_px = x_right - x_left
    height_px = abs(y_bottom - y_top)
    if length_nm is None:
        length_nm = scale_bar_length(width_px, pixel_size)
    elif length_nm <= 0:
        raise ValueError(f"length_nm must be positive, got {length_nm}")
    length_px = 10.0 * length_nm / pixel_size
    label = f"{length_nm:g} nm"
    thickness = 0.02 * height_px
    margin = 0.05 * width_px
    sign = 1.0 if y_bottom > y_top else -1.0
    y0 = y_bottom - sign * (0.05 * height_px + thickness)
    bar = Rectangle(
        (x_left + margin, y0),
        length_px,
        thickness,
        facecolor=color,
        edgecolor="black",
        linewidth=0.3,
        gid="scale_bar",
        label=label,
        zorder=5,  # above overlays such as the columns of a lattice map
    )
    ax.add_patch(bar)
    ax.text(
        x_left + margin,
        y0 - sign * 0.01 * height_px,
        label,
        color=color,
        ha="left",
        va="bottom" if sign > 0 else "top",
        fontsize=STYLE["font.size"] - 1,
        fontweight="bold",
        gid="scale_bar_label",
        zorder=6,
    )
    return bar


def _show(
    ax: Axes,
    image: np.ndarray,
    *,
    title: str | None = None,
    limits: tuple[float, float] | None = None,
    cmap: str | None = None,
    pixel_size: float | None = None,
    colorbar: str | None = None,
) -> None:
    """imshow with the house conventions: robust limits, no ticks, scale bar, colour bar."""
    vmin, vmax = limits if limits is not None else _limits(image)
    handle = ax.imshow(image, vmin=vmin, vmax=vmax, cmap=cmap)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title is not None:
        ax.set_title(title)
    if pixel_size is not None:
        add_scale_bar(ax, pixel_size)
    if colorbar is not None:
        _colorbar(ax, handle, colorbar)


def _colorbar(ax: Axes, mappable: Any, label: str) -> Any:
    """A slim colour bar just right of an image, exactly as tall as the image."""
    cax = ax.inset_axes([1.03, 0.0, 0.05, 1.0])
    bar = ax.figure.colorbar(mappable, cax=cax)
    bar.set_label(label, labelpad=2)
    bar.ax.tick_params(labelsize=STYLE["xtick.labelsize"] - 1, length=2, pad=1)
    return bar


@_styled
def plot_triplets(
    noisy: np.ndarray,
    output: np.ndarray,
    truth: np.ndarray,
    *,
    errors: Sequence[float] | np.ndarray | None = None,
    difference: bool = False,
    ax: np.ndarray | Sequence[Sequence[Axes]] | None = None,
) -> Figure:
    """Figure 2: rows of noisy input, auto-encoder output and truth for independent windows.

    Parameters
    ----------
    noisy, output, truth : ndarray, shape (n, H, W) or (H, W)
        ``n`` windows (columns of the figure). The output and truth of a window share one grey
        scale (the truth's range), so that the output is judged against the truth honestly; each
        noisy window has its own robust range.
    errors : sequence of float, shape (n,), optional
        Per-pixel error of each window (mean |output − truth| with truth normalised to maximum 1),
        written above its output.
    difference : bool
        Add a fourth row, ``|output − truth|`` divided by the truth's maximum (the per-pixel
        error drawn), on one colour scale for all windows with a colour bar.
    ax : array of Axes, shape (3, n) (or (4, n) with ``difference``), optional
        Axes to draw into (rows noisy, output, truth[, difference]); by default a new figure.

    Returns
    -------
    Figure

    Raises
    ------
    ValueError
        If the three stacks differ in shape, or ``errors`` or ``ax`` do not match ``n``.

    Examples
    --------
    >>> truth = np.zeros((3, 28, 28))
    >>> fig = plot_triplets(truth, truth, truth, errors=[0.1, 0.2, 0.3])
    >>> fig.axes[4].get_title()
    'error 0.200'
    """
    stacks = [_as_stack(a, n) for a, n in ((noisy, "noisy"), (output, "output"), (truth, "truth"))]
    if not stacks[0].shape == stacks[1].shape == stacks[2].shape:
        raise ValueError(
            "noisy, output and truth must have the same shape, got "
            + ", ".join(str(s.shape) for s in stacks)
        )
    n = stacks[0].shape[0]
    if errors is not None:
        errors = np.asarray(errors, dtype=np.float64).ravel()
        if errors.shape != (n,):
            raise ValueError(f"errors must have one value per window ({n}), got {errors.shape}")
    row_names = ["noisy input", "AE output", "truth"]
    if difference:
        peak = np.abs(stacks[2]).max(axis=(1, 2), keepdims=True)
        stacks.append(np.abs(stacks[1] - stacks[2]) / np.where(peak > 0, peak, 1.0))
        row_names.append("|output − truth|")
    rows = len(row_names)
    if ax is None:
        fig = new_figure(1.05 * n + 0.7, 1.15 * rows + 0.2)
        axes = np.asarray(fig.subplots(rows, n, squeeze=False))
    else:
        axes = np.asarray(ax, dtype=object)
        if axes.size != rows * n:
            raise ValueError(f"ax must hold {rows} x {n} axes, got shape {np.shape(ax)}")
        axes = axes.reshape(rows, n)
        fig = _root(axes[0, 0].figure)
    difference_limits = (0.0, max(_limits(stacks[3])[1], 1e-12)) if difference else None
    for j in range(n):
        truth_limits = _limits(stacks[2][j], percentile=0.0)
        for i in range(rows):
            title = f"error {errors[j]:.3f}" if i == 1 and errors is not None else None
            limits = (None, truth_limits, truth_limits, difference_limits)[i]
            cmap = _UNCERTAINTY_CMAP if i == 3 else None
            _show(axes[i, j], stacks[i][j], limits=limits, title=title, cmap=cmap)
    for i, name in enumerate(row_names):
        axes[i, 0].set_ylabel(name)
    if difference:
        bar = fig.colorbar(axes[3, -1].get_images()[0], ax=list(axes[3]), shrink=0.9, pad=0.01)
        bar.set_label("error (of max)")
    return fig


@_styled
def plot_windows(
    rows: Mapping[str, np.ndarray],
    *,
    limits: str = "window",
    fig: Figure | SubFigure | None = None,
) -> Figure:
    """A grid of windows: one labelled row per stack (e.g. clean and noisy training windows).

    Parameters
    ----------
    rows : mapping of str to ndarray, shape (n, H, W)
        Row label to its windows; every stack has the same shape.
    limits : {"window", "column"}
        Grey scale of each window on its own robust range, or shared down each column (the range
        of the first row), so that e.g. a clean window and its noisy version compare directly.
    fig : Figure or SubFigure, optional
        Where to draw; by default a new figure.

    Returns
    -------
    Figure

    Examples
    --------
    >>> fig = plot_windows({"clean": np.zeros((5, 28, 28)), "noisy": np.ones((5, 28, 28))})
    >>> len(fig.axes), fig.axes[5].get_ylabel()
    (10, 'noisy')
    """
    if not isinstance(rows, Mapping) or not rows:
        raise ValueError("rows must be a non-empty mapping of row label to (n, H, W) windows")
    if limits not in ("window", "column"):
        raise ValueError(f"limits must be 'window' or 'column', got {limits!r}")
    stacks = {str(k): _as_stack(v, f"rows[{k!r}]") for k, v in rows.items()}
    shapes = {s.shape for s in stacks.values()}
    if len(shapes) != 1:
        raise ValueError(f"every row must have the same shape, got {sorted(shapes)}")
    first = next(iter(stacks.values()))
    n = first.shape[0]
    target = _target(fig, 1.05 * n + 0.5, 1.1 * len(stacks) + 0.1)
    axes = np.asarray(target.subplots(len(stacks), n, squeeze=False))
    for i, (name, stack) in enumerate(stacks.items()):
        for j in range(n):
            shared = _limits(first[j]) if limits == "column" else None
            _show(axes[i, j], stack[j], limits=shared)
        axes[i, 0].set_ylabel(name)
    return _root(target)


def _as_panels(denoised: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if isinstance(denoised, Mapping):
        if not denoised:
            raise ValueError("denoised must hold at least one image")
        return {str(k): _as_image(v, f"denoised[{k!r}]") for k, v in denoised.items()}
    return {"denoised": _as_image(denoised, "denoised")}


@_styled
def plot_reconstruction(
    raw: np.ndarray,
    denoised: np.ndarray | Mapping[str, np.ndarray],
    *,
    truth: np.ndarray | None = None,
    uncertainty: np.ndarray | None = None,
    pixel_size: float | None = None,
    units: str = "counts",
    raw_title: str = "raw",
    fig: Figure | SubFigure | None = None,
) -> Figure:
    """Raw image beside its reconstruction(s), the truth and the uncertainty map, in one row.

    Parameters
    ----------
    raw : ndarray, shape (H, W)
        The input image, in ``units``.
    denoised : ndarray, shape (H, W), or mapping of str to such arrays
        One reconstruction, or several keyed by their panel title (e.g. ``{"step 2": a, "step 3":
        b}``). The reconstructions and the truth share one grey scale and one colour bar.
    truth : ndarray, shape (H, W), optional
        The noise-free image, in the same units.
    uncertainty : ndarray, shape (H, W), optional
        Per-pixel spread of the window predictions, in ``units``; drawn last, in colour.
    pixel_size : float, optional
        Å/px; draws a scale bar (nm) on every panel.
    units : str
        Intensity units, written on the colour bars.
    raw_title : str
        Title of the raw panel.
    fig : Figure or SubFigure, optional
        Where to draw; by default a new figure.

    Returns
    -------
    Figure
        The top-level figure.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> clean = rng.random((64, 64))
    >>> fig = plot_reconstruction(clean + rng.normal(size=(64, 64)), clean, truth=clean,
    ...                           uncertainty=np.full((64, 64), 0.1), pixel_size=0.2)
    >>> [ax.get_title() for ax in fig.axes if ax.get_title()]
    ['raw', 'denoised', 'truth', 'uncertainty']
    """
    raw = _as_image(raw, "raw")
    panels = _as_panels(denoised)
    if truth is not None:
        panels["truth"] = _as_image(truth, "truth")
    for name, image in panels.items():
        if image.shape != raw.shape:
            raise ValueError(f"{name} has shape {image.shape} but raw has shape {raw.shape}")
    if uncertainty is not None:
        uncertainty = _as_image(uncertainty, "uncertainty")
        if uncertainty.shape != raw.shape:
            raise ValueError(
                f"uncertainty has shape {uncertainty.shape} but raw has shape {raw.shape}"
            )
    n = 1 + len(panels) + (uncertainty is not None)
    aspect = raw.shape[0] / raw.shape[1]
    target = _target(fig, 2.0 * n, 1.9 * aspect + 0.3)
    axes = np.atleast_1d(target.subplots(1, n, squeeze=False)[0])
    _show(axes[0], raw, title=raw_title, pixel_size=pixel_size, colorbar=units)
    reference = panels.get("truth", next(iter(panels.values())))
    shared = _limits(reference, percentile=0.1)
    for k, (ax, (name, image)) in enumerate(zip(axes[1:], panels.items(), strict=False)):
        last = k == len(panels) - 1  # one colour bar for the panels that share a scale
        _show(
            ax,
            image,
            title=name,
            limits=shared,
            pixel_size=pixel_size,
            colorbar=units if last else None,
        )
    if uncertainty is not None:
        _show(
            axes[-1],
            uncertainty,
            title="uncertainty",
            limits=(0.0, _limits(uncertainty)[1]),
            cmap=_UNCERTAINTY_CMAP,
            pixel_size=pixel_size,
            colorbar=f"spread ({units})",
        )
    return _root(target)


@_styled
def plot_lattice_map(
    columns: np.ndarray,
    values: np.ndarray,
    *,
    image: np.ndarray | None = None,
    pixel_size: float | None = None,
    label: str = "lattice parameter (Å)",
    limits: tuple[float, float] | None = None,
    title: str | None = None,
    fig: Figure | SubFigure | None = None,
) -> Figure:
    """Columns coloured by a per-column value (lattice parameter, strain) over the image.

    Parameters
    ----------
    columns : ndarray, shape (N, 2)
        Column positions ``(y, x)`` in px.
    values : ndarray, shape (N,)
        One value per column (NaN columns are drawn hollow), in the units named by ``label``.
    image : ndarray, shape (H, W), optional
        Drawn underneath in grey; without it the axes span the columns.
    pixel_size : float, optional
        Å/px; draws a scale bar (needs ``image``).
    label : str
        Colour-bar label, with units.
    limits : (float, float), optional
        Colour range; by default the 2nd–98th percentile, symmetric about the median.
    title : str, optional
    fig : Figure or SubFigure, optional
        Where to draw; by default a new figure.

    Returns
    -------
    Figure

    Examples
    --------
    >>> yx = np.stack(np.meshgrid(np.arange(5.0), np.arange(5.0)), -1).reshape(-1, 2) * 10
    >>> fig = plot_lattice_map(yx, yx[:, 1] / 10, label="a (Å)")
    >>> fig.axes[0].child_axes[0].get_ylabel()  # the colour bar
    'a (Å)'
    """
    columns = np.asarray(columns, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64).ravel()
    if columns.ndim != 2 or columns.shape[1] != 2:
        raise ValueError(f"columns must have shape (N, 2) as (y, x) px, got {columns.shape}")
    if values.shape != (columns.shape[0],):
        raise ValueError(
            f"values must have one entry per column ({columns.shape[0]}), got {values.shape}"
        )
    if pixel_size is not None and image is None:
        raise ValueError("a scale bar needs the image: pass image= along with pixel_size=")
    target = _target(fig, 3.4, 2.9)
    ax = target.subplots()
    if image is not None:
        _show(ax, _as_image(image, "image"), pixel_size=pixel_size)
    else:
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.set_xlabel("x (px)")
        ax.set_ylabel("y (px)")
    finite = np.isfinite(values)
    if limits is None:
        if finite.any():
            low, high = np.percentile(values[finite], [2, 98])
            middle = float(np.median(values[finite]))
            half = max(high - middle, middle - low, 1e-12)
            limits = (middle - half, middle + half)
        else:
            limits = (0.0, 1.0)
    size = 14.0 if columns.shape[0] < 400 else 6.0
    points = ax.scatter(
        columns[finite, 1],
        columns[finite, 0],
        c=values[finite],
        cmap=_MAP_CMAP,
        vmin=limits[0],
        vmax=limits[1],
        s=size,
        edgecolors="black",
        linewidths=0.2,
    )
    if (~finite).any():
        ax.scatter(
            columns[~finite, 1],
            columns[~finite, 0],
            facecolors="none",
            edgecolors="0.6",
            s=size,
            linewidths=0.4,
        )
    _colorbar(ax, points, label)
    if title is not None:
        ax.set_title(title)
    return _root(target)


def _axes(ax: Axes | None, width: float, height: float) -> tuple[Figure, Axes]:
    if ax is None:
        fig = new_figure(width, height)
        return fig, fig.add_subplot()
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
    return _root(ax.figure), ax


@_styled
def plot_elongation_profile(
    distance: np.ndarray,
    measured: np.ndarray | Mapping[str, Any],
    truth: np.ndarray,
    *,
    truth_distance: np.ndarray | None = None,
    labels: Sequence[str] = ("measured", "truth"),
    ylabel: str = "elongation (%)",
    xlabel: str = "distance from fault (Å)",
    ax: Axes | None = None,
) -> Figure:
    """Measured elongation of the cells against distance from a fault, with the true profile.

    Parameters
    ----------
    distance : ndarray, shape (M,)
        Distance of each measurement from the fault plane (signed), in the unit named by
        ``xlabel``.
    measured : ndarray, shape (M,), or mapping of str to ndarray or to (distance, values)
        Measured elongation, in the unit named by ``ylabel``; a mapping draws one series per key
        (e.g. raw and reconstructed), each at ``distance`` or at its own distances.
    truth : ndarray, shape (M,) or (K,)
        True elongation at ``distance`` (or at ``truth_distance``), drawn as a line.
    truth_distance : ndarray, shape (K,), optional
        Where ``truth`` is sampled, if not at ``distance``.
    labels : (str, str)
        Legend entries of a single measured series and of the truth.
    ylabel, xlabel : str
        Axis labels with units.
    ax : Axes, optional
        Where to draw; by default a new figure.

    Returns
    -------
    Figure

    Examples
    --------
    >>> d = np.linspace(-20, 20, 9)
    >>> fig = plot_elongation_profile(d, np.exp(-d**2 / 50), np.exp(-d**2 / 50))
    >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    ['truth', 'measured']
    """
    distance = np.asarray(distance, dtype=np.float64).ravel()
    if not isinstance(measured, Mapping):
        measured = {labels[0]: measured}
    series = {}
    for name, values in measured.items():
        where = distance
        if isinstance(values, tuple) and len(values) == 2:
            where, values = (np.asarray(v, dtype=np.float64).ravel() for v in values)
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.shape != where.shape:
            raise ValueError(
                f"measured {name!r} has shape {values.shape} but its distances {where.shape}"
            )
        series[str(name)] = (where, values)
    truth = np.asarray(truth, dtype=np.float64).ravel()
    truth_x = distance if truth_distance is None else np.asarray(truth_distance, float).ravel()
    if truth.shape != truth_x.shape:
        raise ValueError(
            f"truth has shape {truth.shape} but its distances have shape {truth_x.shape}"
        )
    fig, ax = _axes(ax, 3.0, 2.4)
    order = np.argsort(truth_x)
    ax.plot(truth_x[order], truth[order], color="black", label=labels[1], zorder=1)
    markers = "osD^v"
    colors = _method_colors(list(series))
    for k, (name, (where, values)) in enumerate(series.items()):
        color = colors[k]
        ax.plot(where, values, markers[k % 5], color=color, label=name, mfc="none", zorder=2)
    ax.axvline(0.0, color="0.7", linewidth=0.8, linestyle="--", zorder=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(  # above the axes: the data may reach every corner
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncols=len(series) + 1,
        handlelength=1.0,
        columnspacing=0.8,
        handletextpad=0.4,
    )
    return fig


class _PlainLogFormatter(ticker.LogFormatter):
    """Log-axis tick labels as plain numbers (0.02, 20), not 2 × 10⁻²."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return f"{x:g}"


def _plain_log_ticks(axis: Any) -> None:
    """Plain labels on a log axis: every decade, and minor ticks when the range is short."""
    axis.set_major_formatter(_PlainLogFormatter())
    axis.set_minor_formatter(_PlainLogFormatter(minor_thresholds=(1.2, 0.6)))


def _column(table: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(table[name])
    except (KeyError, ValueError, IndexError) as error:
        raise ValueError(
            f"table has no column {name!r}; pass the right column name as a keyword"
        ) from error


@_styled
def plot_benchmark(
    table: Any,
    *,
    x: str = "dose",
    y: str = "position_error_pm",
    method: str = "method",
    crlb: str | None = "crlb_pm",
    xlabel: str = "dose (counts/px)",
    ylabel: str = "column position error (pm)",
    labels: Mapping[str, str] | None = None,
    legend: bool = True,
    ax: Axes | None = None,
) -> Figure:
    """Column-position error against dose for each method on log axes, with the CRLB as a line.

    Parameters
    ----------
    table : mapping of str to sequence, or structured ndarray
        One row per measurement, e.g. ``numpy.genfromtxt(csv, names=True, dtype=None)`` or a
        dict of columns. Rows sharing a method and an ``x`` value (seeds, pixel sizes) are averaged.
    x, y, method : str
        Column names of the dose, of the error and of the method's name.
    crlb : str or None
        Column of the Cramér–Rao lower bound (same unit as ``y``), averaged per ``x`` and drawn as
        a black line; ``None`` to leave it out.
    xlabel, ylabel : str
        Axis labels with units.
    labels : mapping of str to str, optional
        Legend label of each method name (e.g. ``{"paper": "stem_ae paper"}``); others as named.
    legend : bool
        Draw the legend (leave it out on all but one panel of a multi-panel figure).
    ax : Axes, optional
        Where to draw; by default a new figure.

    Returns
    -------
    Figure

    Examples
    --------
    >>> table = {"method": ["noisy", "noisy", "bm3d", "bm3d"], "dose": [1, 16, 1, 16],
    ...          "position_error_pm": [40.0, 10.0, 20.0, 6.0], "crlb_pm": [8.0, 2.0, 8.0, 2.0]}
    >>> fig = plot_benchmark(table)
    >>> fig.axes[0].get_xscale(), len(fig.axes[0].get_lines())
    ('log', 3)
    """
    doses = _column(table, x).astype(np.float64)
    errors = _column(table, y).astype(np.float64)
    methods = _column(table, method).astype(str)
    if not doses.shape == errors.shape == methods.shape:
        raise ValueError(
            f"columns {x!r}, {y!r}, {method!r} differ in length: "
            f"{doses.shape}, {errors.shape}, {methods.shape}"
        )
    if np.any(doses <= 0):
        raise ValueError(f"column {x!r} must be positive for a log axis, got {doses.min()}")
    fig, ax = _axes(ax, 3.4, 2.6)
    levels = np.unique(doses)
    names = list(dict.fromkeys(methods.tolist()))
    colors = _method_colors(names)
    for k, name in enumerate(names):
        rows = methods == name
        means = [
            np.nanmean(errors[rows & (doses == d)]) for d in levels if (rows & (doses == d)).any()
        ]
        xs = [d for d in levels if (rows & (doses == d)).any()]
        label = (labels or {}).get(name, name)
        ax.plot(xs, means, "o-", color=colors[k], label=label)
    if crlb is not None:
        bound = _column(table, crlb).astype(np.float64)
        values = [np.nanmean(bound[doses == d]) for d in levels]
        ax.plot(levels, values, "-", color=METHOD_COLORS["crlb"], linewidth=1.6, label="CRLB")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_ticks(ax.xaxis)
    _plain_log_ticks(ax.yaxis)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend:  # outside, to the right: the lines cross the whole axes
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return fig


@_styled
def plot_loss(
    history: Any, *, title: str | None = None, ylabel: str = "loss (MSE)", ax: Axes | None = None
) -> Figure:
    """Training and validation loss against epoch, on a log y axis.

    Parameters
    ----------
    history : keras History, or mapping of str to sequence
        ``History.history``-like: ``{"loss": [...], "val_loss": [...], ...}``; every key ending
        in ``loss`` is drawn, one point per epoch.
    title : str, optional
    ylabel : str
    ax : Axes, optional
        Where to draw; by default a new figure.

    Returns
    -------
    Figure

    Examples
    --------
    >>> fig = plot_loss({"loss": [1.0, 0.5, 0.3], "val_loss": [0.9, 0.6, 0.4]})
    >>> [line.get_label() for line in fig.axes[0].get_lines()]
    ['loss', 'val_loss']
    """
    curves = getattr(history, "history", history)
    if not isinstance(curves, Mapping):
        raise TypeError(
            f"history must be a keras History or a mapping, got {type(history).__name__}"
        )
    curves = {k: np.asarray(v, dtype=np.float64) for k, v in curves.items() if k.endswith("loss")}
    if not curves or all(v.size == 0 for v in curves.values()):
        raise ValueError("history has no loss values: train for at least one epoch")
    fig, ax = _axes(ax, 3.2, 2.4)
    for name, values in curves.items():
        epochs = np.arange(1, values.size + 1)
        style = "--" if name.startswith("val") else "-"
        ax.plot(epochs, values, style, marker="o", label=name)
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    ax.legend()
    return fig


@_styled
def plot_noise_models(
    clean: np.ndarray,
    noisy: Mapping[str, np.ndarray],
    *,
    pixel_size: float | None = None,
    columns: int | None = None,
    fig: Figure | SubFigure | None = None,
) -> Figure:
    """The same clean image under each noise model, one panel per model.

    Parameters
    ----------
    clean : ndarray, shape (H, W)
        The noise-free image (first panel).
    noisy : mapping of str to ndarray, shape (H, W)
        The noisy version under each noise model, keyed by the panel title.
    pixel_size : float, optional
        Å/px; draws a scale bar on every panel.
    columns : int, optional
        Panels per row; by default all in one row up to six.
    fig : Figure or SubFigure, optional
        Where to draw; by default a new figure.

    Returns
    -------
    Figure

    Examples
    --------
    >>> clean = np.zeros((28, 28))
    >>> fig = plot_noise_models(clean, {"uniform": clean + 1, "poisson": clean + 2})
    >>> [ax.get_title() for ax in fig.axes]
    ['clean', 'uniform', 'poisson']
    """
    clean = _as_image(clean, "clean")
    if not isinstance(noisy, Mapping) or not noisy:
        raise ValueError("noisy must be a non-empty mapping of noise-model name to image")
    images = {"clean": clean} | {str(k): _as_image(v, f"noisy[{k!r}]") for k, v in noisy.items()}
    n = len(images)
    columns = min(n, 6) if columns is None else int(columns)
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    rows = -(-n // columns)
    target = _target(fig, 1.4 * columns, 1.5 * rows)
    axes = np.asarray(target.subplots(rows, columns, squeeze=False)).ravel()
    for ax, (name, image) in zip(axes, images.items(), strict=False):
        _show(ax, image, title=name, pixel_size=pixel_size)
    for ax in axes[n:]:
        ax.remove()
    return _root(target)


def _pixel_pair(pixel_size: float | Sequence[float] | None) -> tuple[float, float] | None:
    """``(y, x)`` Å/px from one number or a pair (None stays None)."""
    if pixel_size is None:
        return None
    values = np.broadcast_to(np.asarray(pixel_size, dtype=np.float64), (2,))
    if not (np.all(np.isfinite(values)) and np.all(values > 0)):
        raise ValueError(
            f"pixel_size must be positive Å/px (one number or (y, x)), got {pixel_size}"
        )
    return float(values[0]), float(values[1])


def _panel(
    ax: Axes,
    image: np.ndarray,
    pixel_yx: tuple[float, float] | None,
    *,
    title: str | None,
    cmap: str = "gray",
    colorbar: str | None = None,
    scale_bar: bool = True,
) -> None:
    """One image panel with the true pixel aspect (non-square pixels are drawn as such)."""
    vmin, vmax = _limits(image)
    aspect = 1.0 if pixel_yx is None else pixel_yx[0] / pixel_yx[1]
    handle = ax.imshow(image, vmin=vmin, vmax=vmax, cmap=cmap, aspect=aspect)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title is not None:
        ax.set_title(title)
    if pixel_yx is not None and scale_bar:
        add_scale_bar(ax, pixel_yx[1])
    if colorbar is not None:
        _colorbar(ax, handle, colorbar)


@_styled
def plot_preview(
    raw: np.ndarray,
    denoised: np.ndarray,
    uncertainty: np.ndarray | None = None,
    *,
    pixel_size: float | Sequence[float] | None = None,
    title: str | None = None,
    fig: Figure | SubFigure | None = None,
) -> Figure:
    """Raw, denoised and (optionally) uncertainty side by side, with a scale bar.

    What ``stem-ae denoise --preview`` writes: each panel is stretched between its own 0.5th and
    99.5th percentiles; the uncertainty has its own colour map and a colour bar in the image's
    units. Non-square pixels are drawn with their true aspect.

    Parameters
    ----------
    raw, denoised : ndarray, shape (H, W)
        The input and the denoised image, in the input's units.
    uncertainty : ndarray, shape (H, W), optional
        Per-pixel spread, same units.
    pixel_size : float or (float, float), optional
        Å/px (``(y, x)`` for non-square pixels); adds a scale bar in nm.
    title : str, optional
        Figure title (e.g. the file name).
    fig : Figure or SubFigure, optional
        Draw into this figure instead of a new one.

    Returns
    -------
    Figure

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> clean = rng.random((40, 50))
    >>> fig = plot_preview(clean + rng.normal(size=clean.shape), clean, 0.1 * clean,
    ...                    pixel_size=(0.3, 0.2))
    >>> [ax.get_title() for ax in fig.axes[:3]]
    ['raw', 'denoised', 'uncertainty']
    """
    raw = _as_image(raw, "raw")
    denoised = _as_image(denoised, "denoised")
    panels = [(raw, "raw"), (denoised, "denoised")]
    if uncertainty is not None:
        panels.append((_as_image(uncertainty, "uncertainty"), "uncertainty"))
    if any(image.shape != raw.shape for image, _ in panels):
        raise ValueError(
            f"raw, denoised and uncertainty must have one shape, got "
            f"{[image.shape for image, _ in panels]}"
        )
    pixel_yx = _pixel_pair(pixel_size)
    height_ratio = raw.shape[0] / raw.shape[1] * (pixel_yx[0] / pixel_yx[1] if pixel_yx else 1)
    width = 2.4 * len(panels)
    target = _target(fig, width, 2.4 * height_ratio + 0.5)
    axes = target.subplots(1, len(panels))
    for ax, (image, name) in zip(axes, panels, strict=True):
        spread = name == "uncertainty"
        _panel(
            ax,
            image,
            pixel_yx,
            title=name,
            cmap="magma" if spread else "gray",
            colorbar="spread" if spread else None,
            scale_bar=not spread,
        )
    if title:
        target.suptitle(title)
    return _root(target)


@_styled
def plot_contact_sheet(
    frames: np.ndarray,
    *,
    pixel_size: float | Sequence[float] | None = None,
    frame_interval: float | None = None,
    max_frames: int = 36,
    title: str | None = None,
) -> Figure:
    """A grid of the frames of a series, each labelled with its index (and time).

    Parameters
    ----------
    frames : ndarray, shape (frames, H, W)
        A series (e.g. the denoised stack).
    pixel_size : float or (float, float), optional
        Å/px; a scale bar on the first frame.
    frame_interval : float, optional
        Time between frames, s; labels then show the time too.
    max_frames : int
        At most this many frames, evenly spaced over the series, are drawn (the title says so).
    title : str, optional
        Figure title.

    Returns
    -------
    Figure

    Examples
    --------
    >>> fig = plot_contact_sheet(np.random.default_rng(0).random((5, 20, 20)), frame_interval=0.5)
    >>> [ax.get_title() for ax in fig.axes][:2]
    ['0 (0 s)', '1 (0.5 s)']
    """
    stack = _as_stack(frames, "frames")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    pixel_yx = _pixel_pair(pixel_size)
    count = len(stack)
    shown = np.unique(np.linspace(0, count - 1, min(count, max_frames)).round().astype(int))
    columns = int(np.ceil(np.sqrt(len(shown))))
    rows = int(np.ceil(len(shown) / columns))
    aspect = stack.shape[1] / stack.shape[2] * (pixel_yx[0] / pixel_yx[1] if pixel_yx else 1)
    fig = new_figure(1.4 * columns, 1.4 * rows * aspect + 0.4)
    limits = _limits(stack[shown])
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for position, ax in enumerate(axes):
        if position >= len(shown):
            ax.set_axis_off()
            continue
        index = int(shown[position])
        label = str(index)
        if frame_interval is not None:
            label += f" ({index * frame_interval:.3g} s)"
        ratio = 1.0 if pixel_yx is None else pixel_yx[0] / pixel_yx[1]
        ax.imshow(stack[index], vmin=limits[0], vmax=limits[1], cmap="gray", aspect=ratio)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, fontsize=STYLE["font.size"] - 1)
        if position == 0 and pixel_yx is not None:
            add_scale_bar(ax, pixel_yx[1])
    heading = title or ""
    if len(shown) < count:
        heading = f"{heading} — {len(shown)} of {count} frames".strip(" —")
    if heading:
        fig.suptitle(heading)
    return fig


def save_figure(
    fig: Figure,
    path_stem: str | os.PathLike[str],
    formats: Sequence[str] = ("png", "pdf"),
    *,
    dpi: float | None = None,
) -> list[Path]:
    """Write a figure in several formats, each atomically.

    Every format is first written to a temporary file in the target folder; only when all of them
    have been written are they renamed into place (``os.replace``). If drawing or writing fails,
    the temporary files are removed and any existing figure is left untouched. PDF and PNG
    metadata that changes from run to run (creation date, software version) is left out, so the
    same figure gives the same bytes.

    Parameters
    ----------
    fig : Figure
    path_stem : str or path-like
        Target path without extension, e.g. ``figures/figure2``; its folder is created.
    formats : sequence of str
        File extensions understood by Matplotlib.
    dpi : float, optional
        Raster resolution; by default :data:`STYLE`'s ``savefig.dpi``.

    Returns
    -------
    list of Path
        The files written, one per format.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     paths = save_figure(new_figure(1, 1), Path(folder) / "empty")
    ...     sorted(p.name for p in Path(folder).iterdir())
    ['empty.pdf', 'empty.png']
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    if isinstance(formats, str):
        formats = (formats,)
    if not formats:
        raise ValueError("formats is empty: give at least one, e.g. ('png', 'pdf')")
    stem = Path(path_stem)
    if stem.suffix.lstrip(".") in {"png", "pdf", "svg", "jpg", "eps"}:
        raise ValueError(f"path_stem {str(stem)!r} has an extension: pass it without one")
    stem.parent.mkdir(parents=True, exist_ok=True)
    dpi = STYLE["savefig.dpi"] if dpi is None else dpi
    written: list[tuple[str, Path]] = []
    try:
        for fmt in formats:
            metadata = {"CreationDate": None} if fmt == "pdf" else None
            if fmt == "png":
                metadata = {"Software": None}
            handle, temporary = tempfile.mkstemp(
                prefix=f".{stem.name}.", suffix=f".part.{fmt}", dir=stem.parent
            )
            os.close(handle)
            written.append((temporary, stem.with_name(f"{stem.name}.{fmt}")))
            with mpl.rc_context(STYLE):
                fig.savefig(temporary, format=fmt, dpi=dpi, metadata=metadata)
    except BaseException:
        for temporary, _ in written:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        raise
    for temporary, final in written:
        os.chmod(temporary, 0o644)  # mkstemp makes the file private; a figure is for everyone
        os.replace(temporary, final)
    return [final for _, final in written]
