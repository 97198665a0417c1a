"""The emulated BOINC daemons and volunteer hosts, in one process.

Each pass follows BOINC 1.2.0's own daemons at every point the pipeline can see
(reference, sections 3 and 6):

- transitioner: creates ``target_nresults`` results (``<wu>_<n>``, UNSENT) per
  workunit, times out results past their deadline (OVER, NO_REPLY), sets
  ``error_mask`` when error results *exceed* ``max_error_results`` (2) or more
  results than ``max_total_results`` would be needed (8), creates replacement
  results, asks for validation once ``min_quorum`` successes are in, marks failed
  and cancelled workunits READY for assimilation, and sets ``file_delete_state``
  READY once a workunit is assimilated; ``transition_time`` as BOINC computes it
  (``INT_MAX`` once there is a canonical result or an error);
- hosts (feeder + scheduler + clients): ``hosts`` volunteers with ids 1..N, each
  running one job at a time, never two results of one workunit; a result sent is
  IN_PROGRESS with ``sent_time`` and ``report_deadline``; the job runs as the VM
  runs it (:mod:`pipeline.emulator.runner`); the report sets OVER with outcome,
  client_state, exit_status, cpu_time, elapsed_time and received_time, and a
  second report of the same result is refused;
- validator (``sample_trivial_validator``): accepts every success; once
  ``min_quorum`` of them are in, the first becomes canonical;
- assimilator (``script_assimilator`` + boinc2docker's script): moves the canonical
  file to ``<results_dir>/<app>/<YYYY-MM-DD>/`` (UTC date of the emulated clock),
  then ``assimilate_state`` DONE; failed workunits are assimilated with no file;
- file deleter (when ``config.xml`` lists it): removes input files not flagged
  ``no_delete``/``sticky`` and uploaded files, ``file_delete_state`` DONE.

Validator and assimilator act only on apps a validator and an assimilator daemon
in ``config.xml`` name; hosts only take results of such apps.

Times written to the database come from :class:`Clock`, which runs
``clock_factor`` times faster than real time (and can be advanced by hand), so a
7-day deadline passes in seconds; its offset is kept in
``log_emulator/clock.json`` so it never goes back between runs.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import operator
import os
import re
import secrets
import shutil
import time
import weakref
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from pipeline import boinc
from pipeline.boinc import (
    AssimilateState,
    ClientState,
    ErrorMask,
    FileDeleteState,
    Outcome,
    ServerState,
    ValidateState,
)
from pipeline.emulator import runner
from pipeline.emulator.faults import Faults
from pipeline.emulator.project import Project

__all__ = ["Clock", "Daemons"]

log = logging.getLogger("pipeline.emulator")

SELECT_LIMIT = 1000
#: How many UNSENT results the emulated feeder keeps at hand.
FEEDER_WINDOW = 1000
#: Seconds between passes of the server daemons while jobs are running.
DAEMON_INTERVAL = 0.25
TEN_DAYS = 10 * 86400
#: Credit per FLOP of the estimate: 200 credits per day of a 1 GFLOPS computer.
COBBLESTONE_SCALE = 200.0 / 86400e9
#: Exit status reported when an output file is larger than the template allows.
ERR_FILE_TOO_BIG = -131
#: Exit status reported when a job runs past ``job_timeout``.
EXIT_TIME_LIMIT_EXCEEDED = 197

WU = boinc.workunit
RES = boinc.result


class Clock:
    """Emulated server time: real time times ``factor`` since start, plus manual advances."""

    def __init__(self, factor: float = 1.0, state_file: Path | None = None) -> None:
        if factor <= 0:
            raise ValueError(f"clock factor must be positive, got {factor!r}")
        self.factor = factor
        self.state_file = state_file
        self._start = time.time()
        self._offset = 0.0
        if state_file is not None and state_file.exists():
            try:
                self._offset = float(json.loads(state_file.read_text())["offset"])
            except (ValueError, KeyError, TypeError):
                self._offset = 0.0

    def time(self) -> float:
        """Emulated seconds since the epoch."""
        real = time.time()
        return real + self._offset + (real - self._start) * (self.factor - 1.0)

    def now(self) -> int:
        """Emulated seconds since the epoch, as BOINC stores them (int)."""
        return int(self.time())

    def advance(self, seconds: float) -> None:
        """Jump forward ``seconds`` of emulated time."""
        self._offset += seconds
        self.save()

    def save(self) -> None:
        """Remember the offset so emulated time never goes back in a later run."""
        if self.state_file is not None:
            offset = self.time() - time.time()
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"offset": offset}))
            os.replace(tmp, self.state_file)


# ----------------------------------------------------------------------- xml helpers


@dataclass(frozen=True)
class _InputFile:
    name: str
    open_name: str
    keep: bool  # flagged no_delete or sticky


def _wu_files(xml_doc: bytes | str | None) -> list[_InputFile]:
    if not xml_doc:
        return []
    text = xml_doc.decode("utf-8") if isinstance(xml_doc, bytes) else xml_doc
    root = ET.fromstring(f"<r>{text}</r>")  # noqa: S314 (the project's own database)
    keep: dict[str, bool] = {}
    for fi in root.findall("file_info"):
        name = (fi.findtext("name") or "").strip()
        keep[name] = fi.find("no_delete") is not None or fi.find("sticky") is not None
    files = []
    for fr in root.findall("workunit/file_ref"):
        name = (fr.findtext("file_name") or "").strip()
        files.append(
            _InputFile(name, (fr.findtext("open_name") or "").strip(), keep.get(name, False))
        )
    listed = {f.name for f in files}
    files += [_InputFile(n, "", k) for n, k in keep.items() if n not in listed]
    return files


_OUT_NAME = re.compile(r"<name>([^<]+)</name>")


def _output_names(xml_doc_in: bytes | str | None) -> list[str]:
    if not xml_doc_in:
        return []
    text = xml_doc_in.decode("utf-8") if isinstance(xml_doc_in, bytes) else xml_doc_in
    head = text.split("<result>", 1)[0]
    return _OUT_NAME.findall(head)


_OUTFILE = re.compile(r"<OUTFILE_(\d+)/>")


def _outfile_name(result_name: str, rand: int) -> Callable[[re.Match[str]], str]:
    """``<OUTFILE_n/>`` becomes ``<result_name>_r<random>_<n>`` (BOINC's output file names)."""

    def sub(m: re.Match[str]) -> str:
        return f"{result_name}_r{rand}_{m.group(1)}"

    return sub


def _chunks(items: list[Any], n: int = SELECT_LIMIT) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


#: Rows per multi-row UPDATE statement on MariaDB/MySQL.
UPDATE_CHUNK = 500


def update_each(
    conn: Connection,
    table: sa.Table,
    rows: list[dict[str, Any]],
    *,
    where: Iterable[tuple[str, str, Any]] = (),
    lower: Iterable[str] = (),
) -> None:
    """For each row: ``UPDATE table SET <its columns> WHERE id = row["b_id"] AND ...``.

    A row's other ``b_<column>`` keys are conditions (``<column> = value``); ``where``
    holds conditions shared by every row, as ``(column, "=" or "!=", value)``;
    columns named in ``lower`` are only ever lowered (set where the current value
    is greater). Every row has the same keys. SQLite runs one executemany (no
    round trips); MariaDB/MySQL get one multi-row ``UPDATE ... CASE id`` per
    UPDATE_CHUNK rows instead of one round trip per row.
    """
    if not rows:
        return
    where = list(where)
    lower = set(lower)
    keys = list(rows[0])
    matches = [k for k in keys if k.startswith("b_") and k != "b_id"]
    sets = [k for k in keys if not k.startswith("b_")]
    if conn.dialect.name not in ("mysql", "mariadb") or len(rows) == 1:
        ops = {"=": operator.eq, "!=": operator.ne}
        stmt = (
            sa.update(table)
            .where(
                table.c.id == sa.bindparam("b_id"),
                *[ops[op](table.c[col], value) for col, op, value in where],
                *[table.c[k[2:]] == sa.bindparam(k) for k in matches],
                *[table.c[col] > sa.bindparam(col) for col in sets if col in lower],
            )
            .values({col: sa.bindparam(col) for col in sets})
        )
        conn.execute(stmt, rows)
        return
    for col in [*sets, *(k[2:] for k in matches), *(c for c, _op, _v in where)]:
        if col not in table.c:
            raise ValueError(f"{table.name} has no column {col!r}")
    merged: dict[int, dict[str, Any]] = {}
    for row in rows:
        prev = merged.get(row["b_id"])
        if prev is not None and lower:
            row = {**row, **{c: min(prev[c], row[c]) for c in lower}}
        merged[row["b_id"]] = row
    for chunk in _chunks(list(merged.values()), UPDATE_CHUNK):
        whens = " ".join(["WHEN %s THEN %s"] * len(chunk))
        params: list[Any] = []
        assignments = []
        for col in sets:
            expr = f"CASE id {whens} END"
            if col in lower:
                expr = f"LEAST({col}, {expr})"
            assignments.append(f"{col} = {expr}")
            for row in chunk:
                params += (row["b_id"], row[col])
        conditions = [f"id IN ({', '.join(['%s'] * len(chunk))})"]
        params += [row["b_id"] for row in chunk]
        for col, op, value in where:
            if op not in ("=", "!="):
                raise ValueError(f"unsupported operator {op!r}")
            conditions.append(f"{col} {op} %s")
            params.append(value)
        for key in matches:
            conditions.append(f"{key[2:]} = CASE id {whens} END")
            for row in chunk:
                params += (row["b_id"], row[key])
        sql = f"UPDATE {table.name} SET {', '.join(assignments)} WHERE {' AND '.join(conditions)}"  # noqa: S608 (column names checked against the table)
        conn.exec_driver_sql(sql, tuple(params))


# ----------------------------------------------------------------------- hosts


@dataclass
class _Assignment:
    result_id: int
    result_name: str
    wu_id: int
    wu_name: str
    host_id: int
    sent_time: int
    xml_doc_in: bytes
    wu_xml_doc: bytes
    job: runner.RunningJob | None = None


@dataclass
class _Report:
    due: float
    host_id: int
    result_id: int
    wu_id: int
    values: dict[str, Any]
    duplicate: bool = False


@dataclass
class Daemons:
    """The daemons and ``hosts`` volunteers of one project, driven pass by pass or in a loop."""

    project: Project
    hosts: int = 4
    faults: Faults = field(default_factory=Faults)
    clock_factor: float = 1.0
    parallel: int = 0
    job_timeout: float = 3600.0
    clock: Clock = field(init=False)

    def __post_init__(self) -> None:
        if self.hosts < 0:
            raise ValueError(f"hosts must be >= 0, got {self.hosts}")
        self.clock = Clock(self.clock_factor, self.project.root / "log_emulator" / "clock.json")
        self.parallel = self.parallel or 2 * (os.cpu_count() or 1)
        self.engine = self.project.engine()
        validators, assimilators = self.project.served_apps()
        self._app_ids = self._load_apps()
        self.validated_apps = {self._app_ids[a] for a in validators if a in self._app_ids}
        self.assimilated_apps = {self._app_ids[a] for a in assimilators if a in self._app_ids}
        self.served_apps = self.validated_apps & self.assimilated_apps
        self.app_names = {v: k for k, v in self._app_ids.items()}
        self.file_deleter = self.project.runs_daemon("file_deleter")
        self._busy: dict[int, _Assignment | None] = {h: None for h in range(1, self.hosts + 1)}
        self._running: list[_Assignment] = []
        self._reports: list[_Report] = []
        self._templates: dict[str, str] = {}
        self._window: list[tuple[int, int]] = []
        self._window_time = 0.0
        self._parsed_files: dict[bytes, list[_InputFile]] = {}
        self._sniffed: dict[tuple[str, bytes], bool] = {}
        self._checked_namespaces = False
        self._launcher = runner.Launcher()
        weakref.finalize(self, self._launcher.close)
        # Job slots live in memory when /dev/shm exists (creating and removing
        # thousands of small folders on disk costs more than the jobs themselves).
        shm = Path("/dev/shm")  # noqa: S108 (private folder per run, created below)
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else self.project.root / "tmp"
        self.slots = base / f"boinc-emulator-{os.getpid()}-{secrets.token_hex(4)}"
        self.slots.mkdir(parents=True, exist_ok=True)
        weakref.finalize(self, shutil.rmtree, self.slots, True)

    def _load_apps(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {r.name: r.id for r in conn.execute(sa.select(boinc.app.c.id, boinc.app.c.name))}

    # ------------------------------------------------------------------ driving

    def run_once(self) -> bool:
        """Run every daemon once (hosts wait for their jobs); return whether anything moved."""
        moved = self.transitioner_pass()
        moved |= self.hosts_pass(wait=True)
        moved |= self.transitioner_pass()
        moved |= self.validator_pass()
        moved |= self.assimilator_pass()
        moved |= self.transitioner_pass()
        if self.file_deleter:
            moved |= self.file_deleter_pass()
        return moved

    def run_until_idle(self, max_passes: int = 100) -> int:
        """Run passes until one changes nothing and no report is pending; return the count."""
        for n in range(1, max_passes + 1):
            moved = self.run_once()
            if moved or self._running or self._due_reports_pending():
                continue
            # BOINC's transitioner takes workunits with transition_time < now: one
            # reported this very second waits for the clock to tick.
            if self._next_transition() <= self.clock.now():
                self.clock.advance(1)
                continue
            return n
        return max_passes

    def _next_transition(self) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(sa.func.min(WU.c.transition_time))).scalar()
        return int(value) if value is not None else boinc.INT_MAX

    def _due_reports_pending(self) -> bool:
        now = self.clock.time()
        return any(r.due <= now for r in self._reports)

    def run(
        self,
        until: Callable[[], bool] | None = None,
        timeout: float | None = None,
        idle_sleep: float = 0.5,
    ) -> None:
        """Run until ``stop_daemons`` exists, ``until()`` is true or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout if timeout else None
        last_daemons = 0.0
        try:
            while not self.project.stop_file.exists():
                if until is not None and until():
                    break
                if deadline is not None and time.monotonic() > deadline:
                    break
                moved = self.hosts_pass(wait=False)
                # The server daemons work in bulk: run them every DAEMON_INTERVAL
                # seconds while jobs keep the hosts busy, at once when hosts are idle.
                now = time.monotonic()
                if now - last_daemons >= DAEMON_INTERVAL or not self._running:
                    last_daemons = now
                    moved |= self.transitioner_pass()
                    moved |= self.validator_pass()
                    moved |= self.assimilator_pass()
                    if self.file_deleter:
                        moved |= self.file_deleter_pass()
                if not moved:
                    time.sleep(0.005 if self._running else idle_sleep)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Stop running jobs (their results stay IN_PROGRESS, as when a host goes away)."""
        for a in self._running:
            if a.job is not None:
                runner.finish(a.job)
                shutil.rmtree(a.job.slot, ignore_errors=True)
        self._running.clear()
        self._launcher.close()
        shutil.rmtree(self.slots, ignore_errors=True)
        self.clock.save()

    # ------------------------------------------------------------------ transitioner

    def _result_template(self, path: str) -> str:
        if path not in self._templates:
            full = Path(path) if os.path.isabs(path) else self.project.root / path
            text = full.read_text()
            text = re.sub(r"</?output_template>\s*", "", text)
            self._templates[path] = text.replace("<UPLOAD_URL/>", self.project.upload_url)
        return self._templates[path]

    def transitioner_pass(self) -> bool:
        """Handle every workunit whose ``transition_time`` has come; return if any did."""
        moved = False
        while True:
            now = self.clock.now()
            with self.engine.begin() as conn:
                wus = conn.execute(
                    sa.select(WU)
                    .where(WU.c.transition_time < now)
                    .order_by(WU.c.transition_time)
                    .limit(SELECT_LIMIT)
                ).all()
                if not wus:
                    return moved
                moved = True
                results: dict[int, list[dict[str, Any]]] = {w.id: [] for w in wus}
                for r in conn.execute(
                    sa.select(
                        RES.c.id,
                        RES.c.name,
                        RES.c.workunitid,
                        RES.c.server_state,
                        RES.c.outcome,
                        RES.c.validate_state,
                        RES.c.file_delete_state,
                        RES.c.report_deadline,
                        RES.c.received_time,
                        RES.c.exit_status,
                    ).where(RES.c.workunitid.in_(list(results)))
                ).mappings():
                    results[r["workunitid"]].append(dict(r))
                self._transition(conn, wus, results, now)

    def _transition(
        self,
        conn: Connection,
        wus: Any,
        results: dict[int, list[dict[str, Any]]],
        now: int,
    ) -> None:
        result_updates: list[dict[str, Any]] = []
        new_results: list[dict[str, Any]] = []
        wu_updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for wu in wus:
            items = results[wu.id]
            w = {
                "need_validate": wu.need_validate,
                "error_mask": wu.error_mask,
                "hr_class": wu.hr_class,
                "app_version_id": wu.app_version_id,
                "assimilate_state": wu.assimilate_state,
                "file_delete_state": wu.file_delete_state,
                "transition_time": wu.transition_time,
            }
            original = dict(w)
            changed: set[int] = set()
            canonical = next((r for r in items if r["id"] == wu.canonical_resultid), None)
            canonical_files_deleted = (
                canonical is not None and canonical["file_delete_state"] == FileDeleteState.DONE
            )
            ntotal = nunsent = ninprogress = nsuccess = nerrors = 0
            ncouldnt_send = nno_reply = 0
            have_new = False
            max_suffix = -1
            for r in items:
                ntotal += 1
                suffix = r["name"].rsplit("_", 1)[-1]
                max_suffix = max(max_suffix, int(suffix) if suffix.isdigit() else 0)
                state = r["server_state"]
                if state in (ServerState.INACTIVE, ServerState.UNSENT):
                    nunsent += 1
                elif state == ServerState.IN_PROGRESS:
                    if r["report_deadline"] < now:
                        r["server_state"] = ServerState.OVER
                        r["outcome"] = Outcome.NO_REPLY
                        changed.add(r["id"])
                        nno_reply += 1
                    else:
                        ninprogress += 1
                elif state == ServerState.OVER:
                    outcome = r["outcome"]
                    if outcome == Outcome.COULDNT_SEND:
                        ncouldnt_send += 1
                    elif outcome == Outcome.SUCCESS:
                        if r["validate_state"] == ValidateState.INIT:
                            if canonical_files_deleted:
                                r["validate_state"] = ValidateState.TOO_LATE
                                changed.add(r["id"])
                            else:
                                have_new = True
                        if r["validate_state"] != ValidateState.INVALID:
                            nsuccess += 1
                    elif outcome in (Outcome.CLIENT_ERROR, Outcome.VALIDATE_ERROR):
                        nerrors += 1
                    elif outcome in (Outcome.NO_REPLY, Outcome.CLIENT_DETACHED):
                        nno_reply += 1
            if have_new and nsuccess >= wu.min_quorum:
                w["need_validate"] = 1
            if ncouldnt_send > 0:
                w["error_mask"] |= ErrorMask.COULDNT_SEND_RESULT
            if nerrors and not (nsuccess or ninprogress or nno_reply):
                w["hr_class"] = 0
                w["app_version_id"] = 0
            if nerrors > wu.max_error_results:
                w["error_mask"] |= ErrorMask.TOO_MANY_ERROR_RESULTS
            needed = max(0, wu.target_nresults - nunsent - ninprogress - nsuccess)
            allowed = wu.max_total_results - ntotal
            too_many = allowed < 0 or (allowed == 0 and needed > 0)
            needed = min(needed, max(allowed, 0))
            if too_many:
                w["error_mask"] |= ErrorMask.TOO_MANY_TOTAL_RESULTS
            if w["error_mask"]:
                for r in items:
                    if r["server_state"] in (ServerState.INACTIVE, ServerState.UNSENT):
                        r["server_state"] = ServerState.OVER
                        r["outcome"] = Outcome.DIDNT_NEED
                        changed.add(r["id"])
                    elif (
                        r["server_state"] == ServerState.OVER
                        and r["outcome"] == Outcome.SUCCESS
                        and r["validate_state"] in (ValidateState.INIT, ValidateState.INCONCLUSIVE)
                    ):
                        r["validate_state"] = ValidateState.NO_CHECK
                        changed.add(r["id"])
                if w["assimilate_state"] == AssimilateState.INIT:
                    w["assimilate_state"] = AssimilateState.READY
            elif wu.canonical_resultid == 0 and wu.transitioner_flags != 2 and needed > 0:
                template = self._result_template(wu.result_template_file)
                for j in range(needed):
                    name = f"{wu.name}_{max_suffix + j + 1}"
                    rand = secrets.randbelow(2**31)
                    doc = _OUTFILE.sub(_outfile_name(name, rand), template)
                    new_results.append(self._new_result(wu, name, doc, now))
            all_over_and_validated = True
            all_ready = True
            for r in items:
                if r["server_state"] == ServerState.OVER:
                    if r["outcome"] == Outcome.SUCCESS:
                        if r["validate_state"] == ValidateState.INIT:
                            all_over_and_validated = all_ready = False
                    elif r["outcome"] == Outcome.NO_REPLY and now < r["report_deadline"]:
                        all_over_and_validated = False
                else:
                    all_over_and_validated = all_ready = False
            if (
                all_ready
                and w["assimilate_state"] == AssimilateState.INIT
                and items
                and wu.canonical_resultid > 0
            ):
                w["assimilate_state"] = AssimilateState.READY
            if w["assimilate_state"] == AssimilateState.DONE:
                if all_over_and_validated and w["file_delete_state"] == FileDeleteState.INIT:
                    w["file_delete_state"] = FileDeleteState.READY
                for r in items:
                    if r is canonical and not all_over_and_validated:
                        continue
                    do_delete = r["outcome"] == Outcome.CLIENT_ERROR or (
                        r["outcome"] == Outcome.SUCCESS
                        and r["validate_state"] != ValidateState.INIT
                    )
                    if do_delete and r["file_delete_state"] == FileDeleteState.INIT:
                        r["file_delete_state"] = FileDeleteState.READY
                        changed.add(r["id"])
            if wu.canonical_resultid or w["error_mask"]:
                tt = boinc.INT_MAX
            else:
                tt = now + max(int(1.5 * wu.delay_bound), TEN_DAYS)
            for r in items:
                if r["server_state"] == ServerState.IN_PROGRESS:
                    tt = min(tt, r["report_deadline"])
            if tt < now:
                tt = now + min(max(2 * (now - tt), 60), 86400)
            w["transition_time"] = tt
            for r in items:
                if r["id"] in changed:
                    result_updates.append(
                        {
                            "b_id": r["id"],
                            "server_state": int(r["server_state"]),
                            "outcome": int(r["outcome"]),
                            "validate_state": int(r["validate_state"]),
                            "file_delete_state": int(r["file_delete_state"]),
                        }
                    )
            diff = {k: int(v) for k, v in w.items() if v != original[k]}
            if diff:
                diff["b_id"] = wu.id
                key = tuple(sorted(k for k in diff if k != "b_id"))
                wu_updates.setdefault(key, []).append(diff)
        if new_results:
            conn.execute(sa.insert(RES), new_results)
            self._window_time = 0.0  # the feeder sees new results at its next scan
        update_each(conn, RES, result_updates)
        for rows in wu_updates.values():
            update_each(conn, WU, rows)

    def _new_result(self, wu: Row[Any], name: str, xml_doc_in: str, now: int) -> dict[str, Any]:
        return {
            "create_time": now,
            "workunitid": wu.id,
            "server_state": int(ServerState.UNSENT),
            "outcome": 0,
            "client_state": 0,
            "hostid": 0,
            "userid": 0,
            "report_deadline": 0,
            "sent_time": 0,
            "received_time": 0,
            "name": name,
            "cpu_time": 0.0,
            "xml_doc_in": xml_doc_in.encode("utf-8"),
            "xml_doc_out": b"",
            "stderr_out": b"",
            "batch": wu.batch,
            "file_delete_state": 0,
            "validate_state": 0,
            "claimed_credit": 0.0,
            "granted_credit": 0.0,
            "opaque": 0.0,
            "random": secrets.randbelow(2**31),
            "app_version_num": 0,
            "appid": wu.appid,
            "exit_status": 0,
            "teamid": 0,
            "priority": wu.priority,
            "elapsed_time": 0.0,
            "flops_estimate": 0.0,
            "app_version_id": 0,
            "runtime_outlier": 0,
            "size_class": wu.size_class,
            "peak_working_set_size": 0.0,
            "peak_swap_size": 0.0,
            "peak_disk_usage": 0.0,
        }

    # ------------------------------------------------------------------ hosts

    def hosts_pass(self, wait: bool = False) -> bool:
        """Reap finished jobs, send due reports, hand UNSENT results to idle hosts, start jobs."""
        moved = self._reap(block=False)
        moved |= self._send_reports()
        moved |= self._assign()
        if wait:
            while self._running:
                moved |= self._reap(block=True)
            moved |= self._send_reports()
        return moved

    def _feeder(self, conn: Connection) -> list[tuple[int, int]]:
        """UNSENT results (id, workunit id) in the scheduler's order, cached like BOINC's feeder.

        The real feeder keeps a window of sendable results in shared memory and
        refills it periodically; this one refills when the window is used up or
        older than DAEMON_INTERVAL. A result that stopped being UNSENT meanwhile
        (cancelled) is skipped when it is sent: the update requires UNSENT.
        """
        now = time.monotonic()
        if self._window and now - self._window_time < DAEMON_INTERVAL:
            return self._window
        self._window = [
            (rid, wid)
            for rid, wid in conn.execute(
                sa.select(RES.c.id, RES.c.workunitid)
                .where(
                    RES.c.server_state == int(ServerState.UNSENT),
                    RES.c.appid.in_(sorted(self.served_apps)),
                )
                .order_by(RES.c.priority.desc(), RES.c.id)
                .limit(FEEDER_WINDOW)
            )
        ]
        self._window_time = now
        return self._window

    def _assign(self) -> bool:
        idle = [h for h, a in self._busy.items() if a is None]
        room = self.parallel - len(self._running)
        if not idle or room <= 0 or not self.served_apps:
            return False
        want = min(len(idle), room)
        now = self.clock.now()
        with self.engine.connect() as conn:
            window = self._feeder(conn)
            if not window:
                return False
            candidates = window[: max(want * 4, 16)]
            had: dict[int, set[int]] = {}
            for wid, hid in conn.execute(
                sa.select(RES.c.workunitid, RES.c.hostid).where(
                    RES.c.workunitid.in_({wid for _rid, wid in candidates}), RES.c.hostid > 0
                )
            ):
                had.setdefault(wid, set()).add(hid)
        chosen: list[tuple[int, int]] = []
        for rid, wid in candidates:
            if not idle or len(chosen) >= want:
                break
            for h in idle:
                if h not in had.get(wid, set()):
                    chosen.append((h, rid))
                    idle.remove(h)
                    had.setdefault(wid, set()).add(h)
                    break
        taken = {rid for _h, rid in chosen}
        # Results passed over (every idle host already had their workunit) stay in
        # the window for the next pass, in order.
        self._window = [c for c in window if c[0] not in taken]
        if not chosen:
            return False
        with self.engine.connect() as conn:
            details = {
                row.id: row
                for row in conn.execute(
                    sa.select(
                        RES.c.id,
                        RES.c.name,
                        RES.c.workunitid,
                        RES.c.xml_doc_in,
                        WU.c.name.label("wu_name"),
                        WU.c.xml_doc,
                        WU.c.delay_bound,
                    )
                    .join(WU, WU.c.id == RES.c.workunitid)
                    .where(RES.c.id.in_(taken))
                )
            }
        picks = [(h, details[rid]) for h, rid in chosen if rid in details]
        if not picks:
            return False
        sent = [
            {
                "b_id": row.id,
                "server_state": int(ServerState.IN_PROGRESS),
                "hostid": h,
                "userid": 1,
                "sent_time": now,
                "report_deadline": now + int(row.delay_bound),
            }
            for h, row in picks
        ]
        with self.engine.begin() as conn:
            update_each(conn, RES, sent, where=[("server_state", "=", int(ServerState.UNSENT))])
            # The scheduler pulls the workunit's transition_time in to the deadline
            # (update_wu_on_send), so the transitioner sees a timeout in time.
            update_each(
                conn,
                WU,
                [
                    {"b_id": row.workunitid, "transition_time": s["report_deadline"]}
                    for (_h, row), s in zip(picks, sent, strict=True)
                ],
                lower=["transition_time"],
            )
            got = {
                rid
                for (rid,) in conn.execute(
                    sa.select(RES.c.id).where(
                        RES.c.id.in_([s["b_id"] for s in sent]),
                        RES.c.server_state == int(ServerState.IN_PROGRESS),
                        RES.c.sent_time == now,
                    )
                )
            }
        for h, row in picks:
            if row.id not in got:
                continue
            a = _Assignment(
                row.id, row.name, row.workunitid, row.wu_name, h, now, row.xml_doc_in, row.xml_doc
            )
            self._start(a)
        return True

    def _start(self, a: _Assignment) -> None:
        f = self.faults
        if f.hits("no_reply", a.result_name):
            log.debug("host %d: %s will never be reported", a.host_id, a.result_name)
            return  # the host goes away; the host slot is free again
        if f.hits("client_error", a.result_name):
            status = int(f.arg("client_error"))
            self._queue_report(a, self._error_values(status, "emulated client error\n", 0, 0))
            return
        slot = self.slots / f"{a.result_name}_{secrets.token_hex(4)}"
        shared = slot / "shared"
        os.makedirs(shared / "results")
        made = {"shared", "shared/results"}
        loads_image = host_image = False
        for item in self._input_files(a.wu_xml_doc):
            if not item.open_name:
                continue
            src = self.project.download_path(item.name)
            folder = os.path.dirname(item.open_name)
            if folder and folder not in made:
                os.makedirs(slot / folder, exist_ok=True)
                made.add(folder)
            try:
                shutil.copyfile(src, slot / item.open_name)
            except FileNotFoundError:
                shutil.rmtree(slot, ignore_errors=True)
                self._queue_report(
                    a, self._error_values(-224, f"can't download {item.name}\n", 0, 0)
                )
                return
            if item.open_name == "shared/boinc_app":
                loads_image = self._loads_image(item.name, src)
            elif item.open_name.startswith("shared/image/image_"):
                host_image = host_image or self._is_host_mode_image(item.name, src)
        container = loads_image and not host_image
        if not self._checked_namespaces:
            runner.check_namespaces()
            self._checked_namespaces = True
        a.job = self._launcher.start(
            slot, container=container, no_output=f.hits("no_output", a.result_name)
        )
        self._busy[a.host_id] = a
        self._running.append(a)
        if container:  # one at a time: wait here for it to finish
            a.job.wait()

    def _input_files(self, xml_doc: bytes) -> list[_InputFile]:
        """The workunit's input files, parsed once per distinct ``xml_doc``."""
        files = self._parsed_files.get(xml_doc)
        if files is None:
            if len(self._parsed_files) >= 4096:
                self._parsed_files.clear()
            files = self._parsed_files[xml_doc] = _wu_files(xml_doc)
        return files

    def _loads_image(self, name: str, path: Path) -> bool:
        """Whether a staged ``boinc_app`` loads an image (staged files never change)."""
        return self._sniff(name, path, b"docker load")

    def _is_host_mode_image(self, name: str, path: Path) -> bool:
        """Whether a staged image file is an emulator host-mode marker (run with the shim)."""
        return self._sniff(name, path, runner.HOST_MODE_LABEL.encode())

    def _sniff(self, name: str, path: Path, needle: bytes) -> bool:
        key = (name, needle)
        known = self._sniffed.get(key)
        if known is None:
            if len(self._sniffed) >= 4096:
                self._sniffed.clear()
            data = path.read_bytes()
            if name.endswith(".gz"):
                try:
                    data = gzip.decompress(data)
                except (OSError, EOFError):
                    data = b""
            known = needle in data
            self._sniffed[key] = known
        return known

    def _reap(self, block: bool) -> bool:
        moved = False
        for a in list(self._running):
            job = a.job
            assert job is not None
            if not job.poll():
                if time.monotonic() - job.started > self.job_timeout:
                    job.kill()
                    job.wait()
                    job.status = EXIT_TIME_LIMIT_EXCEEDED
                elif block:
                    job.wait()
                else:
                    continue
            self._running.remove(a)
            self._finish(a, job)
            moved = True
        return moved

    def _finish(self, a: _Assignment, job: runner.RunningJob) -> None:
        f = self.faults
        try:
            stderr = (job.slot / "stderr.txt").read_bytes()[-65536:].decode("utf-8", "replace")
        except OSError:
            stderr = ""
        status = job.status or 0
        archive = job.slot / "shared" / "results.tgz"
        names = _output_names(a.xml_doc_in)
        if status != 0:
            values = self._error_values(status, stderr, job.cpu_time, job.elapsed)
        elif not archive.is_file() or not names:
            values = self._error_values(
                0, stderr + "output file absent\n", job.cpu_time, job.elapsed
            )
        else:
            data = archive.read_bytes()
            if f.hits("corrupt", a.result_name) and data:
                mid = len(data) // 2
                data = data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 16]) + data[mid + 16 :]
                if len(data) <= 32:
                    data = data[:10] + b"\xff" * max(0, len(data) - 10)
            if f.hits("truncate", a.result_name):
                data = data[: len(data) // 2]
            if len(data) > boinc.DEFAULT_UPLOAD_MAX_NBYTES:
                values = self._error_values(
                    ERR_FILE_TOO_BIG, stderr + "output file too big\n", job.cpu_time, job.elapsed
                )
            else:
                dest = self.project.upload_path(names[0])
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, dest)
                md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
                values = {
                    "client_state": int(ClientState.FILES_UPLOADED),
                    "exit_status": 0,
                    "outcome": int(Outcome.SUCCESS),
                    "validate_state": int(ValidateState.INIT),
                    "cpu_time": job.cpu_time,
                    "elapsed_time": job.elapsed,
                    "peak_working_set_size": job.peak_rss,
                    "xml_doc_out": (
                        f"<file_info>\n    <name>{names[0]}</name>\n"
                        f"    <nbytes>{len(data)}</nbytes>\n"
                        f"    <max_nbytes>{boinc.DEFAULT_UPLOAD_MAX_NBYTES}</max_nbytes>\n"
                        f"    <md5_cksum>{md5}</md5_cksum>\n"
                        f"    <url>{self.project.upload_url}</url>\n</file_info>\n"
                    ).encode(),
                    "stderr_out": _stderr_doc(stderr, 0),
                }
        shutil.rmtree(job.slot, ignore_errors=True)
        self._queue_report(a, values)

    def _error_values(
        self, status: int, stderr: str, cpu_time: float, elapsed: float
    ) -> dict[str, Any]:
        return {
            "client_state": int(ClientState.COMPUTE_ERROR),
            "exit_status": status,
            "outcome": int(Outcome.CLIENT_ERROR),
            "validate_state": int(ValidateState.INVALID),
            "cpu_time": cpu_time,
            "elapsed_time": elapsed,
            "peak_working_set_size": 0.0,
            "xml_doc_out": b"",
            "stderr_out": _stderr_doc(stderr, status),
        }

    def _queue_report(self, a: _Assignment, values: dict[str, Any]) -> None:
        now = self.clock.time()
        due = now
        if self.faults.hits("slow", a.host_id):
            due += self.faults.arg("slow")
        self._reports.append(_Report(due, a.host_id, a.result_id, a.wu_id, values))
        if self.faults.hits("duplicate_report", a.result_name):
            self._reports.append(
                _Report(due, a.host_id, a.result_id, a.wu_id, values, duplicate=True)
            )
        # A host is busy while its job runs and until it has reported.
        self._busy[a.host_id] = a if due > now else None

    def _send_reports(self) -> bool:
        now_f = self.clock.time()
        due = [r for r in self._reports if r.due <= now_f]
        if not due:
            return False
        self._reports = [r for r in self._reports if r.due > now_f]
        now = self.clock.now()
        first = [r for r in due if not r.duplicate]
        rows = [
            {
                "b_id": r.result_id,
                "b_hostid": r.host_id,
                "server_state": int(ServerState.OVER),
                "received_time": now,
                **r.values,
            }
            for r in first
        ]
        with self.engine.begin() as conn:
            if rows:
                update_each(
                    conn,
                    RES,
                    rows,
                    where=[
                        ("received_time", "=", 0),
                        ("server_state", "!=", int(ServerState.UNSENT)),
                    ],
                )
                update_each(conn, WU, [{"b_id": r.wu_id, "transition_time": now} for r in first])
            for r in due:
                if not r.duplicate:
                    continue
                # The scheduler refuses a result it already has (received_time set):
                # no row changes, not even the workunit's transition_time.
                done = conn.execute(
                    sa.update(RES)
                    .where(
                        RES.c.id == r.result_id,
                        RES.c.hostid == r.host_id,
                        RES.c.received_time == 0,
                        RES.c.server_state != int(ServerState.UNSENT),
                    )
                    .values(server_state=int(ServerState.OVER), received_time=now, **r.values)
                )
                if done.rowcount:
                    conn.execute(
                        sa.update(WU).where(WU.c.id == r.wu_id).values(transition_time=now)
                    )
        for r in first:
            held = self._busy.get(r.host_id)
            if held is not None and held.result_id == r.result_id:
                self._busy[r.host_id] = None
        return True

    # ------------------------------------------------------------------ validator

    def validator_pass(self) -> bool:
        """The trivial validator: every success is valid; the first of a quorum is canonical."""
        if not self.validated_apps:
            return False
        moved = False
        while True:
            now = self.clock.now()
            with self.engine.begin() as conn:
                wus = conn.execute(
                    sa.select(WU)
                    .where(WU.c.appid.in_(sorted(self.validated_apps)), WU.c.need_validate > 0)
                    .limit(SELECT_LIMIT)
                ).all()
                if not wus:
                    return moved
                moved = True
                by_wu: dict[int, list[Any]] = {w.id: [] for w in wus}
                for r in conn.execute(
                    sa.select(
                        RES.c.id,
                        RES.c.workunitid,
                        RES.c.server_state,
                        RES.c.outcome,
                        RES.c.validate_state,
                    )
                    .where(RES.c.workunitid.in_(list(by_wu)))
                    .order_by(RES.c.id)
                ):
                    by_wu[r.workunitid].append(r)
                res_valid: list[dict[str, Any]] = []
                res_didnt_need: list[dict[str, Any]] = []
                wu_rows: list[dict[str, Any]] = []
                for wu in wus:
                    credit = wu.rsc_fpops_est * COBBLESTONE_SCALE

                    def valid(rid: int, credit: float = credit) -> dict[str, Any]:
                        return {
                            "b_id": rid,
                            "validate_state": int(ValidateState.VALID),
                            "granted_credit": credit,
                        }

                    upd = {
                        "b_id": wu.id,
                        "need_validate": 0,
                        "canonical_resultid": wu.canonical_resultid,
                        "canonical_credit": wu.canonical_credit,
                        "assimilate_state": wu.assimilate_state,
                        "transition_time": wu.transition_time,
                    }
                    todo = [
                        r
                        for r in by_wu[wu.id]
                        if r.server_state == ServerState.OVER
                        and r.outcome == Outcome.SUCCESS
                        and r.validate_state in (ValidateState.INIT, ValidateState.INCONCLUSIVE)
                    ]
                    if wu.canonical_resultid:
                        res_valid += [valid(r.id) for r in todo]
                    elif len(todo) >= wu.min_quorum and todo:
                        res_valid += [valid(r.id) for r in todo]
                        upd["canonical_resultid"] = todo[0].id
                        upd["canonical_credit"] = credit
                        upd["assimilate_state"] = int(AssimilateState.READY)
                        upd["transition_time"] = boinc.INT_MAX
                        res_didnt_need += [
                            {
                                "b_id": r.id,
                                "server_state": int(ServerState.OVER),
                                "outcome": int(Outcome.DIDNT_NEED),
                            }
                            for r in by_wu[wu.id]
                            if r.server_state == ServerState.UNSENT
                        ]
                    wu_rows.append(upd)
                update_each(conn, RES, res_valid)
                update_each(
                    conn,
                    RES,
                    res_didnt_need,
                    where=[("server_state", "=", int(ServerState.UNSENT))],
                )
                update_each(conn, WU, wu_rows)
                del now

    # ------------------------------------------------------------------ assimilator

    def assimilator_pass(self) -> bool:
        """boinc2docker's assimilator: move the canonical file to the results folder."""
        if not self.assimilated_apps:
            return False
        moved = False
        while True:
            with self.engine.begin() as conn:
                wus = conn.execute(
                    sa.select(
                        WU.c.id, WU.c.name, WU.c.appid, WU.c.error_mask, WU.c.canonical_resultid
                    )
                    .where(
                        WU.c.appid.in_(sorted(self.assimilated_apps)),
                        WU.c.assimilate_state == int(AssimilateState.READY),
                    )
                    .limit(SELECT_LIMIT)
                ).all()
                if not wus:
                    return moved
                moved = True
                canon_ids = [w.canonical_resultid for w in wus if w.canonical_resultid]
                docs: dict[int, Any] = {}
                for chunk in _chunks(canon_ids):
                    for rid, doc in conn.execute(
                        sa.select(RES.c.id, RES.c.xml_doc_in).where(RES.c.id.in_(chunk))
                    ):
                        docs[rid] = doc
                now = self.clock.now()
                day = time.strftime("%Y-%m-%d", time.gmtime(now))
                for wu in wus:
                    if wu.error_mask or not wu.canonical_resultid:
                        continue  # called with --error: nothing to move
                    app_name = self.app_names.get(wu.appid, str(wu.appid))
                    if self.faults.hits("results_permission", wu.name):
                        # Fake: the upstream permission bug (boincadm cannot create
                        # /results/<app>) cannot happen to a root process; the script's
                        # failure is ignored exactly as upstream ignores it.
                        log.info(
                            "assimilator: cannot create %s/%s", self.project.results_dir, app_name
                        )
                        continue
                    for name in _output_names(docs.get(wu.canonical_resultid)):
                        src = self.project.upload_path(name)
                        dest_dir = self.project.results_dir / app_name / day
                        try:
                            dest_dir.mkdir(parents=True, exist_ok=True)
                            shutil.move(str(src), str(dest_dir / name))
                        except OSError as exc:
                            log.info("assimilator: %s: %s (ignored)", name, exc)
                update_each(
                    conn,
                    WU,
                    [
                        {
                            "b_id": w.id,
                            "assimilate_state": int(AssimilateState.DONE),
                            "transition_time": now,
                        }
                        for w in wus
                    ],
                )

    # ------------------------------------------------------------------ file deleter

    def file_deleter_pass(self) -> bool:
        """Delete files of workunits and results whose file_delete_state is READY."""
        moved = False
        with self.engine.begin() as conn:
            wus = conn.execute(
                sa.select(WU.c.id, WU.c.xml_doc)
                .where(WU.c.file_delete_state == int(FileDeleteState.READY))
                .limit(SELECT_LIMIT)
            ).all()
            for wu in wus:
                for item in _wu_files(wu.xml_doc):
                    if not item.keep:
                        _unlink(self.project.download_path(item.name))
            if wus:
                moved = True
                done = int(FileDeleteState.DONE)
                update_each(conn, WU, [{"b_id": w.id, "file_delete_state": done} for w in wus])
            results = conn.execute(
                sa.select(RES.c.id, RES.c.xml_doc_in)
                .where(RES.c.file_delete_state == int(FileDeleteState.READY))
                .limit(SELECT_LIMIT)
            ).all()
            for r in results:
                for name in _output_names(r.xml_doc_in):
                    _unlink(self.project.upload_path(name))
            if results:
                moved = True
                done = int(FileDeleteState.DONE)
                update_each(conn, RES, [{"b_id": r.id, "file_delete_state": done} for r in results])
        return moved

    # ------------------------------------------------------------------ status

    def pending_reports(self) -> int:
        """Reports waiting for their (slow host's) time."""
        return len(self._reports)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _stderr_doc(stderr: str, status: int) -> bytes:
    text = stderr.replace("]]>", "]] >")
    return (
        "<core_client_version>7.16.6</core_client_version>\n<![CDATA[\n"
        + (f"<message>\nprocess exited with code {status}\n</message>\n" if status else "")
        + f"<stderr_txt>\n{text}</stderr_txt>\n]]>\n"
    ).encode()


