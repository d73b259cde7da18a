"""HyperSpy in and out, duck-typed: nothing here imports HyperSpy unless a signal is made.

:func:`stem_ae.denoise` accepts a HyperSpy ``Signal2D`` (an image, or a stack with one navigation
axis) and returns ``Signal2D`` objects with the input's axes (scale, units, offset, name), its
metadata and original metadata, and the record of processing under
``metadata.Processing.stem_ae``. :func:`stem_ae.io.write_image` writes ``.hspy`` through
:func:`make_signal`.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from stem_ae._common import _jsonable, to_angstrom

__all__ = [
    "from_signal",
    "is_signal2d",
    "make_signal",
    "require_hyperspy",
    "signal_result",
    "to_signal",
]

RECORD_PATH = "Processing.stem_ae"
"""Where the record of processing goes in a signal's ``metadata``."""


def require_hyperspy(purpose: str = "this") -> Any:
    """Import ``hyperspy.api``, or raise ``ImportError`` that says how to install it."""
    try:
        import hyperspy.api as hs
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs HyperSpy, which is not installed — pip install 'stem_ae[hyperspy]' "
            f"(or pip install hyperspy), or write .tif instead."
        ) from error
    return hs


def is_signal2d(obj: Any) -> bool:
    """Whether ``obj`` is a HyperSpy signal with two signal axes (``Signal2D`` or alike).

    Duck-typed: HyperSpy is never imported, so a plain array answers ``False`` at no cost.

    Examples
    --------
    >>> is_signal2d(np.zeros((4, 4)))
    False
    """
    axes_manager = getattr(obj, "axes_manager", None)
    return (
        axes_manager is not None
        and hasattr(obj, "data")
        and getattr(axes_manager, "signal_dimension", None) == 2
    )


def _axes(signal: Any) -> list:
    """The signal's axes in array order (HyperSpy lists navigation axes reversed)."""
    manager = signal.axes_manager
    return list(manager.navigation_axes)[::-1] + list(manager.signal_axes)[::-1]


def from_signal(signal: Any) -> tuple[Any, dict]:
    """The pixels and the calibration of a HyperSpy ``Signal2D``.

    Parameters
    ----------
    signal : hyperspy.signals.Signal2D
        An image (no navigation axis) or a stack (one navigation axis, e.g. time).

    Returns
    -------
    data : ndarray or dask.array.Array, shape (H, W) or (frames, H, W)
        ``signal.data`` itself (a lazy signal gives its Dask array).
    info : dict
        ``pixel_size``: ``(y, x)`` Å/px, or ``None`` when the signal axes are not lengths;
        ``frame_interval``: s, or ``None``; ``title``; ``axes``: each axis's ``name``,
        ``scale``, ``offset``, ``units``, ``navigate`` in array order; ``original_metadata``.

    Raises
    ------
    TypeError
        If ``signal`` is not a ``Signal2D``.
    ValueError
        If it has more than one navigation axis (e.g. a 4-D STEM dataset).
    """
    if not is_signal2d(signal):
        raise TypeError(
            f"expected a HyperSpy Signal2D, got {type(signal).__name__} — give a Signal2D or an "
            f"array (H, W) / (frames, H, W)."
        )
    manager = signal.axes_manager
    if manager.navigation_dimension > 1:
        raise ValueError(
            f"the signal has {manager.navigation_dimension} navigation axes "
            f"({manager.navigation_shape}) — stem_ae denoises an image or a series: give one "
            f"image or one stack (e.g. signal.inav[:, 0])."
        )
    axes = [
        {
            "name": None if axis.name in (None, "<undefined>") else str(axis.name),
            "scale": float(axis.scale),
            "offset": float(axis.offset),
            "units": None if axis.units in (None, "<undefined>") else str(axis.units),
            "navigate": bool(axis.navigate),
        }
        for axis in _axes(signal)
    ]
    y_axis, x_axis = axes[-2], axes[-1]
    y = to_angstrom(y_axis["scale"], y_axis["units"]) if y_axis["units"] else None
    x = to_angstrom(x_axis["scale"], x_axis["units"]) if x_axis["units"] else None
    pixel_size = (y, x) if x is not None and y is not None and x > 0 and y > 0 else None
    frame_interval = None
    if len(axes) == 3 and axes[0]["units"] == "s" and axes[0]["scale"] > 0:
        frame_interval = axes[0]["scale"]
    info = {
        "pixel_size": pixel_size,
        "frame_interval": frame_interval,
        "title": str(signal.metadata.get_item("General.title", "") or ""),
        "axes": axes,
        "original_metadata": signal.original_metadata.as_dictionary(),
    }
    return signal.data, info


def _metadata_record(record: dict | None) -> dict | None:
    """The record with ``None`` values left out (HyperSpy stores them as the text ``_None_``)."""
    if record is None:
        return None
    if isinstance(record, dict):
        return {k: _metadata_record(v) for k, v in record.items() if v is not None}
    return record


