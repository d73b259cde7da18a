"""The auto-encoder as a fast function of windows (TensorFlow, imported lazily).

:class:`_Runner` folds the per-window standardisation (``docs/design.md``) into the model: a
plain chain of Dense layers runs as one compiled TensorFlow function over a band of image rows
(:func:`_band_chain`), a convolutional auto-encoder (``architecture="conv"``) as its layers over
a whole band (:meth:`Runner.convolve`), any other Keras model on windows gathered as columns.
Used by :mod:`stem_ae.windows`; nothing here knows about images, tiles or denoising.
"""

from __future__ import annotations

import functools
import threading

import numpy as np


def _conv_layers(model) -> list | None:
    """The convolution layers of a convolutional auto-encoder (``Conv2D``, ``Conv2DTranspose``
    and the fixed ``DepthwiseConv2D`` blurs of ``antialias``), else None."""
    from stem_ae.model import get_config

    if get_config(model).architecture != "conv":
        return None
    chain = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in ("Reshape", "InputLayer"):
            continue
        if kind not in ("Conv2D", "Conv2DTranspose", "DepthwiseConv2D"):
            return None
        chain.append(layer)
    return chain or None


def model_window_and_normalization(model) -> tuple[int, str]:
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
    """Dense chain on every window of a band (TensorFlow ops); see :meth:`Runner.band`."""
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


class Runner:
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
        from stem_ae.model import get_config

        self.window, self.normalization = model_window_and_normalization(model)
        config = get_config(model)
        self.architecture, self.period = config.architecture, config.period
        self.convolutional = _conv_layers(model) is not None
        self.chain = None if self.convolutional else _dense_chain(model)
        self.model = model if self.chain is None else None
        self._compile()

    @property
    def banded(self) -> bool:
        """Whether :meth:`band` is available (the model is a plain Dense chain)."""
        return self.chain is not None

    @property
    def halo(self) -> int:
        """Rows and columns (a multiple of :attr:`period`) beyond which an output pixel of
        :meth:`convolve` no longer depends on the input: half the receptive field, rounded up."""
        reach, factor = 0, 1  # factor: input px per feature px at the current layer's input
        for layer in _conv_layers(self.model) or ():
            reach += (layer.kernel_size[0] // 2) * factor
            if type(layer).__name__ == "Conv2DTranspose":
                factor //= layer.strides[0]
            else:
                factor *= layer.strides[0]
        return -(-(reach + 1) // self.period) * self.period + self.period

    def convolve(self, band: np.ndarray) -> np.ndarray:
        """A convolutional auto-encoder's layers over a whole band (H, W), float32 out (H, W).

        H and W must be multiples of :attr:`period`; no window is cut out and no
        standardisation is applied (the caller standardises). Pixels within :attr:`halo` of a
        border see the layers' zero padding.
        """
        return self._convolve(np.asarray(band, np.float32)).numpy()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_function": None, "_convolve": None, "_traced": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._compile()

    def _compile(self) -> None:
        import tensorflow as tf

        self._traced: set[int] = set()
        if self.convolutional:
            self._convolve = getattr(self.model, "_stem_ae_convolve", None)
            if self._convolve is None:
                chain = _conv_layers(self.model)

                def convolve(band):
                    x = band[None, :, :, None]
                    for layer in chain:
                        x = layer(x, training=False)
                    return tf.cast(x[0, :, :, 0], tf.float32)

                self._convolve = tf.function(
                    convolve, input_signature=[tf.TensorSpec([None, None], tf.float32)]
                )
                object.__setattr__(self.model, "_stem_ae_convolve", self._convolve)
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
