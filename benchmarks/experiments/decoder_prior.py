"""Is the dense network's real-image precision in its decoder or in its encoder?

On the noisy real images of ``benchmarks/real.py`` the dense ``general`` places columns better
than the convolutional ``general_conv`` (Tecnai 0.95 against 1.14 px), and a global code between
convolutional layers (``AEConfig(dense_code=)``) did not close the gap
(``benchmarks/experiments/README.md``). This script swaps the halves: a convolutional encoder
with a dense decoder, and a dense encoder with a convolutional decoder, each a plain Keras
``Sequential`` (which ``stem_ae.denoise`` runs window by window), trained and scored exactly as
``benchmarks/ablation_general.py --real`` trains and scores its candidates (same pool, test
windows, 240 s budget, real images alone with ``residual="none"``).

Usage (from the repository root; ~12 min on 2 cores)::

    python benchmarks/experiments/decoder_prior.py [--budget 240]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ablation_general as ablation
import keras
import numpy as np
from keras import layers

from stem_ae.model import AEConfig, _attach, standardize, unstandardize
from stem_ae.simulate import REALISTIC
from stem_ae.training import _standardized_pair, draw_pool, error_metrics

W = 28


def conv(width, name, strides=1, activation="relu"):
    return layers.Conv2D(
        width, 3, strides=strides, padding="same", activation=activation, name=name
    )


def conv_encoder() -> list:
    """The encoder of ``general_conv`` (24-48, code 7 × 7 × 48)."""
    return [
        keras.Input(shape=(W, W), name="window"),
        layers.Reshape((W, W, 1)),
        conv(24, "encoder_0"),
        conv(48, "encoder_1_down", 2),
        conv(48, "encoder_1"),
        conv(48, "code_down", 2),
        conv(48, "code"),
    ]


def conv_decoder() -> list:
    return [
        layers.Conv2DTranspose(48, 3, strides=2, padding="same", activation="relu"),
        conv(48, "decoder_0"),
        layers.Conv2DTranspose(24, 3, strides=2, padding="same", activation="relu"),
        conv(24, "decoder_1"),
        conv(1, "output", activation="linear"),
        layers.Reshape((W, W)),
    ]


def build(name: str) -> keras.Sequential:
    if name == "conv_encoder_dense_decoder":
        stack = [
            *conv_encoder(),
            layers.Flatten(),
            layers.Dense(128, activation="relu", name="code_dense"),
            layers.Dense(256, activation="relu"),
            layers.Dense(512, activation="relu"),
            layers.Dense(1024, activation="relu"),
            layers.Dense(W * W, name="output"),
            layers.Reshape((W, W)),
        ]
    elif name == "dense_encoder_conv_decoder":
        stack = [
            keras.Input(shape=(W, W), name="window"),
            layers.Flatten(),
            layers.Dense(1024, activation="relu"),
            layers.Dense(512, activation="relu"),
            layers.Dense(256, activation="relu"),
            layers.Dense(128, activation="relu", name="code"),
            layers.Dense(7 * 7 * 48, activation="relu"),
            layers.Reshape((7, 7, 48)),
            *conv_decoder(),
        ]
    else:
        raise SystemExit(f"unknown candidate {name}")
    model = keras.Sequential(stack, name=name)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    # the training record gives denoise the sampling the pool was drawn at (6-10 px spacings);
    # "dense" only picks the dense rules (step 3), the layers run as the Keras graph
    config = AEConfig(encoder=(1024, 512, 256), code=128, name=name, training=REALISTIC.to_dict())
    _attach(model, config)
    return model


NAMES = ("conv_encoder_dense_decoder", "dense_encoder_conv_decoder")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(NAMES))
    parser.add_argument("--budget", type=float, default=240.0)
    args = parser.parse_args(argv)
    noisy, clean = draw_pool(100_000, distribution=REALISTIC, seed=11, processes=2)
    inputs, targets = _standardized_pair(noisy, clean, "window")
    tests = ablation.test_sets()
    for name in args.names:
        keras.utils.set_random_seed(0)
        model = build(name)
        start = time.perf_counter()
        model.fit(
            inputs,
            targets,
            batch_size=64,
            epochs=10_000,
            verbose=0,
            callbacks=[ablation._Budget(args.budget)],
        )
        row = {
            "parameters": model.count_params(),
            "train_s": round(time.perf_counter() - start, 1),
            "windows_seen": int(model.optimizer.iterations.numpy()) * 64,
        }
        for label, (test_noisy, test_clean) in tests.items():
            z, mu, scale = standardize(test_noisy)
            out = unstandardize(np.asarray(model.predict(z, batch_size=1024, verbose=0)), mu, scale)
            row[label] = round(error_metrics(out, test_clean)["psnr"], 2)
        row["real"] = ablation.real_scores(model)
        print(name, json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
