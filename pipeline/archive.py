"""Read untrusted result archives safely, as streams, without writing anything to disk.

Every result archive comes from a volunteer's computer, so nothing in it is
trusted. This module reads two levels of tar, both with :mod:`tarfile` in
streaming mode (``"r|"``), never seeking and never extracting:

* the **outer** stream of one harvest chunk: a plain tar whose regular files are
  result archives (``<app>/<YYYY-MM-DD>/<wu>_<n>_r<digits>_0.tgz``), read with
  :func:`iter_result_archives`;
* each **inner** result archive: a gzip tar written in the VM by
  ``cd /root/shared/results && tar czf results.tgz *``, read with
  :func:`iter_members` (or :meth:`ResultArchive.members`).

The gzip layer of an inner archive is decompressed here (``zlib``, bounded
output per call) rather than by ``tarfile``'s ``"r|gz"`` mode, so that the exact
number of compressed bytes behind every member is known (for the compression
ratio check), a truncated or corrupt gzip stream is told apart from a short tar,
and no single decompression step can expand without bound.

Every rule an inner archive breaks raises :class:`~pipeline.errors.ArchiveRejected`
with a short ``reason`` code; the outer stream stays usable, because an inner
archive is only ever read through the outer member's own bounded file object and
the rest of its bytes are skipped (and hashed) when the outer iterator moves on.
A broken outer stream raises :class:`~pipeline.errors.ChunkStreamError` instead.

Reason codes (``ArchiveRejected.reason``):

================== ==============================================================
``bad_name``       the file name is not ``<wu>_<n>_r<digits>_<k>.tgz``
``not_regular``    the outer entry is a link, device or fifo, not a file
``compressed_too_large`` the archive file is larger than ``max_compressed_bytes``
``empty``          the archive file has 0 bytes (the job wrote nothing)
``not_gzip``       the archive does not start with the gzip magic number
``truncated``      the gzip stream or the tar inside it ends early
``corrupt``        invalid deflate data, CRC mismatch, junk after the data,
                   an invalid tar header after the first one
``not_tar``        the gzip stream holds something other than a tar
``too_many_members`` more than ``max_members`` entries (directories count)
``member_too_large`` a member is larger than ``max_member_bytes``
``archive_too_large`` the tar stream expands past ``max_archive_bytes``
``ratio_exceeded`` a member past ``ratio_floor_bytes`` expands more than
                   ``max_ratio`` times the compressed bytes it was read from
``header_too_large`` extended (pax / GNU long name) headers above ``max_header_bytes``
``absolute_path``  a member name starts with ``/``
``path_traversal`` a member name has a ``..`` component
``bad_member_name`` a member name is empty, has control characters or a backslash
``duplicate_member`` two members have the same normalized name
``link``           a symbolic or hard link
``special_file``   a device, fifo, sparse file or other non-regular member
================== ==============================================================

Member names are normalized: a leading ``./`` is dropped, repeated ``/`` and
``.`` components are removed. Directories are allowed and skipped (they still
count toward ``max_members``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO

from pipeline.errors import ArchiveRejected, ChunkStreamError, HarvestError

__all__ = [
    "DEFAULT_LIMITS",
    "REASONS",
    "ArchiveLimits",
    "Member",
    "ResultArchive",
    "ResultFileName",
    "iter_members",
    "iter_result_archives",
    "matches",
    "parse_result_filename",
    "read_members",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_CHUNK = 256 * KiB  # compressed bytes pulled from the source per read
_GZIP_MAGIC = b"\x1f\x8b"
_RESULT_FILE = re.compile(r"^(.+)_(\d+)_r(\d+)_(\d+)\.tgz$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ArchiveLimits:
    """Safety limits for reading one result archive; the defaults suit boinc2docker results.

    ``max_compressed_bytes`` is BOINC's ``max_nbytes`` for the uploaded file
    (128 MiB). ``max_archive_bytes`` bounds the whole uncompressed tar stream,
    ``max_member_bytes`` one member. The ratio check applies once a member has
    produced more than ``ratio_floor_bytes``: from then on its uncompressed bytes
    may not exceed ``max_ratio`` times the compressed bytes consumed while
    reading it, so small very compressible files pass and a bomb is stopped
    after at most ``max_ratio`` times its compressed size. ``max_header_bytes``
    bounds pax and GNU long-name headers, which ``tarfile`` reads into memory.
    """

    max_compressed_bytes: int = 134_217_728
    max_archive_bytes: int = 2 * GiB
    max_member_bytes: int = 512 * MiB
    max_members: int = 10_000
    max_ratio: float = 200.0
    ratio_floor_bytes: int = 1 * MiB
    max_header_bytes: int = 64 * KiB

    def __post_init__(self) -> None:
        for field in (
            "max_compressed_bytes",
            "max_archive_bytes",
            "max_member_bytes",
            "max_members",
            "ratio_floor_bytes",
            "max_header_bytes",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"ArchiveLimits.{field} must be an integer >= 0, got {value!r}")
        if not self.max_ratio > 1:
            raise ValueError(f"ArchiveLimits.max_ratio must be > 1, got {self.max_ratio!r}")


DEFAULT_LIMITS = ArchiveLimits()


@dataclass(frozen=True)
class ResultFileName:
    """The parts of a result file name ``<wu_name>_<n>_r<digits>_<k>.tgz``."""

    wu_name: str
    result_index: int
    result_name: str
    random: str
    file_index: int


REASONS: dict[str, str] = {
    "bad_name": "file name is not <wu_name>_<n>_r<digits>_<k>.tgz",
    "not_regular": "outer entry is not a regular file",
    "compressed_too_large": "archive file is larger than max_compressed_bytes",
    "empty": "archive file is empty (the job probably wrote nothing)",
    "not_gzip": "archive is not gzip-compressed",
    "truncated": "archive ends early",
    "corrupt": "archive data is corrupt",
    "not_tar": "gzip stream does not hold a tar archive",
    "too_many_members": "archive has more than max_members entries",
    "member_too_large": "member is larger than max_member_bytes",
    "archive_too_large": "archive expands past max_archive_bytes",
    "ratio_exceeded": "member expands more than max_ratio times its compressed size",
    "header_too_large": "extended tar headers are larger than max_header_bytes",
    "absolute_path": "member name is an absolute path",
    "path_traversal": "member name climbs out of the archive with '..'",
    "bad_member_name": "member name is empty or has control characters or a backslash",
    "duplicate_member": "two members have the same name",
    "link": "member is a symbolic or hard link",
    "special_file": "member is a device, fifo, sparse or other non-regular file",
}


def _reject(reason: str, member: str | None = None, extra: str = "") -> ArchiveRejected:
    detail = REASONS[reason] + (f" ({extra})" if extra else "")
    return ArchiveRejected(reason, member=member, detail=detail)


def parse_result_filename(name: str) -> ResultFileName:
    """Parse a result file's base name from the right; raise ``ArchiveRejected("bad_name")``."""
    base = name.rsplit("/", 1)[-1]
    match = _RESULT_FILE.match(base)
    if match is None:
        raise _reject("bad_name", name)
    wu_name, index, random, file_index = match.groups()
    return ResultFileName(
        wu_name=wu_name,
        result_index=int(index),
        result_name=f"{wu_name}_{index}",
        random=random,
        file_index=int(file_index),
    )


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Return whether a normalized member name matches any fnmatch pattern (case-sensitive)."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _normalize(raw: str) -> str:
    """Return the normalized relative member name, or raise the rejection it deserves."""
    if raw.startswith("/"):
        raise _reject("absolute_path", raw)
    if _CONTROL.search(raw) or "\\" in raw:
        raise _reject("bad_member_name", raw)
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _reject("path_traversal", raw)
    return "/".join(parts)


