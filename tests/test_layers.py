"""Architecture checks on src/relssl, done by parsing the sources (nothing is imported).

* every module belongs to a layer, and imports only from its own layer or lower ones;
* the module import graph has no cycles;
* no source file grows past MAX_LINES lines.

The checking functions take a mapping {module name: (source text, is_package)}, so the
tests at the bottom can run them on small synthetic packages held in strings.
"""

from __future__ import annotations

import ast
import fnmatch
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

# The layer order, bottom to top; README's "Layout" section states the same order.
# A module may import from its own layer or a lower one, never from a higher one.
# "pkg.*" matches the package `pkg` itself and everything below it; a plain name matches
# exactly that module. A module that matches no entry fails the layer test.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bottom", ("relssl", "relssl.errors", "relssl.registry", "relssl.distributed",
                "relssl.optim", "relssl.dicts", "relssl.config", "relssl.progress", "relssl.files")),
    ("data/augment", ("relssl.data.*", "relssl.augment.*")),
    ("models/losses/cluster", ("relssl.models.*", "relssl.losses.*", "relssl.cluster.*")),
    ("evaluate", ("relssl.evaluate.*",)),
    ("methods", ("relssl.methods.*",)),
    ("train", ("relssl.train.*",)),
    ("export", ("relssl.export.*",)),
    ("benchmark", ("relssl.benchmark.*",)),
    ("report", ("relssl.report.*",)),
    ("cli", ("relssl.cli.*", "relssl.__main__")),
)

PACKAGE = "relssl"
SRC_ROOT = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 400  # every source file must stay under this many lines

Modules = dict[str, tuple[str, bool]]  # module name -> (source text, is_package)


@dataclass(frozen=True)
class Edge:
    """Module `source` imports module `target` at line `line` of its file."""

    source: str
    target: str
    line: int


# --- discovering and parsing modules ---------------------------------------------------


