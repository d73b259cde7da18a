"""The user's :func:`denoise`, as named steps.

:func:`denoise` checks and stacks its input, measures (normalisation and lattice, once for a
whole series), plans (the sampling match, and the residual correction's bandwidth from a pilot
run on a central crop) and runs the plan over one image, the frames of a series, the tiles of a
large image or the blocks of a Dask array (:mod:`stem_ae._tiling`). Every tile and frame goes
through :func:`_denoise_block`: normalise, resample to the model's sampling
(:mod:`stem_ae._resample`), reconstruct with the floating window (:mod:`stem_ae.windows`),
resample back, correct (:mod:`stem_ae._residual`), undo the normalisation.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np

from stem_ae._common import WINDOW
from stem_ae._crystal import (
    DARK_ASYMMETRY,
    PHASE_WIDTH,
    SITE_LOWPASS,
    cell_asymmetry,
    cell_bins,
    crystal_map,
    erased_columns,
    local_fractions,
    periodic_image,
    periodic_part,
    restore_sites,
    tile_side,
)
from stem_ae._filters import gaussian_filter
from stem_ae._resample import ceil_div, resample
from stem_ae._residual import (
    CONSISTENCY_SURROUND,
    CONSISTENCY_THRESHOLD,
    CONSISTENCY_WIDTH,
    PEAK_THRESHOLD,
    RESIDUAL_SIGMAS,
    UNSUPPORTED_MIN_LOWPASS,
    apply_residual,
    choose_residual_sigma,
    consistency_correction,
    network_excess,
    noise_spectrum,
    noise_variance,
    remove_unsupported,
    smoothing_sigma,
    spectrum_whiteness,
    surround_variance,
)
from stem_ae._runner import Runner, model_window_and_normalization
from stem_ae._tiling import run_dask, run_frames, run_tiled
from stem_ae.lattice import (
    LATTICE_CROP,
    LatticeEstimate,
    check_calibration,
    measure_lattice,
    measure_lattice_or_spacing,
)
from stem_ae.windows import DEFAULT_BLEND, ProgressCallback, check_blend, check_step
from stem_ae.windows import reconstruct_normalized as _reconstruct

NORMALIZATION_PERCENTILES = (0.1, 99.9)
"""Percentiles (of a strided subsample of at most ~1 Mpx) mapped to 0 and 1 before denoising."""

CLIP_RANGE = (-1.0, 2.0)
"""After normalisation, values outside this range (hot pixels, dead pixels, cosmic-ray spikes) are
replaced by the median of their in-range neighbours (:data:`OUTLIER_NEIGHBOURHOOD`); everything a
real image holds between the percentiles, plus a full range on either side, passes untouched."""

OUTLIER_NEIGHBOURHOOD = 5
"""Side (px) of the square whose in-range pixels give an out-of-range pixel its new value; where
it holds none (a saturated patch), the value is clipped to :data:`CLIP_RANGE` instead."""

MAX_UPSAMPLING = 4.0
"""Largest magnification of the sampling match (see :func:`_scale_factor`)."""

RESAMPLE_TOLERANCE = 0.02
"""The image is not resampled when the sampling match asks for a scale within 2 % of 1."""

REFERENCE_LATTICE_CONSTANT = 3.905
"""Default ``lattice_constant`` (Å) for the ``pixel_size`` cross-check: SrTiO3, which covers the
pseudo-cubic perovskites (3.8–4.0 Å) within the 10 % tolerance."""

RESIDUAL_FLOOR = 0.03
"""Smallest residual-correction bandwidth, as a fraction of the dominant lattice spacing."""

EXCESS_RANGES = {"dense": (1.0, 2.0), "conv": (0.25, 0.5)}
"""``residual="auto"``, per architecture: the low-passed residual is added back with a weight
rising from 0 to 1 as the network's estimated error grows from the first to the second value,
in units of the noise variance (:func:`stem_ae._residual.network_excess`). Below, the network is
closer to the truth than the data are. The gate holds where the noise is correlated, the sampling
coarse or the columns dark; under white noise SURE decides alone (:data:`WHITE_TOLERANCE`).

* ``"dense"`` (the shipped ``general``, which has an error floor): 1 to 2. On noisy real images
  its excess is 0.1–0.5 and any data added back cost column precision (lattice-fit RMS).
