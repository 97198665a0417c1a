"""Parameter spaces: the blocks a sweep's points come from, and lazy point generation.

A space is one *block*, written in YAML as a mapping with exactly one key:

``grid``
    Cartesian product of value lists; the last parameter varies fastest.
``zip``
    Parallel value lists of equal length, taken element by element.
``points``
    An explicit list of points (mappings of the same parameter names).
``random``
    ``n`` points drawn with ``seed``; per parameter one of ``uniform: [low, high]``,
    ``loguniform: [low, high]``, ``normal: [mean, std]``, ``choice: [values...]``,
    ``randint: [low, high]`` (both ends included).
``lhs``
    A Latin hypercube of ``n`` points with ``seed`` over ``bounds: {name: [low, high]}``
    (scipy's ``qmc.LatinHypercube``, dimensions in sorted name order).
``product``
    A list of blocks with disjoint parameter names; the first block varies slowest.
``concat``
    A list of blocks with the same parameter names, one after the other.

A value list in ``grid`` or ``zip`` is a YAML list of scalars (null, bool, int,
float, string) or one helper: ``{linspace: {start, stop, num, endpoint}}``,
``{logspace: {start, stop, num, base, endpoint}}`` (numpy's meaning: exponents),
``{range: {start, stop, step}}`` (integers, stop excluded) or
``{arange: {start, stop, step}}`` (floats, stop excluded).

Reproducibility: helpers are computed with plain IEEE double arithmetic (and
Python's ``math``/``**`` for logspace and loguniform, not numpy's CPU-dispatched
kernels); random draws use ``numpy.random.Generator(PCG64)`` with one stream per
parameter, derived from the seed and the parameter's name (adding a parameter does
not change the others), drawn in fixed chunks of ``RANDOM_CHUNK``. Golden vectors
in ``tests/golden/`` catch any drift after a library upgrade.

Points are generated lazily: a grid of a million points is streamed, never held.
Only the blocks inside a ``product`` other than the first are held in memory.
``iter_columns`` yields the same points in chunks, column by column; for a grid
each column also comes as indexes into the axis' value list, so a consumer can
format each distinct value once instead of once per point.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import operator
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)

__all__ = [
    "MAX_HELPER_VALUES",
    "RANDOM_CHUNK",
    "Block",
    "Columns",
    "ConcatBlock",
    "GridBlock",
    "LhsBlock",
    "PointsBlock",
    "ProductBlock",
    "RandomBlock",
    "Scalar",
    "ZipBlock",
    "block_names",
    "block_size",
    "iter_columns",
    "iter_points",
    "iter_string_values",
]

RANDOM_CHUNK = 4096
"""Random draws are made in chunks of this many values per parameter (pinned: fixes the stream)."""

MAX_HELPER_VALUES = 10_000_000
"""Upper limit on the number of values one helper (linspace, range, ...) may produce."""

ParamName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]
"""A parameter name: a Python identifier, so it can be used as a ``{placeholder}``."""

FiniteFloat = Annotated[float, AllowInfNan(False)]
StrictFiniteFloat = Annotated[float, Strict(), AllowInfNan(False)]
Scalar = Union[  # noqa: UP007  (pydantic keeps the order of the members)
    Annotated[bool, Strict()],
    Annotated[int, Strict()],
    StrictFiniteFloat,
    Annotated[str, Strict()],
    None,
]
"""A parameter value: null, bool, int, finite float or string (1 and 1.0 stay distinct)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_scalar(value: Any) -> Any:
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("NUL characters are not allowed in parameter values")
    return value


def _norm(value: Any) -> Any:
    """Return ``value`` with -0.0 turned into 0.0 (they are the same point)."""
    if type(value) is float and value == 0.0:
        return 0.0
    return value


