"""The napari plugin without napari: its npe2 manifest, its entry point, and the layer work.

The widget itself (Qt, a viewer) is tested in tests/test_napari_widget.py by ``make test-napari``,
in its own environment with the ``napari`` extra.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from importlib import metadata, resources

import numpy as np
import pytest
import yaml

from stem_ae.napari import denoise_layer_data
from stem_ae.simulate import simulate_scene


def _manifest() -> dict:
    return yaml.safe_load((resources.files("stem_ae.napari") / "napari.yaml").read_text())


def _defines(module: str, name: str) -> bool:
    """Whether ``module``'s source defines ``name`` at top level (without importing it)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, module
    with open(spec.origin, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    defined = {
        node.name
        for node in tree.body
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    }
    return name in defined


def test_manifest_is_valid_npe2_with_the_denoise_widget():
    manifest = _manifest()
    assert manifest["name"] == "stem_ae"
    commands = {c["id"]: c for c in manifest["contributions"]["commands"]}
    widgets = manifest["contributions"]["widgets"]
    assert [w["display_name"] for w in widgets] == ["Denoise (stem_ae)"]
    for widget in widgets:
        command = commands[widget["command"]]
        assert command["id"].startswith(manifest["name"] + ".")
        module, _, attribute = command["python_name"].partition(":")
        assert _defines(module, attribute), command["python_name"]


def test_manifest_is_registered_as_a_napari_entry_point():
    points = metadata.entry_points(group="napari.manifest")
    ours = [p for p in points if p.name == "stem_ae"]
    assert ours and ours[0].value == "stem_ae.napari:napari.yaml"


def test_importing_the_plugin_package_imports_neither_napari_nor_qt():
    code = (
        "import sys, stem_ae.napari; "
        "print(sorted(m for m in ('napari', 'magicgui', 'qtpy', 'PyQt5') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def scene():
    return simulate_scene((96, 96), pixel_size=0.25, dose=20.0, rng=0)


def test_layer_data_without_a_step_uses_and_records_the_models_default(scene):
    from stem_ae import denoise

    (denoised, kwargs, _), *_ = denoise_layer_data(scene.noisy, name="HAADF", contrast="bright")
    assert kwargs["metadata"]["stem_ae"]["parameters"]["step"] == 3  # general: DEFAULT_STEPS
    assert denoised.tobytes() == denoise(scene.noisy, contrast="bright", step=3).tobytes()
    conv = denoise_layer_data(scene.noisy, model="general_conv", contrast="bright")
    assert conv[0][1]["metadata"]["stem_ae"]["parameters"]["step"] == 2


def test_layer_data_keeps_scale_and_translate_and_records_processing(scene):
    calls = []
    layers = denoise_layer_data(
        scene.noisy,
        name="HAADF",
        scale=(0.025, 0.03),
        translate=(1.0, 2.0),
        step=4,
        uncertainty=True,
        contrast="bright",
        progress=lambda done, total: calls.append((done, total)),
    )
    (denoised, kwargs, kind), (spread, spread_kwargs, _) = layers
    assert kind == "image" and denoised.shape == spread.shape == scene.noisy.shape
    assert kwargs["name"] == "HAADF denoised" and spread_kwargs["name"] == "HAADF uncertainty"
    assert kwargs["scale"] == spread_kwargs["scale"] == (0.025, 0.03)
    assert kwargs["translate"] == (1.0, 2.0)
    record = kwargs["metadata"]["stem_ae"]
    assert record["parameters"]["step"] == 4 and record["parameters"]["contrast"] == "bright"
    assert record["lattice"] is not None and record["model"]["config_sha256"]
    assert spread_kwargs["metadata"]["stem_ae"]["output"] == "uncertainty"
    assert calls and calls[-1][0] == calls[-1][1]
    assert np.std(denoised) < np.std(scene.noisy)


def test_layer_data_default_model_follows_denoise_and_is_recorded():
    dark = simulate_scene((128, 128), pixel_size=0.15, dose=64.0, contrast="dark", rng=4).noisy
    bright = simulate_scene((128, 128), pixel_size=0.15, dose=64.0, rng=4).noisy
    for data, expected in ((dark, "general_conv"), (bright, "general")):
        (denoised, options, _), *_ = denoise_layer_data(data)
        assert options["metadata"]["stem_ae"]["model"]["name"] == expected
        np.testing.assert_array_equal(denoised, denoise_layer_data(data, model=expected)[0][0])
    # a contrast given by the user decides, as in denoise
    (_, options, _), *_ = denoise_layer_data(dark, contrast="bright")
    assert options["metadata"]["stem_ae"]["model"]["name"] == "general"


def test_layer_data_refuses_4d(scene):
    with pytest.raises(ValueError, match="select a 2-D image"):
        denoise_layer_data(np.zeros((2, 2, 40, 40)))