* ``"conv"`` (``general_conv``, no error floor): 0.25 to 0.5. Its excess on the noisy real images
  of ``benchmarks/real.py`` is 0.0–0.17, where the network alone stays; on the two [110] atomap
  images 1.1–1.7, where adding the data back lowered the lattice-fit RMS (0.43 → 0.41 and
  0.45 → 0.42 px). On the simulated scenes of ``benchmarks/quality.py`` its excess reaches
  0.55–0.85 at 16–64 counts/px, where the data added back gained 2–8 dB PSNR (4.5 dB at
  0.2 Å/px, 64 counts/px) and lowered the position error (0.84 → 0.55 pm there), which the
  dense range (1 to 2) did not allow."""

AUTO_THRESHOLD = 4.0
"""``residual="auto"``: significance (noise std of the column-scale average minus its surround,
correlated noise included) above which :func:`stem_ae._residual.remove_unsupported` takes out
what the network shows and the data do not (a column painted into a vacancy). At 4σ it leaves
none of the simulated vacancies filled at 1–4 counts/px (network alone 92 %). A plain
column-scale average (no surround) left 0.6 % filled and cost 0.02 px of lattice-fit RMS on the
real Tecnai image (it read the network's slightly raised background as painted columns); a
per-pixel two-sided test at 2–3σ cost 1–9 % on the real images and left 15–20 % filled."""

LARGE_IMAGE = 4096 * 4096
"""In-memory 2-D images with more pixels than this go through tiled (Dask) processing."""

BATCH_SIZE = 8192
"""Windows per chunk for one in-memory image or frame (the fastest on the 2-core test machine)."""

TILE_BATCH_SIZE = 4096
"""Windows per chunk in the tiles of a large image or a Dask array: oneDNN keeps per-thread
buffers sized by the chunk, and 4096 lowers the peak memory by ~0.2 GB for ~4 % more time."""


@dataclass(frozen=True)
class _Plan:
    """Everything :func:`_denoise_block` needs besides the pixels (shared by all tiles/frames)."""

    shape: tuple[int, int]  # full frame (H, W), px
    scaled: tuple[int, int]  # frame size at the model's sampling, px
    low: float
    high: float
    step: int
    blend: str
    batch_size: int
    residual_sigma: float = 0.0  # SURE residual correction bandwidth, input px (0 = none)
    residual_weight: float = 1.0  # fraction of the low-passed residual added back
    threshold: float = CONSISTENCY_THRESHOLD  # of the local consistency test, noise std
    auto: bool = False  # residual="auto"/"periodic": correlated noise, one-sided test
    smooth_sigma: float = 0.0  # Gaussian for the parts that are not a crystal, input px (0: none)
    partial_crystal: bool = False  # the pilot's crystal map found parts that are not a crystal
    excess: float = float("nan")  # the network's error over the noise (residual="auto")
    whiteness: float = float("nan")  # the noise spectrum's largest power ratio (1: white)
    gate: str = ""  # what set residual_weight (residual="auto"): see _gate_reason
    dark: bool = False  # dark columns (ABF, BF): the image is denoised as its inverse
    spacing: float = 0.0  # measured dominant lattice spacing, input px
    noise_variance: float = 0.0  # normalised units; > 0 switches the local consistency step on
    erased: tuple = ()  # fractional positions of motif columns the network erased (auto)
    site_nn: float = 0.0  # nearest-neighbour column distance of the motif, input px
    lattice: LatticeEstimate | None = None  # as measured (input px), kept for the caller
    periodic: np.ndarray | None = None  # the network's error per cell bin ("periodic"), _correct
    min_lowpass: float = 0.0  # remove_unsupported's narrowest put-back low-pass, px (dense)
    peak_threshold: float | None = None  # remove_unsupported's bar at the network's columns

    @property
    def cell(self) -> float:
        """The larger primitive plane spacing, input px (what the crystal map tiles by)."""
        return max(self.lattice.spacings) if self.lattice is not None else self.spacing

    @property
    def reciprocal(self):
        """The measured reciprocal basis (1/px), or None when only a spacing was measured."""
        if self.lattice is None or self.lattice.radial_only:
            return None
        return self.lattice.reciprocal

    @property
    def lattice_vectors(self):
        """The real-space basis (rows (y, x), input px), or None without a 2-D lattice."""
        if self.reciprocal is None:
            return None
        return np.linalg.inv(np.asarray(self.reciprocal, np.float64)).T

    @property
    def depth(self) -> int:
        """Tile margin (px) so that trimmed tiles equal the whole-image result."""
        ratio = max(s / n for s, n in zip(self.scaled, self.shape, strict=True))
        inverse = max(n / s for s, n in zip(self.scaled, self.shape, strict=True))
        halo_in = 4 * max(0.0, (inverse - 1) / 2) + 20
        halo_in += 4 * self.residual_sigma  # the residual correction's low-pass
        if self.smooth_sigma > 0:  # the crystal map's tiles and the smoothing outside them
            halo_in += 2 * tile_side(self.cell) + 4 * self.smooth_sigma
        if self.noise_variance > 0:  # the consistency test's column-scale average
            reach = CONSISTENCY_SURROUND if self.auto else 1.0  # and its surround
            halo_in += 4 * CONSISTENCY_WIDTH * reach * self.spacing
            if self.auto:  # remove_unsupported widens a flagged spot and smooths it
                halo_in += 1.2 * self.spacing + 4 * self.min_lowpass
            if self.peak_threshold is not None and self.lattice_vectors is not None:
                halo_in += float(np.hypot(*self.lattice_vectors.T).max()) + 2  # translates
        if self.periodic is not None:  # local_fractions' phase low-pass
            halo_in += 4 * PHASE_WIDTH * self.cell
        if self.erased:  # restore_sites' low-pass
            halo_in += 4 * SITE_LOWPASS * self.site_nn
        halo_scaled = WINDOW + self.step + 40 + 4 * max(0.0, (ratio - 1) / 2)
        return math.ceil(halo_in + halo_scaled * inverse) + 4


def denoise(
    image,
    *,
    pixel_size: float | None = None,
    step: int | None = None,
    model=None,
    return_uncertainty: bool = False,
    blend: str = DEFAULT_BLEND,
    lattice_constant: float | None = REFERENCE_LATTICE_CONSTANT,
    batch_size: int | None = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    residual: str | float = "auto",
    contrast: str = "auto",
    return_mask: bool = False,
    return_report: bool = False,
):
    """Denoise an atomic-resolution STEM image, a frame series or a Dask array.

    1. **Normalisation.** The 0.1 and 99.9 percentiles of the data (a strided subsample of at
       most ~1 Mpx) are mapped to 0 and 1, so raw counts on an offset and any dose look alike;
       values outside ``[-1, 2]`` (hot and dead pixels, spikes) take the median of their in-range
       5 × 5 neighbours (the input array is not changed); this is undone at the end. A
       dark-column image (ABF, BF; ``contrast``) is mapped the other way round, so the network
       always sees bright columns, and is returned in its own contrast.
    2. **Sampling match.** The lattice is measured from the Fourier transform
       (:func:`stem_ae.measure_lattice`, once per series on up to 4 frames; with ``pixel_size``
       only plane spacings of 1–20 Å are searched, and when no single 2-D lattice stands out
       there the radial power profile gives the spacing) and the image is resampled
       (pixel-centre convention, anti-aliased, cubic) so that its spacings land in the range the
       model was trained on (:func:`_scale_factor`, at most :data:`MAX_UPSAMPLING`×); no
       resampling within 2 % of the target.
    3. **Reconstruction** with :func:`stem_ae.reconstruct` (floating window, reflected borders).
    4. Resampling back to exactly the input shape.
    5. **Correction** (``residual="auto"``, the default), planned once on the central crop of
       the (first) frame (:mod:`stem_ae._residual`, :mod:`stem_ae._crystal`):

       * the *crystal map*: the peak contrast of the local power spectrum, tile by tile, tells
         a lattice from amorphous material, vacuum or noise, whatever the grain's orientation;
       * the *noise spectrum*, from the residual ``image − output`` on the crystal's tiles with
         the lattice reflections masked (Welch): valid for the correlated noise of real scans
         (scan-line streaks, interpolated frame averages, detector afterglow);
       * the network's *excess error*, SURE's estimate of its mean squared error over the noise
         variance: the residual low-passed by a Gaussian (bandwidth by SURE under that
         spectrum) is added back with a weight rising from 0 at an excess of 1 to 1 at 2 for
         the dense ``general``, from 0.25 to 0.5 for the convolutional ``general_conv``, which
         has no error floor (:data:`EXCESS_RANGES`). Where that spectrum is white at high
         frequencies (:data:`WHITE_TOLERANCE`; simulated Poisson noise, not the streaked,
         frame-averaged or afterglow noise of real scans), SURE's risk is unbiased and the
         weight is 1 (not at spacings under 8 px, nor for dark columns). On noisy real images
         (dense excess 0.1–0.5, convolutional 0.0–0.2) nothing is added: any data put back
         costs column precision there; at a high dose the data win. For a dense network with
         an excess of 3 or more (:data:`WHITE_EXCESS`), or under white noise, the bandwidth is
         SURE's under the white noise estimate (fourth-order differences): the spectrum,
         measured on the residual, holds the network's error as well (3× the noise at 64
         counts/px) and over-smoothed the data put back (up to −5 dB on simulated scenes at 64
         counts/px);
       * a one-sided local consistency test: where the network is brighter than the data by
         more than 4 noise standard deviations of a column-sized average minus its surround
         (twice as wide; correlated noise included), the data are put back — a column painted
         where the data show none; a smooth offset between network and data is not a column;
       * a sublattice the network erased: the data and the output are folded into the unit cell
         (hundreds of cells average the noise out); a motif column that the data's cell
         average shows (at 5σ of its noise) and the output's keeps at less than half its
         relative height (the S2 columns of a noisy MoS2 image) gets the data back at each of
         its sites (:func:`stem_ae._crystal.restore_sites`): a column where the data show one,
         low-passed noise at a vacancy;
       * outside the crystal the output goes smoothly over to the data filtered by a Gaussian
         whose bandwidth SURE chooses there: nothing the network drew on amorphous material or
         vacuum is kept. Under white noise the correction SURE chose over the whole image
         already puts the data back there, and that is kept instead (+1.1 to +4.2 dB on the
         mixed scenes of ``benchmarks/quality.py``).

       ``residual="periodic"`` is ``"auto"`` plus the network's error that repeats in every
       unit cell: the residual ``image − output`` averaged over all cells of the crystal
       (:func:`stem_ae._crystal.periodic_part`; each pixel's place in its cell followed by
       geometric phase analysis of the output, :func:`stem_ae._crystal.local_fractions`, so
       strain, scan distortion and faults are followed) is added with the weight the gate
       leaves, 1 − the residual's; a spot the consistency test flags in either output is
       corrected from the network's own, so nothing the fold adds at a vacancy stays. Hundreds
       of cells average the noise out of that error, so it lifts the dense network's floor
       (+3–4 dB at 1–4 counts/px on white Poisson, weak sublattices kept: the S2 columns of the
       real MoS2 image) but costs 0.01–0.04 px of lattice-fit precision on the precise real
       images (``benchmarks/results/real.md``): an option, not the default.
       ``residual="sure"`` is the earlier default (white-noise SURE correction, always, and a
       two-sided consistency test at 2σ); ``"none"`` the network alone.
    6. Undoing the normalisation.

    Parameters
    ----------
    image : ndarray, dask.array.Array or hyperspy Signal2D, shape (H, W) or (frames, H, W)
        Any real dtype and intensity units. A list of equally shaped frames is stacked.
        Images larger than 4096² px are processed in overlapping tiles (bounded memory).
        A HyperSpy ``Signal2D`` (an image, or a stack with one navigation axis) gives
        ``Signal2D`` results (see Returns); its calibration is the default ``pixel_size``.
    pixel_size : float, optional
        Calibration, Å/px; only cross-checked against the measured lattice (a
        :class:`CalibrationWarning` when no measured spacing is within 10 % of
        ``lattice_constant``); the sampling match always uses the measured lattice.
    step : int, optional
        Window step, px (1..28) at the model's sampling. None: the model's default
        (:func:`default_step`): 3 for a dense model such as the shipped ``general`` (1.4–1.6×
        faster than step 2 at 1024², within 0.03 dB per dose on simulated scenes; on the real
        images the same lattice-fit RMS on three, 0.02 px worse on MoS2, 0.33 px better on the
        Au crop: :data:`DEFAULT_STEPS`), 2 for a convolutional model such as ``general_conv``
        (equivariant to shifts of 4 px: step 2 runs its layers four times over the image, step 4
        once, 0.1–0.3 dB lower and about a quarter faster).
    model : None, str, path or keras.Model
        None: the shipped ``"general"`` model, or for a dark-column image (``contrast``) the
        convolutional ``"general_conv"`` (:data:`DARK_MODEL`); a name (``"general"``,
        ``"general_conv"``, ``"paper"``), a model folder or a loaded model is used as given.
        To measure displacements (at a defect, an interface) on a noisy image, prefer
        ``"general_conv"``: where the gate keeps the dense network's output, its lattice prior
        shrinks a real local displacement to about half (0.55–0.58 of it kept on the noisy real
        images of ``benchmarks/real.py``, "shift kept"; ``general_conv`` 0.80–0.85).
    return_uncertainty : bool
        Also return the per-pixel spread (weighted standard deviation) of the overlapping window
        predictions, in the image's units.
    blend : {"mean", "hann"}
        Recombination weights, see :func:`blend_weights`.
    lattice_constant : float or None
        Lattice parameter (Å) that the cross-check expects one of the two measured primitive
        spacings to match; default 3.905 Å (SrTiO3 and pseudo-cubic perovskites). None switches
        the check off.
    batch_size : int, optional
        Windows per chunk, bounds memory. Default: 8192 for an in-memory image or series (the
        fastest here) and :data:`TILE_BATCH_SIZE` (4096) for the tiles of a large image or a
        Dask array, where memory is what counts (−0.2 GB for 4 % more time).
    workers : int, optional
        Threads: frames of an in-memory series are denoised ``workers`` at a time (default one
        at a time; each already uses all cores for its matrix products), the ``map_overlap``
        tiles of a large in-memory image ``workers`` at a time (default one, for the same
        reason: on 2 cores a second worker gained 2 % at 8192² px for +0.14 GiB), each tile's
        culled Dask graph computed on its own so that at most ``workers`` tiles are in memory.
        A Dask input stays lazy and runs on whatever scheduler computes it (threads by default,
        or a ``dask.distributed`` client).
    progress : callable (done, total) -> None, optional
        Called as windows (single in-memory image) or frames/tiles are finished.

    residual : {"auto", "periodic", "sure", "none"} or float
        Correction (step 5): ``"auto"`` (default) as above, ``"periodic"`` that plus the
        network's error averaged over the unit cells, ``"sure"`` the white-noise SURE
        correction, ``"none"`` the auto-encoder's output alone, a number ≥ 0 fixes the
        bandwidth of the low-passed residual in px.
    contrast : {"auto", "bright", "dark"}
        Column contrast: ``"bright"`` (HAADF, ADF), ``"dark"`` (ABF, BF) or ``"auto"``: dark
        when the image folded into its unit cell dips below its median more than it rises
        (:func:`detect_contrast`). A dark image is denoised as its inverse, by ``general_conv``
        when ``model`` is None.
    return_mask : bool
        Also return the crystal map, float32 in [0, 1] (1: a lattice; 0: amorphous, vacuum,
        noise), same shape as ``image``; all ones when the whole image is taken as one crystal
        or ``residual`` is not ``"auto"`` or ``"periodic"``.
    return_report : bool
        Also return, last, a JSON-ready dict of what the correction (step 5) measured and
        decided: ``noise`` (``"white"``, ``"correlated"`` or None when not judged) and its
        ``whiteness``, the network's ``excess_error`` over the noise, the ``reason`` (``"white
        noise"``, or why the gate holds: ``"correlated noise"``, ``"coarse sampling"``, ``"dark
        columns"``; None unless ``"auto"``/``"periodic"``) and ``rule`` that set
        ``data_weight`` (the fraction of the low-passed residual put back) and
        ``bandwidth_px`` (its Gaussian, input px), ``outside_crystal_sigma_px`` (0: the whole
        image a crystal), ``erased_motif_columns`` (sublattices the data were put back for),
        ``periodic_fold``, and ``contrast``, ``step``, ``resampling_factor``. The command line
        and a ``Signal2D`` result keep it in the record of processing (``correction``).

    Returns
    -------
    denoised : ndarray or dask.array.Array, float32, same shape as ``image``
        In the units of ``image``; a Dask input gives a lazy Dask array.
    spread : same type and shape, float32
        Only with ``return_uncertainty``.
    mask : same type and shape, float32
        Only with ``return_mask``.
    report : dict
        Only with ``return_report``, last.

    For a ``Signal2D`` input the arrays are ``Signal2D`` with its axes (scale, units, offset),
    metadata and original metadata, and the record of processing
    (:func:`stem_ae.io.processing_record`, with the report as ``correction``) under
    ``metadata.Processing.stem_ae``.

    Raises
    ------
    ValueError
        NaN/Inf (for Dask input: when computed), not 2-D or 3-D, frames of different shapes, a
        step outside 1..28, no lattice (vacuum, amorphous, constant), too small once resampled.
    TypeError
        A non-real dtype, or a model that is not one.

    Examples
    --------
    >>> from stem_ae.simulate import simulate_scene
    >>> scene = simulate_scene((128, 128), pixel_size=0.3, dose=20.0, rng=0)
    >>> denoised, spread = denoise(scene.noisy, return_uncertainty=True)
    >>> denoised.shape, denoised.dtype, bool(spread.min() >= 0)
    ((128, 128), dtype('float32'), True)
    """

    from stem_ae import _hyperspy

    signal = None
    if _hyperspy.is_signal2d(image):  # HyperSpy in, HyperSpy out
        signal, (image, signal_info) = image, _hyperspy.from_signal(image)
        if pixel_size is None and signal_info["pixel_size"] is not None:
            pixel_size = signal_info["pixel_size"][1]
    image, lazy = _check_input(image)
    by_contrast = model is None  # the default model: chosen again once the contrast is known
    model = _resolve_model(model)
    requested_step, step = step, _resolve_step(step, model)
    check_blend(blend)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    residual = _check_residual(residual)
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast={contrast!r} is not one of {CONTRASTS}; use 'auto'.")

    tiled = lazy or (image.ndim == 2 and image.size > LARGE_IMAGE)
    plan = _measure(image, lazy, model, step, blend, pixel_size, lattice_constant, contrast)
    if by_contrast and plan.dark:  # dark columns: the model that does not paint the rims
        from stem_ae.model import get_config

        dense, model = model, _resolve_model(default_model("dark"))
        step = _resolve_step(requested_step, model)
        if get_config(model).spacing_range != get_config(dense).spacing_range:
            plan = _measure(image, lazy, model, step, blend, pixel_size, lattice_constant, "dark")
        else:
            plan = replace(plan, step=step)
    # the pilot too runs at the tiles' batch size: oneDNN keeps per-thread buffers as large as
    # the largest chunk
    plan = replace(plan, batch_size=batch_size or (TILE_BATCH_SIZE if tiled else BATCH_SIZE))
    runner = Runner(model)
    plan, pilot = _plan_correction(
        image, lazy, plan, runner, residual, return_uncertainty, progress
    )

    if pilot is not None:
        denoised, spread = pilot
    else:
        block = functools.partial(
            _denoise_block, plan=plan, runner=runner, uncertainty=return_uncertainty
        )
        if lazy:
            denoised, spread = run_dask(image, block, plan.depth, return_uncertainty)
        elif tiled:
            denoised, spread = run_tiled(
                image, block, plan.depth, return_uncertainty, workers, progress
            )
        elif image.ndim == 2:
            denoised, spread = block(image, (0, 0), progress=progress)
        else:
            denoised, spread = run_frames(image, block, return_uncertainty, workers, progress)
    report = _report(plan, residual)
    mask = _crystal_mask(image, lazy, plan) if return_mask else None
    if signal is not None:
        from stem_ae.io import processing_record

        record = processing_record(
            model=model,
            step=step,
            contrast="dark" if plan.dark else "bright",
            residual=residual,
            lattice=plan.lattice,
            resampling_factor=plan.scaled[-1] / plan.shape[-1],
            pixel_size=signal_info["pixel_size"],
            correction=report,
        )
        result = _hyperspy.signal_result(
            signal, denoised, spread if return_uncertainty else None, record=record
        )
        outputs = result if isinstance(result, tuple) else (result,)
        if return_mask:
            map_record = {**record, "output": "crystal map (1 lattice, 0 not)"}
            outputs += (_hyperspy.to_signal(signal, mask, map_record, output="crystal map"),)
    else:
        outputs = (denoised, spread) if return_uncertainty else (denoised,)
        if return_mask:
            outputs += (mask,)
    if return_report:
        outputs += (report,)
    return outputs if len(outputs) > 1 else outputs[0]


def _crystal_mask(image, lazy, plan):
    """The crystal map (0 = not a lattice, 1 = a lattice) of every frame, float32, lazy if Dask."""

    def one(frame, origin=(0, 0)):
        if not plan.partial_crystal:  # the pilot found the whole image a crystal
            return np.ones(frame.shape[-2:], np.float32)
        return crystal_map(
            _normalise(frame, plan),
            plan.cell,
            reciprocal=plan.reciprocal,
            origin=origin,
            localize=True,
        )

    if lazy:
        depth = {
            image.ndim - 2: 2 * tile_side(plan.cell),
            image.ndim - 1: 2 * tile_side(plan.cell),
        }

        def block(data, block_info=None):
            location = block_info[0]["array-location"][-2:]
            origin = tuple(max(0, start - depth[image.ndim - 2]) for start, _ in location)
            frames = data.reshape(-1, *data.shape[-2:])
            return np.stack([one(f, origin) for f in frames]).reshape(data.shape)

        return image.map_overlap(block, depth=depth, boundary="none", dtype=np.float32)
    if image.ndim == 2:
        return one(image)
    return np.stack([one(frame) for frame in image])


# --------------------------------------------------------------------------------------------
# step 1: check and stack the input


def _check_input(image):
    """``(image, lazy)``: an ndarray (H, W) or (frames, H, W), or a Dask array left lazy."""
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover - dask is a dependency
        da = None
    lazy = da is not None and isinstance(image, da.Array)
    if isinstance(image, (list, tuple)):
        shapes = {np.shape(frame) for frame in image}
        if len(shapes) != 1:
            raise ValueError(
                f"the frames have different shapes {sorted(shapes)}; a series must have frames "
                "of one shape (denoise them one by one otherwise)."
            )
        image = np.stack([np.asarray(frame) for frame in image])
    if not lazy:
        image = np.asarray(image)
    if image.dtype.kind not in "biuf":
        raise TypeError(
            f"image has dtype {image.dtype}; give a real-valued (integer or float) array."
        )
    if image.ndim not in (2, 3):
        raise ValueError(
            f"image has shape {image.shape}; expected (H, W) or a series (frames, H, W)."
        )
    if min(image.shape[-2:]) < WINDOW or (image.ndim == 3 and image.shape[0] == 0):
        raise ValueError(f"image of shape {image.shape} is smaller than the {WINDOW} px window.")
    if not lazy and not np.all(np.isfinite(image)):
        raise ValueError("image contains NaN or Inf; replace or mask them before denoising.")
    return image, lazy


_SHIPPED: dict = {}


def _resolve_model(model):
    """A Keras model from None (:func:`default_model` of bright columns), a name/path, or a
    model."""
    if model is None:
        model = default_model("bright")
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        from stem_ae.model import load_model

        key = str(model)
        if key not in _SHIPPED:
            _SHIPPED[key] = load_model(model)
        return _SHIPPED[key]
    if not hasattr(model, "input_shape"):
        raise TypeError(
            f"model={model!r} is not a Keras model, a shipped model name or a model folder; "
            "use None (the shipped 'general' model), 'paper', 'general' or a path."
        )
    return model


def _subsample(shape: tuple, limit: int = 1_000_000) -> tuple[slice, ...]:
    """Strided slices picking at most about ``limit`` pixels (up to 8 frames of a series)."""
    lead = () if len(shape) == 2 else (slice(None, None, max(1, shape[0] // 8)),)
    frames = 1 if len(shape) == 2 else len(range(0, shape[0], lead[0].step))
    stride = max(1, math.ceil(math.sqrt(frames * shape[-2] * shape[-1] / limit)))
    return (*lead, slice(None, None, stride), slice(None, None, stride))


def _lattice_crop(shape: tuple, frames: int = 4) -> tuple[slice, ...]:
    """Central square (at most LATTICE_CROP px) of up to ``frames`` evenly spaced frames."""
    side = min(min(shape[-2:]), LATTICE_CROP)
    y0, x0 = (shape[-2] - side) // 2, (shape[-1] - side) // 2
    crop = (slice(y0, y0 + side), slice(x0, x0 + side))
    if len(shape) == 2:
        return crop
    return (slice(None, None, max(1, shape[0] // frames)), *crop)


# --------------------------------------------------------------------------------------------
# step 2: measure


def _measure(
    image, lazy, model, step, blend, pixel_size, lattice_constant, contrast="bright"
) -> _Plan:
    """Normalisation, lattice, contrast and scale factor, measured once for an image or series."""
    from stem_ae.model import get_config

    crop = image[_lattice_crop(image.shape)]
    sample = image[_subsample(image.shape)]
    if lazy:
        import dask

        crop, sample = dask.compute(crop, sample)
    crop, sample = np.asarray(crop, np.float64), np.asarray(sample, np.float64)
    if not (np.all(np.isfinite(sample)) and np.all(np.isfinite(crop))):
        raise ValueError("image contains NaN or Inf; replace or mask them before denoising.")
    low, high = (float(v) for v in np.percentile(sample, NORMALIZATION_PERCENTILES))
    if not high > low:
        low, high = float(sample.min()), float(sample.max())
    if not high > low:
        raise ValueError("the image is constant: there is no lattice to denoise.")
    frames = [
        _replace_outliers((f - low) / (high - low)) for f in crop.reshape(-1, *crop.shape[-2:])
    ]
    # the calibration bounds the search to spacings a lattice of atom columns can have; the
    # lattice constant stays a cross-check only (as a prior it made the mixed crystal/amorphous
    # scenes of tests/test_denoising.py read a spurious 46 × 17 px cell)
    lattice = measure_lattice_or_spacing(frames, pixel_size=pixel_size)
    if pixel_size is not None and not lattice.radial_only:
        check_calibration(lattice, pixel_size, lattice_constant)
    if contrast == "auto":
        contrast = "bright" if lattice.radial_only else detect_contrast(frames[0], lattice)
    dominant = lattice.sampling_spacings(dark=contrast == "dark")[0]
    spacing_low, spacing_high = get_config(model).spacing_range
    shape = image.shape[-2:]
    factor = _sampling_factor(lattice, model, contrast)
    scaled = tuple(max(1, round(n * factor)) for n in shape)
    if min(scaled) < WINDOW:
        raise ValueError(
            f"the image ({shape[0]}×{shape[1]} px, lattice spacing "
            f"{dominant:.1f} px) is {scaled[0]}×{scaled[1]} px at the model's "
            f"sampling ({spacing_low:.1f}–{spacing_high:.1f} px), smaller than the {WINDOW} px "
            "window; give a larger field of view."
        )
    return _Plan(
        tuple(shape),
        scaled,
        low,
        high,
        step,
        blend,
        BATCH_SIZE,
        spacing=dominant,
        lattice=lattice,
        dark=contrast == "dark",
    )


SAMPLING_POSITION = {"dense": 0.5, "conv": 1.0}
"""Where ``denoise`` puts a bright-column lattice in the model's training range of spacings
(``AEConfig.spacing_range``, 6–10 px for ``general`` and ``general_conv``), per model
architecture: 0 at its lowest spacing, 1 at its highest, on a log scale (:func:`_scale_factor`).
Dark-column images go to the centre, 0.5, whatever the model.