class Linspace(_Model):
    """Evenly spaced floats from ``start`` to ``stop`` (numpy.linspace)."""

    start: FiniteFloat
    stop: FiniteFloat
    num: Annotated[int, Field(ge=1, le=MAX_HELPER_VALUES)]
    endpoint: bool = True

    def values(self) -> list[Any]:
        div = (self.num - 1) if self.endpoint else self.num
        if self.num == 1:
            return [float(self.start)]
        step = (self.stop - self.start) / div
        out = [self.start + i * step for i in range(self.num)]
        if self.endpoint:
            out[-1] = float(self.stop)
        return out


class Logspace(_Model):
    """Floats ``base ** x`` for ``x`` evenly spaced from ``start`` to ``stop`` (numpy.logspace)."""

    start: FiniteFloat
    stop: FiniteFloat
    num: Annotated[int, Field(ge=1, le=MAX_HELPER_VALUES)]
    base: Annotated[float, AllowInfNan(False), Field(gt=0)] = 10.0
    endpoint: bool = True

    def values(self) -> list[Any]:
        exps = Linspace(start=self.start, stop=self.stop, num=self.num, endpoint=self.endpoint)
        out = []
        for x in exps.values():
            v = float(self.base) ** x
            if not math.isfinite(v):
                raise ValueError(f"logspace value {self.base}**{x} overflows")
            out.append(v)
        return out


class RangeArgs(_Model):
    """Integers from ``start`` up to ``stop`` (excluded) by ``step`` (Python's range)."""

    start: Annotated[int, Strict()] = 0
    stop: Annotated[int, Strict()]
    step: Annotated[int, Strict()] = 1

    @model_validator(mode="after")
    def _check(self) -> RangeArgs:
        if self.step == 0:
            raise ValueError("range step must not be 0")
        n = len(range(self.start, self.stop, self.step))
        if n == 0:
            raise ValueError(f"range({self.start}, {self.stop}, {self.step}) is empty")
        if n > MAX_HELPER_VALUES:
            raise ValueError(f"range has {n} values, at most {MAX_HELPER_VALUES} allowed")
        return self

    def values(self) -> list[Any]:
        return list(range(self.start, self.stop, self.step))


class Arange(_Model):
    """Floats ``start + i*step`` below ``stop`` (numpy.arange)."""

    start: FiniteFloat = 0.0
    stop: FiniteFloat
    step: FiniteFloat = 1.0

    @model_validator(mode="after")
    def _check(self) -> Arange:
        if self.step == 0:
            raise ValueError("arange step must not be 0")
        n = math.ceil((self.stop - self.start) / self.step)
        if n <= 0:
            raise ValueError(f"arange({self.start}, {self.stop}, {self.step}) is empty")
        if n > MAX_HELPER_VALUES:
            raise ValueError(f"arange has {n} values, at most {MAX_HELPER_VALUES} allowed")
        return self

    def values(self) -> list[Any]:
        n = math.ceil((self.stop - self.start) / self.step)
        return [float(self.start + i * self.step) for i in range(n)]


class LinspaceHelper(_Model):
    linspace: Linspace


class LogspaceHelper(_Model):
    logspace: Logspace


class RangeHelper(_Model):
    range: RangeArgs


class ArangeHelper(_Model):
    arange: Arange


ScalarList = Annotated[list[Scalar], Field(min_length=1)]


def _values_kind(v: Any) -> str | None:
    if isinstance(v, list | tuple):
        return "list"
    if isinstance(v, dict) and len(v) == 1:
        key = next(iter(v))
        if key in ("linspace", "logspace", "range", "arange"):
            return str(key)
    if isinstance(v, BaseModel):
        for key in ("linspace", "logspace", "range", "arange"):
            if key in type(v).model_fields:
                return key
    return None


