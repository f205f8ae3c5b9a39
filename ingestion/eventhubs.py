"""Azure Event Hubs through its Kafka endpoint: the producer's profile (the connection itself is the kernel's,
`lambdaflow.kafka.event_hubs_connection`, which the archiver and the speed queries use too).

With `EVENT_HUB_CONN_STR` (a namespace or hub connection string) and `EVENT_HUB_NAME` set, producers connect
to `<namespace>.servicebus.windows.net:9093` over SASL_SSL with the PLAIN mechanism, user name
`$ConnectionString` and the connection string as the password, and send to the hub named `EVENT_HUB_NAME`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from lambdaflow.kafka import KafkaConnection, event_hubs_connection, event_hubs_namespace


@dataclass(frozen=True)
class EventHubProfile:
    connection_string: str
    hub_name: str

    @property
    def namespace_host(self) -> str:
        return event_hubs_namespace(self.connection_string)

    def connection(self) -> KafkaConnection:
        """The Event Hubs Kafka endpoint (the kernel's, which the consumers reach too)."""
        return event_hubs_connection(self.connection_string)

    def __repr__(self) -> str:  # never print the secret
        return f"EventHubProfile(namespace={self.namespace_host!r}, hub_name={self.hub_name!r})"


def profile_from_env(environ: Mapping[str, str] = os.environ) -> EventHubProfile | None:
    """The Event Hubs profile when both variables are set, else None (the configured Kafka is used)."""
    connection_string = environ.get("EVENT_HUB_CONN_STR", "").strip()
    hub_name = environ.get("EVENT_HUB_NAME", "").strip()
    if not connection_string and not hub_name:
        return None
    if not connection_string or not hub_name:
        missing = "EVENT_HUB_NAME" if connection_string else "EVENT_HUB_CONN_STR"
        raise ValueError(f"{missing} must be set too, to produce to Azure Event Hubs")
    profile = EventHubProfile(connection_string, hub_name)
    profile.namespace_host  # noqa: B018 - validates the connection string now, at start-up
    return profile
