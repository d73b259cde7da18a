"""Tests of stem_ae._hyperspy with real HyperSpy (installed by the dev extra)."""

from __future__ import annotations

import hyperspy.api as hs
import numpy as np
import pytest

from stem_ae._hyperspy import (
    from_signal,
    is_signal2d,
    make_signal,
    signal_result,
    to_signal,
)
from stem_ae.io import processing_record


def _signal(shape=(30, 40), scales=(0.03, 0.02), units="nm", interval=None) -> hs.signals.Signal2D:
    data = np.random.default_rng(0).poisson(5.0, size=shape).astype(np.float32)
    signal = hs.signals.Signal2D(data)
    y_axis, x_axis = signal.axes_manager.signal_axes[1], signal.axes_manager.signal_axes[0]
    y_axis.scale, x_axis.scale = scales
    y_axis.units = x_axis.units = units
    y_axis.offset, x_axis.offset = 1.5, -2.0
    x_axis.name, y_axis.name = "x", "y"
    if len(shape) == 3:
        time = signal.axes_manager.navigation_axes[0]
        time.scale, time.units, time.name = interval or 1.0, "s" if interval else None, "time"
    signal.metadata.General.title = "HAADF"
    signal.original_metadata.add_dictionary({"Microscope": {"Voltage": 300}})
    return signal


def test_is_signal2d_is_duck_typed():
    assert is_signal2d(_signal())
    assert not is_signal2d(np.zeros((30, 40)))
    assert not is_signal2d(hs.signals.Signal1D(np.zeros(30)))


def test_from_signal_gives_pixels_and_non_square_calibration_in_angstrom():
    signal = _signal(scales=(0.0811, 0.0541))
    data, info = from_signal(signal)
    assert data is signal.data
    assert info["pixel_size"] == pytest.approx((0.811, 0.541))
    assert info["title"] == "HAADF"
    assert info["original_metadata"] == {"Microscope": {"Voltage": 300}}
    assert [axis["name"] for axis in info["axes"]] == ["y", "x"]


def test_from_signal_of_a_stack_gives_the_frame_interval():
    data, info = from_signal(_signal((3, 30, 40), interval=0.5))
    assert data.shape == (3, 30, 40)
    assert info["frame_interval"] == 0.5


def test_from_signal_in_pixels_is_uncalibrated():
    _, info = from_signal(hs.signals.Signal2D(np.zeros((30, 40))))
    assert info["pixel_size"] is None


def test_from_signal_refuses_4d_and_non_signals():
    with pytest.raises(ValueError, match="navigation axes"):
        from_signal(hs.signals.Signal2D(np.zeros((2, 3, 30, 40))))
    with pytest.raises(TypeError, match="Signal2D"):
        from_signal(np.zeros((30, 40)))


def test_to_signal_keeps_axes_metadata_and_adds_the_record():
    template = _signal((3, 30, 40), interval=0.5)
    record = processing_record(step=2, contrast="bright")
    output = to_signal(template, template.data * 2, record)
    for new, old in zip(output.axes_manager._axes, template.axes_manager._axes, strict=True):
        assert (new.scale, new.offset, new.units, new.name, new.navigate) == (
            old.scale,
            old.offset,
            old.units,
            old.name,
            old.navigate,
        )
    assert output.metadata.General.title == "HAADF (denoised)"
    assert output.metadata.Processing.stem_ae.parameters.step == 2
    assert output.original_metadata.Microscope.Voltage == 300
    assert "Processing" not in template.metadata  # the input is left as it was
    np.testing.assert_array_equal(output.data, template.data * 2)


def test_to_signal_refuses_another_shape():
    with pytest.raises(ValueError, match="does not match"):
        to_signal(_signal(), np.zeros((10, 10)))


def test_signal_result_marks_denoised_and_uncertainty():
    template = _signal()
    record = processing_record(step=2)
    denoised, spread = signal_result(template, template.data, template.data * 0.1, record=record)
    assert denoised.metadata.Processing.stem_ae.output == "denoised"
    assert spread.metadata.Processing.stem_ae.output == "uncertainty"
    assert spread.metadata.General.title == "HAADF (uncertainty)"
    assert spread.axes_manager.signal_axes[0].scale == template.axes_manager.signal_axes[0].scale
    single = signal_result(template, template.data, record=record)
    assert is_signal2d(single)


