"""Read the files microscopes save and write the files microscopists open.

:func:`read_image` returns the pixels and an :class:`ImageMetadata` (shape, dtype, pixel size in
Å/px and where that pixel size came from) for

* ``.dm3`` / ``.dm4`` — Gatan DigitalMicrograph (:mod:`ncempy.io.dm`);
* ``.ser`` — FEI/Thermo TIA series (:mod:`ncempy.io.ser`);
* ``.emd`` — Thermo Fisher Velox EMD and Berkeley EMD (:mod:`ncempy.io.emdVelox`,
  :mod:`ncempy.io.emd`);
* ``.tif`` / ``.tiff`` — :mod:`tifffile`: ImageJ calibration, OME-XML physical sizes, FEI/TFS
  metadata, or the TIFF resolution tags with a centimetre/inch unit;
* ``.hspy`` — HyperSpy's HDF5 format (read with :mod:`h5py`; HyperSpy itself is not needed);
* ``.npy`` (NumPy) and ``.png`` (no calibration).

A 2-D image comes back as ``(H, W)``; a frame series or multi-page TIFF as a stack
``(frames, H, W)``. Colour (RGB) images and 4-D data raise :class:`ValueError` with what to do.

:func:`write_image` writes a float32 ImageJ TIFF (calibrated per axis in nm, as Fiji/ImageJ and
tifffile read it; HyperSpy reads the scale in nm but leaves the unit undefined), a ``.hspy`` (needs
HyperSpy), a ``.npy``, or an 8-bit percentile-stretched ``.png`` preview. A record of processing
(:func:`processing_record`) and the input's own tags go into the TIFF's ImageJ ``Info`` property
as JSON and into the ``.hspy`` metadata. Every write goes to a temporary file in the target folder
and is renamed into place, so a failure never leaves a partial file, and an existing file is
replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io as _stdio
import json
import math
import os
import secrets
import warnings
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stem_ae._common import _jsonable, to_angstrom

__all__ = [
    "READ_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "ImageMetadata",
    "processing_record",
    "read_image",
    "to_angstrom",
    "write_image",
]

READ_EXTENSIONS = (".dm3", ".dm4", ".ser", ".emd", ".tif", ".tiff", ".hspy", ".npy", ".png")
"""File name extensions :func:`read_image` understands (case-insensitive)."""

WRITE_EXTENSIONS = (".tif", ".tiff", ".hspy", ".npy", ".png")
"""File name extensions :func:`write_image` writes (case-insensitive)."""

# A "calibration" coarser than this (1 µm/px) on an image is a print resolution (72 dpi …), not a
# microscope's pixel size, and is ignored.
_MAX_CALIBRATION_ANGSTROM = 1e4


@dataclass(frozen=True)
class ImageMetadata:
    """What :func:`read_image` learnt about a file besides its pixels.

    Attributes
    ----------
    path : pathlib.Path
        The file that was read.
    shape : tuple of int
        Shape of the returned array: ``(H, W)`` or, for a frame series, ``(frames, H, W)``.
    dtype : numpy.dtype
        The dtype stored in the file (the returned array keeps it).
    pixel_size : float or None
        Pixel size along x (columns), Å/px; ``None`` when the file carries no real-space
        calibration.
    pixel_size_source : str or None
        Where ``pixel_size`` came from, e.g. ``"dm3 calibration"`` or ``"ImageJ TIFF calibration
        (resolution tag in nm)"``; ``None`` when there is none.
    pixel_size_yx : tuple of float or None
        ``(y, x)`` pixel sizes, Å/px (they differ on a non-square scan).
    file_format : str
        Short name of the reader: ``"dm3"``, ``"dm4"``, ``"ser"``, ``"velox-emd"``,
        ``"berkeley-emd"``, ``"tiff"``, ``"hspy"``, ``"npy"`` or ``"png"``.
    dataset : str or None
        Which image of a file holding several (e.g. the Velox detector) was read.
    frame_interval : float or None
        Time between the frames of a series, s (Velox ``FrameTime``, ImageJ ``finterval``,
        HyperSpy time axis); ``None`` when the file does not say.
    original_metadata : dict
        The file's own tags, JSON-ready (DigitalMicrograph tags, Velox metadata, or what a file
        written by :func:`write_image` carried over); empty when there are none.
    processing : dict or None
        The :func:`processing_record` of a file written by stem_ae, else ``None``.
    """

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    pixel_size: float | None = None
    pixel_size_source: str | None = None
    pixel_size_yx: tuple[float, float] | None = None
    file_format: str = ""
    dataset: str | None = None
    frame_interval: float | None = None
    original_metadata: dict = field(default_factory=dict)
    processing: dict | None = None

    @property
    def n_frames(self) -> int:
        """Number of frames: 1 for a 2-D image, ``shape[0]`` for a stack."""
        return self.shape[0] if len(self.shape) == 3 else 1


# --------------------------------------------------------------------------------------------
# reading


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, ImageMetadata]:
    """Read a microscope image and its calibration.

    Parameters
    ----------
    path : str or path-like
        A ``.dm3``, ``.dm4``, ``.ser``, ``.emd``, ``.tif``/``.tiff``, ``.hspy``, ``.npy`` or
        ``.png`` file (see :data:`READ_EXTENSIONS`; the extension picks the reader).

    Returns
    -------
    image : ndarray, shape (H, W) or (frames, H, W)
        The stored pixels in their stored (real) dtype, native byte order.
    metadata : ImageMetadata
        Shape, stored dtype, pixel size per axis in Å/px (converted from the file's m, µm, nm,
        pm or Å) and its source, frame interval, the file's own tags and, for a file that
        stem_ae wrote, its record of processing.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    IsADirectoryError
        If ``path`` is a folder.
    ValueError
        For an unsupported extension, an empty, truncated or corrupt file, a colour (RGB) image,
        data with more than three dimensions, a complex or non-numeric dtype.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> written = write_image(folder + "/scene.tif", np.ones((32, 40)), pixel_size=(0.3, 0.2))
    >>> image, meta = read_image(written)
    >>> image.shape, image.dtype.name, meta.pixel_size_source
    ((32, 40), 'float32', 'ImageJ TIFF calibration (resolution tag in nm)')
    >>> [round(p, 6) for p in meta.pixel_size_yx]
    [0.3, 0.2]
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist — check the path and the spelling.")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not an image file — name an image file.")
    if suffix not in READ_EXTENSIONS:
        raise ValueError(
            f"{path} has an unsupported file type {path.suffix or '(no extension)'!r} — "
            f"give one of {', '.join(READ_EXTENSIONS)} (export from your microscope software)."
        )
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes) — copy the file again from its source.")
    reader = _READERS[suffix]
    try:
        with warnings.catch_warnings():
            # The readers warn (and then fill zeros) on damaged files: treat that as damage.
            warnings.simplefilter("error")
            data, calibration, file_format, dataset, *extras = reader(path)
    except (_FileError, PermissionError, MemoryError):
        raise
    except Exception as error:  # third-party parsers raise anything on a damaged file
        raise ValueError(
            f"{path} could not be read as {suffix} ({type(error).__name__}: {error}) — the file "
            f"is damaged or not a {suffix} file; export it again from the microscope software."
        ) from error
    data = _as_grey_stack(np.asarray(data), path)
    extras = extras[0] if extras else {}
    interval = extras.get("frame_interval")
    if interval is not None and not (math.isfinite(interval) and interval > 0):
        interval = None
    pixel_size_yx, source = calibration if calibration is not None else (None, None)
    if pixel_size_yx is not None:
        pixel_size_yx = (float(pixel_size_yx[0]), float(pixel_size_yx[1]))
        if not all(0 < p <= _MAX_CALIBRATION_ANGSTROM for p in pixel_size_yx):
            pixel_size_yx, source = None, None
    meta = ImageMetadata(
        path=path,
        shape=tuple(int(n) for n in data.shape),
        dtype=data.dtype,
        pixel_size=None if pixel_size_yx is None else pixel_size_yx[1],
        pixel_size_source=source,
        pixel_size_yx=pixel_size_yx,
        file_format=file_format,
        dataset=dataset,
        frame_interval=None if interval is None else float(interval),
        original_metadata=_jsonable(extras.get("original_metadata") or {}),
        processing=extras.get("processing"),
    )
    return data, meta


