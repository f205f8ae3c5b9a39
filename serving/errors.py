"""The one error shape of the API: `{"status", "error", "parameter"?, "parameters"?}` for every 4xx/5xx."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flask import Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestHeaderFieldsTooLarge, RequestURITooLarge

# gunicorn's limits, which clients of this API have met since its first release: a longer request line is a
# 414, a longer header field ("Name: value") a 431
REQUEST_LINE_LIMIT = 4094
HEADER_FIELD_LIMIT = 8190


def error_response(exc: HTTPException) -> Response:
    """Every error as JSON: `{"status": code, "error": message}`, plus `parameter` (the first bad query
    parameter) and `parameters` (every bad one, with its message) for a bad query."""
    body: dict[str, Any] = {"status": exc.code, "error": exc.description}
    messages = (getattr(exc, "data", None) or {}).get("messages", {})
    problems = {name: "; ".join(found) if isinstance(found, list) else str(found)
                for location in messages.values() for name, found in location.items()}  # fmt: skip
    if problems:  # webargs: {"query": {"from": ["Not a valid datetime."]}}; the first one leads
        name, text = next(iter(problems.items()))
        body.update(error=f"invalid parameter {name!r}: {text}", parameter=name, parameters=problems)
    response = jsonify(body)
    response.status_code = exc.code or 500
    for name, value in exc.get_headers():  # e.g. a 405's `Allow`
        if name.lower() != "content-type":
            response.headers[name] = value
    if exc.code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="lambdaflow"'
    return response


def refuse_oversized() -> None:
    """Refuse a request line or a header field over its limit, before the token check (a `before_request`
    hook), so a client learns what to shorten whatever its credentials."""
    refused = oversized(request.method, request.environ)
    if refused is not None:
        raise refused


def oversized(method: str, environ: Mapping[str, Any]) -> HTTPException | None:
    """The 414 or 431 for a request line or a header field over its limit; None when all are within."""
    path, query = environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
    protocol = environ.get("SERVER_PROTOCOL", "HTTP/1.1")
    fixed = len(method) + (len(query) + 1 if query else 0) + len(protocol) + 2
    # as sent: the environ's text is the request's bytes, one character each (WSGI's latin-1), and
    # percent-encoding makes a byte at most three, so only a path that may be over the limit is encoded
    if fixed + 3 * len(path) > REQUEST_LINE_LIMIT:
        line = fixed + len(quote(path, safe="/:@!$&'()*+,;=~", encoding="latin-1", errors="replace"))
        if line > REQUEST_LINE_LIMIT:
            return RequestURITooLarge(
                f"the request line is {line} bytes, over the limit of {REQUEST_LINE_LIMIT}"
            )
    # the header fields from the environ itself: `request.headers` would spell out every name to measure it
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name_length = len(key) - 5
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name_length = len(key)
        else:
            continue
        if name_length + 2 + len(value) > HEADER_FIELD_LIMIT:
            name = key.removeprefix("HTTP_").replace("_", "-").title()
            return RequestHeaderFieldsTooLarge(f"header {name!r} is over the {HEADER_FIELD_LIMIT}-byte limit")
    return None
