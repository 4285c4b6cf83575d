"""The package's imports follow the data flow: no cycles, and the library never imports the command line."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"
ENTRY_POINTS = {"pipeline.cli", "pipeline.__main__"}
# The data flow, lowest first (docs/architecture.md): a module imports from its own layer or a lower one. The most
# specific name decides (provenance imports nothing, so every layer may record it).
LAYERS = [
    ["pipeline", "pipeline.errors", "pipeline.fileio", "pipeline.device", "pipeline.distributed", "pipeline.display",
     "pipeline.engines", "pipeline.locations", "pipeline.outputs.provenance"],
    ["pipeline.dicom", "pipeline.phantom"],
    ["pipeline.data"],
    ["pipeline.networks", "pipeline.noise"],
    ["pipeline.outputs", "pipeline.handlers", "pipeline.rundir", "pipeline.bundle"],
    ["pipeline.explain"],
    ["pipeline.evaluation", "pipeline.benchmark"],
    ["pipeline.batch", "pipeline.api", "pipeline.console"],
    ["pipeline.cli", "pipeline.__main__"],
]
MAX_LINES = 450  # "about 400"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at the top or inside functions alike."""
    modules, graph = _modules(), {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    found.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert "pipeline.evaluation.run" in graph and graph["pipeline.cli"]  # the walk sees the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_library_never_imports_the_command_line() -> None:
    def is_entry(name: str) -> bool:
        return any(name == entry or name.startswith(entry + ".") for entry in ENTRY_POINTS)

    offenders = sorted(name for name, imports in import_graph().items() if not is_entry(name) and any(map(is_entry, imports)))
    assert offenders == []


def layer_of(module: str) -> int | None:
    """The layer of the most specific LAYERS name that is ``module`` or a package above it."""
    found = [(len(name), index) for index, names in enumerate(LAYERS) for name in names
             if module == name or module.startswith(name + ".")]
    return max(found)[1] if found else None


def test_every_module_has_a_layer_and_imports_only_along_the_data_flow() -> None:
    graph = import_graph()
    assert sorted(name for name in graph if layer_of(name) is None) == []
    against = sorted(f"{name} -> {imported}" for name, imports in graph.items() for imported in imports
                     if layer_of(imported) > layer_of(name))
    assert against == []


def test_the_layer_check_sees_an_import_against_the_flow() -> None:
    assert layer_of("pipeline.noise.infill") == layer_of("pipeline.networks.zoo") > layer_of("pipeline.data.slices")
    assert layer_of("pipeline.outputs.provenance") == 0 < layer_of("pipeline.outputs.maps")


def test_no_module_is_over_about_400_lines() -> None:
    long = sorted(f"{path.relative_to(PACKAGE.parent)}: {n}" for path in PACKAGE.rglob("*.py")
                  if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES)
    assert long == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
