"""The transport interface and the logic every transport shares.

A transport runs programs on the BOINC server and moves files to and from it.
``Transport`` holds everything generic — feeding stdin, collecting stdout and
stderr apart, timeouts that stop the process for real, the result value, file
listing, tar streams, staging files — on top of one primitive each
implementation provides: ``_spawn(argv, cwd, user) -> Process``.

Remote transports (ssh, docker) start every program through a small POSIX shell
wrapper (``WRAPPER``) that enters the working directory, prints its process id and
process group on stderr behind a marker, then ``exec``s the program. The id lets a
timeout kill the program's whole process group on the far side (closing an SSH
channel or a Docker socket does not stop anything); the marker also tells a
failure of the launcher (missing container, missing folder) from a failure of
the program itself. The marker line is removed from the stderr callers see.

Files travel as tar streams: ``open_tar_stream`` runs ``tar -c`` remotely with the
names on stdin (never on a command line) and hands back the stream to read with
``tarfile.open(fileobj=..., mode="r|")``; ``write_files`` pipes a tar stream into
``tar -x``. GNU tar and BusyBox tar are both handled.
"""

from __future__ import annotations

import abc
import io
import os
import posixpath
import re
import tarfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, ClassVar, Self

from pipeline.errors import (
    CommandFailed,
    ConfigError,
    MissingFilesError,
    RemoteFileError,
    TransportError,
    TransportTimeout,
)

__all__ = [
    "CHUNK",
    "KILL_SCRIPT",
    "WRAPPER",
    "CommandResult",
    "CommandStream",
    "Process",
    "RemoteFile",
    "StdinSource",
    "TarStream",
    "Transport",
]

CHUNK = 64 * 1024
#: Largest stderr kept per command; beyond it the middle is dropped.
STDERR_LIMIT = 16 * 1024 * 1024
#: Largest total size of arguments sent in one remove/move command (the SSH
#: command line is one argument of at most 128 KiB on Linux).
ARGS_BUDGET = 64 * 1024
#: Output still read after a stream's block ends before the program is stopped instead.
DRAIN_LIMIT = 1024 * 1024
#: How long ``terminate`` waits for the program to report its process id.
PID_WAIT = 5.0

MARKER = b"\x1ebp-pid "

#: Runs ``argv[2:]`` in folder ``argv[1]`` after reporting ``pid pgid`` on stderr.
WRAPPER = (
    'cd -- "$1" || exit 125\n'
    "shift\n"
    "_bp_pg=0\n"
    'if read -r _bp_st < "/proc/$$/stat" 2>/dev/null; then\n'
    "  _bp_r=${_bp_st##*) }; _bp_r=${_bp_r#* }; _bp_r=${_bp_r#* }; _bp_pg=${_bp_r%% *}\n"
    "fi\n"
    'printf \'\\036bp-pid %s %s\\n\' "$$" "$_bp_pg" >&2\n'
    'exec "$@"\n'
)

#: Kills process group ``$2`` (when it is a real group) and process ``$1``.
KILL_SCRIPT = (
    'case "$2" in ""|0|1) ;; *) kill -9 "-$2" 2>/dev/null ;; esac\n'
    'kill -9 "$1" 2>/dev/null\n'
    "exit 0\n"
)

#: Lists regular files matching glob patterns ``$2...`` in folder ``$1``.
#: Per pattern: names NUL-separated, an empty name, then one ``size mtime mode``
#: line per name (``- - -`` for a file that vanished meanwhile).
LIST_SCRIPT = r"""cd -- "$1" || exit 3
shift
_bp_one() {
  [ -e "$1" ] || [ -L "$1" ] || return 0
  printf '%s\0' "$@"
  printf '\0'
  if _bp_s=$(stat -c '%s %Y %f' -- "$@" 2>/dev/null); then
    printf '%s\n' "$_bp_s"
  else
    for _bp_f; do stat -c '%s %Y %f' -- "$_bp_f" 2>/dev/null || echo '- - -'; done
  fi
}
IFS=
for _bp_p; do _bp_one $_bp_p; done
"""

