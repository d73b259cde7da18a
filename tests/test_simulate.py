"""Tests of stem_ae.simulate: training windows, noise models, lattices and ground-truth scenes."""

from __future__ import annotations

import dataclasses
import json
import math
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from stem_ae import simulate as sim
from stem_ae.simulate import (
    GENERAL,
    PAPER,
    Lattice,
    NoiseModel,
    TrainingDistribution,
    as_generator,
    random_lattice,
    simulate_scene,
    srtio3_lattice,
    training_batch,
)

FAST = settings(max_examples=15, deadline=None)


def realised_snr(noisy, clean):
    """Per-window SNR = std(clean) / std(noise)."""
    return clean.std(axis=(1, 2)) / (noisy - clean).std(axis=(1, 2))


# ------------------------------------------------------------------------------------------------
# training windows
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("distribution", [PAPER, GENERAL, "paper", "general"])
def test_training_batch_shapes_and_dtypes(distribution):
    noisy, clean = training_batch(37, rng=0, distribution=distribution)
    assert noisy.shape == clean.shape == (37, 28, 28)
    assert noisy.dtype == clean.dtype == np.float32
    assert np.isfinite(noisy).all() and np.isfinite(clean).all()
    assert (clean >= 0).all()


@FAST
@given(n=st.integers(0, 40), window=st.integers(8, 40), seed=st.integers(0, 2**32 - 1))
def test_training_batch_any_size(n, window, seed):
    for dist in (PAPER, GENERAL):
        noisy, clean = training_batch(n, rng=seed, window=window, distribution=dist)
        assert noisy.shape == clean.shape == (n, window, window)
        assert np.isfinite(noisy).all()


def test_paper_clean_normalised_to_max_one():
    _, clean = training_batch(2000, rng=1)
    np.testing.assert_allclose(clean.max(axis=(1, 2)), 1.0, rtol=1e-5)
    assert clean.min() >= 0.0


def test_paper_clean_matches_direct_rendering():
    """The tabulated fast path equals an exact sum of Gaussians rendered independently."""
    gen = np.random.default_rng(5)
    renderer = sim._fixed_renderer(srtio3_lattice(), 28, PAPER.angle_range)
    fast = np.empty((50, 28, 28), np.float32)
    renderer.render(np.random.default_rng(5), 50, fast)
    # redraw the same angles and translations
    angle = PAPER.angle_range[0] + (PAPER.angle_range[1] - PAPER.angle_range[0]) * gen.random(50)
    trans = gen.random((50, 2))
    lat = srtio3_lattice()
    for k in range(50):
        vec = lat.vectors(angle[k])
        centre = np.array([13.5, 13.5])
        cols, inten = [], []
        for i in range(-6, 7):
            for j in range(-6, 7):
                for u, v, amp in lat.basis:
                    cols.append(
                        centre + (i + u + trans[k, 0]) * vec[0] + (j + v + trans[k, 1]) * vec[1]
                    )
                    inten.append(amp)
        img = sim._render_image((28, 28), np.array(cols), np.array(inten), lat.sigma)
        np.testing.assert_allclose(fast[k], img / img.max(), atol=2e-3)


def test_general_clean_in_noisy_units():
    noisy, clean = training_batch(3000, rng=2, distribution=GENERAL)
    # Poisson windows: clean is expected counts, so per-window means agree
    np.testing.assert_allclose(noisy.mean(axis=(1, 2)), clean.mean(axis=(1, 2)), rtol=0.5, atol=1.0)
    ratio = noisy.mean() / clean.mean()
    assert 0.98 < ratio < 1.02


def test_determinism_by_seed():
    for dist in (PAPER, GENERAL):
        a = training_batch(700, rng=123, distribution=dist)
        b = training_batch(700, rng=123, distribution=dist)
        c = training_batch(700, rng=124, distribution=dist)
        assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
        assert a[0].tobytes() != c[0].tobytes() and a[1].tobytes() != c[1].tobytes()
    gen1, gen2 = np.random.default_rng(7), np.random.default_rng(7)
    assert training_batch(5, rng=gen1)[0].tobytes() == training_batch(5, rng=gen2)[0].tobytes()
    # a shared generator moves on
    assert training_batch(5, rng=gen1)[0].tobytes() != training_batch(5, rng=7)[0].tobytes()


def test_windows_differ_within_a_batch():
    _, clean = training_batch(64, rng=0)
    flat = clean.reshape(64, -1)
    assert len(np.unique(flat.round(4), axis=0)) == 64


@pytest.mark.parametrize("snr", [0.33, 1.0, 3.0])
def test_realised_snr_within_5_percent(snr):
    dist = TrainingDistribution.from_dict({**PAPER.to_dict(), "snr_range": [snr, snr]})
    noisy, clean = training_batch(2000, rng=3, distribution=dist)
    r = realised_snr(noisy, clean)
    assert abs(r.mean() / snr - 1) < 0.05
    assert np.all(np.abs(r / snr - 1) < 0.15)


def test_paper_snr_is_the_papers():
    noisy, clean = training_batch(1000, rng=4)
    assert abs(realised_snr(noisy, clean).mean() / 0.33 - 1) < 0.05
    noise = noisy - clean
    # uniform noise: flat histogram, kurtosis 1.8, zero mean
    z = noise / noise.std(axis=(1, 2), keepdims=True)
    assert abs(float(np.mean(z**4)) - 1.8) < 0.05
    assert abs(float(noise.mean())) < 0.01 * float(noise.std())


