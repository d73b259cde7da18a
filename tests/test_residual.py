"""The SURE-chosen residual correction applied after the auto-encoder (stem_ae._residual)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from stem_ae._residual import (
    RESIDUAL_SIGMAS,
    apply_residual,
    choose_residual_sigma,
    consistency_correction,
    noise_variance,
)
from stem_ae.simulate import simulate_scene


def _psnr(truth, image):
    return 10 * np.log10(np.ptp(truth) ** 2 / np.mean((truth - image) ** 2))


@pytest.mark.parametrize("dose", [2.0, 16.0, 64.0])
def test_noise_variance_matches_poisson_mean_on_a_scene(dose):
    scene = simulate_scene((160, 160), pixel_size=0.15, dose=dose, rng=3)
    # The residual against the truth is pure Poisson noise: mean variance = mean expected counts.
    measured = noise_variance(scene.noisy - scene.clean)
    assert measured == pytest.approx(scene.clean.mean(), rel=0.08)


@pytest.mark.parametrize("dose", [16.0, 100.0])
def test_noise_variance_ignores_the_estimate_s_fine_lattice_error(dose):
    # An estimate that blurs columns 13 px apart leaves lattice-frequency error in the residual;
    # only the noise may count (the 2x2 Haar detail read 1.4x and 3.3x the truth here).
    scene = simulate_scene((192, 192), pixel_size=0.3, dose=dose, rng=7)
    residual = scene.noisy - ndi.gaussian_filter(scene.clean, 1.0)
    assert noise_variance(residual) == pytest.approx(scene.clean.mean(), rel=0.05)


@pytest.mark.parametrize("dose", [2.0, 16.0])
def test_sure_choice_is_close_to_the_oracle_and_beats_both_inputs(dose):
    scene = simulate_scene((160, 160), defect="vacancies", pixel_size=0.15, dose=dose, rng=4)
    # A deliberately biased estimate: the truth blurred and with every vacancy refilled by the
    # mean column — the kind of error an auto-encoder makes.
    estimate = ndi.gaussian_filter(scene.clean, 2.0) * 0.9 + 0.05 * scene.clean.mean()
    sigma = choose_residual_sigma(scene.noisy, estimate)
    corrected = apply_residual(scene.noisy, estimate, sigma)
    oracle = max(
        _psnr(scene.clean, apply_residual(scene.noisy, estimate, s)) for s in RESIDUAL_SIGMAS
    )
    assert _psnr(scene.clean, corrected) > oracle - 0.5
    assert _psnr(scene.clean, corrected) > _psnr(scene.clean, estimate) + 1
    assert _psnr(scene.clean, corrected) > _psnr(scene.clean, scene.noisy) + 1


def test_perfect_estimate_is_left_alone():
    scene = simulate_scene((128, 128), pixel_size=0.2, dose=8.0, rng=5)
    assert choose_residual_sigma(scene.noisy, scene.clean) == 0.0
    np.testing.assert_array_equal(apply_residual(scene.noisy, scene.clean, 0.0), scene.clean)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="same shape"):
        choose_residual_sigma(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(ValueError, match="negative"):
        choose_residual_sigma(np.ones((8, 8)), np.zeros((8, 8)), sigmas=(-1.0,))
    with pytest.raises(ValueError, match="too small"):
        noise_variance(np.zeros((1, 5)))


def test_consistency_correction_removes_a_painted_column_and_leaves_agreement_alone():
    # 5 % vacancies at 2 counts/px: the estimate is the truth with every vacancy painted over by
    # a full column, what the auto-encoder does where the data are too weak to object.
    scene = simulate_scene((192, 192), defect="vacancies", pixel_size=0.2, dose=2.0, rng=11)
    painted = simulate_scene((192, 192), pixel_size=0.2, dose=2.0, rng=11).clean
    variance = float(scene.clean.mean())  # Poisson
    width = 0.2 * 13.8  # 0.2 x the SrTiO3 spacing at 0.2 A/px
    fixed = consistency_correction(scene.noisy, painted, width, variance)
    sites = np.round(np.asarray(scene.metadata["vacancies"]["positions"])).astype(int)
    inside = np.all((sites >= 5) & (sites < 187), axis=1)
    y, x = sites[inside].T
    excess = np.mean(painted[y, x] - scene.clean[y, x])
    # the column-scale average takes a good part of the painted peak away (enough to drop most
    # such columns below detection in benchmarks/quality.py); without the step nothing would go
    assert np.mean(fixed[y, x] - scene.clean[y, x]) < 0.8 * excess
    # where the estimate is right, nothing of the noise comes back
    same = consistency_correction(scene.noisy, scene.clean, width, variance)
    assert np.mean(np.abs(same - scene.clean)) < 0.05 * np.mean(np.abs(scene.noisy - scene.clean))


def test_consistency_correction_rejects_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        consistency_correction(np.ones((8, 8)), np.zeros((8, 8)), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# correlated noise: the spectrum, the colored SURE, the network's excess


def _afterglow(noise, length):
    """Causal exponential filter along x (detector afterglow), keeping the variance's scale."""
    out = np.empty_like(noise)
    q = np.exp(-1.0 / length)
    out[:, 0] = noise[:, 0]
    for x in range(1, noise.shape[1]):
        out[:, x] = (1 - q) * noise[:, x] + q * out[:, x - 1]
    return out


