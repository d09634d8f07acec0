"""The benchmarks: `python -m bench` runs them all, prints a table, writes bench/results/latest.json."""
