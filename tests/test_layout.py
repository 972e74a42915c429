"""The package's shape: no import cycles between modules (function-level imports included) nor between
packages (module-level imports), layered floors that no module-level import climbs, the family registry as
the only place that tells families or presets apart by name, and only the `hrmlab bench` command importing
the benchmarks. (The core imports neither modal nor gymnasium: tests/test_modal.py, tests/test_gym.py.)"""

import ast
import re
from pathlib import Path

import hrmlab

ROOT = Path(hrmlab.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level(tree: ast.Module) -> list[ast.AST]:
    """The statements that run when the module is imported (inside `if` / `try` blocks too), not function bodies."""
    nodes, stack = [], list(tree.body)
    while stack:
        node = stack.pop()
        nodes.append(node)
        if isinstance(node, ast.If):
            stack += node.body + node.orelse
        elif isinstance(node, ast.Try):
            stack += node.body + node.orelse + node.finalbody + [n for h in node.handlers for n in h.body]
    return nodes


def import_graph(module_level: bool = False) -> dict[str, set[str]]:
    """Module → the hrmlab modules it imports (every import, or only those that run at import time)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        tree = ast.parse(path.read_text())
        for node in (_module_level(tree) if module_level else ast.walk(tree)):
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


# ------------------------------------------------------------------------------------------ packages
def _package(module: str) -> str:
    """The package a module belongs to: itself for a package (`__init__`), else the package holding it;
    a module at the top (`hrmlab.cli`) is its own unit."""
    if (ROOT.parent / module.replace(".", "/") / "__init__.py").is_file():
        return module
    parent = module.rpartition(".")[0]
    return module if parent == "hrmlab" else parent


def package_graph() -> dict[str, set[str]]:
    """Package → the packages it imports at module level (an import inside a function is no edge)."""
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph(module_level=True).items():
        edges = graph.setdefault(_package(module), set())
        edges |= {_package(t) for t in targets if _package(t) != _package(module)}
    return graph


def test_no_package_imports_another_in_a_cycle():
    graph = package_graph()
    assert "hrmlab.experiments.grid" in graph and "hrmlab.diffusion.spacetime" in graph
    assert find_cycle(graph) is None


FLOORS = {
    "entry": ("hrmlab.cli", "hrmlab.cloud"),
    "experiments": ("hrmlab.experiments",),
    "runtime": ("hrmlab.diffusion", "hrmlab.envs", "hrmlab.report", "hrmlab.evaluate", "hrmlab.policies",
                "hrmlab.forecast", "hrmlab.train", "hrmlab.data", "hrmlab.backends", "hrmlab.presets"),
    "ground": ("hrmlab", "hrmlab.worlds", "hrmlab.planning", "hrmlab.evaluate.stats", "hrmlab.stage_cache",
               "hrmlab.config", "hrmlab.errors", "hrmlab.fileio", "hrmlab.validate", "hrmlab.threads",
               "hrmlab.progress"),
}
"""Top to bottom. A module lives on the floor of the longest name that contains it (`hrmlab.evaluate.stats`
is on the ground, the rest of `hrmlab.evaluate` above it); docs/architecture.md's layers table."""
LATE_BINDINGS = {("hrmlab.presets", "hrmlab.experiments.families")}
"""Imports inside a function that reach a higher floor, each a deliberate late binding: `load_preset` asks
the family registry for the preset's loader."""


def floor_of(module: str) -> int:
    """0 (entry) … 3 (ground): the floor of the longest FLOORS name that is `module` or contains it."""
    matches = [(len(name), level) for level, names in enumerate(FLOORS.values()) for name in names
               if module == name or (name != "hrmlab" and module.startswith(name + "."))]
    assert matches, f"{module} is on no floor: add its package to FLOORS (and to docs/architecture.md)"
    return max(matches)[1]


def test_every_module_is_on_a_floor_and_no_import_climbs():
    """entry (cli, cloud) → experiments → runtime and family-specific packages → ground (worlds, planning,
    statistics, config, errors, files, validation, threads): module-level imports only point down or
    sideways; an import inside a function climbs only where LATE_BINDINGS says why."""
    climbs = sorted((a, b) for a, targets in import_graph(module_level=True).items() for b in targets
                    if floor_of(b) < floor_of(a))
    assert climbs == []
    late = {(a, b) for a, targets in import_graph().items() for b in targets if floor_of(b) < floor_of(a)}
    assert late <= LATE_BINDINGS
    for ground in ("hrmlab.worlds.bounce_grid", "hrmlab.worlds.blob_world", "hrmlab.planning.spacetime_astar",
                   "hrmlab.planning.blob_astar", "hrmlab.evaluate.stats", "hrmlab.stage_cache"):
        assert floor_of(ground) == len(FLOORS) - 1


# ------------------------------------------------------------------------------------------ registry
def registry_violations(tree: ast.AST, presets: set[str]) -> list[str]:
    """Comparisons that tell families or presets apart by name: any comparison of a `family` (`cfg.family ==
    ...`, `family != ...`), a string equal to a preset's name compared (==, !=, in), or `.startswith` /
    `.endswith` with the beginning or end of a preset's name (`"diffusion"`, `"hrm-cloud"`, `"suite-"`).
    (Family names alone are no evidence: "grid" and "diffusion" also name world kinds and planners.)"""
    def is_family(node) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "family") or (isinstance(node, ast.Name)
                                                                               and node.id == "family")

    def strings(node) -> list[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return [s for elt in node.elts for s in strings(elt)]
        return []

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            named = {s for o in operands for s in strings(o)}
            if any(is_family(o) for o in operands) or named & presets:
                found.append(ast.unparse(node))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("startswith", "endswith") and node.args):
            if any(name.startswith(s) or name.endswith(s) for s in strings(node.args[0]) if s for name in presets):
                found.append(ast.unparse(node))
    return found


