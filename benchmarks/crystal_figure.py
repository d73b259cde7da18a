"""Figure of the crystal map for the README: a scene that is not one perfect crystal.

Usage::

    python benchmarks/crystal_figure.py [--dose 4] [--out figures/readme_crystal_map.png]

Simulates ``simulate_mixed_scene`` (SrTiO3, a second grain rotated by 30°, amorphous blobs of
the same size and density, and vacuum; 0.2 Å/px) and draws: the noisy image with the true region
boundaries, ``denoise``'s crystal map (``return_mask=True``), the default output, and the network
alone (``residual="none"``), which draws swirls on the amorphous region. The PSNR of each output
on the crystalline and the other pixels is in the panel titles. Written to a temporary file and
moved into place.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "agg")

REPO = Path(__file__).resolve().parents[1]


def region_psnr(truth, image, where) -> float:
    import numpy as np

    span = float(truth.max() - truth.min())
    return float(10 * np.log10(span**2 / np.mean((truth[where] - image[where]) ** 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dose", type=float, default=4.0)
    parser.add_argument("--out", default=str(REPO / "figures" / "readme_crystal_map.png"))
    args = parser.parse_args()

    import matplotlib.pyplot as plt

    from stem_ae import denoise
    from stem_ae.simulate import simulate_mixed_scene

    scene = simulate_mixed_scene((384, 384), pixel_size=0.2, dose=args.dose, rng=2)
    crystal = scene.metadata["regions"]["crystal_mask"]
    labels = scene.metadata["regions"]["labels"]
    denoised, mask = denoise(scene.noisy, pixel_size=0.2, return_mask=True)
    alone = denoise(scene.noisy, pixel_size=0.2, residual="none")

    def scores(image) -> str:
        inside = region_psnr(scene.clean, image, crystal)
        outside = region_psnr(scene.clean, image, ~crystal)
        return f"PSNR crystal {inside:.1f} dB, rest {outside:.1f} dB"

    figure, axes = plt.subplots(1, 4, figsize=(16, 4.6), constrained_layout=True)
    low, high = float(scene.clean.min()), float(scene.clean.max())
    axes[0].imshow(scene.noisy, cmap="gray")
    axes[0].contour(labels, levels=sorted(set(labels.ravel().tolist())), colors="y", linewidths=0.6)
    axes[0].set_title(f"noisy, {args.dose:g} counts/px ({scores(scene.noisy)})", fontsize=9)
    shown = axes[1].imshow(mask, cmap="viridis", vmin=0, vmax=1)
    axes[1].set_title("crystal map (1 lattice, 0 not)", fontsize=9)
    figure.colorbar(shown, ax=axes[1], shrink=0.8)
    axes[2].imshow(denoised, cmap="gray", vmin=low, vmax=high)
    axes[2].set_title(f"denoise default ({scores(denoised)})", fontsize=9)
    axes[3].imshow(alone, cmap="gray", vmin=low, vmax=high)
    axes[3].set_title(f"network alone ({scores(alone)})", fontsize=9)
    for axis in axes:
        axis.set_axis_off()
    figure.suptitle(
        "Simulated: SrTiO3 grain, a second grain at 30°, amorphous blobs and vacuum (yellow: "
        "true boundaries)",
        fontsize=10,
    )
    from stem_ae.plotting import save_figure

    out = Path(args.out)
    save_figure(figure, out.with_suffix(""), ("png",), dpi=100)  # atomic, same bytes per run
    plt.close(figure)
    print(f"{out}: {scores(denoised)} (network alone: {scores(alone)})")


if __name__ == "__main__":
    main()
