"""Floating-window reconstruction and the user-facing :func:`denoise`.

A dense auto-encoder sees one ``window × window`` patch (28×28 px) at a time. :func:`reconstruct`
slides that window over the whole image at a fixed ``step``, runs every window through the model
and recombines the overlapping predictions into one image (overlap-add with blend weights), and
optionally the per-pixel spread of those predictions.

Conventions (shared by ``method="fast"`` and ``method="naive"``):

* The image is reflect-padded (:func:`numpy.pad` ``mode="reflect"``, i.e. mirrored about the border
  pixel) by ``window - 1`` px before the first row/column. Window top-left corners sit at
  ``-(window - 1) + k * step`` (k = 0, 1, …) up to the last one that still contains the final
  pixel, so a border pixel is covered by exactly as many windows as a centre pixel of the same
  phase: there is no border effect beyond what the reflection itself implies.
* A model whose :class:`~stem_ae.model.AEConfig` has ``normalization == "window"`` (every shipped
  model, and any foreign Keras model) sees each window standardised by its own mean and standard
  deviation (``docs/design.md``); its output is put back into image units before blending.
  Because the result is then equivariant to ``a * image + b`` (a > 0), the image is first brought
  to zero median and unit standard deviation internally, which keeps float32 accurate for raw
  counts on a large offset.
"""

from __future__ import annotations

import functools
import math
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from stem_ae import _callable_module
from stem_ae._residual import (
    CONSISTENCY_WIDTH,
    RESIDUAL_SIGMAS,
    apply_residual,
    choose_residual_sigma,
    consistency_correction,
    noise_variance,
)

WINDOW = 28
"""Side of the auto-encoder's square window, px (the paper's 28×28)."""

BLENDS = ("mean", "hann")
"""Recombination weights: ``"mean"`` is the paper's plain average; ``"hann"`` weights every window
by a separable 2-D Hann profile with a floor (:data:`HANN_FLOOR`), which down-weights window edges
where a dense AE is least reliable."""

DEFAULT_BLEND = "hann"
"""Default of ``blend``, chosen by measurement on simulated scenes (``benchmarks/reconstruct.py
--blend``, figures in the README)."""

HANN_FLOOR = 0.1
"""Smallest 1-D weight of the ``"hann"`` blend, so every pixel of every window keeps a positive
weight (the 2-D weight is the outer product, so its floor is ``HANN_FLOOR**2``)."""

METHODS = ("fast", "naive")

#: Threads that run bands through the model at once in ``method="fast"``: two keep the matrix
#: products busy while NumPy computes window statistics and the next band is prepared
#: (1024² at step 2 on 2 cores: 2.7 s with one, 2.3 s with two; more gave nothing).
PIPELINE = 2

ProgressCallback = Callable[[int, int], None]


class CalibrationWarning(UserWarning):
    """The pixel size given by the user disagrees with the lattice measured in the image."""


# --------------------------------------------------------------------------------------------
# window geometry


def _grid(length: int, window: int, step: int, phase: int = 0) -> tuple[int, int, int]:
    """Window grid along one axis: ``(n_windows, pad_before, pad_after)`` in px.

    Window starts are the integers ``t ≡ phase (mod step)`` with ``-(window - 1) <= t <= length
    - 1``: exactly the windows that contain at least one pixel, so every pixel is covered by all
    grid windows that contain it, at the border as in the centre.
    """
    first = -(window - 1) + (phase + window - 1) % step
    n_windows = (length - 1 - first) // step + 1
    pad_after = first + (n_windows - 1) * step + window - length
    return n_windows, -first, pad_after


def _blend_profile(window: int, blend: str) -> np.ndarray:
    """1-D blend weights, shape (window,); the 2-D weight is their outer product."""
    if blend == "mean":
        return np.ones(window, np.float64)
    position = (np.arange(window) + 0.5) / window
    return HANN_FLOOR + (1.0 - HANN_FLOOR) * np.sin(np.pi * position) ** 2


def blend_weights(blend: str = DEFAULT_BLEND, window: int = WINDOW) -> np.ndarray:
    """Per-pixel weight of a window's prediction when overlapping windows are recombined.

    Parameters
    ----------
    blend : {"mean", "hann"}
        ``"mean"``: all ones (the paper's plain average). ``"hann"``: the outer product of a 1-D
        Hann profile lifted to a floor of :data:`HANN_FLOOR`.
    window : int
        Window side, px.

    Returns
    -------
    ndarray, shape (window, window), float32
        Positive weights, 1 at the window centre for ``"hann"``.

    Examples
    --------
    >>> w = blend_weights("hann")
    >>> w.shape, bool(w.min() > 0), float(w.max()) <= 1.0
    ((28, 28), True, True)
    """
    _check_blend(blend)
    profile = _blend_profile(window, blend)
    return np.outer(profile, profile).astype(np.float32)


def _weight_sum_1d(
    length: int, window: int, step: int, profile: np.ndarray, phase: int = 0
) -> np.ndarray:
    """Sum over the windows covering each pixel of the 1-D profile, shape (length,)."""
    n_windows, pad_before, _ = _grid(length, window, step, phase)
    total = np.zeros((n_windows - 1) * step + window, np.float64)
    for offset in range(window):
        total[offset : offset + (n_windows - 1) * step + 1 : step] += profile[offset]
    return total[pad_before : pad_before + length]


def _check_blend(blend: str) -> None:
    if blend not in BLENDS:
        raise ValueError(f"blend={blend!r} is not one of {BLENDS}; use 'mean' or 'hann'.")


def _check_step(step, window: int = WINDOW) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step={step!r} must be an integer number of px between 1 and {window}.")
    if not 1 <= step <= window:
        raise ValueError(
            f"step={step} px is outside 1..{window}: windows would not cover the image "
            f"(step > {window}) or would not move (step < 1). Use step=2 (default) or another "
            f"integer in 1..{window}."
        )
    return int(step)


