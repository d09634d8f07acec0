"""Draws one revocation's trace as a waterfall (docs/trace-logout.png) from the spans the services printed
with `OTEL_TRACES_EXPORTER=console` (their logs under `tokenlife dev`: .tokenlife/auth.log and resource.log).

    python -m bench.trace_picture TRACE_ID .tokenlife/auth.log .tokenlife/resource.log [OUT.png]

The console exporter writes each span as an indented JSON object starting with `{` and ending with `}` at the
start of a line; everything else in the logs is skipped. Only the spans of the trace are drawn, in order of
their start, each labelled with its service, name and the attributes an operator asks for.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

SHOWN = (
    "tokenlife.position",
    "tokenlife.transport",
    "tokenlife.instance",
    "tokenlife.refused_after_apply_ms",
)


def spans_in(path: Path) -> list[dict[str, Any]]:
    """Every span object the console exporter wrote into a log file."""
    found: list[dict[str, Any]] = []
    block: list[str] | None = None
    for line in path.read_text(errors="replace").splitlines():
        if line == "{":
            block = [line]
        elif block is not None:
            block.append(line)
            if line == "}":
                found.append(json.loads("\n".join(block)))
                block = None
    return found


def _time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def draw(trace_id: str, logs: list[Path], out: Path) -> int:
    """The waterfall of one trace's spans; how many were drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wanted = trace_id.lower().removeprefix("0x")
    spans = [
        s for path in logs for s in spans_in(path) if s["context"]["trace_id"].removeprefix("0x") == wanted
    ]
    spans.sort(key=lambda s: _time(s["start_time"]))
    if not spans:
        return 0
    origin = _time(spans[0]["start_time"])
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(spans) + 1.4))
    for row, span in enumerate(spans):
        start = (_time(span["start_time"]) - origin) * 1000
        width = max((_time(span["end_time"]) - _time(span["start_time"])) * 1000, 0.15)
        service = span["resource"]["attributes"].get("service.name", "?")
        color = "tab:blue" if service.endswith("auth") else "tab:orange"
        ax.barh(row, width, left=start, color=color, height=0.6)
        if width < 1.0:  # a moment (an apply, a refusal): a mark, or it would not show at this scale
            ax.plot([start], [row], marker="D", color=color, markersize=6)
        details = ", ".join(
            f"{k.split('.')[-1]}={span['attributes'][k]}" for k in SHOWN if k in span["attributes"]
        )
        label = f"{service}: {span['name']}" + (f" ({details})" if details else "")
        ax.text(start + width + 0.3, row, label, va="center", fontsize=8)
    ax.set_yticks([])
    ax.invert_yaxis()
    ax.set_xlabel("milliseconds since the logout request arrived")
    ax.set_title(
        f"One logout, one trace ({wanted})\nauth service in blue, resource service in orange", fontsize=10
    )
    right = max((_time(s["end_time"]) - origin) * 1000 for s in spans)
    ax.set_xlim(0, right * 2.8 + 1)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return len(spans)


def main() -> int:
    """Command line: trace id, log files, and optionally where to write the picture."""
    if len(sys.argv) < 3:
        print(__doc__)  # noqa: T201
        return 2
    args = [Path(a) for a in sys.argv[2:]]
    out = args.pop() if args[-1].suffix == ".png" else Path("docs/trace-logout.png")
    drawn = draw(sys.argv[1], args, out)
    print(f"{drawn} spans drawn into {out}")  # noqa: T201
    return 0 if drawn else 1


if __name__ == "__main__":
    sys.exit(main())
