"""The ``stem-ae`` command: denoise, inspect, simulate and train from a terminal.

This is the only module of stem_ae that prints. Every subcommand checks its arguments, paths and
input pixels *before* importing TensorFlow/Keras, so a mistake is reported in well under a second.
Any bad input ends the command with exit status 2 and exactly one line on stderr,
``stem-ae: error: <what is wrong> — <what to do>``, with no traceback, no partial output file
and the input untouched.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from stem_ae._common import WINDOW, filtered_native_stderr
from stem_ae._version import __version__

_STARTED = time.perf_counter()  # when the command started (start-up is part of what it costs)

PROG = "stem-ae"
MAX_PIXEL_SIZE = 100.0  # Å/px; coarser than this is not an atomic-resolution image
EXIT_BAD_INPUT = 2
SHIPPED_MODELS = ("general", "general_conv", "paper")
_KEEP_BYTES = 1 << 30  # inputs read during the checks are kept in memory up to 1 GiB in all


class UsageError(Exception):
    """A bad argument, path or input file; its message is printed as one line."""


# --------------------------------------------------------------------------------------------
# argument parsing


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``stem-ae: error: … — see … --help``."""

    def error(self, message: str):
        raise UsageError(f"{message} — see '{self.prog} --help'.")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


DENOISE_EPILOG = """\
examples:
  # one image; writes a float32 TIFF with the ImageJ calibration in nm (Fiji reads it)
  stem-ae denoise data/Tecnai_Osiris_SrTiO3.tif -o SrTiO3_denoised.tif

  # a DigitalMicrograph file, with the per-pixel spread and a side-by-side PNG preview
  stem-ae denoise data/REBCO-ROI_raw.dm3 -o REBCO.tif --uncertainty --preview

  # a HyperSpy file (needs HyperSpy): axes, DM tags and the record of processing kept
  stem-ae denoise data/REBCO-ROI_raw.dm3 -o REBCO.hspy

  # many files into a folder, two threads
  mkdir denoised && stem-ae denoise scans/*.dm4 -o denoised/ --workers 2

outputs: OUT (.tif/.tiff/.hspy/.npy/.png); with --uncertainty OUT_uncertainty.tif;
with --preview OUT.png (raw | denoised | uncertainty, scale bar) and, for a series,
OUT_frames.png (every frame). Several inputs write <name>_denoised.tif into the
folder OUT. .tif and .hspy keep the calibration per axis, the frame interval, the
input's own tags and a record of processing (model and its config hash, step,
lattice, resampling, input name and sha256, version, date); .npy and .png cannot.
The lattice is measured from the image, so an uncalibrated or mis-calibrated file
still works; --pixel-size only overrides the file's calibration (stored in the
output and cross-checked against the lattice).
"""

INFO_EPILOG = """\
example:
  stem-ae info data/REBCO-ROI_raw.dm3
"""

SIMULATE_EPILOG = """\
example:
  # a 512x512 SrTiO3 scene with a Ruddlesden-Popper fault, 16 counts/px
  stem-ae simulate scene.tif --shape 512 512 --defect rp --dose 16 --pixel-size 0.2 --seed 0
  # writes scene.tif (noisy counts), scene_clean.tif (expected counts) and
  # scene_columns.csv (true column positions y_px, x_px and column type, 0 = Sr)
"""

