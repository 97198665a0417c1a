"""Turn the output files of one result into Arrow rows, following the sweep's declared outputs.

Each declared output (an ``OutputSpec``: a file name or fnmatch glob, a kind and
options) is parsed into a ``pyarrow.Table``; the outputs of one point are then
combined into the point's rows by :func:`assemble_rows` (members in memory) or
:func:`assemble_stream` (large csv/tsv/jsonl members parsed as streams).

Kinds and what they give:

``csv`` / ``tsv``
    pyarrow's CSV reader (streaming reader for large members); the first line
    is the header; ``delimiter`` overrides ``,`` / tab. An empty file gives no
    rows and no columns; a header alone gives no rows.
``json``
    an object gives one row, a list of objects one row each; anything else is
    a parse error. Nested objects are flattened with dots (``{"a": {"b": 1}}``
    gives column ``a.b``); lists inside a row are kept as JSON text.
``jsonl``
    one object per line, as ``json``; blank lines are skipped.
``npy``
    a 0-d array gives one row, a 1-d array one column, both named after the
    file's stem (``chi2.npy`` → ``chi2``); a 2-d array gives one row per array
    row with columns ``c0`` … ``c<n-1>``; a 1-d structured array one column per
    field. More dimensions are a parse error. Pickled objects are refused.
``npz``
    one column per key: 0-d arrays are scalars (broadcast), 1-d arrays columns,
    2-d arrays columns ``<key>.c0`` …; every non-scalar array must have the same
    length.
``keyvalue``
    ``key<separator>value`` lines (separator ``=`` by default, split at its
    first occurrence, both sides stripped); blank lines and lines starting
    with ``#`` are skipped; a line without the separator or a repeated key is a
    parse error. Gives one row; values are converted by :func:`convert_value`.
``regex``
    the pattern (``re.MULTILINE``) is searched through the text; every match
    gives one row of its named groups, converted by :func:`convert_value`.
    Bytes that are not UTF-8 are replaced.
``python``
    ``parser`` names a function (``pkg.mod:func`` or ``pkg.mod.func``) called as
    ``func(data: bytes, name: str)``; it returns an iterable of dict rows. An
    import error or an exception it raises becomes a parse error.

When ``file`` is a glob (it has ``*``, ``?`` or ``[``), every member it matches
is parsed and the rows are concatenated in name order, with a column
``output_file`` holding the member's name. ``prefix`` renames every column of an
output to ``<prefix>.<column>`` (``output_file`` included).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import queue
import re
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import IO, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from pipeline.errors import ParseError

__all__ = [
    "SMALL_CSV_BYTES",
    "STREAMABLE_KINDS",
    "MemberLike",
    "OutputLike",
    "OutputProblem",
    "PointRows",
    "assemble_rows",
    "assemble_stream",
    "convert_value",
    "is_glob",
    "iter_batches",
    "parse_output",
]

STREAMABLE_KINDS = frozenset({"csv", "tsv", "jsonl"})
OUTPUT_FILE_COLUMN = "output_file"
MiB = 1 << 20

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)", re.IGNORECASE)


class OutputLike(Protocol):
    """What the parsers need of a declared output (``pipeline.spec.OutputSpec`` fits)."""

    @property
    def file(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def prefix(self) -> str | None: ...
    @property
    def required(self) -> bool: ...
    @property
    def pattern(self) -> str | None: ...
    @property
    def parser(self) -> str | None: ...
    @property
    def separator(self) -> str: ...
    @property
    def delimiter(self) -> str | None: ...


class MemberLike(Protocol):
    """A member of an archive being read (``pipeline.archive.Member`` fits)."""

    name: str
    size: int

    def read(self, n: int = -1) -> bytes: ...
    def stream(self, buffer_size: int = ...) -> io.BufferedReader: ...


@dataclass(frozen=True)
class OutputProblem:
    """Why one declared output spoiled a point: ``code`` is missing, parse_error, ... ."""

    output: str
    code: str
    message: str = ""

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code


# -- values ---------------------------------------------------------------------------


def convert_value(text: str) -> bool | int | float | str | None:
    """Convert one text value the TOML-lite way, for keyvalue and regex outputs.

    Empty → None; ``true``/``false`` (any case) → bool; an integer literal →
    int; a decimal or exponent literal, ``inf`` or ``nan`` → float; a value in
    double quotes → the JSON string inside; in single quotes → the text inside;
    anything else → the text unchanged.
    """
    if text == "":
        return None
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            value = json.loads(text)
        except ValueError:
            return text
        return value if isinstance(value, str) else text
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1]
    return text


def _column(values: list[Any]) -> pa.Array:
    """Return an Arrow array of the values; mixed or oversized types fall back to text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
        return pa.array(
            [None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values],
            type=pa.string(),
        )


