"""The floating window: :func:`reconstruct`, its blending and its fast and naive paths.

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

import math
from collections.abc import Callable, Iterator

import numpy as np

from stem_ae._common import WINDOW, as_image
from stem_ae._runner import Runner, model_window_and_normalization

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
    check_blend(blend)
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


def check_blend(blend: str) -> None:
    if blend not in BLENDS:
        raise ValueError(f"blend={blend!r} is not one of {BLENDS}; use 'mean' or 'hann'.")


def check_step(step, window: int = WINDOW) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step={step!r} must be an integer number of px between 1 and {window}.")
    if not 1 <= step <= window:
        raise ValueError(
            f"step={step} px is outside 1..{window}: windows would not cover the image "
            f"(step > {window}) or would not move (step < 1). Leave the default or use another "
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
# reconstruct


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
    image = as_image(image)
    window, normalization = model_window_and_normalization(model)
    step = check_step(step, window)
    check_blend(blend)
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
    out = reconstruct_normalized(
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


def reconstruct_normalized(
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
    runner: Runner | None = None,
):
    """:func:`reconstruct` without checks or intensity scaling; returns float64 arrays.

    ``phase`` puts window starts at ``phase (mod step)`` so that tiles of a larger image share
    the whole image's window grid.
    """
    if runner is None:
        runner = Runner(model)
    if runner.convolutional and method == "fast" and step < CONV_WINDOW_STEP * runner.period:
        return _convolutional(data, runner, step, return_uncertainty, progress, phase)
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


#: From this step (× the period) on, a convolutional model runs on the windows themselves.
CONV_WINDOW_STEP = 2

#: Pixels per band of :func:`_convolutional` (bounds a band's feature maps to ~256 MB at 64 ch).
CONV_BAND_PIXELS = 1 << 20


def _convolutional(data, runner, step, with_spread, progress, phase):
    """The fast path of a convolutional auto-encoder: its layers over whole bands of the image.

    A window at offset ``o`` gives, away from its borders, the network's output over the whole
    image on the grid of ``o mod period`` (the network is equivariant to shifts by its period).
    So the floating window at ``step`` is computed as one pass of the layers per distinct
    ``(o_y mod period, o_x mod period)`` among the window offsets (``phase + k·step``), over
    bands with a :attr:`Runner.halo` of reflected or real pixels, and the passes are averaged:
    the borders of the windows get no weight. Each pixel is standardised by the mean and
    standard deviation of the window centred on it (``window`` px box, reflected edges), as the
    network's windows are. Returns float64 ``out`` or ``(out, spread)``, ``spread`` the
    standard deviation over the passes; when the step gives fewer than the four passes of the
    half-period grid (offsets 0 and period/2 along each axis), those are run as well for the
    spread, while ``out`` stays the mean of the step's own passes.
    """
    from scipy import ndimage

    window, period, halo = runner.window, runner.period, runner.halo
    values = np.asarray(data, np.float64)
    if runner.normalization == "window":
        mu = ndimage.uniform_filter(values, window, mode="reflect")
        sd = ndimage.uniform_filter(values * values, window, mode="reflect") - mu * mu
        scale = np.sqrt(np.maximum(sd, 0.0)) + 1e-6 * (np.abs(mu) + 1.0)
        z = ((values - mu) / scale).astype(np.float32)
    else:
        mu, scale, z = 0.0, 1.0, values.astype(np.float32)
    shared = math.gcd(step, period)
    offsets = [sorted({(p + j * shared) % period for j in range(period)}) for p in phase]
    passes = [(oy, ox) for oy in offsets[0] for ox in offsets[1]]
    extra = []
    if with_spread:  # the spread needs several passes: add the half-period grid's
        half = [sorted({(p + j * max(1, period // 2)) % period for j in range(2)}) for p in phase]
        extra = [(oy, ox) for oy in half[0] for ox in half[1] if (oy, ox) not in passes]
    total = np.zeros(values.shape, np.float64)
    squares = np.zeros(values.shape, np.float64) if with_spread else None
    mean = None
    if progress is not None:
        progress(0, len(passes) + len(extra))
    for index, offset in enumerate(passes + extra):
        out = _conv_pass(z, runner, offset, halo).astype(np.float64)
        total += out
        if with_spread:
            squares += out * out
        if index + 1 == len(passes):
            mean = total / len(passes)  # the result: the step's passes only
        if progress is not None:
            progress(index + 1, len(passes) + len(extra))
    result = mean * scale + mu
    if not with_spread:
        return result
    count = len(passes) + len(extra)
    average = total / count
    spread = np.sqrt(np.maximum(squares / count - average * average, 0.0)) * scale
    return result, spread


def _conv_pass(z, runner, offset, halo):
    """One pass of the layers with pixel ``offset`` on the network's period grid, in bands."""
    period = runner.period
    pads = []
    for n, o in zip(z.shape, offset, strict=True):
        before = halo + (-o) % period
        after = halo + (-(before + n + halo)) % period
        pads.append((before, after))
    padded = np.pad(z, pads, mode="reflect")
    rows, cols = padded.shape
    band_rows = max(period, CONV_BAND_PIXELS // cols // period * period)
    out = np.empty_like(padded)
    for start in range(0, rows, band_rows):
        stop = min(start + band_rows, rows)
        first, last = max(0, start - halo), min(rows, stop + halo)
        result = runner.convolve(padded[first:last])
        out[start:stop] = result[start - first : stop - first]
    (top, _), (left, _) = pads
    return out[top : top + z.shape[0], left : left + z.shape[1]]


def _fast(
    padded: np.ndarray,
    runner: Runner,
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

    if progress is not None:  # the windows are counted: say so before the first band is done
        progress(0, ny * nx)
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