#: Writes a tar of the NUL-separated names (relative to /) on stdin to stdout.
TAR_CREATE_SCRIPT = r"""if tar --version 2>/dev/null | grep -q 'GNU tar'; then
  exec tar -C / --null -T - -cf -
else
  exec xargs -0 -x -s 1048576 tar -C / -cf -
fi
"""

#: Creates folders ``$@`` then extracts the tar on stdin into / without owners.
TAR_EXTRACT_SCRIPT = r"""[ $# -eq 0 ] || mkdir -p -- "$@" || exit 3
umask 0
exec tar -C / -x -o -f -
"""

#: Removes the files given as arguments.
REMOVE_SCRIPT = 'exec rm -f -- "$@"\n'

#: Moves ``$1`` to ``$2``, ``$3`` to ``$4``, ..., creating destination folders.
MOVE_SCRIPT = r"""_bp_rc=0
_bp_last=
while [ $# -gt 1 ]; do
  _bp_d=${2%/*}
  if [ -n "$_bp_d" ] && [ "$_bp_d" != "$_bp_last" ]; then
    mkdir -p -- "$_bp_d" || _bp_rc=1
    _bp_last=$_bp_d
  fi
  mv -f -- "$1" "$2" || _bp_rc=1
  shift 2
done
exit $_bp_rc
"""

StdinSource = bytes | IO[bytes] | Iterable[bytes] | None


@dataclass(frozen=True)
class CommandResult:
    """What a finished program left: its argv, exit code, output and run time in seconds."""

    argv: list[str]
    exit_code: int
    stdout: bytes
    stderr: bytes
    duration: float

    @property
    def ok(self) -> bool:
        """Whether the program exited with status 0."""
        return self.exit_code == 0


@dataclass(frozen=True, order=True)
class RemoteFile:
    """One file on the server: absolute path, size in bytes, modification time (epoch s)."""

    path: str
    size: int
    mtime: float


class Process(abc.ABC):
    """A started program: its three pipes, its exit status, and a way to stop it.

    Implementations translate their library's errors into ``pipeline.errors``.
    Reads return ``b""`` at end of stream. ``terminate`` must stop the program
    itself (not just the local end of a connection) and make pending reads end.
    """

    def __init__(self) -> None:
        self.remote_ids: tuple[int, int] | None = None
        self.ids_known = threading.Event()

    def set_remote_ids(self, pid: int, pgid: int) -> None:
        """Record the program's process id and group, as reported by ``WRAPPER``."""
        self.remote_ids = (pid, pgid)
        self.ids_known.set()

    @abc.abstractmethod
    def write_stdin(self, data: bytes) -> None:
        """Send bytes to the program's stdin; raise BrokenPipeError when it is gone."""

    @abc.abstractmethod
    def close_stdin(self) -> None:
        """Signal end of input to the program."""

    @abc.abstractmethod
    def read_stdout(self, n: int) -> bytes:
        """Return up to ``n`` bytes of stdout, blocking; ``b""`` at the end."""

    @abc.abstractmethod
    def read_stderr(self, n: int) -> bytes:
        """Return up to ``n`` bytes of stderr, blocking; ``b""`` at the end."""

    @abc.abstractmethod
    def wait(self) -> int:
        """Wait for the program to end and return its exit code (128+N for signal N)."""

    @abc.abstractmethod
    def terminate(self) -> None:
        """Stop the program and everything in its process group; idempotent."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the process handle holds."""


