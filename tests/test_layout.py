"""The shape of the house: packages by concern, no import cycles, modules that stay readable.

How this works: the import graph of ``daemon.*`` is read from the source with
``ast`` (every import counts, also those inside functions and under
``TYPE_CHECKING``, as import-linter counts them), then checked for cycles
with Tarjan's algorithm. ``lint-imports`` (in CI) checks the layer contracts;
these tests check what it does not: cycles inside a layer, module size, the
number of top-level modules, and that a wheel ships every package.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "daemon"
# Past this a module is asking to be split (STYLE.md: 150–400 is the anchors' median).
MAX_MODULE_LINES = 500
# The top of the package holds the entry points, the wiring and the floor; the rest lives in packages.
MAX_TOP_LEVEL_MODULES = 12


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imported(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The ``daemon`` modules that ``name`` imports, resolved to modules that exist."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("daemon") and target != name:
                yield target


def import_graph() -> dict[str, set[str]]:
    """Module → the daemon modules it imports."""
    known = _modules()
    return {name: set(_imported(name, path, known)) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_cycle_finder_finds_a_planted_cycle() -> None:
    """The cycle check itself works: a planted three-module loop is reported, a chain is not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_daemon_modules() -> None:
    """No two daemon modules import each other, directly or through others."""
    assert cycles(import_graph()) == []


def test_no_module_is_past_the_size_limit() -> None:
    """Every module stays under the size at which it asks to be split."""
    long = {name: lines for name, path in _modules().items()
            if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_the_top_of_the_package_stays_small() -> None:
    """daemon/ itself holds at most a dozen modules: the rest lives in packages by concern."""
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_every_package_says_how_it_works() -> None:
    """Each package's __init__ opens with a docstring, the newcomer's map of that folder."""
    missing = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("__init__.py")
               if not ast.get_docstring(ast.parse(p.read_text(encoding="utf-8")))]
    assert missing == []


def test_a_wheel_ships_every_package() -> None:
    """pyproject lists every package folder, so a regular (wheel) install is not missing one."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
                 ["tool"]["setuptools"]["packages"])
    on_disk = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}
    assert on_disk - listed == set()
    assert "daemon.workflows" in listed
