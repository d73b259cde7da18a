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
``ablation_general.md`` is written from it. A budget in seconds means little without the CPU,
so every row names its CPU; a candidate rerun on another CPU gets a row of its own.

``--scenes`` also runs each trained candidate (and the shipped models) through the default
``denoise`` on ``benchmarks/quality.py``'s white-Poisson scenes at 0.2 Å/px (3 seeds): PSNR,
position error and vacancies filled at each dose, the whole-image columns of the issue's ablation.

``--real`` also scores each trained candidate, alone (``residual="none"``), on the noisy real
images of ``benchmarks/real.py`` (:data:`REAL_IMAGES`; lattice-fit RMS, px, with the fraction of
sites kept), beside the shipped ``general`` and ``general_conv`` scored the same way, so that a
short-run candidate is compared with short-run candidates of the same CPU, and the shipped models
show how far training takes them. ``--save DIR`` keeps each trained candidate in ``DIR/<name>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _machine
import keras
import numpy as np

from stem_ae.io import _atomic_write
from stem_ae.model import (
    AEConfig,
    build_autoencoder,
    counts_weights,
    save_model,
    standardize,
    unstandardize,
)
from stem_ae.simulate import REALISTIC, TrainingDistribution
from stem_ae.training import _standardized_pair, draw_pool, error_metrics, make_test_set
from stem_ae.windows import reconstruct

RESULTS = Path(__file__).resolve().parent / "results"
JSON = RESULTS / "ablation_general.json"
DOSES = (1, 4, 16, 64)

SHIPPED_PREFIX = "shipped:"  # records of the shipped models (``--real`` only), not candidates
REFERENCE_BM3D = SHIPPED_PREFIX + "bm3d"  # BM3D's ``--scenes`` scores, beside the shipped models


