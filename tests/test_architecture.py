"""The shape of the code: no import cycle, libraries that know nothing of the command line.

The import graph is read from the source (every import, including those
inside functions, so that a deferred import cannot hide a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ingest", "queries", "migrations")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (a name imported from a package counts as
    the submodule when there is one, else the package)."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                module = ".".join([*anchor, *(node.module.split(".") if node.module else [])])
            else:
                module = node.module or ""
            candidates = [f"{module}.{alias.name}" for alias in node.names] + [module]
        else:
            continue
        for candidate in candidates:
            parts = candidate.split(".")
            for cut in range(len(parts), 0, -1):
                prefix = ".".join(parts[:cut])
                if prefix in known:
                    targets.add(prefix)
                    break
    targets.discard(name)
    return targets


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _external_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_the_modules() -> None:
    graph = _graph()
    assert "ingest.cli.root" in graph and "queries.api" in graph
    assert "ingest.cli.help_format" in graph["ingest.cli.root"]
    assert "queries.api" in graph["ingest.cli.report"]
    # A relative import of a sibling module, and one inside a function.
    assert "ingest.store" in graph["ingest.runner"]
    assert "ingest.migrate" in graph["ingest.runner"]


def test_a_cycle_would_be_found() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


@pytest.mark.parametrize("package", ["ingest", "queries", "migrations"])
def test_only_the_command_line_imports_it(package: str) -> None:
    graph = _graph()
    for name, targets in graph.items():
        if name.startswith(package) and not name.startswith("ingest.cli"):
            assert not any(t.startswith("ingest.cli") for t in targets), name


def test_the_ingest_library_does_not_import_the_analytics() -> None:
    for name, targets in _graph().items():
        if name.startswith("ingest") and not name.startswith("ingest.cli"):
            assert not any(t.startswith("queries") for t in targets), name


def test_click_is_the_command_line_s_alone() -> None:
    for name, path in _modules().items():
        if name.startswith("ingest.cli"):
            continue
        assert "click" not in _external_imports(path), name


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
KEPT_WHOLE = "# Kept whole:"


def _long_functions(path: Path) -> list[str]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        # The comment block just above the function (or its decorators).
        above, index = [], first - 2
        while index >= 0 and lines[index].strip().startswith("#"):
            above.append(lines[index].strip())
            index -= 1
        kept = any(line.startswith(KEPT_WHOLE) for line in above)
        if length > MAX_FUNCTION_LINES and not kept:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_modules_and_functions_stay_small() -> None:
    """No module over 400 lines; no function over 60 unless a "# Kept whole:" comment
    just above it says why."""
    too_long = [
        f"{path.relative_to(ROOT)} ({len(path.read_text(encoding='utf-8').splitlines())} lines)"
        for path in _modules().values()
        if len(path.read_text(encoding="utf-8").splitlines()) > MAX_MODULE_LINES
    ]
    functions = [f for path in _modules().values() for f in _long_functions(path)]
    assert too_long == [] and functions == []


def test_the_size_rule_sees_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(70))
    (tmp_path / "m.py").write_text(f"def f() -> None:\n{body}\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert _long_functions(tmp_path / "m.py") == ["m.py:1 f (71 lines)"]
        kept = f"# Kept whole: a reason\n# on two lines.\ndef f() -> None:\n{body}\n"
        (tmp_path / "m.py").write_text(kept)
        assert _long_functions(tmp_path / "m.py") == []
    finally:
        ROOT = saved


@pytest.mark.parametrize("command", ["ingest", "receive", "reconcile"])
def test_the_commands_that_never_read_the_copy_do_not_import_it(command: str) -> None:
    """``ingest`` runs every minute from cron: loading a command's module must not load
    DuckDB or the analytics copy, which only the commands that read the copy need."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from ingest.cli.root import main\n"
        f"main([{command!r}, '--help'], standalone_mode=False)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'duckdb', 'queries', 'pyarrow'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.strip().splitlines()[-1] == "[]", out
