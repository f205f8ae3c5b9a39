"""Hostile command-line input: each stops before any work (and before Spark starts) with one line on stderr,
`lambdaflow: <message>`, exit code 2 for bad usage or settings and 1 for anything else; never a traceback."""

import os
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient

from lambdaflow.broker import free_port
from lambdaflow.lake import FIRST_DAY, check_lake_day, check_lake_time, last_day
from lambdaflow.settings import Settings
from tests.conftest import run_cli, settings_env

pytestmark = pytest.mark.integration

# id, arguments, environment overrides, exit code, a phrase of the message. In arguments and values, {tmp}
# is a scratch directory (with a regular file `file` and a FIFO `fifo`), {misspelt_topic} the test's IoT topic
# with a letter missing and {free_port} a port nothing listens on.
UNREACHABLE = {"LAMBDAFLOW_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:{free_port}"}
# fmt: off
HOSTILE_INPUTS = [
    ("rate-inf", ["produce", "iot", "--rate", "inf", "--count", "1"], {}, 2, "'inf' is not a finite number"),
    ("rate-nan", ["produce", "iot", "--rate", "nan", "--count", "1"], {}, 2, "'nan' is not a finite number"),
    ("duration-nan", ["produce", "iot", "--duration", "nan"], {}, 2, "'nan' is not a finite number"),
    ("duration-zero", ["produce", "iot", "--duration", "0"], {}, 2, "not in the range x>0"),
    ("fraction-nan", ["produce", "iot", "--late", "nan", "--count", "1"], {}, 2, "'nan' is not a finite"),
    ("up-rate-inf", ["up", "--iot-rate", "inf"], {}, 2, "'inf' is not a finite number"),
    ("count-negative", ["produce", "iot", "--count", "-1"], {}, 2, "-1 is not in the range x>=0"),
    ("date-after-lake", ["batch", "--date", "9999-12-31"], {}, 2, "outside the days the lake can hold"),
    ("date-before-lake", ["batch", "--date", "0001-01-01"], {}, 2, "outside the days the lake can hold"),
    ("date-not-a-day", ["batch", "--date", "2026-02-30"], {}, 2, "'2026-02-30' does not match"),
    ("start-year-one", ["produce", "iot", "--start", "0001-01-01"], {}, 2, "outside the days"),
    ("start-before-epoch", ["produce", "iot", "--start", "1970-01-01T01:00+02:00"], {}, 2, "outside the"),
    ("start-last-second", ["produce", "iot", "--start", "9999-12-31T23:59:59"], {}, 2, "outside the days"),
    ("start-not-a-time", ["produce", "iot", "--start", "yesterday"], {}, 2, "not an ISO-8601 time"),
    ("from-file-directory", ["produce", "--from-file", "{tmp}", "--topic", "t"], {}, 2, "is a directory"),
    ("from-file-missing", ["produce", "--from-file", "{tmp}/no", "--topic", "t"], {}, 2, "does not exist"),
    ("from-file-in-a-file", ["produce", "--from-file", "{tmp}/file/x", "--topic", "t"], {}, 2, "not exist"),
    ("from-file-fifo", ["produce", "--from-file", "{tmp}/fifo", "--topic", "t"], {}, 2, "not a regular file"),
    ("data-dir-is-a-file", ["topics"], {"LAMBDAFLOW_DATA_DIR": "{tmp}/file"}, 2, "LAMBDAFLOW_DATA_DIR"),
    ("data-dir-in-a-file", ["topics"], {"LAMBDAFLOW_DATA_DIR": "{tmp}/file/d"}, 2, "LAMBDAFLOW_DATA_DIR"),
    ("store-url-in-missing-dir", ["topics"], {"LAMBDAFLOW_STORE_URL": "sqlite:///{tmp}/missing/s.db"}, 2,
     "LAMBDAFLOW_STORE_URL"),
    ("misspelt-topic", ["produce", "iot", "--count", "1", "--topic", "{misspelt_topic}"], {}, 1,
     "does not exist on the broker (did you mean"),
    ("produce-unreachable-broker", ["produce", "iot", "--count", "1"], UNREACHABLE, 1, "broker running?"),
    ("topics-unreachable-broker", ["topics"], UNREACHABLE, 1, "is the broker running?"),
    ("unknown-command", ["bogus"], {}, 2, "No such command 'bogus'"),
]
# fmt: on
UNREACHABLE_BROKER_WITHIN_S = 10.0


def _scratch(tmp_path: Path) -> Path:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "file").write_text("not a directory\n")
    os.mkfifo(scratch / "fifo")  # opening it would block: the command must refuse it first
    return scratch


def _topics(settings: Settings) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


@pytest.mark.parametrize(
    ("args", "overrides", "code", "phrase"),
    [pytest.param(*case[1:], id=case[0]) for case in HOSTILE_INPUTS],
)
def test_hostile_input_is_one_line_and_an_exit_code(settings, tmp_path, args, overrides, code, phrase):
    scratch = _scratch(tmp_path)
    misspelt_topic = settings.topic_iot.replace("sensors", "sensrs")
    values = {"tmp": scratch, "misspelt_topic": misspelt_topic, "free_port": free_port()}
    env = settings_env(settings)
    env.update({name: value.format(**values) for name, value in overrides.items()})

    started = time.monotonic()
    result = run_cli([arg.format(**values) for arg in args], env, timeout=60, check=False)
    elapsed = time.monotonic() - started

    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lambdaflow: ")
    assert phrase in lines[0]
    assert result.returncode == code, result.stderr
    if overrides is UNREACHABLE:
        assert elapsed < UNREACHABLE_BROKER_WITHIN_S, f"took {elapsed:.1f} s"
    if "{misspelt_topic}" in args:
        assert misspelt_topic not in _topics(settings)
    assert not (scratch / "missing").exists()  # a store URL's missing directory is not created


def test_verbose_adds_the_traceback_before_the_one_line(settings):
    args = ["-v", "produce", "iot", "--count", "1", "--topic", "no_such_topic"]
    result = run_cli(args, settings_env(settings), timeout=60, check=False)
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1].startswith("lambdaflow: topic 'no_such_topic' does not exist")
    )


def test_the_lake_days_end_where_a_day_end_plus_the_watermark_is_a_timestamp():
    watermark = timedelta(seconds=600)
    assert (FIRST_DAY, last_day(watermark)) == (date(1970, 1, 1), date(9999, 12, 30))
    check_lake_day(date(1970, 1, 1), watermark)
    check_lake_day(date(9999, 12, 30), watermark)
    check_lake_time(datetime(9999, 12, 30, 23, 59, 59, tzinfo=UTC), watermark)
    for day in (date(1969, 12, 31), date(9999, 12, 31), date.min):
        with pytest.raises(ValueError, match="outside the days the lake can hold"):
            check_lake_day(day, watermark)
    assert last_day(timedelta(days=2)) == date(9999, 12, 28)  # its end, 12-29, plus 2 days is 12-31
    assert last_day(timedelta(days=10_000 * 366)) == date.min  # no day at all, and no OverflowError
