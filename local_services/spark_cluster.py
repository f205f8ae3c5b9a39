"""A Spark standalone master and one worker from the installed PySpark on 127.0.0.1, started with the commands
docker-compose.yaml's services run (cli/services.py): where they listen is environment, as in the compose
file, so their commands are the services' commands."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cli.services import services
from lambdaflow.broker import free_port

ROOT = Path(__file__).resolve().parents[1]
WORKER_CORES = 2


@dataclass(frozen=True)
class SparkCluster:
    url: str  # the master's, spark://127.0.0.1:port
    logs: Path

    def applications(self) -> list[str]:
        """The names of the applications the master has registered, in order: proof that work ran here,
        not in a local session."""
        return re.findall(r"Master: Registering app (\S+)", (self.logs / "spark-master.log").read_text())


def _alive_workers(web_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/json/", timeout=2) as answer:
            return int(json.load(answer).get("aliveworkers", 0))
    except OSError:
        return 0


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def running_spark_cluster(base: Path) -> Iterator[SparkCluster]:
    """A master and one worker (2 cores, 2 GiB), logs and work folders under `base`; yields the cluster
    once the worker has registered."""
    base.mkdir(parents=True, exist_ok=True)
    port, web_port = free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    commands = services(spark_master=url)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(base)}
    master_env = {**env, "SPARK_MASTER_HOST": "127.0.0.1", "SPARK_MASTER_PORT": str(port),
                  "SPARK_MASTER_WEBUI_PORT": str(web_port)}  # fmt: skip
    # the executors' Python workers import the project (installed in the image; here from the checkout)
    worker_env = {**env, "SPARK_WORKER_CORES": str(WORKER_CORES), "SPARK_WORKER_MEMORY": "2g",
                  "SPARK_WORKER_WEBUI_PORT": str(free_port()), "SPARK_WORKER_DIR": str(base / "work"),
                  "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}  # fmt: skip
    started = []
    try:
        for name, service_env in (("spark-master", master_env), ("spark-worker", worker_env)):
            with (base / f"{name}.log").open("w") as log:
                command = commands[name].local_command()
                process = subprocess.Popen(command, env=service_env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)  # fmt: skip
                started.append(process)
        deadline = time.monotonic() + 120
        while _alive_workers(web_port) < 1:
            exited = [p.args for p in started if p.poll() is not None]
            if exited or time.monotonic() > deadline:
                raise RuntimeError(f"the Spark cluster did not come up (logs in {base}): {exited}")
            time.sleep(0.5)
        yield SparkCluster(url, base)
    finally:
        for process in reversed(started):
            _stop(process)
