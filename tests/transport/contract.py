"""The contract every transport keeps, as one test suite subclassed per transport.

A subclass provides a ``transport`` fixture (a real transport: local, ssh, ssh with
a container, docker) and ``other_user``, an account present on the far side that
differs from the default one. Everything here goes through the transport itself,
so the same checks hold wherever the programs run.
"""

from __future__ import annotations

import io
import os
import secrets
import tarfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from pipeline.errors import (
    CommandFailed,
    ConfigError,
    MissingFilesError,
    RemoteFileError,
    TransportTimeout,
)
from pipeline.transport import Transport

MB = 1024 * 1024
SPECIAL_ARGS = [
    "two words",
    "it's",
    'say "hi"',
    "$(touch {pwned})",
    "`touch {pwned}`",
    "; touch {pwned}; #",
    "line one\nline two",
    "ünïcødé ☃ 日本",
    "*",
    "$HOME",
    "-n",
    "back\\slash",
    "",
    "  padded  ",
    "a|b&c>d<e",
]


def alive(transport: Transport, pid: int) -> bool:
    """Whether process ``pid`` still runs on the transport's side (zombies count as gone)."""
    res = transport.run(["cat", f"/proc/{pid}/stat"], check=False)
    if res.exit_code != 0:
        return False
    state = res.stdout.rsplit(b")", 1)[-1].split()[0]
    return state not in (b"Z", b"X")


def exists(transport: Transport, path: str) -> bool:
    """Whether ``path`` exists on the transport's side."""
    return transport.run(["test", "-e", path], check=False).exit_code == 0