* ``"dense"``: 0.5, the geometric centre (7.75 px). At the top (10 px) the dense ``general``
  gains 1.2–2.3 dB on the simulated scenes of ``benchmarks/quality.py`` and keeps more of a real
  displacement (shift kept 0.70–0.74 instead of 0.55–0.58 on the noisy real images), but its
  columns fit the lattice of the real images worse (Tecnai 0.95 → 1.04 px, MoS2 0.87 → 0.94,
  Au 3.37 → 3.98): real images being the yardstick, it stays at the centre.
* ``"conv"``: 1.0, the top (10 px): the network sees each column on more pixels instead of
  through the anti-alias filter of a stronger reduction. On the white-Poisson scenes (0.1 / 0.2 /
  0.3 Å/px, 1–64 counts/px) ``general_conv`` gains 0.8–1.0 / 0.4–0.8 / −0.4 to +0.7 dB and
  places the columns as well or better; on the real images its lattice fit is the same or better
  (Tecnai 1.14 → 1.13 px, MoS2 1.10 → 1.07, Au 3.91 → 3.62), shift kept 0.88 / 0.83 / 0.86 /
  0.94. On dark (ABF) scenes the top makes the network paint the plateau between the rims (40 %
  of the columns invented at 4 counts/px instead of 22; raw 28), hence the centre there
  (``benchmarks/experiments/sampling_target.py``).