def iter_tiles(
    shape: tuple[int, int], tile: int, overlap: int
) -> Iterator[tuple[tuple[slice, slice], tuple[slice, slice], tuple[slice, slice]]]:
    """Split an image into overlapping tiles whose trimmed centres tile it exactly.

    Parameters
    ----------
    shape : (int, int)
        Image shape (H, W), px.
    tile : int
        Side of a tile's kept centre, px (tiles at the border are smaller).
    overlap : int
        Margin added on every side of the kept centre where the image allows, px.

    Yields
    ------
    tile_slice : (slice, slice)
        Region of the image to process (kept centre plus margins).
    source_slice : (slice, slice)
        Region of the processed tile to keep, in tile coordinates.
    target_slice : (slice, slice)
        Where that region goes in the output, in image coordinates.

    Examples
    --------
    The identity round trip rebuilds the image:

    >>> image = np.arange(35 * 50.0).reshape(35, 50)
    >>> out = np.zeros_like(image)
    >>> for tile_slice, source, target in iter_tiles(image.shape, tile=16, overlap=5):
    ...     out[target] = image[tile_slice][source]
    >>> bool(np.array_equal(out, image))
    True
    """
    if tile < 1 or overlap < 0:
        raise ValueError(f"tile={tile} must be >= 1 px and overlap={overlap} >= 0 px.")
    starts = [range(0, n, tile) for n in shape]
    for y0 in starts[0]:
        for x0 in starts[1]:
            tile_slice, source, target = [], [], []
            for start, n in ((y0, shape[0]), (x0, shape[1])):
                stop = min(start + tile, n)
                lo, hi = max(start - overlap, 0), min(stop + overlap, n)
                tile_slice.append(slice(lo, hi))
                source.append(slice(start - lo, stop - lo))
                target.append(slice(start, stop))
            yield tuple(tile_slice), tuple(source), tuple(target)


# --------------------------------------------------------------------------------------------
# the model as a fast function of (n, window*window) float32 arrays


def _model_window_and_normalization(model) -> tuple[int, str]:
    """Window side (px) and input convention of a model (see ``stem_ae.model.get_config``)."""
    from stem_ae.model import get_config

    config = get_config(model)
    return int(config.window), config.normalization


_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh")


def _dense_chain(model) -> list[tuple[np.ndarray, np.ndarray, str]] | None:
    """Kernels, biases and activation names of a model that is a plain chain of Dense layers.

    Returns None when the model contains anything else (then the Keras graph itself is run).
    """
    chain = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in ("Flatten", "Reshape", "InputLayer", "Dropout"):
            continue
        if kind != "Dense":
            return None
        activation = layer.get_config().get("activation", "linear")
        if not isinstance(activation, str) or activation not in _ACTIVATIONS:
            return None
        kernel, *bias = (np.asarray(w, np.float32) for w in layer.get_weights())
        bias = bias[0] if bias else np.zeros(kernel.shape[1], np.float32)
        chain.append((kernel, bias, activation))
    return chain or None


_BAND_FUNCTION = None  # the compiled _band_chain, shared by all models (traced per shape)
_TRACE_LOCK = threading.Lock()


def _band_chain(band, mu, scale, weights, *, step, window, kernels, biases, activations):
    """Dense chain on every window of a band (TensorFlow ops); see :meth:`_Runner.band`."""
    import tensorflow as tf

    def act(values, name):
        return values if name == "linear" else getattr(tf.nn, name)(values)

    rows, cols = tf.shape(mu)[0], tf.shape(mu)[1]
    n = rows * cols
    mu, scale = tf.reshape(mu, (n, 1)), tf.reshape(scale, (n, 1))
    first = tf.reshape(kernels[0], (window, window, 1, -1))
    # first layer as a strided correlation of the band: no window is ever copied out; the
    # window mean enters through the kernel's column sums, W·(x - mu) = W·x - mu·ΣW
    hidden = tf.nn.conv2d(band[None, :, :, None], first, strides=step, padding="VALID")
    hidden = tf.reshape(hidden, (n, -1)) - mu * tf.reduce_sum(kernels[0], 0)
    hidden = act(hidden * (1.0 / scale) + biases[0], activations[0])
    last = len(kernels) - 1
    for kernel, bias, activation in zip(
        kernels[1:last], biases[1:last], activations[1:last], strict=True
    ):
        hidden = act(tf.matmul(hidden, kernel) + bias, activation)
    if last == 0 or activations[last] != "linear":
        out = (
            hidden
            if last == 0
            else act(tf.matmul(hidden, kernels[last]) + biases[last], activations[last])
        )
        return tf.transpose(out * scale + mu) * weights[:, None]
    # w·(y·scale + mu) with y = K·h + b as one product: [K·w; b·w; w]ᵀ [h·scale, scale, mu]
    kernel = tf.concat([kernels[last] * weights, (biases[last] * weights)[None], weights[None]], 0)
    return tf.matmul(kernel, tf.concat([hidden * scale, scale, mu], 1), True, True)


class _Runner:
    """The model as a function of windows, standardisation folded in.

    A plain chain of Dense layers (every shipped model) runs through :meth:`band`: one compiled
    TensorFlow function takes a band of image rows and the windows' means and scales and
    returns every window's output, the first layer computed as a strided correlation of the
    band (no window is copied out; oneDNN runs it as fast as the matrix product it replaces)
    and the last layer, the output scaling and the blend weights merged into one product. Any
    other Keras model runs through :meth:`__call__` on windows gathered as columns. The runner
    pickles (for ``dask.distributed``) as plain arrays and is recompiled where it is unpickled.
    """

    def __init__(self, model):
        self.window, self.normalization = _model_window_and_normalization(model)
        self.chain = _dense_chain(model)
        self.model = model if self.chain is None else None
        self._compile()

    @property
    def banded(self) -> bool:
        """Whether :meth:`band` is available (the model is a plain Dense chain)."""
        return self.chain is not None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_function": None, "_traced": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._compile()

    def _compile(self) -> None:
        import tensorflow as tf

        self._traced: set[int] = set()
        if self.chain is None:
            self._function = getattr(self.model, "_stem_ae_forward", None)
            if self._function is None:
                model, n_in = self.model, self.window * self.window
                shape = tuple(self.model.input_shape[1:])

                def forward(x, mu, scale, weights):
                    n = tf.shape(x)[1]
                    z = tf.reshape(tf.transpose(x / scale), tf.concat([[n], shape], 0))
                    out = tf.transpose(tf.reshape(model(z, training=False), [n, n_in]))
                    return (out * scale + mu) * weights[:, None]

                self._function = tf.function(forward, reduce_retracing=True)
                # a cache, not a layer: bypass Keras' attribute tracking
                object.__setattr__(self.model, "_stem_ae_forward", self._function)
            return
        global _BAND_FUNCTION
        if _BAND_FUNCTION is None:
            _BAND_FUNCTION = tf.function(_band_chain, reduce_retracing=True)
        self._function = functools.partial(
            _BAND_FUNCTION,
            window=self.window,
            kernels=tuple(tf.constant(k) for k, _, _ in self.chain),
            biases=tuple(tf.constant(b) for _, b, _ in self.chain),
            activations=tuple(a for _, _, a in self.chain),
        )

    def _defaults(self, shape, mu, scale, weights):
        if scale is None:
            mu, scale = np.zeros(shape, np.float32), np.ones(shape, np.float32)
        if weights is None:
            weights = np.ones(self.window * self.window, np.float32)
        return mu, scale, weights

    def band(self, band, mu, scale, weights, step: int) -> np.ndarray:
        """Outputs of all windows of ``band`` at ``step``, shape (window², rows·cols), float32.

        ``band``: (rows - 1)·step + window image rows; ``mu``, ``scale``: the windows' means and
        standard deviations, shape (rows, cols), or None for a model that sees raw windows;
        ``weights``: (window²,) blend weights or None. Returns ``weights · (y·scale + mu)``, y
        the model's output on the standardised window, windows in row-major order.
        """
        if scale is None:
            rows = (band.shape[0] - self.window) // step + 1
            cols = (band.shape[1] - self.window) // step + 1
            shape = (rows, cols)
        else:
            shape = scale.shape
        mu, scale, weights = self._defaults(shape, mu, scale, weights)
        with _TRACE_LOCK:
            if step not in self._traced:
                # one trace for every band shape: later images and tiles of any size reuse it
                import tensorflow as tf

                matrix = tf.TensorSpec([None, None], tf.float32)
                vector = tf.TensorSpec([None], tf.float32)
                function = self._function
                function.func.get_concrete_function(
                    matrix, matrix, matrix, vector, step=step, **function.keywords
                )
                self._traced.add(step)
        return self._function(band, mu, scale, weights, step=step).numpy()

    def __call__(self, x, mu, scale, weights) -> np.ndarray:
        """Outputs for windows given as columns ``x`` (window², n), minus their means ``mu``."""
        mu, scale, weights = self._defaults(x.shape[1], mu, scale, weights)
        return self._function(x, mu, scale, weights).numpy()


