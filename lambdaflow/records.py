"""Kafka records (the Spark source's Arrow columns) split into valid events and invalid records.

The archiver and the speed layer both start here, so both apply the one contract validation the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from lambdaflow.contracts import contract_for, validate_record
from lambdaflow.lake import RAW_SCHEMAS

INVALID = "_invalid"  # the flag of a record that broke its contract, in `ParseValid`'s output


@dataclass
class SplitRecords:
    """Valid events as rows of the contract's columns plus the Kafka coordinates (`_topic`, `_partition`,
    `_offset`, `_kafka_ts`, `_ingested_at`); invalid records as their raw key and value, reason and the same
    coordinates."""

    valid: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[dict[str, Any]] = field(default_factory=list)


def split_records(
    table: pa.Table, contracts: dict[str, str], max_future: timedelta, ingested_at: datetime
) -> SplitRecords:
    """Validate every record of `table` (columns topic, partition, offset, timestamp, key, value)."""
    split = SplitRecords()
    contract_of: dict[str, str] = {}
    columns = [
        table[name].to_pylist() for name in ("topic", "partition", "offset", "timestamp", "key", "value")
    ]
    for topic, partition, offset, record_ts, key, value in zip(*columns, strict=True):
        contract = contract_of.get(topic) or contract_of.setdefault(topic, contract_for(topic, contracts))
        coordinates = {
            "_topic": topic,
            "_partition": partition,
            "_offset": offset,
            "_kafka_ts": record_ts,
            "_ingested_at": ingested_at,
        }
        event, reason = validate_record(contract, value, record_ts, max_future)
        if event is None:
            split.invalid.append({"value": value, "key": key, "reason": reason, **coordinates})
        else:
            row = event.model_dump()
            row.update(coordinates)
            split.valid.append(row)
    return split


def flagged_schema(contract: str) -> pa.Schema:
    """A contract's event columns with the Kafka coordinates, and the `_invalid` flag."""
    return RAW_SCHEMAS[contract].append(pa.field(INVALID, pa.bool_()))


@dataclass(frozen=True)
class ParseValid:
    """Kafka records in (Arrow batches), the valid events (contract columns + coordinates) out, plus one
    all-null row flagged `_invalid` per record that breaks its contract, so a query can count them."""

    contracts: dict[str, str]
    contract: str
    max_future: timedelta

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        schema = flagged_schema(self.contract)
        for batch in batches:
            split = split_records(
                pa.Table.from_batches([batch]), self.contracts, self.max_future, datetime.now(UTC)
            )
            if split.valid:
                rows = [{**row, INVALID: False} for row in split.valid]
                yield pa.RecordBatch.from_pylist(rows, schema=schema)
            if split.invalid:
                count = len(split.invalid)
                nulls = [pa.nulls(count, field.type) for field in list(schema)[:-1]]
                yield pa.RecordBatch.from_arrays([*nulls, pa.array([True] * count)], schema=schema)
