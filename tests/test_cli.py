"""Tests of the installed ``stem-ae`` command, run in a subprocess as a user would run it.

Every bad input must end with exit status 2 and exactly one line on stderr
(``stem-ae: error: <what> — <fix>``) naming the file or value, no traceback, no output file and
the input bytes unchanged. Those checks happen before TensorFlow is imported, so each costs well
under a second. The few runs that denoise use a tiny model trained by ``stem-ae train`` itself
(one epoch on 512 windows), so they test the command and not the shipped weights.

The real images in ``data/`` are by Lukas Grünewald (MIT licence, data/LICENSE-r_em_workflows.txt).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

DATA = Path(__file__).resolve().parents[1] / "data"
TIFF = DATA / "Tecnai_Osiris_SrTiO3.tif"
DM3 = DATA / "REBCO-ROI_raw.dm3"

_SCRIPT = Path(sys.executable).with_name("stem-ae")
COMMAND = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "stem_ae.cli"]


def run(*args, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [*COMMAND, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        check=False,
    )


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_bad_input(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, one line ``stem-ae: error: … — …`` on stderr naming ``needles``, nothing else."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("stem-ae: error: ") and " — " in line, line
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def _noise(shape=(96, 96), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 10.0, shape).astype(np.float32)


def _lattice_image(shape=(96, 96), period=8.0) -> np.ndarray:
    y, x = np.mgrid[: shape[-2], : shape[-1]]
    image = np.cos(2 * np.pi * x / period) + np.cos(2 * np.pi * y / period) + 3.0
    return np.broadcast_to(image, shape).astype(np.float32)


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny model trained by ``stem-ae train`` (also the test of that subcommand)."""
    folder = tmp_path_factory.mktemp("model")
    config = folder / "tiny.json"
    config.write_text(json.dumps({"encoder": [64], "code": 16}))
    out = folder / "tiny"
    result = run(
        "train", "--out", out, "--config", config, "--samples", 512, "--epochs", 1, "--seed", 0
    )
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1: loss" in result.stdout
    assert (out / "model.keras").is_file() and (out / "config.json").is_file()
    assert json.loads((out / "config.json").read_text())["encoder"] == [64]
    return out


@pytest.fixture
def work(tmp_path) -> Path:
    """A folder with small valid and invalid inputs."""
    folder = tmp_path / "work"
    folder.mkdir()
    np.save(folder / "lattice.npy", _lattice_image())
    tifffile.imwrite(folder / "lattice.tif", _lattice_image())
    return folder


# --------------------------------------------------------------------------------------------
# help and version


def test_version_and_help_are_fast_and_have_examples():
    from stem_ae import __version__

    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"stem-ae {__version__}"
    for command in ("denoise", "info", "simulate", "train"):
        result = run(command, "--help")
        assert result.returncode == 0
        assert "example" in result.stdout and f"stem-ae {command} " in result.stdout
    result = run("--help")
    assert result.returncode == 0 and "denoise" in result.stdout


# --------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written, input unchanged


def _make_bad_inputs(folder: Path) -> None:
    (folder / "empty.tif").write_bytes(b"")
    whole = folder / "whole.tif"
    tifffile.imwrite(whole, _lattice_image((128, 128)))
    (folder / "truncated.tif").write_bytes(whole.read_bytes()[:20_000])
    whole.unlink()
    (folder / "garbage.dm3").write_bytes(np.random.default_rng(0).bytes(4096))
    (folder / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 jpeg")
    (folder / "a_folder.tif").mkdir()
    nan = _lattice_image()
    nan[10, 10] = np.nan
    np.save(folder / "nan.npy", nan)
    inf = _lattice_image()
    inf[3, 4] = np.inf
    np.save(folder / "inf.npy", inf)
    np.save(folder / "constant.npy", np.full((64, 64), 7.0))
    tifffile.imwrite(
        folder / "rgb.tif",
        np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8),
        photometric="rgb",
    )
    np.save(folder / "four_d.npy", np.ones((2, 3, 64, 64), np.float32))
    np.save(folder / "small.npy", _lattice_image((20, 20), period=5.0))
    np.save(folder / "noise.npy", _noise())
    (folder / "not_a_model.keras").write_text("this is not a zip archive")
    (folder / "empty_model_folder").mkdir()
    (folder / "a_file").write_text("a regular file, not a folder")
    (folder / "exists.tif").write_bytes(b"an earlier result")


