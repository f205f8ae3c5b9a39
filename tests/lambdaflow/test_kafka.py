"""One Kafka connection, down to the exact configuration each client receives: kafka-python's keyword
arguments, librdkafka's properties and the Spark source's `kafka.*` options, for a plain broker and for the
Azure Event Hubs profile (SASL_SSL, PLAIN, `$ConnectionString`)."""

import re
from dataclasses import fields

import pytest

from lambdaflow.kafka import SETTINGS, KafkaConnection, source_options
from lambdaflow.kafka_source import client_config, rdkafka_config
from lambdaflow.settings import load_settings

CONN = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=c2VjcmV0"
EVENT_HUBS = KafkaConnection(
    bootstrap_servers="ns.servicebus.windows.net:9093",
    security_protocol="SASL_SSL",
    sasl_mechanism="PLAIN",
    sasl_username="$ConnectionString",
    sasl_password=CONN,
    request_timeout_ms=60_000,
    metadata_max_age_ms=180_000,
)


def test_the_table_covers_every_field_once():
    assert [setting.field for setting in SETTINGS] == [field.name for field in fields(KafkaConnection)]
    for name in ("kafka_python", "rdkafka", "option"):
        names = [getattr(setting, name) for setting in SETTINGS]
        assert len(set(names)) == len(names), name


def test_a_plain_broker_from_the_settings():
    connection = KafkaConnection.from_settings(load_settings(kafka_bootstrap_servers="b1:9092,b2:9092"))
    assert connection.kafka_python() == {
        "bootstrap_servers": "b1:9092,b2:9092",
        "security_protocol": "PLAINTEXT",
    }
    assert connection.rdkafka() == {"bootstrap.servers": "b1:9092,b2:9092", "security.protocol": "PLAINTEXT"}
    assert connection.source_options() == {
        "kafka.bootstrap.servers": "b1:9092,b2:9092",
        "kafka.security.protocol": "PLAINTEXT",
    }


def test_sasl_from_the_settings_and_the_source_options_with_it():
    settings = load_settings(
        kafka_bootstrap_servers="k:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="reader",
        kafka_sasl_password="s3cret",
        fail_on_data_loss=False,
    )
    connection = KafkaConnection.from_settings(settings)
    assert connection.kafka_python() == {
        "bootstrap_servers": "k:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "reader",
        "sasl_plain_password": "s3cret",
    }
    assert connection.rdkafka() == {
        "bootstrap.servers": "k:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "reader",
        "sasl.password": "s3cret",
    }
    assert source_options(settings) == {
        "kafka.bootstrap.servers": "k:9093",
        "kafka.security.protocol": "SASL_SSL",
        "kafka.sasl.mechanism": "SCRAM-SHA-512",
        "kafka.sasl.plain.username": "reader",
        "kafka.sasl.plain.password": "s3cret",
        "failOnDataLoss": "false",
    }
    assert "s3cret" not in repr(connection)
    # without a mechanism, a user name and password set by mistake go to no client
    plain = load_settings(kafka_sasl_username="reader", kafka_sasl_password="s3cret")
    assert "sasl_plain_password" not in KafkaConnection.from_settings(plain).kafka_python()


def test_the_event_hubs_profile_reaches_each_client():
    assert EVENT_HUBS.kafka_python() == {
        "bootstrap_servers": "ns.servicebus.windows.net:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "$ConnectionString",
        "sasl_plain_password": CONN,
        "request_timeout_ms": 60_000,
        "metadata_max_age_ms": 180_000,
    }
    assert EVENT_HUBS.rdkafka() == {
        "bootstrap.servers": "ns.servicebus.windows.net:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "$ConnectionString",
        "sasl.password": CONN,
        "socket.timeout.ms": 60_000,
        "metadata.max.age.ms": 180_000,
    }
    assert EVENT_HUBS.source_options() == {
        "kafka.bootstrap.servers": "ns.servicebus.windows.net:9093",
        "kafka.security.protocol": "SASL_SSL",
        "kafka.sasl.mechanism": "PLAIN",
        "kafka.sasl.plain.username": "$ConnectionString",
        "kafka.sasl.plain.password": CONN,
        "kafka.request.timeout.ms": "60000",
        "kafka.metadata.max.age.ms": "180000",
    }
    assert "c2VjcmV0" not in repr(EVENT_HUBS)


