"""Transport benchmark: command round trip and streaming 1,000 result-sized files.

For each transport reachable here (local; docker against a throwaway busybox
container; ssh against a throwaway sshd on 127.0.0.1 when run as root) it prints:

- the median round-trip time of ``true``;
- the time to stream 1,000 files of ~50 KB back with ``open_tar_stream`` and
  read them with ``tarfile`` (``r|``), against ``tar`` run by hand over the same
  channel (local: a ``tar`` subprocess; docker: ``docker exec tar``; ssh: the
  ``ssh`` CLI running tar), and for docker also against ``get_archive`` per file.

Run: ``.venv/bin/python bench/transport.py``.
"""

from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pipeline.transport import Transport, open_transport

N_FILES = 1000
FILE_SIZE = 50 * 1024


def median_time(fn: Callable[[], Any], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def read_tar(fileobj: Any) -> int:
    total = 0
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for member in tar:
            fh = tar.extractfile(member)
            if fh is not None:
                total += len(fh.read())
    return total


def stage(t: Transport, folder: str) -> list[str]:
    files = {
        f"{folder}/2024-01-{i % 30 + 1:02d}/wu_{i}_0_r{i}_0.tgz": os.urandom(FILE_SIZE)
        for i in range(N_FILES)
    }
    t.write_files(files)
    return sorted(files)


def via_transport(t: Transport, paths: list[str]) -> float:
    t0 = time.perf_counter()
    with t.open_tar_stream(paths) as stream:
        assert read_tar(stream) == N_FILES * FILE_SIZE
    return time.perf_counter() - t0


def by_hand(argv: list[str], paths: list[str]) -> float:
    names = b"".join(p.lstrip("/").encode() + b"\0" for p in paths)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(names)
    proc.stdin.close()
    assert read_tar(proc.stdout) == N_FILES * FILE_SIZE
    proc.wait()
    return time.perf_counter() - t0


def report(name: str, rtt: float, ours: float, hand: float, extra: str = "") -> None:
    mb = N_FILES * FILE_SIZE / 1e6
    print(
        f"{name:14s} round trip {rtt * 1000:7.1f} ms | 1,000 x 50 KB: {ours:6.2f} s "
        f"({mb / ours:6.1f} MB/s) vs tar by hand {hand:6.2f} s ({mb / hand:6.1f} MB/s), "
        f"ratio {ours / hand:4.2f}{extra}"
    )


def bench_local() -> None:
    with tempfile.TemporaryDirectory() as tmp, open_transport(f"local://{tmp}") as t:
        paths = stage(t, tmp)
        rtt = median_time(lambda: t.run(["true"]), 50)
        ours = via_transport(t, paths)
        hand = by_hand(["tar", "-C", "/", "--null", "-T", "-", "-cf", "-"], paths)
        report("local", rtt, ours, hand)


def bench_docker() -> None:
    import docker
    from conftest import BUSYBOX_IMAGE
    from transport.containers import start_container

    client = docker.from_env()
    container = start_container(client, BUSYBOX_IMAGE)
    try:
        with open_transport(f"docker://{container.name}/tmp") as t:
            paths = stage(t, "/tmp/bench")
            rtt = median_time(lambda: t.run(["true"]), 20)
            ours = via_transport(t, paths)
            hand = by_hand(
                [
                    "docker",
                    "exec",
                    "-i",
                    container.name,
                    "xargs",
                    "-0",
                    "-x",
                    "-s",
                    "1048576",
                    "tar",
                    "-C",
                    "/",
                    "-cf",
                    "-",
                ],
                paths,
            )
            sample = paths[:50]
            t0 = time.perf_counter()
            for p in sample:
                chunks, _ = client.api.get_archive(container.id, p)
                read_tar(_Chunks(chunks))
            per_file = (time.perf_counter() - t0) / len(sample)
            report(
                "docker",
                rtt,
                ours,
                hand,
                f" | get_archive {per_file * 1000:.0f} ms per file "
                f"(x1000 = {per_file * 1000:.0f} s)",
            )
    finally:
        container.remove(force=True)


class _Chunks:
    def __init__(self, chunks: Any) -> None:
        self.it = iter(chunks)
        self.buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self.buf) < n:
            try:
                self.buf += next(self.it)
            except StopIteration:
                break
        if n < 0:
            n = len(self.buf)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def bench_ssh() -> None:
    from transport.sshd import sshd_server

    gen = sshd_server.__wrapped__()  # type: ignore[attr-defined]
    server = next(gen)
    try:
        with open_transport(server.url("/tmp")) as t:
            paths = stage(t, "/tmp/bench-ssh")
            rtt = median_time(lambda: t.run(["true"]), 30)
            ours = via_transport(t, paths)
            ssh = [
                "ssh",
                "-p",
                str(server.port),
                "-i",
                str(server.user_key),
                "-o",
                f"UserKnownHostsFile={server.known_hosts}",
                "-o",
                "BatchMode=yes",
                "root@127.0.0.1",
            ]
            hand = by_hand(
                [*ssh, shlex.join(["tar", "-C", "/", "--null", "-T", "-", "-cf", "-"])], paths
            )
            hand_rtt = median_time(lambda: subprocess.run([*ssh, "true"], check=True), 10)
            report(
                "ssh",
                rtt,
                ours,
                hand,
                f" | ssh CLI round trip (new connection) {hand_rtt * 1000:.0f} ms",
            )
            t.run(["rm", "-rf", "/tmp/bench-ssh"])
    finally:
        with __import__("contextlib").suppress(StopIteration):
            next(gen)


def main() -> None:
    print(f"transport benchmark: {N_FILES} files of {FILE_SIZE // 1024} KB")
    bench_local()
    for name, fn in (("docker", bench_docker), ("ssh", bench_ssh)):
        try:
            fn()
        except Exception as exc:  # a missing service skips that line
            print(f"{name:14s} skipped: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