BAD_DENOISE = [
    # (arguments, strings the error line must contain)
    (["missing.tif", "-o", "out.tif"], ["missing.tif", "does not exist"]),
    (["a_folder.tif", "-o", "out.tif"], ["a_folder.tif", "is a folder"]),
    (["empty.tif", "-o", "out.tif"], ["empty.tif", "empty"]),
    (["truncated.tif", "-o", "out.tif"], ["truncated.tif", "could not be read"]),
    (["garbage.dm3", "-o", "out.tif"], ["garbage.dm3", "not a DigitalMicrograph file"]),
    (["photo.jpg", "-o", "out.tif"], ["photo.jpg", "unsupported file type", ".dm3"]),
    (["nan.npy", "-o", "out.tif"], ["nan.npy", "NaN/Inf"]),
    (["inf.npy", "-o", "out.tif"], ["inf.npy", "NaN/Inf"]),
    (["constant.npy", "-o", "out.tif"], ["constant.npy", "constant"]),
    (["rgb.tif", "-o", "out.tif"], ["rgb.tif", "RGB", "export the raw"]),
    (["four_d.npy", "-o", "out.tif"], ["four_d.npy", "4-D"]),
    (["small.npy", "-o", "out.tif"], ["small.npy", "20×20", "28×28"]),
    (["noise.npy", "-o", "out.tif"], ["noise.npy", "no crystal lattice"]),
    (["lattice.npy", "-o", "out.tif", "--step", "0"], ["--step 0", "1..28"]),
    (["lattice.npy", "-o", "out.tif", "--step", "-3"], ["--step -3", "1..28"]),
    (["lattice.npy", "-o", "out.tif", "--step", "29"], ["--step 29", "1..28"]),
    (["lattice.npy", "-o", "out.tif", "--step", "two"], ["--step", "invalid int"]),
    (["lattice.npy", "-o", "out.tif", "--pixel-size", "0"], ["--pixel-size 0", "positive"]),
    (["lattice.npy", "-o", "out.tif", "--pixel-size", "-0.2"], ["--pixel-size -0.2"]),
    (["lattice.npy", "-o", "out.tif", "--pixel-size", "nan"], ["--pixel-size nan"]),
    (["lattice.npy", "-o", "out.tif", "--pixel-size", "135"], ["135", "> 100 Å/px"]),
    (["lattice.npy", "-o", "out.tif", "--workers", "0"], ["--workers 0"]),
    (["lattice.npy", "-o", "out.tif", "--lattice-constant", "-1"], ["--lattice-constant -1"]),
    (["lattice.npy", "-o", "out.tif", "--model", "fancy"], ["'fancy'", "general", "paper"]),
    (["lattice.npy", "-o", "out.tif", "--model", "not_a_model.keras"], ["not a Keras model"]),
    (["lattice.npy", "-o", "out.tif", "--model", "empty_model_folder"], ["no model.keras"]),
    (["lattice.npy", "-o", "lattice.npy"], ["lattice.npy", "is the input file"]),
    (["lattice.npy", "-o", "./sub/../lattice.npy"], ["is the input file"]),
    (["lattice.npy", "-o", "no_such_folder/out.tif"], ["no_such_folder", "does not exist"]),
    (["lattice.npy", "lattice.tif", "-o", "no_such_folder"], ["no_such_folder", "mkdir"]),
    (["lattice.npy", "lattice.tif", "-o", "."], ["two outputs", "lattice_denoised.tif"]),
    (["lattice.npy", "-o", "a_file/out.tif"], ["a_file", "is not a folder"]),
    (["lattice.npy", "-o", "out.jpg"], ["out.jpg", "unsupported type"]),
    (["lattice.npy", "-o", "exists.tif"], ["exists.tif", "--overwrite"]),
    (["lattice.npy", "-o", "lattice.tif"], ["lattice.tif", "--overwrite"]),
    (["lattice.npy", "lattice.npy", "-o", "."], ["given twice"]),
    (["lattice.npy"], ["-o/--output", "required"]),
]


@pytest.mark.parametrize(
    ("args", "needles"), BAD_DENOISE, ids=[" ".join(a) for a, _ in BAD_DENOISE]
)
def test_bad_denoise_input_is_one_line_and_exit_2(work, args, needles):
    _make_bad_inputs(work)
    (work / "sub").mkdir()
    before = snapshot(work)
    result = run("denoise", *args, cwd=work)
    assert_bad_input(result, *needles)
    assert snapshot(work) == before  # nothing written, nothing changed