def test_noise_spectrum_predicts_the_variance_of_filtered_correlated_noise():
    from scipy import ndimage

    from stem_ae._residual import filtered_noise_variance, noise_spectrum

    rng = np.random.default_rng(3)
    noise = _afterglow(rng.normal(0, 1, (512, 512)), 2.0)
    spectrum = noise_spectrum(noise)
    assert abs(spectrum.mean() / noise.var() - 1) < 0.05
    for sigma in (1.0, 2.0):
        measured = ndimage.gaussian_filter(noise, sigma).var()
        white_guess = noise.var() * filtered_noise_variance(np.ones((64, 64)), sigma)
        predicted = filtered_noise_variance(spectrum, sigma)
        assert abs(predicted / measured - 1) < 0.1
        assert measured > 2 * white_guess  # a white-noise model would be far off


def test_noise_spectrum_ignores_what_sits_on_the_lattice_reflections():
    from stem_ae._residual import noise_spectrum

    rng = np.random.default_rng(4)
    y, x = np.mgrid[:256, :256]
    error = 0.5 * np.cos(2 * np.pi * x / 8) + 0.5 * np.cos(2 * np.pi * y / 8)  # periodic error
    residual = error + rng.normal(0, 0.1, x.shape)
    reciprocal = np.array([[1 / 8, 0.0], [0.0, 1 / 8]])
    assert abs(noise_spectrum(residual, reciprocal).mean() / 0.01 - 1) < 0.15
    assert noise_spectrum(residual).mean() > 10 * 0.01  # unmasked, the error counts as noise


def test_colored_sure_adds_back_less_of_correlated_noise_than_white_sure():
    from stem_ae._residual import choose_residual_sigma, noise_spectrum

    rng = np.random.default_rng(5)
    y, x = np.mgrid[:256, :256]
    truth = np.cos(2 * np.pi * x / 12) * np.cos(2 * np.pi * y / 12)
    noisy = truth + 0.6 * _afterglow(rng.normal(0, 1, truth.shape), 2.5)
    estimate = 0.8 * truth  # an estimate with a systematic error
    spectrum = noise_spectrum(noisy - estimate, np.array([[1 / 12, 1 / 12], [1 / 12, -1 / 12]]))
    white = choose_residual_sigma(noisy, estimate)
    colored = choose_residual_sigma(noisy, estimate, spectrum=spectrum)
    assert colored > white


def test_network_excess_is_the_estimate_error_over_the_noise():
    from stem_ae._residual import network_excess

    rng = np.random.default_rng(6)
    noise = rng.normal(0, 1.0, (256, 256))
    error = rng.normal(0, 2.0, (256, 256))
    flat = np.ones((64, 64))
    assert network_excess(noise, flat) == pytest.approx(0.0, abs=0.02)
    assert network_excess(noise + error, flat) == pytest.approx(4.0, rel=0.05)


