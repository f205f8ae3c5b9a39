import json
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from functools import partial

import pytest

from lambdaflow.broker import free_port
from lambdaflow.settings import Settings, load_settings
from serving.server import ServerOptions, run_server, worker_app
from tests.conftest import ROOT
from tests.serving.conftest import wait_until_served

pytestmark = pytest.mark.integration


def _with_environ_route(settings: Settings):
    """`lambdaflow serve`'s worker app behind a route that lists the request environ's keys."""
    app = worker_app(settings)

    def answer(environ, start_response):
        if environ["PATH_INFO"] == "/environ":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(sorted(environ)).encode()]
        return app(environ, start_response)

    return answer


def serve_with_environ_route(port: int) -> None:
    settings = load_settings()
    options = ServerOptions.from_settings(settings, "127.0.0.1", port)
    run_server(partial(_with_environ_route, settings), options, "lambdaflow test serve")


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_a_request_environ_holds_no_credentials(tmp_path):
    """Granian copies the worker's environment into every WSGI environ: the credentials must not be there,
    and the token still be required."""
    port, token = free_port(), secrets.token_urlsafe(24)
    credentials = {
        "LAMBDAFLOW_API_TOKEN": token,
        "LAMBDAFLOW_STORE_URL": f"sqlite:///{tmp_path / 'serving.db'}",
        "AIRFLOW__API_AUTH__JWT_SECRET": "jwt-s3cret",
        "AIRFLOW_CONN_LAMBDAFLOW_AZURE": "wasb://account:s3cret@",
        "EVENT_HUB_CONN_STR": "Endpoint=sb://ns/;SharedAccessKey=s3cret",
    }
    environment = {"LAMBDAFLOW_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                   **credentials}  # fmt: skip
    command = [sys.executable, "-c", f"from tests.serving.test_server import serve_with_environ_route; "
               f"serve_with_environ_route({port})"]  # fmt: skip
    server = subprocess.Popen(command, env=environment, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_served(server, base + "/environ", token)
        status, body = _get(base + "/environ")
        keys = json.loads(body)
        assert status == 200 and "LAMBDAFLOW_DATA_DIR" in keys  # the environment is copied, less these
        assert not set(credentials) & set(keys)
        assert _get(base + "/api/v1/sensors")[0] == 401
        assert _get(base + "/api/v1/sensors", token)[0] == 200
    finally:
        server.terminate()
        server.wait(timeout=20)
