from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lambdaflow import store
from lambdaflow.broker import free_port
from lambdaflow.settings import load_settings
from lambdaflow.views import VIEWS
from serving.app import create_app
from tests.conftest import LAMBDAFLOW, ROOT


@pytest.fixture
def make_client(tmp_path):
    """A test client of the real app on a real (SQLite, unless `store_url`) store in a fresh data dir."""

    def make(**overrides):
        settings = load_settings(data_dir=tmp_path / "data", **overrides)
        app = create_app(settings)
        return app, app.test_client()

    return make


def fill_store(url: str) -> int:
    """Windows of the last 23 hours: yesterday's published by batch, today's in the speed tables, sessions
    in both layers; some alerts, a quality run and the stream's progress. Returns the number of windows."""
    engine = store.engine(url)
    now = datetime.now(UTC).replace(tzinfo=None)
    today = datetime(now.year, now.month, now.day)
    newest = now.replace(minute=now.minute - now.minute % 5, second=0, microsecond=0)
    windows = [newest - timedelta(minutes=5 * k) for k in range(23 * 12)][::-1]  # 23 h: all on the page
    rows: dict[str, list[dict]] = {
        "sensor_stats": [],
        "location_stats": [],
        "device_health": [],
        "activity_stats": [],
        "sessions": [],
    }
    for k, window in enumerate(windows):
        for location, warmth in (("lab", 0.0), ("roof", 4.0)):
            t = 20.0 + warmth + (k % 7) / 7
            rows["sensor_stats"].append(
                {
                    "window_start": window,
                    "sensor_id": f"s-{location}",
                    "location": location,
                    "events": 3,
                    "temperature_avg": t,
                    "temperature_min": t - 1,
                    "temperature_max": t + 1,
                    "humidity_avg": 40.0,
                    "pressure_avg": 1000.0,
                    "battery_min": 80.0,
                }
            )
            rows["location_stats"].append(
                {
                    "window_start": window,
                    "location": location,
                    "events": 6,
                    "sensors": 2,
                    "temperature_avg": t,
                    "temperature_max": t + 1,
                }
            )
            if window.minute == 0:  # hourly
                rows["device_health"].append(
                    {
                        "window_start": window,
                        "sensor_id": f"s-{location}",
                        "readings": 36,
                        "battery_min": 80.0 - warmth,
                        "battery_last": 81.0 - warmth,
                        "last_seen": window + timedelta(minutes=59),
                        "alert_share": warmth / 16,
                    }
                )
        for event_type, revenue in (("page_view", 0.0), ("purchase", 12.5 + k)):
            rows["activity_stats"].append(
                {
                    "window_start": window,
                    "event_type": event_type,
                    "browser": "firefox",
                    "events": 3 + k % 5,
                    "users": 2,
                    "revenue": revenue,
                }
            )
        if k % 12 == 0:
            rows["sessions"].append(
                {
                    "session_id": f"session-{k}",
                    "session_start": window,
                    "user_id": f"u{k % 3}",
                    "session_end": window + timedelta(minutes=k % 9),
                    "duration_s": 60.0 * (k % 9),
                    "events": 4,
                    "purchases": k % 2,
                    "revenue": 12.5 * (k % 2),
                }
            )
    yesterday = (today - timedelta(days=1)).date()
    store.publish_day(
        engine, yesterday, {v: [r for r in rs if r[VIEWS[v].time_column] < today] for v, rs in rows.items()}
    )
    for view, view_rows in rows.items():
        speed = [{**r, "updated_at": now} for r in view_rows if r[VIEWS[view].time_column] >= today]
        store.upsert(engine, store.SPEED_TABLES[view], speed)
    store.insert_new(
        engine,
        store.alerts,
        [
            {
                "alert_id": f"a{i}",
                "rule": "temperature_high",
                "ts": now - timedelta(minutes=i),
                "subject": "s-roof",
                "value": 31.0 + i,
                "threshold": 30.0,
                "event": json.dumps({"event_id": f"e{i}"}),
                "created_at": now,
            }
            for i in range(4)
        ],
    )
    store.upsert(
        engine,
        store.quality_runs,
        [
            {
                "day": yesterday,
                "suite": "raw_iot_sensors",
                "success": True,
                "failed": "[]",
                "link": None,
                "statistics": json.dumps({"evaluated_expectations": 9, "successful_expectations": 9}),
                "run_at": now,
            }
        ],
    )
    store.upsert(
        engine,
        store.stream_progress,
        [
            {
                "query": "speed_iot_sensors",
                "batch_id": 7,
                "input_rows": 10,
                "invalid_rows": 1,
                "late_rows": 2,
                "max_event_ts": now,
                "watermark": now - timedelta(minutes=10),
                "updated_at": now,
            }
        ],
    )
    engine.dispose()
    return len(windows)


@contextlib.contextmanager
def serve_filled_store(data_dir: Path, **env: str) -> Iterator[tuple[str, str, int]]:
    """`lambdaflow serve` (Granian) on a filled store with a token made for it: (base URL, token,
    windows). `env` adds settings."""
    port = free_port()
    token = secrets.token_urlsafe(24)
    environment = {
        "LAMBDAFLOW_DATA_DIR": str(data_dir),
        "LAMBDAFLOW_SERVE_PORT": str(port),
        "LAMBDAFLOW_API_TOKEN": token,
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    windows = fill_store(load_settings(data_dir=data_dir).resolved_store_url)
    server = subprocess.Popen(
        [*LAMBDAFLOW, "serve"], env=environment, cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_served(server, base + "/api/v1/sensors", token)
        yield base, token, windows
    finally:
        server.terminate()
        server.wait(timeout=20)


def wait_until_served(server: subprocess.Popen, url: str, token: str, seconds: float = 60) -> None:
    """Wait until a server process answers `url` (any status), failing with its output if it exits."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(request, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            assert server.poll() is None, server.stderr.read() if server.stderr else server.returncode
            assert time.monotonic() < deadline, f"{url} did not answer within {seconds:.0f} s"
            time.sleep(0.3)
