"""The package's imports run one way, with no circle (docs/architecture.md, "Layers").

Why a test: a circle (cli -> train -> cli) makes import order matter and lets a lower layer
quietly depend on a higher one; the graph is read from the source with `ast`, so an import
inside a function counts as much as one at the top of a file.
"""
from __future__ import annotations

import ast
from pathlib import Path

import metaad_dist

PACKAGE = "metaad_dist"

# Lowest first; a module may import its own layer and those below. The commands layer is what
# the CLI dispatches to, read from cli.py itself (see command_modules).
LAYERS = (
    ("base", (PACKAGE, f"{PACKAGE}.errors", f"{PACKAGE}.config")),
    ("core", tuple(f"{PACKAGE}.{p}" for p in ("data", "episodes", "model", "meta"))),
    ("engine", tuple(f"{PACKAGE}.{p}" for p in ("train", "eval", "tune"))),
    ("commands", ()),
    ("cli", (f"{PACKAGE}.cli", f"{PACKAGE}.__main__")),
)
# What evaluation (eval/) may import from train/: the one training entry point, the stored run,
# the split a run used and where runs live (and the empty package itself, as in
# `from metaad_dist.train import api`); never the loops (local, ray_trainer, fusion).
EVAL_MAY_IMPORT_FROM_TRAIN = {f"{PACKAGE}.train", *(f"{PACKAGE}.train.{m}" for m in ("api", "artifacts", "setup", "commands"))}


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under `root` (a package's __init__ is the package)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = (package, *path.relative_to(root).with_suffix("").parts)
        modules[".".join(parts).removesuffix(".__init__")] = path
    return modules


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its file (to the longest known name)."""
    modules = module_files(root, package)
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in _imported_names(ast.parse(path.read_text()), module, path.name == "__init__.py"):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def command_modules(graph: dict[str, set[str]]) -> set[str]:
    """The modules cli.py dispatches to (prepare, train, tune, evaluate, score), less the base layer."""
    base = set(LAYERS[0][1])
    return graph[f"{PACKAGE}.cli"] - base


def layer_of(module: str, commands: set[str]) -> int:
    if module in commands:
        return [name for name, _ in LAYERS].index("commands")
    ranked = [(len(prefix), rank) for rank, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
              if module == prefix or (prefix != PACKAGE and module.startswith(prefix + "."))]
    if not ranked:
        raise AssertionError(f"{module} is in no layer of LAYERS; add it where it belongs")
    return max(ranked)[1]


def upward_imports(graph: dict[str, set[str]], commands: set[str]) -> list[str]:
    return sorted(
        f"{src} ({LAYERS[layer_of(src, commands)][0]}) imports {dst} ({LAYERS[layer_of(dst, commands)][0]})"
        for src, targets in graph.items() for dst in targets
        if layer_of(dst, commands) > layer_of(src, commands)
    )


def _graph() -> dict[str, set[str]]:
    return import_graph(Path(metaad_dist.__file__).parent, PACKAGE)


def test_no_import_circle_among_the_package_modules():
    assert circles(_graph()) == []


def test_no_module_imports_a_higher_layer():
    graph = _graph()
    commands = command_modules(graph)
    assert {f"{PACKAGE}.train.launch", f"{PACKAGE}.eval.evaluate", f"{PACKAGE}.eval.score_command"} <= commands
    assert upward_imports(graph, commands) == []


def test_evaluation_reaches_training_only_through_its_entry_point():
    graph = _graph()
    crossings = sorted(
        f"{src} imports {dst}" for src, targets in graph.items() if src.startswith(f"{PACKAGE}.eval")
        for dst in targets if dst.startswith(f"{PACKAGE}.train") and dst not in EVAL_MAY_IMPORT_FROM_TRAIN
    )
    assert crossings == []
    assert f"{PACKAGE}.train.api" in graph[f"{PACKAGE}.eval.baselines.inner_only"]


def test_the_checks_catch_a_circle_and_an_upward_import(tmp_path):
    """The checker on a tiny package: an import inside a function still closes a circle, a
    relative import resolves, and a core module importing the CLI is flagged."""
    pkg = tmp_path / PACKAGE
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("def main():\n    from metaad_dist.data import reader\n")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "reader.py").write_text("from . import writer\n")
    (pkg / "data" / "writer.py").write_text("def f():\n    from metaad_dist import cli\n")
    graph = import_graph(pkg, PACKAGE)
    assert graph[f"{PACKAGE}.data.reader"] == {f"{PACKAGE}.data", f"{PACKAGE}.data.writer"}
    assert circles(graph) == [sorted([f"{PACKAGE}.cli", f"{PACKAGE}.data.reader", f"{PACKAGE}.data.writer"])]
    commands = command_modules(graph)
    assert upward_imports(graph, commands) == [f"{PACKAGE}.data.writer (core) imports {PACKAGE}.cli (cli)"]


# A module should do one job that its first line names; past about this many lines it does several
# (docs/architecture.md). Counted with docstrings and comments: what a reader scrolls through.
MAX_MODULE_LINES = 420


def module_shape_problems(root: Path, package: str) -> list[str]:
    """Modules over MAX_MODULE_LINES, or whose file does not open with a docstring saying what it is for."""
    problems = []
    for module, path in module_files(root, package).items():
        text = path.read_text()
        lines = text.count("\n") + (not text.endswith("\n") and bool(text))
        if lines > MAX_MODULE_LINES:
            problems.append(f"{module}: {lines} lines (at most {MAX_MODULE_LINES}); split it by responsibility")
        body = ast.parse(text).body
        first = body[0] if body else None
        opens_with_docstring = (
            isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
            and first.lineno == 1 and first.value.value.strip()
        )
        if not opens_with_docstring:
            problems.append(f"{module}: the file's first line is not a docstring saying what the module is for")
    return problems


def test_every_module_is_small_and_says_what_it_is_for():
    assert module_shape_problems(Path(metaad_dist.__file__).parent, PACKAGE) == []


def test_the_shape_check_catches_a_long_module_and_a_missing_docstring(tmp_path):
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "__init__.py").write_text('"""A package."""\n')
    (root / "long.py").write_text('"""Too long."""\n' + "x = 1\n" * MAX_MODULE_LINES)
    (root / "bare.py").write_text("import os\n")
    (root / "fine.py").write_text('"""Fine."""\nimport os\n')
    problems = module_shape_problems(root, "pkg")
    assert len(problems) == 2
    assert problems[0].startswith("pkg.bare: the file's first line is not a docstring")
    assert problems[1].startswith(f"pkg.long: {MAX_MODULE_LINES + 1} lines")