Values = Annotated[
    Union[  # noqa: UP007
        Annotated[ScalarList, Tag("list")],
        Annotated[LinspaceHelper, Tag("linspace")],
        Annotated[LogspaceHelper, Tag("logspace")],
        Annotated[RangeHelper, Tag("range")],
        Annotated[ArangeHelper, Tag("arange")],
    ],
    Discriminator(
        _values_kind,
        custom_error_type="values",
        custom_error_message=(
            "expected a list of values or one helper: {linspace: {start, stop, num}}, "
            "{logspace: {start, stop, num}}, {range: {start, stop, step}}, "
            "{arange: {start, stop, step}}"
        ),
    ),
]


def _values_of(v: Any) -> list[Any]:
    if isinstance(v, list):
        return [_norm(x) for x in v]
    helper = next(iter(type(v).model_fields))
    return [_norm(x) for x in getattr(v, helper).values()]


def _check_values_strings(v: Any) -> Any:
    if isinstance(v, list):
        for x in v:
            _check_scalar(x)
    return v


class GridBlock(_Model):
    """Cartesian product of value lists (the last parameter varies fastest)."""

    grid: Annotated[dict[ParamName, Values], Field(min_length=1)]

    @field_validator("grid")
    @classmethod
    def _strings(cls, v: dict[str, Any]) -> dict[str, Any]:
        for x in v.values():
            _check_values_strings(x)
        return v


