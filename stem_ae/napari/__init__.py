"""napari plugin of stem_ae: a "Denoise (stem_ae)" dock widget.

Declared in ``napari.yaml`` (npe2) through the ``napari.manifest`` entry point; install it with
``pip install 'stem_ae[napari]'`` and open it from Plugins ▸ Denoise (stem_ae). Importing this
package imports neither napari nor Qt: :mod:`stem_ae.napari._widget` does, when napari asks for
the widget.
"""

from __future__ import annotations

from stem_ae.napari._layers import denoise_layer_data

__all__ = ["denoise_layer_data"]
