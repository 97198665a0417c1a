"""Parameter-space blocks: sizes, helpers, composition rules and reproducible random streams."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from pipeline.space import Block, block_names, block_size, iter_columns, iter_points

BLOCK = TypeAdapter(Block)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5).filter(lambda s: "\x00" not in s),
)


@given(
    st.dictionaries(
        st.from_regex(r"[a-z]{1,4}", fullmatch=True),
        st.lists(scalars, min_size=1, max_size=4),
        min_size=1,
        max_size=3,
    )
)
@settings(max_examples=60, deadline=None)
def test_grid_size_is_the_product_and_order_is_itertools_product(axes: dict[str, list]) -> None:
    block = BLOCK.validate_python({"grid": axes})
    points = list(iter_points(block))
    assert block_size(block) == len(points) == math.prod(len(v) for v in axes.values())
    expected = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]
    # -0.0 is normalized to 0.0; compare through repr to keep 1 and 1.0 (and True) apart
    norm = [
        {k: (0.0 if type(v) is float and v == 0 else v) for k, v in p.items()} for p in expected
    ]
    assert [repr(p) for p in points] == [repr(p) for p in norm]


@given(st.integers(1, 5), st.integers(1, 5))
def test_zip_requires_equal_lengths(n: int, m: int) -> None:
    data = {"zip": {"a": list(range(n)), "b": list(range(m))}}
    if n == m:
        block = BLOCK.validate_python(data)
        assert list(iter_points(block)) == [{"a": i, "b": i} for i in range(n)]
        assert block_size(block) == n
    else:
        with pytest.raises(ValidationError, match="equal lengths"):
            BLOCK.validate_python(data)


def test_helpers_match_numpy() -> None:
    block = BLOCK.validate_python(
        {
            "zip": {
                "a": {"linspace": {"start": -1.5, "stop": 2.25, "num": 7}},
                "b": {"logspace": {"start": -3, "stop": 3, "num": 7}},
                "c": {"arange": {"start": 0.5, "stop": 4.0, "step": 0.5}},
                "d": {"range": {"start": 10, "stop": -4, "step": -2}},
            }
        }
    )
    pts = list(iter_points(block))
    assert [p["a"] for p in pts] == np.linspace(-1.5, 2.25, 7).tolist()
    assert np.allclose([p["b"] for p in pts], np.logspace(-3, 3, 7), rtol=1e-15)
    assert [p["c"] for p in pts] == np.arange(0.5, 4.0, 0.5).tolist()
    assert [p["d"] for p in pts] == list(range(10, -4, -2))
    assert all(type(p["d"]) is int and type(p["a"]) is float for p in pts)


def test_product_and_concat() -> None:
    block = BLOCK.validate_python(
        {
            "concat": [
                {"product": [{"grid": {"a": [1, 2]}}, {"zip": {"b": ["x", "y", "z"]}}]},
                {"points": [{"b": "w", "a": 9}]},
            ]
        }
    )
    pts = list(iter_points(block))
    assert block_size(block) == len(pts) == 7
    assert pts[:3] == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"}]
    assert pts[-1] == {"b": "w", "a": 9}
    assert set(block_names(block)) == {"a", "b"}


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"product": [{"grid": {"a": [1]}}, {"grid": {"a": [2]}}]}, "disjoint"),
        ({"concat": [{"grid": {"a": [1]}}, {"grid": {"b": [2]}}]}, "same parameters"),
        ({"points": [{"a": 1}, {"b": 2}]}, "same parameters"),
        ({"grid": {"a": []}}, "at least 1"),
        ({"grid": {"a": [float("nan")]}}, "finite"),
        ({"grid": {"a": ["x\x00"]}}, "NUL"),
        ({"grid": {"1a": [1]}}, "pattern"),
        ({"gird": {"a": [1]}}, "exactly one of the keys"),
        ({"grid": {"a": {"linspace": {"start": 0, "stop": 1}}}}, "num"),
        ({"grid": {"a": {"range": {"start": 0, "stop": 0}}}}, "empty"),
        (
            {"random": {"n": 3, "seed": 1, "params": {"a": {"uniform": [2, 1]}}}},
            "low must be below",
        ),
        ({"random": {"n": 3, "seed": 1, "params": {"a": {"gauss": [0, 1]}}}}, "one distribution"),
        ({"lhs": {"n": 3, "seed": 1, "bounds": {"a": [1, 1]}}}, "low must be below"),
    ],
)
def test_bad_blocks_are_refused(data: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        BLOCK.validate_python(data)


RANDOM = {
    "random": {
        "n": 5000,
        "seed": 42,
        "params": {
            "u": {"uniform": [-1.0, 1.0]},
            "l": {"loguniform": [1e-3, 1e3]},
            "g": {"normal": [10.0, 2.0]},
            "c": {"choice": ["a", "b", 3]},
            "k": {"randint": [1, 6]},
        },
    }
}


def test_random_is_reproducible_in_range_and_prefix_stable() -> None:
    block = BLOCK.validate_python(RANDOM)
    a = list(iter_points(block))
    assert a == list(iter_points(BLOCK.validate_python(RANDOM)))
    assert len(a) == 5000
    assert all(-1 <= p["u"] < 1 and 1e-3 <= p["l"] <= 1e3 and 1 <= p["k"] <= 6 for p in a)
    assert {p["k"] for p in a} == {1, 2, 3, 4, 5, 6}
    assert {p["c"] for p in a} == {"a", "b", 3}
    assert abs(np.mean([p["g"] for p in a]) - 10.0) < 0.2
    # the first points do not depend on n (streams are drawn in fixed chunks)
    shorter = {"random": {**RANDOM["random"], "n": 10}}
    assert list(iter_points(BLOCK.validate_python(shorter))) == a[:10]
    # adding a parameter leaves the other parameters' streams alone
    more = {
        "random": {
            **RANDOM["random"],
            "params": {**RANDOM["random"]["params"], "z": {"uniform": [0, 1]}},
        }
    }
    b = list(iter_points(BLOCK.validate_python(more)))
    assert [{k: v for k, v in p.items() if k != "z"} for p in b] == a
    other_seed = {"random": {**RANDOM["random"], "seed": 43}}
    assert next(iter(iter_points(BLOCK.validate_python(other_seed)))) != a[0]


def test_lhs_is_a_latin_hypercube_within_bounds() -> None:
    block = BLOCK.validate_python(
        {"lhs": {"n": 50, "seed": 3, "bounds": {"y": [10, 20], "x": [0, 1]}}}
    )
    pts = list(iter_points(block))
    assert pts == list(iter_points(block))
    assert block_names(block) == ("x", "y")
    for name, (lo, hi) in (("x", (0, 1)), ("y", (10, 20))):
        strata = sorted(int((p[name] - lo) / (hi - lo) * 50) for p in pts)
        assert strata == list(range(50))  # one point in each of the 50 strata


@pytest.mark.parametrize(
    "space",
    [
        {"grid": {"b": [1, 2.5, "x"], "a": {"range": {"start": 0, "stop": 7}}, "c": [None, True]}},
        {"zip": {"b": [1, 2, 3, 4, 5], "a": ["p", "q", "r", "s", "t"]}},
        {"points": [{"a": 1, "b": 2}, {"b": 3, "a": 4}]},
        {
            "random": {
                "n": 11,
                "seed": 3,
                "params": {"b": {"uniform": [0, 1]}, "a": {"randint": [0, 9]}},
            }
        },
        {"lhs": {"n": 9, "seed": 4, "bounds": {"b": [0, 1], "a": [-5, 5]}}},
        {"product": [{"grid": {"a": [1, 2, 3]}}, {"zip": {"b": [4, 5]}}]},
        {"concat": [{"grid": {"a": [1, 2], "b": [3]}}, {"points": [{"b": 0, "a": 0}]}]},
    ],
    ids=["grid", "zip", "points", "random", "lhs", "product", "concat"],
)
@pytest.mark.parametrize("size", [1, 4, 4096])
def test_columns_hold_the_same_points_in_order(space: dict, size: int) -> None:
    block = BLOCK.validate_python(space)
    chunks = list(iter_columns(block, size))
    assert all(0 < len(c) <= size for c in chunks)
    dicts = [d for c in chunks for d in c.dicts()]
    expected = list(iter_points(block))
    assert dicts == expected
    assert [list(d.items()) for d in dicts] == [list(d.items()) for d in expected]  # key order
    for c in chunks:
        assert [list(col) for col in zip(*c.values, strict=True)] == [
            [d[n] for n in c.names] for d in c.dicts()
        ]
        if c.codes is not None:  # grid: codes index the axes
            assert c.axes is not None
            for values, codes, axis in zip(c.values, c.codes, c.axes, strict=True):
                assert values == [axis[i] for i in codes]
