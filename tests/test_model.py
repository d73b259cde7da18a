"""Tests of stem_ae.model: the config, the Sequential builder, saving, loading, shipped models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from stem_ae.model import (
    AEConfig,
    available_models,
    build_autoencoder,
    get_config,
    load_model,
    predict_windows,
    save_model,
    standardize,
    unstandardize,
)
from stem_ae.training import RECIPES

SHIPPED = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            name not in available_models(),
            reason=f"shipped model {name!r} not trained yet (run benchmarks/train_shipped.py)",
        ),
    )
    for name in ("paper", "general", "general_conv")
]
TINY = AEConfig(window=12, encoder=(32, 16), code=8, name="tiny")


def test_builder_is_a_sequential_of_allowed_layers_with_configured_widths():
    config = AEConfig(encoder=(300, 200, 100), code=40, activation="elu")
    model = build_autoencoder(config)
    assert isinstance(model, keras.Sequential)
    kinds = {type(layer) for layer in model.layers}
    assert kinds <= {keras.layers.Flatten, keras.layers.Dense, keras.layers.Reshape}
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [300, 200, 100, 40, 100, 200, 300, 784]
    assert all(layer.activation.__name__ == "elu" for layer in dense[:-1])
    assert dense[-1].activation.__name__ == "linear"
    assert isinstance(model.layers[0], keras.layers.Flatten)
    assert isinstance(model.layers[-1], keras.layers.Reshape)
    assert model.input_shape == (None, 28, 28)
    assert model.output_shape == (None, 28, 28)
    assert model.count_params() == config.n_parameters
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert model.loss == "mse"
    assert get_config(model) is config


def test_conv_builder_halves_the_resolution_per_level_and_mirrors_it_back():
    config = AEConfig(window=16, encoder=(8, 12), code=20, activation="gelu", architecture="conv")
    model = build_autoencoder(config)
    assert isinstance(model, keras.Sequential)
    kinds = {type(layer) for layer in model.layers}
    assert kinds == {keras.layers.Conv2D, keras.layers.Conv2DTranspose, keras.layers.Reshape}
    convs = [layer for layer in model.layers if "Conv" in type(layer).__name__]
    # feature-map side after each convolution: 16 → 8 → 4 (code) → 8 → 16
    sides = [layer.output.shape[1] for layer in convs]
    assert sides == [16, 8, 8, 4, 4, 8, 8, 16, 16, 16]
    assert [layer.filters for layer in convs] == [8, 12, 12, 20, 20, 12, 12, 8, 8, 1]
    assert all(layer.kernel_size == (3, 3) for layer in convs)
    assert convs[-1].activation.__name__ == "linear"
    assert model.output_shape == (None, 16, 16)
    assert model.count_params() == config.n_parameters
    assert config.period == 4 and AEConfig().period == 1


def test_antialias_puts_a_fixed_binomial_blur_around_every_stride():
    config = AEConfig(window=16, encoder=(8, 12), code=20, architecture="conv", antialias=True)
    model = build_autoencoder(config)
    names = [layer.name for layer in model.layers]
    blurs = [layer for layer in model.layers if isinstance(layer, keras.layers.DepthwiseConv2D)]
    # before each stride-2 convolution, after each stride-2 transposed one
    assert [layer.name for layer in blurs] == [
        "encoder_1_blur",
        "code_blur",
        "decoder_0_blur",
        "decoder_1_blur",
    ]
    assert names.index("encoder_1_blur") + 1 == names.index("encoder_1_down")
    assert names.index("decoder_0_up") + 1 == names.index("decoder_0_blur")
    for layer in blurs:
        assert not layer.trainable and layer.strides == (1, 1)
        taps = layer.get_weights()[0]
        assert taps.shape[:2] == (3, 3)
        np.testing.assert_allclose(taps[:, :, 0, 0], np.outer([1, 2, 1], [1, 2, 1]) / 16)
    assert model.count_params() == config.n_parameters
    n_trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    plain = AEConfig(window=16, encoder=(8, 12), code=20, architecture="conv")
    assert n_trainable == plain.n_parameters  # the blurs add fixed taps only
    assert config.period == 4
    # the field is left out of dense and plain conv configs (their config.json is unchanged)
    assert "antialias" not in AEConfig().to_dict()
    assert AEConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="antialias=True needs architecture='conv'"):
        AEConfig(antialias=True)
    with pytest.raises(ValueError, match="antialias must be True or False"):
        AEConfig(architecture="conv", encoder=(8, 16), antialias="yes")


def test_dense_code_puts_a_global_code_between_the_convolutions():
    config = AEConfig(window=48, encoder=(4, 6), code=3, architecture="conv", dense_code=10)
    keras.utils.set_random_seed(0)  # before building: unseeded weights can leave the corner dead
    model = build_autoencoder(config)
    names = [layer.name for layer in model.layers]
    start = names.index("code") + 1
    assert names[start : start + 4] == ["code_flatten", "code_dense", "code_expand", "code_reshape"]
    assert model.get_layer("code_dense").units == 10
    assert model.get_layer("code_expand").units == 12 * 12 * 3  # back to the code's 12 × 12 × 3
    assert model.output_shape == (None, 48, 48)
    assert model.count_params() == config.n_parameters
    # every output pixel now depends on every input pixel: a change in one corner moves the other
    windows = np.random.default_rng(0).normal(size=(8, 48, 48)).astype(np.float32)
    moved = windows.copy()
    moved[:, :4, :4] += 5.0
    difference = np.abs(model(moved).numpy() - model(windows).numpy())
    assert difference[:, -4:, -4:].max() > 0
    plain = build_autoencoder(AEConfig(window=48, encoder=(4, 6), code=3, architecture="conv"))
    local = np.abs(plain(moved).numpy() - plain(windows).numpy())
    assert local[:, -4:, -4:].max() == 0  # the plain conv AE's reach ends before the far corner
    # no longer shift-equivariant, so no stride period; the field round-trips and is optional
    assert config.period == 1
    assert AEConfig.from_dict(config.to_dict()) == config
    assert "dense_code" not in AEConfig(architecture="conv", encoder=(8, 16)).to_dict()
    assert "loss" not in AEConfig().to_dict()  # the MSE default leaves config.json as it was
    with pytest.raises(ValueError, match="dense_code needs architecture='conv'"):
        AEConfig(dense_code=16)
    with pytest.raises(ValueError, match="dense_code must be an integer >= 0"):
        AEConfig(architecture="conv", encoder=(8, 16), dense_code=-1)


def test_conv_config_needs_a_window_divisible_by_its_period():
    with pytest.raises(ValueError, match=r"divisible by 2\*\*len\(encoder\) = 8.*window=24"):
        AEConfig(window=28, encoder=(8, 16, 16), code=16, architecture="conv")
    with pytest.raises(ValueError, match="unknown architecture"):
        AEConfig(architecture="resnet")
    # the dense bottleneck rules do not apply: a conv code may be wide and widths may grow
    assert AEConfig(encoder=(16, 32), code=64, architecture="conv").code == 64


def test_default_config_is_the_documented_architecture():
    config = AEConfig()
    assert (config.window, config.encoder, config.code) == (28, (512, 256, 128), 64)
    assert config.normalization == "window"
    assert config.output_activation == "linear"
    assert config.n_parameters == build_autoencoder(config).count_params()


def test_config_round_trips_through_dict_and_json(tmp_path):
    training = {"name": "paper", "spacing_range": [7.5, 9.5], "n_samples": 100, "seed": 3}
    config = AEConfig(
        encoder=[256, 64], code=16, activation="tanh", training=training, loss="counts"
    )
    assert config.encoder == (256, 64)
    assert AEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    config.to_json(tmp_path / "config.json")
    again = AEConfig.from_json(tmp_path / "config.json")
    assert again == config
    assert again.spacing_range == (7.5, 9.5)
    # a config.json written before the loss was a field reads as the plain MSE
    older = {key: value for key, value in config.to_dict().items() if key != "loss"}
    assert AEConfig.from_dict(older).loss == "mse"


def test_spacing_range_falls_back_to_the_paper_distribution():
    from stem_ae.simulate import PAPER

    assert AEConfig().spacing_range == tuple(float(value) for value in PAPER.spacing_range)


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({"code": 784}, "smaller than the input size"),
        ({"window": 8, "encoder": (128,), "code": 64}, "smaller than the input size"),
        ({"code": 200}, "wider than the last encoder layer"),
        ({"encoder": (128, 256)}, "must not increase"),
        ({"encoder": ()}, "at least one"),
        ({"encoder": (512, 0)}, "encoder width"),
        ({"window": 6}, "window must be an integer >= 8"),
        ({"window": 28.5}, "window must be an integer"),
        ({"activation": "relux"}, "unknown activation"),
        ({"output_activation": "softmax"}, "unknown output_activation"),
        ({"normalization": "global"}, "unknown normalization"),
        ({"loss": "poisson"}, "unknown loss"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"name": "has space"}, "name must be"),
        ({"training": {"epochs": -1}}, "training['epochs']"),
        ({"training": {"n_samples": 0}}, "training['n_samples']"),
        ({"training": {"seed": object()}}, "training['seed']"),
    ],
)
def test_bad_configs_raise_value_error_naming_the_fix(arguments, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        AEConfig(**arguments)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown AEConfig fields"):
        AEConfig.from_dict({"window": 28, "depth": 3})


CONV_TINY = AEConfig(window=12, encoder=(4, 8), code=8, name="tiny", architecture="conv")
AA_TINY = AEConfig(
    window=12, encoder=(4, 8), code=8, name="tiny", architecture="conv", antialias=True
)


@pytest.mark.parametrize("config", [TINY, CONV_TINY, AA_TINY], ids=["dense", "conv", "antialias"])
def test_save_then_load_gives_identical_predictions_and_config(tmp_path, config):
    keras.utils.set_random_seed(0)
    model = build_autoencoder(config)
    windows = np.random.default_rng(0).normal(size=(5, 12, 12)).astype(np.float32)
    folder = save_model(model, tmp_path / "tiny")
    assert sorted(path.name for path in folder.iterdir()) == ["config.json", "model.keras"]
    for path in (folder, folder / "model.keras"):
        loaded = load_model(path)
        assert get_config(loaded) == config
        np.testing.assert_array_equal(loaded.predict(windows, verbose=0), model(windows).numpy())
    model.layers[1].kernel.assign(np.zeros(model.layers[1].kernel.shape))
    save_model(model, folder)  # overwrite in place
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tiny"]  # no temporary left
    np.testing.assert_array_equal(
        load_model(folder).predict(windows, verbose=0), model(windows).numpy()
    )


def test_save_model_refuses_a_file_name(tmp_path):
    with pytest.raises(ValueError, match="writes a folder"):
        save_model(build_autoencoder(TINY), tmp_path / "model.keras")


def test_load_model_rejects_unknown_names_and_non_models(tmp_path):
    with pytest.raises(ValueError, match="shipped models") as info:
        load_model("no_such_model")
    for name in available_models():
        assert name in str(info.value)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.keras").write_text("not a model")
    with pytest.raises(ValueError, match="not a Keras model"):
        load_model(tmp_path / "bad")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"holds no model\.keras"):
        load_model(tmp_path / "empty")


def test_get_config_of_a_foreign_model_uses_window_normalization():
    foreign = keras.Sequential(
        [keras.Input(shape=(16, 16)), keras.layers.Flatten(), keras.layers.Reshape((16, 16))]
    )
    config = get_config(foreign)
    assert config.window == 16
    assert config.normalization == "window"


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float64, (3, 6, 6), elements=st.floats(-1e4, 1e4)),
    st.floats(1e-3, 1e3),
    st.floats(-4e4, 4e4),
)
def test_standardize_round_trips_and_ignores_offset_and_gain(windows, gain, offset):
    z, mu, scale = standardize(windows)
    assert z.dtype == np.float32 and mu.shape == scale.shape == (3, 1, 1)
    assert np.all(scale > 0)
    span = np.abs(windows).max() + 1
    np.testing.assert_allclose(unstandardize(z, mu, scale), windows, atol=1e-5 * span + 1e-3)
    z2, _, _ = standardize(windows * gain + offset)

    # offset and gain drop out wherever the epsilon and float32 rounding are negligible, i.e.
    # where a window's std is well above 1e-3 of its |mean| + 1, before and after the change
    def clear(values):
        spread = values.std(axis=(1, 2))
        return spread > 1e-3 * (np.abs(values.mean(axis=(1, 2))) + 1 + np.ptp(values, (1, 2)))

    significant = clear(windows) & clear(windows * gain + offset)
    np.testing.assert_allclose(z2[significant], z[significant], atol=2e-2)


def test_predict_windows_applies_the_window_convention():
    keras.utils.set_random_seed(1)
    model = build_autoencoder(TINY)
    windows = np.random.default_rng(2).normal(size=(4, 12, 12)).astype(np.float32)
    shifted = predict_windows(model, windows * 7 + 33_000)
    np.testing.assert_allclose(shifted, predict_windows(model, windows) * 7 + 33_000, atol=0.05)
    with pytest.raises(ValueError, match=r"shape \(N, 12, 12\)"):
        predict_windows(model, windows[:, :10])


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_models_load_by_name_with_their_training_record(name):
    model = load_model(name)
    assert load_model(name) is model  # cached
    config = get_config(model)
    assert config.name == name
    assert config.normalization == "window"
    assert model.input_shape == (None, config.window, config.window)
    for key in ("spacing_range", "n_samples", "epochs", "seed", "batch_size"):
        assert key in config.training
    from stem_ae.training import resolve_distribution

    recipe = RECIPES[name]["distribution"]
    assert config.training["name"] == resolve_distribution(recipe).name
    low, high = config.spacing_range
    assert 0 < low <= high
    folder = resources.files("stem_ae") / "models" / name
    assert (folder / "model.keras").is_file() and (folder / "config.json").is_file()
    assert (Path(str(folder)) / "model.keras").stat().st_size < 20e6


@pytest.mark.skipif("paper" not in available_models(), reason="paper model not trained yet")
def test_shipped_model_loads_from_the_installed_package_outside_the_source_tree(tmp_path):
    code = (
        "import pathlib, stem_ae\n"
        "from stem_ae.model import get_config\n"
        "model = stem_ae.load_model('paper')\n"
        "print(get_config(model).name, pathlib.Path(stem_ae.__file__).parent)\n"
    )
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    environment.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    name, package = result.stdout.split()[-2:]
    assert name == "paper"
    assert Path(package).resolve() != tmp_path.resolve()
