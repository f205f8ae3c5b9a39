"""Benchmarks: `make bench` (or `python -m benchmarks [NAME…]`) prints a table with the hardware and writes
JSON to benchmarks/results/. Each figure is the median of several runs; this machine is shared and noisy."""