def test_dask_output_gives_a_lazy_signal():
    da = pytest.importorskip("dask.array")
    template = _signal()
    output = to_signal(template, da.from_array(template.data, chunks=16))
    assert output._lazy
    np.testing.assert_array_equal(np.asarray(output.data), template.data)


def test_make_signal_round_trips_through_hspy(tmp_path):
    record = processing_record(step=3)
    signal = make_signal(
        np.ones((2, 30, 40), np.float32),
        pixel_size=(0.3, 0.2),
        frame_interval=0.1,
        record=record,
        original_metadata={"Velox": {"Scan": {"FrameTime": "0.1"}}},
        title="scan",
    )
    signal.save(tmp_path / "scan.hspy")
    loaded = hs.load(tmp_path / "scan.hspy")
    assert loaded.axes_manager.navigation_axes[0].scale == pytest.approx(0.1)
    assert loaded.axes_manager.navigation_axes[0].units == "s"
    assert loaded.axes_manager.signal_axes[1].scale == pytest.approx(0.03)
    assert loaded.metadata.Processing.stem_ae.parameters.step == 3
    assert loaded.original_metadata.Velox.Scan.FrameTime == "0.1"


# --------------------------------------------------------------------------------------------
# stem_ae.denoise with a Signal2D


def _scene_signal(frames: int = 0) -> hs.signals.Signal2D:
    from stem_ae.simulate import simulate_scene

    scene = simulate_scene((96, 96), pixel_size=0.3905, dose=20.0, rng=0)
    data = scene.noisy if not frames else np.stack([scene.noisy] * frames)
    signal = hs.signals.Signal2D(data.astype(np.float32))
    for axis in signal.axes_manager.signal_axes:
        axis.scale, axis.units, axis.offset = 0.03905, "nm", 0.5
    signal.metadata.General.title = "scene"
    return signal


def test_denoise_of_a_signal_is_a_signal_with_its_axes_and_the_record():
    from stem_ae import denoise

    signal = _scene_signal()
    denoised, spread = denoise(signal, step=4, return_uncertainty=True)
    assert is_signal2d(denoised) and is_signal2d(spread)
    for output in (denoised, spread):
        for new, old in zip(
            output.axes_manager.signal_axes, signal.axes_manager.signal_axes, strict=True
        ):
            assert (new.scale, new.units, new.offset) == (old.scale, old.units, old.offset)
    record = denoised.metadata.Processing.stem_ae.as_dictionary()
    assert record["function"] == "stem_ae.denoise" and record["parameters"]["step"] == 4
    assert record["pixel_size_yx_angstrom"] == pytest.approx([0.3905, 0.3905])
    assert record["resampling_factor"] > 0 and len(record["lattice"]["spacings_px"]) == 2
    assert spread.metadata.Processing.stem_ae.output == "uncertainty"
    assert denoised.metadata.General.title == "scene (denoised)"
    assert np.std(denoised.data) < np.std(signal.data)
    assert "Processing" not in signal.metadata


def test_denoise_of_a_signal_returns_the_crystal_map_and_the_report_too():
    from stem_ae import denoise

    signal = _scene_signal()
    denoised, mask, report = denoise(signal, step=4, return_mask=True, return_report=True)
    assert is_signal2d(denoised) and is_signal2d(mask) and isinstance(report, dict)
    assert mask.data.shape == signal.data.shape and mask.data.dtype == np.float32
    assert mask.metadata.Processing.stem_ae.output.startswith("crystal map")
    assert mask.axes_manager.signal_axes[0].scale == signal.axes_manager.signal_axes[0].scale
    assert denoised.metadata.Processing.stem_ae.correction.as_dictionary() == {
        k: v for k, v in report.items() if v is not None
    }
    assert np.array_equal(denoised.data, denoise(signal, step=4).data)


def test_denoise_of_a_stack_signal_keeps_the_navigation_axis():
    from stem_ae import denoise

    signal = _scene_signal(frames=2)
    time = signal.axes_manager.navigation_axes[0]
    time.scale, time.units = 0.5, "s"
    denoised = denoise(signal, step=7)
    assert denoised.data.shape == (2, 96, 96)
    assert denoised.axes_manager.navigation_axes[0].scale == 0.5
    assert denoised.axes_manager.navigation_axes[0].units == "s"
