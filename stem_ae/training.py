"""Streamed training of the stacked auto-encoder on simulated windows, and its error metrics.

Training windows are never stored: :class:`WindowStream` draws them from
:func:`stem_ae.simulate.training_batch` on the fly, in blocks of many batches that a background
thread prepares while Keras trains on the previous block. Every block is seeded by
``(seed, epoch, block index)``, so a run is reproducible and two epochs never see the same
windows. The test set comes from its own, independent seed stream (:func:`make_test_set`).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from stem_ae._common import import_keras
from stem_ae.model import (
    AEConfig,
    build_autoencoder,
    compile_for,
    counts_weights,
    get_config,
    predict_windows,
    standardize,
)

keras = import_keras()

__all__ = [
    "RECIPES",
    "VacancyCheck",
    "WindowStream",
    "draw_pool",
    "error_metrics",
    "evaluate",
    "make_test_set",
    "resolve_distribution",
    "train",
    "train_recipe",
    "vacancies_filled",
    "vacancy_windows",
]

# Seed-sequence tags: training blocks use (seed, epoch, block), test sets (_TEST_TAG, seed).
_TEST_TAG = 0x7E57
_POOL_TAG = 0x9001

#: The exact recipes of the shipped models: ``train_recipe(name)`` reproduces ``models/<name>``.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {
        "config": AEConfig(encoder=(1024, 512, 256), code=128, name="paper"),
        "distribution": "paper",
        "n_samples": 700_000,
        "epochs": 5,
        "batch_size": 512,
        "seed": 0,
        "precision": "mixed_bfloat16",
    },
    "general": {
        "config": AEConfig(encoder=(1024, 512, 256), code=128, name="general"),
        "distribution": "general",
        "n_samples": 700_000,
        "epochs": 4,
        "batch_size": 512,
        "seed": 1,
        "precision": "mixed_bfloat16",
        "pool_size": 262_144,
        "processes": 2,
    },
    "general_conv": {
        "config": AEConfig(encoder=(24, 48), code=64, name="general_conv", architecture="conv"),
        "distribution": "realistic",
        "n_samples": 280_000,
        "epochs": 4,
        "batch_size": 64,
        "seed": 1,
        "precision": "float32",
        "pool_size": 262_144,
        "processes": 2,
    },
}


def resolve_distribution(distribution: Any):
    """Return a ``TrainingDistribution``: pass one through, or look up ``"paper"``,
    ``"general"`` or ``"realistic"``.

    Also accepts the dict written by ``TrainingDistribution.to_dict()``.
    """
    from stem_ae import simulate

    return simulate._resolve_distribution(distribution)


def _standardized_pair(noisy: np.ndarray, clean: np.ndarray, normalization: str, loss="mse"):
    """Model input and target for (noisy, clean) windows under the model input convention; for
    ``loss="counts"`` the target carries :func:`stem_ae.model.counts_weights` on a last axis."""
    if normalization == "window":
        z, mu, scale = standardize(noisy)
        target = np.asarray(clean, np.float32) - mu
        target /= scale
    else:
        z, target = noisy.astype(np.float32, copy=False), clean.astype(np.float32, copy=False)
    if loss == "counts":
        target = np.stack([target, counts_weights(clean)], axis=-1)
    return z, target


class WindowStream(keras.utils.PyDataset):
    """Keras dataset of simulated (input, target) batches, drawn on the fly.

    Parameters
    ----------
    n_samples : int
        Windows per epoch.
    batch_size : int
        Windows per batch; the last batch of an epoch may be shorter.
    distribution : TrainingDistribution or str
        What :func:`stem_ae.simulate.training_batch` draws from (``"paper"``, ``"general"``).
    seed : int
        Block ``k`` of epoch ``e`` is drawn with ``numpy.random.default_rng([seed, e, k])``.
    window : int
        Window side, px.
    normalization : str
        ``"window"`` standardises input and target by the noisy window's mean and std.
    loss : str
        The model's :attr:`AEConfig.loss`: with ``"counts"`` each target carries its weights
        (:func:`stem_ae.model.counts_weights`) on a last axis of 2.
    block_size : int
        Windows simulated at once (rounded to whole batches); a background thread prepares the
        next block while the current one is consumed. Memory: about ``block_size * window**2
        * 16`` bytes for two blocks of inputs and targets.

    pool : (noisy, clean), optional
        Pre-drawn windows, arrays of shape (P, window, window) (see :func:`draw_pool`). When
        given, every block resamples the pool with replacement and flips each window up–down
        and/or left–right at random (flips keep scan lines horizontal), instead of simulating:
        for distributions too slow to simulate at training speed.

    Notes
    -----
    The epoch counter advances in :meth:`on_epoch_end`, which Keras calls after every epoch.
    Call :meth:`close` (``train`` does) to stop the background thread.
    """

    def __init__(
        self,
        n_samples: int,
        batch_size: int,
        *,
        distribution: Any = "paper",
        seed: int = 0,
        window: int = 28,
        normalization: str = "window",
        loss: str = "mse",
        block_size: int = 32_768,
        pool: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        for name, value in (("n_samples", n_samples), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.n_samples = int(n_samples)
        self.batch_size = int(min(batch_size, n_samples))
        self.distribution = resolve_distribution(distribution)
        self.seed = int(seed)
        self.window = int(window)
        self.normalization = normalization
        self.loss = loss
        self.batches_per_block = max(1, int(block_size) // self.batch_size)
        if pool is not None:
            pool = tuple(np.asarray(array, np.float32) for array in pool)
            if len(pool) != 2 or pool[0].shape != pool[1].shape or pool[0].ndim != 3:
                raise ValueError("pool must be (noisy, clean) arrays of equal shape (P, w, w)")
            if pool[0].shape[1:] != (self.window, self.window):
                raise ValueError(
                    f"pool windows have shape {pool[0].shape[1:]}, expected "
                    f"({self.window}, {self.window})"
                )
        self.pool = pool
        self.epoch = 0
        self._lock = threading.Lock()
        self._blocks: dict[tuple[int, int], Future] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stem_ae_stream")

    @property
    def num_batches(self) -> int:
        return math.ceil(self.n_samples / self.batch_size)

    def __len__(self) -> int:
        return self.num_batches

    @property
    def n_blocks(self) -> int:
        """Blocks per epoch."""
        return math.ceil(self.num_batches / self.batches_per_block)

    def draw_block(self, epoch: int, block: int) -> tuple[np.ndarray, np.ndarray]:
        """Simulate and standardise block ``block`` of epoch ``epoch``.

        Returns
        -------
        inputs, targets : ndarray, shape (M, window, window), float32
        """
        from stem_ae.simulate import training_batch

        start = block * self.batches_per_block * self.batch_size
        size = min(self.batches_per_block * self.batch_size, self.n_samples - start)
        rng = np.random.default_rng([self.seed, epoch, block])
        if self.pool is None:
            noisy, clean = training_batch(
                size, rng=rng, window=self.window, distribution=self.distribution
            )
        else:
            noisy, clean = _resample(self.pool, size, rng)
        return _standardized_pair(
            np.asarray(noisy, np.float32),
            np.asarray(clean, np.float32),
            self.normalization,
            self.loss,
        )

    def _future(self, epoch: int, block: int) -> Future:
        key = (epoch, block)
        if key not in self._blocks:
            self._blocks[key] = self._executor.submit(self.draw_block, epoch, block)
        return self._blocks[key]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch index {index} out of range(0, {self.num_batches})")
        block, offset = divmod(index, self.batches_per_block)
        with self._lock:
            epoch = self.epoch
            future = self._future(epoch, block)
            following = (epoch, block + 1) if block + 1 < self.n_blocks else (epoch + 1, 0)
            self._future(*following)
            for key in [key for key in self._blocks if key < (epoch, block)]:
                del self._blocks[key]
        inputs, targets = future.result()
        rows = slice(offset * self.batch_size, (offset + 1) * self.batch_size)
        return inputs[rows], targets[rows]

    def on_epoch_end(self) -> None:
        with self._lock:
            self.epoch += 1

    def close(self) -> None:
        """Stop the background thread and drop the cached blocks."""
        with self._lock:
            for future in self._blocks.values():
                future.cancel()
            self._blocks.clear()
        self._executor.shutdown(wait=True)


def _resample(pool, size, rng):
    """``size`` windows drawn with replacement from ``pool``, randomly flipped along each axis."""
    noisy_pool, clean_pool = pool
    index = np.sort(rng.integers(0, len(noisy_pool), size))
    flips = rng.integers(0, 2, (size, 2)).astype(bool)
    noisy, clean = noisy_pool[index], clean_pool[index]
    for axis in (0, 1):
        rows = flips[:, axis]
        noisy[rows] = np.flip(noisy[rows], axis=axis + 1)
        clean[rows] = np.flip(clean[rows], axis=axis + 1)
    order = rng.permutation(size)
    return noisy[order], clean[order]


def _draw_pool_chunk(distribution, window, entropy, size):
    from stem_ae.simulate import training_batch

    rng = np.random.default_rng(entropy)
    return training_batch(size, rng=rng, window=window, distribution=distribution)


def draw_pool(
    n: int,
    *,
    distribution: Any = "general",
    seed: int = 0,
    window: int = 28,
    processes: int = 1,
    chunk: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate a pool of training windows once, for :class:`WindowStream`'s ``pool``.

    Parameters
    ----------
    n : int
        Windows in the pool.
    distribution : TrainingDistribution or str
        What to draw from.
    seed : int
        Chunk ``k`` is drawn with ``numpy.random.default_rng([seed, 0x9001, k])``: the result
        does not depend on ``processes``.
    window : int
        Window side, px.
    processes : int
        Worker processes (spawned; they import only NumPy and the simulator).
    chunk : int
        Windows per task.

    Returns
    -------
    noisy, clean : ndarray, shape (n, window, window), float32
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    distribution = resolve_distribution(distribution)
    noisy = np.empty((n, window, window), np.float32)
    clean = np.empty((n, window, window), np.float32)
    starts = range(0, n, chunk)
    tasks = [
        (distribution, window, [int(seed), _POOL_TAG, k], min(chunk, n - start))
        for k, start in enumerate(starts)
    ]
    if processes > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(processes, mp_context=context) as executor:
            results = executor.map(_draw_pool_chunk, *zip(*tasks, strict=True))
            for start, (part_noisy, part_clean) in zip(starts, results, strict=True):
                noisy[start : start + len(part_noisy)] = part_noisy
                clean[start : start + len(part_clean)] = part_clean
    else:
        for start, task in zip(starts, tasks, strict=True):
            part_noisy, part_clean = _draw_pool_chunk(*task)
            noisy[start : start + len(part_noisy)] = part_noisy
            clean[start : start + len(part_clean)] = part_clean
    return noisy, clean


def make_test_set(
    n: int, *, distribution: Any = "paper", seed: int = 0, window: int = 28
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed test set, drawn from a seed stream independent of every training stream.

    Parameters
    ----------
    n : int
        Number of windows.
    distribution : TrainingDistribution or str
        ``"paper"``, ``"general"`` or a ``TrainingDistribution``.
    seed : int
        Test-set seed; the windows come from ``numpy.random.default_rng([0x7E57, seed])``, which
        no training block (seeded ``[seed, epoch, block]``) can reproduce.
    window : int
        Window side, px.

    Returns
    -------
    noisy, clean : ndarray, shape (n, window, window), float32
    """
    from stem_ae.simulate import training_batch

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    rng = np.random.default_rng([_TEST_TAG, int(seed)])
    noisy, clean = training_batch(
        int(n), rng=rng, window=window, distribution=resolve_distribution(distribution)
    )
    return np.asarray(noisy, np.float32), np.asarray(clean, np.float32)


