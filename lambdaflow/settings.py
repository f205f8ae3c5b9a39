"""Settings from `LAMBDAFLOW_*` environment variables, with defaults for the embedded single-machine stack.

`load_settings()` is the only entry point: it turns a bad value into `SettingsError`, whose message is one
line naming the variable, so every command can stop at start-up without a traceback.
"""

from __future__ import annotations

import os
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "LAMBDAFLOW_"


class SettingsError(ValueError):
    """A configuration value is invalid; the message is one line that names the environment variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    data_dir: Path = Field(Path(".lambdaflow"), validate_default=True)

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    topic_iot: str = "iot_sensors"
    topic_activity: str = "user_activity"
    topic_dead_letter: str = "dead_letter"
    topic_alerts: str = "alerts"
    topic_partitions: int = Field(4, ge=1, le=1024)

    broker_host: str = "127.0.0.1"
    broker_port: int = Field(9092, ge=1, le=65535)
    # the embedded broker's records, topics and consumer offsets: kept under <data dir>/broker across restarts
    # and crashes, or in memory and lost when it stops
    broker_storage: Literal["durable", "memory"] = "durable"

    store_url: str | None = None
    spark_master: str = "local[2]"
    spark_driver_memory: str = Field("2g", pattern=r"^\d+[kmgt]$")
    spark_shuffle_partitions: int = Field(4, ge=1)
    # stateful streaming queries: one state partition each keeps a trickle's micro-batch to a few tasks;
    # fixed in a query's checkpoint when it first starts
    stream_shuffle_partitions: int = Field(1, ge=1)
    # the streaming application's JVM heap: its state is off the heap (RocksDB), and a smaller heap keeps
    # the whole JVM, native memory included, within its 2 GiB budget
    stream_driver_memory: str = Field("1536m", pattern=r"^\d+[kmgt]$")

    window_seconds: int = Field(300, ge=1, le=86_400)
    watermark_seconds: int = Field(600, ge=0)
    # Offsets that went missing (a recreated topic, retention, a fresh broker) stop a query unless false, as
    # with Spark's own Kafka source.
    fail_on_data_loss: bool = True
    # On SIGTERM/Ctrl-C the streaming app processes what the broker holds for at most this long, then stops.
    stream_drain_seconds: float = Field(60.0, ge=0)
    session_gap_seconds: int = Field(1800, ge=1)
    max_future_seconds: int = Field(
        300, ge=0, description="events stamped further ahead of ingest are invalid"
    )

    alert_temperature_c: float = Field(30.0, ge=-50, le=100)
    alert_battery_pct: float = Field(20.0, ge=0, le=100)
    alert_session_s: float = Field(300.0, gt=0)
    alert_anomaly_z: float = Field(3.0, gt=0)

    batch_start_date: date = date(2026, 1, 1)  # the batch DAG's first data interval
    batch_retries: int = Field(2, ge=0, le=10)  # per task, with exponential backoff
    batch_retry_delay_seconds: int = Field(60, ge=1)  # before a task's first retry; doubles each retry
    batch_lake_poke_seconds: int = Field(60, ge=1)  # how often the DAG's lake sensor checks
    batch_lake_timeout_hours: float = Field(12.0, gt=0)  # then the day's run fails
    quality_min_rows: int = Field(1, ge=0)  # a raw day's expected row-count band
    quality_max_rows: int = Field(100_000_000, ge=1)
    reconcile_max_mismatch: float = Field(0.05, ge=0, le=1)  # share of windows whose counts may differ
    # the lake's copy in Azure Blob Storage: an Airflow `wasb` connection (AIRFLOW_CONN_<ID>, never the repo)
    azure_conn_id: str = Field("lambdaflow_azure", pattern=r"^[A-Za-z0-9_]+$")
    azure_container: str = Field("lambdaflow", pattern=r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")

    serve_host: str = "127.0.0.1"  # the HTTP API and dashboard (`lambdaflow serve`)
    serve_port: int = Field(8000, ge=1, le=65535)
    serve_workers: int = Field(2, ge=1, le=64)  # server worker processes
    serve_threads: int = Field(4, ge=1, le=256)  # threads per worker that run the app
    api_token: SecretStr | None = None  # when set, every endpoint but /health needs `Authorization: Bearer …`
    # answers wholly before the batch horizon change only when a day is published: each worker keeps them
    # this long (0: never), so re-publishing an older day shows after at most this delay
    serve_cache_seconds: float = Field(10.0, ge=0)
    # a query silent this long counts as down; one with lag whose offsets stay put this long, as stalled
    health_stream_stale_seconds: float = Field(120.0, gt=0)
    # `lambdaflow stream`'s Prometheus endpoint on 127.0.0.1 (0: none)
    stream_metrics_port: int = Field(9464, ge=0, le=65535)

    airflow_port: int = Field(8080, ge=1, le=65535)  # `lambdaflow up`: Airflow's UI and API on serve_host
    airflow_password: SecretStr | None = None  # `lambdaflow up`: Airflow's admin password (else generated)
    # `lambdaflow up` with demo producers, on a data directory without history: whole days of simulated
    # history sent through Kafka first (in about `demo_history_seconds`), so the batch DAG has days to run
    demo_history_days: int = Field(3, ge=0, le=31)
    demo_history_seconds: float = Field(60.0, gt=0)
    # `lambdaflow up` with demo producers: the batch DAG starts unpaused, so its catch-up runs the history
    demo_dag_unpaused: bool = True

    trigger_seconds: float = Field(1.0, ge=0)  # the speed queries: their views' freshness
    # The archiver's lake is read by the daily batch, not for freshness: fewer micro-batches write fewer,
    # larger Parquet files. Shorter ones (3 s) cut the speed views' tail latency instead: the speed queries'
    # micro-batches then meet the archiver's work in short bursts, not one that holds both cores.
    archive_trigger_seconds: float = Field(10.0, ge=0)
    max_records_per_trigger: int = Field(1_000_000, ge=1)

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port[,host:port…], got {server.strip()!r}")
        return value

    @field_validator("data_dir")
    @classmethod
    def _directory_or_creatable(cls, value: Path) -> Path:
        path = value.absolute()
        nearest = next(folder for folder in (path, *path.parents) if folder.exists())
        if not nearest.is_dir():
            raise ValueError("not a directory" if nearest == path else f"{nearest} is not a directory")
        if nearest != path and not os.access(nearest, os.W_OK | os.X_OK):
            raise ValueError(f"cannot be created: {nearest} is not writable")
        return value

    @field_validator("store_url")
    @classmethod
    def _store_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith(("sqlite://", "postgresql://", "postgresql+")):
            raise ValueError("expected a sqlite:// or postgresql:// SQLAlchemy URL")
        if value.startswith("sqlite"):
            folder = _sqlite_folder(value)
            if folder is not None and not folder.is_dir():
                # only the default store under the data directory is created with it
                raise ValueError(f"the SQLite file's folder {folder} is not an existing directory")
        return value

    @model_validator(mode="after")
    def _window_divides_day(self) -> Settings:
        if 86_400 % self.window_seconds:
            raise ValueError("window_seconds: must divide a day (86400 s) so windows align to UTC midnight")
        return self

    @property
    def topics(self) -> tuple[str, str]:
        """The two event topics, in contract order."""
        return (self.topic_iot, self.topic_activity)

    @property
    def topic_contracts(self) -> dict[str, str]:
        """Each event topic and the contract its records follow."""
        return {self.topic_iot: "iot_sensors", self.topic_activity: "user_activity"}

    def topic_for(self, contract: str) -> str:
        """The topic that carries a contract's events."""
        return {name: topic for topic, name in self.topic_contracts.items()}[contract]

    @cached_property
    def lake_dir(self) -> Path:
        return self.data_dir.resolve() / "lake"

    @cached_property
    def broker_dir(self) -> Path:
        """The embedded broker's durable storage (a SeaweedFS S3 server's volumes and metadata)."""
        return self.data_dir.resolve() / "broker"

    @property
    def embedded_broker_storage(self) -> Path | str:
        """What `EmbeddedBroker(storage=…)` gets: `broker_dir`, or "memory"."""
        return self.broker_dir if self.broker_storage == "durable" else "memory"

    @cached_property
    def checkpoint_dir(self) -> Path:
        return self.data_dir.resolve() / "checkpoints"

    @cached_property
    def quality_dir(self) -> Path:
        """Great Expectations validation results and Data Docs (`data_docs/`)."""
        return self.data_dir.resolve() / "quality"

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.data_dir.resolve() / 'serving.db'}"