def test_smoothing_sigma_grows_with_the_noise():
    from stem_ae._residual import smoothing_sigma

    rng = np.random.default_rng(8)
    y, x = np.mgrid[:192, :192]
    blobs = np.exp(-((x % 16 - 8.0) ** 2 + (y % 16 - 8.0) ** 2) / 18)
    low = smoothing_sigma(blobs + rng.normal(0, 0.02, x.shape), np.full((64, 64), 0.02**2))
    high = smoothing_sigma(blobs + rng.normal(0, 0.5, x.shape), np.full((64, 64), 0.5**2))
    assert high > low


@pytest.mark.parametrize("side", [16, 64, 128])
def test_reflection_mask_marks_every_bin_within_the_radius_of_a_reflection(side):
    # the mask is built box by box around each reflection; it must equal the plain definition:
    # every bin whose periodic distance to zero or to some h g1 + k g2 is <= _PEAK_RADIUS
    from stem_ae._residual import _PEAK_RADIUS, _reflection_mask

    reciprocal = np.array([[1 / 7.3, 0.02], [-0.03, 1 / 5.1]])
    k = np.fft.fftfreq(side) * side
    ky, kx = np.meshgrid(k, k, indexing="ij")
    expected = np.zeros((side, side), bool)
    for h in range(-40, 41):
        for l_ in range(-40, 41):
            cy, cx = (h * reciprocal[0] + l_ * reciprocal[1]) * side
            if abs(cy) > side / 2 + _PEAK_RADIUS or abs(cx) > side / 2 + _PEAK_RADIUS:
                continue
            dy = (ky - cy + side / 2) % side - side / 2
            dx = (kx - cx + side / 2) % side - side / 2
            expected |= dy * dy + dx * dx <= _PEAK_RADIUS**2
    mask = _reflection_mask(side, reciprocal)
    np.testing.assert_array_equal(mask, expected)
    assert 0 < mask.mean() < (1 if side >= 64 else 1.01)  # 16 bins: all within reach


def test_surround_energy_is_the_sum_of_squares_of_the_band_pass_kernel():
    from stem_ae._residual import _surround_energy

    impulse = np.zeros((129, 129))
    impulse[64, 64] = 1.0
    for width in (1.3, 2.0, 5.12):
        kernel = ndi.gaussian_filter(impulse, width, truncate=4.0)
        kernel -= ndi.gaussian_filter(impulse, 2.0 * width, truncate=4.0)
        assert _surround_energy(width, 2.0) == pytest.approx(np.sum(kernel**2), rel=1e-9)


def test_surround_variance_predicts_the_band_passed_variance_of_correlated_noise():
    from stem_ae._residual import (
        _kernel_energy,
        _surround_energy,
        noise_spectrum,
        surround_variance,
    )

    rng = np.random.default_rng(5)
    # afterglow along the rows plus scan-line offsets: the slow part a plain average keeps
    noise = _afterglow(rng.normal(0, 1, (512, 512)), 2.0)
    noise += rng.normal(0, 0.5, (512, 1))
    spectrum = noise_spectrum(noise)
    for width in (2.0, 4.0):
        band = ndi.gaussian_filter(noise, width) - ndi.gaussian_filter(noise, 2 * width)
        predicted = surround_variance(spectrum, width) * _surround_energy(width, 2.0)
        assert abs(predicted / band.var() - 1) < 0.1
        # the band-pass leaves out more of this noise than of white noise
        white = _kernel_energy(width) / _surround_energy(width, 2.0)
        assert ndi.gaussian_filter(noise, width).var() / band.var() > 1.2 * white


