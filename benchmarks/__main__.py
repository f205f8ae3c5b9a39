"""`python -m benchmarks [producer] [archiver] [broker] [freshness] [speed] [batch] [serving] [azure]`: run
benchmarks (all by default), print the table and write the JSON. `BENCH_RUNS` sets the runs per benchmark
(default 3)."""

from __future__ import annotations

import sys

from benchmarks import azure, batch, ingestion, serving, speed
from benchmarks.common import report

GROUPS = {
    "producer": ingestion,
    "archiver": ingestion,
    "broker": ingestion,
    "freshness": speed,
    "speed": speed,
    "batch": batch,
    "serving": serving,
    "azure": azure,
}


def main(argv: list[str]) -> None:
    selected = set(argv)
    if selected - GROUPS.keys():
        sys.exit(f"unknown benchmark(s) {sorted(selected - GROUPS.keys())}; choose from {sorted(GROUPS)}")
    results = []
    for module in (ingestion, speed, batch, serving, azure):
        wanted = {name for name, owner in GROUPS.items() if owner is module}
        if not selected or selected & wanted:
            results += module.run(selected & wanted)
    report(results)


if __name__ == "__main__":
    main(sys.argv[1:])
