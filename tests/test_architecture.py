"""The package's layering, read from its source: no import cycles (function-level imports included),
and each layer imports only the layers below it."""
import ast
from pathlib import Path

import pytest

import legendfl

ROOT = Path(legendfl.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the legendfl modules it imports anywhere in its body (top level or inside functions)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in modules and "." in target:
                    target = target.rpartition(".")[0]  # an imported name, not a module: its module
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    # config imports the strategy registry inside a function (so reading a config never loads torch)
    assert "legendfl.strategies" in graph["legendfl.config"]
    assert "legendfl.strategies.registry" in graph["legendfl.strategies.legend"]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def _imports_of(prefix: str, graph) -> set[str]:
    return {t for m, ts in graph.items() if m == prefix or m.startswith(prefix + ".") for t in ts}


def test_layers_import_only_what_is_below_them():
    graph = import_graph()
    below = {  # layer -> the legendfl layers it may import (besides itself)
        "legendfl.core": set(),
        "legendfl.strategies": {"legendfl.core"},
        "legendfl.fleet": {"legendfl.core"},
        "legendfl.data": {"legendfl.core"},
        "legendfl.metrics": {"legendfl.core"},
        "legendfl.models": {"legendfl.core", "legendfl.data"},
        "legendfl.engine": {"legendfl.core", "legendfl.data", "legendfl.models"},
        "legendfl.methods": {"legendfl.core", "legendfl.data", "legendfl.models", "legendfl.engine"},
    }
    everything_but_commands = {"legendfl.core", "legendfl.strategies", "legendfl.fleet", "legendfl.data",
                               "legendfl.metrics", "legendfl.models", "legendfl.engine", "legendfl.methods",
                               "legendfl.config", "legendfl.logs"}
    below["legendfl.runtime"] = everything_but_commands
    below["legendfl.experiments"] = everything_but_commands | {"legendfl.runtime"}
    for layer, allowed in below.items():
        for target in _imports_of(layer, graph) - {"legendfl"}:  # "from legendfl import logs" names the root too
            top = ".".join(target.split(".")[:2])
            assert top == layer or top in allowed, f"{layer} imports {target}"
    # and the strategy layer, in particular, imports no runtime
    assert not any(t.startswith("legendfl.runtime") for t in _imports_of("legendfl.strategies", graph))
    # every room of the package is placed in a layer (a new room must say where it stands)
    rooms = {f"legendfl.{p.name}" for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert rooms <= set(below), f"rooms without a layer: {sorted(rooms - set(below))}"


def test_the_package_root_holds_only_the_entry_points():
    """Commands live in experiments/, the engine in engine/, methods in methods/: the root keeps the CLI, the run
    configuration and logging."""
    loose = {p.name for p in ROOT.glob("*.py")}
    assert loose == {"__init__.py", "__main__.py", "cli.py", "config.py", "logs.py"}


def test_no_file_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_the_architecture_document_names_only_what_exists():
    """docs/architecture.md, read as a newcomer would follow it: every file it names exists (a path from the repository
    or the package, or a bare file name somewhere in the package), and every dotted name such as
    ``runtime.run_session.execute_run`` is a module of the package and, if it goes further, a name defined there."""
    import re

    repo = ROOT.parents[1]
    text = (repo / "docs" / "architecture.md").read_text()
    files = set(re.findall(r"[\w/]*\w\.py\b", text))
    package_files = {p.name for p in ROOT.rglob("*.py")}
    for name in sorted(files):
        found = (repo / name).exists() or (ROOT / name).exists() or ("/" not in name and name in package_files)
        assert found, f"docs/architecture.md names {name}, which does not exist"
    rooms = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith("__")}
    for dotted in sorted(set(re.findall(r"`([a-z_]+(?:\.[A-Za-z_]+)+)", text))):
        parts = dotted.split(".")
        if parts[0] not in rooms:
            continue
        for cut in range(len(parts), 0, -1):  # the longest prefix that is a module; the rest are names in it
            module = ROOT.joinpath(*parts[:cut])
            path = module.with_suffix(".py") if module.with_suffix(".py").exists() else module / "__init__.py"
            if path.exists():
                rest = parts[cut:]
                if rest:
                    source = path.read_text()
                    assert re.search(rf"(def|class) {rest[0]}\b|^{rest[0]}\s*[:=]", source, re.M), \
                        f"docs/architecture.md names {dotted}: {rest[0]} is not defined in {path.relative_to(repo)}"
                break
        else:
            raise AssertionError(f"docs/architecture.md names {dotted}, which is not a module of the package")


@pytest.mark.xdist_group("suite_check")
def test_the_suites_groups_reach_one_worker_each(request):
    """`make test` runs `pytest -n auto --dist loadgroup`: a module's shared federation or run is made once only if
    its xdist group really goes to one worker. pytest-xdist marks a grouped test by a suffix on its node id; where a
    pytest release keeps node ids from it (9.2 with xdist 3.8), grouping is silently off (pyproject.toml pins)."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run by pytest-xdist with --dist loadgroup")
    assert request.node.nodeid.endswith("@suite_check"), request.node.nodeid
