"""The one error shape of the API: `{"status", "error", "parameter"?, "parameters"?}` for every 4xx/5xx."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify
from werkzeug.exceptions import HTTPException


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
