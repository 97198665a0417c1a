"""The transport contract for docker:// against the real Docker engine, plus Docker-only cases."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pipeline.errors import ContainerError, EngineError
from pipeline.transport import Transport, open_transport
from pipeline.transport.docker import DockerTransport

from .containers import PROJECT
from .contract import TransportContract


class TestDockerTransport(TransportContract):
    other_user = "boincadm"

    @pytest.fixture(scope="class")
    @classmethod
    def transport(cls, boincadm_container: Any) -> Iterator[Transport]:
        with open_transport(f"docker://{boincadm_container.name}{PROJECT}") as t:
            yield t


def test_url_forms() -> None:
    t = open_transport("docker://apache?user=boincadm&workdir=/home/boincadm/project")
    assert isinstance(t, DockerTransport)
    assert (t.container, t.user, t.root) == ("apache", "boincadm", "/home/boincadm/project")


def test_missing_container_is_a_clear_error(docker_client: Any) -> None:
    t = open_transport("docker://bp-no-such-container/tmp")
    with pytest.raises(ContainerError, match=r"no container named 'bp-no-such-container'") as info:
        t.run(["true"])
    assert not info.value.recoverable


def test_stopped_container_is_a_clear_error(stopped_container: Any) -> None:
    t = open_transport(f"docker://{stopped_container.name}/")
    with pytest.raises(ContainerError, match=r"is not running.*docker start"):
        t.run(["true"])


def test_real_engine_refuses_a_too_new_api_version(boincadm_container: Any) -> None:
    # Engine 20.10 speaks API 1.41 at most and refuses newer pinned versions for real.
    t = open_transport(f"docker://{boincadm_container.name}/?api_version=1.45")
    with pytest.raises(EngineError, match=r"1\.45 is too new.*api_version=") as info:
        t.run(["true"])
    assert not info.value.recoverable


# Engine 29 raised its minimum API version to 1.44; the local 20.10 engine never
# refuses an old version, so this response is recorded and served by a fake.
RECORDED_TOO_OLD = {
    "message": "client version 1.41 is too old. Minimum supported API version is 1.44, "
    "please upgrade your client to a newer version"
}


class _TooOldEngine(BaseHTTPRequestHandler):
    """A FAKE Docker engine: answers every versioned request with the recorded refusal."""

    def do_GET(self) -> None:
        self._refuse()

    def do_POST(self) -> None:
        self._refuse()

    def _refuse(self) -> None:
        body = json.dumps(RECORDED_TOO_OLD).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Api-Version", "1.52")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_engine_refusing_an_old_api_version_is_a_clear_error() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TooOldEngine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        t = open_transport(f"docker://apache/?host=tcp://127.0.0.1:{port}&api_version=1.41")
        with pytest.raises(EngineError, match=r"too old.*1\.44.*api_version=") as info:
            t.run(["true"])
        assert not info.value.recoverable
    finally:
        server.shutdown()
        server.server_close()
