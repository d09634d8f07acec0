"""`python -m bench.report`: the targets and figures of bench/results/latest.json as Markdown tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

LATEST = Path(__file__).resolve().parent / "results" / "latest.json"


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.3g} {unit}" if abs(value) < 1000 else f"{value:,.0f} {unit}"


def markdown(run: dict[str, Any]) -> str:
    """The targets table, then the figures table."""
    lines = ["| target | this run | wanted | verdict |", "| --- | --- | --- | --- |"]
    for t in run["targets"]:
        verdict = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['name']} | {_number(t['value'], t['unit'])} | {t['target']} | {verdict} |")
    lines += ["", "| case | median | p99 |", "| --- | --- | --- |"]
    for r in run["results"]:
        lines.append(f"| {r['case']} | {_number(r['median'], r['unit'])} | {_number(r['p99'], r['unit'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown(json.loads(LATEST.read_text())))