def train(
    config: AEConfig | None = None,
    *,
    distribution: Any = "paper",
    n_samples: int = 700_000,
    epochs: int = 6,
    batch_size: int = 512,
    seed: int = 0,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    validation: int | tuple[np.ndarray, np.ndarray] | None = None,
    schedule: str = "cosine",
    block_size: int = 32_768,
    pool_size: int | None = None,
    processes: int = 1,
    precision: str = "float32",
    verbose: int = 2,
) -> tuple[keras.Sequential, keras.callbacks.History]:
    """Train an auto-encoder on windows streamed from the simulator.

    Parameters
    ----------
    config : AEConfig, optional
        Architecture (``AEConfig()`` when omitted). The returned model carries a copy whose
        ``training`` field records the distribution and every argument below.
    distribution : TrainingDistribution or str
        ``"paper"`` (SrTiO3, uniform noise at SNR 0.33), ``"general"`` or a
        ``TrainingDistribution``.
    n_samples : int
        Fresh windows per epoch (the paper: 700,000).
    epochs : int
        Passes; each draws new windows.
    batch_size : int
        Windows per gradient step.
    seed : int
        Seeds Keras (weights, via ``keras.utils.set_random_seed``) and the window stream.
    callbacks : list of keras.callbacks.Callback, optional
        Progress reporting, early stopping, etc. The library itself never prints.
    validation : int or (noisy, clean), optional
        Windows to report ``val_loss`` on after every epoch: a number of windows drawn by
        :func:`make_test_set` (test seed ``seed``), or arrays of shape (N, w, w).
    schedule : {"cosine", "constant"}
        Learning rate: cosine decay from ``config.learning_rate`` to 5 % of it over the run,
        or constant.
    block_size : int
        Windows simulated at once, see :class:`WindowStream`.
    pool_size : int, optional
        When given, simulate this many windows once (:func:`draw_pool`, seed ``seed``) and
        resample them with random flips every epoch, instead of simulating every window: for
        distributions slower to simulate than to train on. Recorded in the config.
    processes : int
        Processes that draw the pool.
    precision : {"float32", "mixed_bfloat16"}
        Compute precision during training. ``"mixed_bfloat16"`` (float32 weights, bfloat16
        matrix products) trains about twice as fast on CPUs with AMX/AVX512-BF16; the returned
        model is float32 either way.
    verbose : int
        Passed to ``Model.fit``: 2 (default) prints one line per epoch (loss, validation loss,
        time), 1 a progress bar, 0 nothing.

    Returns
    -------
    model : keras.Sequential
        Trained; ``get_config(model).training`` records how.
    history : keras.callbacks.History
        ``history.history["loss"]`` per epoch (mean squared error of standardised windows, or
        the loss in counts for ``config.loss="counts"``).

    Raises
    ------
    ValueError
        For non-positive ``n_samples``, ``epochs`` or ``batch_size``, or an unknown schedule.
    """
    if config is None:
        config = AEConfig()
    for name, value in (("n_samples", n_samples), ("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown schedule {schedule!r}; use 'cosine' or 'constant'")
    if precision not in ("float32", "mixed_bfloat16"):
        raise ValueError(f"unknown precision {precision!r}; use 'float32' or 'mixed_bfloat16'")
    distribution = resolve_distribution(distribution)
    record = {
        **distribution.to_dict(),
        "n_samples": int(n_samples),
        "epochs": int(epochs),
        "batch_size": int(batch_size),
        "seed": int(seed),
        "schedule": schedule,
        "precision": precision,
    }
    if pool_size is not None:
        record["pool_size"] = int(pool_size)
    config = dataclasses.replace(config, training=record)

    keras.utils.set_random_seed(seed)
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        model = build_autoencoder(config)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    pool = None
    if pool_size is not None:
        pool = draw_pool(
            pool_size,
            distribution=distribution,
            seed=seed,
            window=config.window,
            processes=processes,
        )
    stream = WindowStream(
        n_samples,
        batch_size,
        distribution=distribution,
        seed=seed,
        window=config.window,
        normalization=config.normalization,
        loss=config.loss,
        block_size=block_size,
        pool=pool,
    )
    if schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, decay_steps=epochs * stream.num_batches, alpha=0.05
        )
        compile_for(model, config, rate)
    validation_data = None
    if validation is not None:
        if isinstance(validation, (int, np.integer)):
            noisy, clean = make_test_set(
                int(validation), distribution=distribution, seed=seed, window=config.window
            )
        else:
            noisy, clean = (np.asarray(array, np.float32) for array in validation)
        validation_data = _standardized_pair(noisy, clean, config.normalization, config.loss)
    try:
        if pool is None:
            history = model.fit(
                stream,
                epochs=epochs,
                callbacks=list(callbacks or []),
                validation_data=validation_data,
                shuffle=False,  # the stream is random already; in order, each block is drawn once
                verbose=verbose,
            )
        else:
            history = _fit_in_memory(
                model, stream, epochs, list(callbacks or []), validation_data, verbose
            )
    finally:
        stream.close()
    if precision != "float32":
        trained, model = model, build_autoencoder(config)
        model.set_weights(trained.get_weights())
    return model, history