Calibration = tuple[tuple[float, float], str] | None


class _FileError(ValueError):
    """A damaged or unsuitable file, with a message that names it and says what to do."""


def _as_grey_stack(data: np.ndarray, path: Path) -> np.ndarray:
    """Check dtype and dimensionality; return (H, W) or (frames, H, W) in native byte order."""
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if data.dtype.kind == "c":
        raise _FileError(
            f"{path} holds complex numbers ({data.dtype}) — stem_ae needs real intensities; save "
            f"the magnitude or the real part."
        )
    if data.dtype.kind not in "uif":
        raise _FileError(
            f"{path} holds {data.dtype} values, not numbers — save the image as a numeric array."
        )
    if data.dtype.byteorder not in ("=", "|"):
        data = data.astype(data.dtype.newbyteorder("="))
    data = np.squeeze(data) if data.ndim > 2 else data
    if data.ndim == 3 and data.shape[-1] in (3, 4) and min(data.shape[:2]) > 4:
        raise _FileError(
            f"{path} is a colour (RGB) image of shape {data.shape} — STEM images have one channel: "
            f"export the raw detector image (.dm3/.dm4/.emd/.ser or a 16/32-bit greyscale TIFF), "
            f"or, for a stack of {data.shape[-1]} frames, save it as (frames, H, W)."
        )
    if data.ndim < 2:
        raise _FileError(
            f"{path} holds {data.ndim}-D data of shape {data.shape}, not an image — give a 2-D "
            f"image (H, W) or a frame series (frames, H, W)."
        )
    if data.ndim > 3:
        raise _FileError(
            f"{path} holds {data.ndim}-D data of shape {data.shape} (4-D STEM, a hyperstack or "
            f"several channels) — stem_ae denoises 2-D images and (frames, H, W) series: save one "
            f"image or one frame series per file (e.g. a virtual HAADF image of a 4-D dataset)."
        )
    return data


