"""Throwaway Docker containers for the transport tests, built from the local busybox image.

BusyBox has no ``useradd``: the container gets ``/etc/passwd`` and ``/etc/group``
entries for ``boincadm`` (uid 1000) written with ``put_archive``, and a project
folder ``/home/boincadm/project`` it owns.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import random_name

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "boincadm:x:1000:1000:BOINC admin:/home/boincadm:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nboincadm:x:1000:\nnogroup:x:65534:\n"
PROJECT = "/home/boincadm/project"


def _etc_archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in (("etc/passwd", PASSWD), ("etc/group", GROUP)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        for folder in ("home", "home/boincadm", "home/boincadm/project"):
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            if folder != "home":
                info.uid = info.gid = 1000
            tar.addfile(info)
    return buf.getvalue()


def start_container(docker_client: Any, image: str) -> Any:
    """Start a busybox container that sleeps, with no network, and a boincadm user."""
    container = docker_client.containers.run(
        image,
        ["sleep", "3600"],
        name=random_name("bp_transport"),
        detach=True,
        network_mode="none",
        init=True,
    )
    container.put_archive("/", _etc_archive())
    return container


@pytest.fixture(scope="session")
def boincadm_container(docker_client: Any, busybox_image: str) -> Iterator[Any]:
    """A running container shared by the Docker and SSH-with-container tests."""
    container = start_container(docker_client, busybox_image)
    try:
        yield container
    finally:
        container.remove(force=True)


@pytest.fixture
def stopped_container(docker_client: Any, busybox_image: str) -> Iterator[Any]:
    """A container that exists but is not running."""
    container = docker_client.containers.create(
        busybox_image, ["true"], name=random_name("bp_stopped"), network_mode="none"
    )
    try:
        yield container
    finally:
        container.remove(force=True)
