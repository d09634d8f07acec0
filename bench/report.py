"""`python -m bench.report [PATH]`: the targets and figures of a results file (default
bench/results/latest.json) as Markdown tables."""

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
    """The targets table, the bound's scenario table (bench/bound.py) if the run has one, then the figures."""
    lines = ["| target | this run | wanted | verdict |", "| --- | --- | --- | --- |"]
    for t in run["targets"]:
        verdict = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['name']} | {_number(t['value'], t['unit'])} | {t['target']} | {verdict} |")
    scenarios = [r for r in run["results"] if "scenario" in r]
    if scenarios:
        lines += [
            "",
            "| scenario | logouts | probes | worst delay | violations |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in scenarios:
            delay = _number(r["median"], r["unit"])
            cells = [r["scenario"], r["logouts"], r["probes"], delay, r["violations"]]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    figures = [r for r in run["results"] if "scenario" not in r]
    if figures:
        lines += ["", "| case | median | p99 |", "| --- | --- | --- |"]
    for r in figures:
        median, p99 = _number(r["median"], r["unit"]), _number(r["p99"], r["unit"])
        lines.append(f"| {r['case']} | {median} | {p99} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else LATEST
    sys.stdout.write(markdown(json.loads(path.read_text())))
