"""The transport contract for local://, plus what only the local transport does."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from pipeline.errors import ConfigError
from pipeline.transport import Transport, open_transport
from pipeline.transport.local import LocalTransport

from .contract import TransportContract


class TestLocalTransport(TransportContract):
    other_user = "nobody"

    @pytest.fixture
    def transport(self) -> Iterator[Transport]:
        with open_transport("local:///tmp") as t:
            yield t


def test_local_url_does_not_import_optional_drivers() -> None:
    code = (
        "import sys, pipeline.transport as t\n"
        "tr = t.open_transport('local:///tmp')\n"
        "assert tr.run(['true']).exit_code == 0\n"
        "print(sorted(m for m in ('paramiko', 'docker') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_url_parsing() -> None:
    t = open_transport("local:///home/boincadm/project?user=boincadm")
    assert isinstance(t, LocalTransport)
    assert (t.root, t.user) == ("/home/boincadm/project", "boincadm")
    assert t.path("bin/create_work") == "/home/boincadm/project/bin/create_work"
    assert t.path("/results/x") == "/results/x"
    with pytest.raises(ConfigError, match=r"unknown transport scheme ftp://.*local://"):
        open_transport("ftp://host/x")
    with pytest.raises(ConfigError, match=r"unknown option 'colour'.*allowed: user"):
        open_transport("local:///tmp?colour=red")
    with pytest.raises(ConfigError, match="takes no host"):
        open_transport("local://host/tmp")
    with pytest.raises(ConfigError, match="must look like"):
        open_transport("/tmp")