class TransportContract:
    """Checks shared by all transports; subclasses supply the ``transport`` fixture."""

    other_user: ClassVar[str] = "nobody"

    @pytest.fixture
    def transport(self) -> Iterator[Transport]:
        raise NotImplementedError

    @pytest.fixture
    def scratch(self, transport: Transport) -> Iterator[str]:
        """A fresh world-writable folder on the transport's side."""
        path = f"/tmp/bp-test-{secrets.token_hex(6)}"
        transport.run(["mkdir", "-p", path])
        transport.run(["chmod", "1777", path])
        try:
            yield path
        finally:
            transport.run(["rm", "-rf", path], check=False)

    # -- commands -----------------------------------------------------------------------
    def test_echo(self, transport: Transport) -> None:
        result = transport.run(["echo", "hello", "world"])
        assert result.stdout == b"hello world\n"
        assert result.stderr == b""
        assert result.exit_code == 0
        assert result.argv == ["echo", "hello", "world"]
        assert result.duration > 0

    def test_nonzero_exit_raises_with_result(self, transport: Transport) -> None:
        argv = ["sh", "-c", "echo out; echo oops >&2; exit 3"]
        with pytest.raises(CommandFailed) as info:
            transport.run(argv)
        assert info.value.result.exit_code == 3
        assert info.value.result.stdout == b"out\n"
        assert info.value.result.stderr == b"oops\n"
        assert "status 3" in str(info.value)
        assert "oops" in str(info.value)
        result = transport.run(argv, check=False)
        assert (result.exit_code, result.stdout) == (3, b"out\n")

    def test_missing_program_is_exit_127(self, transport: Transport) -> None:
        with pytest.raises(CommandFailed) as info:
            transport.run(["no-such-program-bp"])
        assert info.value.result.exit_code == 127

    def test_stdout_and_stderr_kept_apart(self, transport: Transport) -> None:
        script = "for i in 1 2 3; do echo out$i; echo err$i >&2; done"
        result = transport.run(["sh", "-c", script])
        assert result.stdout == b"out1\nout2\nout3\n"
        assert result.stderr == b"err1\nerr2\nerr3\n"

    def test_stdin_bytes_stream_and_chunks(self, transport: Transport) -> None:
        data = os.urandom(3 * MB)
        assert transport.run(["cat"], stdin=data).stdout == data
        assert transport.run(["cat"], stdin=io.BytesIO(data)).stdout == data
        chunks = (bytes([i]) * 1000 for i in range(100))
        assert transport.run(["wc", "-c"], stdin=chunks).stdout.strip() == b"100000"
        # no stdin: the program sees end of input at once
        assert transport.run(["cat"], timeout=20).stdout == b""

    def test_arguments_arrive_byte_exact(self, transport: Transport, scratch: str) -> None:
        pwned = f"{scratch}/pwned"
        args = [a.replace("{pwned}", pwned) for a in SPECIAL_ARGS]
        script = 'for a; do printf "%s\\0" "$a"; done'
        result = transport.run(["sh", "-c", script, "sh", *args])
        assert result.stdout.split(b"\0")[:-1] == [a.encode() for a in args]
        assert not exists(transport, pwned)

    def test_bad_argv_is_refused(self, transport: Transport) -> None:
        with pytest.raises(ConfigError, match="shell string"):
            transport.run("echo hi")  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="empty"):
            transport.run([])
        with pytest.raises(ConfigError, match=r"argv\[1\].*NUL"):
            transport.run(["echo", "a\0b"])

    def test_working_directory(self, transport: Transport, scratch: str) -> None:
        assert transport.run(["pwd"]).stdout.decode().strip() == transport.root
        assert transport.run(["pwd"], cwd=scratch).stdout.decode().strip() == scratch
        with pytest.raises(RemoteFileError, match="no-such-folder"):
            transport.run(["pwd"], cwd=f"{scratch}/no-such-folder")

    def test_other_user(self, transport: Transport) -> None:
        result = transport.run(["id", "-un"], user=self.other_user)
        assert result.stdout.decode().strip() == self.other_user

    def test_timeout_kills_the_process_group(self, transport: Transport, scratch: str) -> None:
        pidfile, marker = f"{scratch}/child.pid", f"{scratch}/marker"
        script = 'sleep 30 & echo $! > "$1"; sleep 2; touch "$2"; wait'
        started = time.monotonic()
        with pytest.raises(TransportTimeout) as info:
            transport.run(["sh", "-c", script, "sh", pidfile, marker], timeout=1)
        assert time.monotonic() - started < 8
        assert info.value.timeout == 1
        assert info.value.argv[0] == "sh"
        child = int(transport.run(["cat", pidfile]).stdout)
        deadline = time.monotonic() + 3
        while alive(transport, child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(transport, child), "the background child survived the timeout"
        time.sleep(max(0.0, started + 2.6 - time.monotonic()))
        assert not exists(transport, marker), "the program went on after its timeout"

    def test_stream_reads_incrementally_and_stops_early(self, transport: Transport) -> None:
        with transport.stream(["sh", "-c", "echo first; exec yes"]) as out:
            assert out.readline() == b"first\n"
            assert out.read(10) == b"y\ny\ny\ny\ny\n"
        # leaving early stopped `yes`; the stream ended without hanging
        assert out.result is not None
        with transport.stream(["sh", "-c", "printf abc; exit 4"], check=False) as out:
            assert out.read() == b"abc"
        assert out.result is not None
        assert out.result.exit_code == 4
        with pytest.raises(CommandFailed), transport.stream(["sh", "-c", "exit 5"]) as out:
            out.read()

    # -- files --------------------------------------------------------------------------
    def test_list_files_across_folders(self, transport: Transport, scratch: str) -> None:
        files = {
            f"{scratch}/2024-01-01/wu_a_0_r1_0.tgz": b"a" * 10,
            f"{scratch}/2024-01-01/wu_b_0_r2_0.tgz": b"b" * 20,
            f"{scratch}/2024-01-02/with space.tgz": b"c" * 30,
            f"{scratch}/2024-01-02/notes.txt": b"n",
            f"{scratch}/.hidden/x.tgz": b"h",
            f"{scratch}/2024-01-03/folder.tgz/inner": b"i",
        }
        transport.write_files(files)
        before = time.time()
        found = transport.list_files(scratch, "*/*.tgz")
        assert [f.path for f in found] == sorted(
            p for p in files if p.endswith(".tgz") and "/.hidden/" not in p
        )
        assert [f.size for f in found] == [10, 20, 30]
        assert all(abs(f.mtime - before) < 120 for f in found)
        both = transport.list_files(scratch, ["*/*.txt", "2024-01-01/*_a_*", "nothing/*"])
        assert [f.path for f in both] == [
            f"{scratch}/2024-01-01/wu_a_0_r1_0.tgz",
            f"{scratch}/2024-01-02/notes.txt",
        ]
        assert transport.list_files(scratch, f"$(touch {scratch}/pwned)*") == []
        assert not exists(transport, f"{scratch}/pwned")
        with pytest.raises(RemoteFileError, match="does not exist"):
            transport.list_files(f"{scratch}/missing")

    def test_tar_stream_round_trip(self, transport: Transport, scratch: str) -> None:
        files = {f"{scratch}/d{i % 3}/f {i}.txt": os.urandom(100 + i) for i in range(12)}
        transport.write_files(files, mode=0o640)
        seen: dict[str, bytes] = {}
        with (
            transport.open_tar_stream(sorted(files)) as stream,
            tarfile.open(fileobj=stream, mode="r|") as tar,
        ):
            for member in tar:
                fh = tar.extractfile(member)
                assert fh is not None
                seen["/" + member.name] = fh.read()
                assert member.mode & 0o777 == 0o640
        assert seen == files
        assert stream.missing == []
        with transport.open_tar_stream([]) as empty, tarfile.open(fileobj=empty, mode="r|") as tar:
            assert list(tar) == []

    def test_missing_file_does_not_poison_the_stream(
        self, transport: Transport, scratch: str
    ) -> None:
        good = {f"{scratch}/a.tgz": b"A" * 500, f"{scratch}/c.tgz": b"C" * 700}
        transport.write_files(good)
        wanted = [f"{scratch}/a.tgz", f"{scratch}/b-missing.tgz", f"{scratch}/c.tgz"]
        names: list[str] = []
        with (
            pytest.raises(MissingFilesError) as info,
            transport.open_tar_stream(wanted) as stream,
            tarfile.open(fileobj=stream, mode="r|") as tar,
        ):
            names.extend("/" + m.name for m in tar)
        assert names == [f"{scratch}/a.tgz", f"{scratch}/c.tgz"]
        assert list(info.value.missing) == [f"{scratch}/b-missing.tgz"]
        assert "b-missing.tgz" in str(info.value)
        with (
            transport.open_tar_stream(wanted, missing_ok=True) as stream,
            tarfile.open(fileobj=stream, mode="r|") as tar,
        ):
            assert len(list(tar)) == 2
        assert stream.missing == [f"{scratch}/b-missing.tgz"]

    def test_write_files_mode_and_owner(self, transport: Transport, scratch: str) -> None:
        path = f"{scratch}/staged/deep/input.dat"
        transport.write_files({path: b"payload"}, mode=0o600, user=self.other_user)
        out = transport.run(["stat", "-c", "%a %U %s", path]).stdout.decode().split()
        assert out == ["600", self.other_user, "7"]
        assert transport.run(["cat", path], user=self.other_user).stdout == b"payload"

    def test_write_files_from_local_path(
        self, transport: Transport, scratch: str, tmp_path: Path
    ) -> None:
        local = tmp_path / "big.bin"
        data = os.urandom(2 * MB)
        local.write_bytes(data)
        transport.write_files({f"{scratch}/big.bin": local})
        assert transport.run(["cat", f"{scratch}/big.bin"]).stdout == data

    def test_remove_and_move(self, transport: Transport, scratch: str) -> None:
        files = {f"{scratch}/in/r{i}.tgz": b"x" * i for i in range(5)}
        transport.write_files(files)
        transport.move_files(
            {
                f"{scratch}/in/r0.tgz": f"{scratch}/done/2024-01-01/r0.tgz",
                f"{scratch}/in/r1.tgz": f"{scratch}/done/2024-01-02/r1.tgz",
            }
        )
        transport.remove_files([f"{scratch}/in/r2.tgz", f"{scratch}/in/never-there.tgz"])
        left = [f.path for f in transport.list_files(scratch, ["in/*", "done/*/*"])]
        assert left == [
            f"{scratch}/done/2024-01-01/r0.tgz",
            f"{scratch}/done/2024-01-02/r1.tgz",
            f"{scratch}/in/r3.tgz",
            f"{scratch}/in/r4.tgz",
        ]
        with pytest.raises(RemoteFileError, match="moving"):
            transport.move_files({f"{scratch}/in/gone.tgz": f"{scratch}/done/gone.tgz"})

    @pytest.mark.slow
    def test_ten_thousand_small_files_in_one_stream(
        self, transport: Transport, scratch: str
    ) -> None:
        files = {f"{scratch}/many/{i // 1000}/r{i}.tgz": str(i).encode() * 3 for i in range(10_000)}
        transport.write_files(files)
        listed = transport.list_files(f"{scratch}/many", "*/*.tgz")
        assert len(listed) == 10_000
        count = 0
        with (
            transport.open_tar_stream([f.path for f in listed]) as stream,
            tarfile.open(fileobj=stream, mode="r|") as tar,
        ):
            for member in tar:
                fh = tar.extractfile(member)
                assert fh is not None
                assert fh.read() == files["/" + member.name]
                count += 1
        assert count == 10_000

    # -- big data, flat memory ------------------------------------------------------------
    @pytest.mark.slow
    def test_100mb_output_streams_with_flat_memory(self, transport: Transport) -> None:
        size = 100 * MB
        tracemalloc.start()
        try:
            total = 0
            with transport.stream(["head", "-c", str(size), "/dev/zero"]) as out:
                while chunk := out.read(256 * 1024):
                    total += len(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert total == size
        assert peak < 16 * MB, f"peak Python memory {peak / MB:.1f} MB for 100 MB of output"

    @pytest.mark.slow
    def test_100mb_file_streams_with_flat_memory(self, transport: Transport, scratch: str) -> None:
        size = 100 * MB
        path = f"{scratch}/big.tgz"
        transport.run(["sh", "-c", 'head -c "$1" /dev/urandom > "$2"', "sh", str(size), path])
        tracemalloc.start()
        try:
            total = 0
            with (
                transport.open_tar_stream([path]) as stream,
                tarfile.open(fileobj=stream, mode="r|") as tar,
            ):
                for member in tar:
                    fh = tar.extractfile(member)
                    assert fh is not None
                    while chunk := fh.read(256 * 1024):
                        total += len(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert total == size
        assert peak < 16 * MB, f"peak Python memory {peak / MB:.1f} MB for a 100 MB file"
