"""Frame series, tiled large images and Dask arrays through ``stem_ae.denoise``."""

from __future__ import annotations

import dask
import dask.array as da
import keras
import numpy as np
import pytest

from stem_ae import _runner, _tiling, denoising
from stem_ae.denoising import denoise
from stem_ae.model import AEConfig, build_autoencoder


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(1)
    return build_autoencoder(
        AEConfig(encoder=(64, 32), code=16, training={"spacing_range": [6.0, 10.0]})
    )


def _crystal(shape, spacing=10.0, seed=0):
    """A noisy square lattice of Gaussian-like columns (cosine products), float64."""
    rng = np.random.default_rng(seed)
    y, x = np.indices(shape, dtype=float)
    t = np.deg2rad(12.0)
    u = (np.cos(t) * x - np.sin(t) * y) / spacing
    v = (np.sin(t) * x + np.cos(t) * y) / spacing
    clean = (np.cos(np.pi * u) * np.cos(np.pi * v)) ** 8
    return clean + 0.3 * rng.standard_normal(shape)


def test_tiles_equal_the_in_memory_result(model):
    image = _crystal((420, 390))
    reference, reference_spread = denoise(image, model=model, return_uncertainty=True)
    lazy, lazy_spread = denoise(
        da.from_array(image, chunks=(210, 195)), model=model, return_uncertainty=True
    )
    assert isinstance(lazy, da.Array) and lazy.dtype == np.float32
    assert lazy.numblocks[0] > 1 and lazy.numblocks[1] > 1  # really tiled
    result, spread = dask.compute(lazy, lazy_spread)
    assert result.shape == image.shape
    assert np.abs(result - reference).max() <= 1e-5 * np.ptp(image)
    assert np.abs(spread - reference_spread).max() <= 1e-3 * np.ptp(image)


def test_uncertainty_costs_one_pass_per_tile(model, monkeypatch):
    image = _crystal((300, 280), seed=4)
    calls = []
    block = denoising._denoise_block
    monkeypatch.setattr(
        denoising, "_denoise_block", lambda *a, **k: calls.append(1) or block(*a, **k)
    )
    lazy, lazy_spread = denoise(
        da.from_array(image, chunks=(150, 140)),
        model=model,
        return_uncertainty=True,
        residual="sure",  # no crystal map: its margins would merge these small chunks
    )
    calls.clear()  # the pilot crop that chose the residual bandwidth
    dask.compute(lazy, lazy_spread, scheduler="sync")
    assert len(calls) == lazy.npartitions == 4


def test_large_in_memory_image_goes_through_tiles(model, monkeypatch):
    image = _crystal((300, 280), seed=1)
    reference = denoise(image, model=model)
    monkeypatch.setattr(denoising, "LARGE_IMAGE", 100 * 100)
    monkeypatch.setattr(_tiling, "TILE", 128)
    tiled = denoise(image, model=model, workers=2)
    assert isinstance(tiled, np.ndarray)
    assert np.abs(tiled - reference).max() <= 1e-5 * np.ptp(image)


def test_tiles_equal_the_whole_image_where_erased_sites_are_restored(model, monkeypatch):
    image = _crystal((300, 280), seed=2)
    plain = denoise(image, model=model)
    # as if the network had erased a column at the cell centre: the data go back there
    site = (np.array([[0.5, 0.5]]), 7.0)
    monkeypatch.setattr(denoising, "erased_columns", lambda *args, **kwargs: site)
    reference = denoise(image, model=model)
    assert np.abs(reference - plain).max() > 1e-3 * np.ptp(image)
    monkeypatch.setattr(denoising, "LARGE_IMAGE", 100 * 100)
    monkeypatch.setattr(_tiling, "TILE", 128)
    tiled = denoise(image, model=model, workers=2)
    assert np.abs(tiled - reference).max() <= 1e-5 * np.ptp(image)