def _conv(encoder: tuple, code: int, note: str = "", **options) -> tuple[str, AEConfig, int]:
    """A convolutional candidate (relu, batch 64): ``(description, config, batch size)``."""
    description = f"conv {encoder[0]}-{encoder[1]} / {code}, relu{note}"
    config = AEConfig(encoder=encoder, code=code, architecture="conv", **options)
    return description, config, 64


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
    # Narrower dense networks: the same global code at a fraction of the multiply-adds per
    # window (2.99 M for 1024-512-256; 1.56 M for 640-320-160; 1.16 M for 512-256-128).
    "dense_relu_640_128": (
        "dense 640-320-160 / 128, relu",
        AEConfig(encoder=(640, 320, 160), code=128),
        512,
    ),
    "dense_relu_512_128": (
        "dense 512-256-128 / 128, relu",
        AEConfig(encoder=(512, 256, 128), code=128),
        512,
    ),
    "conv_32_64": _conv((32, 64), 64),
    "conv_16_32": _conv((16, 32), 64),
    "conv_24_48": _conv((24, 48), 64),
    "conv_24_48_aa": _conv(
        (24, 48), 64, ", anti-aliased strides (binomial blur, `antialias=True`)", antialias=True
    ),
    # A real bottleneck: 64 channels at 7 x 7 hold 3,136 numbers for a 784-pixel window (no
    # compression, a learned local filter); 16 or 8 channels force a code of 784 or 392.
    "conv_24_48_c16": _conv((24, 48), 16, " (code 7 × 7 × 16 = 784)"),
    "conv_24_48_c8": _conv((24, 48), 8, " (code 7 × 7 × 8 = 392)"),
    # A global code between convolutional layers (``dense_code``): every output pixel sees the
    # whole window, as in the dense AE, whose multi-cell view keeps the real images' columns
    # on their lattice, while the layers next to the pixels stay convolutional (no dense floor?).
    "conv_24_48_d256": _conv(
        (24, 48), 48, ", dense code 256 (7 × 7 × 48 → 256 → 7 × 7 × 48)", dense_code=256
    ),
    "conv_24_48_d128": _conv(
        (24, 48), 32, ", dense code 128 (7 × 7 × 32 → 128 → 7 × 7 × 32)", dense_code=128
    ),
    # The loss in counts (issue 14's last candidate), against a rerun of the same network in the
    # same session with the usual loss: budgets compare only within one run of one CPU.
    "conv_24_48_control": _conv((24, 48), 64, " (control beside the loss in counts)"),
    "conv_24_48_counts": _conv(
        (24, 48),
        64,
        ", loss in counts (errors weighted by 1 / (clean + 0.02): the Poisson variance)",
        loss="counts",
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


#: whole scenes of ``benchmarks/quality.py`` for ``--scenes``: white Poisson at this pixel size
SCENE_PIXEL_SIZE = 0.2
SCENE_SEEDS = (9001, 9002, 9003)


def scene_scores(model, method: str = "candidate") -> dict[str, list[float]]:
    """``{"dose d": [PSNR dB, position error pm, vacancies filled]}``: ``denoise(scene,
    model=model)`` (a model or a shipped name; the default pipeline) on the white-Poisson
    scenes of ``benchmarks/quality.py`` (RP fault, strain, 5 % vacancies, 192²,
    :data:`SCENE_PIXEL_SIZE`), means over
    :data:`SCENE_SEEDS`. ``method``: another of ``quality.py``'s methods instead (``"bm3d"``;
    then ``model`` is unused)."""
    import quality

    if method == "candidate":
        quality._MODELS["candidate"] = model
        quality.RUNNERS["candidate"] = quality._stem_ae("candidate")
    scores = {}
    for dose in DOSES:
        rows = [
            quality.run_case(SCENE_PIXEL_SIZE, float(dose), seed, [method], quality.SHAPE)[0]
            for seed in SCENE_SEEDS
        ]
        scores[f"dose {dose}"] = [
            round(float(np.mean([r[key] for r in rows])), 3)
            for key in ("psnr", "position_error_pm", "filled")
        ]
    return scores


#: the noisy real images of ``benchmarks/real.py`` (the two atomap images are nearly clean)
REAL_IMAGES = ("tecnai_srtio3", "rebco", "mos2_se", "au_particle")


def real_scores(model) -> dict[str, list[float]]:
    """``{image: [RMS px, sites kept, shift kept]}`` of ``denoise(image, model=model,
    residual="none")``: ``real.py``'s lattice fit, and its shift-kept bias check (NaN where no
    displaced column could be measured)."""
    import real
    import realdata

    from stem_ae import denoise

    scores = {}
    for name in REAL_IMAGES:
        image = realdata.by_name()[name]
        whole, pixel_size = realdata.load(image)
        raw = realdata.crop(image, whole).astype(np.float64)
        ctx = real.context(raw, image.contrast == "bright", pixel_size, image.reciprocal)
        output = np.asarray(denoise(raw, model=model, residual="none"), np.float64)
        result = real.score(output, ctx)
        kept = float("nan")
        shift = real.make_shift(ctx)
        if shift is not None:
            warped = np.asarray(denoise(shift.warped, model=model, residual="none"), np.float64)
            kept = real.shift_kept(output, warped, ctx, shift)[0]
        scores[name] = [
            round(result["rms_px"], 3),
            round(result["sites_kept"], 3),
            round(kept, 2) if np.isfinite(kept) else None,
        ]
    return scores


def run(
    name: str,
    pool,
    tests,
    budget: float,
    save: Path | None = None,
    real: bool = False,
    scenes: bool = False,
    seed: int = 0,
) -> dict:
    description, config, batch = CANDIDATES[name]
    if seed:
        description += f", weights seed {seed}"
    keras.utils.set_random_seed(seed)
    model = build_autoencoder(config)
    inputs, targets, weights = pool
    if config.loss == "counts":  # build_autoencoder compiled it with counts_loss
        targets = np.stack([targets, weights], axis=-1)
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
    if save is not None:
        save_model(model, save / name)
    if real:
        row["real"] = real_scores(model)
    if scenes:
        row["scenes"] = scene_scores(model)
    return row


def record_key(records: dict, name: str, where: str) -> str:
    """``name``, or ``"name @ CPU"`` when ``name`` was measured on another machine: a rerun on a
    different CPU sits beside the earlier row instead of replacing it."""
    earlier = records.get(name)
    if earlier is None or earlier.get("machine") == where:
        return name
    return f"{name} @ {_cpu({'machine': where})}"


def _cpu(row: dict) -> str:
    """The CPU model of a row's machine, shortened (``"AMD EPYC"``, ``"Intel Xeon 2.00GHz"``)."""
    parts = row.get("machine", "?").split(", ")
    name = parts[1] if len(parts) == 3 else "?"
    name = name.replace("(R)", "").replace(" Processor", "").replace(" CPU", "")
    return " ".join(word for word in name.split() if word != "@")


def _count(value) -> str:
    return "—" if value is None else f"{value:,}"


def _real_cell(scores) -> str:
    """``RMS (kept %)``, and ``; shift kept`` where it was measured."""
    if scores is None:
        return "—"
    cell = f"{scores[0]:.3f} ({100 * scores[1]:.0f} %)"
    if len(scores) > 2 and scores[2] is not None:
        cell += f"; {scores[2]:.2f}"
    return cell


def real_table(records: dict) -> list[str]:
    """The ``--real`` scores, candidates first, then the shipped models for reference."""
    rows = [(key, row) for key, row in records.items() if "real" in row]
    if not rows:
        return []
    lines = [
        "## Real images, network alone",
        "",
        '`denoise(image, model=candidate, residual="none")` on the noisy real images of '
        "`benchmarks/real.py`, scored as there: lattice-fit RMS (px; lower is better) and, in "
        "brackets, the sites that keep a column, then the share of a known local displacement "
        "the output keeps (real.py's shift kept; 1 keeps the data's; rows scored before that "
        "check have none). Short-run candidates compare with each other; "
        "the shipped models (trained 30–60 min) show what training adds.",
        "",
        "| candidate | CPU | " + " | ".join(f"`{name}`" for name in REAL_IMAGES) + " |",
        "|---|---|" + "---:|" * len(REAL_IMAGES),
    ]
    for _key, row in rows:
        cells = [_real_cell(row["real"].get(name)) for name in REAL_IMAGES]
        lines.append(f"| {row['description']} | {_cpu(row)} | " + " | ".join(cells) + " |")
    return lines


def scene_table(records: dict) -> list[str]:
    """The ``--scenes`` scores, candidates first, then the shipped models."""
    rows = [row for row in records.values() if "scenes" in row]
    if not rows:
        return []
    lines = [
        "## Whole scenes, `denoise` default pipeline",
        "",
        f"`denoise(scene, model=candidate)` on the white-Poisson scenes of `benchmarks/quality.py` "
        f"at {SCENE_PIXEL_SIZE:g} Å/px (RP fault, strain, 5 % vacancies, 192², seeds "
        f"{', '.join(map(str, SCENE_SEEDS))}; means): PSNR (dB) / position error (pm) / "
        "vacancies filled, at each dose (counts/px). Rows scored before this table have none.",
        "",
        "| candidate | CPU | " + " | ".join(f"dose {d}" for d in DOSES) + " |",
        "|---|---|" + "---:|" * len(DOSES),
    ]
    for row in rows:
        cells = []
        for d in DOSES:
            value = row["scenes"].get(f"dose {d}")
            cells.append(
                "—"
                if value is None
                else f"{value[0]:.2f} / {value[1]:.2f} / {100 * value[2]:.1f} %"
            )
        lines.append(f"| {row['description']} | {_cpu(row)} | " + " | ".join(cells) + " |")
    return lines


def table(records: dict) -> str:
    columns = ["noise-free", *(f"dose {d}" for d in DOSES)]
    shipped = {k: v for k, v in records.items() if k.startswith(SHIPPED_PREFIX)}
    records = {k: v for k, v in records.items() if k not in shipped}
    first = next(iter(records.values()), {})
    lines = [
        "# Ablation for the `general` model",
        "",
        "Command: `python benchmarks/ablation_general.py` (module docstring: the protocol). Every "
        "candidate trains for the same wall-clock budget on the same pool of "
        f"{first.get('pool', '?'):,} windows of the `realistic` distribution on the "
        "row's CPU (2 cores; compare budgets only within one CPU); PSNR (dB) is the mean over "
        "1,000 test windows of the "
        "per-window PSNR against the noise-free truth (window range as peak). `input` is the "
        "noisy window itself. s at 1024²: `reconstruct(step=2)` of a 1024² image.",
        "",
        "| candidate | CPU | parameters | train s | windows seen | "
        + " | ".join(columns)
        + " | s at 1024² |",
        "|---|---|---:|---:|---:|" + "---:|" * len(columns) + "---:|",
    ]
    for row in records.values():
        cells = [row["noise-free"]] + [
            f"{row[f'dose {d}']} (input {row[f'dose {d} input']})" for d in DOSES
        ]
        lines.append(
            f"| {row['description']} | {_cpu(row)} | {row['parameters']:,} | {row['train_s']} | "
            f"{_count(row['windows_seen'])} | "
            + " | ".join(map(str, cells))
            + f" | {row['s_1024']} |"
        )
    if any("‡" in row["description"] for row in records.values()):
        lines += [
            "",
            "‡ From the first run of this protocol (the same pool, test windows and code, a "
            "budget of 240 s; s at 1024², and windows seen by the stopped conv run, not recorded "
            "then). The earlier dense `general` took 8.6–9.3 s at 1024² (step 2) on the AMD EPYC.",
        ]
    cpus = {_cpu(row) for row in records.values()}
    if {"Intel Xeon", "Intel Xeon 2.00GHz"} <= cpus:
        lines += [
            "",
            "CPUs: `Intel Xeon 2.00GHz` has AVX-512 without AMX or AVX512-BF16; `Intel Xeon` "
            "(model name `Intel(R) Xeon(R) Processor`) has AMX. Both train in float32 here, so "
            "their budgets compare only roughly: compare rows of one CPU.",
        ]
    for extra in (real_table({**records, **shipped}), scene_table({**records, **shipped})):
        if extra:
            lines += ["", *extra]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"candidates (default all): {list(CANDIDATES)}")
    parser.add_argument("--budget", type=float, default=240.0, help="training seconds each")
    parser.add_argument("--pool", type=int, default=100_000, help="windows in the pool")
    parser.add_argument(
        "--save", type=Path, default=None, help="keep each trained candidate in SAVE/<name>"
    )
    parser.add_argument(
        "--real", action="store_true", help="also score each candidate on the noisy real images"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the initial weights and batch order (not 0: a row of its own, NAME_seedN)",
    )
    parser.add_argument(
        "--scenes",
        action="store_true",
        help="also score each candidate through denoise on quality.py's white-Poisson scenes",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(CANDIDATES))
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; choose from {list(CANDIDATES)}")
    if args.real:  # the real images first: a missing one stops the run before any training
        import realdata

        try:
            for name in REAL_IMAGES:
                realdata.locate(realdata.by_name()[name])
        except realdata.DataUnavailable as error:
            raise SystemExit(f"error: {error}") from None
    start = time.perf_counter()
    noisy, clean = draw_pool(args.pool, distribution=REALISTIC, seed=11, processes=2)
    pool = (*_standardized_pair(noisy, clean, "window"), None)
    if any(CANDIDATES[name][1].loss == "counts" for name in args.names or CANDIDATES):
        pool = (*pool[:2], counts_weights(clean))
    del clean
    print(f"pool of {args.pool:,} windows in {time.perf_counter() - start:.0f} s", flush=True)
    tests = test_sets()
    records = json.loads(JSON.read_text(encoding="utf-8")) if JSON.exists() else {}
    for name in args.names or list(CANDIDATES):
        row = run(name, pool, tests, args.budget, args.save, args.real, args.scenes, args.seed)
        row.update(pool=args.pool, machine=_machine.describe())
        key = name if not args.seed else f"{name}_seed{args.seed}"
        records[record_key(records, key, row["machine"])] = row
        print(name, json.dumps(row), flush=True)
        write(records)
    if args.real or args.scenes:
        for shipped in ("general", "general_conv"):
            record = records.setdefault(SHIPPED_PREFIX + shipped, {})
            record.update(description=f"shipped `{shipped}`", machine=_machine.describe())
            if args.real:
                record["real"] = real_scores(shipped)
            if args.scenes:
                record["scenes"] = scene_scores(shipped)  # denoise takes the name
        if args.scenes:
            records[REFERENCE_BM3D] = {
                "description": "BM3D (Anscombe; `quality.py`'s), for reference",
                "machine": _machine.describe(),
                "scenes": scene_scores(None, "bm3d"),
            }
        write(records)


def write(records: dict) -> None:
    """``ablation_general.json`` and ``.md``, each written atomically."""
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
