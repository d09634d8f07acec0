"""Start-up does no expensive work: nothing hashes at import; `tokenlife resource serve` never loads argon2.

Each check runs in a fresh interpreter, so what this test process imported before cannot hide an import.
"""

from __future__ import annotations

import json
import subprocess
import sys

HASHING = ("argon2", "auth_service.accounts.passwords")


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
