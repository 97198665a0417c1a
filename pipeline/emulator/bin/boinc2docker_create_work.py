#!/usr/bin/env python
# -*- coding: utf-8 -*-
"""Turn a Docker image and command into a BOINC workunit (boinc-pipeline emulator).

Stand-in for boinc2docker's script of the same name, with its options, quirks and
importable function (see boinc-reference.md, section 2). Standard library only;
runs under Python 2.7 and 3.

    boinc2docker_create_work.py [OPTIONS] IMAGE [COMMAND ...]

Every option must come before IMAGE: COMMAND takes the rest of the line.
``--rsc_memory_bound``/``--rsc_disk_bound`` are integers in bytes. On a failed
docker step the error is printed and the exit status is 0 with nothing created;
only bin/create_work's own failure gives a non-zero status.

Images (``<emulator_image_mode>`` in config.xml):
  docker  the image is exported from the local Docker engine (bin/emulator_export_image)
          into layer files; a missing image or engine is a docker step failure.
  host    no engine is used: a marker image (one tiny layer file and an image file,
          labelled as an emulator host-mode image) is staged; the emulator's hosts
          give such jobs a docker shim that runs the command directly on the host
          (in the job's own /root/shared).
  auto    docker when the engine has the image, host otherwise (the default).
``<emulator_b2d_fail>`` in config.xml reproduces the silent failure on every call.
"""
from __future__ import print_function

import argparse
import binascii
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN_DIR = os.path.join(PROJECT_ROOT, "bin")

CREATE_WORK_INT = ["batch", "priority", "min_quorum", "target_nresults", "max_error_results",
                   "max_total_results", "max_success_results", "hr_class", "size_class"]
CREATE_WORK_FLOAT = ["delay_bound", "rsc_fpops_est", "rsc_fpops_bound"]
CREATE_WORK_STR = ["wu_name", "result_template", "command_line", "credit", "app_version_num",
                   "keywords", "target_host", "target_user", "target_team", "broadcast_user",
                   "broadcast_team", "wu_id", "config_dir"]

_image_cache = {}


class DockerStepFailed(Exception):
    """A docker step failed; boinc2docker prints the message and creates nothing."""


def _config():
    tree = ET.parse(os.path.join(PROJECT_ROOT, "config.xml"))
    cfg = tree.find("config")
    values = {}
    for child in cfg:
        values[child.tag] = (child.text or "").strip()
    return values


def _fanout_dir(name, fanout):
    digest = hashlib.md5(name.encode("utf-8")).hexdigest()
    return "%x" % (int(digest[1:8], 16) % fanout)


def _staged_path(cfg, name):
    fanout = int(cfg.get("uldl_dir_fanout") or 1024)
    folder = os.path.join(cfg["download_dir"], _fanout_dir(name, fanout))
    if not os.path.isdir(folder):
        try:
            os.makedirs(folder)
        except OSError:
            if not os.path.isdir(folder):
                raise
    return os.path.join(folder, name)


def _stage(cfg, name, data):
    path = _staged_path(cfg, name)
    tmp = path + ".%d.tmp" % os.getpid()
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.rename(tmp, path)
    return path


def _gzip_n(data):
    buf = io.BytesIO()
    gz = gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0)
    gz.write(data)
    gz.close()
    return buf.getvalue()


def _tar(members):
    """A plain tar of ``(name, bytes)`` members; ``None`` instead of bytes is a folder."""
    buf = io.BytesIO()
    tar = tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT)
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
    tar.close()
    return buf.getvalue()


def _random_hex():
    return binascii.hexlify(os.urandom(16)).decode("ascii")


def shell_quote(args):
    """Escape each argument exactly as bash's ``printf %q`` does (by asking bash)."""
    if not args:
        return []
    out = subprocess.check_output(
        ["bash", "-c", 'for a in "$@"; do printf "%q\\0" "$a"; done', "bash"] + list(args))
    if not isinstance(out, str):
        out = out.decode("utf-8", "surrogateescape")
    return out.split("\0")[:-1]


def _to_bytes(value):
    if isinstance(value, bytes):
        return value
    return value.encode("utf-8")


