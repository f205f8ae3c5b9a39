"""docker-compose.yaml: real Kafka (KRaft) and PostgreSQL, loopback ports, no secrets in the file."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yaml"


def test_services_images_ports_and_secrets():
    text = COMPOSE.read_text()
    services = yaml.safe_load(text)["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert (
        services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    )  # KRaft, no ZooKeeper
    assert services["postgres"]["image"].startswith("postgres:")
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${LAMBDAFLOW_POSTGRES_PASSWORD:?"
    )


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_docker_compose_config_accepts_the_file():
    env = {**os.environ, "LAMBDAFLOW_POSTGRES_PASSWORD": "check-only"}
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "--quiet"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    unset = {k: v for k, v in env.items() if k != "LAMBDAFLOW_POSTGRES_PASSWORD"}
    refused = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "--quiet"], env=unset,
                             capture_output=True, text=True)  # fmt: skip
    assert refused.returncode != 0 and "LAMBDAFLOW_POSTGRES_PASSWORD" in refused.stderr