def _check_signature(path: Path, head: bytes, signatures: tuple[bytes, ...], kind: str) -> None:
    if not any(head.startswith(signature) for signature in signatures):
        raise _FileError(
            f"{path} is not a {kind} file (its first bytes are not a {kind} signature) — the "
            f"file is damaged or misnamed; export it again or give it its real extension."
        )


# --- TIFF -----------------------------------------------------------------------------------


def _read_tiff(path: Path):
    import tifffile

    with open(path, "rb") as handle:
        magic = handle.read(4)
    _check_signature(path, magic, (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), "TIFF")
    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise _FileError(f"{path} contains no image — export the image again.")
        series = tif.series[0]
        axes = series.axes
        first = series.pages[0]
        photometric = getattr(first, "photometric", None)
        if ("S" in axes and series.shape[axes.index("S")] in (3, 4)) or photometric == 2:
            data = series.asarray()
            data = _drop_grey_rgb(data, axes, path)
        else:
            data = series.asarray()
            if "C" in axes and series.shape[axes.index("C")] > 1:
                raise _FileError(
                    f"{path} has {series.shape[axes.index('C')]} channels (axes {axes!r}) — "
                    f"save the one detector channel to denoise as its own TIFF."
                )
        calibration = (
            _tiff_imagej_calibration(tif)
            or _tiff_ome_calibration(tif)
            or _tiff_fei_calibration(tif)
            or _tiff_resolution_calibration(first)
        )
        extras = _tiff_extras(tif)
    return data, calibration, "tiff", None, extras


def _tiff_extras(tif) -> dict:
    """Frame interval and, in a TIFF that stem_ae wrote, the record and the input's tags."""
    extras: dict = {}
    meta = tif.imagej_metadata or {}
    if "finterval" in meta:
        with contextlib.suppress(TypeError, ValueError):
            extras["frame_interval"] = float(meta["finterval"])
    try:
        info = json.loads(meta.get("Info") or "null")
    except (TypeError, json.JSONDecodeError):
        info = None
    if isinstance(info, dict) and isinstance(info.get(_INFO_KEY), dict):
        ours = info[_INFO_KEY]
        extras["processing"] = ours.get("processing")
        extras["original_metadata"] = ours.get("original_metadata") or {}
    elif getattr(tif, "fei_metadata", None):
        extras["original_metadata"] = dict(tif.fei_metadata)
    return extras


