"""`/api/v1`: the merged views, alerts and data-quality results, documented in the OpenAPI document."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Hashable, Mapping
from datetime import datetime
from http import HTTPStatus
from typing import Any, ClassVar

import orjson
from cachetools import TTLCache
from flask import Request, Response, current_app, request
from flask_smorest import Blueprint
from marshmallow import RAISE, Schema, ValidationError
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import NotFound

from lambdaflow import points
from lambdaflow.views import CLEANED_COLUMNS, VIEWS, View
from serving import merge, schemas
from serving.params import AlertsQuery, NoQuery, QualityQuery, view_query


class _BadRequestParser(FlaskParser):
    DEFAULT_VALIDATION_STATUS = 400  # a bad parameter is the client's error, named in the message
    # a misspelt parameter (`form=`) is an error, not silently the default range
    DEFAULT_UNKNOWN_BY_LOCATION: ClassVar = {**FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION, "query": RAISE}

    def load_querystring(self, req: Request, schema: Schema) -> Any:
        """A parameter given twice is a 400: taking the first silently would answer another question."""
        repeated = sorted(name for name, values in req.args.lists() if len(values) > 1)
        if repeated:
            error = ValidationError({"query": {name: ["given more than once"] for name in repeated}})
            self.handle_error(error, req, schema, error_status_code=400, error_headers=None)
        return super().load_querystring(req, schema)


class ApiBlueprint(Blueprint):
    ARGUMENTS_PARSER = _BadRequestParser()

    def answers(self, schema: type[Schema], *errors: HTTPStatus) -> Callable[[Callable], Callable]:
        """Document an operation's 200 answer and its errors: 401 (with a token set, every operation needs
        it), 414 (an overlong request line), and `errors`; 400 comes with the query arguments."""

        def decorate(handler: Callable) -> Callable:
            handler = self.response(HTTPStatus.OK, schema)(handler)
            for status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.REQUEST_URI_TOO_LONG, *errors):
                handler = self.alt_response(status, response=status.name)(handler)
            return handler

        return decorate


api = ApiBlueprint(
    "api",
    __name__,
    url_prefix="/api/v1",
    description="Views merged from the batch layer (exact, before `batch_as_of`) and the speed layer "
    "(fresh, from `batch_as_of` on). Each point says its `source`; speed points list the values that are "
    "approximate (distinct counts by HyperLogLog sketches, ~0.8 % relative standard error).",
)


def _engine() -> Any:
    return current_app.extensions["lambdaflow.store"]


def _json(payload: Any) -> Response:
    return current_app.json.response(payload)


class AnswerCache:
    """Answers that lie wholly before the horizon, by request and horizon, for `seconds` (thread-safe)."""

    def __init__(self, seconds: float, size: int = 2048) -> None:
        self.cache: TTLCache | None = TTLCache(size, seconds) if seconds > 0 else None
        self.lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.cache is not None

    def get(self, key: Hashable) -> bytes | None:
        if self.cache is None:
            return None
        with self.lock:
            return self.cache.get(key)

    def put(self, key: Hashable, body: bytes) -> None:
        if self.cache is not None:
            with self.lock:
                self.cache[key] = body


# a view answer's error met before Flask (serving.fast_path): the route raises it rather than try again
ANSWER_FAILED = "lambdaflow.answer_failed"


def request_key(environ: Mapping[str, Any]) -> str:
    """A request's key in the answer cache: its path and query as the server gives them."""
    return f"{environ.get('PATH_INFO', '')}?{environ.get('QUERY_STRING', '')}"


def _cleaned(column: str, value: str) -> str:
    """A value as both layers store the column: categorical strings trimmed and lower-cased."""
    return value.strip().lower() if column in CLEANED_COLUMNS else value


