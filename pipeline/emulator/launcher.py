"""A small long-lived process that starts the emulator's jobs, each as the VM runs it.

Forking the emulator's own process (SQLAlchemy, a database driver, thousands of
objects) costs milliseconds per job; this process imports only the standard
library, so forking it is cheap. :mod:`pipeline.emulator.runner` starts it once
(``python -I -S launcher.py``) and talks to it over its stdin and stdout, one
tab-separated line per message:

- ``S <token> <flags> <slot as hex bytes>``: start a job in ``<slot>/shared``;
  flags ``c`` (container mode: the caller has already bound the slot onto
  ``/root/shared``, so no namespace of its own) and ``n`` (the ``no_output``
  fault: the results folder is emptied before the archive step);
- ``K <token>``: kill the job's process group (ignored once it has exited);
- replies ``P <token> <pid>`` when a job has started (its process group id, so
  the emulator can stop it even if this process dies) and ``E <token> <wait
  status> <user+system CPU seconds> <peak RSS bytes>`` when it exits.

Each job: a new session, stdout and stderr to ``<slot>/stderr.txt``, stdin from
``/dev/null``; in host mode a mount namespace of its own (``unshare(CLONE_NEWNS)``,
``/`` made private, whatever it inherited on ``/root/shared`` unmounted) with the
slot bind-mounted onto ``/root/shared`` and :data:`DOCKER_SHIM` first on its
PATH (as ``<slot>/emulator-bin/docker``); then ``/bin/sh -c JOB_SCRIPT`` in
``/root/shared``. When stdin closes, remaining jobs are killed and the process
exits; if this process is killed, each job's first process gets SIGKILL
(parent-death signal) and the emulator kills the rest. Standard library only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys

SHARED = b"/root/shared"

#: What the VM runs: the workunit's boinc_app, then the archive step when it exits 0.
#: ``/root/shared/results`` exists before the job starts (the emulator creates it).
JOB_SCRIPT = """/bin/sh /root/shared/boinc_app
rc=$?
if [ "$rc" -eq 0 ]; then
  if [ -n "$EMULATOR_NO_OUTPUT" ]; then
    rm -rf /root/shared/results && mkdir /root/shared/results
  fi
  cd /root/shared/results && tar czf /root/shared/results.tgz *
fi
exit $rc
"""

JOB_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}

#: Label in the image config of an emulator host-mode image (marker layer and image files
#: written by the emulator's ``bin/boinc2docker_create_work.py``, which repeats it).
HOST_MODE_LABEL = "org.boinc-pipeline.emulator.host-mode"

#: Where a host-mode job finds the shim: ``<slot>/emulator-bin/docker``, first on its PATH.
SHIM_DIR = b"emulator-bin"

#: ``docker`` inside a host-mode job (POSIX sh). Images are not loaded: ``load``
#: reads and discards its input; ``images``/``ps``/``inspect`` print harmless
#: output; ``run [--rm] [-v X:X]... [-e K=V]... [-w DIR] [--entrypoint E] IMAGE
#: ARGS...`` runs ARGS (after E when given) on the host, in ``/`` (the default
#: WORKDIR) or DIR, in the job's own ``/root/shared``, so ``-v
#: /root/shared:/root/shared`` needs no mount. Anything else exits 125 (docker's
#: status for its own errors) naming what is not supported.
DOCKER_SHIM = r"""#!/bin/sh
# docker for a boinc-pipeline emulator host-mode job: no engine, no image; the
# command of "docker run" runs directly on the host, in the job's /root/shared.
me="docker (emulator host mode)"
fail() { echo "$me: $*" >&2; exit 125; }
sub="${1:-}"
[ $# -gt 0 ] && shift
case "$sub" in
load)
    cat > /dev/null
    echo "Loaded image: emulator host mode (nothing loaded)"
    ;;
images)
    echo "REPOSITORY   TAG   IMAGE ID   CREATED   SIZE"
    ;;
ps)
    echo "CONTAINER ID   IMAGE   COMMAND   CREATED   STATUS   PORTS   NAMES"
    ;;
inspect)
    echo "[]"
    ;;