def test_paper_distribution_geometry():
    assert PAPER.period_px == sim.PAPER_PERIOD_PX == 9.0
    assert PAPER.sigma_px == sim.PAPER_SIGMA_PX == 1.0
    assert PAPER.spacing_range[0] == pytest.approx(9.0 / math.sqrt(2))
    assert PAPER.angle_range == (0.0, 45.0)
    assert PAPER.snr_range == (0.33, 0.33)


# ------------------------------------------------------------------------------------------------
# distributions and lattices
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dist", [PAPER, GENERAL])
def test_distribution_json_round_trip(dist):
    d = json.loads(json.dumps(dist.to_dict()))
    assert TrainingDistribution.from_dict(d) == dist
    # extra keys (e.g. from AEConfig.training) are ignored
    assert TrainingDistribution.from_dict({**d, "n_samples": 10, "epochs": 3}) == dist


def test_noise_model_round_trip():
    nm = NoiseModel(dose=12.0, read_noise=0.3, row_offset=0.2, row_jitter=0.1, drift=0.01, blur=0.5)
    assert NoiseModel.from_dict(json.loads(json.dumps(nm.to_dict()))) == nm


@pytest.mark.parametrize(
    ("lattice", "expected"),
    [
        (srtio3_lattice(9.0, 1.0), 9.0 / math.sqrt(2)),  # {110}: 1 + 0.7 beats {100}: 1 - 0.7
        (Lattice(8.0, 8.0, 90, ((0, 0, 1.0),), 1.0), 8.0),
        (Lattice(6.0, 12.0, 90, ((0, 0, 1.0),), 1.0), 12.0),
        (Lattice(7.0, 7.0, 120, ((0, 0, 1.0),), 1.0), 7.0 * math.sqrt(3) / 2),
        # three equal sub-lattices of a triangular lattice = a smaller triangular lattice
        (Lattice(9.0, 9.0, 120, ((0, 0, 1), (1 / 3, 2 / 3, 1), (2 / 3, 1 / 3, 1)), 0.8), 4.5),
    ],
)
def test_dominant_spacing_of_known_lattices(lattice, expected):
    assert lattice.dominant_spacing() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_dominant_spacing_is_what_an_fft_shows(seed):
    lat = random_lattice(seed, kinds=sim.KINDS)
    n = 256
    gen = np.random.default_rng(seed)
    angle = gen.uniform(0, 360)
    vec = lat.vectors(angle)
    m = 60
    ii, jj = np.meshgrid(np.arange(-m, m + 1), np.arange(-m, m + 1), indexing="ij")
    cols, inten = [], []
    for u, v, amp in lat.basis:
        p = (ii.ravel() + u)[:, None] * vec[0] + (jj.ravel() + v)[:, None] * vec[1] + n / 2
        cols.append(p)
        inten.append(np.full(len(p), amp))
    img = sim._render_image((n, n), np.concatenate(cols), np.concatenate(inten), lat.sigma)
    img = (img - img.mean()) * np.outer(np.hanning(n), np.hanning(n))
    power = np.abs(np.fft.fftshift(np.fft.fft2(img)))
    power[n // 2 - 2 : n // 2 + 3, n // 2 - 2 : n // 2 + 3] = 0
    ky, kx = np.unravel_index(np.argmax(power), power.shape)
    spacing = n / math.hypot(ky - n // 2, kx - n // 2)
    assert spacing == pytest.approx(lat.dominant_spacing(), rel=0.06)


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    lo=st.floats(3.0, 12.0),
    width=st.floats(0.0, 6.0),
    kind=st.sampled_from(sim.KINDS),
)
def test_random_lattice_spacing_in_range(seed, lo, width, kind):
    lat = random_lattice(seed, spacing_range=(lo, lo + width), kinds=[kind])
    assert lo * (1 - 1e-9) <= lat.dominant_spacing() <= (lo + width) * (1 + 1e-9)
    assert 1 <= len(set(site[2] for site in lat.basis)) <= 3
    assert max(site[2] for site in lat.basis) == 1.0


@FAST
@given(factor=st.floats(0.3, 5.0), seed=st.integers(0, 1000))
def test_scaling_scales_spacing_and_neighbours(factor, seed):
    lat = random_lattice(seed)
    big = lat.scaled(factor)
    assert big.dominant_spacing() == pytest.approx(factor * lat.dominant_spacing(), rel=1e-9)
    assert big.nearest_neighbour() == pytest.approx(factor * lat.nearest_neighbour(), rel=1e-9)


def test_general_spacings_follow_the_distribution():
    gen = np.random.default_rng(0)
    vec, uv, inten, sigma, nn = sim._draw_structures(
        4000, gen, kinds=GENERAL.kinds, spacing_range=GENERAL.spacing_range, log_uniform=True,
        min_sigma_px=GENERAL.min_sigma_px, min_nn_fraction=GENERAL.min_nn_fraction,
    )  # fmt: skip
    ds = sim._dominant_spacings(vec, uv, inten, sigma)
    assert ds.min() >= 6.0 - 1e-9 and ds.max() <= 10.0 + 1e-9
    assert np.median(ds) == pytest.approx(math.sqrt(60.0), rel=0.05)  # log-uniform median
    assert sigma.min() >= GENERAL.min_sigma_px
    ratio = sigma / nn
    assert ratio.min() >= 0.1 - 1e-9 and ratio.max() <= 0.22 + 1e-9


# ------------------------------------------------------------------------------------------------
# noise models
# ------------------------------------------------------------------------------------------------


def test_poisson_mean_equals_variance():
    clean = np.ones((200, 32, 32), np.float32)
    for dose in (2.0, 20.0):
        noisy, expected = NoiseModel(dose=dose).apply(clean, rng=0)
        np.testing.assert_allclose(expected, dose, rtol=1e-6)
        assert noisy.mean() == pytest.approx(dose, rel=0.01)
        assert noisy.var() == pytest.approx(dose, rel=0.03)
        assert np.all(noisy == np.round(noisy))


def test_poisson_variance_follows_the_local_mean():
    _, clean = training_batch(400, rng=0)
    noisy, expected = NoiseModel(dose=30.0).apply(clean, rng=1)
    bins = np.digitize(expected, [5, 20, 40, 80])
    for b in np.unique(bins):
        sel = bins == b
        if sel.sum() > 5000:
            resid = noisy[sel] - expected[sel]
            assert resid.var() == pytest.approx(expected[sel].mean(), rel=0.1)


def test_row_offsets_constant_along_a_row():
    _, clean = training_batch(20, rng=0)
    noisy, out = NoiseModel(row_offset=0.5).apply(clean, rng=1)
    np.testing.assert_array_equal(out, clean)
    diff = noisy - clean
    assert np.allclose(diff.std(axis=2), 0.0, atol=1e-6)  # constant along each row
    assert diff[:, :, 0].std() == pytest.approx(0.5, rel=0.1)  # varies between rows


def test_read_noise_gaussian_std():
    clean = np.zeros((50, 64, 64), np.float32)
    noisy, _ = NoiseModel(read_noise=2.0).apply(clean, rng=0)
    assert noisy.std() == pytest.approx(2.0, rel=0.02)
    assert abs(noisy.mean()) < 0.02


def test_row_jitter_shifts_rows_not_the_clean():
    x = np.arange(64, dtype=np.float32)
    clean = np.broadcast_to(x, (64, 64)).copy()  # a ramp along x: a shift s changes it by -s
    noisy, out = NoiseModel(row_jitter=0.3).apply(clean, rng=0)
    np.testing.assert_array_equal(out, clean)
    shift = (clean - noisy)[:, 5:-5].mean(axis=1)
    assert np.allclose((clean - noisy)[:, 5:-5], shift[:, None], atol=1e-4)
    assert shift.std() == pytest.approx(0.3, rel=0.3)


def test_drift_shears_the_clean_image():
    img = np.zeros((41, 41), np.float32)
    img[:, 20] = 1.0
    _, out = NoiseModel(drift=0.1).apply(img, rng=0)
    centroid = (out * np.arange(41)).sum(1) / out.sum(1)
    np.testing.assert_allclose(centroid, 20 + 0.1 * (np.arange(41) - 20), atol=1e-4)


def test_blur_smooths_the_clean_image():
    _, clean = training_batch(4, rng=0)
    _, blurred = NoiseModel(blur=1.0).apply(clean, rng=0)
    assert (blurred.std(axis=(1, 2)) < clean.std(axis=(1, 2))).all()
    np.testing.assert_allclose(blurred.mean(axis=(1, 2)), clean.mean(axis=(1, 2)), rtol=0.02)


@FAST
@given(snr=st.floats(0.1, 10.0), seed=st.integers(0, 2**32 - 1))
def test_noise_model_snr(snr, seed):
    _, clean = training_batch(300, rng=seed)
    noisy, out = NoiseModel(snr=snr).apply(clean, rng=seed)
    assert abs(realised_snr(noisy, out).mean() / snr - 1) < 0.05


def test_noise_model_2d_and_gaussian_kind():
    img = np.random.default_rng(0).random((64, 64))
    noisy, out = NoiseModel(snr=0.5, snr_noise="gaussian").apply(img, rng=0)
    assert noisy.shape == (64, 64) and noisy.dtype == np.float32
    assert (out.std() / (noisy - out).std()) == pytest.approx(0.5, rel=0.05)


# ------------------------------------------------------------------------------------------------
# scenes
# ------------------------------------------------------------------------------------------------


def peak_offsets(scene, margin=3):
    """Sub-pixel peak of ``clean`` at each interior column (parabola through log intensities)."""
    img = np.log(np.maximum(scene.clean.astype(float), 1e-30))
    h, w = img.shape
    out = []
    for y, x in scene.columns:
        iy, ix = (int(v) for v in np.rint((y, x)))
        if not (margin <= iy < h - margin and margin <= ix < w - margin):
            continue
        c = img[iy, ix]
        dy = 0.5 * (img[iy - 1, ix] - img[iy + 1, ix]) / (img[iy - 1, ix] - 2 * c + img[iy + 1, ix])
        dx = 0.5 * (img[iy, ix - 1] - img[iy, ix + 1]) / (img[iy, ix - 1] - 2 * c + img[iy, ix + 1])
        out.append((iy + dy - y, ix + dx - x))
    return np.array(out)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"defect": "rp"},
        {"defect": ["rp", "strain", "vacancies"], "angle": 17.0},
        {"lattice": "rectangular", "angle": -30.0},
        {"lattice": "hexagonal", "defect": "strain", "strain": 0.03},
        {"noise": NoiseModel(dose=10.0, drift=0.02, blur=0.3, row_jitter=0.2)},
    ],
)
def test_columns_sit_on_the_peaks_of_clean(kwargs):
    scene = simulate_scene((160, 192), background=0.0, rng=11, **kwargs)
    assert scene.clean.shape == scene.noisy.shape == (160, 192)
    assert scene.clean.dtype == scene.noisy.dtype == np.float32
    assert scene.columns.shape == (len(scene.column_types), 2)
    off = peak_offsets(scene)
    assert len(off) > 20
    assert np.abs(off).max() < 0.05


