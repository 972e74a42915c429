"""The package's shape: no import cycles between modules (function-level imports included), the core
imports neither modal nor gymnasium, and only the `hrmlab bench` command imports the benchmarks."""

import ast
from pathlib import Path

import hrmlab

ROOT = Path(hrmlab.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target in modules and target != name and not name.startswith(target + "."):
                    edges.add(target)  # a submodule importing its own package's __init__ is no cycle
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_only_the_bench_command_imports_hrmlab_bench():
    """The benchmarks and reference implementations (src/hrmlab_bench/) are not part of the runtime:
    only `hrmlab.cli` imports them, inside `cmd_bench`."""
    def imports_bench(nodes) -> bool:
        return any(isinstance(node, ast.Import) and any(a.name.split(".")[0] == "hrmlab_bench" for a in node.names)
                   or isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                   and node.module.split(".")[0] == "hrmlab_bench" for node in nodes)

    trees = {_module_name(p): ast.parse(p.read_text()) for p in ROOT.rglob("*.py")}
    assert [name for name, tree in trees.items() if imports_bench(ast.walk(tree))] == ["hrmlab.cli"]
    assert not imports_bench(trees["hrmlab.cli"].body)  # lazily: not at module level


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