class _Source:
    """A bounded reader over the raw (compressed) archive bytes that hashes and counts them."""

    def __init__(self, raw: IO[bytes], limit: int) -> None:
        self._raw = raw
        self._limit = limit
        self.sha = hashlib.sha256()
        self.nbytes = 0
        self.eof = False

    def read(self, n: int) -> bytes:
        if self.eof:
            return b""
        try:
            data = self._raw.read(n)
        except tarfile.TarError as exc:
            # Only the outer tar's own file object raises TarError: the chunk stream broke.
            raise ChunkStreamError(f"outer tar stream broken: {exc}") from exc
        if not data:
            self.eof = True
            return b""
        self.sha.update(data)
        self.nbytes += len(data)
        if self.nbytes > self._limit:
            raise _reject("compressed_too_large")
        return data

    def drain(self) -> None:
        """Read and hash whatever is left, without limits (used to finish the hash)."""
        while not self.eof:
            try:
                data = self._raw.read(_CHUNK)
            except tarfile.TarError as exc:
                raise ChunkStreamError(f"outer tar stream broken: {exc}") from exc
            if not data:
                self.eof = True
            else:
                self.sha.update(data)
                self.nbytes += len(data)


class _Gunzip:
    """The uncompressed tar stream of a gzip source, with exact compressed-byte accounting."""

    def __init__(self, source: _Source, limits: ArchiveLimits) -> None:
        self._src = source
        self._limits = limits
        self._d = zlib.decompressobj(wbits=31)
        self._pending = b""  # compressed bytes not yet given to zlib
        self._fed = 0  # compressed bytes given to zlib
        self._started = False
        self._finished = False
        self.total = 0  # uncompressed bytes delivered
        self.header_mode = True
        self.header_bytes = 0
        self._recent: list[tuple[int, bytes]] = []  # (offset, data) of the last reads

    def block_at(self, offset: int) -> bytes | None:
        """Return the 512 bytes delivered at ``offset`` if still remembered (fewer at the end)."""
        data = b"".join(d for _, d in self._recent)
        start = self._recent[0][0] if self._recent else self.total
        if offset < start:
            return None
        return data[offset - start : offset - start + tarfile.BLOCKSIZE]

    @property
    def consumed(self) -> int:
        """Compressed bytes zlib has consumed so far."""
        return self._fed - len(self._d.unconsumed_tail)

    def _more(self) -> bool:
        data = self._src.read(_CHUNK)
        if not data:
            return False
        self._pending += data
        return True

    def _start(self) -> None:
        self._started = True
        while len(self._pending) < 2 and self._more():
            pass
        if not self._pending:
            raise _reject("empty")
        if not self._pending.startswith(_GZIP_MAGIC):
            raise _reject("not_gzip")

    def _after_member(self) -> None:
        """Handle what follows one gzip member: another member, zero padding or junk."""
        self._pending = self._d.unused_data + self._pending
        self._fed -= len(self._d.unused_data)
        while True:
            stripped = self._pending.lstrip(b"\x00")
            if stripped:
                break
            self._pending = b""
            if not self._more():
                self._finished = True
                return
        if stripped.startswith(_GZIP_MAGIC) and len(stripped) == len(self._pending):
            self._d = zlib.decompressobj(wbits=31)
            return
        raise _reject("corrupt")

    def read(self, n: int = -1) -> bytes:
        if not self._started:
            self._start()
        if n is None or n < 0:
            n = _CHUNK
        out = b""
        while not out and not self._finished and n > 0:
            tail = self._d.unconsumed_tail
            if tail:
                data = tail
            else:
                if not self._pending and not self._more():
                    raise _reject("truncated")
                data, self._pending = self._pending, b""
                self._fed += len(data)
            try:
                out = self._d.decompress(data, n)
            except zlib.error as exc:
                raise _reject("corrupt") from exc
            if self._d.eof:
                self._after_member()
        if out:
            self._recent.append((self.total, out))
            while (
                len(self._recent) > 1 and self._recent[1][0] < self.total - 4 * tarfile.RECORDSIZE
            ):
                del self._recent[0]
        self.total += len(out)
        if self.total > self._limits.max_archive_bytes:
            raise _reject("archive_too_large")
        if self.header_mode:
            self.header_bytes += len(out)
            if self.header_bytes > self._limits.max_header_bytes + 2 * tarfile.RECORDSIZE:
                raise _reject("header_too_large")
        return out


