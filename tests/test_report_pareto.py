import itertools

import numpy as np
import pandas as pd
import pytest

from vidprune.report.pareto import pareto_mask


def brute_force(df, x, y, xs, ys):
    sx = 1 if xs == "min" else -1
    sy = 1 if ys == "min" else -1
    out = []
    for i, p in df.iterrows():
        if pd.isna(p[x]) or pd.isna(p[y]):
            out.append(False)
            continue
        dominated = False
        for j, q in df.iterrows():
            if i == j or pd.isna(q[x]) or pd.isna(q[y]):
                continue
            le = sx * q[x] <= sx * p[x] and sy * q[y] <= sy * p[y]
            lt = sx * q[x] < sx * p[x] or sy * q[y] < sy * p[y]
            dominated |= le and lt
        out.append(not dominated)
    return out


def test_dominated_tie_and_nan():
    df = pd.DataFrame({
        "gflops":   [10.0, 20.0, 15.0, 30.0, 10.0, np.nan, 20.0, 40.0],
        "accuracy": [70.0, 80.0, 69.0, 85.0, 70.0, 99.0, 80.0, 85.0],
    }, index=list("abcdefgh"))
    mask = pareto_mask(df, "gflops", "accuracy")
    assert mask.index.tolist() == list("abcdefgh")
    # a/e and b/g are exact ties: both kept; c is dominated by a; f is NaN; h is dominated by d (same acc, more flops)
    assert mask.to_dict() == {"a": True, "b": True, "c": False, "d": True, "e": True,
                              "f": False, "g": True, "h": False}


def test_same_x_different_y():
    df = pd.DataFrame({"x": [1.0, 1.0, 2.0], "y": [5.0, 4.0, 4.0]})
    assert pareto_mask(df, "x", "y").tolist() == [True, False, False]


@pytest.mark.parametrize("xs,ys", list(itertools.product(["min", "max"], repeat=2)))
def test_matches_brute_force(xs, ys):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.integers(0, 6, 40).astype(float), "y": rng.integers(0, 6, 40).astype(float)})
    df.loc[[3, 7], "x"] = np.nan
    assert pareto_mask(df, "x", "y", xs, ys).tolist() == brute_force(df, "x", "y", xs, ys)


def test_duplicate_index_and_strings():
    df = pd.DataFrame({"x": ["1", "2", "bad"], "y": [1.0, 3.0, 9.0]}, index=[0, 0, 1])
    assert pareto_mask(df, "x", "y").tolist() == [True, True, False]


def test_bad_sense():
    with pytest.raises(ValueError):
        pareto_mask(pd.DataFrame({"x": [1], "y": [1]}), "x", "y", x_sense="up")