def _drop_grey_rgb(data: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """An RGB(A) TIFF whose colour channels are all equal is a grey image; anything else fails."""
    axis = axes.index("S") if "S" in axes else data.ndim - 1
    channels = np.moveaxis(data, axis, 0)
    if all(np.array_equal(channels[0], channels[i]) for i in range(1, min(3, len(channels)))):
        return channels[0]
    raise _FileError(
        f"{path} is a colour (RGB) image of shape {data.shape} — STEM images have one channel: "
        f"export the raw detector image (.dm3/.dm4/.emd/.ser or a 16-bit/32-bit greyscale TIFF)."
    )


def _tag_ratio(page, name: str) -> float | None:
    tag = page.tags.get(name)
    if tag is None:
        return None
    value = tag.value
    if isinstance(value, tuple) and len(value) == 2:
        numerator, denominator = value
        return numerator / denominator if denominator else None
    return float(value)


def _tiff_imagej_calibration(tif) -> Calibration:
    meta = tif.imagej_metadata
    if not meta or "unit" not in meta:
        return None
    page = tif.pages[0]
    per_unit_x = _tag_ratio(page, "XResolution")
    per_unit_y = _tag_ratio(page, "YResolution") or per_unit_x
    if not per_unit_x:
        return None
    x = to_angstrom(1.0 / per_unit_x, meta["unit"])
    y = to_angstrom(1.0 / per_unit_y, meta["unit"])
    if x is None or y is None:
        return None
    unit = str(meta["unit"]).replace("\\u00B5", "µ")
    return (y, x), f"ImageJ TIFF calibration (resolution tag in {unit})"


def _tiff_ome_calibration(tif) -> Calibration:
    if not tif.is_ome:
        return None
    root = ElementTree.fromstring(tif.ome_metadata)
    for element in root.iter():
        if element.tag.endswith("Pixels"):
            attrs = element.attrib
            if "PhysicalSizeX" not in attrs:
                return None
            x = to_angstrom(float(attrs["PhysicalSizeX"]), attrs.get("PhysicalSizeXUnit", "µm"))
            y = to_angstrom(
                float(attrs.get("PhysicalSizeY", attrs["PhysicalSizeX"])),
                attrs.get("PhysicalSizeYUnit", attrs.get("PhysicalSizeXUnit", "µm")),
            )
            if x is None or y is None:
                return None
            return (y, x), "OME-TIFF PhysicalSizeX/Y"
    return None


def _tiff_fei_calibration(tif) -> Calibration:
    meta = getattr(tif, "fei_metadata", None)
    if not meta:
        return None
    scan = meta.get("Scan", {})
    if "PixelWidth" not in scan:
        return None
    x = float(scan["PixelWidth"]) * 1e10
    y = float(scan.get("PixelHeight", scan["PixelWidth"])) * 1e10
    return (y, x), "FEI/Thermo TIFF metadata (PixelWidth in m)"


def _tiff_resolution_calibration(page) -> Calibration:
    unit_tag = page.tags.get("ResolutionUnit")
    unit = {2: "inch", 3: "cm"}.get(int(unit_tag.value) if unit_tag is not None else 2)
    per_unit_x = _tag_ratio(page, "XResolution")
    if unit is None or not per_unit_x or "XResolution" not in page.tags:
        return None
    per_unit_y = _tag_ratio(page, "YResolution") or per_unit_x
    angstrom = 2.54e8 if unit == "inch" else 1e8
    x, y = angstrom / per_unit_x, angstrom / per_unit_y
    if max(x, y) > _MAX_CALIBRATION_ANGSTROM:  # a print resolution such as 72 dpi
        return None
    return (y, x), f"TIFF resolution tag (px per {unit})"


# --- DigitalMicrograph ----------------------------------------------------------------------


def _read_dm(path: Path):
    import ncempy.io.dm

    with open(path, "rb") as handle:
        header = handle.read(16)
    version = int.from_bytes(header[:4], "big") if len(header) >= 4 else None
    if version not in (3, 4) or len(header) < (16 if version == 4 else 12):
        raise _FileError(
            f"{path} is not a DigitalMicrograph file (its header does not start with version 3 "
            f"or 4) — check that it is a .dm3/.dm4 saved by DigitalMicrograph."
        )
    kind = path.suffix.lower().lstrip(".")
    with contextlib.redirect_stdout(_stdio.StringIO()), ncempy.io.dm.fileDM(path) as dm_file:
        dataset = dm_file.getDataset(0)
        tags = {key.lstrip("."): value for key, value in dict(dm_file.allTags).items()}
    data = dataset["data"]
    sizes = [float(s) for s in dataset.get("pixelSize", [])]
    units = list(dataset.get("pixelUnit", []))
    calibration = None
    if data.ndim >= 2 and len(sizes) >= 2 and len(units) >= 2:
        # ncempy lists the calibration in array-axis order; the last two axes are (y, x).
        y = to_angstrom(sizes[-2], units[-2])
        x = to_angstrom(sizes[-1], units[-1])
        if x is not None and y is not None:
            calibration = ((y, x), f"{kind} calibration (in {units[-1]})")
    extras: dict = {"original_metadata": {"DigitalMicrograph": tags}}
    if data.ndim == 3 and len(sizes) == 3 and len(units) == 3 and units[0].strip() == "s":
        extras["frame_interval"] = sizes[0]
    return data, calibration, kind, None, extras


# --- TIA SER --------------------------------------------------------------------------------


def _read_ser(path: Path):
    import ncempy.io.ser

    with open(path, "rb") as handle:
        header = handle.read(6)
    if len(header) < 6 or header[:2] != b"II" or int.from_bytes(header[2:4], "little") != 0x0197:
        raise _FileError(
            f"{path} is not a TIA series (.ser) file (wrong header) — check that it is a .ser "
            f"written by FEI/Thermo TIA."
        )
    with contextlib.redirect_stdout(_stdio.StringIO()), ncempy.io.ser.fileSER(path) as ser:
        if ser.head["DataTypeID"] != 0x4122:
            raise _FileError(
                f"{path} holds spectra, not images — give a .ser file of images (HAADF, BF …)."
            )
        count = int(ser.head["ValidNumberElements"])
        if count < 1:
            raise _FileError(f"{path} contains no image — the acquisition was not saved.")
        frames = []
        for index in range(count):
            frame, frame_meta = ser.getDataset(index)
            frames.append(frame)
    data = np.stack(frames) if count > 1 else frames[0]
    calibration_y, calibration_x = frame_meta["Calibration"][1], frame_meta["Calibration"][0]
    x = float(calibration_x["CalibrationDelta"]) * 1e10
    y = float(calibration_y["CalibrationDelta"]) * 1e10
    calibration = ((y, x), "ser calibration (in m)") if x > 0 and y > 0 else None
    return data, calibration, "ser", None, {}


# --- EMD (Velox and Berkeley) ---------------------------------------------------------------


def _read_emd(path: Path):
    import h5py

    with open(path, "rb") as handle:
        signature = handle.read(8)
    if signature != b"\x89HDF\r\n\x1a\n":
        raise _FileError(
            f"{path} is not an EMD (HDF5) file (no HDF5 signature) — check that it is an .emd "
            f"saved by Velox or written as Berkeley EMD."
        )
    with h5py.File(path, "r") as handle:
        is_velox = "Data" in handle and "Image" in handle["Data"]
    return _read_velox(path) if is_velox else _read_berkeley(path)


def _velox_metadata(group) -> dict:
    raw = np.asarray(group["Metadata"][:, 0])
    text = raw[raw > 0].tobytes().decode("utf-8", "ignore")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {}


def _read_velox(path: Path):
    import ncempy.io.emdVelox

    with contextlib.redirect_stdout(_stdio.StringIO()):
        velox = ncempy.io.emdVelox.fileEMDVelox(path)
    try:
        groups = list(velox.list_data)
        if not groups:
            raise _FileError(f"{path} holds no image — export an image from Velox.")
        infos = [_velox_metadata(group) for group in groups]
        detectors = [str(info.get("BinaryResult", {}).get("Detector", "")) for info in infos]
        index = next((i for i, name in enumerate(detectors) if "HAADF" in name.upper()), 0)
        group, info = groups[index], infos[index]
        data = np.asarray(group["Data"][...])  # (H, W, frames)
    finally:
        velox._file_hdl.close()
    data = np.moveaxis(data, -1, 0) if data.ndim == 3 else data
    binary = info.get("BinaryResult", {})
    calibration = None
    size = binary.get("PixelSize", {})
    if "width" in size:
        x = to_angstrom(float(size["width"]), binary.get("PixelUnitX", "m"))
        y = to_angstrom(float(size.get("height", size["width"])), binary.get("PixelUnitY", "m"))
        if x is not None and y is not None:
            calibration = ((y, x), "Velox EMD metadata (PixelSize)")
    dataset = detectors[index] or group.name.split("/")[-1]
    extras: dict = {"original_metadata": {"Velox": info}}
    with contextlib.suppress(KeyError, TypeError, ValueError):
        extras["frame_interval"] = float(info["Scan"]["FrameTime"])
    return data, calibration, "velox-emd", dataset, extras


def _read_berkeley(path: Path):
    import ncempy.io.emd

    with contextlib.redirect_stdout(_stdio.StringIO()), ncempy.io.emd.fileEMD(path) as emd:
        if not emd.list_emds:
            raise _FileError(f"{path} holds no EMD data set — it is not a Berkeley or Velox EMD.")
        data, dims = emd.get_emdgroup(0)
        name = emd.list_emds[0].name.split("/")[-1]
    calibration = None
    if data.ndim >= 2:
        steps = []
        for vector, _, unit in dims[-2:]:
            step = float(vector[1] - vector[0]) if len(vector) > 1 else 0.0
            steps.append(to_angstrom(abs(step), unit) if step else None)
        if all(s is not None for s in steps):
            calibration = ((steps[0], steps[1]), f"Berkeley EMD dims (in {dims[-1][2]})")
    extras: dict = {}
    if data.ndim == 3 and len(dims) == 3:
        vector, _, unit = dims[0]
        if str(unit).strip() == "s" and len(vector) > 1:
            extras["frame_interval"] = float(vector[1] - vector[0])
    return np.asarray(data), calibration, "berkeley-emd", name, extras


# --- NumPy and PNG --------------------------------------------------------------------------


def _read_npy(path: Path):
    with open(path, "rb") as handle:
        _check_signature(path, handle.read(6), (b"\x93NUMPY",), "NumPy .npy")
    data = np.load(path, allow_pickle=False)
    return data, None, "npy", None, {}


def _read_png(path: Path):
    import imageio.v3 as iio

    content = path.read_bytes()
    _check_signature(path, content[:8], (b"\x89PNG\r\n\x1a\n",), "PNG")
    data = np.asarray(iio.imread(content, extension=".png"))
    if data.ndim == 3 and data.shape[-1] in (2, 4):  # grey+alpha or RGBA: drop an opaque alpha
        data = data[..., :-1]
        data = data[..., 0] if data.shape[-1] == 1 else data
    if data.ndim == 3 and data.shape[-1] == 3:
        data = _drop_grey_rgb(data, "YXS", path)
    return data, None, "png", None, {}


# --- HyperSpy .hspy -------------------------------------------------------------------------


def _read_hspy(path: Path):
    import h5py

    with open(path, "rb") as handle:
        _check_signature(path, handle.read(8), (b"\x89HDF\r\n\x1a\n",), "HyperSpy .hspy (HDF5)")
    with h5py.File(path, "r") as handle:
        experiments = handle.get("Experiments")
        names = list(experiments) if experiments is not None else []
        if not names:
            raise _FileError(f"{path} holds no HyperSpy signal — save a Signal2D to .hspy.")
        group = experiments[names[0]]
        data = np.asarray(group["data"][...])
        axes = [_hspy_attrs(group[f"axis-{i}"]) for i in range(data.ndim) if f"axis-{i}" in group]
        metadata = _hspy_tree(group["metadata"]) if "metadata" in group else {}
        original = _hspy_tree(group["original_metadata"]) if "original_metadata" in group else {}
    calibration, extras = None, {"original_metadata": original}
    signal = [axis for axis in axes if not axis.get("navigate", False)]
    if len(signal) == 2:
        y = to_angstrom(float(signal[0].get("scale", 1.0)), str(signal[0].get("units", "")))
        x = to_angstrom(float(signal[1].get("scale", 1.0)), str(signal[1].get("units", "")))
        if x is not None and y is not None:
            calibration = ((y, x), f"hspy axes (in {signal[1].get('units')})")
    navigation = [axis for axis in axes if axis.get("navigate", False)]
    if len(navigation) == 1 and str(navigation[0].get("units", "")).strip() == "s":
        extras["frame_interval"] = float(navigation[0].get("scale", 0.0))
    record = metadata.get("Processing", {}).get("stem_ae")
    if isinstance(record, dict):
        extras["processing"] = record
    return data, calibration, "hspy", names[0], extras


def _hspy_attrs(group) -> dict:
    return {key: _h5_value(value) for key, value in group.attrs.items()}


def _h5_value(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and value == "_None_":
        return None
    return _jsonable(value)


def _hspy_tree(group) -> dict:
    """A HyperSpy metadata group as nested dicts: plain values are attributes, a node is a
    subgroup and a list a ``_list_<key>`` dataset."""
    tree: dict = _hspy_attrs(group)
    for key, item in group.items():
        if hasattr(item, "items"):
            tree[key] = _hspy_tree(item)
        elif key.startswith("_list_"):
            tree[key.removeprefix("_list_")] = _jsonable(np.asarray(item[()]))
    return tree


_READERS: dict[str, Callable] = {
    ".dm3": _read_dm,
    ".dm4": _read_dm,
    ".ser": _read_ser,
    ".emd": _read_emd,
    ".tif": _read_tiff,
    ".tiff": _read_tiff,
    ".hspy": _read_hspy,
    ".npy": _read_npy,
    ".png": _read_png,
}


# --------------------------------------------------------------------------------------------
# writing


class CalibrationDroppedWarning(UserWarning):
    """A calibration, record or frame interval that the chosen output format cannot store."""


def write_image(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    pixel_size: float | tuple[float, float] | None = None,
    frame_interval: float | None = None,
    record: dict | None = None,
    original_metadata: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an image atomically as a calibrated TIFF or ``.hspy``, a ``.npy`` or a ``.png``.

    Parameters
    ----------
    path : str or path-like
        Target file; its extension picks the format (:data:`WRITE_EXTENSIONS`):

        * ``.tif``/``.tiff``: float32 ImageJ TIFF; with ``pixel_size`` it carries the ImageJ
          calibration per axis (resolution tags in px per nm, unit ``nm``) that Fiji/ImageJ and
          tifffile read; a stack is written as ImageJ frames, with ``finterval``; ``record`` and
          ``original_metadata`` go as JSON into the ImageJ ``Info`` property
          (Image ▸ Show Info… in Fiji).
        * ``.hspy``: a float32 HyperSpy ``Signal2D`` (needs HyperSpy) with axes in nm (and s),
          ``record`` under ``metadata.Processing.stem_ae`` and ``original_metadata`` as its
          original metadata.
        * ``.npy``: float32 NumPy array (no calibration).
        * ``.png``: 8-bit greyscale preview, stretched between the 0.5th and 99.5th percentiles
          (2-D only; for display, not for analysis).
    array : ndarray, shape (H, W) or (frames, H, W)
        Real-valued image (``.png``: shape (H, W)).
    pixel_size : float or (float, float), optional
        Pixel size, Å/px (> 0): one number for square pixels or ``(y, x)``.
    frame_interval : float, optional
        Time between frames of a stack, s (> 0).
    record : dict, optional
        JSON-ready record of processing, e.g. from :func:`processing_record`.
    original_metadata : dict, optional
        The input file's own tags (:attr:`ImageMetadata.original_metadata`), kept in TIFF and
        ``.hspy`` outputs.
    overwrite : bool
        Replace an existing file. Without it an existing ``path`` raises ``FileExistsError``.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is false.
    FileNotFoundError
        If the target folder does not exist.
    ValueError
        For an unsupported extension, a non-real array or a wrong number of dimensions, a pixel
        size or frame interval that is not a positive finite number, a record that is not JSON.
    ImportError
        For ``.hspy`` without HyperSpy.

    Warns
    -----
    CalibrationDroppedWarning
        When ``.npy`` or ``.png`` is asked to keep a pixel size, frame interval or record: those
        formats cannot, and the information is never dropped silently.

    Notes
    -----
    The data go to a hidden temporary file in the target folder which is then renamed onto
    ``path`` (:func:`os.replace`; without ``overwrite`` a hard link that fails on an existing
    file), so a crash or a full disk never leaves a half-written ``path``.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> image = np.arange(32 * 32, dtype=float).reshape(32, 32)
    >>> write_image(folder + "/a.npy", image).name
    'a.npy'
    >>> write_image(folder + "/a.npy", image)
    Traceback (most recent call last):
    ...
    FileExistsError: ...a.npy exists — choose another output name or pass overwrite=True.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_EXTENSIONS:
        raise ValueError(
            f"cannot write {path}: unsupported output type {path.suffix or '(no extension)'!r} — "
            f"use one of {', '.join(WRITE_EXTENSIONS)}."
        )
    data = np.asarray(array)
    if data.dtype.kind not in "uifb":
        raise ValueError(f"cannot write {path}: array of dtype {data.dtype} is not real-valued.")
    ndims = (2,) if suffix == ".png" else (2, 3)
    if data.ndim not in ndims:
        raise ValueError(
            f"cannot write {path}: array of shape {data.shape} — give "
            + (
                "a 2-D image (H, W) for a PNG preview."
                if suffix == ".png"
                else "(H, W) or (frames, H, W)."
            )
        )
    pixel_size_yx = _check_pixel_size_pair(pixel_size)
    if frame_interval is not None and not (
        _is_number(frame_interval) and math.isfinite(frame_interval) and frame_interval > 0
    ):
        raise ValueError(
            f"frame_interval={frame_interval!r} must be a positive finite number of s or None."
        )
    info = _info_json(record, original_metadata, path)
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(
            f"cannot write {path}: folder {folder} does not exist — create it first."
        )
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists — choose another output name or pass overwrite=True.")
    if suffix in (".npy", ".png"):
        dropped = [
            name
            for name, value in (
                ("pixel size", pixel_size_yx),
                ("frame interval", frame_interval if data.ndim == 3 else None),
                ("record of processing", record),
            )
            if value is not None
        ]
        if dropped:
            warnings.warn(
                f"{path.name}: a {suffix} file cannot store the {' and '.join(dropped)}; "
                f"write .tif or .hspy to keep {'them' if len(dropped) > 1 else 'it'}.",
                CalibrationDroppedWarning,
                stacklevel=2,
            )
    interval = frame_interval if data.ndim == 3 else None

    def write(target: Path) -> None:
        if suffix == ".npy":
            with open(target, "wb") as handle:
                np.save(handle, data.astype(np.float32), allow_pickle=False)
        elif suffix == ".png":
            import imageio.v3 as iio

            iio.imwrite(target, _stretch_to_uint8(data), extension=".png")
        elif suffix == ".hspy":
            from stem_ae._hyperspy import make_signal

            signal = make_signal(
                data.astype(np.float32),
                pixel_size=pixel_size_yx,
                frame_interval=interval,
                record=record,
                original_metadata=original_metadata,
                title=path.stem,
            )
            signal.save(target, overwrite=True)
        else:
            _write_imagej_tiff(target, data, pixel_size_yx, interval, info)

    if suffix == ".hspy":
        from stem_ae._hyperspy import require_hyperspy

        require_hyperspy(f"writing {path}")
    _atomic_write(path, write, overwrite=overwrite)
    return path


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.number))


def _check_pixel_size_pair(
    pixel_size: float | tuple[float, float] | None,
) -> tuple[float, float] | None:
    """``(y, x)`` Å/px from one number or a pair; ValueError for anything else."""
    if pixel_size is None:
        return None
    values = (pixel_size, pixel_size) if _is_number(pixel_size) else pixel_size
    try:
        values = tuple(values)
    except TypeError:
        values = ()
    if len(values) != 2 or not all(_is_number(v) for v in values):
        raise ValueError(
            f"pixel_size={pixel_size!r} must be a number of Å/px, a (y, x) pair of them, or None."
        )
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"pixel_size={pixel_size!r} must be positive finite number(s) of Å/px.")
    return float(values[0]), float(values[1])