class Member:
    """One regular file of a result archive, readable only until the iteration moves on.

    ``name`` is the normalized relative path, ``size`` the size from the tar
    header, ``matched`` whether it matched the wanted patterns. Read it with
    :meth:`read` (at most ``size`` bytes in all) or :meth:`stream` (a buffered
    file object for parsers); every read is checked against the limits.
    """

    def __init__(
        self,
        name: str,
        size: int,
        matched: bool,
        fileobj: IO[bytes],
        gunzip: _Gunzip,
        limits: ArchiveLimits,
    ) -> None:
        self.name = name
        self.size = size
        self.matched = matched
        self._file = fileobj
        self._gz = gunzip
        self._limits = limits
        self._start = gunzip.consumed
        self._read = 0
        self._open = True

    def __repr__(self) -> str:
        return f"Member({self.name!r}, size={self.size}, matched={self.matched})"

    def read(self, n: int = -1) -> bytes:
        """Return up to ``n`` more bytes (all remaining when ``n`` < 0); b"" at the end."""
        if not self._open:
            raise HarvestError(f"member {self.name!r} can no longer be read: the archive moved on")
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(_CHUNK), b""))
        try:
            data = self._file.read(min(n, self.size - self._read))
        except tarfile.ReadError as exc:
            raise _reject("truncated", self.name) from exc
        except tarfile.TarError as exc:
            raise _reject("corrupt", self.name) from exc
        if not data and self._read < self.size:
            raise _reject("truncated", self.name)
        self._read += len(data)
        limits = self._limits
        if self._read > limits.ratio_floor_bytes:
            compressed = max(self._gz.consumed - self._start, 1)
            if self._read > limits.max_ratio * compressed:
                raise _reject("ratio_exceeded", self.name)
        return data

    def readinto(self, buffer: memoryview | bytearray) -> int:
        """Read into ``buffer``; the primitive behind :meth:`stream`."""
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def stream(self, buffer_size: int = _CHUNK) -> io.BufferedReader:
        """Return a buffered binary file object over the rest of this member."""
        return io.BufferedReader(_MemberRaw(self), buffer_size)

    def _finish(self) -> None:
        """Read what the consumer left (it counts toward the limits), then close."""
        if self._open:
            while self.read(_CHUNK):
                pass
            self._open = False


