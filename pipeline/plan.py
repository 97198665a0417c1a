"""Planning: turn a sweep spec into workunits (point ids, names, commands, argv), with no I/O.

Identity. A point's id is the first 16 hex digits of the SHA-256 of the canonical
JSON of its parameters (``canonical_json``): keys sorted, no spaces, UTF-8, values
null/bool/int/float/str only (numpy scalars converted), floats in their shortest
round-trip form with ``-0.0`` written ``0.0``, NaN and infinities refused. ``1``
and ``1.0`` are different points: they render differently on a command line.

Names. A workunit is named ``<sweep>_v<version>_<point id>_a<attempt>``. Sweep names
contain no ``_``, so ``sweep_name_prefix(sweep, version)`` (``"<sweep>_v<version>_"``)
selects exactly one sweep version's workunits and is never a prefix of another
sweep's names. ``parse_wu_name`` reads a name back.

Rendering. ``{param}`` placeholders are filled with: strings as they are; ints in
decimal; floats as ``repr`` (shortest round trip, e.g. ``0.1``, ``1e-05``); bools as
``true``/``false`` and None as ``null`` (their JSON spelling, as in
``shared/params.json``). ``{{`` and ``}}`` are literal braces. No attribute or
index access, conversions or format specs: a placeholder is a bare name.

Quoting. The argv lists built here are never joined into a shell string by this
module. boinc2docker escapes every command argument with bash's ``printf %q`` and
pastes it into a ``/bin/sh`` script; in the C locale (the one a container runs in
unless told otherwise) everything outside printable ASCII comes out as
``$'...'``, which ``/bin/sh`` (dash) does not understand. So a command-line value
must consist of printable ASCII (U+0020 to U+007E); anything else (newlines, tabs,
other control characters, non-ASCII text) is refused with a ``PlanError`` that
points to ``params_file: true``, which carries any value. NUL is refused everywhere.

Streaming. ``plan`` returns a lazy ``PlanStream``: a million-point grid is planned
in chunks of ``PLAN_CHUNK`` points, column by column, and each workunit is made when
it is asked for (``PlanStream.jsonl_chunks`` gives the same workunits as JSON lines).
For grids, every text derived from a value (its canonical JSON, the command
arguments it fills) is computed once per distinct value. Duplicate points are
skipped (counted, with examples) and hash-prefix collisions between distinct points
are refused; that check keeps 16 bytes per distinct point in sorted numpy arrays
(plus a fixed 2 MiB bitmap), and nothing else grows with the sweep.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from itertools import compress, islice, repeat
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pipeline.errors import PlanError

if TYPE_CHECKING:
    from pipeline.space import Columns
    from pipeline.spec import SweepSpec

__all__ = [
    "CREATE_WORK_SCRIPT",
    "MODES",
    "POINT_ID_HEX",
    "CompiledTemplate",
    "IdTracker",
    "PlanStream",
    "PlannedWorkunit",
    "WorkunitName",
    "canonical_json",
    "command_value_problem",
    "compile_template",
    "create_work_argv",
    "format_value",
    "job_options",
    "parse_wu_name",
    "plan",
    "point_id",
    "render_command",
    "supported_modes",
    "sweep_name_prefix",
    "wu_name",
]

CREATE_WORK_SCRIPT = "bin/boinc2docker_create_work.py"
"""argv[0] of the creation command, relative to the BOINC project root."""

POINT_ID_HEX = 16
"""Hex digits of the SHA-256 of a point's canonical JSON that make its id."""

MODES = ("script", "batch", "fast")
"""Submission modes; only ``batch`` and ``fast`` can carry per-job files and prerun/postrun."""

PLAN_CHUNK = 4096
"""Points are generated, hashed and checked for duplicates this many at a time."""

_NAME_RE = re.compile(r"^([a-z0-9-]{1,64})_v([1-9][0-9]*)_([0-9a-f]{16})_a([1-9][0-9]*)$")
_SCALARS = (str, int, float, bool, type(None))


# --------------------------------------------------------------------------- canonical JSON


