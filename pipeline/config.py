"""Server configs: how to reach a BOINC project (transport, results, database), as pydantic models.

A server config is a YAML file::

    name: cosmo
    transport: ssh://boincadm@boinc.example.org:22/home/boincadm/project?container=apache
    results: null            # default: the same transport with path /results
    boinc_db:
      url: mysql+pymysql://root@127.0.0.1:3306/boincserver   # no password here
      password_file: /etc/boinc-pipeline/secrets.env         # DB_PASSWD=... or the bare password
      tunnel: true           # reach the database through the SSH transport
    mode: batch              # script | batch | fast
    apps: {boinc2docker: {cushion: 500}}
    timezone: UTC

Transport URLs: ``local:///PROJECT_ROOT``, ``ssh://USER@HOST[:PORT]/PROJECT_ROOT[?container=NAME]``,
``docker://CONTAINER?user=boincadm&workdir=PROJECT_ROOT``. Passwords never live in
the config: a password inside a URL is refused; the database password is read at
connect time from ``password_env`` or ``password_file`` by ``DbConfig.resolve_url``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.errors import ConfigError, SpecError, SpecProblem

__all__ = ["AppConfig", "DbConfig", "ServerConfig", "load_server_config"]

TRANSPORT_SCHEMES = ("local", "ssh", "docker")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AppConfig(_Model):
    """Per-app settings: ``cushion`` = how many unsent results to keep queued for the app."""

    cushion: Annotated[int, Field(ge=0)] = 500


class DbConfig(_Model):
    """How to reach the BOINC database; the password is never stored, only where to read it."""

    url: str
    password_env: Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = (
        None
    )
    password_file: str | None = None
    password_key: str = "DB_PASSWD"  # noqa: S105  (the name of a key, not a password)
    tunnel: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(v)
        except ArgumentError as exc:
            raise ValueError(
                f"not an SQLAlchemy URL (e.g. mysql+pymysql://root@host:3306/boincserver): {exc}"
            ) from exc
        if url.password is not None:
            raise ValueError(
                "the URL contains a password; remove it and use password_env (an environment "
                "variable) or password_file (e.g. a secrets.env holding DB_PASSWD=...)"
            )
        return v

    @model_validator(mode="after")
    def _one_source(self) -> DbConfig:
        if self.password_env and self.password_file:
            raise ValueError("give at most one of password_env and password_file")
        return self

    def password(self) -> str | None:
        """Read the password now from the environment or the file (None when neither is set)."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(
                    f"environment variable {self.password_env} (boinc_db.password_env) is not set"
                )
            return value
        if self.password_file:
            try:
                text = Path(self.password_file).expanduser().read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"cannot read boinc_db.password_file {self.password_file}: {exc.strerror}"
                ) from None
            lines = [
                ln.strip()
                for ln in text.splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")
            ]
            pairs = dict(ln.split("=", 1) for ln in lines if "=" in ln)
            if pairs:
                key = self.password_key
                if key not in pairs and f"export {key}" not in pairs:
                    raise ConfigError(f"{self.password_file} has no {key}=... line")
                return pairs.get(key, pairs.get(f"export {key}", "")).strip().strip("'\"")
            return lines[0] if lines else ""
        return None

    def resolve_url(self) -> str:
        """Return the URL with the password filled in (read now; never log the result)."""
        from sqlalchemy.engine import make_url

        from pipeline.logs import register_secret

        url = make_url(self.url)
        pw = self.password()
        register_secret(pw)
        if pw is not None:
            url = url.set(password=pw)
        return url.render_as_string(hide_password=False)


def _check_transport(v: str, what: str) -> str:
    parts = urlsplit(v)
    if parts.scheme not in TRANSPORT_SCHEMES:
        raise ValueError(
            f"{what} must start with one of {', '.join(s + '://' for s in TRANSPORT_SCHEMES)}"
        )
    if parts.password is not None:
        raise ValueError(
            f"{what} contains a password; use SSH keys (an agent or a key file) instead"
        )
    if parts.scheme == "local" and (parts.netloc or not parts.path.startswith("/")):
        raise ValueError(f"{what}: write local:///ABSOLUTE/PATH")
    if parts.scheme == "ssh" and (not parts.hostname or not parts.path.startswith("/")):
        raise ValueError(f"{what}: write ssh://USER@HOST[:PORT]/ABSOLUTE/PATH[?container=NAME]")
    if parts.scheme == "docker" and not parts.hostname:
        raise ValueError(f"{what}: write docker://CONTAINER?user=boincadm&workdir=/ABSOLUTE/PATH")
    try:
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    return v


class ServerConfig(_Model):
    """A BOINC server: transport URL, results folder, database, default submission mode, apps."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    transport: str
    results: str | None = None
    boinc_db: DbConfig
    mode: Literal["script", "batch", "fast"] = "batch"
    apps: dict[str, AppConfig] = Field(default_factory=lambda: {"boinc2docker": AppConfig()})
    timezone: str = "UTC"
    #: The server's own Python, which runs batch mode's driver (Python 2.7 on the stock image).
    python: Annotated[str, StringConstraints(min_length=1, max_length=255)] = "python"

    def cushion_for(self, app: str) -> int:
        """Return how many unsent results the server should hold for ``app``."""
        return (self.apps.get(app) or AppConfig()).cushion

    @field_validator("transport")
    @classmethod
    def _transport(cls, v: str) -> str:
        return _check_transport(v, "transport")

    @field_validator("results")
    @classmethod
    def _results(cls, v: str | None) -> str | None:
        return None if v is None else _check_transport(v, "results")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {v!r}; use an IANA name such as UTC or Europe/Paris"
            ) from None
        return v

    @property
    def results_url(self) -> str:
        """The results folder's URL: ``results``, or the transport's URL with path /results."""
        if self.results:
            return self.results
        parts = urlsplit(self.transport)
        if parts.scheme == "docker":
            query = dict(parse_qsl(parts.query))
            query["workdir"] = "/results"
            return urlunsplit(
                (parts.scheme, parts.netloc, parts.path, urlencode(query, safe="/"), "")
            )
        return urlunsplit((parts.scheme, parts.netloc, "/results", parts.query, ""))


def load_server_config(path: str | Path) -> ServerConfig:
    """Read and validate a server config file; raise SpecError listing every problem found."""
    from pipeline.spec import load_yaml, problems_from_validation

    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([SpecProblem(file, "", None, f"cannot read the file: {exc}")]) from exc
    data, lines = load_yaml(text, file)
    if not isinstance(data, dict):
        raise SpecError(
            [SpecProblem(file, "", type(data).__name__, "the top level must be a mapping")]
        )
    if isinstance(data.get("boinc_db"), dict) and "password" in data["boinc_db"]:
        raise SpecError(
            [
                SpecProblem(
                    file,
                    "boinc_db.password",
                    "***",
                    "passwords do not belong in the config; use password_env or password_file",
                )
            ]
        )
    try:
        return ServerConfig.model_validate(data)
    except ValidationError as exc:
        problems = problems_from_validation(exc, data, file, lines, model=ServerConfig)
        raise SpecError([_redact(p) for p in problems]) from None


def _redact(problem: SpecProblem) -> SpecProblem:
    """Hide a password that a refused URL carried, so the error message never shows it."""
    value = problem.value
    if isinstance(value, str) and "password" in problem.message:
        parts = urlsplit(value)
        if parts.password is not None:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
            value = urlunsplit(parts._replace(netloc=netloc))
        return SpecProblem(problem.file, problem.location, value, problem.message)
    return problem