class ZipBlock(_Model):
    """Parallel value lists of equal length, taken element by element."""

    zip: Annotated[dict[ParamName, Values], Field(min_length=1)]

    @field_validator("zip")
    @classmethod
    def _equal_lengths(cls, v: dict[str, Any]) -> dict[str, Any]:
        for x in v.values():
            _check_values_strings(x)
        lengths = {name: len(_values_of(x)) for name, x in v.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise ValueError(f"zip lists must have equal lengths, got {shown}")
        return v


class PointsBlock(_Model):
    """An explicit list of points, each a mapping of the same parameter names."""

    points: Annotated[list[dict[ParamName, Scalar]], Field(min_length=1)]

    @field_validator("points")
    @classmethod
    def _same_names(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        first = set(v[0])
        if not first:
            raise ValueError("a point must name at least one parameter")
        for i, p in enumerate(v):
            for x in p.values():
                _check_scalar(x)
            if set(p) != first:
                raise ValueError(
                    f"point {i} has parameters {sorted(p)}, but point 0 has {sorted(first)}; "
                    "every point must name the same parameters"
                )
        return v


def _ordered_pair(v: tuple[float, float], what: str) -> tuple[float, float]:
    if not v[0] < v[1]:
        raise ValueError(f"{what}: low must be below high, got [{v[0]}, {v[1]}]")
    return v


class Uniform(_Model):
    uniform: tuple[FiniteFloat, FiniteFloat]

    @field_validator("uniform")
    @classmethod
    def _c(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _ordered_pair(v, "uniform")


class LogUniform(_Model):
    loguniform: tuple[Annotated[float, AllowInfNan(False), Field(gt=0)], FiniteFloat]

    @field_validator("loguniform")
    @classmethod
    def _c(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _ordered_pair(v, "loguniform")


class Normal(_Model):
    normal: tuple[FiniteFloat, Annotated[float, AllowInfNan(False), Field(gt=0)]]


class Choice(_Model):
    choice: ScalarList

    @field_validator("choice")
    @classmethod
    def _c(cls, v: list[Any]) -> list[Any]:
        return [_check_scalar(x) for x in v]


class RandInt(_Model):
    randint: tuple[Annotated[int, Strict()], Annotated[int, Strict()]]

    @field_validator("randint")
    @classmethod
    def _c(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] > v[1]:
            raise ValueError(f"randint: low must not exceed high, got [{v[0]}, {v[1]}]")
        if v[1] - v[0] >= 2**63 or v[0] < -(2**63) or v[1] >= 2**63:
            raise ValueError("randint bounds must fit in 64-bit integers")
        return v


_DISTRIBUTIONS = ("uniform", "loguniform", "normal", "choice", "randint")


def _single_key_kind(keys: tuple[str, ...]) -> Callable[[Any], str | None]:
    """Return a discriminator: the one key of a mapping (one of ``keys``) or a model's field."""

    def kind(v: Any) -> str | None:
        if isinstance(v, dict) and len(v) == 1 and next(iter(v)) in keys:
            return str(next(iter(v)))
        if isinstance(v, BaseModel):
            return next(iter(type(v).model_fields))
        return None

    return kind


_dist_kind = _single_key_kind(_DISTRIBUTIONS)


Distribution = Annotated[
    Union[  # noqa: UP007
        Annotated[Uniform, Tag("uniform")],
        Annotated[LogUniform, Tag("loguniform")],
        Annotated[Normal, Tag("normal")],
        Annotated[Choice, Tag("choice")],
        Annotated[RandInt, Tag("randint")],
    ],
    Discriminator(
        _dist_kind,
        custom_error_type="distribution",
        custom_error_message=(
            "expected one distribution: {uniform: [low, high]}, {loguniform: [low, high]}, "
            "{normal: [mean, std]}, {choice: [values...]}, {randint: [low, high]}"
        ),
    ),
]

Seed = Annotated[int, Strict(), Field(ge=0, lt=2**64)]
Count = Annotated[int, Strict(), Field(ge=1, le=100_000_000)]


class RandomSpec(_Model):
    """Settings of a ``random`` block."""

    n: Count
    seed: Seed
    params: Annotated[dict[ParamName, Distribution], Field(min_length=1)]


class RandomBlock(_Model):
    """``n`` points drawn at random, reproducibly from ``seed``."""

    random: RandomSpec


class LhsSpec(_Model):
    """Settings of an ``lhs`` block."""

    n: Count
    seed: Seed
    bounds: Annotated[dict[ParamName, tuple[FiniteFloat, FiniteFloat]], Field(min_length=1)]
    scramble: bool = True

    @field_validator("bounds")
    @classmethod
    def _c(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, pair in v.items():
            _ordered_pair(pair, f"bounds of {name}")
        return v


class LhsBlock(_Model):
    """A Latin hypercube sample of ``n`` points (scipy.stats.qmc.LatinHypercube)."""

    lhs: LhsSpec


class ProductBlock(_Model):
    """The cartesian product of blocks with disjoint parameter names."""

    product: Annotated[list[Block], Field(min_length=1)]

    @field_validator("product")
    @classmethod
    def _disjoint(cls, v: list[Any]) -> list[Any]:
        seen: dict[str, int] = {}
        for i, b in enumerate(v):
            for name in block_names(b):
                if name in seen:
                    raise ValueError(
                        f"parameter {name!r} appears in product parts {seen[name]} and {i}; "
                        "the parts of a product must have disjoint parameter names"
                    )
                seen[name] = i
        return v


class ConcatBlock(_Model):
    """Blocks with the same parameter names, one after the other."""

    concat: Annotated[list[Block], Field(min_length=1)]

    @field_validator("concat")
    @classmethod
    def _same(cls, v: list[Any]) -> list[Any]:
        first = set(block_names(v[0]))
        for i, b in enumerate(v[1:], start=1):
            names = set(block_names(b))
            if names != first:
                raise ValueError(
                    f"concat part {i} has parameters {sorted(names)}, but part 0 has "
                    f"{sorted(first)}; every part must name the same parameters"
                )
        return v


_BLOCK_KEYS = ("grid", "zip", "points", "random", "lhs", "product", "concat")


_block_kind = _single_key_kind(_BLOCK_KEYS)


Block = Annotated[
    Union[  # noqa: UP007
        Annotated[GridBlock, Tag("grid")],
        Annotated[ZipBlock, Tag("zip")],
        Annotated[PointsBlock, Tag("points")],
        Annotated[RandomBlock, Tag("random")],
        Annotated[LhsBlock, Tag("lhs")],
        Annotated[ProductBlock, Tag("product")],
        Annotated[ConcatBlock, Tag("concat")],
    ],
    Discriminator(
        _block_kind,
        custom_error_type="block",
        custom_error_message=(
            "expected a mapping with exactly one of the keys "
            "grid, zip, points, random, lhs, product, concat"
        ),
    ),
]

ProductBlock.model_rebuild()
ConcatBlock.model_rebuild()

AnyBlock = GridBlock | ZipBlock | PointsBlock | RandomBlock | LhsBlock | ProductBlock | ConcatBlock


def block_names(block: AnyBlock) -> tuple[str, ...]:
    """Return the parameter names a block defines, in the order its points list them."""
    if isinstance(block, GridBlock):
        return tuple(block.grid)
    if isinstance(block, ZipBlock):
        return tuple(block.zip)
    if isinstance(block, PointsBlock):
        return tuple(block.points[0])
    if isinstance(block, RandomBlock):
        return tuple(sorted(block.random.params))
    if isinstance(block, LhsBlock):
        return tuple(sorted(block.lhs.bounds))
    if isinstance(block, ProductBlock):
        return tuple(n for b in block.product for n in block_names(b))
    return block_names(block.concat[0])


def block_size(block: AnyBlock) -> int:
    """Return the number of points a block yields (duplicates included), without generating them."""
    if isinstance(block, GridBlock):
        return math.prod(len(_values_of(v)) for v in block.grid.values())
    if isinstance(block, ZipBlock):
        return len(_values_of(next(iter(block.zip.values()))))
    if isinstance(block, PointsBlock):
        return len(block.points)
    if isinstance(block, RandomBlock):
        return block.random.n
    if isinstance(block, LhsBlock):
        return block.lhs.n
    if isinstance(block, ProductBlock):
        return math.prod(block_size(b) for b in block.product)
    return sum(block_size(b) for b in block.concat)


def iter_string_values(block: AnyBlock) -> Iterator[tuple[str, str, str]]:
    """Yield ``(parameter, value, where)`` for every literal string value a block can produce.

    Only literal lists (grid, zip, points, choice) hold strings; helpers, random
    numbers and Latin hypercubes produce numbers only. ``where`` is a dotted path
    relative to the block, for error messages.
    """
    if isinstance(block, GridBlock | ZipBlock):
        key = "grid" if isinstance(block, GridBlock) else "zip"
        table = block.grid if isinstance(block, GridBlock) else block.zip
        for name, v in table.items():
            if isinstance(v, list):
                for i, x in enumerate(v):
                    if isinstance(x, str):
                        yield name, x, f"{key}.{name}[{i}]"
    elif isinstance(block, PointsBlock):
        for i, p in enumerate(block.points):
            for name, x in p.items():
                if isinstance(x, str):
                    yield name, x, f"points[{i}].{name}"
    elif isinstance(block, RandomBlock):
        for name, d in block.random.params.items():
            if isinstance(d, Choice):
                for i, x in enumerate(d.choice):
                    if isinstance(x, str):
                        yield name, x, f"random.params.{name}.choice[{i}]"
    elif isinstance(block, ProductBlock | ConcatBlock):
        key = "product" if isinstance(block, ProductBlock) else "concat"
        parts = block.product if isinstance(block, ProductBlock) else block.concat
        for i, b in enumerate(parts):
            for name, x, where in iter_string_values(b):
                yield name, x, f"{key}[{i}].{where}"


def _stream_seed(seed: int, name: str) -> np.random.SeedSequence:
    key = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:4], "big")
    return np.random.SeedSequence(seed, spawn_key=(key,))


def _draw(dist: Any, gen: np.random.Generator, size: int) -> list[Any]:
    if isinstance(dist, Uniform):
        lo, hi = dist.uniform
        return list((gen.uniform(lo, hi, size) + 0.0).tolist())
    if isinstance(dist, LogUniform):
        lo, hi = dist.loguniform
        u = gen.random(size).tolist()
        a, b = math.log(lo), math.log(hi)
        return [min(max(math.exp(a + (b - a) * x), lo), hi) for x in u]
    if isinstance(dist, Normal):
        mean, std = dist.normal
        return list((gen.standard_normal(size) * std + mean + 0.0).tolist())
    if isinstance(dist, Choice):
        idx = gen.integers(0, len(dist.choice), size, dtype=np.int64).tolist()
        values = [_norm(x) for x in dist.choice]
        return [values[i] for i in idx]
    lo_i, hi_i = dist.randint
    return list(gen.integers(lo_i, hi_i, size, dtype=np.int64, endpoint=True).tolist())


def _random_columns(spec: RandomSpec) -> Iterator[list[list[Any]]]:
    names = sorted(spec.params)
    gens = [np.random.Generator(np.random.PCG64(_stream_seed(spec.seed, n))) for n in names]
    left = spec.n
    while left > 0:
        size = min(RANDOM_CHUNK, left)
        yield [
            _draw(spec.params[n], g, RANDOM_CHUNK)[:size] for n, g in zip(names, gens, strict=True)
        ]
        left -= size


def _iter_random(spec: RandomSpec) -> Iterator[dict[str, Any]]:
    names = sorted(spec.params)
    for cols in _random_columns(spec):
        for row in zip(*cols, strict=False):
            yield dict(zip(names, row, strict=False))


def _lhs_columns(spec: LhsSpec) -> Iterator[list[list[Any]]]:
    scaled = _lhs_sample(spec)
    for start in range(0, len(scaled), RANDOM_CHUNK):
        yield scaled[start : start + RANDOM_CHUNK].T.tolist()


def _iter_lhs(spec: LhsSpec) -> Iterator[dict[str, Any]]:
    names = sorted(spec.bounds)
    for row in _lhs_sample(spec).tolist():
        yield dict(zip(names, row, strict=False))


def _lhs_sample(spec: LhsSpec) -> np.ndarray:
    from scipy.stats import qmc

    names = sorted(spec.bounds)
    gen = np.random.Generator(np.random.PCG64(spec.seed))
    try:
        sampler = qmc.LatinHypercube(d=len(names), scramble=spec.scramble, rng=gen)
    except TypeError:  # scipy < 1.15 names the argument ``seed``
        sampler = qmc.LatinHypercube(d=len(names), scramble=spec.scramble, seed=gen)
    unit = sampler.random(spec.n)
    lows = np.array([spec.bounds[n][0] for n in names], dtype=np.float64)
    highs = np.array([spec.bounds[n][1] for n in names], dtype=np.float64)
    scaled: np.ndarray = unit * (highs - lows) + lows + 0.0
    return scaled


def iter_points(block: AnyBlock) -> Iterator[dict[str, Any]]:
    """Yield the points of a block, lazily, as fresh dicts of plain Python values."""
    if isinstance(block, GridBlock):
        names = list(block.grid)
        axes = [_values_of(v) for v in block.grid.values()]
        for combo in itertools.product(*axes):
            yield dict(zip(names, combo, strict=False))
    elif isinstance(block, ZipBlock):
        names = list(block.zip)
        cols = [_values_of(v) for v in block.zip.values()]
        for row in zip(*cols, strict=False):
            yield dict(zip(names, row, strict=False))
    elif isinstance(block, PointsBlock):
        for p in block.points:
            yield {k: _norm(v) for k, v in p.items()}
    elif isinstance(block, RandomBlock):
        yield from _iter_random(block.random)
    elif isinstance(block, LhsBlock):
        yield from _iter_lhs(block.lhs)
    elif isinstance(block, ProductBlock):
        first, rest = block.product[0], block.product[1:]
        held = [list(iter_points(b)) for b in rest]
        for head in iter_points(first):
            for tail in itertools.product(*held):
                point = dict(head)
                for part in tail:
                    point.update(part)
                yield point
    else:
        for b in block.concat:
            yield from iter_points(b)


@dataclass(frozen=True, slots=True)
class Columns:
    """A chunk of consecutive points of a block, held column by column.

    ``values[i]`` lists parameter ``names[i]``'s value at each point of the chunk.
    ``points``, when given, are the point dicts themselves (their key order may
    differ from ``names``). For grid blocks ``codes[i][j]`` is the index of
    ``values[i][j]`` in ``axes[i]``, the list of that parameter's grid values.
    """

    names: tuple[str, ...]
    values: list[list[Any]]
    points: list[dict[str, Any]] | None = None
    codes: list[list[int]] | None = None
    axes: list[list[Any]] | None = None

    def __len__(self) -> int:
        return len(self.values[0]) if self.values else 0

    def dicts(self) -> list[dict[str, Any]]:
        """Return the chunk's points as fresh dicts, equal to what ``iter_points`` yields."""
        if self.points is not None:
            return self.points
        # Copies of one dict with the keys in order, filled column by column: about
        # twice as fast as building each dict from a zip of names and values.
        out = list(map(dict.copy, itertools.repeat(dict.fromkeys(self.names), len(self))))
        for name, values in zip(self.names, self.values, strict=True):
            deque(map(operator.setitem, out, itertools.repeat(name), values), maxlen=0)
        return out

    def select(self, mask: list[bool], points: list[dict[str, Any]]) -> Columns:
        """Return the points where ``mask`` is true (``points``: their dicts, already selected)."""
        return Columns(
            self.names,
            [list(itertools.compress(v, mask)) for v in self.values],
            None if self.points is None else points,
            None if self.codes is None else [list(itertools.compress(c, mask)) for c in self.codes],
            self.axes,
        )


def _chunked_dicts(points: Iterator[dict[str, Any]], size: int) -> Iterator[Columns]:
    while True:
        chunk = list(itertools.islice(points, size))
        if not chunk:
            return
        names = tuple(chunk[0])
        yield Columns(names, [[p[n] for p in chunk] for n in names], points=chunk)


def iter_columns(block: AnyBlock, size: int) -> Iterator[Columns]:
    """Yield the points of a block in order, in chunks of at most ``size`` points, as Columns."""
    if isinstance(block, GridBlock):
        names = tuple(block.grid)
        axes = [_values_of(v) for v in block.grid.values()]
        lengths = [len(a) for a in axes]
        total = math.prod(lengths)
        if total >= 2**62:
            yield from _chunked_dicts(iter_points(block), size)
            return
        strides = [math.prod(lengths[i + 1 :]) for i in range(len(lengths))]
        for start in range(0, total, size):
            index = np.arange(start, min(start + size, total), dtype=np.int64)
            codes = [((index // s) % n).tolist() for s, n in zip(strides, lengths, strict=True)]
            values = [list(map(a.__getitem__, c)) for a, c in zip(axes, codes, strict=True)]
            yield Columns(names, values, codes=codes, axes=axes)
    elif isinstance(block, ZipBlock):
        names = tuple(block.zip)
        cols = [_values_of(v) for v in block.zip.values()]
        for start in range(0, len(cols[0]), size):
            yield Columns(names, [c[start : start + size] for c in cols])
    elif isinstance(block, RandomBlock | LhsBlock):
        names = block_names(block)
        source = (
            _random_columns(block.random)
            if isinstance(block, RandomBlock)
            else _lhs_columns(block.lhs)
        )
        for cols in source:
            for start in range(0, len(cols[0]), size):
                yield Columns(names, [c[start : start + size] for c in cols])
    elif isinstance(block, ConcatBlock):
        for b in block.concat:
            yield from iter_columns(b, size)
    else:
        yield from _chunked_dicts(iter_points(block), size)


def space_kind(
    block: AnyBlock,
) -> Literal["grid", "zip", "points", "random", "lhs", "product", "concat"]:
    """Return the YAML key of a block."""
    return _block_kind(block)  # type: ignore[return-value]
