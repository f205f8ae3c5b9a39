"""The import rules of the layout, read from the source with `ast` (nothing is imported): the kernel
(`lambdaflow/`) imports no layer and not the composition root (`cli/`); a layer imports the kernel and never
another layer or `cli/`; and the project's modules import each other without a cycle at module level."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KERNEL = "lambdaflow"
LAYERS = ("ingestion", "speed", "batch", "serving", "expectations")
COMPOSITION_ROOT = "cli"
# what tests and benchmarks start on this machine in place of production's services
LOCAL_SERVICES = "local_services"
PACKAGES = (KERNEL, *LAYERS, COMPOSITION_ROOT, "dags", LOCAL_SERVICES, "benchmarks", "tests")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the project module it imports
    line: int
    module_level: bool  # run when the module is imported (not inside a function, not only for type checkers)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if not any(
                part.startswith(".") or part == "__pycache__" for part in path.relative_to(ROOT).parts
            ):
                found[_module_name(path)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(body: list[ast.stmt], module_level: bool) -> Iterator[tuple[ast.stmt, bool]]:
    """Every statement with whether it runs at import: function bodies and `if TYPE_CHECKING:` do not."""
    for node in body:
        yield node, module_level
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _statements(node.body, False)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _statements(node.body, False)
            yield from _statements(node.orelse, module_level)
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    inner = [child for child in children if isinstance(child, ast.stmt)]
                    for child in children:  # except handlers and match cases hold statements
                        if isinstance(child, ast.excepthandler | ast.match_case):
                            inner += child.body
                    yield from _statements(inner, module_level)


def _imports(module: str, path: Path, modules: set[str]) -> list[Import]:
    """The project modules `module` imports: `from a import b` means `a.b` where that is a module."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node, module_level in _statements(tree.body, True):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `import a.b.c` of a name inside a module: its module
                name = name.rpartition(".")[0]
            if name and name != module:
                found.append(Import(module, name, node.lineno, module_level))
    return found


@functools.cache
def _all_imports() -> tuple[Import, ...]:
    sources = _sources()
    return tuple(found for module, path in sources.items() for found in _imports(module, path, set(sources)))


def _top(module: str) -> str:
    return module.partition(".")[0]


def _where(found: Import) -> str:
    return f"{found.module} (line {found.line}) imports {found.target}"


def test_the_kernel_imports_no_layer_and_not_the_composition_root():
    above = {*LAYERS, COMPOSITION_ROOT, "dags", LOCAL_SERVICES, "benchmarks", "tests"}
    wrong = [_where(i) for i in _all_imports() if _top(i.module) == KERNEL and _top(i.target) in above]
    assert not wrong, "the kernel must import nothing above it:\n" + "\n".join(wrong)


def test_a_layer_imports_the_kernel_and_no_other_layer():
    forbidden = {*LAYERS, COMPOSITION_ROOT, "dags", LOCAL_SERVICES, "benchmarks", "tests"}
    wrong = [
        _where(i)
        for i in _all_imports()
        if _top(i.module) in LAYERS and _top(i.target) in forbidden and _top(i.target) != _top(i.module)
    ]
    assert not wrong, "a layer imports only the kernel (and itself):\n" + "\n".join(wrong)


def test_benchmarks_and_local_services_import_no_test_module():
    wrong = [
        _where(i)
        for i in _all_imports()
        if _top(i.module) in {"benchmarks", LOCAL_SERVICES} and _top(i.target) == "tests"
    ]
    assert not wrong, "benchmarks and the local services do not depend on the tests:\n" + "\n".join(wrong)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, as the modules along it (the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _graph(module_level_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for found in _all_imports():
        if found.module_level or not module_level_only:
            graph.setdefault(found.module, set()).add(found.target)
    return graph


def test_the_module_level_imports_have_no_cycle():
    cycle = _cycle(_graph(module_level_only=True))
    assert cycle is None, "an import cycle: " + " -> ".join(cycle or [])


def test_no_cycle_hides_in_imports_inside_functions():
    """An import inside a function defers a cycle to the first call; the modules still depend both ways."""
    cycle = _cycle(_graph(module_level_only=False))
    assert cycle is None, "an import cycle (counting imports inside functions): " + " -> ".join(cycle or [])


def test_the_checks_see_imports_inside_functions_and_find_cycles():
    source = ROOT / "cli" / "main.py"  # imports the layers inside its commands
    found = _imports("cli.main", source, set(_sources()))
    assert any(i.target == "ingestion.topics" and not i.module_level for i in found)
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
