"""The layout of the package: imports flow one way, one definition of each shared constant."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stem_ae"

#: Rooms from the lowest up (docs/design.md): a module may import only modules of a lower rank.
RANKS = {
    "_version": 0,
    "_common": 0,
    "_filters": 0,
    "simulate": 1,
    "lattice": 1,
    "_residual": 1,
    "_resample": 1,
    "_crystal": 1,
    "_hyperspy": 1,
    "model": 2,
    "_tiling": 2,
    "training": 3,
    "_runner": 3,
    "io": 3,
    "windows": 4,
    "denoising": 5,
    "analysis": 5,
    "plotting": 6,
    "cli": 7,
}


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stem_ae"):
            parts = node.module.split(".")
            if len(parts) > 1:
                names.add(parts[1])
            else:  # from stem_ae import x, y
                names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "stem_ae" and len(parts) > 1:
                    names.add(parts[1])
    return names


@pytest.mark.parametrize("module", sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem in RANKS))
def test_imports_flow_one_way(module):
    imported = _imported_modules(PACKAGE / f"{module}.py") & set(RANKS)
    higher = {name for name in imported if RANKS[name] >= RANKS[module] and name != module}
    assert not higher, f"stem_ae.{module} imports rooms at or above its own: {sorted(higher)}"


def test_every_module_has_a_rank():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert modules <= set(RANKS), sorted(modules - set(RANKS))


@pytest.mark.parametrize("name", ["WINDOW", "PAPER_PERIOD_PX"])
def test_shared_constants_are_defined_once(name):
    definitions = [
        path.name
        for path in PACKAGE.glob("*.py")
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    ]
    assert definitions == ["_common.py"]


def test_no_module_shares_a_name_with_a_public_function():
    import stem_ae

    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert not modules & set(stem_ae._LAZY)