def test_unwritable_output_folder(work, tmp_path):
    if os.geteuid() == 0:
        # Root ignores permission bits; /sys refuses new files even to root.
        target = Path("/sys")
        if not target.is_dir():
            pytest.skip("running as root and no /sys: no folder here is unwritable")
    else:
        target = tmp_path / "read_only"
        target.mkdir()
        target.chmod(0o500)
    before = snapshot(work)
    result = run("denoise", "lattice.npy", "-o", target / "out.tif", cwd=work)
    assert_bad_input(result, str(target), "cannot write")
    assert snapshot(work) == before
    assert not (target / "out.tif").exists()


def test_a_zip_that_is_not_a_keras_model_is_one_line(work):
    import zipfile

    with zipfile.ZipFile(work / "fake.keras", "w") as archive:
        archive.writestr("readme.txt", "not a model")
    before = snapshot(work)
    result = run("denoise", "lattice.npy", "-o", "out.tif", "--model", "fake.keras", cwd=work)
    assert_bad_input(result, "--model fake.keras")
    assert snapshot(work) == before


def test_bad_input_is_caught_before_tensorflow_is_imported(work):
    np.save(work / "noise.npy", _noise())
    code = (
        "import sys; from stem_ae.cli import main; "
        "codes = [main(['denoise', 'noise.npy', '-o', 'out.tif']), main(['info', 'noise.npy']), "
        "main(['denoise', 'noise.npy', '-o', 'out.tif', '--step', '0'])]; "
        "print(codes, sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=work, check=False
    )
    assert result.stdout.strip().splitlines()[-1] == "[2, 0, 2] []", result.stdout + result.stderr


def test_no_subcommand_and_unknown_subcommand():
    assert run().returncode == 0  # prints the help
    assert_bad_input(run("sharpen", "x.tif"), "invalid choice", "sharpen")


# --------------------------------------------------------------------------------------------
# denoise on the real files


def test_denoise_real_tiff_writes_calibrated_tiff_and_keeps_existing_output(tmp_path, tiny_model):
    source = snapshot(DATA)
    out = tmp_path / "out.tif"
    result = run("denoise", TIFF, "-o", out, "--model", tiny_model, "--step", 4)
    assert result.returncode == 0, result.stderr
    line, summary = result.stdout.strip().splitlines()
    assert "512×512 uint16" in line and "0.1352 Å/px (ImageJ TIFF calibration" in line
    assert "lattice 25." in line and "step 4" in line
    assert "1 file denoised in" in summary and "s in all, with" in summary
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej and tif.imagej_metadata["unit"] == "nm"
        denoised = tif.asarray()
    assert denoised.shape == (512, 512) and denoised.dtype == np.float32
    raw = tifffile.imread(TIFF).astype(np.float64)
    assert abs(denoised.mean() - raw.mean()) < 0.05 * raw.std() + 1  # same intensity units
    assert denoised.std() < raw.std()  # the window average alone removes noise
    assert "Traceback" not in result.stderr

    first = out.read_bytes()
    again = run("denoise", TIFF, "-o", out, "--model", tiny_model)
    assert_bad_input(again, str(out), "--overwrite")
    assert out.read_bytes() == first
    assert snapshot(DATA) == source
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]  # no temporaries


