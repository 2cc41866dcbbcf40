"""The non-dominated (Pareto) points of a 2-D trade-off."""

from __future__ import annotations

import numpy as np
import pandas as pd

_SENSES = ("min", "max")


def pareto_mask(df: pd.DataFrame, x: str, y: str, x_sense: str = "min", y_sense: str = "max") -> pd.Series:
    """True for rows no other row dominates on (x, y); NaN rows are never on the front.

    A point is dominated when another is at least as good on both axes and strictly better on one,
    so points that are equal on both axes are all kept.
    """
    for sense in (x_sense, y_sense):
        if sense not in _SENSES:
            raise ValueError(f"sense must be 'min' or 'max', got {sense!r}")
    # Turn both axes into "smaller is better"; work on positions so any index (even duplicated) is fine.
    a = pd.to_numeric(df[x], errors="coerce").to_numpy(dtype=float) * (1.0 if x_sense == "min" else -1.0)
    b = pd.to_numeric(df[y], errors="coerce").to_numpy(dtype=float) * (1.0 if y_sense == "min" else -1.0)
    on_front = np.zeros(len(df), dtype=bool)
    valid = np.flatnonzero(~np.isnan(a) & ~np.isnan(b))
    order = valid[np.lexsort((b[valid], a[valid]))]  # by a, then b: the best b of each a comes first
    best_b = np.inf  # best b over all points with a strictly smaller a
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and a[order[j]] == a[order[i]]:
            j += 1
        group = order[i:j]
        group_best = b[group[0]]
        if group_best < best_b:  # strictly better than everything cheaper, so not dominated
            on_front[group[b[group] == group_best]] = True
            best_b = group_best
        i = j
    return pd.Series(on_front, index=df.index)