class _MemberRaw(io.RawIOBase):
    """The raw-IO face of a :class:`Member`, so it can sit under ``io.BufferedReader``."""

    def __init__(self, member: Member) -> None:
        self._member = member

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        return self._member.readinto(buffer)


def _forget_members(tf: tarfile.TarFile) -> None:
    """Drop the TarInfo list that a streamed TarFile keeps, so memory stays flat."""
    tf.members.clear()  # type: ignore[attr-defined]


def _check_type(info: tarfile.TarInfo, name: str) -> None:
    if info.issym() or info.islnk():
        raise _reject("link", name)
    if info.issparse() or not (info.isreg() or info.isdir()):
        raise _reject("special_file", name)
    if info.size < 0:
        raise _reject("corrupt", name)


def _check_tail(tf: tarfile.TarFile, gz: _Gunzip) -> None:
    """After the last member: the end block and the rest must be zeros, then a clean end.

    ``tarfile`` ends a streamed listing quietly at an invalid header, so the
    block it stopped at is checked here from the bytes delivered last.
    """
    block = gz.block_at(tf.offset)
    if block is not None and block.strip(b"\x00"):
        raise _reject("corrupt", extra=f"invalid tar header at offset {tf.offset}")
    gz.header_mode = False
    stream = tf.fileobj  # the tar stream: first what tarfile read ahead, then the rest
    assert stream is not None
    while True:
        data = stream.read(_CHUNK)
        if not data:
            break
        if data.strip(b"\x00"):
            raise _reject("corrupt", extra="data after the end of the tar archive")
    if gz.total % tarfile.BLOCKSIZE:
        raise _reject("truncated", extra="tar stream is not a whole number of blocks")


