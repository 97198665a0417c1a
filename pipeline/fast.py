"""Create boinc2docker workunits in bulk: stage files, then one ``create_work --stdin`` per chunk.

The ``fast`` submission mode builds what ``bin/boinc2docker_create_work.py``
would build for each workunit (reference, section 2) and hands a whole chunk to
one ``bin/create_work --stdin`` (section 4), instead of one Python process and
one ``create_work`` process per workunit:

1. **Image files.** The image's ``layer_*.tar.manual.gz`` and
   ``image_*.tar.manual.gz`` are staged once by the stock script and reused
   (flags ``sticky`` and ``no_delete``). Their names are read back from the
   ``xml_doc`` of one of the sweep's workunits already on the server; when there
   is none yet, the chunk's first workunit is created the ``batch`` way (the
   stock ``boinc2docker_create_work`` function, run by the server's Python) and
   becomes that example.
2. **Per-job files**, in the stock order: the custom input files (e.g.
   ``shared/params.json``), ``vbox_job.xml`` and ``shared/boinc_app``, each under
   a unique name ``<stem>_<32 hex><ext>`` in the download hierarchy
   (``download/<fanout dir>/<name>``), all written in one transport call. The
   hex is derived from the sweep's spec hash, the workunit name (which holds the
   attempt) and the open name, so a run killed mid-chunk and started again
   rewrites the same files and leaves nothing behind that no name accounts for.
3. **One input template per distinct file set**, with the stock open names,
   flags and order, stored content-addressed as ``templates/fast_<hash>_in``.
4. **One ``bin/create_work --stdin``** with the stock global options (bounds
   ``int()``-ed as the stock script does) and one line per workunit. Each
   multi-row INSERT is all or nothing, so after a failure the names already
   created are looked up and the rest is run again (a few rounds, while they
   make progress); the caller verifies every name in the BOINC database.

Parameters in a file: when the command, prerun and postrun are the same for
every point and the job reads its parameters from per-job files, ``boinc_app``
and ``vbox_job.xml`` are staged once per sweep under content-addressed names
with ``sticky`` and ``no_delete`` (without those flags the file deleter would
remove them once the first workunit finishes), and each workunit adds only its
own small files. Those two files' names and flags are the only difference from
the stock script's workunits (``docs/fast-mode.md``).
"""

from __future__ import annotations

import hashlib
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import sqlalchemy as sa

from pipeline import boinc
from pipeline.boincdb import like_prefix
from pipeline.errors import ConfigError, ServerError
from pipeline.plan import PlannedWorkunit, compile_template, job_options, sweep_name_prefix

if TYPE_CHECKING:
    from pipeline.spec import SweepSpec
    from pipeline.submit import SubmitContext

__all__ = [
    "SHARED_FLAGS",
    "FileRef",
    "ImageFiles",
    "ServerLayout",
    "WorkunitFiles",
    "boinc_app_script",
    "create_fast",
    "image_files_from_xml_doc",
    "input_template",
    "plan_files",
    "printf_q",
    "shares_app",
    "stdin_line",
    "unique_name",
    "vbox_job_xml",
]

SHARED_FLAGS = ("sticky", "no_delete")
"""Flags of files staged once and reused by many workunits (as boinc2docker flags layers)."""

RESUME_ROUNDS = 3
"""How many times one chunk's ``create_work --stdin`` is run while it makes progress."""

_BACKSLASHED = frozenset(" !\"$&'()*,;<>?[\\]^`{|}")
_LEADING = frozenset("#~")


# --------------------------------------------------------------------------- quoting


