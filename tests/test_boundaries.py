"""Module boundaries the architecture depends on."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


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


def test_the_contract_imports_only_the_standard_library_and_pydantic() -> None:
    import sys

    allowed = set(sys.stdlib_module_names) | {"pydantic", "__future__"}
    roots = {name.split(".")[0] for name in _imports(ROOT / "auth_service" / "contract.py")}
    assert roots <= allowed, roots - allowed
