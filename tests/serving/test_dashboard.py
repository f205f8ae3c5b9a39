"""The dashboard, served by `lambdaflow serve` (gunicorn), rendered by Debian's headless Chromium: its charts
carry data from both layers, its tables the alerts and quality runs. The screenshot is kept in
`test-artifacts/dashboard.png`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

from lambdaflow import store
from lambdaflow.broker import free_port
from lambdaflow.settings import load_settings
from tests.conftest import LAMBDAFLOW, ROOT

pytestmark = pytest.mark.integration
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
    "--virtual-time-budget=10000",
]


def fill_store(url: str) -> int:
    """Windows of the last 24 hours: yesterday's published by batch, today's in the speed tables; some alerts
    and a quality run. Returns the number of windows."""
    engine = store.connect(url)
    now = datetime.now(UTC).replace(tzinfo=None)
    today = datetime(now.year, now.month, now.day)
    newest = now.replace(minute=now.minute - now.minute % 5, second=0, microsecond=0)
    windows = [newest - timedelta(minutes=5 * k) for k in range(23 * 12)][::-1]  # 23 h: all on the page
    rows: dict[str, list[dict]] = {"sensor_stats": [], "location_stats": [], "activity_stats": []}
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
    yesterday = (today - timedelta(days=1)).date()
    store.publish_day(
        engine, yesterday, {v: [r for r in rs if r["window_start"] < today] for v, rs in rows.items()}
    )
    for view, view_rows in rows.items():
        speed = [{**r, "updated_at": now} for r in view_rows if r["window_start"] >= today]
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
    engine.dispose()
    return len(windows)


@pytest.fixture
def served(tmp_path):
    port = free_port()
    env = {
        "LAMBDAFLOW_DATA_DIR": str(tmp_path / "data"),
        "LAMBDAFLOW_SERVE_PORT": str(port),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
    }
    windows = fill_store(load_settings(data_dir=tmp_path / "data").resolved_store_url)
    server = subprocess.Popen([*LAMBDAFLOW, "serve"], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(base + "/api/v1/sensors", timeout=2)
            break
        except OSError:
            assert server.poll() is None, server.stderr.read()
            assert time.monotonic() < deadline, "lambdaflow serve did not answer within 60 s"
            time.sleep(0.3)
    yield base, windows
    server.terminate()
    server.wait(timeout=20)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (`make browser`)")
def test_dashboard_renders_both_layers_in_headless_chromium(served, tmp_path):
    served, windows = served
    ARTIFACTS.mkdir(exist_ok=True)
    profile = ["--user-data-dir=" + str(tmp_path / "chromium")]
    dom = subprocess.run(
        ["chromium", *CHROMIUM_FLAGS, *profile, "--dump-dom", served + "/"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    points = dict(re.findall(r'<svg id="([a-z-]+)"[^>]*data-points="(\d+)"', dom))
    assert int(points["temperature-chart"]) == 2 * windows, points  # both locations, batch and speed windows
    assert int(points["activity-chart"]) == 2 * windows and int(points["revenue-chart"]) == windows, points
    assert dom.count('class="horizon"') == 3, "the batch/speed boundary is drawn on every chart"
    assert 'id="status" class="badge down"' in dom  # no stream reports progress in this test
    assert dom.count("temperature_high") == 4 and "raw_iot_sensors" in dom
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    subprocess.run(
        ["chromium", *CHROMIUM_FLAGS, *profile, f"--screenshot={shot}", served + "/"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 20_000
