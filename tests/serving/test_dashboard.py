"""The dashboard: its page and assets are public, its login form posts the token for an HttpOnly session
cookie, and that cookie opens the API (Flask's test client); and the whole flow in Debian's Chromium, driven
by Playwright from a fresh profile against `lambdaflow serve` (Granian): the login form, then charts with
data from both layers and the alerts and quality tables. The screenshot is kept in
`test-artifacts/dashboard.png`."""

from __future__ import annotations

import json
import re
import secrets
import shutil
from http.cookies import SimpleCookie
from urllib.parse import quote

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from serving.auth import TOKEN_COOKIE
from tests.conftest import ROOT
from tests.serving.conftest import serve_filled_store

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium")
# Playwright adds --headless and --no-sandbox (needed as root) itself, and a fresh profile per context.
CHROMIUM_FLAGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHARTS = ("temperature-chart", "activity-chart", "revenue-chart")


def set_cookie(response) -> SimpleCookie:
    cookie = SimpleCookie()
    for header in response.headers.getlist("Set-Cookie"):
        cookie.load(header)
    return cookie


def test_the_page_and_its_assets_are_public_when_a_token_is_set(make_client):
    _, client = make_client(api_token=secrets.token_urlsafe(16))
    for url, kind in (
        ("/", "text/html"),
        ("/static/dashboard.js", "javascript"),
        ("/static/dashboard.css", "css"),
    ):
        response = client.get(url)
        assert response.status_code == 200 and kind in response.content_type, url
    assert b'data-token-required="true"' in client.get("/").data
    for url in ("/api/v1/sensors", "/quality/", "/api/openapi.json", "/api/docs/"):
        assert client.get(url).status_code == 401, url


def test_login_sets_an_httponly_strict_session_cookie_that_opens_the_api(make_client):
    token = secrets.token_urlsafe(16)
    _, client = make_client(api_token=token)
    for wrong in (
        {"data": {"token": "wrong"}},
        {"json": {"token": "wrong"}},
        {"data": {}},
        {"json": [token]},
    ):
        response = client.post("/login", **wrong)
        assert response.status_code == 401, wrong
        assert response.get_json()["status"] == 401 and "token" in response.get_json()["error"]
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "Set-Cookie" not in response.headers
    assert client.get("/api/v1/sensors").status_code == 401

    response = client.post("/login", data={"token": token})
    assert response.status_code == 204
    morsel = set_cookie(response)[TOKEN_COOKIE]
    assert morsel.value == token and morsel["httponly"] and morsel["samesite"] == "Strict"
    assert morsel["path"] == "/" and not morsel["max-age"] and not morsel["expires"]  # a session cookie
    assert client.get("/api/v1/sensors").status_code == 200

    response = client.post("/logout")
    assert response.status_code == 204 and set_cookie(response)[TOKEN_COOKIE].value == ""
    assert client.get("/api/v1/sensors").status_code == 401
    assert client.post("/login", json={"token": token}).status_code == 204  # JSON works as a form does
    assert client.get("/api/v1/sensors").status_code == 200


def test_the_bearer_scheme_is_case_insensitive(make_client):
    token = secrets.token_urlsafe(16)
    _, client = make_client(api_token=token)
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
        assert (
            client.get("/api/v1/sensors", headers={"Authorization": f"{scheme} {token}"}).status_code == 200
        )
    for header in (f"Basic {token}", f"Bearer{token}", token, f"Bearer {token}x", "Bearer "):
        assert client.get("/api/v1/sensors", headers={"Authorization": header}).status_code == 401, header


def test_a_percent_encoded_cookie_is_accepted(make_client):
    token = "odd token; with=signs/and%25 more"  # characters a cookie value cannot hold as they are
    _, client = make_client(api_token=token)
    client.set_cookie(TOKEN_COOKIE, quote(token, safe=""))  # as JavaScript's encodeURIComponent would send it
    assert client.get("/api/v1/sensors").status_code == 200
    client.set_cookie(TOKEN_COOKIE, quote("odd token", safe=""))
    assert client.get("/api/v1/sensors").status_code == 401
    client.delete_cookie(TOKEN_COOKIE)
    assert client.post("/login", data={"token": token}).status_code == 204  # the server's cookie round-trips
    assert client.get("/api/v1/sensors").status_code == 200


