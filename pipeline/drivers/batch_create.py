# -*- coding: utf-8 -*-
"""Create a chunk of boinc2docker workunits in one process on the BOINC server.

This file runs on the server, under the server's own Python (Python 2.7 on the
stock boinc-server-docker apache image, or Python 3), with the standard library
only. The pipeline sends its source with ``python -c`` and the jobs as JSON
lines on standard input, one object per workunit::

    {"wu_name": ..., "image": ..., "command": [...], "appname": ...,
     "entrypoint": null, "prerun": "...", "postrun": "...",
     "input_files": [["shared/params.json", "<base64>", []]],
     "create_work_args": {"wu_name": ..., "min_quorum": 1, ...}}

It imports ``boinc2docker_create_work`` from the project's
``bin/boinc2docker_create_work.py`` (the project root is the working directory)
and calls it once per job, so the image is exported once per chunk. For every
job it writes one JSON line to standard output: ``{"wu_name": ..., "ok": bool,
"output": "..."}``. ``ok`` only says the function returned something: the
pipeline verifies creation in the BOINC database, since boinc2docker can fail
without saying so.
"""

from __future__ import print_function

import base64
import io
import json
import os
import sys
import traceback


def _load_function():
    root = os.getcwd()
    for sub in ("py", "bin"):
        path = os.path.join(root, sub)
        if path not in sys.path:
            sys.path.insert(0, path)
    import boinc2docker_create_work as module  # noqa: E402  (found through sys.path)

    return module.boinc2docker_create_work


def _text(value):
    if value is None:
        return ""
    if not isinstance(value, str):
        try:
            value = value.decode("utf-8", "replace")
        except AttributeError:
            value = str(value)
    return value


def _decode_files(files):
    decoded = []
    for open_name, data_b64, flags in files or []:
        if sys.version_info[0] == 2:
            open_name = open_name.encode("utf-8")
            flags = [f.encode("utf-8") for f in flags]
        decoded.append((open_name, base64.b64decode(data_b64), list(flags)))
    return decoded


def _native(value):
    """Turn JSON's unicode strings into the native str type (bytes on Python 2)."""
    if sys.version_info[0] == 2:
        if isinstance(value, unicode):  # noqa: F821  (Python 2 only)
            return value.encode("utf-8")
        if isinstance(value, list):
            return [_native(v) for v in value]
        if isinstance(value, dict):
            return dict((_native(k), _native(v)) for k, v in value.items())
    return value


def main():
    real_stdout = sys.stdout
    create = _load_function()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        job = json.loads(line)
        captured = io.BytesIO() if sys.version_info[0] == 2 else io.StringIO()
        sys.stdout = captured
        ok = False
        try:
            returned = create(
                _native(job["image"]),
                command=_native(job.get("command") or []),
                input_files=_decode_files(job.get("input_files")),
                appname=_native(job.get("appname") or "boinc2docker"),
                entrypoint=_native(job.get("entrypoint")),
                prerun=_native(job.get("prerun")),
                postrun=_native(job.get("postrun")),
                verbose=False,
                create_work_args=_native(dict(job.get("create_work_args") or {})),
            )
            ok = returned is not None
            output = _text(captured.getvalue()) + _text(returned)
        except (Exception, SystemExit):  # report the job's failure and go on with the others
            output = _text(captured.getvalue()) + traceback.format_exc()
        finally:
            sys.stdout = real_stdout
        real_stdout.write(
            json.dumps({"wu_name": job["wu_name"], "ok": ok, "output": output[-2000:]})
        )
        real_stdout.write("\n")
        real_stdout.flush()


if __name__ == "__main__":
    main()
