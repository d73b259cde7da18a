"""Which lattice spacing should ``denoise`` resample an image to? A sweep, side by side.

``denoise`` brings an image's lattice spacing into the model's training range
(``AEConfig.spacing_range``, 6–10 px for the shipped models): ``_scale_factor`` aims the
geometric mean of the two strongest spacings at a target, then clamps the dominant spacing into
the range (``SAMPLING_POSITION``: the centre for dense models and dark columns, the top for
convolutional ones). This script replaces the target by each value given (0: the shipped rule)
and runs ``quality.py``'s scenes (192², 3 seeds) through ``denoise`` with one model, printing
PSNR / position error (pm) / vacancies filled (%) per pixel size and dose, and, with ``--real``,
``real.py``'s scores of the six real images.

Usage (from the repository root; about 1 min per target and scene kind on 2 cores)::

    python benchmarks/experiments/sampling_target.py general_conv --targets 7.75 8.5 10
    python benchmarks/experiments/sampling_target.py general_conv --targets 7.75 10 --kind abf
    python benchmarks/experiments/sampling_target.py general --targets 7.75 10 --real
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import quality
import real
import realdata

import stem_ae
from stem_ae import denoising
from stem_ae.model import load_model

SHIPPED = denoising._scale_factor


def aiming_at(target: float):
    """``_scale_factor`` with the geometric-mean spacing aimed at ``target`` px, whatever the
    model and contrast (0: the shipped rule, ``SAMPLING_POSITION``)."""
    if not target:
        return SHIPPED

    def factor(dominant, second, low, high, position=None):
        value = target / math.sqrt(dominant * second)
        value = min(max(value, low / dominant), high / dominant, denoising.MAX_UPSAMPLING)
        return 1.0 if abs(value - 1.0) <= denoising.RESAMPLE_TOLERANCE else value

    return factor


def scenes(name: str, kind: str, sizes, doses) -> list[str]:
    lines = []
    for size in sizes:
        cells = []
        for dose in doses:
            rows = [
                quality.run_case(size, dose, seed, [name], quality.SHAPE, kind=kind)[0]
                for seed in quality.SEEDS
            ]
            mean = {k: np.nanmean([r[k] for r in rows]) for k in rows[0] if k in SCORES}
            cell = (
                f"{mean['psnr']:.2f} / {mean['position_error_pm']:.2f} / {100 * mean['filled']:.0f}"
            )
            if kind == "abf":
                cell += f" (found {100 * mean['found']:.1f}, inv {100 * mean['invented']:.1f})"
            cells.append(cell)
        lines.append(f"{kind} {size:g} Å/px: " + " | ".join(cells))
    return lines


SCORES = ("psnr", "position_error_pm", "filled", "found", "invented")


def real_images(model) -> list[str]:
    lines = []
    for image in realdata.IMAGES:
        whole, pixel_size = realdata.load(image)
        raw = realdata.crop(image, whole).astype(np.float64)
        ctx = real.context(raw, image.contrast == "bright", pixel_size, image.reciprocal)
        out = stem_ae.denoise(raw, model=model)
        s = real.score(np.asarray(out, np.float64), ctx)
        shift = real.make_shift(ctx)
        kept = ""
        if shift is not None:
            warped = np.asarray(stem_ae.denoise(shift.warped, model=model), np.float64)
            kept = f", shift kept {real.shift_kept(out, warped, ctx, shift)[0]:.2f}"
        lines.append(
            f"{image.name}: RMS {s['rms_px']:.3f} px, kept {100 * s['sites_kept']:.1f} %, "
            f"invented {100 * s['invented']:.1f} %{kept}"
        )
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a shipped model name or a model folder")
    parser.add_argument("--targets", nargs="+", type=float, required=True, help="px; 0: shipped")
    parser.add_argument("--kind", default="poisson", choices=quality.SCENES)
    parser.add_argument("--doses", nargs="+", type=float, default=list(quality.DOSES))
    parser.add_argument("--sizes", nargs="+", type=float, default=None, help="Å/px")
    parser.add_argument("--real", action="store_true", help="also score the real images")
    args = parser.parse_args(argv)
    model = load_model(args.model)
    quality._MODELS[args.model] = model
    quality.RUNNERS[args.model] = quality._stem_ae(args.model)
    sizes = args.sizes or (quality.PIXEL_SIZES if args.kind == "poisson" else (0.2,))
    print("PSNR dB / position error pm / vacancies filled %, per dose:", args.doses)
    for target in args.targets:
        denoising._scale_factor = aiming_at(target)
        print(f"== target {target:g} px", flush=True)
        lines = scenes(args.model, args.kind, sizes, args.doses)
        if args.real:
            lines += real_images(model)
        for line in lines:
            print("  " + line, flush=True)
    denoising._scale_factor = SHIPPED


if __name__ == "__main__":
    main()
