"""The columnar validation against the per-record pydantic contract, record for record.

`split_records` proves most records valid with Arrow and leaves the rest to `validate_record`; whatever path a
record takes, its verdict, reason and values must be the ones `validate_record` gives it alone.
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import orjson
import pyarrow as pa
import pytest

from ingestion.faults import FaultInjector, Faults
from ingestion.simulators import ActivitySimulator, IotSimulator, simulated_clock
from lambdaflow.contracts import validate_record
from lambdaflow.records import RECORD_COLUMNS, ParseValid, split_records

INGESTED = datetime(2026, 11, 22, 13, 0, tzinfo=UTC)
LIMIT = timedelta(hours=1)
START = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SIMULATORS = {"iot_sensors": IotSimulator, "user_activity": ActivitySimulator}

IOT = {
    "event_id": "0b5bd0a4-5d1f-4c1e-9f3a-1d2b3c4d5e6f", "sensor_id": "sensor-0001", "location": "greenhouse",
    "ts": "2026-11-22T11:59:59.123Z", "temperature": 21.5, "humidity": 40, "pressure": 1013.25,
    "battery": 80.0,
}  # fmt: skip
ACTIVITY = {
    "event_id": "9b5bd0a4-5d1f-4c1e-9f3a-1d2b3c4d5e6f", "user_id": "user-00001", "session_id": "s-1",
    "ts": "2026-11-22T11:59:59.123Z", "event_type": "purchase", "page": "/checkout", "browser": "Firefox",
    "amount": 12.5,
}  # fmt: skip


def _edge_values(event: dict) -> list[bytes | None]:
    """Values at and beyond every rule's edge, and JSON that Arrow and pydantic read differently."""
    dumps = orjson.dumps
    edges: list[bytes | None] = [None, b"", b" ", b"{}", b"{", b"null", b"[]", b"5", b'"x"']
    for name in event:
        edges += [dumps({k: v for k, v in event.items() if k != name}), dumps({**event, name: None})]
        edges += [dumps({**event, name: wrong}) for wrong in ("7", True, [1], {"a": 1}, 7)]
        quoted = b'"' + name.encode() + b'"'
        edges.append(dumps(event).replace(quoted, quoted + b":0," + quoted, 1))  # the field twice
    for name, values in {
        "temperature": [-50, 100, -50.0001, 100.0001, 12345678901234567890, 1e308],
        "humidity": [0, 100, -0.0, 100.5], "pressure": [800, 1200, 799.99], "battery": [0, 100, -1],
        "amount": [0, -0.0, -0.01, 1e300, None],
        "sensor_id": ["", "x" * 128, "x" * 129, "é" * 128, "é" * 129, "a\u0000b", "😀"],
        "user_id": ["", "x" * 128, "x" * 129], "page": ["\n", "a\\nb"], "browser": [" "],
        "event_type": ["login", "LOGIN", "purchase", "logout", ""],
        "event_id": ["0B5BD0A4-5D1F-4C1E-9F3A-1D2B3C4D5E6F", "0b5bd0a45d1f4c1e9f3a1d2b3c4d5e6f",
                     "{0b5bd0a4-5d1f-4c1e-9f3a-1d2b3c4d5e6f}", "0b5bd0a4-5d1f-4c1e-9f3a-1d2b3c4d5e6", "42"],
        "ts": ["2026-11-22T11:59:59Z", "2026-11-22T11:59:59.1Z", "2026-11-22T11:59:59.123456Z",
               "2026-11-22T11:59:59.1234567Z", "2026-11-22T11:59:59+00:00", "2026-11-22T11:59:59.123",
               "2026-02-30T00:00:00Z", "2026-11-22T24:00:00Z", "2026-11-22T11:59:60Z", "2026-11-22 11:59:59Z",
               "2026-11-22T14:00:00Z", "2026-11-22T14:00:00.001Z", "2026-11-22T13:59:59.999Z",
               "0001-01-01T00:00:00Z"],
    }.items():  # fmt: skip
        if name in event:
            edges += [dumps({**event, name: value}) for value in values]
    for kind in ("login", "page_view", "add_to_cart", "logout"):
        if "event_type" in event:
            without_amount = {k: v for k, v in event.items() if k != "amount"}
            edges += [dumps({**event, "event_type": kind}), dumps({**without_amount, "event_type": kind}),
                      dumps({**event, "event_type": kind, "amount": None})]  # fmt: skip
    body = dumps(event)
    edges += [
        body + b" " + body,  # two objects in one value
        body + body,
        b" " + body,
        body + b"\n",
        body.replace(b",", b",\n", 1),  # pretty-printed: a line break inside the value
        body.replace(b",", b",\r", 1),
        body[:-1] + b',"extra":{"nested":[1,{"a":null}]}}',  # unknown fields are ignored
        body[:-1] + b',"x":NaN}',
        body.replace(b"}", b",}"),
        body.replace(b'"', b"'"),
        "\ufeff".encode() + body,  # a byte-order mark
        body[:-1] + b',"bad":"\xff"}',  # invalid UTF-8
        body[:-1] + b',"bad":"\\ud800"}',  # a lone surrogate
        body[:-1] + b',"big":1e400,"small":-1e400,"int":123456789012345678901234567890}',
        body[:-1] + b',"deep":' + b"[" * 300 + b"]" * 300 + b"}",
        body[:-1] + b',"ctl":"a\tb\x01"}',  # raw control characters in a string: not JSON
        body[:-1] + b',"escaped":"a\\tb\\u0001"}',
        body[:-1] + b',"long":"' + b"x" * 1000 + b'"}',
        body[:-1].replace(b":", b": ") + b" }",
    ]
    return edges


