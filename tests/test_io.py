"""Tests of stem_ae.io: every format read with its calibration, atomic writes, bad files.

The real ``.tif`` and ``.dm3`` are shipped in ``data/`` (Lukas Grünewald, MIT licence). The other
formats are written here with the writers the libraries have: tifffile (ImageJ, OME, resolution
tags), imageio (PNG), NumPy, ncempy's ``emdWriter`` (Berkeley EMD) and h5py (a minimal Velox EMD
laid out as ncempy's Velox reader expects). Neither ncempy nor any other installed library writes
TIA ``.ser`` files, so ``_write_ser`` below writes the documented SER layout (series header,
dimension array, offset arrays, 2-D data elements) byte by byte; it is a test fixture, not a
replacement for a file saved by TIA.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile

from stem_ae.io import (
    CalibrationDroppedWarning,
    ImageMetadata,
    processing_record,
    read_image,
    to_angstrom,
    write_image,
)

DATA = Path(__file__).resolve().parents[1] / "data"


def _image(shape=(40, 48), seed=0, dtype=np.uint16) -> np.ndarray:
    return np.random.default_rng(seed).integers(100, 4000, size=shape).astype(dtype)


# --------------------------------------------------------------------------------------------
# writers of the formats nothing installed can write


def _write_ser(path: Path, frames: np.ndarray, delta_m: float) -> None:
    """Write ``frames`` (N, H, W) uint16 as a TIA series file (SeriesVersion 0x0220)."""
    n, height, width = frames.shape
    header = struct.pack("<3h", 0x4949, 0x0197, 0x0220)
    header += struct.pack("<4i", 0x4122, 0x4152, n, n)
    dimension = struct.pack("<i2d2i", n, 0.0, 1.0, 0, 0) + struct.pack("<i", 0)
    offset_array_at = len(header) + 8 + 4 + len(dimension)
    data_at = offset_array_at + 16 * n
    element = 2 * struct.calcsize("<2di") + 2 + 8 + height * width * 2
    data_offsets = [data_at + i * element for i in range(n)]
    tag_at = data_at + n * element
    tag_offsets = [tag_at + i * 8 for i in range(n)]
    body = header + struct.pack("<q", offset_array_at) + struct.pack("<i", 1) + dimension
    body += struct.pack(f"<{n}q", *data_offsets) + struct.pack(f"<{n}q", *tag_offsets)
    for frame in frames:
        body += struct.pack("<2di", 0.0, delta_m, 0) * 2 + struct.pack("<h", 2)
        body += struct.pack("<2i", width, height)
        # TIA stores rows bottom-up; ncempy flips them back.
        body += np.flipud(frame).astype("<u2").tobytes()
    for _ in range(n):
        body += struct.pack("<2i", 0x4152, 0)
    path.write_bytes(body)


def _write_velox(
    path: Path, datasets: dict[str, np.ndarray], pixel_m: float, frame_time: float | None = None
) -> None:
    """A minimal Velox EMD: Data/Image/<id>/{Data (H, W, frames), Metadata (JSON bytes)}."""
    import h5py

    with h5py.File(path, "w") as handle:
        handle.create_dataset("Version", data=np.array([b'{"format": "Velox", "version": 2}']))
        for number, (detector, frames) in enumerate(datasets.items()):
            group = handle.create_group(f"Data/Image/{number:032x}")
            group.create_dataset("Data", data=np.moveaxis(frames, 0, -1))
            meta = {
                "BinaryResult": {
                    "Detector": detector,
                    "PixelSize": {"width": str(pixel_m), "height": str(pixel_m)},
                    "PixelUnitX": "m",
                    "PixelUnitY": "m",
                }
            }
            if frame_time is not None:
                meta["Scan"] = {"FrameTime": str(frame_time)}
            raw = np.frombuffer(json.dumps(meta).encode(), np.uint8)
            column = np.zeros((raw.size + 16, len(frames)), np.uint8)
            column[: raw.size] = raw[:, None]
            group.create_dataset("Metadata", data=column)


# --------------------------------------------------------------------------------------------
# units


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (0.05, "nm", 0.5),
        (1.0, "µm", 1e4),
        (1.0, "μm", 1e4),  # Greek mu
        (1.0, "\\u00B5m", 1e4),  # ImageJ's escape
        (1.0, "micron", 1e4),
        (1.0, "um", 1e4),
        (54.1, "pm", 0.541),
        (2.0, "Å", 2.0),
        (2.0, "A", 2.0),
        (2.0, "\\u00C5", 2.0),  # HyperSpy/ImageJ escape of Å
        (3e-11, "m", 0.3),
        (0.05, "[n_m]", 0.5),  # Berkeley EMD
    ],
)
def test_to_angstrom_converts_lengths(value, unit, expected):
    assert to_angstrom(value, unit) == pytest.approx(expected)


@pytest.mark.parametrize("unit", ["pixel", "", "1/nm", "eV", None])
def test_to_angstrom_rejects_non_lengths(unit):
    assert to_angstrom(1.0, unit) is None


# --------------------------------------------------------------------------------------------
# the shipped real files


def test_reads_real_imagej_tiff_with_its_nm_tag():
    image, meta = read_image(DATA / "Tecnai_Osiris_SrTiO3.tif")
    assert image.shape == (512, 512) and image.dtype == np.uint16
    assert isinstance(meta, ImageMetadata)
    assert meta.shape == (512, 512) and meta.dtype == np.uint16 and meta.n_frames == 1
    assert meta.pixel_size == pytest.approx(0.135, abs=5e-4)
    assert "ImageJ" in meta.pixel_size_source and "nm" in meta.pixel_size_source
    assert 30_000 < image.mean() < 35_000  # raw counts on the detector offset


def test_reads_real_dm3_with_its_calibration():
    image, meta = read_image(DATA / "REBCO-ROI_raw.dm3")
    assert image.shape == (128, 128) and meta.dtype == np.uint16
    assert meta.pixel_size == pytest.approx(0.541, abs=1e-3)
    assert meta.pixel_size_source.startswith("dm3 calibration")
    assert meta.file_format == "dm3"
    assert image.std() > 0


# --------------------------------------------------------------------------------------------
# TIFF flavours


@pytest.mark.parametrize(
    ("unit", "per_unit", "expected"),
    [("nm", 20.0, 0.5), ("\\u00B5m", 1e4, 1.0), ("micron", 2e3, 5.0), ("pm", 0.02, 0.5)],
)
def test_imagej_tiff_calibration_in_any_unit(tmp_path, unit, per_unit, expected):
    path = tmp_path / "ij.tif"
    data = _image()
    tifffile.imwrite(
        path, data, imagej=True, resolution=(per_unit, per_unit), metadata={"unit": unit}
    )
    image, meta = read_image(path)
    np.testing.assert_array_equal(image, data)
    assert meta.pixel_size == pytest.approx(expected)


def test_imagej_tiff_in_pixels_has_no_calibration(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, _image(), imagej=True)
    assert read_image(path)[1].pixel_size is None


def test_ome_tiff_physical_size(tmp_path):
    path = tmp_path / "scan.ome.tif"
    data = _image()
    metadata = {"axes": "YX", "PhysicalSizeX": 0.02, "PhysicalSizeXUnit": "nm"}
    metadata |= {"PhysicalSizeY": 0.03, "PhysicalSizeYUnit": "nm"}
    tifffile.imwrite(path, data, ome=True, metadata=metadata)
    image, meta = read_image(path)
    np.testing.assert_array_equal(image, data)
    assert meta.pixel_size == pytest.approx(0.2)
    assert meta.pixel_size_yx == pytest.approx((0.3, 0.2))
    assert meta.pixel_size_source.startswith("OME")


def test_resolution_tag_in_centimetres(tmp_path):
    path = tmp_path / "cm.tif"
    tifffile.imwrite(path, _image(), resolution=(5e7, 5e7), resolutionunit="CENTIMETER")
    meta = read_image(path)[1]
    assert meta.pixel_size == pytest.approx(2.0)  # 1/5e7 cm = 0.2 nm
    assert "resolution tag" in meta.pixel_size_source


def test_print_resolution_is_not_a_calibration(tmp_path):
    path = tmp_path / "dpi.tif"
    tifffile.imwrite(path, _image(), resolution=(72, 72), resolutionunit="INCH")
    meta = read_image(path)[1]
    assert meta.pixel_size is None and meta.pixel_size_source is None


def test_multipage_tiff_is_a_stack(tmp_path):
    path = tmp_path / "series.tif"
    frames = _image((5, 32, 36))
    tifffile.imwrite(path, frames)
    image, meta = read_image(path)
    np.testing.assert_array_equal(image, frames)
    assert meta.shape == (5, 32, 36) and meta.n_frames == 5


def test_colour_tiff_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "colour.tif"
    tifffile.imwrite(path, _image((32, 32, 3), dtype=np.uint8), photometric="rgb")
    with pytest.raises(ValueError, match=r"colour \(RGB\).*export the raw"):
        read_image(path)


def test_grey_image_saved_as_rgb_is_read_as_grey(tmp_path):
    path = tmp_path / "grey_rgb.tif"
    grey = _image((32, 40), dtype=np.uint8)
    tifffile.imwrite(path, np.stack([grey] * 3, axis=-1), photometric="rgb")
    image, _ = read_image(path)
    np.testing.assert_array_equal(image, grey)


def test_big_endian_tiff_comes_back_native(tmp_path):
    path = tmp_path / "big.tif"
    data = _image()
    tifffile.imwrite(path, data, byteorder=">")
    image, _ = read_image(path)
    assert image.dtype.byteorder in ("=", "|")
    np.testing.assert_array_equal(image, data)


# --------------------------------------------------------------------------------------------
# EMD, SER, NumPy, PNG


def test_berkeley_emd_written_by_ncempy(tmp_path):
    from ncempy.io.emd import emdWriter

    path = tmp_path / "berkeley.emd"
    data = _image((36, 44))
    emdWriter(path, data, pixel_size=(0.06, 0.05), pixel_unit=("nm", "nm"))
    image, meta = read_image(path)
    np.testing.assert_array_equal(image, data)
    assert meta.file_format == "berkeley-emd"
    assert meta.pixel_size_yx == pytest.approx((0.6, 0.5))


def test_velox_emd_picks_haadf_and_converts_metres(tmp_path):
    path = tmp_path / "velox.emd"
    haadf, bf = _image((1, 30, 34), seed=1), _image((1, 30, 34), seed=2)
    _write_velox(path, {"BF": bf, "HAADF": haadf}, pixel_m=1.5e-11)
    image, meta = read_image(path)
    np.testing.assert_array_equal(image, haadf[0])
    assert meta.file_format == "velox-emd" and meta.dataset == "HAADF"
    assert meta.pixel_size == pytest.approx(0.15)


def test_velox_emd_frame_series_is_frames_first(tmp_path):
    path = tmp_path / "series.emd"
    frames = _image((4, 30, 34))
    _write_velox(path, {"HAADF": frames}, pixel_m=2e-11)
    image, meta = read_image(path)
    np.testing.assert_array_equal(image, frames)
    assert meta.n_frames == 4


@pytest.mark.parametrize("n_frames", [1, 3])
def test_ser_images_and_series(tmp_path, n_frames):
    path = tmp_path / "scan_1.ser"
    frames = _image((n_frames, 30, 36))
    _write_ser(path, frames, delta_m=2e-11)
    image, meta = read_image(path)
    np.testing.assert_array_equal(image, frames[0] if n_frames == 1 else frames)
    assert meta.pixel_size == pytest.approx(0.2)
    assert meta.pixel_size_source == "ser calibration (in m)"


def test_npy_round_trip_keeps_dtype(tmp_path):
    path = tmp_path / "image.npy"
    data = np.random.default_rng(0).normal(size=(30, 31)).astype(np.float64)
    np.save(path, data)
    image, meta = read_image(path)
    np.testing.assert_array_equal(image, data)
    assert meta.dtype == np.float64 and meta.pixel_size is None


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_greyscale(tmp_path, dtype):
    import imageio.v3 as iio

    path = tmp_path / "image.png"
    data = _image((30, 40), dtype=dtype)
    iio.imwrite(path, data)
    image, meta = read_image(path)
    np.testing.assert_array_equal(image, data)
    assert meta.dtype == dtype


# --------------------------------------------------------------------------------------------
# bad files


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((2, 3, 30, 30), np.float32, "4-D"),
        ((30, 30, 3), np.float32, "RGB"),
        ((30,), np.float32, "1-D"),
        ((30, 30), np.complex64, "complex"),
    ],
)
def test_unsuitable_arrays_are_refused(tmp_path, shape, dtype, message):
    path = tmp_path / "bad.npy"
    np.save(path, np.ones(shape, dtype))
    with pytest.raises(ValueError, match=message) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_image(tmp_path / "nothing.tif")
    folder = tmp_path / "folder.tif"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        read_image(folder)


def test_unsupported_extension_names_the_supported_ones(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really")
    with pytest.raises(ValueError, match=r"'\.jpg'.*\.dm3"):
        read_image(path)


@pytest.mark.parametrize("suffix", [".tif", ".dm3", ".dm4", ".ser", ".emd", ".npy", ".png"])
def test_empty_and_garbage_files_raise_value_error(tmp_path, suffix):
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_image(empty)
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(np.random.default_rng(3).bytes(4096))
    with pytest.raises(ValueError) as info:
        read_image(garbage)
    assert str(garbage) in str(info.value)


def test_truncated_tiff_raises_value_error(tmp_path):
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, _image((128, 128)))
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(whole.read_bytes()[:20_000])
    with pytest.raises(ValueError, match=r"truncated\.tif could not be read"):
        read_image(truncated)


def test_truncated_dm3_raises_value_error(tmp_path):
    truncated = tmp_path / "truncated.dm3"
    truncated.write_bytes((DATA / "REBCO-ROI_raw.dm3").read_bytes()[:3000])
    with pytest.raises(ValueError, match=r"truncated\.dm3"):
        read_image(truncated)


# --------------------------------------------------------------------------------------------
# writing


def test_tiff_round_trip_with_calibration_opens_as_imagej(tmp_path):
    data = np.random.default_rng(1).normal(size=(3, 30, 40))
    path = write_image(tmp_path / "out.tif", data, pixel_size=0.541)
    image, meta = read_image(path)
    assert image.dtype == np.float32
    np.testing.assert_allclose(image, data.astype(np.float32))
    assert meta.pixel_size == pytest.approx(0.541, rel=1e-4)
    with tifffile.TiffFile(path) as tif:  # what Fiji/ImageJ read
        assert tif.is_imagej and tif.imagej_metadata["unit"] == "nm"
        assert tif.series[0].axes == "TYX"


def test_tiff_without_pixel_size_is_uncalibrated(tmp_path):
    path = write_image(tmp_path / "out.tiff", np.ones((30, 30)))
    assert read_image(path)[1].pixel_size is None


def test_npy_is_float32(tmp_path):
    data = np.arange(12.0).reshape(3, 4)
    path = write_image(tmp_path / "out.npy", data)
    loaded = np.load(path)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, data)


def test_png_preview_is_percentile_stretched_8_bit(tmp_path):
    import imageio.v3 as iio

    data = np.linspace(33_000, 34_000, 50 * 60).reshape(50, 60)
    data[0, 0] = 1e9  # a hot pixel must not squash the stretch
    path = write_image(tmp_path / "preview.png", data)
    preview = iio.imread(path)
    assert preview.dtype == np.uint8 and preview.shape == (50, 60)
    assert preview.min() == 0 and preview.max() == 255
    assert 100 < preview[25, 30] < 155  # the middle of the ramp stays mid-grey


def test_png_refuses_a_stack(tmp_path):
    with pytest.raises(ValueError, match="2-D image"):
        write_image(tmp_path / "stack.png", np.ones((2, 30, 30)))
    assert not list(tmp_path.iterdir())


def test_existing_output_needs_overwrite_and_keeps_its_bytes(tmp_path):
    path = tmp_path / "out.tif"
    write_image(path, np.zeros((30, 30)))
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_image(path, np.ones((30, 30)))
    assert path.read_bytes() == before
    write_image(path, np.ones((30, 30)), overwrite=True)
    assert read_image(path)[0].mean() == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]  # no temporary left


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def half_then_fail(target, *args, **kwargs):
        Path(target).write_bytes(b"II*\x00 half a tiff")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", half_then_fail)
    path = tmp_path / "out.tif"
    with pytest.raises(OSError, match="disk full"):
        write_image(path, np.ones((30, 30)))
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_file(tmp_path, monkeypatch):
    path = write_image(tmp_path / "out.tif", np.zeros((30, 30)))
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", fail)
    with pytest.raises(OSError):
        write_image(path, np.ones((30, 30)), overwrite=True)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


@pytest.mark.parametrize(
    ("name", "array", "kwargs", "error", "message"),
    [
        ("out.jpg", np.ones((30, 30)), {}, ValueError, "unsupported output type"),
        ("out.tif", np.ones((2, 2, 30, 30)), {}, ValueError, r"\(frames, H, W\)"),
        ("out.tif", np.ones((30, 30), complex), {}, ValueError, "not real-valued"),
        ("out.tif", np.ones((30, 30)), {"pixel_size": 0.0}, ValueError, "positive finite"),
        ("out.tif", np.ones((30, 30)), {"pixel_size": float("nan")}, ValueError, "positive"),
        ("out.tif", np.ones((30, 30)), {"pixel_size": "0.2"}, ValueError, "number of Å/px"),
        ("missing/out.tif", np.ones((30, 30)), {}, FileNotFoundError, "create it first"),
    ],
)
def test_write_image_bad_arguments(tmp_path, name, array, kwargs, error, message):
    with pytest.raises(error, match=message):
        write_image(tmp_path / name, array, **kwargs)
    assert not (tmp_path / name).exists()


# --------------------------------------------------------------------------------------------
# calibration per axis, frame interval, original tags and the record of processing


@pytest.mark.parametrize("suffix", [".tif", ".hspy"])
def test_non_square_pixels_survive_a_round_trip(tmp_path, suffix):
    path = write_image(tmp_path / f"out{suffix}", _image((30, 40)), pixel_size=(0.8112, 0.5408))
    image, meta = read_image(path)
    assert image.shape == (30, 40)
    assert meta.pixel_size_yx == pytest.approx((0.8112, 0.5408), rel=1e-6)
    assert meta.pixel_size == pytest.approx(0.5408, rel=1e-6)


def test_non_square_tiff_opens_in_imagej_with_both_resolutions(tmp_path):
    path = write_image(tmp_path / "out.tif", _image((30, 40)), pixel_size=(0.8, 0.5))
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        x = page.tags["XResolution"].value
        y = page.tags["YResolution"].value
    assert x[0] / x[1] == pytest.approx(20.0)  # px per nm
    assert y[0] / y[1] == pytest.approx(12.5)


@pytest.mark.parametrize("suffix", [".tif", ".hspy"])
def test_frame_interval_of_a_stack_round_trips(tmp_path, suffix):
    stack = _image((3, 30, 40))
    path = write_image(tmp_path / f"s{suffix}", stack, pixel_size=0.2, frame_interval=0.25)
    image, meta = read_image(path)
    assert image.shape == (3, 30, 40)
    assert meta.frame_interval == pytest.approx(0.25)
    assert meta.pixel_size_yx == pytest.approx((0.2, 0.2))


def test_velox_frame_time_is_the_frame_interval(tmp_path):
    path = tmp_path / "series.emd"
    _write_velox(path, {"HAADF": _image((3, 30, 34))}, pixel_m=2e-11, frame_time=0.5)
    _, meta = read_image(path)
    assert meta.frame_interval == pytest.approx(0.5)
    assert meta.original_metadata["Velox"]["Scan"]["FrameTime"] == "0.5"


def test_dm3_tags_are_kept_and_carried_into_outputs(tmp_path):
    image, meta = read_image(DATA / "REBCO-ROI_raw.dm3")
    tags = meta.original_metadata["DigitalMicrograph"]
    assert len(tags) > 100
    assert any(key.startswith("ImageList.") for key in tags)
    json.dumps(meta.original_metadata)  # JSON-ready
    for suffix in (".tif", ".hspy"):
        path = write_image(
            tmp_path / f"out{suffix}",
            image,
            pixel_size=meta.pixel_size_yx,
            original_metadata=meta.original_metadata,
        )
        _, written = read_image(path)
        kept = written.original_metadata["DigitalMicrograph"]
        assert set(kept) == set(tags)


def test_record_of_processing_names_model_input_and_parameters():
    source = DATA / "REBCO-ROI_raw.dm3"
    record = processing_record(
        model="general", step=2, contrast="bright", resampling_factor=1.25, source=source
    )
    assert record["software"] == "stem_ae" and record["function"] == "stem_ae.denoise"
    assert record["input"] == {
        "name": "REBCO-ROI_raw.dm3",
        "sha256": "1cb2b4e7fc6f115ef4e5ed9009634f0260493bcc2260289c6f11a1aba7db82c7",
    }
    assert record["parameters"] == {"step": 2, "contrast": "bright"}
    assert record["resampling_factor"] == 1.25
    assert record["date"].endswith("+00:00")
    json.dumps(record)


def test_record_config_hash_is_the_same_for_a_name_and_its_config():
    from stem_ae.model import AEConfig

    folder = Path(__file__).resolve().parents[1] / "stem_ae" / "models"
    by_name = processing_record(model="paper")["model"]
    by_config = processing_record(model=AEConfig.from_json(folder / "paper" / "config.json"))
    assert by_name["config_sha256"] == by_config["model"]["config_sha256"]
    other = processing_record(model="general")["model"]["config_sha256"]
    assert other != by_name["config_sha256"]


def test_record_of_measured_lattice():
    from stem_ae import estimate_lattice
    from stem_ae.simulate import simulate_scene

    scene = simulate_scene((128, 128), pixel_size=0.3, dose=50.0, rng=0)
    record = processing_record(lattice=estimate_lattice(scene.noisy))
    assert len(record["lattice"]["spacings_px"]) == 2
    assert record["lattice"]["dominant_spacing_px"] > 0


@pytest.mark.parametrize("suffix", [".tif", ".hspy"])
def test_record_is_stored_and_read_back(tmp_path, suffix):
    record = processing_record(model="general", step=4, contrast="dark", pixel_size=(0.3, 0.2))
    path = write_image(tmp_path / f"out{suffix}", _image(), pixel_size=(0.3, 0.2), record=record)
    _, meta = read_image(path)
    assert meta.processing["model"] == record["model"]
    assert meta.processing["parameters"] == {"step": 4, "contrast": "dark"}
    assert meta.processing["pixel_size_yx_angstrom"] == pytest.approx([0.3, 0.2])


def test_record_is_json_in_the_imagej_info(tmp_path):
    record = processing_record(step=2)
    path = write_image(tmp_path / "out.tif", _image(), record=record)
    with tifffile.TiffFile(path) as tif:
        info = json.loads(tif.imagej_metadata["Info"])
    assert info["stem_ae"]["processing"]["parameters"]["step"] == 2


def test_hspy_opens_in_hyperspy_with_axes_in_nm_and_the_record(tmp_path):
    import hyperspy.api as hs

    record = processing_record(step=2)
    path = write_image(
        tmp_path / "out.hspy", _image((30, 40)), pixel_size=(0.3, 0.2), record=record
    )
    signal = hs.load(path)
    y_axis, x_axis = signal.axes_manager.signal_axes[1], signal.axes_manager.signal_axes[0]
    assert (y_axis.scale, x_axis.scale) == pytest.approx((0.03, 0.02))
    assert x_axis.units == y_axis.units == "nm"
    assert signal.metadata.Processing.stem_ae.parameters.step == 2


@pytest.mark.parametrize("suffix", [".npy", ".png"])
def test_formats_without_calibration_warn_instead_of_dropping_it(tmp_path, suffix):
    with pytest.warns(CalibrationDroppedWarning, match="pixel size.*write .tif or .hspy"):
        write_image(tmp_path / f"out{suffix}", _image(), pixel_size=(0.3, 0.2))


@pytest.mark.parametrize(
    "pixel_size", [(0.3,), (0.3, -0.2), (0.3, float("nan")), ("0.3", "0.2"), (True, 0.2)]
)
def test_bad_pixel_size_pairs_are_refused(tmp_path, pixel_size):
    with pytest.raises(ValueError, match="pixel_size"):
        write_image(tmp_path / "out.tif", _image(), pixel_size=pixel_size)
    assert not list(tmp_path.iterdir())


def test_bad_frame_interval_and_record_are_refused(tmp_path):
    with pytest.raises(ValueError, match="frame_interval"):
        write_image(tmp_path / "s.tif", _image((2, 30, 30)), frame_interval=0.0)
    with pytest.raises(ValueError, match="not JSON-ready"):
        write_image(tmp_path / "s.tif", _image(), record={"bad": object()})
    assert not list(tmp_path.iterdir())
