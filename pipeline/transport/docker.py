"""Docker transport: programs run in a container through the Docker Engine API.

URL: ``docker://CONTAINER[/home/boincadm/project][?options]`` — the path (or the
``workdir`` option) is the project root. Options:

- ``user=NAME``: the account programs run as by default (``docker exec -u``).
- ``workdir=PATH``: the project root, when the URL has no path.
- ``host=URL``: the engine (``unix:///var/run/docker.sock``, ``tcp://...``);
  default from ``DOCKER_HOST``.
- ``api_version=X.Y``: pin the Engine API version (default: negotiate).
- ``timeout=SECONDS``: engine request timeout (default 60).

Programs start with the low-level exec API on an attached socket, so stdin can
be fed and stdout/stderr are demultiplexed from the stream frames here. Files
move as tar streams through ``tar`` in the container (one exec for many files;
see bench/README.md for why not ``get_archive``). A missing or stopped container,
and an engine refusing the API version, raise clear errors.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from typing import Any, Self
from urllib.parse import unquote, urlsplit

import docker
import docker.errors
import requests.exceptions

from pipeline.errors import (
    ConfigError,
    ConnectError,
    ContainerError,
    EngineError,
    TransportError,
)
from pipeline.transport.base import KILL_SCRIPT, PID_WAIT, WRAPPER, Process, Transport, url_options

__all__ = ["DockerProcess", "DockerTransport", "engine_error"]


def engine_error(exc: BaseException, what: str) -> TransportError:
    """Translate a Docker SDK or HTTP error into the project's error tree."""
    if isinstance(exc, docker.errors.NotFound):
        return ContainerError(f"{what}: {exc.explanation or exc}")
    if isinstance(exc, docker.errors.APIError):
        text = str(exc.explanation or exc)
        status = exc.status_code or 0
        if "client version" in text and ("too new" in text or "too old" in text):
            return EngineError(
                f"the Docker engine refused API version {what}: {text}. Pin a version it "
                "accepts with ?api_version=X.Y in the docker:// URL (or leave it out to "
                "negotiate)",
                recoverable=False,
            )
        if "is not running" in text or "is paused" in text or "is restarting" in text:
            return ContainerError(f"{what}: {text}")
        return EngineError(f"the Docker engine refused {what}: {text}", recoverable=status >= 500)
    if isinstance(exc, requests.exceptions.ConnectionError | ConnectionError):
        return ConnectError(f"cannot reach the Docker engine ({what}): {exc}")
    if isinstance(exc, requests.exceptions.Timeout | TimeoutError):
        return ConnectError(f"the Docker engine did not answer in time ({what}): {exc}")
    if isinstance(exc, docker.errors.DockerException):
        cause = exc.__cause__ or exc.__context__
        if cause is not None and cause is not exc:
            return engine_error(cause, what)
        return EngineError(f"Docker error ({what}): {exc}")
    return TransportError(f"{what}: {exc}")


