"""Local transport: programs run on this machine with subprocess.

URL: ``local:///home/boincadm/project[?user=boincadm]`` — the path is the project
root. A ``user`` other than the current one is reached with
``runuser -u USER --`` (which needs root). Each program gets a session of its
own, so a timeout kills its whole process group.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
from typing import IO, Self
from urllib.parse import unquote, urlsplit

from pipeline.errors import ConfigError, RemoteFileError
from pipeline.transport.base import Process, Transport, url_options

__all__ = ["LocalProcess", "LocalTransport"]


class LocalProcess(Process):
    """A subprocess in its own session."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        super().__init__()
        self.popen = popen
        self.set_remote_ids(popen.pid, popen.pid)

    def _pipe(self, which: IO[bytes] | None) -> IO[bytes]:
        assert which is not None
        return which

    def write_stdin(self, data: bytes) -> None:
        self._pipe(self.popen.stdin).write(data)

    def close_stdin(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self._pipe(self.popen.stdin).close()

    def read_stdout(self, n: int) -> bytes:
        return os.read(self._pipe(self.popen.stdout).fileno(), n)

    def read_stderr(self, n: int) -> bytes:
        return os.read(self._pipe(self.popen.stderr).fileno(), n)

    def wait(self) -> int:
        code = self.popen.wait()
        return 128 - code if code < 0 else code

    def terminate(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:
            self.popen.kill()

    def close(self) -> None:
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.popen.stdin.close()


class _FailedProcess(Process):
    """A program that could not be started: exit 127 with the reason on stderr."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self._stderr = message.encode()
        self.set_remote_ids(0, 0)

    def write_stdin(self, data: bytes) -> None:
        raise BrokenPipeError

    def close_stdin(self) -> None:
        pass

    def read_stdout(self, n: int) -> bytes:
        return b""

    def read_stderr(self, n: int) -> bytes:
        data, self._stderr = self._stderr, b""
        return data

    def wait(self) -> int:
        return 127

    def terminate(self) -> None:
        pass


class LocalTransport(Transport):
    """Runs programs on this machine; see the module docstring for the URL."""

    scheme = "local"
    wrapped = False

    @classmethod
    def from_url(cls, url: str) -> Self:
        parts = urlsplit(url)
        if parts.scheme != "local":
            raise ConfigError(f"not a local:// URL: {url!r}")
        if parts.netloc:
            raise ConfigError(
                f"local:// URL takes no host (got {parts.netloc!r} in {url!r}); "
                "write local:///absolute/path"
            )
        options = url_options(url, parts.query, ["user"])
        return cls(unquote(parts.path) or "/", user=options.get("user"))

    @property
    def url(self) -> str:
        return f"local://{self.root}" + (f"?user={self.user}" if self.user else "")

    def _spawn(self, argv: list[str], cwd: str, user: str | None) -> Process:
        full = argv
        if user is not None and user != pwd.getpwuid(os.getuid()).pw_name:
            full = ["runuser", "-u", user, "--", *argv]
        if not os.path.isdir(cwd):
            raise RemoteFileError(f"working directory {cwd!r} does not exist on this machine")
        try:
            popen = subprocess.Popen(
                full,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                start_new_session=True,
                bufsize=0,
            )
        except FileNotFoundError:
            return _FailedProcess(f"{full[0]}: command not found\n")
        except PermissionError as exc:
            return _FailedProcess(f"{full[0]}: {exc.strerror}\n")
        return LocalProcess(popen)
