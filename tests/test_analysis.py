"""Tests for stem_ae.analysis: columns, sublattices, lattice maps, metrics, Cramér–Rao bound."""

from __future__ import annotations

import time

import numpy as np
import pytest

from stem_ae.analysis import (
    assign_sublattices,
    column_crlb,
    crlb_position,
    elongation_profile,
    find_columns,
    fit_columns,
    lattice_map,
    lattice_vectors,
    match_columns,
    psnr,
    ssim,
)
from stem_ae.simulate import (
    rp_displacement,
    simulate_scene,
    strain_tensor,
)


def _gaussian_spots(shape, centres, amplitudes, sigma, background=0.0):
    """Render isotropic Gaussians sampled at pixel centres (a tiny private stand-in)."""
    image = np.full(shape, float(background))
    r = int(np.ceil(5 * sigma))
    for (y, x), a in zip(centres, amplitudes, strict=True):
        y0, y1 = max(int(y) - r, 0), min(int(y) + r + 2, shape[0])
        x0, x1 = max(int(x) - r, 0), min(int(x) + r + 2, shape[1])
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        image[y0:y1, x0:x1] += a * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))
    return image


# ---------------------------------------------------------------------------------------------
# Cramér–Rao bound


def test_crlb_matches_monte_carlo_scatter_of_gaussian_fit():
    """Poisson fit of isolated columns scatters as the CRLB predicts (within 20 %)."""
    rng = np.random.default_rng(7)
    sigma, cell, n, amp, back = 2.0, 20, 16, 20.0, 4.0
    truth = np.array(
        [(cell * i + cell / 2 + 0.3, cell * j + cell / 2 - 0.2) for i in range(n) for j in range(n)]
    )
    yy, xx = np.mgrid[: cell * n, : cell * n]
    local_y = yy % cell - (cell / 2 + 0.3)
    local_x = xx % cell - (cell / 2 - 0.2)
    mu = back + amp * np.exp(-(local_y**2 + local_x**2) / (2 * sigma**2))
    errors = {False: [], True: []}
    for _ in range(4):
        counts = rng.poisson(mu).astype(np.float64)
        for poisson in (False, True):
            params, ok = fit_columns(counts, truth, radius=7, poisson=poisson)
            errors[poisson].append(params[ok, :2] - truth[ok])
    bound = crlb_position(amp, back, sigma)
    for poisson in (False, True):
        scatter = np.sqrt(np.mean(np.concatenate(errors[poisson]) ** 2))
        assert scatter == pytest.approx(bound, rel=0.2), (poisson, scatter, bound)


def test_crlb_scales_as_inverse_square_root_of_dose_and_with_pixel_size():
    low = crlb_position(10.0, 2.0, 1.5)
    high = crlb_position(40.0, 8.0, 1.5)
    assert high == pytest.approx(low / 2, rel=1e-6)
    assert crlb_position(10.0, 2.0, 1.5, pixel_size=0.2) == pytest.approx(low * 20)
    # a free width costs information: the bound can only grow
    assert crlb_position(10.0, 2.0, 1.5, fit_width=True) >= crlb_position(
        10.0, 2.0, 1.5, fit_width=False
    )


def test_column_crlb_of_isolated_column_equals_crlb_position():
    centre = np.array([[20.25, 19.75]])
    clean = _gaussian_spots((40, 40), centre, [30.0], 2.0, background=3.0)
    per_column = column_crlb(clean, centre, radius=12, pixel_size=0.1)
    alone = crlb_position(30.0, 3.0, 2.0, pixel_size=0.1, offset=(0.25, -0.25))
    assert per_column[0] == pytest.approx(alone, rel=0.02)


# ---------------------------------------------------------------------------------------------
# columns on synthetic lattices (private renderer)


def test_fit_columns_handles_thousands_of_columns_quickly():
    a, sigma = 8.0, 1.2
    centres = np.array(
        [(a * i + 3.1 + 0.37 * (j % 3), a * j + 2.7) for i in range(55) for j in range(55)]
    )
    image = _gaussian_spots((440, 440), centres, np.ones(len(centres)), sigma, 0.1)
    start = time.perf_counter()
    params, ok = fit_columns(image, np.rint(centres), radius=0.45 * a)
    seconds = time.perf_counter() - start
    assert len(centres) > 3000
    assert ok.mean() > 0.99
    assert seconds < 10, f"{len(centres)} columns took {seconds:.1f} s"
    inner = (centres.min(axis=1) > a) & (centres.max(axis=1) < 440 - a)
    assert np.abs(params[inner, :2] - centres[inner]).max() < 0.05


