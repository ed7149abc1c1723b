"""The layering of the four packages (docs/design.md, "Layout"):

    qsnet_jax  <-  data_pipelines  <-  workflow  <-  experiments

Every module imports, no import goes against the arrows, `data_pipelines` takes only
`qsnet_jax.physics` and `qsnet_jax.io` from the library, and module-level imports form no
cycle. The imports are read from the source (ast), so a deferred import inside a function
counts for the direction just as a top-level one.
"""

import ast
import importlib
import os

import pytest
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("qsnet_jax", "data_pipelines", "workflow", "experiments")
PROJECT = PACKAGES + ("configs",)
# what each package may import from the project (itself always)
ALLOWED = {
    "qsnet_jax": (),
    "data_pipelines": ("qsnet_jax", "qsnet_jax.physics", "qsnet_jax.io"),
    "workflow": ("qsnet_jax", "data_pipelines"),
    "experiments": ("qsnet_jax", "data_pipelines", "workflow", "configs"),
    "configs": (),
}


def module_files(packages=PROJECT):
    """{module name: path} of every .py file of the packages."""
    found = {}
    for package in packages:
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in sorted(names):
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = path
    return found


MODULES = module_files()


def _resolve(module: str, name: str | None) -> str:
    """`from module import name` names a submodule when module.name is one."""
    if name and f"{module}.{name}" in MODULES:
        return f"{module}.{name}"
    return module


def project_imports(path: str, *, top_level_only: bool):
    """The project modules a file imports: every import, or those run at import time (not
    inside a function)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    skip = set()
    if top_level_only:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                skip.update(id(child) for child in ast.walk(node) if child is not node)
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(_resolve(node.module, alias.name) for alias in node.names)
    return {name for name in found if name.split(".")[0] in PROJECT}


def find_cycle(graph):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target, stack)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle
    return None


def test_imports_follow_the_layers():
    wrong = []
    for module, path in MODULES.items():
        package = module.split(".")[0]
        allowed = ALLOWED[package] + (package,)
        for target in project_imports(path, top_level_only=False):
            if not any(target == a or target.startswith(a + ".") for a in allowed):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_data_pipelines_take_only_physics_and_io_from_the_library():
    for module, path in MODULES.items():
        if module.startswith("data_pipelines"):
            for target in project_imports(path, top_level_only=False):
                if target.startswith("qsnet_jax."):
                    assert target.split(".")[1] in ("physics", "io"), f"{module}: {target}"


def test_no_import_cycle():
    graph = {module: project_imports(path, top_level_only=True)
             for module, path in MODULES.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


ENTRY_POINTS_THAT_PARSE_FIRST = ("experiments.main", "experiments.compare", "experiments.evaluate")


def test_project_imports_are_at_module_top():
    # a deferred import hides a module's dependencies (and a cycle) from its reader; the
    # phantom modules that defer some are listed in docs/design.md section 10
    deferred = []
    for module, path in MODULES.items():
        if module.split(".")[0] not in ("qsnet_jax", "workflow", "experiments", "configs"):
            continue
        every = project_imports(path, top_level_only=False)
        top = project_imports(path, top_level_only=True)
        late = every - top
        if module in ENTRY_POINTS_THAT_PARSE_FIRST:
            # they import their one workflow module once the flags parsed (a typo answers
            # in a second, not after TensorFlow loads): nothing else may hide there
            late = {name for name in late if not name.startswith("workflow.")}
        deferred += [f"{module}: {name}" for name in sorted(late)]
    assert not deferred, "imports inside functions:\n" + "\n".join(deferred)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.split(".")[0] in PACKAGES))
def test_every_module_imports(module):
    # the entry points define absl flags (--config, --workdir) at import: keep each one's
    # own, so that importing several in one process does not collide
    before = set(flags.FLAGS)
    try:
        importlib.import_module(module)
    finally:
        for name in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, name)
