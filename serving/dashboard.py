"""The dashboard page (`/`), its login and the Great Expectations Data Docs (`/quality/`).

The page and its assets hold no data: its script reads the API. When the server has a token, the page's
login form posts it to `/login`, which answers with an HttpOnly session cookie; the script's requests and the
Data Docs links then carry that cookie, and no script can read the token.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, current_app, render_template, request, send_from_directory

from serving.auth import clear_token_cookie, set_token_cookie, token_matches, unauthorized

dashboard = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
                      static_url_path="/static")  # fmt: skip


def _api_token() -> str | None:
    token = current_app.extensions["lambdaflow.settings"].api_token
    return token.get_secret_value() if token is not None else None


def _posted_token() -> str:
    """The `token` of a form or of a JSON object; empty when there is none."""
    if request.is_json:
        body = request.get_json(silent=True)
        return str(body.get("token") or "") if isinstance(body, dict) else ""
    return request.form.get("token", "")


@dashboard.route("/")
def index() -> str:
    return render_template("dashboard.html", token_required=_api_token() is not None,
                           refresh_ms=current_app.config["DASHBOARD_REFRESH_MS"])  # fmt: skip


@dashboard.post("/login")
def login() -> Response:
    """204 with the session cookie for the right token, 401 for any other; 204 alone when the server has
    no token (nothing to log into)."""
    expected = _api_token()
    if expected is None:
        return Response(status=204)
    if not token_matches(_posted_token().strip(), expected):
        return unauthorized("wrong token: post the server's LAMBDAFLOW_API_TOKEN as 'token'")
    return set_token_cookie(Response(status=204), expected)


@dashboard.post("/logout")
def logout() -> Response:
    return clear_token_cookie(Response(status=204))


@dashboard.route("/quality/")
@dashboard.route("/quality/<path:page>")
def data_docs(page: str = "index.html") -> Any:
    settings = current_app.extensions["lambdaflow.settings"]
    site = settings.quality_dir / "data_docs"
    if not (site / "index.html").exists():
        abort(404, "no Data Docs yet: they are built by the batch DAG's last task")
    return send_from_directory(site, page)
