"""Constants and checks shared by several modules (the lowest room of the house: NumPy only).

Each is defined here once and imported where it is used (``stem_ae.simulate``, ``stem_ae.model``,
``stem_ae.windows``, ``stem_ae.cli``), so that changing one cannot leave another copy behind.
"""

import contextlib
import math
import os
import re
import sys
import tempfile
from typing import Any

import numpy as np

WINDOW = 28
"""Side of the auto-encoder's square window, px (the paper's 28×28)."""

PAPER_PERIOD_PX = 9.0
"""Sr–Sr period of the paper's SrTiO3 [001] windows, px (about three unit cells per window)."""

PAPER_SPACING_PX = 1.0 / math.hypot(1.0 / PAPER_PERIOD_PX, 1.0 / PAPER_PERIOD_PX)
"""Dominant lattice spacing of the paper's windows, px: the {110} planes of SrTiO3, ``a / √2``
(computed from the reflection ``(1/a, 1/a)`` as :meth:`stem_ae.Lattice.dominant_spacing` does)."""


def as_image(image, name: str = "image") -> np.ndarray:
    """``image`` as a finite, real, 2-D ndarray, or a ValueError/TypeError naming the fix."""
    array = np.asarray(image)
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} has dtype {array.dtype}; give a real-valued (integer or float) array."
        )
    if array.ndim != 2:
        raise ValueError(
            f"{name} has shape {array.shape}; expected a 2-D image (H, W). "
            "Denoise a stack (frames, H, W) frame by frame with stem_ae.denoise."
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or Inf; replace or mask them before denoising.")
    return array


# --------------------------------------------------------------------------------------------
# units and tags (shared by io and _hyperspy)

_ANGSTROM_PER_UNIT = {
    "m": 1e10,
    "meter": 1e10,
    "metre": 1e10,
    "cm": 1e8,
    "centimeter": 1e8,
    "mm": 1e7,
    "millimeter": 1e7,
    "um": 1e4,
    "µm": 1e4,
    "micron": 1e4,
    "microns": 1e4,
    "micrometer": 1e4,
    "micrometre": 1e4,
    "nm": 10.0,
    "nanometer": 10.0,
    "nanometre": 10.0,
    "å": 1.0,
    "a": 1.0,
    "ang": 1.0,
    "angstrom": 1.0,
    "angstroms": 1.0,
    "pm": 0.01,
    "picometer": 0.01,
}


def to_angstrom(value: float, unit: str) -> float | None:
    """Convert a length to ångström.

    Parameters
    ----------
    value : float
        The length in ``unit``.
    unit : str
        A length unit as microscope software writes it: ``"nm"``, ``"µm"`` (micro sign or Greek
        mu), ``"um"``, ``"micron"``, ``"\\\\u00B5m"`` (ImageJ's escape), ``"pm"``, ``"Å"``,
        ``"A"``, ``"m"``, Berkeley EMD's ``"[n_m]"`` …

    Returns
    -------
    float or None
        ``value`` in Å, or ``None`` when ``unit`` is not a real-space length (``"pixel"``,
        ``"1/nm"``, empty).

    Examples
    --------
    >>> to_angstrom(0.0135, "nm")
    0.135
    >>> to_angstrom(2.0, "\\\\u00B5m"), to_angstrom(54.1, "pm"), to_angstrom(1.0, "pixel")
    (20000.0, 0.541, None)
    """
    if unit is None:
        return None
    key = str(unit).strip()
    key = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), key)  # ImageJ
    key = key.replace("μ", "µ")
    key = key.replace("Å", "å").replace("Å", "å")
    key = re.sub(r"[\[\]_\s]", "", key).lower()
    factor = _ANGSTROM_PER_UNIT.get(key)
    if factor is None:
        return None
    return float(value) * factor


def _jsonable(value: Any, *, max_items: int = 4096) -> Any:
    """A JSON-ready copy of a tag tree: NumPy scalars become numbers, small arrays lists, bytes
    text; arrays longer than ``max_items`` and anything else unknown become a short description."""
    if isinstance(value, dict):
        return {
            str(key).replace("\x00", ""): _jsonable(item, max_items=max_items)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_jsonable(item, max_items=max_items) for item in value]
    if isinstance(value, np.ndarray):
        if value.size > max_items or value.dtype.kind not in "biuf":
            return f"<array {value.dtype} {list(value.shape)}>"
        return _jsonable(value.tolist(), max_items=max_items)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value.replace("\x00", "")  # DM strings carry NULs that HDF5 cannot store
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


NATIVE_NOISE = re.compile(r"^(I\d{4} |WARNING: All log messages before absl::InitializeLog)")
"""What TensorFlow's C++ logging writes at import however ``TF_CPP_MIN_LOG_LEVEL`` is set (on
CPUs where oneDNN's custom operations are on: "oneDNN custom operations are on ...")."""


@contextlib.contextmanager
def filtered_native_stderr():
    """Capture file descriptor 2 and pass on all but TensorFlow's informational log lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines():
                if line.strip() and not NATIVE_NOISE.match(line):
                    print(line, file=sys.stderr)


def import_keras():
    """``keras`` (and TensorFlow under it), its first import without TensorFlow's native
    start-up lines on stderr: information, not warnings, for a microscopist's terminal."""
    if "keras" not in sys.modules:
        with filtered_native_stderr():
            import keras  # noqa: F401
    return sys.modules["keras"]
