"""Tests of the floating-window reconstruction, lattice measurement and denoise."""

from __future__ import annotations

import importlib
import warnings

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stem_ae.model import AEConfig, build_autoencoder

reconstruct_module = importlib.import_module("stem_ae.reconstruct")
from stem_ae.reconstruct import (  # noqa: E402
    CalibrationWarning,
    blend_weights,
    denoise,
    estimate_lattice,
    estimate_period,
    reconstruct,
)

WINDOW = 28


def _linear_model(kernel: np.ndarray) -> keras.Sequential:
    """A linear window model ``x -> x @ kernel`` without bias (784 -> 784)."""
    model = keras.Sequential(
        [
            keras.Input((WINDOW, WINDOW)),
            keras.layers.Flatten(),
            keras.layers.Dense(WINDOW * WINDOW, use_bias=False),
            keras.layers.Reshape((WINDOW, WINDOW)),
        ]
    )
    model.layers[1].set_weights([kernel.astype(np.float32)])
    return model


IDENTITY = _linear_model(np.eye(WINDOW * WINDOW))
MEAN_MODEL = _linear_model(np.full((WINDOW * WINDOW,) * 2, 1.0 / WINDOW**2))


@pytest.fixture(scope="module")
def dense_model():
    keras.utils.set_random_seed(0)
    return build_autoencoder(AEConfig(encoder=(64, 32), code=16))


def _lattice_image(shape, spacing, angle_deg, kind, rng):
    """Sum of cosines with the reciprocal vectors of a square/rectangular/hexagonal lattice."""
    y, x = np.indices(shape, dtype=float)
    t = np.deg2rad(angle_deg)
    directions = {"square": [0, 90], "rectangular": [0, 90], "hexagonal": [0, 60, 120]}[kind]
    ratios = {"square": [1, 1], "rectangular": [1, 0.7], "hexagonal": [1, 1, 1]}[kind]
    weights = {"square": [1, 1], "rectangular": [1, 0.8], "hexagonal": [1, 1, 1]}[kind]
    image = np.zeros(shape)
    for direction, ratio, weight in zip(directions, ratios, weights, strict=True):
        phi = t + np.deg2rad(direction)
        g = np.array([-np.sin(phi), np.cos(phi)]) / (spacing * ratio)
        image += weight * np.cos(2 * np.pi * (g[0] * y + g[1] * x) + rng.uniform(0, 2 * np.pi))
    return image + 0.5 * rng.standard_normal(shape)


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
        return _linear_model(np.random.default_rng(3).normal(size=(WINDOW**2,) * 2) / WINDOW)
    return _conv_model()


@pytest.mark.parametrize("kind", ["sigmoid output", "raw windows", "one layer", "not dense"])
def test_fast_equals_naive_for_every_model_shape(kind):
    model = _variant(kind)
    image = np.random.default_rng(4).normal(size=(50, 61)) * 2 + 5
    fast = reconstruct(image, model, step=3, batch_size=64)
    naive = reconstruct(image, model, step=3, method="naive")
    assert np.abs(fast - naive).max() <= 1e-4 * np.abs(naive).max()


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
    for tile, source, target in reconstruct_module.iter_tiles(image.shape, tile=20, overlap=7):
        out[target] = image[tile][source]
    np.testing.assert_array_equal(out, image)


# ---------------------------------------------------------------------------------------------
# lattice


def test_estimate_period_within_two_percent_on_random_lattices():
    rng = np.random.default_rng(4)
    errors = []
    for kind in ("square", "rectangular", "hexagonal"):
        for _ in range(4):
            spacing = float(np.exp(rng.uniform(np.log(6), np.log(60))))
            angle = float(rng.uniform(0, 180))
            image = _lattice_image((256, 256), spacing, angle, kind, rng)
            period, measured_angle = estimate_period(image)
            errors.append(abs(period / spacing - 1))
            fold = {"square": 90, "rectangular": 180, "hexagonal": 60}[kind]
            assert abs((measured_angle - angle + fold / 2) % fold - fold / 2) < 1.0
    assert max(errors) < 0.02, errors


def test_estimate_period_on_simulated_scenes():
    from stem_ae.simulate import simulate_scene

    rng = np.random.default_rng(11)
    for kind in ("srtio3", "rectangular", "hexagonal"):
        base = simulate_scene((64, 64), lattice=kind, pixel_size=1.0, dose=None, rng=0)
        for index in range(3):
            spacing = float(np.exp(rng.uniform(np.log(6), np.log(60))))
            size = 256 if spacing < 30 else 512  # at least ~8 periods across
            scene = simulate_scene(
                (size, size),
                lattice=kind,
                pixel_size=base.lattice.dominant_spacing() / spacing,
                dose=float(rng.uniform(1, 100)),
                angle=float(rng.uniform(0, 180)),
                rng=index,
            )
            period, _ = estimate_period(scene.noisy)
            # "dominant" is ambiguous between reflections within 15 % in amplitude
            g, amplitude = scene.lattice.reflections()
            candidates = 1 / np.linalg.norm(g[amplitude >= 0.85 * amplitude.max()], axis=1)
            assert np.min(np.abs(period / candidates - 1)) < 0.02, (kind, spacing, period)


