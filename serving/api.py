"""`/api/v1`: the merged views, alerts and data-quality results, documented in the OpenAPI document."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Hashable, Mapping
from functools import wraps
from http import HTTPStatus
from typing import Any, ClassVar

import orjson
from cachetools import TTLCache
from flask import Request, Response, abort, current_app, g, request
from flask_smorest import Blueprint
from marshmallow import RAISE, Schema, ValidationError
from webargs.flaskparser import FlaskParser

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


def _metrics(view: str, args: Mapping[str, Any], subject: dict[str, Any], **filters: Any) -> Response:
    """The merged answer; with a `subject` (one sensor or location), a 404 when it has no row at all."""
    cache: AnswerCache = current_app.extensions["lambdaflow.answers"]
    horizon = g.get("lambdaflow_horizon")  # read by `_cached_first` when the cache is on
    key = (request.full_path, horizon) if horizon is not None and args["end"] <= horizon else None
    merged = merge.merged_view(_engine(), view, args["start"], args["end"], **filters)
    for column, value in subject.items():
        if not merged.points and not merge.exists(_engine(), view, column, value):
            abort(404, f"unknown {column} {value!r}")
    points = orjson.Fragment(b"[%s]" % b",".join(merged.points))  # the points' JSON, written as it is
    answer = _json({**subject, "from": args["start"], "to": args["end"], "batch_as_of": merged.batch_as_of,
                    "points": points})  # fmt: skip
    if key and merged.batch_as_of == horizon:  # no publish in between
        cache.put(key, answer.get_data())
    return answer


@api.route("/sensors")
@api.arguments(NoQuery(), location="query", as_kwargs=False)
@api.answers(schemas.Sensors)
@api.doc(summary="Every sensor with its location and newest window")
def list_sensors(_: dict[str, Any]) -> Response:
    return _json({"sensors": merge.sensors(_engine())})


def _cleaned(column: str, value: str) -> str:
    """A value as both layers store the column: categorical strings trimmed and lower-cased."""
    return value.strip().lower() if column in CLEANED_COLUMNS else value


def _view_handler(view: View) -> Callable[..., Response]:
    """The handler of a view's route: its subject from the path (404 when unknown), its filters from the
    query (an empty text filter is no filter)."""
    route = view.route
    assert route is not None

    def answer(args: dict[str, Any], **path: str) -> Response:
        subject, equals, at_least = {}, {}, {}
        if route.subject is not None:
            subject[route.subject] = equals[route.subject] = _cleaned(route.subject, path[route.subject])
        for found in route.filters:
            value = args.get(found.name)
            if found.at_least and value is not None:
                at_least[found.column] = value
            elif not found.at_least and value:
                equals[found.column] = _cleaned(found.column, value)
        return _metrics(view.name, args, subject, equals=equals, at_least=at_least)

    answer.__name__ = answer.__qualname__ = view.name
    return answer


def _cached_first(view: str, handler: Callable[..., Response]) -> Callable[..., Response]:
    """The answer cache in front of a view route's handler, before its query is parsed: a request answered
    at the same horizon is answered again for one read of the horizon (only a valid answer lying wholly
    before the horizon was kept)."""

    @wraps(handler)
    def answer(**path: str) -> Response:
        cache: AnswerCache = current_app.extensions["lambdaflow.answers"]
        if cache.enabled:
            g.lambdaflow_horizon = horizon = merge.horizon(_engine(), view)
            cached = cache.get((request.full_path, horizon)) if horizon is not None else None
            if cached is not None:
                return current_app.response_class(cached, mimetype="application/json")
        return handler(**path)

    return answer


def _add_view_route(view: View) -> None:
    route = view.route
    assert route is not None
    errors = (HTTPStatus.NOT_FOUND,) if route.subject is not None else ()
    # a schema instance: webargs makes a new one from a class on every request
    query, answer = view_query(view)(), _view_handler(view)
    # The decorators document the operation; the route runs the handler behind one parse of its query, the
    # decorators' parse included: their six wrappers cost a request more than its SQL.
    documented = api.doc(summary=route.summary)(answer)
    documented = api.answers(schemas.ANSWERS[view.name], *errors)(documented)
    documented = api.arguments(query, location="query", as_kwargs=False)(documented)
    parse = api.ARGUMENTS_PARSER.parse

    def parsed_first(**path: str) -> Response:
        return answer(parse(query, location="query"), **path)

    parsed_first._apidoc = documented._apidoc  # type: ignore[attr-defined]  # what flask-smorest documents
    api.route(route.path, endpoint=view.name)(_cached_first(view.name, parsed_first))


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
