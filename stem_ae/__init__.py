"""stem_ae: stacked auto-encoder denoising of atomic-resolution STEM images.

The public API is re-exported here lazily, so that ``import stem_ae`` (and ``stem-ae --help``)
stay fast: TensorFlow/Keras are imported only when a name that needs them is first used.

Examples
--------
>>> import stem_ae
>>> scene = stem_ae.simulate_scene((64, 64), pixel_size=0.2, dose=16.0, rng=0)
>>> scene.noisy.shape
(64, 64)
"""

from __future__ import annotations

import importlib
import os

# TensorFlow's C++ start-up lines ("oneDNN custom operations are on ...") are information, not
# warnings: keep them out of a microscopist's terminal unless the user asked for them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from stem_ae._version import __version__

_LAZY = {
    # simulate
    "Lattice": "simulate",
    "NoiseModel": "simulate",
    "Scene": "simulate",
    "TrainingDistribution": "simulate",
    "srtio3_lattice": "simulate",
    "random_lattice": "simulate",
    "training_batch": "simulate",
    "simulate_scene": "simulate",
    # model
    "AEConfig": "model",
    "build_autoencoder": "model",
    "save_model": "model",
    "load_model": "model",
    "available_models": "model",
    "get_config": "model",
    # training
    "train": "training",
    "evaluate": "training",
    # lattice
    "estimate_lattice": "lattice",
    "estimate_period": "lattice",
    "measure_lattice": "lattice",
    # windows, denoising
    "reconstruct": "windows",
    "denoise": "denoising",
    # io
    "read_image": "io",
    "write_image": "io",
    # analysis
    "find_columns": "analysis",
    "assign_sublattices": "analysis",
    "lattice_map": "analysis",
    "elongation_profile": "analysis",
    "match_columns": "analysis",
    "crlb_position": "analysis",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stem_ae' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"stem_ae.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
