"""`lambdaflow up` (what `make run` starts): the embedded stack on one machine, with demo data.

The broker runs in this process (so its topics exist before anything connects); every other part is a
`lambdaflow` command under honcho, which prefixes their output and stops them all on Ctrl-C or when one
exits. A lock file makes a second `up` say that one is running instead of fighting over ports.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from honcho.manager import Manager

from lambdaflow.broker import EmbeddedBroker
from lambdaflow.settings import Settings


class AlreadyRunning(RuntimeError):
    pass


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


def demo_processes(settings: Settings, iot_rate: float, activity_rate: float) -> dict[str, list[str]]:
    """The commands `up` runs besides the broker, by name."""
    command = [sys.executable, "-m", "lambdaflow.cli"]
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
    return {
        "stream": [*command, "stream"],  # the lake archiver and the speed layer's view queries
        "iot": [*command, "produce", "iot", "--rate", str(iot_rate), *demo_faults],
        "activity": [*command, "produce", "activity", "--rate", str(activity_rate), *demo_faults],
    }


def print_endpoints(settings: Settings, broker: EmbeddedBroker, out: TextIO = sys.stdout) -> None:
    rows = [
        ("Kafka (Tansu, in memory)", broker.bootstrap_servers),
        ("topics", ", ".join((*settings.topics, settings.topic_dead_letter, settings.topic_alerts))),
        ("lake (Parquet)", str(settings.lake_dir)),
        ("archiver status", str(settings.data_dir.resolve() / "status" / "archiver.json")),
        ("serving store (speed_* tables)", settings.resolved_store_url),
    ]
    width = max(len(name) for name, _ in rows)
    out.write("\nlambdaflow is up — Ctrl-C stops everything\n")
    for name, value in rows:
        out.write(f"  {name:<{width}}  {value}\n")
    out.write("\n")
    out.flush()


def run_stack(settings: Settings, iot_rate: float = 20.0, activity_rate: float = 10.0) -> int:
    """Start the embedded stack and block until Ctrl-C; return the exit code."""
    from ingestion.topics import ensure_topics, topic_plan

    with single_instance(settings.data_dir.resolve() / "up.lock"):
        log_path = settings.data_dir.resolve() / "logs" / "broker.log"
        with EmbeddedBroker(settings.broker_host, settings.broker_port, log_path=log_path) as broker:
            ensure_topics({"bootstrap_servers": broker.bootstrap_servers}, topic_plan(settings))
            env = {**os.environ, "LAMBDAFLOW_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers}
            root = Path(__file__).resolve().parents[1]
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
            manager = Manager()
            for name, command in demo_processes(settings, iot_rate, activity_rate).items():
                manager.add_process(name, " ".join(command), env=env, cwd=str(root))
            print_endpoints(settings, broker)
            manager.loop()
            return manager.returncode or 0
