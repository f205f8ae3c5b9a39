"""`lambdaflow serve`: the app under gunicorn (worker processes, so both cores serve), not Flask's
development server."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from lambdaflow.settings import Settings


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings, self.options = settings, options
        super().__init__()

    def load_config(self) -> None:
        for name, value in self.options.items():
            self.cfg.set(name, value)

    def load(self) -> Any:
        from serving.app import create_app

        return create_app(self.settings)


def serve(settings: Settings, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM; each worker builds its own app (and its own store connections)."""
    _Gunicorn(settings, {
        "bind": f"{host}:{port}", "workers": settings.serve_workers, "threads": settings.serve_threads,
        "worker_class": "gthread", "accesslog": None, "errorlog": "-", "loglevel": "warning",
        "keepalive": 5, "graceful_timeout": 5, "proc_name": "lambdaflow-serve",
    }).run()  # fmt: skip