# --------------------------------------------------------------------------------------------
# reconstruct


def _as_image(image, name: str = "image") -> np.ndarray:
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


def _window_stats(band: np.ndarray, window: int, step: int, rows: int, cols: int):
    """Mean and standard deviation (ddof=0) of the windows of a band, shapes (rows, cols)."""
    area = float(window * window)
    out = []
    for values in (band, band * band):
        column = np.zeros((values.shape[0] + 1, values.shape[1]), np.float64)
        np.cumsum(values, axis=0, out=column[1:])
        top = np.arange(rows) * step
        vertical = column[top + window] - column[top]
        row = np.zeros((rows, values.shape[1] + 1), np.float64)
        np.cumsum(vertical, axis=1, out=row[:, 1:])
        left = np.arange(cols) * step
        out.append((row[:, left + window] - row[:, left]) / area)
    mean, mean_square = out
    std = np.sqrt(np.maximum(mean_square - mean * mean, 0.0))
    return mean, std


def reconstruct(
    image: np.ndarray,
    model,
    *,
    step: int = 2,
    method: str = "fast",
    blend: str = DEFAULT_BLEND,
    batch_size: int = 8192,
    return_uncertainty: bool = False,
    progress: ProgressCallback | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Apply a window auto-encoder over a whole image and recombine the overlapping outputs.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Any real dtype and intensity units; H, W >= the model's window (28 px).
    model : keras.Model
        Maps a window (28×28 or 784 values) to a window. Models whose config says
        ``normalization == "window"`` (the default, and any foreign Keras model) get each window
        standardised by its own mean and standard deviation (see ``docs/design.md``).
    step : int
        Distance between neighbouring windows, px, 1..28. Each pixel is predicted by about
        ``(28 / step)**2`` windows.
    method : {"fast", "naive"}
        ``"fast"`` works in bands of about ``batch_size`` windows (the per-window mean and
        standard deviation from running sums): a Dense chain runs as one compiled TensorFlow
        function whose first layer is a strided correlation of the band (no window is copied
        out) and whose last product also applies the window's scale and the blend weights;
        bands run on :data:`PIPELINE` threads and are added back in order, by window offset.
        Other Keras models get their windows gathered by strided slicing and run as one
        compiled call. ``"naive"`` materialises every window, calls ``model.predict`` and adds
        window by window; it is the test oracle.
    blend : {"mean", "hann"}
        Recombination weights, see :func:`blend_weights`.
    batch_size : int
        Windows per chunk (``"fast"``) or per predict batch (``"naive"``); bounds memory.
    return_uncertainty : bool
        Also return the per-pixel weighted standard deviation of the overlapping predictions.
    progress : callable (done, total) -> None, optional
        Called after each chunk with the number of windows done and the total.

    Returns
    -------
    reconstruction : ndarray, shape (H, W), float32
        In the units of ``image``.
    spread : ndarray, shape (H, W), float32
        Only with ``return_uncertainty``: the weighted standard deviation of the window
        predictions of each pixel, in the units of ``image`` (0 where a single window covers it).

    Raises
    ------
    ValueError
        For an image that is not 2-D, smaller than a window, or not finite; a step outside
        1..28; an unknown method or blend.

    Examples
    --------
    An identity auto-encoder gives the image back:

    >>> import keras
    >>> identity = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
    ...     keras.layers.Dense(784, use_bias=False, kernel_initializer="identity"),
    ...     keras.layers.Reshape((28, 28))])
    >>> image = np.random.default_rng(0).normal(size=(40, 50))
    >>> out = reconstruct(image, identity, step=3)
    >>> out.shape, bool(np.allclose(out, image, atol=1e-5))
    ((40, 50), True)
    """
    image = _as_image(image)
    window, normalization = _model_window_and_normalization(model)
    step = _check_step(step, window)
    _check_blend(blend)
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}.")
    if min(image.shape) < window:
        raise ValueError(
            f"image of shape {image.shape} is smaller than the {window}×{window} px window; "
            f"give an image of at least {window}×{window} px."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")

    if normalization == "window":
        # The result is equivariant to a*image + b: work near zero for float32 accuracy.
        data = image.astype(np.float64)
        offset = float(np.median(data))
        gain = float(np.std(data)) or 1.0
    else:
        offset, gain = 0.0, 1.0
    out = _reconstruct(
        (image - offset) / gain if gain != 1.0 or offset else image,
        model,
        step=step,
        method=method,
        blend=blend,
        batch_size=batch_size,
        return_uncertainty=return_uncertainty,
        progress=progress,
    )
    if not return_uncertainty:
        return (out * gain + offset).astype(np.float32)
    return (out[0] * gain + offset).astype(np.float32), (out[1] * gain).astype(np.float32)


def _reconstruct(
    data: np.ndarray,
    model,
    *,
    step: int,
    method: str = "fast",
    blend: str = DEFAULT_BLEND,
    batch_size: int = 8192,
    return_uncertainty: bool = False,
    progress: ProgressCallback | None = None,
    phase: tuple[int, int] = (0, 0),
    runner: _Runner | None = None,
):
    """:func:`reconstruct` without checks or intensity scaling; returns float64 arrays.

    ``phase`` puts window starts at ``phase (mod step)`` so that tiles of a larger image share
    the whole image's window grid.
    """
    if runner is None:
        runner = _Runner(model)
    window, window_norm = runner.window, runner.normalization == "window"
    shape = data.shape
    (ny, top, bottom), (nx, left, right) = (
        _grid(n, window, step, p) for n, p in zip(shape, phase, strict=True)
    )
    padded = np.pad(np.asarray(data, np.float32), ((top, bottom), (left, right)), mode="reflect")
    profile = _blend_profile(window, blend)
    weights = np.outer(profile, profile).astype(np.float32)
    if method == "naive":
        total, squares = _naive(padded, model, window, step, weights, window_norm, batch_size)
        if progress is not None:
            progress(ny * nx, ny * nx)
    else:
        total, squares = _fast(
            padded,
            runner,
            window,
            step,
            (ny, nx),
            weights,
            window_norm,
            batch_size,
            return_uncertainty,
            progress,
        )
    norm = np.outer(
        _weight_sum_1d(shape[0], window, step, profile, phase[0]),
        _weight_sum_1d(shape[1], window, step, profile, phase[1]),
    )
    crop = (slice(top, top + shape[0]), slice(left, left + shape[1]))
    if not return_uncertainty:
        if method == "naive":  # the oracle always sums deviations
            return padded[crop] + total[crop] / norm
        return total[crop] / norm
    mean_deviation = total[crop] / norm
    variance = np.maximum(squares[crop] / norm - mean_deviation**2, 0.0)
    return padded[crop] + mean_deviation, np.sqrt(variance)


def _fast(
    padded: np.ndarray,
    runner: _Runner,
    window: int,
    step: int,
    grid: tuple[int, int],
    weights: np.ndarray,
    window_norm: bool,
    batch_size: int,
    with_squares: bool,
    progress: ProgressCallback | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Banded reconstruction: sums of w·y, or of w·d and w·d² (d = y - input pixel).

    Bands of ``batch_size // nx`` window rows run through the model on :data:`PIPELINE`
    threads (TensorFlow releases the GIL) while this thread adds finished bands in order, so
    the result does not depend on thread timing.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    ny, nx = grid
    total = np.zeros(padded.shape, np.float64 if with_squares else np.float32)
    squares = np.zeros(padded.shape, np.float64) if with_squares else None
    flat_weights = None if with_squares or np.all(weights == 1.0) else weights.reshape(-1)
    rows_per_chunk = max(1, batch_size // nx)

    def compute(r0: int) -> tuple[int, int, np.ndarray]:
        r1 = min(r0 + rows_per_chunk, ny)
        # the last band is run at full height, overlapping the one before, and trimmed: every
        # band then has one shape, and oneDNN keeps buffers for one shape, not two
        first = max(0, r1 - rows_per_chunk)
        rows = r1 - first
        band = padded[first * step : (r1 - 1) * step + window]
        mu = scale = None
        if window_norm:
            mu, sd = _window_stats(band.astype(np.float64), window, step, rows, nx)
            scale = (sd + 1e-6 * (np.abs(mu) + 1.0)).astype(np.float32)
            mu = mu.astype(np.float32)
        if runner.banded:
            out = runner.band(band, mu, scale, flat_weights, step)
        else:
            planes = np.empty((window, window, rows, nx), np.float32)
            _gather(band, planes, step, mu)
            flat = [None if v is None else v.reshape(-1) for v in (mu, scale)]
            out = runner(planes.reshape(window * window, -1), *flat, flat_weights)
        return r0, r1, out.reshape(window, window, rows, nx)[:, :, r0 - first :]

    def finish(r0: int, r1: int, planes: np.ndarray) -> None:
        band = slice(r0 * step, (r1 - 1) * step + window)
        if with_squares:
            _add_deviations(total[band], squares[band], planes, padded[band], step, weights)
        else:
            _overlap_add(total[band], planes, step)
        if progress is not None:
            progress(r1 * nx, ny * nx)

    pending: deque = deque()
    with ThreadPoolExecutor(PIPELINE) as pool:
        for r0 in range(0, ny, rows_per_chunk):
            pending.append(pool.submit(compute, r0))
            if len(pending) > PIPELINE:
                finish(*pending.popleft().result())
        while pending:
            finish(*pending.popleft().result())
    return total, squares


def _gather(band: np.ndarray, planes: np.ndarray, step: int, mu: np.ndarray | None) -> None:
    """Fill ``planes`` (w, w, rows, cols) with the band's windows, minus ``mu`` (rows, cols)."""
    window, _, rows, cols = planes.shape
    y_stop = (rows - 1) * step + 1
    x_stop = (cols - 1) * step + 1
    for dy in range(window):
        for dx in range(window):
            source = band[dy : dy + y_stop : step, dx : dx + x_stop : step]
            if mu is None:
                planes[dy, dx] = source
            else:
                np.subtract(source, mu, out=planes[dy, dx])


