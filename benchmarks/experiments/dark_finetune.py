"""Does ``general_conv`` need inverted dark windows in its training? A fine-tune, side by side.

``denoise`` turns a dark-column image (ABF, BF) upside down before the network, so the network
sees bright columns inside dark rims, with the noise of the bright background. The shipped
``general_conv`` was trained on ``REALISTIC``, which has no such window. This script fine-tunes
the shipped model for the same wall-clock budget on two pools drawn with the same seed:

- ``control``: ``REALISTIC`` itself (what more training alone does);
- ``dark``: ``REALISTIC`` with 20 % of the windows ABF-like and turned upside down after the noise
  (``dark_fraction=0.2, dark_inverted=True``, depth 0.2–0.6, rim 0–0.15).

Each fine-tuned model, and the shipped one, then runs through ``denoise`` on ``quality.py``'s ABF
scenes (0.2 Å/px, 4 / 16 / 64 counts/px, 3 seeds) and white-Poisson scenes (0.2 Å/px, 1–64
counts/px), and on the two real [110] images of ``real.py`` (ADF and ABF). Usage (about 20 min on
2 cores)::

    python benchmarks/experiments/dark_finetune.py [--budget 420] [--pool 60000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
import numpy as np
import quality
import real
import realdata
from ablation_general import _Budget

import stem_ae
from stem_ae.model import compile_for, get_config, load_model
from stem_ae.simulate import REALISTIC, REALISTIC_DARK
from stem_ae.training import _standardized_pair, draw_pool

DARK = REALISTIC_DARK
RATE = 2e-4
BATCH = 64


SHIPPED = Path(stem_ae.__file__).resolve().parent / "models" / "general_conv"


def fine_tune(distribution, budget: float, pool: int):
    model = load_model(SHIPPED)  # by path: a copy of its own (the shipped name is cached)
    compile_for(model, get_config(model), RATE)
    noisy, clean = draw_pool(pool, distribution=distribution, seed=5, processes=1)
    inputs, targets = _standardized_pair(noisy, clean, "window")
    keras.utils.set_random_seed(0)
    model.fit(
        inputs, targets, batch_size=BATCH, epochs=1000, verbose=0, callbacks=[_Budget(budget)]
    )
    return model


def scenes(model, kind: str, doses) -> list[str]:
    quality._MODELS["candidate"] = model
    quality.RUNNERS["candidate"] = quality._stem_ae("candidate")
    lines = []
    for dose in doses:
        rows = [
            quality.run_case(0.2, float(dose), seed, ["candidate"], quality.SHAPE, kind=kind)[0]
            for seed in quality.SEEDS
        ]
        mean = {k: np.nanmean([r[k] for r in rows]) for k in ("psnr", "position_error_pm")}
        share = {k: 100 * np.nanmean([r[k] for r in rows]) for k in ("found", "invented", "filled")}
        lines.append(
            f"{kind} {dose:>4g}: {mean['psnr']:.2f} dB, {mean['position_error_pm']:.2f} pm, found "
            f"{share['found']:.1f} %, invented {share['invented']:.1f} %, "
            f"filled {share['filled']:.1f} %"
        )
    return lines


def real_images(model) -> list[str]:
    lines = []
    for name in ("sto110_adf", "sto110_abf"):
        image = realdata.by_name()[name]
        whole, pixel_size = realdata.load(image)
        raw = realdata.crop(image, whole).astype(np.float64)
        ctx = real.context(raw, image.contrast == "bright", pixel_size, image.reciprocal)
        out = stem_ae.denoise(raw, pixel_size=pixel_size, model=model)
        s = real.score(np.asarray(out, np.float64), ctx)
        lines.append(f"{name}: RMS {s['rms_px']:.4f} px, kept {100 * s['sites_kept']:.1f} %")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=420.0, help="fine-tune seconds each")
    parser.add_argument("--pool", type=int, default=60_000, help="windows per pool")
    args = parser.parse_args(argv)
    models = {"shipped": load_model("general_conv")}
    for name, distribution in (("control", REALISTIC), ("dark", DARK)):
        start = time.perf_counter()
        models[name] = fine_tune(distribution, args.budget, args.pool)
        print(f"{name}: fine-tuned in {time.perf_counter() - start:.0f} s", flush=True)
    for name, model in models.items():
        print(f"== {name}", flush=True)
        for line in (
            scenes(model, "abf", (4, 16, 64))
            + scenes(model, "poisson", (1, 4, 16, 64))
            + real_images(model)
        ):
            print("  " + line, flush=True)


if __name__ == "__main__":
    main()