def _plain(value: Any, key: str) -> Any:
    """Return ``value`` as a plain JSON scalar, or raise PlanError saying why it cannot be one."""
    if isinstance(value, np.generic):
        value = value.item()
    t = type(value)
    if t is float:
        if not math.isfinite(value):
            raise PlanError(f"parameter {key!r}: {value!r} is not allowed (NaN and infinities)")
        return 0.0 if value == 0.0 else value
    if t is str:
        if "\x00" in value:
            raise PlanError(f"parameter {key!r}: NUL characters are not allowed")
        return value
    if t in (int, bool) or value is None:
        return value
    if isinstance(value, bool | int | float | str):  # subclasses: reduce to the base type
        for base in (bool, int, float, str):
            if isinstance(value, base):
                return _plain(base(value), key)
    raise PlanError(
        f"parameter {key!r}: {type(value).__name__} value {value!r} is not allowed; "
        "use null, bool, int, float or str"
    )


_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
_dumps = _ENCODER.encode


def canonical_json(params: Mapping[str, Any]) -> str:
    """Return the canonical JSON text of a point's parameters (the input of its id)."""
    clean = {}
    for key, value in params.items():
        if not isinstance(key, str):
            raise PlanError(f"parameter names must be strings, got {key!r}")
        clean[key] = _plain(value, key)
    try:
        text = _dumps(clean)
        text.encode("utf-8")
    except (ValueError, UnicodeEncodeError) as exc:
        raise PlanError(f"parameters cannot be written as canonical JSON: {exc}") from exc
    return text


def point_id(params: Mapping[str, Any]) -> str:
    """Return the stable id of a point: 16 hex digits of SHA-256 of its canonical JSON."""
    digest = hashlib.sha256(canonical_json(params).encode("utf-8")).hexdigest()
    return digest[:POINT_ID_HEX]


# --------------------------------------------------------------------------- names


class WorkunitName(NamedTuple):
    """The parts of a workunit name ``<sweep>_v<version>_<point id>_a<attempt>``."""

    sweep: str
    version: int
    point_id: str
    attempt: int


def sweep_name_prefix(sweep: str, version: int) -> str:
    """Return ``"<sweep>_v<version>_"``, the prefix shared by exactly one sweep version's names."""
    return f"{sweep}_v{version}_"


def wu_name(sweep: str, version: int, point: str, attempt: int) -> str:
    """Return the workunit name of one attempt at one point; checks every part."""
    name = f"{sweep}_v{version}_{point}_a{attempt}"
    if _NAME_RE.match(name) is None:
        raise ValueError(
            f"cannot build a workunit name from sweep={sweep!r} version={version!r} "
            f"point={point!r} attempt={attempt!r}: sweep must be 1-64 of [a-z0-9-], "
            "version and attempt positive integers, point 16 lower-case hex digits"
        )
    return name


def parse_wu_name(name: str) -> WorkunitName:
    """Split a workunit name made by ``wu_name``; raise ValueError for any other name."""
    m = _NAME_RE.match(name)
    if m is None:
        raise ValueError(f"{name!r} is not a boinc-pipeline workunit name")
    return WorkunitName(m.group(1), int(m.group(2)), m.group(3), int(m.group(4)))


# --------------------------------------------------------------------------- templates


def format_value(value: Any) -> str:
    """Return the text a parameter value becomes inside a command or input file."""
    t = type(value)
    if t is str:
        return str(value)
    if t is float:
        return repr(value)
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return str(value)
    if value is None:
        return "null"
    return format_value(_plain(value, "?"))


