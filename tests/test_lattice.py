"""Tests of stem_ae.lattice: the lattice measured from the Fourier transform."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import lattice_image

from stem_ae.lattice import estimate_lattice, estimate_period, estimate_spacing, measure_lattice

# ---------------------------------------------------------------------------------------------
# lattice


def test_estimate_period_within_two_percent_on_random_lattices():
    rng = np.random.default_rng(4)
    errors = []
    for kind in ("square", "rectangular", "hexagonal"):
        for _ in range(4):
            spacing = float(np.exp(rng.uniform(np.log(6), np.log(60))))
            angle = float(rng.uniform(0, 180))
            image = lattice_image((256, 256), spacing, angle, kind, rng)
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


def test_noise_free_periodic_images_are_measured_and_denoised():
    # no noise floor: the peaks' leakage stands out of the background everywhere, which left
    # the background fit without a single bin (an obscure ValueError from np.interp)
    from stem_ae import denoise
    from stem_ae.analysis import psnr
    from stem_ae.simulate import simulate_scene

    for kind in ("srtio3", "hexagonal"):
        scene = simulate_scene((192, 192), lattice=kind, pixel_size=0.2, dose=None, rng=3)
        estimate = estimate_lattice(scene.clean)
        # the strongest true reflections lie on the measured reciprocal lattice
        g, amplitude = scene.lattice.reflections()
        strongest = g[amplitude >= 0.85 * amplitude.max()]
        indices = strongest @ np.linalg.inv(estimate.reciprocal)
        assert np.abs(indices - np.rint(indices)).max() < 0.02, kind
    assert psnr(scene.clean, denoise(scene.clean)) > 40  # passed through, not refused


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


def test_measure_lattice_of_a_series_agrees_with_estimate_lattice():
    rng = np.random.default_rng(7)
    clean = lattice_image((128, 128), 9.0, 17.0, "square", rng)
    frames = np.stack([clean + rng.normal(0.0, 1.0, clean.shape) for _ in range(4)])
    series = measure_lattice(frames)
    assert abs(series.dominant_spacing - 9.0) < 0.05
    single = measure_lattice(frames[0])
    np.testing.assert_allclose(single.reciprocal, estimate_lattice(frames[0]).reciprocal)


def test_measure_lattice_rejects_empty_and_constant_series():
    with pytest.raises(ValueError, match="no frames"):
        measure_lattice([])
    with pytest.raises(ValueError, match="constant"):
        measure_lattice(np.zeros((2, 64, 64)))


# ---------------------------------------------------------------------------------------------
# low dose, false alarms, calibration, scan axes, several grains


def _dominant_error(scene, spacing):
    """Relative error against the reflections within 15 % of the strongest's amplitude."""
    g, amplitude = scene.lattice.reflections()
    candidates = 1 / np.linalg.norm(g[amplitude >= 0.85 * amplitude.max()], axis=1)
    return float(np.min(np.abs(spacing / candidates - 1)))


@pytest.mark.parametrize(
    ("kind", "shape", "pixel_size", "dose", "seed"),
    [
        ("srtio3", (128, 128), 0.12, 0.5, 1),
        ("srtio3", (133, 126), 0.3, 1.0, 2),  # the 133×126 perovskite refused before
        ("rectangular", (160, 160), 0.2, 0.5, 3),
        ("hexagonal", (128, 128), 0.25, 0.7, 4),
    ],
)
def test_estimate_lattice_accepts_low_dose_scenes(kind, shape, pixel_size, dose, seed):
    from stem_ae.simulate import simulate_scene

    scene = simulate_scene(
        shape, lattice=kind, pixel_size=pixel_size, dose=dose, angle=17.0 * seed, rng=seed
    )
    assert scene.noisy.mean() < 1.5  # counts per pixel: a very noisy image
    for options in ({}, {"pixel_size": pixel_size, "lattice_constant": 3.905}):
        lattice = estimate_lattice(scene.noisy, **options)
        assert _dominant_error(scene, lattice.dominant_spacing) < 0.02


@pytest.mark.parametrize("kind", ["poisson", "amorphous", "vacuum", "streaks", "periodic streaks"])
def test_estimate_lattice_refuses_images_without_a_lattice(kind):
    from stem_ae.simulate import simulate_mixed_scene

    rng = np.random.default_rng(5)
    shape = (160, 160)
    if kind in ("amorphous", "vacuum"):
        image = simulate_mixed_scene(shape, parts=(kind,), pixel_size=0.2, dose=2.0, rng=5).noisy
    else:
        image = rng.poisson(2.0, shape).astype(float)
        rows = np.arange(shape[0])[:, None]
        if kind == "streaks":
            image += rng.normal(0.0, 1.0, (shape[0], 1))
        elif kind == "periodic streaks":
            image += np.sin(2 * np.pi * rows / 7.0)  # mains hum: one family along the scan axis
    for options in ({}, {"pixel_size": 0.2}):
        with pytest.raises(ValueError, match=r"stands out|scan axes"):
            estimate_lattice(image, **options)


