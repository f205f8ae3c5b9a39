"""`lambdaflow broker`: starts Tansu with the topics, refuses a taken port in one line, stops on Ctrl-C."""

import signal
import subprocess
import time

import pytest
from kafka import KafkaConsumer

from tests.conftest import LAMBDAFLOW, ROOT, free_port, run_cli

pytestmark = pytest.mark.integration


def test_broker_command_lifecycle(tmp_path):
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "LAMBDAFLOW_DATA_DIR": str(tmp_path),
           "LAMBDAFLOW_BROKER_PORT": str(port)}  # fmt: skip
    broker = subprocess.Popen([*LAMBDAFLOW, "broker"], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        ready = ""
        deadline = time.monotonic() + 60
        while "broker ready" not in ready and time.monotonic() < deadline:
            ready = broker.stderr.readline()
            assert ready or broker.poll() is None, "the broker exited during start-up"
        assert f"broker ready on 127.0.0.1:{port}" in ready

        consumer = KafkaConsumer(bootstrap_servers=f"127.0.0.1:{port}")
        partitions = {t: len(consumer.partitions_for_topic(t) or ()) for t in consumer.topics()}
        consumer.close()
        assert partitions == {"iot_sensors": 4, "user_activity": 4, "dead_letter": 1, "alerts": 1}

        second = run_cli(["broker"], env, timeout=60, check=False)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines() == [
            f"lambdaflow: port 127.0.0.1:{port} is already in use "
            "(another broker running? set LAMBDAFLOW_BROKER_PORT or stop it)"
        ]
    finally:
        broker.send_signal(signal.SIGINT)
        assert broker.wait(timeout=30) == 0
    assert "broker stopped" in broker.stderr.read()