def command_value_problem(text: str) -> str | None:
    """Say why ``text`` cannot be a command-line argument after boinc2docker's quoting, or None."""
    if text.isascii() and text.isprintable():
        return None
    bad = next(c for c in text if not (c.isascii() and c.isprintable()))
    if bad == "\x00":
        return "contains a NUL character, which no argument or file can carry"
    return (
        f"contains {bad!r} (U+{ord(bad):04X}); boinc2docker quotes command arguments with "
        "bash's printf %q for /bin/sh, which mangles anything outside printable ASCII. "
        "Pass such values in the per-job parameters file instead: set `params_file: true` "
        "and read shared/params.json in the job"
    )


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    """A ``{param}`` template parsed once: literal pieces and placeholder names in order."""

    source: str
    parts: tuple[tuple[str, str | None], ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The placeholder names, in order of appearance."""
        return tuple(n for _, n in self.parts if n is not None)

    @property
    def literal(self) -> str:
        """The template's literal text (placeholders left out, ``{{`` unescaped)."""
        return "".join(lit for lit, _ in self.parts)

    def render(self, params: Mapping[str, Any]) -> str:
        """Fill the placeholders from ``params`` (KeyError for a missing name)."""
        parts = self.parts
        if len(parts) == 1:
            lit, name = parts[0]
            return lit if name is None else lit + format_value(params[name])
        return "".join(lit if n is None else lit + format_value(params[n]) for lit, n in parts)


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def compile_template(source: str) -> CompiledTemplate:
    """Parse a ``{param}`` template; raise ValueError for anything but bare names and braces."""
    try:
        pieces = list(string.Formatter().parse(source))
    except ValueError as exc:
        raise ValueError(f"bad template {source!r}: {exc}; write {{{{ and }}}} for braces") from exc
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in pieces:
        if name is None:
            parts.append((literal, None))
            continue
        if conversion is not None or spec:
            raise ValueError(
                f"placeholder {{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} in {source!r}: conversions and format specs "
                "are not allowed; write a bare {name}"
            )
        if not _IDENT.match(name):
            raise ValueError(
                f"placeholder {{{name}}} in {source!r}: only bare parameter names are allowed "
                "(no attribute or index access, no positional fields)"
            )
        parts.append((literal, name))
    if not parts:
        parts.append(("", None))
    return CompiledTemplate(source, tuple(parts))


def render_command(
    templates: Iterable[CompiledTemplate | str], params: Mapping[str, Any]
) -> list[str]:
    """Render command-argument templates for one point; refuse values the command cannot carry."""
    out = []
    for t in templates:
        tpl = t if isinstance(t, CompiledTemplate) else compile_template(t)
        for name in tpl.names:
            if name not in params:
                raise PlanError(f"unknown placeholder {{{name}}} in {tpl.source!r}")
        arg = tpl.render(params)
        if not (arg.isascii() and arg.isprintable()):
            _raise_command_value(tpl, params, arg)
        out.append(arg)
    return out


def _raise_command_value(tpl: CompiledTemplate, params: Mapping[str, Any], arg: str) -> None:
    for name in tpl.names:
        problem = command_value_problem(format_value(params[name]))
        if problem:
            raise PlanError(f"parameter {name!r} = {params[name]!r} {problem}")
    raise PlanError(f"command argument {arg!r} {command_value_problem(arg)}")


# --------------------------------------------------------------------------- modes and argv


def supported_modes(spec: SweepSpec) -> set[str]:
    """Return the submission modes that can carry every feature the spec uses."""
    modes = set(MODES)
    if spec.inputs or spec.params_file or spec.prerun or spec.postrun:
        modes.discard("script")
    return modes


def _num(x: float) -> str:
    return repr(float(x))


def job_options(spec: SweepSpec) -> list[str]:
    """Return the job's ``create_work`` options as argv: app, quorum, limits, bounds, priority.

    The memory and disk bounds are ``int()``-ed as ``boinc2docker_create_work.py``
    does; the stock script and ``bin/create_work --stdin`` take the same options.
    """
    j = spec.job
    return [
        "--appname",
        spec.app,
        "--min_quorum",
        str(j.min_quorum),
        "--target_nresults",
        str(j.target_nresults),
        "--max_error_results",
        str(j.max_error_results),
        "--max_total_results",
        str(j.max_total_results),
        "--max_success_results",
        str(j.max_success_results),
        "--rsc_fpops_est",
        _num(j.rsc_fpops_est),
        "--rsc_fpops_bound",
        _num(j.rsc_fpops_bound),
        "--rsc_memory_bound",
        str(int(j.rsc_memory_bound)),
        "--rsc_disk_bound",
        str(int(j.rsc_disk_bound)),
        "--delay_bound",
        str(j.delay_bound),
        "--priority",
        str(j.priority),
    ]


def _argv_options(spec: SweepSpec) -> list[str]:
    opts = [CREATE_WORK_SCRIPT, *job_options(spec)]
    if spec.entrypoint:
        opts += ["--entrypoint", spec.entrypoint]
    return opts


def create_work_argv(spec: SweepSpec, name: str, command: list[str]) -> list[str]:
    """Return the full ``boinc2docker_create_work.py`` argv: options, IMAGE, then the command."""
    return [*_argv_options(spec), "--wu_name", name, spec.image, *command]


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class PlannedWorkunit:
    """One workunit to create: its name, point, rendered command, argv and per-job files."""

    wu_name: str
    sweep: str
    version: int
    point_id: str
    attempt: int
    params: dict[str, Any]
    command: list[str]
    argv: list[str]
    input_files: tuple[tuple[str, bytes], ...] = ()
    prerun: tuple[str, ...] = ()
    postrun: tuple[str, ...] = ()


class IdTracker:
    """Remembers point ids (16 bytes each) to drop duplicates and refuse hash-prefix collisions.

    Ids live in sorted numpy runs, merged ``MERGE_FAN`` at a time, so checking a chunk
    of ``k`` ids against ``n`` seen ones costs O(k log n) and memory is 16 bytes per
    distinct point. ``key`` is the 64-bit point id; ``check`` the next 64 bits of the
    digest: same key and same check is the same point, same key and a different
    check are two distinct points whose ids collide. A fixed bitmap of the keys' top
    ``FILTER_BITS`` bits (2 MiB) lets most new keys skip the search in the runs.
    """

    FILTER_BITS = 24
    MERGE_FAN = 8

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []
        self._levels: list[int] = []
        self._filter = np.zeros(1 << (self.FILTER_BITS - 3), dtype=np.uint8)
        self._shift = np.uint64(64 - self.FILTER_BITS)

    def __len__(self) -> int:
        return sum(len(k) for k, _ in self._runs)

    def add(self, keys: np.ndarray, checks: np.ndarray) -> np.ndarray:
        """Record a chunk; return a bool mask of the entries not seen before (first occurrences).

        Raises PlanError, naming the chunk index, when a key was seen with a different check.
        """
        n = len(keys)
        fresh = np.ones(n, dtype=bool)
        if n == 0:
            return fresh
        order = np.argsort(keys, kind="stable")
        skeys, schecks = keys[order], checks[order]
        keep = np.ones(n, dtype=bool)  # in sorted order: first occurrence, not seen before
        repeat = skeys[1:] == skeys[:-1]
        if repeat.any():
            differ = repeat & (schecks[1:] != schecks[:-1])
            if differ.any():
                bad = int(order[np.flatnonzero(differ)[0] + 1])
                raise _collision(bad, int(keys[bad]))
            keep[1:] &= ~repeat
        top = skeys >> self._shift
        byte, bit = (top >> np.uint64(3)).astype(np.intp), (top & np.uint64(7)).astype(np.uint8)
        maybe = np.flatnonzero((self._filter[byte] >> bit) & 1)  # the others were never seen
        if len(maybe) and self._runs:
            qkeys, qchecks = skeys[maybe], schecks[maybe]
            for rkeys, rchecks in self._runs:
                pos = np.searchsorted(
                    rkeys, qkeys
                )  # sorted queries: each search starts near the last
                np.minimum(pos, len(rkeys) - 1, out=pos)
                hit = rkeys[pos] == qkeys
                if hit.any():
                    differ = hit & (rchecks[pos] != qchecks)
                    if differ.any():
                        bad = int(order[maybe[np.flatnonzero(differ)[0]]])
                        raise _collision(bad, int(keys[bad]))
                    keep[maybe[hit]] = False
        fresh[order] = keep
        if keep.any():
            kbyte, kbit = byte[keep], np.left_shift(np.uint8(1), bit[keep])
            starts = np.flatnonzero(np.r_[True, kbyte[1:] != kbyte[:-1]])  # kbyte is sorted
            self._filter[kbyte[starts]] |= np.bitwise_or.reduceat(kbit, starts)
            self._runs.append((skeys[keep], schecks[keep]))
            self._levels.append(0)
            # Tiered merging: MERGE_FAN runs of one level become one run of the next, so
            # each id is merged about log_MERGE_FAN(n / chunk) times.
            fan = self.MERGE_FAN
            while len(self._levels) >= fan and len(set(self._levels[-fan:])) == 1:
                parts = self._runs[-fan:]
                level = self._levels[-1] + 1
                del self._runs[-fan:], self._levels[-fan:]
                self._runs.append(_merge(parts))
                self._levels.append(level)
        return fresh


def _merge(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Merge sorted runs of keys (with their checks) into one sorted run."""
    keys = np.concatenate([k for k, _ in parts])
    checks = np.concatenate([c for _, c in parts])
    order = np.argsort(keys, kind="stable")  # merges the presorted runs
    return keys[order], checks[order]


def _collision(index: int, key: int) -> PlanError:
    return PlanError(
        f"two distinct points share the point id {key:016x} (a SHA-256 prefix collision, "
        f"found at chunk entry {index}); rename a parameter or change a value slightly"
    )


_first_hex = operator.itemgetter(slice(0, POINT_ID_HEX))
_hexdigest = operator.methodcaller("hexdigest")


@dataclass
class _Chunk:
    """Internal: the fresh points of one chunk, column by column.

    ``args`` holds one entry per command template: a column of rendered arguments,
    or one text shared by every point. ``params_json`` and ``args_json`` (JSON
    text of the params and of each argument) are filled for jsonl output only.
    """

    params: list[dict[str, Any]]
    pids: list[str]
    names: list[str]
    args: list[list[str] | str]
    files: list[tuple[tuple[str, bytes], ...]] | None
    params_json: list[str] | None = None
    args_json: list[Any] | None = None


def _positional(tpl: CompiledTemplate) -> tuple[str, tuple[str, ...]]:
    """Rewrite a template as a ``str.format`` source with positional fields, and their names."""
    order = tuple(dict.fromkeys(tpl.names))
    src = "".join(
        lit.replace("{", "{{").replace("}", "}}") + ("" if n is None else f"{{{order.index(n)}}}")
        for lit, n in tpl.parts
    )
    return src, order


def _json_text(value: Any, key: str) -> str:
    try:
        return _JSON_FORMAT[type(value)](value)
    except (ValueError, PlanError):
        canonical_json({key: value})  # raises a PlanError naming the value
        raise


def _json_texts(values: list[Any], key: str) -> list[str]:
    """Return the canonical JSON text of each value (PlanError for a value JSON cannot carry)."""
    kinds = set(map(type, values))
    if kinds == {float}:
        out = list(map(float.__repr__, values))
        joined = "," + ",".join(out) + ","
        if "n" not in joined and ",-0.0," not in joined:  # nan, inf, -0.0 take the slow path
            return out
    elif kinds == {int}:
        return list(map(int.__repr__, values))
    elif kinds == {str} and "\x00" not in "".join(values):
        return list(map(encode_basestring, values))
    return [_json_text(v, key) for v in values]


def _cmd_text(value: Any) -> str | None:
    try:
        return _CMD_FORMAT[type(value)](value)
    except _NotOnCommandLine:
        return None


def _cmd_texts(values: list[Any]) -> list[str | None]:
    """Return each value's command-line text, or None where a command line cannot carry it."""
    kinds = set(map(type, values))
    if kinds == {float}:
        return list(map(float.__repr__, values))
    if kinds == {int}:
        return list(map(int.__repr__, values))
    if kinds == {str}:
        joined = "".join(values)
        if joined.isascii() and joined.isprintable():
            return list(values)
    return [_cmd_text(v) for v in values]


def _fill(src: str, texts: list[list[str | None]]) -> list[str | None]:
    """Fill a positional template from text columns; None wherever one of the texts is None."""
    if src == "{0}":
        return list(texts[0])
    if not any(None in t for t in texts):
        return list(map(src.format, *texts))
    return [None if None in row else src.format(*row) for row in zip(*texts, strict=True)]


def _encoded(texts: list[str | None]) -> list[str | None]:
    return [None if t is None else encode_basestring(t) for t in texts]


def _first_none(col: list[Any]) -> int | None:
    return col.index(None) if None in col else None


@dataclass
class PlanStream:
    """A lazy stream of PlannedWorkunits; after (partial) iteration it reports duplicates.

    ``points`` counts the points the space produced so far, ``duplicates`` how many
    of them repeated an earlier point (skipped), ``duplicate_examples`` up to five
    of their parameter dicts. ``jsonl_chunks`` streams the same workunits as JSON
    lines instead (use one or the other on a stream).
    """

    spec: SweepSpec
    attempt: int = 1
    points: int = 0
    duplicates: int = 0
    duplicate_examples: list[dict[str, Any]] = field(default_factory=list)
    _iter: Iterator[PlannedWorkunit] | None = None

    def __iter__(self) -> Iterator[PlannedWorkunit]:
        if self._iter is None:
            self._iter = self._generate()
        return self._iter

    def __next__(self) -> PlannedWorkunit:
        if self._iter is None:
            self._iter = self._generate()
        return next(self._iter)

    def _generate(self) -> Iterator[PlannedWorkunit]:
        spec = self.spec
        head = [*_argv_options(spec), "--wu_name"]
        image = spec.image
        sweep, version, attempt = spec.name, spec.version, self.attempt
        prerun, postrun = tuple(spec.prerun), tuple(spec.postrun)
        new = object.__new__
        set_dict = object.__setattr__
        no_files = repeat(())
        for ch in self._chunks(text=False):
            if any(isinstance(a, list) for a in ch.args):
                cols = [a if isinstance(a, list) else repeat(a) for a in ch.args]
                commands = list(map(list, zip(*cols, strict=False)))
            else:
                commands = [list(ch.args) for _ in ch.names]
            files = no_files if ch.files is None else ch.files
            # Workunits are built one at a time (a chunk of them kept alive would be
            # promoted and rescanned by the garbage collector), by setting the instance
            # dict: several times faster than the generated __init__, and the
            # instance stays frozen and compares equal.
            for name, pid, params, command, input_files in zip(
                ch.names, ch.pids, ch.params, commands, files, strict=False
            ):
                wu = new(PlannedWorkunit)
                set_dict(
                    wu,
                    "__dict__",
                    {
                        "wu_name": name,
                        "sweep": sweep,
                        "version": version,
                        "point_id": pid,
                        "attempt": attempt,
                        "params": params,
                        "command": command,
                        "argv": [*head, name, image, *command],
                        "input_files": input_files,
                        "prerun": prerun,
                        "postrun": postrun,
                    },
                )
                yield wu

    def jsonl_chunks(self, limit: int | None = None) -> Iterator[str]:
        """Yield the workunits as JSON lines, many lines per string; at most ``limit`` lines.

        Each line is ``json.dumps`` (default separators, ``ensure_ascii=False``) of
        ``{wu_name, point_id, attempt, params, command, argv, input_files}``, with
        the input files' contents decoded as UTF-8; it is assembled from the JSON
        text of each distinct value, which is why it is fast.
        """
        if self._iter is not None:
            raise RuntimeError("this PlanStream is already being iterated")
        spec = self.spec
        head = [*_argv_options(spec), "--wu_name"]
        # A line is constant text around the per-point parts: name, point id,
        # params, command (twice: alone and at the end of argv), name again, files.
        argv_head = ", ".join(encode_basestring(a) for a in [*head]) + ', "'
        image = '", ' + encode_basestring(spec.image) + (", " if spec.command_args else "")
        pieces = (
            '{"wu_name": "',
            '", "point_id": "',
            f'", "attempt": {self.attempt}, "params": ',
            ', "command": [',
            '], "argv": [' + argv_head,
            image,
            '], "input_files": ',
            "}\n",
        )
        c0, c1, c2, c3, c4, c5, c6, c7 = map(repeat, pieces)
        left = limit
        for ch in self._chunks(text=True):
            assert ch.args_json is not None
            assert ch.params_json is not None
            n = len(ch.names)
            if any(isinstance(a, list) for a in ch.args_json):
                cols = [a if isinstance(a, list) else repeat(a) for a in ch.args_json]
                commands: Iterable[str] = list(map(", ".join, zip(*cols, strict=False)))
            else:
                commands = repeat(", ".join(ch.args_json))
            files: Iterable[str] = (
                repeat("{}")
                if ch.files is None
                else [
                    json.dumps({k: v.decode("utf-8") for k, v in f}, ensure_ascii=False)
                    for f in ch.files
                ]
            )
            rows = zip(
                c0, ch.names, c1, ch.pids, c2, ch.params_json, c3, commands,
                c4, ch.names, c5, commands, c6, files, c7, strict=False,
            )  # fmt: skip
            if left is not None:
                rows = islice(rows, left)  # type: ignore[assignment]
            text = "".join(map("".join, rows))
            if left is not None:
                left -= min(left, n)
            if text:
                yield text
            if left == 0:
                return

    def _chunks(self, text: bool) -> Iterator[_Chunk]:
        from pipeline.space import iter_columns

        spec, attempt = self.spec, self.attempt
        if type(attempt) is not int or attempt < 1:
            raise PlanError(f"attempt must be a positive integer, got {attempt!r}")
        templates = [compile_template(a) for a in spec.command_args]
        for tpl in templates:
            problem = command_value_problem(tpl.literal)
            if problem:
                raise PlanError(f"command argument {tpl.source!r} {problem}")
        inputs = [(f"shared/{f.path}", compile_template(f.template)) for f in spec.inputs]
        prefix = sweep_name_prefix(spec.name, spec.version)
        suffix = f"_a{attempt}"
        params_file = spec.params_file
        tracker = IdTracker()
        names = sorted(spec.parameter_names)
        needed = {n for t in templates for n in t.names} | {n for _, t in inputs for n in t.names}
        missing = sorted(needed.difference(names))
        if missing:
            raise PlanError(
                f"unknown placeholder {{{missing[0]}}}; parameters are: {', '.join(names)}"
            )
        # Canonical JSON is put together from one fragment per parameter (keys sorted):
        # '{"a":1' + ',"b":2.5}'.
        frag_pre = {n: ("," if i else "{") + _dumps(n) + ":" for i, n in enumerate(names)}
        frag_post = {n: "}" if i == len(names) - 1 else "" for i, n in enumerate(names)}
        shapes = [(tpl.literal, ()) if not tpl.names else _positional(tpl) for tpl in templates]
        tables = _AxisTables()

        def fragments(name: str) -> Callable[[list[Any]], list[str]]:
            pre, post = frag_pre[name], frag_post[name]
            if post:
                return lambda vs: [pre + t + post for t in _json_texts(vs, name)]
            return lambda vs: list(map(pre.__add__, _json_texts(vs, name)))

        def rendered(src: str) -> Callable[[list[Any]], list[str | None]]:
            return lambda vs: _fill(src, [_cmd_texts(vs)])

        def rendered_json(src: str) -> Callable[[list[Any]], list[str | None]]:
            return lambda vs: _encoded(_fill(src, [_cmd_texts(vs)]))

        for cols in iter_columns(spec.parameters, PLAN_CHUNK):
            k = len(cols)
            if k == 0:
                continue
            params = cols.dicts()
            pos = {n: i for i, n in enumerate(cols.names)}
            if sorted(pos) != names:
                for p in params:  # the names differ from the spec's: the slow path says why
                    canonical_json(p)
                raise PlanError(f"a point has parameters {sorted(pos)}, expected {names}")
            col = partial(tables.column, cols)
            fr = [col(pos[n], "frag", fragments(n)) for n in names]
            if len(fr) == 1:
                cj = fr[0]
            elif len(fr) == 2:
                cj = list(map(operator.add, fr[0], fr[1]))
            else:
                cj = list(map("".join, zip(*fr, strict=True)))
            try:
                digests = list(map(_hexdigest, map(hashlib.sha256, map(str.encode, cj))))
            except UnicodeEncodeError:
                for p in params:
                    canonical_json(p)  # raises a PlanError naming the value
                raise
            raw = np.frombuffer(bytes.fromhex("".join(digests)), dtype=">u8").reshape(k, 4)
            fresh = tracker.add(raw[:, 0].astype(np.uint64), raw[:, 1].astype(np.uint64))
            self.points += k
            if not fresh.all():
                mask = fresh.tolist()
                for i in np.flatnonzero(~fresh).tolist():
                    self.duplicates += 1
                    if len(self.duplicate_examples) < 5:
                        self.duplicate_examples.append(params[i])
                params = list(compress(params, mask))
                digests = list(compress(digests, mask))
                cj = list(compress(cj, mask))
                cols = cols.select(mask, params)
                col = partial(tables.column, cols)
            # command arguments, with None where a value cannot be on a command line
            args: list[list[str] | str] = []
            for src, order in shapes:
                if not order:
                    args.append(src)
                elif len(order) == 1:
                    args.append(col(pos[order[0]], f"arg:{src}", rendered(src)))
                else:
                    texts = [col(pos[n], "cmd", _cmd_texts) for n in order]
                    args.append(_fill(src, texts))  # type: ignore[arg-type]
            bads = [
                b for a in args if isinstance(a, list) for b in [_first_none(a)] if b is not None
            ]
            bad = min(bads) if bads else None
            end = len(params) if bad is None else bad
            if bad is not None:
                args = [a[:end] if isinstance(a, list) else a for a in args]
            pids = list(map(_first_hex, digests[:end]))
            chunk = _Chunk(
                params=params[:end],
                pids=pids,
                names=list(map(prefix.__add__, map(operator.add, pids, repeat(suffix)))),
                args=args,
                files=None,
            )
            if inputs or params_file:
                files = []
                for p, c in zip(chunk.params, cj, strict=False):
                    rendered_files = [(o, t.render(p).encode("utf-8")) for o, t in inputs]
                    if params_file:
                        rendered_files.append(("shared/params.json", c.encode("utf-8")))
                    files.append(tuple(rendered_files))
                chunk.files = files
            if text:
                chunk.args_json = [
                    encode_basestring(src)
                    if not order
                    else (
                        col(pos[order[0]], f"json:{src}", rendered_json(src))[:end]
                        if len(order) == 1
                        else _encoded(a)  # type: ignore[arg-type]
                    )
                    for (src, order), a in zip(shapes, args, strict=True)
                ]
                chunk.params_json = self._params_json(cols, end, col)
            yield chunk
            if bad is not None:
                render_command(templates, params[bad])  # raises a PlanError naming the value
                raise PlanError(f"point {params[bad]!r} cannot be put on a command line")

    @staticmethod
    def _params_json(cols: Columns, end: int, col: Callable[..., list[Any]]) -> list[str]:
        """Return ``json.dumps(params, ensure_ascii=False)`` of the first ``end`` points."""
        if cols.points is not None:
            return [json.dumps(p, ensure_ascii=False) for p in cols.points[:end]]
        last = len(cols.names) - 1
        parts = []
        for i, n in enumerate(cols.names):
            pre = ("{" if i == 0 else ", ") + encode_basestring(n) + ": "
            post = "}" if i == last else ""

            def derive(vs: list[Any], pre: str = pre, post: str = post, n: str = n) -> list[str]:
                return [pre + t + post for t in _json_texts(vs, n)]

            parts.append(col(i, f"jsonl:{n}", derive)[:end])
        if len(parts) == 1:
            return parts[0]
        return list(map("".join, zip(*parts, strict=True)))


class _AxisTables:
    """Texts derived from grid values, computed once per distinct value of an axis.

    A table is keyed by the axis list's id and what was derived; the axis lists are
    kept so that their ids stay unique while the tables are in use.
    """

    def __init__(self) -> None:
        self._tables: dict[tuple[int, str], list[Any]] = {}
        self._kept: list[list[Any]] = []

    def column(
        self, cols: Columns, i: int, key: str, derive: Callable[[list[Any]], list[Any]]
    ) -> list[Any]:
        """Return ``derive(cols.values[i])``, through the axis' table for grid columns."""
        if cols.codes is None or cols.axes is None:
            return derive(cols.values[i])
        axis = cols.axes[i]
        table = self._tables.get((id(axis), key))
        if table is None:
            table = self._tables[(id(axis), key)] = derive(axis)
            self._kept.append(axis)
        return list(map(table.__getitem__, cols.codes[i]))


class _NotOnCommandLine(Exception):
    """Internal: a value cannot be a command-line argument (the caller raises a PlanError)."""


def _cmd_str(value: str) -> str:
    if value.isascii() and value.isprintable():
        return value
    raise _NotOnCommandLine


def _json_float(value: float) -> str:
    text = float.__repr__(value)
    if text[-1] in "nf":  # nan, inf, -inf
        raise ValueError(f"{text} is not allowed")
    return "0.0" if text == "-0.0" else text


class _Dispatch(dict[type, Callable[[Any], str]]):
    """Type -> formatter; unknown types go through the slow, checking path."""

    def __init__(self, table: dict[type, Callable[[Any], str]], slow: Callable[[Any], str]):
        super().__init__(table)
        self.slow = slow

    def __missing__(self, key: type) -> Callable[[Any], str]:
        return self.slow


_BOOL = {True: "true", False: "false"}
_CMD_FORMAT = _Dispatch(
    {
        str: _cmd_str,
        int: int.__repr__,
        float: float.__repr__,
        bool: _BOOL.__getitem__,
        type(None): lambda v: "null",
    },
    lambda v: _cmd_str(format_value(v)),
)


def _json_str(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL characters are not allowed")
    return encode_basestring(value)


_JSON_FORMAT = _Dispatch(
    {
        str: _json_str,
        int: int.__repr__,
        float: _json_float,
        bool: _BOOL.__getitem__,
        type(None): lambda v: "null",
    },
    lambda v: _dumps(_plain(v, "?")),
)


def plan(spec: SweepSpec, attempt: int = 1) -> PlanStream:
    """Plan every distinct point of a spec as a workunit of the given attempt, lazily."""
    return PlanStream(spec, attempt)


def plan_point(spec: SweepSpec, params: Mapping[str, Any], attempt: int) -> PlannedWorkunit:
    """Plan one point's workunit for a given attempt: a retry, or a resumed submission.

    Gives the same workunit as :func:`plan` does for that point and attempt.
    """
    cj = canonical_json(params)
    pid = point_id(params)
    name = wu_name(spec.name, spec.version, pid, attempt)
    command = render_command(spec.command_args, params)
    files = [
        (f"shared/{f.path}", compile_template(f.template).render(params).encode("utf-8"))
        for f in spec.inputs
    ]
    if spec.params_file:
        files.append(("shared/params.json", cj.encode("utf-8")))
    return PlannedWorkunit(
        wu_name=name,
        sweep=spec.name,
        version=spec.version,
        point_id=pid,
        attempt=attempt,
        params=dict(params),
        command=command,
        argv=create_work_argv(spec, name, command),
        input_files=tuple(files),
        prerun=tuple(spec.prerun),
        postrun=tuple(spec.postrun),
    )