def test_false_alarm_rate_on_white_noise_is_calibrated():
    rng = np.random.default_rng(8)
    accepted = 0
    for _ in range(40):
        try:
            estimate_lattice(rng.normal(size=(96, 96)))
            accepted += 1
        except ValueError:
            pass
    assert accepted <= 2  # FALSE_ALARM = 1 %: 0.4 expected, P(> 2) < 1 %


def test_calibration_bounds_the_searched_spacings():
    from stem_ae.lattice import PLANE_SPACING_RANGE

    rng = np.random.default_rng(2)
    image = lattice_image((256, 256), 3.3, 25.0, "square", rng)
    assert abs(estimate_lattice(image).dominant_spacing - 3.3) < 0.05
    # at 0.075 Å/px (the Au image) 3.3 px is 0.25 Å: no lattice of atom columns is that fine
    assert 3.3 * 0.075 < PLANE_SPACING_RANGE[0]
    with pytest.raises(ValueError, match="stands out"):
        estimate_lattice(image, pixel_size=0.075)
    lattice = estimate_lattice(image, pixel_size=0.75, lattice_constant=3.3 * 0.75)
    assert abs(lattice.dominant_spacing - 3.3) < 0.05
    with pytest.raises(ValueError, match="needs pixel_size"):
        estimate_lattice(image, lattice_constant=3.905)
    with pytest.raises(ValueError, match="pixel_size"):
        measure_lattice(image, pixel_size=-1.0)


def test_periods_under_min_spacing_px_are_not_searched():
    y, x = np.indices((128, 128), dtype=float)
    rng = np.random.default_rng(3)
    image = np.cos(2 * np.pi * (x + 0.3 * y) / 2.2) + np.cos(2 * np.pi * (y - 0.3 * x) / 2.2)
    with pytest.raises(ValueError, match="stands out"):
        estimate_lattice(image + 0.3 * rng.standard_normal(image.shape))


def test_scan_axis_reflections_need_a_lattice_to_count():
    y, x = np.indices((192, 192), dtype=float)
    rng = np.random.default_rng(6)
    noise = 0.7 * rng.standard_normal(x.shape)
    # two periods along the scan axes with no combination reflection: scan artefacts
    artefacts = np.cos(2 * np.pi * y / 7.0) + np.cos(2 * np.pi * x / 11.0) + noise
    with pytest.raises(ValueError, match="scan axes"):
        estimate_lattice(artefacts)
    # a lattice of compact columns at 0° has its g1 + g2 reflections off the axes
    columns = (np.cos(np.pi * y / 7.0) ** 2 * np.cos(np.pi * x / 11.0) ** 2) ** 4
    lattice = estimate_lattice(columns / columns.std() + noise)
    np.testing.assert_allclose(sorted(lattice.spacings), [7.0, 11.0], rtol=0.01)


def test_radial_spacing_of_two_grains():
    from stem_ae.simulate import simulate_mixed_scene

    scene = simulate_mixed_scene(
        (256, 256), parts=("crystal", "grain"), pixel_size=0.15, dose=1.0, angle=10.0, rng=1
    )
    expected = scene.lattice.dominant_spacing()
    lattice = estimate_lattice(scene.noisy)
    assert abs(lattice.radial_spacing / expected - 1) < 0.03
    assert abs(estimate_spacing(scene.noisy) / expected - 1) < 0.03


def test_estimate_spacing_falls_back_on_the_radial_profile():
    y, x = np.indices((192, 192), dtype=float)
    rng = np.random.default_rng(4)
    direction = np.radians(35.0)
    fringes = np.cos(2 * np.pi * (x * np.cos(direction) - y * np.sin(direction)) / 9.0)
    image = fringes + rng.standard_normal(x.shape)
    with pytest.raises(ValueError, match="one family"):
        estimate_lattice(image)
    assert abs(estimate_spacing(image) - 9.0) < 0.2
    with pytest.raises(ValueError, match="Nor does a ring"):
        estimate_spacing(rng.standard_normal(x.shape))


