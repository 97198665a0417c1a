"""Reading untrusted result archives: good ones, a hostile corpus, and mixed outer streams."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from archives import (
    Entry,
    Stream,
    big_outer_entry,
    files,
    many_members_tgz,
    outer_tar,
    result_file,
    stream,
    tar_bytes,
    tgz,
    zeros_member_tgz,
)

from pipeline.archive import (
    DEFAULT_LIMITS,
    REASONS,
    ArchiveLimits,
    iter_members,
    iter_result_archives,
    parse_result_filename,
    read_members,
)
from pipeline.errors import ArchiveRejected, ChunkStreamError, HarvestError

MiB = 1 << 20


@pytest.fixture(autouse=True)
def no_disk_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run each test in an empty cwd with an empty temp dir, and check both stay empty."""
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    yield
    assert os.listdir(cwd) == []
    assert os.listdir(tmp) == []


def rejected(data: bytes, limits: ArchiveLimits = DEFAULT_LIMITS) -> ArchiveRejected:
    with pytest.raises(ArchiveRejected) as info:
        read_members(stream(data), limits)
    assert info.value.reason in REASONS
    return info.value


# -- good archives --------------------------------------------------------------------


def test_members_are_normalized_and_directories_skipped() -> None:
    data = tgz(
        [
            Entry("./", type=tarfile.DIRTYPE),
            Entry("./sub", type=tarfile.DIRTYPE),
            Entry("./out.csv", b"a,b\n1,2\n"),
            Entry("sub//./log.txt", "é=1\n".encode()),
        ]
    )
    assert read_members(stream(data)) == {"out.csv": b"a,b\n1,2\n", "sub/log.txt": "é=1\n".encode()}


def test_wanted_patterns_select_members_but_all_are_validated() -> None:
    data = files(**{"a.csv": "1", "b.json": "{}", "c.csv": "3"})
    assert read_members(stream(data), wanted=["*.csv"]) == {"a.csv": b"1", "c.csv": b"3"}
    hostile = tgz([Entry("a.csv", b"1"), Entry("evil", type=tarfile.SYMTYPE, linkname="/etc")])
    with pytest.raises(ArchiveRejected) as info:
        read_members(stream(hostile), wanted=["a.csv"])
    assert (info.value.reason, info.value.member) == ("link", "evil")


def test_iter_members_streams_and_drains_unread_members() -> None:
    data = files(**{"big.bin": os.urandom(3 * MiB), "small.txt": "hello"})
    seen = []
    for m in iter_members(stream(data)):
        seen.append((m.name, m.size))
        if m.name == "small.txt":
            assert m.stream().read() == b"hello"
        else:
            assert len(m.read(10)) == 10  # the rest is read and checked on advance
    assert seen == [("big.bin", 3 * MiB), ("small.txt", 5)]


def test_member_cannot_be_read_after_iteration_moved_on() -> None:
    members = iter_members(stream(files(a="1", b="2")))
    first = next(members)
    next(members)
    with pytest.raises(HarvestError, match="can no longer be read"):
        first.read()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(gzip.compress(bytes(10240)), id="tar-with-no-members"),
        pytest.param(gzip.compress(b""), id="gzip-of-nothing"),
    ],
)
def test_archive_without_members_is_valid_and_empty(data: bytes) -> None:
    # ``tar czf results.tgz *`` in an empty folder: the job wrote nothing.
    assert read_members(stream(data)) == {}


def test_concatenated_gzip_members_are_read_like_gzip_does() -> None:
    raw = tar_bytes([Entry("a.txt", b"A" * 5000), Entry("b.txt", b"B")])
    data = gzip.compress(raw[:2048]) + gzip.compress(raw[2048:])
    assert read_members(stream(data)) == {"a.txt": b"A" * 5000, "b.txt": b"B"}


def test_gnu_and_ustar_formats_and_long_names() -> None:
    long = "d/" * 60 + "file.txt"
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        assert read_members(stream(tgz([Entry(long, b"x")], fmt=fmt))) == {long: b"x"}


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_members"):
        ArchiveLimits(max_members=-1)
    with pytest.raises(ValueError, match="max_ratio"):
        ArchiveLimits(max_ratio=0.5)
    assert DEFAULT_LIMITS.max_compressed_bytes == 134_217_728


