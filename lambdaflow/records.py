"""Kafka records (the Spark source's Arrow columns) split into valid events and invalid records.

The archiver and the speed layer both start here, so both apply the one contract validation the same way.

Validation is columnar first: the values of a batch are parsed as one block of JSON lines by Arrow and checked
with Arrow compute against the contract's constants. A record goes to the per-record pydantic validation
(`lambdaflow.contracts.validate_record`, the definition of the contract) unless the columnar checks prove it
valid: an absent field, a non-canonical id, a timestamp not in the producers' `…Z` form, a value out of range
or a block Arrow cannot parse (a wrong JSON type, invalid JSON) all send records there, which decides and
words the reason. So the columnar path only speeds up what pydantic accepts, with the same values: a block's
checks run in Arrow's C++, not a Python call per record.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
from annotated_types import MaxLen

from lambdaflow.contracts import ARROW_SCHEMAS, EVENT_TYPES, MODELS, NAME_LENGTH, RANGES, validate_record
from lambdaflow.lake import RAW_SCHEMAS

INVALID = "_invalid"  # the flag of a record that broke its contract, in `ParseValid`'s output
RECORD_COLUMNS = ("topic", "partition", "offset", "timestamp", "key", "value")

_CANONICAL_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_PRODUCER_TS = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$"  # what producers send (`format_ts`)
_EPOCH = "1970-01-01T00:00:00Z"
_BISECT_BELOW = 64  # a block Arrow cannot parse is split in halves down to this many records
# pydantic's JSON parser refuses nesting deeper than 200 (Arrow's does not); that takes more than 400 bytes
_MAX_COLUMNAR_BYTES = 400


@dataclass
class SplitRecords:
    """Valid events as a table of the contract's columns plus the Kafka coordinates (`_topic`, `_partition`,
    `_offset`, `_kafka_ts`, `_ingested_at`: `lambdaflow.lake.RAW_SCHEMAS`); invalid records as rows of their
    raw key and value, reason and the same coordinates."""

    valid: pa.Table
    invalid: list[dict[str, Any]]


def split_records(
    table: pa.Table | pa.RecordBatch, contract: str, max_future: timedelta, ingested_at: datetime
) -> SplitRecords:
    """Validate every record of `table` (columns topic, partition, offset, timestamp, key, value) against
    one contract."""
    records = pa.Table.from_batches([table]) if isinstance(table, pa.RecordBatch) else table
    records = records.select(list(RECORD_COLUMNS))
    valid: list[pa.Table] = []
    by_record: list[pa.Table] = []
    _split_columnar(records, contract, max_future, ingested_at, valid, by_record)
    invalid: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for part in by_record:
        for record in part.to_pylist():
            coordinates = {
                "_topic": record["topic"],
                "_partition": record["partition"],
                "_offset": record["offset"],
                "_kafka_ts": record["timestamp"],
                "_ingested_at": ingested_at,
            }
            event, reason = validate_record(contract, record["value"], record["timestamp"], max_future)
            if event is None:
                raw = {"value": record["value"], "key": record["key"], "reason": reason}
                invalid.append({**raw, **coordinates})
            else:
                rows.append({**event.model_dump(), **coordinates})
    schema = RAW_SCHEMAS[contract]
    if rows:
        valid.append(pa.Table.from_pylist(rows, schema=schema))
    return SplitRecords(pa.concat_tables(valid) if valid else schema.empty_table(), invalid)


def _split_columnar(
    records: pa.Table,
    contract: str,
    max_future: timedelta,
    ingested_at: datetime,
    valid: list[pa.Table],
    by_record: list[pa.Table],
) -> None:
    """Append the records proven valid to `valid` (as events) and the others to `by_record`."""
    values = records["value"]
    # one JSON object a line: only values that start with '{', end with '}' and hold no line break
    framed = pc.fill_null(
        pc.and_(
            pc.and_(pc.starts_with(values, "{"), pc.ends_with(values, "}")),
            pc.and_(
                pc.invert(pc.or_(pc.match_substring(values, "\n"), pc.match_substring(values, "\r"))),
                pc.less_equal(pc.binary_length(values), _MAX_COLUMNAR_BYTES),
            ),
        ),
        False,
    )
    if not pc.all(framed).as_py():
        by_record.append(records.filter(pc.invert(framed)))
        records = records.filter(framed)
    if records.num_rows == 0:
        return
    try:
        events, proven = _columnar_events(records, contract, max_future, ingested_at)
    except ValueError:  # ArrowInvalid, UnicodeDecodeError: a record Arrow cannot parse or convert
        if records.num_rows < _BISECT_BELOW:
            by_record.append(records)
            return
        half = records.num_rows // 2
        _split_columnar(records.slice(0, half), contract, max_future, ingested_at, valid, by_record)
        _split_columnar(records.slice(half), contract, max_future, ingested_at, valid, by_record)
        return
    valid.append(events.filter(proven))
    if not pc.all(proven).as_py():
        by_record.append(records.filter(pc.invert(proven)))


@cache
def _name_fields(contract: str) -> tuple[str, ...]:
    """The contract's name fields (the model's `Name`s, NAME_LENGTH characters)."""
    fields = MODELS[contract].model_fields
    return tuple(name for name, info in fields.items() if any(isinstance(m, MaxLen) for m in info.metadata))


def _json_schema(contract: str) -> pa.Schema:
    """The contract's fields as JSON gives them (`ts` as its string)."""
    schema = ARROW_SCHEMAS[contract]
    return schema.set(schema.get_field_index("ts"), pa.field("ts", pa.string()))


