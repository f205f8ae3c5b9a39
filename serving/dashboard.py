"""The dashboard page (`/`) and the Great Expectations Data Docs (`/quality/`).

The page itself holds no data: its script reads the API, with the token the user types in when the server
has one (kept in the browser's session storage and sent as a cookie, so the Data Docs links work too).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, render_template, send_from_directory

dashboard = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
                      static_url_path="/static")  # fmt: skip


@dashboard.route("/")
def index() -> str:
    settings = current_app.extensions["lambdaflow.settings"]
    return render_template("dashboard.html", token_required=settings.api_token is not None,
                           refresh_ms=current_app.config["DASHBOARD_REFRESH_MS"])  # fmt: skip


@dashboard.route("/quality/")
@dashboard.route("/quality/<path:page>")
def data_docs(page: str = "index.html") -> Any:
    settings = current_app.extensions["lambdaflow.settings"]
    site = settings.quality_dir / "data_docs"
    if not (site / "index.html").exists():
        abort(404, "no Data Docs yet: they are built by the batch DAG's last task")
    return send_from_directory(site, page)
