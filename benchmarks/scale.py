"""Throughput and memory of ``stem_ae.denoise`` on large images, against workers and size.

Usage::

    python benchmarks/scale.py                  # 1k², 2k², 4k², 8k² at 1 and 2 workers
    python benchmarks/scale.py --sizes 1024 2048 --workers 1 2
    python benchmarks/scale.py --case 8192 1    # one case (in-memory path)
    python benchmarks/scale.py --case 8192 1 --dask   # the same image as a Dask array + store

Each case runs in a fresh subprocess (peak RSS ``ru_maxrss`` is its own) and denoises a synthetic
square lattice (spacing 13.8 px, i.e. SrTiO3 at 0.2 Å/px, so the sampling match resamples by
0.58) with the shipped ``general`` model (or a random-weight 1.15 M-parameter AE when no model is
shipped). Every size goes through the tiled path (``dask.array.map_overlap`` tiles of
``TILE`` px, computed block by block, ``workers`` tiles at a time, into one preallocated
output): ``denoise`` tiles any in-memory image above ``LARGE_IMAGE`` px itself, and smaller sizes
are run with the threshold lowered so that the workers column means the same thing throughout.
``--dask`` instead hands ``denoise`` a ``dask.array`` and stores the lazy result with
``dask.array.store`` on Dask's threaded scheduler (what a Dask user writes). Results also go to
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


def run_case(size: int, workers: int, use_dask: bool = False) -> dict:
    import resource

    import numpy as np

    from stem_ae import denoising
    from stem_ae._tiling import TILE
    from stem_ae.denoising import denoise

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
    if use_dask:
        import dask.array as da

        lazy = denoise(da.from_array(image, chunks=TILE), model=model)
        result = np.empty(image.shape, np.float32)  # tiles are stored straight into it
        da.store(lazy, result, lock=False, scheduler="threads", num_workers=workers)
    else:
        denoising.LARGE_IMAGE = min(denoising.LARGE_IMAGE, size * size - 1)
        result = denoise(image, model=model, workers=workers)
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    del result
    return {
        "size": size,
        "workers": workers,
        "path": "dask store" if use_dask else "in-memory tiles",
        "seconds": seconds,
        "mpx_per_s": size * size / 1e6 / seconds,
        "rss_gib": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs=2, type=int, metavar=("SIZE", "WORKERS"))
    parser.add_argument("--dask", action="store_true", help="Dask array in, dask.array.store out")
    parser.add_argument("--sizes", nargs="+", type=int, default=[1024, 2048, 4096, 8192])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(*args.case, use_dask=args.dask)))
        return
    cases = [(size, w) for size in args.sizes for w in args.workers]
    rows = []
    print("| image | path | workers | time (s) | Mpx/s | peak RSS (GiB) |")
    print("|---|---|---|---|---|---|")
    for size, workers in cases:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        command = [sys.executable, __file__, "--case", str(size), str(workers)]
        out = subprocess.run(
            command + (["--dask"] if args.dask else []),
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"| {size}² | {row['path']} | {workers} | {row['seconds']:.1f} | "
            f"{row['mpx_per_s']:.3f} | {row['rss_gib']:.2f} |",
            flush=True,
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "scale_dask.json" if args.dask else "scale.json"
    (RESULTS / name).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
