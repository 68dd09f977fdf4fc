"""The house stays as the README's Architecture section draws it: the rooms' one-way arrows, no import circles,
modules of a readable size, and every module the section names still there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("app", "engine", "indexer", "storage")
# Which rooms each room may import (README "Architecture"; DESIGN.md "The house").
ALLOWED = {
    "app": {"app", "engine", "indexer", "storage"},
    "engine": {"engine", "storage"},
    "indexer": {"indexer", "storage"},
    "storage": {"storage"},
}
MAX_LINES = 520  # "no module over ~500 lines"
MAX_LINES_EXCEPT = {"engine/models/internvideo3.py"}  # the model file reads top to bottom, like transformers'


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the four rooms."""
    found = {}
    for room in ROOMS:
        for path in sorted((ROOT / room).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports anywhere (top level or inside functions), resolved to known modules."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def test_rooms_import_only_along_the_arrows():
    wrong = [f"{name} imports {dep}" for name, deps in _graph().items() for dep in sorted(deps)
             if dep.split(".")[0] not in ALLOWED[name.split(".")[0]]]
    assert not wrong, "imports against the arrows (README Architecture):\n" + "\n".join(wrong)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle if there is any (depth-first search; package __init__ re-exports of a child excluded)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if node.startswith(dep + "."):  # a module importing its own package's __init__ is no circle of ours
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circles():
    graph = {name: {d for d in deps if not d.startswith(name + ".")} for name, deps in _graph().items()}
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_circle_check_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_modules_stay_readable_in_size():
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES
            and str(p.relative_to(ROOT)) not in MAX_LINES_EXCEPT]
    assert not long, f"modules over {MAX_LINES} lines: split them by job\n" + "\n".join(long)


def _named_in_readme() -> set[str]:
    """Modules and folders the README's Architecture section places: in a bullet "- `room/`: ...", a name such as
    `cli.py` or `stages/` is inside that room; a name that starts with a room is a path already."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    named = set()
    for bullet in re.split(r"\n(?=- `)", section):
        bullet = bullet.split("\n\n", 1)[0]
        room = re.match(r"- `(app|engine|indexer|storage)/`", bullet)
        for name in re.findall(r"`([\w/]+(?:\.py|/))`", bullet):
            named.add(name if name.split("/")[0] in ROOMS or not room else f"{room.group(1)}/{name}")
    return named


def test_every_module_the_architecture_section_names_exists():
    named = _named_in_readme()
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert not missing, f"README's Architecture section names modules that are gone: {missing}"
    modules = {str(p.relative_to(ROOT)) for p in _modules().values() if p.name != "__init__.py"}
    unplaced = sorted(m for m in modules if m not in named and not any(m.startswith(n) for n in named if n.endswith("/")
                                                                      and n.count("/") > 1))
    assert not unplaced, f"modules the README's Architecture section does not place: {unplaced}"
