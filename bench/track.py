"""Benchmark tracking: one sweep's status inside BOINC tables of 1,000,000 workunits on MariaDB.

Usage::

    python bench/track.py [--workunits 1000000] [--sweep 10000] [--runs 7]
                          [--url mysql+pymysql://root@127.0.0.1:3306] [--keep NAME]

A fresh database with a random name gets BOINC's ``workunit`` and ``result``
tables (``pipeline.boinc.metadata``) and is filled on the server side (MariaDB's
``seq_1_to_N`` sequence tables, ``INSERT ... SELECT``): ``--workunits`` rows whose
names belong to 100 other sweeps (``other<k>_v1_<16 hex>_a1``) with the
``--sweep`` workunits of the measured sweep ``bench_v1_<16 hex>_a1`` interleaved
among them in id order, each with a ``xml_doc`` of ``--xml-bytes``; then 0, 1
or 2 result rows per workunit with a realistic mix of states (done, waiting for
assimilation, in progress, unsent, not yet transitioned, failed, cancelled).

Measured, median of ``--runs`` runs each, after one warm-up:

- ``BoincDB.workunit_classes(prefix)``, the one query per sweep that tracking
  runs (each workunit's state decided by the server), and
  ``BoincDB.workunit_states(prefix)`` (per-workunit result counts, which
  harvesting and cancellation read);
- ``track_sweep`` end to end, with a SQLite state database holding the sweep's
  points and attempts as ``pipeline.submit`` leaves them (first run: every
  point changes state; later runs: steady state);
- the best hand-written SQL for the same answers, through the bare DB-API
  cursor: the per-workunit rows (name range on the unique index, join to
  ``result`` by ``workunitid``, GROUP BY), the per-workunit states (the
  ``classify`` rules in a CASE) and the per-state counts computed entirely in
  SQL (the least any client can transfer, though it tells no point's state).

Where: by default a private MariaDB server (the same ``mariadbd`` binary as the
shared one) is started for the run in a temporary folder on a free port, with
``--buffer-pool-mib`` of InnoDB buffer pool (default 1024: the sweep's working
set, about 10,000 scattered workunit and result pages, is over 300 MB) and
``innodb_flush_log_at_trx_commit=2`` for a quick fill; it is stopped and
removed at the end. ``--url`` measures on an existing server instead (for
example the shared one, ``mysql+pymysql://root@127.0.0.1:3306``, whose
128 MiB pool cannot hold that working set).

The database is dropped at the end unless ``--keep NAME`` is given (only with
``--url``), in which case it is named NAME, reused when it already holds the
requested data, and left in place.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa

from pipeline.boinc import metadata
from pipeline.boincdb import BoincDB, like_prefix
from pipeline.plan import sweep_name_prefix, wu_name
from pipeline.state import StateDB
from pipeline.track import track_sweep

SWEEP = "bench"
OTHER_SWEEPS = 100

# Per-workunit state class c = CRC32(id) % 100 (the same formula for workunits
# and results):
#   0-39 done (canonical result 2*id; 0-9 two successes, 10-14 a second NO_REPLY)
#  40-49 canonical result waiting for assimilation
#  50-64 one result in progress (50-54 plus a second unsent)
#  65-84 one result unsent
#  85-89 not yet transitioned (no results)
#  90-94 failed: two client errors, error_mask 2
#  95-99 cancelled: one DIDNT_NEED result, error_mask 16
C = "(CRC32(w.id) % 100)"


def measured_point(j: int) -> str:
    """Point id of the measured sweep's j-th workunit (also computed in SQL)."""
    return hashlib.sha256(f"pt{j}".encode()).hexdigest()[:16]


