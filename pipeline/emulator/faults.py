"""Faults the emulated volunteers and daemons inject, parsed from ``--faults``.

Syntax: a comma-separated list of ``KIND=CHANCE[:ARG]`` items and an optional
``seed=N`` (default 0). CHANCE is a number from 0 to 1: the chance per result
(per host for ``slow``, per assimilated workunit for ``results_permission``).
Every decision is a pure function of the seed, the kind and the result's name (or
host id), so a run is reproducible whatever order the daemons work in.

=====================  =====================================================  ==================
kind                   what happens                                           ARG
=====================  =====================================================  ==================
``client_error``       the client reports a computation error without          exit status
                       running the job (outcome 3, client_state 3)             (default 1)
``no_reply``           the host takes the result and never reports; the       —
                       transitioner times it out (outcome 4)
``corrupt``            the uploaded archive has bytes overwritten in the      —
                       middle (it is no longer a valid gzip stream)
``truncate``           the uploaded archive is cut to half its size           —
``no_output``          the job's ``/root/shared/results`` is emptied before   —
                       the archive is built (an empty archive is uploaded)
``results_permission`` the upstream bug: the assimilator cannot create        —
                       ``<results>/<app>``, ignores it and marks the
                       workunit assimilated; the file stays in upload/ and
                       the file deleter removes it later
``slow``               the host reports ARG emulated seconds late             seconds
                                                                              (default 3600)
``duplicate_report``   the host reports the result twice; the second report   —
                       is refused (``received_time`` already set) and
                       changes nothing
=====================  =====================================================  ==================

Example: ``--faults "client_error=0.1:2,no_reply=0.05,slow=0.25:86400,seed=7"``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from pipeline.errors import ConfigError

__all__ = ["FAULT_KINDS", "Faults"]

FAULT_KINDS: dict[str, float | None] = {
    "client_error": 1.0,
    "no_reply": None,
    "corrupt": None,
    "truncate": None,
    "no_output": None,
    "results_permission": None,
    "slow": 3600.0,
    "duplicate_report": None,
}


@dataclass(frozen=True)
class Faults:
    """Chances (and arguments) of each fault kind, with the seed that draws them."""

    chances: dict[str, float] = field(default_factory=dict)
    args: dict[str, float] = field(default_factory=dict)
    seed: int = 0

    @classmethod
    def parse(cls, spec: str | None) -> Faults:
        """Parse a ``--faults`` value; raise ConfigError naming the bad item."""
        chances: dict[str, float] = {}
        args: dict[str, float] = {}
        seed = 0
        for raw in (spec or "").split(","):
            item = raw.strip()
            if not item:
                continue
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep:
                raise ConfigError(f"--faults: item {item!r} is not KIND=CHANCE[:ARG]")
            if key == "seed":
                try:
                    seed = int(value)
                except ValueError as exc:
                    raise ConfigError(f"--faults: seed {value!r} is not an integer") from exc
                continue
            if key not in FAULT_KINDS:
                allowed = ", ".join(sorted(FAULT_KINDS))
                raise ConfigError(f"--faults: unknown kind {key!r}; allowed: {allowed}, seed")
            chance_text, _, arg_text = value.partition(":")
            try:
                chance = float(chance_text)
            except ValueError as exc:
                raise ConfigError(
                    f"--faults: {key} chance {chance_text!r} is not a number from 0 to 1"
                ) from exc
            if not 0.0 <= chance <= 1.0:
                raise ConfigError(f"--faults: {key} chance {chance} is not from 0 to 1")
            chances[key] = chance
            default = FAULT_KINDS[key]
            if arg_text:
                if default is None:
                    raise ConfigError(f"--faults: {key} takes no argument (got {arg_text!r})")
                try:
                    args[key] = float(arg_text)
                except ValueError as exc:
                    raise ConfigError(
                        f"--faults: {key} argument {arg_text!r} is not a number"
                    ) from exc
            elif default is not None:
                args[key] = default
        return cls(chances, args, seed)

    def hits(self, kind: str, key: str | int) -> bool:
        """Whether fault ``kind`` strikes the result name (or host id) ``key``."""
        chance = self.chances.get(kind, 0.0)
        if chance <= 0.0:
            return False
        if chance >= 1.0:
            return True
        digest = hashlib.sha256(f"{self.seed}:{kind}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < chance

    def arg(self, kind: str) -> float:
        """The argument of ``kind`` (exit status, delay in seconds)."""
        return self.args.get(kind, FAULT_KINDS.get(kind) or 0.0)

    def __str__(self) -> str:
        items = [
            f"{k}={v:g}" + (f":{self.args[k]:g}" if k in self.args else "")
            for k, v in sorted(self.chances.items())
        ]
        return ",".join([*items, f"seed={self.seed}"])
