"""The package's rooms import downward only: no import cycle between modules or between rooms."""

from __future__ import annotations

import ast
from pathlib import Path

import brainmvp_components

PACKAGE = "brainmvp_components"
ROOT = Path(brainmvp_components.__file__).parent

# Rooms from leaves (0) to workflows; a room may import itself and rooms of a lower layer, nothing else.
LAYERS = {
    "utils": 0,
    "visualize": 1,
    "data": 2,
    "networks": 3,
    "losses": 3,
    "transforms": 4,
    "weights": 5,
    "engines": 5,
    "metrics": 6,
    "inference": 7,
    "handlers": 7,
    "studies": 8,
    "clinical": 8,
    "benchmarks": 9,
}


def module_name(path: Path) -> str:
    parts = (PACKAGE, *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, at module level or inside functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: imported_modules(path, set(files)) for name, path in files.items()}


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first repeated last), or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_sees_function_level_imports():
    graph = import_graph()
    assert "brainmvp_components.networks.uniformer" in graph["brainmvp_components.networks.uniunet"]
    assert len(graph) > 40


def test_no_module_import_cycle():
    assert find_cycle(import_graph()) is None


def test_no_room_import_cycle():
    graph = import_graph()
    rooms: dict[str, set[str]] = {}
    for module, deps in graph.items():
        if (room := room_of(module)) is not None:
            rooms.setdefault(room, set()).update(r for d in deps if (r := room_of(d)) not in (None, room))
    assert find_cycle(rooms) is None


def test_every_room_has_a_layer_and_a_docstring():
    rooms = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert rooms <= set(LAYERS), f"rooms without a layer in this test: {sorted(rooms - set(LAYERS))}"
    for room in rooms:
        assert ast.get_docstring(ast.parse((ROOT / room / "__init__.py").read_text())), f"{room}/__init__.py"
    assert not [p.name for p in ROOT.glob("*.py") if p.name != "__init__.py"], "modules left at the package root"


def test_imports_point_downward():
    upward = []
    for module, deps in import_graph().items():
        if (room := room_of(module)) is None:
            continue
        upward += [f"{module} -> {d}" for d in deps if (r := room_of(d)) and r != room and LAYERS[r] >= LAYERS[room]]
    assert not upward, "imports from a room to one of the same or a higher layer: " + "; ".join(sorted(upward))
