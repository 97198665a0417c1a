"""Fixtures for the transport tests: the test sshd and a throwaway Docker container."""

from __future__ import annotations

from .containers import boincadm_container, stopped_container
from .sshd import sshd_server

__all__ = ["boincadm_container", "sshd_server", "stopped_container"]
