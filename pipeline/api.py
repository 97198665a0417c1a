"""The notebook and application API: one :class:`Sweep` object with every verb.

The command line, the Celery tasks and notebooks all go through these functions,
so a sweep behaves the same wherever it is driven from::

    >>> import pipeline
    >>> sweep = pipeline.Sweep.from_spec("configs/examples/grid-csv.yaml", server="local-emulator")
    >>> sweep.submit()                      # one top-up pass
    >>> sweep.status()                      # DataFrame: one row per point
    >>> sweep.harvest()                     # archives -> Parquet, exactly once
    >>> sweep.results(columns=["p.omega", "chi2"], filters=[("chi2", "<", 3.0)])

``pipeline.status(name)`` and ``pipeline.results(name)`` are the one-call forms.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.config import ServerConfig, load_server_config
from pipeline.errors import ConfigError
from pipeline.settings import Settings, resolve_server_path
from pipeline.spec import SweepSpec, load_spec
from pipeline.state import StateDB, SweepRecord
from pipeline.track import SweepStatus

__all__ = ["Sweep", "results", "status"]


class Sweep:
    """One version of a sweep, with the state database, result store and server it uses."""

    def __init__(
        self,
        spec: SweepSpec,
        *,
        server: str | ServerConfig | None = None,
        settings: Settings | None = None,
        state: StateDB | None = None,
        record: SweepRecord | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings or Settings.from_env()
        self.state = state or StateDB(self.settings.state_url)
        self._own_state = state is None
        self._server_arg = server
        self._server: Any = None
        self._record = record

    # -- construction ---------------------------------------------------------

    @classmethod
    def from_spec(cls, path: str | Path, **kwargs: Any) -> Sweep:
        """Open a sweep from its spec file (it is recorded on the first submission)."""
        return cls(load_spec(path), **kwargs)

    @classmethod
    def open(
        cls,
        name: str,
        *,
        version: int | None = None,
        settings: Settings | None = None,
        server: str | ServerConfig | None = None,
    ) -> Sweep:
        """Open a recorded sweep by name (its latest version unless ``version`` is given)."""
        settings = settings or Settings.from_env()
        state = StateDB(settings.state_url)
        try:
            record = state.get_sweep(name, version)
        except BaseException:
            state.close()
            raise
        spec = SweepSpec.model_validate(record.spec)
        sweep = cls(
            spec,
            server=server or record.server or None,
            settings=settings,
            state=state,
            record=record,
        )
        sweep._own_state = True
        return sweep

    @classmethod
    def resolve(cls, target: str, **kwargs: Any) -> Sweep:
        """Open a sweep from a spec path (``*.yaml``) or a recorded sweep name."""
        if target.endswith((".yaml", ".yml")) or Path(target).is_file():
            version = kwargs.pop("version", None)
            sweep = cls.from_spec(target, **kwargs)
            if version is not None and version != sweep.spec.version:
                raise ConfigError(
                    f"--version {version} does not match the spec's version {sweep.spec.version}"
                )
            return sweep
        return cls.open(target, **kwargs)

    def close(self) -> None:
        """Close the server connections and the state database this object opened."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._own_state:
            self.state.close()

    def __enter__(self) -> Sweep:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Sweep {self.spec.name} v{self.spec.version}>"

    # -- resources ------------------------------------------------------------

    @property
    def server_config(self) -> ServerConfig:
        """The server config this sweep submits to."""
        arg = self._server_arg
        if arg is None:
            raise ConfigError(
                f"sweep {self.spec.name!r} has no server yet: pass --server NAME (a file in "
                f"{self.settings.servers_dir}/ or a path to a server YAML)"
            )
        if isinstance(arg, ServerConfig):
            return arg
        return load_server_config(resolve_server_path(arg, self.settings.servers_dir))

    @property
    def server(self) -> Any:
        """The open connections to the server (a :class:`pipeline.server.Server`)."""
        if self._server is None:
            from pipeline.server import Server

            self._server = Server(self.server_config)
        return self._server

    @property
    def server_name(self) -> str:
        """How the state database records the server: the name or path given."""
        arg = self._server_arg
        return arg.name if isinstance(arg, ServerConfig) else str(arg or "")

    @property
    def mode(self) -> str:
        """The submission mode: the spec's own, else the server config's default."""
        return self.spec.submit.mode or self.server_config.mode

    @property
    def record(self) -> SweepRecord:
        """The sweep's row in the state database, registering it (and its points) if new."""
        if self._record is None:
            from pipeline.submit import register_sweep

            self._record = register_sweep(
                self.state, self.server.boinc, self.spec, server=self.server_name
            )
        return self._record

    def _context(self) -> Any:
        from pipeline.submit import SubmitContext

        return SubmitContext(
            state=self.state,
            transport=self.server.transport,
            boinc=self.server.boinc,
            mode=self.mode,
            python=self.server_config.python,
        )

    # -- verbs ----------------------------------------------------------------

    def submit(self) -> Any:
        """Run one top-up pass for this sweep's app; return a TopUpReport."""
        from pipeline.submit import top_up

        cushion = self.server_config.cushion_for(self.spec.app)
        return top_up(self._context(), self.spec.app, cushion, [(self.spec, self.record)])

    def track(self) -> SweepStatus:
        """Read BOINC's view of every point and update the state database; return the counts."""
        from pipeline.track import track_sweep

        return track_sweep(self.state, self.server.boinc, self.record)

    def counts(self) -> dict[str, int]:
        """Return the point counts by state from the state database alone (no server needed)."""
        return self.state.point_counts(self.record_if_known().id)

    def record_if_known(self) -> SweepRecord:
        """The sweep's row in the state database, without registering it."""
        if self._record is None:
            self._record = self.state.get_sweep(self.spec.name, self.spec.version)
        return self._record

    def status(self) -> Any:
        """Return a DataFrame with one row per point: id, attempt, state, reason, parameters."""
        import pandas as pd

        rec = self.record_if_known()
        rows = self.state.point_table(rec.id)
        frame = pd.DataFrame(rows, columns=["point_id", "attempt", "state", "reason", "params"])
        params = pd.json_normalize(frame.pop("params").tolist()) if len(frame) else pd.DataFrame()
        params.columns = [f"p.{c}" for c in params.columns]
        return pd.concat([frame, params], axis=1)

    def point_detail(self, point_id: str) -> dict[str, Any]:
        """Return one point's parameters, state and every attempt with its BOINC results.

        Each attempt lists its results (host, CPU and elapsed time, exit status,
        outcome, server and client state) as the BOINC database holds them now;
        a purged workunit shows only what the state database recorded.
        """
        from pipeline.boinc import ClientState, Outcome, ServerState

        rec = self.record_if_known()
        rows = [r for r in self.state.point_table(rec.id) if r[0].startswith(point_id)]
        if len(rows) != 1:
            found = "no point" if not rows else f"{len(rows)} points"
            raise ConfigError(f"{found} of sweep {rec.name!r} has an id starting with {point_id!r}")
        pid, attempt, state, reason, params = rows[0]
        attempts = self.state.attempts_of(rec.id, pid)
        boinc = self.server.boinc
        ids = boinc.existing_workunits(a.wu_name for a in attempts)
        results = boinc.results_of(ids.values())

        def name(enum: Any, value: int) -> str:
            try:
                return str(enum(value).name.lower())
            except ValueError:
                return str(value)

        detail = []
        for a in attempts:
            wu_id = ids.get(a.wu_name)
            detail.append(
                {
                    "wu_name": a.wu_name,
                    "attempt": a.attempt,
                    "wu_id": wu_id,
                    "outcome": a.outcome,
                    "reason": a.reason,
                    "purged": wu_id is None and a.submitted_at is not None,
                    "results": [
                        {
                            "name": r.name,
                            "server_state": name(ServerState, r.server_state),
                            "outcome": name(Outcome, r.outcome),
                            "client_state": name(ClientState, r.client_state),
                            "exit_status": r.exit_status,
                            "hostid": r.hostid,
                            "cpu_time": r.cpu_time,
                            "elapsed_time": r.elapsed_time,
                            "received_time": r.received_time,
                        }
                        for r in results
                        if r.workunitid == wu_id
                    ],
                }
            )
        return {
            "point_id": pid,
            "state": state,
            "reason": reason,
            "attempt": attempt,
            "params": params,
            "attempts": detail,
        }

    def harvest(self, **kwargs: Any) -> Any:
        """Ingest every finished point's results into the store; return a HarvestReport."""
        from pipeline.harvest import harvest_sweep
        from pipeline.store import ResultStore

        store = ResultStore(self.state, self.settings.store_root)
        return harvest_sweep(
            self.state,
            self.server,
            store,
            self.spec,
            self.record,
            timezone=self.server_config.timezone,
            **kwargs,
        )

    def results(
        self,
        columns: Sequence[str] | None = None,
        filters: Any = None,
        *,
        all_versions: bool = False,
    ) -> Any:
        """Return the harvested rows as a pandas DataFrame (columns and filters pushed down)."""
        from pipeline.store import ResultStore

        store = ResultStore(self.state, self.settings.store_root)
        version = None if all_versions else self.spec.version
        return store.read(self.spec.name, version=version, columns=columns, filters=filters)

    def retry(self, *, reason: str | None = None, include_exhausted: bool = False) -> Any:
        """Submit a new attempt now for failed, lost and bad-output points."""
        from pipeline.submit import retry_points

        return retry_points(
            self._context(),
            self.spec,
            self.record,
            reason=reason,
            include_exhausted=include_exhausted,
            extra_attempts=1 if include_exhausted else 0,
        )

    def cancel(self) -> int:
        """Cancel every unfinished workunit with BOINC's bin/cancel_jobs; return how many."""
        from pipeline.submit import cancel_sweep

        return cancel_sweep(self._context(), self.record)

    def is_finished(self, status: SweepStatus) -> bool:
        """Whether nothing of the sweep can change any more without a user's action."""
        open_states = ("planned", "queued", "running", "done", "failed", "lost", "bad_output")
        return not any(status.counts.get(s, 0) for s in open_states)

    def run(
        self,
        *,
        interval: float = 30.0,
        timeout: float | None = None,
        on_status: Callable[[SweepStatus], None] | None = None,
    ) -> SweepStatus:
        """Top up, track and harvest in a loop until every point is finished (in process)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.submit()
            self.harvest()
            status = self.track()
            if on_status is not None:
                on_status(status)
            if self.is_finished(status):
                return status
            if deadline is not None and time.monotonic() > deadline:
                return status
            time.sleep(interval)


def status(name: str, *, version: int | None = None, settings: Settings | None = None) -> Any:
    """Return a DataFrame of a recorded sweep's points and their states (state database only)."""
    with Sweep.open(name, version=version, settings=settings) as sweep:
        return sweep.status()


def results(
    name: str,
    *,
    version: int | None = None,
    columns: Sequence[str] | None = None,
    filters: Any = None,
    settings: Settings | None = None,
) -> Any:
    """Return a recorded sweep's harvested rows as a pandas DataFrame."""
    with Sweep.open(name, version=version, settings=settings) as sweep:
        return sweep.results(columns=columns, filters=filters)