TRAIN_EPILOG = """\
example:
  # a small model on the broad "general" distribution (the shipped models used more)
  stem-ae train --out my_model --distribution general --samples 100000 --epochs 4 \\
      --pool-size 50000 --seed 0
  stem-ae denoise image.tif -o out.tif --model my_model

--config takes a JSON file of AEConfig fields, e.g. {"encoder": [512, 256], "code": 64}.
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``stem-ae`` argument parser (no heavy imports)."""
    parser = _Parser(
        prog=PROG,
        description=(
            "Denoise atomic-resolution HAADF STEM images with a dense stacked auto-encoder "
            "applied in a floating 28x28 px window."
        ),
        formatter_class=_Formatter,
        epilog="Run 'stem-ae <command> --help' for a worked example of each command.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)

    denoise = commands.add_parser(
        "denoise",
        help="denoise one or more images",
        description="Denoise microscope images (.dm3 .dm4 .ser .emd .tif .tiff .npy .png).",
        epilog=DENOISE_EPILOG,
        formatter_class=_Formatter,
    )
    denoise.add_argument("inputs", nargs="+", metavar="IN", help="input image file(s)")
    denoise.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="output file, or folder for many"
    )
    denoise.add_argument(
        "--model",
        default=None,
        metavar="MODEL",
        help="'general', 'general_conv', 'paper', or a model folder / .keras file (default: "
        "'general', and 'general_conv' for dark-column images)",
    )
    denoise.add_argument(
        "--step",
        type=int,
        default=None,
        metavar="N",
        help="window step, px, 1..28 (default: the model's, 3 for 'general' and 'paper', "
        "2 for 'general_conv')",
    )
    denoise.add_argument(
        "--pixel-size",
        type=float,
        metavar="Å",
        help="pixel size in Å/px, overriding the file's calibration",
    )
    denoise.add_argument(
        "--lattice-constant",
        type=float,
        metavar="Å",
        help="lattice parameter the calibration is cross-checked against (default 3.905, "
        "SrTiO3); 0 switches the check off",
    )
    denoise.add_argument(
        "--uncertainty", action="store_true", help="also write the per-pixel spread"
    )
    denoise.add_argument(
        "--preview",
        action="store_true",
        help="also write a PNG of raw, denoised and uncertainty side by side",
    )
    denoise.add_argument(
        "--contrast",
        choices=("auto", "bright", "dark"),
        default="auto",
        help="column contrast: 'bright' (HAADF, ADF), 'dark' (ABF, BF) or 'auto' (default: "
        "measured from the unit cell)",
    )
    denoise.add_argument(
        "--residual",
        choices=("auto", "periodic", "sure", "none"),
        default="auto",
        help="data consistency: 'auto' (default), 'periodic' (auto plus the network's error "
        "averaged over the unit cells: weak sublattices, white noise), 'sure' (white-noise SURE, "
        "the earlier default), 'none' (the network alone)",
    )
    denoise.add_argument(
        "--mask",
        action="store_true",
        help="also write the crystal map (1 lattice, 0 not: amorphous, vacuum) as OUT_mask",
    )
    denoise.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    denoise.add_argument(
        "--workers", type=int, metavar="N", help="threads for frame series and large images"
    )
    denoise.set_defaults(handler=_cmd_denoise)

    info = commands.add_parser(
        "info",
        help="shape, dtype, calibration and lattice of a file",
        description="Print a file's shape, dtype, calibration and measured lattice.",
        epilog=INFO_EPILOG,
        formatter_class=_Formatter,
    )
    info.add_argument("file", metavar="FILE")
    info.set_defaults(handler=_cmd_info)

    simulate = commands.add_parser(
        "simulate",
        help="write a simulated scene and its true column positions",
        description="Simulate a noisy HAADF scene; write it and a CSV of its true columns.",
        epilog=SIMULATE_EPILOG,
        formatter_class=_Formatter,
    )
    simulate.add_argument("output", metavar="OUT", help="image file (.tif/.tiff/.npy/.png)")
    simulate.add_argument(
        "--shape", type=int, nargs=2, default=(256, 256), metavar=("H", "W"), help="px"
    )
    simulate.add_argument(
        "--lattice", default="srtio3", help="'srtio3' (default), 'rectangular' or 'hexagonal'"
    )
    simulate.add_argument(
        "--defect",
        default=None,
        help="'rp' (Ruddlesden-Popper fault), 'vacancies', 'strain', or several: rp,vacancies",
    )
    simulate.add_argument("--strain", type=float, default=None, help="strain amplitude, 0-0.2")
    simulate.add_argument("--angle", type=float, default=0.0, help="lattice rotation, degrees")
    simulate.add_argument("--dose", type=float, default=16.0, help="mean counts per px")
    simulate.add_argument("--pixel-size", type=float, default=0.2, metavar="Å", help="Å/px")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    simulate.set_defaults(handler=_cmd_simulate)

    train = commands.add_parser(
        "train",
        help="train an auto-encoder on simulated windows",
        description="Train an auto-encoder with stem_ae.training.train and save it to a folder.",
        epilog=TRAIN_EPILOG,
        formatter_class=_Formatter,
    )
    train.add_argument("--out", required=True, metavar="DIR", help="model folder to write")
    train.add_argument("--config", metavar="JSON", help="AEConfig fields as a JSON file")
    train.add_argument(
        "--distribution",
        default="paper",
        help="'paper' (default), 'general' or 'realistic' (the shipped general model's)",
    )
    train.add_argument("--samples", type=int, default=700_000, metavar="N", help="per epoch")
    train.add_argument("--epochs", type=int, default=6, metavar="E")
    train.add_argument("--seed", type=int, default=0, metavar="S")
    train.add_argument(
        "--pool-size",
        type=int,
        metavar="N",
        help="simulate N windows once and resample them every epoch (fast for 'general')",
    )
    train.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    train.set_defaults(handler=_cmd_train)
    return parser


# --------------------------------------------------------------------------------------------
# checks that need no TensorFlow


def _check_step(step: int | None) -> int | None:
    from stem_ae.windows import check_step

    if step is None:  # the model's default, chosen once the model is known
        return None
    try:
        return check_step(step)
    except (TypeError, ValueError):
        raise UsageError(
            f"--step {step} is outside 1..{WINDOW} px — leave it out (the model's default), "
            f"or up to {WINDOW} for speed."
        ) from None


