"""The quality gates as code: one suite per raw topic, per view, and a reconciliation suite.

`python -m expectations.suites` (re)writes the Great Expectations file context under `expectations/gx/`
(suites, validation definitions and checkpoints as JSON, kept in git). The runner only reads that context.
Every expectation carries `meta.critical`; a failed critical expectation fails the gate.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import great_expectations as gx
import great_expectations.expectations as gxe

from lambdaflow.contracts import ARROW_SCHEMAS, EVENT_TYPES, MODELS, RANGES
from lambdaflow.views import VIEWS

CONTEXT_ROOT = Path(__file__).resolve().parent
DATA_SOURCE = "lambdaflow"
CRITICAL = {"critical": True}
WARNING = {"critical": False}
ROW_BAND = {"min_value": {"$PARAMETER": "min_rows"}, "max_value": {"$PARAMETER": "max_rows"}}
INPUT_EVENTS = {"min_value": {"$PARAMETER": "input_events"}, "max_value": {"$PARAMETER": "input_events"}}


def _not_null(*columns: str) -> list:
    return [gxe.ExpectColumnValuesToNotBeNull(column=c, meta=CRITICAL) for c in columns]


def _between(column: str, low: float | None, high: float | None, **extra: object) -> gxe.Expectation:
    return gxe.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high, meta=CRITICAL,
                                             **extra)  # fmt: skip


def raw_suites() -> dict[str, list]:
    """From the event contracts: unique ids, the day's row count in its band, every required text and time
    field present, the numeric fields in their ranges, the event type one of the contract's."""
    suites = {}
    for contract, model in MODELS.items():
        schema = ARROW_SCHEMAS[contract]
        required = [name for name, info in model.model_fields.items() if info.is_required()]
        present = [name for name in schema.names if name in required and name not in RANGES]
        expectations = [
            gxe.ExpectColumnValuesToBeUnique(column="event_id", meta=CRITICAL),
            gxe.ExpectTableRowCountToBeBetween(**ROW_BAND, meta=CRITICAL),
            *_not_null(*present),
        ]
        if "event_type" in schema.names:
            expectations.append(gxe.ExpectColumnValuesToBeInSet(
                column="event_type", value_set=list(EVENT_TYPES), meta=CRITICAL
            ))  # fmt: skip
        expectations += [_between(name, *RANGES[name]) for name in schema.names if name in RANGES]
        suites[f"raw_{contract}"] = expectations
    return suites


def view_suites() -> dict[str, list]:
    """From the view definitions: unique, present keys; the counts add up to the day's distinct input events
    and none is below 1; the definition's value ranges."""
    suites = {}
    for name, view in VIEWS.items():
        count = view.increment.count
        suites[f"view_{name}"] = [
            gxe.ExpectCompoundColumnsToBeUnique(column_list=list(view.keys), meta=CRITICAL),
            *_not_null(*view.keys),
            gxe.ExpectColumnSumToBeBetween(column=count, **INPUT_EVENTS, meta=CRITICAL),
            _between(count, 1, None),
            *(_between(expected.column, expected.low, expected.high) for expected in view.expectations),
        ]
    return suites


def reconcile_suite() -> dict[str, list]:
    """Batch against speed over the windows both have: the share whose event counts differ stays under
    `1 - mostly` (the speed layer drops late events and estimates distinct counts; it must not drift)."""
    return {
        "reconcile": [
            gxe.ExpectColumnValuesToBeInSet(
                column="counts_differ", value_set=[False], mostly={"$PARAMETER": "mostly"}, meta=CRITICAL
            )
        ]
    }


def all_suites() -> dict[str, list]:
    return {**raw_suites(), **view_suites(), **reconcile_suite()}


def build_context(root: Path = CONTEXT_ROOT) -> None:
    """Write the file context: a data source of in-memory pandas frames, and per suite a suite, a validation
    definition and a checkpoint that updates the Data Docs."""
    shutil.rmtree(root / "gx", ignore_errors=True)
    context = gx.get_context(mode="file", project_root_dir=root)
    source = context.data_sources.add_pandas(name=DATA_SOURCE)
    for name, expectations in all_suites().items():
        batch = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe("frame")
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        definition = context.validation_definitions.add(gx.ValidationDefinition(data=batch, suite=suite,
                                                                                name=name))  # fmt: skip
        context.checkpoints.add(gx.Checkpoint(
            name=name, validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")],
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 10},
        ))  # fmt: skip
    _results_under_data_dir(root / "gx" / "great_expectations.yml")


def _results_under_data_dir(config: Path) -> None:
    """Validation results and Data Docs belong to a deployment, not to git: they go under the data directory
    (`${LAMBDAFLOW_QUALITY_DIR}`, which the runner sets), and GX sends no analytics."""
    text = config.read_text()
    text = text.replace("base_directory: uncommitted/validations/",
                        "base_directory: ${LAMBDAFLOW_QUALITY_DIR}/validations/")  # fmt: skip
    text = text.replace("base_directory: uncommitted/data_docs/local_site/",
                        "base_directory: ${LAMBDAFLOW_QUALITY_DIR}/data_docs/")  # fmt: skip
    text = text.replace("analytics_enabled:", "analytics_enabled: false")
    config.write_text(text + "progress_bars:\n  globally: false\n")
    shutil.rmtree(config.parent / "uncommitted", ignore_errors=True)


if __name__ == "__main__":
    build_context()
    print(f"wrote the Great Expectations context under {CONTEXT_ROOT / 'gx'}")
