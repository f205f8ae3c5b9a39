"""What a speed query reads: its topic's records through the kernel's Kafka source, which validates them
against the topic's contract as it reads (invalid records are counted and left to the archiver), then the
watermark, the dedupe on `event_id` within it, and the cleaning the batch layer shares."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lambdaflow.contracts import MODELS
from lambdaflow.kafka import source_options
from lambdaflow.kafka_source import FORMAT
from lambdaflow.records import INVALID
from lambdaflow.settings import Settings
from lambdaflow.views.spark import clean, dedupe_within_watermark

INVALID_METRIC = "records"  # observed metric: the records of a micro-batch that broke their contract


def valid_events(spark: SparkSession, settings: Settings, contract: str) -> DataFrame:
    """The stream of valid events of one contract's topic. Invalid records are counted (the `records`
    observed metric, which the progress recorder adds to `stream_progress.invalid_rows`) and left to the
    archiver, which routes them to the dead-letter topic and the quarantine."""
    assert contract in MODELS
    parsed = (  # the source validates as it reads: the raw records never cross into the JVM and back
        spark.readStream.format(FORMAT)
        .options(**source_options(settings))
        .option("subscribe", settings.topic_for(contract))
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", str(settings.max_records_per_trigger))
        .option("contract", contract)
        .option("maxFutureSeconds", str(settings.max_future_seconds))
        .load()
    )
    invalid = F.sum(F.col(INVALID).cast("long")).alias("invalid_rows")
    return parsed.observe(INVALID_METRIC, invalid).where(~F.col(INVALID)).drop(INVALID)


def speed_events(spark: SparkSession, settings: Settings, contract: str) -> DataFrame:
    """The valid events of a contract's topic behind the watermark, deduplicated within it and cleaned."""
    events = valid_events(spark, settings, contract).withWatermark(
        "ts", f"{settings.watermark_seconds} seconds"
    )
    return clean(dedupe_within_watermark(events))