def printf_q(arg: str) -> str:
    """Escape one argument exactly as bash's ``printf %q`` does (printable ASCII only).

    Command-line values are printable ASCII (the planner refuses anything else),
    for which bash backslash-escapes shell metacharacters, ``#`` and ``~`` at the
    start, and ``~`` after ``:`` or ``=``; the empty string becomes ``''``.
    """
    if arg == "":
        return "''"
    out = []
    prev = ""
    for i, c in enumerate(arg):
        if not " " <= c <= "~":
            raise ValueError(
                f"command argument {arg!r}: only printable ASCII can be quoted for the job's "
                "/bin/sh; pass such values in a per-job file (params_file: true)"
            )
        if c in _BACKSLASHED or (i == 0 and c in _LEADING) or (c == "~" and prev in ":="):
            out.append("\\")
        out.append(c)
        prev = c
    return "".join(out)


# --------------------------------------------------------------------------- file contents


def _image_ref(image: str) -> str:
    """The image as the stock script names it: ``:latest`` added when there is no tag."""
    return image if ":" in image else image + ":latest"


def boinc_app_script(
    image: str,
    command: Sequence[str],
    entrypoint: str | None = None,
    prerun: Sequence[str] = (),
    postrun: Sequence[str] = (),
) -> str:
    """Return the ``shared/boinc_app`` shell script of one job, as boinc2docker lays it out.

    It loads the image from the staged layer files (each gunzipped to a plain
    tar, all extracted into one folder, streamed as one tar into ``docker
    load``), prints a few diagnostics, runs the prerun lines, ``docker run --rm -v
    /root/shared:/root/shared [--entrypoint E] IMAGE ARGS...`` with every argument
    escaped like ``printf %q``, then the postrun lines.
    """
    run = ["docker", "run", "--rm", "-v", "/root/shared:/root/shared"]
    if entrypoint:
        run += ["--entrypoint", entrypoint]
    run.append(_image_ref(image))
    run += [printf_q(a) for a in command]
    lines = [
        "#!/bin/sh",
        "set -e",
        "",
        'echo "Importing Docker image from BOINC..."',
        'work="$(mktemp -d)"',
        'mkdir -p "$work/combined"',
        "for f in /root/shared/image/*.tar.manual.gz; do",
        '    [ -e "$f" ] && gunzip -c "$f" > "$work/$(basename "$f" .manual.gz)"',
        "done",
        'for t in "$work"/*.tar; do tar xf "$t" -C "$work/combined"; rm -f "$t"; done',
        'tar cf - -C "$work/combined" . | docker load',
        'rm -rf "$work"',
        "",
        'echo "Prerun diagnostics..."',
        "docker images",
        "",
        'echo "Prerun commands..."',
        *prerun,
        "",
        'echo "Running..."',
        " ".join(run),
        "",
        'echo "Postrun commands..."',
        *postrun,
    ]
    return "\n".join(lines) + "\n"


def vbox_job_xml(rsc_memory_bound: float) -> str:
    """Return ``vbox_job.xml`` with boinc2docker's settings and ``memory_size_mb`` = bound / 1e6."""
    return (
        "<vbox_job>\n"
        "    <os_name>Linux26_64</os_name>\n"
        "    <enable_isocontextualization>1</enable_isocontextualization>\n"
        "    <enable_shared_directory/>\n"
        "    <enable_network/>\n"
        "    <completion_trigger_file>completion_trigger_file</completion_trigger_file>\n"
        "    <disable_automatic_checkpoints/>\n"
        f"    <memory_size_mb>{int(int(rsc_memory_bound) / 1e6)}</memory_size_mb>\n"
        "</vbox_job>\n"
    )


def unique_name(open_name: str, key: str) -> str:
    """Return ``<stem>_<32 hex><ext>`` for a per-job file, the hex derived from ``key``.

    boinc2docker appends a random 32-hex suffix before the extension of the
    open name's base name; a suffix derived from a key unique to the workunit
    keeps names unique forever and lets a rerun rewrite the same files.
    """
    base = open_name.rsplit("/", 1)[-1]
    dot = base.rfind(".")
    stem, ext = (base[:dot], base[dot:]) if dot > 0 else (base, "")
    digest = hashlib.sha256(f"{key}\0{open_name}".encode()).hexdigest()[:32]
    return f"{stem}_{digest}{ext}"


