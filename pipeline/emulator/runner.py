"""Run one job the way a boinc2docker VM does, each in a private ``/root/shared``.

A job's input files are copied into a slot folder (``<slot>/shared`` becomes
``/root/shared``); then ``/bin/sh /root/shared/boinc_app`` runs, and when it
exits 0 the VM's archive step runs: ``cd /root/shared/results && tar czf
/root/shared/results.tgz *`` (members relative, no ``results/`` prefix, dotfiles
left out; an empty folder gives an empty archive and tar's error).

Host mode: the child process enters a mount namespace of its own
(``unshare(CLONE_NEWNS)``, ``/`` made private) and bind-mounts its slot onto
``/root/shared``, so parallel jobs never see each other's folder and no path in
the command is rewritten. Container mode (the workunit's ``boinc_app`` loads an
image and calls ``docker run -v /root/shared:/root/shared``): the Docker engine
resolves that path in its own namespace, so the slot is bind-mounted onto the
host's ``/root/shared`` and container jobs take turns, one at a time across
every emulator process (an ``flock`` on ``/run/lock/boinc-emulator-shared.lock``).
Both need root (``CAP_SYS_ADMIN``).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pipeline.errors import ConfigError

__all__ = ["SHARED", "RunningJob", "check_namespaces", "finish", "start"]

SHARED = Path("/root/shared")
LOCK_PATH = Path("/run/lock/boinc-emulator-shared.lock")
_CLONE_NEWNS = 0x00020000
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

#: What the VM runs: the workunit's boinc_app, then the archive step when it exits 0.
JOB_SCRIPT = """mkdir -p /root/shared/results
/bin/sh /root/shared/boinc_app
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


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _bind(source: Path, target: Path) -> None:
    _check(_libc.mount(str(source).encode(), str(target).encode(), None, _MS_BIND, None), "mount")


def check_namespaces() -> None:
    """Raise ConfigError unless this process can give a child its own /root/shared."""
    SHARED.mkdir(parents=True, exist_ok=True)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            _check(_libc.unshare(_CLONE_NEWNS), "unshare")
            _check(_libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount")
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise ConfigError(
            "the emulator's hosts need root (CAP_SYS_ADMIN) to give each job a private "
            "/root/shared with a mount namespace; run it as root"
        )


@dataclass
class RunningJob:
    """A job process started by :func:`start`."""

    pid: int
    slot: Path
    started: float
    container: bool
    lock: IO[bytes] | None = None
    status: int | None = None
    cpu_time: float = 0.0
    elapsed: float = 0.0
    peak_rss: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    def poll(self) -> bool:
        """Return whether the job has exited (collecting its status and CPU time)."""
        if self.status is not None:
            return True
        pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self._done(status, usage)
        return True

    def wait(self) -> None:
        """Block until the job exits."""
        if self.status is None:
            _, status, usage = os.wait4(self.pid, 0)
            self._done(status, usage)

    def kill(self) -> None:
        """Stop the job's whole process group."""
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, 9)

    def _done(self, status: int, usage: resource.struct_rusage) -> None:
        self.status = os.waitstatus_to_exitcode(status)
        self.cpu_time = usage.ru_utime + usage.ru_stime
        self.elapsed = time.monotonic() - self.started
        self.peak_rss = float(usage.ru_maxrss) * 1024.0
        if self.container:
            try:
                _check(_libc.umount2(str(SHARED).encode(), _MNT_DETACH), "umount")
            finally:
                if self.lock is not None:
                    self.lock.close()
                    self.lock = None


def start(slot: Path, *, container: bool, no_output: bool = False) -> RunningJob:
    """Start the job whose files are in ``slot/shared``; its output goes to ``slot/stderr.txt``."""
    env = dict(JOB_ENV)
    if no_output:
        env["EMULATOR_NO_OUTPUT"] = "1"
    shared = slot / "shared"
    log = slot / "stderr.txt"
    lock = None
    if container:
        LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
        lock = LOCK_PATH.open("wb")
        fcntl.flock(lock, fcntl.LOCK_EX)
        SHARED.mkdir(parents=True, exist_ok=True)
        _bind(shared, SHARED)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child: only async-signal-safe work, then exec
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.setsid()
            if not container:
                _check(_libc.unshare(_CLONE_NEWNS), "unshare")
                _check(_libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount /")
                _bind(shared, SHARED)
            os.chdir(str(SHARED))
            os.execve("/bin/sh", ["/bin/sh", "-c", JOB_SCRIPT], env)  # noqa: S606
        except BaseException as exc:
            os.write(2, f"emulator: cannot start the job: {exc}\n".encode())
        os._exit(127)
    return RunningJob(pid=pid, slot=slot, started=time.monotonic(), container=container, lock=lock)


def finish(job: RunningJob) -> None:
    """Wait for a job (used when a run stops with jobs still going)."""
    job.kill()
    job.wait()
