"""The layout: imports go only downward through the layers, with no cycle and none hidden in a function.

Within web/, a page module imports no other page module: pages share forms, page sizes and
upload paths through web.common, and a page may split itself into parts named after it
(web.timeline uses web.timeline_chart).

Read with `ast` (nothing is imported), so a violation fails here naming the offending pair.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Each layer may import only from the layers before it (and from itself, without cycles).
LAYERS = [["storage"], ["models"], ["delivery"], ["core"], ["sender"], ["timeline"],
          ["web", "scheduler"], ["cli"], ["app"]]


# What every page may import from web/; everything else there is a page (or a page's part).
WEB_SHARED = {"web.common"}


def layer_of(module: str) -> int:
    """The index of a module's layer: its top-level package or top-level module name."""
    top = module.split(".")[0]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def project_modules(root: Path) -> dict[str, Path]:
    """Every module of the layers under root, by dotted name."""
    found = {}
    for names in LAYERS:
        for name in names:
            if (root / f"{name}.py").is_file():
                found[name] = root / f"{name}.py"
            for path in sorted((root / name).rglob("*.py")) if (root / name).is_dir() else []:
                parts = path.relative_to(root).with_suffix("").parts
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _targets(node: ast.AST, modules: set[str]) -> list[str]:
    """The project modules an import statement names (a `from pkg import mod` names pkg.mod)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                 for alias in node.names]
    else:
        return []
    return [name for name in names if name.split(".")[0] in {m.split(".")[0] for m in modules}]


def imports(path: Path, modules: set[str]) -> tuple[set[str], set[str]]:
    """(module-level imports, imports inside a function) of project modules in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    top, hidden = set(), set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            (hidden if inner else top).update(_targets(child, modules))
            visit(child, inner)

    visit(tree, False)
    return top, hidden


def problems(root: Path) -> list[str]:
    """Every violation under root: cycles, upward imports, project imports inside functions."""
    found = project_modules(root)
    modules = set(found)
    graph: dict[str, set[str]] = {}
    errors = []
    for name, path in found.items():
        top, hidden = imports(path, modules)
        errors += [f"import inside a function: {name} -> {target}" for target in sorted(hidden)]
        graph[name] = {t for t in top | hidden if t != name and t in modules}
        errors += [f"upward import: {name} -> {target}" for target in sorted(graph[name])
                   if layer_of(target) > layer_of(name)]
        errors += [f"page imports a page: {name} -> {target}" for target in sorted(graph[name])
                   if _page_to_page(name, target)]
    return errors + [f"import cycle: {' -> '.join(cycle)}" for cycle in _cycles(graph)]


def _page_to_page(name: str, target: str) -> bool:
    """Whether a web module imports a web module other than the shared ones and its own parts."""
    if not (name.startswith("web.") and target.startswith("web.")) or target in WEB_SHARED:
        return False
    return name in WEB_SHARED or not target.startswith(f"{name}_")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected tangle, found by depth-first search."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            walk(start, [start])
    return cycles


def test_the_project_imports_only_downward_without_cycles():
    assert problems(ROOT) == []


def test_every_module_is_in_a_layer():
    loose = {p.stem for p in ROOT.glob("*.py")} - {n for names in LAYERS for n in names}
    assert loose == set(), f"top-level modules outside the layers: {sorted(loose)}"


def sys_path_edits(root: Path) -> list[str]:
    """Every `sys.path` use in the project's Python files (tests, bench and chaos included)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if {".venv", "instance"} & set(path.relative_to(root).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if (isinstance(node, ast.Attribute) and node.attr == "path"
                    and isinstance(node.value, ast.Name) and node.value.id == "sys"):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_nothing_edits_sys_path():
    # pyproject.toml's pythonpath serves pytest; bench and chaos run as `python -m` from the root.
    assert sys_path_edits(ROOT) == []


def test_checker_finds_a_sys_path_edit(tmp_path):
    root = _tree(tmp_path, {"bench/run.py": "import sys\n\nsys.path.insert(0, 'tests')\n",
                            ".venv/lib/site.py": "import sys\nsys.path[:0] = []\n"})
    assert sys_path_edits(root) == ["bench/run.py:3"]


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


BASE = {"storage/__init__.py": "", "storage/database.py": "import sqlite3\n",
        "delivery/__init__.py": "", "delivery/lease.py": "from storage.database import x\n",
        "web/__init__.py": "", "web/common.py": "from storage import database\n",
        "models.py": "from storage import database\n"}


def test_checker_accepts_a_downward_tree(tmp_path):
    assert problems(_tree(tmp_path, BASE)) == []


@pytest.mark.parametrize("line, expected", [
    ("import web.common\n", "upward import: delivery.lease -> web.common"),
    ("from web import common\n", "upward import: delivery.lease -> web.common"),
    ("from web.common import ActionForm\n", "upward import: delivery.lease -> web.common"),
    ("import models\n", None),
    ("def f():\n    from storage import database\n",
     "import inside a function: delivery.lease -> storage.database"),
])
def test_checker_names_the_offending_pair(tmp_path, line, expected):
    files = dict(BASE, **{"delivery/lease.py": BASE["delivery/lease.py"] + line})
    found = problems(_tree(tmp_path, files))
    assert found == ([expected] if expected else [])


def test_checker_finds_a_cycle_within_a_layer(tmp_path):
    files = dict(BASE, **{"delivery/transport.py": "from delivery import lease\n",
                          "delivery/lease.py": "from delivery.transport import send\n"})
    assert problems(_tree(tmp_path, files)) == [
        "import cycle: delivery.lease -> delivery.transport -> delivery.lease"]


def test_checker_finds_a_cycle_held_by_a_function_level_import(tmp_path):
    files = dict(BASE, **{"delivery/transport.py": "from delivery import lease\n",
                          "delivery/lease.py": "def f():\n    import delivery.transport\n"})
    assert problems(_tree(tmp_path, files)) == [
        "import inside a function: delivery.lease -> delivery.transport",
        "import cycle: delivery.lease -> delivery.transport -> delivery.lease"]


@pytest.mark.parametrize("files, expected", [
    ({"web/sendlog.py": "from web.campaigns import ActionForm\n", "web/campaigns.py": ""},
     ["page imports a page: web.sendlog -> web.campaigns"]),
    ({"web/suppressions.py": "from web import leads\n", "web/leads.py": ""},
     ["page imports a page: web.suppressions -> web.leads"]),
    ({"web/i18n.py": "import web.auth\n", "web/auth.py": ""},
     ["page imports a page: web.i18n -> web.auth"]),
    ({"web/common.py": "from web.leads import PAGE_SIZE\n", "web/leads.py": ""},
     ["page imports a page: web.common -> web.leads"]),
    ({"web/leads.py": "from web.common import PAGE_SIZE\n"}, []),
    ({"web/timeline.py": "from web import timeline_chart\n", "web/timeline_chart.py": ""}, []),
    ({"web/timeline_chart.py": "from web import timeline\n", "web/timeline.py": ""},
     ["page imports a page: web.timeline_chart -> web.timeline"]),
])
def test_checker_finds_a_page_importing_a_page(tmp_path, files, expected):
    assert problems(_tree(tmp_path, dict(BASE, **files))) == expected