def test_lattice_vectors_and_flat_map_on_perfect_square_lattice():
    cols = np.array([(10.0 * i, 10.0 * j) for i in range(10) for j in range(10)])
    vectors = lattice_vectors(cols)
    np.testing.assert_allclose(np.abs(vectors), [[0, 10], [10, 0]], atol=1e-9)
    m = lattice_map(cols, pixel_size=0.39)
    assert np.all(m.valid)
    np.testing.assert_allclose(m.a, 3.9)
    np.testing.assert_allclose(m.angle, 90.0)
    for name in ("exx", "eyy", "exy", "rotation"):
        np.testing.assert_allclose(getattr(m, name), 0.0, atol=1e-12)


def test_lattice_map_recovers_uniform_strain_and_rotation():
    base = np.array([(10.0 * i, 10.0 * j) for i in range(12) for j in range(12)], dtype=float)
    # deformation in (x, y_up): stretch x by 3 %, then rotate 2 degrees counter-clockwise
    theta = np.radians(2.0)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    f = rot @ np.diag([1.03, 1.0])
    xy = np.stack([base[:, 1], -base[:, 0]], axis=1) @ f.T
    cols = np.stack([-xy[:, 1], xy[:, 0]], axis=1)
    m = lattice_map(cols, reference=np.array([[0.0, 10.0], [-10.0, 0.0]]))
    sym = 0.5 * (f + f.T) - np.eye(2)
    assert np.nanmedian(m.exx) == pytest.approx(sym[0, 0], abs=1e-9)
    assert np.nanmedian(m.eyy) == pytest.approx(sym[1, 1], abs=1e-9)
    assert np.nanmedian(m.rotation) == pytest.approx(np.degrees(0.5 * (f[1, 0] - f[0, 1])))
    assert np.nanmedian(m.rotation) > 1.9


def test_elongation_profile_finds_the_stretched_cells_next_to_a_fault():
    xs = np.cumsum([10.0] * 8 + [12.0, 11.0] + [10.0] * 8)
    fault_x = 0.5 * (xs[8] + xs[9])
    cols = np.array([(10.0 * i, x) for i in range(12) for x in xs])
    profile = elongation_profile(cols, fault_x=fault_x, pixel_size=0.2)
    near = np.abs(profile.distance) < 0.2 * 12
    far = np.abs(profile.distance) > 0.2 * 40
    assert profile.elongation[near].max() > 0.1
    assert np.abs(profile.elongation[far]).max() < 1e-9


def test_assign_sublattices_uses_neighbours_when_intensity_is_ambiguous():
    a = 10.0
    cols, kinds = [], []
    for i in range(10):
        for j in range(10):
            cols += [(a * i + 4, a * j + 4), (a * i + 9, a * j + 9)]
            kinds += [0, 1]
    cols, kinds = np.array(cols), np.array(kinds)
    heights = np.where(kinds == 0, 1.0, 0.7)
    heights[[22, 57]] = 0.82  # an Sr column dimmed into the ambiguous range
    heights[[23]] = 0.88  # a Ti–O column brightened into it
    image = _gaussian_spots((110, 110), cols, heights, 1.3)
    assert np.all(assign_sublattices(image, cols) == kinds)
    by_intensity = assign_sublattices(image, cols, neighbour_weight=0.0)
    assert np.any(by_intensity != kinds)


# ---------------------------------------------------------------------------------------------
# simulated scenes (stem_ae.simulate)


@pytest.mark.parametrize("pixel_size", [0.1, 0.3])
def test_find_columns_locates_columns_of_a_clean_faulted_strained_scene(pixel_size):
    scene = simulate_scene(
        (160, 160), defect=["rp", "strain"], pixel_size=pixel_size, dose=None, rng=11
    )
    nn = scene.lattice.nearest_neighbour()
    found = find_columns(scene.clean, min_distance=0.38 * nn)
    match = match_columns(found, scene.columns, 0.3 * nn)
    errors = np.hypot(*(found[match.pairs[:, 0]] - scene.columns[match.pairs[:, 1]]).T)
    assert match.found >= 0.99
    assert match.n_invented == 0
    assert np.sum(errors < 0.1) >= 0.99 * len(scene.columns)


