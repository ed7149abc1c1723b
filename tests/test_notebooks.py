"""The Colab notebooks: clean and valid, their project imports resolve, and the quick start
runs top to bottom (the tiny size, with parameters injected the way papermill does)."""

import ast
import importlib
import os
import re

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(ROOT, "colab")
NOTEBOOKS = ("quickstart.ipynb", "tpu_training.ipynb")
PROJECT_PACKAGES = ("qsnet_jax", "data_pipelines", "workflow", "experiments", "configs")
MAGIC = re.compile(r"^(\s*)[!%]")


def read(name):
    return nbformat.read(os.path.join(COLAB, name), as_version=4)


def parameters_index(nb):
    tagged = [i for i, cell in enumerate(nb.cells)
              if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def python_source(cell_source):
    """A code cell as plain Python: IPython magics and shell lines become `pass`."""
    return "\n".join(MAGIC.sub(r"\1pass  # ", line) for line in cell_source.splitlines())


def code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_valid_and_clean(name):
    nb = read(name)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.cells[parameters_index(nb)].cell_type == "code"
    for i, cell in enumerate(code_cells(nb)):
        assert not cell.outputs, f"{name}: code cell {i} has stored outputs (clear them)"
        assert cell.execution_count is None, f"{name}: code cell {i} has an execution count"
    assert any(cell.cell_type == "markdown" for cell in nb.cells)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_code_cells_compile(name):
    for i, cell in enumerate(code_cells(read(name))):
        compile(python_source(cell.source), f"{name}[code cell {i}]", "exec")


def _project_imports(tree):
    """(alias, module, attribute or None) of every project import in a syntax tree."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PROJECT_PACKAGES:
                    bound = alias.asname or alias.name.split(".")[0]
                    found.append((bound, alias.asname and alias.name or bound, None))
        elif isinstance(node, ast.ImportFrom) and node.module and \
                node.module.split(".")[0] in PROJECT_PACKAGES:
            for alias in node.names:
                found.append((alias.asname or alias.name, node.module, alias.name))
    return found


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_project_references_resolve(name):
    """Every project module and name a notebook imports exists, and so does every attribute
    it reads from them (`job.run`, `mesh_lib.make_mesh`, ...)."""
    nb = read(name)
    tree = ast.parse("\n".join(python_source(c.source) for c in code_cells(nb)))
    bound = {}
    for alias, module_name, attribute in _project_imports(tree):
        module = importlib.import_module(module_name)
        if attribute is None:
            bound[alias] = module
            continue
        if not hasattr(module, attribute):  # `from package import submodule`
            importlib.import_module(f"{module_name}.{attribute}")
        assert hasattr(module, attribute), f"{name}: {module_name} has no {attribute!r}"
        bound[alias] = getattr(module, attribute)
    assert bound, f"{name} imports nothing from the project"
    # notebooks use the library and the workflow, never the command-line entry points,
    # and only public names
    for alias, module_name, attribute in _project_imports(tree):
        assert not module_name.startswith("experiments"), f"{name} imports {module_name}"
        assert not (attribute or alias).startswith("_"), f"{name} imports {attribute}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.value.id in bound:
            assert hasattr(bound[node.value.id], node.attr), \
                f"{name}: {node.value.id}.{node.attr} does not exist"
            assert not node.attr.startswith("_"), f"{name}: {node.value.id}.{node.attr}"
    for size in ("quick", "tiny", "paper"):
        importlib.import_module("configs.default").get_config(size)


def inject_parameters(nb, **parameters):
    """papermill's convention: a cell tagged 'injected-parameters' after the 'parameters'
    cell overrides its values."""
    source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(parameters_index(nb) + 1, cell)
    return nb


@pytest.mark.slow
def test_quickstart_runs_top_to_bottom(tmp_path, tiny_cohort):
    from nbclient import NotebookClient

    # the notebook looks for CACHE_DIR/phantom/tiny-seed0: the session's tiny cohort
    (tmp_path / "cache").mkdir()
    os.symlink(os.path.dirname(tiny_cohort), tmp_path / "cache" / "phantom")
    nb = inject_parameters(read("quickstart.ipynb"), SIZE="tiny", STEPS=4,
                           WORKDIR=str(tmp_path / "run"), CACHE_DIR=str(tmp_path / "cache"))
    # a CellExecutionError (with the failing cell's traceback) fails the test
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": COLAB}}).execute()
    nbformat.write(nb, tmp_path / "quickstart.executed.ipynb")  # kept by pytest to look at

    images = [output for cell in code_cells(nb) for output in cell.outputs
              if "image/png" in output.get("data", {})]
    assert len(images) >= 3  # the phantom subject, the synthesis, the evaluation figure
    eval_dir = tmp_path / "run" / "finetune" / "eval" / "gbm_test"
    assert (eval_dir / "report.md").is_file()
    assert sorted(os.listdir(tmp_path / "run" / "synthesized"))