def _columnar_events(
    records: pa.Table, contract: str, max_future: timedelta, ingested_at: datetime
) -> tuple[pa.Table, pa.ChunkedArray | pa.Array]:
    """The records' events (RAW_SCHEMAS columns) and a mask of those the columnar checks prove valid.
    Raises when Arrow cannot parse the block (a value that is not a JSON object of the right types)."""
    values = records["value"].combine_chunks()
    values.cast(pa.string())  # raises on invalid UTF-8, even in a field the parser would skip
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), values), b"\n")
    block = joined[0].as_buffer()
    fields = pa_json.read_json(
        pa.BufferReader(block),
        read_options=pa_json.ReadOptions(use_threads=False, block_size=block.size + 1),
        parse_options=pa_json.ParseOptions(
            explicit_schema=_json_schema(contract), unexpected_field_behavior="ignore"
        ),
    )
    if fields.num_rows != records.num_rows:  # e.g. '{…} {…}' in one value: two objects, invalid JSON
        raise ValueError("a value is not exactly one JSON object")
    checks = []
    names = [name for name in fields.column_names if name not in ("amount",)]
    checks += [pc.is_valid(fields[name]) for name in names]
    checks.append(pc.match_substring_regex(fields["event_id"], _CANONICAL_UUID))
    for name in _name_fields(contract):
        length = pc.utf8_length(fields[name])
        checks += [pc.greater_equal(length, NAME_LENGTH[0]), pc.less_equal(length, NAME_LENGTH[1])]
    for name, (low, high) in RANGES.items():
        if name in fields.column_names:
            value = fields[name]
            present = pc.is_valid(value)
            bounded = pc.is_finite(value)
            if low is not None:
                bounded = pc.and_(bounded, pc.greater_equal(value, low))
            if high is not None:
                bounded = pc.and_(bounded, pc.less_equal(value, high))
            checks.append(pc.or_kleene(pc.invert(present), bounded))
    if "event_type" in fields.column_names:
        checks.append(pc.is_in(fields["event_type"], pa.array(EVENT_TYPES)))
        purchase = pc.equal(fields["event_type"], "purchase")
        checks.append(pc.equal(purchase, pc.is_valid(fields["amount"])))  # amount on purchases only
    producer_form = pc.fill_null(pc.match_substring_regex(fields["ts"], _PRODUCER_TS), False)
    checks.append(producer_form)
    ts = pc.cast(pc.if_else(producer_form, fields["ts"], _EPOCH), pa.timestamp("us", tz="UTC"))
    ahead = pc.subtract(ts, records["timestamp"])
    checks.append(pc.less_equal(ahead, pa.scalar(max_future, pa.duration("us"))))
    proven = checks[0]
    for check in checks[1:]:
        proven = pc.and_(proven, check)
    proven = pc.fill_null(proven, False)
    columns = {name: fields[name] for name in fields.column_names}
    columns["ts"] = ts
    columns |= {
        "_topic": records["topic"],
        "_partition": records["partition"],
        "_offset": records["offset"],
        "_kafka_ts": records["timestamp"],
        "_ingested_at": pa.repeat(pa.scalar(ingested_at, pa.timestamp("us", tz="UTC")), records.num_rows),
    }
    schema = RAW_SCHEMAS[contract]
    return pa.table([columns[name] for name in schema.names], schema=schema), proven


def flagged_schema(contract: str) -> pa.Schema:
    """A contract's event columns with the Kafka coordinates, and the `_invalid` flag."""
    return RAW_SCHEMAS[contract].append(pa.field(INVALID, pa.bool_()))


@dataclass(frozen=True)
class ParseValid:
    """Kafka records in (Arrow batches of one contract's topic), the valid events (contract columns +
    coordinates) out, plus one all-null row flagged `_invalid` per record that breaks its contract, so a
    query can count them."""

    contract: str
    max_future: timedelta

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        schema = flagged_schema(self.contract)
        for batch in batches:
            split = split_records(batch, self.contract, self.max_future, datetime.now(UTC))
            if split.valid.num_rows:
                flag = pa.repeat(False, split.valid.num_rows)
                yield from split.valid.append_column(schema.field(INVALID), flag).to_batches()
            if split.invalid:
                count = len(split.invalid)
                nulls = [pa.nulls(count, field.type) for field in list(schema)[:-1]]
                yield pa.RecordBatch.from_arrays([*nulls, pa.array([True] * count)], schema=schema)
