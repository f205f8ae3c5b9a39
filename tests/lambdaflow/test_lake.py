"""The lake's day inputs: a raw day's file names as Spark lists them, and the record of a day's run."""

from datetime import date
from pathlib import Path

import pytest

from lambdaflow.lake import (
    READ,
    VALIDATED,
    DayInputs,
    list_day_inputs,
    local_path,
    raw_day_names,
    read_day_inputs,
    write_day_inputs,
)

DAY = date(2026, 12, 4)


def test_spark_listed_files_name_the_same_files_in_a_folder_with_spaces_and_percents(tmp_path):
    folder = tmp_path / "my lake 100%" / "raw" / "iot" / "date=2026-12-04"
    uris = [(folder / name).as_uri() for name in ("part-2.parquet", "part-1.parquet")]
    assert "%20" in uris[0] and "%25" in uris[0]  # as Spark's inputFiles() gives them
    assert raw_day_names(folder, [local_path(uri) for uri in uris]) == ("part-1.parquet", "part-2.parquet")


def test_a_days_inputs_are_recorded_per_kind_and_a_topic_they_do_not_name_is_an_error(tmp_path):
    folder = tmp_path / "raw" / "iot" / "date=2026-12-04"
    folder.mkdir(parents=True)
    for name in ("part-1.parquet", ".part-2.parquet.tmp", "_SUCCESS"):
        Path(folder / name).write_bytes(b"")
    validated = list_day_inputs(tmp_path, ["iot", "web"], DAY)
    assert validated.files == {"iot": ("part-1.parquet",), "web": ()}  # hidden and marker files are no input
    write_day_inputs(tmp_path, validated, VALIDATED)
    assert read_day_inputs(tmp_path, DAY, VALIDATED) == validated
    assert read_day_inputs(tmp_path, DAY, READ) is None
    assert validated.paths(tmp_path, "iot") == [folder / "part-1.parquet"]
    with pytest.raises(ValueError, match="name no files of topic 'clicks'"):
        DayInputs(DAY, validated.files).paths(tmp_path, "clicks")