def _fit_in_memory(model, stream, epochs, callbacks, validation_data, verbose):
    """Fit epoch by epoch on arrays: the stream's blocks of one epoch, in order, in memory.

    The same windows in the same batches as fitting ``stream`` itself, but through Keras' array
    path: with small batches of a convolutional model the per-batch cost of a ``PyDataset``
    halves the throughput on 2 CPU cores (277 against 484 windows/s). Used when the windows are
    resampled from a pool, so that an epoch costs only its arrays (``n_samples × window² × 8``
    bytes). The learning-rate schedule follows the optimizer's step count across the epochs.
    """
    history = keras.callbacks.History()
    history.set_model(model)
    history.epoch, history.history = [], {}
    for epoch in range(epochs):
        blocks = [stream.draw_block(epoch, block) for block in range(stream.n_blocks)]
        inputs = np.concatenate([block[0] for block in blocks])
        targets = np.concatenate([block[1] for block in blocks])
        del blocks
        part = model.fit(
            inputs,
            targets,
            batch_size=stream.batch_size,
            epochs=epoch + 1,
            initial_epoch=epoch,
            callbacks=callbacks,
            validation_data=validation_data,
            shuffle=False,
            verbose=verbose,
        )
        del inputs, targets
        history.epoch += part.epoch
        for key, values in part.history.items():
            history.history.setdefault(key, []).extend(values)
    return history