def to_signal(
    template: Any, array: Any, record: dict | None = None, *, output: str = "denoised"
) -> Any:
    """A ``Signal2D`` holding ``array`` with the axes and metadata of ``template``.

    Parameters
    ----------
    template : hyperspy.signals.Signal2D
        The input signal; its axes (scale, units, offset, name), metadata and original
        metadata are copied, never changed.
    array : ndarray or dask.array.Array, same shape as ``template.data``
        The output pixels (a Dask array gives a lazy signal).
    record : dict, optional
        Record of processing (:func:`stem_ae.io.processing_record`), stored under
        ``metadata.Processing.stem_ae``.
    output : str
        ``"denoised"``, ``"uncertainty"`` or ``"crystal map"``: appended to the title in
        parentheses.

    Returns
    -------
    hyperspy.signals.Signal2D
        A new signal (``LazySignal2D`` for a Dask array).

    Raises
    ------
    ValueError
        If ``array`` does not have the template's shape.
    """
    hs = require_hyperspy("returning a Signal2D")
    if tuple(np.shape(array)) != tuple(template.data.shape):
        raise ValueError(
            f"array of shape {np.shape(array)} does not match the signal's data "
            f"{template.data.shape}."
        )
    axes = []
    for axis in _axes(template):
        axes.append(
            {
                "size": int(axis.size),
                "scale": float(axis.scale),
                "offset": float(axis.offset),
                "units": axis.units,
                "name": axis.name,
                "navigate": bool(axis.navigate),
            }
        )
    metadata = copy.deepcopy(template.metadata.as_dictionary())
    metadata.pop("_HyperSpy", None)
    general = metadata.setdefault("General", {})
    title = str(general.get("title") or "")
    general["title"] = f"{title} ({output})" if title else output
    signal = hs.signals.Signal2D(
        array,
        axes=axes,
        metadata=metadata,
        original_metadata=copy.deepcopy(template.original_metadata.as_dictionary()),
    )
    if not isinstance(array, np.ndarray) and hasattr(array, "dask"):
        signal = signal.as_lazy()
    if record is not None:
        signal.metadata.set_item(RECORD_PATH, _metadata_record(record))
    return signal


def signal_result(
    template: Any,
    denoised: Any,
    spread: Any = None,
    *,
    record: dict | None = None,
) -> Any:
    """:func:`stem_ae.denoise`'s result as signals: ``denoised`` or ``(denoised, spread)``.

    Each signal gets ``record`` with its ``output`` set to ``"denoised"`` or ``"uncertainty"``.
    """

    def record_for(output: str) -> dict | None:
        return None if record is None else {**record, "output": output}

    result = to_signal(template, denoised, record_for("denoised"), output="denoised")
    if spread is None:
        return result
    uncertainty = to_signal(template, spread, record_for("uncertainty"), output="uncertainty")
    return result, uncertainty


def make_signal(
    array: np.ndarray,
    *,
    pixel_size: tuple[float, float] | None = None,
    frame_interval: float | None = None,
    record: dict | None = None,
    original_metadata: dict | None = None,
    title: str = "",
) -> Any:
    """A ``Signal2D`` for :func:`stem_ae.io.write_image`'s ``.hspy`` output.

    Parameters
    ----------
    array : ndarray, shape (H, W) or (frames, H, W)
        The pixels.
    pixel_size : (float, float), optional
        ``(y, x)`` Å/px; the signal axes are in nm (HyperSpy's and Fiji's usual unit).
    frame_interval : float, optional
        Time between frames, s (the navigation axis of a stack).
    record : dict, optional
        Stored under ``metadata.Processing.stem_ae``.
    original_metadata : dict, optional
        The input file's own tags, stored as the signal's original metadata.
    title : str
        ``metadata.General.title``.

    Returns
    -------
    hyperspy.signals.Signal2D
    """
    hs = require_hyperspy("writing .hspy")
    axes = []
    if array.ndim == 3:
        axes.append(
            {
                "size": array.shape[0],
                "name": "time" if frame_interval else "frame",
                "scale": float(frame_interval or 1.0),
                "units": "s" if frame_interval else None,
                "navigate": True,
            }
        )
    for size, name, index in ((array.shape[-2], "y", 0), (array.shape[-1], "x", 1)):
        axis = {"size": size, "name": name, "navigate": False}
        if pixel_size is not None:
            axis.update(scale=pixel_size[index] / 10.0, units="nm")
        axes.append(axis)
    signal = hs.signals.Signal2D(
        array,
        axes=axes,
        metadata={"General": {"title": title}},
        original_metadata=_jsonable(original_metadata or {}),
    )
    if record is not None:
        signal.metadata.set_item(RECORD_PATH, _metadata_record(record))
    return signal
