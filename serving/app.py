"""The Flask app factory: settings in, an app with the API, health, dashboard and Data Docs out."""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from flask import Flask, Response, jsonify, request
from flask.json.provider import JSONProvider
from flask_smorest import Api
from flask_swagger_ui import get_swaggerui_blueprint
from werkzeug.exceptions import HTTPException, Unauthorized

from lambdaflow import store
from lambdaflow.settings import Settings, load_settings
from serving.api import AnswerCache, api
from serving.dashboard import dashboard
from serving.health import health

TOKEN_COOKIE = "lambdaflow_token"
# Pages that hold no data and so need no token: the health check and the dashboard's shell (its script asks
# for the token and then reads the API with it).
PUBLIC_ENDPOINTS = frozenset({"health.report", "dashboard.index", "dashboard.static"})


class OrjsonProvider(JSONProvider):
    """orjson: several times faster than the standard library on the view payloads; times as ISO-8601 UTC
    with a `Z` (the store keeps naive UTC)."""

    options = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj, default=str, option=self.options).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)


def _error(exc: HTTPException) -> Response:
    """Every error as JSON: `{"error": message, "parameter": name}` (the parameter for a bad query)."""
    body: dict[str, Any] = {"status": exc.code, "error": exc.description}
    messages = (getattr(exc, "data", None) or {}).get("messages", {})
    problems = {name: "; ".join(found) if isinstance(found, list) else str(found)
                for location in messages.values() for name, found in location.items()}  # fmt: skip
    if problems:  # webargs: {"query": {"from": ["Not a valid datetime."]}}; the first one leads
        name, text = next(iter(problems.items()))
        body.update(error=f"invalid parameter {name!r}: {text}", parameter=name, parameters=problems)
    response = jsonify(body)
    response.status_code = exc.code or 500
    if exc.code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="lambdaflow"'
    return response


def _require_token(token: str) -> Any:
    expected = token.encode()

    def check() -> Response | None:
        if request.endpoint in PUBLIC_ENDPOINTS:
            return None
        header = request.headers.get("Authorization", "")
        given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        given = given or request.cookies.get(TOKEN_COOKIE, "")
        if given and hmac.compare_digest(given.encode(), expected):
            return None
        message = "missing or wrong token: send 'Authorization: Bearer <LAMBDAFLOW_API_TOKEN>'"
        return _error(Unauthorized(message))

    return check


def create_app(settings: Settings | None = None, **config: Any) -> Flask:
    """The serving app for `settings` (default: from the environment); `config` overrides Flask config."""
    settings = settings or load_settings()
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.config.update(
        API_TITLE="lambdaflow",
        API_VERSION="v1",
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="openapi.json",
        DASHBOARD_REFRESH_MS=5000,
        JSON_SORT_KEYS=False,
    )
    app.config.update(config)
    app.extensions["lambdaflow.settings"] = settings
    app.extensions["lambdaflow.store"] = store.connect(settings.resolved_store_url)
    app.extensions["lambdaflow.answers"] = AnswerCache(settings.serve_cache_seconds)

    smorest = Api(app)
    smorest.register_blueprint(api)
    app.register_blueprint(health)
    app.register_blueprint(dashboard)
    app.register_blueprint(get_swaggerui_blueprint("/api/docs", "/api/openapi.json",
                                                   config={"app_name": "lambdaflow API"}))  # fmt: skip
    app.register_error_handler(HTTPException, _error)  # after flask-smorest's, so it wins
    if settings.api_token is not None:
        app.before_request(_require_token(settings.api_token.get_secret_value()))
    return app