def _content_name(open_name: str, data: bytes) -> str:
    base = open_name.rsplit("/", 1)[-1]
    dot = base.rfind(".")
    stem, ext = (base[:dot], base[dot:]) if dot > 0 else (base, "")
    return f"{stem}_{hashlib.md5(data, usedforsecurity=False).hexdigest()}{ext}"


# --------------------------------------------------------------------------- templates, lines


@dataclass(frozen=True)
class FileRef:
    """One input file of a workunit: its staged name, open name and flags."""

    name: str
    open_name: str
    flags: tuple[str, ...] = ()


def input_template(files: Sequence[FileRef]) -> str:
    """Return the input template of a file set: a ``<file_info>`` per file, then ``<workunit>``."""
    out = ["<input_template>"]
    for i, f in enumerate(files):
        out.append("    <file_info>")
        out.append(f"        <number>{i}</number>")
        out += [f"        <{flag}/>" for flag in f.flags]
        out.append("    </file_info>")
    out.append("    <workunit>")
    for i, f in enumerate(files):
        out += [
            "        <file_ref>",
            f"            <file_number>{i}</file_number>",
            f"            <open_name>{_xml_text(f.open_name)}</open_name>",
            "            <copy_file/>",
            "        </file_ref>",
        ]
    out.append("    </workunit>")
    out.append("</input_template>")
    return "\n".join(out) + "\n"


def _xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def template_path(template: str) -> str:
    """Where a template is stored, relative to the project root (content-addressed)."""
    return f"templates/fast_{hashlib.sha256(template.encode()).hexdigest()[:24]}_in"


def stdin_line(wu_name: str, files: Sequence[FileRef], template: str | None = None) -> str:
    """Return one ``create_work --stdin`` line; raise ConfigError past BOINC's 4096 characters."""
    parts = ["--wu_name", wu_name]
    if template is not None:
        parts += ["--wu_template", template]
    parts += [f.name for f in files]
    line = " ".join(parts)
    if len(line) > boinc.STDIN_LINE_MAX:
        raise ConfigError(
            f"workunit {wu_name}: its create_work --stdin line has {len(line)} characters, "
            f"more than the {boinc.STDIN_LINE_MAX} BOINC reads ({len(files)} input files, "
            "mostly image layers); use submit mode 'batch' for this image"
        )
    return line


# --------------------------------------------------------------------------- image files


@dataclass(frozen=True)
class ImageFiles:
    """The image's staged files, in template order, as read from an existing workunit."""

    files: tuple[FileRef, ...]
    source: str  # the workunit they were read from


def image_files_from_xml_doc(xml_doc: bytes | str, source: str = "") -> ImageFiles:
    """Read the image's layer and image files (open names ``shared/image/...``) from an ``xml_doc``.

    Raises ConfigError when there is no layer file: such a workunit does not
    load an image the way boinc2docker's ``boinc_app`` does (the emulator's host
    image mode stages a marker image with one layer, so it passes).
    """
    text = xml_doc.decode("utf-8") if isinstance(xml_doc, bytes) else xml_doc
    # xml_doc is written by create_work from our own template, not by outsiders.
    root = ET.fromstring(f"<r>{text}</r>")  # noqa: S314
    flags: dict[str, tuple[str, ...]] = {}
    for fi in root.findall("file_info"):
        name = (fi.findtext("name") or "").strip()
        flags[name] = tuple(
            c.tag for c in fi if c.tag not in ("name", "url", "md5_cksum", "nbytes", "number")
        )
    files = []
    for fr in root.findall("workunit/file_ref"):
        name = (fr.findtext("file_name") or "").strip()
        open_name = (fr.findtext("open_name") or "").strip()
        if open_name.startswith("shared/image/"):
            files.append(FileRef(name, open_name, flags.get(name, ())))
    if not any(f.name.startswith("layer_") for f in files):
        raise ConfigError(
            f"workunit {source or '?'} loads no image layers (files: "
            f"{', '.join(f.name for f in files) or 'none'}): fast mode writes boinc2docker's "
            "own boinc_app, which needs the image's layer files; use submit mode 'batch' "
            "for this server"
        )
    return ImageFiles(tuple(files), source)


