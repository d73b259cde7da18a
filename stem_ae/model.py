"""The stacked auto-encoder: configuration, builder, saving and the shipped models.

The network is a Keras ``Sequential`` acting on one square window (28 × 28 px by default). The
paper's, ``architecture="dense"``, is fully connected: ``Input → Flatten → Dense encoder → Dense
code → mirrored Dense decoder → Dense(window²) → Reshape``. ``architecture="conv"`` is its
convolutional counterpart, a stacked convolutional auto-encoder: ``Conv2D`` layers that halve
the resolution level by level down to the code and mirrored ``Conv2DTranspose`` layers back up
(:func:`build_autoencoder`). Its configuration is a frozen :class:`AEConfig` that is saved as
``config.json`` beside ``model.keras``.

Model input convention (shared with :mod:`stem_ae.training` and :mod:`stem_ae.windows`): with
``normalization="window"`` every noisy window is standardised by its own mean and standard
deviation (:func:`standardize`); the network maps that to the clean window standardised with the
*noisy* window's statistics, and :func:`unstandardize` puts the output back into the input's
units. The model is therefore blind to detector offset and gain.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from stem_ae._common import PAPER_SPACING_PX, import_keras

keras = import_keras()
layers = keras.layers

__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURES",
    "LOSSES",
    "NORMALIZATIONS",
    "AEConfig",
    "available_models",
    "build_autoencoder",
    "compile_for",
    "counts_loss",
    "counts_weights",
    "get_config",
    "load_model",
    "predict_windows",
    "save_model",
    "standardize",
    "unstandardize",
]

#: Activations accepted for the hidden and output layers (Keras names).
ACTIVATIONS = (
    "relu",
    "elu",
    "selu",
    "gelu",
    "silu",
    "swish",
    "leaky_relu",
    "tanh",
    "sigmoid",
    "softplus",
    "linear",
)
#: Input conventions: ``"window"`` (per-window z-score, every shipped model) or ``"none"``.
NORMALIZATIONS = ("window", "none")
#: Layer types: ``"dense"`` (the paper's fully connected AE) or ``"conv"`` (convolutional AE).
ARCHITECTURES = ("dense", "conv")

LOSSES = ("mse", "counts")
"""Training losses of :class:`AEConfig`: the mean squared error of standardised windows, or the
loss in counts (:func:`counts_loss`)."""

COUNTS_FLOOR = 0.02
"""Added to the clean window, in its own units, before it weights the loss in counts
(:func:`counts_weights`), so that a pixel with no signal keeps a finite weight. For windows
drawn with a dose (counts, as ``REALISTIC``'s) it is a variance floor far below one count; for
windows scaled to a maximum of 1, 2 % of the strongest column."""

#: Kernel side of every convolution of a ``"conv"`` auto-encoder, px.
CONV_KERNEL = 3
#: The fixed anti-aliasing blur of ``AEConfig(antialias=True)``: binomial ``[1, 2, 1]/4`` squared.
BLUR_TAPS = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0

_MODEL_FILE = "model.keras"
_CONFIG_FILE = "config.json"
_CONFIG_ATTR = "_stem_ae_config"
_MIN_WINDOW = 8


def _check_count(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class AEConfig:
    """Architecture and training record of a stacked auto-encoder.

    Parameters
    ----------
    window : int
        Side of the square input window, px (>= 8). The paper uses 28.
    encoder : tuple of int
        ``"dense"``: widths of the encoder's hidden Dense layers, non-increasing; the decoder
        mirrors them. ``"conv"``: channels of the encoder's resolution levels, the first at full
        resolution, each later one at half the resolution of the one before.
    code : int
        ``"dense"``: width of the bottleneck Dense layer; at most ``encoder[-1]`` and below
        ``window**2``. ``"conv"``: channels of the code, at ``window / 2**len(encoder)``.
    activation : str
        Activation of every hidden layer (one of :data:`ACTIVATIONS`).
    output_activation : str
        Activation of the last Dense layer; ``"linear"`` suits standardised windows.
    normalization : str
        ``"window"``: per-window z-score of the input (see :func:`standardize`); ``"none"``: the
        network sees raw values.
    learning_rate : float
        Adam learning rate.
    name : str
        Short name, used as the Keras model name (``stem_ae_<name>``).
    training : dict
        What the model was trained on: ``TrainingDistribution.to_dict()`` plus ``n_samples``
        (per epoch), ``epochs``, ``batch_size`` and ``seed``. JSON-serialisable.
    architecture : str
        ``"dense"`` (the paper's) or ``"conv"``, see :func:`build_autoencoder`. A ``"conv"``
        model needs ``window`` divisible by ``2**len(encoder)`` (its :attr:`period`).
    antialias : bool
        ``"conv"`` only: a fixed binomial blur (``[1, 2, 1]/4`` per axis, per channel) before
        every stride-2 convolution and after every stride-2 transposed one (Zhang 2019,
        "Making convolutional networks shift-invariant again"), meant to make the output depend
        less on where a column falls on the stride grid. Measured worse for the shipped size
        (31.5 against 35.7 dB on noise-free windows, ``benchmarks/results/ablation_general.md``);
        kept so that the ablation row can be reproduced.
    dense_code : int
        ``"conv"`` only: when > 0, a fully connected code of this many units between the
        convolutional encoder and decoder (``Flatten → Dense(dense_code) → Dense → Reshape`` at
        the code level), so that every output pixel depends on the whole window, as in a dense
        AE, while the layers next to the pixels stay convolutional. Such a network is no longer
        equivariant to shifts (:attr:`period` 1) and runs through the floating window on windows
        (no whole-band fast path). 0 (the default): none.
    loss : str
        Training loss (one of :data:`LOSSES`): ``"mse"``, the mean squared error of standardised
        windows; ``"counts"``, the loss in counts (:func:`counts_loss`): each pixel's error
        weighted by the inverse of its Poisson variance, as in the squared error after an
        Anscombe transform, to first order. Only training reads it.

    Raises
    ------
    ValueError
        If any field is out of range; the message names the field and the fix.

    Examples
    --------
    >>> config = AEConfig(encoder=(256, 128), code=32)
    >>> AEConfig.from_dict(config.to_dict()) == config
    True
    >>> AEConfig(code=1000)
    Traceback (most recent call last):
    ...
    ValueError: code=1000 must be smaller than the input size window**2 = 784 ...
    """

    window: int = 28
    encoder: tuple[int, ...] = (512, 256, 128)
    code: int = 64
    activation: str = "relu"
    output_activation: str = "linear"
    normalization: str = "window"
    learning_rate: float = 1e-3
    name: str = "custom"
    training: dict = field(default_factory=dict)
    architecture: str = "dense"
    antialias: bool = False
    dense_code: int = 0
    loss: str = "mse"

    def __post_init__(self) -> None:
        _check_count("window", self.window, minimum=_MIN_WINDOW)
        if isinstance(self.encoder, (int, np.integer)) or not hasattr(self.encoder, "__iter__"):
            raise ValueError(f"encoder must be a sequence of layer widths, got {self.encoder!r}")
        encoder = tuple(self.encoder)
        if not encoder:
            raise ValueError("encoder must hold at least one hidden layer width, got ()")
        for width in encoder:
            _check_count("every encoder width", width, minimum=1)
        encoder = tuple(int(width) for width in encoder)
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {self.architecture!r}; use one of {ARCHITECTURES}"
            )
        conv = self.architecture == "conv"
        if not isinstance(self.antialias, (bool, np.bool_)):
            raise ValueError(f"antialias must be True or False, got {self.antialias!r}")
        object.__setattr__(self, "antialias", bool(self.antialias))
        if self.antialias and not conv:
            raise ValueError("antialias=True needs architecture='conv'; a dense AE has no stride")
        _check_count("dense_code", self.dense_code, minimum=0)
        object.__setattr__(self, "dense_code", int(self.dense_code))
        if self.dense_code and not conv:
            raise ValueError(
                "dense_code needs architecture='conv'; a dense AE's code is already dense (code=)"
            )
        if not conv and any(later > earlier for earlier, later in itertools.pairwise(encoder)):
            raise ValueError(
                f"encoder widths must not increase towards the code, got {encoder}; "
                f"sort them, e.g. {tuple(sorted(encoder, reverse=True))}"
            )
        object.__setattr__(self, "encoder", encoder)
        _check_count("code", self.code, minimum=1)
        object.__setattr__(self, "code", int(self.code))
        object.__setattr__(self, "window", int(self.window))
        n_inputs = self.window**2
        if conv:
            period = 2 ** len(encoder)
            if self.window % period:
                raise ValueError(
                    f"window={self.window} must be divisible by 2**len(encoder) = {period} for a "
                    f"convolutional auto-encoder of {len(encoder)} levels; choose e.g. window="
                    f"{max(period, self.window // period * period)}"
                )
        elif self.code >= n_inputs:
            raise ValueError(
                f"code={self.code} must be smaller than the input size window**2 = {n_inputs} "
                "(an auto-encoder needs a bottleneck); choose e.g. code=64"
            )
        if not conv and self.code > encoder[-1]:
            raise ValueError(
                f"code={self.code} is wider than the last encoder layer ({encoder[-1]}); "
                f"use code <= {encoder[-1]} or widen the encoder"
            )
        for name in ("activation", "output_activation"):
            value = getattr(self, name)
            if value not in ACTIVATIONS:
                raise ValueError(f"unknown {name} {value!r}; use one of {', '.join(ACTIVATIONS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; use one of {LOSSES}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"unknown normalization {self.normalization!r}; use one of {NORMALIZATIONS}"
            )
        rate = self.learning_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1:
            raise ValueError(f"learning_rate must be a number in (0, 1), got {rate!r}; try 1e-3")
        object.__setattr__(self, "learning_rate", float(rate))
        if not isinstance(self.name, str) or not self.name.replace("_", "").isalnum():
            raise ValueError(
                f"name must be a non-empty string of letters, digits and '_', got {self.name!r}"
            )
        if not isinstance(self.training, dict):
            raise ValueError(f"training must be a dict, got {type(self.training).__name__}")
        for key in ("n_samples", "epochs", "batch_size"):
            if key in self.training:
                _check_count(f"training[{key!r}]", self.training[key], minimum=1)
        if "seed" in self.training and self.training["seed"] is not None:
            _check_count("training['seed']", self.training["seed"], minimum=0)
        try:
            json.dumps(self.training)
        except TypeError as error:
            raise ValueError(f"training must be JSON-serialisable: {error}") from None

    @property
    def spacing_range(self) -> tuple[float, float]:
        """Range (px) of the dominant lattice spacing the model was trained on.

        Read from ``training["spacing_range"]``; a config without it falls back to the spacing
        range of the paper distribution (:data:`stem_ae.simulate.PAPER`): the paper's dominant
        spacing, ``a / √2`` of its 9 px SrTiO3 cell.
        """
        if "spacing_range" in self.training:
            low, high = self.training["spacing_range"]
        else:
            low = high = PAPER_SPACING_PX
        return float(low), float(high)

    @property
    def period(self) -> int:
        """Shift (px) under which the network is equivariant: 1 for dense, 2**levels for conv.

        A ``"conv"`` network halves the resolution ``len(encoder)`` times: shifting its input by
        a multiple of the period shifts its output by the same amount (away from the borders).
        """
        return 2 ** len(self.encoder) if self.architecture == "conv" and not self.dense_code else 1

    @property
    def n_parameters(self) -> int:
        """Number of trainable weights and biases of the network built from this config."""
        if self.architecture == "conv":
            channels = [(1, self.encoder[0])]  # (in, out) of every convolution, see the builder
            for previous, width in itertools.pairwise([*self.encoder, self.code]):
                channels += [(previous, width), (width, width)]
            for previous, width in itertools.pairwise([self.code, *self.encoder[::-1]]):
                channels += [(previous, width), (width, width)]
            channels.append((self.encoder[0], 1))
            total = sum((CONV_KERNEL**2 * n_in + 1) * n_out for n_in, n_out in channels)
            if self.antialias:  # the fixed blurs' taps, one 3 × 3 per channel (not trained)
                total += BLUR_TAPS.size * 2 * sum(self.encoder)
            if self.dense_code:  # Dense(flat -> dense_code) and Dense(dense_code -> flat)
                flat = (self.window // 2 ** len(self.encoder)) ** 2 * self.code
                total += (flat + 1) * self.dense_code + (self.dense_code + 1) * flat
            return total
        widths = [self.window**2, *self.encoder, self.code, *self.encoder[::-1], self.window**2]
        return sum((n_in + 1) * n_out for n_in, n_out in itertools.pairwise(widths))

    def to_dict(self) -> dict:
        """JSON-ready dictionary of every field (tuples become lists).

        ``architecture`` is left out when it is ``"dense"`` (the default), so that a dense
        model's ``config.json``, and the hash a record of processing keeps of it, are the same
        as before the field existed; so are ``antialias``, ``dense_code`` and ``loss`` at their
        defaults.
        """
        data = asdict(self)
        if data["architecture"] == "dense":
            del data["architecture"]
        if not data["antialias"]:
            del data["antialias"]
        if not data["dense_code"]:
            del data["dense_code"]
        if data["loss"] == "mse":
            del data["loss"]
        data["encoder"] = list(self.encoder)
        data["training"] = json.loads(json.dumps(self.training))
        return data

    @classmethod
    def from_dict(cls, data: dict) -> AEConfig:
        """Build a config from :meth:`to_dict` output; unknown keys raise ``ValueError``."""
        if not isinstance(data, dict):
            raise ValueError(f"an AEConfig is read from a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AEConfig fields {unknown}; known fields: {sorted(known)}")
        data = dict(data)
        if "encoder" in data and isinstance(data["encoder"], list):
            data["encoder"] = tuple(data["encoder"])
        return cls(**data)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the config as indented JSON to ``path``."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> AEConfig:
        """Read a config written by :meth:`to_json`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not a valid config.json: {error}") from None
        return cls.from_dict(data)


def build_autoencoder(config: AEConfig | None = None) -> keras.Sequential:
    """Build and compile the stacked auto-encoder described by ``config``.

    Parameters
    ----------
    config : AEConfig, optional
        Architecture; ``AEConfig()`` when omitted.

    Returns
    -------
    keras.Sequential
        ``Input((w, w)) → Flatten → Dense(encoder…) → Dense(code) → Dense(reversed encoder…) →
        Dense(w*w, output_activation) → Reshape((w, w))``, compiled with Adam and mean squared
        error. Maps float32 arrays of shape (N, w, w) to (N, w, w). The config is attached, see
        :func:`get_config`. With ``architecture="conv"`` (levels ``e0, e1, …``, code ``c``):
        ``Input → Reshape((w, w, 1)) → Conv2D(e0) → [Conv2D(e1, stride 2) → Conv2D(e1)] … →
        Conv2D(c, stride 2) → Conv2D(c) → [Conv2DTranspose(e, stride 2) → Conv2D(e)] for e in
        reversed levels → Conv2D(1, output_activation) → Reshape((w, w))``, every kernel 3 × 3,
        "same" padding; ``dense_code=d`` inserts ``Flatten → Dense(d) → Dense → Reshape`` after
        the code's ``Conv2D(c)``.

    Examples
    --------
    >>> model = build_autoencoder(AEConfig(window=16, encoder=(64,), code=16))
    >>> [layer.units for layer in model.layers if hasattr(layer, "units")]
    [64, 16, 64, 256]
    >>> model.output_shape
    (None, 16, 16)
    >>> conv = build_autoencoder(AEConfig(window=16, encoder=(8, 16), code=16,
    ...     architecture="conv"))
    >>> conv.output_shape, conv.count_params() == get_config(conv).n_parameters
    ((None, 16, 16), True)
    """
    if config is None:
        config = AEConfig()
    if not isinstance(config, AEConfig):
        raise TypeError(f"config must be an AEConfig, got {type(config).__name__}")
    window = config.window
    if config.architecture == "conv":
        return _finish(_conv_stack(config), config)
    stack: list = [keras.Input(shape=(window, window), name="window"), layers.Flatten()]
    for index, width in enumerate(config.encoder):
        stack.append(layers.Dense(width, activation=config.activation, name=f"encoder_{index}"))
    stack.append(layers.Dense(config.code, activation=config.activation, name="code"))
    for index, width in enumerate(config.encoder[::-1]):
        stack.append(layers.Dense(width, activation=config.activation, name=f"decoder_{index}"))
    stack.append(layers.Dense(window * window, activation=config.output_activation, name="output"))
    stack.append(layers.Reshape((window, window)))
    return _finish(stack, config)


def _conv_stack(config: AEConfig) -> list:
    """The layers of a convolutional stacked auto-encoder (see :func:`build_autoencoder`)."""
    window, act, k = config.window, config.activation, CONV_KERNEL

    def conv(width, name, strides=1, activation=act):
        return layers.Conv2D(
            width, k, strides=strides, padding="same", activation=activation, name=name
        )

    stack: list = [
        keras.Input(shape=(window, window), name="window"),
        layers.Reshape((window, window, 1)),
        conv(config.encoder[0], "encoder_0"),
    ]

    def blur(name):  # fixed, per channel: not trained, saved with the model
        return layers.DepthwiseConv2D(
            3,
            padding="same",
            use_bias=False,
            trainable=False,
            depthwise_initializer=keras.initializers.Constant(BLUR_TAPS[:, :, None, None]),
            name=name,
        )

    levels = [*config.encoder[1:], config.code]
    for index, width in enumerate(levels, start=1):
        name = "code" if index == len(levels) else f"encoder_{index}"
        stack += [blur(f"{name}_blur")] if config.antialias else []
        stack += [conv(width, f"{name}_down", strides=2), conv(width, name)]
    if config.dense_code:  # a global code: every output pixel sees the whole window
        side = window // 2 ** len(config.encoder)
        stack += [
            layers.Flatten(name="code_flatten"),
            layers.Dense(config.dense_code, activation=act, name="code_dense"),
            layers.Dense(side * side * config.code, activation=act, name="code_expand"),
            layers.Reshape((side, side, config.code), name="code_reshape"),
        ]
    for index, width in enumerate(config.encoder[::-1]):
        stack.append(
            layers.Conv2DTranspose(
                width, k, strides=2, padding="same", activation=act, name=f"decoder_{index}_up"
            )
        )
        stack += [blur(f"decoder_{index}_blur")] if config.antialias else []
        stack.append(conv(width, f"decoder_{index}"))
    stack += [conv(1, "output", activation=config.output_activation)]
    stack.append(layers.Reshape((window, window)))
    return stack


def counts_weights(clean: np.ndarray) -> np.ndarray:
    """Per-pixel weights of the loss in counts for clean windows ``(N, w, w)`` (in counts for a
    Poisson window: its expected counts are the noise variance).

    The inverse Poisson variance ``1 / (clean +`` :data:`COUNTS_FLOOR` ``)``, scaled to a mean of
    1 in each window: a window weighs what it weighs in the MSE of standardised windows, and
    within it an error counts in proportion to the noise the counts have there.

    >>> w = counts_weights(np.array([[[0.0, 1.0], [1.0, 1.0]]]))
    >>> round(float(w.mean()), 6), bool(w[0, 0, 0] > w[0, 0, 1])
    (1.0, True)
    """
    weights = 1.0 / (np.asarray(clean, np.float32) + np.float32(COUNTS_FLOOR))
    weights /= weights.mean(axis=(-2, -1), keepdims=True)
    return weights


def counts_loss(y_true, y_pred):
    """The loss in counts: the squared error weighted by :func:`counts_weights`.

    ``y_true`` stacks the standardised target and its weights on a last axis of 2 (what
    :func:`stem_ae.training.train` feeds a model whose config has ``loss="counts"``).
    """
    target, weights = y_true[..., 0], y_true[..., 1]
    return keras.ops.mean(weights * keras.ops.square(y_pred - target), axis=(-2, -1))


def compile_for(model: keras.Model, config: AEConfig, learning_rate=None) -> None:
    """Compile ``model`` with Adam (``learning_rate``, default the config's) and its loss."""
    loss = counts_loss if config.loss == "counts" else "mse"
    rate = config.learning_rate if learning_rate is None else learning_rate
    model.compile(optimizer=keras.optimizers.Adam(rate), loss=loss)


def _finish(stack: list, config: AEConfig) -> keras.Sequential:
    model = keras.Sequential(stack, name=f"stem_ae_{config.name}")
    compile_for(model, config)
    _attach(model, config)
    return model


def _attach(model: keras.Model, config: AEConfig) -> None:
    # object.__setattr__ bypasses Keras' attribute tracking: the config is plain metadata.
    object.__setattr__(model, _CONFIG_ATTR, config)


def get_config(model: keras.Model) -> AEConfig:
    """The :class:`AEConfig` of a model built by :func:`build_autoencoder` or :func:`load_model`.

    A foreign Keras model gets ``AEConfig(window=w)`` (``normalization="window"``), with ``w``
    read from its (N, w, w) input shape.

    Examples
    --------
    >>> get_config(build_autoencoder(AEConfig(name="demo"))).name
    'demo'
    """
    config = getattr(model, _CONFIG_ATTR, None)
    if isinstance(config, AEConfig):
        return config
    shape = tuple(model.input_shape)
    if len(shape) != 3 or shape[1] != shape[2] or shape[1] is None:
        raise ValueError(
            f"model input shape {shape} is not (None, w, w); stem_ae models take square windows"
        )
    window = int(shape[1])
    return AEConfig(window=window, code=min(AEConfig.code, window**2 - 1))


def standardize(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-score each window by its own mean and standard deviation.

    Parameters
    ----------
    windows : ndarray, shape (..., w, w)
        Windows in any units (counts, arbitrary).

    Returns
    -------
    z : ndarray, shape (..., w, w), float32
        ``(windows - mu) / scale``.
    mu : ndarray, shape (..., 1, 1), float32
        Mean of each window.
    scale : ndarray, shape (..., 1, 1), float32
        ``std + eps`` with ``eps = 1e-6 * (|mu| + 1)``, so a flat window does not divide by zero.

    Examples
    --------
    >>> windows = np.arange(8.0).reshape(2, 2, 2) * 100 + 33_000
    >>> z, mu, scale = standardize(windows)
    >>> np.allclose(unstandardize(z, mu, scale), windows)
    True
    >>> np.round(z[0], 2)
    array([[-1.34, -0.45],
           [ 0.45,  1.34]], dtype=float32)
    """
    windows = np.asarray(windows)
    if windows.ndim < 2:
        raise ValueError(f"windows must have shape (..., w, w), got {windows.shape}")
    flat = windows.reshape(*windows.shape[:-2], -1)
    mu = flat.mean(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)
    z = flat.astype(np.float32) - mu  # a new array: centred first, so no cancellation
    variance = np.einsum("...i,...i->...", z, z)[..., None] / np.float32(flat.shape[-1])
    scale = np.sqrt(variance) + np.float32(1e-6) * (np.abs(mu) + 1)
    z /= scale
    shape = (*windows.shape[:-2], 1, 1)
    return z.reshape(windows.shape), mu.reshape(shape), scale.reshape(shape)


def unstandardize(z: np.ndarray, mu: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Put standardised windows back into the units of :func:`standardize`'s input.

    Parameters
    ----------
    z : ndarray, shape (..., w, w)
    mu, scale : ndarray, shape (..., 1, 1)
        As returned by :func:`standardize`.

    Returns
    -------
    ndarray, shape (..., w, w), float32
        ``z * scale + mu``.
    """
    return (np.asarray(z, np.float32) * scale + mu).astype(np.float32, copy=False)


def predict_windows(
    model: keras.Model, windows: np.ndarray, *, batch_size: int = 8192
) -> np.ndarray:
    """Run the auto-encoder on windows, applying the model's input convention.

    Parameters
    ----------
    model : keras.Model
        Maps (N, w, w) to (N, w, w).
    windows : ndarray, shape (N, w, w)
        Noisy windows in any units.
    batch_size : int
        Windows per forward pass.

    Returns
    -------
    ndarray, shape (N, w, w), float32
        Denoised windows, in the units of ``windows``.
    """
    windows = np.asarray(windows, dtype=np.float32)
    config = get_config(model)
    if windows.ndim != 3 or windows.shape[1:] != (config.window, config.window):
        raise ValueError(
            f"windows must have shape (N, {config.window}, {config.window}), got {windows.shape}"
        )
    if len(windows) == 0:
        return windows.copy()
    if config.normalization == "window":
        z, mu, scale = standardize(windows)
        out = _predict(model, z, batch_size)
        return unstandardize(out, mu, scale)
    return _predict(model, windows, batch_size)


def _predict(model: keras.Model, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    outputs = [
        np.asarray(model(inputs[start : start + batch_size], training=False))
        for start in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(outputs).astype(np.float32, copy=False)


def save_model(model: keras.Model, path: str | os.PathLike) -> Path:
    """Save a model as a folder holding ``model.keras`` and ``config.json``.

    The folder is written under a temporary name beside ``path`` and renamed into place, so an
    interrupted save never leaves a half-written model; an existing folder at ``path`` is
    replaced. The optimizer state is not saved (the file holds only the weights, a few MB).

    Parameters
    ----------
    model : keras.Model
        A model from :func:`build_autoencoder`, :func:`load_model` or
        :func:`stem_ae.training.train`.
    path : str or PathLike
        Folder to create (e.g. ``models/my_model``).

    Returns
    -------
    Path
        The folder.
    """
    path = Path(path)
    if path.suffix == ".keras":
        raise ValueError(
            f"save_model writes a folder (model.keras + config.json), got a file name {path}; "
            f"pass {path.with_suffix('')} instead"
        )
    config = get_config(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        fresh = build_autoencoder(config)
        try:
            fresh.set_weights(model.get_weights())
        except ValueError:
            fresh = model  # not one of ours: save it as it is
        fresh.save(temporary / _MODEL_FILE)
        config.to_json(temporary / _CONFIG_FILE)
        temporary.chmod(0o755)  # mkdtemp makes it private; a model folder is ordinary data
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(temporary, path)
            shutil.rmtree(old)
        else:
            os.replace(temporary, path)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)
    return path


def available_models() -> list[str]:
    """Names of the models shipped inside the package (e.g. ``["general", "paper"]``).

    Examples
    --------
    >>> isinstance(available_models(), list)
    True
    """
    root = resources.files("stem_ae") / "models"
    if not root.is_dir():
        return []
    return sorted(
        entry.name
        for entry in root.iterdir()
        if entry.is_dir() and (entry / _MODEL_FILE).is_file() and (entry / _CONFIG_FILE).is_file()
    )


def load_model(name_or_path: str | os.PathLike = "general") -> keras.Model:
    """Load a shipped model by name, or a saved model from a folder or ``.keras`` file.

    Parameters
    ----------
    name_or_path : str or PathLike
        A shipped model's name (see :func:`available_models`: ``"paper"``, ``"general"``), a
        folder written by :func:`save_model`, or a ``.keras`` file (its ``config.json`` is read
        from the same folder when present).

    Returns
    -------
    keras.Model
        Compiled, with its :class:`AEConfig` attached (:func:`get_config`). Shipped models are
        cached: loading the same name twice returns the same object.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the available ones) or a file that is not a
        Keras model.
    """
    if isinstance(name_or_path, str) and name_or_path in available_models():
        return _load_shipped(name_or_path)
    path = Path(name_or_path)
    if not path.exists():
        raise ValueError(
            f"no shipped model or file named {str(name_or_path)!r}; shipped models: "
            f"{', '.join(available_models()) or 'none'} (or pass a folder/.keras path)"
        )
    return _load_path(path)


@functools.cache
def _load_shipped(name: str) -> keras.Model:
    with resources.as_file(resources.files("stem_ae") / "models" / name) as folder:
        return _load_path(Path(folder))


def _load_path(path: Path) -> keras.Model:
    model_file = path / _MODEL_FILE if path.is_dir() else path
    config_file = model_file.parent / _CONFIG_FILE
    if not model_file.is_file():
        raise ValueError(f"{path} holds no {_MODEL_FILE}; pass a folder written by save_model")
    if model_file.suffix != ".keras" or not zipfile.is_zipfile(model_file):
        raise ValueError(f"{model_file} is not a Keras model file (.keras archive)")
    try:
        model = keras.saving.load_model(model_file, compile=False)
    except Exception as error:  # Keras raises many kinds for a corrupt archive
        raise ValueError(f"{model_file} could not be read as a Keras model: {error}") from error
    config = AEConfig.from_json(config_file) if config_file.is_file() else get_config(model)
    # The optimizer state is not saved: compile afresh, ready for fine-tuning.
    compile_for(model, config)
    _attach(model, config)
    return model