def _info_json(record: dict | None, original_metadata: dict | None, path: Path) -> str | None:
    """The JSON text stored in a TIFF's ImageJ ``Info`` (None when there is nothing to store)."""
    if record is None and not original_metadata:
        return None
    content = {
        "processing": record,
        "original_metadata": _jsonable(original_metadata or {}),
    }
    try:
        return json.dumps({_INFO_KEY: content}, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"cannot write {path}: the record is not JSON-ready ({error}) — give a dict of "
            f"numbers, strings, lists and dicts, e.g. from processing_record()."
        ) from None


_INFO_KEY = "stem_ae"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _model_identity(model: Any) -> dict:
    """Name and sha256 of the canonical JSON of a model's AEConfig (a name, folder, .keras file,
    AEConfig or keras.Model)."""
    if model is None:
        model = "general"
    config: dict | None = None
    if isinstance(model, (str, os.PathLike)):
        folder = Path(model)
        shipped = Path(__file__).resolve().parent / "models" / str(model)
        if isinstance(model, str) and (shipped / "config.json").is_file():
            folder = shipped
        elif folder.suffix == ".keras":
            folder = folder.parent
        config_path = folder / "config.json"
        if config_path.is_file():
            config = json.loads(config_path.read_text(encoding="utf-8"))
        label = str(model)
    else:
        if hasattr(model, "to_dict"):
            config = model.to_dict()
        else:
            from stem_ae.model import get_config

            config = get_config(model).to_dict()
        label = str(config.get("name") or type(model).__name__)
    digest = None
    if config is not None:
        canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return {"name": label, "config_sha256": digest}


