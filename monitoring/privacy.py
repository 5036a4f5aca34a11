"""Small groups in the report: every statistic it keeps (the JSON stored in the database, the
files it writes) is over at least `min_group_size` (k) rows.

A quiet day's log may hold a handful of predictions, and a statistic over a few rows (a group's
mean risk, a minimum or maximum) can be one person's exact value. So a statistic over fewer
than k rows is suppressed: reported as such, with no value. Ranges of logged values are
bottom- and top-coded: the k-th lowest and k-th highest value, so at least k rows lie at or
beyond each end, and no single row's extreme is shown.
"""

from collections.abc import Sequence

import numpy as np

MIN_GROUP_SIZE = 10


def coded_range(values: Sequence[float] | np.ndarray, k: int) -> tuple[float, float] | None:
    """(k-th lowest, k-th highest) of the values, or None below 2k values (the two ends would
    then share rows)."""
    v = np.sort(np.asarray(values, dtype=float))
    v = v[~np.isnan(v)]
    if len(v) < 2 * k:
        return None
    return float(v[k - 1]), float(v[-k])


def suppressed_note(k: int) -> str:
    return f"suppressed: fewer than {k} rows"
