import json
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from functools import partial

from lambdaflow.broker import free_port
from lambdaflow.settings import Settings, load_settings
from serving.server import ServerOptions, run_server, worker_app
from tests.conftest import ROOT


def _with_environ_route(settings: Settings):
    """`lambdaflow serve`'s worker app behind a route that lists the request environ's LAMBDAFLOW_* keys."""
    app = worker_app(settings)

    def answer(environ, start_response):
        if environ["PATH_INFO"] == "/environ":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(sorted(key for key in environ if key.startswith("LAMBDAFLOW_"))).encode()]
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
    """Granian copies the worker's environment into every WSGI environ: the token must not be there, and
    still be required."""
    port, token = free_port(), secrets.token_urlsafe(24)
    environment = {
        "LAMBDAFLOW_DATA_DIR": str(tmp_path),
        "LAMBDAFLOW_API_TOKEN": token,
        "LAMBDAFLOW_STORE_URL": f"sqlite:///{tmp_path / 'serving.db'}",
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
    }
    command = [
        sys.executable,
        "-c",
        f"from tests.serving.test_server import serve_with_environ_route as s; s({port})",
    ]
    server = subprocess.Popen(command, env=environment, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, body = _get(base + "/environ")
                break
            except OSError:
                assert server.poll() is None, server.stderr.read()
                assert time.monotonic() < deadline, "the server did not answer within 60 s"
                time.sleep(0.3)
        assert status == 200 and json.loads(body) == ["LAMBDAFLOW_DATA_DIR"]
        assert _get(base + "/api/v1/sensors")[0] == 401
        assert _get(base + "/api/v1/sensors", token)[0] == 200
    finally:
        server.terminate()
        server.wait(timeout=20)
