"""Topic administration: create the event, dead-letter and alert topics with their partitions, and check that
a topic exists before anything is sent to it."""

from __future__ import annotations

from contextlib import suppress
from difflib import get_close_matches

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from lambdaflow.kafka import CONNECT_TIMEOUT_MS, KafkaConnection
from lambdaflow.settings import Settings


class UnknownTopicError(ValueError):
    """A topic that is not on the broker; the message is one line naming it and the likely intended one."""


def topic_plan(settings: Settings) -> dict[str, int]:
    """Topic name -> partitions. Partitions are set at creation: Tansu cannot add partitions later."""
    return {
        settings.topic_iot: settings.topic_partitions,
        settings.topic_activity: settings.topic_partitions,
        settings.topic_dead_letter: 1,
        settings.topic_alerts: 1,
    }


def admin_client(connection: KafkaConnection) -> KafkaAdminClient:
    """An admin client that gives up on an unreachable broker after `CONNECT_TIMEOUT_MS`."""
    return KafkaAdminClient(bootstrap_timeout_ms=CONNECT_TIMEOUT_MS, **connection.kafka_python())


def ensure_topics(connection: KafkaConnection, plan: dict[str, int]) -> list[str]:
    """Create the topics of `plan` that do not exist yet; return the names created."""
    admin = admin_client(connection)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name, partitions, 1) for name, partitions in plan.items() if name not in existing]
        if missing:
            with suppress(TopicAlreadyExistsError):  # created concurrently by another process
                admin.create_topics(missing)
        return [topic.name for topic in missing]
    finally:
        admin.close()


def check_topic_exists(connection: KafkaConnection, topic: str) -> None:
    """Raise `UnknownTopicError` unless the broker has `topic`. Asked through the admin client's metadata,
    which never creates a topic, where a producer's metadata request may."""
    admin = admin_client(connection)
    try:
        existing = set(admin.list_topics())
    finally:
        admin.close()
    if topic in existing:
        return
    similar = get_close_matches(topic, sorted(existing), n=1)
    guess = f"did you mean {similar[0]!r}? " if similar else ""
    raise UnknownTopicError(
        f"topic {topic!r} does not exist on the broker "
        f"({guess}`lambdaflow topics` creates the configured ones)"
    )