def test_only_the_registry_tells_families_and_presets_apart_by_name():
    """No module but experiments/families.py compares family names or preset names (the presets package,
    which defines what a suite is through its base file, compares neither)."""
    from hrmlab.presets import preset_names

    presets = set(preset_names())
    found = {name: hits for name, path in ((_module_name(p), p) for p in ROOT.rglob("*.py"))
             if name != "hrmlab.experiments.families"
             and (hits := registry_violations(ast.parse(path.read_text()), presets))}
    assert found == {}


def test_the_registry_rule_catches_name_comparisons():
    presets = {"diffusion-cpu", "hrm-cloud", "quick", "suite-rush"}
    code = ("a = cfg.family == 'grid'\nb = [p for p in names if not p.startswith(('diffusion', 'hrm-cloud'))]\n"
            "c = name.startswith('suite-')\nd = preset == 'quick'\n"
            "ok = row.planner.startswith('diffusion[') or kind == 'blob' or planner == 'astar'\n")
    found = registry_violations(ast.parse(code), presets)
    assert len(found) == 4 and not any("planner" in f or "blob" in f for f in found)


def test_the_study_worlds_are_the_cpu_presets_of_studiable_families():
    from hrmlab.experiments.families import FAMILIES, study_worlds
    from hrmlab.presets import suite_names

    assert study_worlds() == ["quick", *suite_names()]
    assert [f.name for f in FAMILIES.values() if f.studiable] == ["grid"]


# ------------------------------------------------------------------------------------------ the docs
ARCHITECTURE = ROOT.parents[1] / "docs" / "architecture.md"


def _top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            names |= {t.id for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                      if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _dotted_exists(dotted: str) -> bool:
    """`hrmlab.x.y` names a module or package, or one top-level name of one (`hrmlab.policies.act`; a
    module with a `__getattr__` may provide any)."""
    parts = dotted.split(".")
    for cut in (len(parts), len(parts) - 1):
        base = ROOT.parent.joinpath(*parts[:cut])
        module = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        names = _top_level_names(module) if module.is_file() and cut < len(parts) else set()
        if module.is_file() and (cut == len(parts) or parts[-1] in names or "__getattr__" in names):
            return True
    return False


def test_the_architecture_doc_names_real_modules_and_every_package():
    """Every module docs/architecture.md names exists — a path ending in .py (relative to src/hrmlab/, the
    repository or src/hrmlab_bench/; a bare file name somewhere in them) or a dotted `hrmlab.x.y` — and
    every package under src/hrmlab/ is named in it (`x/y/` or `hrmlab.x.y`)."""
    text = ARCHITECTURE.read_text()
    repo, bench = ROOT.parents[1], ROOT.parent / "hrmlab_bench"
    files = {p.name for base in (ROOT, bench) for p in base.rglob("*.py")}
    missing = []
    for path in sorted(set(re.findall(r"[\w./-]*\w\.py\b", text))):
        found = (path in files if "/" not in path
                 else any((base / path).is_file() for base in (ROOT, repo, bench)))
        missing += [] if found else [path]
    missing += [d for d in sorted(set(re.findall(r"\bhrmlab(?:\.\w+)+", text))) if not _dotted_exists(d)]
    assert missing == []
    packages = sorted(p.parent.relative_to(ROOT).as_posix() for p in ROOT.rglob("__init__.py") if p.parent != ROOT)
    unnamed = [p for p in packages if f"{p}/" not in text and f"hrmlab.{p.replace('/', '.')}" not in text]
    assert unnamed == []
    assert len(packages) >= 15


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
