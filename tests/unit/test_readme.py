"""The README's Python samples run as written: every import path they show exists and they build their app."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
SAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_python_samples() -> None:
    assert SAMPLES


@pytest.mark.parametrize("sample", SAMPLES, ids=[f"sample{i}" for i in range(len(SAMPLES))])
def test_a_readme_python_sample_runs(sample: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Dev mode, so the sample's settings need no production secrets; building an app connects to nothing.
    monkeypatch.setenv("TOKENLIFE_ENV", "dev")
    namespace: dict[str, object] = {}
    exec(compile(sample, str(README), "exec"), namespace)
    assert "app" in namespace