def test_scene_dose_and_determinism():
    a = simulate_scene((96, 96), dose=25.0, defect=["rp", "vacancies", "strain"], rng=5)
    b = simulate_scene((96, 96), dose=25.0, defect=["rp", "vacancies", "strain"], rng=5)
    c = simulate_scene((96, 96), dose=25.0, defect=["rp", "vacancies", "strain"], rng=6)
    assert a.clean.mean() == pytest.approx(25.0, rel=1e-5)
    assert np.all(a.noisy == np.round(a.noisy))
    assert a.noisy.tobytes() == b.noisy.tobytes() and a.columns.tobytes() == b.columns.tobytes()
    assert a.noisy.tobytes() != c.noisy.tobytes()
    assert a.pixel_size == 0.2 and a.lattice.a == pytest.approx(3.905 / 0.2)


def test_scene_types():
    scene = simulate_scene((128, 128), rng=0)
    levels = sorted(set(scene.column_types.tolist()))
    assert levels == [0, 1]
    # Sr (type 0) columns are brighter than Ti–O (type 1) in the clean image
    idx = np.round(scene.columns).astype(int)
    ok = (idx >= 0).all(1) & (idx[:, 0] < 128) & (idx[:, 1] < 128)
    vals = scene.clean[idx[ok, 0], idx[ok, 1]]
    t = scene.column_types[ok]
    assert vals[t == 0].mean() > vals[t == 1].mean() * 1.2