def fill(conn: Any, n: int, sweep: int, xml_bytes: int) -> float:
    """Create and fill BOINC's tables on the server; return the seconds taken."""
    t0 = time.perf_counter()
    every = max(1, n // sweep)
    cur = conn.cursor()
    cur.execute("SET SESSION unique_checks = 0")
    cur.execute("SET SESSION foreign_key_checks = 0")
    name = (
        f"IF(s.seq % {every} = 0 AND s.seq DIV {every} <= {sweep}, "
        f"CONCAT('{SWEEP}_v1_', LEFT(SHA2(CONCAT('pt', s.seq DIV {every}), 256), 16), '_a1'), "
        f"CONCAT('other', s.seq % {OTHER_SWEEPS}, '_v1_', LEFT(MD5(s.seq), 16), '_a1'))"
    )
    c = "(CRC32(s.seq) % 100)"
    step = 100_000
    for lo in range(1, n + 1, step):
        hi = min(n, lo + step - 1)
        cur.execute(
            f"""INSERT INTO workunit (id, create_time, appid, name, xml_doc, batch, rsc_fpops_est,
            rsc_fpops_bound, rsc_memory_bound, rsc_disk_bound, need_validate, canonical_resultid,
            canonical_credit, transition_time, delay_bound, error_mask, file_delete_state,
            assimilate_state, hr_class, opaque, min_quorum, target_nresults, max_error_results,
            max_total_results, max_success_results, result_template_file, priority,
            rsc_bandwidth_bound, fileset_id, app_version_id, transitioner_flags, size_class,
            keywords, app_version_num)
            SELECT s.seq, 1700000000 + s.seq, 1, {name}, REPEAT('x', {xml_bytes}), 0, 3.6e12,
            8.64e13, 5e8, 1e9, 0, IF({c} < 50, 2 * s.seq, 0), 0,
            IF({c} < 40 OR {c} >= 90, 2147483647, 1700000000), 604800,
            CASE WHEN {c} >= 95 THEN 16 WHEN {c} >= 90 THEN 2 ELSE 0 END,
            IF({c} < 40 OR {c} >= 90, 1, 0),
            CASE WHEN {c} < 40 OR {c} >= 90 THEN 2 WHEN {c} < 50 THEN 1 ELSE 0 END,
            0, 0, 1, 1, 2, 10, 6, 'templates/boinc2docker_out', 0, 0, 0, 0, 1, -1, '', 0
            FROM seq_{lo}_to_{hi} s"""
        )
        conn.commit()
    result_cols = """(id, create_time, workunitid, server_state, outcome, client_state, hostid,
        userid, report_deadline, sent_time, received_time, name, cpu_time, xml_doc_in,
        xml_doc_out, stderr_out, batch, file_delete_state, validate_state, claimed_credit,
        granted_credit, opaque, random, app_version_num, appid, exit_status, teamid, priority,
        elapsed_time, flops_estimate, app_version_id, runtime_outlier, size_class,
        peak_working_set_size, peak_swap_size, peak_disk_usage)"""
    # Result n (0 or 1) of workunit w has id 2*w.id + n.
    state0 = (
        f"CASE WHEN {C} < 50 THEN 5 WHEN {C} < 65 THEN 4 WHEN {C} < 85 THEN 2 "
        f"WHEN {C} < 90 THEN 0 ELSE 5 END"
    )
    outcome0 = f"CASE WHEN {C} < 50 THEN 1 WHEN {C} < 90 THEN 0 WHEN {C} < 95 THEN 3 ELSE 5 END"
    state1 = f"CASE WHEN {C} < 15 THEN 5 WHEN {C} < 55 THEN 2 ELSE 5 END"
    outcome1 = f"CASE WHEN {C} < 10 THEN 1 WHEN {C} < 15 THEN 4 WHEN {C} < 55 THEN 0 ELSE 3 END"
    for n_, st, oc, cond in (
        (0, state0, outcome0, f"NOT ({C} BETWEEN 85 AND 89)"),
        (1, state1, outcome1, f"({C} < 15 OR {C} BETWEEN 50 AND 54 OR {C} BETWEEN 90 AND 94)"),
    ):
        for lo in range(1, n + 1, step):
            hi = min(n, lo + step - 1)
            cur.execute(
                f"""INSERT INTO result {result_cols}
                SELECT 2 * w.id + {n_}, w.create_time + 60, w.id, {st}, {oc},
                IF({oc} = 1, 5, IF({oc} = 3, 3, 0)), 1 + w.id % 5000, 1 + w.id % 900, 0,
                w.create_time + 100, IF({st} = 5, w.create_time + 3600, 0),
                CONCAT(w.name, '_{n_}'), 3000.0, REPEAT('y', {xml_bytes // 2}), NULL, NULL, 0,
                0, IF({oc} = 1, 1, 0), 0, 0, 0, w.id % 65536, 0, 1, IF({oc} = 3, 1, 0), 0, 0,
                3100.0, 1e9, 0, 0, -1, 0, 0, 0
                FROM workunit w WHERE w.id BETWEEN {lo} AND {hi} AND {cond}"""
            )
            conn.commit()
    cur.execute("ANALYZE TABLE workunit, result")
    cur.fetchall()
    return time.perf_counter() - t0


def median_time(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    """Run ``fn`` once to warm up, then ``runs`` times; return the median seconds and a value."""
    value = fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


HAND_ROWS = """
SELECT w.id, w.name, w.canonical_resultid, w.error_mask, w.assimilate_state,
       COALESCE(SUM(r.server_state <= 2), 0), COALESCE(SUM(r.server_state = 4), 0),
       COALESCE(SUM(r.server_state = 5), 0)
FROM workunit w LEFT JOIN result r ON r.workunitid = w.id
WHERE w.name >= %(lo)s AND w.name < %(hi)s
GROUP BY w.id
"""

# The state of each workunit in SQL, with the same rules as pipeline.track.classify
# (results are read only for workunits with no canonical result and no error).
STATE_CASE = """CASE
    WHEN w.error_mask & 16 THEN 'cancelled'
    WHEN w.error_mask <> 0 THEN 'failed'
    WHEN w.canonical_resultid > 0 THEN IF(w.assimilate_state = 2, 'done', 'running')
    WHEN EXISTS (SELECT 1 FROM result r WHERE r.workunitid = w.id AND r.server_state = 4)
      THEN 'running'
    ELSE 'queued' END"""

HAND_STATES = f"""
SELECT w.name, {STATE_CASE} AS st
FROM workunit w WHERE w.name >= %(lo)s AND w.name < %(hi)s
"""

# The per-state counts, computed entirely in SQL: the least any client can transfer.
HAND_COUNTS = f"""
SELECT st, COUNT(*) FROM (
  SELECT {STATE_CASE} AS st FROM workunit w WHERE w.name >= %(lo)s AND w.name < %(hi)s
) t GROUP BY st
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workunits", type=int, default=1_000_000)
    ap.add_argument("--sweep", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--xml-bytes", type=int, default=600, help="xml_doc size per workunit")
    ap.add_argument("--url", help="an existing server (default: a private mariadbd)")
    ap.add_argument("--buffer-pool-mib", type=int, default=1024, help="private server's pool")
    ap.add_argument("--keep", metavar="NAME", help="use/keep database NAME instead of dropping")
    args = ap.parse_args()
    if args.sweep > args.workunits:
        ap.error(f"--sweep ({args.sweep}) must not exceed --workunits ({args.workunits})")
    if args.workunits < 1:
        ap.error(f"--workunits must be positive, got {args.workunits}")

    if args.keep and not args.url:
        ap.error("--keep needs --url (a private server is removed after the run)")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with contextlib.ExitStack() as stack:
        if args.url:
            base = args.url
            print(f"server: {base}")
        else:
            base = stack.enter_context(private_server(args.buffer_pool_mib))
        return measure(args, base)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_server(pool_mib: int) -> Iterator[str]:
    """Start a throwaway ``mariadbd`` for this run; yield its SQLAlchemy URL."""
    mariadbd, install = (
        shutil.which("mariadbd", path="/usr/sbin:/usr/bin"),
        shutil.which("mariadb-install-db"),
    )
    if mariadbd is None or install is None:
        raise SystemExit("mariadbd / mariadb-install-db not found: pass --url to use a server")
    folder = Path(tempfile.mkdtemp(prefix="bp-bench-mariadb-"))
    data, port = folder / "data", _free_port()
    user = ["--user=root"] if os.geteuid() == 0 else []
    subprocess.run(
        [install, "--no-defaults", f"--datadir={data}", "--skip-test-db",
         "--auth-root-authentication-method=normal", *user],
        check=True, capture_output=True,
    )  # fmt: skip
    proc = subprocess.Popen(
        [mariadbd, "--no-defaults", f"--datadir={data}", f"--socket={folder}/sock",
         f"--port={port}", "--bind-address=127.0.0.1", f"--pid-file={folder}/pid",
         f"--log-error={folder}/err", f"--innodb-buffer-pool-size={pool_mib}M",
         "--innodb-flush-log-at-trx-commit=2", "--innodb-log-file-size=512M", *user],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"mysql+pymysql://root@127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = (folder / "err").read_text(errors="replace")[-1000:]
                    raise SystemExit(f"private mariadbd did not start:\n{err}") from None
                time.sleep(0.2)
        print(f"server: private mariadbd on port {port}, buffer pool {pool_mib} MiB")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def measure(args: argparse.Namespace, base: str) -> int:
    """Create, fill, measure and drop the benchmark database on the server at ``base``."""
    dbname = args.keep or f"bp_bench_track_{secrets.token_hex(5)}"
    server = sa.create_engine(base)
    with server.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS `{dbname}`")
    url = f"{base}/{dbname}"
    engine = sa.create_engine(url)
    tmp = tempfile.TemporaryDirectory(prefix="bp-bench-track-")
    try:
        metadata.create_all(engine)
        with engine.connect() as c:
            have = c.exec_driver_sql("SELECT COUNT(*) FROM workunit").scalar_one()
        if have == 0:
            raw = engine.raw_connection()
            try:
                secs = fill(raw, args.workunits, args.sweep, args.xml_bytes)
            finally:
                raw.close()
            print(f"fill: {args.workunits:,} workunits + results in {secs:.1f} s")
        elif have != args.workunits:
            print(f"database {dbname} holds {have} workunits, not {args.workunits}; drop it")
            return 2
        else:
            print(f"reusing {dbname} ({have:,} workunits)")
        with engine.connect() as c:
            nres = c.exec_driver_sql("SELECT COUNT(*) FROM result").scalar_one()
        print(f"tables: {args.workunits:,} workunits, {nres:,} results")
        return run(args, url, engine, Path(tmp.name))
    finally:
        engine.dispose()
        if not args.keep:
            with server.connect() as c:
                c.exec_driver_sql(f"DROP DATABASE IF EXISTS `{dbname}`")
        server.dispose()
        tmp.cleanup()


def run(args: argparse.Namespace, url: str, engine: Any, tmp: Path) -> int:
    """Measure and print; return the exit status."""
    every = max(1, args.workunits // args.sweep)
    n_sweep = min(args.sweep, args.workunits // every)
    prefix = sweep_name_prefix(SWEEP, 1)
    bounds = {"lo": prefix, "hi": prefix[:-1] + chr(ord(prefix[-1]) + 1)}
    boinc = BoincDB(url)

    # -- EXPLAINs ------------------------------------------------------------
    with engine.connect() as conn:
        literal = {"literal_binds": True}
        q = boinc.workunit_classes_query().params(pattern=like_prefix(prefix))
        sql = str(q.compile(dialect=conn.dialect, compile_kwargs=literal))
        q2 = boinc.workunit_states_query().params(pattern=like_prefix(prefix))
        sql2 = str(q2.compile(dialect=conn.dialect, compile_kwargs=literal))
        for title, text in (
            ("workunit_classes", sql.replace("%%", "%")),
            ("workunit_states", sql2.replace("%%", "%")),
            ("hand-written rows", HAND_ROWS % {k: f"'{v}'" for k, v in bounds.items()}),
            ("hand-written states", HAND_STATES % {k: f"'{v}'" for k, v in bounds.items()}),
            ("hand-written counts", HAND_COUNTS % {k: f"'{v}'" for k, v in bounds.items()}),
        ):
            print(f"\nEXPLAIN {title}:")
            for row in conn.exec_driver_sql("EXPLAIN " + text.replace("%", "%%")).mappings():
                print(
                    f"  {row['table']:<10} type={row['type']:<7} key={row['key']!s:<8} "
                    f"rows={row['rows']!s:<7} extra={row['Extra']}"
                )

    # -- the BOINC query -----------------------------------------------------
    raw = engine.raw_connection()

    def hand_rows() -> list[Any]:
        cur = raw.cursor()
        cur.execute(HAND_ROWS, bounds)
        rows = cur.fetchall()
        cur.close()
        raw.commit()
        return list(rows)

    def hand_states() -> list[Any]:
        cur = raw.cursor()
        cur.execute(HAND_STATES, bounds)
        rows = cur.fetchall()
        cur.close()
        raw.commit()
        return list(rows)

    def hand_counts() -> dict[str, int]:
        cur = raw.cursor()
        cur.execute(HAND_COUNTS, bounds)
        rows = dict(cur.fetchall())
        cur.close()
        raw.commit()
        return {k: int(v) for k, v in rows.items()}

    t_rows, rows = median_time(hand_rows, args.runs)
    t_hstates, hstates = median_time(hand_states, args.runs)
    t_counts, counts = median_time(hand_counts, args.runs)
    t_classes, classes = median_time(lambda: boinc.workunit_classes(prefix), args.runs)
    t_states, states = median_time(lambda: boinc.workunit_states(prefix), args.runs)
    raw.close()
    assert len(rows) == len(states) == len(hstates) == len(classes) == n_sweep, (
        len(rows),
        len(states),
        n_sweep,
    )

    # -- track_sweep end to end ----------------------------------------------
    state = StateDB(f"sqlite:///{tmp / 'state.sqlite'}")
    sweep = state.register_sweep(
        name=SWEEP, version=1, spec={"name": SWEEP}, spec_hash="0" * 64, app="boinc2docker"
    )
    pids = [measured_point(j) for j in range(1, n_sweep + 1)]
    state.add_points(sweep.id, ((p, f'{{"j": {j}}}') for j, p in enumerate(pids, 1)))
    planned = [(p, 1, wu_name(SWEEP, 1, p, 1)) for p in pids]
    state.reserve_attempts(sweep.id, planned)
    ids = {name: i for i, name in boinc.ids_with_prefix(prefix)}
    state.confirm_attempts({wu: ids[wu] for _p, _a, wu in planned})

    t0 = time.perf_counter()
    first = track_sweep(state, boinc, sweep)
    t_first = time.perf_counter() - t0
    t_track, status = median_time(lambda: track_sweep(state, boinc, sweep), args.runs)
    state.close()
    boinc.close()

    agree = status.counts == counts and first.counts == status.counts

    print(f"\nsweep of {n_sweep:,} workunits among {args.workunits:,}; median of {args.runs} runs")
    print(f"  counts (track_sweep): {dict(sorted(status.counts.items()))}")
    print(f"  counts (SQL):         {dict(sorted(counts.items()))}  agree={agree}")
    print(f"  hand-written SQL, per-workunit rows:   {t_rows * 1000:8.1f} ms")
    print(f"  hand-written SQL, per-workunit states: {t_hstates * 1000:8.1f} ms")
    print(f"  hand-written SQL, per-state counts:    {t_counts * 1000:8.1f} ms")
    per_wu = min(t_rows, t_hstates)
    for label, took in (
        ("BoincDB.workunit_classes:", t_classes),
        ("BoincDB.workunit_states: ", t_states),
    ):
        print(
            f"  {label}              {took * 1000:8.1f} ms "
            f"({took / per_wu:.2f}x best per-workunit SQL, {took / t_counts:.2f}x counts SQL)"
        )
    print(f"  track_sweep, first run (all updated):  {t_first * 1000:8.1f} ms")
    print(
        f"  track_sweep, steady state:             {t_track * 1000:8.1f} ms "
        f"({t_track / per_wu:.2f}x best per-workunit SQL, {t_track / t_counts:.2f}x counts SQL)"
    )
    print(
        f"  target < 1 s: {'met' if max(t_track, t_first) < 1.0 else 'NOT met'}; "
        f"within 2x of the best per-workunit SQL: {'met' if t_track <= 2 * per_wu else 'NOT met'}"
        f"; within 2x of the counts SQL: {'met' if t_track <= 2 * t_counts else 'NOT met'}"
    )
    print(f"  load average now: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
