"""The programs in an emulated project's ``bin/``: create_work, dir_hier_path, cancel_jobs.

Each ``*_main(argv, script_path)`` is what the matching ``bin/`` script runs; the
project is the folder above ``bin/`` (or ``--config_dir``). They accept the real
tools' options and follow their quirks (reference, sections 4 and 4b): options
may be given as ``--name value`` or ``-name value``; errors print ``create_work:
...`` and exit 1; a duplicate workunit name is an error.

``create_work --stdin``: one job per line (at most 4096 characters, newline not
counted; a longer line is refused with exit 1, because what the real program does
with one is not known). A line may carry ``--wu_name``, ``--command_line``,
``--wu_template``, ``--result_template``, ``--remote_file``, ``--target_host``,
``--target_user`` and file names, split the way BOINC's ``parse_command_line``
splits (whitespace, with single- or double-quoted tokens). Unnamed lines get
``<name>_<i>``, where ``<name>`` is ``--wu_name`` or the default name and ``i``
counts job lines from 0. Rows go in multi-row INSERTs of about 1 MB each, one
transaction per statement. A line naming a target host or user is inserted on its
own; the emulator keeps no assignment table, so the target is otherwise ignored.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa

from pipeline import boinc
from pipeline.emulator.project import Project

__all__ = [
    "cancel_jobs_main",
    "create_work_main",
    "dir_hier_path_main",
    "export_image_main",
    "parse_command_line",
]

_INT_OPTS = {
    "batch",
    "priority",
    "min_quorum",
    "target_nresults",
    "max_error_results",
    "max_total_results",
    "max_success_results",
    "hr_class",
    "size_class",
    "app_version_num",
    "wu_id",
    "target_host",
    "target_user",
    "target_team",
    "broadcast_user",
    "broadcast_team",
    "d",
}
_FLOAT_OPTS = {
    "rsc_fpops_est",
    "rsc_fpops_bound",
    "rsc_memory_bound",
    "rsc_disk_bound",
    "delay_bound",
    "opaque",
    "credit",
}
_STR_OPTS = {"appname", "wu_name", "wu_template", "result_template", "command_line", "keywords"}
_FLAGS = {"broadcast", "verbose", "continue_on_error", "stdin"}
_LINE_OPTS = {
    "wu_name",
    "command_line",
    "wu_template",
    "result_template",
    "remote_file",
    "target_host",
    "target_user",
}
_FLUSH_BYTES = 1_000_000


class ToolError(Exception):
    """An error a tool reports with its message and exit status 1."""


def _project_for(script_path: str, config_dir: str | None = None) -> Project:
    if config_dir:
        return Project.open(config_dir)
    return Project.open(Path(os.path.abspath(script_path)).parent.parent)


# ----------------------------------------------------------------- argument parsing


def parse_command_line(line: str) -> list[str]:
    """Split a line into tokens the way BOINC's ``parse_command_line`` does."""
    if "'" not in line and '"' not in line:
        return line.split()  # no quotes: whitespace alone separates tokens
    tokens: list[str] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c.isspace():
            i += 1
        elif c in "'\"":
            end = line.find(c, i + 1)
            if end < 0:
                tokens.append(line[i + 1 :])
                break
            tokens.append(line[i + 1 : end])
            i = end + 1
        else:
            j = i
            while j < n and not line[j].isspace():
                j += 1
            tokens.append(line[i:j])
            i = j
    return tokens


def _option_name(arg: str) -> str | None:
    if arg.startswith("--"):
        return arg[2:]
    if arg.startswith("-") and len(arg) > 1:
        return arg[1:]
    return None


def _convert(name: str, value: str) -> Any:
    try:
        if name in _INT_OPTS:
            return int(value)
        if name in _FLOAT_OPTS:
            return float(value)
    except ValueError as exc:
        kind = "an integer" if name in _INT_OPTS else "a number"
        raise ToolError(f"--{name}: {value!r} is not {kind}") from exc
    return value


