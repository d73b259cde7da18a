"""Tests of stem_ae.denoising (``denoise`` in its steps) and stem_ae._resample."""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import pytest
from _helpers import lattice_image, linear_model

from stem_ae._common import WINDOW
from stem_ae._resample import resample
from stem_ae.denoising import denoise
from stem_ae.lattice import CalibrationWarning, estimate_lattice
from stem_ae.model import AEConfig, build_autoencoder

IDENTITY = linear_model(np.eye(WINDOW * WINDOW))
MEAN_MODEL = linear_model(np.full((WINDOW * WINDOW,) * 2, 1.0 / WINDOW**2))


@pytest.fixture(scope="module")
def dense_model():
    keras.utils.set_random_seed(0)
    return build_autoencoder(AEConfig(encoder=(64, 32), code=16))


# ---------------------------------------------------------------------------------------------
# denoise


def test_resampling_round_trip_does_not_shift():
    rng = np.random.default_rng(0)
    image = lattice_image((200, 180), 16.0, 20.0, "square", rng)
    shape = image.shape
    scaled = (97, 83)
    down = resample(image, (0, 0), list(zip(shape, scaled, strict=True)), (0, 0), scaled)
    up = resample(down, (0, 0), list(zip(scaled, shape, strict=True)), (0, 0), shape)
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
    image = (lattice_image((96, 90), 8.0, 10.0, "square", rng) * 100 + 33_000).astype(np.uint16)
    out, spread = denoise(image, model=dense_model, return_uncertainty=True)
    assert out.shape == image.shape and out.dtype == np.float32 and spread.dtype == np.float32
    assert abs(float(np.median(out)) - float(np.median(image))) < 3 * image.std()
    assert np.all(spread >= 0)


def test_denoise_normalisation_round_trip():
    # an identity model on an image already at the model's sampling returns the image
    rng = np.random.default_rng(3)
    image = lattice_image((80, 80), 6.364, 0.0, "square", rng) * 250 + 33_000
    out = denoise(image, model=IDENTITY)
    np.testing.assert_allclose(out, image, atol=1e-3 * np.ptp(image))


def _spiked(image, rng, n, value):
    spiked = image.copy()
    where = rng.choice(image.size, n, replace=False)
    spiked.flat[where] = value
    return spiked, np.unravel_index(where, image.shape)


@pytest.mark.parametrize("contrast", ["bright", "dark"])
def test_hot_and_dead_pixels_leave_no_trace(contrast):
    # spikes 20x the brightest column and dead pixels far below the background: what the network
    # sees there is the median of the neighbours, so the output is the spike-free image's output
    from stem_ae.simulate import simulate_scene

    scene = simulate_scene((128, 128), pixel_size=0.2, dose=16.0, contrast=contrast, rng=5)
    image = scene.noisy.astype(np.float64)
    rng = np.random.default_rng(6)
    span = image.max() - image.min()
    spiked, hot = _spiked(image, rng, 12, image.max() + 20 * span)
    spiked, dead = _spiked(spiked, rng, 12, image.min() - 5 * span)
    kept = spiked.copy()
    reference = denoise(image, pixel_size=0.2, contrast=contrast)
    out = denoise(spiked, pixel_size=0.2, contrast=contrast)
    np.testing.assert_array_equal(spiked, kept)  # the input is not touched
    noise = np.std(image - scene.clean)
    for sites in (hot, dead):  # what is left there is the pixel's own noise, not the spike
        assert np.abs(out[sites] - reference[sites]).max() < 4 * noise
    assert np.abs(out - reference).mean() < 0.01 * noise


def test_outliers_take_their_neighbours_median_or_are_clipped_in_a_saturated_patch():
    from stem_ae.denoising import CLIP_RANGE, _replace_outliers

    frames = np.tile(np.linspace(0.0, 1.0, 20, dtype=np.float32), (2, 20, 1))
    frames[0, 5, 5] = 50.0
    frames[1, 8:16, 8:16] = -9.0  # wider than the neighbourhood: nothing in range at its centre
    original = frames.copy()
    out = _replace_outliers(frames)
    assert out[0, 5, 5] == original[0, 4, 5]  # the ramp's value in that column
    assert out[1, 12, 12] == CLIP_RANGE[0]  # the patch's centre: clipped
    assert CLIP_RANGE[0] < out[1, 8, 8] < 1  # its edge: the in-range neighbours' median
    inside = (original >= CLIP_RANGE[0]) & (original <= CLIP_RANGE[1])
    np.testing.assert_array_equal(out[inside], original[inside])


