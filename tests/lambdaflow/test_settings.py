import subprocess
import sys
from pathlib import Path

import pytest

from lambdaflow.settings import SettingsError, load_settings, secret_variables

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_the_embedded_stack(monkeypatch):
    for name in ("LAMBDAFLOW_DATA_DIR", "LAMBDAFLOW_KAFKA_BOOTSTRAP_SERVERS", "LAMBDAFLOW_STORE_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.data_dir == Path(".lambdaflow")
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.resolved_store_url.endswith(".lambdaflow/serving.db")
    assert settings.topics == ("iot_sensors", "user_activity")
    assert (settings.topic_partitions, settings.window_seconds, settings.watermark_seconds) == (4, 300, 600)


def test_environment_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("LAMBDAFLOW_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LAMBDAFLOW_WATERMARK_SECONDS", "120")
    monkeypatch.setenv("LAMBDAFLOW_STORE_URL", "postgresql://u@127.0.0.1/lf")
    settings = load_settings()
    assert settings.lake_dir == tmp_path.resolve() / "lake"
    assert settings.watermark_seconds == 120
    assert settings.resolved_store_url == "postgresql://u@127.0.0.1/lf"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("LAMBDAFLOW_TOPIC_PARTITIONS", "four", "invalid setting LAMBDAFLOW_TOPIC_PARTITIONS='four'"),
        ("LAMBDAFLOW_TOPIC_PARTITIONS", "0", "invalid setting LAMBDAFLOW_TOPIC_PARTITIONS='0'"),
        ("LAMBDAFLOW_KAFKA_BOOTSTRAP_SERVERS", "localhost", "LAMBDAFLOW_KAFKA_BOOTSTRAP_SERVERS='localhost'"),
        (
            "LAMBDAFLOW_WINDOW_SECONDS",
            "7",
            "LAMBDAFLOW_WINDOW_SECONDS='7': window_seconds: must divide a day",
        ),
        ("LAMBDAFLOW_STORE_URL", "mysql://x", "LAMBDAFLOW_STORE_URL='mysql://<hidden>'"),
        ("LAMBDAFLOW_SPARK_DRIVER_MEMORY", "lots", "LAMBDAFLOW_SPARK_DRIVER_MEMORY='lots'"),
        ("LAMBDAFLOW_KAFKA_SECURITY_PROTOCOL", "TLS", "LAMBDAFLOW_KAFKA_SECURITY_PROTOCOL='TLS'"),
    ],
)
def test_bad_values_name_the_variable_in_one_line(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("postgres://lf:s3cret@db/lf", "postgres://<hidden>"),  # postgres:// is not SQLAlchemy's name
        ("postgres://lf:p@s3cret@db/lf", "postgres://<hidden>"),
        ("postgres://db/lf?password=s3cret", "postgres://<hidden>"),
        ("s3cret", "<hidden>"),
    ],
)
def test_a_bad_store_url_is_named_but_its_credentials_not_shown(monkeypatch, value, shown):
    monkeypatch.setenv("LAMBDAFLOW_STORE_URL", value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert f"LAMBDAFLOW_STORE_URL='{shown}'" in str(error.value) and "s3cret" not in str(error.value)


def test_the_secret_settings_are_the_credentials():
    assert sorted(secret_variables()) == [
        "LAMBDAFLOW_AIRFLOW_PASSWORD", "LAMBDAFLOW_API_TOKEN", "LAMBDAFLOW_KAFKA_SASL_PASSWORD",
        "LAMBDAFLOW_STORE_URL",
    ]  # fmt: skip


def test_commands_stop_at_start_up_with_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "LAMBDAFLOW_TOPIC_PARTITIONS": "many", "PYTHONPATH": str(ROOT)}
    for command in (["broker"], ["archive", "--once"], ["produce", "iot", "--count", "1"], ["topics"]):
        result = subprocess.run(
            [sys.executable, "-m", "cli", *command],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.strip().splitlines() == [
            "lambdaflow: invalid setting LAMBDAFLOW_TOPIC_PARTITIONS='many': "
            "Input should be a valid integer, unable to parse string as an integer"
        ]


def test_paths_that_cannot_be_used_name_the_variable(monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    for variable, value, message in [
        ("LAMBDAFLOW_DATA_DIR", tmp_path / "file", "not a directory"),
        ("LAMBDAFLOW_DATA_DIR", tmp_path / "file" / "data", f"{tmp_path / 'file'} is not a directory"),
        ("LAMBDAFLOW_STORE_URL", f"sqlite:///{tmp_path}/missing/serving.db", "is not an existing directory"),
        ("LAMBDAFLOW_STORE_URL", f"sqlite:///{tmp_path}/file/serving.db", "is not an existing directory"),
    ]:
        monkeypatch.setenv(variable, str(value))
        with pytest.raises(SettingsError, match=f"invalid setting {variable}=.*{message}"):
            load_settings()
        monkeypatch.delenv(variable)
    assert not (tmp_path / "missing").exists()


def test_a_data_dir_to_create_and_sqlite_urls_in_existing_directories_are_fine(tmp_path):
    settings = load_settings(data_dir=tmp_path / "new" / "data")
    assert settings.resolved_store_url == f"sqlite:///{tmp_path.resolve()}/new/data/serving.db"
    for url in (f"sqlite:///{tmp_path}/serving.db", "sqlite://", "sqlite:///:memory:", "postgresql://u@h/db"):
        assert load_settings(data_dir=tmp_path, store_url=url).store_url == url
