"""The vocabulary a view is defined in: plain data, no Spark (the serving process reads it too).

A `View` says what it is computed from (a contract, or another view's per-window rows), its key and
columns (in a small type vocabulary the store maps to SQL types), how its partial aggregates combine in the
speed layer (`Increment`), its quality expectations, its store lookup and its API route. Every layer derives
its part from that: the store's tables, the batch outputs, the quality suites, the speed merge, the API.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lambdaflow.alerts import Thresholds
from lambdaflow.settings import Settings

# Types of a view's columns; the store maps them to SQL types, the API to JSON ones.
TIME = "time"  # UTC
TEXT = "text"
INTEGER = "integer"
FLOAT = "float"
BYTES = "bytes"

# Categorical strings both layers trim and lower-case (so ' Chrome ' and 'chrome' are one browser); the API
# cleans a value of these columns the same way before it looks it up.
CLEANED_COLUMNS = ("location", "browser", "page")

# Distinct counts are exact in batch and HyperLogLog sketches in the speed layer (Apache DataSketches,
# 2^HLL_LG_K buckets: ~0.8 % relative standard error), where they merge without loss.
HLL_LG_K = 14
HLL_RELATIVE_ERROR = 1.04 / 2 ** (HLL_LG_K / 2)  # one standard error of a sketch's estimate


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    length: int | None = None  # text: at most this many characters


def time(name: str) -> Field:
    return Field(name, TIME)


def text(name: str, length: int = 128) -> Field:
    return Field(name, TEXT, length)


def integer(name: str) -> Field:
    return Field(name, INTEGER)


def number(name: str) -> Field:
    return Field(name, FLOAT)


def binary(name: str) -> Field:
    return Field(name, BYTES)


@dataclass(frozen=True)
class Latest:
    """A value of the latest event: of two partial rows, the one whose `order` columns are greater keeps
    `value` (and its `order` columns)."""

    value: str
    order: tuple[str, ...]


@dataclass(frozen=True)
class Increment:
    """A view's incremental form in the speed layer: two partial rows of a key combine column by column
    (`sums`, `mins`, `maxes`, `latest`, HLL `sketches` → their distinct-count column), and the finished row's
    `averages` (column → its sum column) are over the `count` column. `partials` are the columns the speed
    table keeps besides the view's (sums, sketches, ordering keys). Sessions (`sessions=True`) merge as
    intervals instead: partial sessions of one `session_id` closer than the gap are one session (their
    `sums` add up)."""

    count: str = "events"
    sums: tuple[str, ...] = ("events",)
    mins: tuple[str, ...] = ()
    maxes: tuple[str, ...] = ()
    latest: tuple[Latest, ...] = ()
    sketches: tuple[tuple[str, str], ...] = ()
    averages: tuple[tuple[str, str], ...] = ()
    partials: tuple[Field, ...] = ()
    sessions: bool = False

    @property
    def approximate(self) -> tuple[str, ...]:
        """The columns the speed layer estimates (exact in batch)."""
        return tuple(count for _, count in self.sketches)


@dataclass(frozen=True)
class Between:
    """A quality expectation: every value of `column` lies in [low, high] (None: unbounded)."""

    column: str
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Filter:
    """An optional query parameter of a route: rows whose `column` equals it, or (`at_least`) is at least
    it. A text filter is at most as long as its column; `minimum` bounds a numeric one."""

    column: str
    parameter: str | None = None  # default: the column's name
    at_least: bool = False
    minimum: float | None = None
    description: str | None = None

    @property
    def name(self) -> str:
        return self.parameter or self.column


@dataclass(frozen=True)
class Route:
    """The view's API operation under `/api/v1`: `path` in Flask's syntax; a `subject` column in the path
    selects one subject (404 when neither layer has a row of it) and is left out of the points."""

    path: str
    summary: str
    subject: str | None = None
    filters: tuple[Filter, ...] = ()


@dataclass(frozen=True)
class Parameters:
    """What the views' computations take from the settings (hashable: Spark Columns are built once per
    value)."""

    window_seconds: int = 300
    session_gap_seconds: int = 1800
    thresholds: Thresholds = field(default_factory=Thresholds)

    @classmethod
    def from_settings(cls, settings: Settings) -> Parameters:
        return cls(settings.window_seconds, settings.session_gap_seconds, Thresholds.from_settings(settings))


@dataclass(frozen=True)
class View:
    """A view: its source contract, its key columns (unique per row), its columns (keys included, in the
    store's order), the column its rows are found by in time, and its incremental form.

    `window_seconds`: a windowed view's own window length (None: the settings' `window_seconds`); windows are
    tumbling and aligned to UTC midnight, so the length must divide a day. `input_view`: the view whose
    per-window rows this one is rolled up from when its windows are whole numbers of that view's (None: from
    the events), by the batch layer and, where its Spark form has a partial from those rows, by the speed
    layer too: one aggregation of the events serves both views. `reconciled`: batch and speed counts of the
    same windows are compared by the reconciliation gate."""

    name: str
    contract: str
    keys: tuple[str, ...]
    columns: tuple[Field, ...]
    time_column: str
    increment: Increment
    window_seconds: int | None = None
    input_view: str | None = None
    expectations: tuple[Between, ...] = ()
    lookup: tuple[str, ...] = ()  # the index the API's lookups by subject and time use
    reconciled: bool = False
    route: Route | None = None

    def __post_init__(self) -> None:
        if self.window_seconds is not None and 86_400 % self.window_seconds:
            raise ValueError(f"{self.name}: a window must divide a day (86400 s)")

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    def column(self, name: str) -> Field:
        return next(column for column in self.columns if column.name == name)

    def window(self, parameters: Parameters) -> int:
        return self.window_seconds or parameters.window_seconds

    def rolled_up_from(self, other: View, parameters: Parameters) -> bool:
        """Whether this view is rolled up from `other`'s per-window rows (see `input_view`)."""
        return self.input_view == other.name and self.window(parameters) % other.window(parameters) == 0
