"""Output parsers (one per kind) and the assembly of a point's rows."""

from __future__ import annotations

import gc
import io
import json
import math
import re
import tarfile
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from archives import Entry, files, tgz
from hypothesis import given
from hypothesis import strategies as st

import pipeline.parse
from pipeline.archive import ArchiveLimits, iter_members, read_members
from pipeline.errors import ParseError
from pipeline.parse import (
    SMALL_CSV_BYTES,
    PointRows,
    assemble_rows,
    assemble_stream,
    convert_value,
    iter_batches,
    parse_output,
)
from pipeline.spec import OutputSpec

MiB = 1 << 20


def out(file: str, kind: str, **kw: Any) -> OutputSpec:
    return OutputSpec(file=file, kind=kind, **kw)  # type: ignore[arg-type]


def parse(kind: str, data: bytes | str, name: str = "x", **kw: Any) -> pa.Table:
    raw = data.encode() if isinstance(data, str) else data
    return parse_output(out(name if "." in name else f"{name}.dat", kind, **kw), raw, name)


def parse_error(kind: str, data: bytes | str, name: str = "x", **kw: Any) -> str:
    with pytest.raises(ParseError) as info:
        parse(kind, data, name, **kw)
    return info.value.reason


@pytest.fixture
def small_type_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a streamed CSV's first block be as small as the others, to test block cuts."""
    monkeypatch.setattr(pipeline.parse, "STREAM_TYPE_BYTES", 0)


# -- csv / tsv ------------------------------------------------------------------------


def test_csv_types_and_unicode() -> None:
    t = parse("csv", "a,b,c,d\n1,2.5,héllo,true\n3,-1e3,wörld,false\n")
    assert t.to_pylist() == [
        {"a": 1, "b": 2.5, "c": "héllo", "d": True},
        {"a": 3, "b": -1000.0, "c": "wörld", "d": False},
    ]
    assert t.schema.field("a").type == pa.int64()


def test_tsv_and_delimiter_override() -> None:
    assert parse("tsv", "a\tb\n1\tx y\n").to_pylist() == [{"a": 1, "b": "x y"}]
    assert parse("csv", "a;b\n1;2\n", delimiter=";").to_pylist() == [{"a": 1, "b": 2}]


def test_empty_csv_and_header_only() -> None:
    empty = parse("csv", "")
    assert (empty.num_rows, empty.num_columns) == (0, 0)
    header = parse("csv", "a,b\n")
    assert (header.num_rows, header.column_names) == (0, ["a", "b"])


@pytest.mark.parametrize("rows", [10, 120_000])  # one block on the calling thread, or not
def test_csv_types_come_from_the_whole_file_small_or_large(rows: int) -> None:
    text = "i,x,s\n" + "".join(f"{i},{i},\n" for i in range(rows)) + '1,2.5,"a,""b"""\n'
    assert (len(text) < SMALL_CSV_BYTES) == (rows == 10)
    table = parse("csv", text)
    assert table.schema.types == [pa.int64(), pa.float64(), pa.string()]
    assert table.num_rows == rows + 1
    assert table.to_pylist()[-1] == {"i": 1, "x": 2.5, "s": 'a,"b"'}
    assert "invalid csv" in parse_error("csv", text + "1,2\n")


def test_bad_csv_is_a_parse_error() -> None:
    assert "invalid csv" in parse_error("csv", "a,b\n1,2,3\n")
    assert "appears twice" in parse_error("csv", "a,a\n1,2\n")
    assert "not UTF-8" in parse_error("keyvalue", b"a=\xff\n")


# -- json / jsonl ---------------------------------------------------------------------


def test_json_object_list_and_nesting() -> None:
    assert parse("json", '{"chi2": 1.5, "ok": true}').to_pylist() == [{"chi2": 1.5, "ok": True}]
    rows = parse("json", '[{"a": 1}, {"a": 2, "b": "x"}]').to_pylist()
    assert rows == [{"a": 1, "b": None}, {"a": 2, "b": "x"}]
    nested = parse("json", '{"fit": {"a": 1, "cov": {"x": 2}}, "v": [1, 2]}').to_pylist()
    assert nested == [{"fit.a": 1, "fit.cov.x": 2, "v": "[1, 2]"}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3", "got int"),
        ('"s"', "got str"),
        ("[1, 2]", "non-objects"),
        ("{bad", "invalid JSON"),
    ],
)
def test_json_that_is_not_rows(text: str, message: str) -> None:
    assert message in parse_error("json", text)


