"""The cosine-transform Gaussian filter gives ndimage's numbers (stem_ae._filters)."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from stem_ae._filters import COSINE_MIN_TAPS, gaussian_filter, lowpass_errors, power_spectra


@pytest.mark.parametrize("mode", ["reflect", "nearest", "constant"])
@pytest.mark.parametrize("shape", [(128, 128), (97, 150), (31, 40)])
@pytest.mark.parametrize("sigma", [1.0, 3.0, 7.3, 12.0])
def test_gaussian_filter_matches_ndimage(mode, shape, sigma):
    rng = np.random.default_rng(7)
    image = rng.normal(size=shape) + np.linspace(0, 3, shape[1])  # a ramp: edges matter
    fast = gaussian_filter(image, sigma, mode=mode)
    slow = ndi.gaussian_filter(image, sigma, mode=mode)
    assert fast.dtype == np.float64
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)


def test_float32_in_place_and_wide_kernels_take_the_cosine_path(monkeypatch):
    rng = np.random.default_rng(8)
    image = rng.normal(size=(200, 180)).astype(np.float32)
    expected = ndi.gaussian_filter(image, 6.0, mode="reflect")
    calls = []
    original = ndi.gaussian_filter
    monkeypatch.setattr(
        ndi, "gaussian_filter", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    buffer = image.copy()
    out = gaussian_filter(buffer, 6.0, output=buffer)
    assert out is buffer and out.dtype == np.float32
    assert not calls  # 49 taps ≥ COSINE_MIN_TAPS: no direct convolution
    np.testing.assert_allclose(out, expected, atol=1e-6)
    gaussian_filter(image, (COSINE_MIN_TAPS // 2 - 1) / 4.0)  # a narrow kernel: ndimage
    assert calls


def test_lowpass_errors_are_the_direct_ones_at_every_bandwidth():
    rng = np.random.default_rng(9)
    residual = rng.normal(size=(90, 70)) + np.outer(np.hanning(90), np.hanning(70))
    sigmas = (0.0, 0.5, 1.0, 3.0, 6.0, 20.0)  # 20 px: the kernel outreaches the image
    direct = [
        np.mean(((ndi.gaussian_filter(residual, s) if s else 0.0) - residual) ** 2) for s in sigmas
    ]
    np.testing.assert_allclose(lowpass_errors(residual, sigmas), direct, rtol=1e-10)


def test_power_spectra_is_the_squared_fft_per_tile():
    tiles = np.random.default_rng(10).normal(size=(3, 16, 16))
    expected = np.abs(np.fft.fft2(tiles)) ** 2
    np.testing.assert_allclose(power_spectra(tiles), expected, rtol=1e-12, atol=1e-12)
