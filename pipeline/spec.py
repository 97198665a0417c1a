"""Sweep specs: the pydantic models of a sweep YAML file, and ``load_spec``.

A spec names a sweep (``name``, ``version``), what each workunit runs (``app``,
``image``, ``entrypoint``, ``command``, per-job ``inputs``, ``params_file``,
``prerun``/``postrun``), the parameter space (``parameters``, see
``pipeline.space``), BOINC job settings (``job``), submission settings
(``submit``) and which result files to read (``outputs``).

``load_spec`` reports every problem it finds at once, each naming the file, the
field path (with its YAML line), the bad value and what is allowed, as one
``SpecError``. YAML is read with YAML 1.2 scalars: only ``true``/``false`` are
booleans (``yes``, ``no``, ``on`` stay strings), ``2e9`` is a float, dates stay
strings, and duplicate keys are errors.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipeline.errors import SpecError, SpecProblem
from pipeline.plan import (
    command_value_problem,
    compile_template,
    sweep_name_prefix,
)
from pipeline.space import Block, block_names, block_size, iter_string_values

__all__ = [
    "InputFile",
    "JobSettings",
    "OutputSpec",
    "Schedule",
    "SubmitSettings",
    "SweepSpec",
    "load_spec",
    "load_yaml",
    "problems_from_validation",
    "spec_problems",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _whole_number(value: Any) -> Any:
    """Accept an int, or a float with no fractional part (YAML ``2e9``); refuse bools, fractions."""
    if isinstance(value, bool):
        raise ValueError("expected a whole number of bytes, not a boolean")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("expected a whole number of bytes (e.g. 2000000000 or 2e9)")
        return int(value)
    return value


Bytes = Annotated[int, BeforeValidator(_whole_number), Strict(), Field(gt=0, le=2**63 - 1)]
Flops = Annotated[float, AllowInfNan(False), Field(gt=0)]
NonNegInt = Annotated[int, Strict(), Field(ge=0, le=2**31 - 1)]
PosInt = Annotated[int, Strict(), Field(ge=1, le=2**31 - 1)]


class JobSettings(_Model):
    """BOINC workunit settings, passed to create_work explicitly for every workunit.

    ``min_quorum`` and ``target_nresults`` default to 1, not BOINC's 2: BOINC's
    default sends every job to two volunteers and compares their results, which
    doubles the cost of a sweep whose results are not cross-checked (the
    boinc2docker validator accepts every result anyway). The other defaults are
    BOINC's own.
    """

    rsc_fpops_est: Flops = 3600e9
    rsc_fpops_bound: Flops = 86400e9
    rsc_memory_bound: Bytes = 500_000_000
    rsc_disk_bound: Bytes = 1_000_000_000
    delay_bound: Annotated[int, Strict(), Field(ge=1, le=2**31 - 1)] = 604800
    priority: Annotated[int, Strict(), Field(ge=-(2**31), le=2**31 - 1)] = 0
    min_quorum: PosInt = 1
    target_nresults: PosInt = 1
    max_error_results: NonNegInt = 3
    max_total_results: PosInt = 10
    max_success_results: PosInt = 6

    @model_validator(mode="after")
    def _relations(self) -> JobSettings:
        problems = []
        if self.target_nresults < self.min_quorum:
            problems.append(
                f"target_nresults ({self.target_nresults}) must be at least "
                f"min_quorum ({self.min_quorum})"
            )
        if self.max_total_results < self.target_nresults:
            problems.append(
                f"max_total_results ({self.max_total_results}) must be at least "
                f"target_nresults ({self.target_nresults})"
            )
        if self.max_success_results < self.min_quorum:
            problems.append(
                f"max_success_results ({self.max_success_results}) must be at least "
                f"min_quorum ({self.min_quorum})"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,\-?]+$")


class Schedule(_Model):
    """When to submit: ``interval`` (seconds, or ``"30s"``, ``"10m"``, ``"2h"``) or ``cron``."""

    interval: float | str | None = None
    cron: str | None = None

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: float | str | None) -> float | None:
        if v is None:
            return None
        if isinstance(v, str):
            m = _DURATION.match(v)
            if m is None:
                raise ValueError(
                    f"interval {v!r} is not a duration; "
                    "write seconds or e.g. '30s', '10m', '2h', '1d'"
                )
            v = float(m.group(1)) * _UNITS[m.group(2)]
        if not v >= 1:
            raise ValueError(f"interval must be at least 1 second, got {v!r}")
        return float(v)

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is None:
            return None
        fields = v.split()
        if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
            raise ValueError(
                f"cron {v!r} must have five fields (minute hour day-of-month month day-of-week)"
            )
        return " ".join(fields)

    @model_validator(mode="after")
    def _one(self) -> Schedule:
        if (self.interval is None) == (self.cron is None):
            raise ValueError("give exactly one of interval and cron")
        return self


class SubmitSettings(_Model):
    """How the sweep is fed to the server; may change without raising ``version``."""

    chunk_size: Annotated[int, Strict(), Field(ge=1, le=100_000)] = 100
    max_unsent: Annotated[int, Strict(), Field(ge=1)] | None = None
    max_attempts: Annotated[int, Strict(), Field(ge=1, le=100)] = 2
    schedule: Schedule | None = None
    mode: Literal["script", "batch", "fast"] | None = None


_SAFE_RELPATH = re.compile(r"^[A-Za-z0-9._\-/*?\[\]!]+$")


def _relative_path(v: str, what: str, *, glob: bool) -> str:
    if not v or v.startswith("/"):
        raise ValueError(f"{what} must be a non-empty relative path without a leading '/'")
    parts = v.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{what} must not contain empty, '.' or '..' components")
    if not glob and any(c in v for c in "*?[]!"):
        raise ValueError(f"{what} must be a plain path, not a glob")
    if not _SAFE_RELPATH.match(v):
        raise ValueError(
            f"{what} may contain only letters, digits, '.', '_', '-', '/' (and glob characters)"
        )
    return v


class OutputSpec(_Model):
    """One file (or glob) in the result archive and how to read it into rows."""

    file: str
    kind: Literal["csv", "tsv", "json", "jsonl", "npy", "npz", "keyvalue", "regex", "python"]
    prefix: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")] | None = None
    required: bool = True
    pattern: str | None = None
    parser: str | None = None
    separator: Annotated[str, StringConstraints(min_length=1)] = "="
    delimiter: Annotated[str, StringConstraints(min_length=1, max_length=1)] | None = None

    @field_validator("file")
    @classmethod
    def _file(cls, v: str) -> str:
        return _relative_path(v, "file", glob=True)

    @model_validator(mode="after")
    def _kind_options(self) -> OutputSpec:
        if self.kind == "regex":
            if self.pattern is None:
                raise ValueError("kind 'regex' needs a pattern (a Python regex with named groups)")
            try:
                rx = re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a valid regex: {exc}") from exc
            if not rx.groupindex:
                raise ValueError(f"pattern {self.pattern!r} has no named groups (?P<name>...)")
        elif self.pattern is not None:
            raise ValueError(f"pattern is only allowed with kind 'regex', not {self.kind!r}")
        if self.kind == "python":
            if self.parser is None or not re.match(
                r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*([:.][A-Za-z_][A-Za-z0-9_]*)$",
                self.parser,
            ):
                raise ValueError(
                    f"kind 'python' needs parser 'package.module:function' or "
                    f"'package.module.function', got {self.parser!r}"
                )
        elif self.parser is not None:
            raise ValueError(f"parser is only allowed with kind 'python', not {self.kind!r}")
        if self.delimiter is not None and self.kind not in ("csv", "tsv"):
            raise ValueError(f"delimiter is only allowed with kinds csv and tsv, not {self.kind!r}")
        if self.separator != "=" and self.kind != "keyvalue":
            raise ValueError(f"separator is only allowed with kind 'keyvalue', not {self.kind!r}")
        return self


_RESERVED_INPUTS = {"params.json", "boinc_app"}


class InputFile(_Model):
    """A per-job text file written into the job's shared folder (open name ``shared/<path>``)."""

    path: str
    template: str

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        v = _relative_path(v, "path", glob=False)
        if v in _RESERVED_INPUTS or v.split("/")[0] in ("image", "results"):
            raise ValueError(
                f"path {v!r} is reserved (params.json, boinc_app, image/ and results/ are "
                "used by boinc2docker and the pipeline)"
            )
        return v

    @field_validator("template")
    @classmethod
    def _template(cls, v: str) -> str:
        if "\x00" in v:
            raise ValueError("NUL characters are not allowed in a template")
        compile_template(v)
        return v


