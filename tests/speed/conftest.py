"""Speed-layer tests run twice: with the store on SQLite and on a throwaway PostgreSQL (a database each)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, text


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None  # the default: <data dir>/serving.db
    server = request.getfixturevalue("postgres_url")
    name = f"lambdaflow_{uuid.uuid4().hex[:12]}"
    with create_engine(server, isolation_level="AUTOCOMMIT").connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    return server.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def settings(make_settings, store_url):
    return make_settings(store_url=store_url) if store_url else make_settings()