class _Execution:
    """Drives one Process: stdin feeding, stderr collection, the timeout watchdog."""

    def __init__(
        self,
        proc: Process,
        argv: list[str],
        stdin: StdinSource,
        timeout: float | None,
        wrapped: bool,
    ) -> None:
        self.proc = proc
        self.argv = argv
        self.timeout = timeout
        self.wrapped = wrapped
        self.started = time.monotonic()
        self.timed_out = False
        self.cwd = "/"
        self.marker_seen = not wrapped
        self._stderr = bytearray()
        self._stderr_dropped = 0
        self._errors: list[BaseException] = []
        self._stderr_thread = threading.Thread(target=self._pump_stderr, daemon=True)
        self._stderr_thread.start()
        self._stdin_thread: threading.Thread | None = None
        if stdin is None:
            self._close_stdin()
        else:
            self._stdin_thread = threading.Thread(
                target=self._feed_stdin, args=(stdin,), daemon=True
            )
            self._stdin_thread.start()
        self._timer: threading.Timer | None = None
        if timeout is not None:
            self._timer = threading.Timer(timeout, self._on_timeout)
            self._timer.daemon = True
            self._timer.start()

    # -- threads ---------------------------------------------------------------
    def _close_stdin(self) -> None:
        with suppress(OSError, TransportError):
            self.proc.close_stdin()

    def _feed_stdin(self, stdin: bytes | IO[bytes] | Iterable[bytes]) -> None:
        try:
            for chunk in _chunks(stdin):
                if chunk:
                    self.proc.write_stdin(chunk)
        except (BrokenPipeError, ConnectionError):
            pass  # the program stopped reading: its exit status tells the rest
        except BaseException as exc:  # reported by finish()
            self._errors.append(exc)
        finally:
            self._close_stdin()

    def _pump_stderr(self) -> None:
        head = b""
        try:
            if self.wrapped:
                while b"\n" not in head and len(head) < 256:
                    data = self.proc.read_stderr(CHUNK)
                    if not data:
                        break
                    head += data
                    if not MARKER.startswith(head[: len(MARKER)]):
                        break
                if head.startswith(MARKER) and b"\n" in head:
                    line, head = head.split(b"\n", 1)
                    fields = line[len(MARKER) :].split()
                    self.marker_seen = True
                    if len(fields) == 2 and all(f.isdigit() for f in fields):
                        self.proc.set_remote_ids(int(fields[0]), int(fields[1]))
                self._keep_stderr(head)
            while True:
                data = self.proc.read_stderr(CHUNK)
                if not data:
                    break
                self._keep_stderr(data)
        except BaseException as exc:  # reported by finish()
            self._errors.append(exc)
        finally:
            self.proc.ids_known.set()

    def _keep_stderr(self, data: bytes) -> None:
        room = STDERR_LIMIT - len(self._stderr)
        if room >= len(data):
            self._stderr += data
        else:
            self._stderr += data[: max(room, 0)]
            self._stderr_dropped += len(data) - max(room, 0)

    def _on_timeout(self) -> None:
        self.timed_out = True
        self.kill()

    # -- caller side -------------------------------------------------------------
    def kill(self) -> None:
        """Stop the program now (used on timeout and when a caller stops reading)."""
        with suppress(TransportError):
            self.proc.terminate()

    def read(self, n: int) -> bytes:
        """Return up to ``n`` bytes of stdout."""
        return self.proc.read_stdout(n)

    def finish(self, stdout: bytes = b"") -> CommandResult:
        """Wait for the end and return the result; raise TransportTimeout if it ran over."""
        try:
            self._stderr_thread.join()
            exit_code = self.proc.wait()
            if self._stdin_thread is not None:
                self._stdin_thread.join(timeout=10)
        except TransportError:
            if not self.timed_out:
                raise
            exit_code = -1
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self.proc.close()
        stderr = bytes(self._stderr)
        if self._stderr_dropped:
            stderr += f"\n[{self._stderr_dropped} more bytes of stderr dropped]\n".encode()
        result = CommandResult(
            argv=list(self.argv),
            exit_code=exit_code,
            stdout=stdout,
            stderr=stderr,
            duration=time.monotonic() - self.started,
        )
        if self.timed_out:
            err = TransportTimeout(
                f"{self.argv[0]} ran past its timeout of {self.timeout:g} s and was stopped",
                argv=list(self.argv),
                timeout=self.timeout or 0,
            )
            err.result = result  # type: ignore[attr-defined]
            raise err
        for exc in self._errors:
            if isinstance(exc, TransportError):
                raise exc
        for exc in self._errors:
            raise TransportError(f"{self.argv[0]}: {exc}") from exc
        return result


