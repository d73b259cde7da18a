"""Whole-process cost of ``stem-ae denoise`` on the real 512² TIFF, import time included.

What a user waits for when typing ``stem-ae denoise data/Tecnai_Osiris_SrTiO3.tif -o out.tif``:
interpreter start, imports (TensorFlow/Keras for the model), reading the file, measuring the
lattice, loading the model, denoising and writing the calibrated TIFF. Each command runs as a
fresh child process ``--repeats`` times; the table gives the median and minimum wall time and the
child's CPU time (user + system, all threads) and peak resident memory (``ru_utime``,
``ru_stime`` and ``ru_maxrss`` from :func:`os.wait4`, that child alone). On a shared machine the
wall time grows with the load; the CPU time is the steadier figure, and the load average is
recorded with the table.

Baselines, same machine, same moment:

- ``python -c "import tensorflow"``: the import cost alone;
- ``stem-ae --version``: the command's own start-up (no TensorFlow);
- ``stem-ae info``: reading the file and measuring its lattice (no TensorFlow);
- Gaussian filter via the same I/O: ``read_image`` → ``scipy.ndimage.gaussian_filter`` (σ = 2 px)
  → ``write_image``, in a child process: the cheapest "denoiser" a user could script.

Run ``python benchmarks/cli.py`` (``--model paper``, ``--step 4``, ``--repeats 5``). Writes
``benchmarks/results/cli.md`` and ``cli.json``. The real image is by Lukas Grünewald (MIT licence,
``data/LICENSE-r_em_workflows.txt``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
RESULTS = REPOSITORY / "benchmarks" / "results"
IMAGE = REPOSITORY / "data" / "Tecnai_Osiris_SrTiO3.tif"
SCRIPT = Path(sys.executable).with_name("stem-ae")
STEM_AE = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "stem_ae.cli"]

GAUSSIAN = (
    "import sys, scipy.ndimage as ndi; from stem_ae.io import read_image, write_image; "
    "image, meta = read_image(sys.argv[1]); "
    "write_image(sys.argv[2], ndi.gaussian_filter(image.astype('float32'), 2.0), "
    "pixel_size=meta.pixel_size, overwrite=True)"
)


def run_child(command: list[str]) -> tuple[float, float, float]:
    """Run ``command``; return wall time (s), CPU time (user + system, s) and peak RSS (MiB) of
    that child alone. Fails loudly."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    started = time.perf_counter()
    child = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True
    )
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    stderr = child.stderr.read()
    child.stderr.close()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}): {stderr}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # Linux: KiB


def measure(name: str, command: list[str], repeats: int) -> dict:
    walls, cpus, rss = [], [], []
    for _ in range(repeats):
        wall, cpu, peak = run_child(command)
        walls.append(wall)
        cpus.append(cpu)
        rss.append(peak)
    return {
        "name": name,
        "command": " ".join(command),
        "median_s": statistics.median(walls),
        "min_s": min(walls),
        "median_cpu_s": statistics.median(cpus),
        "peak_rss_mib": max(rss),
        "walls_s": walls,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="general", help="'general', 'paper' or a path")
    parser.add_argument("--step", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for cli.md/cli.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out.tif"
        gauss_out = Path(folder) / "gauss.tif"
        denoise = [*STEM_AE, "denoise", str(IMAGE), "-o", str(out), "--overwrite"]
        denoise += ["--model", args.model, "--step", str(args.step)]
        cases = [
            ("python -c 'import tensorflow'", [sys.executable, "-c", "import tensorflow"]),
            ("stem-ae --version", [*STEM_AE, "--version"]),
            ("stem-ae info (read + lattice)", [*STEM_AE, "info", str(IMAGE)]),
            (
                "Gaussian filter, same I/O",
                [sys.executable, "-c", GAUSSIAN, str(IMAGE), str(gauss_out)],
            ),
            (f"stem-ae denoise (--model {args.model}, --step {args.step})", denoise),
        ]
        load_before = os.getloadavg()[0]
        rows = [measure(name, command, args.repeats) for name, command in cases]
        load_after = os.getloadavg()[0]

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    lines = [
        f"Whole-process time of `stem-ae` on `data/Tecnai_Osiris_SrTiO3.tif` (512×512 uint16), "
        f"{args.repeats} runs each, fresh process every run; {machine}; Python "
        f"{platform.python_version()}; 1-min load average {load_before:.1f} before, "
        f"{load_after:.1f} after (wall times grow with the load, CPU times much less).",
        "",
        "| command | median wall (s) | min wall (s) | median CPU (s) | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['name']} | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['median_cpu_s']:.2f} "
        f"| {r['peak_rss_mib']:.0f} |"
        for r in rows
    ]
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cli.md").write_text(table)
    (args.out / "cli.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table)
    return rows


if __name__ == "__main__":
    main()
