"""The runtime must run on a machine without the build package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import aierun

PACKAGE = Path(aierun.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_aierun_module_imports_aiebuild():
    offenders = [
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*.py")
        if any(name.split(".")[0] == "aiebuild" for name in imported_modules(path))
    ]
    assert offenders == []


def test_every_aierun_module_imports_with_aiebuild_unavailable():
    modules = sorted(
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for path in PACKAGE.rglob("*.py")
    )
    # A meta-path finder that refuses aiebuild, as on a machine that only has the runtime.
    script = f"""
import sys, importlib
class NoBuild:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'aiebuild':
            raise ImportError('aiebuild is not installed here')
sys.meta_path.insert(0, NoBuild())
for name in {modules!r}:
    if name.endswith('__main__'):
        continue
    importlib.import_module(name.removesuffix('.__init__'))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _imported_by_name(node: ast.AST) -> str | None:
    """The module a call such as `importlib.import_module("aierun.x")` or
    `__import__("aierun.x")` loads, when it names it with a string literal."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    first = node.args[0]
    if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
        return first.value if isinstance(first.value, str) else None
    return None


def module_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (`from a import b` counts the
    submodule a.b when there is one), lazy imports inside functions and modules loaded
    by name (`import_module("...")`) included."""
    root = PACKAGE.parent
    paths = {
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
        for package in ("aierun", "aiebuild")
        for p in (root / package).rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in paths else node.module)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif (by_name := _imported_by_name(node)) is not None:
                targets.add(by_name)
        graph[module] = {t for t in targets if t in paths and t != module}
    return graph


def test_the_graph_sees_modules_loaded_by_name(tmp_path):
    source = "import importlib\nimportlib.import_module('aierun.cli')\n__import__('aierun.x')\n"
    calls = [_imported_by_name(node) for node in ast.walk(ast.parse(source))]
    assert [c for c in calls if c] == ["aierun.cli", "aierun.x"]


def test_the_command_line_is_imported_by_no_other_runtime_module():
    """aierun.cli dispatches to the command modules; none of them reaches back."""
    graph = module_graph()
    users = sorted(m for m, targets in graph.items() if "aierun.cli" in targets)
    assert [m for m in users if m.startswith("aierun")] == []


def test_the_build_never_imports_the_runtime_devices():
    """What the build shares with the runtime is the ABI (aierun/abi.py), not a device."""
    graph = module_graph()
    offenders = sorted(
        m for m, targets in graph.items()
        if m.startswith("aiebuild") and any(t.startswith("aierun.devices") for t in targets)
    )  # fmt: skip
    assert offenders == []


def test_no_dispatch_by_module_name():
    names = {
        by_name
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if (by_name := _imported_by_name(node)) is not None
    }
    assert not {n for n in names if n.split(".")[0] in ("aierun", "aiebuild")}


def test_no_import_cycles():
    """A lower module never reaches up: no module imports, even lazily, a module that
    leads back to it."""
    graph = module_graph()

    def reaches(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(graph[module])
        return seen

    cycles = sorted(m for m in graph if m in reaches(m))
    assert cycles == []