def test_rp_fault_half_cell_shift_and_elongation():
    a = 3.905 / 0.2
    scene = simulate_scene((200, 260), defect="rp", dose=None, rng=3)
    meta = scene.metadata["rp"]
    fx = meta["fault_x"]
    assert meta["fault_normal"] == pytest.approx([0.0, 1.0])
    sr = scene.columns[scene.column_types == 0]
    left, right = sr[sr[:, 1] < fx], sr[sr[:, 1] > fx]
    # along the plane (y): right block shifted by half a cell relative to the left block
    phase_left = np.angle(np.exp(2j * np.pi * left[:, 0] / a).mean()) * a / (2 * np.pi)
    phase_right = np.angle(np.exp(2j * np.pi * right[:, 0] / a).mean()) * a / (2 * np.pi)
    shift = (phase_right - phase_left) % a
    assert shift == pytest.approx(a / 2, abs=0.05)
    # Sr planes (x positions): the two next to the fault are a rock-salt gap (~a/2) apart
    planes = np.unique(np.round(sr[:, 1], 6))
    gaps = np.diff(planes)
    k = np.searchsorted(planes, fx)
    across = planes[k] - planes[k - 1]
    amp, decay = meta["elongation"]["amplitude"], meta["elongation"]["decay_length_px"]
    assert across == pytest.approx(a / 2 + 2 * sim.rp_displacement(a / 4, amp, decay), rel=1e-6)
    # cells next to the plane are elongated (the imposed sign), decaying away from it
    right_gaps = gaps[k:]
    left_gaps = gaps[: k - 1][::-1]
    for side in (right_gaps, left_gaps):
        strain = side / a - 1
        assert strain[0] > 0.03
        assert np.all(np.diff(strain[:4]) < 0)
        assert strain[0] == pytest.approx(
            (sim.rp_displacement(a / 4 + a, amp, decay) - sim.rp_displacement(a / 4, amp, decay))
            / a,
            rel=1e-6,
        )


def test_rp_negative_elongation_has_that_sign():
    a = 3.905 / 0.2
    scene = simulate_scene((120, 200), defect="rp", rp_elongation=-0.05, dose=None, rng=0)
    fx = scene.metadata["rp"]["fault_x"]
    sr = scene.columns[scene.column_types == 0]
    planes = np.unique(np.round(sr[:, 1], 6))
    k = np.searchsorted(planes, fx)
    assert planes[k + 1] - planes[k] < a


def test_vacancies_recorded():
    full = simulate_scene((128, 128), rng=2)
    vac = simulate_scene((128, 128), defect="vacancies", vacancy_fraction=0.1, rng=2)
    meta = vac.metadata["vacancies"]
    n_gone = len(meta["positions"])
    assert n_gone == round(0.1 * len(full.columns))
    assert len(vac.columns) + n_gone == len(full.columns)
    # the clean image is dark where a column was removed
    for y, x in meta["positions"]:
        iy, ix = (int(v) for v in np.rint((y, x)))
        if 2 <= iy < 126 and 2 <= ix < 126:
            assert vac.clean[iy, ix] < 0.5 * full.clean[iy, ix]


def test_strain_field_recorded_and_applied():
    scene = simulate_scene((128, 128), defect="strain", strain=0.02, dose=None, rng=4)
    params = scene.metadata["strain"]
    assert params["amplitude"] == 0.02
    ref = scene.metadata["reference_columns"]
    dy, dx = sim.strain_displacement(ref[:, 0], ref[:, 1], params)
    np.testing.assert_allclose(scene.columns, ref + np.stack([dy, dx], -1), atol=1e-9)
    eyy, exx = sim.strain_tensor(ref[:, 0], ref[:, 1], params)
    assert max(np.abs(eyy).max(), np.abs(exx).max()) <= 0.02 + 1e-12
    json.dumps({k: v for k, v in params.items()})  # parameters only, JSON-ready