def test_denoise_warns_on_calibration_mismatch(dense_model):
    image = lattice_image((96, 96), 8.0, 0.0, "square", np.random.default_rng(0))
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
        image = lattice_image((64, 64), 8.0, 0.0, "square", np.random.default_rng(0))
    kwargs.setdefault("model", dense_model)
    with pytest.raises(error):
        denoise(image, **kwargs)


def test_denoise_rejects_images_too_small_after_rescaling(dense_model):
    # spacing 24 px on 96 px: at the model's ~6.4 px sampling it is ~25 px wide
    image = lattice_image((96, 96), 24.0, 0.0, "square", np.random.default_rng(0))
    with pytest.raises(ValueError, match="smaller than the 28 px window"):
        denoise(image, model=dense_model)


def test_denoise_stack_equals_frame_by_frame(dense_model):
    rng = np.random.default_rng(5)
    frames = np.stack([lattice_image((64, 72), 7.0, 5.0, "square", rng) for _ in range(3)])
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


def test_report_says_what_the_correction_did_and_changes_no_pixel(dense_model):
    import json

    rng = np.random.default_rng(5)
    image = lattice_image((96, 96), 8.0, 10.0, "square", rng)
    plain = denoise(image, model=dense_model, residual="none")
    out, report = denoise(image, model=dense_model, residual="none", return_report=True)
    assert np.array_equal(out, plain)
    assert report["rule"] == "the network's output alone" and report["data_weight"] == 0
    assert report["noise"] is None and report["step"] == 3
    out, mask, report = denoise(
        image, model=dense_model, residual=1.5, return_mask=True, return_report=True
    )
    assert mask.shape == image.shape
    assert report["bandwidth_px"] == 1.5 and report["data_weight"] == 1
    report = denoise(image, model=dense_model, return_report=True)[-1]
    assert report["residual"] == "auto" and report["noise"] in ("white", "correlated")
    assert json.loads(json.dumps(report)) == report  # JSON-ready, for the record


@pytest.mark.parametrize("residual", ["bogus", -1.0, float("nan"), True])
def test_bad_residual_option_raises(residual):
    with pytest.raises(ValueError, match="residual"):
        denoise(np.zeros((64, 64)), residual=residual)


# ---------------------------------------------------------------------------------------------
# residual="auto", contrast, the crystal map (shipped "general" model)


@pytest.mark.slow
def test_auto_keeps_correlated_noise_out_and_beats_the_network_alone():
    from stem_ae.analysis import psnr
    from stem_ae.simulate import NoiseModel, simulate_scene

    noise = NoiseModel(dose=4.0, afterglow=1.5, row_offset_rel=0.03)
    scene = simulate_scene((192, 192), pixel_size=0.2, dose=4.0, noise=noise, rng=11)
    auto, report = denoise(scene.noisy, pixel_size=0.2, return_report=True)
    alone = denoise(scene.noisy, pixel_size=0.2, residual="none")
    white = denoise(scene.noisy, pixel_size=0.2, residual="sure")
    assert psnr(scene.clean, auto) >= psnr(scene.clean, alone) - 0.1
    assert report["noise"] == "correlated" and report["whiteness"] > 1.8
    assert report["reason"] == "correlated noise" and report["data_weight"] < 1

    def row_noise(image):  # scan-row power: the spread of the row means about their trend
        rows = image.mean(axis=1)
        return np.std(rows - np.convolve(rows, np.ones(9) / 9, mode="same")[None][0])

    assert row_noise(auto) < row_noise(white)


def _quality_scene(dose):
    """A white-Poisson scene of ``benchmarks/quality.py`` (0.2 Å/px, seed 9001)."""
    from stem_ae.simulate import simulate_scene

    return simulate_scene(
        (192, 192),
        defect=["rp", "strain", "vacancies"],
        strain=0.02,
        vacancy_fraction=0.05,
        pixel_size=0.2,
        dose=dose,
        rng=9001,
    )