def test_remove_unsupported_takes_out_a_painted_column_but_not_a_smooth_offset():
    from stem_ae._residual import _surround_energy, remove_unsupported

    rng = np.random.default_rng(6)
    y, x = np.mgrid[:128, :128].astype(float)
    spacing, width, sd = 16.0, 3.2, 0.3

    def column(cy, cx):
        return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 2.0**2))

    truth = sum(column(cy, cx) for cy in range(8, 128, 16) for cx in range(8, 128, 16))
    truth -= column(56, 56)  # a vacancy
    noisy = truth + rng.normal(0, sd, truth.shape)
    # the estimate: the truth on a raised, slowly varying background, and a column painted in
    # the vacancy
    offset = 0.15 + 0.1 * np.sin(2 * np.pi * x / 128)
    estimate = truth + offset + column(56, 56)
    plain = ndi.gaussian_filter(noisy - estimate, width)
    energy = np.sum(ndi.gaussian_filter(np.pad([[1.0]], 20), width) ** 2)
    assert (-plain > 4 * sd * np.sqrt(energy)).mean() > 0.3  # a plain average flags the offset
    fixed = remove_unsupported(noisy, estimate, width, sd**2, 4.0, spacing)
    assert fixed[56, 56] - offset[56, 56] < 0.3 * estimate[56, 56]  # the painted column is gone
    far = (np.hypot(y - 56, x - 56) > 1.5 * spacing) & (y > 8) & (y < 120) & (x > 8) & (x < 120)
    assert np.array_equal(fixed[far], estimate[far])  # the offset alone is not a column
    assert _surround_energy(width, 2.0) < energy  # the band-pass has less noise to compare with
    with pytest.raises(ValueError, match="surround"):
        remove_unsupported(noisy, estimate, width, sd**2, 4.0, spacing, surround=1.0)


def test_remove_unsupported_corrects_flagged_spots_from_the_fallback_and_leaves_the_rest():
    from stem_ae._residual import remove_unsupported

    rng = np.random.default_rng(6)
    y, x = np.mgrid[:128, :128].astype(float)
    spacing, width, sd, threshold = 16.0, 3.2, 0.2, 5.0

    def column(cy, cx):
        return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 2.0**2))

    grid = sum(column(cy, cx) for cy in range(8, 128, 16) for cx in range(8, 128, 16))
    truth = grid - column(56, 56)  # a vacancy
    noisy = truth + rng.normal(0, sd, truth.shape)
    network = truth + column(56, 56)  # the network painted a column into the vacancy
    folded = network + 0.1 * grid  # and the periodic error adds a tenth at every site
    fixed = remove_unsupported(noisy, folded, width, sd**2, threshold, spacing, fallback=network)
    alone = remove_unsupported(noisy, network, width, sd**2, threshold, spacing)
    near = np.hypot(y - 56, x - 56) < 4
    # the flagged spot is corrected from the network's own output: the fold's tenth goes too
    assert np.abs(fixed[near] - alone[near]).max() < 1e-5
    assert fixed[56, 56] < 0.5 * folded[56, 56]
    far = np.hypot(y - 56, x - 56) > 1.5 * spacing
    assert np.array_equal(fixed[far], folded[far])  # elsewhere the fold stays
    # nothing flagged in either: the folded estimate comes back as it is
    clean = truth + 0.1 * grid
    kept = remove_unsupported(noisy, clean, width, sd**2, threshold, spacing, fallback=truth)
    assert np.array_equal(kept, clean)


_SPACING = 4.6  # px: SrTiO3 at 0.6 Å/px
_WIDTH = 0.2 * _SPACING  # the consistency test's width there


def _coarse_lattice(side):
    """Pixel grids, a column painter and a noise-free square lattice of columns 4.6 px apart."""
    y, x = np.mgrid[:side, :side].astype(float)

    def column(cy, cx):
        return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 0.75**2))

    centres = np.arange(2.3, side, _SPACING)
    return y, x, column, centres, sum(column(cy, cx) for cy in centres for cx in centres)


def _variance_at(residual, at, z):
    """The noise variance that puts the test's statistic of ``residual`` at ``z`` σ at ``at``."""
    from stem_ae._residual import CONSISTENCY_SURROUND, _surround_energy

    mean = ndi.gaussian_filter(residual, _WIDTH) - ndi.gaussian_filter(
        residual, CONSISTENCY_SURROUND * _WIDTH
    )
    z_per_sd = -mean[round(at[0]), round(at[1])]
    return (z_per_sd / z) ** 2 / _surround_energy(_WIDTH, CONSISTENCY_SURROUND)