# ------------------------------------------------------------------------------------------------
# bad arguments
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: NoiseModel(snr=0.0), r"snr must be > 0.*0\.0"),
        (lambda: NoiseModel(snr=-1.0), r"snr must be > 0.*-1\.0"),
        (lambda: NoiseModel(dose=-1.0), r"dose must be .*>= 0.*-1\.0"),
        (lambda: simulate_scene((64, 64), dose=-3.0), r"dose must be >= 0.*-3\.0"),
        (lambda: TrainingDistribution(snr_range=(0.0, 1.0)), r"snr must be > 0"),
        (lambda: TrainingDistribution(dose_range=(-1.0, 10.0)), r"dose must be > 0"),
        (lambda: srtio3_lattice(period=1.5), r"period must be >= 2.*1\.5"),
        (lambda: TrainingDistribution(period_px=1.0), r"period must be >= 2.*1\.0"),
        (lambda: TrainingDistribution(spacing_range=(1.0, 5.0)), r"spacing_range must satisfy 2"),
        (lambda: simulate_scene((64, 64), pixel_size=3.0), r"period must be >= 2"),
        (lambda: training_batch(4, window=7), r"window must be an int >= 8.*7"),
        (lambda: simulate_scene((64, 64), defect="dislocation"), r"unknown defect 'dislocation'"),
        (lambda: simulate_scene((64, 64), defect=["rp", "x"]), r"unknown defect 'x'.*rp"),
        (lambda: simulate_scene((64, 64), lattice="fcc"), r"unknown lattice 'fcc'.*srtio3"),
        (lambda: TrainingDistribution(kinds=("cubic",)), r"unknown lattice kind 'cubic'"),
        (lambda: training_batch(4, distribution="nope"), r"unknown training distribution"),
        (lambda: simulate_scene((64, 64), lattice="hexagonal", defect="rp"), r"rectangular"),
        (lambda: simulate_scene((64, 64), strain=0.5), r"strain must be in \[0, 0.2\]"),
        (lambda: training_batch(-1), r"n must be an int >= 0"),
    ],
)
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_as_generator():
    g = np.random.default_rng(0)
    assert as_generator(g) is g
    assert as_generator(3).integers(1000) == np.random.default_rng(3).integers(1000)
    assert isinstance(as_generator(None), np.random.Generator)
    with pytest.raises(TypeError):
        as_generator("seed")


# ------------------------------------------------------------------------------------------------
# correlated noise
# ------------------------------------------------------------------------------------------------


def lag1_correlation(noise, axis):
    """Autocorrelation of ``noise`` at a lag of one pixel along ``axis``."""
    r = noise.astype(np.float64) - noise.mean()
    n = r.shape[axis]
    a, b = np.take(r, range(1, n), axis=axis), np.take(r, range(n - 1), axis=axis)
    return float((a * b).mean() / r.var())


@pytest.fixture(scope="module")
def lattice_image():
    """A noise-free SrTiO3 scene, 192² px, in arbitrary units (scaled to the dose by the model)."""
    return simulate_scene((192, 192), dose=None, rng=0).clean


def test_white_poisson_noise_is_uncorrelated(lattice_image):
    noisy, clean = NoiseModel(dose=16.0).apply(lattice_image, rng=1)
    for axis in (0, 1):
        assert abs(lag1_correlation(noisy - clean, axis)) < 0.03


def test_afterglow_correlates_the_noise_along_the_fast_scan_only(lattice_image):
    noisy, clean = NoiseModel(dose=16.0, afterglow=2.0).apply(lattice_image, rng=1)
    along_x = lag1_correlation(noisy - clean, axis=1)
    assert along_x > 0.3
    assert along_x == pytest.approx(math.exp(-1 / 2.0), abs=0.05)  # AR(1): q = exp(-1/L)
    assert abs(lag1_correlation(noisy - clean, axis=0)) < 0.05
    assert noisy.mean() == pytest.approx(16.0, rel=0.01)  # the filter keeps the mean
    assert clean.mean() == pytest.approx(16.0, rel=0.01)  # up to what leaks past the right edge


def test_frame_average_correlates_neighbours_in_both_axes(lattice_image):
    white, white_clean = NoiseModel(dose=16.0).apply(lattice_image, rng=1)
    noisy, clean = NoiseModel(dose=16.0, frames=8, frame_shift=0.7).apply(lattice_image, rng=1)
    for axis in (0, 1):
        assert lag1_correlation(noisy - clean, axis) > 0.1
    # the interpolation lowers the high-frequency power: less variance at the same dose
    assert (noisy - clean).var() < 0.8 * (white - white_clean).var()
    assert noisy.mean() == pytest.approx(16.0, rel=0.01)
    assert np.abs(clean - white_clean).max() < 0.2 * white_clean.max()  # a mild smoothing only


def test_frames_without_shift_are_still_poisson(lattice_image):
    noisy, clean = NoiseModel(dose=16.0, frames=4).apply(lattice_image, rng=2)
    np.testing.assert_allclose(clean, NoiseModel(dose=16.0).apply(lattice_image, rng=2)[1], 1e-5)
    assert np.all(noisy == np.round(noisy))  # a sum of integer frames
    assert (noisy - clean).var() == pytest.approx(16.0, rel=0.05)
    assert abs(lag1_correlation(noisy - clean, 1)) < 0.03


@pytest.mark.parametrize("model", [NoiseModel(row_offset_rel=0.03), NoiseModel(row_gain=0.05)])
def test_streaks_raise_the_variance_of_row_means(lattice_image, model):
    model = dataclasses.replace(model, dose=16.0)
    white, white_clean = NoiseModel(dose=16.0).apply(lattice_image, rng=3)
    noisy, clean = model.apply(lattice_image, rng=3)
    np.testing.assert_array_equal(clean, white_clean)  # streaks are noise, not signal
    rows_white = (white - white_clean).mean(axis=1).var()
    rows = (noisy - clean).mean(axis=1).var()
    assert rows > 3 * rows_white
    if model.row_offset_rel:
        expected = (0.03 * 16.0) ** 2 + rows_white  # offsets in units of the mean signal
        assert rows == pytest.approx(expected, rel=0.3)