def _to_text(value):
    if isinstance(value, bytes) and not isinstance(value, str):
        return value.decode("utf-8")
    return value


# ------------------------------------------------------------------ image staging

#: Label (and comment) that marks an emulator host-mode image; the emulator's hosts
#: look for it in the image file (pipeline/emulator/daemons.py, HOST_MODE_LABEL).
HOST_MODE_LABEL = "org.boinc-pipeline.emulator.host-mode"


def _json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def host_mode_image_files(image):
    """Return ``(image_id, [(file name, bytes)])``: a marker image shaped like a real one.

    One layer file (a folder with ``layer.tar``, ``json`` and ``VERSION``, as
    ``docker save`` writes the legacy layout) and one image file (``<id>.json``,
    ``manifest.json``, ``repositories``), each a tar compressed with ``gzip -n``.
    The layer holds a single note; the image config carries HOST_MODE_LABEL.
    Everything is a pure function of the image name, so it is staged once.
    """
    note = ("boinc-pipeline emulator host mode: image %s is not loaded; the job's "
            "command runs on the host\n" % image).encode("utf-8")
    layer_tar = _tar([(".emulator-host-mode", note)])
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    comment = "boinc-pipeline emulator host-mode image (marker, not a real image)"
    config = _json({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "comment": comment,
        "config": {"Labels": {HOST_MODE_LABEL: "true", "image": image}, "Cmd": None},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    })
    image_id = hashlib.sha256(config).hexdigest()
    layer_id = hashlib.sha256(("emulator-host-mode-layer:" + diff_id).encode("utf-8")).hexdigest()
    layer_json = _json({"id": layer_id, "created": "1970-01-01T00:00:00Z", "comment": comment,
                        "config": {"Labels": {HOST_MODE_LABEL: "true"}}, "os": "linux"})
    repo, _sep, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
    tag = tag or "latest"
    manifest = _json([{"Config": image_id + ".json", "RepoTags": [repo + ":" + tag],
                       "Layers": [layer_id + "/layer.tar"]}])
    layer_file = _gzip_n(_tar([(layer_id, None),
                               (layer_id + "/VERSION", b"1.0"),
                               (layer_id + "/json", layer_json),
                               (layer_id + "/layer.tar", layer_tar)]))
    image_file = _gzip_n(_tar([(image_id + ".json", config),
                               ("manifest.json", manifest),
                               ("repositories", _json({repo: {tag: layer_id}}))]))
    return image_id, [("layer_%s.tar.manual.gz" % layer_id, layer_file),
                      ("image_%s.tar.manual.gz" % image_id, image_file)]


def _host_mode_image(cfg, image):
    image_id, files = host_mode_image_files(image)
    for name, data in files:
        if not os.path.exists(_staged_path(cfg, name)):
            _stage(cfg, name, data)
    return {"mode": "host", "image_id": image_id, "size": 0,
            "files": [name for name, _data in files]}