def _add_deviations(
    total: np.ndarray,
    squares: np.ndarray,
    planes: np.ndarray,
    band: np.ndarray,
    step: int,
    weights: np.ndarray,
) -> None:
    """Add w·d and w·d² (d = window output - input pixel) into float64 ``total``/``squares``.

    Deviations from the input rather than raw outputs keep the variance Σw·d²/Σw - (Σw·d/Σw)²
    free of cancellation against the image values.
    """
    window, _, rows, cols = planes.shape
    y_stop = (rows - 1) * step + 1
    x_stop = (cols - 1) * step + 1
    for dy in range(window):
        for dx in range(window):
            region = (slice(dy, dy + y_stop, step), slice(dx, dx + x_stop, step))
            deviation = planes[dy, dx] - band[region].astype(np.float64)
            weighted = deviation * weights[dy, dx]
            total[region] += weighted
            weighted *= deviation
            squares[region] += weighted


def _overlap_add(target: np.ndarray, planes: np.ndarray, step: int) -> None:
    """Add window outputs given as planes (w, w, rows, cols) into ``target`` at their positions."""
    window, _, rows, cols = planes.shape
    y_stop = (rows - 1) * step + 1
    x_stop = (cols - 1) * step + 1
    for dy in range(window):
        for dx in range(window):
            target[dy : dy + y_stop : step, dx : dx + x_stop : step] += planes[dy, dx]


