"""The results of one benchmark run: rows (figures beside their baselines), targets, and latency samples.

A benchmark module adds to one `Results`: `row()` for a figure, `target()` for a target with its verdict,
`samples()` for a latency distribution drawn in docs/. `write()` saves bench/results/latest.json, which is
committed so that the figures and which targets hold can be read without running anything.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def median_p99(samples: list[float]) -> tuple[float, float]:
    """The median and 99th percentile of samples."""
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@dataclass
class Results:
    """Everything one run measured."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    distributions: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def row(
        self,
        case: str,
        samples: list[float] | None = None,
        *,
        value: float | None = None,
        unit: str = "us",
        note: str = "",
    ) -> dict[str, Any]:
        """Add a figure: from latency samples (us; median and p99) or a single value."""
        entry: dict[str, Any] = {"case": case, "unit": unit, "note": note}
        if samples:
            entry["n"] = len(samples)
            entry["median"], entry["p99"] = median_p99(samples)
        else:
            entry["median"] = value
            entry["p99"] = None
        self.rows.append(entry)
        return entry

    def skipped(self, case: str, reason: str) -> None:
        """Add a row that says why a case was not measured."""
        self.rows.append(
            {"case": case, "unit": "", "median": None, "p99": None, "note": f"skipped: {reason}"}
        )

    def target(
        self, name: str, value: float | None, unit: str, target: str, met: bool | None, why: str = ""
    ) -> None:
        """Add a target and whether this run met it (None: not measured); `why` says where the time goes."""
        entry: dict[str, Any] = {"name": name, "value": value, "unit": unit, "target": target, "met": met}
        if why:
            entry["why"] = why
        self.targets.append(entry)

    def samples(self, name: str, values: list[float]) -> None:
        """Keep a latency distribution (us) for the picture."""
        self.distributions[name] = values

    def print(self) -> None:
        """The rows and the targets as text tables."""
        width = max(len(str(r["case"])) for r in self.rows)
        print(f"{'case':<{width}}  {'median':>12}  {'p99':>12}  note")  # noqa: T201
        for r in self.rows:
            median = "-" if r["median"] is None else f"{r['median']:.4g} {r['unit']}"
            p99 = "-" if r["p99"] is None else f"{r['p99']:.4g} {r['unit']}"
            print(f"{r['case']!s:<{width}}  {median:>12}  {p99:>12}  {r['note']}")  # noqa: T201
        print()  # noqa: T201
        for t in self.targets:
            verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
            value = "-" if t["value"] is None else f"{t['value']:.4g} {t['unit']}"
            print(f"{verdict:>12}  {t['name']}: {value} (target {t['target']})")  # noqa: T201

    def write(self, path: Path) -> None:
        """Save the run as JSON (machine, date, rows, targets, distributions)."""
        payload = {
            "taken_at": datetime.now(UTC).isoformat(),
            "machine": {
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "processor": platform.machine(),
                "cpus": os.cpu_count(),
            },
            "targets": self.targets,
            "results": self.rows,
            "notes": self.notes,
            "distributions_us": {k: [round(v, 2) for v in vs] for k, vs in self.distributions.items()},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1) + "\n")
