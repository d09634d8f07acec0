"""Draws the latency distributions of one run into docs/benchmark-latency.png (matplotlib, bench extra)."""

from __future__ import annotations

from pathlib import Path

from bench.results import Results


def draw(results: Results, path: Path) -> bool:
    """One cumulative distribution per case on a log time axis; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(9, 5.6))
    for name, values in results.distributions.items():
        if not values:
            continue
        ordered = sorted(values)
        share = [(i + 1) / len(ordered) for i in range(len(ordered))]
        ax.plot(ordered, share, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("microseconds per request (log scale)")
    ax.set_ylabel("share of requests at or below")
    ax.set_title("What a revocation check costs, and how long a revocation takes to arrive")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
