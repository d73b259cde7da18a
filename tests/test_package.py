"""The package as a whole: lazy public API, import cost, shipped data."""

from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import stem_ae

REPO = Path(__file__).resolve().parents[1]

CHECKSUMS = {
    "Tecnai_Osiris_SrTiO3.tif": "c09f3104e6bb494833dc10db5f9fcacd77a731f4c75c964c6b03734e24d34f27",
    "REBCO-ROI_raw.dm3": "1cb2b4e7fc6f115ef4e5ed9009634f0260493bcc2260289c6f11a1aba7db82c7",
}


@pytest.mark.parametrize("name", sorted(stem_ae._LAZY))
def test_every_public_name_resolves_to_its_module(name):
    module = importlib.import_module(f"stem_ae.{stem_ae._LAZY[name]}")
    assert getattr(stem_ae, name) is getattr(module, name)


@pytest.mark.parametrize("name", ["train", "reconstruct", "denoise"])
def test_public_functions_are_functions_whatever_was_imported_first(name):
    for module in ("training", "windows", "denoising", "lattice"):
        importlib.import_module(f"stem_ae.{module}")
    assert callable(getattr(stem_ae, name))
    assert not isinstance(getattr(stem_ae, name), type(stem_ae))


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        stem_ae.no_such_thing  # noqa: B018


def test_import_does_not_load_tensorflow():
    code = (
        "import sys, stem_ae; "
        "print(any(m.split('.')[0] in {'tensorflow', 'keras'} for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(("filename", "sha256"), sorted(CHECKSUMS.items()))
def test_shipped_real_data_is_intact_and_licensed(filename, sha256):
    path = REPO / "data" / filename
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    assert (REPO / "data" / "LICENSE-r_em_workflows.txt").read_text().startswith("MIT License")


@pytest.mark.parametrize("module", ["stem_ae.model", "stem_ae.training"])
def test_first_import_of_tensorflow_prints_no_log_lines(module):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    out = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert out.stderr == ""


def test_packaging_declares_what_is_imported_and_claims_what_is_tested():
    from importlib import metadata

    from packaging.requirements import Requirement

    meta = metadata.metadata("stem_ae")
    requirements = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    plain = {r.name: r for r in requirements if r.marker is None}
    assert "h5py" in plain  # imported by stem_ae.io
    assert not plain["numpy"].specifier.contains("1.26")  # ncempy >= 1.16 needs NumPy 2
    assert "tensorflow" not in plain and "tensorflow-cpu" not in plain  # [cpu] or [gpu]
    assert "jupyterlab" not in plain
    extras = set(meta.get_all("Provides-Extra"))
    assert {"cpu", "gpu", "hyperspy", "napari", "notebooks", "dev"} <= extras
    in_notebooks = [
        r.name for r in requirements if r.marker and r.marker.evaluate({"extra": "notebooks"})
    ]
    assert "jupyterlab" in in_notebooks
    assert meta["Requires-Python"] == ">=3.11"
    assert "Programming Language :: Python :: 3.11" in meta.get_all("Classifier")
