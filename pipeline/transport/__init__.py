"""Transports: how the pipeline reaches the BOINC server, picked by URL.

``open_transport(url)`` returns a ``Transport`` for one of these URL forms; the
URL's path is the project root (the default working directory, and the base of
relative paths)::

    local:///home/boincadm/project                 programs run here (subprocess)
    ssh://user@host:port/home/boincadm/project     programs run over SSH (paramiko)
        ?key=PATH&known_hosts=PATH&trust=tofu&container=NAME&user=boincadm
    docker://CONTAINER/home/boincadm/project       programs run in a container (Docker SDK)
    docker://CONTAINER?user=boincadm&workdir=/home/boincadm/project&host=unix:///...

Each scheme maps to a lazy ``"module:Class"`` string, so paramiko and the Docker
SDK are imported only when their scheme is used.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from pipeline.errors import ConfigError
from pipeline.transport.base import CommandResult, CommandStream, RemoteFile, TarStream, Transport

__all__ = [
    "TRANSPORTS",
    "CommandResult",
    "CommandStream",
    "RemoteFile",
    "TarStream",
    "Transport",
    "open_transport",
    "transport_class",
]

#: URL scheme → ``"module:Class"``, imported on first use.
TRANSPORTS: dict[str, str] = {
    "local": "pipeline.transport.local:LocalTransport",
    "ssh": "pipeline.transport.ssh:SSHTransport",
    "docker": "pipeline.transport.docker:DockerTransport",
}

_EXTRAS = {"ssh": ("paramiko", "ssh"), "docker": ("docker", "docker")}


def transport_class(scheme: str) -> type[Transport]:
    """Return the Transport class for a URL scheme, importing its module now."""
    try:
        target = TRANSPORTS[scheme]
    except KeyError:
        allowed = ", ".join(f"{s}://" for s in TRANSPORTS)
        raise ConfigError(
            f"unknown transport scheme {scheme + '://' if scheme else '(none)'}; allowed: {allowed}"
        ) from None
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        lib, extra = _EXTRAS.get(scheme, (str(exc.name), "all"))
        raise ConfigError(
            f"the {scheme}:// transport needs {lib}: pip install 'boinc-pipeline[{extra}]'"
        ) from exc
    cls = getattr(module, attr)
    assert isinstance(cls, type)
    assert issubclass(cls, Transport)
    return cls


def open_transport(url: str) -> Transport:
    """Return a Transport for ``url`` (``local://``, ``ssh://`` or ``docker://``)."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"transport URL must look like local:///path, ssh://user@host/path or "
            f"docker://container/path (got {url!r})"
        )
    return transport_class(urlsplit(url).scheme).from_url(url)