def test_denoise_many_files_into_a_folder(tmp_path, tiny_model):
    frames = np.stack([_lattice_image((64, 80), period=6.0) * (1 + k) for k in range(3)])
    stack = tmp_path / "series.npy"
    np.save(stack, frames + np.random.default_rng(0).normal(0, 0.2, frames.shape))
    out = tmp_path / "denoised"
    out.mkdir()
    (out / "series_denoised.tif").write_bytes(b"an earlier result")  # replaced: --overwrite
    result = run(
        "denoise", DM3, TIFF, stack, "-o", out, "--model", tiny_model, "--overwrite",
        "--step", 7, "--uncertainty", "--preview", "--pixel-size", 0.2, "--workers", 2,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 4 and "3 files denoised in" in lines[3]
    assert "128×128 uint16" in lines[0] and "pixel size 0.2 Å/px (--pixel-size)" in lines[0]
    assert "3×64×80 float64" in lines[2]
    names = sorted(p.name for p in out.iterdir())
    for stem in ("REBCO-ROI_raw", "Tecnai_Osiris_SrTiO3", "series"):
        assert {f"{stem}_denoised.tif", f"{stem}_denoised_uncertainty.tif"} <= set(names)
        assert f"{stem}_denoised.png" in names
    assert "series_denoised_frames.png" in names  # a series also gets a contact sheet
    assert len(names) == 10
    series = tifffile.imread(out / "series_denoised.tif")
    spread = tifffile.imread(out / "series_denoised_uncertainty.tif")
    assert series.shape == spread.shape == (3, 64, 80)
    assert np.all(spread >= 0)
    means = series.reshape(3, -1).mean(axis=1)
    assert means[0] < means[1] < means[2]  # frames stay in order and in their own units
    with tifffile.TiffFile(out / "REBCO-ROI_raw_denoised.tif") as tif:
        assert tif.pages[0].tags["XResolution"].value[0] / tif.pages[0].tags["XResolution"].value[
            1
        ] == pytest.approx(50.0, rel=1e-3)  # 0.2 Å/px = 50 px/nm


# --------------------------------------------------------------------------------------------
# info and simulate


def test_info_on_real_files():
    result = run("info", TIFF)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "512×512" in out and "uint16" in out and "0.1352 Å/px" in out
    assert "plane spacings 25." in out
    assert "strongest   reflection (1 0): 25." in out  # named by its order on the lattice
    assert "period" not in out
    result = run("info", DM3)
    assert result.returncode == 0 and "128×128" in result.stdout and "0.5408 Å/px" in result.stdout


def test_info_without_lattice_and_bad_file(work):
    np.save(work / "noise.npy", _noise())
    result = run("info", "noise.npy", cwd=work)
    assert result.returncode == 0 and "none found" in result.stdout
    assert "uncalibrated" in result.stdout
    assert_bad_input(run("info", "missing.dm4", cwd=work), "missing.dm4", "does not exist")


def test_simulate_writes_scene_and_true_columns(tmp_path):
    import stem_ae.simulate

    if not hasattr(stem_ae.simulate, "simulate_scene"):
        pytest.skip("stem_ae.simulate.simulate_scene is not written yet")
    out = tmp_path / "scene.tif"
    args = ["simulate", out, "--shape", 96, 128, "--dose", 16, "--pixel-size", 0.2, "--seed", 3]
    result = run(*args)
    assert result.returncode == 0, result.stderr
    noisy = tifffile.imread(out)
    assert noisy.shape == (96, 128)
    table = np.loadtxt(tmp_path / "scene_columns.csv", delimiter=",", skiprows=1, ndmin=2)
    assert table.shape[1] == 3 and len(table) > 10
    assert table[:, 0].max() < 96 + 1 and table[:, 1].max() < 128 + 1
    first = out.read_bytes()
    (
        out.unlink(),
        (tmp_path / "scene_clean.tif").unlink(),
        (tmp_path / "scene_columns.csv").unlink(),
    )
    assert run(*args).returncode == 0 and out.read_bytes() == first  # same seed, same bytes
    assert_bad_input(run(*args), "scene", "--overwrite")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--shape", "10", "10"], ["--shape 10 10"]),
        (["--dose", "0"], ["--dose 0"]),
        (["--pixel-size", "-1"], ["--pixel-size -1"]),
    ],
)
def test_simulate_bad_arguments(tmp_path, args, needles):
    result = run("simulate", tmp_path / "scene.tif", *args)
    assert_bad_input(result, *needles)
    assert list(tmp_path.iterdir()) == []


def test_train_bad_arguments(tmp_path):
    assert_bad_input(run("train", "--out", tmp_path / "m", "--epochs", "0"), "--epochs 0")
    assert_bad_input(
        run("train", "--out", tmp_path / "m", "--config", tmp_path / "none.json"), "none.json"
    )
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# what the outputs keep: calibration per axis, frame interval, tags, record of processing


