"""The view routes' fast path: a plain request is answered before Flask, with the bytes Flask's route gives
(status, headers, body), and counted in the request metrics; any other request reaches Flask and gets
Flask's answer. Each request runs through the app (fast path first) and through Flask's own WSGI app alone,
on the same filled store."""

from __future__ import annotations

import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
from sqlalchemy import text
from werkzeug.test import Client

from lambdaflow import store
from lambdaflow.settings import load_settings
from serving import merge
from serving.app import create_app
from serving.fast_path import ViewFastPath
from tests.serving.conftest import fill_store, serve_filled_store
from tests.serving.test_health_metrics import samples

TOKEN = "fast-path-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
TODAY = datetime(NOW.year, NOW.month, NOW.day)


def _range(start: datetime, end: datetime, zone: str = "Z") -> str:
    return f"from={quote(start.isoformat() + zone)}&to={quote(end.isoformat() + zone)}"


# across the horizon: yesterday's stored points, batch rows before them, today's speed rows
ACROSS = _range(TODAY - timedelta(hours=30), NOW + timedelta(minutes=5))
YESTERDAY = _range(TODAY - timedelta(days=1), TODAY)
PLAIN = [
    f"/api/v1/sensors/s-lab/metrics?{ACROSS}",
    f"/api/v1/sensors/s-lab/metrics?{YESTERDAY}",
    f"/api/v1/sensors/s%2Droof/metrics?{ACROSS}",  # an encoded path
    f"/api/v1/sensors/s-roof/metrics?to={quote((NOW - timedelta(hours=2)).isoformat())}",  # `from` by default
    f"/api/v1/sensors/s-lab/metrics?{_range(TODAY - timedelta(days=9), TODAY - timedelta(days=8))}",  # empty
    f"/api/v1/locations/%20ROOF/metrics?{_range(NOW - timedelta(hours=5), NOW, '+02:00')}",  # cleaned, a zone
    f"/api/v1/sensors/s-roof/health?{ACROSS}",
    f"/api/v1/activity?{ACROSS}",
    f"/api/v1/activity?{ACROSS}&event_type=purchase&browser=FIREFOX",
    f"/api/v1/activity?{ACROSS}&event_type=caf%C3%A9",
    f"/api/v1/activity?{ACROSS}&browser=%FF",  # not UTF-8: kept percent-encoded, as werkzeug keeps it
    f"/api/v1/sessions?{ACROSS}&min_duration_s=120",
    f"/api/v1/sessions?min_duration_s=1e2&{ACROSS}",
]
NOT_PLAIN = [  # method, URL, headers, Flask's status
    ("GET", f"/api/v1/sensors/s-nowhere/metrics?{ACROSS}", AUTH, 404),
    ("GET", f"/api/v1/sensors/caf%C3%A9/metrics?{ACROSS}", AUTH, 404),  # a path Flask decodes as UTF-8
    ("GET", "/api/v1/sensors/s-lab/metrics?from=yesterday", AUTH, 400),
    ("GET", f"/api/v1/sensors/s-lab/metrics?{ACROSS}&from=2026-01-01", AUTH, 400),  # repeated
    ("GET", f"/api/v1/sensors/s-lab/metrics?{ACROSS}&color=red", AUTH, 400),
    ("GET", f"/api/v1/activity?{ACROSS}&event_type=", AUTH, 400),
    ("GET", "/api/v1/sessions?min_duration_s=-1", AUTH, 400),
    ("GET", f"/api/v1/sensors/s-lab/metrics?{ACROSS}", {}, 401),
    ("GET", f"/api/v1/sensors/s-lab/metrics?{ACROSS}", {"Authorization": "Bearer wrong"}, 401),
    ("GET", f"/api/v1/sensors/s-lab/metrics?{ACROSS}", {"Cookie": f"lambdaflow_token={TOKEN}"}, 200),
    ("HEAD", f"/api/v1/sensors/s-lab/metrics?{ACROSS}", AUTH, 200),
    ("POST", f"/api/v1/sensors/s-lab/metrics?{ACROSS}", AUTH, 405),
    ("GET", f"/api/v1/sensors/s-lab/metrics?{ACROSS}", {**AUTH, "X-Padding": "x" * 9000}, 431),
    ("GET", "/api/v1/sensors/" + "s" * 4100 + "/metrics", AUTH, 414),
    (
        "GET",
        f"/api/v1/sensors/s-lab/metrics?{ACROSS}",
        {**AUTH, "Connection": "Upgrade", "Upgrade": "websocket"},
        400,
    ),  # werkzeug's WebSocket routing
    ("GET", f"/api/v1/activity/?{ACROSS}", AUTH, 404),
    ("GET", f"/api/v1//activity?{ACROSS}", AUTH, 308),
    ("GET", f"/api/v1/sensors//metrics?{ACROSS}", AUTH, 404),
    ("GET", f"/api/v1/sensors/a/b/metrics?{ACROSS}", AUTH, 404),
]