class ViewAnswers:
    """The JSON answers of the view routes, from the store through the answer cache; the one definition of
    them, whichever request handling asked (Flask's routes or `serving.fast_path`)."""

    def __init__(self, engine: Any, cache: AnswerCache) -> None:
        self.engine, self.cache = engine, cache

    def cached(self, view: str, key: str) -> tuple[datetime | None, bytes | None]:
        """The view's horizon (None also when the cache is off) and the answer kept for `key` at it."""
        if not self.cache.enabled:
            return None, None
        horizon = merge.horizon(self.engine, view)
        return horizon, self.cache.get((key, horizon)) if horizon is not None else None

    def answer(self, view: View, args: Mapping[str, Any], path: Mapping[str, str], key: str,
               horizon: datetime | None) -> bytes:  # fmt: skip
        """The merged answer for the parsed query `args` and the `path` values; kept for `key` when it lies
        wholly before `horizon` (read by `cached`) and no publish came in between. NotFound for a subject
        with no row at all."""
        route = view.route
        assert route is not None
        subject, equals, at_least = {}, {}, {}
        if route.subject is not None:
            subject[route.subject] = equals[route.subject] = _cleaned(route.subject, path[route.subject])
        for found in route.filters:
            value = args.get(found.name)
            if found.at_least and value is not None:
                at_least[found.column] = value
            elif not found.at_least and value:  # an empty text filter is no filter
                equals[found.column] = _cleaned(found.column, value)
        start, end = args["start"], args["end"]
        merged = merge.merged_view(self.engine, view.name, start, end, equals=equals, at_least=at_least)
        for column, value in subject.items():
            if not merged.points and not merge.exists(self.engine, view.name, column, value):
                raise NotFound(f"unknown {column} {value!r}")
        points_json = orjson.Fragment(b"[%s]" % b",".join(merged.points))  # the points' JSON, as it is
        body = points.json_bytes({**subject, "from": start, "to": end, "batch_as_of": merged.batch_as_of,
                                  "points": points_json})  # fmt: skip
        if horizon is not None and end <= horizon and merged.batch_as_of == horizon:
            self.cache.put((key, horizon), body)
        return body


@api.route("/sensors")
@api.arguments(NoQuery(), location="query", as_kwargs=False)
@api.answers(schemas.Sensors)
@api.doc(summary="Every sensor with its location and newest window")
def list_sensors(_: dict[str, Any]) -> Response:
    return _json({"sensors": merge.sensors(_engine())})


# instances: webargs makes a new one from a class on every request
VIEW_QUERIES = {name: view_query(view)() for name, view in VIEWS.items() if view.route is not None}


def _add_view_route(view: View) -> None:
    """The view's route: the answer cache first, before its query is parsed (a request answered at the same
    horizon is answered again for one read of the horizon), then one parse of the query and the answer."""
    route = view.route
    assert route is not None
    errors = (HTTPStatus.NOT_FOUND,) if route.subject is not None else ()
    query = VIEW_QUERIES[view.name]
    parse = api.ARGUMENTS_PARSER.parse

    def answer(**path: str) -> Response:
        failed = request.environ.pop(ANSWER_FAILED, None)  # popped: the error's frames refer to the environ
        if failed is not None:
            raise failed
        answers: ViewAnswers = current_app.extensions["lambdaflow.answers"]
        key = request_key(request.environ)
        horizon, body = answers.cached(view.name, key)
        if body is None:
            body = answers.answer(view, parse(query, location="query"), path, key, horizon)
        return current_app.response_class(body, mimetype="application/json")

    # The decorators only document the operation: their six wrappers, the parse included, cost a request
    # more than its SQL.
    documented = api.doc(summary=route.summary)(lambda: None)
    documented = api.answers(schemas.ANSWERS[view.name], *errors)(documented)
    documented = api.arguments(query, location="query", as_kwargs=False)(documented)
    answer.__name__ = answer.__qualname__ = view.name
    answer._apidoc = documented._apidoc  # type: ignore[attr-defined]  # what flask-smorest documents
    api.route(route.path, endpoint=view.name)(answer)


for _view in VIEWS.values():
    if _view.route is not None:
        _add_view_route(_view)


@api.route("/alerts")
@api.arguments(AlertsQuery(), location="query", as_kwargs=False)
@api.answers(schemas.Alerts)
@api.doc(summary="The newest alerts first")
def alerts(args: dict[str, Any]) -> Response:
    rows = merge.alerts(_engine(), args.get("since"), args.get("rule"), args["limit"])
    for row in rows:
        row["event"] = json.loads(row["event"])
    return _json({"alerts": rows})


@api.route("/quality")
@api.arguments(QualityQuery(), location="query", as_kwargs=False)
@api.answers(schemas.QualityRuns)
@api.doc(summary="The latest Great Expectations result per suite and day, with its Data Docs page")
def quality(args: dict[str, Any]) -> Response:
    runs = merge.quality_runs(_engine(), args["days"])
    for run in runs:
        run["statistics"] = json.loads(run["statistics"])
        run["failed"] = json.loads(run["failed"])
        run["link"] = f"/quality/{run['link']}" if run["link"] else None
    return _json({"runs": runs})