def test_row_offset_rel_is_relative_to_the_mean_signal(lattice_image):
    for dose in (4.0, 400.0):
        noisy, clean = NoiseModel(dose=dose, row_offset_rel=0.05).apply(lattice_image[None], rng=4)
        offsets = (noisy - clean).mean(axis=2)[0]
        assert offsets.std() / dose == pytest.approx(0.05, rel=0.25)


@pytest.mark.parametrize(
    "model",
    [
        NoiseModel(dose=8.0, frames=4, frame_shift=0.5, frame_order=3),
        NoiseModel(dose=8.0, afterglow=1.5, row_gain=0.02, row_offset_rel=0.01),
        NoiseModel(dose=8.0, frames=3, frame_shift=0.4, afterglow=1.0, row_jitter=0.2),
    ],
)
def test_correlated_noise_is_deterministic_by_seed(lattice_image, model):
    a = model.apply(lattice_image, rng=5)
    b = model.apply(lattice_image, rng=5)
    c = model.apply(lattice_image, rng=6)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    assert a[0].tobytes() != c[0].tobytes()
    again = NoiseModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again == model


def test_correlated_noise_in_scenes_and_stacks():
    model = NoiseModel(frames=4, frame_shift=0.5, afterglow=1.0, row_offset_rel=0.01)
    scene = simulate_scene((96, 96), dose=10.0, noise=model, rng=7)
    assert scene.metadata["noise"]["frames"] == 4 and scene.metadata["noise"]["dose"] == 10.0
    assert scene.noisy.mean() == pytest.approx(10.0, rel=0.05)
    stack = np.stack([scene.clean, 2 * scene.clean])
    noisy, clean = dataclasses.replace(model, dose=10.0).apply(stack, rng=0)
    assert noisy.shape == clean.shape == (2, 96, 96)


def test_old_noise_dicts_load_with_the_new_terms_off():
    old = {"snr": None, "dose": 3.0, "read_noise": 0.0, "row_offset": 0.0, "row_jitter": 0.0,
           "drift": 0.0, "blur": 0.0, "snr_noise": "uniform"}  # fmt: skip
    model = NoiseModel.from_dict(old)
    assert model == NoiseModel(dose=3.0)
    assert not model.is_correlated
    assert NoiseModel(dose=3.0, afterglow=1.0).is_correlated


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"frames": 0}, r"frames must be an int >= 1.*0"),
        ({"frames": 2.5}, r"frames must be an int >= 1.*2\.5"),
        ({"frame_order": 2}, r"frame_order must be 1 .* or 3 .*2"),
        ({"frame_shift": -0.1}, r"frame_shift must be finite and >= 0.*-0\.1"),
        ({"afterglow": -1.0}, r"afterglow must be finite and >= 0.*-1\.0"),
        ({"row_offset_rel": float("nan")}, r"row_offset_rel must be finite"),
        ({"row_gain_length": 0.0}, r"row_gain_length must be finite and > 0"),
    ],
)
def test_bad_correlated_noise_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoiseModel(**kwargs)


def test_frames_need_a_dose():
    with pytest.raises(ValueError, match=r"frames > 1 or frame_shift > 0 need .* give a dose"):
        NoiseModel(frames=4).apply(np.ones((16, 16)), rng=0)


# ------------------------------------------------------------------------------------------------
# dark contrast (ABF-like)
# ------------------------------------------------------------------------------------------------


def test_dark_contrast_columns_are_dips_with_a_bright_rim():
    bright = simulate_scene((160, 160), dose=None, rng=8)
    dark = simulate_scene((160, 160), dose=None, contrast="dark", rng=8)
    np.testing.assert_array_equal(dark.columns, bright.columns)  # the same truth
    assert dark.metadata["contrast"] == "dark" and bright.metadata["contrast"] == "bright"
    sigma = dark.metadata["sigma_px"]
    yy, xx = np.mgrid[:160, :160]
    strong = dark.columns[dark.column_types == 0]
    inner = strong[((strong > 12) & (strong < 148)).all(1)]
    assert len(inner) > 10
    for y, x in inner:
        rho = np.hypot(yy - y, xx - x)
        assert dark.clean[rho < 0.8].mean() < 0.6  # a dip of about dark_depth = 0.5
        assert dark.clean[np.abs(rho - sim.DARK_RIM_SCALE * sigma * math.sqrt(2)) < 0.5].mean() > 1
    # the dips sit on the true columns, as the peaks do in bright contrast
    inverted = types.SimpleNamespace(clean=1.5 - dark.clean, columns=dark.columns)
    off = peak_offsets(inverted, margin=4)
    assert len(off) > 20 and np.abs(off).max() < 0.05


def test_dark_contrast_dose_is_mean_counts_per_pixel():
    scene = simulate_scene((128, 128), dose=16.0, contrast="dark", defect="vacancies", rng=9)
    assert scene.clean.mean() == pytest.approx(16.0, rel=1e-5)
    assert scene.noisy.mean() == pytest.approx(16.0, rel=0.01)
    assert np.all(scene.noisy == np.round(scene.noisy))
    assert np.median(scene.clean) > scene.clean.mean() * 0.95  # mostly bright background


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"contrast": "abf"}, r"contrast must be 'bright' .* or 'dark' .*'abf'"),
        ({"contrast": "dark", "dark_depth": 0.0}, r"dark_depth must be in \(0, 1\].*0\.0"),
        ({"contrast": "dark", "dark_rim": -0.1}, r"dark_rim must be finite and >= 0.*-0\.1"),
    ],
)
def test_bad_contrast_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_scene((64, 64), rng=0, **kwargs)


# ------------------------------------------------------------------------------------------------
# scenes that are not one crystal
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_scene():
    return sim.simulate_mixed_scene((192, 192), dose=16.0, rng=12)