def _naive(
    padded: np.ndarray,
    model,
    window: int,
    step: int,
    weights: np.ndarray,
    window_norm: bool,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Materialise every window, ``model.predict``, add window by window (test oracle).

    Returns padded-size float64 sums of w·d and w·d², d = prediction - input pixel.
    """
    views = np.lib.stride_tricks.sliding_window_view(padded, (window, window))[::step, ::step]
    ny, nx = views.shape[:2]
    windows = views.reshape(ny * nx, window, window).astype(np.float32)
    if window_norm:
        from stem_ae.model import standardize, unstandardize

        z, mu, scale = standardize(windows)
    else:
        z = windows
    input_shape = tuple(model.input_shape[1:])
    out = model.predict(z.reshape((len(z), *input_shape)), batch_size=batch_size, verbose=0)
    out = np.asarray(out, np.float32).reshape(len(z), window, window)
    if window_norm:
        out = unstandardize(out, mu, scale)
    total = np.zeros(padded.shape, np.float64)
    squares = np.zeros(padded.shape, np.float64)
    for index, prediction in enumerate(out.astype(np.float64)):
        i, j = divmod(index, nx)
        region = (slice(i * step, i * step + window), slice(j * step, j * step + window))
        deviation = prediction - padded[region]
        total[region] += weights * deviation
        squares[region] += weights * deviation**2
    return total, squares


# --------------------------------------------------------------------------------------------
# lattice measurement

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
    image = _as_image(image)
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


# --------------------------------------------------------------------------------------------
# denoise: normalisation, sampling match, stacks and Dask

NORMALIZATION_PERCENTILES = (0.1, 99.9)
"""Percentiles (of a strided subsample of at most ~1 Mpx) mapped to 0 and 1 before denoising."""

CLIP_RANGE = (-1.0, 2.0)
"""After normalisation, values are clipped to this range (hot pixels, dead pixels); everything a
real image holds between the percentiles, plus a full range on either side, passes untouched."""

RESAMPLE_TOLERANCE = 0.02
"""The image is not resampled when the sampling match asks for a scale within 2 % of 1."""

REFERENCE_LATTICE_CONSTANT = 3.905
"""Default ``lattice_constant`` (Å) for the ``pixel_size`` cross-check: SrTiO3, which covers the
pseudo-cubic perovskites (3.8–4.0 Å) within the 10 % tolerance."""

RESIDUAL_FLOOR = 0.03
"""Smallest residual-correction bandwidth, as a fraction of the dominant lattice spacing."""

LARGE_IMAGE = 4096 * 4096
"""In-memory 2-D images with more pixels than this go through tiled (Dask) processing."""

TILE = 2048
"""Tile side (px) for tiled processing of large images (before the overlap margins)."""

BATCH_SIZE = 8192
"""Windows per chunk for one in-memory image or frame (the fastest on the 2-core test machine)."""

TILE_BATCH_SIZE = 4096
"""Windows per chunk in the tiles of a large image or a Dask array: oneDNN keeps per-thread
buffers sized by the chunk, and 4096 lowers the peak memory by ~0.2 GB for ~4 % more time."""


@dataclass(frozen=True)
class _Plan:
    """Everything :func:`_denoise_block` needs besides the pixels (shared by all tiles/frames)."""

    shape: tuple[int, int]  # full frame (H, W), px
    scaled: tuple[int, int]  # frame size at the model's sampling, px
    low: float
    high: float
    step: int
    blend: str
    batch_size: int
    residual_sigma: float = 0.0  # SURE residual correction bandwidth, input px (0 = none)
    spacing: float = 0.0  # measured dominant lattice spacing, input px
    noise_variance: float = 0.0  # normalised units; > 0 switches the local consistency step on

    @property
    def depth(self) -> int:
        """Tile margin (px) so that trimmed tiles equal the whole-image result."""
        ratio = max(s / n for s, n in zip(self.scaled, self.shape, strict=True))
        inverse = max(n / s for s, n in zip(self.scaled, self.shape, strict=True))
        halo_in = 4 * max(0.0, (inverse - 1) / 2) + 20
        halo_in += 4 * self.residual_sigma  # the residual correction's low-pass
        if self.noise_variance > 0:  # the consistency test's column-scale average
            halo_in += 4 * CONSISTENCY_WIDTH * self.spacing
        halo_scaled = WINDOW + self.step + 40 + 4 * max(0.0, (ratio - 1) / 2)
        return math.ceil(halo_in + halo_scaled * inverse) + 4


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def _resample(
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


def _denoise_block(
    block: np.ndarray,
    origin: tuple[int, int],
    plan: _Plan,
    runner: _Runner,
    uncertainty: bool,
    progress: ProgressCallback | None = None,
    chosen: dict | None = None,
):
    """Denoise one tile (or whole frame) whose pixel (0, 0) is global pixel ``origin``.

    Returns float32 ``(denoised, spread)`` in the block's units (spread None unless asked).
    Works in float32 and in place where it can: a 2048² tile's arrays are then ~70 MB, not 140.
    With a dict as ``chosen``, the residual correction's bandwidth is chosen here by SURE (instead
    of ``plan.residual_sigma``) and the noise variance measured for the consistency step (instead
    of ``plan.noise_variance``); both are stored in it as ``"sigma"`` and ``"variance"``.
    """
    if not np.all(np.isfinite(block)):
        raise ValueError("image contains NaN or Inf; replace or mask them before denoising.")
    span = plan.high - plan.low
    normalized = np.subtract(block, plan.low, dtype=np.float32)  # a new array: block is kept
    normalized /= span
    data = np.clip(normalized, *CLIP_RANGE, out=normalized)
    resample = plan.scaled != plan.shape
    if resample:
        sizes = list(zip(plan.shape, plan.scaled, strict=True))
        first = [_ceil_div(2 * o * m - n, 2 * n) for o, (n, m) in zip(origin, sizes, strict=True)]
        stop = [
            _ceil_div(2 * (o + h) * m - n, 2 * n)
            for o, h, (n, m) in zip(origin, block.shape, sizes, strict=True)
        ]
        count = [b - a for a, b in zip(first, stop, strict=True)]
        if min(count) < WINDOW:
            raise ValueError(
                f"a tile of {block.shape} px is {tuple(count)} px at the model's sampling, "
                f"smaller than the {WINDOW} px window; use larger chunks."
            )
        data = _resample(data, origin, sizes, first, count)
    else:
        first = list(origin)
    phase = tuple((-f) % plan.step for f in first)
    out = _reconstruct(
        data,
        None,
        step=plan.step,
        blend=plan.blend,
        batch_size=plan.batch_size,
        return_uncertainty=uncertainty,
        progress=progress,
        phase=phase,
        runner=runner,
    )
    denoised, spread = out if uncertainty else (out, None)
    denoised = np.asarray(denoised, np.float32)
    spread = None if spread is None else np.asarray(spread, np.float32)
    if resample:
        back = [(m, n) for n, m in sizes]
        denoised = _resample(denoised, first, back, origin, block.shape)
        if spread is not None:
            spread = np.maximum(_resample(spread, first, back, origin, block.shape), 0.0)
    sigma, variance = plan.residual_sigma, plan.noise_variance
    if chosen is not None:
        floor = RESIDUAL_FLOOR * plan.spacing
        sigma = choose_residual_sigma(
            normalized, denoised, tuple(s for s in RESIDUAL_SIGMAS if s == 0 or s >= floor)
        )
    del data
    if sigma > 0:
        denoised = apply_residual(normalized, denoised, sigma, overwrite=True)
    if chosen is not None:
        variance = noise_variance(normalized - denoised) if plan.spacing > 0 else 0.0
        chosen.update(sigma=sigma, variance=variance)
    if variance > 0:
        width = CONSISTENCY_WIDTH * plan.spacing
        denoised = consistency_correction(normalized, denoised, width, variance)
    del normalized
    denoised *= span
    denoised += plan.low
    return denoised, None if spread is None else spread * span


_SHIPPED: dict = {}


def _resolve_model(model):
    """A Keras model from None (shipped "general"), a name/path, or a model."""
    if model is None:
        model = "general"
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        from stem_ae.model import load_model

        key = str(model)
        if key not in _SHIPPED:
            _SHIPPED[key] = load_model(model)
        return _SHIPPED[key]
    if not hasattr(model, "input_shape"):
        raise TypeError(
            f"model={model!r} is not a Keras model, a shipped model name or a model folder; "
            "use None (the shipped 'general' model), 'paper', 'general' or a path."
        )
    return model


def _subsample(shape: tuple, limit: int = 1_000_000) -> tuple[slice, ...]:
    """Strided slices picking at most about ``limit`` pixels (up to 8 frames of a series)."""
    lead = () if len(shape) == 2 else (slice(None, None, max(1, shape[0] // 8)),)
    frames = 1 if len(shape) == 2 else len(range(0, shape[0], lead[0].step))
    stride = max(1, math.ceil(math.sqrt(frames * shape[-2] * shape[-1] / limit)))
    return (*lead, slice(None, None, stride), slice(None, None, stride))


def _lattice_crop(shape: tuple, frames: int = 4) -> tuple[slice, ...]:
    """Central square (at most LATTICE_CROP px) of up to ``frames`` evenly spaced frames."""
    side = min(min(shape[-2:]), LATTICE_CROP)
    y0, x0 = (shape[-2] - side) // 2, (shape[-1] - side) // 2
    crop = (slice(y0, y0 + side), slice(x0, x0 + side))
    if len(shape) == 2:
        return crop
    return (slice(None, None, max(1, shape[0] // frames)), *crop)


def _measure(
    crop: np.ndarray,
    sample: np.ndarray,
    shape: tuple[int, int],
    model,
    *,
    step: int,
    blend: str,
    batch_size: int,
    pixel_size: float | None,
    lattice_constant: float | None,
) -> tuple[_Plan, LatticeEstimate]:
    """Normalisation, lattice and scale factor, measured once for an image or a series."""
    from stem_ae.model import get_config

    if not (np.all(np.isfinite(sample)) and np.all(np.isfinite(crop))):
        raise ValueError("image contains NaN or Inf; replace or mask them before denoising.")
    low, high = (float(v) for v in np.percentile(sample, NORMALIZATION_PERCENTILES))
    if not high > low:
        low, high = float(sample.min()), float(sample.max())
    if not high > low:
        raise ValueError("the image is constant: there is no lattice to denoise.")
    frames = crop.reshape(-1, *crop.shape[-2:])
    crops = [_tapered_crop(np.clip((f - low) / (high - low), *CLIP_RANGE)) for f in frames]
    lattice = _lattice_from_power(sum(_power_spectrum(c) for c in crops), crops)
    if pixel_size is not None:
        _check_calibration(lattice, pixel_size, lattice_constant)
    spacing_low, spacing_high = get_config(model).spacing_range
    factor = _scale_factor(lattice, spacing_low, spacing_high)
    scaled = tuple(max(1, round(n * factor)) for n in shape)
    if min(scaled) < WINDOW:
        raise ValueError(
            f"the image ({shape[0]}×{shape[1]} px, lattice spacing "
            f"{lattice.dominant_spacing:.1f} px) is {scaled[0]}×{scaled[1]} px at the model's "
            f"sampling ({spacing_low:.1f}–{spacing_high:.1f} px), smaller than the {WINDOW} px "
            "window; give a larger field of view."
        )
    plan = _Plan(
        tuple(shape), scaled, low, high, step, blend, batch_size, spacing=lattice.dominant_spacing
    )
    return plan, lattice


def _scale_factor(lattice: LatticeEstimate, low: float, high: float) -> float:
    """Magnification that brings the lattice to the model's training spacings.

    The geometric mean of the dominant spacing and of the strongest non-collinear one (equal for
    square and hexagonal lattices) goes to the geometric centre of ``[low, high]``; the factor
    is then clamped so that the dominant spacing itself lies inside ``[low, high]``.
    """
    reference = math.sqrt(lattice.dominant_spacing * lattice.second_spacing)
    factor = math.sqrt(low * high) / reference
    factor = min(max(factor, low / lattice.dominant_spacing), high / lattice.dominant_spacing)
    if abs(factor - 1.0) <= RESAMPLE_TOLERANCE:
        return 1.0
    return factor


def _check_calibration(
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


def denoise(
    image,
    *,
    pixel_size: float | None = None,
    step: int = 2,
    model=None,
    return_uncertainty: bool = False,
    blend: str = DEFAULT_BLEND,
    lattice_constant: float | None = REFERENCE_LATTICE_CONSTANT,
    batch_size: int | None = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    residual: str | float = "sure",
):
    """Denoise an atomic-resolution STEM image, a frame series or a Dask array.

    1. **Normalisation.** The 0.1 and 99.9 percentiles of the data (a strided subsample of at
       most ~1 Mpx) are mapped to 0 and 1 and values are clipped to ``[-1, 2]``, so raw counts on
       an offset, any dose, hot and dead pixels all look alike; this is undone at the end.
    2. **Sampling match.** The lattice is measured from the Fourier transform
       (:func:`estimate_lattice`, once per series on up to 8 frames) and the image is resampled
       (pixel-centre convention, anti-aliased, cubic) so that its spacings land in the range the
       model was trained on (:func:`_scale_factor`); no resampling within 2 % of the target.
    3. **Reconstruction** with :func:`reconstruct` (floating window, reflect-padded borders).
    4. Resampling back to exactly the input shape.
    5. **Residual correction** (``residual="sure"``): the auto-encoder has an error floor and can
       fill a vacancy with a column it expects; ``G_s * (image − output)``, the residual low-passed
       by a Gaussian of ``s`` px, is added back, with ``s`` chosen by Stein's unbiased risk
       estimate on the central crop of the (first) frame (:mod:`stem_ae._residual`), never
       below :data:`RESIDUAL_FLOOR` × the lattice spacing (so that pixel noise, which moves the
       fitted column positions, is not put back). This keeps
       the result consistent with the measured data: on simulated scenes it lifts PSNR from the
       auto-encoder's ≈25 dB ceiling to above the best (oracle) Gaussian filter at every dose.
       Then a local consistency test (:func:`stem_ae._residual.consistency_correction`, also
       only with ``residual="sure"``): where the remaining residual, averaged over a column-sized
       Gaussian, is more than 2 noise standard deviations off, it is put back — a column the
       network painted into a vacancy is taken out even where the data are too weak to move the
       global bandwidth.
    6. Undoing the normalisation.

    Parameters
    ----------
    image : ndarray or dask.array.Array, shape (H, W) or (frames, H, W)
        Any real dtype and intensity units. A list of equally shaped frames is stacked.
        Images larger than 4096² px are processed in overlapping tiles (bounded memory).
    pixel_size : float, optional
        Calibration, Å/px; only cross-checked against the measured lattice (a
        :class:`CalibrationWarning` when no measured spacing is within 10 % of
        ``lattice_constant``); the sampling match always uses the measured lattice.
    step : int
        Window step, px (1..28) at the model's sampling.
    model : None, str, path or keras.Model
        None: the shipped ``"general"`` model.
    return_uncertainty : bool
        Also return the per-pixel spread (weighted standard deviation) of the overlapping window
        predictions, in the image's units.
    blend : {"mean", "hann"}
        Recombination weights, see :func:`blend_weights`.
    lattice_constant : float or None
        Lattice parameter (Å) that the cross-check expects one of the two measured primitive
        spacings to match; default 3.905 Å (SrTiO3 and pseudo-cubic perovskites). None switches
        the check off.
    batch_size : int, optional
        Windows per chunk, bounds memory. Default: 8192 for an in-memory image or series (the
        fastest here) and :data:`TILE_BATCH_SIZE` (4096) for the tiles of a large image or a
        Dask array, where memory is what counts (−0.2 GB for 4 % more time).
    workers : int, optional
        Threads: frames of an in-memory series are denoised ``workers`` at a time (default one
        at a time; each already uses all cores for its matrix products), the ``map_overlap``
        tiles of a large in-memory image ``workers`` at a time (default one, for the same
        reason: on 2 cores a second worker gained 2 % at 8192² px for +0.14 GiB), each tile's
        culled Dask graph computed on its own so that at most ``workers`` tiles are in memory.
        A Dask input stays lazy and runs on whatever scheduler computes it (threads by default,
        or a ``dask.distributed`` client).
    progress : callable (done, total) -> None, optional
        Called as windows (single in-memory image) or frames/tiles are finished.

    residual : {"sure", "none"} or float
        Residual correction (step 5): ``"sure"`` chooses the bandwidth, ``"none"`` returns the
        auto-encoder's output alone, a number ≥ 0 fixes the bandwidth in px.

    Returns
    -------
    denoised : ndarray or dask.array.Array, float32, same shape as ``image``
        In the units of ``image``; a Dask input gives a lazy Dask array.
    spread : same type and shape, float32
        Only with ``return_uncertainty``.

    Raises
    ------
    ValueError
        NaN/Inf (for Dask input: when computed), not 2-D or 3-D, frames of different shapes, a
        step outside 1..28, no lattice (vacuum, amorphous, constant), too small once resampled.
    TypeError
        A non-real dtype, or a model that is not one.

    Examples
    --------
    >>> from stem_ae.simulate import simulate_scene
    >>> scene = simulate_scene((128, 128), pixel_size=0.3, dose=20.0, rng=0)
    >>> denoised, spread = denoise(scene.noisy, return_uncertainty=True)
    >>> denoised.shape, denoised.dtype, bool(spread.min() >= 0)
    ((128, 128), dtype('float32'), True)
    """
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover - dask is a dependency
        da = None
    lazy = da is not None and isinstance(image, da.Array)
    if isinstance(image, (list, tuple)):
        shapes = {np.shape(frame) for frame in image}
        if len(shapes) != 1:
            raise ValueError(
                f"the frames have different shapes {sorted(shapes)}; a series must have frames "
                "of one shape (denoise them one by one otherwise)."
            )
        image = np.stack([np.asarray(frame) for frame in image])
    if not lazy:
        image = np.asarray(image)
    if image.dtype.kind not in "biuf":
        raise TypeError(
            f"image has dtype {image.dtype}; give a real-valued (integer or float) array."
        )
    if image.ndim not in (2, 3):
        raise ValueError(
            f"image has shape {image.shape}; expected (H, W) or a series (frames, H, W)."
        )
    if min(image.shape[-2:]) < WINDOW or (image.ndim == 3 and image.shape[0] == 0):
        raise ValueError(f"image of shape {image.shape} is smaller than the {WINDOW} px window.")
    if not lazy and not np.all(np.isfinite(image)):
        raise ValueError("image contains NaN or Inf; replace or mask them before denoising.")
    model = _resolve_model(model)
    window, _ = _model_window_and_normalization(model)
    step = _check_step(step, window)
    _check_blend(blend)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    fixed_sigma = _check_residual(residual)

    crop = image[_lattice_crop(image.shape)]
    sample = image[_subsample(image.shape)]
    if lazy:
        crop, sample = da.compute(crop, sample)
    plan, _ = _measure(
        np.asarray(crop, np.float64),
        np.asarray(sample, np.float64),
        image.shape[-2:],
        model,
        step=step,
        blend=blend,
        batch_size=batch_size or BATCH_SIZE,
        pixel_size=pixel_size,
        lattice_constant=lattice_constant,
    )
    runner = _Runner(model)
    tiled = lazy or (image.ndim == 2 and image.size > LARGE_IMAGE)
    if tiled:  # the pilot too: oneDNN keeps per-thread buffers as large as the largest chunk
        plan = replace(plan, batch_size=batch_size or TILE_BATCH_SIZE)
    pilot = None
    if fixed_sigma is not None:
        plan = replace(plan, residual_sigma=fixed_sigma)
    else:
        # One frame's central crop (all of a 2-D image up to 1024² px) through the auto-encoder,
        # then SURE; every tile and frame is then corrected with the same bandwidth.
        region = _lattice_crop(image.shape[-2:])
        frame = image[(0, *region)] if image.ndim == 3 else image[region]
        frame = np.asarray(frame.compute() if lazy else frame, np.float64)
        origin = (region[0].start, region[1].start)
        chosen: dict = {}
        pilot = _denoise_block(frame, origin, plan, runner, return_uncertainty, progress, chosen)
        plan = replace(plan, residual_sigma=chosen["sigma"], noise_variance=chosen["variance"])
        if image.ndim == 2 and frame.shape == image.shape and not lazy:
            return pilot if return_uncertainty else pilot[0]

    if lazy:
        return _denoise_dask(image, plan, runner, return_uncertainty)
    if tiled:
        side = max(TILE, 2 * plan.depth)
        tiles = da.from_array(image, chunks=tuple(_balanced_chunks(n, side) for n in image.shape))
        results = _denoise_dask(tiles, plan, runner, return_uncertainty, progress)
        return _compute(results, workers)
    if image.ndim == 2:
        denoised, spread = _denoise_block(image, (0, 0), plan, runner, return_uncertainty, progress)
        return (denoised, spread) if return_uncertainty else denoised
    return _denoise_frames(image, plan, runner, return_uncertainty, workers, progress)


def _check_residual(residual) -> float | None:
    """The fixed residual bandwidth (px), or None when SURE is to choose it."""
    if isinstance(residual, str):
        if residual == "sure":
            return None
        if residual == "none":
            return 0.0
    elif isinstance(residual, (int, float)) and np.isfinite(residual) and residual >= 0:
        return float(residual)
    raise ValueError(
        f"residual={residual!r} is not one of 'sure', 'none' or a bandwidth >= 0 px; "
        "use 'sure' (the default)."
    )


def _denoise_frames(image, plan, runner, uncertainty, workers, progress):
    """Frame by frame, ``workers`` threads (TensorFlow and NumPy release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    denoised = np.empty(image.shape, np.float32)
    spread = np.empty(image.shape, np.float32) if uncertainty else None
    done = [0]

    def one(index: int) -> None:
        out, err = _denoise_block(image[index], (0, 0), plan, runner, uncertainty)
        denoised[index] = out
        if uncertainty:
            spread[index] = err
        done[0] += 1
        if progress is not None:
            progress(done[0], len(image))

    if workers is None or workers <= 1:
        for index in range(len(image)):
            one(index)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(len(image))))
    return (denoised, spread) if uncertainty else denoised


