"""One description of a Kafka connection, and each client's configuration made from it.

lambdaflow talks to Kafka through three interfaces: kafka-python (topic administration, the producers, the
source's offset bookkeeping), librdkafka (confluent-kafka: the source's reads and the alert producer) and the
Spark source's `kafka.*` options, which carry the connection from the driver to its readers. Each names the
same setting differently; `SETTINGS` below is the one table that translates them, so a connection made from
the settings, from the source's options or from an Azure Event Hubs profile reaches every client alike.

Azure Event Hubs: with `EVENT_HUB_CONN_STR` (a namespace connection string) set, the connection from the
settings is the namespace's Kafka endpoint, `<namespace>.servicebus.windows.net:9093` over SASL_SSL with the
PLAIN mechanism, user name `$ConnectionString` and the connection string as the password: the producers, the
archiver, the speed queries and the alert producer all reach Event Hubs alike (each topic is an event hub).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from lambdaflow.settings import Settings

log = logging.getLogger(__name__)

# How long the command line's kafka-python clients try to reach the broker (a client setting of its own, not
# part of the connection, which also configures the Spark source's readers).
CONNECT_TIMEOUT_MS = 5_000


@dataclass(frozen=True)
class KafkaConnection:
    """Where Kafka is and how to authenticate, plus the fetch sizes a Spark source's options may set."""

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)  # never printed
    ssl_cafile: str | None = None
    client_id: str | None = None
    request_timeout_ms: int | None = None
    metadata_max_age_ms: int | None = None
    fetch_max_bytes: int | None = None
    max_partition_fetch_bytes: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] = os.environ) -> KafkaConnection:
        """The configured Kafka, or Azure Event Hubs' Kafka endpoint when `EVENT_HUB_CONN_STR` is set."""
        event_hubs = environ.get(EVENT_HUBS_VARIABLE, "").strip()
        if event_hubs:
            connection = event_hubs_connection(event_hubs)
            if "kafka_bootstrap_servers" in settings.model_fields_set:  # both set: say which one wins
                log.warning("%s is set: Kafka clients connect to Event Hubs at %s, not to the configured %s",
                            EVENT_HUBS_VARIABLE, connection.bootstrap_servers,
                            settings.kafka_bootstrap_servers)  # fmt: skip
            return connection
        password = settings.kafka_sasl_password
        return cls(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            security_protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_username=settings.kafka_sasl_username if settings.kafka_sasl_mechanism else None,
            sasl_password=password.get_secret_value() if password and settings.kafka_sasl_mechanism else None,
        )

    @classmethod
    def from_source_options(cls, options: Mapping[str, str]) -> KafkaConnection:
        """The connection in a Spark source's options: its `kafka.*` ones (keys are case-insensitive; other
        options are the source's own)."""
        by_option = {setting.option: setting for setting in SETTINGS}
        values: dict[str, Any] = {}
        for key, value in options.items():
            key = key.lower()
            if not key.startswith("kafka."):
                continue
            if key not in by_option:
                raise ValueError(f"unsupported Kafka client option {key!r}; supported: {sorted(by_option)}")
            setting = by_option[key]
            values[setting.field] = setting.kind(value)
        if "bootstrap_servers" not in values:
            raise ValueError("option 'kafka.bootstrap.servers' is required")
        return cls(**values)

    @classmethod
    def from_kafka_python(cls, config: Mapping[str, Any]) -> KafkaConnection:
        """The connection in kafka-python keyword arguments (as `kafka_python()` gives them)."""
        by_name = {setting.kafka_python: setting.field for setting in SETTINGS}
        unknown = sorted(set(config) - set(by_name))
        if unknown:
            raise ValueError(f"not a Kafka connection setting: {unknown}")
        return cls(**{by_name[name]: value for name, value in config.items()})

    def _values(self) -> list[tuple[_Setting, Any]]:
        return [(setting, getattr(self, setting.field)) for setting in SETTINGS]

    def kafka_python(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's clients (KafkaProducer, KafkaConsumer, KafkaAdminClient)."""
        return {setting.kafka_python: value for setting, value in self._values() if value is not None}

    def rdkafka(self) -> dict[str, Any]:
        """Configuration properties for librdkafka (confluent-kafka's Producer and Consumer)."""
        return {setting.rdkafka: value for setting, value in self._values() if value is not None}

    def source_options(self) -> dict[str, str]:
        """The `kafka.*` options of the `lambdaflow_kafka` Spark source."""
        return {setting.option: str(value) for setting, value in self._values() if value is not None}


@dataclass(frozen=True)
class _Setting:
    field: str  # KafkaConnection's attribute
    kafka_python: str  # kafka-python's keyword argument
    rdkafka: str  # librdkafka's property
    kind: type  # its type (the source's options are strings)

    @property
    def option(self) -> str:
        """The Spark source's option: kafka-python's name, dotted, after `kafka.` (as Spark's own Kafka
        source passes `kafka.<client setting>`)."""
        return "kafka." + self.kafka_python.replace("_", ".")


SETTINGS = (
    _Setting("bootstrap_servers", "bootstrap_servers", "bootstrap.servers", str),
    _Setting("security_protocol", "security_protocol", "security.protocol", str),
    _Setting("sasl_mechanism", "sasl_mechanism", "sasl.mechanism", str),
    _Setting("sasl_username", "sasl_plain_username", "sasl.username", str),
    _Setting("sasl_password", "sasl_plain_password", "sasl.password", str),
    _Setting("ssl_cafile", "ssl_cafile", "ssl.ca.location", str),
    _Setting("client_id", "client_id", "client.id", str),
    _Setting("request_timeout_ms", "request_timeout_ms", "socket.timeout.ms", int),
    _Setting("metadata_max_age_ms", "metadata_max_age_ms", "metadata.max.age.ms", int),
    _Setting("fetch_max_bytes", "fetch_max_bytes", "fetch.max.bytes", int),
    _Setting("max_partition_fetch_bytes", "max_partition_fetch_bytes", "max.partition.fetch.bytes", int),
)


EVENT_HUBS_VARIABLE = "EVENT_HUB_CONN_STR"
EVENT_HUBS_KAFKA_PORT = 9093


def event_hubs_namespace(connection_string: str) -> str:
    """The namespace host of an Event Hubs connection string; `ValueError` (one line) when it is not one."""
    parts = dict(
        part.split("=", 1) for part in connection_string.strip().strip(";").split(";") if "=" in part
    )
    host = urlparse(parts.get("Endpoint", "")).hostname
    if not host:
        raise ValueError(f"{EVENT_HUBS_VARIABLE} has no Endpoint=sb://<namespace>.servicebus.windows.net/")
    if "SharedAccessKey" not in parts and "SharedAccessSignature" not in parts:
        raise ValueError(f"{EVENT_HUBS_VARIABLE} has no SharedAccessKey or SharedAccessSignature")
    return host


def event_hubs_connection(connection_string: str) -> KafkaConnection:
    """Event Hubs' Kafka endpoint for a connection string, with Event Hubs' recommended client timeouts."""
    return KafkaConnection(
        bootstrap_servers=f"{event_hubs_namespace(connection_string)}:{EVENT_HUBS_KAFKA_PORT}",
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="$ConnectionString",
        sasl_password=connection_string.strip(),
        request_timeout_ms=60_000,
        metadata_max_age_ms=180_000,
    )


def source_options(settings: Settings) -> dict[str, str]:
    """The Spark source's options for the configured Kafka: the connection, and what the source does when
    offsets went missing (`failOnDataLoss`)."""
    return {
        **KafkaConnection.from_settings(settings).source_options(),
        "failOnDataLoss": str(settings.fail_on_data_loss).lower(),
    }