def _check_pixel_size(pixel_size: float | None, flag: str = "--pixel-size") -> float | None:
    if pixel_size is None:
        return None
    if not math.isfinite(pixel_size) or pixel_size <= 0:
        raise UsageError(
            f"{flag} {pixel_size} must be a positive number of Å/px — e.g. 0.2; "
            f"leave it out to use the file's calibration."
        )
    if pixel_size > MAX_PIXEL_SIZE:
        raise UsageError(
            f"{flag} {pixel_size} Å/px is not an atomic-resolution sampling (> "
            f"{MAX_PIXEL_SIZE:g} Å/px) — give Å per pixel (0.135, not 13.5 nm or 135 pm)."
        )
    return pixel_size


def _shipped_model_names() -> list[str]:
    folder = Path(__file__).resolve().parent / "models"
    present = sorted(p.name for p in folder.iterdir() if (p / "model.keras").is_file())
    return sorted(set(present) | set(SHIPPED_MODELS))


def _check_model(model: str) -> str:
    names = _shipped_model_names()
    if model in names:
        return model
    path = Path(model)
    if not path.exists():
        raise UsageError(
            f"--model {model!r} is neither a shipped model ({', '.join(names)}) nor an existing "
            f"path — use one of those names or a folder/.keras file written by stem-ae train."
        )
    model_file = path / "model.keras" if path.is_dir() else path
    if not model_file.is_file():
        raise UsageError(
            f"--model {model}: the folder holds no model.keras — give a folder written by "
            f"'stem-ae train' or stem_ae.save_model, or a .keras file."
        )
    import zipfile

    if model_file.suffix != ".keras" or not zipfile.is_zipfile(model_file):
        raise UsageError(
            f"--model {model_file} is not a Keras model (.keras archive) — give a folder "
            f"written by 'stem-ae train' or stem_ae.save_model, or 'general'/'paper'."
        )
    return model


def _check_input(path: Path) -> Path:
    from stem_ae.io import READ_EXTENSIONS

    if not path.exists():
        raise UsageError(f"input {path} does not exist — check the path and the spelling.")
    if path.is_dir():
        raise UsageError(f"input {path} is a folder — give image files (e.g. {path}/*.dm4).")
    if path.suffix.lower() not in READ_EXTENSIONS:
        raise UsageError(
            f"input {path} has an unsupported file type {path.suffix or '(none)'!r} — give "
            f"one of {' '.join(READ_EXTENSIONS)}."
        )
    if path.stat().st_size == 0:
        raise UsageError(f"input {path} is empty (0 bytes) — copy it again from its source.")
    if not os.access(path, os.R_OK):
        raise UsageError(f"input {path} is not readable — check its permissions.")
    return path


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_folder_writable(folder: Path) -> None:
    if not folder.exists():
        raise UsageError(
            f"output folder {folder} does not exist — create it first (mkdir -p {folder})."
        )
    if not folder.is_dir():
        raise UsageError(f"output folder {folder} is not a folder — choose another output path.")
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".stem-ae-check-"):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UsageError(
            f"cannot write to output folder {folder} ({reason}) — choose a writable folder."
        ) from None


def _check_outputs(outputs: list[Path], inputs: list[Path], overwrite: bool) -> None:
    from stem_ae.io import WRITE_EXTENSIONS

    seen: dict[Path, Path] = {}
    for output in outputs:
        if output.suffix.lower() not in WRITE_EXTENSIONS:
            raise UsageError(
                f"output {output} has an unsupported type {output.suffix or '(none)'!r} — "
                f"end it in one of {' '.join(WRITE_EXTENSIONS)}."
            )
        for source in inputs:
            if _same_file(output, source):
                raise UsageError(
                    f"output {output} is the input file {source} — choose another output "
                    f"name; stem-ae never overwrites its input."
                )
        key = output.resolve()
        if key in seen:
            raise UsageError(
                f"two outputs would both be written to {output} — give the inputs different "
                f"names or process them separately."
            )
        seen[key] = output
        if output.is_dir():
            raise UsageError(f"output {output} is a folder — give a file name.")
        if output.exists() and not overwrite:
            raise UsageError(f"output {output} exists — pass --overwrite to replace it.")
    for folder in {output.parent for output in outputs}:
        _check_folder_writable(folder)


def _side_outputs(
    output: Path, uncertainty: bool, preview: bool, mask: bool = False
) -> dict[str, Path]:
    paths = {"denoised": output}
    suffix = ".tif" if output.suffix.lower() == ".png" else output.suffix
    if uncertainty:
        paths["uncertainty"] = output.with_name(f"{output.stem}_uncertainty{suffix}")
    if mask:
        paths["mask"] = output.with_name(f"{output.stem}_mask{suffix}")
    if preview:
        name = f"{output.stem}_preview.png" if output.suffix.lower() == ".png" else None
        paths["preview"] = output.with_name(name or f"{output.stem}.png")
    return paths


def _check_hyperspy(outputs: list[Path]) -> None:
    """A .hspy output needs HyperSpy: say so before any work."""
    if not any(output.suffix.lower() == ".hspy" for output in outputs):
        return
    import importlib.util

    if importlib.util.find_spec("hyperspy") is None:
        raise UsageError(
            "writing .hspy needs HyperSpy, which is not installed — pip install "
            "'stem_ae[hyperspy]', or write .tif (Fiji, HyperSpy and tifffile read it)."
        )


