"""The demo as a user meets it, in Debian's headless Chromium driven by Playwright: `lambdaflow up` on a fresh
data directory sends days of history, the unpaused DAG's catch-up publishes them; in Airflow's UI, logged in
with the password the banner printed, the catch-up runs succeeded, and a backfill of one past day with
reprocessing (Trigger ▸ Backfill, "All Runs") completes; then the dashboard, logged in with the printed API
token in the same browser, answers that day from `batch`, with that day's fresh quality results. Screenshots
go to test-artifacts/ (airflow-runs.png, airflow-backfill.png, demo-dashboard.png)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.cli.test_stack import get, stack_env, stop_up, wait_for_banner
from tests.conftest import LAMBDAFLOW, ROOT
from tests.serving.test_dashboard import ARTIFACTS, CHROMIUM, CHROMIUM_FLAGS, log_in, wait_for_data

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (`make browser`)"),
]
# `make run`'s defaults but where they only cost time: two days (still a catch-up of several days, with one
# DAG run fewer than three), the history sent in 20 s, and the lake sensor poking every 30 s (as in the DAG
# tests), so the first day's run starts soon after its lake is complete
HISTORY_DAYS = 2
TEST_SETTINGS = {
    "LAMBDAFLOW_DEMO_HISTORY_DAYS": str(HISTORY_DAYS),
    "LAMBDAFLOW_DEMO_HISTORY_SECONDS": "20",
    "LAMBDAFLOW_BATCH_LAKE_POKE_SECONDS": "30",
}
CATCH_UP_TIMEOUT_S = 1500
BACKFILL_TIMEOUT_S = 600


def banner_value(output: str, name: str) -> str:
    """A generated credential as the banner prints it: `  <name>  <value>   (generated now, kept in …)`."""
    match = re.search(rf"^\s+{re.escape(name)}\s+(\S+)\s+\(generated now", output, re.MULTILINE)
    assert match, f"the banner printed no {name!r}: {output[-3000:]}"
    return match.group(1)


class AirflowApi:
    """Airflow's REST API (v2) with a bearer token from the admin's password, to wait on runs."""

    def __init__(self, base: str, password: str) -> None:
        self.base, self.password, self.token = base, password, ""

    def get(self, path: str) -> dict:
        for _ in range(2):
            status, body = (None, {}) if not self.token else get(self.base + path, self.token)
            if status == 200:
                return body
            credentials = json.dumps({"username": "admin", "password": self.password}).encode()
            login = urllib.request.Request(f"{self.base}/auth/token", method="POST", data=credentials,
                                           headers={"Content-Type": "application/json"})  # fmt: skip
            with urllib.request.urlopen(login, timeout=10) as response:
                self.token = json.loads(response.read())["access_token"]
        raise AssertionError(f"{path}: {status} {body}")

    def runs(self) -> list[dict]:
        return self.get("/api/v2/dags/lambdaflow_batch/dagRuns?order_by=logical_date&limit=100")["dag_runs"]


def wait_for_backfill(api: AirflowApi, backfill_id: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not (backfill := api.get(f"/api/v2/backfills/{backfill_id}"))["completed_at"]:
        assert time.monotonic() < deadline, f"the backfill did not complete in time: {backfill}"
        time.sleep(2)


def wait_for_runs(api: AirflowApi, days: list[date], run_type: str | None, timeout_s: float, after: str = "",
                  poll: Callable[[], None] = lambda: None) -> list:  # fmt: skip
    """Until a run of `run_type` (started after `after`) succeeded for each day; fail at a failed one.
    `poll` is called on each round."""
    deadline = time.monotonic() + timeout_s
    while True:
        poll()
        try:
            runs = [r for r in api.runs()
                    if run_type in (None, r["run_type"]) and (r["start_date"] or "~") > after]  # fmt: skip
        except OSError:  # the API server is still starting
            runs = []
        by_day = {date.fromisoformat(r["logical_date"][:10]): r["state"] for r in runs}
        failed = [day for day, state in by_day.items() if state == "failed"]
        assert not failed, f"{run_type} runs failed for {failed}: {runs}"
        if all(by_day.get(day) == "success" for day in days):
            return runs
        assert time.monotonic() < deadline, f"{run_type} runs of {days} did not succeed in time: {by_day}"
        time.sleep(2)


def stop_at_once(stack: subprocess.Popen, log_path: Path) -> None:
    """Ctrl-C, then Ctrl-C again once the producers have stopped: the rest stops at once. The test asks
    nothing of the stop (tests/cli/test_stack.py does), and the stream that the catch-up's Spark jobs starved
    would not finish its drain in time anyway."""
    stack.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 20
    while "sending SIGTERM to stream" not in log_path.read_text() and time.monotonic() < deadline:
        if stack.poll() is not None:
            return
        time.sleep(0.2)
    with suppress(subprocess.TimeoutExpired):
        stop_up(stack, timeout_s=30)  # the second Ctrl-C


@contextmanager
def failure_screenshot(page: Page, path: Path) -> Iterator[None]:
    """What the browser showed when a step failed."""
    try:
        yield
    except BaseException:
        page.screenshot(path=path, full_page=True)
        raise


def log_in_to_airflow(page: Page, base: str, password: str) -> None:
    page.goto(base + "/")
    page.get_by_role("textbox", name=re.compile("username", re.I)).fill("admin")
    page.get_by_label(re.compile("password", re.I)).fill(password)
    page.get_by_role("button", name=re.compile("sign in|log in|submit", re.I)).click()
    page.wait_for_url(lambda url: "/login" not in url, timeout=30_000)


@pytest.mark.timeout(CATCH_UP_TIMEOUT_S + BACKFILL_TIMEOUT_S + 600)
def test_the_demo_from_up_to_a_backfill_in_the_airflow_ui_and_the_dashboard(tmp_path):
    env = stack_env(tmp_path)
    del env["LAMBDAFLOW_AIRFLOW_PASSWORD"]  # generated and printed, as for a new user
    for name in ("LAMBDAFLOW_TRIGGER_SECONDS", "LAMBDAFLOW_ARCHIVE_TRIGGER_SECONDS"):
        del env[name]  # the defaults, as `make run` has them
    env.update(TEST_SETTINGS)
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=n) for n in range(HISTORY_DAYS, 0, -1)]
    backfilled = days[-1]
    airflow = f"http://127.0.0.1:{env['LAMBDAFLOW_AIRFLOW_PORT']}"
    dashboard = f"http://127.0.0.1:{env['LAMBDAFLOW_SERVE_PORT']}"
    ARTIFACTS.mkdir(exist_ok=True)
    shots = {
        name: ARTIFACTS / f"{name}.png" for name in ("airflow-runs", "airflow-backfill", "demo-dashboard")
    }
    for shot in shots.values():
        shot.unlink(missing_ok=True)

    log_path = tmp_path / "up.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        stack = subprocess.Popen([*LAMBDAFLOW, "up"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    published: list[float] = []

    def first_published_day() -> None:
        """Note when /health first shows a published day (the time `make run` takes to the batch layer)."""
        if published:
            return
        try:
            status, health = get(dashboard + "/health")
        except OSError:
            return
        if status in (200, 503) and any((health.get("batch") or {}).get("horizons", {}).values()):
            published.append(time.monotonic() - started)
            print(f"first day published {published[0]:.0f} s after `lambdaflow up` started")

    try:
        wait_for_banner(stack, log_path)
        time.sleep(1)  # the banner's rows follow its first line
        banner = log_path.read_text()
        assert f"{HISTORY_DAYS} days of history ({days[0]} … {days[-1]}): publishing" in banner
        assert "unpaused: catch-up runs each past day" in banner
        password = banner_value(banner, "user admin, password")
        token = banner_value(banner, "API token (Bearer)")
        api = AirflowApi(airflow, password)
        catch_up = wait_for_runs(api, days, "scheduled", CATCH_UP_TIMEOUT_S, poll=first_published_day)
        # the runs list shows each run's id and "run after" (its interval's end), not its logical date
        run_ids = {date.fromisoformat(run["logical_date"][:10]): run["dag_run_id"] for run in catch_up}
        print(f"catch-up of {HISTORY_DAYS} days done {time.monotonic() - started:.0f} s after `up` started")

        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                tmp_path / "chromium", executable_path=CHROMIUM, args=CHROMIUM_FLAGS,
                viewport={"width": 1400, "height": 1000}, timezone_id="UTC",
            )  # fmt: skip
            page = context.new_page()
            with failure_screenshot(page, ARTIFACTS / "demo-failure.png"):
                log_in_to_airflow(page, airflow, password)

                page.goto(airflow + "/dags/lambdaflow_batch/runs")
                rows = page.locator("table tbody tr")
                for day in days:
                    row = rows.filter(has_text=run_ids[day])
                    expect(row.first).to_be_visible(timeout=30_000)
                    expect(row.first).to_contain_text("Success")
                page.screenshot(path=shots["airflow-runs"], full_page=True)

                page.goto(airflow + "/dags/lambdaflow_batch")
                page.get_by_role("button", name="Trigger Dag").click()
                page.locator("label").filter(has_text="Backfill").first.click()
                # From and To: each a date-time picker whose popover has a date and a time field; both are the
                # day's start, the logical date of the day's one run
                pickers = page.get_by_test_id("datetime-input")
                date_field = page.get_by_placeholder("YYYY/MM/DD").filter(visible=True)
                time_field = page.get_by_placeholder("HH:mm").filter(visible=True)
                for index in (0, 1):
                    pickers.nth(index).click()
                    date_field.fill(f"{backfilled:%Y/%m/%d}")
                    time_field.fill("00:00")
                    page.get_by_text(
                        "Date Range"
                    ).click()  # closes the popover (Escape would close the dialog)
                    # it fades out: until it is gone, the next popover's fields would not be the only ones
                    expect(date_field).to_have_count(0)
                # reprocess behaviour "All Runs" (completed): the day's successful run runs again
                page.locator("label").filter(has_text="All Runs").first.click()
                expect(page.get_by_text(re.compile(r"1 run will be triggered"))).to_be_visible(timeout=30_000)
                page.screenshot(path=shots["airflow-backfill"])
                before = datetime.now(UTC).isoformat()
                created = lambda r: r.url.endswith("/backfills") and r.request.method == "POST"  # noqa: E731
                with page.expect_response(created) as made:
                    page.get_by_role("button", name="Run Backfill").click()
                assert made.value.ok, made.value.text()
                backfill = made.value.json()
                assert backfill["reprocess_behavior"] == "completed", backfill
                assert backfill["from_date"][:10] == backfill["to_date"][:10] == str(backfilled), backfill
                wait_for_backfill(api, backfill["id"], BACKFILL_TIMEOUT_S)
                # a reprocessed run is the day's run, cleared and run again (whatever its run type)
                wait_for_runs(api, [backfilled], None, 60, after=before)
                page.goto(airflow + "/dags/lambdaflow_batch/backfills")
                expect(page.locator("table tbody tr").first).to_be_visible(timeout=30_000)

                page.goto(dashboard + "/")
                log_in(page, token)
                expect(page.locator("#login")).to_be_hidden()
                wait_for_data(page)
                expect(page.locator("#as-of")).to_contain_text(f"batch as of {today}")
                quality = page.locator("#quality tbody tr").filter(has_text=backfilled.isoformat())
                expect(quality.first).to_be_visible()
                page.screenshot(path=shots["demo-dashboard"], full_page=True)
                dom = page.content()
                start, end = f"{backfilled}T00:00:00Z", f"{backfilled + timedelta(days=1)}T00:00:00Z"
                answer = page.request.get(f"{dashboard}/api/v1/activity?from={start}&to={end}").json()
                runs = page.request.get(f"{dashboard}/api/v1/quality?days={HISTORY_DAYS}").json()["runs"]
            context.close()
    finally:
        stop_at_once(stack, log_path)

    assert answer["points"] and {point["source"] for point in answer["points"]} == {"batch"}
    assert answer["batch_as_of"].startswith(today.isoformat())
    of_day = [run for run in runs if run["day"] == backfilled.isoformat()]
    assert of_day and all(run["success"] for run in of_day), of_day
    assert all(run["run_at"] > before.replace("+00:00", "") for run in of_day), "the backfill reran no gate"
    assert dom.count('class="horizon"') == 3, "the batch/speed boundary is drawn on every chart"
    assert all(shot.stat().st_size > 20_000 for shot in shots.values())