def _flatten(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, list):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def _rows_to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    columns: dict[str, list[Any]] = {}
    n = 0
    for row in rows:
        for key in columns.keys() - row.keys():
            columns[key].append(None)
        for key, value in row.items():
            if key not in columns:
                columns[key] = [None] * n
            columns[key].append(value)
        n += 1
    if not columns:
        return _empty(n)
    return pa.table({k: _column(v) for k, v in columns.items()})


def _empty(rows: int, names: Iterable[str] = ()) -> pa.Table:
    """Return a table with ``rows`` rows and null-typed columns ``names`` (possibly none)."""
    table = pa.table({"_": pa.nulls(rows), **{n: pa.nulls(rows) for n in names}})
    return table.drop_columns(["_"])


# -- parsers, one per kind ------------------------------------------------------------


def _csv_options(spec: OutputLike) -> pa_csv.ParseOptions:
    delimiter = spec.delimiter or ("\t" if spec.kind == "tsv" else ",")
    return pa_csv.ParseOptions(delimiter=delimiter)


def _check_names(table_or_schema: pa.Table | pa.Schema) -> None:
    names = (
        table_or_schema.names
        if isinstance(table_or_schema, pa.Schema)
        else (table_or_schema.column_names)
    )
    seen: set[str] = set()
    for n in names:
        if n == "":
            raise ParseError("a column has an empty name")
        if n in seen:
            raise ParseError(f"column {n!r} appears twice in the header")
        seen.add(n)


#: A streamed csv/tsv output takes its column types from at least this much of its start.
STREAM_TYPE_BYTES = MiB

#: csv/tsv data below this size is parsed as one block on the calling thread.
SMALL_CSV_BYTES = MiB
_ONE_BLOCK = pa_csv.ReadOptions(block_size=SMALL_CSV_BYTES, use_threads=False)


def _arrow_owned(data: bytes) -> pa.Buffer:
    """Copy bytes into memory that Arrow owns.

    Arrow's CSV readers read their source on Arrow's I/O thread, which can
    release it after the reader has returned. A buffer over a Python object
    would then take the GIL from that thread, creating and freeing a Python
    thread state, which is unsafe while tracemalloc starts or stops. An
    Arrow-owned copy (about 13 µs per 256 KiB) keeps Arrow's threads out of
    Python altogether.
    """
    buf = pa.allocate_buffer(len(data))
    memoryview(buf).cast("B")[:] = data
    return buf


def _parse_csv(spec: OutputLike, data: bytes) -> pa.Table:
    """Parse csv/tsv bytes; the types are inferred from the whole data either way.

    Small data (most outputs: a few rows) goes through the streaming reader in
    one block without threads: ``read_csv`` hands every call to Arrow's thread
    pools (and without threads starts a read-ahead thread per call), which
    costs more than parsing a few kilobytes, and much more on a busy machine.
    Larger data is read by ``read_csv`` in one block, converted in parallel.
    """
    try:
        if len(data) < SMALL_CSV_BYTES:
            reader = pa_csv.open_csv(
                pa.BufferReader(_arrow_owned(data)),
                read_options=_ONE_BLOCK,
                parse_options=_csv_options(spec),
            )
            try:
                table = reader.read_all()
            finally:
                reader.close()
        else:
            read = pa_csv.ReadOptions(block_size=len(data) + 1)
            table = pa_csv.read_csv(
                pa.BufferReader(_arrow_owned(data)),
                read_options=read,
                parse_options=_csv_options(spec),
            )
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            return _empty(0)
        raise ParseError(f"invalid {spec.kind}: {exc}") from exc
    _check_names(table)
    return table


def _decode(data: bytes, *, strict: bool) -> str:
    try:
        return data.decode("utf-8", "strict" if strict else "replace")
    except UnicodeDecodeError as exc:
        raise ParseError(f"not UTF-8 text (byte {exc.start})") from exc


