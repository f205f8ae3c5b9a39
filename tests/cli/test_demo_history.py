"""What `lambdaflow up` does about the demo's history, decided from the markers in the data directory: a
fresh directory gets `demo_history_days` days sent by the producers before their live events and a DAG that
starts on the first of them, unpaused; a directory whose markers say it was sent gets neither again."""

from __future__ import annotations

from datetime import UTC, date, datetime

from cli.stack import Credential, airflow_env, demo_history, demo_processes, history_line
from ingestion.history import HistoryPlan, write_marker
from lambdaflow.settings import load_settings

TODAY = date(2026, 12, 3)


def secrets_() -> dict[str, Credential]:
    return {name: Credential("x", False, "environment") for name in ("api_token", "airflow_password",
                                                                     "jwt_secret")}  # fmt: skip


def producer_flags(command: list[str]) -> list[str]:
    return command[command.index("--history-days") :] if "--history-days" in command else []


def test_a_fresh_data_directory_sends_the_days_before_today_first(tmp_path, monkeypatch):
    monkeypatch.delenv("LAMBDAFLOW_BATCH_START_DATE", raising=False)
    settings = load_settings(data_dir=tmp_path)
    history = demo_history(settings, demo=True, today=TODAY)
    assert (history.first_day, history.days, history.last_day) == (date(2026, 11, 30), 3, date(2026, 12, 2))
    assert history.pending == ("iot_sensors", "user_activity")
    processes = demo_processes(settings, 20.0, 10.0, True, history)
    for name in ("iot", "activity"):
        assert producer_flags(processes[name]) == ["--history-days", "3", "--history-from", "2026-11-30"]
    env = airflow_env(settings, tmp_path, secrets_(), history, unpaused=True)
    assert env["LAMBDAFLOW_BATCH_START_DATE"] == "2026-11-30"
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"
    line = history_line(settings, history)
    assert line.startswith("3 days of history (2026-11-30 … 2026-12-02): publishing 194,400 events")


def test_markers_keep_the_first_day_and_skip_what_was_sent(tmp_path, monkeypatch):
    monkeypatch.delenv("LAMBDAFLOW_BATCH_START_DATE", raising=False)
    settings = load_settings(data_dir=tmp_path)
    write_marker(tmp_path, "iot_sensors", HistoryPlan("iot", date(2026, 11, 28), 3), 130_000)
    history = demo_history(settings, demo=True, today=TODAY)  # days later, one topic still to send
    assert (history.first_day, history.days, history.pending) == (date(2026, 11, 28), 3, ("user_activity",))
    processes = demo_processes(settings, 20.0, 10.0, True, history)
    assert producer_flags(processes["iot"]) == []
    assert producer_flags(processes["activity"]) == ["--history-days", "3", "--history-from", "2026-11-28"]

    write_marker(tmp_path, "user_activity", HistoryPlan("activity", date(2026, 11, 28), 3), 65_000)
    history = demo_history(settings, demo=True, today=TODAY)
    assert history.pending == () and history.first_day == date(2026, 11, 28)
    assert all(
        producer_flags(command) == [] for command in demo_processes(settings, 20, 10, True, history).values()
    )
    assert airflow_env(settings, tmp_path, secrets_(), history)["LAMBDAFLOW_BATCH_START_DATE"] == "2026-11-28"
    assert "sent by an earlier start" in history_line(settings, history)


def test_without_demo_producers_or_days_there_is_no_history_and_the_dag_starts_today_paused(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("LAMBDAFLOW_BATCH_START_DATE", raising=False)
    for settings, demo in ((load_settings(data_dir=tmp_path), False),
                           (load_settings(data_dir=tmp_path, demo_history_days=0), True)):  # fmt: skip
        history = demo_history(settings, demo=demo, today=TODAY)
        assert (history.first_day, history.pending) == (None, ())
        processes = demo_processes(settings, 20, 10, demo, history)
        assert all("--history-days" not in command for command in processes.values())
        env = airflow_env(settings, tmp_path, secrets_(), history)
        assert env["LAMBDAFLOW_BATCH_START_DATE"] == datetime.now(UTC).date().isoformat()
        assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "True"
