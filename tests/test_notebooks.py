"""The committed notebooks are clean sources that papermill can parameterise.

These checks are static and fast. Executing the chain is ``make test``'s job: it prepares the
notebooks at smoke size (``notebooks/params/ci.yaml``) into ``build/ci/`` and runs them with nbval.
"""

from __future__ import annotations

import ast
import json
import tokenize
from io import StringIO
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
CI_PARAMS = NOTEBOOK_DIR / "params" / "ci.yaml"
#: A notebook cell with more logic than this belongs in the package (STYLE.md).
MAX_CELL_LINES = 15

pytestmark = pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks yet")


def _read(path: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    return notebook


def _code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _parameters_index(notebook) -> int:
    tagged = [
        i
        for i, cell in enumerate(notebook.cells)
        if "parameters" in cell.get("metadata", {}).get("tags", [])
    ]
    if len(tagged) != 1:
        pytest.fail(f"expected exactly one cell tagged 'parameters', found {len(tagged)}")
    return tagged[0]


def _literal_parameters(source: str) -> dict[str, object]:
    """Parse a parameters cell: only ``name: type = literal  # comment`` lines are allowed."""
    tree = ast.parse(source)
    values: dict[str, object] = {}
    for node in tree.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            pytest.fail(f"parameters cell line {node.lineno}: not an annotated assignment")
        if node.value is None:
            pytest.fail(f"parameters cell line {node.lineno}: {node.target.id} has no value")
        try:
            values[node.target.id] = ast.literal_eval(node.value)
        except ValueError:
            pytest.fail(f"parameters cell: {node.target.id} is not a literal")
    commented = {
        token.start[0]
        for token in tokenize.generate_tokens(StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    for node in tree.body:
        if node.lineno not in commented:
            pytest.fail(f"parameter {node.target.id} has no comment (give the paper's value)")
    return values


def _logic_lines(source: str) -> int:
    return sum(1 for line in source.splitlines() if line.strip() and not line.strip()[0] == "#")


def test_every_figure_of_the_chain_has_a_notebook():
    names = [path.name[:2] for path in NOTEBOOKS]
    assert names == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_a_stripped_v4_python3_source(path):
    notebook = _read(path)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    assert notebook.metadata["kernelspec"]["language"] == "python"
    for number, cell in enumerate(_code_cells(notebook)):
        assert cell.outputs == [], f"code cell {number} has outputs: run nbstripout"
        assert cell.execution_count is None, f"code cell {number} has an execution count"
    first = notebook.cells[0]
    assert first.cell_type == "markdown"
    text = first.source.lower()
    assert "reads" in text and "writes" in text, "first cell must say what it reads and writes"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_follows_the_imports_and_holds_literals_only(path):
    notebook = _read(path)
    index = _parameters_index(notebook)
    cell = notebook.cells[index]
    assert cell.cell_type == "code"
    previous = notebook.cells[index - 1]
    assert previous.cell_type == "code", "the parameters cell must come right after the imports"
    imports = ast.parse(previous.source).body
    assert imports and all(isinstance(n, ast.Import | ast.ImportFrom) for n in imports)
    assert all(
        not isinstance(n, ast.Import | ast.ImportFrom)
        for c in notebook.cells[index + 1 :]
        if c.cell_type == "code"
        for n in ast.parse(c.source).body
    ), "all imports belong in the imports cell"
    values = _literal_parameters(cell.source)
    assert values["repo_dir"] == ".."
    assert values["out_dir"] == "../figures"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_lists_every_parameter_with_its_type(path):
    notebook = _read(path)
    source = notebook.cells[_parameters_index(notebook)].source
    expected = {
        node.target.id: ast.unparse(node.annotation)
        for node in ast.parse(source).body
        if isinstance(node, ast.AnnAssign)
    }
    listed = papermill.inspect_notebook(str(path))
    assert {name: p["inferred_type_name"] for name, p in listed.items()} == expected
    assert all(p["help"] for p in listed.values()), "papermill shows the comment as help"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cells_are_short_calls_into_the_package(path):
    notebook = _read(path)
    index = _parameters_index(notebook)
    for number, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and number != index:
            lines = _logic_lines(cell.source)
            assert lines <= MAX_CELL_LINES, f"cell {number} has {lines} lines: move it to stem_ae/"


def test_ci_parameters_name_only_real_parameters():
    overrides = yaml.safe_load(CI_PARAMS.read_text())
    known = set()
    for path in NOTEBOOKS:
        known |= set(papermill.inspect_notebook(str(path)))
    unknown = set(overrides) - known
    assert not unknown, f"ci.yaml sets parameters no notebook has: {sorted(unknown)}"
    assert "repo_dir" not in overrides and "out_dir" not in overrides  # the Makefile injects these


@pytest.mark.parametrize("name", ["paper", "general"])
def test_training_notebook_defaults_reproduce_the_shipped_recipe(name):
    config_path = REPO / "stem_ae" / "models" / name / "config.json"
    if not config_path.exists():
        pytest.skip(f"model {name!r} not shipped yet")
    training = json.loads(config_path.read_text())["training"]
    notebook = _read(NOTEBOOK_DIR / "02_train.ipynb")
    values = _literal_parameters(notebook.cells[_parameters_index(notebook)].source)
    assert name in values["recipes"] and values["train"] is True
    # 0 means "the recipe's own value"; the recipe must then be what the model was trained with
    from stem_ae.training import RECIPES

    pairs = [("n_samples",) * 2, ("epochs", f"{name}_epochs"), ("batch_size",) * 2]
    if "pool_size" in training:
        pairs.append(("pool_size",) * 2)
    for key, parameter in pairs:
        value = values[parameter] or RECIPES[name][key]
        assert value == training[key], f"02_train's {parameter} differs from {name}"


def test_nbstripout_is_configured():
    hooks = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    ids = [hook["id"] for repo in hooks["repos"] for hook in repo["hooks"]]
    assert "nbstripout" in ids


@pytest.mark.slow
def test_training_notebook_without_training_scores_the_shipped_models(tmp_path):
    # `make figures TRAIN=0`: no model is trained or written, the recorded loss is drawn
    model_dir = tmp_path / "models"
    papermill.execute_notebook(
        str(NOTEBOOK_DIR / "02_train.ipynb"),
        str(tmp_path / "02_train.ipynb"),
        parameters={
            "repo_dir": str(REPO),
            "out_dir": str(tmp_path),
            "model_dir": str(model_dir),
            "train": False,
            "n_test": 64,
        },
        kernel_name="python3",
        cwd=str(NOTEBOOK_DIR),
        progress_bar=False,
    )
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert not model_dir.exists()
    executed = nbformat.read(tmp_path / "02_train.ipynb", as_version=4)
    printed = "".join(
        output.get("text", "") for cell in executed.cells for output in cell.get("outputs", [])
    )
    assert "general: shipped, trained in 600 s" in printed
