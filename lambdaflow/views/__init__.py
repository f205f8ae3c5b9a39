"""The one definition of every view: what it is (`definitions`, in the vocabulary of `model`), with no Spark
import, so the serving process reads it without loading Spark. How Spark computes each view sits beside it,
in `lambdaflow.views.spark`.
"""

from lambdaflow.views.definitions import VIEWS
from lambdaflow.views.model import (
    CLEANED_COLUMNS,
    HLL_LG_K,
    HLL_RELATIVE_ERROR,
    Between,
    Field,
    Filter,
    Increment,
    Latest,
    Parameters,
    Route,
    View,
)

__all__ = [
    "CLEANED_COLUMNS",
    "HLL_LG_K",
    "HLL_RELATIVE_ERROR",
    "VIEWS",
    "Between",
    "Field",
    "Filter",
    "Increment",
    "Latest",
    "Parameters",
    "Route",
    "View",
]