def test_mixed_scene_has_every_region_and_a_crystal_mask(mixed_scene):
    regions = mixed_scene.metadata["regions"]
    labels = regions["labels"]
    assert labels.shape == mixed_scene.clean.shape == (192, 192)
    assert regions["legend"] == sim.REGIONS
    for code in sim.REGIONS.values():
        assert (labels == code).mean() > 0.1
    np.testing.assert_array_equal(regions["crystal_mask"], np.isin(labels, [2, 3]))
    assert mixed_scene.clean.mean() == pytest.approx(16.0, rel=1e-5)
    assert mixed_scene.noisy.mean() == pytest.approx(16.0, rel=0.02)


def test_mixed_scene_truth_columns_only_in_the_crystals(mixed_scene):
    labels = mixed_scene.metadata["regions"]["labels"]
    iy, ix = np.clip(np.rint(mixed_scene.columns), 0, 191).astype(int).T
    np.testing.assert_array_equal(labels[iy, ix], mixed_scene.metadata["column_region"])
    assert set(np.unique(mixed_scene.metadata["column_region"])) == {2, 3}
    assert len(mixed_scene.columns) == len(mixed_scene.column_types) > 40
    # the clean image peaks on the true columns (away from region boundaries)
    off = peak_offsets(mixed_scene, margin=6)
    assert np.median(np.abs(off)) < 0.05


def test_mixed_scene_vacuum_is_low_and_amorphous_matches_the_crystal(mixed_scene):
    labels, clean = mixed_scene.metadata["regions"]["labels"], mixed_scene.clean
    crystal = clean[labels == sim.REGIONS["crystal"]].mean()
    amorphous = clean[labels == sim.REGIONS["amorphous"]].mean()
    vacuum = ndimage.binary_erosion(labels == sim.REGIONS["vacuum"], iterations=12)
    assert amorphous == pytest.approx(crystal, rel=0.3)
    assert clean[vacuum].max() < 0.25 * crystal
    assert np.ptp(clean[vacuum]) < 1e-3 * crystal  # a constant level
    blobs = mixed_scene.metadata["amorphous"]
    density = len(blobs["positions"]) / (labels == sim.REGIONS["amorphous"]).sum()
    assert density == pytest.approx(blobs["density_per_px2"], rel=0.35)


def test_mixed_scene_second_grain_is_rotated(mixed_scene):
    grain = mixed_scene.metadata["grain"]
    assert grain["angle"] == pytest.approx(sim.GRAIN_ROTATION)
    a = mixed_scene.lattice.a
    for code, expected in ((2, 0.0), (3, sim.GRAIN_ROTATION)):
        sr = mixed_scene.columns[
            (mixed_scene.metadata["column_region"] == code) & (mixed_scene.column_types == 0)
        ]
        d = sr[None, :, :] - sr[:, None, :]
        near = np.abs(np.hypot(d[..., 0], d[..., 1]) - a) < 0.01 * a
        angles = np.degrees(np.arctan2(-d[..., 0][near], d[..., 1][near])) % 90
        assert np.allclose(angles, expected, atol=1e-6)


def test_half_crystal_half_amorphous_scene():
    scene = sim.simulate_mixed_scene((128, 160), parts=("crystal", "amorphous"), dose=8.0, rng=3)
    labels = scene.metadata["regions"]["labels"]
    assert (labels[:, :80] == sim.REGIONS["crystal"]).all()
    assert (labels[:, 80:] == sim.REGIONS["amorphous"]).all()
    assert (scene.columns[:, 1] < 79.5).all()
    assert scene.metadata["regions"]["parts"] == ["crystal", "amorphous"]


def test_mixed_scene_explicit_labels_and_determinism():
    labels = np.full((96, 96), sim.REGIONS["vacuum"], np.int8)
    labels[20:76, 20:76] = sim.REGIONS["crystal"]  # a particle in vacuum
    a = sim.simulate_mixed_scene((96, 96), labels=labels, rng=4)
    b = sim.simulate_mixed_scene((96, 96), labels=labels, rng=4)
    c = sim.simulate_mixed_scene((96, 96), labels=labels, rng=5)
    np.testing.assert_array_equal(a.metadata["regions"]["labels"], labels)
    assert a.noisy.tobytes() == b.noisy.tobytes() and a.columns.tobytes() == b.columns.tobytes()
    assert a.noisy.tobytes() != c.noisy.tobytes()
    assert ((a.columns > 19) & (a.columns < 76)).all()
    assert len(a.metadata["amorphous"]["positions"]) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"parts": ("crystal", "glass")}, r"unknown part 'glass'.*amorphous"),
        ({"parts": ("crystal", "crystal")}, r"parts must not repeat"),
        ({"parts": ()}, r"parts must name at least one"),
        ({"labels": np.zeros((8, 8), int)}, r"labels must be .* shape \(64, 64\)"),
        ({"labels": np.full((64, 64), 7)}, r"labels must be .* region codes"),
        ({"vacuum_level": -1.0}, r"vacuum_level must be finite and >= 0"),
    ],
)
def test_bad_mixed_scene_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sim.simulate_mixed_scene((64, 64), rng=0, **kwargs)


# ------------------------------------------------------------------------------------------------
# training distribution closer to real images
# ------------------------------------------------------------------------------------------------

REALISTIC = TrainingDistribution.from_dict(
    {
        **GENERAL.to_dict(),
        "name": "realistic",
        "dose_range": [0.5, 1000.0],
        "intensity_range": [0.1, 1.0],
        "uniform_fraction": 0.0,
        "frames_probability": 0.3,
        "frames_range": [2, 10],
        "frame_shift_range": [0.2, 1.0],
        "afterglow_probability": 0.3,
        "afterglow_range": [0.5, 2.0],
        "row_offset_rel_range": [0.0, 0.03],
        "row_gain_range": [0.0, 0.02],
        "clean_fraction": 0.1,
        "dark_fraction": 0.25,
        "dark_depth_range": [0.2, 0.6],
        "dark_rim_range": [0.0, 0.15],
    }
)