@pytest.mark.slow
def test_at_high_dose_the_data_come_back_as_finely_as_white_sure_puts_them():
    from stem_ae.analysis import psnr

    # 64 counts/px: the gate is wide open; the noise spectrum, measured on the residual, holds
    # the network's error too (3× the noise here) and would over-smooth the data put back
    scene = _quality_scene(64.0)
    auto = psnr(scene.clean, denoise(scene.noisy, pixel_size=0.2))
    white = psnr(scene.clean, denoise(scene.noisy, pixel_size=0.2, residual="sure"))
    assert auto >= white - 0.1  # 36.2 against 38.4 dB with the spectrum's bandwidth


@pytest.mark.slow
def test_under_white_noise_sure_decides_alone_and_beats_the_best_gaussian():
    from scipy import ndimage

    from stem_ae.analysis import psnr

    # white Poisson noise at 4 counts/px: SURE's risk is unbiased, so the gate that keeps the
    # network under correlated noise is off and the data come back: 30.5 dB, the network alone
    # 24.1, the best Gaussian 27.9 (the gate alone: 25.2)
    scene = _quality_scene(4.0)
    out, report = denoise(scene.noisy, pixel_size=0.2, return_report=True)
    assert report["noise"] == "white" and report["whiteness"] <= 1.8
    assert report["reason"] == "white noise" and report["data_weight"] == 1
    auto = psnr(scene.clean, out)
    alone = psnr(scene.clean, denoise(scene.noisy, pixel_size=0.2, residual="none"))
    gaussian = max(
        psnr(scene.clean, ndimage.gaussian_filter(scene.noisy, s)) for s in (0.5, 1, 1.5, 2, 3)
    )
    assert auto > gaussian and auto > alone + 2


@pytest.mark.slow
def test_under_white_noise_a_scene_that_is_not_one_crystal_gets_sures_correction_everywhere():
    from stem_ae.analysis import psnr
    from stem_ae.simulate import simulate_mixed_scene

    # a crystal, a second grain, amorphous blobs and vacuum under white Poisson noise: the
    # bandwidth SURE picks over the whole image holds outside the crystal too, and the dense
    # network's error would inflate the noise spectrum (41.1 against 41.2 dB for "sure"; the
    # data smoothed by SURE under that spectrum outside the crystal, and its bandwidth inside:
    # 39.2 dB)
    scene = simulate_mixed_scene((192, 192), pixel_size=0.2, dose=16.0, rng=9001)
    out, mask, report = denoise(
        scene.noisy, pixel_size=0.2, lattice_constant=None, return_mask=True, return_report=True
    )
    assert report["noise"] == "white" and report["outside_crystal_sigma_px"] == 0
    truth = scene.metadata["regions"]["crystal_mask"]
    assert mask[truth].mean() > 0.8 > 0.2 > mask[~truth].mean()  # still the crystal map
    sure = denoise(scene.noisy, pixel_size=0.2, lattice_constant=None, residual="sure")
    assert psnr(scene.clean, out) >= psnr(scene.clean, sure) - 0.3


def test_the_data_come_back_earlier_for_a_network_without_an_error_floor():
    from stem_ae.denoising import _excess_weight

    # dense (an error floor): nothing below an excess of 1, all from 2
    assert [_excess_weight(e, "dense") for e in (0.5, 1.0, 1.5, 2.0, 3.0)] == [0, 0, 0.5, 1, 1]
    # convolutional: noisy real images (excess <= 0.2) keep the network; 0.5 takes all the data
    assert [_excess_weight(e, "conv") for e in (0.17, 0.25, 0.375, 0.5, 0.8)] == [0, 0, 0.5, 1, 1]


@pytest.mark.slow
def test_default_model_denoises_dark_columns_with_the_convolutional_one():
    from stem_ae.simulate import simulate_scene

    dark = simulate_scene((128, 128), pixel_size=0.15, dose=64.0, contrast="dark", rng=4).noisy
    auto = denoise(dark)
    assert auto.tobytes() == denoise(dark, model="general_conv").tobytes()
    assert auto.tobytes() != denoise(dark, model="general").tobytes()
    bright = simulate_scene((128, 128), pixel_size=0.15, dose=64.0, rng=4).noisy
    assert denoise(bright).tobytes() == denoise(bright, model="general").tobytes()
    # told it is bright, a dark image keeps the dense default
    forced = denoise(dark, contrast="bright")
    assert forced.tobytes() == denoise(dark, model="general", contrast="bright").tobytes()