def test_json_mixed_or_huge_values_fall_back_to_text() -> None:
    t = parse("json", '[{"a": 1}, {"a": "x"}, {"a": 123456789012345678901234567890}]')
    assert t.column("a").to_pylist() == ["1", "x", "123456789012345678901234567890"]
    assert parse("json", '[{"a": 1}, {"a": 2.5}]').column("a").to_pylist() == [1.0, 2.5]


def test_jsonl() -> None:
    t = parse("jsonl", '{"i": 1}\n\n{"i": 2, "s": "ü"}\n')
    assert t.to_pylist() == [{"i": 1, "s": None}, {"i": 2, "s": "ü"}]
    assert "line 2" in parse_error("jsonl", '{"i": 1}\n[1]\n')
    assert "line 3" in parse_error("jsonl", '{"i": 1}\n\n{oops\n')


# -- npy / npz ------------------------------------------------------------------------


def npy(arr: Any, **kw: Any) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, **kw)
    return buf.getvalue()


def npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def test_npy_shapes() -> None:
    assert parse("npy", npy(np.float64(2.5)), "chi2.npy").to_pylist() == [{"chi2": 2.5}]
    assert parse("npy", npy(np.arange(3)), "sub/k.npy").column("k").to_pylist() == [0, 1, 2]
    two = parse("npy", npy(np.array([[1.0, 2.0], [3.0, 4.0]])), "m.npy")
    assert two.to_pylist() == [{"c0": 1.0, "c1": 2.0}, {"c0": 3.0, "c1": 4.0}]
    rec = np.array([(1, 2.0)], dtype=[("n", "i4"), ("x", "f8")])
    assert parse("npy", npy(rec), "r.npy").to_pylist() == [{"n": 1, "x": 2.0}]
    assert "more than 2 dimensions" in parse_error("npy", npy(np.zeros((2, 2, 2))), "a.npy")
    assert "invalid .npy" in parse_error("npy", b"garbage", "a.npy")


def test_npy_refuses_pickled_objects() -> None:
    data = npy(np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert "invalid .npy" in parse_error("npy", data, "o.npy")


def test_npz_keys_become_columns() -> None:
    t = parse("npz", npz(ell=np.arange(3), cl=np.ones(3), h0=np.float64(67.0)), "s.npz")
    assert t.to_pylist() == [{"ell": i, "cl": 1.0, "h0": 67.0} for i in range(3)]
    m = parse("npz", npz(m=np.eye(2)), "m.npz")
    assert m.column_names == ["m.c0", "m.c1"]
    assert "different lengths" in parse_error("npz", npz(a=np.arange(2), b=np.arange(3)), "a.npz")


def test_npz_zip_bomb_is_refused() -> None:
    data = npz(z=np.zeros(4 * MiB, dtype=np.uint8))
    assert len(data) < 100_000
    with pytest.raises(ParseError, match="too large"):
        parse_output(out("z.npz", "npz"), data, "z.npz", max_npz_bytes=MiB)


# -- keyvalue / regex / values --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("", None),
        ("42", 42),
        ("-7", -7),
        ("1.5", 1.5),
        ("1e-3", 1e-3),
        (".5", 0.5),
        ("inf", math.inf),
        ("TRUE", True),
        ("false", False),
        ('"a \\"q\\""', 'a "q"'),
        ("'007'", "007"),
        ("1_000", "1_000"),
        ("v1.2", "v1.2"),
        ("héllo wörld", "héllo wörld"),
    ],
)
def test_convert_value(text: str, value: object) -> None:
    assert convert_value(text) == value
    assert type(convert_value(text)) is type(value)


