"""Run one job the way a boinc2docker VM does, each in a private ``/root/shared``.

A job's input files are copied into a slot folder (``<slot>/shared`` becomes
``/root/shared``, with an empty ``results/``); then ``/bin/sh /root/shared/boinc_app``
runs, and when it exits 0 the VM's archive step runs: ``cd /root/shared/results &&
tar czf /root/shared/results.tgz *`` (members relative, no ``results/`` prefix,
dotfiles left out; an empty folder gives an empty archive and tar's error).

Jobs are started by :mod:`pipeline.emulator.launcher`, a small standard-library
process forked per job (one :class:`Launcher` per set of daemons), so starting a
job does not copy the emulator's large process.

Host mode: the job enters a mount namespace of its own (``unshare(CLONE_NEWNS)``,
``/`` made private) and bind-mounts its slot onto ``/root/shared``, so parallel
jobs never see each other's folder and no path in the command is rewritten.
Container mode (the workunit's ``boinc_app`` loads an image and calls ``docker run
-v /root/shared:/root/shared``): the Docker engine resolves that path in its own
namespace, so the slot is bind-mounted onto the host's ``/root/shared`` and
container jobs take turns, one at a time across every emulator process (an
``flock`` on ``/run/lock/boinc-emulator-shared.lock``). Both need root
(``CAP_SYS_ADMIN``).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pipeline.emulator import launcher as _launcher
from pipeline.errors import ConfigError

__all__ = ["HOST_MODE_LABEL", "SHARED", "Launcher", "RunningJob", "check_namespaces", "finish"]

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

#: What the VM runs (see :mod:`pipeline.emulator.launcher`).
JOB_SCRIPT = _launcher.JOB_SCRIPT
JOB_ENV = _launcher.JOB_ENV
#: The label of an emulator host-mode image (see :mod:`pipeline.emulator.launcher`).
HOST_MODE_LABEL = _launcher.HOST_MODE_LABEL


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


@dataclass(eq=False)
class RunningJob:
    """A job started by :meth:`Launcher.start`."""

    token: str
    slot: Path
    started: float
    container: bool
    launcher: Launcher
    lock: IO[bytes] | None = None
    pid: int = 0
    status: int | None = None
    cpu_time: float = 0.0
    elapsed: float = 0.0
    peak_rss: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    def poll(self) -> bool:
        """Return whether the job has exited (collecting its status and CPU time)."""
        if self.status is None:
            self.launcher.collect(block=False)
        return self.status is not None

    def wait(self) -> None:
        """Block until the job exits."""
        while self.status is None:
            self.launcher.collect(block=True)

    def kill(self) -> None:
        """Stop the job's whole process group."""
        if self.status is None:
            self.launcher.kill(self)

    def _done(self, status: int, cpu_time: float, peak_rss: float) -> None:
        self.status = status
        self.cpu_time = cpu_time
        self.elapsed = time.monotonic() - self.started
        self.peak_rss = peak_rss
        if self.container:
            try:
                _check(_libc.umount2(str(SHARED).encode(), _MNT_DETACH), "umount")
            finally:
                if self.lock is not None:
                    self.lock.close()
                    self.lock = None


class Launcher:
    """Starts jobs through one :mod:`pipeline.emulator.launcher` process, started on first use."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._jobs: dict[str, RunningJob] = {}
        self._count = 0
        self._buf = b""

    def _helper(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", _launcher.__file__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
                start_new_session=True,
            )
            assert self._proc.stdout is not None
            os.set_blocking(self._proc.stdout.fileno(), False)
        return self._proc

    def _send(self, line: str) -> None:
        proc = self._helper()
        assert proc.stdin is not None
        proc.stdin.write(line.encode())

    def start(self, slot: Path, *, container: bool, no_output: bool = False) -> RunningJob:
        """Start the job in ``slot/shared``; its output goes to ``slot/stderr.txt``."""
        lock = None
        if container:
            LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
            lock = LOCK_PATH.open("wb")
            fcntl.flock(lock, fcntl.LOCK_EX)
            SHARED.mkdir(parents=True, exist_ok=True)
            _bind(slot / "shared", SHARED)
        self._count += 1
        token = str(self._count)
        flags = ("c" if container else "") + ("n" if no_output else "") or "-"
        job = RunningJob(token, slot, time.monotonic(), container, self, lock)
        self._jobs[token] = job
        try:
            self._send(f"S\t{token}\t{flags}\t{os.fsencode(slot).hex()}\n")
        except OSError:
            self._lost()
        return job

    def kill(self, job: RunningJob) -> None:
        """Ask the launcher to kill ``job``'s process group."""
        try:
            self._send(f"K\t{job.token}\n")
        except OSError:
            self._lost()

    def collect(self, block: bool) -> None:
        """Record the jobs that have exited; with ``block``, wait until one has."""
        proc = self._proc
        if proc is None or proc.stdout is None:
            self._lost()
            return
        fd = proc.stdout.fileno()
        while True:
            if block:
                select.select([fd], [], [])
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                if block:
                    continue
                return
            if not data:
                self._lost()
                return
            self._buf += data
            *lines, self._buf = self._buf.split(b"\n")
            for line in lines:
                kind, token, *rest = line.decode().split("\t")
                if kind == "P":
                    if token in self._jobs:
                        self._jobs[token].pid = int(rest[0])
                    continue
                job = self._jobs.pop(token, None)
                if job is not None:
                    status, cpu, rss = rest
                    job._done(os.waitstatus_to_exitcode(int(status)), float(cpu), float(rss))
            if lines or not block:
                return

    def _lost(self) -> None:
        """The launcher is gone: its jobs are killed and fail; the next start restarts it."""
        for job in list(self._jobs.values()):
            if job.pid:
                with contextlib.suppress(OSError):
                    os.killpg(job.pid, 9)
            job._done(127, 0.0, 0.0)
        self._jobs.clear()
        self.close()

    def close(self) -> None:
        """Stop the launcher (it kills jobs still running) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        proc.wait()
        self._buf = b""


def finish(job: RunningJob) -> None:
    """Kill a job and wait for it (used when a run stops with jobs still going)."""
    job.kill()
    job.wait()
