"""Speed and memory of the floating-window reconstruction; blend choice by quality.

Usage::

    python benchmarks/reconstruct.py              # speed table (fast vs predict reference)
    python benchmarks/reconstruct.py --blend      # PSNR of blend="mean" vs "hann" on scenes
    python benchmarks/reconstruct.py --quick      # 512² and 1024² at step 2 only

Each speed case runs in a fresh subprocess, so the peak RSS (``ru_maxrss``) is that case's own.
The model is the default 1.15 M-parameter dense AE (``AEConfig()``) with random weights: speed
does not depend on the weights. The reference is ``method="naive"``: all windows materialised,
``model.predict``, window-by-window overlap-add; it is skipped above 300k windows (its window
array alone would exceed ~1 GB). ``fast`` is timed three times at the full size in one process:
the first call (it pays oneDNN's kernel set-up for the new shapes) and the median of the three,
which is what a session denoising a series sees; the reference runs once after the same small
warm-up. Results also go to ``benchmarks/results/reconstruct.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = Path(__file__).resolve().parent / "results"
NAIVE_LIMIT = 300_000
REPEATS = 3  # fast: the first call at the full size, then the median of all three is reported


def _windows(size: int, step: int) -> int:
    return ((size - 1 + 27) // step + 1) ** 2


def run_case(size: int, step: int, method: str) -> dict:
    """Time one reconstruction in this process; returns seconds and peak RSS."""
    import resource

    import keras
    import numpy as np

    from stem_ae.model import AEConfig, build_autoencoder
    from stem_ae.windows import reconstruct

    keras.utils.set_random_seed(0)
    model = build_autoencoder(AEConfig())
    image = np.random.default_rng(0).normal(size=(size, size)).astype(np.float32)
    reconstruct(image[:64, :64], model, step=step, method=method)  # warm-up (graph, BLAS)
    predict_times = []
    if method == "naive":  # also time model.predict alone, the reference's matrix products
        predict = model.predict

        def timed_predict(*args, **kwargs):
            start = time.perf_counter()
            out = predict(*args, **kwargs)
            predict_times.append(time.perf_counter() - start)
            return out

        model.predict = timed_predict
    times = []
    for _ in range(REPEATS if method == "fast" else 1):
        start = time.perf_counter()
        reconstruct(image, model, step=step, method=method)
        times.append(time.perf_counter() - start)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # GiB (Linux: KiB)
    return {
        "size": size,
        "step": step,
        "method": method,
        "first_s": times[0],
        "seconds": float(np.median(times)),
        "predict_s": sum(predict_times) if predict_times else None,
        "rss_gib": rss,
    }


def _subprocess(size: int, step: int, method: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--case", str(size), str(step), method],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def speed(cases: list[tuple[int, int]]) -> list[dict]:
    rows = []
    print(
        "| image | step | windows | fast, 1st call (s) | fast, median of 3 (s) | fast RSS (GiB) "
        "| reference (s) | its model.predict (s) | ratio | ratio to predict |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size, step in cases:
        fast = _subprocess(size, step, "fast")
        windows = _windows(size, step)
        naive = _subprocess(size, step, "naive") if windows <= NAIVE_LIMIT else None
        row = {
            "size": size,
            "step": step,
            "windows": windows,
            "fast_first_s": fast["first_s"],
            "fast_s": fast["seconds"],
            "fast_rss_gib": fast["rss_gib"],
            "naive_s": naive["seconds"] if naive else None,
            "predict_s": naive["predict_s"] if naive else None,
            "naive_rss_gib": naive["rss_gib"] if naive else None,
        }
        rows.append(row)
        if naive:
            ref = f"{naive['seconds']:.2f} | {naive['predict_s']:.2f}"
            ratio = (
                f"{naive['seconds'] / fast['seconds']:.1f}× | "
                f"{naive['predict_s'] / fast['seconds']:.1f}×"
            )
        else:
            ref, ratio = "skipped (>300k windows) | –", "– | –"
        print(
            f"| {size}² | {step} | {windows:,} | {fast['first_s']:.2f} | {fast['seconds']:.2f} | "
            f"{fast['rss_gib']:.2f} | {ref} | {ratio} |",
            flush=True,
        )
    return rows


def blend_quality(model_name: str = "general") -> list[dict]:
    """PSNR of the two blends through ``denoise`` on simulated scenes never used in training."""
    import numpy as np

    from stem_ae.denoising import denoise
    from stem_ae.model import load_model
    from stem_ae.simulate import simulate_scene

    model = load_model(model_name)

    def psnr(clean, estimate):
        return float(10 * np.log10(np.ptp(clean) ** 2 / np.mean((clean - estimate) ** 2)))

    from scipy import ndimage

    def best_gaussian(clean, noisy):
        sigmas = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
        return max(psnr(clean, ndimage.gaussian_filter(noisy, s)) for s in sigmas)

    rows = []
    print(f"| lattice | Å/px | dose | noisy | best Gaussian | mean | hann |  ({model_name})")
    print("|---|---|---|---|---|---|---|")
    for seed, (lattice, pixel_size, dose) in enumerate(
        (lat, ps, d)
        for lat in ("srtio3", "rectangular", "hexagonal")
        for ps in (0.1, 0.2, 0.3)
        for d in (1, 10, 100)
    ):
        srtio3 = lattice == "srtio3"
        scene = simulate_scene(
            (256, 256),
            lattice=lattice,
            defect="rp" if srtio3 else None,
            strain=0.02 if srtio3 else None,
            pixel_size=pixel_size,
            dose=dose,
            rng=1000 + seed,
        )
        row = {"lattice": lattice, "pixel_size": pixel_size, "dose": dose}
        row["noisy"] = psnr(scene.clean, scene.noisy)
        row["gaussian"] = best_gaussian(scene.clean, scene.noisy)
        for blend in ("mean", "hann"):
            out = denoise(scene.noisy, model=model, blend=blend, lattice_constant=None)
            row[blend] = psnr(scene.clean, out)
        rows.append(row)
        print(
            f"| {lattice} | {pixel_size} | {dose} | {row['noisy']:.2f} | {row['gaussian']:.2f} | "
            f"{row['mean']:.2f} | {row['hann']:.2f} |",
            flush=True,
        )
    wins = sum(r["hann"] > r["mean"] for r in rows)
    gain = np.mean([r["hann"] - r["mean"] for r in rows])
    print(f"\nhann beats mean in {wins}/{len(rows)} scenes, mean gain {gain:+.2f} dB")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs=3, metavar=("SIZE", "STEP", "METHOD"))
    parser.add_argument("--blend", action="store_true", help="compare blends by PSNR")
    parser.add_argument("--model", default="general", help="model for --blend")
    parser.add_argument("--quick", action="store_true", help="512² and 1024² at step 2 only")
    args = parser.parse_args()
    if args.case:
        size, step, method = args.case
        print(json.dumps(run_case(int(size), int(step), method)))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.blend:
        rows = blend_quality(args.model)
        (RESULTS / "reconstruct_blend.json").write_text(json.dumps(rows, indent=1) + "\n")
        return
    if args.quick:
        cases = [(512, 2), (1024, 2)]
    else:
        cases = [(size, step) for size in (512, 1024, 2048) for step in (1, 2, 3, 4)]
    rows = speed(cases)
    (RESULTS / "reconstruct.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
