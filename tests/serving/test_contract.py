"""The API against its own OpenAPI document and hostile input, on `lambdaflow serve` over a store
with batch and speed rows: Schemathesis with all its checks finds nothing, and each hostile request gets its
documented status and the JSON error shape naming the parameter."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from serving.errors import HEADER_FIELD_LIMIT, REQUEST_LINE_LIMIT
from tests.serving.conftest import serve_filled_store

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent
SCHEMATHESIS = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "st"
# Fixed, so a failure reproduces; examples per operation: ~1,000 requests in all, ~30 s.
SCHEMATHESIS_SEED, SCHEMATHESIS_EXAMPLES = 20261203, 150


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # the filled store's stream progress stays fresh for the whole module, so /health answers 200
    data_dir = tmp_path_factory.mktemp("contract") / "data"
    with serve_filled_store(data_dir, LAMBDAFLOW_HEALTH_STREAM_STALE_SECONDS="86400") as running:
        yield running


def call(server, path: str, method: str = "GET", token: str | None = None, scheme: str = "Bearer",
         extra: dict[str, str] | None = None):  # fmt: skip
    base, default_token, _ = server
    headers = {"Authorization": f"{scheme} {token or default_token}", **(extra or {})}
    request = urllib.request.Request(base + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()  # names in any case, as HTTP has them
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_schemathesis_with_all_checks_finds_no_failure(server):
    base, token, _ = server
    command = [
        str(SCHEMATHESIS), "--config-file", str(HERE / "schemathesis.toml"),
        "run", f"{base}/api/openapi.json",
        "--header", f"Authorization: Bearer {token}", "--checks", "all", "--workers", "1",
        "--seed", str(SCHEMATHESIS_SEED), "--max-examples", str(SCHEMATHESIS_EXAMPLES), "--no-color",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "generated" in run.stdout and "passed" in run.stdout, run.stdout[-2000:]


HOSTILE = [
    # times past the representable years, directly or through a UTC offset or a default
    ("/api/v1/sessions?to=0001-01-01", 400, "to"),
    ("/api/v1/sessions?from=0001-01-01T00:00:00%2B14:00", 400, "from"),
    ("/api/v1/sessions?to=9999-12-31T23:59:59-14:00", 400, "to"),
    ("/api/v1/sensors/s-lab/metrics?to=9999-12-31T23:59:59.999999", 400, "to"),
    ("/api/v1/alerts?since=0001-01-01T00:00:00%2B01:00", 400, "since"),
    ("/api/v1/alerts?since=9999-12-31T23:59:59-14:00", 400, "since"),
    # the 31-day limit on whatever range the defaults make
    ("/api/v1/sessions?from=2000-01-01", 400, "from"),
    ("/api/v1/activity?from=2000-01-01T00:00:00Z", 400, "from"),
    ("/api/v1/sensors/s-lab/metrics?to=2000-01-01&from=1999-01-01", 400, "from"),
    ("/api/v1/sensors/s-lab/metrics?from=2999-01-01", 400, "from"),
    # a parameter given twice, in any case
    ("/api/v1/alerts?limit=5&limit=6", 400, "limit"),
    ("/api/v1/sessions?from=2026-01-01&from=2026-01-02", 400, "from"),
    # digits other than ASCII 0-9, and numbers that are not finite
    ("/api/v1/alerts?limit=%D9%A1%D9%A0", 400, "limit"),
    ("/api/v1/quality?days=%EF%BC%93", 400, "days"),
    ("/api/v1/sessions?min_duration_s=%D9%A5", 400, "min_duration_s"),
    ("/api/v1/sessions?from=%D9%A2%D9%A0%D9%A2%D9%A6-01-01", 400, "from"),
    ("/api/v1/sessions?min_duration_s=nan", 400, "min_duration_s"),
    ("/api/v1/sessions?min_duration_s=inf", 400, "min_duration_s"),
    ("/api/v1/sessions?min_duration_s=1e999", 400, "min_duration_s"),
    ("/api/v1/alerts?limit=1e2", 400, "limit"),
    # unknown parameters, everywhere
    ("/api/v1/sensors?foo=1", 400, "foo"),
    ("/api/v1/alerts?Limit=5", 400, "Limit"),
    ("/api/v1/quality?day=3", 400, "day"),
    ("/health?verbose=1", 400, "verbose"),
]


@pytest.mark.parametrize(("path", "status", "parameter"), HOSTILE)
def test_a_hostile_parameter_is_a_json_400_naming_it(server, path, status, parameter):
    got, headers, body = call(server, path)
    answer = json.loads(body)
    assert (got, answer["status"], answer["parameter"]) == (status, status, parameter), answer
    assert parameter in answer["error"] and headers["Content-Type"] == "application/json"


def test_valid_edges_are_answered(server):
    for path in (
        "/api/v1/sessions?from=2026-11-01T00:00:00Z&to=2026-12-02T00:00:00Z",  # 31 days exactly
        "/api/v1/sensors/s-lab/metrics?from=0001-01-03&to=0001-01-04",
        "/api/v1/alerts?since=9999-12-29",
        "/api/v1/sensors",
    ):
        status, _, body = call(server, path)
        assert status == 200, (path, body)
    assert call(server, "/api/v1/sensors", scheme="bearer")[0] == 200  # HTTP auth schemes ignore case
    assert call(server, "/api/v1/sensors", scheme="BEARER")[0] == 200


def test_errors_outside_the_parameters_have_the_same_json_shape(server):
    too_long = "/api/v1/sensors?foo=" + "x" * REQUEST_LINE_LIMIT  # refused before the token check
    expected = {
        too_long: 414,
        "/api/v1/nothing": 404,
        "/api/v1/sensors/nobody/metrics": 404,
    }
    for path, status in expected.items():
        got, headers, body = call(server, path)
        assert got == status and headers["Content-Type"] == "application/json", (path, body[:200])
        assert json.loads(body)["status"] == status
    got, headers, body = call(server, "/api/v1/sensors", token="wrong")
    assert (
        got == 401 and json.loads(body)["status"] == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    )
    got, headers, body = call(server, "/api/v1/sensors", method="POST")
    assert got == 405 and json.loads(body)["status"] == 405 and "GET" in headers["Allow"]
    # a request line is measured as sent: a sensor of percent-encoded UTF-8 at the limit is read
    path = f"/api/v1/sensors/{'%C3%A9' * 600}/metrics?x="
    path += "y" * (REQUEST_LINE_LIMIT - len(f"GET {path} HTTP/1.1"))
    assert call(server, path)[0] == 400  # read: `x` is no parameter
    assert call(server, path + "y")[0] == 414
    # a header field at its limit is read; one byte more is refused, whatever the token
    at_limit = {"X-Note": "y" * (HEADER_FIELD_LIMIT - len("X-Note: "))}
    assert call(server, "/api/v1/sensors", extra=at_limit)[0] == 200
    over = {"X-Note": at_limit["X-Note"] + "y"}
    got, headers, body = call(server, "/api/v1/sensors", token="wrong", extra=over)
    assert got == 431 and headers["Content-Type"] == "application/json" and json.loads(body)["status"] == 431
    assert "X-Note" in json.loads(body)["error"]