class _Progress:
    """Thread-safe counter that reports finished tiles to a ``progress(done, total)`` callback."""

    def __init__(self, callback: ProgressCallback, total: int):
        import threading

        self.callback, self.total, self.done = callback, total, 0
        self.lock = threading.Lock()

    def step(self) -> None:
        with self.lock:
            self.done += 1
            self.callback(self.done, self.total)


class _TileTask:
    """The ``map_overlap`` function: denoise one overlapped tile (picklable for distributed).

    With ``uncertainty`` the tile comes back as complex64, the denoised tile as the real part
    and the spread as the imaginary part, so that one pass gives both (split lazily after).
    """

    def __init__(self, plan, runner, uncertainty, starts, depths, progress=None):
        self.plan, self.runner, self.uncertainty = plan, runner, uncertainty
        self.starts, self.depths, self.progress = starts, depths, progress

    def __call__(self, data: np.ndarray, block_info=None) -> np.ndarray:
        location = block_info[0]["chunk-location"][-2:]
        origin = tuple(
            int(max(0, starts[i] - depth))
            for starts, i, depth in zip(self.starts, location, self.depths, strict=True)
        )
        frames = data.reshape(-1, *data.shape[-2:])
        out = np.empty(frames.shape, np.complex64 if self.uncertainty else np.float32)
        for index, frame in enumerate(frames):
            denoised, spread = _denoise_block(
                frame, origin, self.plan, self.runner, self.uncertainty
            )
            if self.uncertainty:
                out[index].real, out[index].imag = denoised, spread
            else:
                out[index] = denoised
        if self.progress is not None:
            self.progress.step()
        _release_memory()
        return out.reshape(data.shape)


