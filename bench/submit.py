"""Benchmark submission: ``script``, ``batch`` and ``fast`` modes into the emulator, local and SSH.

For each transport (``local://`` and ``ssh://`` through a throwaway sshd on
127.0.0.1) it prints the transport's bare round trip (``true``), then workunits/s
end to end through ``submit_points`` (reserve, pre-check, create, verify) for
each mode, and the pipeline's own cost per workunit in fast mode (planning,
state bookkeeping, BOINC DB checks, file generation: everything outside the
transport calls). The emulator runs in docker image mode (the fast mode's
boinc_app loads real layers), with the BOINC DB in MariaDB when reachable.

    python bench/submit.py [--fast 10000] [--chunk 5000] [--script 20] [--batch 200] [--no-ssh]
                           [--root DIR]

``--root`` is the folder the emulated project (and so its download hierarchy)
lives in; a file system's cost of creating a file bounds fast mode, which
creates two per workunit, so the run first measures that cost there: empty
files created with ``os.open`` in a fresh 1024-folder fanout tree.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scratch_db import create_mariadb, drop

from pipeline.boincdb import BoincDB
from pipeline.emulator import Project
from pipeline.plan import plan
from pipeline.spec import SweepSpec
from pipeline.state import StateDB
from pipeline.submit import ChunkReport, SubmitContext, register_sweep, submit_points
from pipeline.transport import Transport, open_transport

IMAGE = "boinc-pipeline-test/busybox:latest"


@contextmanager
def sshd() -> Iterator[tuple[int, Path, Path]]:
    """Start a throwaway OpenSSH server on 127.0.0.1; yield (port, user key, known_hosts)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-sshd-"))
    for key in ("host", "user"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)], check=True
        )
    shutil.copy(folder / "user.pub", folder / "authorized_keys")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder}/host\n"
        f"AuthorizedKeysFile {folder}/authorized_keys\nPidFile {folder}/sshd.pid\n"
        "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nMaxSessions 64\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    proc = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(folder / "sshd_config")],
        stderr=(folder / "log").open("wb"),
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError((folder / "log").read_text()[-500:]) from None
                time.sleep(0.05)
        pub = (folder / "host.pub").read_text().split()
        (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
        yield port, folder / "user", folder / "known_hosts"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


class TimedTransport:
    """Delegates to a transport and adds up the seconds spent in its calls, also per program."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.by_call: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in ("run", "write_files"):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                spent = time.perf_counter() - t0
                self.seconds += spent
                key = name if name == "write_files" else _program(args[0])
                self.by_call[key] = self.by_call.get(key, 0.0) + spent

        return timed


def _program(argv: list[str]) -> str:
    """Name a command by its program (the script's first word for ``sh -c``)."""
    if argv[:2] == ["sh", "-c"]:
        words = argv[2].split()
        return f"sh -c {words[0] if words else ''}"
    return os.path.basename(argv[0])


def _spec(name: str, mode: str, n: int, params_file: bool) -> SweepSpec:
    return SweepSpec.model_validate(
        {
            "name": name,
            "image": IMAGE,
            "command": ["sh", "-c", "echo {x} > /root/shared/results/out.txt"],
            "params_file": params_file,
            "parameters": {"grid": {"x": list(range(n))}},
            "job": {"rsc_memory_bound": 1_000_000_000, "rsc_disk_bound": 2_000_000_000},
            "submit": {"mode": mode},
        }
    )


def file_creation_floor(root: Path, n: int = 4000) -> float:
    """Seconds per new empty file in a fresh 1024-folder tree under ``root`` (folders included)."""
    tree = Path(tempfile.mkdtemp(prefix="floor-", dir=root))
    try:
        t0 = time.perf_counter()
        for i in range(n):
            folder = tree / f"{i % 1024:x}"
            if i < 1024:
                folder.mkdir()
            os.close(os.open(folder / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
        return (time.perf_counter() - t0) / n
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def round_trip(transport: Transport, n: int = 20) -> float:
    """Median seconds of a bare ``true`` through the transport."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        transport.run(["true"])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_mode(
    url: str,
    boinc: BoincDB,
    state: StateDB,
    mode: str,
    n: int,
    chunk: int,
    warm: int,
    params_file: bool = False,
) -> dict[str, Any]:
    """Submit ``n`` workunits in ``mode`` (after ``warm`` untimed ones); return the figures."""
    spec = _spec(f"b{mode}{secrets.token_hex(2)}", mode, n + warm, params_file)
    record = register_sweep(state, boinc, spec)
    transport = TimedTransport(open_transport(url))
    ctx = SubmitContext(state, transport, boinc, mode=mode, python="python3")  # type: ignore[arg-type]
    t0 = time.perf_counter()
    wus = list(plan(spec))
    planning = time.perf_counter() - t0
    if warm:
        submit_points(ctx, spec, record, wus[:warm])  # stages the image (stock script)
    transport.seconds = 0.0
    transport.by_call.clear()
    report = ChunkReport()
    t0 = time.perf_counter()
    for start in range(warm, len(wus), chunk):
        report.add(submit_points(ctx, spec, record, wus[start : start + chunk]))
    total = time.perf_counter() - t0
    transport.inner.close()
    assert report.created == n, (report.created, n)
    t = report.timings
    return {
        "n": n,
        "seconds": total,
        "rate": n / total,
        "plan_ms": planning / (n + warm) * 1e3,
        "state_ms": t["reserve"] / n * 1e3,
        "boincdb_ms": (t["precheck"] + t["verify"]) / n * 1e3,
        "create_own_ms": (t["create"] - transport.seconds) / n * 1e3,
        "own_ms": (planning * n / (n + warm) + total - transport.seconds) / n * 1e3,
        "transport_s": transport.seconds,
        "calls": dict(transport.by_call),
    }


def bench_transport(label: str, url_for: Any, args: argparse.Namespace) -> None:
    """Run every mode through one transport kind and print the figures."""
    root = Path(tempfile.mkdtemp(prefix="bench-submit-", dir=args.root))
    db_url = create_mariadb("bench_sub") or f"sqlite:///{root / 'boinc.sqlite'}"
    project = Project.init(root / "project", db_url, root / "results", image_mode="docker")
    boinc = BoincDB(db_url)
    state = StateDB(f"sqlite:///{root / 'state.sqlite'}")
    url = url_for(project.root)
    try:
        floor = round_trip(open_transport(url))
        print(
            f"\n[{label}] BOINC DB {db_url.split(':', 1)[0]}; transport round trip (true): "
            f"{floor * 1e3:.1f} ms"
        )
        figures = {}
        for key, mode, n, chunk, pf in (
            ("script", "script", args.script, args.script, False),
            ("batch", "batch", args.batch, args.batch, False),
            ("fast", "fast", args.fast, args.chunk, False),
            ("fast+params", "fast", args.fast, args.chunk, True),
        ):
            f = run_mode(url, boinc, state, mode, n, chunk, 1, pf)
            figures[key] = f
            print(
                f"[{label}] {key:11s} {f['n']:6d} wus in {f['seconds']:7.2f} s = "
                f"{f['rate']:8.1f} wu/s  ({f['seconds'] / f['n'] * 1e3:.2f} ms/wu; "
                f"{f['transport_s']:.2f} s in transport calls)"
            )
            if mode == "fast":
                calls = sorted(f["calls"].items(), key=lambda kv: -kv[1])
                print(
                    f"[{label}] {'':11s} transport time by call: "
                    + ", ".join(f"{k} {v:.2f} s" for k, v in calls)
                )
        fast = figures["fast"]
        lean = figures["fast+params"]
        print(
            f"[{label}] fast/script speed-up: {fast['rate'] / figures['script']['rate']:.0f}x; "
            f"fast/batch: {fast['rate'] / figures['batch']['rate']:.0f}x"
        )
        print(
            f"[{label}] fast+params (shared boinc_app, one params.json per workunit): "
            f"{lean['rate'] / figures['script']['rate']:.0f}x script; own cost "
            f"{lean['own_ms']:.3f} ms/wu"
        )
        print(
            f"[{label}] fast mode, pipeline's own cost per workunit: {fast['own_ms']:.3f} ms "
            f"(planning {fast['plan_ms']:.3f}, state reserve/confirm {fast['state_ms']:.3f}, "
            f"BOINC DB pre-check+verify {fast['boincdb_ms']:.3f}, file generation and "
            f"other work in the create step {fast['create_own_ms']:.3f})"
        )
    finally:
        boinc.close()
        project.close()
        drop(db_url)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    """Parse options and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", type=int, default=10000)
    parser.add_argument("--chunk", type=int, default=5000)
    parser.add_argument("--script", type=int, default=20)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--no-ssh", action="store_true")
    parser.add_argument("--root", help="folder for the emulated project (default: the temp dir)")
    args = parser.parse_args()
    import docker

    try:
        docker.from_env().images.get(IMAGE)
    except Exception as exc:
        raise SystemExit(
            f"{IMAGE} is needed (docker image mode); run the test suite once to build it: {exc}"
        ) from exc
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    floor = file_creation_floor(Path(args.root or tempfile.gettempdir()))
    print(
        f"file creation under {args.root or tempfile.gettempdir()}: {floor * 1e6:.0f} us per "
        f"new file, so at most {1 / (2 * floor):,.0f} wu/s for fast mode's two files per workunit"
    )
    bench_transport("local", lambda root: f"local://{root}", args)
    if not args.no_ssh:
        with sshd() as (port, key, known):
            bench_transport(
                "ssh",
                lambda root: f"ssh://root@127.0.0.1:{port}{root}?key={key}&known_hosts={known}",
                args,
            )


if __name__ == "__main__":
    main()