def processing_record(
    function: str = "stem_ae.denoise",
    *,
    model: Any = None,
    step: int | None = None,
    contrast: str | None = None,
    lattice: Any = None,
    resampling_factor: float | None = None,
    pixel_size: float | tuple[float, float] | None = None,
    source: str | os.PathLike | None = None,
    output: str = "denoised",
    correction: dict | None = None,
    **parameters: Any,
) -> dict:
    """A JSON-ready record of how an output was made, for :func:`write_image` to store.

    Parameters
    ----------
    function : str
        The public function that made the output, e.g. ``"stem_ae.denoise"``.
    model : str, path, AEConfig or keras.Model, optional
        The model used (``None``: the shipped ``"general"``); its name and the sha256 of its
        configuration (canonical JSON of ``config.json`` / :func:`stem_ae.get_config`) are kept.
    step : int, optional
        Window step, px.
    contrast : str, optional
        ``"bright"``, ``"dark"`` or ``"auto"`` as given.
    lattice : LatticeEstimate, optional
        The measured lattice (spacings in px, directions in degrees).
    resampling_factor : float, optional
        Magnification applied to bring the lattice to the model's sampling (1: none).
    pixel_size : float or (float, float), optional
        Calibration used, Å/px (``(y, x)``).
    source : str or path-like, optional
        The input file: its name and sha256 are kept (not its folder).
    output : str
        What the output holds: ``"denoised"`` or ``"uncertainty"``.
    correction : dict, optional
        What the residual correction measured and decided (``denoise(return_report=True)``):
        kept as ``correction``.
    **parameters
        Further JSON-ready parameters (e.g. ``residual="sure"``).

    Returns
    -------
    dict
        ``software``, ``version``, ``function``, ``date`` (ISO 8601, UTC), ``output``,
        ``model`` (``name``, ``config_sha256``), ``parameters``, ``lattice``,
        ``resampling_factor``, ``pixel_size_yx_angstrom``, ``input`` (``name``, ``sha256``),
        and ``correction`` when given.

    Examples
    --------
    >>> record = processing_record(model="general", step=2, contrast="bright")
    >>> record["function"], record["parameters"]["step"], len(record["model"]["config_sha256"])
    ('stem_ae.denoise', 2, 64)
    """
    from stem_ae._version import __version__

    lattice_record = None
    if lattice is not None:
        lattice_record = {
            "spacings_px": [float(v) for v in lattice.spacings],
            "angles_deg": [float(v) for v in lattice.angles],
            "dominant_spacing_px": float(lattice.dominant_spacing),
            "dominant_angle_deg": float(lattice.dominant_angle),
            # what set the resampling: for dark columns the spacings the rims' orders fold onto
            "sampling_spacings_px": [
                float(v) for v in lattice.sampling_spacings(dark=contrast == "dark")
            ],
        }
    input_record = None
    if source is not None:
        source = Path(source)
        input_record = {"name": source.name, "sha256": _sha256(source)}
    pixel_size_yx = _check_pixel_size_pair(pixel_size)
    return _jsonable(
        {
            "software": "stem_ae",
            "version": __version__,
            "function": function,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "output": output,
            "model": _model_identity(model),
            "parameters": {"step": step, "contrast": contrast, **parameters},
            "lattice": lattice_record,
            "resampling_factor": None if resampling_factor is None else float(resampling_factor),
            "pixel_size_yx_angstrom": None if pixel_size_yx is None else list(pixel_size_yx),
            "input": input_record,
            **({"correction": correction} if correction is not None else {}),
        }
    )


