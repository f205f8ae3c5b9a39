"""Serving benchmark: `GET /api/v1/sensors/<id>/metrics` for one day of 5-minute windows (288 points), from
`lambdaflow serve` (gunicorn, the default workers and threads) with a SQLite store holding a week of 50
sensors' published batch rows; the load comes from a separate process (benchmarks/load.py) that rotates
over the 50 sensors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from datetime import date, datetime, time, timedelta
from pathlib import Path

from benchmarks.common import ROOT, Result, lambdaflow, wait_for

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
SECONDS = float(os.environ.get("BENCH_SERVE_SECONDS", "15"))
CONNECTIONS = int(os.environ.get("BENCH_SERVE_CONNECTIONS", "8"))
SENSORS, DAYS = 50, 7
LAST_DAY = date(2026, 11, 1)


def fill_store(url: str) -> None:
    from lambdaflow import store

    engine = store.engine(url)
    for back in range(DAYS - 1, -1, -1):
        day = LAST_DAY - timedelta(days=back)
        start = datetime.combine(day, time())
        rows = [
            {
                "window_start": start + timedelta(minutes=5 * w),
                "sensor_id": f"sensor-{s:03d}",
                "location": f"site-{s % 5}",
                "events": 12,
                "temperature_avg": 20 + s / 10 + w / 288,
                "temperature_min": 19.0,
                "temperature_max": 25.0,
                "humidity_avg": 45.5,
                "pressure_avg": 1012.25,
                "battery_min": 80.0 - w / 100,
            }
            for s in range(SENSORS)
            for w in range(288)
        ]
        store.publish_day(engine, day, {"sensor_stats": rows})
    engine.dispose()


def measure(data_dir: Path, cache_seconds: float) -> list[dict[str, float]]:
    """Start `lambdaflow serve` on the filled store and run the load generator RUNS times."""
    from lambdaflow.broker import free_port

    port = free_port()
    env = {**os.environ, "LAMBDAFLOW_DATA_DIR": str(data_dir), "LAMBDAFLOW_SERVE_PORT": str(port),
           "LAMBDAFLOW_SERVE_CACHE_SECONDS": str(cache_seconds), "PYTHONPATH": str(ROOT)}  # fmt: skip
    env.pop("LAMBDAFLOW_API_TOKEN", None)
    server = lambdaflow(["serve"], env)
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return urllib.request.urlopen(base + "/api/v1/sensors", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_for(answers, 60, "lambdaflow serve")
        query = f"from={LAST_DAY}T00:00:00Z&to={LAST_DAY + timedelta(days=1)}T00:00:00Z"
        urls = [f"{base}/api/v1/sensors/sensor-{s:03d}/metrics?{query}" for s in range(SENSORS)]
        body = json.loads(urllib.request.urlopen(urls[0], timeout=5).read())
        assert len(body["points"]) == 288 and body["points"][0]["source"] == "batch", body
        outcomes = []
        for _ in range(RUNS):
            command = [sys.executable, "-m", "benchmarks.load", *urls, "--seconds", str(SECONDS),
                       "--connections", str(CONNECTIONS)]  # fmt: skip
            done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
            outcomes.append(json.loads(done.stdout))
        return outcomes
    finally:
        server.terminate()
        server.wait(timeout=30)


def run(selected: set[str]) -> list[Result]:
    import tempfile

    results = []
    with tempfile.TemporaryDirectory(prefix="lambdaflow-bench-serve-") as temporary:
        fill_store(f"sqlite:///{Path(temporary) / 'serving.db'}")
        for cache_seconds, label in ((10.0, ""), (0.0, " (answer cache off)")):
            outcomes = measure(Path(temporary), cache_seconds)
            throughput = Result(
                f"serve: sensor-day metrics{label}",
                "req/s",
                [o["requests_per_s"] for o in outcomes],
                "≥ 1,500" if not label else "",
            )
            latency = Result(f"serve: sensor-day p99{label}", "ms", [o["p99_ms"] for o in outcomes],
                             "≤ 25" if not label else "")  # fmt: skip
            if not label:
                throughput.meets_target = throughput.median >= 1500
                latency.meets_target = latency.median <= 25
            throughput.notes = {"connections": CONNECTIONS, "seconds per run": SECONDS,
                                "errors": sum(o["errors"] for o in outcomes),
                                "p50 ms": [round(o["p50_ms"], 1) for o in outcomes]}  # fmt: skip
            results += [throughput, latency]
    return results