def test_keyvalue() -> None:
    text = "# comment\nh0 = 67.5\n\nname=run 1\nconverged=true\nn=3\nempty=\n"
    assert parse("keyvalue", text).to_pylist() == [
        {"h0": 67.5, "name": "run 1", "converged": True, "n": 3, "empty": None}
    ]
    assert parse("keyvalue", "a: 1\nurl: http://x\n", separator=":").to_pylist() == [
        {"a": 1, "url": "http://x"}
    ]
    assert "line 2: no '='" in parse_error("keyvalue", "a=1\n[section]\n")
    assert "already set on line 1" in parse_error("keyvalue", "a=1\na=2\n")


keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,10}", fullmatch=True)
values = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=20),
)


@given(st.dictionaries(keys, values, min_size=1, max_size=8))
def test_keyvalue_round_trip(row: dict[str, Any]) -> None:
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        return repr(v)

    text = "".join(f"{k} = {fmt(v)}\n" for k, v in row.items())
    got = parse_output(out("p.txt", "keyvalue"), text.encode(), "p.txt").to_pylist()
    assert got == [row]


def test_regex_rows_and_no_match() -> None:
    log = "step 1 loss=0.5\nnoise\nstep 2 loss=0.25 done\n"
    spec = {"pattern": r"^step (?P<step>\d+) loss=(?P<loss>\S+)(?: (?P<done>done))?$"}
    t = parse("regex", log, **spec)
    assert t.to_pylist() == [
        {"step": 1, "loss": 0.5, "done": None},
        {"step": 2, "loss": 0.25, "done": "done"},
    ]
    none = parse("regex", "nothing here", **spec)
    assert (none.num_rows, none.column_names) == (0, ["step", "loss", "done"])


# -- python ---------------------------------------------------------------------------


def rows_parser(data: bytes, name: str) -> Iterator[dict[str, Any]]:
    """A user parser: one row per line, with the member name."""
    for i, line in enumerate(data.decode().splitlines()):
        yield {"i": i, "line": line, "file": name, "meta": {"n": len(line)}}


def failing_parser(data: bytes, name: str) -> list[dict[str, Any]]:
    raise ValueError(f"cannot read {name}")


def bad_rows_parser(data: bytes, name: str) -> list[Any]:
    return [1, 2]


def test_python_parser() -> None:
    t = parse("python", "ab\nc\n", "o.txt", parser="test_parse:rows_parser")
    assert t.to_pylist() == [
        {"i": 0, "line": "ab", "file": "o.txt", "meta.n": 2},
        {"i": 1, "line": "c", "file": "o.txt", "meta.n": 1},
    ]
    dotted = parse("python", "z\n", "o.txt", parser="test_parse.rows_parser")
    assert dotted.column("line").to_pylist() == ["z"]


@pytest.mark.parametrize(
    ("parser", "message"),
    [
        ("no_such_module_xyz:f", "cannot import parser 'no_such_module_xyz:f': ModuleNotFound"),
        ("test_parse:nope", "has no function 'nope'"),
        ("test_parse:failing_parser", "raised ValueError: cannot read o.txt"),
        ("test_parse:bad_rows_parser", "yielded int, not a dict row"),
    ],
)
def test_python_parser_failures(parser: str, message: str) -> None:
    assert message in parse_error("python", "x", "o.txt", parser=parser)


# -- assembling a point's rows --------------------------------------------------------


def test_one_row_outputs_are_broadcast_onto_the_table() -> None:
    outputs = [
        out("params.txt", "keyvalue"),
        out("spectrum.csv", "csv"),
        out("fit.json", "json", prefix="fit"),
    ]
    members = {
        "spectrum.csv": b"ell,cl\n2,0.1\n3,0.2\n",
        "params.txt": b"h0=67\n",
        "fit.json": b'{"chi2": 3.5}',
    }
    table, problems = assemble_rows(outputs, members)
    assert problems == []
    assert table.to_pylist() == [
        {"ell": 2, "cl": 0.1, "h0": 67, "fit.chi2": 3.5},
        {"ell": 3, "cl": 0.2, "h0": 67, "fit.chi2": 3.5},
    ]


def test_only_one_row_outputs_give_one_row() -> None:
    table, problems = assemble_rows(
        [out("a.txt", "keyvalue"), out("b.json", "json")], {"a.txt": b"x=1", "b.json": b'{"y": 2}'}
    )
    assert (problems, table.to_pylist()) == ([], [{"x": 1, "y": 2}])


