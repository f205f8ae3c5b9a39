import pytest

from ingestion.eventhubs import profile_from_env
from lambdaflow.kafka import KafkaConnection

CONN = "Endpoint=sb://lambdaflow-ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=c2VjcmV0"


def test_no_variables_means_no_event_hubs():
    assert profile_from_env({}) is None


def test_the_profile_is_the_event_hubs_kafka_endpoint():
    profile = profile_from_env({"EVENT_HUB_CONN_STR": CONN, "EVENT_HUB_NAME": "iot"})
    assert profile.connection() == KafkaConnection(
        bootstrap_servers="lambdaflow-ns.servicebus.windows.net:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="$ConnectionString",
        sasl_password=CONN,
        request_timeout_ms=60_000,
        metadata_max_age_ms=180_000,
    )
    assert profile.hub_name == "iot"
    assert "c2VjcmV0" not in repr(profile)
    assert "c2VjcmV0" not in repr(profile.connection())


def test_a_kafka_producer_accepts_the_configuration():
    from kafka import KafkaProducer

    connection = profile_from_env({"EVENT_HUB_CONN_STR": CONN, "EVENT_HUB_NAME": "iot"}).connection()
    # bootstrap_connected is never reached: no network here, so only the configuration is checked
    config = connection.kafka_python()
    producer = KafkaProducer(**config, api_version=(3, 9), acks=1, enable_idempotence=False)
    producer.close(timeout=0)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"EVENT_HUB_CONN_STR": CONN}, "EVENT_HUB_NAME must be set too"),
        ({"EVENT_HUB_NAME": "iot"}, "EVENT_HUB_CONN_STR must be set too"),
        ({"EVENT_HUB_CONN_STR": "SharedAccessKey=x", "EVENT_HUB_NAME": "iot"}, "has no Endpoint"),
        ({"EVENT_HUB_CONN_STR": "Endpoint=sb://a.b/", "EVENT_HUB_NAME": "iot"}, "no SharedAccessKey"),
    ],
)
def test_incomplete_configuration_is_refused(environ, message):
    with pytest.raises(ValueError, match=message):
        profile_from_env(environ)
