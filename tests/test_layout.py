"""The layout of gradcheck_cli (docs/architecture.md), checked on the source with `ast`: no import of
the package, so no torch, and fast.

- Stage imports. Each stage imports only what its `__init__` docstring allows. Every import counts,
  wherever it is (module level, inside a function, under `if TYPE_CHECKING:`): a lazy import is
  still a dependency. The shared vocabulary is errors, text, config and activations.
  analyse/ and report/ never import torch. report/ imports the vocabulary, the package root (for
  __version__) and itself. analyse/ imports the vocabulary, the root, measure/records.py and
  measure/series.py (plain records), report/ and itself. measure/ imports the vocabulary, target/
  and itself. target/ imports the vocabulary and itself. verify/ imports every stage but cli/.
  The vocabulary imports only the vocabulary.
  Nothing imports cli/ but cli/ and __main__, and the package root, api.py and integrations/,
  which import cli/watch.py (the public watch) and nothing else of cli/. integrations/ (the
  framework callbacks) imports the vocabulary, the root, measure/, analyse/ and report/ (for the
  types of the watch's options and report) and itself; nothing of the package imports integrations/.
- No import cycles among the package's modules, counting module-level imports only (imports inside
  functions and under `if TYPE_CHECKING:` run later or never, so they cannot deadlock an import).
  `from pkg import name` is an edge to pkg.name when that is a module, else to pkg's `__init__`.
- Size. No function over MAX_FUNCTION_LINES lines, counted from its first decorator (or `def`) to
  its last line, nested functions counted in the enclosing one too. A Typer command (decorated with
  `.command(...)` or `.callback(...)`) declares its options as parameter defaults, one per line by
  convention; it counts from its first body statement. No module over MAX_MODULE_LINES lines except
  the data tables in DATA_TABLES.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "gradcheck_cli"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 500
DATA_TABLES: frozenset[str] = frozenset()
"""Modules (dotted names) that are tables of data rather than code, allowed past MAX_MODULE_LINES."""

VOCABULARY = frozenset(f"{PACKAGE}.{name}" for name in ("errors", "text", "config", "activations"))
STAGES = ("cli", "target", "measure", "analyse", "verify", "report", "integrations")
WATCH = f"{PACKAGE}.cli.watch"
"""The only module of cli/ that the package root, api.py and integrations/ import: the public watch."""


@dataclass(frozen=True)
class Import:
    importer: str
    """The dotted name of the module that imports."""
    target: str
    """The dotted name imported: a module, a package, or (for `from m import name`) m.name."""
    line: int
    module_level: bool
    """At module level, outside `if TYPE_CHECKING:`: runs while the importer is being imported."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _absolute(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module of `from X import ...`, relative forms included."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[importer].name == "__init__.py"
    base = importer.split(".")[: len(importer.split(".")) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk_imports(importer: str, nodes: list[ast.AST], module_level: bool) -> list[Import]:
    found: list[Import] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [Import(importer, alias.name, node.lineno, module_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(importer, node)
            found += [Import(importer, f"{base}.{alias.name}", node.lineno, module_level) for alias in node.names]
        elif isinstance(node, ast.If) and _is_type_checking(node):
            found += _walk_imports(importer, list(node.body), False)
            found += _walk_imports(importer, list(node.orelse), module_level)
        else:  # a function's body runs when called; a class body runs at import, like the module's
            lazy = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            found += _walk_imports(importer, list(ast.iter_child_nodes(node)), module_level and not lazy)
    return found


def _imports() -> list[Import]:
    found: list[Import] = []
    for name, path in MODULES.items():
        found += _walk_imports(name, list(ast.parse(path.read_text(encoding="utf-8")).body), True)
    return found


IMPORTS = _imports()


def _resolve(target: str) -> str | None:
    """The package module a dotted import target lands on (m.name -> m when name is not a module)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _stage(module: str) -> str:
    """'cli', 'target', ... for a stage's modules; 'vocabulary', 'root', or the top-level name otherwise."""
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    if parts[1] in STAGES:
        return parts[1]
    return "vocabulary" if module in VOCABULARY else parts[1]


def _allowed(stage: str, target: str) -> bool:
    """May a module of `stage` import the package module `target`?"""
    other = _stage(target)
    rules = {
        "vocabulary": {"vocabulary"},
        "target": {"vocabulary", "target"},
        "measure": {"vocabulary", "target", "measure"},
        "analyse": {"vocabulary", "root", "analyse", "report"},
        "report": {"vocabulary", "root", "report"},
        "verify": {"vocabulary", "root", "target", "measure", "analyse", "report", "verify"},
        "integrations": {"vocabulary", "root", "measure", "analyse", "report", "integrations"},
    }
    if stage == "analyse" and target in (f"{PACKAGE}.measure.records", f"{PACKAGE}.measure.series"):
        return True
    if other == "cli":
        # The public watch (gradcheck_cli.watch, gradcheck_cli.api.watch) lives in cli/watch.py,
        # which writes and prints its report: the root, api.py and the framework callbacks
        # (integrations/) may import it, nothing else of cli/.
        return stage in ("cli", "__main__") or (stage in ("root", "api", "integrations") and target == WATCH)
    if other == "integrations":
        return stage == "integrations"
    return other in rules.get(stage, {other})


def _torch(imp: Import) -> bool:
    return imp.target == "torch" or imp.target.startswith("torch.")


def test_analyse_and_report_never_import_torch() -> None:
    offenders = [f"{i.importer}:{i.line} imports {i.target}" for i in IMPORTS
                 if _stage(i.importer) in ("analyse", "report") and _torch(i)]
    assert offenders == []


def test_each_stage_imports_only_what_its_init_allows() -> None:
    offenders = []
    for imp in IMPORTS:
        target = _resolve(imp.target) if imp.target.startswith(PACKAGE) else None
        if target is not None and not _allowed(_stage(imp.importer), target):
            offenders.append(f"{imp.importer}:{imp.line} imports {target}")
    assert offenders == []


def test_the_import_walker_sees_lazy_and_type_checking_imports() -> None:
    source = ("import torch\nif TYPE_CHECKING:\n    from a import B\nclass C:\n    import c\n"
              "def f():\n    import d\ntry:\n    import e\nexcept ImportError:\n    import g\n")
    found = {(i.target, i.module_level) for i in _walk_imports("m", list(ast.parse(source).body), True)}
    assert found == {("torch", True), ("a.B", False), ("c", True), ("d", False), ("e", True), ("g", True)}


def test_the_stage_rules() -> None:
    pkg = PACKAGE
    assert _allowed("analyse", f"{pkg}.measure.records") and not _allowed("analyse", f"{pkg}.measure.probe")
    assert _allowed("analyse", f"{pkg}.report.records") and not _allowed("report", f"{pkg}.analyse.stats")
    assert not _allowed("target", f"{pkg}.measure.records") and _allowed("measure", f"{pkg}.target.losses")
    assert not _allowed("measure", f"{pkg}.analyse.stats") and not _allowed("api", f"{pkg}.cli.app")
    assert _allowed("__main__", f"{pkg}.cli.app") and _allowed("cli", f"{pkg}.api")
    assert not _allowed("vocabulary", f"{pkg}.report.records")
    assert _allowed("root", f"{pkg}.cli.watch") and _allowed("api", f"{pkg}.cli.watch")
    assert not _allowed("root", f"{pkg}.cli.app") and not _allowed("measure", f"{pkg}.cli.watch")
    assert _allowed("integrations", f"{pkg}.cli.watch") and _allowed("integrations", f"{pkg}.measure.output_loss")
    assert not _allowed("integrations", f"{pkg}.cli.app") and not _allowed("integrations", f"{pkg}.target.resolve")
    assert not _allowed("integrations", f"{pkg}.verify.run") and not _allowed("api", f"{pkg}.integrations.lightning")
    assert not _allowed("cli", f"{pkg}.integrations.huggingface") and _allowed("integrations", f"{pkg}.errors")


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for imp in IMPORTS:
        target = _resolve(imp.target) if imp.module_level and imp.target.startswith(PACKAGE) else None
        if target is not None and target != imp.importer:
            graph[imp.importer].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _is_typer_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for decorator in node.decorator_list:
        call = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(call, ast.Attribute) and call.attr in ("command", "callback"):
            return True
    return False


def _function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = node.body[0].lineno if _is_typer_command(node) else min(
        [node.lineno] + [d.lineno for d in node.decorator_list])
    return (node.end_lineno or node.lineno) - first + 1


def _long_functions(source: str, module: str) -> list[str]:
    return [f"{module}:{node.lineno} {node.name} ({_function_lines(node)} lines)"
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and _function_lines(node) > MAX_FUNCTION_LINES]


def test_no_function_over_60_lines() -> None:
    offenders = [line for name, path in MODULES.items()
                 for line in _long_functions(path.read_text(encoding="utf-8"), name)]
    assert offenders == []


def test_function_length_counts_decorators_and_the_body_of_typer_commands() -> None:
    body = "".join("    x = 1\n" for _ in range(59))
    plain = f"@cache\ndef f(\n    a,\n):\n{body}"
    assert _long_functions(plain, "m") == ["m:2 f (63 lines)"]
    command = f"@app.command()\ndef scan(\n    a=typer.Option(1),\n):\n{body}    return x\n"
    assert _long_functions(command, "m") == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_over_500_lines(name: str) -> None:
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert name in DATA_TABLES or lines <= MAX_MODULE_LINES, f"{name}: {lines} lines"
