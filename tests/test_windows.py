"""Tests of stem_ae.windows: the floating-window reconstruction, its blending and fast path."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
from _helpers import linear_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stem_ae._common import WINDOW
from stem_ae.model import AEConfig, available_models, build_autoencoder, get_config, load_model
from stem_ae.windows import blend_weights, iter_tiles, reconstruct

IDENTITY = linear_model(np.eye(WINDOW * WINDOW))
MEAN_MODEL = linear_model(np.full((WINDOW * WINDOW,) * 2, 1.0 / WINDOW**2))


@pytest.fixture(scope="module")
def dense_model():
    keras.utils.set_random_seed(0)
    return build_autoencoder(AEConfig(encoder=(64, 32), code=16))


# ---------------------------------------------------------------------------------------------
# reconstruct


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    step=st.integers(1, 28),
    height=st.integers(28, 75),
    width=st.integers(28, 75),
    blend=st.sampled_from(["mean", "hann"]),
    seed=st.integers(0, 2**16),
)
def test_identity_model_reconstructs_input(step, height, width, blend, seed):
    image = np.random.default_rng(seed).normal(100.0, 5.0, size=(height, width))
    out = reconstruct(image, IDENTITY, step=step, blend=blend)
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, image, rtol=0, atol=1e-3)


def _analytic_mean_filter(image, step, blend):
    """Overlap-add of window means as separable matrices A_y @ padded @ A_x.T (independent)."""
    profile = np.ones(WINDOW)
    if blend == "hann":
        profile = 0.1 + 0.9 * np.sin(np.pi * (np.arange(WINDOW) + 0.5) / WINDOW) ** 2
    operators, pads = [], []
    for n in image.shape:
        starts = [t for t in range(-(WINDOW - 1), n) if t % step == 0]
        pad_before, pad_after = -starts[0], starts[-1] + WINDOW - n
        size = n + pad_before + pad_after
        operator = np.zeros((n, size))
        for p in range(n):
            covering = [t for t in starts if t <= p < t + WINDOW]
            norm = sum(profile[p - t] for t in covering)
            for t in covering:
                operator[p, t + pad_before : t + pad_before + WINDOW] += (
                    profile[p - t] / norm / WINDOW
                )
        operators.append(operator)
        pads.append((pad_before, pad_after))
    padded = np.pad(image, pads, mode="reflect")
    return operators[0] @ padded @ operators[1].T


@pytest.mark.parametrize(("step", "blend"), [(1, "mean"), (3, "hann"), (7, "mean"), (28, "hann")])
def test_linear_model_equals_analytic_correlation(step, blend):
    # a linear model without bias with L(1) = 1 is blind to the window standardisation
    image = np.random.default_rng(step).normal(size=(45, 61)) * 3 + 7
    out = reconstruct(image, MEAN_MODEL, step=step, blend=blend)
    np.testing.assert_allclose(out, _analytic_mean_filter(image, step, blend), atol=2e-5)


@pytest.mark.parametrize("step", [1, 2, 5, 28])
@pytest.mark.parametrize("blend", ["mean", "hann"])
def test_fast_equals_naive(dense_model, step, blend):
    image = np.random.default_rng(step).normal(size=(57, 66))
    fast, fast_spread = reconstruct(
        image, dense_model, step=step, blend=blend, return_uncertainty=True, batch_size=100
    )
    naive, naive_spread = reconstruct(
        image, dense_model, step=step, blend=blend, method="naive", return_uncertainty=True
    )
    scale = np.abs(naive).max()
    assert np.abs(fast - naive).max() <= 1e-4 * scale
    # the spread is a square root: float32 rounding of d² shows as ~3e-4 |d| near zero
    assert np.abs(fast_spread - naive_spread).max() <= 2e-3 * np.abs(image).max()


def _conv_model() -> keras.Model:
    """A window model that is not a Dense chain: runs through the generic (gathered) path."""
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((WINDOW, WINDOW)),
            keras.layers.Reshape((WINDOW, WINDOW, 1)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(1, 3, padding="same"),
            keras.layers.Reshape((WINDOW, WINDOW)),
        ]
    )


def _variant(kind: str) -> keras.Model:
    keras.utils.set_random_seed(2)
    if kind == "sigmoid output":
        return build_autoencoder(AEConfig(encoder=(32,), code=8, output_activation="sigmoid"))
    if kind == "raw windows":
        return build_autoencoder(AEConfig(encoder=(32,), code=8, normalization="none"))
    if kind == "one layer":
        return linear_model(np.random.default_rng(3).normal(size=(WINDOW**2,) * 2) / WINDOW)
    return _conv_model()


@pytest.mark.parametrize("kind", ["sigmoid output", "raw windows", "one layer", "not dense"])
def test_fast_equals_naive_for_every_model_shape(kind):
    model = _variant(kind)
    image = np.random.default_rng(4).normal(size=(50, 61)) * 2 + 5
    fast = reconstruct(image, model, step=3, batch_size=64)
    naive = reconstruct(image, model, step=3, method="naive")
    assert np.abs(fast - naive).max() <= 1e-4 * np.abs(naive).max()


@pytest.fixture(scope="module", params=[False, True], ids=["conv", "antialias"])
def conv_autoencoder(request):
    keras.utils.set_random_seed(3)
    return build_autoencoder(
        AEConfig(window=16, encoder=(4, 8), code=8, architecture="conv", antialias=request.param)
    )


def test_conv_fast_path_does_not_depend_on_bands_and_moves_with_the_image(
    conv_autoencoder, monkeypatch
):
    from stem_ae import windows
    from stem_ae._runner import Runner

    image = np.random.default_rng(6).normal(size=(70, 92)) * 2 + 5
    whole = reconstruct(image, conv_autoencoder, step=2)
    monkeypatch.setattr(windows, "CONV_BAND_PIXELS", 8 * 100)  # bands of 8 rows
    banded = reconstruct(image, conv_autoencoder, step=2)
    # bit for bit where oneDNN runs one convolution kernel whatever the band's height (the CPUs
    # of CI); on CPUs with AVX512-BF16 or AMX it picks kernels by shape: float32 rounding apart
    assert np.abs(banded - whole).max() <= 1e-6 * np.abs(whole).max()
    # the floating window's outputs move with the image by a multiple of the period (4 px);
    # reconstruct's global scaling is matched by shifting a copy padded with the same pixels
    margin = Runner(conv_autoencoder).halo + 16
    wide = np.random.default_rng(7).normal(size=(100, 124)) * 2 + 5
    left = reconstruct(wide[:, :120], conv_autoencoder, step=2)
    right = reconstruct(wide[:, 4:], conv_autoencoder, step=2)
    scale = np.abs(left).max()
    inner, shifted = slice(margin, 120 - margin), slice(margin - 4, 120 - margin - 4)
    # each pixel is standardised by its own window: the crops' global scaling does not matter
    assert np.abs(left[margin:-margin, inner] - right[margin:-margin, shifted]).max() < 1e-4 * scale


def test_conv_from_twice_the_period_runs_on_the_windows_themselves(conv_autoencoder):
    # steps >= 2 × period (8 px here) take the windows path: the same as the naive oracle
    image = np.random.default_rng(9).normal(size=(50, 61)) * 2 + 5
    fast, fast_spread = reconstruct(image, conv_autoencoder, step=8, return_uncertainty=True)
    naive, naive_spread = reconstruct(
        image, conv_autoencoder, step=8, method="naive", return_uncertainty=True
    )
    assert np.abs(fast - naive).max() <= 1e-4 * np.abs(naive).max()
    assert np.abs(fast_spread - naive_spread).max() <= 2e-3 * np.abs(image).max()


def test_conv_step_chooses_the_passes_and_their_spread(conv_autoencoder):
    image = np.random.default_rng(8).normal(size=(48, 52))

    def run(step, uncertainty=False):
        calls = []
        out = reconstruct(
            image,
            conv_autoencoder,
            step=step,
            return_uncertainty=uncertainty,
            progress=lambda *c: calls.append(c),
        )
        return out, calls

    alone, calls = run(4)
    assert calls == [(0, 1), (1, 1)]  # step = period: one pass
    (out, spread), calls = run(4, uncertainty=True)
    # the spread takes the half-period grid's four passes; the result stays the step's pass
    assert calls[-1] == (4, 4) and spread.mean() > 0
    np.testing.assert_array_equal(out, alone)
    (out2, spread2), calls = run(2, uncertainty=True)
    assert calls[-1] == (4, 4)  # offsets {0, 2}² on the 4-px grid: the same passes
    np.testing.assert_allclose(spread2, spread, rtol=1e-5, atol=1e-6)
    assert np.abs(out2 - out).max() > 0  # the mean of four passes, not one
    _, calls = run(3)
    assert calls[-1] == (16, 16)  # gcd(3, 4) = 1: every offset mod 4 occurs


def test_fast_is_bit_reproducible(dense_model):
    # bands run on several threads but are added in order: the same bytes every time
    image = np.random.default_rng(5).normal(size=(90, 80))
    first = reconstruct(image, dense_model, step=2, batch_size=50)
    for _ in range(3):
        assert reconstruct(image, dense_model, step=2, batch_size=50).tobytes() == first.tobytes()


def test_uncertainty_is_the_spread_of_window_predictions():
    # the mean model predicts each window's mean: a pixel's spread is the spread of the means
    image = np.zeros((56, 56))
    image[:, 28:] = 1.0
    _, spread = reconstruct(image, MEAN_MODEL, step=28, return_uncertainty=True)
    assert np.abs(spread).max() < 1e-3  # one window per pixel
    _, spread = reconstruct(image, MEAN_MODEL, step=1, return_uncertainty=True)
    assert spread[:, 28].mean() > 0.2 and spread[:, 0].max() < spread[:, 28].min()


def test_progress_reports_all_windows(dense_model):
    calls = []
    reconstruct(np.ones((40, 40)), dense_model, step=4, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1] and len(calls) >= 1
    assert calls[0][0] == 0  # a first call before any band is done
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(calls))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"step": 0}, ValueError),
        ({"step": 29}, ValueError),
        ({"step": 2.5}, TypeError),
        ({"method": "slow"}, ValueError),
        ({"blend": "gauss"}, ValueError),
    ],
)
def test_reconstruct_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        reconstruct(np.zeros((40, 40)), IDENTITY, **kwargs)


def test_reconstruct_rejects_bad_images():
    with pytest.raises(ValueError, match="smaller"):
        reconstruct(np.zeros((27, 40)), IDENTITY)
    with pytest.raises(ValueError, match="NaN"):
        reconstruct(np.full((40, 40), np.nan), IDENTITY)


def test_blend_weights_are_positive_and_peak_in_the_centre():
    weights = blend_weights("hann")
    assert weights.min() > 0 and weights[13, 13] == weights.max()
    np.testing.assert_array_equal(blend_weights("mean"), 1)


def test_iter_tiles_round_trip():
    image = np.random.default_rng(0).normal(size=(70, 53))
    out = np.full_like(image, np.nan)
    for tile, source, target in iter_tiles(image.shape, tile=20, overlap=7):
        out[target] = image[tile][source]
    np.testing.assert_array_equal(out, image)


@pytest.mark.skipif("general_conv" not in available_models(), reason="model not trained yet")
def test_shipped_conv_fast_path_agrees_with_the_naive_floating_window():
    # the fast path gives window borders no weight; the naive oracle averages whole windows:
    # on a lattice the two differ by much less than the noise they remove
    from stem_ae.analysis import psnr
    from stem_ae.simulate import simulate_scene

    model = load_model("general_conv")
    assert get_config(model).architecture == "conv"
    scene = simulate_scene((84, 84), pixel_size=0.45, dose=8.0, rng=5)  # spacing ~6 px
    fast = reconstruct(scene.noisy, model, step=4)
    naive = reconstruct(scene.noisy, model, step=4, method="naive")
    inner = (slice(14, -14), slice(14, -14))
    truth, noisy = scene.clean[inner], scene.noisy[inner]
    gap = np.sqrt(np.mean((fast - naive)[inner] ** 2))
    noise = np.sqrt(np.mean((noisy - truth) ** 2))
    assert gap < 0.25 * noise
    assert psnr(truth, fast[inner]) > psnr(truth, noisy) + 3  # measured: +5.0 dB
    # the naive windows are an ensemble over window crops: measured 0.86 dB better here (in
    # denoise, with resampling and the correction, 0.1-0.3 dB: docs/design.md)
    assert psnr(truth, fast[inner]) > psnr(truth, naive[inner]) - 1.2