def test_tiles_equal_the_whole_image_with_the_periodic_error_folded_in(model, monkeypatch):
    image = _crystal((300, 280), seed=3)
    # an untrained network's error dwarfs the noise (weight 1: nothing to fold), and the noise is
    # white (the gate is off); as if the gate were on and left half of it, so that the fold of its
    # periodic error is laid on every tile
    monkeypatch.setattr(denoising, "WHITE_TOLERANCE", 0.0)
    monkeypatch.setattr(denoising, "_excess_weight", lambda *args: 0.5)
    auto = denoise(image, model=model)
    reference = denoise(image, model=model, residual="periodic")
    assert np.abs(reference - auto).max() > 1e-3 * np.ptp(image)
    monkeypatch.setattr(denoising, "LARGE_IMAGE", 100 * 100)
    monkeypatch.setattr(_tiling, "TILE", 128)
    tiled = denoise(image, model=model, residual="periodic", workers=2)
    # the local phase turns the float32 rounding of the network's output (1e-7 here) into a
    # shift of the fold: 1e-4, not 1e-5 (an untrained network's lattice is faint)
    assert np.abs(tiled - reference).max() <= 1e-4 * np.ptp(image)


def test_chunks_smaller_than_a_window_are_rechunked(model):
    image = _crystal((200, 190), seed=2)
    lazy = denoise(da.from_array(image, chunks=16), model=model)
    assert min(min(c) for c in lazy.chunks) >= 28
    np.testing.assert_allclose(
        lazy.compute(), denoise(image, model=model), atol=1e-5 * np.ptp(image)
    )


def test_stack_of_frames_numpy_and_dask(model):
    frames = np.stack([_crystal((96, 100), seed=s) for s in range(3)]).astype(np.float32)
    stack = denoise(frames, model=model)
    assert stack.shape == frames.shape and stack.dtype == np.float32
    lazy = denoise(da.from_array(frames, chunks=(2, 96, 100)), model=model)
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), stack, atol=1e-5 * np.ptp(frames))
    as_list = denoise(list(frames), model=model)
    np.testing.assert_array_equal(as_list, stack)
    # the series' sampling match is shared: each frame equals a series of one only if alone
    for index in range(3):
        assert np.abs(stack[index] - frames[index]).mean() < np.abs(frames[index]).mean()


def test_frames_of_different_shapes_are_refused(model):
    with pytest.raises(ValueError, match="different shapes"):
        denoise([_crystal((64, 64)), _crystal((64, 70))], model=model)


def test_lazy_array_of_wrong_dtype_is_refused(model):
    lazy = da.from_array(_crystal((64, 64)).astype(np.complex64), chunks=32)
    with pytest.raises(TypeError, match="complex"):
        denoise(lazy, model=model)
    with pytest.raises(TypeError):
        denoise(da.from_array(np.full((64, 64), "a")), model=model)


def test_nan_in_lazy_array_raises_when_computed(model):
    image = _crystal((256, 128), seed=3)
    image[1, 1] = np.nan
    lazy = da.from_array(image, chunks=(128, 128))
    with pytest.raises(ValueError, match="NaN"):  # eagerly if sampled, else when computed
        denoise(lazy, model=model).compute(scheduler="sync")
    # the tile function itself checks its pixels (NaN outside what was sampled eagerly)
    plan = denoising._Plan((256, 128), (256, 128), 0.0, 1.0, 2, "mean", 64)
    runner = _runner.Runner(model)
    with pytest.raises(ValueError, match="NaN"):
        denoising._denoise_block(image[:128], (0, 0), plan=plan, runner=runner, uncertainty=False)


def test_runs_on_a_distributed_local_cluster(model):
    distributed = pytest.importorskip("distributed")
    image = _crystal((240, 230), seed=4)
    reference = denoise(image, model=model)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        lazy = denoise(da.from_array(image, chunks=(120, 115)), model=model)
        result = client.compute(lazy).result()
    assert np.abs(result - reference).max() <= 1e-5 * np.ptp(image)


def test_crystal_map_of_a_dask_array_equals_the_in_memory_one(model):
    from stem_ae.simulate import simulate_mixed_scene

    scene = simulate_mixed_scene(
        (256, 384), parts=("crystal", "amorphous"), pixel_size=0.2, dose=4.0, rng=3
    )
    out, mask = denoise(scene.noisy, model=model, return_mask=True)
    lazy, lazy_mask = denoise(
        da.from_array(scene.noisy, chunks=(128, 192)), model=model, return_mask=True
    )
    assert isinstance(lazy_mask, da.Array)
    np.testing.assert_allclose(lazy_mask.compute(), mask, atol=1e-5)
    np.testing.assert_allclose(lazy.compute(), out, atol=1e-4 * np.ptp(scene.noisy))
    assert mask.min() < 0.5 < mask.max()  # both a lattice and something else
