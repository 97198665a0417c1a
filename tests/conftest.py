"""Shared fixtures: real services with throwaway databases, and the missing-service policy.

Every fixture here talks to a real service on 127.0.0.1. When a service is not
reachable the test is skipped with the reason, and the skipped groups are listed
at the end of the run; with ``CI=true`` a missing service fails the test instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
_missing: dict[str, str] = {}


def service_missing(service: str, reason: str) -> None:
    """Fail in CI, skip elsewhere: a test that needs ``service`` cannot run."""
    _missing.setdefault(service, reason)
    message = f"{service} unavailable: {reason}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing service is a failure)", pytrace=False)
    pytest.skip(message)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _missing:
        terminalreporter.section("skipped groups (service not available)")
        for service, reason in sorted(_missing.items()):
            terminalreporter.write_line(f"{service}: {reason}")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def random_name(prefix: str) -> str:
    """Return a database name that no other test run will pick."""
    return f"{prefix}_{secrets.token_hex(6)}"


def grid_spec(name: str = "grid", n: int = 3, **extra: Any) -> dict[str, Any]:
    """A grid sweep of ``n * 2`` points whose job writes ``z = x * y`` as key=value text."""
    spec: dict[str, Any] = {
        "name": name,
        "image": "boinc-pipeline-test/host:latest",
        "command": [
            "sh",
            "-c",
            "mkdir -p /root/shared/results && echo z=$(({x} * {y})) > /root/shared/results/out.txt",
        ],
        "parameters": {"grid": {"x": list(range(1, n + 1)), "y": [2, 5]}},
        "outputs": [{"file": "out.txt", "kind": "keyvalue"}],
    }
    spec.update(extra)
    return spec


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """A fresh, empty MariaDB database; dropped after the test."""
    if not port_open("127.0.0.1", 3306):
        service_missing("mariadb", "nothing listens on 127.0.0.1:3306")
    import pymysql

    name = random_name("bp_test")
    conn = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
        yield f"mysql+pymysql://root@127.0.0.1:3306/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database; dropped after the test."""
    if not port_open("127.0.0.1", 5432):
        service_missing("postgresql", "nothing listens on 127.0.0.1:5432")
    import psycopg

    name = random_name("bp_test")
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(
            "host=127.0.0.1 user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file in the test's own folder."""
    return f"sqlite:///{tmp_path / 'test.sqlite'}"


@pytest.fixture(params=["sqlite", "mariadb"])
def boinc_db_url(request: pytest.FixtureRequest) -> str:
    """The BOINC database engines the emulator supports: SQLite and MariaDB."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database number of its own, flushed before and after the test."""
    if not port_open("127.0.0.1", 6379):
        service_missing("redis", "nothing listens on 127.0.0.1:6379")
    import redis

    db = 1 + secrets.randbelow(14)
    client = redis.Redis(host="127.0.0.1", port=6379, db=db)
    client.flushdb()
    try:
        yield f"redis://127.0.0.1:6379/{db}"
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A Docker SDK client for the local engine."""
    try:
        import docker

        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        service_missing("docker", f"no Docker engine answers: {exc}")
    try:
        yield client
    finally:
        client.close()


BUSYBOX_IMAGE = "boinc-pipeline-test/busybox:latest"


def _busybox_binary() -> Path | None:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def busybox_image(docker_client: Any) -> str:
    """A tiny local image (busybox-static as /bin/*), imported without any registry."""
    try:
        docker_client.images.get(BUSYBOX_IMAGE)
        return BUSYBOX_IMAGE
    except Exception:  # not there yet: build it below
        pass
    busybox = _busybox_binary()
    if busybox is None:
        service_missing(
            "docker", "busybox-static is not installed (apt-get install busybox-static)"
        )
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            for folder in ("bin", "tmp", "root", "root/shared", "etc"):
                info = tarfile.TarInfo(folder)
                info.type = tarfile.DIRTYPE
                info.mode = 0o1777 if folder == "tmp" else 0o755
                tar.addfile(info)
            tar.add(busybox, arcname="bin/busybox")
            for applet in applets:
                if applet == "busybox":
                    continue
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type = tarfile.SYMTYPE
                link.linkname = "busybox"
                tar.addfile(link)
        with archive.open("rb") as fh:
            repo, tag = BUSYBOX_IMAGE.rsplit(":", 1)
            docker_client.api.import_image_from_data(fh.read(), repository=repo, tag=tag)
    return BUSYBOX_IMAGE


@pytest.fixture
def python2() -> str:
    """Path of a Python 2.7 interpreter (pyenv's 2.7.18), for code the server runs."""
    pyenv = shutil.which("pyenv")
    if pyenv:
        out = subprocess.run(
            [pyenv, "prefix", "2.7.18"], capture_output=True, text=True, check=False
        )
        candidate = Path(out.stdout.strip()) / "bin" / "python2.7"
        if out.returncode == 0 and candidate.is_file():
            return str(candidate)
    found = shutil.which("python2.7")
    if found:
        return found
    service_missing("python2.7", "no Python 2.7 interpreter (pyenv 2.7.18) on this machine")
    raise AssertionError("unreachable")