ShellLine = Annotated[str, StringConstraints(min_length=1)]
_IMAGE_RE = r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$"
_ENTRY_RE = r"^[A-Za-z0-9_./+=@%:-]+$"


class SweepSpec(_Model):
    """A parameter sweep: what to run, over which points, with which BOINC settings."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]+$", min_length=1, max_length=64)]
    version: Annotated[int, Strict(), Field(ge=1, le=999_999)] = 1
    app: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+$", max_length=254)] = (
        "boinc2docker"
    )
    image: Annotated[str, StringConstraints(pattern=_IMAGE_RE, max_length=255)]
    entrypoint: Annotated[str, StringConstraints(pattern=_ENTRY_RE, max_length=255)] | None = None
    command: list[str] | str = Field(default_factory=list)
    inputs: list[InputFile] = Field(default_factory=list)
    params_file: bool = False
    prerun: list[ShellLine] = Field(default_factory=list)
    postrun: list[ShellLine] = Field(default_factory=list)
    parameters: Block
    job: JobSettings = Field(default_factory=JobSettings)
    submit: SubmitSettings = Field(default_factory=SubmitSettings)
    outputs: list[OutputSpec] = Field(default_factory=list)

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, str):
            try:
                shlex.split(v)
            except ValueError as exc:
                raise ValueError(
                    f"command string cannot be split like a shell line: {exc}"
                ) from exc
        return v

    @field_validator("prerun", "postrun")
    @classmethod
    def _lines(cls, v: list[str]) -> list[str]:
        for line in v:
            if any(c in line for c in "\n\r\x00"):
                raise ValueError(
                    f"{line!r}: each entry is one shell line (no newline, carriage return or NUL); "
                    "split it into several entries"
                )
        return v

    @field_validator("inputs")
    @classmethod
    def _unique_inputs(cls, v: list[InputFile]) -> list[InputFile]:
        paths = [f.path for f in v]
        dups = sorted({p for p in paths if paths.count(p) > 1})
        if dups:
            raise ValueError(f"input paths must be unique, repeated: {dups}")
        return v

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> SweepSpec:
        if info.context and info.context.get("defer_cross_checks"):
            return self
        problems = spec_problems(self, file="<spec>")
        if problems:
            raise ValueError("; ".join(f"{p.location}: {p.message}" for p in problems))
        return self

    @property
    def command_args(self) -> list[str]:
        """The command as a list of argument templates (a string is split like a shell line)."""
        return shlex.split(self.command) if isinstance(self.command, str) else list(self.command)

    @property
    def size(self) -> int:
        """The number of points the space yields, duplicates included."""
        return block_size(self.parameters)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """The parameter names every point has."""
        return block_names(self.parameters)

    @property
    def name_prefix(self) -> str:
        """``"<name>_v<version>_"``: the prefix of every workunit name of this sweep version."""
        return sweep_name_prefix(self.name, self.version)

    @property
    def worst_case_runs(self) -> int:
        """The most volunteer runs one point can cost: attempts x BOINC's max_total_results."""
        return self.submit.max_attempts * self.job.max_total_results

    def workunit_part(self) -> dict[str, Any]:
        """The workunit-defining part of the spec, as plain JSON data."""
        data = self.model_dump(mode="json")
        keep = (
            "app",
            "image",
            "entrypoint",
            "parameters",
            "job",
            "inputs",
            "params_file",
            "prerun",
            "postrun",
        )
        part = {k: data[k] for k in keep}
        part["command"] = self.command_args
        return part

    def workunit_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of the workunit-defining part; same everywhere."""
        import hashlib
        import json

        text = json.dumps(
            self.workunit_part(),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def spec_problems(spec: SweepSpec, file: str) -> list[SpecProblem]:
    """Return the problems that involve several fields: placeholders, command-line values."""
    problems: list[SpecProblem] = []
    names = set(spec.parameter_names)
    allowed = ", ".join(sorted(names))
    cmd_names: set[str] = set()
    for i, arg in enumerate(spec.command_args):
        loc = f"command[{i}]"
        try:
            tpl = compile_template(arg)
        except ValueError as exc:
            problems.append(SpecProblem(file, loc, arg, str(exc)))
            continue
        lit_problem = command_value_problem(tpl.literal)
        if lit_problem:
            problems.append(
                SpecProblem(file, loc, arg, "command text " + lit_problem.split(". Pass")[0])
            )
        for n in tpl.names:
            cmd_names.add(n)
            if n not in names:
                problems.append(
                    SpecProblem(
                        file, loc, arg, f"unknown placeholder {{{n}}}; parameters are: {allowed}"
                    )
                )
    for i, f in enumerate(spec.inputs):
        for n in compile_template(f.template).names:
            if n not in names:
                problems.append(
                    SpecProblem(
                        file,
                        f"inputs[{i}].template",
                        f.template,
                        f"unknown placeholder {{{n}}}; parameters are: {allowed}",
                    )
                )
    for name, value, where in iter_string_values(spec.parameters):
        if name in cmd_names:
            problem = command_value_problem(value)
            if problem:
                problems.append(
                    SpecProblem(
                        file,
                        f"parameters.{where}",
                        value,
                        f"is used on the command line and {problem}",
                    )
                )
    return problems


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """A safe loader with YAML 1.2 core-schema scalars (booleans, ints, floats)."""


_Loader.yaml_implicit_resolvers = {
    ch: [
        (tag, rx)
        for tag, rx in resolvers
        if tag
        not in (
            "tag:yaml.org,2002:bool",
            "tag:yaml.org,2002:int",
            "tag:yaml.org,2002:float",
            "tag:yaml.org,2002:timestamp",
        )
    ]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _walk(
    node: yaml.Node,
    path: tuple[Any, ...],
    loader: _Loader,
    lines: dict[tuple[Any, ...], int],
    problems: list[tuple[tuple[Any, ...], int, str, Any]],
) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for knode, vnode in node.value:
            key = (
                loader.construct_object(knode, deep=True)
                if isinstance(knode, yaml.ScalarNode)
                else None
            )
            if key in seen:
                problems.append(
                    (
                        (*path, key),
                        knode.start_mark.line + 1,
                        "duplicate key; each key may appear once",
                        key,
                    )
                )
            seen.add(key)
            lines[(*path, key)] = knode.start_mark.line + 1
            _walk(vnode, (*path, key), loader, lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), loader, lines, problems)


def load_yaml(text: str, file: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """Parse YAML text; return the data and a map from key paths to line numbers.

    Raises SpecError for syntax errors (with line and column) and duplicate keys.
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError([SpecProblem(file, "", None, "the file is empty; expected a mapping")])
        lines: dict[tuple[Any, ...], int] = {}
        dup: list[tuple[tuple[Any, ...], int, str, Any]] = []
        _walk(node, (), loader, lines, dup)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        msg = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise SpecError([SpecProblem(file, where, None, f"YAML syntax error: {msg}")]) from exc
    except yaml.YAMLError as exc:
        raise SpecError([SpecProblem(file, "", None, f"YAML error: {exc}")]) from exc
    finally:
        loader.dispose()
    if dup:
        raise SpecError([SpecProblem(file, _fmt_path(p, line), v, msg) for p, line, msg, v in dup])
    return data, lines