def test_without_a_token_the_page_needs_no_login(make_client):
    _, client = make_client()
    assert b'data-token-required="false"' in client.get("/").data
    assert client.get("/static/dashboard.js").status_code == 200
    assert client.get("/api/v1/sensors").status_code == 200
    response = client.post("/login", data={"token": "anything"})
    assert response.status_code == 204 and "Set-Cookie" not in response.headers


@pytest.fixture
def served(tmp_path):
    """`lambdaflow serve` on a filled store, with a token made for this test: (base URL, token, windows)."""
    with serve_filled_store(tmp_path / "data") as running:
        yield running


def log_in(page: Page, token: str) -> None:
    """Types `token` into the login form and submits it, as a person would."""
    page.fill("#token", token)
    page.click("#login button[type=submit]")


def wait_for_data(page: Page) -> None:
    """Until every chart has points and both tables have rows (each is drawn whole, in one go)."""
    charts = json.dumps(CHARTS)
    page.wait_for_function(
        f"{charts}.every((id) => Number(document.getElementById(id).dataset.points) > 0)"
        " && document.querySelectorAll('#alerts tbody tr').length > 0"
        " && document.querySelectorAll('#quality tbody tr').length > 0",
        timeout=30_000,
    )


@pytest.mark.integration
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (`make browser`)")
def test_dashboard_logs_in_and_renders_both_layers_in_headless_chromium(served, tmp_path):
    served, token, windows = served
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium",
            executable_path=CHROMIUM,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1000},
        )
        page = context.new_page()
        page.goto(served + "/")
        # Only the script shows the form (after the API's 401), and the stylesheet colours the header.
        expect(page.locator("#login")).to_be_visible()
        expect(page.locator("header")).to_have_css("background-color", "rgb(29, 38, 48)")
        expect(page.locator("#status")).to_have_text("ok")  # /health is public; the stream reported just now
        assert all(page.get_attribute(f"#{chart}", "data-points") == "0" for chart in CHARTS)

        log_in(page, "wrong-" + token)
        expect(page.locator("#login-error")).to_have_text("wrong token")
        expect(page.locator("#login")).to_be_visible()
        log_in(page, token)
        expect(page.locator("#login")).to_be_hidden()
        wait_for_data(page)
        dom = page.content()
        cookie = next(c for c in context.cookies() if c["name"] == TOKEN_COOKIE)
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] == -1
        assert page.evaluate("document.cookie") == "" and page.evaluate("sessionStorage.length") == 0
        expect(page.locator("#logout")).to_be_visible()
        page.screenshot(path=shot)

        # a line joins consecutive 5-minute windows but not the hours between two runs of windows
        gapped = page.evaluate(
            """() => {
                const svg = document.getElementById("temperature-chart").cloneNode();
                const at = (minute) => new Date(Date.UTC(2026, 0, 1, 0, minute));
                const points = [0, 5, 10, 15, 600, 605, 610].map((minute) => [at(minute), minute % 7]);
                drawChart(svg, [{ name: "gapped", points }], null, false);
                return svg.querySelector("path").getAttribute("d");
            }"""
        )
        assert gapped.count("M") == 2 and gapped.count("L") == 5, gapped
        page.click("#logout")  # clears the cookie and reloads: the API answers 401 again
        expect(page.locator("#login")).to_be_visible()
        assert not [c for c in context.cookies() if c["name"] == TOKEN_COOKIE]
        context.close()
    points = dict(re.findall(r'<svg id="([a-z-]+)"[^>]*data-points="(\d+)"', dom))
    assert int(points["temperature-chart"]) == 2 * windows, points  # both locations, batch and speed windows
    assert int(points["activity-chart"]) == 2 * windows and int(points["revenue-chart"]) == windows, points
    assert dom.count('class="horizon"') == 3, "the batch/speed boundary is drawn on every chart"
    assert dom.count("temperature_high") == 4 and "raw_iot_sensors" in dom
    assert shot.stat().st_size > 20_000
