"""Serving benchmark: `GET /api/v1/sensors/<id>/metrics` for one day of 5-minute windows (288 points), from
`lambdaflow serve` (Granian, the default workers and threads) with a SQLite store holding a week of 50
sensors' published batch rows, with the answer cache on and off; the load comes from a separate process
(benchmarks/load.py) that rotates over the 50 sensors. Its floor, in the same run: the same answers from a
bare WSGI function over sqlite3 under the same server settings (benchmarks/bare_serving.py); and beside it
that function as the one route of a plain Flask app, which shows what Flask's own request handling costs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from datetime import date, datetime, time, timedelta
from pathlib import Path

import psutil

from benchmarks.common import ROOT, Result, lambdaflow, log_tail, wait_for

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


# The app with its answer cache on, off, the floor (a bare WSGI function over sqlite3, same server) and the
# floor inside Flask.
SERVERS = ("cached", "uncached", "bare", "bare_in_flask")


def _start_servers(data_dir: Path, logs: Path) -> dict[str, tuple[str, subprocess.Popen]]:
    """`lambdaflow serve` with the answer cache on and off, and the bare floor, each on a port of its own:
    each one's base URL and process."""
    from lambdaflow.broker import free_port

    ports = {name: free_port() for name in SERVERS}
    env = {**os.environ, "LAMBDAFLOW_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    env.pop("LAMBDAFLOW_API_TOKEN", None)
    servers = {}
    for name, cache_seconds in (("cached", 10.0), ("uncached", 0.0)):
        serve_env = {**env, "LAMBDAFLOW_SERVE_PORT": str(ports[name]),
                     "LAMBDAFLOW_SERVE_CACHE_SECONDS": str(cache_seconds)}  # fmt: skip
        servers[name] = lambdaflow(["serve"], serve_env, log=logs / f"{name}.log")
    database = str(data_dir / "serving.db")
    for name, flags in (("bare", []), ("bare_in_flask", ["--in-flask"])):
        bare = [sys.executable, "-m", "benchmarks.bare_serving", database, "--port", str(ports[name]), *flags]
        with (logs / f"{name}.log").open("a") as log:
            servers[name] = subprocess.Popen(bare, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return {name: (f"http://127.0.0.1:{ports[name]}", servers[name]) for name in SERVERS}


def _urls(base: str) -> list[str]:
    query = f"from={LAST_DAY}T00:00:00Z&to={LAST_DAY + timedelta(days=1)}T00:00:00Z"
    return [f"{base}/api/v1/sensors/sensor-{s:03d}/metrics?{query}" for s in range(SENSORS)]


def _cpu_seconds(pid: int) -> float:
    """CPU time used so far by a process and its children (the server's main process and workers)."""
    root = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in (root, *root.children(recursive=True)))


def measure(data_dir: Path) -> dict[str, list[dict[str, float]]]:
    """Start the servers on the filled store and load each in turn, RUNS times: the app and its floor
    share every minute of the run, so the machine's load weighs on both alike. Besides the load generator's
    figures, each outcome has the server's and the generator's CPU time per request, which other processes
    on the machine move far less than the rate."""
    servers = _start_servers(data_dir, data_dir / "logs")
    try:
        for name, (base, _) in servers.items():
            wait_for(lambda base=base: _answers(_urls(base)[0]), 60, f"the {name} server")
        bodies = {name: urllib.request.urlopen(_urls(base)[0], timeout=5).read()
                  for name, (base, _) in servers.items()}  # fmt: skip
        body = json.loads(bodies["cached"])
        assert len(body["points"]) == 288 and body["points"][0]["source"] == "batch", body
        assert len(set(bodies.values())) == 1, "the floor must answer the same bytes as the app"
        outcomes: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        for _ in range(RUNS):
            for name, (base, server) in servers.items():
                command = [sys.executable, "-m", "benchmarks.load", *_urls(base), "--seconds", str(SECONDS),
                           "--connections", str(CONNECTIONS)]  # fmt: skip
                cpu_before = _cpu_seconds(server.pid)
                done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
                outcome = json.loads(done.stdout)
                requests = max(outcome["requests"], 1)
                outcome["server_cpu_ms"] = (_cpu_seconds(server.pid) - cpu_before) * 1000 / requests
                outcome["client_cpu_ms"] = outcome["cpu_s"] * 1000 / requests
                outcomes[name].append(outcome)
        return outcomes
    except Exception:
        for name in servers:
            log = log_tail(data_dir / "logs" / f"{name}.log")
            print(f"--- {name} server log ---\n{log}", file=sys.stderr)
        raise
    finally:
        for _, server in servers.values():
            server.terminate()
        for _, server in servers.values():
            server.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


# Per answer-cache setting: the label, and the targets for requests/s and p99 ms.
TARGETS = {"cached": ("", 3000, 10), "uncached": (" (answer cache off)", 1500, 25)}
# Within this factor of the floor: requests/s at least floor / FLOOR_FACTOR, p99 at most floor * FLOOR_FACTOR.
FLOOR_FACTOR = 2


def run(selected: set[str]) -> list[Result]:
    import tempfile

    results = []
    with tempfile.TemporaryDirectory(prefix="lambdaflow-bench-serve-") as temporary:
        fill_store(f"sqlite:///{Path(temporary) / 'serving.db'}")
        outcomes = measure(Path(temporary))
        bare = outcomes["bare"]
        for name, (label, rate_target, p99_target) in TARGETS.items():
            runs = outcomes[name]
            throughput = Result(
                f"serve: sensor-day metrics{label}",
                "req/s",
                [o["requests_per_s"] for o in runs],
                f"≥ {rate_target:,}, ≥ floor/{FLOOR_FACTOR}",
                floor_runs=[o["requests_per_s"] for o in bare],
            )
            latency = Result(
                f"serve: sensor-day p99{label}",
                "ms",
                [o["p99_ms"] for o in runs],
                f"≤ {p99_target}, ≤ floor×{FLOOR_FACTOR}",
                floor_runs=[o["p99_ms"] for o in bare],
            )
            assert throughput.ratio is not None and latency.ratio is not None
            throughput.meets_target = (
                throughput.median >= rate_target and throughput.ratio >= 1 / FLOOR_FACTOR
            )
            latency.meets_target = latency.median <= p99_target and latency.ratio <= FLOOR_FACTOR
            throughput.notes = {
                "connections": CONNECTIONS, "seconds per run": SECONDS,
                "errors": sum(o["errors"] for o in runs) + sum(o["errors"] for o in bare),
                "p50 ms": [round(o["p50_ms"], 1) for o in runs],
                "floor p50 ms": [round(o["p50_ms"], 1) for o in bare],
                "server CPU ms per request": [round(o["server_cpu_ms"], 2) for o in runs],
                "floor server CPU ms per request": [round(o["server_cpu_ms"], 2) for o in bare],
                "load generator CPU ms per request": [round(o["client_cpu_ms"], 2) for o in runs],
            }  # fmt: skip
            results += [throughput, latency]
        in_flask = outcomes["bare_in_flask"]
        results.append(Result(
            "serve: the floor inside one Flask route (no cache)", "req/s",
            [o["requests_per_s"] for o in in_flask], "— (what Flask itself costs)",
            notes={"errors": sum(o["errors"] for o in in_flask),
                   "p99 ms": [round(o["p99_ms"], 2) for o in in_flask],
                   "server CPU ms per request": [round(o["server_cpu_ms"], 2) for o in in_flask]},
            floor_runs=[o["requests_per_s"] for o in bare],
        ))  # fmt: skip
    return results