def _fmt_path(path: Sequence[Any], line: int | None) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    if line is not None:
        out = f"{out} (line {line})" if out else f"line {line}"
    return out


def _data_path(data: Any, loc: Sequence[int | str]) -> tuple[Any, ...]:
    """Map a pydantic error location onto the input data, dropping union tags pydantic adds."""
    path: list[Any] = []
    cur = data
    for part in loc:
        in_map = isinstance(cur, Mapping) and part in cur
        in_list = isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)
        if in_map or in_list:
            path.append(part)
            cur = cur[part]
        elif isinstance(cur, Mapping) and isinstance(part, str) and not _is_tag(part):
            # a missing or unknown field: name it (union tags pydantic adds are skipped)
            path.append(part)
            cur = None
    return tuple(path)


def _is_tag(part: str) -> bool:
    return part in {
        "list",
        "linspace",
        "logspace",
        "range",
        "arange",
        "grid",
        "zip",
        "points",
        "random",
        "lhs",
        "product",
        "concat",
        "uniform",
        "loguniform",
        "normal",
        "choice",
        "randint",
        "str",
        "float",
        "int",
        "bool",
        "none",
    } or part.startswith(("list[", "dict[", "tuple[", "function-", "constrained-"))


def problems_from_validation(
    exc: ValidationError,
    data: Any,
    file: str,
    lines: Mapping[tuple[Any, ...], int],
    model: type[BaseModel] | None = None,
) -> list[SpecProblem]:
    """Turn a pydantic ValidationError into SpecProblems with data paths and YAML lines."""
    out: list[SpecProblem] = []
    seen: set[tuple[str, str]] = set()
    for err in exc.errors(include_url=False):
        path = _data_path(data, err["loc"])
        line = None
        for k in range(len(path), -1, -1):
            if path[:k] in lines:
                line = lines[path[:k]]
                break
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field; " + _allowed_fields(model or SweepSpec, path)
        elif err["type"] == "missing":
            msg = "field required"
        msg = msg.removeprefix("Value error, ")
        loc = _fmt_path(path, line)
        if (loc, msg) in seen:
            continue
        seen.add((loc, msg))
        value = None if err["type"] == "missing" else err.get("input")
        out.append(SpecProblem(file, loc, value, msg))
    return out


