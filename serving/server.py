"""`lambdaflow serve`: the app under Granian (worker processes, so both cores serve; HTTP parsed in Rust, off
the GIL), not Flask's development server.
The app itself refuses overlong request lines and header fields (`serving.errors.refuse_oversized`); Granian
refuses more than 100 header fields, or a head over its buffer, with a bare 431."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from granian import Granian
from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.log import LogLevels

from lambdaflow.kafka import EVENT_HUBS_VARIABLE
from lambdaflow.settings import Settings, secret_variables


def metrics_dir(settings: Settings, port: int) -> Path:
    """Where this server's workers keep their Prometheus counts (`serving.metrics`): one directory per server,
    emptied at start, or an earlier server's counts would be added to this one's."""
    path = settings.data_dir.resolve() / "metrics" / f"serve-{port}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@dataclass(frozen=True)
class ServerOptions:
    """How `lambdaflow serve` runs Granian (the serving benchmark runs its bare floor under the same)."""

    host: str
    port: int
    workers: int
    threads: int  # Python threads per worker that run the WSGI app

    @classmethod
    def from_settings(cls, settings: Settings, host: str, port: int) -> ServerOptions:
        return cls(host, port, settings.serve_workers, settings.serve_threads)


def run_server(load: Callable[[], Any], options: ServerOptions, name: str) -> None:
    """Serve the WSGI app that `load` builds (in each worker; a module-level function or a partial of one, so
    it also crosses a spawned worker's start) until SIGINT/SIGTERM."""
    Granian(
        name,
        address=options.host,
        port=options.port,
        interface=Interfaces.WSGI,
        http=HTTPModes.http1,
        websockets=False,
        workers=options.workers,
        blocking_threads=options.threads,
        # a keep-alive connection idle this long is closed (hyper counts the wait for the next request's head)
        http1_settings=HTTP1Settings(header_read_timeout=30_000),
        log_level=LogLevels.warning,
        workers_kill_timeout=5,  # then a worker that has not finished its requests is killed
    ).serve(target_loader=load, wrap_loader=False)


def credential_variables(environ: Mapping[str, str]) -> list[str]:
    """The variables of `environ` that carry credentials the serving app does not read after start-up: the
    settings' secrets, Airflow's configuration and connections (its JWT secret, `AIRFLOW_CONN_*`) and the
    Event Hubs connection string."""
    secrets = {*secret_variables(), EVENT_HUBS_VARIABLE}
    return [name for name in environ if name in secrets or name.startswith("AIRFLOW_")]


def worker_app(settings: Settings) -> Any:
    """A server worker's app. Granian copies the worker's environment into every request's WSGI environ
    (CGI's convention) after the app is built: the credentials leave it first."""
    from serving.app import create_app

    app = create_app(settings)
    for variable in credential_variables(os.environ):
        del os.environ[variable]
    return app


def serve(settings: Settings, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM; each worker builds its own app (and its own store connections)."""
    # before the workers import prometheus_client: it picks multiprocess mode once, at its import
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir(settings, port))
    options = ServerOptions.from_settings(settings, host, port)
    run_server(partial(worker_app, settings), options, "lambdaflow serve")