def test_step_none_is_the_models_default_step(dense_model):
    from stem_ae.denoising import default_step

    keras.utils.set_random_seed(3)
    conv = build_autoencoder(AEConfig(window=16, encoder=(4, 8), code=8, architecture="conv"))
    assert (default_step(dense_model), default_step(conv)) == (3, 2)
    rng = np.random.default_rng(8)
    image = lattice_image((96, 90), 8.0, 10.0, "square", rng)
    default = denoise(image, model=dense_model)
    assert default.tobytes() == denoise(image, model=dense_model, step=3).tobytes()
    assert default.tobytes() != denoise(image, model=dense_model, step=2).tobytes()
    assert denoise(image, model=conv).tobytes() == denoise(image, model=conv, step=2).tobytes()


@pytest.mark.slow
def test_dark_default_model_takes_its_own_default_step_unless_one_is_given():
    from stem_ae.simulate import simulate_scene

    dark = simulate_scene((128, 128), pixel_size=0.15, dose=64.0, contrast="dark", rng=4).noisy
    conv_2 = denoise(dark, model="general_conv", step=2).tobytes()
    assert denoise(dark).tobytes() == conv_2  # general_conv at its step 2, not general's 3
    given = denoise(dark, step=3).tobytes()
    assert given == denoise(dark, model="general_conv", step=3).tobytes() and given != conv_2


@pytest.mark.slow
def test_conv_default_adds_the_data_back_at_high_dose():
    from stem_ae.analysis import psnr
    from stem_ae.simulate import simulate_scene

    scene = simulate_scene((192, 192), defect="vacancies", pixel_size=0.2, dose=64.0, rng=5)
    auto = denoise(scene.noisy, pixel_size=0.2, model="general_conv")
    alone = denoise(scene.noisy, pixel_size=0.2, model="general_conv", residual="none")
    assert psnr(scene.clean, auto) > psnr(scene.clean, alone) + 2


@pytest.mark.slow
# the default for dark columns is general_conv (DARK_MODEL), at the sampling of the columns'
# own spacing (LatticeEstimate.sampling_spacings: the rims make the second order the strongest
# reflection); at the rims' a/2 it found 0.90 of the columns at 4 counts/px here and invented
# 11 % (raw 6 %), at the columns' spacing 0.99 and none
@pytest.mark.parametrize(
    ("dose", "least_found", "invented_over_raw"),
    [(4.0, 0.95, 0.0), (16.0, 0.99, 0.0), (64.0, 0.99, 0.0)],
)
def test_contrast_auto_denoises_dark_columns_as_dark_and_never_flips_haadf(
    dose, least_found, invented_over_raw
):
    from stem_ae.analysis import find_columns, match_columns
    from stem_ae.denoising import detect_contrast
    from stem_ae.simulate import simulate_scene

    dark = simulate_scene((192, 192), pixel_size=0.15, dose=dose, contrast="dark", rng=12)
    bright = simulate_scene((192, 192), pixel_size=0.15, dose=dose, rng=12)
    assert detect_contrast(dark.noisy) == "dark" and detect_contrast(bright.noisy) == "bright"
    out = denoise(dark.noisy)
    nn = dark.lattice.nearest_neighbour()

    def match(image):
        columns = find_columns(-image, min_distance=0.5 * nn)
        return match_columns(columns, dark.columns, 0.3 * nn, shape=image.shape, border=nn)

    found, raw = match(out), match(dark.noisy)
    assert found.found >= least_found and found.found >= raw.found
    if invented_over_raw is not None:
        assert found.invented <= raw.invented + invented_over_raw
    # returned in its own contrast, and closer to the truth than the data
    correlation = np.corrcoef(out.ravel(), dark.clean.ravel())[0, 1]
    assert correlation > max(0.5, np.corrcoef(dark.noisy.ravel(), dark.clean.ravel())[0, 1])
    np.testing.assert_array_equal(denoise(bright.noisy), denoise(bright.noisy, contrast="bright"))


def test_bad_contrast_is_refused():
    with pytest.raises(ValueError, match="contrast"):
        denoise(np.zeros((64, 64)), contrast="abf")