# -- file names -------------------------------------------------------------------------


def test_result_file_name_is_parsed_from_the_right() -> None:
    name = parse_result_filename("boinc2docker/2024-05-01/my_sweep_3f2a_000017_1_r98765_0.tgz")
    assert (name.wu_name, name.result_name, name.result_index) == (
        "my_sweep_3f2a_000017",
        "my_sweep_3f2a_000017_1",
        1,
    )
    assert (name.random, name.file_index) == ("98765", 0)


@pytest.mark.parametrize(
    "bad", ["results.tgz", "wu_0_r12_0.tar.gz", "wu_r12_0.tgz", "_0_r1_0.tgz", "wu_x_r1_0.tgz"]
)
def test_wrong_file_names_are_rejected(bad: str) -> None:
    with pytest.raises(ArchiveRejected) as info:
        parse_result_filename(bad)
    assert info.value.reason == "bad_name"


# -- the hostile corpus -----------------------------------------------------------------

GOOD = files(**{"out.csv": "a\n1\n"})
SMALL = ArchiveLimits(max_members=5, max_member_bytes=1000, max_archive_bytes=20_000)


def _flip_deflate_byte(data: bytes) -> bytes:
    b = bytearray(data)
    b[len(b) // 2] ^= 0xFF
    return bytes(b)


def _garbage_between_members() -> bytes:
    raw = bytearray(tar_bytes([Entry("a.txt", b"a"), Entry("b.txt", b"b"), Entry("c.txt", b"c")]))
    raw[1024:1536] = b"\xab" * 512  # the second header
    return gzip.compress(bytes(raw))


HOSTILE: list[tuple[str, bytes, ArchiveLimits, str]] = [
    ("zero-bytes", b"", DEFAULT_LIMITS, "empty"),
    ("not-gzip", b"PK\x03\x04 this is a zip file", DEFAULT_LIMITS, "not_gzip"),
    ("plain-tar", tar_bytes([Entry("a", b"1")]), DEFAULT_LIMITS, "not_gzip"),
    ("truncated-gzip", files(a=os.urandom(50_000))[:30_000], DEFAULT_LIMITS, "truncated"),
    ("truncated-header", GOOD[:10], DEFAULT_LIMITS, "truncated"),
    (
        "gzip-of-truncated-tar",
        gzip.compress(tar_bytes([Entry("a", b"x" * 4000)])[:2048]),
        DEFAULT_LIMITS,
        "truncated",
    ),
    ("corrupt-deflate", _flip_deflate_byte(files(a=os.urandom(20_000))), DEFAULT_LIMITS, "corrupt"),
    ("bad-crc", GOOD[:-8] + b"\0\0\0\0" + GOOD[-4:], DEFAULT_LIMITS, "corrupt"),
    ("junk-after-gzip", GOOD + b"junk", DEFAULT_LIMITS, "corrupt"),
    ("garbage-header-mid-tar", _garbage_between_members(), DEFAULT_LIMITS, "corrupt"),
    (
        "junk-after-tar",
        gzip.compress(tar_bytes([Entry("a", b"1")]) + b"junk" * 200),
        DEFAULT_LIMITS,
        "corrupt",
    ),
    ("gzip-of-text", gzip.compress(b"hello world\n" * 100), DEFAULT_LIMITS, "not_tar"),
    ("absolute-path", tgz([Entry("/etc/passwd", b"x")]), DEFAULT_LIMITS, "absolute_path"),
    ("traversal", tgz([Entry("a/../../evil", b"x")]), DEFAULT_LIMITS, "path_traversal"),
    ("traversal-dir", tgz([Entry("..", type=tarfile.DIRTYPE)]), DEFAULT_LIMITS, "path_traversal"),
    (
        "symlink",
        tgz([Entry("ln", type=tarfile.SYMTYPE, linkname="/etc/shadow")]),
        DEFAULT_LIMITS,
        "link",
    ),
    (
        "hardlink",
        tgz([Entry("a", b"1"), Entry("h", type=tarfile.LNKTYPE, linkname="a")]),
        DEFAULT_LIMITS,
        "link",
    ),
    ("chardev", tgz([Entry("null", type=tarfile.CHRTYPE)]), DEFAULT_LIMITS, "special_file"),
    ("blockdev", tgz([Entry("sda", type=tarfile.BLKTYPE)]), DEFAULT_LIMITS, "special_file"),
    ("fifo", tgz([Entry("pipe", type=tarfile.FIFOTYPE)]), DEFAULT_LIMITS, "special_file"),
    ("control-char-name", tgz([Entry("a\nb", b"x")]), DEFAULT_LIMITS, "bad_member_name"),
    ("backslash-name", tgz([Entry("..\\evil", b"x")]), DEFAULT_LIMITS, "bad_member_name"),
    ("duplicate", tgz([Entry("a", b"1"), Entry("./a", b"2")]), DEFAULT_LIMITS, "duplicate_member"),
    ("too-many-members", files(**{f"f{i}": "x" for i in range(6)}), SMALL, "too_many_members"),
    (
        "dirs-count-too",
        tgz([Entry(f"d{i}", type=tarfile.DIRTYPE) for i in range(6)]),
        SMALL,
        "too_many_members",
    ),
    ("member-too-large", files(a=b"x" * 1001), SMALL, "member_too_large"),
    (
        "archive-too-large",
        files(**{f"f{i}": b"x" * 900 for i in range(4)}),
        ArchiveLimits(max_member_bytes=1000, max_archive_bytes=3000),
        "archive_too_large",
    ),
    ("ratio", zeros_member_tgz(8 * MiB), DEFAULT_LIMITS, "ratio_exceeded"),
    (
        "huge-pax-header",
        tgz([Entry("a", b"1", pax={"comment": "c" * 200_000})]),
        DEFAULT_LIMITS,
        "header_too_large",
    ),
    (
        "compressed-too-large",
        files(a=os.urandom(5000)),
        ArchiveLimits(max_compressed_bytes=4096),
        "compressed_too_large",
    ),
]


@pytest.mark.parametrize(
    ("data", "limits", "reason"), [pytest.param(*h[1:], id=h[0]) for h in HOSTILE]
)
def test_hostile_archive_is_rejected_with_its_reason(
    data: bytes, limits: ArchiveLimits, reason: str
) -> None:
    error = rejected(data, limits)
    assert error.reason == reason
    assert REASONS[reason] in str(error)


def test_gigabyte_of_zeros_is_stopped_early_by_the_ratio_cap() -> None:
    data = zeros_member_tgz(1 << 30)  # ~1 MB compressed
    assert len(data) < 2 * MiB
    # Below the member limit, so only the ratio check can stop it.
    limits = ArchiveLimits(max_member_bytes=2 << 30, max_archive_bytes=4 << 30)
    members = iter_members(stream(data), limits)
    member = next(members)
    with pytest.raises(ArchiveRejected) as info:
        member.read()
    assert info.value.reason == "ratio_exceeded"
    assert info.value.member == "zeros.bin"
    # Default limits refuse it from the header alone.
    assert rejected(data).reason == "member_too_large"


@pytest.mark.slow
def test_hundred_thousand_tiny_members_stop_at_the_member_limit() -> None:
    data = many_members_tgz(100_000)
    tracemalloc.start()
    try:
        error = rejected(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.reason == "too_many_members"
    assert peak < 30 * MiB  # TarInfo objects are not kept


def test_member_limit_counts_exactly() -> None:
    data = many_members_tgz(50)
    assert len(read_members(stream(data), ArchiveLimits(max_members=50))) == 50
    assert rejected(data, ArchiveLimits(max_members=49)).reason == "too_many_members"


@pytest.mark.slow
def test_large_member_streams_in_bounded_memory() -> None:
    size = 600 * MiB
    data = zeros_member_tgz(size)
    limits = ArchiveLimits(max_member_bytes=1 << 30, max_ratio=1e9)
    tracemalloc.start()
    try:
        total = 0
        for m in iter_members(stream(data), limits):
            with m.stream() as f:
                while chunk := f.read(MiB):
                    total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert peak < 16 * MiB


# -- the outer stream -----------------------------------------------------------------


def _archives(n: int) -> list[tuple[str, bytes]]:
    return [
        (
            f"boinc2docker/2024-05-0{i % 9 + 1}/{result_file(f'sw_p_{i:04d}')}",
            files(**{"out.csv": f"x\n{i}\n", "params.txt": f"i={i}\n"}),
        )
        for i in range(n)
    ]


def test_outer_stream_mixing_good_and_bad_archives() -> None:
    good = _archives(5)
    bad = {
        "app/d/" + result_file("bad_gzip"): b"not a gzip file at all",
        "app/d/" + result_file("bad_trav"): tgz([Entry("../x", b"1")]),
        "app/d/" + result_file("bad_bomb"): zeros_member_tgz(20 * MiB),
        "app/d/" + result_file("bad_trunc"): good[0][1][:-20],
        "app/d/not-a-result.tgz": good[1][1],
    }
    order = [
        good[0],
        *list(bad.items())[:2],
        good[1],
        good[2],
        *list(bad.items())[2:],
        good[3],
        good[4],
    ]
    data = outer_tar(
        order,
        extra=[
            Entry("app/d", type=tarfile.DIRTYPE),
            Entry("app/d/" + result_file("lnk"), type=tarfile.SYMTYPE, linkname="/etc/passwd"),
        ],
    )
    read: dict[str, dict[str, bytes]] = {}
    reasons: dict[str, str] = {}
    digests: dict[str, str] = {}
    for arc in iter_result_archives(stream(data, 7919)):
        try:
            read[arc.path] = arc.read_members(["*.csv", "*.txt"])
        except ArchiveRejected as exc:
            reasons[arc.path] = exc.reason
        digests[arc.path] = arc.sha256
    expected = {path: read_members(io.BytesIO(d)) for path, d in good}
    assert read == expected
    assert reasons == {
        "app/d/" + result_file("bad_gzip"): "not_gzip",
        "app/d/" + result_file("bad_trav"): "path_traversal",
        "app/d/" + result_file("bad_bomb"): "ratio_exceeded",
        "app/d/" + result_file("bad_trunc"): "truncated",
        "app/d/not-a-result.tgz": "bad_name",
        "app/d/" + result_file("lnk"): "not_regular",
    }
    for path, d in order:
        assert digests[path] == hashlib.sha256(d).hexdigest()


def test_outer_archives_left_unread_are_skipped_and_hashed() -> None:
    items = _archives(4)
    seen = []
    for i, arc in enumerate(iter_result_archives(stream(outer_tar(items)))):
        assert arc.name is not None
        seen.append(arc.name.result_name)
        if i == 1:
            members = arc.members()
            next(members)  # read one member only, then move on
        elif i == 2:
            assert arc.read_members() == read_members(io.BytesIO(items[2][1]))
    assert seen == [f"sw_p_{i:04d}_0" for i in range(4)]


def test_truncated_outer_stream_raises_chunk_stream_error_after_good_archives() -> None:
    items = _archives(3)
    data = outer_tar(items)
    cut = data.index(items[2][1]) + 100  # inside the third archive's data
    got = []

    def read_all() -> None:
        for arc in iter_result_archives(stream(data[:cut])):
            got.append(arc.read_members())

    with pytest.raises(ChunkStreamError) as info:
        read_all()
    assert info.value.recoverable
    assert got == [read_members(io.BytesIO(d)) for _, d in items[:2]]


def test_outer_stream_that_is_not_a_tar() -> None:
    with pytest.raises(ChunkStreamError):
        list(iter_result_archives(stream(b"hello" * 1000)))
    assert list(iter_result_archives(stream(b""))) == []


def test_default_compressed_limit_from_the_outer_header() -> None:
    # An outer entry one byte over BOINC's max_nbytes, streamed, never held in memory.
    size = DEFAULT_LIMITS.max_compressed_bytes + 1
    after = _archives(1)
    tail = outer_tar(after)
    chunks = [*big_outer_entry("app/d/" + result_file("huge"), size)]
    head = b"".join(chunks[:1])
    body = chunks[1:-1]
    end = chunks[-1][:-1024]  # padding only; the good archive follows
    src = io.BufferedReader(Stream([head, *body, end, tail]))
    results = []
    for arc in iter_result_archives(src):
        try:
            results.append((arc.path, arc.read_members()))
        except ArchiveRejected as exc:
            results.append((arc.path, exc.reason))
            assert arc.size == size
    assert results == [
        ("app/d/" + result_file("huge"), "compressed_too_large"),
        (after[0][0], read_members(io.BytesIO(after[0][1]))),
    ]
