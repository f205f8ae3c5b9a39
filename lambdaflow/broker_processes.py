"""What the embedded broker and its object store share: their error, ports, and child processes that stop
with a grace and die with lambdaflow. Both `lambdaflow.broker` and `lambdaflow.object_store` import it, so
neither imports the other for these."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


class BrokerError(RuntimeError):
    """The embedded broker cannot start; the message is one line saying why."""


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


def stop_process(process: subprocess.Popen | None, grace_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited after `grace_s`; returns once it has exited."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def dies_with_parent(signum: int) -> Callable[[], None] | None:
    """A `preexec_fn` after which the kernel sends `signum` to the child when the thread that started it ends,
    so a kill -9 of lambdaflow leaves no broker behind holding its ports and storage (None off Linux). Start
    the broker from a thread that lives as long as it should: the main thread, in lambdaflow."""
    if _libc is None:
        return None
    parent, prctl = os.getpid(), _libc.prctl

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signum)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return set_death_signal