@pytest.mark.slow
def test_amorphous_half_gets_the_data_not_the_network():
    from scipy import ndimage

    from stem_ae.simulate import simulate_mixed_scene

    scene = simulate_mixed_scene(
        (256, 384), parts=("crystal", "amorphous"), pixel_size=0.2, dose=4.0, rng=3
    )
    truth = scene.metadata["regions"]["crystal_mask"]
    out, mask = denoise(scene.noisy, pixel_size=0.2, return_mask=True)
    alone = denoise(scene.noisy, pixel_size=0.2, residual="none")
    assert mask.shape == scene.noisy.shape and mask.dtype == np.float32
    assert mask[truth].mean() > 0.8 and mask[~truth].mean() < 0.2
    amorphous = ~truth
    amorphous[:, :240] = False  # away from the boundary

    def error(image):
        return float(np.mean((image[amorphous] - scene.clean[amorphous]) ** 2))

    best_gaussian = min(
        error(ndimage.gaussian_filter(scene.noisy.astype(float), s)) for s in (0.75, 1, 1.5, 2, 3)
    )
    assert error(out) <= 1.1 * best_gaussian < error(alone)


@pytest.mark.slow
def test_coarse_sampling_invents_no_column():
    from stem_ae.analysis import find_columns, match_columns
    from stem_ae.simulate import simulate_scene

    scene = simulate_scene((192, 192), pixel_size=0.6, dose=1.0, rng=102)  # spacing ≈ 4.6 px
    nn = scene.lattice.nearest_neighbour()
    out = denoise(scene.noisy, pixel_size=0.6)
    match = match_columns(
        find_columns(out, min_distance=0.5 * nn),
        scene.columns,
        0.3 * nn,
        shape=out.shape,
        border=0.5 * nn,
    )
    # found: 98.2 % without the lattice-translate test of remove_unsupported, 98.0 % with it
    assert match.invented <= 0.01 and match.found >= 0.975


def _vacancy_scene(pixel_size, dose):
    """A scene with 10 % vacancies and its scorer: ``image -> (vacancies filled, found)``."""
    from scipy.spatial import cKDTree

    from stem_ae.analysis import find_columns, match_columns
    from stem_ae.simulate import simulate_scene

    scene = simulate_scene(
        (192, 192),
        defect=["vacancies"],
        vacancy_fraction=0.1,
        pixel_size=pixel_size,
        dose=dose,
        rng=21,
    )
    vacancies = np.asarray(scene.metadata["vacancies"]["positions"], float).reshape(-1, 2)
    nn = scene.lattice.nearest_neighbour()

    def scores(image):
        columns = find_columns(image, min_distance=0.5 * nn)
        match = match_columns(columns, scene.columns, 0.3 * nn, shape=image.shape, border=0.5 * nn)
        invented = np.setdiff1d(np.arange(len(columns)), match.pairs[:, 0])
        if not len(invented):
            return 0.0, match.found
        distance, _ = cKDTree(columns[invented]).query(vacancies)
        return float(np.mean(distance < 0.3 * nn)), match.found

    return scene, scores


@pytest.mark.slow
def test_coarse_sampling_takes_out_columns_painted_into_vacancies_at_one_count(monkeypatch):
    # 0.5 Å/px (spacing ≈ 5.5 px), 1 count/px: a painted column stands ~3σ above the data, under
    # the image's 4σ bar; PEAK_THRESHOLD tests the network's own columns at 2.5σ (41 % of the
    # vacancies filled without it, 14 % at 3σ, 65 % by the network alone on this scene)
    import stem_ae.denoising as denoising

    scene, scores = _vacancy_scene(0.5, 1.0)
    filled, found = scores(denoise(scene.noisy, pixel_size=0.5))
    assert filled <= 0.2 and found >= 0.99
    monkeypatch.setattr(denoising, "PEAK_THRESHOLD", None)
    assert scores(denoise(scene.noisy, pixel_size=0.5))[0] >= 0.3


@pytest.mark.slow
def test_default_takes_out_columns_painted_into_vacancies():
    scene, scores = _vacancy_scene(0.3, 4.0)
    assert scores(denoise(scene.noisy, pixel_size=0.3, residual="none"))[0] > 0.5
    assert scores(denoise(scene.noisy, pixel_size=0.3))[0] <= 0.05


