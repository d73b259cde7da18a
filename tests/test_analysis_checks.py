"""Argument and data checks of stem_ae.analysis added for issue 15 (defects 3 and 4).

Kept apart from tests/test_analysis.py, which another change is extending at the same time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from stem_ae.analysis import assign_sublattices, elongation_profile, find_columns, lattice_map
from stem_ae.io import read_image
from stem_ae.lattice import CalibrationWarning
from stem_ae.simulate import simulate_scene

TIFF = Path(__file__).resolve().parents[1] / "data" / "Tecnai_Osiris_SrTiO3.tif"


def _grid(spacing=10.0, n=8, shape=(90, 90), seed=0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cols = np.array(
        [(5 + spacing * i, 5 + spacing * j) for i in range(n) for j in range(n)], dtype=float
    )
    image = sum(np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4.5) for y, x in cols)
    image = image + np.random.default_rng(seed).normal(0, 0.05, shape)
    return image, cols


def test_one_lattice_of_alike_columns_gets_one_type_and_says_so():
    image, cols = _grid()
    with pytest.warns(UserWarning, match="sees one lattice"):
        types = assign_sublattices(image, cols)
    assert np.all(types == 0)


def test_real_srtio3_with_only_sr_columns_found_is_one_lattice():
    # the Tecnai image (Sr columns only resolved, 25 px = a apart): no "Ti-O" 25 px from Sr
    image, _ = read_image(TIFF)
    smooth = ndimage.gaussian_filter(image.astype(float), 2.0)
    columns = find_columns(smooth)
    with pytest.warns(UserWarning, match="sees one lattice"):
        types = assign_sublattices(smooth, columns)
    assert len(columns) > 300 and np.all(types == 0)


@pytest.mark.parametrize("dose", [4.0, 64.0])
def test_two_sublattices_are_still_told_apart(dose):
    scene = simulate_scene((160, 160), pixel_size=0.15, dose=dose, rng=8)
    types = assign_sublattices(scene.noisy, scene.columns)
    assert np.mean(types == scene.column_types) > 0.95


def test_lattice_map_warns_on_a_pixel_size_from_another_image():
    scene = simulate_scene((160, 160), pixel_size=0.2, dose=None, rng=5)
    found = find_columns(scene.clean)
    sr = found[assign_sublattices(scene.clean, found) == 0]
    lattice_map(sr, pixel_size=0.2)  # right: no warning (warnings are errors here)
    with pytest.warns(CalibrationWarning, match=r"pixel_size=0.3 .*0\.2\d* Å/px"):
        lattice_map(sr, pixel_size=0.3)
    lattice_map(sr, pixel_size=0.3, lattice_constant=None)  # another crystal: no check
    with pytest.raises(ValueError, match="lattice_constant"):
        lattice_map(sr, pixel_size=0.2, lattice_constant=-1.0)


def test_elongation_profile_refuses_a_fault_outside_the_columns():
    cols = np.array([(10.0 * i, 10.0 * j) for i in range(8) for j in range(8)])
    with pytest.raises(ValueError, match="does not pass between the columns"):
        elongation_profile(cols, fault_x=130.7)
    with pytest.raises(ValueError, match="does not pass between the columns"):
        elongation_profile(cols, fault_point=(0.0, -5.0))


def test_elongation_profile_checks_the_pixel_size_when_given_a_lattice_constant():
    cols = np.array([(10.0 * i, 10.0 * j) for i in range(8) for j in range(8)])
    elongation_profile(cols, fault_x=35.0, pixel_size=0.39, lattice_constant=3.905)
    with pytest.warns(CalibrationWarning, match="elongation_profile"):
        elongation_profile(cols, fault_x=35.0, pixel_size=0.2, lattice_constant=3.905)