def _chunks(stdin: bytes | IO[bytes] | Iterable[bytes]) -> Iterator[bytes]:
    if isinstance(stdin, bytes | bytearray | memoryview):
        view = memoryview(stdin)
        for i in range(0, len(view), CHUNK):
            yield bytes(view[i : i + CHUNK])
        return
    read = getattr(stdin, "read", None)
    if callable(read):
        while True:
            data = read(CHUNK)
            if not data:
                return
            yield data
    else:
        yield from stdin


class CommandStream(io.RawIOBase):
    """The stdout of a running program as a binary file; ``result`` is set at the end."""

    def __init__(self, execution: _Execution) -> None:
        super().__init__()
        self._execution = execution
        self.eof = False
        self.result: CommandResult | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.eof:
            return 0
        view = memoryview(buffer).cast("B")
        data = self._execution.read(len(view))
        if not data:
            self.eof = True
            return 0
        view[: len(data)] = data
        return len(data)


class TarStream(CommandStream):
    """A tar stream of server files; ``missing`` lists the requested paths it lacks."""

    def __init__(self, execution: _Execution) -> None:
        super().__init__(execution)
        self.missing: list[str] = []


def _check_argv(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, str | bytes):
        raise ConfigError(
            f"argv must be a list of strings, not a shell string (got {argv!r}); "
            "pass each argument as its own item"
        )
    out = list(argv)
    if not out:
        raise ConfigError("argv is empty: give at least the program to run")
    for i, arg in enumerate(out):
        if not isinstance(arg, str):
            raise ConfigError(f"argv[{i}] must be a string (got {arg!r})")
        if "\0" in arg:
            raise ConfigError(f"argv[{i}] contains a NUL byte, which no argument can carry")
    return out


