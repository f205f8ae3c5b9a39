"""`lambdaflow up` (what `make run` starts): demo data flows into the lake; one instance; Ctrl-C stops all."""

import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from lambdaflow.broker import free_port
from tests.conftest import LAMBDAFLOW, ROOT, run_cli

pytestmark = pytest.mark.integration


def test_up_runs_the_embedded_stack_and_stops_cleanly(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMBDAFLOW_")}
    env.update(
        PYTHONPATH=str(ROOT),
        LAMBDAFLOW_DATA_DIR=str(tmp_path),
        LAMBDAFLOW_BROKER_PORT=str(free_port()),
        LAMBDAFLOW_TRIGGER_SECONDS="0.5",
    )
    command = [*LAMBDAFLOW, "up", "--iot-rate", "50", "--activity-rate", "50"]
    stack = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        status = tmp_path / "status" / "archiver.json"
        deadline = time.monotonic() + 180
        archived = {}
        while time.monotonic() < deadline and not (len(archived) == 2 and all(archived.values())):
            assert stack.poll() is None, stack.stdout.read()
            if status.exists():
                archived = {t: s["valid"] for t, s in json.loads(status.read_text())["topics"].items()}
            time.sleep(0.5)
        assert set(archived) == {"iot_sensors", "user_activity"} and all(archived.values()), archived

        second = run_cli(["up"], env, timeout=60, check=False)
        assert second.returncode == 1
        assert len(second.stderr.strip().splitlines()) == 1
        assert "lambdaflow is already running" in second.stderr
        children = psutil.Process(stack.pid).children(recursive=True)
        assert any("java" in child.name() for child in children), "no Spark JVM under the stack"
    finally:
        stack.send_signal(signal.SIGINT)
        output, _ = stack.communicate(timeout=90)
    assert "lambdaflow is up" in output
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"processes left running after Ctrl-C: {[p.name() for p in alive]}"
