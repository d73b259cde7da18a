"""stem_ae.plotting: figures hold what they claim, scale bars measure right, saving is atomic."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from matplotlib.artist import Artist
from matplotlib.figure import Figure

from stem_ae import plotting


def _images(fig: Figure) -> list:
    return [image for ax in fig.axes for image in ax.get_images()]


def _colorbar_labels(fig: Figure) -> list[str]:
    return [child.get_ylabel() for ax in fig.axes for child in ax.child_axes]


def _scale_bars(fig: Figure) -> list:
    return [p for ax in fig.axes for p in ax.patches if p.get_gid() == "scale_bar"]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_plot_triplets_draws_three_rows_with_shared_output_truth_scale(rng):
    truth = rng.random((4, 28, 28))
    output = truth + 0.05 * rng.normal(size=truth.shape)
    noisy = truth + rng.normal(size=truth.shape)
    fig = plotting.plot_triplets(noisy, output, truth, errors=[0.01, 0.02, 0.03, 0.04])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 12
    images = _images(fig)
    assert len(images) == 12
    # Row-major (3, 4) grid: image 4 + j is window j's output, image 8 + j its truth.
    for j in range(4):
        np.testing.assert_allclose(images[4 + j].get_array(), output[j])
        np.testing.assert_allclose(images[8 + j].get_array(), truth[j])
        assert images[4 + j].get_clim() == images[8 + j].get_clim()
        assert images[8 + j].get_clim() == (truth[j].min(), truth[j].max())
    assert [fig.axes[4 + j].get_title() for j in range(4)] == [
        "error 0.010",
        "error 0.020",
        "error 0.030",
        "error 0.040",
    ]
    assert [fig.axes[i * 4].get_ylabel() for i in range(3)] == ["noisy input", "AE output", "truth"]


def test_plot_triplets_draws_into_given_axes_and_checks_shapes(rng):
    truth = rng.random((2, 28, 28))
    host = plotting.new_figure(3, 3)
    axes = host.subplots(3, 2)
    assert plotting.plot_triplets(truth, truth, truth, ax=axes) is host
    with pytest.raises(ValueError, match="same shape"):
        plotting.plot_triplets(truth, truth[:1], truth)
    with pytest.raises(ValueError, match="one value per window"):
        plotting.plot_triplets(truth, truth, truth, errors=[0.1])
    with pytest.raises(ValueError, match="3 x 2 axes"):
        plotting.plot_triplets(truth, truth, truth, ax=host.subplots(3, 3))


def test_plot_triplets_difference_row_draws_the_normalised_error(rng):
    truth = 2.0 * rng.random((3, 28, 28))
    output = truth + 0.1
    fig = plotting.plot_triplets(truth, output, truth, difference=True)
    images = _images(fig)
    assert len(images) == 12
    for j in range(3):
        expected = np.abs(output[j] - truth[j]) / truth[j].max()
        np.testing.assert_allclose(images[9 + j].get_array(), expected)
    assert images[9].get_clim() == images[11].get_clim()  # one scale for the whole error row
    assert "error" in fig.axes[-1].get_ylabel()  # the colour bar


def test_plot_windows_rows_and_shared_column_scale(rng):
    clean = rng.random((4, 28, 28))
    noisy = clean + rng.normal(size=clean.shape)
    fig = plotting.plot_windows({"clean": clean, "noisy": noisy}, limits="column")
    images = _images(fig)
    assert [fig.axes[i * 4].get_ylabel() for i in range(2)] == ["clean", "noisy"]
    for j in range(4):
        assert images[j].get_clim() == images[4 + j].get_clim()
    with pytest.raises(ValueError, match="same shape"):
        plotting.plot_windows({"clean": clean, "noisy": noisy[:2]})


@pytest.mark.parametrize(
    ("width_px", "pixel_size"), [(512, 0.153), (512, 0.2), (64, 0.1), (1000, 0.3), (28, 1.0)]
)
def test_scale_bar_length_is_round_and_fits(width_px, pixel_size):
    length = plotting.scale_bar_length(width_px, pixel_size)
    width_nm = width_px * pixel_size / 10
    assert length <= 0.25 * width_nm + 1e-12
    assert length > 0.25 * width_nm / 2.5  # the next round length up would not fit
    mantissa = length / 10 ** np.floor(np.log10(length))
    assert round(mantissa, 6) in (1.0, 2.0, 5.0)


def test_plot_reconstruction_panels_colorbars_and_scale_bar(rng):
    clean = 100 * rng.random((256, 512))
    raw = rng.poisson(clean).astype(float)
    fig = plotting.plot_reconstruction(
        raw,
        {"step 2": clean, "step 3": clean + 1},
        truth=clean,
        uncertainty=np.full(clean.shape, 2.0),
        pixel_size=0.2,
        units="counts",
    )
    titles = [ax.get_title() for ax in fig.axes if ax.get_images()]
    assert titles == ["raw", "step 2", "step 3", "truth", "uncertainty"]
    # raw, the shared scale of the reconstructions and truth, the uncertainty: three bars
    assert _colorbar_labels(fig) == ["counts", "counts", "spread (counts)"]
    assert [len(ax.child_axes) for ax in fig.axes] == [1, 0, 0, 1, 1]
    images = _images(fig)
    assert images[1].get_clim() == images[3].get_clim()  # reconstructions share the truth's scale
    assert images[-1].get_cmap().name == "magma"
    bars = _scale_bars(fig)
    assert len(bars) == 5
    # 512 px at 0.2 Å/px is 10.24 nm: a quarter is 2.56 nm, so a 2 nm bar, 100 px long.
    for bar in bars:
        assert bar.get_label() == "2 nm"
        assert bar.get_width() == pytest.approx(10 * 2 / 0.2)
        assert bar.get_x() >= 0 and bar.get_x() + bar.get_width() <= 512


def test_plot_reconstruction_without_pixel_size_has_no_scale_bar_and_checks_shapes(rng):
    image = rng.random((64, 64))
    fig = plotting.plot_reconstruction(image, image)
    assert _scale_bars(fig) == []
    assert [ax.get_title() for ax in fig.axes if ax.get_images()] == ["raw", "denoised"]
    with pytest.raises(ValueError, match="shape"):
        plotting.plot_reconstruction(image, image[:32])
    with pytest.raises(ValueError, match="2-D"):
        plotting.plot_reconstruction(image[None], image)


def test_composed_figure_from_subfigures_returns_the_root(rng):
    image = rng.random((64, 64))
    fig = plotting.new_figure(8, 5)
    top, bottom = fig.subfigures(2, 1)
    assert plotting.plot_reconstruction(image, image, fig=top) is fig
    columns = rng.random((20, 2)) * 64
    assert plotting.plot_lattice_map(columns, rng.random(20), image=image, fig=bottom) is fig
    assert len(_images(fig)) == 3


def test_plot_lattice_map_colours_columns_by_value(rng):
    columns = rng.random((50, 2)) * 100
    values = 3.9 + 0.1 * rng.normal(size=50)
    values[3] = np.nan
    fig = plotting.plot_lattice_map(
        columns, values, image=rng.random((100, 100)), pixel_size=0.15, label="a (Å)"
    )
    scatter = fig.axes[0].collections[0]
    finite = np.isfinite(values)
    np.testing.assert_allclose(scatter.get_array(), values[finite])
    np.testing.assert_allclose(scatter.get_offsets(), columns[finite][:, ::-1])
    assert _colorbar_labels(fig) == ["a (Å)"]
    low, high = scatter.get_clim()
    assert low < np.nanmedian(values) < high
    assert len(_scale_bars(fig)) == 1
    with pytest.raises(ValueError, match="one entry per column"):
        plotting.plot_lattice_map(columns, values[:10])
    with pytest.raises(ValueError, match="image="):
        plotting.plot_lattice_map(columns, values, pixel_size=0.2)


def test_plot_elongation_profile_draws_measured_and_truth():
    distance = np.linspace(-30, 30, 13)
    truth = 5 * np.exp(-(distance**2) / 100)
    measured = truth + 0.3
    fig = plotting.plot_elongation_profile(
        distance, {"raw": measured + 1, "reconstructed": measured}, truth
    )
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["reconstructed"].get_ydata(), measured)
    np.testing.assert_allclose(lines["truth"].get_ydata(), truth)
    assert "elongation" in ax.get_ylabel()
    own = np.array([-10.0, 0.0, 10.0])
    fig = plotting.plot_elongation_profile(distance, {"raw": (own, [1.0, 2.0, 3.0])}, truth)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    np.testing.assert_allclose(lines["raw"].get_xdata(), own)
    with pytest.raises(ValueError, match="shape"):
        plotting.plot_elongation_profile(distance, measured[:3], truth)


def test_plot_benchmark_averages_repeats_on_log_axes_with_crlb():
    table = {
        "method": ["noisy"] * 4 + ["bm3d"] * 4,
        "dose": [1, 1, 16, 16] * 2,
        "position_error_pm": [40, 60, 10, 12, 20, 30, 5, 7],
        "crlb_pm": [8, 8, 2, 2] * 2,
    }
    fig = plotting.plot_benchmark(table)
    ax = fig.axes[0]
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"noisy", "bm3d", "CRLB"}
    np.testing.assert_allclose(lines["noisy"].get_ydata(), [50, 11])
    np.testing.assert_allclose(lines["bm3d"].get_ydata(), [25, 6])
    np.testing.assert_allclose(lines["CRLB"].get_ydata(), [8, 2])
    assert lines["CRLB"].get_color() == "#000000"
    with pytest.raises(ValueError, match="no column 'psnr'"):
        plotting.plot_benchmark(table, y="psnr")
    with pytest.raises(ValueError, match="positive"):
        plotting.plot_benchmark(table | {"dose": [0, 1, 16, 16] * 2})


def test_plot_benchmark_gives_every_method_its_own_colour():
    from matplotlib.colors import to_hex

    # the fixed colours for the usual methods, spare ones (never a fixed one) for the rest: the
    # matplotlib cycle drew general_conv in paper's blue and a fourteenth method in BM3D's red
    names = ["noisy", "bm3d", "paper", "general"] + [f"variant_{k}" for k in range(9)]
    table = {
        "method": names,
        "dose": [1.0] * len(names),
        "position_error_pm": np.arange(1.0, len(names) + 1),
    }
    figure = plotting.plot_benchmark(table, crlb=None)
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    colors = [to_hex(lines[name].get_color()) for name in names]
    assert len(set(colors)) == len(names)
    assert lines["bm3d"].get_color() == plotting.METHOD_COLORS["bm3d"]


def test_plot_benchmark_reads_a_structured_array(tmp_path):
    path = tmp_path / "quality.csv"
    path.write_text("method,dose,position_error_pm\nnoisy,1,30\nnoisy,4,15\npaper,1,12\n")
    table = np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding="utf-8")
    fig = plotting.plot_benchmark(table, crlb=None, labels={"paper": "stem_ae paper"})
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["noisy", "stem_ae paper"]
    assert fig.axes[0].get_legend() is not None
    assert plotting.plot_benchmark(table, crlb=None, legend=False).axes[0].get_legend() is None


def test_plot_loss_and_noise_models():
    class History:  # what keras.callbacks.History looks like
        def __init__(self):
            self.history = {"loss": [1.0, 0.4], "val_loss": [1.1, 0.5], "mae": [0.9, 0.5]}

    fig = plotting.plot_loss(History())
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert [line.get_label() for line in ax.get_lines()] == ["loss", "val_loss"]
    np.testing.assert_allclose(ax.get_lines()[1].get_xydata(), [[1, 1.1], [2, 0.5]])
    fig.draw_without_rendering()
    labels = [t.get_text() for t in ax.get_yticklabels(which="both") if t.get_text()]
    assert labels and all("e" not in label and "×" not in label for label in labels), labels
    assert all(float(tick).is_integer() for tick in ax.get_xticks())  # whole epochs
    with pytest.raises(ValueError, match="no loss"):
        plotting.plot_loss({"loss": []})
    with pytest.raises(TypeError, match="History"):
        plotting.plot_loss([1.0, 0.5])

    clean = np.zeros((28, 28))
    noisy = {f"model {k}": clean + k for k in range(7)}
    fig = plotting.plot_noise_models(clean, noisy, columns=4)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["clean", *noisy]  # 8 panels on a 2 x 4 grid, none left empty


class _Explodes(Artist):
    """An artist that fails when drawn, to make savefig fail half-way through."""

    def draw(self, renderer):
        raise RuntimeError("boom")


def test_save_figure_writes_every_format_and_is_repeatable(tmp_path):
    fig = plotting.plot_loss({"loss": [1.0, 0.5, 0.2]})
    paths = plotting.save_figure(fig, tmp_path / "sub" / "loss")
    assert [p.name for p in paths] == ["loss.png", "loss.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    first = [p.read_bytes() for p in paths]
    plotting.save_figure(fig, tmp_path / "sub" / "loss")
    assert [p.read_bytes() for p in paths] == first  # no timestamps in the files
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["loss.pdf", "loss.png"]


def test_save_figure_failure_leaves_no_partial_file_and_keeps_the_old_one(tmp_path):
    good = plotting.plot_loss({"loss": [1.0, 0.5]})
    plotting.save_figure(good, tmp_path / "fig", formats=("png",))
    before = (tmp_path / "fig.png").read_bytes()
    bad = plotting.plot_loss({"loss": [1.0, 0.5]})
    bad.axes[0].add_artist(_Explodes())
    with pytest.raises(RuntimeError, match="boom"):
        plotting.save_figure(bad, tmp_path / "fig")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]
    assert (tmp_path / "fig.png").read_bytes() == before
    with pytest.raises(ValueError, match="extension"):
        plotting.save_figure(good, tmp_path / "fig.png")
    with pytest.raises(TypeError, match="Figure"):
        plotting.save_figure(good.axes[0], tmp_path / "fig")


def test_plotting_imports_neither_keras_nor_the_simulator():
    code = (
        "import sys, stem_ae.plotting; "
        "print(sorted(m for m in ('keras', 'tensorflow', 'stem_ae.simulate') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# the --preview figures


def _bars_on(ax):
    return [patch for patch in ax.patches if patch.get_gid() == "scale_bar"]


def test_preview_shows_raw_denoised_and_uncertainty_with_a_scale_bar():
    rng = np.random.default_rng(0)
    clean = rng.random((40, 60))
    fig = plotting.plot_preview(
        clean + rng.normal(size=clean.shape), clean, 0.1 * clean, pixel_size=0.2
    )
    images = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in images[:3]] == ["raw", "denoised", "uncertainty"]
    assert len(_bars_on(images[0])) == 1 and len(_bars_on(images[1])) == 1


def test_preview_draws_non_square_pixels_with_their_aspect():
    image = np.random.default_rng(0).random((40, 60))
    fig = plotting.plot_preview(image, image, pixel_size=(0.8112, 0.5408))
    assert fig.axes[0].get_aspect() == pytest.approx(1.5)
    bar = _bars_on(fig.axes[0])[0]
    assert bar.get_width() == pytest.approx(10.0 * float(bar.get_label().split()[0]) / 0.5408)


def test_preview_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        plotting.plot_preview(np.zeros((10, 10)), np.zeros((10, 12)))


def test_contact_sheet_shows_every_frame_or_says_how_many():
    stack = np.random.default_rng(0).random((50, 16, 16))
    few = plotting.plot_contact_sheet(stack[:7], frame_interval=0.2)
    titles = [ax.get_title() for ax in few.axes if ax.get_images()]
    assert len(titles) == 7 and titles[-1] == "6 (1.2 s)"
    many = plotting.plot_contact_sheet(stack, max_frames=9, title="scan")
    assert len([ax for ax in many.axes if ax.get_images()]) == 9
    assert "9 of 50 frames" in many._suptitle.get_text()
