"""Scores for real images without ground truth: lattice motif, lattice fit, method noise.

All on simulated scenes (``stem_ae.simulate_scene``), offline, a few seconds in all.
"""

import numpy as np
import pytest
from scipy import ndimage

from stem_ae.analysis import (
    LATTICE_MATCH_FRACTION,
    find_columns,
    fit_lattice,
    lattice_motif,
    method_noise,
)
from stem_ae.simulate import simulate_scene


def true_reciprocal(scene) -> np.ndarray:
    """Reciprocal basis (rows g1, g2, (y, x), 1/px) of an unrotated rectangular scene lattice.

    The scores take the lattice as given; the tests give them the true one, so that they do not
    depend on how ``estimate_lattice`` reduces a centred cell.
    """
    assert scene.metadata["angle"] == 0 and scene.lattice.gamma == 90
    return np.array([[0.0, 1.0 / scene.lattice.a], [1.0 / scene.lattice.b, 0.0]])


@pytest.fixture(scope="module")
def srtio3():
    """A 256² SrTiO3 [001] scene at 0.15 Å/px (26 px cell), dose 16, its lattice and motif."""
    scene = simulate_scene((256, 256), lattice="srtio3", pixel_size=0.15, dose=16.0, rng=3)
    reciprocal = true_reciprocal(scene)
    return scene, reciprocal, lattice_motif(scene.noisy, reciprocal)


def test_lattice_motif_finds_the_two_columns_of_srtio3(srtio3):
    scene, reciprocal, motif = srtio3
    assert motif.shape == (2, 2)
    # Sr and Ti-O sit half a cell diagonal apart: a / sqrt(2) in real space
    delta = motif[1] - motif[0]
    delta -= np.round(delta)
    distance = np.hypot(*(np.linalg.inv(reciprocal) @ delta))
    assert distance == pytest.approx(scene.lattice.a / np.sqrt(2), rel=0.03)


def test_lattice_motif_of_a_dark_column_image_needs_inversion(srtio3):
    scene, reciprocal, motif = srtio3
    inverted = lattice_motif(scene.noisy.max() - scene.noisy, reciprocal)
    # the inverted image's maxima are the gaps between columns, not the columns
    direct = np.linalg.inv(reciprocal)
    for point in inverted:
        delta = motif - point
        delta -= np.round(delta)
        assert np.hypot(*(delta @ direct.T).T).min() > 0.2 * scene.lattice.a


def test_fit_lattice_of_the_true_columns_is_exact_despite_strain():
    scene = simulate_scene((256, 256), pixel_size=0.15, dose=None, strain=0.01, rng=4)
    reciprocal = true_reciprocal(scene)
    motif = lattice_motif(scene.clean, reciprocal)
    fit = fit_lattice(scene.columns, reciprocal, motif, scene.clean.shape)
    assert fit.rms < 0.1
    assert fit.sites_kept == 1.0
    assert fit.invented == 0.0
    assert fit.radius == pytest.approx(LATTICE_MATCH_FRACTION * fit.nn_distance)
    # both sublattices (Sr and Ti-O) are sites, in equal numbers
    counts = np.bincount(fit.kind, minlength=len(motif))
    assert len(counts) == 2 and abs(counts[0] - counts[1]) <= 0.1 * counts.sum()


def test_fit_lattice_rms_measures_column_jitter(srtio3):
    scene, reciprocal, motif = srtio3
    rng = np.random.default_rng(0)
    jitter = 0.6  # px per coordinate
    columns = scene.columns + rng.normal(0.0, jitter, scene.columns.shape)
    fit = fit_lattice(columns, reciprocal, motif, scene.clean.shape)
    assert fit.rms == pytest.approx(jitter * np.sqrt(2), rel=0.15)
    assert fit.sites_kept > 0.98