# --------------------------------------------------------------------------- server layout


@dataclass(frozen=True)
class ServerLayout:
    """Where the project keeps input files: ``download_dir`` and ``uldl_dir_fanout``."""

    download_dir: str
    fanout: int

    def path(self, name: str) -> str:
        """Return ``download/<fanout dir>/name`` (the ``bin/dir_hier_path`` rule)."""
        return f"{self.download_dir}/{boinc.dir_hier_subdir(name, self.fanout)}/{name}"


_CONFIG_RE = re.compile(r"<(download_dir|uldl_dir_fanout)>\s*([^<]*?)\s*</\1>")


def read_layout(ctx: SubmitContext) -> ServerLayout:
    """Read ``download_dir`` and ``uldl_dir_fanout`` from the project's ``config.xml``.

    Only those two lines are read (``grep``), so the file's database password
    never leaves the server.
    """
    res = ctx.transport.run(
        ["grep", "-E", "<(download_dir|uldl_dir_fanout)>", "config.xml"],
        timeout=ctx.timeout,
        check=False,
    )
    values = dict(_CONFIG_RE.findall(res.stdout.decode("utf-8", "replace")))
    download = values.get("download_dir")
    if not download:
        raise ServerError(
            f"{ctx.transport.url}: config.xml names no <download_dir> (exit {res.exit_code}: "
            f"{res.stderr.decode('utf-8', 'replace').strip()[-300:]})"
        )
    fanout_text = values.get("uldl_dir_fanout", "1024")
    try:
        fanout = int(fanout_text)
    except ValueError as exc:
        raise ServerError(f"config.xml: uldl_dir_fanout {fanout_text!r} is not an integer") from exc
    if fanout < 1:
        raise ServerError(f"config.xml: uldl_dir_fanout {fanout} is not a positive integer")
    if not download.startswith("/"):
        download = ctx.transport.path(download)
    return ServerLayout(download.rstrip("/"), fanout)


# --------------------------------------------------------------------------- planning files


def shares_app(spec: SweepSpec) -> bool:
    """Whether a sweep's ``boinc_app`` and ``vbox_job.xml`` are the same for every point.

    True when the command has no placeholders (prerun and postrun never have
    any) and the job gets per-job input files: the "parameters in a file" variant.
    """
    if not (spec.params_file or spec.inputs):
        return False
    return not any(compile_template(a).names for a in spec.command_args)


@dataclass(frozen=True)
class WorkunitFiles:
    """The files of one planned workunit and their contents where they are new."""

    wu_name: str
    refs: tuple[FileRef, ...]
    contents: dict[str, bytes]  # staged name -> bytes, per-job files only


def plan_files(
    spec: SweepSpec,
    wu: PlannedWorkunit,
    image: ImageFiles,
    shared: tuple[FileRef, FileRef] | None,
    vbox: bytes,
    key: str,
) -> WorkunitFiles:
    """Name and build one workunit's files in stock order (custom, vbox_job, boinc_app, image)."""
    refs: list[FileRef] = []
    contents: dict[str, bytes] = {}
    wkey = f"{key}\0{wu.wu_name}"
    for open_name, data in wu.input_files:
        name = unique_name(open_name, wkey)
        refs.append(FileRef(name, open_name))
        contents[name] = data
    if shared is not None:
        refs += shared
    else:
        vname = unique_name("vbox_job.xml", wkey)
        refs.append(FileRef(vname, "vbox_job.xml"))
        contents[vname] = vbox
        aname = unique_name("shared/boinc_app", wkey)
        refs.append(FileRef(aname, "shared/boinc_app"))
        contents[aname] = boinc_app_script(
            spec.image, wu.command, spec.entrypoint, wu.prerun, wu.postrun
        ).encode("utf-8")
    refs += image.files
    return WorkunitFiles(wu.wu_name, tuple(refs), contents)


