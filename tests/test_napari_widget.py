"""The "Denoise (stem_ae)" widget in a real (headless) napari viewer: ``make test-napari``.

Skipped unless the ``napari`` extra is installed; ``make test-napari`` installs it in its own
environment (build/venv-napari) and runs this file with ``QT_QPA_PLATFORM=offscreen``.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from stem_ae.simulate import simulate_scene  # noqa: E402

pytestmark = [
    # napari and its dependencies warn on import about things we cannot change
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:System theme detection:UserWarning"),
]


@pytest.fixture(autouse=True)
def _offscreen_gl(monkeypatch):
    """Qt's offscreen platform gives vispy no GL strings (vispy/vispy#2736): answer for it."""
    if os.environ.get("QT_QPA_PLATFORM") != "offscreen":
        return
    for name in (
        "napari._vispy.utils.gl",
        "napari._vispy.layers.image",
        "napari._vispy.layers.base",
        "napari._vispy.layers.labels",
        "napari._vispy.canvas",
    ):
        module = importlib.import_module(name)
        if hasattr(module, "get_gl_extensions"):
            monkeypatch.setattr(module, "get_gl_extensions", lambda: "")
        monkeypatch.setattr(module, "get_max_texture_sizes", lambda: (2048, 2048))


def test_widget_is_found_through_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("stem_ae", "Denoise (stem_ae)")
    assert type(widget).__name__ == "DenoiseWidget"
    assert widget.model.value == "auto" and widget.contrast.value == "auto"
    assert widget.step.value == 0  # 0: the model's own step (DEFAULT_STEPS)
    assert {"general", "general_conv", "paper"} <= set(widget.model.choices)


def test_widget_denoises_the_selected_layer_with_its_scale(make_napari_viewer, qtbot):
    from stem_ae.napari._widget import DenoiseWidget

    viewer = make_napari_viewer()
    scene = simulate_scene((96, 96), pixel_size=0.25, dose=20.0, rng=0)
    viewer.add_image(scene.noisy, name="HAADF", scale=(0.025, 0.03))
    widget = DenoiseWidget(viewer)
    widget.step.value = 4
    widget.uncertainty.value = True
    assert widget.layer.value.name == "HAADF"
    seen = []
    worker = widget.run()
    worker.yielded.connect(seen.append)
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    names = [layer.name for layer in viewer.layers]
    assert names == ["HAADF", "HAADF denoised", "HAADF uncertainty"]
    for layer in viewer.layers[1:]:
        np.testing.assert_allclose(layer.scale, (0.025, 0.03))
        assert layer.metadata["stem_ae"]["parameters"]["step"] == 4
    assert np.std(viewer.layers["HAADF denoised"].data) < np.std(scene.noisy)
    assert widget.progress.value == 100 and widget.status.value.startswith("Done")


def test_widget_without_an_image_says_what_to_do(make_napari_viewer):
    from stem_ae.napari._widget import DenoiseWidget

    widget = DenoiseWidget(make_napari_viewer())
    assert widget.run() is None
    assert "image layer" in widget.status.value