def test_find_columns_measures_the_separation_itself_and_invents_nothing_at_vacancies():
    scene = simulate_scene((160, 160), defect="vacancies", pixel_size=0.2, dose=None, rng=4)
    found = find_columns(scene.clean)  # separation from estimate_period
    match = match_columns(found, scene.columns, 0.3 * scene.lattice.nearest_neighbour())
    assert match.found >= 0.99
    assert match.n_invented == 0
    assert match.rms_px < 0.02


def test_find_columns_on_a_noisy_scene_stays_near_the_cramer_rao_bound():
    scene = simulate_scene((160, 160), pixel_size=0.2, dose=64.0, rng=2)
    nn = scene.lattice.nearest_neighbour()
    found = find_columns(scene.noisy, min_distance=0.38 * nn, poisson=True)
    match = match_columns(found, scene.columns, 0.3 * nn, shape=scene.clean.shape, border=0.5 * nn)
    inner = match_columns(scene.columns, scene.columns, 0.3 * nn, shape=(160, 160), border=0.5 * nn)
    bound = column_crlb(scene.clean, scene.columns[inner.pairs[:, 1]], radius=0.45 * nn)
    assert match.found > 0.99
    assert match.n_invented == 0
    assert match.rms_px < 1.5 * np.sqrt(np.mean(bound**2))


def test_assign_sublattices_recovers_sr_and_tio_of_a_scene():
    scene = simulate_scene((160, 160), pixel_size=0.15, dose=None, rng=8)
    types = assign_sublattices(scene.clean, scene.columns)
    assert np.all(types == scene.column_types)
    noisy = simulate_scene((160, 160), pixel_size=0.15, dose=64.0, rng=8)
    assert np.mean(assign_sublattices(noisy.noisy, noisy.columns) == noisy.column_types) > 0.98


def test_lattice_map_of_an_unstrained_scene_is_flat():
    scene = simulate_scene((160, 160), pixel_size=0.2, dose=None, rng=5)
    found = find_columns(scene.clean)
    sr = found[assign_sublattices(scene.clean, found) == 0]
    m = lattice_map(sr, pixel_size=0.2)
    assert m.valid.all()
    np.testing.assert_allclose(m.a, 3.905, rtol=0.005)
    np.testing.assert_allclose(m.b, 3.905, rtol=0.005)
    np.testing.assert_allclose(m.angle, 90.0, atol=0.5)
    for name in ("exx", "eyy", "exy"):
        assert np.max(np.abs(getattr(m, name))) < 0.005, name


def test_lattice_map_of_a_strained_scene_follows_the_imposed_strain():
    amplitude = 0.03
    scene = simulate_scene(
        (256, 256), defect="strain", strain=amplitude, pixel_size=0.3, dose=None, rng=6
    )
    found = find_columns(scene.clean)
    sr = found[assign_sublattices(scene.clean, found) == 0]
    m = lattice_map(sr, reference=scene.lattice.vectors())
    eyy, exx = strain_tensor(sr[:, 0], sr[:, 1], scene.metadata["strain"])
    central = m.central
    assert central.sum() > 200
    assert np.max(np.abs(m.exx[central] - exx[central])) < 0.1 * amplitude
    assert np.max(np.abs(m.eyy[central] - eyy[central])) < 0.1 * amplitude
    assert np.max(np.abs(m.exy[central])) < 0.1 * amplitude
    # the field really varies: the map is not just flat
    assert np.ptp(m.exx[central]) > amplitude


