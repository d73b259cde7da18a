"""Train a recipe (``stem_ae.training.RECIPES``); report throughput, wall time, peak RSS, error.

Usage::

    python benchmarks/train.py paper                      # the paper-scale run, not saved
    python benchmarks/train.py paper --save stem_ae/models/paper --json results/train_paper.json
    python benchmarks/train.py paper --epochs 1 --n-samples 100000   # a shorter run
    python benchmarks/train.py general_conv --distribution realistic_dark --epochs 5

Prints one line per epoch (loss, val_loss, samples/s) and a summary: samples/s, wall time, peak
RSS (this process and its children), and the error on a fixed test set of fresh windows drawn
from an independent seed stream (``make_test_set(n, seed=--test-seed)``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras

from stem_ae.model import LOSSES, get_config, save_model
from stem_ae.simulate import _DISTRIBUTIONS as DISTRIBUTIONS
from stem_ae.training import (
    RECIPES,
    VacancyCheck,
    error_metrics,
    evaluate,
    make_test_set,
    resolve_distribution,
    train_recipe,
)


def peak_rss_mb() -> float:
    """Peak resident memory of this process plus its largest finished child, MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


METRICS = ("per_pixel_error", "relative_l1", "rmse", "psnr", "ssim")


class EpochReport(keras.callbacks.Callback):
    """Print loss and throughput after every epoch."""

    def __init__(self, n_samples: int) -> None:
        super().__init__()
        self.n_samples = n_samples
        self.started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        logs = logs or {}
        validation = f" val_loss {logs['val_loss']:.5f}" if "val_loss" in logs else ""
        if "vacancies_filled" in logs:
            validation += f" vacancies filled {logs['vacancies_filled']:.1%}"
        print(
            f"epoch {epoch + 1}: loss {logs.get('loss', float('nan')):.5f}{validation} "
            f"{self.n_samples / seconds:,.0f} samples/s ({seconds:.0f} s)",
            flush=True,
        )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", choices=sorted(RECIPES))
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--n-samples", type=int, help="override the recipe's samples per epoch")
    parser.add_argument("--seed", type=int, help="override the recipe's seed")
    parser.add_argument(
        "--distribution",
        choices=sorted(DISTRIBUTIONS),
        help="override the recipe's training distribution (stem_ae.simulate, by name)",
    )
    parser.add_argument(
        "--loss", choices=LOSSES, help="override the recipe's training loss (AEConfig.loss)"
    )
    parser.add_argument("--test-n", type=int, default=5000, help="test windows (default 5000)")
    parser.add_argument("--test-seed", type=int, default=2024, help="test-set seed")
    parser.add_argument("--validation", type=int, default=2000, help="val windows per epoch")
    parser.add_argument("--save", type=Path, help="save the model folder here")
    parser.add_argument("--json", type=Path, help="write the summary as JSON here")
    args = parser.parse_args(argv)

    recipe = RECIPES[args.recipe]
    overrides = {
        key: value
        for key, value in (
            ("epochs", args.epochs),
            ("n_samples", args.n_samples),
            ("seed", args.seed),
            ("distribution", args.distribution),
        )
        if value is not None
    }
    if args.loss is not None:
        overrides["config"] = dataclasses.replace(recipe["config"], loss=args.loss)
    n_samples = overrides.get("n_samples", recipe["n_samples"])
    epochs = overrides.get("epochs", recipe["epochs"])
    print(f"recipe {args.recipe}: {n_samples:,} samples x {epochs} epochs", flush=True)
    started = time.perf_counter()
    model, history = train_recipe(
        args.recipe,
        **overrides,
        validation=args.validation or None,
        callbacks=[VacancyCheck(), EpochReport(n_samples)],
    )
    wall = time.perf_counter() - started
    rss = peak_rss_mb()
    summary: dict = {
        "recipe": args.recipe,
        "command": "python benchmarks/train.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "n_samples": n_samples,
        "epochs": epochs,
        "parameters": model.count_params(),
        "wall_s": round(wall, 1),
        "samples_per_s": round(n_samples * epochs / wall),
        "peak_rss_mb": round(rss),
        "loss": [round(value, 6) for value in history.history["loss"]],
        "val_loss": [round(value, 6) for value in history.history.get("val_loss", [])],
        # the network alone on windows around vacancies at 1 count/px (training.VacancyCheck)
        "vacancies_filled": [
            round(value, 4) for value in history.history.get("vacancies_filled", [])
        ],
        "config": get_config(model).to_dict(),
        "test": {},
    }
    print(
        f"trained {model.count_params():,} parameters: {summary['samples_per_s']:,} samples/s, "
        f"wall {wall:.0f} s, peak RSS {rss:,.0f} MB",
        flush=True,
    )
    distributions = list(dict.fromkeys([recipe["distribution"], "general", "paper"]))
    if args.recipe == "paper":
        distributions = ["paper"]
    for distribution in distributions:
        noisy, clean = make_test_set(args.test_n, distribution=distribution, seed=args.test_seed)
        metrics = evaluate(model, noisy, clean)
        baseline = error_metrics(noisy, clean)
        name = resolve_distribution(distribution).name  # a recipe may hold the object itself
        summary["test"][name] = {"model": metrics, "noisy_input": baseline}
        print(
            f"test {name} ({args.test_n} windows, seed {args.test_seed}): "
            + ", ".join(f"{key} {metrics[key]:.4f}" for key in METRICS)
            + f" | noisy input: per_pixel_error {baseline['per_pixel_error']:.4f}, "
            f"relative_l1 {baseline['relative_l1']:.4f}",
            flush=True,
        )
    if args.save is not None:
        save_model(model, args.save)
        print(f"saved {args.save}", flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        temporary = args.json.with_name(f".{args.json.name}.part")
        temporary.write_text(json.dumps(summary, indent=2) + "\n")
        temporary.replace(args.json)
    return summary


if __name__ == "__main__":
    main()
