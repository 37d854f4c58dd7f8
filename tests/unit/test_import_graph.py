"""The package's import graph has no cycle: every `import` / `from ... import` in exaone_train/,
launcher/ and data_pipeline/ counts, at module level, inside functions and under
`if TYPE_CHECKING:` alike (a type-only import is still a dependency a reader must follow).
In particular the trainer and the checkpoint manager do not know each other: the manager saves
and loads a `Checkpointable` (state dicts), callbacks see a `TrainerView` (train/hooks.py).

Before issue 15's item 8, train.trainer -> checkpoint.callback -> checkpoint.manager -> (type)
train.trainer and train.callbacks -> (type) train.trainer formed one cycle of four modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("exaone_train", "launcher", "data_pipeline")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool,
              modules: dict[str, Path]) -> set[str]:
    """The package modules one import statement names (`from pkg import sub` -> pkg.sub)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names} & modules.keys()
    base = node.module or ""
    if node.level:  # relative: from the module's package, one level up per extra dot
        package = module.split(".") if is_pkg else module.split(".")[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    names = {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return names & modules.keys()


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                deps |= _imported(node, name, path.name == "__init__.py", modules)
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = stack[stack.index(v):]
                    del stack[stack.index(v):]
                    if len(component) > 1:
                        found.append(sorted(component))
            elif w not in index:
                index[w] = low[w] = len(index)
                stack.append(w)
                work.append((w, iter(sorted(graph[w]))))
            elif w in stack:
                low[v] = min(low[v], index[w])
    return found


def test_cycle_finder_finds_a_cycle_and_its_members():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["e", "e2"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_type_only_and_function_level_imports():
    graph = import_graph()
    # `if TYPE_CHECKING:` import of StepResult; function-level import of run_dir.run_info
    assert "exaone_train.train.step" in graph["exaone_train.train.hooks"]
    assert "exaone_train.train.run_dir" in graph["exaone_train.checkpoint.manager"]
    assert "exaone_train.train.callbacks" in graph["exaone_train.train.trainer"]  # `import as`


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "exaone_train.checkpoint.manager" in graph and "exaone_train.train.trainer" in graph
    assert cycles(graph) == []


def test_callback_protocol_has_no_package_imports_at_run_time():
    """train/hooks.py is a leaf: any callback can import it without pulling in the trainer."""
    tree = ast.parse((ROOT / "exaone_train/train/hooks.py").read_text())
    runtime = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert all(not (getattr(n, "module", "") or "").startswith("exaone_train") for n in runtime)


def _names_tests(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return not node.level and (node.module or "").split(".")[0] == "tests"
    return isinstance(node, ast.Import) and any(a.name.split(".")[0] == "tests"
                                                for a in node.names)


def test_the_package_never_imports_test_code():
    """Test-only code lives in tests/helpers/ (not installed): no package module imports it."""
    offenders = sorted(name for name, path in _modules().items()
                       if any(_names_tests(n) for n in ast.walk(ast.parse(path.read_text()))))
    assert offenders == []
