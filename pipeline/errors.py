"""The exceptions boinc-pipeline raises, in one tree.

Errors of the libraries underneath (paramiko, the Docker SDK, subprocess,
SQLAlchemy) are translated at the edge, where they happen, into these classes, so
callers catch only the project's own errors. Every error says whether retrying
the same operation later can help (``recoverable``); the retry helpers and the
Celery tasks decide on that flag alone::

    PipelineError
    ├── ConfigError ............ bad spec, server config or usage (exit code 2)
    │   └── SpecError .......... a sweep spec is invalid; carries every problem found
    ├── PlanError .............. a spec cannot be turned into workunits
    ├── TransportError ......... reaching the BOINC server failed
    │   ├── ConnectError ....... could not connect, or the connection dropped (recoverable)
    │   ├── TransportTimeout ... a command ran past its timeout and was killed (recoverable)
    │   ├── HostKeyError ....... the SSH host key is unknown or does not match
    │   ├── AuthenticationError  SSH authentication was refused
    │   ├── ContainerError ..... the Docker container is missing or not running
    │   ├── EngineError ........ the Docker engine refused the request (API version, ...)
    │   ├── RemoteFileError .... a remote file or folder is missing or unreadable
    │   │   └── MissingFilesError  files asked for in a tar stream were left out; lists them
    │   └── CommandFailed ...... a program exited non-zero; carries its CommandResult
    ├── ServerError ............ the BOINC server did something unexpected
    │   └── SubmissionError .... workunits were not created as asked
    ├── StateError ............. the pipeline's state database refused an operation
    │   └── StateUnavailable ... the state database cannot be reached (recoverable)
    └── HarvestError ........... a result archive could not be ingested
        ├── ArchiveRejected .... an archive broke a safety rule; carries the reason
        ├── ChunkStreamError ... the outer tar stream of a chunk broke (recoverable)
        └── ParseError ......... an output file could not be parsed; carries the reason

``exit_code`` is what the command line exits with when the error reaches it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from pipeline.transport.base import CommandResult

__all__ = [
    "ArchiveRejected",
    "AuthenticationError",
    "ChunkStreamError",
    "CommandFailed",
    "ConfigError",
    "ConnectError",
    "ContainerError",
    "EngineError",
    "HarvestError",
    "HostKeyError",
    "MissingFilesError",
    "ParseError",
    "PipelineError",
    "PlanError",
    "RemoteFileError",
    "ServerError",
    "SpecError",
    "SpecProblem",
    "StateError",
    "StateUnavailable",
    "SubmissionError",
    "TransportError",
    "TransportTimeout",
]


class PipelineError(Exception):
    """Base class of every error boinc-pipeline raises on purpose."""

    recoverable: ClassVar[bool] = False
    exit_code: ClassVar[int] = 1


class ConfigError(PipelineError):
    """A configuration file, spec or command-line value is not acceptable."""

    exit_code = 2


@dataclass(frozen=True)
class SpecProblem:
    """One problem found in a spec: where it is, what was given and what is allowed."""

    file: str
    location: str
    value: Any
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.location}" if self.location else self.file
        return f"{where}: {self.message} (got {self.value!r})"


class SpecError(ConfigError):
    """A sweep spec is invalid; ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"invalid spec, {len(problems)} {noun}:\n{lines}")


class PlanError(PipelineError):
    """A valid spec cannot be turned into workunits (e.g. a value the command cannot carry)."""

    exit_code = 2


class TransportError(PipelineError):
    """Reaching the BOINC server through a transport failed."""


class ConnectError(TransportError):
    """The connection could not be made, or it dropped; trying again may work."""

    recoverable = True


class TransportTimeout(TransportError):
    """A command ran past its timeout; the process was stopped."""

    recoverable = True

    def __init__(self, message: str, *, argv: list[str] | None = None, timeout: float = 0) -> None:
        super().__init__(message)
        self.argv = argv or []
        self.timeout = timeout


class HostKeyError(TransportError):
    """The SSH server's host key is unknown or differs from the one on record."""


class AuthenticationError(TransportError):
    """The SSH server refused every offered credential."""


class ContainerError(TransportError):
    """The Docker container named in the URL is missing or not running."""


class EngineError(TransportError):
    """The Docker engine refused a request; ``recoverable`` when it was only busy."""

    def __init__(self, message: str, *, recoverable: bool = False) -> None:
        super().__init__(message)
        self.recoverable = recoverable  # type: ignore[misc]


class RemoteFileError(TransportError):
    """A file or folder on the server is missing or cannot be read or written."""


class MissingFilesError(RemoteFileError):
    """Some requested server files were missing or unreadable; ``missing`` maps path to reason."""

    def __init__(self, missing: dict[str, str]) -> None:
        self.missing = dict(sorted(missing.items()))
        shown = ", ".join(f"{p} ({why})" for p, why in list(self.missing.items())[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        super().__init__(f"{len(missing)} file(s) could not be streamed: {shown}{more}")


class CommandFailed(TransportError):
    """A program on the server exited with a non-zero status; ``result`` holds what it printed."""

    def __init__(self, result: CommandResult) -> None:
        self.result = result
        stderr = result.stderr.decode("utf-8", "replace").strip()
        tail = stderr.splitlines()[-1] if stderr else ""
        msg = f"{result.argv[0] if result.argv else '?'} exited with status {result.exit_code}"
        super().__init__(f"{msg}: {tail}" if tail else msg)


class ServerError(PipelineError):
    """The BOINC server answered in a way the pipeline did not expect."""


class SubmissionError(ServerError):
    """Workunits were not created as asked (e.g. boinc2docker failed silently)."""


class StateError(PipelineError):
    """The pipeline's state database refused an operation."""


class StateUnavailable(StateError):
    """The state database cannot be reached or dropped the connection; try again later."""

    recoverable = True


class HarvestError(PipelineError):
    """A result archive could not be ingested."""


class ArchiveRejected(HarvestError):
    """A result archive broke a safety rule; ``reason`` says which, for the quarantine record."""

    def __init__(self, reason: str, *, member: str | None = None, detail: str = "") -> None:
        self.reason = reason
        self.member = member
        self.detail = detail
        text = f"{reason}: {detail}" if detail else reason
        super().__init__(f"{text} (member {member!r})" if member else text)


class ChunkStreamError(HarvestError):
    """A harvest chunk's outer tar stream broke off; fetching it again may work."""

    recoverable = True


class ParseError(HarvestError):
    """An output file of a result could not be parsed; ``reason`` says why."""

    def __init__(self, reason: str, *, output: str | None = None) -> None:
        self.reason = reason
        self.output = output
        super().__init__(f"{output}: {reason}" if output else reason)
