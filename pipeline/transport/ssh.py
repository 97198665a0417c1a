"""SSH transport: programs run on the server over one reused paramiko connection.

URL: ``ssh://[login@]host[:port]/home/boincadm/project[?options]`` — the path is
the project root. Options:

- ``key=PATH``: private key file (otherwise the SSH agent and ``~/.ssh/id_*``);
  ``agent=no`` disables the agent.
- ``known_hosts=PATH``: host keys to trust (default ``~/.ssh/known_hosts``). An
  unknown key is refused with the ``ssh-keyscan`` line to add;
  ``trust=tofu`` accepts a first-seen key and appends it to the file.
- ``container=NAME``: run every program and file stream inside container NAME on
  the server, as ``docker exec -i [-u USER] NAME ...`` (the usual
  boinc-server-docker setup); ``docker=PATH`` names the docker CLI there.
- ``user=NAME``: the account programs run as by default (in the container, or
  on the host through ``runuser``/``sudo -n``).
- ``keepalive=SECONDS`` (default 30), ``connect_timeout=SECONDS`` (default 10).

The remote login shell must be POSIX; every argument is quoted with
``shlex.quote``. A dropped connection is re-opened on the next call.
``forward_local_port`` reaches a server-side TCP service (the BOINC MySQL
database) through the same connection.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self
from urllib.parse import unquote, urlsplit

import paramiko

from pipeline.errors import (
    AuthenticationError,
    ConfigError,
    ConnectError,
    ContainerError,
    EngineError,
    HostKeyError,
    TransportError,
)
from pipeline.transport.base import (
    KILL_SCRIPT,
    PID_WAIT,
    WRAPPER,
    CommandResult,
    Process,
    Transport,
    url_options,
)

__all__ = ["SSHProcess", "SSHTransport"]

#: Seconds a helper command (container check, kill) may take.
HELPER_TIMEOUT = 30.0
_CHANNEL_ERRORS = (paramiko.SSHException, EOFError, OSError)


def _host_entry(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Refuses unknown host keys with instructions, or records them when trusting on first use."""

    def __init__(self, transport: SSHTransport) -> None:
        self.transport = transport

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        t = self.transport
        entry = _host_entry(t.host, t.port)
        fingerprint = key.fingerprint
        if t.trust == "tofu":
            path = Path(t.known_hosts)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as fh:
                fh.write(f"{entry} {key.get_name()} {key.get_base64()}\n")
            client.get_host_keys().add(entry, key.get_name(), key)
            return
        port = f"-p {t.port} " if t.port != 22 else ""
        raise HostKeyError(
            f"the SSH host key of {entry} ({key.get_name()} {fingerprint}) is not in "
            f"{t.known_hosts}. Check the fingerprint with the server's admin, then trust it "
            f"with: ssh-keyscan {port}-t {key.get_name()} {t.host} >> {t.known_hosts} "
            f"— or add ?trust=tofu to the URL to record it on first connection"
        )


class SSHProcess(Process):
    """A program on one SSH channel."""

    def __init__(
        self, transport: SSHTransport, channel: paramiko.Channel, user: str | None
    ) -> None:
        super().__init__()
        self.transport = transport
        self.channel = channel
        self.user = user
        self._terminated = False

    def write_stdin(self, data: bytes) -> None:
        try:
            self.channel.sendall(data)
        except OSError as exc:
            raise BrokenPipeError(str(exc)) from exc

    def close_stdin(self) -> None:
        with contextlib.suppress(*_CHANNEL_ERRORS):
            self.channel.shutdown_write()

    def read_stdout(self, n: int) -> bytes:
        try:
            return bytes(self.channel.recv(n))
        except _CHANNEL_ERRORS as exc:
            raise self.transport.dropped(exc) from exc

    def read_stderr(self, n: int) -> bytes:
        try:
            return bytes(self.channel.recv_stderr(n))
        except _CHANNEL_ERRORS as exc:
            raise self.transport.dropped(exc) from exc

    def wait(self) -> int:
        code = self.channel.recv_exit_status()
        if code == -1 and not self._terminated:
            if not self.transport.connected():
                raise self.transport.dropped(None)
            return 255  # killed by a signal the server did not name
        return code

    def terminate(self) -> None:
        if self._terminated:
            return
        self._terminated = True
        self.ids_known.wait(PID_WAIT)
        # Close our end first: a `docker exec` whose output nobody reads keeps the
        # engine from finishing other execs in that container, the killer included.
        self.channel.close()
        if self.remote_ids is not None:
            pid, pgid = self.remote_ids
            self.transport.kill_remote(pid, pgid, self.user)

    def close(self) -> None:
        self.channel.close()