def test_fit_lattice_counts_lost_sites_and_invented_columns(srtio3):
    scene, reciprocal, motif = srtio3
    rng = np.random.default_rng(1)
    reference = fit_lattice(scene.columns, reciprocal, motif, scene.clean.shape)
    keep = rng.random(len(scene.columns)) > 0.2
    # invented columns: a quarter cell off every true column, well outside the match radius
    shift = np.array([scene.lattice.a / 4, 0.0])
    invented = scene.columns[rng.choice(len(scene.columns), 15, replace=False)] + shift
    columns = np.vstack([scene.columns[keep], invented])
    fit = fit_lattice(columns, reciprocal, motif, scene.clean.shape)
    assert fit.sites_kept == pytest.approx(keep.mean(), abs=0.05)
    assert fit.sites_kept < reference.sites_kept - 0.1
    assert fit.invented == pytest.approx(15 / fit.n_columns, abs=0.02)
    assert fit.rms < 0.1
    # off_lattice names the columns that invented counts: the shifted ones inside the margin
    assert fit.off_lattice.shape == (fit.n_columns,)
    assert fit.off_lattice.mean() == fit.invented
    shifted = {tuple(np.round(p, 6)) for p in invented}
    assert all(tuple(np.round(p, 6)) in shifted for p in fit.columns[fit.off_lattice])


def test_fit_lattice_scores_a_denoiser_above_the_raw_image(srtio3):
    scene, reciprocal, motif = srtio3
    min_distance = 0.5 * scene.lattice.a / np.sqrt(2)
    raw = fit_lattice(
        find_columns(scene.noisy, min_distance=min_distance), reciprocal, motif, (256, 256)
    )
    clean = fit_lattice(
        find_columns(scene.clean, min_distance=min_distance), reciprocal, motif, (256, 256)
    )
    assert clean.rms < raw.rms
    assert clean.invented <= raw.invented


def test_fit_lattice_rejects_bad_arguments(srtio3):
    scene, reciprocal, motif = srtio3
    with pytest.raises(ValueError, match="collinear"):
        fit_lattice(scene.columns, np.array([[0.1, 0.0], [0.2, 0.0]]), motif, (256, 256))
    with pytest.raises(ValueError, match="motif"):
        fit_lattice(scene.columns, reciprocal, np.zeros((0, 2)), (256, 256))
    with pytest.raises(ValueError, match="order"):
        fit_lattice(scene.columns, reciprocal, motif, (256, 256), order=9)


def test_method_noise_identity_and_constant_are_the_extremes(srtio3):
    scene, reciprocal, _ = srtio3
    same = method_noise(scene.noisy, scene.noisy, reciprocal)
    assert same.lattice_removed == 0.0
    assert same.streak_left == pytest.approx(1.0)
    assert same.n_reflections >= 4
    flat = method_noise(scene.noisy, np.full_like(scene.noisy, scene.noisy.mean()), reciprocal)
    assert flat.lattice_removed == pytest.approx(1.0, abs=0.02)
    assert flat.streak_left == 0.0


def test_method_noise_sees_streaks_left_and_lattice_blurred_away(srtio3):
    scene, reciprocal, _ = srtio3
    rng = np.random.default_rng(2)
    streaks = 0.1 * scene.clean.std() * rng.standard_normal((scene.clean.shape[0], 1))
    raw = scene.noisy + streaks
    truth = method_noise(raw, scene.clean, reciprocal)
    assert truth.lattice_removed < 0.05
    assert truth.streak_left < 0.1
    kept = method_noise(raw, scene.clean + streaks, reciprocal)
    assert kept.streak_left > 5 * truth.streak_left
    mild = method_noise(raw, ndimage.gaussian_filter(raw, 1.0), reciprocal)
    strong = method_noise(raw, ndimage.gaussian_filter(raw, 6.0), reciprocal)
    assert strong.lattice_removed > mild.lattice_removed + 0.3


def test_method_noise_rejects_mismatched_shapes(srtio3):
    scene, reciprocal, _ = srtio3
    with pytest.raises(ValueError, match="same shape"):
        method_noise(scene.noisy, scene.noisy[:-1], reciprocal)
