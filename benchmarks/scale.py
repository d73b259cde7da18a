"""Throughput and memory of ``stem_ae.denoise`` on large images, against workers and size.

Usage::

    python benchmarks/scale.py                  # 1k², 2k², 4k² at 1 and 2 workers, 8k² at 2
    python benchmarks/scale.py --sizes 1024 2048 --workers 1 2

Each case runs in a fresh subprocess (peak RSS ``ru_maxrss`` is its own) and denoises a synthetic
square lattice (spacing 13.8 px, i.e. SrTiO3 at 0.2 Å/px, so the sampling match resamples by
0.56) with the shipped ``general`` model (or a random-weight 1.15 M-parameter AE when no model is
shipped), through Dask tiles (``dask.array.map_overlap``, threaded scheduler) so that every size
takes the same path; ``dask.array.store`` writes the tiles into one preallocated output (no
concatenated copy). With 2 workers each BLAS call is single-threaded
(``OPENBLAS_NUM_THREADS=1``) so the two tiles do not oversubscribe the cores. Results also go to
``benchmarks/results/scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SPACING = 13.8


def _lattice(size: int):
    import numpy as np

    rng = np.random.default_rng(0)
    axis = np.arange(size, dtype=np.float32)
    profile = np.cos(np.pi * axis / SPACING) ** 8
    image = profile[:, None] * profile[None, :] * 50.0 + 10.0
    image += rng.poisson(3.0, size=(size, size)).astype(np.float32)
    return image


def run_case(size: int, workers: int) -> dict:
    import resource

    import dask.array as da
    import numpy as np

    from stem_ae.reconstruct import TILE, denoise

    try:
        from stem_ae.model import load_model

        model = load_model("general")
    except (ValueError, OSError):
        import keras

        from stem_ae.model import AEConfig, build_autoencoder

        keras.utils.set_random_seed(0)
        model = build_autoencoder(AEConfig())
    image = _lattice(size)
    start = time.perf_counter()
    lazy = denoise(da.from_array(image, chunks=TILE), model=model)
    result = np.empty(image.shape, np.float32)  # tiles are stored straight into it
    da.store(lazy, result, lock=False, scheduler="threads", num_workers=workers)
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    del result
    return {
        "size": size,
        "workers": workers,
        "seconds": seconds,
        "mpx_per_s": size * size / 1e6 / seconds,
        "rss_gib": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs=2, type=int, metavar=("SIZE", "WORKERS"))
    parser.add_argument("--sizes", nargs="+", type=int, default=[1024, 2048, 4096])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--largest", type=int, default=8192, help="one extra size at max workers")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(*args.case)))
        return
    cases = [(size, w) for size in args.sizes for w in args.workers]
    if args.largest:
        cases.append((args.largest, max(args.workers)))
    rows = []
    print("| image | workers | time (s) | Mpx/s | peak RSS (GiB) |")
    print("|---|---|---|---|---|")
    for size, workers in cases:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        if workers > 1:
            env["OPENBLAS_NUM_THREADS"] = "1"
        out = subprocess.run(
            [sys.executable, __file__, "--case", str(size), str(workers)],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"| {size}² | {workers} | {row['seconds']:.1f} | {row['mpx_per_s']:.3f} | "
            f"{row['rss_gib']:.2f} |",
            flush=True,
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
