"""Topic administration: create the event, dead-letter and alert topics with their partitions."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from lambdaflow.settings import Settings


def topic_plan(settings: Settings) -> dict[str, int]:
    """Topic name -> partitions. Partitions are set at creation: Tansu cannot add partitions later."""
    return {
        settings.topic_iot: settings.topic_partitions,
        settings.topic_activity: settings.topic_partitions,
        settings.topic_dead_letter: 1,
        settings.topic_alerts: 1,
    }


def ensure_topics(client_config: dict[str, Any], plan: dict[str, int]) -> list[str]:
    """Create the topics of `plan` that do not exist yet; return the names created."""
    admin = KafkaAdminClient(**client_config)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name, partitions, 1) for name, partitions in plan.items() if name not in existing]
        if missing:
            with suppress(TopicAlreadyExistsError):  # created concurrently by another process
                admin.create_topics(missing)
        return [topic.name for topic in missing]
    finally:
        admin.close()
