"""Open the connections one BOINC server needs, from its server config, lazily.

A :class:`Server` holds the transport that runs ``bin/`` programs (its URL's
path is the project root), the transport and folder where result archives are
read (by default the same transport and ``/results``), and a read-only
connection to the BOINC database, through an SSH tunnel when the config asks
for one. Nothing connects until it is first used; :meth:`Server.close` releases
everything.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa

from pipeline.boincdb import BoincDB
from pipeline.config import ServerConfig
from pipeline.errors import ConfigError
from pipeline.transport import Transport, open_transport

__all__ = ["DEFAULT_RESULTS_DIR", "Server"]

DEFAULT_RESULTS_DIR = "/results"


class Server:
    """The connections to one BOINC server, opened on first use."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._transport: Transport | None = None
        self._results: Transport | None = None
        self._boinc: BoincDB | None = None
        self._stack = contextlib.ExitStack()

    @property
    def name(self) -> str:
        """The server config's name."""
        return self.config.name

    @property
    def transport(self) -> Transport:
        """The transport that runs programs in the project root."""
        if self._transport is None:
            self._transport = open_transport(self.config.transport)
        return self._transport

    @property
    def results_transport(self) -> Transport:
        """The transport that reads result archives (the main one unless configured)."""
        if self.config.results is None:
            return self.transport
        if self._results is None:
            self._results = open_transport(self.config.results)
        return self._results

    @property
    def results_dir(self) -> str:
        """The folder holding ``<app>/<YYYY-MM-DD>/*.tgz`` on the results transport."""
        if self.config.results is None:
            return DEFAULT_RESULTS_DIR
        return self.results_transport.root

    @property
    def boinc(self) -> BoincDB:
        """The BOINC database (read-only use), tunnelled over SSH when configured."""
        if self._boinc is None:
            url = sa.engine.make_url(self.config.boinc_db.resolve_url())
            if self.config.boinc_db.tunnel:
                forward = getattr(self.transport, "forward_local_port", None)
                if forward is None:
                    raise ConfigError(
                        f"server {self.name!r}: boinc_db.tunnel needs an ssh:// transport, "
                        f"not {urlsplit(self.config.transport).scheme}://"
                    )
                port = self._stack.enter_context(forward(url.host or "127.0.0.1", url.port or 3306))
                url = url.set(host="127.0.0.1", port=port)
            self._boinc = BoincDB(url.render_as_string(hide_password=False))
        return self._boinc

    def close(self) -> None:
        """Close every connection that was opened."""
        if self._boinc is not None:
            self._boinc.close()
        self._stack.close()
        for t in (self._results, self._transport):
            if t is not None:
                t.close()
        self._boinc = self._results = self._transport = None

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