def _parse_args(
    args: list[str], allowed: set[str] | None = None
) -> tuple[dict[str, Any], list[str], list[tuple[str, float, str]]]:
    opts: dict[str, Any] = {}
    files: list[str] = []
    remote: list[tuple[str, float, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        name = _option_name(arg)
        if name is None:
            files.append(arg)
            i += 1
            continue
        if allowed is not None and name not in allowed:
            raise ToolError(f"option {arg} is not allowed on an input line")
        if name in _FLAGS:
            opts[name] = True
            i += 1
        elif name == "remote_file":
            if len(args) - i < 4:
                raise ToolError("--remote_file needs URL NBYTES MD5")
            url, nbytes, md5 = args[i + 1 : i + 4]
            try:
                remote.append((url, float(nbytes), md5))
            except ValueError as exc:
                raise ToolError(f"--remote_file: NBYTES {nbytes!r} is not a number") from exc
            files.append(f"\0remote{len(remote) - 1}")
            i += 4
        elif name in _INT_OPTS or name in _FLOAT_OPTS or name in _STR_OPTS or name == "config_dir":
            if i + 1 >= len(args):
                raise ToolError(f"{arg} requires an argument")
            opts[name] = _convert(name, args[i + 1])
            i += 2
        else:
            raise ToolError(f"unknown option {arg}")
    return opts, files, remote


# ----------------------------------------------------------------- templates


@dataclass
class _InputTemplate:
    file_infos: list[tuple[int, list[str]]]  # (number, flag element names)
    file_refs: list[tuple[int, str, list[str]]]  # (file number, open name, extra flags)
    command_line: str | None
    extra: str


def _load_template(path: Path, cache: dict[Path, _InputTemplate]) -> _InputTemplate:
    if path in cache:
        return cache[path]
    try:
        root = ET.fromstring(path.read_text())  # noqa: S314 (templates of the project)
    except FileNotFoundError as exc:
        raise ToolError(f"can't open input template {path}") from exc
    except ET.ParseError as exc:
        raise ToolError(f"input template {path} is not valid XML: {exc}") from exc
    infos: list[tuple[int, list[str]]] = []
    for k, fi in enumerate(root.findall("file_info")):
        number = int((fi.findtext("number") or str(k)).strip())
        flags = [child.tag for child in fi if child.tag != "number"]
        infos.append((number, flags))
    refs: list[tuple[int, str, list[str]]] = []
    wu = root.find("workunit")
    command_line = None
    extra = ""
    if wu is not None:
        for fr in wu.findall("file_ref"):
            number = int((fr.findtext("file_number") or "0").strip())
            open_name = (fr.findtext("open_name") or "").strip()
            flags = [c.tag for c in fr if c.tag not in ("file_number", "open_name")]
            refs.append((number, open_name, flags))
        cl = wu.find("command_line")
        if cl is not None:
            command_line = (cl.text or "").strip()
        for child in wu:
            if child.tag not in ("file_ref", "command_line"):
                extra += "    " + ET.tostring(child, encoding="unicode").strip() + "\n"
    tpl = _InputTemplate(infos, refs, command_line, extra)
    cache[path] = tpl
    return tpl


@dataclass
class _Job:
    name: str
    named: bool
    command_line: str | None
    wu_template: str
    result_template: str
    files: list[str]
    remote: list[tuple[str, float, str]]
    targeted: bool = False
    extra_opts: dict[str, Any] = field(default_factory=dict)


class _Creator:
    """Turns jobs into workunit rows for one project and one set of global options."""

    def __init__(self, project: Project, opts: dict[str, Any]) -> None:
        self.project = project
        self.opts = opts
        self.templates: dict[Path, _InputTemplate] = {}
        self.md5: dict[str, tuple[str, int]] = {}
        self.paths: dict[str, Path] = {}
        self.result_templates: set[str] = set()
        self.sticky_infos: dict[tuple[str, tuple[str, ...]], str] = {}
        self.download_url = project.download_url
        self.download_dir = str(project.download_dir)
        self.now = int(time.time())

    def _file_md5(self, path: str, sticky: bool) -> tuple[str, int]:
        """Return a download file's md5 and size; sticky files keep theirs in ``<file>.md5``."""
        if path in self.md5:
            return self.md5[path]
        cache = path + ".md5" if sticky else None
        if cache is not None and os.path.exists(cache):
            with open(cache) as fh:
                md5, _, nbytes = fh.read().partition(" ")
            info = (md5, int(nbytes))
        else:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError as exc:
                raise ToolError(f"input file {os.path.basename(path)} not found at {path}") from exc
            try:
                h = hashlib.md5(usedforsecurity=False)
                while chunk := os.read(fd, 1 << 20):
                    h.update(chunk)
                info = (h.hexdigest(), os.fstat(fd).st_size)
            finally:
                os.close(fd)
            if cache is not None:
                with open(cache, "w") as fh:
                    fh.write(f"{info[0]} {info[1]}\n")
        self.md5[path] = info
        return info

    def _path(self, rel: str) -> Path:
        path = self.paths.get(rel)
        if path is None:
            p = Path(rel)
            path = self.paths[rel] = p if p.is_absolute() else self.project.root / p
        return path

    def _file_info(self, name: str, flags: list[str]) -> str:
        """Return the ``<file_info>`` of a download file (reused for sticky files)."""
        sticky = "sticky" in flags or "no_delete" in flags
        key = (name, tuple(flags))
        if sticky and key in self.sticky_infos:
            return self.sticky_infos[key]
        subdir = boinc.dir_hier_subdir(name, self.project.fanout)
        md5, size = self._file_md5(os.path.join(self.download_dir, subdir, name), sticky)
        text = _file_info_xml(name, f"{self.download_url}/{subdir}/{name}", md5, size, flags)
        if sticky:
            self.sticky_infos[key] = text
        return text

    def xml_doc(self, job: _Job) -> str:
        tpl = _load_template(self._path(job.wu_template), self.templates)
        if len(job.files) < len(tpl.file_infos):
            raise ToolError(
                f"too few input files given: template {job.wu_template} has "
                f"{len(tpl.file_infos)}, got {len(job.files)}"
            )
        by_number: dict[int, tuple[str, list[str]]] = {}
        out: list[str] = []
        for k, (number, flags) in enumerate(tpl.file_infos):
            fname = job.files[k]
            if fname.startswith("\0remote"):
                url, nbytes, md5 = job.remote[int(fname[7:])]
                name = f"jf_{md5}"
                out.append(_file_info_xml(name, url, md5, nbytes, flags))
            else:
                name = fname
                out.append(self._file_info(name, flags))
            by_number[number] = (name, flags)
        out.append("<workunit>\n")
        for number, open_name, flags in tpl.file_refs:
            if number not in by_number:
                raise ToolError(f"template {job.wu_template}: file_ref to unknown file {number}")
            out.append(
                "    <file_ref>\n"
                f"        <file_name>{_esc(by_number[number][0])}</file_name>\n"
                f"        <open_name>{_esc(open_name)}</open_name>\n"
                + "".join(f"        <{flag}/>\n" for flag in flags)
                + "    </file_ref>\n"
            )
        command_line = job.command_line if job.command_line is not None else tpl.command_line
        if command_line is not None:
            out.append(f"    <command_line>\n{_esc(command_line)}\n    </command_line>\n")
        if "credit" in self.opts:
            out.append(f"    <credit>{self.opts['credit']:f}</credit>\n")
        out.append(tpl.extra)
        out.append("</workunit>\n")
        return "".join(out)

    def row(self, job: _Job, appid: int) -> dict[str, Any]:
        o = self.opts
        if job.result_template not in self.result_templates:
            if not self._path(job.result_template).is_file():
                raise ToolError(f"can't open result template {job.result_template}")
            self.result_templates.add(job.result_template)
        row: dict[str, Any] = {
            "create_time": self.now,
            "appid": appid,
            "name": job.name,
            "xml_doc": self.xml_doc(job).encode("utf-8"),
            "batch": o.get("batch", 0),
            "rsc_fpops_est": o.get("rsc_fpops_est", boinc.DEFAULT_RSC_FPOPS_EST),
            "rsc_fpops_bound": o.get("rsc_fpops_bound", boinc.DEFAULT_RSC_FPOPS_BOUND),
            "rsc_memory_bound": o.get("rsc_memory_bound", boinc.DEFAULT_RSC_MEMORY_BOUND),
            "rsc_disk_bound": o.get("rsc_disk_bound", boinc.DEFAULT_RSC_DISK_BOUND),
            "need_validate": 0,
            "canonical_resultid": 0,
            "canonical_credit": 0.0,
            "transition_time": self.now,
            "delay_bound": int(o.get("delay_bound", boinc.DEFAULT_DELAY_BOUND)),
            "error_mask": 0,
            "file_delete_state": 0,
            "assimilate_state": 0,
            "hr_class": o.get("hr_class", 0),
            "opaque": o.get("opaque", 0.0),
            "min_quorum": o.get("min_quorum", boinc.DEFAULT_MIN_QUORUM),
            "target_nresults": o.get("target_nresults", boinc.DEFAULT_TARGET_NRESULTS),
            "max_error_results": o.get("max_error_results", boinc.DEFAULT_MAX_ERROR_RESULTS),
            "max_total_results": o.get("max_total_results", boinc.DEFAULT_MAX_TOTAL_RESULTS),
            "max_success_results": o.get("max_success_results", boinc.DEFAULT_MAX_SUCCESS_RESULTS),
            "result_template_file": job.result_template,
            "priority": o.get("priority", 0),
            "rsc_bandwidth_bound": 0.0,
            "fileset_id": 0,
            "app_version_id": 0,
            "transitioner_flags": 0,
            "size_class": o.get("size_class", -1),
            "keywords": o.get("keywords", ""),
            "app_version_num": o.get("app_version_num", 0),
        }
        if "wu_id" in o:
            row["id"] = o["wu_id"]
        return row


def _file_info_xml(name: str, url: str, md5: str, size: float, flags: list[str]) -> str:
    """Return one ``<file_info>`` element of a workunit's ``xml_doc``."""
    return (
        "<file_info>\n"
        f"    <name>{_esc(name)}</name>\n"
        f"    <url>{_esc(url)}</url>\n"
        f"    <md5_cksum>{md5}</md5_cksum>\n"
        f"    <nbytes>{size:.0f}</nbytes>\n"
        + "".join(f"    <{flag}/>\n" for flag in flags)
        + "</file_info>\n"
    )


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _insert(project: Project, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    try:
        with project.engine().begin() as conn:
            if conn.dialect.driver == "pymysql" and all(r.keys() == rows[0].keys() for r in rows):
                _mysql_insert(conn.connection.driver_connection, rows)
            else:
                conn.execute(sa.insert(boinc.workunit), rows)
    except sa.exc.IntegrityError as exc:
        raise ToolError(f"can't create workunit: {exc.orig}") from exc
    except sa.exc.DBAPIError as exc:
        raise ToolError(f"database error: {exc.orig}") from exc


def _mysql_insert(raw: Any, rows: list[dict[str, Any]]) -> None:
    """Insert workunit rows with one multi-row INSERT, escaping each shared value once.

    PyMySQL escapes every parameter in Python; most of a chunk's columns hold
    the same value in every row, so only the others are escaped per row. The
    statement runs on the DB-API cursor without arguments, so PyMySQL applies
    no ``%`` formatting to it, in the caller's transaction.
    """
    columns = list(rows[0])
    first = rows[0]
    shared = {c: raw.escape(first[c]) for c in columns if all(r[c] == first[c] for r in rows)}
    values = [
        "(" + ",".join(shared[c] if c in shared else raw.escape(r[c]) for c in columns) + ")"
        for r in rows
    ]
    names = ",".join(f"`{c}`" for c in columns)
    # Column names are the schema's own; every value went through the driver's escape.
    sql = f"INSERT INTO {boinc.workunit.name} ({names}) VALUES " + ",".join(values)  # noqa: S608
    try:
        with raw.cursor() as cursor:
            cursor.execute(sql)
    except raw.IntegrityError as exc:  # DB-API exceptions, as attributes of the connection
        raise ToolError(f"can't create workunit: {exc}") from exc
    except raw.Error as exc:
        raise ToolError(f"database error: {exc}") from exc


def _app_id(project: Project, appname: str) -> int:
    try:
        with project.engine().connect() as conn:
            appid = conn.execute(
                sa.select(boinc.app.c.id).where(boinc.app.c.name == appname)
            ).scalar()
    except sa.exc.DBAPIError as exc:
        raise ToolError(f"can't open database: {exc.orig}") from exc
    if appid is None:
        raise ToolError(f"app not found: {appname}")
    return int(appid)


def create_work_main(argv: list[str], script_path: str, stdin: TextIO | None = None) -> int:
    """Run ``bin/create_work``: create workunits from arguments or from standard input."""
    try:
        return _create_work(argv, script_path, stdin or sys.stdin)
    except ToolError as exc:
        print(f"create_work: {exc}", file=sys.stderr)
        return 1


def _create_work(argv: list[str], script_path: str, stdin: TextIO) -> int:
    opts, files, remote = _parse_args(argv)
    appname = opts.get("appname")
    if not appname:
        raise ToolError("missing --appname")
    project = _project_for(script_path, opts.get("config_dir"))
    appid = _app_id(project, appname)
    creator = _Creator(project, opts)
    default_name = f"{appname}_{os.getpid()}_{time.time():.6f}"
    base_name = opts.get("wu_name", default_name)
    wu_template = opts.get("wu_template", f"templates/{appname}_in")
    result_template = opts.get("result_template", f"templates/{appname}_out")

    if not opts.get("stdin"):
        job = _Job(
            name=base_name,
            named="wu_name" in opts,
            command_line=opts.get("command_line"),
            wu_template=wu_template,
            result_template=result_template,
            files=files,
            remote=remote,
        )
        _insert(project, [creator.row(job, appid)])
        if not job.named:
            print(f"workunit name: {job.name}")
        return 0

    pending: list[dict[str, Any]] = []
    size = 0
    index = 0
    for lineno, raw in enumerate(stdin, start=1):
        line = raw[:-1] if raw.endswith("\n") else raw
        if len(line) > boinc.STDIN_LINE_MAX:
            raise ToolError(
                f"input line {lineno} has {len(line)} characters; "
                f"at most {boinc.STDIN_LINE_MAX} are allowed"
            )
        tokens = parse_command_line(line)
        if not tokens:
            continue
        try:
            lopts, lfiles, lremote = _parse_args(tokens, allowed=_LINE_OPTS)
            job = _Job(
                name=lopts.get("wu_name", f"{base_name}_{index}"),
                named=True,
                command_line=lopts.get("command_line", opts.get("command_line")),
                wu_template=lopts.get("wu_template", wu_template),
                result_template=lopts.get("result_template", result_template),
                files=lfiles or files,
                remote=lremote if lfiles else remote,
                targeted="target_host" in lopts or "target_user" in lopts,
            )
            index += 1
            row = creator.row(job, appid)
        except ToolError:
            if opts.get("continue_on_error"):
                continue
            raise
        if job.targeted:
            _insert(project, [row])
            continue
        pending.append(row)
        size += len(row["xml_doc"]) + len(row["name"]) + 400
        if size >= _FLUSH_BYTES:
            _insert(project, pending)
            pending, size = [], 0
    _insert(project, pending)
    return 0


# ----------------------------------------------------------------- dir_hier_path


def dir_hier_path_main(argv: list[str], script_path: str) -> int:
    """Run ``bin/dir_hier_path NAME``: print the download path of NAME and create its folder."""
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: dir_hier_path filename", file=sys.stderr)
        return 1
    project = _project_for(script_path)
    path = project.download_path(argv[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    print(path)
    return 0


# ----------------------------------------------------------------- cancel_jobs


def cancel_jobs_main(argv: list[str], script_path: str) -> int:
    """Run ``bin/cancel_jobs MIN_ID MAX_ID`` or ``bin/cancel_jobs --name WU_NAME``."""
    usage = "usage: cancel_jobs min_id max_id | cancel_jobs --name wu_name"
    project = _project_for(script_path)
    engine = project.engine()
    wu, res = boinc.workunit, boinc.result
    if len(argv) == 2 and argv[0] in ("--name", "-name"):
        with engine.connect() as conn:
            wu_id = conn.execute(sa.select(wu.c.id).where(wu.c.name == argv[1])).scalar()
        if wu_id is None:
            print(f"cancel_jobs: no workunit named {argv[1]}", file=sys.stderr)
            return 1
        lo = hi = int(wu_id)
    elif len(argv) == 2:
        try:
            lo, hi = int(argv[0]), int(argv[1])
        except ValueError:
            print(usage, file=sys.stderr)
            return 1
    else:
        print(usage, file=sys.stderr)
        return 1
    now = int(time.time())
    with engine.begin() as conn:
        conn.execute(
            sa.update(res)
            .where(
                res.c.server_state <= int(boinc.ServerState.UNSENT),
                res.c.workunitid >= lo,
                res.c.workunitid <= hi,
            )
            .values(server_state=int(boinc.ServerState.OVER), outcome=int(boinc.Outcome.DIDNT_NEED))
        )
        conn.execute(
            sa.update(wu)
            .where(wu.c.id >= lo, wu.c.id <= hi)
            .values(
                error_mask=wu.c.error_mask.op("|")(int(boinc.ErrorMask.CANCELLED)),
                transition_time=now,
            )
        )
    return 0


# ----------------------------------------------------------------- image export


def _gzip_n(data: bytes) -> bytes:
    """Compress like ``gzip -n``: no file name, no time stamp."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def _tar_members(members: list[tuple[str, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def export_image_main(argv: list[str], script_path: str) -> int:
    """Run ``bin/emulator_export_image IMAGE``: stage an engine's image as boinc2docker does.

    Prints one JSON object: ``{"image_id", "size", "files"}`` (files in template
    order: the layers, then the image file), or ``{"error", "kind"}`` with kind
    ``no_engine`` or ``no_image``. Files already staged are not written again.
    """
    if len(argv) != 1:
        print("usage: emulator_export_image IMAGE", file=sys.stderr)
        return 1
    project = _project_for(script_path)
    try:
        import docker
        from docker.errors import DockerException, ImageNotFound
    except ImportError:
        print(json.dumps({"kind": "no_engine", "error": "the docker Python package is missing"}))
        return 0
    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except DockerException as exc:
        print(json.dumps({"kind": "no_engine", "error": f"Cannot connect to Docker: {exc}"}))
        return 0
    try:
        image = client.images.get(argv[0])
    except ImageNotFound as exc:
        print(json.dumps({"kind": "no_image", "error": f"Error: No such image: {argv[0]} ({exc})"}))
        return 0
    image_id = str(image.id).split(":", 1)[-1]
    image_name = f"image_{image_id}.tar.manual.gz"
    if project.download_path(image_name).exists():
        manifest_path = project.download_path(image_name)
        with tarfile.open(manifest_path, "r:gz") as tar:
            fh = tar.extractfile("manifest.json")
            manifest = json.load(fh) if fh else []
        layers = [str(p).split("/")[0] for p in manifest[0]["Layers"]]
        files = [f"layer_{d}.tar.manual.gz" for d in layers] + [image_name]
        print(
            json.dumps({"image_id": image_id, "size": image.attrs.get("Size", 0), "files": files})
        )
        return 0
    raw = io.BytesIO()
    for chunk in image.save(named=True):
        raw.write(chunk)
    raw.seek(0)
    contents: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=raw, mode="r:") as tar:
        for member in tar:
            if member.isdir():
                contents[member.name.rstrip("/")] = None
            elif member.isfile():
                fh = tar.extractfile(member)
                contents[member.name] = fh.read() if fh else b""
    manifest_data = contents.get("manifest.json")
    if not manifest_data:
        print(json.dumps({"kind": "no_image", "error": "docker save wrote no manifest.json"}))
        return 0
    manifest = json.loads(manifest_data)
    files = []
    for layer in manifest[0]["Layers"]:
        folder = str(layer).split("/")[0]
        name = f"layer_{folder}.tar.manual.gz"
        members: list[tuple[str, bytes | None]] = [(folder, None)]
        members += sorted(
            (k, v) for k, v in contents.items() if k.startswith(folder + "/") and v is not None
        )
        _stage(project, name, _gzip_n(_tar_members(members)))
        files.append(name)
    config_name = str(manifest[0]["Config"])
    image_members: list[tuple[str, bytes | None]] = [
        (config_name, contents.get(config_name) or b""),
        ("manifest.json", manifest_data),
        ("repositories", contents.get("repositories") or b"{}"),
    ]
    _stage(project, image_name, _gzip_n(_tar_members(image_members)))
    files.append(image_name)
    print(json.dumps({"image_id": image_id, "size": image.attrs.get("Size", 0), "files": files}))
    return 0


def _stage(project: Project, name: str, data: bytes) -> None:
    path = project.download_path(name)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
