"""`python -m benchmarks [producer] [archiver]`: run the benchmarks (all by default) and print the table."""

from __future__ import annotations

import sys

from benchmarks import ingestion
from benchmarks.common import report


def main(argv: list[str]) -> None:
    selected = set(argv)
    known = {"producer", "archiver"}
    if selected - known:
        sys.exit(f"unknown benchmark(s) {sorted(selected - known)}; choose from {sorted(known)}")
    report(ingestion.run(selected))


if __name__ == "__main__":
    main(sys.argv[1:])
