"""Starts the speed layer's queries: one streaming query per topic, which reads the topic once for all its
views (`speed.source`: validation, watermark, dedupe, cleaning) and hands each micro-batch to the exactly-once
sink (`speed.sink`), with the checkpoint and trigger that `speed.queries` and the settings give it; and which
topic queries the parts an operator selects need."""

from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from lambdaflow.settings import Settings
from lambdaflow.spark import SPEED_POOL, in_pool, signalling_its_end, trigger
from speed.queries import QUERY_PARTS, checkpoint_of, query_name
from speed.sink import SpeedSink
from speed.source import speed_events


def start_speed_query(
    spark: SparkSession,
    settings: Settings,
    contract: str,
    parts: tuple[str, ...] | None = None,
    once: bool = False,
) -> StreamingQuery:
    """Start a topic's query, keeping `parts` (its views and, for IoT, the reading alerts; default all)."""
    parts = tuple(parts or QUERY_PARTS[contract])
    unknown = set(parts) - set(QUERY_PARTS[contract])
    if unknown:
        raise ValueError(f"{contract} has no {sorted(unknown)}; it keeps {', '.join(QUERY_PARTS[contract])}")
    checkpoint = checkpoint_of(settings, contract, parts)
    writer = (
        speed_events(spark, settings, contract)
        .writeStream.queryName(query_name(contract))
        .foreachBatch(
            signalling_its_end(query_name(contract), SpeedSink(settings, contract, parts, checkpoint))
        )
        .option("checkpointLocation", str(checkpoint))
    )
    with in_pool(spark, SPEED_POOL):
        return writer.trigger(**trigger(once, settings.trigger_seconds)).start()


def speed_queries(selected: list[str]) -> dict[str, tuple[str, ...]]:
    """The topic queries that keep the selected views and alerts: contract → its selected parts."""
    return {
        contract: tuple(part for part in parts if part in selected)
        for contract, parts in QUERY_PARTS.items()
        if any(part in selected for part in parts)
    }