def test_remove_unsupported_peak_threshold_holds_at_the_estimates_columns_only():
    # a column painted into a vacancy at 3.4σ: the whole image's 4σ bar keeps it; the lower bar
    # at the estimate's own columns (PEAK_THRESHOLD) takes it out, and the same 3.4σ
    # disagreement between columns (no peak of the estimate there) is left alone
    from stem_ae._residual import PEAK_THRESHOLD, UNSUPPORTED_MIN_LOWPASS, remove_unsupported

    y, x, column, centres, truth = _coarse_lattice(128)
    hole = (centres[13], centres[13])
    gap = (centres[6] + _SPACING / 2, centres[6] + _SPACING / 2)  # a cell's centre, 3.3 px off
    data = truth - column(*hole) - column(*gap)  # a vacancy, and a dip the estimate does not show
    estimate = truth
    variance = _variance_at(-column(*hole), hole, 3.4)  # both disagreements at 3.4σ
    width, spacing = _WIDTH, _SPACING
    kwargs = dict(min_lowpass=UNSUPPORTED_MIN_LOWPASS)
    near_hole = np.hypot(y - hole[0], x - hole[1]) <= 1.0
    near_gap = np.hypot(y - gap[0], x - gap[1]) <= 1.0

    plain = remove_unsupported(data, estimate, width, variance, 4.0, spacing, **kwargs)
    np.testing.assert_array_equal(plain, estimate)  # nothing at 4σ
    fixed = remove_unsupported(
        data, estimate, width, variance, 4.0, spacing, peak_threshold=PEAK_THRESHOLD, **kwargs
    )
    assert fixed[near_hole].max() < 0.5 * estimate[near_hole].max()  # the painted column went
    np.testing.assert_array_equal(fixed[near_gap], estimate[near_gap])  # not a column: kept
    # a 3σ bar everywhere would have taken the gap too
    everywhere = remove_unsupported(data, estimate, width, variance, 3.0, spacing, **kwargs)
    assert np.abs(everywhere[near_gap] - estimate[near_gap]).max() > 0.05


def test_remove_unsupported_lattice_vectors_catch_a_faint_painted_column():
    # the network paints a vacancy faintly (30 % of a column): its own faint column hides the
    # dip from the test (2σ, under the 2.5σ peak bar), but against the same site's column one
    # lattice vector away the data show nothing (PEAK_TYPICAL); a real column is left alone
    from stem_ae._residual import PEAK_THRESHOLD, UNSUPPORTED_MIN_LOWPASS, remove_unsupported

    y, x, column, centres, truth = _coarse_lattice(96)
    width, spacing = _WIDTH, _SPACING
    hole = (centres[10], centres[10])
    data = truth - column(*hole)  # a vacancy
    estimate = data + 0.3 * column(*hole)  # painted faintly
    variance = _variance_at(-0.3 * column(*hole), hole, 2.0)
    vectors = np.array([[spacing, 0.0], [0.0, spacing]])
    kwargs = dict(min_lowpass=UNSUPPORTED_MIN_LOWPASS, peak_threshold=PEAK_THRESHOLD)
    near_hole = np.hypot(y - hole[0], x - hole[1]) <= 1.0

    plain = remove_unsupported(data, estimate, width, variance, 4.0, spacing, **kwargs)
    np.testing.assert_array_equal(plain, estimate)  # the faint column passes the peak bar
    fixed = remove_unsupported(
        data, estimate, width, variance, 4.0, spacing, lattice_vectors=vectors, **kwargs
    )
    assert fixed[near_hole].max() < 0.5 * estimate[near_hole].max()  # the painted column went
    away = np.hypot(y - hole[0], x - hole[1]) > 2 * spacing
    np.testing.assert_array_equal(fixed[away], estimate[away])  # every real column kept
    # vectors that do not match the lattice find no such column: nothing changes
    wrong = remove_unsupported(
        data, estimate, width, variance, 4.0, spacing, lattice_vectors=vectors / 2, **kwargs
    )
    np.testing.assert_array_equal(wrong, estimate)