def _docker_image(cfg, image):
    proc = subprocess.Popen([os.path.join(BIN_DIR, "emulator_export_image"), image],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise DockerStepFailed((err or out).decode("utf-8", "replace").strip())
    info = json.loads(out.decode("utf-8"))
    if "error" in info:
        info["mode"] = "error"
    else:
        info["mode"] = "docker"
    return info


def resolve_image(cfg, image, force_reimport=False):
    """Stage the image once per process; return its mode, id, size and file names."""
    mode = cfg.get("emulator_image_mode") or "auto"
    key = (mode, image)
    if key in _image_cache and not force_reimport:
        return _image_cache[key]
    if mode == "host":
        info = _host_mode_image(cfg, image)
    else:
        info = _docker_image(cfg, image)
        if info["mode"] == "error":
            if mode == "auto":
                info = _host_mode_image(cfg, image)
            else:
                raise DockerStepFailed(info["error"])
    _image_cache[key] = info
    return info


# ------------------------------------------------------------------ per-job files

def _boinc_app(info, image, command, entrypoint, prerun, postrun):
    """The job's script, the same in every image mode (host mode's hosts provide a docker shim)."""
    args = shell_quote([image] + list(command or []))
    run = ["docker", "run", "--rm", "-v", "/root/shared:/root/shared"]
    if entrypoint:
        run += ["--entrypoint", shell_quote([entrypoint])[0]]
    lines = [
        "#!/bin/sh",
        "set -e",
        "",
        "# load the image from its staged layer files",
        "cd /root/shared/image",
        'for f in *.tar.manual.gz; do gunzip -c "$f" > "${f%.manual.gz}"; done',
        "rm -rf /root/shared/image/load && mkdir -p /root/shared/image/load",
        'for t in *.tar; do tar xf "$t" -C /root/shared/image/load; done',
        "tar cf - -C /root/shared/image/load . | docker load",
        "rm -rf /root/shared/image/load /root/shared/image/*.tar",
        "echo \"boinc_app: image %s loaded\"" % info["image_id"][:12],
        "cd /",
    ]
    lines += _lines(prerun)
    lines.append(" ".join(run + args))
    lines += _lines(postrun)
    return "\n".join(lines) + "\n"


def _lines(value):
    if not value:
        return []
    if isinstance(value, (list, tuple)):
        return [_to_text(v) for v in value]
    return _to_text(value).splitlines()


def _vbox_job(memory_bound, disable_automatic_checkpoints, progress_file, extra):
    parts = ["<vbox_job>",
             "    <os_name>Linux26_64</os_name>",
             "    <memory_size_mb>%d</memory_size_mb>" % int(memory_bound / 1e6),
             "    <enable_isocontextualization>1</enable_isocontextualization>",
             "    <enable_shared_directory/>",
             "    <enable_network/>",
             "    <completion_trigger_file>completion_trigger_file</completion_trigger_file>"]
    if disable_automatic_checkpoints:
        parts.append("    <disable_automatic_checkpoints/>")
    if progress_file:
        parts.append("    <fraction_done_filename>%s</fraction_done_filename>" % progress_file)
    for key, value in sorted((extra or {}).items()):
        if value is True or value is None:
            parts.append("    <%s/>" % key)
        else:
            parts.append("    <%s>%s</%s>" % (key, value, key))
    parts.append("</vbox_job>")
    return "\n".join(parts) + "\n"


def _unique_name(open_name, suffix):
    base = os.path.basename(open_name)
    stem, ext = os.path.splitext(base)
    return "%s_%s%s" % (stem, suffix, ext)


def boinc2docker_create_work(image,
                             command=None,
                             input_files=None,
                             appname='boinc2docker',
                             entrypoint=None,
                             prerun=None,
                             postrun=None,
                             verbose=True,
                             native_unzip=False,
                             memory=None,
                             disable_automatic_checkpoints=True,
                             progress_file=None,
                             vbox_job_xml=None,
                             create_work_args=None,
                             force_reimport=False):
    """Create one boinc2docker workunit; return create_work's output, None on a docker failure.

    ``input_files`` is a list of ``(open_name, bytes, flags)``; ``create_work_args``
    a dict of create_work options (``{'wu_name': ..., 'min_quorum': 1}``).
    Raises ``subprocess.CalledProcessError`` when bin/create_work fails.
    """
    cfg = _config()
    create_work_args = dict(create_work_args or {})
    try:
        if "emulator_b2d_fail" in cfg:
            raise DockerStepFailed("Error response from daemon: %s"
                                   % (cfg["emulator_b2d_fail"] or "emulated failure"))
        info = resolve_image(cfg, image, force_reimport)
    except DockerStepFailed as exc:
        print(str(exc))
        return None

    size = float(info.get("size") or 0)
    if memory is not None:
        create_work_args.setdefault("rsc_memory_bound", int(float(memory) * 1e6))
    memory_bound = int(create_work_args.pop("rsc_memory_bound", int(4 * size + 500e6)))
    disk_bound = int(create_work_args.pop("rsc_disk_bound", int(size + 100e6)))

    files = []  # (name, open_name, flags)
    for open_name, data, flags in (input_files or []):
        open_name = _to_text(open_name)
        name = _unique_name(open_name, _random_hex())
        if not isinstance(data, bytes):
            data = data.encode("utf-8")
        _stage(cfg, name, data)
        files.append((name, open_name, list(flags or [])))

    vbox_name = "vbox_job_%s.xml" % _random_hex()
    _stage(cfg, vbox_name, _vbox_job(memory_bound, disable_automatic_checkpoints,
                                     progress_file, vbox_job_xml).encode("utf-8"))
    files.append((vbox_name, "vbox_job.xml", []))
    app_name = "boinc_app_%s" % _random_hex()
    _stage(cfg, app_name,
           _to_bytes(_boinc_app(info, image, command, entrypoint, prerun, postrun)))
    files.append((app_name, "shared/boinc_app", []))
    image_flags = ["sticky", "no_delete"] + (["gzip"] if native_unzip else [])
    for name in info["files"]:
        files.append((name, "shared/image/" + name, list(image_flags)))

    template = ["<input_template>"]
    for i, (_name, _open, flags) in enumerate(files):
        template.append("<file_info>")
        template.append("    <number>%d</number>" % i)
        for flag in flags:
            template.append("    <%s/>" % flag)
        template.append("</file_info>")
    template.append("<workunit>")
    for i, (_name, open_name, _flags) in enumerate(files):
        template += ["    <file_ref>",
                     "        <file_number>%d</file_number>" % i,
                     "        <open_name>%s</open_name>" % open_name,
                     "        <copy_file/>",
                     "    </file_ref>"]
    template.append("</workunit>")
    template.append("</input_template>")
    fd, template_path = tempfile.mkstemp(prefix="boinc2docker_in_", dir=PROJECT_ROOT + "/tmp"
                                         if os.path.isdir(PROJECT_ROOT + "/tmp") else None)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(template) + "\n")

    cmd = [os.path.join(BIN_DIR, "create_work"), "--appname", appname,
           "--wu_template", template_path,
           "--rsc_memory_bound", str(memory_bound), "--rsc_disk_bound", str(disk_bound)]
    for key in sorted(create_work_args):
        value = create_work_args[key]
        if value is None:
            continue
        cmd += ["--" + key, str(value)]
    cmd += [name for name, _open, _flags in files]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                cwd=PROJECT_ROOT)
        out = proc.communicate()[0].decode("utf-8", "replace")
    finally:
        os.unlink(template_path)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd, out)
    return out