@pytest.mark.slow
def test_periodic_adds_the_networks_repeated_error_at_low_dose_and_fills_no_vacancy():
    from scipy.spatial import cKDTree

    from stem_ae.analysis import find_columns, match_columns, psnr
    from stem_ae.simulate import NoiseModel, simulate_scene

    # detector afterglow (correlated noise): the gate keeps the network's output, and the fold
    # adds its error that repeats in every cell
    glow = NoiseModel(afterglow=1.5)
    scene = simulate_scene((192, 192), pixel_size=0.3, dose=1.0, noise=glow, rng=31)
    auto = denoise(scene.noisy, pixel_size=0.3)
    periodic = denoise(scene.noisy, pixel_size=0.3, residual="periodic")
    assert psnr(scene.clean, periodic) > psnr(scene.clean, auto) + 1.5  # 2.6 dB here
    # white noise (the gate is off) or a high dose (weight 1): nothing is folded, the same
    # bytes as "auto"
    white = simulate_scene((192, 192), pixel_size=0.3, dose=1.0, rng=31).noisy
    assert np.array_equal(
        denoise(white, pixel_size=0.3, residual="periodic"), denoise(white, pixel_size=0.3)
    )
    bright = simulate_scene((192, 192), pixel_size=0.2, dose=64.0, rng=31).noisy
    assert np.array_equal(denoise(bright, residual="periodic"), denoise(bright))
    # a column the fold would paint into a vacancy goes with the network's own (network alone:
    # 75 % filled)
    scene = simulate_scene(
        (192, 192),
        defect=["vacancies"],
        vacancy_fraction=0.1,
        pixel_size=0.3,
        dose=4.0,
        noise=glow,
        rng=21,
    )
    vacancies = np.asarray(scene.metadata["vacancies"]["positions"], float).reshape(-1, 2)
    nn = scene.lattice.nearest_neighbour()
    out = denoise(scene.noisy, pixel_size=0.3, residual="periodic")
    columns = find_columns(out, min_distance=0.5 * nn)
    match = match_columns(columns, scene.columns, 0.3 * nn)
    invented = np.setdiff1d(np.arange(len(columns)), match.pairs[:, 0])
    filled = cKDTree(columns[invented]).query(vacancies)[0] < 0.3 * nn if len(invented) else [0]
    assert np.mean(filled) <= 0.05
    assert match.found >= 0.95


def test_denoise_without_a_2d_lattice_uses_the_radial_spacing_with_a_calibration(dense_model):
    y, x = np.indices((160, 160), dtype=float)
    direction = np.radians(35.0)
    fringes = np.cos(2 * np.pi * (x * np.cos(direction) - y * np.sin(direction)) / 9.0)
    image = fringes + np.random.default_rng(4).standard_normal(x.shape)
    with pytest.raises(ValueError, match="one family"):
        denoise(image, model=dense_model)
    out, mask = denoise(image, model=dense_model, pixel_size=0.2, return_mask=True)
    assert out.shape == image.shape and np.isfinite(out).all()
    np.testing.assert_array_equal(mask, np.ones(image.shape, np.float32))  # no map: no lattice


def test_convolutional_models_see_bright_lattices_at_the_top_of_their_range():
    # SAMPLING_POSITION: dense models and dark columns at the geometric centre of the training
    # spacings (6-10 px), a convolutional model's bright columns at the top (more pixels each)
    from stem_ae.denoising import SAMPLING_POSITION, _scale_factor
    from stem_ae.simulate import simulate_scene

    assert SAMPLING_POSITION == {"dense": 0.5, "conv": 1.0}
    assert _scale_factor(8.0, 8.0, 6.0, 10.0) == pytest.approx(math.sqrt(60.0) / 8.0)
    assert _scale_factor(8.0, 8.0, 6.0, 10.0, position=1.0) == pytest.approx(10.0 / 8.0)
    assert _scale_factor(8.0, 8.0, 6.0, 10.0, position=0.0) == pytest.approx(6.0 / 8.0)
    bright = simulate_scene((160, 160), pixel_size=0.2, dose=16.0, rng=3).noisy
    dark = simulate_scene((160, 160), pixel_size=0.2, dose=64.0, contrast="dark", rng=3).noisy
    factors = {
        (name, model): denoise(image, model=model, return_report=True)[-1]["resampling_factor"]
        for name, image in (("bright", bright), ("dark", dark))
        for model in ("general", "general_conv")
    }
    # 10 / sqrt(60) times the dense model's magnification, up to the rounding of the shape
    ratio = factors["bright", "general_conv"] / factors["bright", "general"]
    assert ratio == pytest.approx(10.0 / math.sqrt(60.0), rel=0.02)
    assert factors["dark", "general_conv"] == factors["dark", "general"]