def train_recipe(name: str, **overrides: Any) -> tuple[keras.Sequential, keras.callbacks.History]:
    """Train a shipped model's recipe (:data:`RECIPES`), optionally overriding arguments.

    ``train_recipe("paper")`` retrains ``stem_ae/models/paper``; keyword arguments of
    :func:`train` (``epochs=1``, ``callbacks=[...]``) override the recipe.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; recipes: {', '.join(sorted(RECIPES))}")
    arguments = {**RECIPES[name], **overrides}
    config = arguments.pop("config")
    return train(config, **arguments)


def error_metrics(output: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    """Error of denoised windows against the noise-free truth.

    Parameters
    ----------
    output, clean : ndarray, shape (N, w, w)
        Denoised windows and their truth, in the same units.

    Returns
    -------
    dict
        ``per_pixel_error``: the paper's figure, mean ``|output - truth|`` after dividing both by
        the truth's per-window maximum (so truth peaks at 1); ``relative_l1``:
        ``sum|output - truth| / sum|truth|``; ``rmse``: root mean square error on the same
        max-1 scale; ``psnr``: mean per-window PSNR in dB with ``data_range`` the truth's
        per-window range; ``ssim``: mean per-window SSIM (``skimage.metrics``, same range);
        ``n_windows``.

    Examples
    --------
    >>> clean = np.ones((2, 8, 8)); clean[:, 0, 0] = 2.0
    >>> round(error_metrics(clean + 0.2, clean)["per_pixel_error"], 3)
    0.1
    """
    from skimage.metrics import structural_similarity

    output = np.asarray(output, np.float64)
    clean = np.asarray(clean, np.float64)
    if output.shape != clean.shape or clean.ndim != 3:
        raise ValueError(
            f"output and clean must both have shape (N, w, w), got {output.shape} and {clean.shape}"
        )
    peak = np.abs(clean).max(axis=(1, 2), keepdims=True)
    if np.any(peak == 0):
        raise ValueError("a truth window is all zeros; the per-pixel error needs a peak > 0")
    difference = np.abs(output - clean)
    normalised = difference / peak
    value_range = np.ptp(clean, axis=(1, 2))
    value_range = np.where(value_range > 0, value_range, peak[:, 0, 0])
    mse = (difference**2).mean(axis=(1, 2))
    with np.errstate(divide="ignore"):
        psnr = 10 * np.log10(value_range**2 / mse)
    ssim = [
        structural_similarity(truth, guess, data_range=float(span))
        for truth, guess, span in zip(clean, output, value_range, strict=True)
    ]
    return {
        "per_pixel_error": float(normalised.mean()),
        "relative_l1": float(difference.sum() / np.abs(clean).sum()),
        "rmse": float(np.sqrt((normalised**2).mean())),
        "psnr": float(psnr.mean()),
        "ssim": float(np.mean(ssim)),
        "n_windows": len(clean),
    }


def evaluate(
    model: keras.Model, noisy: np.ndarray, clean: np.ndarray, *, batch_size: int = 8192
) -> dict[str, float]:
    """Denoise windows with ``model`` and score them against the truth (:func:`error_metrics`).

    Parameters
    ----------
    model : keras.Model
        A stem_ae auto-encoder; its input convention (``get_config(model).normalization``) is
        applied.
    noisy, clean : ndarray, shape (N, w, w)
        E.g. from :func:`make_test_set`.
    batch_size : int
        Windows per forward pass.

    Returns
    -------
    dict
        See :func:`error_metrics`.
    """
    return error_metrics(predict_windows(model, noisy, batch_size=batch_size), clean)


# --------------------------------------------------------------------------------------------
# a validation metric beside the loss: does the network paint columns into vacancies?

VACANCY_DOSE = 1.0
"""Mean counts/px of the vacancy windows: the dose at which the issue's target (≤ 2 % filled) is
set, and where a network that has learnt the lattice rather than the data paints columns."""


def vacancy_windows(
    *,
    spacing: float = 7.75,
    dose: float = VACANCY_DOSE,
    n_scenes: int = 4,
    seed: int = 2024,
    window: int = 28,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Windows around the column vacancies of simulated SrTiO3 scenes.

    ``n_scenes`` scenes of 160² px (:func:`stem_ae.simulate.simulate_scene`, 10 % vacancies,
    Poisson noise at ``dose`` counts/px, seeds ``seed, seed + 1, …``) are drawn at the pixel size
    that puts the dominant (110) plane spacing, ``a/√2``, at ``spacing`` px; a window is cut
    around every vacancy, which lands at a random place in it (not within 4 px of its edge:
    the floating window sees every vacancy at every such place), where the window fits.

    Returns
    -------
    noisy, clean : ndarray, shape (N, window, window), float32
    sites : list of N arrays, shape (2, 2) then (K, 2)
        Per window, the vacancy's position (first row) and the columns' (the rest), px, in the
        window's coordinates.
    """
    from stem_ae.simulate import SRTIO3_CELL, simulate_scene

    pixel_size = SRTIO3_CELL / math.sqrt(2) / float(spacing)
    half = window // 2
    reach = max(1, window // 2 - 4)  # the vacancy lands anywhere but the outer 4 px
    shifts = np.random.default_rng([int(seed), 0x7AC]).integers(-reach, reach + 1, (10_000, 2))
    noisy, clean, sites = [], [], []
    for k in range(int(n_scenes)):
        scene = simulate_scene(
            (160, 160),
            defect="vacancies",
            vacancy_fraction=0.1,
            pixel_size=pixel_size,
            dose=dose,
            rng=int(seed) + k,
        )
        vacancies = np.asarray(scene.metadata["vacancies"]["positions"], float).reshape(-1, 2)
        for vacancy in vacancies:
            dy, dx = shifts[len(noisy)]
            top, left = (int(v) - half + d for v, d in zip(np.rint(vacancy), (dy, dx), strict=True))
            if min(top, left) < 0 or max(top, left) + window > 160:
                continue
            origin = np.array([top, left], float)
            inside = scene.columns - origin
            keep = np.all((inside >= 2) & (inside <= window - 3), axis=1)
            noisy.append(scene.noisy[top : top + window, left : left + window])
            clean.append(scene.clean[top : top + window, left : left + window])
            sites.append(np.vstack([vacancy - origin, inside[keep]]))
    return (
        np.asarray(noisy, np.float32),
        np.asarray(clean, np.float32),
        sites,
    )


def vacancies_filled(
    outputs: np.ndarray,
    sites: Sequence[np.ndarray],
    radius: float = 1.5,
    threshold: float = 0.25,
) -> float:
    """Fraction of vacancy windows in which ``outputs`` shows a column at the vacancy.

    A site's height is the mean of the window within ``radius`` px of it minus the window's
    median; the vacancy (first row of ``sites[i]``) counts as filled when its height exceeds
    ``threshold`` × the median height of the window's columns (the other rows): the weakest
    column :func:`stem_ae.analysis.find_columns` keeps by default.

    Examples
    --------
    >>> yy, xx = np.mgrid[:28, :28]
    >>> spot = lambda y, x: np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4.0)
    >>> empty = spot(6, 6) + spot(6, 20) + spot(20, 6) + spot(20, 20)
    >>> sites = [np.array([[14, 14], [6, 6], [6, 20], [20, 6], [20, 20]], float)]
    >>> vacancies_filled(empty[None], sites), vacancies_filled((empty + spot(14, 14))[None], sites)
    (0.0, 1.0)
    """
    outputs = np.asarray(outputs, np.float64)
    if outputs.ndim != 3 or len(outputs) != len(sites):
        raise ValueError(
            f"outputs must be (N, w, w) with one site array per window; got {outputs.shape} "
            f"and {len(sites)} site arrays"
        )
    if not len(outputs):
        raise ValueError("no vacancy windows to score; draw more scenes")
    yy, xx = np.mgrid[: outputs.shape[1], : outputs.shape[2]]
    filled = []
    for image, points in zip(outputs, sites, strict=True):
        base = np.median(image)
        heights = [
            image[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2].mean() - base for y, x in points
        ]
        columns = heights[1:]
        filled.append(bool(columns) and heights[0] > threshold * float(np.median(columns)))
    return float(np.mean(filled))


class VacancyCheck(keras.callbacks.Callback):
    """Log ``vacancies_filled`` after every epoch: the network alone on :func:`vacancy_windows`.

    The windows are drawn once, on the first epoch's end, at the middle (geometric centre) of the
    model's trained spacing range. ``train(..., callbacks=[VacancyCheck()])`` then has
    ``history.history["vacancies_filled"]`` beside the loss.

    Parameters
    ----------
    dose : float
        Mean counts/px of the windows (default :data:`VACANCY_DOSE`).
    n_scenes : int
        Scenes to cut them from (about 30 windows each).
    seed : int
        First scene seed (never a training seed: the scenes come from ``simulate_scene``).
    """

    def __init__(self, dose: float = VACANCY_DOSE, n_scenes: int = 4, seed: int = 2024) -> None:
        super().__init__()
        self.dose, self.n_scenes, self.seed = float(dose), int(n_scenes), int(seed)
        self._windows = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self._windows is None:
            config = get_config(self.model)
            low, high = config.spacing_range
            noisy, _, sites = vacancy_windows(
                spacing=math.sqrt(low * high),
                dose=self.dose,
                n_scenes=self.n_scenes,
                seed=self.seed,
                window=config.window,
            )
            self._windows = (noisy, sites)
        noisy, sites = self._windows
        value = vacancies_filled(predict_windows(self.model, noisy), sites)
        if logs is not None:
            logs["vacancies_filled"] = value