def _records(values: list[bytes | None], kafka_ts: datetime = INGESTED) -> pa.Table:
    return pa.table(
        {
            "topic": ["t"] * len(values),
            "partition": pa.array([3] * len(values), pa.int32()),
            "offset": list(range(len(values))),
            "timestamp": pa.array([kafka_ts] * len(values), pa.timestamp("us", tz="UTC")),
            "key": [b"k"] * len(values),
            "value": pa.array(values, pa.binary()),
        }
    ).select(list(RECORD_COLUMNS))


def _by_record(contract: str, values: list[bytes | None]) -> tuple[dict[int, dict], dict[int, str]]:
    """The reference: each record validated alone by the pydantic contract."""
    valid, invalid = {}, {}
    for offset, value in enumerate(values):
        event, reason = validate_record(contract, value, INGESTED, LIMIT)
        if event is None:
            invalid[offset] = reason
        else:
            valid[offset] = event.model_dump()
    return valid, invalid


def _split(contract: str, values: list[bytes | None]) -> tuple[dict[int, dict], dict[int, str]]:
    split = split_records(_records(values), contract, LIMIT, INGESTED)
    coordinates = {"_topic", "_partition", "_offset", "_kafka_ts", "_ingested_at"}
    rows = split.valid.to_pylist()
    valid = {row["_offset"]: {k: v for k, v in row.items() if k not in coordinates} for row in rows}
    assert all(row["_ingested_at"] == INGESTED and row["_partition"] == 3 for row in rows)
    invalid = {row["_offset"]: row["reason"] for row in split.invalid}
    assert all(row["value"] == values[row["_offset"]] for row in split.invalid)
    return valid, invalid


@pytest.mark.parametrize(("contract", "event"), [("iot_sensors", IOT), ("user_activity", ACTIVITY)])
def test_every_edge_gets_the_per_record_verdict_reason_and_values(contract, event):
    good = orjson.dumps(event)
    for edge in _edge_values(event):  # alone between good records: a block Arrow parses is judged by Arrow
        values = [good, edge, good]
        assert _split(contract, values) == _by_record(contract, values), edge
    values = _edge_values(event)
    valid, invalid = _split(contract, values)
    assert len(valid) + len(invalid) == len(values)
    assert (valid, invalid) == _by_record(contract, values)
    assert len(valid) > 20 and len(invalid) > 60  # the corpus has both kinds


@pytest.mark.parametrize("contract", ["iot_sensors", "user_activity"])
def test_generated_events_with_faults_match_the_per_record_validation(contract):
    simulator = SIMULATORS[contract](seed=7)
    events = itertools.islice(simulator.events(simulated_clock(START, 500)), 3000)
    faults = Faults(duplicates=0.02, late=0.02, out_of_order=0.05, malformed=0.03)
    values = [value for _, value in FaultInjector(faults, seed=11).apply(events, simulator.key)]
    rng = random.Random(5)
    edges = _edge_values(IOT if contract == "iot_sensors" else ACTIVITY)
    for _ in range(20):  # sprinkle edge values among good ones: blocks that Arrow cannot parse are split
        values.insert(rng.randrange(len(values)), rng.choice(edges))
    valid, invalid = _split(contract, values)
    assert (valid, invalid) == _by_record(contract, values)
    assert len(invalid) >= 60


def test_the_source_parser_flags_invalid_records_as_null_rows():
    values = [orjson.dumps(IOT), b"{broken", orjson.dumps({**IOT, "temperature": 101})]
    batches = list(ParseValid("iot_sensors", LIMIT)(iter(_records(values).to_batches())))
    rows = pa.Table.from_batches(batches).to_pylist()
    assert [row["_invalid"] for row in rows].count(True) == 2
    (valid,) = [row for row in rows if not row["_invalid"]]
    assert (valid["sensor_id"], valid["temperature"], valid["_offset"]) == ("sensor-0001", 21.5, 0)
    flagged = [row for row in rows if row["_invalid"]]
    assert all(value is None for row in flagged for key, value in row.items() if key != "_invalid")
