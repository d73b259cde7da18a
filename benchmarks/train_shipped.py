"""Retrain the shipped models as they were trained: ``stem_ae/models/{paper,general,general_conv}``.

Usage (from the repository root)::

    python benchmarks/train_shipped.py            # all three models
    python benchmarks/train_shipped.py general_conv   # one of them (37 min on 2 cores)

Each model is trained in its own process by ``benchmarks/train.py`` with the recipe in
``stem_ae.training.RECIPES`` (architecture, distribution, samples per epoch, epochs, batch size and
seed), evaluated on 5,000 fresh windows of test seed 2024, saved to ``stem_ae/models/<name>``
and summarised in ``benchmarks/results/train_<name>.json`` (wall time, samples/s, peak RSS,
per-epoch loss, test metrics). The same command gives the same weights up to the
non-determinism of multi-threaded float sums in TensorFlow, i.e. the same error to within noise.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
NAMES = ("paper", "general", "general_conv")


def command(name: str) -> list[str]:
    """The exact command line that trains and saves shipped model ``name``."""
    return [
        sys.executable,
        str(REPOSITORY / "benchmarks" / "train.py"),
        name,
        "--test-n",
        "5000",
        "--test-seed",
        "2024",
        "--save",
        str(REPOSITORY / "stem_ae" / "models" / name),
        "--json",
        str(REPOSITORY / "benchmarks" / "results" / f"train_{name}.json"),
    ]


def main(names: list[str]) -> None:
    for name in names or NAMES:
        if name not in NAMES:
            raise SystemExit(f"unknown shipped model {name!r}; choose from {', '.join(NAMES)}")
        print("$ " + " ".join(command(name)), flush=True)
        subprocess.run(command(name), check=True, cwd=REPOSITORY)


if __name__ == "__main__":
    main(sys.argv[1:])