def module_name(path: Path, src_root: Path) -> tuple[str, bool]:
    """Module name and is-package flag for a file: relssl/a/__init__.py -> ("relssl.a", True)."""
    parts = list(path.relative_to(src_root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def module_path(name: str, is_package: bool) -> str:
    """Path of a module's file relative to src/, for messages: relssl.a -> relssl/a/__init__.py."""
    base = name.replace(".", "/")
    return f"{base}/__init__.py" if is_package else f"{base}.py"


def load_modules(src_root: Path = SRC_ROOT, package: str = PACKAGE) -> Modules:
    """Read every .py file of `package` under `src_root` into the {name: (source, is_package)} map."""
    modules: Modules = {}
    for path in sorted((src_root / package).rglob("*.py")):
        name, is_package = module_name(path, src_root)
        modules[name] = (path.read_text(encoding="utf-8"), is_package)
    return modules


def _in_package(name: str, package: str = PACKAGE) -> bool:
    return name == package or name.startswith(package + ".")


def _resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str | None:
    """Absolute name of `from <level dots><module> import ...` written in `importer`.

    None when the dots climb above the top-level package (Python would refuse the import).
    """
    parts = importer.split(".") if is_package else importer.split(".")[:-1]
    if level - 1 >= len(parts):
        return None
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def module_imports(name: str, source: str, is_package: bool, known: set[str]) -> list[Edge]:
    """Every import of a relssl module made anywhere in `source` (any nesting depth).

    `known` is the set of existing module names; it decides whether `from pkg import x`
    imports the submodule `pkg.x` or just takes the attribute `x` of `pkg`.
    """
    tree = ast.parse(source, filename=module_path(name, is_package))
    edges: list[Edge] = []
    for node in ast.walk(tree):  # walks function bodies, classes, if/try blocks alike
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve_relative(name, is_package, node.level, node.module)
            else:
                base = node.module
            if base is None:
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.append(submodule if submodule in known else base)
        for target in targets:
            if _in_package(target):
                edges.append(Edge(name, target, node.lineno))
    return sorted(set(edges), key=lambda e: (e.line, e.target))


def collect_edges(modules: Modules) -> list[Edge]:
    """All import edges between relssl modules, ordered by importing module then line."""
    known = set(modules)
    edges: list[Edge] = []
    for name in sorted(modules):
        source, is_package = modules[name]
        edges.extend(module_imports(name, source, is_package, known))
    return edges


def _where(edge: Edge, modules: Modules) -> str:
    return f"{module_path(edge.source, modules[edge.source][1])}:{edge.line}"


# --- layers ----------------------------------------------------------------------------


def layer_of(name: str) -> int | None:
    """Index into LAYERS of the layer that `name` belongs to, or None if it has none."""
    for index, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if pattern.endswith(".*"):
                if name == pattern[:-2] or fnmatch.fnmatchcase(name, pattern):
                    return index
            elif name == pattern:
                return index
    return None


def layer_problems(modules: Modules) -> list[str]:
    """Modules without a layer, and every import that reaches up to a higher layer."""
    problems = [
        f"{module_path(name, is_package)}: module {name} needs a layer "
        f"(add it to LAYERS in tests/test_layers.py and to README's Layout)"
        for name, (_, is_package) in sorted(modules.items())
        if layer_of(name) is None
    ]
    for edge in collect_edges(modules):
        source_layer, target_layer = layer_of(edge.source), layer_of(edge.target)
        if target_layer is None and edge.target not in modules:
            problems.append(f"{_where(edge, modules)} imports {edge.target}, "
                            f"which is not a module under src/{PACKAGE}")
        elif source_layer is not None and target_layer is not None and target_layer > source_layer:
            problems.append(f"{_where(edge, modules)} imports {edge.target} "
                            f"(layer {LAYERS[target_layer][0]} above {LAYERS[source_layer][0]})")
    return problems


# --- cycles ----------------------------------------------------------------------------


def import_graph(modules: Modules) -> dict[str, set[str]]:
    """Module -> modules it imports (only existing modules; a module importing itself is dropped)."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for edge in collect_edges(modules):
        if edge.target in modules and edge.target != edge.source:
            graph[edge.source].add(edge.target)
    return graph


def strongly_connected_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit); each component sorted."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    for root in sorted(graph):
        if root in index:
            continue
        # Each work item is (node, iterator over its remaining successors).
        work = [(root, iter(sorted(graph[root])))]
        index[root] = lowlink[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = lowlink[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    lowlink[node] = min(lowlink[node], index[succ])
            else:  # every successor visited: close `node`
                work.pop()
                if work:
                    parent = work[-1][0]
                    lowlink[parent] = min(lowlink[parent], lowlink[node])
                if lowlink[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def _example_cycle(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest loop [start, ..., last] through the component's first module (last imports start)."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for succ in sorted(graph[node] & members):
            if succ == start:
                loop = [node]
                while loop[-1] != start:
                    loop.append(came_from[loop[-1]])
                return loop[::-1]
            if succ not in came_from:
                came_from[succ] = node
                queue.append(succ)
    raise AssertionError(f"no loop in component {component}")  # impossible for an SCC of 2+


def import_cycles(modules: Modules) -> list[str]:
    """One message per import cycle: its modules and one example loop with file:line."""
    graph = import_graph(modules)
    lines = {(e.source, e.target): _where(e, modules) for e in reversed(collect_edges(modules))}
    messages = []
    for component in strongly_connected_components(graph):
        if len(component) < 2:
            continue
        loop = _example_cycle(component, graph)
        steps = " -> ".join(f"{a} ({lines[a, b]})" for a, b in zip(loop, loop[1:] + loop[:1]))
        messages.append(f"cycle among {', '.join(component)}: {steps} -> {loop[0]}")
    return messages


# --- file length -----------------------------------------------------------------------


def long_files(src_root: Path = SRC_ROOT, package: str = PACKAGE, limit: int = MAX_LINES) -> list[str]:
    """Files with `limit` or more lines, as 'relssl/x.py: N lines'."""
    offenders = []
    for path in sorted((src_root / package).rglob("*.py")):
        count = len(path.read_text(encoding="utf-8").splitlines())
        if count >= limit:
            offenders.append(f"{path.relative_to(src_root).as_posix()}: {count} lines")
    return offenders


# --- tests on the real tree ------------------------------------------------------------


def _report(title: str, problems: list[str]) -> str:
    return f"{title} ({len(problems)}):\n  " + "\n  ".join(problems)


def test_sources_found() -> None:
    modules = load_modules()
    assert PACKAGE in modules and f"{PACKAGE}.__main__" in modules, f"no sources under {SRC_ROOT}"


def test_imports_respect_layers() -> None:
    problems = layer_problems(load_modules())
    assert not problems, _report("layer violations", problems)


def test_no_import_cycles() -> None:
    cycles = import_cycles(load_modules())
    assert not cycles, _report("import cycles", cycles)


def test_source_files_are_short() -> None:
    offenders = long_files()
    assert not offenders, _report(f"files of {MAX_LINES} lines or more", offenders)


# --- tests of the checker on synthetic packages ----------------------------------------


def _pkg(files: dict[str, str]) -> Modules:
    """Synthetic modules from {path under src/: source}, e.g. {"relssl/data/__init__.py": ""}."""
    modules: Modules = {}
    for path, source in files.items():
        name, is_package = module_name(Path(path), Path())
        modules[name] = (source, is_package)
    return modules


BASE = _pkg({
    "relssl/__init__.py": "",
    "relssl/errors.py": "",
    "relssl/data/__init__.py": "",
    "relssl/data/load.py": "",
    "relssl/train/__init__.py": "",
    "relssl/train/optim.py": "",
    "relssl/evaluate/__init__.py": "",
})


def test_checker_finds_upward_import_inside_function() -> None:
    modules = {**BASE, **_pkg({"relssl/data/load.py": (
        "import os\n"
        "\n"
        "def load():\n"
        "    from relssl.train.optim import make\n"
        "    return make\n")})}
    assert layer_problems(modules) == [
        "relssl/data/load.py:4 imports relssl.train.optim (layer train above data/augment)"]


def test_checker_finds_upward_import_in_type_checking_and_try() -> None:
    modules = {**BASE, **_pkg({"relssl/evaluate/linear.py": (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import relssl.train as t\n"
        "try:\n"
        "    import relssl.train.optim\n"
        "except ImportError:\n"
        "    pass\n")})}
    assert layer_problems(modules) == [
        "relssl/evaluate/linear.py:3 imports relssl.train (layer train above evaluate)",
        "relssl/evaluate/linear.py:5 imports relssl.train.optim (layer train above evaluate)",
    ]


def test_checker_finds_relative_upward_import() -> None:
    modules = {**BASE, **_pkg({"relssl/evaluate/linear.py": "from ..train import optim\n"})}
    assert layer_problems(modules) == [
        "relssl/evaluate/linear.py:1 imports relssl.train.optim (layer train above evaluate)"]


def test_checker_resolves_relative_imports() -> None:
    modules = {**BASE, **_pkg({
        "relssl/data/__init__.py": "from .load import f\nfrom . import views\n",
        "relssl/data/views.py": "from . import load, missing\nfrom .load import f\nfrom .. import errors\n",
    })}
    edges = {(e.source, e.target, e.line) for e in collect_edges(modules)}
    assert edges == {
        ("relssl.data", "relssl.data.load", 1),
        ("relssl.data", "relssl.data.views", 2),
        ("relssl.data.views", "relssl.data.load", 1),
        ("relssl.data.views", "relssl.data", 1),  # `missing` is no module: an attribute of the package
        ("relssl.data.views", "relssl.data.load", 2),
        ("relssl.data.views", "relssl.errors", 3),
    }


def test_checker_accepts_a_clean_package() -> None:
    modules = {**BASE, **_pkg({
        "relssl/data/__init__.py": "from relssl.data.load import load\n",  # a package importing its submodule
        "relssl/data/load.py": "import numpy\nimport relssl.errors\nfrom relssl import errors\n",
        "relssl/train/optim.py": "from relssl.data import load\nfrom relssl.train import optim\n",
    })}
    assert layer_problems(modules) == []
    assert import_cycles(modules) == []


def test_checker_finds_two_module_cycle() -> None:
    modules = {**BASE, **_pkg({
        "relssl/data/load.py": "from relssl.data.cache import read\n",
        "relssl/data/cache.py": "def read():\n    from relssl.data import load\n",
    })}
    assert import_cycles(modules) == [
        "cycle among relssl.data.cache, relssl.data.load: "
        "relssl.data.cache (relssl/data/cache.py:2) -> relssl.data.load (relssl/data/load.py:1) "
        "-> relssl.data.cache"]


def test_checker_finds_submodule_importing_its_package_init() -> None:
    modules = {**BASE, **_pkg({
        "relssl/data/__init__.py": "from relssl.data.load import load\nclass Method: ...\n",
        "relssl/data/load.py": "from relssl.data import Method\n",
    })}
    assert import_cycles(modules) == [
        "cycle among relssl.data, relssl.data.load: "
        "relssl.data (relssl/data/__init__.py:1) -> relssl.data.load (relssl/data/load.py:1) -> relssl.data"]


def test_checker_requires_every_module_to_have_a_layer() -> None:
    modules = {**BASE, **_pkg({"relssl/newthing.py": ""})}
    assert layer_problems(modules) == [
        "relssl/newthing.py: module relssl.newthing needs a layer "
        "(add it to LAYERS in tests/test_layers.py and to README's Layout)"]


def test_checker_flags_imports_of_missing_modules() -> None:
    modules = {**BASE, **_pkg({"relssl/data/load.py": "import relssl.nowhere\n"})}
    assert layer_problems(modules) == [
        "relssl/data/load.py:1 imports relssl.nowhere, which is not a module under src/relssl"]


def test_long_files_reports_line_counts(tmp_path: Path) -> None:
    (tmp_path / "relssl").mkdir()
    (tmp_path / "relssl" / "short.py").write_text("x = 1\n" * 3)
    (tmp_path / "relssl" / "long.py").write_text("x = 1\n" * 5)
    assert long_files(tmp_path, "relssl", limit=5) == ["relssl/long.py: 5 lines"]


@pytest.mark.parametrize("name,layer", [
    ("relssl", "bottom"), ("relssl.config", "bottom"), ("relssl.data", "data/augment"),
    ("relssl.augment.ops", "data/augment"), ("relssl.cluster.tree", "models/losses/cluster"),
    ("relssl.cli", "cli"), ("relssl.__main__", "cli"), ("relssl.training", None),
    ("relssl.datasets.x", None),
])
def test_layer_of(name: str, layer: str | None) -> None:
    index = layer_of(name)
    assert (None if index is None else LAYERS[index][0]) == layer