def _iter_gunzipped(
    gz: _Gunzip, limits: ArchiveLimits, wanted: Sequence[str] | None
) -> Iterator[Member]:
    try:
        tf = tarfile.open(fileobj=gz, mode="r|")  # type: ignore[call-overload]  # noqa: SIM115
    except tarfile.ReadError as exc:
        if gz.total == 0:
            return  # a gzip of nothing: an archive without members
        raise _reject("not_tar") from exc
    count = 0
    declared = 0
    seen: set[str] = set()
    while True:
        gz.header_mode = True
        gz.header_bytes = 0
        try:
            info = tf.next()
        except tarfile.ReadError as exc:
            reason = "truncated" if "unexpected end" in str(exc) else "corrupt"
            raise _reject(reason, extra=str(exc)) from exc
        except tarfile.TarError as exc:
            raise _reject("corrupt") from exc
        _forget_members(tf)  # stream mode keeps every TarInfo otherwise
        if info is None:
            break
        if sum(len(k) + len(v) for k, v in tf.pax_headers.items()) > limits.max_header_bytes:
            raise _reject("header_too_large")
        count += 1
        if count > limits.max_members:
            raise _reject("too_many_members")
        name = _normalize(info.name)
        _check_type(info, info.name)
        if info.isdir():
            continue
        if not name:
            raise _reject("bad_member_name", info.name)
        if name in seen:
            raise _reject("duplicate_member", name)
        seen.add(name)
        if info.size > limits.max_member_bytes:
            raise _reject("member_too_large", name)
        declared += info.size
        if declared > limits.max_archive_bytes:
            raise _reject("archive_too_large", name)
        fileobj = tf.extractfile(info)
        assert fileobj is not None  # a regular file always has one
        gz.header_mode = False
        matched = wanted is None or matches(name, wanted)
        member = Member(name, info.size, matched, fileobj, gz, limits)
        try:
            yield member
            member._finish()
        finally:
            member._open = False
    _check_tail(tf, gz)


def iter_members(
    fileobj: IO[bytes],
    limits: ArchiveLimits = DEFAULT_LIMITS,
    wanted: Sequence[str] | None = None,
) -> Iterator[Member]:
    """Yield every regular file of one gzip tar read from ``fileobj``, validating as it goes.

    ``wanted`` (fnmatch patterns on the normalized name) only sets
    :attr:`Member.matched`; every member is validated and counted, read or not.
    A member left unread is read through the checks when the next one is asked
    for. The iteration raises :class:`~pipeline.errors.ArchiveRejected` at the
    first broken rule, so members already yielded are not proof the archive is
    good: consume the whole iterator before trusting what it gave.
    """
    source = _Source(fileobj, limits.max_compressed_bytes)
    yield from _iter_gunzipped(_Gunzip(source, limits), limits, wanted)


def read_members(
    fileobj: IO[bytes],
    limits: ArchiveLimits = DEFAULT_LIMITS,
    wanted: Sequence[str] = ("*",),
) -> dict[str, bytes]:
    """Validate a whole gzip tar and return the bytes of the members matching ``wanted``.

    Memory is bounded by the size of the matched members; for members too large
    to hold, iterate :func:`iter_members` and use :meth:`Member.stream` instead.
    """
    return {m.name: m.read() for m in iter_members(fileobj, limits, wanted) if m.matched}


