"""Lag you can see: `/health` gives each streaming query's offsets, lag and status (a query with lag whose
offsets do not move is stalled: 503; an idle one is ok), `/metrics` gives the same and the API's requests in
Prometheus text, summed over the server's workers, and a store made before these columns gets them."""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lambdaflow import store
from lambdaflow.lake import archiver_status_path
from serving.schemas import Health
from tests.serving.conftest import serve_filled_store

TOKEN = "metrics-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def progress_row(query: str, **values: object) -> dict:
    return {
        "query": query, "batch_id": 3, "input_rows": 0, "invalid_rows": 2, "late_rows": 1,
        "max_event_ts": None, "watermark": None, "updated_at": now(), "progressed_at": now(),
        "end_offsets": json.dumps({"t:0": 10}), "processed_offsets": json.dumps({"t:0": 10}),
        "lag_records": 0, "input_rows_per_second": 0.0, "processed_rows_per_second": 0.0,
        "batch_duration_ms": 40, "alerts_fired": "{}", **values,
    }  # fmt: skip


@pytest.fixture
def app_client(make_client):
    app, client = make_client(api_token=TOKEN, health_stream_stale_seconds=60)
    return app, client, app.extensions["lambdaflow.store"]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text answer by name and labels (the parser rejects a malformed one)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_query_with_lag_and_offsets_that_do_not_move_is_stalled_and_an_idle_one_is_ok(app_client):
    _, client, engine = app_client
    stalled = progress_row(
        "speed_iot_sensors",
        progressed_at=now() - timedelta(minutes=5),
        end_offsets=json.dumps({"iot:0": 15, "iot:1": 7}),
        processed_offsets=json.dumps({"iot:0": 10, "iot:1": 7}),
        lag_records=5,
    )
    # no new data for 5 minutes, none waiting: healthy however long it waits
    idle = progress_row("speed_user_activity", progressed_at=now() - timedelta(minutes=5))
    store.upsert(engine, store.stream_progress, [stalled, idle])

    response = client.get("/health")
    body = response.get_json()
    assert response.status_code == 503 and body["status"] == "down" and body["stream"]["ok"] is False
    assert Health().validate(body) == {}  # the documented shape, nothing more
    queries = {query["query"]: query for query in body["stream"]["queries"]}
    iot = queries["speed_iot_sensors"]
    assert iot["status"] == "stalled" and iot["ok"] is False and iot["lag_records"] == 5
    assert iot["end_offsets"] == {"iot:0": 15, "iot:1": 7} and iot["processed_offsets"] == {
        "iot:0": 10,
        "iot:1": 7,
    }
    assert iot["seconds_since_progress"] >= 300 and iot["seconds_since_update"] < 60
    assert (
        queries["speed_user_activity"]["status"] == "ok"
        and queries["speed_user_activity"]["lag_records"] == 0
    )

    # the offsets move (still behind): no longer stalled
    store.upsert(engine, store.stream_progress, [{**stalled, "progressed_at": now()}])
    response = client.get("/health")
    assert response.status_code == 200 and response.get_json()["status"] == "ok"

    # no report for longer than the stale seconds: down, whatever its lag
    store.upsert(engine, store.stream_progress, [{**idle, "updated_at": now() - timedelta(minutes=2)}])
    response = client.get("/health")
    statuses = {query["query"]: query["status"] for query in response.get_json()["stream"]["queries"]}
    assert response.status_code == 503 and statuses == {
        "speed_iot_sensors": "ok",
        "speed_user_activity": "down",
    }