@pytest.fixture(params=[0, 60], ids=["cache-off", "cache-on"])
def apps(request, make_client):
    """The app and a client of Flask's own WSGI app alone, with a token, on a filled store, and a log of
    the requests that reached Flask."""
    app, _ = make_client(api_token=TOKEN, serve_cache_seconds=request.param)
    fill_store(app.extensions["lambdaflow.settings"].resolved_store_url)
    fast_path = app.wsgi_app
    flask_alone, reached = fast_path.flask, []

    def flask_logged(environ, start_response):
        reached.append(environ["PATH_INFO"])
        return flask_alone(environ, start_response)

    fast_path.flask = flask_logged
    # no cookie jars: a request's Cookie header is sent as it is
    return app.test_client(use_cookies=False), Client(flask_alone, use_cookies=False), reached


def answer(client, method: str, url: str, headers: dict) -> tuple[str, list, bytes]:
    response = client.open(url, method=method, headers=headers)
    return response.status, sorted(response.headers.items()), response.get_data()


@pytest.mark.parametrize("url", PLAIN)
def test_a_plain_request_is_answered_before_flask_with_flasks_bytes(apps, url):
    client, flask_alone, reached = apps
    expected = answer(flask_alone, "GET", url, AUTH)
    given = [answer(client, "GET", url, AUTH) for _ in range(2)]  # with the cache on: kept, then from it
    assert given == [expected, expected]
    assert expected[0] == "200 OK"
    assert reached == [], "a plain request reached Flask"


@pytest.mark.parametrize(("method", "url", "headers", "status"), NOT_PLAIN)
def test_any_other_request_gets_flasks_answer(apps, method, url, headers, status):
    client, flask_alone, reached = apps
    expected = answer(flask_alone, method, url, headers)
    assert int(expected[0][:3]) == status
    assert answer(client, method, url, headers) == expected
    assert len(reached) == 1


@pytest.mark.parametrize(
    ("url", "status"),
    [(f"/api/v1/sensors/s-nowhere/metrics?{ACROSS}", 404), (f"/api/v1/sensors/s-lab/metrics?{ACROSS}", 500)],
    ids=["unknown subject", "store error"],
)
def test_an_error_met_before_flask_is_flasks_answer_from_one_read(apps, monkeypatch, url, status):
    client, flask_alone, reached = apps
    if status == 500:
        engine = store.engine(client.application.extensions["lambdaflow.settings"].resolved_store_url)
        with engine.begin() as connection:
            connection.execute(text(f"DROP TABLE {store.BATCH_TABLES['sensor_stats'].name}"))
        engine.dispose()
    expected = answer(flask_alone, "GET", url, AUTH)
    assert int(expected[0][:3]) == status
    reads, real = [], merge.merged_view
    monkeypatch.setattr(merge, "merged_view", lambda *args, **kw: reads.append(args) or real(*args, **kw))
    assert answer(client, "GET", url, AUTH) == expected
    assert len(reads) == 1 and len(reached) == 1


def test_a_fast_answer_is_counted_and_timed_under_its_route(apps):
    client, _, reached = apps
    before = samples(client.get("/metrics", headers=AUTH).get_data(as_text=True))
    for _ in range(3):
        assert client.get(f"/api/v1/sensors/s-lab/metrics?{ACROSS}", headers=AUTH).status_code == 200
    after = samples(client.get("/metrics", headers=AUTH).get_data(as_text=True))
    labels = {"method": "GET", "endpoint": "/api/v1/sensors/<sensor_id>/metrics"}

    def grew(name: str, **more: str) -> float:
        key = (name, tuple(sorted({**labels, **more}.items())))
        return after[key] - before.get(key, 0.0)

    assert grew("lambdaflow_http_requests_total", status="200") == 3
    assert grew("lambdaflow_http_request_duration_seconds_count") == 3
    assert reached == ["/metrics", "/metrics"]


def test_an_app_the_fast_path_would_answer_otherwise_stops_at_start_up(make_client, tmp_path):
    app, _ = make_client(api_token=TOKEN)
    app.before_request(lambda: None)  # a hook the fast path would not run
    with pytest.raises(RuntimeError, match="before_request hook"):
        ViewFastPath(app)
    settings = load_settings(data_dir=tmp_path / "data", api_token=TOKEN)
    with pytest.raises(RuntimeError, match="TRUSTED_HOSTS"):
        create_app(settings, TRUSTED_HOSTS=["api.example.com"])


@pytest.mark.integration
def test_under_the_server_every_answer_is_flasks(tmp_path):
    """`lambdaflow serve` (Granian, whose environ the fast path reads) answers as Flask's own app does on
    the same store, plain requests and others alike."""
    data_dir = tmp_path / "data"
    with serve_filled_store(data_dir) as (base, token, _):
        auth = {"Authorization": f"Bearer {token}"}
        flask_alone = Client(create_app(load_settings(data_dir=data_dir, api_token=token)).wsgi_app.flask)
        for url in [
            *PLAIN,
            # urllib follows a redirect
            *(
                url
                for method, url, headers, status in NOT_PLAIN
                if method == "GET" and headers is AUTH and status != 308
            ),
        ]:
            expected = flask_alone.get(url, headers=auth)
            try:
                with urllib.request.urlopen(
                    urllib.request.Request(base + url, headers=auth), timeout=10
                ) as got:
                    served = (got.status, got.headers["Content-Type"], got.read())
            except urllib.error.HTTPError as error:
                served = (error.code, error.headers["Content-Type"], error.read())
            assert served == (expected.status_code, expected.content_type, expected.get_data()), url
