"""`lambdaflow serve`: the app under gunicorn (worker processes, so both cores serve), not Flask's
development server."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.http.errors import LimitRequestHeaders, LimitRequestLine
from gunicorn.workers.gthread import ThreadWorker

from lambdaflow.settings import Settings

# gunicorn's own limits (its defaults): a longer request line is a 414, more or larger headers a 431.
REQUEST_LINE_LIMIT = 4094
_LIMITS = {
    LimitRequestLine: (414, "URI Too Long"),
    LimitRequestHeaders: (431, "Request Header Fields Too Large"),
}


class JsonErrorWorker(ThreadWorker):
    """gunicorn answers a request over its limits itself, before the app sees it; this gives those answers
    the API's JSON error shape instead of an HTML page."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        for kind, (status, reason) in _LIMITS.items():
            if isinstance(exc, kind):
                body = json.dumps({"status": status, "error": f"{reason}: {exc}"}).encode()
                head = (
                    f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                )
                with contextlib.suppress(OSError):  # the client may be gone already
                    client.sendall(head.encode() + body)
                return
        super().handle_error(req, client, addr, exc)


class _Gunicorn(BaseApplication):
    def __init__(self, load: Callable[[], Any], options: dict[str, Any]) -> None:
        self.load_app, self.options = load, options
        super().__init__()

    def load_config(self) -> None:
        for name, value in self.options.items():
            self.cfg.set(name, value)

    def load(self) -> Any:
        return self.load_app()


def metrics_dir(settings: Settings, port: int) -> Path:
    """Where this server's workers keep their Prometheus counts (`serving.metrics`): one directory per server,
    emptied at start, or an earlier server's counts would be added to this one's."""
    path = settings.data_dir.resolve() / "metrics" / f"serve-{port}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def gunicorn_options(settings: Settings, host: str, port: int) -> dict[str, Any]:
    """How `lambdaflow serve` runs gunicorn (the serving benchmark runs its bare floor under the same)."""
    return {
        "bind": f"{host}:{port}",
        "workers": settings.serve_workers,
        "threads": settings.serve_threads,
        "worker_class": f"{__name__}.JsonErrorWorker",
        "limit_request_line": REQUEST_LINE_LIMIT,
        "control_socket_disable": True,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "keepalive": 5,
        "graceful_timeout": 5,
        "proc_name": "lambdaflow-serve",
    }


def run_gunicorn(load: Callable[[], Any], options: dict[str, Any]) -> None:
    """Serve the WSGI app that `load` builds (in each worker) until SIGINT/SIGTERM."""
    _Gunicorn(load, options).run()


def serve(settings: Settings, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM; each worker builds its own app (and its own store connections).

    No control socket: gunicorn's default is one per user (`~/.gunicorn/gunicorn.ctl`), so stopping one
    server would delete another's, and lambdaflow stops its servers by signal."""
    # before the workers import prometheus_client: it picks multiprocess mode once, at its import
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir(settings, port))

    def load() -> Any:
        from serving.app import create_app

        return create_app(settings)

    run_gunicorn(load, gunicorn_options(settings, host, port))
