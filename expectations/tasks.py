"""The quality gates as Airflow callables. A failed gate raises AirflowFailException: the data will not
change on a retry, so the task fails at once and nothing downstream (publishing) runs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

from expectations import gates
from lambdaflow.settings import load_settings


def _gate(check: Callable[..., Any]) -> Callable[[str], int]:
    # no functools.wraps: Airflow passes context values by the callable's signature, which must stay `ds`
    def run(ds: str) -> int:
        from airflow.exceptions import AirflowFailException

        try:
            results = check(load_settings(), date.fromisoformat(ds))
        except gates.QualityGateFailed as exc:
            raise AirflowFailException(str(exc)) from exc
        return len(results) if isinstance(results, list) else 1

    run.__name__ = run.__qualname__ = check.__name__
    run.__doc__ = check.__doc__
    return run


validate_raw = _gate(gates.validate_raw_day)
validate_views = _gate(gates.validate_view_day)
reconcile = _gate(gates.reconcile_day)


def build_data_docs() -> str:
    return str(gates.build_data_docs(load_settings()))
