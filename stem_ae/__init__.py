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
import sys
import types

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
    # train
    "train": "train",
    "evaluate": "train",
    # reconstruct
    "reconstruct": "reconstruct",
    "denoise": "reconstruct",
    "estimate_lattice": "reconstruct",
    "estimate_period": "reconstruct",
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
    submodule = importlib.import_module(f"stem_ae.{module}")
    # ``train`` and ``reconstruct`` are submodules too: they stay the (callable) submodule, so
    # that ``import stem_ae.train as t`` and ``stem_ae.train(config)`` both work.
    value = submodule if name == module else getattr(submodule, name)
    globals()[name] = value
    return value


class _CallableModule(types.ModuleType):
    """A submodule that can also be called as the public function it is named after.

    ``stem_ae.train`` and ``stem_ae.reconstruct`` are both submodules and public functions. Python
    binds a submodule to the package attribute of the same name the first time it is imported,
    which would hide the function; making the module callable keeps ``stem_ae.train(config)`` and
    ``stem_ae.reconstruct(image, model)`` working whichever way the module was first imported.
    """

    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


def _callable_module(name: str) -> None:
    """Let module ``name`` (e.g. ``"stem_ae.train"``) be called as its namesake function."""
    sys.modules[name].__class__ = _CallableModule


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
