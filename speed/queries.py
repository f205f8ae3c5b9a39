"""What the speed layer's queries are: one per topic, the parts each keeps (the topic's views and, for the IoT
topic, the reading alerts), its name, and where its checkpoint lives. Plain definitions, read by the sink, by
`speed.streams` that starts the queries, and by the command line and the benchmarks that choose them."""

from __future__ import annotations

from pathlib import Path

from lambdaflow.contracts import MODELS
from lambdaflow.settings import Settings
from lambdaflow.views import VIEWS

ALERTS = "alerts"  # the reading alerts, kept by the IoT query (session alerts come with the sessions view)
QUERY_PARTS: dict[str, tuple[str, ...]] = {
    contract: (*(name for name, view in VIEWS.items() if view.contract == contract),
               *((ALERTS,) if contract == "iot_sensors" else ()))
    for contract in MODELS
}  # fmt: skip


def query_name(contract: str) -> str:
    return f"speed_{contract}"


# The speed queries' checkpoints live under a directory named for their plan's version: Spark cannot resume
# a checkpoint whose stateful operators changed, so a new plan starts new checkpoints (and rebuilds the views
# from the topics' start) rather than failing on the old ones. v2: the dedupe is DedupeWithinWatermark; v3: it
# keeps only its timers, no value state; v4: its state is a map of ids per hash group, scanned by timer.
CHECKPOINTS = "speed-v4"


def checkpoint_of(settings: Settings, contract: str, parts: tuple[str, ...]) -> Path:
    """A query's checkpoint; one that keeps only some of its topic's parts has its own (it will have merged
    different events)."""
    suffix = "" if set(parts) == set(QUERY_PARTS[contract]) else "-" + "+".join(sorted(parts))
    return settings.checkpoint_dir / CHECKPOINTS / f"{query_name(contract)}{suffix}"