class DockerProcess(Process):
    """A program started with the exec API; a thread demultiplexes its output frames."""

    def __init__(
        self, transport: DockerTransport, exec_id: str, sock: Any, user: str | None
    ) -> None:
        super().__init__()
        self.transport = transport
        self.exec_id = exec_id
        self.user = user
        self._io = sock
        self._sock: socket.socket = getattr(sock, "_sock", sock)
        out_r, self._out_w = os.pipe()
        err_r, self._err_w = os.pipe()
        self._out = os.fdopen(out_r, "rb", buffering=0)
        self._err = os.fdopen(err_r, "rb", buffering=0)
        self._terminated = False
        self._demux = threading.Thread(target=self._pump, daemon=True)
        self._demux.start()

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            data = self._sock.recv(n - len(buf))
            if not data:
                break
            buf += data
        return bytes(buf)

    def _pump(self) -> None:
        try:
            while True:
                header = self._recv_exact(8)
                if len(header) < 8:
                    break
                kind, size = header[0], struct.unpack(">I", header[4:])[0]
                target = self._err_w if kind == 2 else self._out_w
                remaining = size
                while remaining:
                    data = self._sock.recv(min(remaining, 65536))
                    if not data:
                        return
                    remaining -= len(data)
                    view = memoryview(data)
                    while view:
                        if self._terminated and target == self._out_w:
                            break  # nobody reads stdout after a kill: drop it
                        written = os.write(target, view)
                        view = view[written:]
        except OSError:
            pass
        finally:
            os.close(self._out_w)
            os.close(self._err_w)

    def write_stdin(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise BrokenPipeError(str(exc)) from exc

    def close_stdin(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def read_stdout(self, n: int) -> bytes:
        return self._out.read(n) or b""

    def read_stderr(self, n: int) -> bytes:
        return self._err.read(n) or b""

    def wait(self) -> int:
        self._demux.join()
        deadline = time.monotonic() + 10
        while True:
            try:
                info = self.transport.api.exec_inspect(self.exec_id)
            except Exception as exc:
                raise engine_error(exc, "inspecting a finished command") from exc
            if not info.get("Running") or time.monotonic() > deadline:
                code = info.get("ExitCode")
                return int(code) if code is not None else 255
            time.sleep(0.01)

    def terminate(self) -> None:
        if self._terminated:
            return
        self._terminated = True
        self.ids_known.wait(PID_WAIT)
        # Close our end first: an exec whose output nobody reads keeps the engine
        # from finishing other execs in the container, the killer included.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._drain_stdout()
        if self.remote_ids is not None:
            pid, pgid = self.remote_ids
            self.transport.kill_remote(pid, pgid, self.user)

    def _drain_stdout(self) -> None:
        """Empty the stdout pipe once, so a demultiplexer blocked writing to it moves on."""
        fd = self._out.fileno()
        try:
            os.set_blocking(fd, False)
            while os.read(fd, 65536):
                pass
        except (BlockingIOError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                os.set_blocking(fd, True)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
        with contextlib.suppress(OSError):
            self._io.close()
        self._demux.join(timeout=5)
        self._out.close()
        self._err.close()


class DockerTransport(Transport):
    """Runs programs in a Docker container; see the module docstring for the URL."""

    scheme = "docker"

    def __init__(
        self,
        container: str,
        root: str = "/",
        *,
        user: str | None = None,
        host: str | None = None,
        api_version: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        super().__init__(root, user=user)
        if not container:
            raise ConfigError("docker:// URL needs a container name: docker://NAME/path")
        self.container = container
        self.host = host
        self.api_version = api_version
        self.timeout = timeout
        self._api: Any = None
        self._checked = False
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> Self:
        parts = urlsplit(url)
        if parts.scheme != "docker" or not parts.netloc:
            raise ConfigError(f"docker URL must look like docker://CONTAINER/path (got {url!r})")
        o = url_options(url, parts.query, ["user", "workdir", "host", "api_version", "timeout"])
        path = unquote(parts.path)
        if path and o.get("workdir") and path != o["workdir"]:
            raise ConfigError(
                f"docker URL {url!r} gives the project root twice ({path!r} and "
                f"workdir={o['workdir']!r}); keep one"
            )
        try:
            timeout = float(o.get("timeout", "60"))
        except ValueError:
            raise ConfigError(
                f"timeout must be a number of seconds (got {o['timeout']!r})"
            ) from None
        return cls(
            unquote(parts.netloc),
            path or o.get("workdir") or "/",
            user=o.get("user"),
            host=o.get("host"),
            api_version=o.get("api_version"),
            timeout=timeout,
        )

    @property
    def url(self) -> str:
        extra = "&".join(f"{k}={v}" for k, v in (("user", self.user), ("host", self.host)) if v)
        return f"docker://{self.container}{self.root}" + (f"?{extra}" if extra else "")

    @property
    def api(self) -> Any:
        """The Docker SDK's low-level client, created on first use."""
        with self._lock:
            if self._api is None:
                kwargs: dict[str, Any] = {}
                if self.host:
                    kwargs["base_url"] = self.host
                else:
                    kwargs.update(docker.utils.kwargs_from_env())
                try:
                    self._api = docker.APIClient(
                        version=self.api_version or "auto", timeout=self.timeout, **kwargs
                    )
                except Exception as exc:
                    raise engine_error(exc, self.api_version or "(negotiated)") from exc
            return self._api

    def check_container(self) -> None:
        """Raise ContainerError unless the container exists and runs."""
        try:
            info = self.api.inspect_container(self.container)
        except docker.errors.NotFound:
            raise ContainerError(
                f"no container named {self.container!r} on the Docker engine "
                "(docker ps -a lists them; boinc-server-docker names it like <dir>_apache_1 "
                "or <dir>-apache-1)"
            ) from None
        except Exception as exc:
            raise engine_error(exc, self._version_label()) from exc
        state = info.get("State", {})
        if not state.get("Running") or state.get("Paused"):
            raise ContainerError(
                f"container {self.container!r} is not running (status "
                f"{state.get('Status', '?')}); start it, e.g. docker start {self.container}"
            )

    def _version_label(self) -> str:
        return self.api_version or "(negotiated)"

    def _exec(self, argv: list[str], user: str | None, stdin: bool) -> str:
        if not self._checked:
            self.check_container()
            self._checked = True
        try:
            created = self.api.exec_create(
                self.container, argv, stdout=True, stderr=True, stdin=stdin, user=user or ""
            )
        except docker.errors.NotFound:
            self._checked = False
            self.check_container()
            raise
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                self._checked = False
                self.check_container()
            raise engine_error(exc, f"running {argv[0]}") from exc
        except Exception as exc:
            raise engine_error(exc, f"running {argv[0]}") from exc
        return str(created["Id"])

    def _spawn(self, argv: list[str], cwd: str, user: str | None) -> Process:
        exec_id = self._exec(["sh", "-c", WRAPPER, "sh", cwd, *argv], user, stdin=True)
        try:
            sock = self.api.exec_start(exec_id, socket=True)
        except Exception as exc:
            raise engine_error(exc, f"starting {argv[0]}") from exc
        return DockerProcess(self, exec_id, sock, user)

    def kill_remote(self, pid: int, pgid: int, user: str | None) -> None:
        """Kill a program (and its process group) that this transport started."""
        exec_id = self._exec(["sh", "-c", KILL_SCRIPT, "sh", str(pid), str(pgid)], user, False)
        try:
            self.api.exec_start(exec_id)
        except Exception as exc:
            raise engine_error(exc, "stopping a command") from exc

    def close(self) -> None:
        with self._lock:
            if self._api is not None:
                self._api.close()
            self._api = None
        super().close()
