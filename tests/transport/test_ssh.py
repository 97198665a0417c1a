"""The transport contract for ssh:// against a real OpenSSH server, plus SSH-only behaviour."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, port_open

from pipeline.errors import AuthenticationError, ConnectError, ContainerError, HostKeyError
from pipeline.transport import Transport, open_transport
from pipeline.transport.ssh import SSHTransport

from .containers import PROJECT
from .contract import TransportContract
from .sshd import SSHServer, _keygen


class TestSSHTransport(TransportContract):
    other_user = "nobody"

    @pytest.fixture(scope="class")
    @classmethod
    def transport(cls, sshd_server: SSHServer) -> Iterator[Transport]:
        with open_transport(sshd_server.url("/tmp")) as t:
            yield t


class TestSSHContainerTransport(TransportContract):
    """ssh:// with container=NAME: programs run through `docker exec` on the SSH server."""

    other_user = "boincadm"

    @pytest.fixture(scope="class")
    @classmethod
    def transport(cls, sshd_server: SSHServer, boincadm_container: Any) -> Iterator[Transport]:
        url = sshd_server.url(PROJECT, container=boincadm_container.name)
        with open_transport(url) as t:
            yield t


def test_unknown_host_key_is_refused_with_instructions(
    sshd_server: SSHServer, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    t = open_transport(sshd_server.url("/", known_hosts=str(empty)))
    with pytest.raises(HostKeyError) as info:
        t.run(["true"])
    message = str(info.value)
    assert f"ssh-keyscan -p {sshd_server.port} -t ssh-ed25519 127.0.0.1 >> {empty}" in message
    assert "trust=tofu" in message
    assert not info.value.recoverable
    assert not empty.exists()


def test_trust_on_first_use_records_the_key(sshd_server: SSHServer, tmp_path: Path) -> None:
    known = tmp_path / "sub" / "known_hosts"
    with open_transport(sshd_server.url("/", known_hosts=str(known), trust="tofu")) as t:
        assert t.run(["echo", "ok"]).stdout == b"ok\n"
    assert known.read_text().strip() == sshd_server.host_key_line
    # the recorded key is now trusted without tofu
    with open_transport(sshd_server.url("/", known_hosts=str(known))) as t:
        assert t.run(["true"]).exit_code == 0


def test_changed_host_key_is_refused(sshd_server: SSHServer, tmp_path: Path) -> None:
    other = tmp_path / "other"
    _keygen(other)
    kind, blob = (tmp_path / "other.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd_server.port} {kind} {blob}\n")
    t = open_transport(sshd_server.url("/", known_hosts=str(known)))
    with pytest.raises(HostKeyError, match=r"does not match.*ssh-keygen"):
        t.run(["true"])


def test_wrong_key_is_an_authentication_error(sshd_server: SSHServer, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    _keygen(stranger)
    t = open_transport(sshd_server.url("/", key=str(stranger), agent="no"))
    with pytest.raises(AuthenticationError, match="refused") as info:
        t.run(["true"])
    assert not info.value.recoverable


def test_nothing_listening_is_a_recoverable_connect_error(sshd_server: SSHServer) -> None:
    port = free_port()
    assert not port_open("127.0.0.1", port)
    url = sshd_server.url("/").replace(f":{sshd_server.port}/", f":{port}/")
    with pytest.raises(ConnectError) as info:
        open_transport(url + "&connect_timeout=3").run(["true"])
    assert info.value.recoverable


def test_dropped_connection_is_recovered_on_the_next_call(sshd_server: SSHServer) -> None:
    with open_transport(sshd_server.url("/")) as t:
        assert isinstance(t, SSHTransport)
        assert t.run(["echo", "one"]).stdout == b"one\n"
        before = set(sshd_server.session_pids())
        assert before, "no server-side session process found"
        for pid in before:
            os.kill(pid, signal.SIGKILL)  # the server side of the connection dies
        time.sleep(0.2)
        assert t.run(["echo", "two"]).stdout == b"two\n"
        assert t.connections == 2
        assert set(sshd_server.session_pids()).isdisjoint(before)


def test_connection_is_reused(sshd_server: SSHServer) -> None:
    with open_transport(sshd_server.url("/")) as t:
        assert isinstance(t, SSHTransport)
        for i in range(5):
            assert t.run(["echo", str(i)]).stdout == f"{i}\n".encode()
        assert t.connections == 1


def test_port_forward_reaches_mariadb(sshd_server: SSHServer) -> None:
    if not port_open("127.0.0.1", 3306):
        from conftest import service_missing

        service_missing("mariadb", "nothing listens on 127.0.0.1:3306")
    import pymysql

    with open_transport(sshd_server.url("/")) as t:
        assert isinstance(t, SSHTransport)
        with t.forward_local_port("127.0.0.1", 3306) as port:
            assert port != 3306
            for _ in range(2):  # two connections through the same tunnel
                conn = pymysql.connect(host="127.0.0.1", port=port, user="root", password="")
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT 6 * 7, CONNECTION_ID()")
                        row = cur.fetchone()
                        assert row is not None
                        assert row[0] == 42
                finally:
                    conn.close()
        assert not port_open("127.0.0.1", port)


def test_missing_container_is_a_clear_error(sshd_server: SSHServer) -> None:
    t = open_transport(sshd_server.url("/", container="bp-no-such-container"))
    with pytest.raises(ContainerError, match="no container named 'bp-no-such-container'") as info:
        t.run(["true"])
    assert not info.value.recoverable


def test_stopped_container_is_a_clear_error(sshd_server: SSHServer, stopped_container: Any) -> None:
    t = open_transport(sshd_server.url("/", container=stopped_container.name))
    with pytest.raises(ContainerError, match="is not running"):
        t.run(["true"])


def test_container_removed_after_connecting(
    sshd_server: SSHServer, docker_client: Any, busybox_image: str
) -> None:
    from .containers import start_container

    container = start_container(docker_client, busybox_image)
    try:
        t = open_transport(sshd_server.url("/", container=container.name))
        assert t.run(["true"]).exit_code == 0
        container.remove(force=True)
        with pytest.raises(ContainerError, match=container.name):
            t.run(["true"])
    finally:
        with contextlib.suppress(Exception):  # already removed by the test
            container.remove(force=True)
