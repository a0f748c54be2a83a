"""The shape of core's code: imports point one way, and modules share only public names."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "core"


def _module_name(path: Path) -> str:
    parts = ["polymodal", *path.relative_to(CORE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in CORE.rglob("*.py")}


def _imports(name: str) -> list[tuple[str, list[str]]]:
    """Each import of module ``name`` (at any depth: in functions, under TYPE_CHECKING) as the
    module imported from and the names taken."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level \
                else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.append((target, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return found


def _graph() -> dict[str, set[str]]:
    """Which core modules each core module imports; the package itself, a facade of lazy
    names, left out."""
    graph: dict[str, set[str]] = {}
    for name in MODULES:
        if name == "polymodal":
            continue
        targets = set()
        for module, names in _imports(name):
            for candidate in (module, *(f"{module}.{n}" for n in names)):
                if candidate in MODULES and candidate not in (name, "polymodal"):
                    targets.add(candidate)
        graph[name] = targets
    return graph


def _cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    path, seen = [start], set()

    def walk(node: str) -> list[str] | None:
        for following in sorted(graph[node]):
            if following == start:
                return [*path, start]
            if following not in seen:
                seen.add(following)
                path.append(following)
                if found := walk(following):
                    return found
                path.pop()
        return None

    return walk(start)


def test_no_two_core_modules_import_each_other_even_indirectly():
    graph = _graph()
    cycles = [cycle for name in sorted(graph) if (cycle := _cycle_from(name, graph))]
    assert not cycles, f"import circles: {' ; '.join(' -> '.join(c) for c in cycles[:3])}"


def test_the_check_finds_an_import_circle():
    assert _cycle_from("a", {"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle_from("a", {"a": {"b"}, "b": set()}) is None


def test_no_module_imports_another_modules_private_name():
    """A name with a leading underscore is its module's own; what others use is public."""
    found = [f"{name}: from {module} import {taken}"
             for name in MODULES for module, names in _imports(name)
             for taken in names
             if taken.startswith("_") and not taken.startswith("__")
             and f"{module}.{taken}" not in MODULES]
    assert not found, found