def test_two_multi_row_outputs_are_a_problem() -> None:
    table, problems = assemble_rows(
        [out("a.csv", "csv"), out("b.csv", "csv")],
        {"a.csv": b"x\n1\n2\n", "b.csv": b"y\n1\n2\n3\n"},
    )
    assert table.num_rows == 0
    assert {p.code for p in problems} == {"row_conflict"}
    assert "a.csv (2 rows), b.csv (3 rows)" in problems[0].message


def test_column_collision_names_the_column_and_suggests_prefix() -> None:
    _, problems = assemble_rows(
        [out("a.txt", "keyvalue"), out("b.txt", "keyvalue")], {"a.txt": b"x=1", "b.txt": b"x=2"}
    )
    assert [p.code for p in problems] == ["column_collision"]
    assert "'x'" in problems[0].message
    assert "prefix" in problems[0].message
    table, problems = assemble_rows(
        [out("a.txt", "keyvalue"), out("b.txt", "keyvalue", prefix="b")],
        {"a.txt": b"x=1", "b.txt": b"x=2"},
    )
    assert table.to_pylist() == [{"x": 1, "b.x": 2}]


def test_missing_and_broken_outputs() -> None:
    outputs = [
        out("must.csv", "csv"),
        out("maybe.txt", "keyvalue", required=False),
        out("bad.json", "json"),
    ]
    table, problems = assemble_rows(outputs, {"bad.json": b"[1]"})
    assert table.num_rows == 0
    assert [str(p) for p in problems] == [
        "missing: no member matches 'must.csv'",
        "parse_error: must be a JSON object or a list of objects, got a list holding non-objects",
    ]
    table, problems = assemble_rows(outputs[1:2], {})
    assert (problems, table.num_rows, table.num_columns) == ([], 1, 0)


def test_glob_output_concatenates_members_with_output_file() -> None:
    members = {"chains/c2.csv": b"x\n3\n", "chains/c1.csv": b"x\n1\n2\n", "other.csv": b"x\n9\n"}
    table, problems = assemble_rows([out("chains/*.csv", "csv", prefix="ch")], members)
    assert problems == []
    assert table.to_pylist() == [
        {"ch.x": 1, "ch.output_file": "chains/c1.csv"},
        {"ch.x": 2, "ch.output_file": "chains/c1.csv"},
        {"ch.x": 3, "ch.output_file": "chains/c2.csv"},
    ]


def test_output_with_no_rows_gives_the_point_no_rows() -> None:
    table, problems = assemble_rows(
        [out("a.csv", "csv"), out("p.txt", "keyvalue")], {"a.csv": b"x\n", "p.txt": b"h=1"}
    )
    assert problems == []
    assert (table.num_rows, table.column_names) == (0, ["x", "h"])


# -- streaming ------------------------------------------------------------------------


@pytest.mark.usefixtures("small_type_window")
def test_iter_batches_csv_and_jsonl_from_a_member_stream() -> None:
    csv = "".join(f"{i},{i * 0.5}\n" for i in range(5000))
    data = files(
        **{"t.csv": "i,x\n" + csv, "t.jsonl": "".join(f'{{"i": {i}}}\n' for i in range(300))}
    )
    got: dict[str, int] = {}
    for m in iter_members(io.BytesIO(data)):
        kind = "csv" if m.name.endswith("csv") else "jsonl"
        with m.stream() as f:
            batches = list(
                iter_batches(out(m.name, kind), f, m.name, block_size=8192, batch_rows=100)
            )
        assert len(batches) > 1
        got[m.name] = sum(b.num_rows for b in batches)
        assert pa.Table.from_batches(batches).column("i").to_pylist()[-1] == got[m.name] - 1
    assert got == {"t.csv": 5000, "t.jsonl": 300}


