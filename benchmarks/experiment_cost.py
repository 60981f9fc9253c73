"""What each experiment of a finished workflow run cost, from Snakemake's benchmark files.

Every job writes a benchmark table (``<results>/benchmarks/...`` for the per-round jobs, beside
the checkpoint for extraction and evaluation): its wall seconds ``s`` and CPU seconds
``cpu_time``. This sums them per experiment (the first folder under ``<results>`` or
``<results>/benchmarks``; ``shared`` holds the jobs every experiment shares) and gives each
experiment's sums as ratios to one experiment of the same run (``--relative-to``), so that the
figures mean something on a machine that other work slows down: a job's wall time stretches with
the load, the ratio between experiments measured side by side much less.

    .venv/bin/python benchmarks/experiment_cost.py results/demo --relative-to calr

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

SHARED = "shared"


def benchmark_files(results: Path) -> list[Path]:
    return sorted(
        {*results.glob("benchmarks/**/*.tsv"), *results.glob("**/*.benchmark.tsv")},
    )


def experiment_of(path: Path, results: Path) -> str:
    parts = path.relative_to(results).parts
    if parts[0] == "benchmarks":
        parts = parts[1:]
    return parts[0] if len(parts) > 1 and not parts[0].startswith("seed") else SHARED


def costs(results: Path) -> pd.DataFrame:
    rows = []
    for path in benchmark_files(results):
        table = pd.read_csv(path, sep="\t")
        rows.append(
            {
                "experiment": experiment_of(path, results),
                "jobs": len(table),
                "wall_s": float(table["s"].sum()),
                "cpu_s": float(table["cpu_time"].sum()),
            }
        )
    if not rows:
        raise SystemExit(f"{results}: no benchmark files; run the workflow first")
    return pd.DataFrame(rows).groupby("experiment").sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the workflow's results folder")
    parser.add_argument("--relative-to", default="calr", help="experiment the ratios refer to")
    args = parser.parse_args()
    table = costs(args.results)
    if args.relative_to not in table.index:
        raise SystemExit(f"no experiment {args.relative_to!r}; found {', '.join(table.index)}")
    reference = table.loc[args.relative_to]
    table["wall_ratio"] = table["wall_s"] / reference["wall_s"]
    table["cpu_ratio"] = table["cpu_s"] / reference["cpu_s"]
    print(table.round(3).to_string())
    print(
        json.dumps(
            {
                "results": str(args.results),
                "relative_to": args.relative_to,
                "experiments": table.round(3).reset_index().to_dict(orient="records"),
                "total_wall_s": round(float(table["wall_s"].sum()), 1),
                "total_cpu_s": round(float(table["cpu_s"].sum()), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