def _int_bytes(text):
    return int(text)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="boinc2docker_create_work.py",
        description="Create a BOINC workunit that runs a Docker image.")
    parser.add_argument("--appname", default="boinc2docker")
    parser.add_argument("--entrypoint")
    parser.add_argument("--native_unzip", action="store_true")
    parser.add_argument("--memory", type=int, help="MB (deprecated)")
    parser.add_argument("--rsc_memory_bound", type=_int_bytes)
    parser.add_argument("--rsc_disk_bound", type=_int_bytes)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--force_reimport", action="store_true")
    for name in CREATE_WORK_INT:
        parser.add_argument("--" + name, type=int)
    for name in CREATE_WORK_FLOAT:
        parser.add_argument("--" + name, type=float)
    for name in CREATE_WORK_STR:
        parser.add_argument("--" + name)
    parser.add_argument("image")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    create_work_args = {}
    for name in CREATE_WORK_INT + CREATE_WORK_FLOAT + CREATE_WORK_STR:
        value = getattr(args, name)
        if value is not None:
            create_work_args[name] = value
    if args.rsc_memory_bound is not None:
        create_work_args["rsc_memory_bound"] = args.rsc_memory_bound
    if args.rsc_disk_bound is not None:
        create_work_args["rsc_disk_bound"] = args.rsc_disk_bound
    try:
        out = boinc2docker_create_work(
            args.image, command=args.command, appname=args.appname,
            entrypoint=args.entrypoint, verbose=not args.quiet,
            native_unzip=args.native_unzip, memory=args.memory,
            create_work_args=create_work_args, force_reimport=args.force_reimport)
    except subprocess.CalledProcessError as exc:
        sys.stdout.write(exc.output or "")
        return exc.returncode
    if out:
        sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