def _json_rows(value: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        return [_flatten(value)]
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return [_flatten(v) for v in value]
    got = type(value).__name__
    if isinstance(value, list):
        got = "a list holding non-objects"
    raise ParseError(f"{where}must be a JSON object or a list of objects, got {got}")


def _parse_json(data: bytes) -> pa.Table:
    try:
        value = json.loads(_decode(data, strict=True))
    except ValueError as exc:
        raise ParseError(f"invalid JSON: {exc}") from exc
    return _rows_to_table(_json_rows(value, ""))


def _jsonl_rows(lines: Iterable[bytes], first_line: int = 1) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(lines, first_line):
        if not line.strip():
            continue
        try:
            value = json.loads(_decode(line, strict=True))
        except ParseError as exc:
            raise ParseError(f"line {number}: {exc.reason}") from exc
        except ValueError as exc:
            raise ParseError(f"line {number}: invalid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ParseError(f"line {number}: must be a JSON object, got {type(value).__name__}")
        rows.append(_flatten(value))
    return rows


def _numpy_table(columns: dict[str, np.ndarray[Any, Any]]) -> pa.Table:
    scalars = {k: v for k, v in columns.items() if v.ndim == 0}
    vectors = {k: v for k, v in columns.items() if v.ndim == 1}
    lengths = {len(v) for v in vectors.values()}
    if len(lengths) > 1:
        detail = ", ".join(f"{k}: {len(v)}" for k, v in vectors.items())
        raise ParseError(f"arrays have different lengths ({detail})")
    n = lengths.pop() if lengths else 1
    out: dict[str, pa.Array] = {}
    try:
        for k, v in columns.items():
            if k in scalars:
                out[k] = (
                    pa.array([v.item()] * n) if n else pa.array([], pa.from_numpy_dtype(v.dtype))
                )
            else:
                out[k] = pa.array(v)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise ParseError(f"array type not supported: {exc}") from exc
    return pa.table(out) if out else _empty(n)


def _array_columns(key: str, arr: np.ndarray[Any, Any], *, in_npz: bool) -> dict[str, Any]:
    if arr.dtype.names:  # structured
        if arr.ndim != 1:
            raise ParseError(f"{key}: a structured array must be 1-d, got {arr.ndim}-d")
        return {f"{key}.{f}" if in_npz else f: arr[f] for f in arr.dtype.names}
    if arr.ndim <= 1:
        return {key: arr}
    if arr.ndim == 2:
        return {f"{key}.c{j}" if in_npz else f"c{j}": arr[:, j] for j in range(arr.shape[1])}
    raise ParseError(f"{key}: arrays of more than 2 dimensions are not supported ({arr.shape})")


def _stem(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


def _parse_npy(data: bytes, name: str) -> pa.Table:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ParseError(f"invalid .npy data: {exc}") from exc
    if not isinstance(arr, np.ndarray):
        raise ParseError("not a .npy array (an .npz archive?)")
    return _numpy_table(_array_columns(_stem(name), arr, in_npz=False))


def _parse_npz(data: bytes, max_bytes: int) -> pa.Table:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            total = sum(i.file_size for i in infos)
            if total > max_bytes or len(infos) > 10_000:
                raise ParseError(f".npz expands to {total} bytes in {len(infos)} arrays: too large")
        npz = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ParseError("not an .npz archive")
        columns: dict[str, Any] = {}
        with npz:
            for key in npz.files:
                columns.update(_array_columns(key, npz[key], in_npz=True))
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ParseError(f"invalid .npz data: {exc}") from exc
    return _numpy_table(columns)


def _parse_keyvalue(spec: OutputLike, data: bytes) -> pa.Table:
    sep = spec.separator
    row: dict[str, Any] = {}
    first: dict[str, int] = {}
    for number, raw in enumerate(_decode(data, strict=True).splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, found, value = line.partition(sep)
        key = key.strip()
        if not found:
            raise ParseError(f"line {number}: no {sep!r} in {raw!r}")
        if not key:
            raise ParseError(f"line {number}: empty key in {raw!r}")
        if key in first:
            raise ParseError(f"line {number}: key {key!r} already set on line {first[key]}")
        first[key] = number
        row[key] = convert_value(value.strip())
    return _rows_to_table([row])


def _parse_regex(spec: OutputLike, data: bytes) -> pa.Table:
    try:
        rx = re.compile(spec.pattern or "", re.MULTILINE)
    except re.error as exc:
        raise ParseError(f"invalid pattern {spec.pattern!r}: {exc}") from exc
    if not rx.groupindex:
        raise ParseError(f"pattern {spec.pattern!r} has no named groups")
    text = _decode(data, strict=False)
    rows = [
        {k: None if v is None else convert_value(v) for k, v in m.groupdict().items()}
        for m in rx.finditer(text)
    ]
    return _rows_to_table(rows) if rows else _empty(0, rx.groupindex)


def _load_parser(path: str) -> Callable[[bytes, str], Iterable[Mapping[str, Any]]]:
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ParseError(f"parser {path!r} is not 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code
        raise ParseError(f"cannot import parser {path!r}: {type(exc).__name__}: {exc}") from exc
    func = getattr(module, attr, None)
    if not callable(func):
        raise ParseError(f"parser {path!r}: module {module_name!r} has no function {attr!r}")
    return func


def _parse_python(spec: OutputLike, data: bytes, name: str) -> pa.Table:
    path = spec.parser or ""
    func = _load_parser(path)
    try:
        rows = []
        for row in func(data, name):
            if not isinstance(row, Mapping):
                raise ParseError(f"parser {path!r} yielded {type(row).__name__}, not a dict row")
            rows.append(_flatten(row))
    except ParseError:
        raise
    except Exception as exc:  # the user's parser may raise anything
        raise ParseError(f"parser {path!r} raised {type(exc).__name__}: {exc}") from exc
    return _rows_to_table(rows)


def parse_output(
    spec: OutputLike, data: bytes, name: str, *, max_npz_bytes: int = 512 * MiB
) -> pa.Table:
    """Parse one member's bytes as ``spec.kind``; raise ParseError with the reason on failure.

    The table has the member's own column names (no prefix, no ``output_file``).
    """
    kind = spec.kind
    if kind in ("csv", "tsv"):
        return _parse_csv(spec, data)
    if kind == "json":
        return _parse_json(data)
    if kind == "jsonl":
        return _rows_to_table(_jsonl_rows(data.splitlines()))
    if kind == "npy":
        return _parse_npy(data, name)
    if kind == "npz":
        return _parse_npz(data, max_npz_bytes)
    if kind == "keyvalue":
        return _parse_keyvalue(spec, data)
    if kind == "regex":
        return _parse_regex(spec, data)
    if kind == "python":
        return _parse_python(spec, data, name)
    raise ParseError(f"unknown output kind {kind!r}")


# -- streaming parsers ----------------------------------------------------------------


def _conform(batch: pa.RecordBatch, schema: pa.Schema, where: str) -> pa.RecordBatch:
    """Cast a later batch to the first batch's schema, or explain why it cannot be."""
    if batch.schema.equals(schema):
        return batch
    extra = set(batch.schema.names) - set(schema.names)
    if extra:
        raise ParseError(f"{where}: new columns {sorted(extra)} after the first batch")
    arrays = []
    for f in schema:
        if f.name not in batch.schema.names:
            arrays.append(pa.nulls(batch.num_rows, f.type))
            continue
        col = batch.column(f.name)
        try:
            arrays.append(col.cast(f.type) if col.type != f.type else col)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ParseError(
                f"{where}: column {f.name!r} changed type from {f.type} to {col.type}"
            ) from exc
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _line_blocks(
    stream: IO[bytes], block_size: int, max_line: int, first_size: int = 0
) -> Iterator[bytes]:
    """Read a stream in blocks of about ``block_size`` bytes that end at a line break.

    The first block is at least ``first_size`` bytes (when the stream has them).
    """
    pending = b""
    size = max(block_size, first_size)
    while True:
        data = stream.read(size)
        size = block_size
        if not data:
            if pending:
                yield pending
            return
        data = pending + data if pending else data
        cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        if cut == 0:
            if len(data) > max_line:
                raise ParseError(f"a line is longer than {max_line} bytes")
            pending = data
            continue
        pending = data[cut:]
        yield data[:cut]


def _read_ahead(blocks: Iterator[bytes], depth: int = 2) -> Iterator[bytes]:
    """Yield the items of ``blocks``, produced up to ``depth`` ahead on a helper thread.

    Reading (decompressing) the next block then overlaps with parsing this one.
    Unlike Arrow's read-ahead, the helper thread is stopped and joined when this
    generator ends or is closed, so the source is never touched afterwards.
    """
    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for block in blocks:
                while not stop.is_set():
                    try:
                        slots.put(("block", block), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(("end", None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            slots.put(("error", exc))

    worker = threading.Thread(target=produce, name="csv-read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            kind, item = slots.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                slots.get(timeout=0.05)
        worker.join()


_ARROW_ROW = re.compile(r"Row #(\d+)")


def _where(message: str, block: bytes, first_line: int) -> str:
    """Say where in the file an Arrow error in a block starting at ``first_line`` is.

    Arrow numbers the rows of a block from 1 (the header, in the first block)
    and skips blank lines, so the line is exact only in a block without them.
    """
    row = _ARROW_ROW.search(message)
    if row is None or b"\n\n" in block or b"\n\r\n" in block or b"\r\r" in block:
        return f" (in the block from line {first_line})"
    return f" at line {first_line + int(row.group(1)) - 1}"


def _csv_stream_batches(
    spec: OutputLike, stream: IO[bytes], *, block_size: int, max_line: int
) -> Iterator[pa.RecordBatch]:
    """Parse csv/tsv from a stream block by block; Arrow never touches the stream.

    Arrow's own streaming reader reads its source ahead on a background I/O
    thread. With a Python stream (a tar member) that thread would go on reading
    the archive after the reader is abandoned, and closing a reader before its
    end can crash the process (apache/arrow#43604). Here the stream is read by
    :func:`_read_ahead`, whose thread is joined before this generator ends, and
    Arrow only ever sees whole in-memory blocks cut at line breaks, which is
    also where its own chunker cuts when values hold no line breaks (the
    ParseOptions default).
    The header and the column types come from the first block, at least
    :data:`STREAM_TYPE_BYTES` long whatever ``block_size`` is; a later value
    that does not fit is a ParseError.
    """
    parse = _csv_options(spec)
    names: list[str] | None = None
    convert = pa_csv.ConvertOptions()
    line = 1
    blocks = _line_blocks(stream, block_size, max_line, first_size=STREAM_TYPE_BYTES)
    for block in _read_ahead(blocks):
        read = pa_csv.ReadOptions(block_size=len(block) + 1, use_threads=False, column_names=names)
        try:
            reader = pa_csv.open_csv(
                pa.BufferReader(_arrow_owned(block)),
                read_options=read,
                parse_options=parse,
                convert_options=convert,
            )
            try:
                table = reader.read_all()
            finally:
                reader.close()
        except pa.ArrowInvalid as exc:
            if names is None and "Empty CSV file" in str(exc):
                line += block.count(b"\n")
                continue  # blank lines only, so far
            raise ParseError(f"invalid {spec.kind}{_where(str(exc), block, line)}: {exc}") from exc
        line += block.count(b"\n")
        if names is None:
            _check_names(table.schema)
            names = table.schema.names
            convert = pa_csv.ConvertOptions(column_types={f.name: f.type for f in table.schema})
        yield from table.to_batches()


def iter_batches(
    spec: OutputLike,
    stream: IO[bytes],
    name: str,
    *,
    block_size: int = 4 * MiB,
    batch_rows: int = 65_536,
    max_line: int = 16 * MiB,
) -> Iterator[pa.RecordBatch]:
    """Parse a csv, tsv or jsonl member from a binary stream, yielding record batches.

    Memory is bounded by ``block_size`` (csv) or ``batch_rows`` lines of at most
    ``max_line`` bytes (jsonl), whatever the member's size. Column types are
    those of the first block; a later value that does not fit raises ParseError.
    """
    if spec.kind in ("csv", "tsv"):
        yield from _csv_stream_batches(spec, stream, block_size=block_size, max_line=max_line)
        return
    if spec.kind != "jsonl":
        raise ParseError(f"kind {spec.kind!r} cannot be parsed as a stream")
    schema: pa.Schema | None = None
    line_no = 1
    while True:
        lines: list[bytes] = []
        for _ in range(batch_rows):
            line = stream.readline(max_line + 1)
            if not line:
                break
            if len(line) > max_line:
                raise ParseError(f"line {line_no + len(lines)}: longer than {max_line} bytes")
            lines.append(line)
        if not lines:
            return
        rows = _jsonl_rows(lines, line_no)
        line_no += len(lines)
        if not rows:
            continue
        table = _rows_to_table(rows)
        for batch in table.to_batches():
            if schema is None:
                schema = batch.schema
            yield _conform(batch, schema, f"line {line_no - len(lines)}")


# -- combining the outputs of one point -----------------------------------------------


def is_glob(pattern: str) -> bool:
    """Return whether an output's ``file`` is a glob (has ``*``, ``?`` or ``[``)."""
    return any(c in pattern for c in "*?[")


def _decorate(spec: OutputLike, table: pa.Table | pa.RecordBatch, member: str) -> Any:
    if is_glob(spec.file):
        table = table.append_column(
            OUTPUT_FILE_COLUMN, pa.array([member] * table.num_rows, pa.string())
        )
    if spec.prefix:
        table = table.rename_columns([f"{spec.prefix}.{c}" for c in table.schema.names])
    return table


def _parse_matched(spec: OutputLike, members: Mapping[str, bytes], names: list[str]) -> pa.Table:
    parts = [_decorate(spec, parse_output(spec, members[n], n), n) for n in names]
    if len(parts) == 1:
        return parts[0]
    try:
        return pa.concat_tables(parts, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ParseError(f"matched files disagree on column types: {exc}") from exc


def _combine(
    tables: list[tuple[str, pa.Table]], streamed: tuple[str, list[str]] | None = None
) -> tuple[pa.Table, list[OutputProblem]]:
    """Check the combination rule and return the one-row columns merged (or the whole rows)."""
    problems: list[OutputProblem] = []
    many = [(f, t.num_rows) for f, t in tables if t.num_rows > 1]
    if streamed is not None:
        many.append((streamed[0], -1))
    if len(many) > 1:
        detail = ", ".join(f"{f} ({'streamed' if n < 0 else n} rows)" for f, n in many)
        for f, _ in many:
            problems.append(
                OutputProblem(
                    f,
                    "row_conflict",
                    f"several outputs give several rows: {detail}; only one output may give "
                    "several rows per point: write them to one file, or harvest them separately",
                )
            )
    owner: dict[str, str] = {}
    columns = [(f, c) for f, t in tables for c in t.column_names]
    if streamed is not None:
        columns += [(streamed[0], c) for c in streamed[1]]
    for f, c in columns:
        if c in owner and owner[c] != f:
            problems.append(
                OutputProblem(
                    f,
                    "column_collision",
                    f"column {c!r} comes from both {owner[c]} and {f}; set a prefix on one of them",
                )
            )
        owner.setdefault(c, f)
    if problems:
        return _empty(0), problems
    rows = next((t.num_rows for _, t in tables if t.num_rows != 1), 1)
    base = next((t for _, t in tables if t.num_rows != 1), _empty(rows))
    result = base
    for _, t in tables:
        if t is base:
            continue
        for c in t.column_names:
            col = t.column(c)
            result = result.append_column(
                c, pa.repeat(col[0], rows) if rows else pa.array([], type=col.type)
            )
    return result, problems


def _match(spec: OutputLike, names: Iterable[str]) -> list[str]:
    return sorted(n for n in names if fnmatchcase(n, spec.file))


def assemble_rows(
    outputs: Iterable[OutputLike], members: Mapping[str, bytes]
) -> tuple[pa.Table, list[OutputProblem]]:
    """Parse every declared output from ``members`` (name → bytes) into the point's rows.

    Rule: the point's rows are the cross product of its outputs' rows, which is
    allowed only when at most one output gives more than one row: one-row outputs
    are broadcast onto that output's rows (an output with no rows gives the point
    no rows). A missing required output, a parse error, several outputs with
    several rows, or a column name given by two outputs is a problem; the table
    is then empty, so a point is stored whole or not at all. A missing optional
    output contributes nothing. With no output at all the point has one row
    without columns.
    """
    tables: list[tuple[str, pa.Table]] = []
    problems: list[OutputProblem] = []
    for spec in outputs:
        names = _match(spec, members)
        if not names:
            if spec.required:
                problems.append(
                    OutputProblem(spec.file, "missing", f"no member matches {spec.file!r}")
                )
            continue
        try:
            tables.append((spec.file, _parse_matched(spec, members, names)))
        except ParseError as exc:
            problems.append(OutputProblem(spec.file, "parse_error", exc.reason))
    if problems:
        return _empty(0), problems
    return _combine(tables)


class PointRows:
    """The rows of one point, read in a single pass over its archive's members.

    Iterate :attr:`batches` once, to the end: it yields the point's rows as
    pieces (Tables or RecordBatches) while it reads the members, so a streamed
    output's rows come out before the archive has been read whole. Only once
    it is exhausted are :attr:`problems` and :attr:`late` final:

    * ``problems`` not empty: the point is spoiled; discard every piece taken;
    * ``late`` not None: the pieces were given while :attr:`incomplete` was
      true, before some one-row outputs had been read (they sit after the
      large table in the archive); pass every piece through :meth:`finish`.

    The iteration may also raise ParseError part-way (a streamed output that
    does not parse), or whatever the member iterator raises (a rejected
    archive); whatever was taken must then be discarded.
    """

    def __init__(
        self,
        outputs: list[OutputLike],
        members: Iterable[MemberLike],
        *,
        stream_above: int,
        max_in_memory: int,
        block_size: int,
    ) -> None:
        self.problems: list[OutputProblem] = []
        self.late: pa.Table | None = None
        self.incomplete = False
        self._outputs = outputs
        self._stream_above = stream_above
        self._max_in_memory = max_in_memory
        self._block_size = block_size
        self._streamed: OutputLike | None = None
        self._constants: pa.Table | None = None
        self._schema: pa.Schema | None = None
        self.batches: Iterator[Any] = self._read(members)

    def finish(self, piece: Any) -> Any:
        """Return a piece given while :attr:`incomplete`, with the late one-row columns added."""
        late = self.late
        if late is None:
            return piece
        if late.num_rows == 0:
            return piece.slice(0, 0)  # an output with no rows: the point has none
        return _append_constants(piece, late)

    def _read(self, members: Iterable[MemberLike]) -> Iterator[Any]:
        small: dict[str, bytes] = {}
        problems = self.problems
        for member in members:
            specs = [s for s in self._outputs if fnmatchcase(member.name, s.file)]
            if not specs:
                continue
            big = member.size > self._stream_above
            if big and all(s.kind in STREAMABLE_KINDS for s in specs):
                streamed = self._streamed
                files = sorted({s.file for s in specs} | ({streamed.file} if streamed else set()))
                if len(files) > 1 and not problems:
                    problems += [
                        OutputProblem(
                            f,
                            "row_conflict",
                            f"outputs {files} are all large tables; "
                            "only one output may give several rows per point",
                        )
                        for f in files
                    ]
                if problems:
                    continue  # the rest is only validated (the iterator reads it)
                if streamed is None:
                    streamed = self._streamed = specs[0]
                    if not self._start_stream(small):
                        continue
                    if self._gives_rows():
                        for held in _match(streamed, small):
                            table = parse_output(streamed, small[held], held)
                            yield from self._emit(_decorate(streamed, table, held), held)
                if not self._gives_rows():
                    continue  # another output has no rows: the point has none
                with member.stream(self._block_size) as f:
                    for batch in iter_batches(
                        streamed, f, member.name, block_size=self._block_size
                    ):
                        yield from self._emit(_decorate(streamed, batch, member.name), member.name)
                continue
            if member.size > self._max_in_memory:
                problems += [
                    OutputProblem(
                        s.file,
                        "too_large",
                        f"{member.name} has {member.size} bytes; kind {s.kind!r} is parsed in "
                        f"memory, up to {self._max_in_memory} bytes",
                    )
                    for s in specs
                ]
                continue
            if problems:
                continue
            data = member.read()
            streamed = self._streamed
            if streamed is not None and any(s is streamed for s in specs):
                # A small member of the streamed output: its rows join the stream.
                if self._gives_rows():
                    table = parse_output(streamed, data, member.name)
                    yield from self._emit(_decorate(streamed, table, member.name), member.name)
                if all(s is streamed for s in specs):
                    continue
            small[member.name] = data
        if problems:
            return
        streamed = self._streamed
        if streamed is None:
            table, found = assemble_rows(self._outputs, small)
            problems += found
            if not found and table.num_rows:
                yield table
            return
        if self.incomplete:
            self._finish_late(streamed, small)

    def _gives_rows(self) -> bool:
        return self._constants is None or self._constants.num_rows > 0

    def _others(self, streamed: OutputLike) -> list[OutputLike]:
        return [s for s in self._outputs if s.file != streamed.file]

    def _start_stream(self, small: Mapping[str, bytes]) -> bool:
        """Settle the one-row columns if every other output is already read; False on problems."""
        streamed = self._streamed
        assert streamed is not None
        others = self._others(streamed)
        if not all(not is_glob(s.file) and s.file in small for s in others):
            # Another output may still come (a glob, an output not read yet): its
            # columns are added at the end (:attr:`late`).
            self.incomplete = True
            return True
        constants = self._one_row(streamed, others, small)
        if constants is None:
            return False
        self._constants = constants
        return True

    def _one_row(
        self, streamed: OutputLike, others: list[OutputLike], small: Mapping[str, bytes]
    ) -> pa.Table | None:
        """Return the one-row (or no-row) table of the other outputs, or None with problems."""
        table, found = assemble_rows(others, small)
        if found:
            self.problems += found
            return None
        if table.num_rows > 1:
            many = [s.file for s in others if s.file in _multi_row_files(others, small)]
            detail = ", ".join([*many, f"{streamed.file} (streamed)"])
            self.problems += [
                OutputProblem(
                    f,
                    "row_conflict",
                    f"several outputs give several rows: {detail}; only one output may give "
                    "several rows per point: write them to one file, or harvest them separately",
                )
                for f in [*many, streamed.file]
            ]
            return None
        return table

    def _finish_late(self, streamed: OutputLike, small: Mapping[str, bytes]) -> None:
        late = self._one_row(streamed, self._others(streamed), small)
        if late is None:
            return
        if self._schema is not None:
            _check_clash(self._schema, late, streamed)
        self.late = late

    def _emit(self, piece: Any, member: str) -> Iterator[Any]:
        streamed = self._streamed
        assert streamed is not None
        constants = self._constants
        if self._schema is None and constants is not None:
            _check_clash(piece.schema, constants, streamed)
        if constants is not None:
            piece = _append_constants(piece, constants)
        tables = isinstance(piece, pa.Table)
        for batch in piece.combine_chunks().to_batches() if tables else [piece]:
            if self._schema is None:
                self._schema = batch.schema
            yield _conform(batch, self._schema, member)


def _append_constants(piece: Any, constants: pa.Table) -> Any:
    """Append the columns of a one-row table to every row of a Table or RecordBatch."""
    n = piece.num_rows
    for c in constants.column_names:
        col = constants.column(c)
        piece = piece.append_column(c, pa.repeat(col[0], n) if n else pa.array([], type=col.type))
    return piece


def _check_clash(schema: pa.Schema, constants: pa.Table, streamed: OutputLike) -> None:
    clash = set(schema.names) & set(constants.column_names)
    if clash:
        raise ParseError(
            f"column {sorted(clash)[0]!r} of {streamed.file} is also given by another "
            "output; set a prefix on one of them"
        )


def assemble_stream(
    outputs: list[OutputLike],
    members: Iterable[MemberLike],
    *,
    stream_above: int = 32 * MiB,
    max_in_memory: int = 512 * MiB,
    block_size: int = 4 * MiB,
) -> PointRows:
    """Like :func:`assemble_rows`, in one pass over ``members``; large tables are streamed.

    ``members`` is read once, in archive order (for example
    ``ResultArchive.members()``): csv/tsv/jsonl members above ``stream_above``
    are parsed as streams and their rows given as they are read, in blocks of
    ``block_size``; the other members are read into memory. The streamed
    output counts as the one giving several rows; the columns of the one-row
    outputs are added to its rows at once when those outputs came first in the
    archive, else at the end (:attr:`PointRows.late`). Members of other kinds
    above ``max_in_memory`` are a ``too_large`` problem. Nothing is checked
    until the returned :attr:`PointRows.batches` is iterated.
    """
    return PointRows(
        list(outputs),
        members,
        stream_above=stream_above,
        max_in_memory=max_in_memory,
        block_size=block_size,
    )


def _multi_row_files(outputs: list[OutputLike], members: Mapping[str, bytes]) -> set[str]:
    out = set()
    for spec in outputs:
        names = _match(spec, members)
        if names and _parse_matched(spec, members, names).num_rows > 1:
            out.add(spec.file)
    return out