def test_elongation_profile_matches_the_imposed_rp_elongation():
    scene = simulate_scene((192, 192), defect="rp", pixel_size=0.25, dose=None, rng=2)
    rp = scene.metadata["rp"]
    found = find_columns(scene.clean)
    sr = found[assign_sublattices(scene.clean, found) == 0]
    profile = elongation_profile(
        sr,
        fault_point=rp["fault_point"],
        fault_normal=rp["fault_normal"],
        reference_spacing=scene.lattice.a,
        vectors=scene.lattice.vectors(),
    )
    amplitude = rp["elongation"]["amplitude"]
    decay = rp["elongation"]["decay_length_px"]
    a = scene.lattice.a
    d = profile.bond_distance
    imposed = (
        rp_displacement(d + a / 2, amplitude, decay) - rp_displacement(d - a / 2, amplitude, decay)
    ) / a
    assert len(d) > 50
    assert np.max(np.abs(profile.bond_elongation - imposed)) < 0.05 * amplitude
    # the cells next to the fault are elongated, those far away are not
    nearest = np.argsort(np.abs(profile.distance))[:2]
    assert np.all(profile.elongation[nearest] > 0.4 * amplitude)
    assert np.all(np.abs(profile.elongation[np.abs(profile.distance) > 4 * a]) < 0.05 * amplitude)


# ---------------------------------------------------------------------------------------------
# metrics


def test_match_columns_counts_found_and_invented():
    truth = np.array([(10.0 * i, 10.0 * j) for i in range(1, 6) for j in range(1, 6)])
    rng = np.random.default_rng(3)
    found = truth[:20] + rng.normal(0, 0.1, (20, 2))
    found = np.vstack([found, [[15.0, 15.0], [35.0, 25.0], [11.0, 10.0]]])
    m = match_columns(found, truth, radius=2.5, pixel_size=0.2)
    assert m.n_matched == 20
    assert m.found == pytest.approx(20 / 25)
    # two far-away extras and a duplicate near an already matched column are invented
    assert m.n_invented == 3
    assert m.invented == pytest.approx(3 / 25)
    expected = np.sqrt(np.mean(np.sum((found[:20] - truth[:20]) ** 2, axis=1)) / 2)
    assert m.rms_px == pytest.approx(expected)
    assert m.rms_pm == pytest.approx(expected * 20)


def test_psnr_and_ssim_rank_a_cleaner_image_higher():
    rng = np.random.default_rng(0)
    truth = _gaussian_spots((48, 48), [(12, 12), (12, 36), (36, 12), (36, 36)], [1] * 4, 3.0)
    slightly = truth + rng.normal(0, 0.02, truth.shape)
    badly = truth + rng.normal(0, 0.2, truth.shape)
    assert psnr(truth, slightly) > psnr(truth, badly) + 15
    assert ssim(truth, slightly) > ssim(truth, badly)


# ---------------------------------------------------------------------------------------------
# bad inputs

_NOISE = np.random.default_rng(0).random((16, 16))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: find_columns(np.zeros((0, 0)), min_distance=3), "empty"),
        (lambda: find_columns(np.zeros(10), min_distance=3), "2-D"),
        (lambda: find_columns(np.ones((32, 32)), min_distance=3), "constant"),
        (lambda: find_columns(np.full((8, 8), np.nan), min_distance=3), "NaN"),
        (lambda: find_columns(_NOISE, pixel_size=0.0, min_distance=3), "pixel"),
        (lambda: find_columns(_NOISE, pixel_size=-1, min_distance=3), "pixel"),
        (lambda: find_columns(_NOISE, min_distance=0), "min_distance"),
        (lambda: lattice_map(np.zeros((0, 2))), "at least"),
        (lambda: lattice_map(np.zeros((5, 3))), "shape"),
        (lambda: match_columns(np.zeros((1, 2)), np.ones((4, 2)), 1, pixel_size=0), "pixel"),
        (lambda: crlb_position(10.0, 1.0, 1.0, pixel_size=-0.2), "pixel"),
        (lambda: crlb_position(0.0, 1.0, 1.0), "amplitude"),
        (lambda: psnr(np.ones((8, 8)), np.ones((8, 8))), "constant"),
        (lambda: psnr(np.eye(8), np.eye(9)), "shape"),
    ],
)
def test_bad_inputs_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_image_without_columns_raises_value_error():
    ramp = np.add.outer(np.arange(32.0), 0.5 * np.arange(32.0))  # its only maximum is a corner
    with pytest.raises(ValueError, match="column"):
        find_columns(ramp, min_distance=3)