@pytest.fixture(scope="module")
def realistic_batch():
    return training_batch(1500, rng=21, distribution=REALISTIC)


def test_realistic_distribution_round_trips_and_is_deterministic():
    again = TrainingDistribution.from_dict(json.loads(json.dumps(REALISTIC.to_dict())))
    assert again == REALISTIC
    a = training_batch(100, rng=3, distribution=REALISTIC)
    b = training_batch(100, rng=3, distribution=again)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    assert not REALISTIC.is_paper


def test_realistic_distribution_spans_the_doses_and_keeps_some_windows_clean(realistic_batch):
    noisy, clean = realistic_batch
    assert np.isfinite(noisy).all() and (clean >= 0).all()
    untouched = (noisy == clean).all(axis=(1, 2))
    assert untouched.mean() == pytest.approx(0.1, abs=0.03)
    means = clean.mean(axis=(1, 2))
    assert means.min() < 2.0 and means.max() > 300.0  # doses from 0.5 to 1000 counts/px


def test_realistic_distribution_draws_dark_windows(realistic_batch):
    _, clean = realistic_batch
    top = clean.max(axis=(1, 2))
    dark = np.median(clean, axis=(1, 2)) > 0.75 * top  # a bright background, dark columns
    assert dark.mean() == pytest.approx(0.25, abs=0.05)
    assert (clean[dark].min(axis=(1, 2)) < 0.85 * top[dark]).all()


def test_realistic_distribution_correlates_the_noise(realistic_batch):
    noisy, clean = realistic_batch
    noise = (noisy - clean).astype(np.float64)
    noise -= noise.mean(axis=2, keepdims=True)
    lag1 = (noise[:, :, 1:] * noise[:, :, :-1]).mean(axis=(1, 2)) / (noise.var(axis=(1, 2)) + 1e-12)
    white_noisy, white_clean = training_batch(300, rng=21, distribution=GENERAL)
    white = (white_noisy - white_clean).astype(np.float64)
    white -= white.mean(axis=2, keepdims=True)
    white_lag1 = (white[:, :, 1:] * white[:, :, :-1]).mean(axis=(1, 2)) / (
        white.var(axis=(1, 2)) + 1e-12
    )
    assert np.mean(lag1 > 0.3) > 0.2  # afterglow and frame averages
    assert np.mean(white_lag1 > 0.3) < 0.05


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"frames_range": (0, 2)}, r"frames_range must be ints with 1 <= low <= high"),
        ({"frames_probability": 1.5}, r"frames_probability must be in \[0, 1\]"),
        ({"dark_depth_range": (0.2, 1.5)}, r"dark_depth_range must satisfy"),
        ({"dose_range": None, "afterglow_probability": 0.5}, r"afterglow_probability need"),
        ({"dose_range": None, "row_gain_range": (0.0, 0.1)}, r"row_gain_range need .*dose_range"),
    ],
)
def test_bad_realistic_fields_raise(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(GENERAL, **changes)


def test_dark_inverted_turns_the_dark_windows_upside_down_after_the_noise():
    # what denoise feeds the network for a dark image: the inverse, with the background's noise
    dark = dataclasses.replace(REALISTIC, dark_fraction=1.0, clean_fraction=0.0)
    noisy, clean = training_batch(40, rng=8, distribution=dark)
    turned = dataclasses.replace(dark, dark_inverted=True)
    noisy_t, clean_t = training_batch(40, rng=8, distribution=turned)
    top = clean.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(clean_t, top - clean, rtol=1e-6, atol=1e-4 * top.max())
    np.testing.assert_allclose(noisy_t, top - noisy, rtol=1e-6, atol=1e-4 * top.max())
    assert (clean_t >= 0).all()
    # a bright background with dark columns before, a dark background with bright columns after
    assert np.median(np.median(clean, axis=(1, 2)) / top.ravel()) > 0.75
    assert np.median(np.median(clean_t, axis=(1, 2)) / top.ravel()) < 0.25
    assert TrainingDistribution.from_dict(turned.to_dict()) == turned
    with pytest.raises(ValueError, match="dark_inverted must be True or False"):
        dataclasses.replace(dark, dark_inverted="yes")


def test_realistic_dark_is_realistic_with_a_fifth_of_the_windows_inverted_dark():
    from stem_ae.simulate import REALISTIC as SHIPPED_REALISTIC
    from stem_ae.simulate import REALISTIC_DARK, _resolve_distribution

    assert _resolve_distribution("realistic_dark") is REALISTIC_DARK
    differs = {
        f.name
        for f in dataclasses.fields(REALISTIC_DARK)
        if getattr(REALISTIC_DARK, f.name) != getattr(SHIPPED_REALISTIC, f.name)
    }
    assert differs == {
        "name",
        "dark_fraction",
        "dark_inverted",
        "dark_depth_range",
        "dark_rim_range",
    }
    noisy, clean = training_batch(600, rng=4, distribution=REALISTIC_DARK)
    assert np.isfinite(noisy).all() and (clean >= 0).all()
    # an inverted window is max(clean) - clean: it reaches exactly 0 where the background was
    # brightest, which no bright window (background, dose and all) does; REALISTIC gives 0 of 600
    turned = (clean.min(axis=(1, 2)) == 0).mean()
    assert 0.12 < turned < 0.28