def _release_memory() -> None:
    """Give freed heap memory back to the OS between tiles (glibc's ``malloc_trim``).

    Many threads allocating tile-sized arrays leave glibc's arenas holding freed memory, which
    counts in the resident size; Dask's own documentation recommends the same call. A no-op
    where the C library has no ``malloc_trim`` (macOS, Windows, musl).
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        import ctypes
        import ctypes.util

        try:
            _MALLOC_TRIM = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
        except (OSError, AttributeError, TypeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


def _denoise_dask(image, plan, runner, uncertainty, progress=None):
    """Lazy tiled denoising with ``map_overlap``: tiles share the whole image's grids."""
    depth = plan.depth
    if min(min(c) for c in image.chunks[-2:]) < depth:
        side = max(TILE, 2 * depth)
        image = image.rechunk(
            {image.ndim - 2 + k: _balanced_chunks(n, side) for k, n in enumerate(image.shape[-2:])}
        )
    if image.ndim == 3:
        image = image.rechunk({0: 1})
    chunks = image.chunks
    starts = [tuple(int(v) for v in np.cumsum((0, *c[:-1]))) for c in chunks[-2:]]
    # an axis held in one chunk needs no margin (dask cannot overlap beyond the array)
    depths = [depth if len(c) > 1 else 0 for c in chunks[-2:]]
    spatial_depth = {image.ndim - 2 + k: d for k, d in enumerate(depths)}
    if image.ndim == 3:
        spatial_depth[0] = 0
    counter = None
    if progress is not None:
        counter = _Progress(progress, math.prod(len(c) for c in chunks))
    dtype = np.complex64 if uncertainty else np.float32
    out = image.map_overlap(
        _TileTask(plan, runner, uncertainty, starts, depths, counter),
        depth=spatial_depth,
        boundary="none",
        dtype=dtype,
        meta=np.array((), dtype),
    )
    return (out.real, out.imag) if uncertainty else out