def test_series_with_non_square_pixels_keeps_calibration_time_and_record(tmp_path, tiny_model):
    from stem_ae.io import read_image, write_image

    frames = np.stack([_lattice_image((64, 80), period=6.0) * (1 + k) for k in range(3)])
    frames += np.random.default_rng(0).normal(0, 0.2, frames.shape)
    source = write_image(tmp_path / "series.tif", frames, pixel_size=(0.3, 0.2), frame_interval=0.5)
    out = tmp_path / "out.tif"
    result = run(
        "denoise", source, "-o", out, "--model", tiny_model, "--step", 7, "--uncertainty",
        "--preview", "--lattice-constant", 0,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "pixel size y 0.3, x 0.2 Å/px" in result.stdout
    assert "resampled x" in result.stdout
    _, meta = read_image(out)
    assert meta.pixel_size_yx == pytest.approx((0.3, 0.2), rel=1e-6)  # defect 1
    assert meta.frame_interval == pytest.approx(0.5)
    record = meta.processing
    assert record["function"] == "stem_ae.denoise" and record["output"] == "denoised"
    assert record["input"] == {
        "name": "series.tif",
        "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
    }
    config = json.loads((tiny_model / "config.json").read_text())
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    assert record["model"]["config_sha256"] == hashlib.sha256(canonical).hexdigest()
    assert record["parameters"]["step"] == 7
    assert record["resampling_factor"] > 0
    assert len(record["lattice"]["spacings_px"]) == 2
    assert record["pixel_size_yx_angstrom"] == pytest.approx([0.3, 0.2])
    _, spread_meta = read_image(tmp_path / "out_uncertainty.tif")
    assert spread_meta.processing["output"] == "uncertainty"
    assert {"out.png", "out_frames.png"} <= {p.name for p in tmp_path.iterdir()}
    # the correction's decision travels with the data, and the summary line says it
    correction = record["correction"]
    assert correction["residual"] == "auto" and correction["noise"] in ("white", "correlated")
    assert 0 <= correction["data_weight"] <= 1 and correction["bandwidth_px"] >= 0
    assert f"{correction['reason']}: " in result.stdout
    assert spread_meta.processing["correction"] == correction
    info = run("info", out)
    assert info.returncode == 0, info.stderr
    assert f"correction  {correction['reason']}: " in info.stdout


def test_dm3_to_hspy_keeps_axes_dm_tags_and_record(tmp_path, tiny_model):
    import hyperspy.api as hs

    out = tmp_path / "out.hspy"
    result = run("denoise", DM3, "-o", out, "--model", tiny_model, "--step", 7)
    assert result.returncode == 0, result.stderr
    signal = hs.load(out)
    x_axis = signal.axes_manager.signal_axes[0]
    assert x_axis.units == "nm" and x_axis.scale == pytest.approx(0.054082, rel=1e-4)
    assert len(signal.original_metadata.DigitalMicrograph.as_dictionary()) > 100
    assert signal.metadata.Processing.stem_ae.input.name == "REBCO-ROI_raw.dm3"


def test_denoise_without_step_uses_and_records_the_models_default(tmp_path, tiny_model):
    out = tmp_path / "out.tif"
    result = run("denoise", DM3, "-o", out, "--model", tiny_model)
    assert result.returncode == 0, result.stderr
    assert "step 3" in result.stdout  # a dense model's default (DEFAULT_STEPS)
    from stem_ae.io import read_image

    _, meta = read_image(out)
    assert meta.processing["parameters"]["step"] == 3


def test_png_output_warns_that_the_data_are_lost(tmp_path, tiny_model):
    out = tmp_path / "out.png"
    result = run("denoise", DM3, "-o", out, "--model", tiny_model, "--step", 7)
    assert result.returncode == 0, result.stderr
    assert "stem-ae: warning:" in result.stderr and "8-bit" in result.stderr
    assert "write .tif or .hspy" in result.stderr
    assert out.is_file()


def test_hspy_output_without_hyperspy_fails_before_any_work(work):
    code = (  # HyperSpy made unimportable, as when it is not installed
        "import sys; sys.modules['hyperspy'] = None; "
        "from stem_ae.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "denoise", "lattice.npy", "-o", "out.hspy"],
        capture_output=True,
        text=True,
        cwd=work,
        check=False,
    )
    assert_bad_input(result, "HyperSpy", "stem_ae[hyperspy]")
    assert not (work / "out.hspy").exists()


def test_missing_tensorflow_is_one_line_with_the_install_command(work):
    code = (  # TensorFlow made unimportable, as when neither [cpu] nor tensorflow is installed
        "import sys; sys.modules['tensorflow'] = None; "
        "from stem_ae.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "denoise", "lattice.npy", "-o", "out.tif"],
        capture_output=True,
        text=True,
        cwd=work,
        check=False,
    )
    assert_bad_input(result, "TensorFlow", "stem_ae[cpu]")
    assert not (work / "out.tif").exists()


def test_progress_bar_under_a_terminal_counts_whole_percent(work, tiny_model):
    import fcntl
    import pty
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # the child: a 100-column terminal, as a user's
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        os.chdir(work)
        args = ["denoise", "lattice.npy", "-o", "out.tif", "--model", str(tiny_model)]
        os.execv(COMMAND[0], [*COMMAND, *args])
    output = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "lattice.npy" in text and "100%|" in text and "resampled x" in text
    assert "/1 [" not in text and "file/s" not in text and "s/file" not in text


def test_denoise_dark_contrast_and_crystal_map(tmp_path, tiny_model):
    from stem_ae.simulate import simulate_scene

    scene = simulate_scene((160, 160), pixel_size=0.15, dose=64.0, contrast="dark", rng=4)
    source = tmp_path / "abf.npy"
    np.save(source, scene.noisy)
    out = tmp_path / "abf_denoised.tif"
    result = run("denoise", source, "-o", out, "--model", tiny_model, "--mask")
    assert result.returncode == 0, result.stderr
    assert "dark columns" in result.stdout + result.stderr
    mask = tifffile.imread(tmp_path / "abf_denoised_mask.tif")
    assert mask.shape == scene.noisy.shape and 0 <= mask.min() and mask.max() <= 1
    from stem_ae.io import read_image

    _, meta = read_image(out)
    assert meta.processing["parameters"]["contrast"] == "dark"
    forced = run(
        "denoise",
        source,
        "-o",
        tmp_path / "forced.tif",
        "--model",
        tiny_model,
        "--contrast",
        "bright",
    )
    assert forced.returncode == 0 and "bright columns" in forced.stdout + forced.stderr
    # dark: sampled at the columns' own spacing, which the rims' stronger second order hides
    from stem_ae.denoising import _scale_factor
    from stem_ae.model import get_config, load_model

    _, forced_meta = read_image(tmp_path / "forced.tif")
    spacing_range = get_config(load_model(tiny_model)).spacing_range
    for record in (meta.processing, forced_meta.processing):
        lattice = record["lattice"]
        assert record["resampling_factor"] == pytest.approx(
            _scale_factor(*lattice["sampling_spacings_px"], *spacing_range)
        )
    dark_spacing = meta.processing["lattice"]["sampling_spacings_px"][0]
    assert dark_spacing > 1.2 * meta.processing["lattice"]["dominant_spacing_px"]
    assert forced_meta.processing["lattice"]["sampling_spacings_px"][0] == pytest.approx(
        forced_meta.processing["lattice"]["dominant_spacing_px"]
    )
    assert_bad_input(
        run("denoise", source, "-o", tmp_path / "x.tif", "--contrast", "abf"), "--contrast"
    )


def test_denoise_with_the_convolutional_model_records_it(tmp_path):
    from stem_ae.io import read_image
    from stem_ae.simulate import simulate_scene

    scene = simulate_scene((96, 96), pixel_size=0.3, dose=8.0, rng=6)
    source = tmp_path / "scene.npy"
    np.save(source, scene.noisy)
    out = tmp_path / "scene_denoised.tif"
    result = run("denoise", source, "-o", out, "--model", "general_conv")
    assert result.returncode == 0, result.stderr
    assert "model general_conv" in result.stdout + result.stderr
    denoised, meta = read_image(out)
    assert meta.processing["model"]["name"] == "general_conv"
    noise = np.sqrt(np.mean((scene.noisy - scene.clean) ** 2))
    assert np.sqrt(np.mean((denoised - scene.clean) ** 2)) < 0.7 * noise


def test_denoise_default_model_is_the_convolutional_one_for_dark_columns(tmp_path):
    from stem_ae.io import read_image
    from stem_ae.simulate import simulate_scene

    for contrast, expected in (("dark", "general_conv"), ("bright", "general")):
        scene = simulate_scene((128, 128), pixel_size=0.15, dose=64.0, contrast=contrast, rng=4)
        source = tmp_path / f"{contrast}.npy"
        np.save(source, scene.noisy)
        out = tmp_path / f"{contrast}_denoised.tif"
        result = run("denoise", source, "-o", out)
        assert result.returncode == 0, result.stderr
        assert f"{contrast} columns, model {expected}," in result.stdout + result.stderr
        _, meta = read_image(out)
        assert meta.processing["model"]["name"] == expected
    # a model given by name is used as given, dark or not
    given = run(
        "denoise", tmp_path / "dark.npy", "-o", tmp_path / "given.tif", "--model", "general"
    )
    assert given.returncode == 0 and "model general," in given.stdout + given.stderr


def test_residual_choices_are_the_denoise_modes():
    from stem_ae.cli import build_parser
    from stem_ae.denoising import RESIDUAL_MODES

    parser = build_parser()
    denoise = parser._subparsers._group_actions[0].choices["denoise"]
    (action,) = [a for a in denoise._actions if a.dest == "residual"]
    assert tuple(action.choices) == RESIDUAL_MODES