def status_counts(project: Project) -> dict[str, dict[str, int]]:
    """Counts of workunits and results per state, read with plain SQL from the database."""
    out: dict[str, dict[str, int]] = {}
    with project.engine().connect() as conn:
        for label, column, enum in (
            ("result.server_state", RES.c.server_state, ServerState),
            ("result.outcome", RES.c.outcome, Outcome),
            ("result.validate_state", RES.c.validate_state, ValidateState),
            ("workunit.assimilate_state", WU.c.assimilate_state, AssimilateState),
            ("workunit.error_mask", WU.c.error_mask, None),
        ):
            counts: dict[str, int] = {}
            for value, n in conn.execute(
                sa.select(column, sa.func.count()).group_by(column).order_by(column)
            ):
                name = (
                    enum(value).name
                    if enum is not None and value in iter_values(enum)
                    else str(value)
                )
                counts[f"{value} {name}" if enum is not None else str(value)] = int(n)
            out[label] = counts
        done = conn.execute(
            sa.select(sa.func.count()).where(
                WU.c.canonical_resultid > 0,
                WU.c.error_mask == 0,
                WU.c.assimilate_state == int(AssimilateState.DONE),
            )
        ).scalar_one()
        failed = conn.execute(sa.select(sa.func.count()).where(WU.c.error_mask != 0)).scalar_one()
        total = conn.execute(sa.select(sa.func.count()).select_from(WU)).scalar_one()
        out["workunits"] = {
            "total": int(total),
            "done": int(done),
            "failed": int(failed),
            "pending": int(total) - int(done) - int(failed),
        }
    return out


def iter_values(enum: Any) -> Iterable[int]:
    """The integer values of an IntEnum."""
    return {int(m) for m in enum}