def test_remove_unsupported_puts_back_data_without_pixel_noise_at_coarse_sampling():
    # a 4.6 px spacing (0.6 Å/px SrTiO3): half the test's width is 0.46 px, which put the pixel
    # noise back into painted vacancies (RMS error 0.13 there for a noise of 0.15; the spikes
    # were found as columns); for a dense network the data go back low-passed by
    # UNSUPPORTED_MIN_LOWPASS instead
    from stem_ae._residual import UNSUPPORTED_MIN_LOWPASS, remove_unsupported

    rng = np.random.default_rng(8)
    y, x = np.mgrid[:128, :128].astype(float)
    spacing, sd = 4.6, 0.15
    width = 0.2 * spacing
    assert 0.5 * width < UNSUPPORTED_MIN_LOWPASS

    def column(cy, cx):
        return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 0.75**2))

    centres = np.arange(2.3, 128, spacing)
    truth = sum(column(cy, cx) for cy in centres for cx in centres)
    holes = [(centres[i], centres[j]) for i in (6, 13, 20) for j in (6, 13, 20)]
    painted = sum(column(*hole) for hole in holes)
    truth -= painted  # nine vacancies
    noisy = truth + rng.normal(0, sd, truth.shape)
    estimate = truth + painted  # the network painted a column into each
    fixed = remove_unsupported(
        noisy, estimate, width, sd**2, 4.0, spacing, min_lowpass=UNSUPPORTED_MIN_LOWPASS
    )
    near = np.zeros(truth.shape, bool)
    for hole in holes:
        near |= np.hypot(y - hole[0], x - hole[1]) <= 1.5
    error = fixed[near] - truth[near]
    # without the floor (min_lowpass=0, what general_conv gets) the noise comes back
    narrow = remove_unsupported(noisy, estimate, width, sd**2, 4.0, spacing)
    assert np.sqrt(np.mean((narrow[near] - truth[near]) ** 2)) > 0.7 * sd
    assert np.abs(error).max() < 0.2  # the painted columns are gone, no spike left
    assert np.sqrt(np.mean(error**2)) < 0.5 * sd  # the data came back without pixel noise
    far = np.ones(truth.shape, bool)
    for hole in holes:
        far &= np.hypot(y - hole[0], x - hole[1]) > 2 * spacing
    assert np.mean(fixed[far] == estimate[far]) > 0.95  # where nothing was painted


@pytest.mark.parametrize(
    ("options", "white"),
    [
        ({"dose": 1.0}, True),
        ({"dose": 16.0}, True),
        ({"dose": 4.0, "afterglow": 1.5}, False),  # smooths along the fast scan only
        ({"dose": 64.0, "row_offset_rel": 0.02}, False),  # scan-row offsets (streaks)
        ({"dose": 4.0, "frames": 4, "frame_shift": 0.5}, False),  # interpolated frames
    ],
)
def test_spectrum_whiteness_tells_white_poisson_noise_from_correlated_noise(options, white):
    from stem_ae._residual import noise_spectrum, spectrum_whiteness
    from stem_ae.denoising import WHITE_TOLERANCE
    from stem_ae.simulate import NoiseModel

    noisy, clean = NoiseModel(**options).apply(np.full((256, 256), 1.0), rng=6)
    whiteness = spectrum_whiteness(noise_spectrum(noisy - clean))
    assert whiteness >= 1.0
    assert (whiteness <= WHITE_TOLERANCE) == white, whiteness


def test_spectrum_whiteness_does_not_judge_a_small_spectrum():
    from stem_ae._residual import WHITE_MIN_SIDE, noise_spectrum, spectrum_whiteness

    rng = np.random.default_rng(7)
    small = noise_spectrum(rng.normal(0, 1, (WHITE_MIN_SIDE - 1, WHITE_MIN_SIDE + 40)))
    assert spectrum_whiteness(small) == np.inf
    large = noise_spectrum(rng.normal(0, 1, (WHITE_MIN_SIDE, WHITE_MIN_SIDE)))
    assert spectrum_whiteness(large) < np.inf
