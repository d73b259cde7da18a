"""Tests of stem_ae.lattice: the lattice measured from the Fourier transform."""

from __future__ import annotations

import numpy as np
import pytest

from stem_ae.lattice import estimate_lattice, estimate_period, measure_lattice


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


def test_measure_lattice_of_a_series_agrees_with_estimate_lattice():
    rng = np.random.default_rng(7)
    clean = _lattice_image((128, 128), 9.0, 17.0, "square", rng)
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
