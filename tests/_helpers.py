"""Helpers shared by the test modules of the floating window, the lattice and denoise."""

from __future__ import annotations

import keras
import numpy as np

from stem_ae._common import WINDOW


def linear_model(kernel: np.ndarray) -> keras.Sequential:
    """A linear window model ``x -> x @ kernel`` without bias (784 -> 784)."""
    model = keras.Sequential(
        [
            keras.Input((WINDOW, WINDOW)),
            keras.layers.Flatten(),
            keras.layers.Dense(WINDOW * WINDOW, use_bias=False),
            keras.layers.Reshape((WINDOW, WINDOW)),
        ]
    )
    model.layers[1].set_weights([kernel.astype(np.float32)])
    return model


def lattice_image(shape, spacing, angle_deg, kind, rng):
    """Sum of cosines with the reciprocal vectors of a square/rectangular/hexagonal lattice."""
    y, x = np.indices(shape, dtype=float)
    t = np.deg2rad(angle_deg)
    directions = {"square": [0, 90], "rectangular": [0, 90], "hexagonal": [0, 60, 120]}[kind]
    ratios = {"square": [1, 1], "rectangular": [1, 0.7], "hexagonal": [1, 1, 1]}[kind]
    weights = {"square": [1, 1], "rectangular": [1, 0.8], "hexagonal": [1, 1, 1]}[kind]
    image = np.zeros(shape)
    for direction, ratio, weight in zip(directions, ratios, weights, strict=True):
        phi = t + np.deg2rad(direction)
        g = np.array([-np.sin(phi), np.cos(phi)]) / (spacing * ratio)
        image += weight * np.cos(2 * np.pi * (g[0] * y + g[1] * x) + rng.uniform(0, 2 * np.pi))
    return image + 0.5 * rng.standard_normal(shape)
