"""Seconds and peak memory of ``stem_ae.denoise`` at default settings, AMX on and off, vs BM3D.

Each case runs in a fresh child process (so that oneDNN reads ``ONEDNN_MAX_CPU_ISA`` at start-up
and peak RSS is that case's alone): a simulated 1024² SrTiO3 scene at 0.2 Å/px and 16 counts/px,
``denoise`` with the shipped ``general`` model at its defaults (its default step 3,
``residual="auto"``; also at step 2, the default before ``DEFAULT_STEPS``, and with the
Gaussian filters that ``stem_ae._filters`` replaced: ``ndimage``'s direct convolutions) and with
``model="general_conv"`` (step 2); the default and ``residual="periodic"`` also on the same
scene at 1 count/px with detector afterglow of 1.5 px (correlated noise, as in ``quality.py``),
where the gate leaves the network's output and the option adds its fold (under white noise, or
where the gate is open, it runs the default's code); each timed on a second call (the first
traces the TensorFlow function), and BM3D (PyPI ``bm3d``, Anscombe transform,
``sigma_psd=1``) on the 16-count image.
``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` keeps oneDNN off AMX, as on CPUs without it (the
reviewers' 2-core AMD EPYC); on a CPU without AMX both rows run the same code. Prints ratios
measured side by side in one run.

Run ``python benchmarks/denoise_speed.py`` (``--size 512`` for a quicker run). Writes
``benchmarks/results/denoise_speed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import _machine

from stem_ae.io import _atomic_write

RESULTS = Path(__file__).resolve().parent / "results"

CHILD = r"""
import json, resource, sys, time
import numpy as np
from stem_ae.simulate import NoiseModel, simulate_scene
size, method = int(sys.argv[1]), sys.argv[2]
options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
dose = options.pop("dose", 16.0)
afterglow = options.pop("afterglow", 0.0)
if options.pop("direct_filters", False):  # the filters before stem_ae._filters, for the ratio
    from scipy import ndimage as ndi
    import stem_ae._filters, stem_ae._residual
    stem_ae._filters.COSINE_MIN_TAPS = 10**9
    stem_ae._residual.lowpass_errors = lambda r, sigmas, truncate=4.0: [
        float(np.mean(((ndi.gaussian_filter(r, s, truncate=truncate) if s else 0.0) - r) ** 2))
        for s in sigmas
    ]
noise = NoiseModel(afterglow=afterglow) if afterglow else None
image = simulate_scene((size, size), pixel_size=0.2, dose=dose, noise=noise, rng=5).noisy
if method == "bm3d":
    import bm3d
    start = time.perf_counter()
    z = 2.0 * np.sqrt(np.maximum(image, 0) + 3.0 / 8.0)
    bm3d.bm3d(z, sigma_psd=1.0)
    seconds = time.perf_counter() - start
else:
    import stem_ae
    method, _, step = method.partition("@")  # "denoise[:model][@step]"
    step = int(step) if step else None  # None: the model's default step
    model = stem_ae.load_model(method.split(":")[1] if ":" in method else "general")
    stem_ae.denoise(image[:256, :256], model=model, step=step, **options)  # load, trace
    start = time.perf_counter()
    stem_ae.denoise(image, model=model, step=step, **options)
    seconds = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"seconds": seconds, "rss_gib": rss}))
"""

CASES = (
    ("denoise, oneDNN default ISA", "denoise", {}),
    ("denoise, AMX off", "denoise", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}),
    (
        "denoise with ndimage's direct Gaussian filters (before `_filters`), AMX off",
        "denoise",
        {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
        {"direct_filters": True},
    ),
    (
        "denoise at step 2 (the default before `DEFAULT_STEPS`), AMX off",
        "denoise@2",
        {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    ),
    ("denoise `general_conv`, oneDNN default ISA", "denoise:general_conv", {}),
    (
        "denoise `general_conv`, AMX off",
        "denoise:general_conv",
        {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    ),
    (
        "denoise at 1 count/px with afterglow, AMX off",
        "denoise",
        {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
        {"dose": 1.0, "afterglow": 1.5},
    ),
    (
        'denoise `residual="periodic"` at 1 count/px with afterglow, AMX off',
        "denoise",
        {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
        {"dose": 1.0, "afterglow": 1.5, "residual": "periodic"},
    ),
    ("BM3D (Anscombe)", "bm3d", {}),
)


def has_amx() -> bool:
    try:
        return "amx" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args(argv)
    rows = []
    for label, method, env, *options in CASES:
        child_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env}
        started = time.perf_counter()
        extra = [json.dumps(options[0])] if options else []
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(args.size), method, *extra],
            capture_output=True,
            text=True,
            env=child_env,
            check=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((label, result["seconds"], result["rss_gib"], time.perf_counter() - started))
        print(f"{label:30s} {result['seconds']:7.2f} s  peak RSS {result['rss_gib']:.2f} GiB")
    bm3d_seconds = rows[-1][1]
    lines = [
        "# `denoise` speed, AMX on and off, against BM3D",
        "",
        f"Command: `python benchmarks/denoise_speed.py --size {args.size}`. {args.size}² px "
        "simulated SrTiO3, 0.2 Å/px, 16 counts/px (the two rows at 1 count/px with afterglow "
        'of 1.5 px: correlated noise, where `residual="periodic"` adds its fold); `denoise` '
        "defaults (shipped `general`, "
        f'its default step 3, `residual="auto"`; and `model="general_conv"`, step 2), second '
        "call. "
        f"Machine: {_machine.describe()}, AMX {'present' if has_amx() else 'absent'}; "
        f"load average {os.getloadavg()[0]:.1f} at the end; {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "| case | seconds | peak RSS (GiB) | BM3D / case |",
        "|---|---|---|---|",
        *(
            f"| {label} | {s:.2f} | {rss:.2f} | {bm3d_seconds / s:.1f}× |"
            for label, s, rss, _ in rows
        ),
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    _atomic_write(
        RESULTS / "denoise_speed.md", lambda tmp: tmp.write_text("\n".join(lines)), overwrite=True
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
