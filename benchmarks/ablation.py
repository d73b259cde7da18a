"""Ablation of the dense auto-encoder: per-pixel error on one fixed test set, one row per run.

Usage (from the repository root)::

    python benchmarks/ablation.py                 # every row, ~10-15 min on 2 CPU cores
    python benchmarks/ablation.py --n-samples 50000 --only code,depth   # a quicker subset

Every run trains for one epoch of ``--n-samples`` fresh PAPER windows (default 100,000; seed 0,
batch 512, cosine schedule) and is scored on the same 2,000 test windows (test seed 2024) —
short runs that show trends, not final errors. Groups: the baseline (encoder 512-256-128, code
64, relu, the shipped architecture), code size, depth, width, activation, number of samples and
noise level (train and test at the same SNR). Writes ``benchmarks/results/ablation.md`` (a table)
and ``benchmarks/results/ablation.json``, rewritten after every row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from stem_ae.model import AEConfig
from stem_ae.simulate import PAPER
from stem_ae.training import error_metrics, evaluate, make_test_set, train

RESULTS = Path(__file__).resolve().parent / "results"
BASE = AEConfig(encoder=(512, 256, 128), code=64, activation="relu", name="ablation")


def runs(n_samples: int) -> list[tuple[str, str, AEConfig, dict]]:
    """``(group, label, config, train overrides)`` for every row of the table."""
    rows: list[tuple[str, str, AEConfig, dict]] = [("baseline", "512-256-128 / 64, relu", BASE, {})]
    for code in (16, 32, 128):
        rows.append(("code", f"code {code}", dataclasses.replace(BASE, code=code), {}))
    for encoder in ((512,), (512, 256), (1024, 512, 256, 128)):
        label = "-".join(map(str, encoder))
        rows.append(("depth", f"encoder {label}", dataclasses.replace(BASE, encoder=encoder), {}))
    for encoder in ((256, 128, 64), (1024, 512, 256)):
        label = "-".join(map(str, encoder))
        rows.append(("width", f"encoder {label}", dataclasses.replace(BASE, encoder=encoder), {}))
    for activation in ("elu", "gelu", "tanh"):
        config = dataclasses.replace(BASE, activation=activation)
        rows.append(("activation", activation, config, {}))
    for samples in (300_000, 700_000):
        if samples != n_samples:
            rows.append(("samples", f"{samples:,} samples", BASE, {"n_samples": samples}))
    for snr in (0.1, 0.2, 0.5, 1.0):
        distribution = dataclasses.replace(PAPER, snr_range=(snr, snr))
        rows.append(("snr", f"SNR {snr}", BASE, {"distribution": distribution, "snr": snr}))
    return rows


def table(records: list[dict]) -> str:
    """Markdown table of the records."""
    lines = [
        "| group | run | parameters | samples | per-pixel error | relative L1 | SSIM | "
        "noisy per-pixel error | train s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for record in records:
        lines.append(
            f"| {record['group']} | {record['label']} | {record['parameters']:,} | "
            f"{record['n_samples']:,} | {record['per_pixel_error']:.4f} | "
            f"{record['relative_l1']:.3f} | {record['ssim']:.3f} | "
            f"{record['noisy_per_pixel_error']:.3f} | {record['train_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


FOOTER = (
    "\nThe 2,000,000-sample row is not run (about 5 min of CPU at the rates above): for the "
    "trend beyond 700,000 see the shipped `paper` model, trained on 5 × 700,000 windows "
    "(`benchmarks/results/train_*.json`).\n"
)


def write(records: list[dict], header: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("ablation.md", header + "\n" + table(records) + FOOTER),
        ("ablation.json", json.dumps(records, indent=2) + "\n"),
    ):
        temporary = RESULTS / f".{name}.part"
        temporary.write_text(text)
        temporary.replace(RESULTS / name)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=100_000)
    parser.add_argument("--test-n", type=int, default=2000)
    parser.add_argument("--test-seed", type=int, default=2024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", help="comma-separated groups to run (default: all)")
    parser.add_argument(
        "--render", action="store_true", help="only rewrite ablation.md from ablation.json"
    )
    args = parser.parse_args(argv)

    groups = set(args.only.split(",")) if args.only else None
    header = (
        "# Ablation of the dense auto-encoder\n\n"
        f"One epoch of {args.n_samples:,} fresh PAPER windows per run unless stated (seed "
        f"{args.seed}, batch 512, Adam 1e-3 with cosine decay, per-window standardisation), "
        f"scored on the same {args.test_n:,} fresh windows (test seed {args.test_seed}; for the "
        "SNR rows, test windows at that SNR). Per-pixel error: mean |output − truth| with the "
        "truth normalised to maximum 1 per window (the paper's figure). Command: "
        "`python benchmarks/ablation.py"
        + (f" --n-samples {args.n_samples}" if args.n_samples != 100_000 else "")
        + (f" --only {args.only}" if args.only else "")
        + "`.\n"
    )
    if args.render:
        records = json.loads((RESULTS / "ablation.json").read_text())
        write(records, header)
        return records
    test_sets: dict = {}
    records: list[dict] = []
    for group, label, config, overrides in runs(args.n_samples):
        if groups is not None and group not in groups:
            continue
        overrides = dict(overrides)
        snr = overrides.pop("snr", None)
        distribution = overrides.get("distribution", PAPER)
        if snr not in test_sets:
            test_sets[snr] = make_test_set(
                args.test_n, distribution=distribution, seed=args.test_seed
            )
        noisy, clean = test_sets[snr]
        n_samples = overrides.pop("n_samples", args.n_samples)
        started = time.perf_counter()
        model, _ = train(
            config,
            n_samples=n_samples,
            epochs=1,
            batch_size=512,
            seed=args.seed,
            block_size=16_384,
            **overrides,
        )
        seconds = time.perf_counter() - started
        metrics = evaluate(model, noisy, clean)
        records.append(
            {
                "group": group,
                "label": label,
                "encoder": list(config.encoder),
                "code": config.code,
                "activation": config.activation,
                "snr": snr if snr is not None else PAPER.snr_range[0],
                "parameters": model.count_params(),
                "n_samples": n_samples,
                "train_s": round(seconds, 1),
                **metrics,
                "noisy_per_pixel_error": error_metrics(noisy, clean)["per_pixel_error"],
            }
        )
        print(
            f"{group:10s} {label:28s} per-pixel {metrics['per_pixel_error']:.4f} "
            f"rel L1 {metrics['relative_l1']:.3f} ({seconds:.0f} s)",
            flush=True,
        )
        write(records, header)
    return records


if __name__ == "__main__":
    main()