def _stretch_to_uint8(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Percentile stretch to 0..255 (NaN → 0)."""
    values = image.astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(image.shape, np.uint8)
    lo, hi = np.percentile(finite, [low, high])
    if hi <= lo:
        hi = lo + 1.0
    scaled = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    scaled = np.nan_to_num(scaled, nan=0.0)
    return np.round(scaled * 255.0).astype(np.uint8)


def _write_imagej_tiff(
    target: Path,
    data: np.ndarray,
    pixel_size_yx: tuple[float, float] | None,
    frame_interval: float | None,
    info: str | None,
) -> None:
    import tifffile

    data32 = np.ascontiguousarray(data, dtype=np.float32)
    metadata: dict = {"axes": "TYX" if data32.ndim == 3 else "YX"}
    finite = data32[np.isfinite(data32)]
    if finite.size:
        metadata["min"], metadata["max"] = float(finite.min()), float(finite.max())
    kwargs: dict = {}
    if pixel_size_yx is not None:
        # px per nm along x, then y (TIFF XResolution, YResolution): non-square pixels are kept.
        kwargs["resolution"] = (10.0 / pixel_size_yx[1], 10.0 / pixel_size_yx[0])
        metadata["unit"] = "nm"
    if frame_interval is not None:
        metadata["finterval"] = float(frame_interval)
    if info is not None:
        metadata["Info"] = info
    tifffile.imwrite(target, data32, imagej=True, metadata=metadata, **kwargs)


def _atomic_write(path: Path, write: Callable, *, overwrite: bool) -> None:
    """Call ``write(temporary)`` on a hidden file beside ``path``, then rename it onto ``path``."""
    temporary = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.part{path.suffix}")
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temporary, path)
            return
        try:
            os.link(temporary, path)  # fails if path appeared meanwhile: never clobber
        except FileExistsError:
            raise FileExistsError(
                f"{path} exists — choose another output name or pass overwrite=True."
            ) from None
        except OSError:  # a file system without hard links
            if path.exists():
                raise FileExistsError(
                    f"{path} exists — choose another output name or pass overwrite=True."
                ) from None
            os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