def test_metrics_need_the_token_and_give_the_queries_lag_and_the_api_requests(app_client):
    app, client, engine = app_client
    store.upsert(engine, store.stream_progress, [
        progress_row("speed_iot_sensors", progressed_at=now() - timedelta(minutes=5), lag_records=5,
                     end_offsets=json.dumps({"iot:0": 15}), processed_offsets=json.dumps({"iot:0": 10}),
                     alerts_fired=json.dumps({"battery_low": 4, "temperature_high": 9})),
        progress_row("archiver", input_rows_per_second=12.5, batch_duration_ms=2500),
    ])  # fmt: skip
    status_file = archiver_status_path(app.extensions["lambdaflow.settings"].data_dir)
    status_file.parent.mkdir(parents=True, exist_ok=True)
    status_file.write_text(json.dumps({"last_batch_id": 4, "topics": {
        "iot": {"valid": 90, "invalid": 6, "max_event_ts": None}}}))  # fmt: skip

    before = samples(client.get("/metrics", headers=AUTH).get_data(as_text=True))
    assert client.get("/metrics").status_code == 401
    for _ in range(3):
        assert client.get("/api/v1/sensors", headers=AUTH).status_code == 200
    assert client.get("/api/v1/sensors").status_code == 401
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200 and response.content_type.startswith("text/plain; version=")
    after = samples(response.get_data(as_text=True))

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    sensors = {"method": "GET", "endpoint": "/api/v1/sensors"}
    assert grew("lambdaflow_http_requests_total", **sensors, status="200") == 3
    assert grew("lambdaflow_http_requests_total", **sensors, status="401") == 1
    assert grew("lambdaflow_http_request_duration_seconds_count", **sensors) == 4
    assert grew("lambdaflow_http_requests_total", method="GET", endpoint="/metrics", status="401") == 1

    iot = {"query": "speed_iot_sensors"}
    assert after[("lambdaflow_stream_lag_records", (("query", "speed_iot_sensors"),))] == 5
    offset = (("partition", "0"), ("query", "speed_iot_sensors"), ("topic", "iot"))
    assert after[("lambdaflow_stream_end_offset", offset)] == 15
    assert after[("lambdaflow_stream_processed_offset", offset)] == 10
    assert after[("lambdaflow_stream_query_status", tuple(sorted({**iot, "status": "stalled"}.items())))] == 1
    assert after[("lambdaflow_stream_query_status", tuple(sorted({**iot, "status": "ok"}.items())))] == 0
    assert after[("lambdaflow_stream_late_rows_total", (("query", "speed_iot_sensors"),))] == 1
    assert after[("lambdaflow_stream_invalid_rows_total", (("query", "speed_iot_sensors"),))] == 2
    assert (
        after[
            ("lambdaflow_alerts_fired_total", (("query", "speed_iot_sensors"), ("rule", "temperature_high")))
        ]
        == 9
    )
    assert after[("lambdaflow_stream_input_rows_per_second", (("query", "archiver"),))] == 12.5
    assert after[("lambdaflow_stream_batch_duration_seconds", (("query", "archiver"),))] == 2.5
    assert after[("lambdaflow_archiver_quarantined_records_total", (("topic", "iot"),))] == 6
    assert after[("lambdaflow_archiver_archived_records_total", (("topic", "iot"),))] == 90
    assert after[("lambdaflow_store_up", ())] == 1
    # Prometheus text, not part of the API's OpenAPI document (which Schemathesis tests)
    assert "/metrics" not in client.get("/api/openapi.json", headers=AUTH).get_json()["paths"]


def test_a_store_made_before_the_lag_columns_gets_them_and_keeps_its_rows(tmp_path, make_client):
    (tmp_path / "data").mkdir()
    database = tmp_path / "data" / "serving.db"
    with sqlite3.connect(database) as connection:  # the table as an earlier version created it
        connection.execute(
            "CREATE TABLE stream_progress (query VARCHAR(64) NOT NULL PRIMARY KEY, batch_id BIGINT NOT NULL, "
            "input_rows BIGINT NOT NULL, invalid_rows BIGINT NOT NULL, late_rows BIGINT NOT NULL, "
            "max_event_ts DATETIME, watermark DATETIME, updated_at DATETIME NOT NULL)"
        )
        connection.execute(
            "INSERT INTO stream_progress VALUES ('archiver', 9, 5, 0, 0, NULL, NULL, ?)",
            (now().isoformat(" ", "microseconds"),),
        )
    _, client = make_client()  # connects, and so migrates, the store
    columns = {row[1] for row in sqlite3.connect(database).execute("PRAGMA table_info(stream_progress)")}
    assert columns == {column.name for column in store.stream_progress.columns}
    response = client.get("/health")
    query = response.get_json()["stream"]["queries"][0]
    assert response.status_code == 200 and query["batch_id"] == 9 and query["status"] == "ok"
    assert query["lag_records"] is None and query["end_offsets"] == {}


@pytest.mark.integration
def test_metrics_under_the_server_add_up_every_workers_requests(tmp_path):
    data_dir = tmp_path / "data"
    with serve_filled_store(data_dir, LAMBDAFLOW_SERVE_WORKERS="2") as (base, token, _):
        auth = {"Authorization": f"Bearer {token}"}

        def get(path: str) -> str:
            request = urllib.request.Request(base + path, headers=auth)
            with urllib.request.urlopen(request, timeout=10) as answer:  # a new connection each time
                return answer.read().decode()

        for _ in range(20):
            get("/api/v1/alerts")
        counts = [
            samples(get("/metrics"))[
                ("lambdaflow_http_requests_total",
                 (("endpoint", "/api/v1/alerts"), ("method", "GET"), ("status", "200")))
            ]
            for _ in range(6)
        ]  # fmt: skip
        # whichever worker answers the scrape, it counts all 20 (a worker's own count would be a share)
        assert counts == [20.0] * 6
        assert [path.name for path in (data_dir / "metrics").iterdir()] == [f"serve-{base.rsplit(':', 1)[1]}"]
        status = (("query", "speed_iot_sensors"), ("status", "ok"))
        assert samples(get("/metrics"))[("lambdaflow_stream_query_status", status)] == 1  # from the store