def test_lattice_estimate_is_frozen_and_picklable():
    import dataclasses
    import pickle

    rng = np.random.default_rng(9)
    lattice = estimate_lattice(lattice_image((128, 128), 9.0, 10.0, "square", rng))
    copy = pickle.loads(pickle.dumps(lattice))
    np.testing.assert_array_equal(copy.reciprocal, lattice.reciprocal)
    assert copy.radial_spacing == pytest.approx(lattice.radial_spacing, nan_ok=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        lattice.quality = 0.0


def test_measure_lattice_or_spacing_falls_back_only_with_a_calibration():
    from stem_ae.lattice import measure_lattice_or_spacing

    y, x = np.indices((192, 192), dtype=float)
    rng = np.random.default_rng(4)
    direction = np.radians(35.0)
    fringes = np.cos(2 * np.pi * (x * np.cos(direction) - y * np.sin(direction)) / 9.0)
    image = fringes + rng.standard_normal(x.shape)  # one family of planes: no 2-D lattice
    with pytest.raises(ValueError, match="one family"):
        measure_lattice_or_spacing(image)
    radial = measure_lattice_or_spacing(image, pixel_size=0.2)  # 9 px = 1.8 Å
    assert radial.radial_only and abs(radial.dominant_spacing - 9.0) < 0.2
    lattice = measure_lattice_or_spacing(lattice_image((128, 128), 9.0, 10.0, "square", rng))
    assert not lattice.radial_only
    with pytest.raises(ValueError, match="pixel_size"):
        measure_lattice_or_spacing(image, pixel_size=-1.0)


@pytest.mark.parametrize("n", [1, 2, 5, 4000])
def test_ring_median_equals_numpy_median_per_ring(n):
    # the background's ring medians are read off one sort; they must be np.median's exactly
    # (odd and even counts, ties, empty rings), or the calibrated false-alarm rate would drift
    from stem_ae.lattice import _ring_median

    rng = np.random.default_rng(n)
    values = np.round(rng.gamma(1.5, size=n), 1)  # rounding makes ties
    ring = rng.integers(0, 30, n)
    expected = [np.median(values[ring == k]) if np.any(ring == k) else np.nan for k in range(34)]
    np.testing.assert_array_equal(_ring_median(values, ring, 34), expected)


def test_refine_peak_finds_the_dft_maximum_between_the_bins():
    from stem_ae.lattice import _refine_peak

    rng = np.random.default_rng(8)
    side = 128
    y, x = np.mgrid[:side, :side]
    true = np.array([0.1237, -0.0412])  # between the bins of the 128-point DFT
    crops = [np.cos(2 * np.pi * (true[0] * y + true[1] * x)) + rng.normal(0, 0.5, (side, side))]
    crops.append(crops[0][::-1].copy())  # a second crop: its power adds
    start = np.round(true * side) / side
    refined, power = _refine_peak(crops, start, 1.0 / side)
    assert np.abs(refined - true).max() < 0.02 / side
    # the power is that of the plain complex DFT at the chosen grid point
    offsets = np.linspace(-1.0 / side, 1.0 / side, 21)
    ey = np.exp(-2j * np.pi * np.outer(start[0] + offsets, np.arange(side)))
    ex = np.exp(-2j * np.pi * np.outer(start[1] + offsets, np.arange(side)))
    grid = sum(np.abs(ey @ crop.astype(complex) @ ex.T) ** 2 for crop in crops)
    assert power == pytest.approx(grid.max(), rel=1e-9)


@pytest.mark.parametrize("pixel_size", [0.1, 0.2, 0.3])
def test_low_order_spacings_fold_the_rims_second_order_onto_the_columns_spacing(pixel_size):
    # ABF-like scenes: the bright rims about the dark columns make the (2, 0) reflection at a/2
    # the strongest; the columns repeat at a/sqrt(2), which the bright scene's strongest
    # reflection gives, and which the fold recovers. A bright scene has nothing to fold.
    from stem_ae.simulate import simulate_scene

    dark = simulate_scene((192, 192), pixel_size=pixel_size, dose=16.0, contrast="dark", rng=3)
    bright = simulate_scene((192, 192), pixel_size=pixel_size, dose=16.0, rng=3)
    columns = bright.lattice.dominant_spacing()
    dark_lattice, bright_lattice = estimate_lattice(dark.noisy), estimate_lattice(bright.noisy)
    assert dark_lattice.dominant_spacing < 0.8 * columns
    for spacing in dark_lattice.low_order_spacings:
        assert abs(spacing / columns - 1) < 0.02
    assert dark_lattice.sampling_spacings(dark=True) == dark_lattice.low_order_spacings
    dominant = (dark_lattice.dominant_spacing, dark_lattice.second_spacing)
    assert dark_lattice.sampling_spacings() == dominant
    assert bright_lattice.low_order_spacings == (
        bright_lattice.dominant_spacing,
        bright_lattice.second_spacing,
    )


def test_fold_needs_both_shorter_reflections_strong():
    from stem_ae.lattice import FOLD_FRACTION, _fold

    g1, g2 = np.array([0.05, 0.05]), np.array([0.05, -0.05])
    predicted = [g1, g2, g1 + g2, g1 - g2]
    strong = [0.5, 0.4, 1.0, 1.0]
    np.testing.assert_array_equal(_fold(g1 + g2, predicted, strong), g1)  # the stronger one
    weak = [0.5, 0.9 * FOLD_FRACTION, 1.0, 1.0]
    np.testing.assert_array_equal(_fold(g1 + g2, predicted, weak), g1 + g2)
    np.testing.assert_array_equal(_fold(g1, predicted, strong), g1)  # nothing shorter
    outside = np.array([0.3, 0.0])  # not one of the predicted reflections: kept
    np.testing.assert_array_equal(_fold(outside, predicted, strong), outside)
