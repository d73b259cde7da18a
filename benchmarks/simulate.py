"""Benchmark of the training-window simulator: windows per second and peak RSS.

Usage::

    python benchmarks/simulate.py                 # PAPER and GENERAL, one process, then 2 workers
    python benchmarks/simulate.py --n 1000000 --batch 4096 --workers 1

Windows are drawn as a training loop draws them, ``training_batch(batch, rng=gen)`` again and
again, after one warm-up batch (which builds the PAPER lookup tables, ~0.1 s). With
``--workers k`` (k > 1), k processes draw ``n / k`` windows each at the same time and the
aggregate rate is reported (the windows stay in the workers, as in a multi-worker data loader).
Windows per CPU-second (``time.process_time``) are printed too: on a machine busy with other
work they show what the wall-clock rate would be on an idle core. Peak RSS is
``resource.getrusage`` of this process (and of the workers, in their own line). ``--scene N``
times one N×N ground-truth scene of each kind: HAADF with defects, ABF-like, 8 drift-corrected
frames, afterglow with streaks, and a mixed crystal/grain/amorphous/vacuum scene.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stem_ae.simulate import (
    GENERAL,
    PAPER,
    NoiseModel,
    simulate_mixed_scene,
    simulate_scene,
    training_batch,
)

DISTRIBUTIONS = {"paper": PAPER, "general": GENERAL}


def peak_rss_mib(who=resource.RUSAGE_SELF) -> float:
    """Peak resident set size in MiB (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(who).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def draw(name: str, n: int, batch: int, seed: int) -> tuple[int, float, float]:
    """Draw ``n`` windows of ``name`` in batches; return (windows, wall s, CPU s)."""
    dist = DISTRIBUTIONS[name]
    gen = np.random.default_rng(seed)
    training_batch(min(batch, 256), rng=gen, distribution=dist)  # warm-up: tables, imports
    done = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while done < n:
        k = min(batch, n - done)
        training_batch(k, rng=gen, distribution=dist)
        done += k
    return done, time.perf_counter() - t0, time.process_time() - c0


def _worker(args):
    name, n, batch, seed = args
    done, seconds, _ = draw(name, n, batch, seed)
    return done, seconds, time.perf_counter(), peak_rss_mib()


def draw_parallel(name: str, n: int, batch: int, workers: int) -> tuple[int, float, float]:
    """``workers`` processes draw ``n`` windows together; aggregate (windows, seconds, rss)."""
    ctx = mp.get_context("spawn")
    per = -(-n // workers)
    with ctx.Pool(workers) as pool:
        res = pool.map(_worker, [(name, per, batch, 1000 + i) for i in range(workers)])
    done = sum(r[0] for r in res)
    seconds = max(r[1] for r in res)  # all workers run at once; the slowest sets the pace
    return done, seconds, max(r[3] for r in res)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=400_000, help="PAPER windows to draw (default 400000)")
    p.add_argument("--n-general", type=int, default=40_000, help="GENERAL windows (default 40000)")
    p.add_argument("--batch", type=int, default=1024, help="windows per training_batch call")
    p.add_argument("--workers", type=int, default=2, help="processes for the parallel run (1: off)")
    p.add_argument("--scene", type=int, default=1024, help="side of the timed scenes, px (0: off)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = p.parse_args(argv)

    results = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "batch": args.batch,
    }
    print(f"stem_ae simulator benchmark  (numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"batch {args.batch})")  # fmt: skip
    for name, n in (("paper", args.n), ("general", args.n_general)):
        done, seconds, cpu = draw(name, n, args.batch, seed=0)
        rate = done / seconds
        results[f"{name}_windows_per_s_1proc"] = rate
        results[f"{name}_windows_per_cpu_s"] = done / cpu
        print(f"  {name.upper():8s} 1 process : {rate:12,.0f} windows/s  "
              f"({done:,} in {seconds:.2f} s; {done / cpu:,.0f} per CPU-second)")  # fmt: skip
        if args.workers > 1:
            done, seconds, rss = draw_parallel(name, n, args.batch, args.workers)
            rate = done / seconds
            results[f"{name}_windows_per_s_{args.workers}proc"] = rate
            results[f"{name}_worker_peak_rss_mib"] = rss
            print(f"  {name.upper():8s} {args.workers} processes: {rate:12,.0f} windows/s  "
                  f"({done:,} in {seconds:.2f} s; worker peak RSS {rss:.0f} MiB)")  # fmt: skip
    if args.scene:
        side = (args.scene, args.scene)
        defects = ["rp", "vacancies", "strain"]
        scenes = {
            "scene": (
                "rp + vacancies + strain",
                lambda: simulate_scene(side, defect=defects, rng=0),
            ),
            "scene_dark": (
                "ABF-like, rp + vacancies + strain",
                lambda: simulate_scene(side, defect=defects, contrast="dark", rng=0),
            ),
            "scene_frames": (
                "8 drift-corrected frames",
                lambda: simulate_scene(side, noise=NoiseModel(frames=8, frame_shift=0.5), rng=0),
            ),
            "scene_afterglow": (
                "afterglow 1.5 px, streaks",
                lambda: simulate_scene(
                    side, noise=NoiseModel(afterglow=1.5, row_offset_rel=0.03), rng=0
                ),
            ),
            "scene_mixed": (
                "crystal + grain + amorphous + vacuum",
                lambda: simulate_mixed_scene(side, rng=0),
            ),
        }
        for key, (label, make) in scenes.items():
            t0 = time.perf_counter()
            make()
            seconds = time.perf_counter() - t0
            results[f"{key}_seconds"] = seconds
            print(f"  scene {args.scene}×{args.scene} ({label}): {seconds:.2f} s")
    rss = peak_rss_mib()
    results["peak_rss_mib"] = rss
    print(f"  peak RSS (this process): {rss:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