# --------------------------------------------------------------------------- creation

# Per transport URL: the server layout, and per (app, image) the image files and
# shared files known to be staged. Each is re-read at most once per process.
_layouts: dict[str, ServerLayout] = {}
_images: dict[tuple[str, str, str], ImageFiles] = {}
_staged_shared: set[tuple[str, str]] = set()


def forget_server_cache() -> None:
    """Drop what this process remembers about servers (layouts, image files, shared files)."""
    _layouts.clear()
    _images.clear()
    _staged_shared.clear()


def _layout(ctx: SubmitContext) -> ServerLayout:
    url = ctx.transport.url
    if url not in _layouts:
        _layouts[url] = read_layout(ctx)
    return _layouts[url]


def _example_xml_doc(ctx: SubmitContext, spec: SweepSpec) -> tuple[str, bytes] | None:
    """Return (name, xml_doc) of one workunit of this sweep already on the server."""
    wu = boinc.workunit
    prefix = sweep_name_prefix(spec.name, spec.version)
    query = (
        sa.select(wu.c.name, wu.c.xml_doc)
        .where(wu.c.name.like(like_prefix(prefix), escape="\\"))
        .order_by(wu.c.name)
        .limit(1)
    )
    with ctx.boinc.engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None or not row.xml_doc:
        return None
    doc = row.xml_doc
    return str(row.name), doc if isinstance(doc, bytes) else str(doc).encode("utf-8")


def _seed(ctx: SubmitContext, spec: SweepSpec, wu: PlannedWorkunit) -> list[str]:
    """Create one workunit with the stock boinc2docker function, as ``batch`` mode does.

    Progress is not reported here: :func:`create_fast` counts the seed once it is
    found in the database.
    """
    from pipeline.submit import _create_batch

    return _create_batch(replace(ctx, on_progress=None), spec, [wu])


def _stage_shared(ctx: SubmitContext, layout: ServerLayout, files: dict[str, bytes]) -> None:
    """Write content-addressed shared files that are not on the server yet (never rewrite them)."""
    key = ctx.transport.url
    wanted = {n: d for n, d in files.items() if (key, n) not in _staged_shared}
    if not wanted:
        return
    paths = {layout.path(n): n for n in wanted}
    res = ctx.transport.run(
        ["sh", "-c", 'for f in "$@"; do [ -e "$f" ] && echo "$f"; done; true', "sh", *paths],
        timeout=ctx.timeout,
    )
    there = {paths[p] for p in res.stdout.decode("utf-8", "replace").splitlines() if p in paths}
    missing = {layout.path(n): d for n, d in wanted.items() if n not in there}
    if missing:
        ctx.transport.write_files(missing, timeout=ctx.timeout)
    _staged_shared.update((key, n) for n in wanted)


