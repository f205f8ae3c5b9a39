"""`lambdaflow up` (what `make run` starts): the embedded stack on one machine, with demo data.

The broker runs in this process (so its topics exist before anything connects); every other part is a
command under honcho, which prefixes their output and stops them all on Ctrl-C or when one exits: the
streaming application, the serving app, the demo producers, and Airflow. Airflow runs as the components
`airflow standalone` would start (API server, scheduler, DAG processor; LocalExecutor on SQLite), but started
here so that every one listens on 127.0.0.1: standalone's log servers bind all interfaces, and a single
machine needs none (the API server reads the task logs from disk). A lock file makes a second `up` say that
one is running instead of fighting over ports.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from honcho.manager import Manager

from lambdaflow.broker import EmbeddedBroker, check_port_free
from lambdaflow.settings import Settings


class AlreadyRunning(RuntimeError):
    pass


class StagedManager(Manager):
    """honcho's process manager, stopping in stages: on Ctrl-C, SIGTERM or any process's exit, first the
    producers, then the streaming app (signalled alone, not its process group, so its Spark JVM and Python
    workers keep running while it drains what the broker holds), then the rest; a stage's processes get
    SIGKILL after its patience. The broker, in this process, stops after them all. honcho alone signals every
    process at once and kills them all 5 s after the first one exits."""

    def __init__(self, stages: list[tuple[tuple[str, ...], float]], alone: frozenset[str]) -> None:
        super().__init__()
        self.stages, self.alone = stages, alone
        self._staged = threading.Event()

    def terminate(self) -> None:
        # honcho calls this again whenever a process exits: once the stages run, they alone decide
        if self._terminating:
            return
        self._terminating = True
        threading.Thread(target=self._stop_in_stages, name="stop-in-stages", daemon=True).start()

    def kill(self) -> None:
        if self._staged.is_set():  # honcho's loop asks 5 s after the first exit; the stages decide till then
            super().kill()

    def _running(self, names: Iterable[str] | None = None) -> list[str]:
        wanted = self._processes if names is None else [n for n in names if n in self._processes]
        return [name for name in wanted if "returncode" not in self._processes[name]]

    def _signal(self, names: list[str], force: bool) -> None:
        for name in names:
            pid = self._processes[name].get("pid")
            if pid is None:
                continue
            self._system_print(f"sending {'SIGKILL' if force else 'SIGTERM'} to {name} (pid {pid})\n")
            with contextlib.suppress(ProcessLookupError):
                if force:
                    os.killpg(pid, signal.SIGKILL)
                elif name in self.alone:
                    os.kill(pid, signal.SIGTERM)
                else:
                    os.killpg(pid, signal.SIGTERM)

    def _stop_in_stages(self) -> None:
        staged = {name for names, _ in self.stages for name in names}
        for names, patience in [*self.stages, (tuple(set(self._processes) - staged), 10.0)]:
            running = self._running(names)
            self._signal(running, force=False)
            deadline = time.monotonic() + patience
            while self._running(running) and time.monotonic() < deadline:
                time.sleep(0.1)
            self._signal(self._running(running), force=True)
        self._staged.set()


@contextmanager
def single_instance(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (released by the OS even on kill -9)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = lock_path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise AlreadyRunning(
            f"lambdaflow is already running (pid {owner}, data dir {lock_path.parent}); Ctrl-C it first"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        handle.close()


@dataclass(frozen=True)
class Credential:
    value: str
    generated: bool  # made up now (shown once), not from the environment or an earlier run
    where: str  # the environment variable or file it comes from


def _secret_file(path: Path, from_env: str | None, make: Callable[[], str]) -> Credential:
    """A credential from the environment, else the one generated by an earlier run, else a new one (kept in
    `path`, readable by its owner only, so the UI's password does not change at every start)."""
    if from_env:
        return Credential(from_env, False, "environment")
    if path.exists():
        return Credential(path.read_text().strip(), False, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    path.touch(mode=0o600)
    path.write_text(value + "\n")
    return Credential(value, True, str(path))


def credentials(settings: Settings) -> dict[str, Credential]:
    secrets_dir = settings.data_dir.resolve() / "secrets"
    token = settings.api_token.get_secret_value() if settings.api_token else None
    password = settings.airflow_password.get_secret_value() if settings.airflow_password else None
    return {
        "api_token": _secret_file(secrets_dir / "api_token", token, lambda: secrets.token_urlsafe(24)),
        "airflow_password": _secret_file(
            secrets_dir / "airflow_password", password, lambda: secrets.token_urlsafe(12)
        ),
        "jwt_secret": _secret_file(secrets_dir / "airflow_jwt_secret", None, lambda: secrets.token_hex(32)),
    }


def airflow_env(settings: Settings, root: Path, secrets_: dict[str, Credential]) -> dict[str, str]:
    """Airflow's configuration for the embedded stack (environment variables override airflow.cfg)."""
    home = settings.data_dir.resolve() / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    passwords = home / "passwords.json"
    passwords.touch(mode=0o600)
    passwords.write_text(json.dumps({"admin": secrets_["airflow_password"].value}))
    url = f"http://{settings.serve_host}:{settings.airflow_port}"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "2",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "AIRFLOW__API__HOST": settings.serve_host,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets_["jwt_secret"].value,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        # the demo's lake starts today: catching up from the default start date would queue empty days
        "LAMBDAFLOW_BATCH_START_DATE": os.environ.get("LAMBDAFLOW_BATCH_START_DATE")
        or datetime.now(UTC).date().isoformat(),
    }


def demo_processes(
    settings: Settings, iot_rate: float, activity_rate: float, demo: bool = True
) -> dict[str, list[str]]:
    """The commands `up` runs besides the broker, by name (without the demo producers unless `demo`)."""
    command = [sys.executable, "-m", "cli"]
    airflow = str(Path(sys.executable).parent / "airflow")
    demo_faults = [
        "--out-of-order",
        "0.02",
        "--late",
        "0.005",
        "--duplicates",
        "0.005",
        "--malformed",
        "0.002",
    ]
    producers = {
        "iot": [*command, "produce", "iot", "--rate", str(iot_rate), *demo_faults],
        "activity": [*command, "produce", "activity", "--rate", str(activity_rate), *demo_faults],
    }
    return {
        "stream": [*command, "stream"],  # the lake archiver and the speed layer's view queries
        "serve": [*command, "serve"],
        **(producers if demo else {}),
        "airflow-api": [
            airflow,
            "api-server",
            "--host",
            settings.serve_host,
            "--port",
            str(settings.airflow_port),
        ],
        "airflow-scheduler": [airflow, "scheduler", "--skip-serve-logs"],
        "airflow-dags": [airflow, "dag-processor"],
    }


def _shown(credential: Credential) -> str:
    if credential.generated:
        return f"{credential.value}   (generated now, kept in {credential.where})"
    return f"(from {credential.where})" if credential.where == "environment" else f"see {credential.where}"


def print_endpoints(settings: Settings, broker: EmbeddedBroker, secrets_: dict[str, Credential],
                    out: TextIO = sys.stdout) -> None:  # fmt: skip
    web = f"http://{settings.serve_host}"
    rows = [
        ("dashboard", f"{web}:{settings.serve_port}/"),
        ("HTTP API (OpenAPI docs)", f"{web}:{settings.serve_port}/api/docs/"),
        ("  API token (Bearer)", _shown(secrets_["api_token"])),
        ("Data Docs (quality)", f"{web}:{settings.serve_port}/quality/"),
        ("Airflow UI", f"{web}:{settings.airflow_port}/  (DAG lambdaflow_batch, paused: unpause to run)"),
        ("  user admin, password", _shown(secrets_["airflow_password"])),
        ("Kafka (Tansu)", broker.bootstrap_servers),
        ("  storage", broker.storage_description),
        ("topics", ", ".join((*settings.topics, settings.topic_dead_letter, settings.topic_alerts))),
        ("lake (Parquet)", str(settings.lake_dir)),
        ("serving store", settings.resolved_store_url),
        ("logs", str(settings.data_dir.resolve() / "logs")),
    ]
    width = max(len(name) for name, _ in rows)
    out.write("\nlambdaflow is up — Ctrl-C stops everything\n")
    for name, value in rows:
        out.write(f"  {name:<{width}}  {value}\n")
    out.write("\n")
    out.flush()


def require_free_ports(settings: Settings) -> None:
    """Stop at once, in one line, when a port the stack needs is taken (not after half of it started)."""
    wanted = {"LAMBDAFLOW_BROKER_PORT": (settings.broker_host, settings.broker_port),
              "LAMBDAFLOW_SERVE_PORT": (settings.serve_host, settings.serve_port),
              "LAMBDAFLOW_AIRFLOW_PORT": (settings.serve_host, settings.airflow_port)}  # fmt: skip
    for variable, (host, port) in wanted.items():
        check_port_free(host, port, hint=f"set {variable}")


def migrate_airflow(env: dict[str, str], log_path: Path) -> None:
    """Create or upgrade Airflow's metadata database (SQLite) before its components start."""
    airflow = str(Path(sys.executable).parent / "airflow")
    print("preparing Airflow's metadata database (first start: ~20 s) …", flush=True)
    with log_path.open("w") as log:
        done = subprocess.run([airflow, "db", "migrate"], env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed (exit {done.returncode}); see {log_path}")


def run_stack(
    settings: Settings, iot_rate: float = 20.0, activity_rate: float = 10.0, demo: bool = True
) -> int:
    """Start the embedded stack and block until Ctrl-C; return the exit code."""
    from ingestion.topics import ensure_topics, topic_plan
    from lambdaflow.kafka import KafkaConnection

    with single_instance(settings.data_dir.resolve() / "up.lock"):
        require_free_ports(settings)
        logs = settings.data_dir.resolve() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        root = Path(__file__).resolve().parents[1]
        secrets_ = credentials(settings)
        env = {**os.environ, **airflow_env(settings, root, secrets_)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["LAMBDAFLOW_API_TOKEN"] = secrets_["api_token"].value
        migrate_airflow(env, logs / "airflow-db-migrate.log")
        with EmbeddedBroker(
            settings.broker_host,
            settings.broker_port,
            log_path=logs / "broker.log",
            storage=settings.embedded_broker_storage,
        ) as broker:
            ensure_topics(KafkaConnection(broker.bootstrap_servers), topic_plan(settings))
            env["LAMBDAFLOW_KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap_servers
            manager = StagedManager(
                [(("iot", "activity"), 15.0), (("stream",), settings.stream_drain_seconds + 60.0)],
                alone=frozenset({"stream"}),
            )
            for name, command in demo_processes(settings, iot_rate, activity_rate, demo).items():
                # exec: the pid honcho holds is the program's own, which the streaming app's stop signals
                manager.add_process(name, "exec " + " ".join(command), env=env, cwd=str(root))
            print_endpoints(settings, broker, secrets_)
            manager.loop()
            return manager.returncode or 0