def _check_pixels(image, path: Path) -> None:
    import numpy as np

    if min(image.shape[-2:]) < WINDOW:
        raise UsageError(
            f"{path} is {image.shape[-2]}×{image.shape[-1]} px, smaller than the "
            f"{WINDOW}×{WINDOW} px window — give an image of at least {WINDOW}×{WINDOW} px."
        )
    finite = np.isfinite(image)
    if not finite.all():
        bad = int(image.size - np.count_nonzero(finite))
        raise UsageError(
            f"{path} has {bad} NaN/Inf pixel(s) — replace or crop them (e.g. with the median) "
            f"before denoising."
        )
    if image.min() == image.max():
        raise UsageError(
            f"{path} is constant (every pixel = {image.flat[0]}) — nothing to denoise; check "
            f"that it is the right image/channel."
        )


def _measure_lattice(image, path: Path, pixel_size=None):
    """The lattice of the image (power spectra summed over up to 4 frames, as denoise does).

    With a calibration, only plane spacings an atomic lattice can have are searched, and the
    radial spacing stands in where no single 2-D lattice stands out, as in ``denoise``.
    """
    import numpy as np

    from stem_ae.lattice import measure_lattice_or_spacing

    frames = np.asarray(image if image.ndim == 2 else image[:: max(1, len(image) // 4)], float)
    try:
        return measure_lattice_or_spacing(frames, pixel_size=pixel_size)
    except ValueError as error:
        problem = error
    raise UsageError(
        f"no crystal lattice found in {path} ({_one_line(problem)}) — stem-ae denoises "
        f"atomic-resolution images of crystals; check that it is not vacuum, amorphous or "
        f"too noisy."
    ) from None


def _read(path: Path):
    from stem_ae.io import read_image

    try:
        return read_image(path)
    except (ValueError, OSError) as error:
        raise UsageError(
            _with_fix(_one_line(error), f"check that {path} is a readable image file.")
        ) from None


# --------------------------------------------------------------------------------------------
# subcommands


def _format_shape(shape: Sequence[int]) -> str:
    return "×".join(str(n) for n in shape)


def _non_square(pixel_yx) -> bool:
    return bool(pixel_yx) and abs(pixel_yx[0] - pixel_yx[1]) > 1e-3 * pixel_yx[1]


def _pixel_yx_text(pixel_yx, source: str | None) -> str:
    if pixel_yx is None or not _non_square(pixel_yx):
        return _pixel_text(None if pixel_yx is None else pixel_yx[1], source)
    return f"y {pixel_yx[0]:.4g}, x {pixel_yx[1]:.4g} Å/px ({source})"


def _spacings_text(lattice, pixel_size: float | None) -> str:
    """The two primitive plane spacings, px (and Å with a calibration)."""
    first, second = lattice.spacings
    text = f"{first:.2f} and {second:.2f} px"
    if pixel_size:
        text += f" ({first * pixel_size:.3g} and {second * pixel_size:.3g} Å)"
    return text


def _resampling_factor(lattice, model, contrast=None) -> float:
    """The magnification denoise applies to bring this lattice to the model's sampling."""
    from stem_ae.denoising import _sampling_factor

    return float(_sampling_factor(lattice, model, contrast))


def _record(
    source: Path, model, step: int, lattice, pixel_yx, args, contrast=None, correction=None
) -> dict:
    from stem_ae.io import processing_record

    contrast = contrast or getattr(args, "contrast", None)
    return processing_record(
        "stem_ae.denoise",
        model=model,
        step=step,
        contrast=contrast,
        residual=getattr(args, "residual", None),
        lattice=lattice,
        resampling_factor=_resampling_factor(lattice, model, contrast),
        pixel_size=pixel_yx,
        source=source,
        correction=correction,
        command="stem-ae denoise",
    )


def _correction_text(report: dict) -> str:
    """The correction's decision in a few words: why, and how much of the data went back."""
    weight, width = report["data_weight"], report["bandwidth_px"]
    action = (
        "network's output kept" if weight <= 0 else f"data back x{weight:.2g} at {width:.2g} px"
    )
    return f"{report['reason'] or 'residual ' + str(report['residual'])}: {action}"


def _write_outputs(plan, image, denoised, spread, meta, pixel_yx, record, args) -> None:
    """Every output of one input: denoised, uncertainty, preview and, for a series, frames."""
    from stem_ae.io import write_image

    common = {
        "pixel_size": pixel_yx,
        "frame_interval": meta.frame_interval,
        "original_metadata": meta.original_metadata,
        "overwrite": args.overwrite,
    }
    write_image(plan["denoised"], denoised, record=record, **common)
    if spread is not None:
        spread_record = {**record, "output": "uncertainty"}
        write_image(plan["uncertainty"], spread, record=spread_record, **common)
    if "preview" not in plan:
        return
    from stem_ae.plotting import plot_contact_sheet, plot_preview, save_figure

    frames = f" — frame 0 of {meta.n_frames}" if meta.n_frames > 1 else ""
    figure = plot_preview(
        image if image.ndim == 2 else image[0],
        denoised if denoised.ndim == 2 else denoised[0],
        None if spread is None else (spread if spread.ndim == 2 else spread[0]),
        pixel_size=pixel_yx,
        title=f"{meta.path.name}{frames}",
    )
    save_figure(figure, plan["preview"].with_suffix(""), formats=("png",))
    if "frames" in plan:
        sheet = plot_contact_sheet(
            denoised,
            pixel_size=pixel_yx,
            frame_interval=meta.frame_interval,
            title=f"{meta.path.name}, denoised",
        )
        save_figure(sheet, plan["frames"].with_suffix(""), formats=("png",))


def _pixel_text(pixel_size: float | None, source: str | None) -> str:
    if pixel_size is None:
        return "uncalibrated"
    return f"{pixel_size:.4g} Å/px ({source})"


def _cmd_denoise(args: argparse.Namespace) -> int:
    step = _check_step(args.step)
    pixel_size = _check_pixel_size(args.pixel_size)
    lattice_constant = args.lattice_constant
    if lattice_constant is not None and not (
        math.isfinite(lattice_constant) and 0 <= lattice_constant <= 100
    ):
        raise UsageError(
            f"--lattice-constant {lattice_constant} must be a lattice parameter in Å — e.g. "
            f"3.905, or 0 to switch the calibration check off."
        )
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers} must be >= 1 — e.g. --workers 2.")
    if args.model is None:
        from stem_ae.denoising import default_model

        model_name = default_model("bright")
    else:
        model_name = _check_model(args.model)
    inputs = [_check_input(Path(name)) for name in args.inputs]
    for i, first in enumerate(inputs):
        for second in inputs[i + 1 :]:
            if _same_file(first, second):
                raise UsageError(f"input {second} is given twice — name each file once.")

    output = Path(args.output)
    folder_mode = len(inputs) > 1 or output.is_dir() or args.output.endswith(("/", os.sep))
    if folder_mode:
        if not output.exists():
            raise UsageError(
                f"output folder {output} does not exist — create it first (mkdir -p {output})."
            )
        if not output.is_dir():
            raise UsageError(
                f"output {output} must be a folder for {len(inputs)} inputs — give a folder."
            )
        targets = [output / f"{source.stem}_denoised.tif" for source in inputs]
    else:
        targets = [output]
    plans = [_side_outputs(target, args.uncertainty, args.preview, args.mask) for target in targets]
    _check_outputs([p for plan in plans for p in plan.values()], inputs, args.overwrite)
    _check_hyperspy([p for plan in plans for p in plan.values()])

    # Read and check every input before any work: a bad file fails the run up front. Pixels
    # are kept for the denoising pass up to a memory budget, and read again beyond it.
    images = []
    kept_bytes = 0
    for source in inputs:
        image, meta = _read(source)
        _check_pixels(image, source)
        lattice = _measure_lattice(
            image, source, pixel_size if pixel_size is not None else meta.pixel_size
        )
        kept_bytes += image.nbytes
        images.append((image if kept_bytes <= _KEEP_BYTES else None, meta, lattice))
    if args.preview:  # a series also gets every frame on a contact sheet
        sheets = []
        for (_, meta, _), plan in zip(images, plans, strict=True):
            if meta.n_frames > 1:
                preview = plan["preview"]
                plan["frames"] = preview.with_name(f"{preview.stem}_frames.png")
                sheets.append(plan["frames"])
        _check_outputs(sheets, inputs, args.overwrite)
    notes = []
    for plan in plans:
        suffix = plan["denoised"].suffix.lower()
        if suffix == ".png":
            notes.append(
                f"{plan['denoised']} will be an 8-bit display stretch: the measured intensities "
                f"and the calibration are lost — write .tif or .hspy for analysis (--preview "
                f"adds a PNG beside it)."
            )
    options = {}
    if lattice_constant is not None:
        options["lattice_constant"] = lattice_constant or None

    from tqdm.auto import tqdm

    from stem_ae.denoising import default_step, denoise

    try:
        with filtered_native_stderr():
            from stem_ae.model import load_model

            models = {model_name: load_model(model_name)}
    except (ValueError, TypeError, OSError) as error:
        raise UsageError(
            _with_fix(
                f"--model {model_name}: {_one_line(error)}",
                "give 'general', 'general_conv', 'paper' or a folder written by 'stem-ae train'.",
            )
        ) from None

    for note in notes:
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    loaded = time.perf_counter()
    bar = tqdm(
        total=100 * len(inputs),
        disable=None,
        dynamic_ncols=True,
        leave=False,
        bar_format="{desc}{percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]",
    )
    with bar:
        for index, ((image, meta, lattice), plan) in enumerate(zip(images, plans, strict=True)):
            started = time.perf_counter()
            count = f" ({index + 1}/{len(inputs)})" if len(inputs) > 1 else ""
            bar.set_description(f"{meta.path.name}{count}")
            images[index] = None  # let each input go once it is done
            if image is None:
                image, _ = _read(meta.path)

            def progress(done: int, total: int, _index: int = index) -> None:
                bar.n = int(100 * (_index + min(done, total) / max(total, 1)))
                bar.refresh()

            pixel_yx = (pixel_size, pixel_size) if pixel_size is not None else meta.pixel_size_yx
            used = None if pixel_yx is None else pixel_yx[1]
            source_text = "--pixel-size" if pixel_size is not None else meta.pixel_size_source
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if pixel_size is not None and _non_square(meta.pixel_size_yx):
                    warnings.warn(
                        f"the file's pixels are not square (y {meta.pixel_size_yx[0]:.4g}, x "
                        f"{meta.pixel_size_yx[1]:.4g} Å/px); --pixel-size {pixel_size:g} sets "
                        f"both axes.",
                        UserWarning,
                        stacklevel=1,
                    )
                contrast = args.contrast
                if contrast == "auto":
                    import numpy as np

                    from stem_ae.denoising import detect_contrast

                    first = image if image.ndim == 2 else image[0]
                    contrast = (
                        "bright"
                        if lattice.radial_only
                        else detect_contrast(np.asarray(first, np.float64), lattice)
                    )
                used_name = model_name
                if args.model is None:  # as denoise(model=None): by the contrast
                    from stem_ae.denoising import default_model
                    from stem_ae.model import load_model

                    used_name = default_model(contrast)
                    if used_name not in models:  # a shipped model: loaded on first need
                        with filtered_native_stderr():
                            models[used_name] = load_model(used_name)
                model = models[used_name]
                factor = _resampling_factor(lattice, model, contrast)
                bar.set_description(f"{meta.path.name}{count}, resampled x{factor:.2g}")
                used_step = default_step(model) if step is None else step
                result = denoise(
                    image,
                    pixel_size=used,
                    step=used_step,
                    model=model,
                    return_uncertainty=args.uncertainty,
                    return_mask=args.mask,
                    workers=args.workers,
                    progress=progress,
                    contrast=contrast,
                    residual=args.residual,
                    return_report=True,
                    **options,
                )
                denoised, report = result[0], result[-1]
                spread = result[1] if args.uncertainty else None
                record = _record(
                    meta.path, model, used_step, lattice, pixel_yx, args, contrast, report
                )
                _write_outputs(plan, image, denoised, spread, meta, pixel_yx, record, args)
                if args.mask:
                    from stem_ae.io import write_image

                    write_image(
                        plan["mask"],
                        result[-2],
                        record={**record, "output": "crystal map (1 lattice, 0 not)"},
                        pixel_size=pixel_yx,
                        frame_interval=meta.frame_interval,
                        overwrite=args.overwrite,
                    )
            bar.n = 100 * (index + 1)
            bar.refresh()
            elapsed = time.perf_counter() - started
            extra = ", ".join(str(p) for key, p in plan.items() if key != "denoised")
            bar.write(
                f"{meta.path} -> {plan['denoised']}: {_format_shape(meta.shape)} {meta.dtype}, "
                f"pixel size {_pixel_yx_text(pixel_yx, source_text)}, lattice "
                f"{_spacings_text(lattice, used)}, {contrast} columns, model {used_name}, step "
                f"{used_step}, resampled x{record['resampling_factor']:.3g}, "
                f"{_correction_text(report)}, {elapsed:.1f} s" + (f" (+ {extra})" if extra else "")
            )
            for warning in caught:
                text = _one_line(warning.message)
                if "lattice_constant" in text:
                    text += " (stem-ae: --lattice-constant Å, or 0 to switch this check off.)"
                bar.write(f"{PROG}: warning: {meta.path}: {text}", sys.stderr)
    now = time.perf_counter()
    print(
        f"{len(inputs)} file{'s' if len(inputs) > 1 else ''} denoised in {now - loaded:.1f} s; "
        f"{now - _STARTED:.1f} s in all, with {loaded - _STARTED:.1f} s for start-up, checks "
        f"and loading the model."
    )
    return 0


def _count_tags(tree) -> int:
    if isinstance(tree, dict):
        return sum(_count_tags(value) for value in tree.values())
    return 1


def _reflection_order(lattice) -> str:
    """Miller-like indices ``(h k)`` of the strongest reflection on the measured basis, so that
    a spacing that is neither plane spacing (a higher order) reads as what it is."""
    import numpy as np

    angle = math.radians(lattice.dominant_angle)
    g = np.array([-math.sin(angle), math.cos(angle)]) / lattice.dominant_spacing  # (y, x), 1/px
    try:
        hk = np.linalg.solve(np.asarray(lattice.reciprocal, float).T, g)
    except np.linalg.LinAlgError:
        return ""
    if not np.allclose(hk, np.round(hk), atol=0.1):
        return ""
    h, k = (int(v) for v in np.round(hk))
    if h < 0 or (h == 0 and k < 0):
        h, k = -h, -k
    return f"({h} {k})"


def _cmd_info(args: argparse.Namespace) -> int:
    import numpy as np

    path = _check_input(Path(args.file))
    image, meta = _read(path)
    data = np.asarray(image, np.float64)
    finite = np.isfinite(data)
    lines = [
        ("file", f"{meta.path} ({meta.file_format}{', ' + meta.dataset if meta.dataset else ''})"),
        ("shape", _format_shape(meta.shape) + (" (frames, H, W)" if len(meta.shape) == 3 else "")),
        ("dtype", str(meta.dtype)),
    ]
    if finite.any():
        values = data[finite]
        lines.append(
            ("values", f"{values.min():.6g} … {values.max():.6g}, mean {values.mean():.6g}")
        )
    if not finite.all():
        lines.append(("non-finite", f"{data.size - int(finite.sum())} NaN/Inf pixel(s)"))
    pixel = _pixel_text(meta.pixel_size, meta.pixel_size_source)
    if (
        meta.pixel_size_yx
        and abs(meta.pixel_size_yx[0] - meta.pixel_size_yx[1]) > 1e-3 * (meta.pixel_size_yx[1])
    ):
        pixel += f"; y {meta.pixel_size_yx[0]:.4g} Å/px"
    lines.append(("pixel size", pixel))
    if meta.frame_interval is not None:
        lines.append(("frame time", f"{meta.frame_interval:.6g} s"))
    if meta.original_metadata:
        groups = ", ".join(sorted(meta.original_metadata))
        lines.append(("tags", f"{groups} ({_count_tags(meta.original_metadata)} values)"))
    if meta.processing:
        record = meta.processing
        model = record.get("model") or {}
        source = (record.get("input") or {}).get("name")
        lines.append(
            (
                "processed",
                f"{record.get('function')} ({record.get('software')} {record.get('version')}), "
                f"model {model.get('name')}, step {(record.get('parameters') or {}).get('step')}"
                + (f", from {source}" if source else "")
                + f", {record.get('date')}",
            )
        )
        correction = record.get("correction")
        if isinstance(correction, dict) and "data_weight" in correction:
            measured = ", ".join(
                f"{label} {correction[key]:.3g}"
                for key, label in (("whiteness", "noise whiteness"), ("excess_error", "excess"))
                if isinstance(correction.get(key), (int, float))
            )
            text = _correction_text(correction) + (f" ({measured})" if measured else "")
            lines.append(("correction", text))
    if min(meta.shape[-2:]) < WINDOW or not finite.all() or data.min() == data.max():
        lines.append(("lattice", "not measured (image too small, constant or not finite)"))
    else:
        try:
            lattice = _measure_lattice(image, path, meta.pixel_size)
        except UsageError:
            lines.append(("lattice", "none found (vacuum, amorphous or too noisy?)"))
        else:
            scale = meta.pixel_size
            spacings = ", ".join(
                f"{s:.2f} px" + (f" ({s * scale:.3g} Å)" if scale else "") for s in lattice.spacings
            )
            angles = ", ".join(f"{a:.1f}°" for a in lattice.angles)
            lines.append(("lattice", f"plane spacings {spacings}; directions {angles}"))
            order = _reflection_order(lattice)
            lines.append(
                (
                    "strongest",
                    f"reflection{' ' + order if order else ''}: "
                    f"{lattice.dominant_spacing:.2f} px at {lattice.dominant_angle:.1f}°"
                    + (f" = {lattice.dominant_spacing * scale:.3g} Å" if scale else ""),
                )
            )
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from stem_ae.io import WRITE_EXTENSIONS

    height, width = args.shape
    if min(height, width) < WINDOW or max(height, width) > 16384:
        raise UsageError(
            f"--shape {height} {width} must be between {WINDOW} and 16384 px per side — "
            f"e.g. --shape 512 512."
        )
    if not math.isfinite(args.dose) or args.dose <= 0:
        raise UsageError(
            f"--dose {args.dose} must be a positive number of counts per px — e.g. --dose 16."
        )
    _check_pixel_size(args.pixel_size)
    output = Path(args.output)
    if output.suffix.lower() not in WRITE_EXTENSIONS:
        raise UsageError(
            f"output {output} has an unsupported type {output.suffix or '(none)'!r} — end it in "
            f"one of {' '.join(WRITE_EXTENSIONS)}."
        )
    suffix = ".tif" if output.suffix.lower() == ".png" else output.suffix
    clean_path = output.with_name(f"{output.stem}_clean{suffix}")
    csv_path = output.with_name(f"{output.stem}_columns.csv")
    for path in (output, clean_path, csv_path):
        if path.exists() and not args.overwrite:
            raise UsageError(f"output {path} exists — pass --overwrite to replace it.")
    _check_folder_writable(output.parent)

    import numpy as np

    from stem_ae.io import _atomic_write, write_image
    from stem_ae.simulate import simulate_scene

    started = time.perf_counter()
    try:
        defects = [d.strip() for d in (args.defect or "").split(",") if d.strip()]
        defects = [d for d in defects if d != "none"]
        scene = simulate_scene(
            (height, width),
            lattice=args.lattice,
            defect=defects or None,
            pixel_size=args.pixel_size,
            dose=args.dose,
            strain=args.strain,
            angle=args.angle,
            rng=args.seed,
        )
    except (ValueError, TypeError) as error:
        raise UsageError(
            _with_fix(_one_line(error), "see 'stem-ae simulate --help' for valid values.")
        ) from None
    write_image(output, scene.noisy, pixel_size=scene.pixel_size, overwrite=args.overwrite)
    write_image(clean_path, scene.clean, pixel_size=scene.pixel_size, overwrite=args.overwrite)
    table = np.column_stack([scene.columns, np.asarray(scene.column_types)])

    def write_csv(target: Path) -> None:
        np.savetxt(
            target,
            table,
            fmt=["%.4f", "%.4f", "%d"],
            delimiter=",",
            header="y_px,x_px,type",
            comments="",
        )

    _atomic_write(csv_path, write_csv, overwrite=args.overwrite)
    print(
        f"{output}: {height}×{width} px scene, {len(table)} columns, dose {args.dose:g} counts/px, "
        f"{scene.pixel_size:g} Å/px, seed {args.seed} (+ {clean_path}, {csv_path}), "
        f"{time.perf_counter() - started:.1f} s"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    checks = [("--samples", args.samples, 1), ("--epochs", args.epochs, 1)]
    if args.pool_size is not None:
        checks.append(("--pool-size", args.pool_size, 1))
    for flag, value, minimum in checks:
        if value < minimum:
            raise UsageError(f"{flag} {value} must be >= {minimum} — e.g. {flag} 4.")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UsageError(f"--out {out} exists — pass --overwrite or choose a new folder.")
    _check_folder_writable(out.resolve().parent)
    config_path = Path(args.config) if args.config else None
    if config_path is not None and not config_path.is_file():
        raise UsageError(f"--config {config_path} is not a file — give a JSON file of AEConfig.")

    with filtered_native_stderr():
        import keras

        from stem_ae.model import AEConfig, save_model
        from stem_ae.training import train

    try:
        config = AEConfig.from_json(config_path) if config_path else None
    except (ValueError, TypeError, KeyError) as error:
        raise UsageError(
            _with_fix(
                f"--config {config_path}: {_one_line(error)}",
                'give a JSON object of AEConfig fields, e.g. {"encoder": [512, 256]}.',
            )
        ) from None

    class _EpochPrinter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            values = ", ".join(f"{key} {value:.4g}" for key, value in logs.items())
            print(f"epoch {epoch + 1}/{args.epochs}: {values}", flush=True)

    started = time.perf_counter()
    model, _ = train(
        config,
        distribution=args.distribution,
        n_samples=args.samples,
        epochs=args.epochs,
        seed=args.seed,
        pool_size=args.pool_size,
        callbacks=[_EpochPrinter()],
        verbose=0,  # the epoch printer says it once
    )
    if out.exists() and args.overwrite:
        import shutil

        shutil.rmtree(out) if out.is_dir() else out.unlink()
    save_model(model, out)
    print(f"{out}: trained in {time.perf_counter() - started:.0f} s")
    return 0


# --------------------------------------------------------------------------------------------
# entry point


def _one_line(message) -> str:
    return " ".join(str(message).split())


def _with_fix(message: str, fix: str) -> str:
    """``message — fix`` unless the message already says what to do."""
    return message if " — " in message else f"{message.rstrip('.')} — {fix}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``stem-ae`` with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    Bad input (a :class:`UsageError`, or a ``ValueError``/``TypeError``/``OSError`` from the
    library) prints one line ``stem-ae: error: …`` on stderr and returns 2.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    command = "<command>"
    try:
        args = parser.parse_args(argv)
        command = args.command
        if args.command is None:
            parser.print_help()
            return 0
        return args.handler(args)
    except UsageError as error:
        message = _one_line(error)
    except ImportError as error:
        if (error.name or "").split(".")[0] not in ("tensorflow", "keras"):
            raise
        message = (
            f"TensorFlow, the backend of Keras, is not installed ({_one_line(error)}) — "
            f"pip install 'stem_ae[cpu]' (or 'stem_ae[gpu]'), or install tensorflow yourself."
        )
    except (ValueError, TypeError, OSError) as error:
        message = _with_fix(
            _one_line(error), f"check the input and options ('{PROG} {command} --help')."
        )
    except MemoryError:
        print(
            f"{PROG}: error: out of memory — denoise fewer or smaller files at a time, or use "
            f"--workers 1.",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
