"""The Flask app factory: settings in, an app with the API, health, metrics, dashboard and Data Docs out."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Flask, Response
from flask.json.provider import JSONProvider
from flask_smorest import Api
from flask_swagger_ui import get_swaggerui_blueprint
from werkzeug.exceptions import HTTPException

from lambdaflow import points, store
from lambdaflow.settings import Settings, load_settings
from serving.api import AnswerCache, ViewAnswers, api
from serving.auth import require_token
from serving.dashboard import dashboard
from serving.errors import error_response, refuse_oversized
from serving.fast_path import ViewFastPath
from serving.health import health
from serving.metrics import instrument, metrics
from serving.schemas import Error


class DocumentedApi(Api):
    """flask-smorest with the API's own error shape in the document, no catch-all `default` response (each
    operation lists the errors it gives) and the bearer token as the security scheme."""

    ERROR_SCHEMA = Error
    DEFAULT_ERROR_RESPONSE_NAME = None


SPEC_OPTIONS = {
    "components": {"securitySchemes": {"bearer": {
        "type": "http", "scheme": "bearer",
        "description": "LAMBDAFLOW_API_TOKEN; needed by every operation but /health when the server has one",
    }}},
    "security": [{"bearer": []}],
}  # fmt: skip


class OrjsonProvider(JSONProvider):
    """orjson: several times faster than the standard library on the view payloads; times as ISO-8601 UTC
    with a `Z` (the store keeps naive UTC). Responses get orjson's bytes as they are: a day's answer is tens
    of kilobytes, and decoding it to text for the response to encode again cost two copies of it."""

    options = points.JSON_OPTIONS

    def encode(self, obj: Any) -> bytes:
        try:
            return points.json_bytes(obj)
        except orjson.JSONEncodeError:  # keys other than plain str (e.g. SQLAlchemy's names): slower
            return orjson.dumps(obj, default=str, option=self.options | orjson.OPT_NON_STR_KEYS)

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return self.encode(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        body = self.encode(self._prepare_response_obj(args, kwargs))
        return self._app.response_class(body, mimetype="application/json")


class ServingResponse(Response):
    """A body held in memory goes to the server as a one-item list: Granian sends a list in one write, and
    iterates any other iterable item by item holding the GIL (~0.04 ms of a request's CPU)."""

    def get_app_iter(self, environ: Any) -> Any:
        body = super().get_app_iter(environ)
        if self.is_sequence and not self._on_close:  # nothing to run when the body is closed
            return [b"".join(body)]
        return body


def create_app(settings: Settings | None = None, **config: Any) -> Flask:
    """The serving app for `settings` (default: from the environment); `config` overrides Flask config."""
    settings = settings or load_settings()
    app = Flask(__name__, static_folder=None)  # an app-level /static would shadow the dashboard's public one
    app.json = OrjsonProvider(app)
    app.response_class = ServingResponse
    app.config.update(
        API_TITLE="lambdaflow",
        API_VERSION="v1",
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS=SPEC_OPTIONS,
        DASHBOARD_REFRESH_MS=5000,
        JSON_SORT_KEYS=False,
    )
    app.config.update(config)
    app.extensions["lambdaflow.settings"] = settings
    app.extensions["lambdaflow.store"] = store.engine(settings.resolved_store_url)
    app.extensions["lambdaflow.answers"] = ViewAnswers(
        app.extensions["lambdaflow.store"], AnswerCache(settings.serve_cache_seconds)
    )

    smorest = DocumentedApi(app)
    smorest.register_blueprint(api)
    smorest.register_blueprint(health)
    app.register_blueprint(dashboard)
    app.register_blueprint(metrics)  # Prometheus text: outside the OpenAPI document
    app.register_blueprint(get_swaggerui_blueprint("/api/docs", "/api/openapi.json",
                                                   config={"app_name": "lambdaflow API"}))  # fmt: skip
    app.register_error_handler(HTTPException, error_response)  # after flask-smorest's, so it wins
    instrument(app)  # before the token check, so refused requests are counted and timed too
    app.before_request(refuse_oversized)
    if settings.api_token is not None:
        app.before_request(require_token(settings.api_token.get_secret_value()))
    app.wsgi_app = ViewFastPath(app)  # type: ignore[method-assign]
    return app