def test_estimate_lattice_on_shared_srtio3(data_dir):
    tifffile = pytest.importorskip("tifffile")
    image = tifffile.imread(data_dir / "Tecnai_Osiris_SrTiO3.tif")
    lattice = estimate_lattice(image)
    assert abs(lattice.dominant_spacing / 25.6 - 1) < 0.02
    assert all(abs(s / 25.6 - 1) < 0.05 for s in lattice.spacings)
    # the raw scan is sheared by drift by ~3°: nearly square
    assert abs(((lattice.angles[1] - lattice.angles[0]) % 180) - 90) < 5


@pytest.mark.parametrize("kind", ["noise", "amorphous", "constant", "fringes"])
def test_estimate_lattice_refuses_non_crystals(kind):
    from scipy import ndimage

    rng = np.random.default_rng(1)
    image = {
        "noise": rng.poisson(4.0, size=(256, 256)).astype(float),
        "amorphous": ndimage.gaussian_filter(rng.normal(size=(256, 256)), 2.0),
        "constant": np.full((256, 256), 7.0),
        "fringes": np.cos(2 * np.pi * np.arange(256) / 9.0)[None, :] * np.ones((256, 1)),
    }[kind]
    with pytest.raises(ValueError):
        estimate_lattice(image)


# ---------------------------------------------------------------------------------------------
# denoise


