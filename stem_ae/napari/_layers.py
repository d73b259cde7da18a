"""The napari widget's work, without napari: an image layer's data in, new layers' data out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def denoise_layer_data(
    data: Any,
    *,
    name: str = "image",
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    step: int | None = None,
    model: Any = None,
    contrast: str | None = None,
    uncertainty: bool = False,
    source: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[np.ndarray, dict, str]]:
    """Denoise an image layer's data and describe the layers to add (napari ``LayerDataTuple``).

    Parameters
    ----------
    data : array-like, shape (H, W) or (frames, H, W)
        The selected image layer's data (a series is denoised frame by frame).
    name : str
        The layer's name: the new layers are ``"<name> denoised"`` and ``"<name> uncertainty"``.
    scale, translate : sequence of float, optional
        The layer's scale and translate (world units per px, e.g. nm), given to the new layers
        so that they overlay the input exactly.
    step : int, optional
        Window step, px; None: the model's (:func:`stem_ae.denoising.default_step`), which the
        record names.
    model : None, str, path or keras.Model
        None: as :func:`stem_ae.denoise`, ``"general"``, or ``"general_conv"`` for dark columns
        (chosen here, so that the record names it); ``"general"``, ``"general_conv"``,
        ``"paper"``, a model folder or a loaded model.
    contrast : {"auto", "bright", "dark"}, optional
        Passed on to :func:`stem_ae.denoise` when it takes ``contrast``; recorded either way.
    uncertainty : bool
        Also return the per-pixel spread as a second layer.
    source : str, optional
        The file the layer was read from, for the record of processing.
    progress : callable (done, total) -> None, optional
        Forwarded to :func:`stem_ae.denoise`.

    Returns
    -------
    list of (ndarray, dict, str)
        ``(data, keyword arguments, "image")`` per new layer; the keyword arguments hold
        ``name``, ``scale``, ``translate``, ``colormap`` and ``metadata["stem_ae"]``, the record
        of processing (:func:`stem_ae.io.processing_record`).

    Raises
    ------
    ValueError
        If the data are not 2-D or 3-D, or anything :func:`stem_ae.denoise` refuses.
    """
    import inspect

    from stem_ae import denoise, estimate_lattice
    from stem_ae.denoising import default_step
    from stem_ae.io import processing_record

    array = np.asarray(data)
    if array.ndim not in (2, 3):
        raise ValueError(
            f"layer {name!r} has shape {array.shape}; select a 2-D image or a (frames, H, W) "
            f"series."
        )
    if model is None:  # denoise's default: general, or DARK_MODEL for dark columns
        model = _default_model(array, contrast)
    if step is None:  # the model's own default, named in the record
        step = default_step(model)
    options: dict = {}
    if contrast is not None and "contrast" in inspect.signature(denoise).parameters:
        options["contrast"] = contrast
    result = denoise(
        array,
        step=step,
        model=model,
        return_uncertainty=uncertainty,
        progress=progress,
        **options,
    )
    denoised, spread = result if uncertainty else (result, None)
    frame = array if array.ndim == 2 else array[: min(4, len(array))].mean(axis=0)
    try:
        lattice = estimate_lattice(np.asarray(frame, np.float64))
    except ValueError:
        lattice = None
    record = processing_record(
        "stem_ae.denoise",
        model=model,
        step=step,
        contrast=contrast,
        lattice=lattice,
        source=source,
        command="napari: Denoise (stem_ae)",
    )
    common: dict = {}
    if scale is not None:
        common["scale"] = tuple(float(v) for v in scale)
    if translate is not None:
        common["translate"] = tuple(float(v) for v in translate)
    layers = [
        (
            denoised,
            {**common, "name": f"{name} denoised", "metadata": {"stem_ae": record}},
            "image",
        )
    ]
    if spread is not None:
        layers.append(
            (
                spread,
                {
                    **common,
                    "name": f"{name} uncertainty",
                    "colormap": "magma",
                    "metadata": {"stem_ae": {**record, "output": "uncertainty"}},
                },
                "image",
            )
        )
    return layers


def _default_model(array: np.ndarray, contrast: str | None) -> str:
    """The model ``stem_ae.denoise(model=None)`` takes for these data
    (:func:`stem_ae.denoising.default_model` of the contrast given, or detected on the first
    frame)."""
    from stem_ae.denoising import default_model, detect_contrast

    if contrast not in ("bright", "dark"):
        frame = np.asarray(array if array.ndim == 2 else array[0], np.float64)
        try:
            contrast = detect_contrast(frame)
        except ValueError:  # no 2-D lattice: denoise takes such an image as bright (or refuses)
            contrast = "bright"
    return default_model(contrast)
