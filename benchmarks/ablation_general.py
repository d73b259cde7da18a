"""Ablation for the ``general`` model: candidate architectures for the same CPU time.

Usage (from the repository root)::

    python benchmarks/ablation_general.py                       # every candidate, ~25 min
    python benchmarks/ablation_general.py conv_16_32 --budget 120  # some, shorter

Every candidate is an :class:`stem_ae.AEConfig` trained with Adam (1e-3) on the same pool of
windows drawn once from :data:`stem_ae.simulate.REALISTIC` (pool seed 11; the shipped model's
distribution), for the same wall-clock budget on this machine (``--budget`` s, default 240): a
compute-fair comparison of short runs, which shows the trends, not final errors. Each is then
scored on fixed test windows (test seed 2024, never trained on): noise-free windows (is there an
error floor?) and plain Poisson windows at 1, 4, 16 and 64 counts/px, by the mean per-window PSNR
(``stem_ae.training.error_metrics``), and timed on a 1024² image through
``stem_ae.reconstruct`` (step 2). Rows are merged into
``benchmarks/results/ablation_general.json`` (keyed by candidate) and the table
``ablation_general.md`` is written from it; the whole-image benchmarks of the shipped model
(``quality.py``, ``real.py``) are added to the table by ``--shipped``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from stem_ae.io import _atomic_write
from stem_ae.model import AEConfig, build_autoencoder, standardize, unstandardize
from stem_ae.simulate import REALISTIC, TrainingDistribution
from stem_ae.training import _standardized_pair, draw_pool, error_metrics, make_test_set
from stem_ae.windows import reconstruct

RESULTS = Path(__file__).resolve().parent / "results"
JSON = RESULTS / "ablation_general.json"
DOSES = (1, 4, 16, 64)

#: name -> (description, config, batch size)
CANDIDATES: dict[str, tuple[str, AEConfig, int]] = {
    "dense_relu_1024_128": (
        "dense 1024-512-256 / 128, relu (the earlier `general`)",
        AEConfig(encoder=(1024, 512, 256), code=128),
        512,
    ),
    "dense_gelu_1024_256": (
        "dense 1024-512-256 / 256, gelu",
        AEConfig(encoder=(1024, 512, 256), code=256, activation="gelu"),
        512,
    ),
    "conv_32_64": (
        "conv 32-64 / 64, relu",
        AEConfig(encoder=(32, 64), code=64, architecture="conv"),
        64,
    ),
    "conv_16_32": (
        "conv 16-32 / 64, relu",
        AEConfig(encoder=(16, 32), code=64, architecture="conv"),
        64,
    ),
    "conv_24_48": (
        "conv 24-48 / 64, relu",
        AEConfig(encoder=(24, 48), code=64, architecture="conv"),
        64,
    ),
    "conv_24_48_aa": (
        "conv 24-48 / 64, relu, anti-aliased strides (binomial blur, `antialias=True`)",
        AEConfig(encoder=(24, 48), code=64, architecture="conv", antialias=True),
        64,
    ),
}


def test_sets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Noise-free windows and plain-Poisson windows at each dose, 1,000 each (test seed 2024)."""
    base = REALISTIC.to_dict()
    plain = {
        "uniform_fraction": 0.0,
        "frames_probability": 0.0,
        "afterglow_probability": 0.0,
        "row_offset_rel_range": (0.0, 0.0),
        "row_gain_range": (0.0, 0.0),
        "read_noise_range": (0.0, 0.0),
        "row_offset_range": (0.0, 0.0),
        "row_jitter_range": (0.0, 0.0),
        "clean_fraction": 0.0,
    }
    sets = {"noise-free": {**base, "clean_fraction": 1.0}}
    sets.update({f"dose {d}": {**base, **plain, "dose_range": (d, d)} for d in DOSES})
    return {
        name: make_test_set(1000, distribution=TrainingDistribution.from_dict(fields), seed=2024)
        for name, fields in sets.items()
    }


class _Budget(keras.callbacks.Callback):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.start = seconds, time.perf_counter()

    def on_train_batch_end(self, batch, logs=None) -> None:
        if time.perf_counter() - self.start > self.seconds:
            self.model.stop_training = True


