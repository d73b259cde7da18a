"""The "Denoise (stem_ae)" dock widget (imports napari, magicgui and Qt: napari only)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, Container, Label, ProgressBar, PushButton, SpinBox
from napari.layers import Image
from napari.qt.threading import thread_worker

from stem_ae.napari._layers import denoise_layer_data

if TYPE_CHECKING:
    import napari

CONTRASTS = ("auto", "bright", "dark")
"""Choices of the contrast box: ``auto`` lets :func:`stem_ae.denoise` decide."""


AUTO_MODEL = "auto"
"""First choice of the model box: ``stem_ae.denoise``'s default (``general``, or ``general_conv``
for dark columns)."""


def _model_choices() -> list[str]:
    from importlib import resources

    root = resources.files("stem_ae") / "models"
    names = sorted(entry.name for entry in root.iterdir() if (entry / "model.keras").is_file())
    return names or ["general"]


class DenoiseWidget(Container):
    """Denoise the selected image layer with stem_ae, in a worker thread, with progress.

    The result is added as ``"<layer> denoised"`` (and ``"<layer> uncertainty"``) with the
    input layer's scale and translate, and the record of processing in the new layers'
    ``metadata["stem_ae"]``.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Given by napari when it opens the widget.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.layer = ComboBox(label="image", choices=self._image_layers)
        self.step = SpinBox(label="step (px; 0: the model's)", value=0, min=0, max=28)
        self.model = ComboBox(
            label="model", choices=[AUTO_MODEL, *_model_choices()], value=AUTO_MODEL
        )
        self.contrast = ComboBox(label="contrast", choices=CONTRASTS, value="auto")
        self.uncertainty = CheckBox(text="also the uncertainty", value=False)
        self.run_button = PushButton(text="Denoise")
        self.progress = ProgressBar(label="progress", min=0, max=100, value=0)
        self.status = Label(value="")
        self.extend(
            [
                self.layer,
                self.step,
                self.model,
                self.contrast,
                self.uncertainty,
                self.run_button,
                self.progress,
                self.status,
            ]
        )
        self.run_button.changed.connect(self.run)
        self.viewer.layers.events.inserted.connect(self._refresh)
        self.viewer.layers.events.removed.connect(self._refresh)
        self.worker = None

    def _image_layers(self, _widget=None) -> list[Image]:
        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh(self, _event=None) -> None:
        self.layer.reset_choices()

    def run(self, _value=None):
        """Start denoising the chosen layer; returns the worker (already started)."""
        layer = self.layer.value
        if layer is None:
            self.status.value = "Open or select an image layer first."
            return None
        source = getattr(getattr(layer, "source", None), "path", None)
        ndim = layer.data.ndim
        options = {
            "name": layer.name,
            "scale": tuple(layer.scale)[-ndim:],
            "translate": tuple(layer.translate)[-ndim:],
            "step": int(self.step.value) or None,  # 0: the model's default
            "model": None if self.model.value == AUTO_MODEL else self.model.value,
            "contrast": self.contrast.value,
            "uncertainty": bool(self.uncertainty.value),
            "source": None if source is None else str(source),
        }
        data = layer.data

        @thread_worker
        def work():
            done = []

            def progress(count: int, total: int) -> None:
                done.append(int(100 * min(count, total) / max(total, 1)))

            # denoise runs in a helper thread; this generator yields its progress as it comes.
            result: dict = {}

            def target() -> None:
                try:
                    result["layers"] = denoise_layer_data(data, progress=progress, **options)
                except Exception as error:  # reported in the widget, not lost in the thread
                    result["error"] = error

            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            while thread.is_alive():
                thread.join(0.1)
                if done:
                    yield done[-1]
            if "error" in result:
                raise result["error"]
            return result["layers"]

        worker = work()
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_done)
        worker.errored.connect(self._on_error)
        self.run_button.enabled = False
        self.progress.value = 0
        self.status.value = f"Denoising {layer.name} …"
        self.worker = worker
        worker.start()
        return worker

    def _on_progress(self, percent: int) -> None:
        self.progress.value = percent

    def _on_done(self, layers) -> None:
        for data, kwargs, _ in layers:
            self.viewer.add_image(data, **kwargs)
        self.progress.value = 100
        self.status.value = "Done: " + ", ".join(kwargs["name"] for _, kwargs, _ in layers)
        self.run_button.enabled = True

    def _on_error(self, error: Exception) -> None:
        self.status.value = f"Failed: {error}"
        self.run_button.enabled = True
