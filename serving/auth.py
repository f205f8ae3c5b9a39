"""The API token: every endpoint but the public ones needs `Authorization: Bearer <token>` or the session
cookie that `POST /login` sets."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from urllib.parse import quote, unquote

from flask import Response, request
from werkzeug.exceptions import Unauthorized

from serving.errors import error_response

TOKEN_COOKIE = "lambdaflow_token"
# Endpoints that hold no data and so need no token: the health check, the dashboard's page and assets (its
# script shows the login form when the API answers 401) and the login/logout that set and clear the cookie.
PUBLIC_ENDPOINTS = frozenset(
    {"health.report", "dashboard.index", "dashboard.static", "dashboard.login", "dashboard.logout"}
)


def token_matches(given: str, expected: str) -> bool:
    """Constant time, so how long a wrong guess takes tells nothing about how much of it was right."""
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


def bearer_token(header: str) -> str:
    """The credentials of an `Authorization: Bearer …` header; HTTP auth schemes are case-insensitive."""
    scheme, _, credentials = header.strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def cookie_token() -> str:
    """The session cookie's token, percent-decoded: the server sets it encoded, and so may a client."""
    return unquote(request.cookies.get(TOKEN_COOKIE, ""))


def unauthorized(message: str) -> Response:
    return error_response(Unauthorized(message))


def require_token(token: str) -> Callable[[], Response | None]:
    """A `before_request` hook that answers 401 unless the request carries `token` (header or cookie)."""

    def check() -> Response | None:
        if request.endpoint in PUBLIC_ENDPOINTS:
            return None
        given = bearer_token(request.headers.get("Authorization", "")) or cookie_token()
        if token_matches(given, token):
            return None
        return unauthorized("missing or wrong token: send 'Authorization: Bearer <LAMBDAFLOW_API_TOKEN>'")

    return check


def set_token_cookie(response: Response, token: str) -> Response:
    """A session cookie (no Max-Age) that page scripts cannot read (HttpOnly) and that other sites' pages
    never send (SameSite=Strict); encoded so that any token is a valid cookie value."""
    response.set_cookie(TOKEN_COOKIE, quote(token, safe=""), path="/", httponly=True, samesite="Strict",
                        secure=request.is_secure)  # fmt: skip
    return response


def clear_token_cookie(response: Response) -> Response:
    response.delete_cookie(TOKEN_COOKIE, path="/", httponly=True, samesite="Strict", secure=request.is_secure)
    return response
