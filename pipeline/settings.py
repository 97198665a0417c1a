"""Where the pipeline keeps its own things: the state database URL and the result store root.

Both come from the environment, or from command-line options that override it:

- ``BOINC_PIPELINE_STATE``: SQLAlchemy URL of the state database (default: a
  SQLite file ``.boinc-pipeline/state.sqlite`` in the current folder);
- ``BOINC_PIPELINE_STORE``: folder or URL of the result store (default
  ``.boinc-pipeline/store``);
- ``BOINC_PIPELINE_SERVERS``: folder of server configs that ``--server NAME``
  looks in (default ``configs/servers``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError

__all__ = ["Settings", "resolve_server_path"]

DEFAULT_HOME = ".boinc-pipeline"


@dataclass(frozen=True)
class Settings:
    """The state database URL, the result store root and the server-config folder."""

    state_url: str
    store_root: str
    servers_dir: str = "configs/servers"

    @classmethod
    def from_env(cls, *, state: str | None = None, store: str | None = None) -> Settings:
        """Build settings from the environment; explicit arguments win."""
        home = Path(DEFAULT_HOME)
        state_url = state or os.environ.get("BOINC_PIPELINE_STATE")
        if not state_url:
            home.mkdir(exist_ok=True)
            state_url = f"sqlite:///{home / 'state.sqlite'}"
        store_root = store or os.environ.get("BOINC_PIPELINE_STORE") or str(home / "store")
        servers = os.environ.get("BOINC_PIPELINE_SERVERS", "configs/servers")
        return cls(state_url=state_url, store_root=store_root, servers_dir=servers)


def resolve_server_path(server: str, servers_dir: str = "configs/servers") -> Path:
    """Return the config file ``--server`` means: a YAML path, or a name in ``servers_dir``."""
    candidate = Path(server)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        if not candidate.is_file():
            raise ConfigError(f"server config {server!r} does not exist")
        return candidate
    for suffix in (".yaml", ".yml"):
        named = Path(servers_dir) / f"{server}{suffix}"
        if named.is_file():
            return named
    known = (
        sorted(p.stem for p in Path(servers_dir).glob("*.y*ml"))
        if Path(servers_dir).is_dir()
        else []
    )
    raise ConfigError(
        f"no server config named {server!r} in {servers_dir}/ "
        f"(known: {', '.join(known) or 'none'}); pass a path to a YAML file or a known name"
    )