def test_resampling_round_trip_does_not_shift():
    rng = np.random.default_rng(0)
    image = _lattice_image((200, 180), 16.0, 20.0, "square", rng)
    shape = image.shape
    scaled = (97, 83)
    down = reconstruct_module._resample(
        image, (0, 0), list(zip(shape, scaled, strict=True)), (0, 0), scaled
    )
    up = reconstruct_module._resample(
        down, (0, 0), list(zip(scaled, shape, strict=True)), (0, 0), shape
    )
    # compare centroids of the cross-correlation peak: no sub-pixel shift
    spectrum = np.fft.fft2(image) * np.conj(np.fft.fft2(up))
    correlation = np.fft.fftshift(np.real(np.fft.ifft2(spectrum)))
    peak = np.unravel_index(np.argmax(correlation), correlation.shape)
    assert peak == (shape[0] // 2, shape[1] // 2)
    inner = (slice(20, -20), slice(20, -20))
    residual = np.abs(up - image)[inner].mean() / image.std()
    assert residual < 0.5  # only the high frequencies lost at half sampling differ


def test_denoise_keeps_shape_dtype_and_units(dense_model):
    rng = np.random.default_rng(2)
    image = (_lattice_image((96, 90), 8.0, 10.0, "square", rng) * 100 + 33_000).astype(np.uint16)
    out, spread = denoise(image, model=dense_model, return_uncertainty=True)
    assert out.shape == image.shape and out.dtype == np.float32 and spread.dtype == np.float32
    assert abs(float(np.median(out)) - float(np.median(image))) < 3 * image.std()
    assert np.all(spread >= 0)


def test_denoise_normalisation_round_trip():
    # an identity model on an image already at the model's sampling returns the image
    rng = np.random.default_rng(3)
    image = _lattice_image((80, 80), 6.364, 0.0, "square", rng) * 250 + 33_000
    out = denoise(image, model=IDENTITY)
    np.testing.assert_allclose(out, image, atol=1e-3 * np.ptp(image))


def test_denoise_warns_on_calibration_mismatch(dense_model):
    image = _lattice_image((96, 96), 8.0, 0.0, "square", np.random.default_rng(0))
    with pytest.warns(CalibrationWarning, match="3.905"):
        denoise(image, model=dense_model, pixel_size=0.3)  # 8 px * 0.3 = 2.4 Å
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        denoise(image, model=dense_model, pixel_size=3.905 / 8)
        # a perovskite whose two column types look alike shows the centred a/√2 cell
        denoise(image, model=dense_model, pixel_size=3.905 / np.sqrt(2) / 8)


@pytest.mark.parametrize(
    ("image", "kwargs", "error"),
    [
        (np.full((64, 64), np.nan), {}, ValueError),
        (np.zeros((2, 3, 64, 64)), {}, ValueError),
        (np.zeros(64), {}, ValueError),
        (np.zeros((20, 64)), {}, ValueError),
        (np.zeros((64, 64)), {}, ValueError),  # constant: no lattice
        (None, {"step": 0}, ValueError),
        (None, {"step": 29}, ValueError),
        ((np.zeros((64, 64)) + 1j), {}, TypeError),
        (None, {"model": 3}, TypeError),
        ([np.zeros((64, 64)), np.zeros((64, 65))], {}, ValueError),
    ],
)
def test_denoise_rejects_bad_input(dense_model, image, kwargs, error):
    if image is None:
        image = _lattice_image((64, 64), 8.0, 0.0, "square", np.random.default_rng(0))
    kwargs.setdefault("model", dense_model)
    with pytest.raises(error):
        denoise(image, **kwargs)


def test_denoise_rejects_images_too_small_after_rescaling(dense_model):
    # spacing 24 px on 96 px: at the model's ~6.4 px sampling it is ~25 px wide
    image = _lattice_image((96, 96), 24.0, 0.0, "square", np.random.default_rng(0))
    with pytest.raises(ValueError, match="smaller than the 28 px window"):
        denoise(image, model=dense_model)


def test_denoise_stack_equals_frame_by_frame(dense_model):
    rng = np.random.default_rng(5)
    frames = np.stack([_lattice_image((64, 72), 7.0, 5.0, "square", rng) for _ in range(3)])
    stack = denoise(frames, model=dense_model, workers=2)
    assert stack.shape == frames.shape
    single = denoise(frames[1], model=dense_model)
    # the sampling match and normalisation are measured once per series: close, not equal
    assert np.abs(stack[1] - single).max() < 0.05 * np.ptp(frames[1])


def _second_difference_rms(image: np.ndarray, reciprocal: np.ndarray) -> float:
    """RMS distance (px) of each column from the midpoint of its two lattice neighbours.

    Second differences along both lattice vectors cancel any smooth distortion (drift, scan
    shear), so this measures how far columns scatter about a locally fitted lattice.
    """
    from stem_ae.analysis import find_columns

    columns = find_columns(image)
    fractional = columns @ np.linalg.inv(np.linalg.inv(reciprocal).T)
    fractional -= np.median(fractional - np.rint(fractional), axis=0)
    index = np.rint(fractional).astype(int)
    on_lattice = np.abs(fractional - index).max(axis=1) < 0.25  # one sublattice only
    where = {tuple(k): p for k, p in zip(index[on_lattice], columns[on_lattice], strict=True)}
    deviations = [
        p - 0.5 * (where[(i - di, j - dj)] + where[(i + di, j + dj)])
        for (i, j), p in where.items()
        for di, dj in ((1, 0), (0, 1))
        if (i - di, j - dj) in where and (i + di, j + dj) in where
    ]
    assert len(deviations) > 100
    return float(np.sqrt(np.mean(np.sum(np.square(deviations), axis=1))))


@pytest.mark.slow
def test_denoised_srtio3_columns_sit_closer_to_a_lattice(data_dir):
    tifffile = pytest.importorskip("tifffile")
    image = tifffile.imread(data_dir / "Tecnai_Osiris_SrTiO3.tif").astype(np.float64)
    reciprocal = estimate_lattice(image).reciprocal
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        denoised = denoise(image, pixel_size=0.135)  # shipped "general" model
        network_only = denoise(image, pixel_size=0.135, residual="none")
    raw = _second_difference_rms(image, reciprocal)
    # The auto-encoder alone pulls columns onto a lattice; the default adds back the low-passed
    # residual (data consistency), which keeps less of that regularity but invents less.
    assert _second_difference_rms(network_only, reciprocal) < 0.8 * raw
    assert _second_difference_rms(denoised, reciprocal) < 0.98 * raw


@pytest.mark.slow
def test_residual_correction_raises_psnr_and_removes_invented_columns():
    from stem_ae.analysis import find_columns, match_columns, psnr
    from stem_ae.simulate import simulate_scene

    scene = simulate_scene((192, 192), defect="vacancies", pixel_size=0.3, dose=16.0, rng=77)
    network_only = denoise(scene.noisy, residual="none")
    corrected = denoise(scene.noisy)  # residual="sure"
    assert psnr(scene.clean, corrected) > psnr(scene.clean, network_only) + 2
    assert psnr(scene.clean, corrected) > psnr(scene.clean, scene.noisy) + 1
    invented = [
        match_columns(find_columns(image, pixel_size=0.3), scene.columns).n_invented
        for image in (network_only, corrected)
    ]
    assert invented[1] < invented[0]


@pytest.mark.parametrize("residual", ["auto", -1.0, float("nan")])
def test_bad_residual_option_raises(residual):
    with pytest.raises(ValueError, match="residual"):
        denoise(np.zeros((64, 64)), residual=residual)