def create_fast(
    ctx: SubmitContext,
    spec: SweepSpec,
    todo: Sequence[PlannedWorkunit],
    *,
    share_app: bool | None = None,
) -> list[str]:
    """Create a chunk of workunits, none of them on the server yet; return what the server printed.

    ``share_app`` forces the "parameters in a file" variant on or off (by
    default it is used when :func:`shares_app` says the sweep allows it). The
    caller verifies creation in the BOINC database.
    """
    outputs: list[str] = []
    if not todo:
        return outputs
    rest = list(todo)
    image_key = (ctx.transport.url, spec.app, spec.image)
    image = _images.get(image_key)
    if image is None:
        example = _example_xml_doc(ctx, spec)
        if example is None:
            seed = rest.pop(0)
            outputs += _seed(ctx, spec, seed)
            if not ctx.boinc.existing_workunits([seed.wu_name]):
                return outputs  # the caller reports the failure with this output
            if ctx.on_progress:
                ctx.on_progress(1)
            example = _example_xml_doc(ctx, spec)
            if example is None:
                raise ServerError(f"workunit {seed.wu_name} was created but has no xml_doc")
        image = image_files_from_xml_doc(example[1], example[0])
        _images[image_key] = image
    if not rest:
        return outputs
    layout = _layout(ctx)

    vbox = vbox_job_xml(spec.job.rsc_memory_bound).encode("utf-8")
    use_shared = shares_app(spec) if share_app is None else share_app
    shared: tuple[FileRef, FileRef] | None = None
    if use_shared:
        first = rest[0]
        app = boinc_app_script(
            spec.image, first.command, spec.entrypoint, first.prerun, first.postrun
        ).encode("utf-8")
        vname = _content_name("vbox_job.xml", vbox)
        aname = _content_name("shared/boinc_app", app)
        shared = (
            FileRef(vname, "vbox_job.xml", SHARED_FLAGS),
            FileRef(aname, "shared/boinc_app", SHARED_FLAGS),
        )
        _stage_shared(ctx, layout, {vname: vbox, aname: app})
        if any(
            (wu.command, wu.prerun, wu.postrun) != (first.command, first.prerun, first.postrun)
            for wu in rest
        ):
            raise ConfigError(
                f"sweep {spec.name!r}: the shared boinc_app needs the same command, prerun "
                "and postrun for every point"
            )

    key = spec.workunit_hash()
    planned = [plan_files(spec, wu, image, shared, vbox, key) for wu in rest]
    templates: dict[str, str] = {}  # template text -> path
    lines_by_name: dict[str, str] = {}
    for wf in planned:
        text = input_template(wf.refs)
        if text not in templates:
            templates[text] = template_path(text)
    single = len(templates) == 1
    staged: dict[str, bytes] = {path: text.encode("utf-8") for text, path in templates.items()}
    for wf in planned:
        tpath = None if single else templates[input_template(wf.refs)]
        lines_by_name[wf.wu_name] = stdin_line(wf.wu_name, wf.refs, tpath)
        for name, data in wf.contents.items():
            staged[layout.path(name)] = data
    ctx.transport.write_files(staged, timeout=ctx.timeout)

    argv = ["bin/create_work", *job_options(spec)]
    if single:
        argv += ["--wu_template", next(iter(templates.values()))]
    argv.append("--stdin")
    remaining = [wf.wu_name for wf in planned]
    for round_no in range(RESUME_ROUNDS):
        feed = "".join(lines_by_name[n] + "\n" for n in remaining).encode("utf-8")
        t0 = time.perf_counter()
        res = ctx.transport.run(argv, stdin=feed, timeout=ctx.timeout, check=False)
        took = time.perf_counter() - t0
        text = (res.stdout + res.stderr).decode("utf-8", "replace").strip()
        if res.exit_code == 0:
            if text:
                outputs.append(f"create_work --stdin ({len(remaining)} lines): {text[-500:]}")
            break
        outputs.append(
            f"create_work --stdin ({len(remaining)} lines, round {round_no + 1}) exited "
            f"{res.exit_code} after {took:.2f}s: {text[-1000:]}"
        )
        created = ctx.boinc.existing_workunits(remaining)
        if not created and round_no > 0:
            break  # no progress twice in a row: leave the rest to the caller's report
        remaining = [n for n in remaining if n not in created]
        if not remaining:
            break
    if ctx.on_progress:
        ctx.on_progress(len(planned))
    return outputs


def staged_names(spec: SweepSpec, wu: PlannedWorkunit) -> list[str]:
    """Return the names of the per-job files fast mode stages for a workunit (for clean-up)."""
    key = f"{spec.workunit_hash()}\0{wu.wu_name}"
    names = [unique_name(o, key) for o, _ in wu.input_files]
    if not shares_app(spec):
        names += [unique_name("vbox_job.xml", key), unique_name("shared/boinc_app", key)]
    return names
