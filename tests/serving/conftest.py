from __future__ import annotations

import pytest

from lambdaflow.settings import load_settings
from serving.app import create_app


@pytest.fixture
def make_client(tmp_path):
    """A test client of the real app on a real (SQLite, unless `store_url`) store in a fresh data dir."""

    def make(**overrides):
        settings = load_settings(data_dir=tmp_path / "data", **overrides)
        app = create_app(settings)
        return app, app.test_client()

    return make