def run(name: str, pool, tests, budget: float) -> dict:
    description, config, batch = CANDIDATES[name]
    keras.utils.set_random_seed(0)
    model = build_autoencoder(config)
    inputs, targets = pool
    start = time.perf_counter()
    history = model.fit(
        inputs, targets, batch_size=batch, epochs=10_000, verbose=0, callbacks=[_Budget(budget)]
    )
    seconds = time.perf_counter() - start
    steps = int(model.optimizer.iterations.numpy())
    row = {
        "description": description,
        "parameters": model.count_params(),
        "train_s": round(seconds, 1),
        "windows_seen": steps * batch,
        "loss": round(float(history.history["loss"][-1]), 4),
    }
    for label, (noisy, clean) in tests.items():
        z, mu, scale = standardize(noisy)
        out = unstandardize(np.asarray(model.predict(z, batch_size=1024, verbose=0)), mu, scale)
        row[label] = round(error_metrics(out, clean)["psnr"], 2)
        if label != "noise-free":
            row[f"{label} input"] = round(error_metrics(noisy, clean)["psnr"], 2)
    image = np.random.default_rng(0).poisson(4.0, (1024, 1024)).astype(np.float32)
    reconstruct(image[:128, :128], model, step=2)  # trace once
    start = time.perf_counter()
    reconstruct(image, model, step=2)
    row["s_1024"] = round(time.perf_counter() - start, 2)
    return row


def _count(value) -> str:
    return "—" if value is None else f"{value:,}"


def table(records: dict) -> str:
    columns = ["noise-free", *(f"dose {d}" for d in DOSES)]
    first = next(iter(records.values()), {})
    lines = [
        "# Ablation for the `general` model",
        "",
        "Command: `python benchmarks/ablation_general.py` (module docstring: the protocol). Every "
        "candidate trains for the same wall-clock budget on the same pool of "
        f"{first.get('pool', '?'):,} windows of the `realistic` distribution on "
        f"{first.get('machine', '?')}; PSNR (dB) is the mean over 1,000 test windows of the "
        "per-window PSNR against the noise-free truth (window range as peak). `input` is the "
        "noisy window itself. s at 1024²: `reconstruct(step=2)` of a 1024² image.",
        "",
        "| candidate | parameters | train s | windows seen | "
        + " | ".join(columns)
        + " | s at 1024² |",
        "|---|---:|---:|---:|" + "---:|" * len(columns) + "---:|",
    ]
    for row in records.values():
        cells = [row["noise-free"]] + [
            f"{row[f'dose {d}']} (input {row[f'dose {d} input']})" for d in DOSES
        ]
        lines.append(
            f"| {row['description']} | {row['parameters']:,} | {row['train_s']} | "
            f"{_count(row['windows_seen'])} | "
            + " | ".join(map(str, cells))
            + f" | {row['s_1024']} |"
        )
    if any("‡" in row["description"] for row in records.values()):
        lines += [
            "",
            "‡ From the first run of this protocol (the same pool, test windows and code, a "
            "budget of 240 s; s at 1024², and windows seen by the stopped conv run, not recorded "
            "then). The earlier dense `general` took 8.6–9.3 s at 1024² (step 2) on this CPU.",
        ]
    shipped = RESULTS / "ablation_general_shipped.md"
    if shipped.exists():
        lines += ["", shipped.read_text(encoding="utf-8").strip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"candidates (default all): {list(CANDIDATES)}")
    parser.add_argument("--budget", type=float, default=240.0, help="training seconds each")
    parser.add_argument("--pool", type=int, default=100_000, help="windows in the pool")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(CANDIDATES))
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; choose from {list(CANDIDATES)}")
    start = time.perf_counter()
    noisy, clean = draw_pool(args.pool, distribution=REALISTIC, seed=11, processes=2)
    pool = _standardized_pair(noisy, clean, "window")
    print(f"pool of {args.pool:,} windows in {time.perf_counter() - start:.0f} s", flush=True)
    tests = test_sets()
    records = json.loads(JSON.read_text(encoding="utf-8")) if JSON.exists() else {}
    for name in args.names or list(CANDIDATES):
        row = run(name, pool, tests, args.budget)
        row.update(pool=args.pool, machine=f"{platform.machine()}, {os.cpu_count()} cores")
        records[name] = row
        print(name, json.dumps(row), flush=True)
        _atomic_write(
            JSON, lambda p: p.write_text(json.dumps(records, indent=1) + "\n"), overwrite=True
        )
        _atomic_write(
            RESULTS / "ablation_general.md",
            lambda p: p.write_text(table(records), encoding="utf-8"),
            overwrite=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