def _sqlite_folder(url: str) -> Path | None:
    """The directory of a SQLite URL's database file; None for an in-memory or `file:` URI database."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        database = make_url(url).database
    except ArgumentError as exc:
        raise ValueError(str(exc)) from None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).absolute().parent


def is_secret(field: str) -> bool:
    """Whether a setting holds credentials: a `SecretStr`, or the store URL (it may carry a password)."""
    annotation = Settings.model_fields[field].annotation
    return field == "store_url" or SecretStr in (annotation, *get_args(annotation))


def secret_variables() -> list[str]:
    """The environment variables of the settings that hold credentials."""
    return [ENV_PREFIX + field.upper() for field in Settings.model_fields if is_secret(field)]


def _shown(field: str, value: object) -> object:
    """A bad value as an error message may show it: a secret's not at all, a URL's scheme only (its user,
    password and query may be credentials)."""
    if field in Settings.model_fields and is_secret(field):
        scheme, separator, _ = str(value).partition("://")
        # a scheme is letters, digits and '+' (postgresql+psycopg): anything else before '://' may be a secret
        return f"{scheme}://<hidden>" if separator and scheme.replace("+", "").isalnum() else "<hidden>"
    return str(value) if isinstance(value, Path) else value


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment (and explicit overrides); raise `SettingsError` on a bad value."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else str(error["msg"]).split(":")[0].split()[-1]
        variable = ENV_PREFIX + field.upper()
        shown = _shown(field, os.environ.get(variable, error.get("input")))
        message = str(error["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"invalid setting {variable}={shown!r}: {message}") from None