class _WatchedStream(io.BytesIO):
    """A stream that counts the reads made after it was marked closed to its reader."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.abandoned = False
        self.late_reads = 0

    def read(self, size: int | None = -1) -> bytes:
        time.sleep(0.002)  # a slow source: a read ahead is still running at close
        if self.abandoned:
            self.late_reads += 1
        return super().read(size)

    def readinto(self, b: Any) -> int:
        time.sleep(0.002)
        if self.abandoned:
            self.late_reads += 1
        return super().readinto(b)


@pytest.mark.usefixtures("small_type_window")
@pytest.mark.parametrize("stop", ["close", "error"])
def test_csv_stream_is_never_read_after_the_batches_stop(stop: str) -> None:
    rows = "".join(f"{i},{i * 0.5}\n" for i in range(50_000))
    text = "i,x\n" + (rows if stop == "close" else "1,2\n" * 3000 + "1,oops\n" + rows)
    stream = _WatchedStream(text.encode())
    batches = iter_batches(out("t.csv", "csv"), stream, "t.csv", block_size=4096)
    if stop == "close":
        assert next(batches).column("i").to_pylist()[0] == 0
        batches.close()
    else:
        with pytest.raises(ParseError, match="invalid csv"):
            list(batches)
    stream.abandoned = True
    time.sleep(0.3)  # a read-ahead thread still running would read now
    assert stream.late_reads == 0
    assert 0 < stream.tell() < len(text) // 2
    assert not [t for t in threading.enumerate() if t.name == "csv-read-ahead"]


@pytest.mark.usefixtures("small_type_window")
def test_csv_stream_blocks_cut_lines_and_keep_the_first_blocks_types() -> None:
    rows = [f"{i},{i / 4}\r\n" for i in range(3000)]
    got = list(
        iter_batches(
            out("t.csv", "csv"),
            io.BytesIO(("i,x\r\n" + "".join(rows)).encode()),
            "t.csv",
            block_size=1000,
        )
    )
    assert len(got) > 10
    table = pa.Table.from_batches(got)
    assert table.column("i").to_pylist() == list(range(3000))
    assert table.schema.field("x").type == pa.float64()
    header_only = list(iter_batches(out("t.csv", "csv"), io.BytesIO(b"\n\ni,x\n"), "t"))
    assert sum(b.num_rows for b in header_only) == 0
    late = "i\n" + "1\n" * 2000 + "oops\n"
    with pytest.raises(ParseError, match="invalid csv"):
        list(iter_batches(out("t.csv", "csv"), io.BytesIO(late.encode()), "t", block_size=512))
    with pytest.raises(ParseError, match="longer than 100 bytes"):
        list(
            iter_batches(
                out("t.csv", "csv"),
                io.BytesIO(b"a\n" + b"x" * 500),
                "t",
                block_size=64,
                max_line=100,
            )
        )


def test_jsonl_stream_type_change_is_a_parse_error() -> None:
    text = '{"a": 1}\n' * 10 + '{"a": "x"}\n'
    with pytest.raises(ParseError, match="changed type"):
        list(
            iter_batches(
                out("a.jsonl", "jsonl"), io.BytesIO(text.encode()), "a.jsonl", batch_rows=5
            )
        )
    widened = list(
        iter_batches(
            out("a.jsonl", "jsonl"), io.BytesIO(b'{"a": 1.5}\n{"a": 2}\n'), "a", batch_rows=1
        )
    )
    assert [b.column("a").to_pylist() for b in widened] == [[1.5], [2.0]]


def _archive_with_big_csv_first(rows: int) -> bytes:
    csv = "x,y\n" + "".join(f"{i},{i % 7}\n" for i in range(rows))
    # The table member sits before the one-row outputs it is combined with.
    return tgz([Entry("a_table.csv", csv.encode()), Entry("z_params.txt", b"h0=70\nrun=7\n")])


def _rows(point: PointRows) -> pa.Table:
    """Drain a point and return its finished rows (pieces are Tables or RecordBatches)."""
    pieces = [point.finish(p) for p in list(point.batches)]
    assert point.problems == []
    return pa.concat_tables(
        p if isinstance(p, pa.Table) else pa.Table.from_batches([p]) for p in pieces
    )


@pytest.mark.usefixtures("small_type_window")
def test_assemble_stream_one_pass_with_late_one_row_outputs() -> None:
    data = _archive_with_big_csv_first(20_000)
    outputs = [out("z_params.txt", "keyvalue"), out("a_table.csv", "csv")]
    expected, problems = assemble_rows(outputs, read_members(io.BytesIO(data)))
    assert problems == []
    point = assemble_stream(
        outputs, iter_members(io.BytesIO(data)), stream_above=1000, block_size=16_384
    )
    pieces = list(point.batches)
    assert len(pieces) > 1
    # The table came before the one-row output: its pieces lack that output's columns.
    assert point.incomplete
    assert pieces[0].schema.names == ["x", "y"]
    assert point.late is not None
    assert point.late.to_pylist() == [{"h0": 70, "run": 7}]
    assert pa.Table.from_batches([point.finish(p) for p in pieces]).equals(expected)
    small = assemble_stream(outputs, iter_members(io.BytesIO(data)), stream_above=10 * MiB)
    assert not small.incomplete
    assert _rows(small).equals(expected)


def test_assemble_stream_one_row_outputs_read_first_are_added_at_once() -> None:
    csv = "x,y\n" + "".join(f"{i},{i % 7}\n" for i in range(5000))
    data = tgz([Entry("a_params.txt", b"h0=70\n"), Entry("b_table.csv", csv.encode())])
    outputs = [out("a_params.txt", "keyvalue"), out("b_table.csv", "csv")]
    point = assemble_stream(outputs, iter_members(io.BytesIO(data)), stream_above=1000)
    pieces = list(point.batches)
    assert point.problems == []
    assert not point.incomplete
    assert point.late is None
    table = pa.Table.from_batches(pieces)
    assert table.column_names == ["x", "y", "h0"]
    assert table.num_rows == 5000
    assert set(table.column("h0").to_pylist()) == {70}


def test_assemble_stream_glob_output_keeps_small_and_large_members() -> None:
    big = "i\n" + "".join(f"{i}\n" for i in range(3000))
    data = tgz(
        [
            Entry("chains/a.csv", b"i\n-1\n"),
            Entry("chains/b.csv", big.encode()),
            Entry("chains/c.csv", b"i\n-2\n-3\n"),
            Entry("z.json", b'{"seed": 4}'),
        ]
    )
    outputs = [out("chains/*.csv", "csv"), out("z.json", "json")]
    expected, problems = assemble_rows(outputs, read_members(io.BytesIO(data)))
    assert problems == []
    point = assemble_stream(outputs, iter_members(io.BytesIO(data)), stream_above=1000)
    table = _rows(point)
    assert table.num_rows == 3003 == expected.num_rows
    assert table.column_names == expected.column_names == ["i", "output_file", "seed"]
    files_seen = table.column("output_file").to_pylist()
    assert [files_seen.count(f"chains/{f}.csv") for f in "abc"] == [1, 3000, 2]
    assert sorted(table.column("i").to_pylist()) == sorted(expected.column("i").to_pylist())


def test_assemble_stream_output_without_rows_gives_the_point_none() -> None:
    csv = ("x\n" + "".join(f"{i}\n" for i in range(3000))).encode()
    header_only = b"h\n"
    late = tgz([Entry("a.csv", csv), Entry("b.csv", header_only)])
    outputs = [out("a.csv", "csv"), out("b.csv", "csv")]
    point = assemble_stream(outputs, iter_members(io.BytesIO(late)), stream_above=1000)
    assert _rows(point).num_rows == 0
    first = tgz([Entry("b.csv", header_only), Entry("a.csv", csv)])
    point = assemble_stream(outputs, iter_members(io.BytesIO(first)), stream_above=1000)
    assert list(point.batches) == []
    assert point.problems == []


def test_assemble_stream_problems() -> None:
    data = tgz(
        [
            Entry("a.csv", b"x\n" + b"1\n" * 2000),
            Entry("b.csv", b"y\n1\n2\n"),
            Entry("c.txt", b"x=1\n"),
        ]
    )

    def assemble(outputs: list[OutputSpec], **kw: Any) -> PointRows:
        point = assemble_stream(outputs, iter_members(io.BytesIO(data)), **kw)
        list(point.batches)
        return point

    conflict = assemble([out("a.csv", "csv"), out("b.csv", "csv")], stream_above=100)
    assert {p.code for p in conflict.problems} == {"row_conflict"}
    assert "a.csv (streamed)" in conflict.problems[0].message
    two_large = assemble([out("a.csv", "csv"), out("*.txt", "csv")], stream_above=3)
    assert {(p.output, p.code) for p in two_large.problems} == {
        ("a.csv", "row_conflict"),
        ("*.txt", "row_conflict"),
    }
    with pytest.raises(ParseError, match="column 'x'"):
        assemble([out("a.csv", "csv"), out("c.txt", "keyvalue")], stream_above=100)
    too_big = assemble([out("a.csv", "json")], stream_above=100, max_in_memory=1000)
    assert [p.code for p in too_big.problems] == ["too_large"]
    missing = assemble([out("nope.csv", "csv")])
    assert [p.code for p in missing.problems] == ["missing"]


def _big_csv_tgz(target: int) -> tuple[bytes, int]:
    """Return a gzip tar with one CSV member of about ``target`` bytes, never held whole."""
    header_row = b"i,a,b,label\n"
    block = b"".join(b"%09d,%d,%d.25,row-%d\n" % (i, i % 97, i % 13, i % 5) for i in range(100_000))
    repeats = max(1, target // len(block))
    size = len(header_row) + repeats * len(block)
    info = tarfile.TarInfo("big.csv")
    info.size = size
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    parts = [c.compress(info.tobuf(format=tarfile.GNU_FORMAT)), c.compress(header_row)]
    parts += [c.compress(block) for _ in range(repeats)]
    parts.append(c.compress(bytes(-size % 512 + 1024)))
    parts.append(c.flush())
    return b"".join(parts), repeats * 100_000


@pytest.mark.slow
def test_streaming_a_large_csv_member_in_bounded_memory() -> None:
    data, rows = _big_csv_tgz(200 * MiB)
    pool = pa.default_memory_pool()
    arrow_before = pool.max_memory() or 0
    tracemalloc.start()
    try:
        point = assemble_stream(
            [out("big.csv", "csv")],
            iter_members(io.BytesIO(data), ArchiveLimits()),
            block_size=4 * MiB,
        )
        n = 0
        for batch in point.batches:
            n += batch.num_rows
        _, python_peak = tracemalloc.get_traced_memory()
        problems = point.problems
        # Close the generator (and the reader it holds) before tracemalloc stops.
        close = getattr(point.batches, "close", None)
        if close is not None:
            close()
        del point
        gc.collect()
    finally:
        tracemalloc.stop()
    assert problems == []
    assert n == rows
    # Measured about 40-80 MiB (4 MiB blocks, Arrow holding a few read buffers).
    assert python_peak < 128 * MiB
    arrow_peak = (pool.max_memory() or 0) - arrow_before
    assert arrow_peak < 96 * MiB


@pytest.mark.usefixtures("small_type_window")
@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("a,b\n1,2\n3,4,5\n", "at line 3:"),
        ("a,b\n" + "1,2\n" * 3000 + "3,4,5\n", "at line 3002:"),
        ("a,b\r\n" + "1,2\r\n" * 3000 + "3,x\r\n", "at line 3002:"),
        ("a,b\n" + "1,\n" * 3000 + "\n\n2,x\n", "(in the block from line 2731):"),
    ],
)
def test_csv_stream_errors_say_the_line(text: str, where: str) -> None:
    with pytest.raises(ParseError, match=re.escape(f"invalid csv {where}")):
        list(iter_batches(out("t.csv", "csv"), io.BytesIO(text.encode()), "t", block_size=4096))


def test_csv_stream_types_come_from_the_first_mebibyte_whatever_the_block_size() -> None:
    rows = "".join(f"{i},{i % 7}\n" for i in range(60_000))  # about 700 KB of integers
    text = ("a,b\n" + rows + "1,2.5\n").encode()
    assert len(text) < pipeline.parse.STREAM_TYPE_BYTES
    got = list(iter_batches(out("t.csv", "csv"), io.BytesIO(text), "t", block_size=64 * 1024))
    table = pa.Table.from_batches(got)
    assert table.num_rows == 60_001
    assert table.schema.field("b").type == pa.float64()
