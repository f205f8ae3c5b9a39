"""Plain requests of the view routes, answered before Flask's request handling.

Flask's request context, routing and response object cost an uncached answer about as much CPU as its SQL
and JSON. A GET of a view route whose token (when the server has one) is in its `Authorization` header and
whose query has only the route's parameters, each once and valid, is answered here by the same
`ViewAnswers`, parameter schema, limits and request metrics as the route. Every other request (HEAD, a
cookie, a refusal, a bad parameter, an unknown subject, a store error) goes on to Flask, which answers it as
it answers any request: an answer given here is Flask's, byte for byte. An unknown subject or a store error
met here is handed to the route, which raises it rather than read the store again.

The fast path runs the app's request hooks itself, so it knows them by name: an app with another hook, or
with host-based routing or trusted hosts, is refused at start-up rather than answered without them.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from flask import Flask
from marshmallow import RAISE, Schema, ValidationError
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import NotFound

from lambdaflow.views import VIEWS, View
from serving.api import ANSWER_FAILED, VIEW_QUERIES, ViewAnswers, request_key
from serving.auth import bearer_token, token_matches
from serving.errors import oversized
from serving.metrics import STARTED, count_request

log = logging.getLogger(__name__)
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_PLACEHOLDER = re.compile(r"<(\w+)>")  # Flask's default converter: one path segment


@dataclass(frozen=True)
class _ViewRoute:
    view: View
    rule: str  # as Flask's url_map has it: the request metrics' endpoint label
    path: re.Pattern[str]
    query: Schema

    @classmethod
    def of(cls, view: View, rule: str) -> _ViewRoute:
        parts = _PLACEHOLDER.split(rule)  # static text and placeholder names, alternately
        pattern = "".join(
            re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts)
        )
        return cls(view, rule, re.compile(pattern), VIEW_QUERIES[view.name])


class ViewFastPath:
    """WSGI middleware in front of the Flask app's own (`app.wsgi_app = ViewFastPath(app)`)."""

    def __init__(self, app: Flask) -> None:
        _check_runs_like(app)
        self.flask: WsgiApp = app.wsgi_app
        self.answers: ViewAnswers = app.extensions["lambdaflow.answers"]
        token = app.extensions["lambdaflow.settings"].api_token
        self.token = token.get_secret_value() if token is not None else None
        rules = {rule.endpoint: rule.rule for rule in app.url_map.iter_rules()}
        self.routes = [
            _ViewRoute.of(view, rules[f"api.{view.name}"]) for view in VIEWS.values() if view.route
        ]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = environ[STARTED] = time.perf_counter()  # Flask's timing of the request starts here too
        body, rule = self._answer(environ)
        if body is None:
            return self.flask(environ, start_response)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        count_request("GET", rule, 200, started)
        return [body]

    def _answer(self, environ: dict[str, Any]) -> tuple[bytes | None, str]:
        """The answer and the route's rule, or None for a request Flask has to answer."""
        found = self._plain_route(environ)
        if found is None:
            return None, ""
        route, path = found
        key = request_key(environ)
        try:
            horizon, body = self.answers.cached(route.view.name, key)
            if body is None:
                args = _plain_query(route.query, environ.get("QUERY_STRING", ""))
                if args is None:
                    return None, ""
                body = self.answers.answer(route.view, args, path, key, horizon)
        except (NotFound, SQLAlchemyError) as error:  # the error answer is Flask's, from this one try
            environ[ANSWER_FAILED] = error
            return None, ""
        except Exception:  # a fault here must not cost the answer: Flask gives it, or its 500
            log.exception("the view fast path failed on %s; Flask answers it", environ.get("PATH_INFO"))
            return None, ""
        return body, route.rule

    def _plain_route(self, environ: Mapping[str, Any]) -> tuple[_ViewRoute, dict[str, str]] | None:
        """The view route of a GET within the size limits that carries the token in its header, and its path
        values; None for any other request."""
        path = environ.get("PATH_INFO", "")
        # ASCII: Flask decodes the path's bytes as UTF-8, which only ASCII leaves as the server gives it
        if environ.get("REQUEST_METHOD") != "GET" or not path.startswith("/api/v1/") or not path.isascii():
            return None
        if "HTTP_UPGRADE" in environ:  # werkzeug routes a WebSocket upgrade apart (a 400 on these routes)
            return None
        for route in self.routes:
            matched = route.path.fullmatch(path)
            if matched is not None:
                break
        else:
            return None
        if self.token is not None and not token_matches(bearer_token(environ.get("HTTP_AUTHORIZATION", "")),
                                                        self.token):  # fmt: skip
            return None
        if oversized("GET", environ) is not None:
            return None
        return route, matched.groupdict()


# The request hooks the fast path runs itself (metrics, size limits, token), by qualified name.
KNOWN_HOOKS = {
    "before_request": {"_start", "refuse_oversized", "require_token.<locals>.check"},
    "after_request": {"_observe"},
}


def _check_runs_like(app: Flask) -> None:
    """Stop at start-up on what the fast path would skip: a request hook it does not run, trusted hosts or
    host-based routing."""
    hooks = {
        "before_request": app.before_request_funcs, "after_request": app.after_request_funcs,
        "teardown_request": app.teardown_request_funcs, "url_value_preprocessor": app.url_value_preprocessors,
    }  # fmt: skip
    for kind, registered in hooks.items():
        names = {hook.__qualname__ for scoped in registered.values() for hook in scoped}
        unknown = names - KNOWN_HOOKS.get(kind, set())
        if unknown:
            raise RuntimeError(f"serving.fast_path does not run the {kind} hook(s) {sorted(unknown)}")
    if app.config.get("TRUSTED_HOSTS") or app.url_map.host_matching or app.subdomain_matching:
        raise RuntimeError(
            "serving.fast_path does not check the Host: leave TRUSTED_HOSTS and host matching unset"
        )


def _plain_query(schema: Schema, query: str) -> dict[str, Any] | None:
    """The query parsed as the route parses it, when it is plain: ASCII, each parameter once (a repeated or
    unknown one is Flask's 400) and valid."""
    if not query.isascii():
        return None
    # as werkzeug parses `request.args`
    given = parse_qsl(query, keep_blank_values=True, errors="werkzeug.url_quote")
    values = dict(given)
    if len(values) != len(given):
        return None
    try:
        return schema.load(values, unknown=RAISE)
    except ValidationError:
        return None
