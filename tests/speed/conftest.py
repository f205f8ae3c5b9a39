"""Speed-layer tests run twice: with the store on SQLite and on a throwaway PostgreSQL (a database each)."""

from __future__ import annotations

import pytest

from tests.conftest import new_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None  # the default: <data dir>/serving.db
    return new_database(request.getfixturevalue("postgres_url"))


@pytest.fixture
def settings(make_settings, store_url):
    return make_settings(store_url=store_url) if store_url else make_settings()
