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
point by point. Duplicate points are skipped (counted, with examples) and hash-prefix
collisions between distinct points are refused; that check keeps 16 bytes per
distinct point in sorted numpy arrays, and nothing else grows with the sweep.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pipeline.errors import PlanError

if TYPE_CHECKING:
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
"""Points are hashed and checked for duplicates this many at a time."""

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


def _argv_options(spec: SweepSpec) -> list[str]:
    j = spec.job
    opts = [
        CREATE_WORK_SCRIPT,
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

    Ids live in sorted numpy runs merged like a binary counter, so checking a chunk
    of ``k`` ids against ``n`` seen ones costs O(k log n) and memory is 16 bytes per
    distinct point. ``key`` is the 64-bit point id; ``check`` the next 64 bits of the
    digest: same key and same check is the same point, same key and a different
    check are two distinct points whose ids collide.
    """

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []

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
        repeat = np.zeros(n, dtype=bool)
        repeat[1:] = skeys[1:] == skeys[:-1]
        if np.any(repeat & (np.concatenate(([False], schecks[1:] != schecks[:-1])))):
            bad = int(order[np.flatnonzero(repeat & np.r_[False, schecks[1:] != schecks[:-1]])[0]])
            raise _collision(bad, int(keys[bad]))
        fresh[order[repeat]] = False
        for rkeys, rchecks in self._runs:
            pos = np.searchsorted(rkeys, keys)
            inside = pos < len(rkeys)
            pos_c = np.where(inside, pos, 0)
            hit = inside & (rkeys[pos_c] == keys)
            if np.any(hit & (rchecks[pos_c] != checks)):
                bad = int(np.flatnonzero(hit & (rchecks[pos_c] != checks))[0])
                raise _collision(bad, int(keys[bad]))
            fresh &= ~hit
        sel = order[~repeat]
        sel = sel[fresh[sel]]
        if len(sel):
            self._runs.append((keys[sel], checks[sel]))
            while len(self._runs) > 1 and len(self._runs[-2][0]) <= 2 * len(self._runs[-1][0]):
                (k2, c2), (k1, c1) = self._runs.pop(), self._runs.pop()
                k, c = np.concatenate((k1, k2)), np.concatenate((c1, c2))
                o = np.argsort(k, kind="stable")
                self._runs.append((k[o], c[o]))
        return fresh


def _collision(index: int, key: int) -> PlanError:
    return PlanError(
        f"two distinct points share the point id {key:016x} (a SHA-256 prefix collision, "
        f"found at chunk entry {index}); rename a parameter or change a value slightly"
    )


@dataclass
class PlanStream:
    """A lazy stream of PlannedWorkunits; after (partial) iteration it reports duplicates.

    ``points`` counts the points the space produced so far, ``duplicates`` how many
    of them repeated an earlier point (skipped), ``duplicate_examples`` up to five
    of their parameter dicts.
    """

    spec: SweepSpec
    attempt: int = 1
    points: int = 0
    duplicates: int = 0
    duplicate_examples: list[dict[str, Any]] = field(default_factory=list)
    _iter: Iterator[PlannedWorkunit] | None = None

    def __iter__(self) -> Iterator[PlannedWorkunit]:
        return self

    def __next__(self) -> PlannedWorkunit:
        if self._iter is None:
            self._iter = self._generate()
        return next(self._iter)

    def _generate(self) -> Iterator[PlannedWorkunit]:
        from pipeline.space import iter_points

        spec, attempt = self.spec, self.attempt
        if type(attempt) is not int or attempt < 1:
            raise PlanError(f"attempt must be a positive integer, got {attempt!r}")
        templates = [compile_template(a) for a in spec.command_args]
        for tpl in templates:
            problem = command_value_problem(tpl.literal)
            if problem:
                raise PlanError(f"command argument {tpl.source!r} {problem}")
        # Templates hold bare names and {{ }} only (compile_template checked), so
        # str.format_map on them cannot reach attributes, indexes or format specs.
        arg_src = [(t.literal, True) if not t.names else (t.source, False) for t in templates]
        cmd_names = sorted({n for t in templates for n in t.names})
        cfmt = _CMD_FORMAT.__getitem__
        inputs = [(f"shared/{f.path}", compile_template(f.template)) for f in spec.inputs]
        prefix = sweep_name_prefix(spec.name, spec.version)
        suffix = f"_a{attempt}"
        opts = [*_argv_options(spec), "--wu_name"]
        image = spec.image
        prerun, postrun = tuple(spec.prerun), tuple(spec.postrun)
        params_file = spec.params_file
        sweep, version = spec.name, spec.version
        tracker = IdTracker()
        names = sorted(spec.parameter_names)
        needed = {n for t in templates for n in t.names} | {n for _, t in inputs for n in t.names}
        missing = sorted(needed.difference(names))
        if missing:
            raise PlanError(
                f"unknown placeholder {{{missing[0]}}}; parameters are: {', '.join(names)}"
            )
        pairs = [(("," if i else "{") + _dumps(n) + ":", n) for i, n in enumerate(names)]
        count = len(names)
        jfmt = _JSON_FORMAT.__getitem__
        # Workunits are built by filling the instance dict (about three times faster
        # than the generated __init__; the instance stays frozen and compares equal).
        new = object.__new__
        sha = hashlib.sha256
        chunk: list[tuple[dict[str, Any], str, str]] = []
        points = iter_points(spec.parameters)
        while True:
            chunk.clear()
            for params in points:
                try:  # fast path of canonical_json for the sweep's fixed parameter names
                    if len(params) != count:
                        raise ValueError
                    cj = "".join([p + jfmt(type(params[n]))(params[n]) for p, n in pairs]) + "}"
                except (KeyError, ValueError, PlanError):
                    cj = canonical_json(params)  # raises a PlanError naming the value, or agrees
                chunk.append((params, cj, sha(cj.encode("utf-8")).hexdigest()))
                if len(chunk) >= PLAN_CHUNK:
                    break
            if not chunk:
                return
            raw = np.frombuffer(bytes.fromhex("".join([d[:32] for _, _, d in chunk])), dtype=">u8")
            fresh = tracker.add(raw[0::2].astype(np.uint64), raw[1::2].astype(np.uint64))
            self.points += len(chunk)
            for (params, cj, digest), is_new in zip(chunk, fresh.tolist(), strict=False):
                if not is_new:
                    self.duplicates += 1
                    if len(self.duplicate_examples) < 5:
                        self.duplicate_examples.append(params)
                    continue
                try:
                    vals = {n: cfmt(type(params[n]))(params[n]) for n in cmd_names}
                except _NotOnCommandLine:
                    render_command(templates, params)  # raises a PlanError naming the value
                    raise
                command = [a if c else a.format_map(vals) for a, c in arg_src]
                pid = digest[:POINT_ID_HEX]
                name = prefix + pid + suffix
                files: tuple[tuple[str, bytes], ...] = ()
                if inputs or params_file:
                    rendered = [(o, t.render(params).encode("utf-8")) for o, t in inputs]
                    if params_file:
                        rendered.append(("shared/params.json", cj.encode("utf-8")))
                    files = tuple(rendered)
                wu = new(PlannedWorkunit)
                wu.__dict__.update(
                    wu_name=name,
                    sweep=sweep,
                    version=version,
                    point_id=pid,
                    attempt=attempt,
                    params=params,
                    command=command,
                    argv=[*opts, name, image, *command],
                    input_files=files,
                    prerun=prerun,
                    postrun=postrun,
                )
                yield wu


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
_JSON_FORMAT = _Dispatch(
    {
        str: encode_basestring,
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
