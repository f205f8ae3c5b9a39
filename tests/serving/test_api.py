"""The API's contract on a real store: parameter errors (400), unknown ids (404), the token (401), alerts and
quality filters against the rows put in, health, and the OpenAPI document. The merge itself: test_merge.py."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, date, datetime, timedelta

import pytest

from lambdaflow import store

NOW = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
TODAY = datetime(NOW.year, NOW.month, NOW.day)


def sensor_row(window: datetime, sensor: str = "s-1", location: str = "lab") -> dict:
    return {
        "window_start": window,
        "sensor_id": sensor,
        "location": location,
        "events": 3,
        "temperature_avg": 21.0,
        "temperature_min": 20.0,
        "temperature_max": 22.0,
        "humidity_avg": 40.0,
        "pressure_avg": 1000.0,
        "battery_min": 90.0,
    }


@pytest.fixture
def filled(make_client):
    app, client = make_client()
    engine = app.extensions["lambdaflow.store"]
    store.upsert(
        engine,
        store.SPEED_TABLES["sensor_stats"],
        [{**sensor_row(NOW - timedelta(minutes=10)), "updated_at": NOW}],
    )
    store.upsert(
        engine,
        store.SPEED_TABLES["location_stats"],
        [
            {
                "window_start": NOW - timedelta(minutes=10),
                "location": "lab",
                "events": 3,
                "sensors": 1,
                "temperature_avg": 21.0,
                "temperature_max": 22.0,
                "updated_at": NOW,
            }
        ],
    )
    return app, client, engine


BAD_REQUESTS = [
    ("/api/v1/sensors/s-1/metrics?from=yesterday", "from"),
    ("/api/v1/sensors/s-1/metrics?to=2026-13-01T00:00:00", "to"),
    ("/api/v1/sensors/s-1/metrics?from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z", "from"),
    ("/api/v1/sensors/s-1/metrics?from=2026-11-01T00:00:00Z&to=2026-11-01T00:00:00Z", "from"),
    ("/api/v1/sensors/s-1/metrics?from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z", "from"),
    ("/api/v1/sensors/s-1/metrics?from=2999-01-01T00:00:00Z", "from"),
    ("/api/v1/sensors/s-1/metrics?color=red", "color"),
    ("/api/v1/locations/lab/metrics?to=noon", "to"),
    ("/api/v1/activity?from=2026-11-01T00:00:00Z&to=2026-10-01T00:00:00Z", "from"),
    ("/api/v1/activity?event_type=", "event_type"),
    ("/api/v1/sessions?min_duration_s=-1", "min_duration_s"),
    ("/api/v1/sessions?min_duration_s=long", "min_duration_s"),
    ("/api/v1/alerts?rule=too_hot", "rule"),
    ("/api/v1/alerts?limit=0", "limit"),
    ("/api/v1/alerts?limit=1001", "limit"),
    ("/api/v1/alerts?limit=ten", "limit"),
    ("/api/v1/alerts?since=2026-11-01T25:00:00", "since"),
    ("/api/v1/quality?days=0", "days"),
]


@pytest.mark.parametrize(("url", "parameter"), BAD_REQUESTS)
def test_a_bad_parameter_is_a_400_naming_it(filled, url, parameter):
    _, client, _ = filled
    response = client.get(url)
    assert response.status_code == 400, response.get_json()
    body = response.get_json()
    assert body["parameter"] == parameter
    assert parameter in body["error"]


def test_unknown_ids_are_404_and_known_ids_without_data_are_empty(filled):
    _, client, _ = filled
    for url in ("/api/v1/sensors/nope/metrics", "/api/v1/locations/nowhere/metrics"):
        response = client.get(url)
        assert response.status_code == 404
        assert "nope" in response.get_json()["error"] or "nowhere" in response.get_json()["error"]
    old = client.get("/api/v1/sensors/s-1/metrics?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z")
    assert old.status_code == 200 and old.get_json()["points"] == []
    assert client.get("/api/v1/nothing").status_code == 404
    assert client.get("/quality/").status_code == 404  # no Data Docs built yet


def test_device_health_of_one_sensor_merges_both_layers_and_404s_an_unknown_one(filled):
    """/sensors/<id>/health: batch hours before the horizon, speed hours from it, each point's source; a
    sensor with no health row in either layer is a 404, as for its metrics."""
    _, client, engine = filled
    hour = datetime(NOW.year, NOW.month, NOW.day, NOW.hour)
    health = {
        "sensor_id": "s-1",
        "readings": 12,
        "battery_min": 40.0,
        "battery_last": 41.5,
        "alert_share": 0.25,
    }
    yesterday = TODAY - timedelta(hours=1)
    last_seen = yesterday + timedelta(minutes=58)
    store.publish_day(engine, yesterday.date(), {
        "device_health": [{**health, "window_start": yesterday, "last_seen": last_seen}]
    })  # fmt: skip
    store.upsert(engine, store.SPEED_TABLES["device_health"], [{
        **health, "window_start": hour, "last_seen": hour, "readings": 1, "alerting_readings": 0,
        "last_event_id": "e1", "alert_share": 0.0, "updated_at": NOW,
    }])  # fmt: skip
    window = {"from": (TODAY - timedelta(days=1)).isoformat(), "to": (hour + timedelta(hours=1)).isoformat()}
    body = client.get("/api/v1/sensors/s-1/health", query_string=window).get_json()
    assert body["sensor_id"] == "s-1" and body["batch_as_of"] == TODAY.isoformat() + "Z"
    assert [(p["window_start"], p["source"], p["readings"], p["alert_share"]) for p in body["points"]] == [
        (yesterday.isoformat() + "Z", "batch", 12, 0.25),
        (hour.isoformat() + "Z", "speed", 1, 0.0),
    ]
    assert set(body["points"][0]) == {
        "window_start", "readings", "battery_min", "battery_last", "last_seen", "alert_share", "source"
    }  # fmt: skip
    response = client.get("/api/v1/sensors/nope/health")
    assert response.status_code == 404 and "nope" in response.get_json()["error"]


def test_times_without_a_zone_are_utc_and_zones_are_converted(filled):
    _, client, _ = filled
    window = NOW - timedelta(minutes=10)
    plus_two = (window + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00")
    naive = window.strftime("%Y-%m-%dT%H:%M:%S")
    for start in (plus_two, naive):
        body = client.get("/api/v1/sensors/s-1/metrics", query_string={"from": start}).get_json()
        assert [p["window_start"] for p in body["points"]] == [window.isoformat() + "Z"]
        assert body["batch_as_of"] is None and body["points"][0]["source"] == "speed"


def test_the_token_guards_everything_but_health_and_the_page_shell(make_client):
    _, client = make_client(api_token="s3cret-token")
    for url in ("/api/v1/sensors", "/api/v1/alerts", "/api/openapi.json", "/quality/", "/api/docs/"):
        response = client.get(url)
        assert response.status_code == 401, url
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "Bearer" in response.get_json()["error"]
        assert client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get(url, headers={"Authorization": "s3cret-token"}).status_code == 401
    good = {"Authorization": "Bearer s3cret-token"}
    assert client.get("/api/v1/sensors", headers=good).status_code == 200
    client.set_cookie("lambdaflow_token", "s3cret-token")  # what the dashboard sets after the token prompt
    assert client.get("/api/v1/sensors").status_code == 200
    client.delete_cookie("lambdaflow_token")
    assert client.get("/health").status_code in (200, 503)  # no token needed; 503: no stream running
    page = client.get("/")
    assert page.status_code == 200 and b'data-token-required="true"' in page.data
    assert b"21.0" not in page.data


def test_alerts_filter_by_rule_and_time_newest_first_with_a_limit(filled):
    _, client, engine = filled
    rules = ("temperature_high", "battery_low", "session_long", "temperature_anomaly")
    rows = [
        {
            "alert_id": f"a{i:03d}",
            "rule": rules[i % 4],
            "ts": NOW - timedelta(minutes=i),
            "subject": "s-1",
            "value": float(i),
            "threshold": 30.0,
            "event": json.dumps({"event_id": f"e{i}"}),
            "created_at": NOW,
        }
        for i in range(40)
    ]
    store.insert_new(engine, store.alerts, rows)
    since = NOW - timedelta(minutes=20)
    body = client.get(
        "/api/v1/alerts", query_string={"rule": "battery_low", "since": since.isoformat(), "limit": 3}
    ).get_json()
    expected = sorted(
        (r for r in rows if r["rule"] == "battery_low" and r["ts"] >= since),
        key=lambda r: r["ts"],
        reverse=True,
    )[:3]
    assert [a["alert_id"] for a in body["alerts"]] == [r["alert_id"] for r in expected]
    assert body["alerts"][0]["event"] == json.loads(expected[0]["event"])
    assert len(client.get("/api/v1/alerts").get_json()["alerts"]) == 40
    assert len(client.get("/api/v1/alerts?limit=7").get_json()["alerts"]) == 7


def test_quality_gives_the_newest_days_runs_with_links(filled):
    app, client, engine = filled
    days = [date(2026, 11, d) for d in (1, 2, 3)]
    store.upsert(
        engine,
        store.quality_runs,
        [
            {
                "day": day,
                "suite": suite,
                "success": suite != "reconcile",
                "link": f"validations/{suite}.html",
                "statistics": json.dumps({"evaluated_expectations": 4, "successful_expectations": 4}),
                "failed": "[]",
                "run_at": NOW,
            }
            for day in days
            for suite in ("raw_iot_sensors", "reconcile")
        ],
    )
    runs = client.get("/api/v1/quality?days=2").get_json()["runs"]
    assert [(r["day"], r["suite"]) for r in runs] == [
        ("2026-11-03", "raw_iot_sensors"),
        ("2026-11-03", "reconcile"),
        ("2026-11-02", "raw_iot_sensors"),
        ("2026-11-02", "reconcile"),
    ]
    assert runs[1]["success"] is False and runs[0]["link"] == "/quality/validations/raw_iot_sensors.html"
    docs = app.extensions["lambdaflow.settings"].quality_dir / "data_docs"
    (docs / "validations").mkdir(parents=True)
    (docs / "index.html").write_text("<h1>Data Docs</h1>")
    (docs / "validations" / "raw_iot_sensors.html").write_text("<p>raw</p>")
    assert client.get("/quality/").data == b"<h1>Data Docs</h1>"
    assert client.get(runs[0]["link"]).data == b"<p>raw</p>"
    assert client.get("/quality/../serving.db").status_code == 404


def test_health_is_503_until_the_stream_reports_and_when_the_store_is_gone(filled):
    app, client, engine = filled
    response = client.get("/health")
    assert response.status_code == 503 and response.get_json()["stream"]["ok"] is False
    progress = {
        "query": "speed_iot_sensors",
        "batch_id": 7,
        "input_rows": 10,
        "invalid_rows": 1,
        "late_rows": 2,
        "max_event_ts": NOW,
        "watermark": NOW - timedelta(minutes=10),
    }
    store.upsert(engine, store.stream_progress, [{**progress, "updated_at": datetime.now(UTC)}])
    store.upsert(engine, store.horizons, [{"view": "sensor_stats", "horizon": TODAY}])
    settings = app.extensions["lambdaflow.settings"]
    (settings.lake_dir / "views" / "sensor_stats" / "date=2026-11-01").mkdir(parents=True)
    body = client.get("/health").get_json()
    assert body["status"] == "ok" and body["store"]["ok"] is True
    recomputed = datetime.fromisoformat(body["batch"]["last_recompute"].replace("Z", ""))
    assert abs((recomputed - datetime.now(UTC).replace(tzinfo=None)).total_seconds()) < 60
    assert body["batch"]["horizons"]["sensor_stats"] == TODAY.isoformat() + "Z"
    assert body["stream"]["queries"][0]["batch_id"] == 7 and body["stream"]["queries"][0]["late_rows"] == 2
    store.upsert(engine, store.stream_progress, [{**progress, "updated_at": NOW - timedelta(hours=1)}])
    assert client.get("/health").status_code == 503
    shutil.rmtree(app.extensions["lambdaflow.settings"].data_dir)  # the SQLite store disappears
    engine.dispose()
    response = client.get("/health")
    assert response.status_code == 503
    assert response.get_json()["store"]["ok"] is False and response.get_json()["status"] == "down"


def test_sensors_lists_both_layers_and_the_openapi_document_covers_every_endpoint(filled):
    _, client, engine = filled
    store.publish_day(
        engine,
        (TODAY - timedelta(days=2)).date(),
        {"sensor_stats": [sensor_row(TODAY - timedelta(days=2), "s-0", "roof")]},
    )
    sensors = client.get("/api/v1/sensors").get_json()["sensors"]
    assert [(s["sensor_id"], s["location"]) for s in sensors] == [("s-0", "roof"), ("s-1", "lab")]
    spec = client.get("/api/openapi.json").get_json()
    assert {
        "/api/v1/sensors",
        "/api/v1/sensors/{sensor_id}/metrics",
        "/api/v1/sensors/{sensor_id}/health",
        "/api/v1/locations/{location}/metrics",
        "/api/v1/activity",
        "/api/v1/sessions",
        "/api/v1/alerts",
        "/api/v1/quality",
    } <= set(spec["paths"])
    path = spec["paths"]["/api/v1/sensors/{sensor_id}/metrics"]
    names = {p["name"] for p in path.get("parameters", []) + path["get"]["parameters"]}
    assert {"from", "to", "sensor_id"} <= names
    docs = client.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.data.lower()


def test_answers_before_the_horizon_are_cached_until_the_horizon_moves(make_client):
    app, client = make_client()  # the default: answers kept 10 s
    _, uncached = make_client(serve_cache_seconds=0)
    engine = app.extensions["lambdaflow.store"]
    day = (TODAY - timedelta(days=3)).date()
    window = TODAY - timedelta(days=3)
    url = (
        f"/api/v1/sensors/s-1/metrics?from={window.isoformat()}&to={(window + timedelta(days=1)).isoformat()}"
    )

    def temperature(answer_of) -> float:
        return answer_of.get(url).get_json()["points"][0]["temperature_avg"]

    store.publish_day(engine, day, {"sensor_stats": [sensor_row(window)]})
    assert temperature(client) == 21.0
    store.publish_day(engine, day, {"sensor_stats": [{**sensor_row(window), "temperature_avg": 25.0}]})
    assert temperature(client) == 21.0, "a re-published older day shows only after serve_cache_seconds"
    assert temperature(uncached) == 25.0
    store.publish_day(engine, day + timedelta(days=1), {"sensor_stats": []})  # the horizon moves on
    assert temperature(client) == 25.0
