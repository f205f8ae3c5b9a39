"""docker-compose.yaml: the whole system, each lambdaflow and Airflow service running the command of the one
list (cli/services.py) that the distributed test runs; healthchecks and start order; the lake on one volume
at one path; loopback ports; every secret named in .env.example and none in the files. The PostgreSQL init
script and Grafana's dashboard run against a real PostgreSQL and the store's real schema."""

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.exc import ProgrammingError

from cli.services import COMPOSE_SPARK_MASTER, services

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DEPLOY = ROOT / "deploy"
INFRASTRUCTURE = {"kafka", "topics", "postgres", "grafana"}  # their images' own commands
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|_KEY$", re.IGNORECASE)


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def secret_names() -> list[str]:
    return re.findall(r"^([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE)


def check_env() -> dict[str, str]:
    """The environment with every variable of .env.example set to a placeholder."""
    return {**os.environ, **dict.fromkeys(secret_names(), "check-only")}


def test_every_service_of_the_system_is_there():
    listed = compose()["services"]
    assert set(listed) == INFRASTRUCTURE | set(services())
    assert listed["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper


def test_each_service_runs_the_command_of_the_one_list():
    listed = compose()["services"]
    for name, service in services(spark_master=COMPOSE_SPARK_MASTER).items():
        assert listed[name]["command"] == service.command, name
        assert listed[name]["image"].startswith("lambdaflow:"), f"{name} runs another image"


def test_services_start_in_order_and_say_when_they_are_healthy():
    listed = compose()["services"]
    for name, service in listed.items():
        for needed, condition in service.get("depends_on", {}).items():
            one_shot = needed in ("topics", "airflow-init")
            wanted = "service_completed_successfully" if one_shot else "service_healthy"
            assert condition == {"condition": wanted}, (name, needed)
            assert needed in listed
        one_shot = name == "topics" or (name in services() and services()[name].one_shot)
        assert one_shot or "healthcheck" in service, f"{name} has no healthcheck"
    assert "airflow-init" in listed["airflow-scheduler"]["depends_on"]
    assert listed["stream"]["depends_on"].keys() >= {"topics", "postgres", "spark-worker"}


def test_the_lake_is_one_volume_at_one_path_wherever_spark_or_the_batch_runs():
    listed = compose()["services"]
    for name in ("spark-worker", "stream", "serve", "airflow-scheduler"):
        assert "lambdaflow-data:/data" in listed[name]["volumes"], name
        if name != "spark-worker":
            assert listed[name]["environment"]["LAMBDAFLOW_DATA_DIR"] == "/data", name
    # the drivers' executors connect back to them by these names
    assert listed["stream"]["environment"]["SPARK_LOCAL_HOSTNAME"] == listed["stream"]["hostname"]
    scheduler = listed["airflow-scheduler"]
    assert scheduler["environment"]["SPARK_LOCAL_HOSTNAME"] == scheduler["hostname"]


def test_ports_bind_to_loopback():
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


def test_every_secret_comes_from_env_example_and_none_is_in_the_files():
    text_ = COMPOSE.read_text()
    required = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):\?", text_))
    assert required == set(secret_names()), "docker-compose.yaml's required variables and .env.example differ"
    assert not re.search(r"^[A-Z][A-Z0-9_]*=\S", ENV_EXAMPLE.read_text(), flags=re.MULTILINE)
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_WORDS.search(key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", str(value)), (name, key, value)
            if "://" in str(value) and "@" in str(value):  # a URL with credentials
                assert re.search(r"://\w+:\$\{[A-Z0-9_]+:\?", str(value)), (name, key, value)
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/store.yaml").read_text())
    for source in datasource["datasources"]:
        assert all(str(v).startswith("$") for v in source.get("secureJsonData", {}).values())


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_make_compose_check_accepts_the_file_and_a_missing_secret_is_refused():
    checked = subprocess.run(["make", "-s", "compose-check"], cwd=ROOT, capture_output=True, text=True)
    assert checked.returncode == 0 and "docker-compose.yaml is valid" in checked.stdout, checked.stderr
    command = ["docker-compose", "-f", str(COMPOSE), "config", "--quiet"]
    for missing in secret_names():
        env = {k: v for k, v in check_env().items() if k != missing}
        refused = subprocess.run(command, env=env, capture_output=True, text=True)
        assert refused.returncode != 0 and f"set {missing}" in refused.stderr, missing


def _dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/lambdaflow-views.json").read_text())
    return [target["rawSql"] for panel in dashboard["panels"] for target in panel["targets"]]


@pytest.mark.integration
def test_init_script_makes_airflows_database_and_a_role_that_only_reads_the_store(postgres_url):
    """deploy/postgres/init-databases.sh as the postgres image runs it, then the store's migrations as its
    owner: Airflow's role owns its database, and Grafana's role runs the dashboard's queries on the store's
    tables and may not write them."""
    from lambdaflow import store

    server = postgres_url.rsplit("/", 1)[0]
    database = f"lambdaflow_{uuid.uuid4().hex[:12]}"
    with create_engine(postgres_url, isolation_level="AUTOCOMMIT").connect() as connection:
        connection.execute(text(f"CREATE DATABASE {database}"))
    host, port = re.search(r"@([\d.]+):(\d+)/", postgres_url).groups()
    env = {**os.environ, "PGHOST": host, "PGPORT": port, "POSTGRES_USER": "postgres", "POSTGRES_DB": database,
           "AIRFLOW_POSTGRES_PASSWORD": "check-only", "GRAFANA_POSTGRES_PASSWORD": "check-only"}  # fmt: skip
    done = subprocess.run(["bash", str(DEPLOY / "postgres/init-databases.sh")], env=env, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr

    store_engine = store.engine(f"{server}/{database}")  # creates the tables as the owner
    store_engine.dispose()
    with create_engine(f"{server.replace('//postgres@', '//airflow@')}/airflow").connect() as connection:
        connection.execute(text("CREATE TABLE airflow_may_create (id int)"))
    grafana = create_engine(f"{server.replace('//postgres@', '//grafana@')}/{database}")
    with grafana.connect() as connection:
        for query in _dashboard_queries():
            connection.execute(text(re.sub(r"\$__timeFilter\((\w+)\)", r"\1 IS NOT NULL", query))).all()
    with grafana.connect() as connection, pytest.raises(ProgrammingError, match="permission denied"):
        connection.execute(text("DELETE FROM alerts"))
    grafana.dispose()