class SSHTransport(Transport):
    """Runs programs over SSH; see the module docstring for the URL."""

    scheme = "ssh"

    def __init__(
        self,
        host: str,
        root: str = "/",
        *,
        port: int = 22,
        login: str | None = None,
        user: str | None = None,
        key_filename: str | None = None,
        known_hosts: str | None = None,
        trust: str = "known_hosts",
        agent: bool = True,
        container: str | None = None,
        docker: str = "docker",
        keepalive: int = 30,
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__(root, user=user)
        if trust not in ("known_hosts", "tofu"):
            raise ConfigError(f"trust must be 'known_hosts' or 'tofu' (got {trust!r})")
        self.host = host
        self.port = port
        self.login = login
        self.key_filename = key_filename
        self.known_hosts = known_hosts or str(Path("~/.ssh/known_hosts").expanduser())
        self.trust = trust
        self.agent = agent
        self.container = container
        self.docker = docker
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self._client: paramiko.SSHClient | None = None
        self._login_name: str | None = None
        self._lock = threading.RLock()
        self.connections = 0

    @classmethod
    def from_url(cls, url: str) -> Self:
        parts = urlsplit(url)
        if parts.scheme != "ssh" or not parts.hostname:
            raise ConfigError(f"ssh URL must look like ssh://user@host:port/path (got {url!r})")
        if parts.password:
            raise ConfigError(
                f"ssh URL must not carry a password (got one in {parts.hostname!r}); "
                "use a key file (?key=PATH) or the SSH agent"
            )
        o = url_options(
            url,
            parts.query,
            [
                "key",
                "known_hosts",
                "trust",
                "agent",
                "container",
                "docker",
                "user",
                "keepalive",
                "connect_timeout",
            ],
        )
        try:
            port = parts.port or 22
            keepalive = int(o.get("keepalive", "30"))
            connect_timeout = float(o.get("connect_timeout", "10"))
        except ValueError as exc:
            raise ConfigError(f"bad number in ssh URL {url!r}: {exc}") from None
        agent = o.get("agent", "yes").lower()
        if agent not in ("yes", "no", "1", "0", "true", "false"):
            raise ConfigError(f"agent must be yes or no (got {agent!r})")
        return cls(
            parts.hostname,
            unquote(parts.path) or "/",
            port=port,
            login=unquote(parts.username) if parts.username else None,
            user=o.get("user"),
            key_filename=o.get("key"),
            known_hosts=o.get("known_hosts"),
            trust=o.get("trust", "known_hosts"),
            agent=agent in ("yes", "1", "true"),
            container=o.get("container") or None,
            docker=o.get("docker", "docker"),
            keepalive=keepalive,
            connect_timeout=connect_timeout,
        )

    @property
    def url(self) -> str:
        login = f"{self.login}@" if self.login else ""
        port = f":{self.port}" if self.port != 22 else ""
        extra = "&".join(
            f"{k}={v}" for k, v in (("container", self.container), ("user", self.user)) if v
        )
        return f"ssh://{login}{self.host}{port}{self.root}" + (f"?{extra}" if extra else "")

    # -- connection -----------------------------------------------------------------
    def connected(self) -> bool:
        """Whether the SSH connection is up right now."""
        client = self._client
        t = client.get_transport() if client is not None else None
        return bool(t is not None and t.is_active())

    def dropped(self, exc: BaseException | None) -> ConnectError:
        """Return the error for a connection that went away mid-command."""
        why = f": {exc}" if exc else ""
        return ConnectError(f"the SSH connection to {self.host}:{self.port} dropped{why}")

    def _connect(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        if os.path.exists(self.known_hosts):
            try:
                client.load_host_keys(self.known_hosts)
            except (OSError, paramiko.SSHException) as exc:
                raise ConfigError(
                    f"cannot read known_hosts file {self.known_hosts}: {exc}"
                ) from exc
        client.set_missing_host_key_policy(_HostKeyPolicy(self))
        try:
            client.connect(
                self.host,
                port=self.port,
                username=self.login,
                key_filename=self.key_filename,
                allow_agent=self.agent,
                look_for_keys=self.key_filename is None,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
            )
        except HostKeyError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyError(
                f"the SSH host key of {_host_entry(self.host, self.port)} does not match the one "
                f"in {self.known_hosts} (got {exc.key.get_name()} {exc.key.fingerprint}). "
                "The server may have been reinstalled — or someone is in between. If the change "
                f"is expected, remove the old key with: ssh-keygen -f {self.known_hosts} "
                f"-R '{_host_entry(self.host, self.port)}' and trust the new one"
            ) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            how = f"key {self.key_filename}" if self.key_filename else "the agent and ~/.ssh keys"
            raise AuthenticationError(
                f"SSH authentication to {self.login or '(current user)'}@{self.host}:{self.port} "
                f"was refused ({exc}); tried {how}"
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            raise ConnectError(
                f"cannot connect to {self.host}:{self.port} over SSH: {exc}"
            ) from exc
        t = client.get_transport()
        assert t is not None
        if self.keepalive > 0:
            t.set_keepalive(self.keepalive)
        self.connections += 1
        self._login_name = t.get_username()
        return client

    def _ensure(self) -> paramiko.Transport:
        with self._lock:
            if self.closed:
                raise TransportError(f"{self.url}: the transport is closed")
            if not self.connected():
                if self._client is not None:
                    self._client.close()
                self._client = None
                self._client = self._connect()
                if self.container:
                    self._check_container()
            assert self._client is not None
            t = self._client.get_transport()
            assert t is not None
            return t

    def _open(self, kind: str = "session", dest: tuple[str, int] | None = None) -> paramiko.Channel:
        """Open a channel, reconnecting once if the connection turns out dead."""
        for attempt in (1, 2):
            t = self._ensure()
            try:
                if kind == "session":
                    return t.open_session(timeout=self.connect_timeout)
                return t.open_channel(kind, dest, ("127.0.0.1", 0), timeout=self.connect_timeout)
            except paramiko.ChannelException as exc:
                raise ConnectError(
                    f"the SSH server at {self.host}:{self.port} refused a {kind} channel"
                    f"{f' to {dest[0]}:{dest[1]}' if dest else ''}: {exc.text}"
                ) from exc
            except _CHANNEL_ERRORS as exc:
                with self._lock:
                    if self._client is not None:
                        self._client.close()
                    self._client = None
                if attempt == 2:
                    raise self.dropped(exc) from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None
        super().close()

    # -- commands ---------------------------------------------------------------------
    def _user_prefix(self, user: str | None) -> list[str]:
        if user is None or self.container or user == self._login_name:
            return []
        if self._login_name == "root":
            return ["runuser", "-u", user, "--"]
        return ["sudo", "-n", "-u", user, "--"]

    def _command(
        self, inner: list[str], user: str | None, stdin: bool = True, on_host: bool = False
    ) -> str:
        if self.container and not on_host:
            head = [self.docker, "exec"] + (["-i"] if stdin else [])
            if user:
                head += ["-u", user]
            return shlex.join([*head, self.container, *inner])
        return shlex.join([*self._user_prefix(user), *inner])

    def _spawn(self, argv: list[str], cwd: str, user: str | None) -> Process:
        channel = self._open()
        command = self._command(["sh", "-c", WRAPPER, "sh", cwd, *argv], user)
        try:
            channel.exec_command(command)
        except _CHANNEL_ERRORS as exc:
            channel.close()
            raise self.dropped(exc) from exc
        return SSHProcess(self, channel, user)

    def _simple(
        self, inner: list[str], user: str | None, on_host: bool = False
    ) -> tuple[int, bytes]:
        """Run a short helper command directly and return its status and combined output."""
        channel = self._open()
        try:
            channel.settimeout(HELPER_TIMEOUT)
            channel.set_combine_stderr(True)
            channel.exec_command(self._command(inner, user, stdin=False, on_host=on_host))
            channel.shutdown_write()
            out = b""
            while True:
                data = channel.recv(65536)
                if not data:
                    break
                out += data
            return channel.recv_exit_status(), out
        except _CHANNEL_ERRORS as exc:
            raise self.dropped(exc) from exc
        finally:
            channel.close()

    def kill_remote(self, pid: int, pgid: int, user: str | None) -> None:
        """Kill a program (and its process group) that this transport started."""
        self._simple(["sh", "-c", KILL_SCRIPT, "sh", str(pid), str(pgid)], user)

    def _check_container(self) -> None:
        assert self.container
        fmt = "{{.State.Running}} {{.State.Status}}"
        code, out = self._simple(
            [self.docker, "inspect", "-f", fmt, self.container], None, on_host=True
        )
        text = out.decode("utf-8", "replace").strip()
        if code == 0 and text.startswith("true"):
            return
        if code == 0:
            raise ContainerError(
                f"container {self.container!r} on {self.host} is not running "
                f"(status {text.split()[-1] if text else '?'}); start it, e.g. "
                f"docker start {self.container}"
            )
        if "no such" in text.lower():
            raise ContainerError(
                f"no container named {self.container!r} on {self.host} "
                "(docker ps -a lists them; boinc-server-docker names it like <dir>_apache_1 "
                "or <dir>-apache-1)"
            )
        raise EngineError(
            f"cannot ask the Docker engine on {self.host} about {self.container!r} "
            f"(exit status {code}): {text}",
            recoverable="connect" in text.lower(),
        )

    def _launch_failed(self, result: CommandResult, cwd: str) -> TransportError:
        text = result.stderr.decode("utf-8", "replace").strip().lower()
        if (
            self.container
            and result.exit_code != 125
            and ("no such container" in text or "is not running" in text)
        ):
            try:
                self._check_container()
            except TransportError as exc:
                return exc
        return super()._launch_failed(result, cwd)

    # -- port forwarding ---------------------------------------------------------------
    @contextlib.contextmanager
    def forward_local_port(
        self, remote_host: str, remote_port: int, *, local_port: int = 0
    ) -> Iterator[int]:
        """Listen on 127.0.0.1 and tunnel each connection to remote_host:remote_port.

        Yields the local port; ``remote_host`` is resolved on the server (e.g.
        ``127.0.0.1`` for the server itself, ``mysql`` inside a compose network
        reachable from it). The listener closes when the block ends.
        """
        self._ensure()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", local_port))
        listener.listen(16)
        stop = threading.Event()
        links: list[tuple[socket.socket, paramiko.Channel]] = []

        def pump(conn: socket.socket, chan: paramiko.Channel) -> None:
            try:
                while not stop.is_set():
                    ready, _, _ = select.select([conn, chan], [], [], 0.5)  # type: ignore[type-var]
                    if conn in ready:
                        data = conn.recv(65536)
                        if not data:
                            break
                        chan.sendall(data)
                    if chan in ready:
                        data = chan.recv(65536)
                        if not data:
                            break
                        conn.sendall(data)
            except (OSError, paramiko.SSHException, EOFError):
                pass
            finally:
                chan.close()
                conn.close()

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                try:
                    chan = self._open("direct-tcpip", (remote_host, remote_port))
                except TransportError:
                    conn.close()
                    continue
                links.append((conn, chan))
                threading.Thread(target=pump, args=(conn, chan), daemon=True).start()

        acceptor = threading.Thread(target=accept, daemon=True)
        acceptor.start()
        try:
            yield int(listener.getsockname()[1])
        finally:
            stop.set()
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
            acceptor.join(timeout=5)
            for conn, chan in links:
                chan.close()
                with contextlib.suppress(OSError):
                    conn.close()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("an SSH transport holds a live connection and cannot be pickled")