"""


def _sampling_factor(lattice: LatticeEstimate, model, contrast: str) -> float:
    """The magnification ``denoise`` applies to bring ``lattice`` to ``model``'s sampling.

    Dark columns: the rims make the second order the strongest reflection, so the sampling
    follows the columns' own repeat (:meth:`LatticeEstimate.sampling_spacings`).
    """
    from stem_ae.model import get_config

    config = get_config(model)
    dark = contrast == "dark"
    position = 0.5 if dark else SAMPLING_POSITION.get(config.architecture, 0.5)
    return _scale_factor(*lattice.sampling_spacings(dark=dark), *config.spacing_range, position)


def _scale_factor(
    dominant: float, second: float, low: float, high: float, position: float = 0.5
) -> float:
    """Magnification that brings the lattice to the model's training spacings.

    The geometric mean of the dominant spacing and of the strongest non-collinear one (equal for
    square and hexagonal lattices; px) goes to ``low · (high / low) ** position`` (0.5: the
    geometric centre of ``[low, high]``; :data:`SAMPLING_POSITION`); the factor is then clamped
    so that the dominant spacing itself lies inside ``[low, high]``, and never magnifies more
    than :data:`MAX_UPSAMPLING` (a 2.5 px spacing, the shortest :mod:`stem_ae.lattice` accepts,
    reaches the 10 px top of the training range at 4×).
    """
    reference = math.sqrt(dominant * second)
    target = math.sqrt(low * high) if position == 0.5 else low * (high / low) ** position
    factor = target / reference
    factor = min(max(factor, low / dominant), high / dominant, MAX_UPSAMPLING)
    if abs(factor - 1.0) <= RESAMPLE_TOLERANCE:
        return 1.0
    return factor


def detect_contrast(image: np.ndarray, lattice: LatticeEstimate | None = None) -> str:
    """``"dark"`` for a dark-column image (ABF, BF), else ``"bright"`` (HAADF, ADF).

    The image is folded into its unit cell (:func:`stem_ae._crystal.cell_asymmetry`): bright
    columns rise far above the cell's median, dark ones fall below it. What ``denoise`` does with
    ``contrast="auto"``.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        A lattice image, any units.
    lattice : LatticeEstimate, optional
        Its lattice; measured when not given.

    Returns
    -------
    str
        ``"bright"`` or ``"dark"``.

    Examples
    --------
    >>> from stem_ae.simulate import simulate_scene
    >>> abf = simulate_scene((128, 128), pixel_size=0.15, dose=50.0, contrast="dark", rng=0)
    >>> detect_contrast(abf.noisy), detect_contrast(-abf.noisy)
    ('dark', 'bright')
    """
    if lattice is None:
        lattice = measure_lattice(np.asarray(image, np.float64))
    asymmetry = cell_asymmetry(image, lattice.reciprocal)
    return "dark" if asymmetry < DARK_ASYMMETRY else "bright"


# --------------------------------------------------------------------------------------------
# step 3: plan the residual correction


CONTRASTS = ("auto", "bright", "dark")
"""``contrast``: ``"bright"`` columns (HAADF, ADF), ``"dark"`` columns (ABF, BF: denoised as the
inverse image and returned in their own contrast), or ``"auto"``: dark when the unit-cell average
of the image dips more than it rises (:func:`stem_ae._crystal.cell_asymmetry`)."""

DARK_MODEL = "general_conv"
"""What ``model=None`` uses for a dark-column image. On the simulated ABF scenes of
``benchmarks/quality.py`` (0.2 Å/px), sampled at the columns' own spacing
(:meth:`stem_ae.lattice.LatticeEstimate.sampling_spacings`), it invents 22, 11 and 4 % of the
columns at 4, 16 and 64 counts/px (raw 28, 16 and 12 %) and the dense ``general`` 21, 5 and 4 %,
but the dense network's position error is larger (29.0, 14.5 and 6.0 pm against 23.3, 10.8 and
5.0) and its PSNR 0.4–4.7 dB lower, with more vacancies filled (42–60 % against 18–35 %). Sampled
by the rims' stronger second order, as before, the dense network painted the plateau between
the dark rims as columns (68 and 90 % invented at 16 and 64 counts/px)."""


DEFAULT_STEPS = {"dense": 3, "conv": 2}
"""The window step (px, at the model's sampling) of ``step=None``, per model architecture.

* ``"dense"`` (``general``, ``paper``): 3, the paper's upper step. Against step 2 it runs
  2.25× fewer windows: ``denoise`` on 1024² takes 8.3–8.8 s instead of 12.3–13.1 s on a 2-core
  Xeon (``benchmarks/denoise_speed.py``, side by side). On the simulated scenes of
  ``benchmarks/quality.py`` (``general``, default pipeline) the PSNR moves by −0.02 to +0.03 dB
  per dose (−0.35 to +0.49 per scene), the position error by +0.05, +0.06, 0 and +0.01 pm at 1, 4,
  16 and 64 counts/px, and 0.6 % of the vacancies are filled at 1 count/px (0 % at step 2). On
  the real images of ``benchmarks/real.py`` the lattice-fit RMS is the same on Tecnai, REBCO and
  the [110] ADF image, lower on the Au crop (3.70 → 3.37 px) and higher on MoS2 (0.85 → 0.87
  px); the ABF image is denoised by ``general_conv``.
* ``"conv"`` (``general_conv``): 2. Step 3 is slower than step 2 for a network equivariant to
  4-px shifts (its layers then run 16 times over the image, not 4) and no better.
"""


def _resolve_step(step, model) -> int:
    """``step``, checked against the model's window, or the model's :func:`default_step`."""
    return check_step(
        default_step(model) if step is None else step, model_window_and_normalization(model)[0]
    )


def default_step(model) -> int:
    """The window step that ``denoise(step=None)`` uses with ``model`` (:data:`DEFAULT_STEPS`).

    ``model``: a loaded model, a shipped model's name or a model folder (None: ``"general"``).
    Models of another architecture get step 2.

    >>> default_step("general"), default_step("general_conv")
    (3, 2)
    """
    from stem_ae.model import get_config

    return DEFAULT_STEPS.get(get_config(_resolve_model(model)).architecture, 2)


def default_model(contrast: str) -> str:
    """The shipped model that ``model=None`` stands for: :data:`DARK_MODEL` for ``"dark"``
    columns, else ``"general"`` (what the CLI and the napari widget also take by default)."""
    return DARK_MODEL if contrast == "dark" else "general"


WHITE_EXCESS = 3.0
"""``residual="auto"`` with a dense network: from this excess error (in noise variances, as the
spectrum measures it) the bandwidth of the residual put back is SURE's under the white noise
estimate, not under the spectrum. At such a high dose the spectrum, measured on the residual
``image − output``, holds the network's error floor too (3× the true noise at 64 counts/px on
simulated scenes), and SURE under it over-smoothed the data put back: 1.1 dB lost on average at 64
counts/px, up to 5 dB in one scene (``benchmarks/results/quality.md``). Below it (excess 1.8–2.4 on
the correlated-noise scenes at 16 counts/px) the white estimate would put correlated noise back. The
convolutional network, with no error floor, keeps the spectrum (the white width cost it 0.5–3 dB
there). On the real images of ``benchmarks/real.py`` the dense excess is 0.1–0.5 (noisy) and 2.5
(the low-noise [110] ADF image): none reaches it."""

WHITE_TOLERANCE = 1.8
"""``residual="auto"``: a noise spectrum whose power ratios at high frequencies all lie within
this factor of 1 (:func:`stem_ae._residual.spectrum_whiteness`) is white, and then SURE decides
alone (weight 1: :data:`EXCESS_RANGES`' gate is off). SURE's risk is unbiased for white noise;
under correlated noise the spectrum of ``image − output`` is no reliable noise measure, and the
gate keeps the network's output. Measured on the residual of ``denoise``: the simulated
white-Poisson scenes of ``benchmarks/quality.py`` at 1–8 counts/px, 36 scenes, 1.05–1.57 (the
network's error adds a little); scan streaks at 1–4 counts/px (buried in the Poisson noise)
1.06–1.10; frame averages at 1–16 counts/px 1.95–2.71, afterglow 7.6–7.9; the real images of
``benchmarks/real.py``: Tecnai (streaks) 9.0, Se-MoS2 2.6, Au 2.5 (row offsets and afterglow
along the fast scan), the [110] ADF 1.63, the [110] ABF 1.27, REBCO 1.38.

Not where the lattice spacing is under 8 px (coarse: the data put back cost position precision,
0.4 Å/px at 1 count/px 5.3 → 6.7 pm in ``benchmarks/coarse.py``; REBCO is such an image), nor
for dark columns (ABF: with the dense network the columns invented rose above the raw image's,
3.7 → 15.9 % at 64 counts/px). What it bought, dense ``general`` on the white-Poisson scenes of
``benchmarks/quality.py`` at 1 / 4 / 16 / 64 counts/px: 24.33 / 24.89 / 33.70 / 37.45 →
27.37 / 31.02 / 34.39 / 38.17 dB, above the oracle Gaussian at every dose (26.28 / 29.85 /
33.70 / 37.43); position error 3.07 / 1.98 / 1.01 / 0.56 → 3.65 / 1.89 / 1.01 / 0.51 pm (the
network's lattice prior had pulled the columns below the Cramér–Rao bound of 3.89 pm at 1
count/px); every score of ``benchmarks/real.py`` unchanged.

Under white noise the dense network's bandwidth also comes from the white estimate
(:data:`WHITE_EXCESS`: the spectrum, measured on the residual, holds the network's error too), and
outside the crystal the data come back by that correction, not by a Gaussian chosen under the
spectrum. That bought, on the white-Poisson scenes at 1 / 4 / 16 / 64 counts/px, 27.37 / 31.02 /
34.39 / 38.17 → 27.24 / 31.08 / 35.03 / 38.88 dB and a position error of 3.65 → 3.17 pm at 1
count/px (vacancies filled 0 → 0.6 %); on the mixed scenes (a crystal, a second grain, amorphous
blobs, vacuum) +1.1 / +1.6 / +3.2 / +4.2 dB (``general_conv``, which keeps the spectrum's bandwidth:
+1.1 / +1.3 / +2.3 / +1.1 dB); every score of ``benchmarks/real.py`` unchanged."""

RESIDUAL_MODES = ("auto", "periodic", "sure", "none")
"""Named residual corrections: ``"auto"`` chooses the bandwidth by SURE under the noise spectrum
measured in the image (correlated noise), ``"periodic"`` is ``"auto"`` plus the network's error
averaged over the unit cells (:func:`stem_ae._crystal.periodic_part`), ``"sure"`` chooses it
under white noise (the earlier default), ``"none"`` keeps the auto-encoder's output."""

AUTO_MODES = ("auto", "periodic")
"""The modes planned on the noise spectrum, with the crystal map and the one-sided test."""


def _excess_weight(excess: float, architecture: str) -> float:
    """Weight of the low-passed residual for a network excess error (:data:`EXCESS_RANGES`)."""
    low, high = EXCESS_RANGES[architecture]
    return float(np.clip((excess - low) / (high - low), 0.0, 1.0))


def _check_residual(residual) -> str | float:
    """A named mode of :data:`RESIDUAL_MODES`, or a fixed bandwidth (px) as a float."""
    if isinstance(residual, str):
        if residual in RESIDUAL_MODES:
            return residual
    elif (
        isinstance(residual, (int, float, np.integer, np.floating))
        and not isinstance(residual, bool)
        and np.isfinite(residual)
        and residual >= 0
    ):
        return float(residual)
    raise ValueError(
        f"residual={residual!r} is not one of {RESIDUAL_MODES} or a bandwidth >= 0 px; "
        "use 'auto' (the default)."
    )


def _noise_kind(whiteness: float) -> str | None:
    """``"white"`` or ``"correlated"`` by :data:`WHITE_TOLERANCE`; None when not judged."""
    if not np.isfinite(whiteness):
        return None
    return "white" if whiteness <= WHITE_TOLERANCE else "correlated"


def _gate_reason(whiteness: float, coarse: bool, dark: bool) -> str:
    """What sets the weight of the data put back under ``residual="auto"``: ``"white noise"``
    (SURE alone, weight 1) or why the gate holds instead (:data:`WHITE_TOLERANCE`)."""
    noise = _noise_kind(whiteness)
    if noise != "white":
        return "correlated noise" if noise else "noise not judged (too few spectrum bins)"
    if dark:
        return "dark columns"
    return "coarse sampling" if coarse else "white noise"


def _report(plan: _Plan, residual) -> dict:
    """``denoise(return_report=True)``: what the correction (step 5) measured and decided."""

    def number(value):
        return float(value) if np.isfinite(value) else None

    if residual in AUTO_MODES:
        rule = (
            "SURE alone puts the data back"
            if plan.gate == "white noise"
            else "the network's excess error over the noise gates the data"
        )
    else:
        rule = {
            "none": "the network's output alone",
            "sure": "white-noise SURE, always on",
        }.get(residual, "a fixed bandwidth")
    auto = residual in AUTO_MODES
    return {
        "residual": residual,
        "contrast": "dark" if plan.dark else "bright",
        "step": plan.step,
        "resampling_factor": plan.scaled[-1] / plan.shape[-1],
        "noise": _noise_kind(plan.whiteness),
        "whiteness": number(plan.whiteness),
        "excess_error": number(plan.excess),
        "reason": plan.gate if auto else None,
        "rule": rule,
        "data_weight": float(plan.residual_weight) if plan.residual_sigma > 0 else 0.0,
        "bandwidth_px": float(plan.residual_sigma),
        "outside_crystal_sigma_px": float(plan.smooth_sigma) if auto else None,
        "erased_motif_columns": len(plan.erased),
        "periodic_fold": plan.periodic is not None,
    }


def _plan_correction(image, lazy, plan, runner, residual, uncertainty, progress):
    """``(plan, pilot)``: the plan with the residual correction's bandwidth and noise variance.

    A fixed bandwidth (or ``"none"``) is taken as given. Otherwise one frame's central crop (all
    of a 2-D image up to 1024² px) goes through the auto-encoder, SURE chooses the bandwidth on
    it and the noise variance of the consistency test is measured; every tile and frame is then
    corrected alike. ``pilot`` is that crop's result ``(denoised, spread)`` when it is the whole
    image (then there is nothing left to run), else None.
    """
    if residual == "none":
        return replace(plan, residual_sigma=0.0), None
    if not isinstance(residual, str):
        return replace(plan, residual_sigma=residual), None
    region = _lattice_crop(image.shape[-2:])
    frame = image[(0, *region)] if image.ndim == 3 else image[region]
    frame = np.asarray(frame.compute() if lazy else frame, np.float64)
    origin = (region[0].start, region[1].start)
    normalized = _normalise(frame, plan)
    estimate, spread = _network(normalized, origin, plan, runner, uncertainty, progress)
    floor = RESIDUAL_FLOOR * plan.spacing
    sigmas = tuple(s for s in RESIDUAL_SIGMAS if s == 0 or s >= floor)
    width = CONSISTENCY_WIDTH * plan.spacing
    weight, smooth, strength, fractions = 1.0, 0.0, None, None
    whiteness, gate = float("nan"), ""
    # lattice spacings under 8 px: a dense network's painted column stands ~3σ above the data
    # at 1 count/px (the peak bar), and SURE's white rule lost precision there (and PSNR at
    # 1 count/px)
    coarse = 0.5 * width < UNSUPPORTED_MIN_LOWPASS
    erased, site_nn, partial = np.empty((0, 2)), 0.0, False
    if residual in AUTO_MODES:
        # the crystal's tiles alone tell the noise and the network's error: on amorphous parts
        # the network's swirls would count as noise there
        strength = crystal_map(normalized, plan.cell, reciprocal=plan.reciprocal, origin=origin)
        crystal = strength >= 0.5
        partial = not crystal.all()
        spectrum = noise_spectrum(normalized - estimate, plan.reciprocal, where=crystal)
        residual_in_crystal = (normalized - estimate)[crystal] if crystal.any() else None
        excess = network_excess(
            normalized - estimate if residual_in_crystal is None else residual_in_crystal,
            spectrum,
        )
        # white noise: SURE decides alone; correlated noise, a coarse sampling or dark columns:
        # the gate (WHITE_TOLERANCE)
        whiteness = spectrum_whiteness(spectrum)
        gate = _gate_reason(whiteness, coarse, plan.dark)
        white_noise = gate == "white noise"
        weight = 1.0 if white_noise else _excess_weight(excess, runner.architecture)
        periodic, folded = None, estimate
        if residual == "periodic" and plan.reciprocal is not None and weight < 1:
            # the network's error that repeats in every cell, followed along the local lattice
            fractions = local_fractions(estimate, plan.reciprocal, plan.cell, origin=origin)
            periodic = periodic_part(
                normalized - estimate,
                fractions,
                cell_bins(plan.reciprocal),
                where=crystal if crystal.any() else None,
            )
            if periodic is not None:
                folded = estimate + (1.0 - weight) * periodic_image(periodic, fractions)
        # a dense network's floor far above the noise (a high dose): the spectrum, measured on
        # the residual, then holds much of that error too and would over-smooth the data put
        # back; the white estimate (fourth-order differences, blind to smooth errors) picks the
        # width (WHITE_EXCESS); so it does under white noise, which those differences measure
        # cleanly (WHITE_TOLERANCE)
        white = runner.architecture == "dense" and (excess >= WHITE_EXCESS or white_noise)
        colored = None if white else spectrum
        sigma = choose_residual_sigma(normalized, folded, sigmas, colored) if weight else 0.0
        variance = surround_variance(spectrum, width) if plan.spacing > 0 else 0.0
        # outside the crystal the data smoothed by SURE under the spectrum; under white noise
        # the correction chosen over the whole image holds there too (WHITE_TOLERANCE)
        if partial and not white_noise:
            smooth = smoothing_sigma(normalized, spectrum, where=~crystal)
        if plan.reciprocal is not None:  # a sublattice the network lost everywhere
            erased, site_nn = erased_columns(
                normalized,
                folded,
                plan.reciprocal,
                origin=origin,
                where=crystal if crystal.any() else None,
            )
    else:
        sigma = choose_residual_sigma(normalized, estimate, sigmas)
        corrected = apply_residual(normalized, estimate, sigma) if sigma > 0 else estimate
        variance = noise_variance(normalized - corrected) if plan.spacing > 0 else 0.0
    plan = replace(
        plan,
        residual_sigma=sigma,
        residual_weight=weight,
        noise_variance=variance,
        threshold=AUTO_THRESHOLD if residual in AUTO_MODES else CONSISTENCY_THRESHOLD,
        auto=residual in AUTO_MODES,
        smooth_sigma=smooth,
        partial_crystal=partial,
        excess=excess if residual in AUTO_MODES else float("nan"),
        whiteness=whiteness,
        gate=gate,
        erased=tuple(map(tuple, erased)),
        site_nn=site_nn,
        periodic=periodic if residual == "periodic" else None,
        min_lowpass=UNSUPPORTED_MIN_LOWPASS if runner.architecture == "dense" else 0.0,
        peak_threshold=PEAK_THRESHOLD if runner.architecture == "dense" and coarse else None,
    )
    if not (image.ndim == 2 and frame.shape == image.shape and not lazy):
        return plan, None
    denoised = _correct(normalized, estimate, origin, plan, strength, fractions)
    return plan, _restore(denoised, spread, plan)


# --------------------------------------------------------------------------------------------
# step 4: run, block by block


def _denoise_block(block, origin, *, plan, runner, uncertainty, progress=None):
    """Denoise one tile (or whole frame) whose pixel (0, 0) is global pixel ``origin``.

    Returns float32 ``(denoised, spread)`` in the block's units (spread None unless asked).
    Works in float32 and in place where it can: a 2048² tile's arrays are then ~70 MB, not 140.
    """
    normalized = _normalise(block, plan)
    estimate, spread = _network(normalized, origin, plan, runner, uncertainty, progress)
    denoised = _correct(normalized, estimate, origin, plan)
    return _restore(denoised, spread, plan)


def _correct(normalized, estimate, origin, plan, strength=None, fractions=None):
    """The residual correction, the consistency test and, outside the crystal, the data.

    With ``residual="auto"``, where :func:`stem_ae._crystal.crystal_map` finds no lattice
    (amorphous, vacuum, contamination) the output goes smoothly over to the data filtered by a
    Gaussian of ``plan.smooth_sigma`` px (chosen by SURE there; 0 under white noise, where the
    residual correction already holds): nothing the network drew on a region it cannot know
    is kept.
    """
    fallback = None
    if plan.periodic is not None:  # the network's periodic error, as far as the gate leaves it
        if fractions is None:  # the pilot passes those it measured on the same estimate
            fractions = local_fractions(estimate, plan.reciprocal, plan.cell, origin=origin)
        fallback = estimate
        estimate = estimate + (1.0 - plan.residual_weight) * periodic_image(
            plan.periodic, fractions
        )
        del fractions
    if plan.residual_sigma > 0:
        estimate = apply_residual(
            normalized, estimate, plan.residual_sigma, overwrite=True, weight=plan.residual_weight
        )
        if fallback is not None:
            fallback = apply_residual(
                normalized, fallback, plan.residual_sigma, weight=plan.residual_weight
            )
    denoised = _consistency(normalized, estimate, plan, fallback)
    if plan.erased:
        denoised = restore_sites(
            normalized,
            denoised,
            plan.reciprocal,
            np.array(plan.erased),
            plan.site_nn,
            origin=origin,
        )
    if not plan.auto or plan.smooth_sigma <= 0:
        return denoised
    if strength is None:
        strength = crystal_map(normalized, plan.cell, reciprocal=plan.reciprocal, origin=origin)
    if strength.min() >= 1.0:
        return denoised
    smooth = gaussian_filter(normalized, plan.smooth_sigma, mode="reflect")
    denoised -= smooth
    denoised *= strength
    denoised += smooth
    return denoised


def _normalise(block: np.ndarray, plan: _Plan) -> np.ndarray:
    """The plan's percentiles to 0 and 1, out-of-range pixels replaced (a new float32 array)."""
    if not np.all(np.isfinite(block)):
        raise ValueError("image contains NaN or Inf; replace or mask them before denoising.")
    if plan.dark:  # dark columns (ABF, BF): denoised as the inverse, high -> 0, low -> 1
        normalized = np.subtract(plan.high, block, dtype=np.float32)
    else:
        normalized = np.subtract(block, plan.low, dtype=np.float32)  # a new array: block is kept
    normalized /= plan.high - plan.low
    return _replace_outliers(normalized)


def _replace_outliers(normalized: np.ndarray) -> np.ndarray:
    """Out-of-range pixels (:data:`CLIP_RANGE`) of normalised frames set, in place, to the median
    of the in-range pixels around them (:data:`OUTLIER_NEIGHBOURHOOD`), else clipped.

    A hot pixel or a spike clipped to the range's top would still stand twice as bright as the
    brightest column, and the network draws it as a small column; the median of its neighbours is
    what the image holds there. The caller's array is a copy: the input is never changed.
    """
    low, high = CLIP_RANGE
    outside = (normalized < low) | (normalized > high)
    if not outside.any():
        return normalized
    half = OUTLIER_NEIGHBOURHOOD // 2
    masked = np.where(outside, np.float32(np.nan), normalized)
    pad = [(0, 0)] * (normalized.ndim - 2) + [(half, half), (half, half)]
    masked = np.pad(masked, pad, mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(
        masked, (OUTLIER_NEIGHBOURHOOD,) * 2, (-2, -1)
    )
    where = np.nonzero(outside)
    patches = windows[where].reshape(len(where[0]), -1)
    values = np.clip(normalized[where], low, high)
    some = np.isfinite(patches).any(axis=1)
    if some.any():
        values[some] = np.nanmedian(patches[some], axis=1)
    normalized[where] = values
    return normalized


def _network(normalized, origin, plan, runner, uncertainty, progress):
    """Resample to the model's sampling, reconstruct, resample back: float32 ``(out, spread)``."""
    resampled = plan.scaled != plan.shape
    if resampled:
        sizes = list(zip(plan.shape, plan.scaled, strict=True))
        first = [ceil_div(2 * o * m - n, 2 * n) for o, (n, m) in zip(origin, sizes, strict=True)]
        stop = [
            ceil_div(2 * (o + h) * m - n, 2 * n)
            for o, h, (n, m) in zip(origin, normalized.shape, sizes, strict=True)
        ]
        count = [b - a for a, b in zip(first, stop, strict=True)]
        if min(count) < WINDOW:
            raise ValueError(
                f"a tile of {normalized.shape} px is {tuple(count)} px at the model's sampling, "
                f"smaller than the {WINDOW} px window; use larger chunks."
            )
        data = resample(normalized, origin, sizes, first, count)
    else:
        data, first = normalized, list(origin)
    phase = tuple((-f) % plan.step for f in first)
    out = _reconstruct(
        data,
        None,
        step=plan.step,
        blend=plan.blend,
        batch_size=plan.batch_size,
        return_uncertainty=uncertainty,
        progress=progress,
        phase=phase,
        runner=runner,
    )
    del data
    estimate, spread = out if uncertainty else (out, None)
    estimate = np.asarray(estimate, np.float32)
    spread = None if spread is None else np.asarray(spread, np.float32)
    if resampled:
        back = [(m, n) for n, m in sizes]
        estimate = resample(estimate, first, back, origin, normalized.shape)
        if spread is not None:
            spread = np.maximum(resample(spread, first, back, origin, normalized.shape), 0.0)
    return estimate, spread


def _consistency(normalized, estimate, plan, fallback=None):
    """The local consistency test (when the plan has a noise variance), see ``_residual``."""
    if plan.noise_variance > 0:
        width = CONSISTENCY_WIDTH * plan.spacing
        if plan.auto:
            return remove_unsupported(
                normalized,
                estimate,
                width,
                plan.noise_variance,
                plan.threshold,
                plan.spacing,
                fallback=fallback,
                min_lowpass=plan.min_lowpass,
                peak_threshold=plan.peak_threshold,
                lattice_vectors=plan.lattice_vectors,  # used with peak_threshold only
            )
        return consistency_correction(
            normalized, estimate, width, plan.noise_variance, plan.threshold
        )
    return estimate


def _restore(denoised, spread, plan):
    """Undo the normalisation: ``(denoised, spread)`` in the input's units."""
    span = plan.high - plan.low
    if plan.dark:
        denoised *= -span
        denoised += plan.high
    else:
        denoised *= span
        denoised += plan.low
    return denoised, None if spread is None else spread * span