run)
    entry=
    has_entry=
    workdir=/
    while [ $# -gt 0 ]; do
        case "$1" in
        --rm|-i|-t|-it|--init) shift ;;
        -v|--volume)
            [ $# -ge 2 ] || fail "option $1 needs a value"
            vol="$2"; shift 2 ;;
        --volume=*) vol="${1#--volume=}"; shift ;;
        -e|--env)
            [ $# -ge 2 ] || fail "option $1 needs a value"
            export "$2" || fail "bad -e value: $2"; shift 2 ;;
        --env=*) export "${1#--env=}" || fail "bad --env value: $1"; shift ;;
        -w|--workdir)
            [ $# -ge 2 ] || fail "option $1 needs a value"
            workdir="$2"; shift 2 ;;
        --workdir=*) workdir="${1#--workdir=}"; shift ;;
        --entrypoint)
            [ $# -ge 2 ] || fail "option $1 needs a value"
            entry="$2"; has_entry=1; shift 2 ;;
        --entrypoint=*) entry="${1#--entrypoint=}"; has_entry=1; shift ;;
        --) shift; break ;;
        -*) fail "docker run option $1 is not supported" ;;
        *) break ;;
        esac
        case "${vol:-}" in
        "") ;;
        *)
            src="${vol%%:*}"; rest="${vol#*:}"; dst="${rest%%:*}"
            [ "$src" = "$dst" ] || fail "-v $vol: only a folder on itself (-v X:X) is supported"
            vol= ;;
        esac
    done
    [ $# -gt 0 ] || fail "docker run needs an image"
    shift
    cd "$workdir" || fail "no working directory $workdir"
    if [ -n "$has_entry" ] && [ -n "$entry" ]; then
        exec "$entry" "$@"
    fi
    [ $# -gt 0 ] || fail "docker run needs a command (an image's own CMD is not known)"
    exec "$@"
    ;;
*)
    fail "docker ${sub:-(no command)} is not supported"
    ;;
esac
"""

_CLONE_NEWNS = 0x00020000
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2
_EINVAL = 22
_PR_SET_PDEATHSIG = 1


def _check(ret: int, what: str) -> None:
    """Raise OSError (with errno) when a libc call returned non-zero."""
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _clear_shared(libc: ctypes.CDLL) -> None:
    """Unmount, in the job's own namespace, every mount it inherited on /root/shared.

    Another emulator's container job binds its slot onto the host's /root/shared;
    a job started meanwhile copies that mount. Binding on top of it would make the
    job's /root/shared sit on the other slot's folder, and when that slot is removed
    the kernel detaches every mount on it in every namespace: the job would lose its
    working folder and its files while running.
    """
    for _ in range(64):
        if libc.umount2(SHARED, _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err == _EINVAL:  # not a mount point (any more)
                return
            raise OSError(err, f"umount {SHARED.decode()}: {os.strerror(err)}")
    raise OSError(0, f"umount {SHARED.decode()}: still mounted after 64 unmounts")


def _child(libc: ctypes.CDLL, slot: bytes, flags: str) -> None:
    """Turn this forked process into the job (never returns)."""
    try:
        os.setsid()
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # the job dies with the launcher
        fd = os.open(slot + b"/stderr.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        env = dict(JOB_ENV)
        if "n" in flags:
            env["EMULATOR_NO_OUTPUT"] = "1"
        if "c" not in flags:
            shim_dir = slot + b"/" + SHIM_DIR
            os.makedirs(shim_dir, exist_ok=True)
            shim = os.open(shim_dir + b"/docker", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755)
            os.write(shim, DOCKER_SHIM.encode())
            os.close(shim)
            env["PATH"] = os.fsdecode(shim_dir) + ":" + env["PATH"]
            _check(libc.unshare(_CLONE_NEWNS), "unshare")
            _check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount /")
            _clear_shared(libc)
            _check(libc.mount(slot + b"/shared", SHARED, None, _MS_BIND, None), "mount")
        os.chdir(SHARED)
        os.execve("/bin/sh", ["/bin/sh", "-c", JOB_SCRIPT], env)  # noqa: S606
    except BaseException as exc:
        os.write(2, f"emulator: cannot start the job: {exc}\n".encode())
    os._exit(127)


def main() -> int:
    """Serve start and kill requests on stdin until it closes."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_void_p,
    ]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _sig, _frame: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    jobs: dict[int, str] = {}  # pid -> token
    pids: dict[str, int] = {}  # token -> pid
    out = sys.stdout.buffer
    buf = b""
    eof = False
    replies: list[str] = []
    while True:
        while jobs:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            token = jobs.pop(pid, None)
            if token is None:
                continue
            del pids[token]
            cpu = usage.ru_utime + usage.ru_stime
            replies.append(f"E\t{token}\t{status}\t{cpu!r}\t{usage.ru_maxrss * 1024}\n")
        if replies and not eof:
            try:
                out.write("".join(replies).encode())
                out.flush()
            except BrokenPipeError:  # the emulator went away: stop its jobs
                eof = True
                for pid in jobs:
                    _killpg(pid)
        replies = []
        if eof and not jobs:
            return 0
        ready, _, _ = select.select([wake_r] if eof else [0, wake_r], [], [])
        if wake_r in ready:
            while True:
                try:
                    if not os.read(wake_r, 4096):
                        break
                except BlockingIOError:
                    break
        if 0 not in ready:
            continue
        data = os.read(0, 65536)
        if not data:
            eof = True
            for pid in jobs:
                _killpg(pid)
            continue
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            parts = line.decode().split("\t")
            if parts[0] == "S":
                token, flags, slot = parts[1], parts[2], bytes.fromhex(parts[3])
                pid = os.fork()
                if pid == 0:  # pragma: no cover - child
                    _child(libc, slot, flags)
                jobs[pid] = token
                pids[token] = pid
                replies.append(f"P\t{token}\t{pid}\n")
            elif parts[0] == "K" and parts[1] in pids:
                _killpg(pids[parts[1]])


def _killpg(pid: int) -> None:
    """Kill a job's process group, and the job itself in case it has not called setsid yet."""
    for kill in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError):
            kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
