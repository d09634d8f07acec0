"""Module boundaries the architecture depends on: who may import whom, pure cores, no import cycles."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("auth_service", "resource_service", "tokenlife", "looplag", "amqpkit", "tracekit", "bench")
IO_LIBRARIES = {
    "sqlalchemy",
    "asyncpg",
    "aio_pika",
    "aiormq",
    "httpx",
    "fastapi",
    "starlette",
    "uvicorn",
    "redis",
}
# Modules that decide without doing I/O: they must not import (even through our own modules) an I/O library.
PURE_CORES = (
    "resource_service.check.state",
    "resource_service.check.freshness",
    "resource_service.check.guard",
    "resource_service.check.verifier",
    "auth_service.contract",
    "auth_service.tokens.access",
    "auth_service.tokens.keyring",
    "auth_service.log.lifetimes",
    "auth_service.tokens.grant_rules",
    "auth_service.log.intents",
    "auth_service.accounts.backoff",
    "auth_service.errors",
)


def _module_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    return files


MODULES = _module_files()


def _imports(path: Path) -> set[str]:
    """Every absolute import in a file, anywhere in it (a function-level import is an import too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _our_modules(path: Path) -> set[str]:
    """The project modules a file imports (`from pkg import mod` counts as importing pkg.mod)."""
    return {name for name in _imports(path) if name in MODULES}


def _closure(module: str) -> Iterator[str]:
    seen, todo = {module}, [module]
    while todo:
        current = todo.pop()
        yield current
        for name in _our_modules(MODULES[current]):
            if name not in seen:
                seen.add(name)
                todo.append(name)


def test_resource_service_imports_only_the_contract_from_auth_service() -> None:
    offenders = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / "resource_service").rglob("*.py")
        for name in _imports(path)
        if name.startswith("auth_service")
        and name not in ("auth_service", "auth_service.contract")
        and not name.startswith("auth_service.contract.")
    }
    assert not offenders


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("auth_service", ("resource_service", "tokenlife")),
        ("resource_service", ("tokenlife",)),
        ("looplag", ("auth_service", "resource_service", "tokenlife")),
        ("amqpkit", ("auth_service", "resource_service", "tokenlife", "looplag")),
        ("tracekit", ("auth_service", "resource_service", "tokenlife", "looplag", "amqpkit")),
    ],
)
def test_a_service_imports_neither_the_other_nor_the_command_line(
    package: str, forbidden: tuple[str, ...]
) -> None:
    offenders = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / package).rglob("*.py")
        for name in _imports(path)
        if name.split(".")[0] in forbidden
    }
    assert not offenders


def test_the_contract_imports_only_the_standard_library_and_pydantic() -> None:
    """Every module of the contract package: the standard library, pydantic, and the package itself."""
    allowed = set(sys.stdlib_module_names) | {"pydantic", "__future__"}
    files = sorted((ROOT / "auth_service" / "contract").rglob("*.py"))
    assert files
    offenders = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in files
        for name in _imports(path)
        if name.split(".")[0] not in allowed
        and name != "auth_service.contract"
        and not name.startswith("auth_service.contract.")
    }
    assert not offenders


@pytest.mark.parametrize("core", PURE_CORES)
def test_a_pure_core_imports_no_io_library_even_indirectly(core: str) -> None:
    offenders = {
        f"{module}: {name}"
        for module in _closure(core)
        for name in _imports(MODULES[module])
        if name.split(".")[0] in IO_LIBRARIES
    }
    assert not offenders


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


@pytest.mark.parametrize("package", ["auth_service", "resource_service", "bench"])
def test_no_import_cycles(package: str) -> None:
    graph = {
        name: {dep for dep in _our_modules(path) if dep.startswith(package) and dep != name}
        for name, path in MODULES.items()
        if name.startswith(package)
    }
    # A package's __init__ is imported with each of its modules; an edge into it from inside is no cycle.
    for name in graph:
        graph[name] = {dep for dep in graph[name] if not name.startswith(dep + ".")}
    assert not _cycles(graph)


# The packages of each service from the bottom up, and what each may import of its own service. A leaf module
# (errors, settings of the resource service) or the contract may be imported from anywhere below the top.
LAYERS = {
    "auth_service.db": {"auth_service.errors"},
    "auth_service.log": {"auth_service.errors", "auth_service.contract", "auth_service.db"},
    "auth_service.tokens": {
        "auth_service.errors",
        "auth_service.contract",
        "auth_service.db",
        "auth_service.log",
    },
    "auth_service.accounts": {"auth_service.errors", "auth_service.db"},
    "resource_service.check": {"resource_service.errors"},
    "resource_service.feed": {
        "resource_service.check",
        "resource_service.errors",
        "resource_service.settings",
    },
    "resource_service.web": {
        "resource_service.check",
        "resource_service.feed",
        "resource_service.errors",
        "resource_service.settings",
    },
}


def _package_of(module: str, package: str) -> str:
    """The first-level package or module of `package` that `module` belongs to."""
    return ".".join(module.split(".")[:2]) if module.startswith(package + ".") else module


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_a_lower_package_imports_nothing_above_it(layer: str) -> None:
    service = layer.split(".")[0]
    allowed = LAYERS[layer] | {layer}
    offenders = {
        f"{module}: {dep}"
        for module, path in MODULES.items()
        if module == layer or module.startswith(layer + ".")
        for dep in _our_modules(path)
        if dep.startswith(service + ".") and _package_of(dep, service) not in allowed
    }
    assert not offenders


@pytest.mark.parametrize("package", ["auth_service", "resource_service"])
def test_no_import_cycles_between_packages(package: str) -> None:
    """Modules may not cycle, and neither may the folders they sit in (log -> tokens -> log would)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        if not name.startswith(package + "."):
            continue
        source = _package_of(name, package)
        deps = {_package_of(dep, package) for dep in _our_modules(path) if dep.startswith(package + ".")}
        graph.setdefault(source, set()).update(deps - {source})
    for deps in graph.values():
        for dep in deps:
            graph.setdefault(dep, set())
    assert not _cycles(graph)


def test_every_package_says_what_it_owns() -> None:
    """Each package's __init__ opens with a docstring (what it owns and what it may import)."""
    undocumented = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("__init__.py")
        if ast.get_docstring(ast.parse(path.read_text())) is None
    ]
    assert not undocumented


MAX_MODULE_LINES = 300


def test_a_module_past_300_lines_says_why_in_its_docstring() -> None:
    """Split a module before it passes ~300 lines; one that stays longer says why ("Long because ...")."""
    long = [
        f"{name}: {len(path.read_text().splitlines())} lines"
        for name, path in MODULES.items()
        if not name.startswith("bench")
        and len(path.read_text().splitlines()) > MAX_MODULE_LINES
        and "Long because" not in (ast.get_docstring(ast.parse(path.read_text())) or "")
    ]
    assert not long


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    """Written the way log and projections once imported each other."""
    (tmp_path / "a.py").write_text("from auth_service.b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from auth_service.a import y\n")
    graph = {
        "auth_service.a": {n for n in _imports(tmp_path / "a.py") if n.count(".") == 1},
        "auth_service.b": {n for n in _imports(tmp_path / "b.py") if n.count(".") == 1},
    }
    assert _cycles(graph) == [["auth_service.a", "auth_service.b", "auth_service.a"]]
