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
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from honcho.manager import Manager

from lambdaflow.broker import EmbeddedBroker, check_port_free
from lambdaflow.file_lock import LockHeld, lock_file, write_holder
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

    def _start(self) -> None:
        # honcho has just installed its SIGINT/SIGTERM handlers: a second signal while the stages run stops
        # every process at once (the streaming app's checkpoints make a kill safe), as the stream's own does
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._second_signal_kills(signal.getsignal(signum)))
        super()._start()

    def _second_signal_kills(self, honchos: Any) -> Callable[[int, Any], None]:
        def handle(signum: int, frame: Any) -> None:
            if not self._terminating:
                honchos(signum, frame)
                return
            self._system_print(f"{signal.Signals(signum).name} again: stopping everything at once\n")
            self._signal(self._running(), force=True)

        return handle

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
    try:
        handle = lock_file(lock_path)
    except LockHeld as held:
        raise AlreadyRunning(
            f"lambdaflow is already running (pid {held.holder}, data dir {lock_path.parent}); Ctrl-C it first"
        ) from None
    write_holder(handle, str(os.getpid()))
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


# the demo producers' fault mix (`lambdaflow produce` options), history and live alike
DEMO_FAULTS = {"out_of_order": 0.02, "late": 0.005, "duplicates": 0.005, "malformed": 0.002}


@dataclass(frozen=True)
class DemoHistory:
    """The demo's simulated history: its days, and the topics whose history is still to be sent."""

    first_day: date | None  # None: no history (the batch DAG starts today)
    days: int
    pending: tuple[str, ...]

    @property
    def last_day(self) -> date | None:
        return self.first_day + timedelta(days=self.days - 1) if self.first_day else None


def demo_history(settings: Settings, demo: bool, today: date | None = None) -> DemoHistory:
    """What `up` does about history: the days that the markers in the data directory say were sent, else
    (with the demo producers) `demo_history_days` whole days before today; a topic without a marker gets its
    history sent before its live events."""
    from ingestion.history import read_marker

    today = today or datetime.now(UTC).date()
    markers = [marker for topic in settings.topics if (marker := read_marker(settings.data_dir, topic))]
    if markers:
        first_day, days = min(m.first_day for m in markers), max(m.days for m in markers)
    elif demo and settings.demo_history_days:
        first_day, days = today - timedelta(days=settings.demo_history_days), settings.demo_history_days
    else:
        return DemoHistory(None, 0, ())
    sent = {marker.topic for marker in markers}
    pending = tuple(topic for topic in settings.topics if topic not in sent) if demo else ()
    return DemoHistory(first_day, days, pending)


def airflow_env(
    settings: Settings, root: Path, secrets_: dict[str, Credential], history: DemoHistory | None = None,
    unpaused: bool = False,
) -> dict[str, str]:  # fmt: skip
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
        # the scheduler, started with the API server, may hand a worker the DAG's first task before the API
        # server answers: with 10 tries (waits growing to minutes) the worker waits for it, where Airflow's 5
        # gave up within seconds and the task failed its first try, then waited out the retry delay
        "AIRFLOW__WORKERS__EXECUTION_API_RETRIES": "10",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "cli" / "airflow_plugins"),
        # the DAG starts with the lake: its history's first day, else today (catching up from the default
        # start date would queue empty days)
        "LAMBDAFLOW_BATCH_START_DATE": os.environ.get("LAMBDAFLOW_BATCH_START_DATE")
        or ((history and history.first_day) or datetime.now(UTC).date()).isoformat(),
        # unpaused, the DAG's catch-up runs the history's days as soon as the DAG is parsed
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": str(not unpaused),
    }


def demo_processes(
    settings: Settings, iot_rate: float, activity_rate: float, demo: bool = True,
    history: DemoHistory | None = None,
) -> dict[str, list[str]]:  # fmt: skip
    """The commands `up` runs besides the broker, by name (without the demo producers unless `demo`); a
    producer whose topic's history is pending sends it first."""
    command = [sys.executable, "-m", "cli"]
    airflow = str(Path(sys.executable).parent / "airflow")
    demo_faults = [f"--{name.replace('_', '-')}={share}" for name, share in DEMO_FAULTS.items()]

    def history_of(topic: str) -> list[str]:
        if history is None or history.first_day is None or topic not in history.pending:
            return []
        return ["--history-days", str(history.days), "--history-from", history.first_day.isoformat()]

    producers = {
        "iot": [*command, "produce", "iot", "--rate", str(iot_rate), *demo_faults,
                *history_of(settings.topic_iot)],
        "activity": [*command, "produce", "activity", "--rate", str(activity_rate), *demo_faults,
                     *history_of(settings.topic_activity)],
    }  # fmt: skip
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


def history_line(settings: Settings, history: DemoHistory) -> str:
    """What the banner says about the history ("3 days of history: publishing …")."""
    from ingestion.history import HistoryPlan

    if history.first_day is None:
        return "none (produce events, or run the demo on a fresh data directory)"
    plural = "s" if history.days != 1 else ""
    days = f"{history.days} day{plural} of history ({history.first_day} … {history.last_day})"
    if not history.pending:
        return f"{days}: sent by an earlier start (markers in {settings.data_dir.resolve() / 'history'})"
    kinds = {settings.topic_iot: "iot", settings.topic_activity: "activity"}
    events = sum(
        HistoryPlan(kinds[topic], history.first_day, history.days).events for topic in history.pending
    )
    return (f"{days}: publishing {events:,} events through Kafka in ~{settings.demo_history_seconds:.0f} s, "
            "then live events; the DAG's catch-up publishes each day")  # fmt: skip


def print_endpoints(settings: Settings, broker: EmbeddedBroker, secrets_: dict[str, Credential],
                    out: TextIO = sys.stdout, history: DemoHistory | None = None,
                    unpaused: bool = False) -> None:  # fmt: skip
    web = f"http://{settings.serve_host}"
    dag_state = "unpaused: catch-up runs each past day" if unpaused else "paused: unpause to run"
    rows = [
        ("dashboard", f"{web}:{settings.serve_port}/"),
        ("HTTP API (OpenAPI docs)", f"{web}:{settings.serve_port}/api/docs/"),
        ("  API token (Bearer)", _shown(secrets_["api_token"])),
        ("Data Docs (quality)", f"{web}:{settings.serve_port}/quality/"),
        ("Airflow UI", f"{web}:{settings.airflow_port}/  (DAG lambdaflow_batch, {dag_state})"),
        ("  user admin, password", _shown(secrets_["airflow_password"])),
        ("Kafka (Tansu)", broker.bootstrap_servers),
        ("  storage", broker.storage_description),
        ("topics", ", ".join((*settings.topics, settings.topic_dead_letter, settings.topic_alerts))),
        ("lake (Parquet)", str(settings.lake_dir)),
        ("serving store", settings.resolved_store_url),
        ("logs", str(settings.data_dir.resolve() / "logs")),
        *([("history", history_line(settings, history))] if history else []),
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
        history = demo_history(settings, demo)
        # only the demo's DAG starts unpaused: without demo producers the lake holds what the user sends
        unpaused = demo and settings.demo_dag_unpaused
        env = {**os.environ, **airflow_env(settings, root, secrets_, history, unpaused)}
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
            for name, command in demo_processes(settings, iot_rate, activity_rate, demo, history).items():
                # exec: the pid honcho holds is the program's own, which the streaming app's stop signals
                manager.add_process(name, "exec " + " ".join(command), env=env, cwd=str(root))
            print_endpoints(settings, broker, secrets_, history=history, unpaused=unpaused)
            manager.loop()
            return manager.returncode or 0