class ResultArchive:
    """One result archive from the outer stream, valid until the outer iterator moves on.

    ``path`` is the entry's name in the outer tar, ``size`` its size in bytes,
    ``name`` the parsed file name (None when it does not parse; reading then
    raises ``bad_name``). :attr:`sha256` is the hex digest of the archive's bytes.
    """

    def __init__(
        self,
        path: str,
        size: int,
        fileobj: IO[bytes] | None,
        limits: ArchiveLimits,
        *,
        problem: str | None = None,
    ) -> None:
        self.path = path
        self.size = size
        self.limits = limits
        self._problem = problem
        self._fileobj = fileobj if fileobj is not None else io.BytesIO(b"")
        self._source = _Source(self._fileobj, limits.max_compressed_bytes)
        self._used = False
        self._open = True
        try:
            self.name: ResultFileName | None = parse_result_filename(path)
        except ArchiveRejected:
            self.name = None
            if self._problem is None:
                self._problem = "bad_name"
        if self._problem is None and size > limits.max_compressed_bytes:
            self._problem = "compressed_too_large"

    def __repr__(self) -> str:
        return f"ResultArchive({self.path!r}, size={self.size})"

    @property
    def problem(self) -> str | None:
        """The reason code known from the outer header alone (name, type, size), if any."""
        return self._problem

    def check(self) -> None:
        """Raise ``ArchiveRejected`` for a problem visible without reading the archive."""
        if self._problem is not None:
            raise _reject(self._problem, self.path)

    def members(self, wanted: Sequence[str] | None = None) -> Iterator[Member]:
        """Yield the archive's members, as :func:`iter_members` does; one pass only."""
        self.check()
        if not self._open:
            raise HarvestError(f"{self.path}: the outer stream has moved past this archive")
        if self._used:
            raise HarvestError(f"{self.path}: an archive in a stream can be read only once")
        self._used = True
        yield from _iter_gunzipped(_Gunzip(self._source, self.limits), self.limits, wanted)

    def read_members(self, wanted: Sequence[str] = ("*",)) -> dict[str, bytes]:
        """Validate the whole archive and return the bytes of the members matching ``wanted``."""
        return {m.name: m.read() for m in self.members(wanted) if m.matched}

    @property
    def sha256(self) -> str:
        """The sha256 hex digest of the archive's bytes (reads and hashes what is left)."""
        if self._open:
            self._source.drain()
        return self._source.sha.hexdigest()

    def _close(self) -> None:
        if self._open:
            self._source.drain()
            self._open = False


def iter_result_archives(
    outer: IO[bytes], limits: ArchiveLimits = DEFAULT_LIMITS
) -> Iterator[ResultArchive]:
    """Yield each result archive of an outer (plain, streamed) tar, in stream order.

    Directories are skipped; links and other non-regular entries are yielded
    with :attr:`ResultArchive.problem` set to ``not_regular`` so they can be
    recorded. Each archive must be used before asking for the next one; what
    was not read is then read, hashed and skipped. A rejected archive (an
    ``ArchiveRejected`` raised while reading it) does not disturb the rest of
    the stream. A broken or truncated outer stream raises
    :class:`~pipeline.errors.ChunkStreamError`.
    """
    try:
        tf = tarfile.open(fileobj=outer, mode="r|")  # noqa: SIM115 (lives as long as the generator)
    except tarfile.ReadError as exc:
        if "empty file" in str(exc):
            return
        raise ChunkStreamError(f"outer stream is not a tar: {exc}") from exc
    while True:
        try:
            info = tf.next()
        except tarfile.TarError as exc:
            raise ChunkStreamError(f"outer tar stream broken: {exc}") from exc
        _forget_members(tf)
        if info is None:
            return
        if info.isdir():
            continue
        if info.isreg() and not info.issparse():
            fileobj = tf.extractfile(info)
            archive = ResultArchive(info.name, info.size, fileobj, limits)
        else:
            archive = ResultArchive(info.name, 0, None, limits, problem="not_regular")
        try:
            yield archive
        except GeneratorExit:
            archive._open = False
            raise
        archive._close()
