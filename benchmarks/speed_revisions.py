"""Speed of this working tree against an earlier revision, side by side in one run.

Usage (from the repository root)::

    python benchmarks/speed_revisions.py cc40154            # 1024², 2 rounds, both models
    python benchmarks/speed_revisions.py                    # against HEAD: uncommitted changes
    python benchmarks/speed_revisions.py HEAD~3 --size 512 --rounds 3

The revision is checked out into a temporary ``git worktree`` (removed afterwards). Every round
runs, for each model, the old tree and then this one, each in a fresh child process that imports
``stem_ae`` from its own tree, so that the two alternate on the same (possibly shared, noisy)
machine. A child simulates the same scene as ``denoise_speed.py`` (SrTiO3, 0.2 Å/px, 16
counts/px, seed 5), times ``estimate_lattice`` on it once (the first call in the process: what a
user's first image pays), runs ``denoise`` on a 256² crop (loads the model, traces the function)
and then times ``denoise`` on the whole image twice. ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``
keeps oneDNN off AMX (``--isa default`` leaves it unset). Prints and writes
``benchmarks/results/speed_revisions.md``: per model the best and the slowest of each tree's
runs, the ratio old / new of the bests, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _machine

from stem_ae.io import _atomic_write

REPOSITORY = Path(__file__).resolve().parents[1]
RESULTS = REPOSITORY / "benchmarks" / "results"

CHILD = r"""
import json, resource, sys, time
tree, size, model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.path.insert(0, tree)
import numpy as np
import stem_ae
assert stem_ae.__file__.startswith(tree), stem_ae.__file__
from stem_ae.simulate import simulate_scene
image = simulate_scene((size, size), pixel_size=0.2, dose=16.0, rng=5).noisy
start = time.perf_counter()
stem_ae.estimate_lattice(image)
lattice = time.perf_counter() - start
stem_ae.denoise(image[:256, :256], model=model)
runs = []
for _ in range(2):
    start = time.perf_counter()
    stem_ae.denoise(image, model=model)
    runs.append(time.perf_counter() - start)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"lattice": lattice, "denoise": runs, "rss_gib": rss}))
"""


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPOSITORY, capture_output=True, text=True, check=True
    ).stdout.strip()


def _child(tree: Path, size: int, model: str, env: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), str(size), model],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "revision",
        nargs="?",
        default="HEAD",
        help="the earlier revision (commit, tag, HEAD~N); default HEAD: the uncommitted changes",
    )
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["general", "general_conv"])
    parser.add_argument("--isa", default="AVX512_CORE_BF16", help="ONEDNN_MAX_CPU_ISA, or default")
    args = parser.parse_args(argv)
    try:
        old_commit = _git("rev-parse", "--short", "--verify", f"{args.revision}^{{commit}}")
    except subprocess.CalledProcessError:
        print(
            f"error: {args.revision!r} is not a commit of this repository; give a commit, tag or "
            "HEAD~N (git log --oneline lists them)",
            file=sys.stderr,
        )
        return 2
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if args.isa != "default":
        env["ONEDNN_MAX_CPU_ISA"] = args.isa
    results: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        old_tree = Path(scratch) / "old"
        _git("worktree", "add", "--detach", str(old_tree), args.revision)
        try:
            for round_ in range(args.rounds):
                for model in args.models:
                    for label, tree in (("old", old_tree), ("new", REPOSITORY)):
                        result = _child(tree, args.size, model, env)
                        results.setdefault((model, label), []).append(result)
                        print(
                            f"round {round_ + 1} {model:13s} {label}: denoise "
                            f"{min(result['denoise']):.2f} s, lattice {result['lattice']:.2f} s, "
                            f"peak RSS {result['rss_gib']:.2f} GiB",
                            flush=True,
                        )
        finally:
            _git("worktree", "remove", "--force", str(old_tree))
    lines = [
        f"# Speed: this tree against `{old_commit}`",
        "",
        f"Command: `python benchmarks/speed_revisions.py {args.revision} --size {args.size} "
        f"--rounds {args.rounds}`. {args.size}² px simulated SrTiO3 (as `denoise_speed.py`), "
        f"old and new alternating in fresh processes, ONEDNN_MAX_CPU_ISA={args.isa}. "
        f"Machine: {_machine.describe()}; load average {os.getloadavg()[0]:.1f} at the end; "
        f"{time.strftime('%Y-%m-%d %H:%M')}. Seconds: best – slowest over the rounds "
        "(`denoise`: 2 calls per round; lattice: the first call of each process).",
        "",
        "| model | step | old (s) | new (s) | old / new (best) | peak RSS old / new (GiB) |",
        "|---|---|---|---|---|---|",
    ]
    for model in args.models:
        old, new = results[(model, "old")], results[(model, "new")]
        for step, pick in (
            ("`denoise`", lambda r: r["denoise"]),
            ("lattice measurement", lambda r: [r["lattice"]]),
        ):
            a = [s for r in old for s in pick(r)]
            b = [s for r in new for s in pick(r)]
            rss = f"{max(r['rss_gib'] for r in old):.2f} / {max(r['rss_gib'] for r in new):.2f}"
            lines.append(
                f"| `{model}` | {step} | {min(a):.2f} – {max(a):.2f} | {min(b):.2f} – {max(b):.2f} "
                f"| {min(a) / min(b):.2f}× | {rss} |"
            )
    lines.append("")
    RESULTS.mkdir(exist_ok=True)
    _atomic_write(
        RESULTS / "speed_revisions.md",
        lambda tmp: tmp.write_text("\n".join(lines), encoding="utf-8"),
        overwrite=True,
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