def _allowed_fields(root: type[BaseModel], path: Sequence[Any]) -> str:
    model: Any = root
    for p in path[:-1]:
        if isinstance(p, int):
            continue
        field = getattr(model, "model_fields", {}).get(p)
        if field is None:
            return "see `boinc-pipeline schema` for the allowed fields"
        ann = field.annotation
        model = next(
            (
                a
                for a in getattr(ann, "__args__", (ann,))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
        if model is None:
            return "see `boinc-pipeline schema` for the allowed fields"
    fields = getattr(model, "model_fields", None)
    if not fields:
        return "see `boinc-pipeline schema` for the allowed fields"
    return "allowed: " + ", ".join(fields)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec file; raise SpecError listing every problem found."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(
            [SpecProblem(file, "", None, f"cannot read the file: {exc.strerror}")]
        ) from exc
    except UnicodeDecodeError as exc:
        raise SpecError(
            [SpecProblem(file, "", None, f"the file is not UTF-8 text: {exc}")]
        ) from exc
    data, lines = load_yaml(text, file)
    if not isinstance(data, dict):
        raise SpecError(
            [
                SpecProblem(
                    file, "", type(data).__name__, "the top level must be a mapping of fields"
                )
            ]
        )
    try:
        spec = SweepSpec.model_validate(data, context={"defer_cross_checks": True})
    except ValidationError as exc:
        raise SpecError(problems_from_validation(exc, data, file, lines)) from None
    problems = spec_problems(spec, file)
    if problems:
        fixed = []
        for p in problems:
            key = tuple(int(x) if x.isdigit() else x for x in re.findall(r"[^.\[\]]+", p.location))
            line = lines.get(key)
            fixed.append(
                SpecProblem(
                    p.file, _fmt_path(key, line) if line else p.location, p.value, p.message
                )
            )
        raise SpecError(fixed)
    return spec