def _balanced_chunks(length: int, side: int) -> tuple[int, ...]:
    """Split ``length`` px into near-equal chunks of at least ``side`` px (or one chunk)."""
    count = max(1, length // side)
    base, extra = divmod(length, count)
    return tuple(base + (k < extra) for k in range(count))


def _compute(results, workers):
    """Compute lazy tiled results block by block into preallocated arrays.

    Each block's culled graph (its overlapped input and the tile function) runs on the
    synchronous scheduler, ``workers`` blocks at a time (default one): Dask's own
    scheduler would prepare the overlapped inputs of many tiles ahead of the tile function
    (+0.3 GB at 8192² px), this keeps at most ``workers`` tiles in memory. The blocks of all
    results (denoised and spread) are computed together, so each tile runs once.
    """
    import itertools
    from concurrent.futures import ThreadPoolExecutor

    import dask

    lazy = results if isinstance(results, tuple) else (results,)
    outputs = [np.empty(r.shape, r.dtype) for r in lazy]
    starts = [np.cumsum((0, *c[:-1])) for c in lazy[0].chunks]

    def one(index: tuple[int, ...]) -> None:
        blocks = dask.compute(*(r.blocks[index] for r in lazy), scheduler="sync")
        for output, block in zip(outputs, blocks, strict=True):
            region = tuple(
                slice(int(s[i]), int(s[i]) + n)
                for s, i, n in zip(starts, index, block.shape, strict=True)
            )
            output[region] = block

    indices = list(itertools.product(*(range(n) for n in lazy[0].numblocks)))
    workers = workers or 1
    with ThreadPoolExecutor(max(1, min(workers, len(indices)))) as pool:
        list(pool.map(one, indices))
    return tuple(outputs) if isinstance(results, tuple) else outputs[0]


_callable_module(__name__)