class Transport(abc.ABC):
    """Runs programs on the BOINC server and moves files to and from it.

    ``root`` is the project folder: the default working directory, and the base
    of every relative path given to the file methods. ``user`` (from the URL) is
    the default account to act as; ``None`` means the account the transport
    reaches the server with.
    """

    scheme: ClassVar[str] = ""
    #: Whether programs are started through ``WRAPPER`` (remote transports).
    wrapped: ClassVar[bool] = True

    def __init__(self, root: str = "/", *, user: str | None = None) -> None:
        if not root.startswith("/"):
            raise ConfigError(f"the project root must be an absolute path (got {root!r})")
        self.root = posixpath.normpath(root) if root != "/" else "/"
        self.user = user or None
        self.closed = False

    # -- construction -----------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def from_url(cls, url: str) -> Self:
        """Build the transport a URL describes."""

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """The URL this transport was built from (never containing secrets)."""

    # -- primitives ---------------------------------------------------------------
    @abc.abstractmethod
    def _spawn(self, argv: list[str], cwd: str, user: str | None) -> Process:
        """Start ``argv`` in folder ``cwd`` as ``user`` and return its handle."""

    def _launch_failed(self, result: CommandResult, cwd: str) -> TransportError:
        """Return the error for a wrapped command that failed before its program started."""
        text = result.stderr.decode("utf-8", "replace").strip()
        if result.exit_code == 125:
            return RemoteFileError(
                f"cannot enter working directory {cwd!r} on {self.url}: {text or 'missing'}"
            )
        return TransportError(
            f"could not start {result.argv[0]} on {self.url} "
            f"(exit status {result.exit_code}): {text}"
        )

    def close(self) -> None:
        """Release connections; the transport cannot be used afterwards."""
        self.closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    # -- paths --------------------------------------------------------------------
    def path(self, path: str) -> str:
        """Return ``path`` made absolute against ``root`` and normalised."""
        if not isinstance(path, str) or not path:
            raise ConfigError(f"a server path must be a non-empty string (got {path!r})")
        if "\0" in path or "\n" in path:
            raise ConfigError(f"server path {path!r} contains a NUL or newline character")
        return posixpath.normpath(posixpath.join(self.root, path))

    # -- commands -------------------------------------------------------------------
    def _start(
        self,
        argv: Sequence[str],
        stdin: StdinSource,
        cwd: str | None,
        user: str | None,
        timeout: float | None,
    ) -> _Execution:
        if self.closed:
            raise TransportError(f"{self.url}: the transport is closed")
        args = _check_argv(argv)
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"timeout must be a positive number of seconds (got {timeout!r})")
        folder = self.path(cwd) if cwd is not None else self.root
        proc = self._spawn(args, folder, user if user is not None else self.user)
        execution = _Execution(proc, args, stdin, timeout, self.wrapped)
        execution.cwd = folder
        return execution

    def _settle(self, execution: _Execution, result: CommandResult, check: bool) -> None:
        if not execution.marker_seen and result.exit_code != 0:
            raise self._launch_failed(result, execution.cwd)
        if check and result.exit_code != 0:
            raise CommandFailed(result)

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: StdinSource = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        check: bool = True,
        stdout: IO[bytes] | None = None,
    ) -> CommandResult:
        """Run a program and return its result; raise CommandFailed on a non-zero exit.

        ``argv`` is a list of arguments passed as they are (never through a shell);
        ``stdin`` bytes, a binary file or an iterable of byte chunks; ``cwd``
        relative to ``root``; ``timeout`` in seconds stops the program for real and
        raises TransportTimeout; ``stdout`` a binary file to write output to instead
        of keeping it in ``result.stdout``; ``check=False`` returns failed results.
        """
        execution = self._start(argv, stdin, cwd, user, timeout)
        chunks: list[bytes] = []
        try:
            while True:
                data = execution.read(CHUNK)
                if not data:
                    break
                if stdout is not None:
                    stdout.write(data)
                else:
                    chunks.append(data)
        except BaseException:
            execution.kill()
            if execution.timed_out:
                execution.finish()
            raise
        result = execution.finish(b"".join(chunks))
        self._settle(execution, result, check)
        return result

    @contextmanager
    def stream(
        self,
        argv: Sequence[str],
        *,
        stdin: StdinSource = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> Iterator[CommandStream]:
        """Run a program and yield its stdout as a binary file read incrementally.

        When the block ends after the whole output was read, the exit status is
        checked (CommandFailed unless ``check=False``) and ``stream.result`` is
        set; leaving the block early stops the program.
        """
        execution = self._start(argv, stdin, cwd, user, timeout)
        out = CommandStream(execution)
        with self._streaming(execution, out, check):
            yield out

    @contextmanager
    def _streaming(self, execution: _Execution, out: CommandStream, check: bool) -> Iterator[None]:
        try:
            yield
        except BaseException:
            execution.kill()
            try:
                execution.finish()
            except TransportTimeout as exc:
                raise exc from None
            except TransportError:
                pass
            raise
        drained = 0
        while not out.eof and drained < DRAIN_LIMIT:
            drained += len(out.read(CHUNK) or b"")  # e.g. the zero padding after a tar
        if not out.eof:
            # the caller stopped reading long before the end: stop the program
            execution.kill()
            out.result = execution.finish()
            return
        out.result = execution.finish()
        self._settle(execution, out.result, check)

    # -- files --------------------------------------------------------------------
    def list_files(
        self, directory: str, patterns: str | Sequence[str] = "*", *, user: str | None = None
    ) -> list[RemoteFile]:
        """Return the regular files matching glob ``patterns`` under ``directory``, in one call.

        Patterns use the shell's glob syntax relative to ``directory`` (``*`` does
        not match a leading dot), e.g. ``"*/*.tgz"`` for every archive in every
        date folder. A missing ``directory`` raises RemoteFileError.
        """
        folder = self.path(directory)
        pats = [patterns] if isinstance(patterns, str) else list(patterns)
        for p in pats:
            if not p or "\0" in p:
                raise ConfigError(f"a file pattern must be a non-empty string (got {p!r})")
        if not pats:
            return []
        res = self.run(
            ["sh", "-c", LIST_SCRIPT, "sh", folder, *pats], cwd="/", user=user, check=False
        )
        if res.exit_code == 3:
            raise RemoteFileError(f"folder {folder!r} does not exist or cannot be entered")
        if res.exit_code != 0:
            raise CommandFailed(res)
        return _parse_listing(res.stdout, folder)

    @contextmanager
    def open_tar_stream(
        self,
        paths: Iterable[str],
        *,
        user: str | None = None,
        timeout: float | None = None,
        missing_ok: bool = False,
    ) -> Iterator[TarStream]:
        """Yield one tar stream holding the given server files, read incrementally.

        Member names are the absolute paths without the leading ``/``. Files
        that are missing or unreadable are left out and the rest still streams;
        when the block ends, MissingFilesError lists them (or, with
        ``missing_ok=True``, ``stream.missing`` does).
        """
        names: dict[str, str] = {}
        for p in paths:
            full = self.path(p)
            rel = full.lstrip("/")
            names[rel if not rel.startswith("-") else full] = full
        if not names:
            empty = _EmptyTar()
            yield empty  # type: ignore[misc]
            return
        feed = b"".join(n.encode("utf-8", "surrogateescape") + b"\0" for n in names)
        execution = self._start(["sh", "-c", TAR_CREATE_SCRIPT], feed, "/", user, timeout)
        out = TarStream(execution)
        with self._streaming(execution, out, check=False):
            yield out
        result = out.result
        if result is None or not out.eof or result.exit_code == 0:
            return
        problems = _tar_problems(result.stderr, names)
        if not problems:
            raise CommandFailed(result)
        out.missing = sorted(problems)
        if not missing_ok:
            raise MissingFilesError(problems)

    def write_files(
        self,
        files: Mapping[str, bytes | os.PathLike[str]],
        *,
        mode: int = 0o644,
        user: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Create or replace server files in one call: ``{path: bytes or local file}``.

        Folders are created as needed; files get permission bits ``mode`` and
        belong to ``user`` (the transport's default user when not given).
        """
        if not 0 <= mode <= 0o7777:
            raise ConfigError(f"mode must be permission bits like 0o644 (got {mode!r})")
        targets = {self.path(p): data for p, data in files.items()}
        if not targets:
            return
        for p, data in targets.items():
            if not isinstance(data, bytes | bytearray | os.PathLike):
                raise ConfigError(f"content of {p!r} must be bytes or a local path (got {data!r})")
        folders = sorted({posixpath.dirname(p) for p in targets})
        reader_fd, writer_fd = os.pipe()
        reader = os.fdopen(reader_fd, "rb")
        producer_error: list[BaseException] = []

        def produce() -> None:
            try:
                with (
                    os.fdopen(writer_fd, "wb") as pipe,
                    tarfile.open(fileobj=pipe, mode="w|", format=tarfile.PAX_FORMAT) as tar,
                ):
                    now = time.time()
                    for p, data in targets.items():
                        info = tarfile.TarInfo(p.lstrip("/"))
                        info.mode = mode
                        info.mtime = int(now)
                        if isinstance(data, os.PathLike):
                            info.size = Path(data).stat().st_size
                            with open(data, "rb") as fh:
                                tar.addfile(info, fh)
                        else:
                            info.size = len(data)
                            tar.addfile(info, io.BytesIO(data))
            except BrokenPipeError:
                pass
            except BaseException as exc:
                producer_error.append(exc)

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        try:
            res = self.run(
                ["sh", "-c", TAR_EXTRACT_SCRIPT, "sh", *folders],
                stdin=reader,
                cwd="/",
                user=user,
                timeout=timeout,
                check=False,
            )
        finally:
            reader.close()
            thread.join()
        if producer_error:
            exc = producer_error[0]
            raise RemoteFileError(f"could not read a local file to stage: {exc}") from exc
        if res.exit_code != 0:
            text = res.stderr.decode("utf-8", "replace").strip()
            raise RemoteFileError(f"writing {len(targets)} file(s) on {self.url} failed: {text}")

    def remove_files(self, paths: Iterable[str], *, user: str | None = None) -> None:
        """Delete server files; paths already gone are ignored."""
        full = [self.path(p) for p in paths]
        for batch in _batches(full, 1):
            res = self.run(
                ["sh", "-c", REMOVE_SCRIPT, "sh", *batch], cwd="/", user=user, check=False
            )
            if res.exit_code != 0:
                text = res.stderr.decode("utf-8", "replace").strip()
                raise RemoteFileError(f"removing files on {self.url} failed: {text}")

    def move_files(self, moves: Mapping[str, str], *, user: str | None = None) -> None:
        """Move server files ``{source: destination}``, creating destination folders."""
        pairs = sorted(
            ((self.path(s), self.path(d)) for s, d in moves.items()),
            key=lambda sd: (posixpath.dirname(sd[1]), sd[1]),
        )
        flat = [x for pair in pairs for x in pair]
        for batch in _batches(flat, 2):
            res = self.run(["sh", "-c", MOVE_SCRIPT, "sh", *batch], cwd="/", user=user, check=False)
            if res.exit_code != 0:
                text = res.stderr.decode("utf-8", "replace").strip()
                raise RemoteFileError(f"moving files on {self.url} failed: {text}")


def _batches(items: list[str], step: int) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for i in range(0, len(items), step):
        group = items[i : i + step]
        cost = sum(len(x.encode("utf-8", "surrogateescape")) + 3 for x in group)
        if batch and size + cost > ARGS_BUDGET:
            yield batch
            batch, size = [], 0
        batch.extend(group)
        size += cost
    if batch:
        yield batch


def _parse_listing(data: bytes, folder: str) -> list[RemoteFile]:
    files: dict[str, RemoteFile] = {}
    pos = 0
    while pos < len(data):
        names: list[str] = []
        while True:
            end = data.index(b"\0", pos)
            name = data[pos:end]
            pos = end + 1
            if not name:
                break
            names.append(name.decode("utf-8", "surrogateescape"))
        for text in names:
            end = data.index(b"\n", pos)
            line = data[pos:end].split()
            pos = end + 1
            if len(line) != 3 or line[0] == b"-":
                continue
            if int(line[2], 16) & 0o170000 != 0o100000:
                continue  # not a regular file
            path = posixpath.normpath(posixpath.join(folder, text))
            files[path] = RemoteFile(path, int(line[0]), float(line[1]))
    return sorted(files.values())


_TAR_ERROR = re.compile(rb"^tar: (.*?): (Cannot stat: |Cannot open: )?([^:]+)$")


def _tar_problems(stderr: bytes, names: Mapping[str, str]) -> dict[str, str]:
    """Map requested paths to the reason tar gave for leaving them out."""
    problems: dict[str, str] = {}
    for raw in stderr.splitlines():
        m = _TAR_ERROR.match(raw)
        if not m:
            continue
        name = m.group(1).decode("utf-8", "surrogateescape")
        if name in names:
            problems[names[name]] = m.group(3).decode("utf-8", "replace").strip()
    return problems


class _EmptyTar(io.BytesIO):
    """The tar stream of no files at all."""

    def __init__(self) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w"):
            pass
        super().__init__(buf.getvalue())
        self.missing: list[str] = []
        self.result: CommandResult | None = None


def url_options(url: str, query: str, allowed: Iterable[str]) -> dict[str, str]:
    """Return a URL's query options, refusing repeated or unknown ones by name."""
    from urllib.parse import parse_qsl

    known = sorted(allowed)
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in known:
            raise ConfigError(
                f"unknown option {key!r} in transport URL {url!r}; allowed: {', '.join(known)}"
            )
        if key in options:
            raise ConfigError(f"option {key!r} given twice in transport URL {url!r}")
        options[key] = value
    return options