def test_the_connection_travels_through_the_source_options_unchanged():
    options = {**EVENT_HUBS.source_options(), "subscribe": "iot", "failOnDataLoss": "true"}
    assert KafkaConnection.from_source_options(options) == EVENT_HUBS
    assert KafkaConnection.from_kafka_python(EVENT_HUBS.kafka_python()) == EVENT_HUBS
    # what the source's driver (kafka-python) and its readers (librdkafka) are given
    assert client_config(options) == EVENT_HUBS.kafka_python()
    reader = rdkafka_config(client_config(options))
    assert {key: reader[key] for key in EVENT_HUBS.rdkafka()} == EVENT_HUBS.rdkafka()
    assert (reader["group.id"], reader["enable.auto.commit"], reader["auto.offset.reset"]) == (
        "lambdaflow-source",
        False,
        "earliest",
    )


def test_the_consumers_reach_event_hubs_through_the_settings_connection(monkeypatch, caplog):
    """With EVENT_HUB_CONN_STR set, the connection every consumer is made from (the archiver's and the speed
    queries' Spark source options, the driver's kafka-python client, the readers' librdkafka consumer, the
    end-offset probe, the alert producer) is the Event Hubs profile the producers use."""
    from lambdaflow.kafka_source import BrokerEndOffsets

    monkeypatch.setenv("EVENT_HUB_CONN_STR", CONN)
    settings = load_settings(kafka_bootstrap_servers="ignored:9092", fail_on_data_loss=True)
    assert KafkaConnection.from_settings(settings) == EVENT_HUBS
    assert "connect to Event Hubs at ns.servicebus.windows.net:9093, not to the configured ignored:9092" in (
        caplog.text
    )
    options = source_options(settings)
    assert options == {**EVENT_HUBS.source_options(), "failOnDataLoss": "true"}
    assert client_config(options) == EVENT_HUBS.kafka_python()  # spelled out in the test above
    reader = rdkafka_config(client_config(options))
    assert {key: reader[key] for key in ("bootstrap.servers", "security.protocol", "sasl.mechanism",
                                         "sasl.username", "sasl.password")} == {
        "bootstrap.servers": "ns.servicebus.windows.net:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "$ConnectionString",
        "sasl.password": CONN,
    }  # fmt: skip
    assert BrokerEndOffsets(KafkaConnection.from_settings(settings)).config == EVENT_HUBS.kafka_python()
    # and the producers' profile is the same connection
    from ingestion.eventhubs import profile_from_env

    assert profile_from_env({"EVENT_HUB_CONN_STR": CONN, "EVENT_HUB_NAME": "iot"}).connection() == EVENT_HUBS


def test_without_event_hubs_the_settings_name_the_broker():
    settings = load_settings(kafka_bootstrap_servers="b1:9092")
    assert KafkaConnection.from_settings(settings, environ={"EVENT_HUB_CONN_STR": " "}).bootstrap_servers == (
        "b1:9092"
    )
    with pytest.raises(ValueError, match="EVENT_HUB_CONN_STR has no Endpoint"):
        KafkaConnection.from_settings(settings, environ={"EVENT_HUB_CONN_STR": "SharedAccessKey=x"})


def test_source_option_names_are_case_insensitive_and_checked():
    connection = KafkaConnection.from_source_options(
        {"KAFKA.BOOTSTRAP.SERVERS": "h:1", "kafka.Fetch.Max.Bytes": "1024", "x": "y"}
    )
    assert connection == KafkaConnection("h:1", fetch_max_bytes=1024)
    with pytest.raises(ValueError, match=re.escape("option 'kafka.bootstrap.servers' is required")):
        KafkaConnection.from_source_options({"subscribe": "iot"})
    with pytest.raises(ValueError, match=re.escape("unsupported Kafka client option 'kafka.linger.ms'")):
        KafkaConnection.from_source_options({"kafka.bootstrap.servers": "h:1", "kafka.linger.ms": "5"})


def test_each_client_library_accepts_its_configuration():
    """The clients check their settings when made (no broker is reached here)."""
    from confluent_kafka import Consumer, Producer
    from kafka import KafkaProducer

    for connection in (KafkaConnection("127.0.0.1:1"), EVENT_HUBS):
        Producer(connection.rdkafka()).flush(0)
        Consumer({**connection.rdkafka(), "group.id": "check"}).close()
        config = connection.kafka_python()
        KafkaProducer(**config, api_version=(3, 9), acks=1, enable_idempotence=False).close(timeout=0)
