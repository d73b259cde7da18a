"""Before/after/uncertainty figure of the shared SrTiO3 HAADF image for the README.

Usage::

    python benchmarks/readme_figure.py [--model general] [--out figures/readme_denoise_srtio3.png]

Reads ``data/Tecnai_Osiris_SrTiO3.tif`` (raw counts on a ~33,000 offset; data credit and licence
in ``data/README.md``), denoises it with ``stem_ae.denoise(..., return_uncertainty=True)`` and
draws raw | denoised | spread of the window predictions with plain matplotlib. The PNG is written
to a temporary file and moved into place.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "agg")

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="general")
    parser.add_argument("--out", default=str(REPO / "figures" / "readme_denoise_srtio3.png"))
    args = parser.parse_args()

    import matplotlib.pyplot as plt
    import numpy as np
    import tifffile

    from stem_ae import denoise, estimate_lattice

    image = tifffile.imread(REPO / "data" / "Tecnai_Osiris_SrTiO3.tif")
    lattice = estimate_lattice(image)
    start = time.perf_counter()
    denoised, spread = denoise(image, model=args.model, return_uncertainty=True)
    seconds = time.perf_counter() - start

    low, high = np.percentile(image, [0.5, 99.5])
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.3), constrained_layout=True)
    panels = [
        (image, "raw HAADF (counts)", (low, high), "gray"),
        (denoised, f"denoised ({args.model} model, {seconds:.1f} s)", (low, high), "gray"),
        (spread, "spread of window predictions (counts)", None, "magma"),
    ]
    for axis, (data, title, limits, cmap) in zip(axes, panels, strict=True):
        shown = axis.imshow(data, cmap=cmap, vmin=limits and limits[0], vmax=limits and limits[1])
        axis.set_title(title, fontsize=10)
        axis.set_axis_off()
        figure.colorbar(shown, ax=axis, shrink=0.8)
    figure.suptitle(
        f"SrTiO3 [100], Tecnai Osiris (L. Grünewald, MIT licence); measured lattice "
        f"{lattice.spacings[0]:.1f} × {lattice.spacings[1]:.1f} px",
        fontsize=10,
    )
    from stem_ae.plotting import save_figure

    out = Path(args.out)
    save_figure(figure, out.with_suffix(""), ("png",), dpi=110)  # atomic, same bytes per run
    plt.close(figure)


if __name__ == "__main__":
    main()
