"""Build result archives, good and hostile, in memory at test time; nothing is written to disk.

Everything here returns bytes or a file-like object; nothing touches the disk.
Large archives (a gigabyte of zeros) are produced without ever holding the
uncompressed data: deflate blocks ending in a full flush do not refer back, so
one compressed megabyte of zeros can be repeated.
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

MiB = 1 << 20


@dataclass
class Entry:
    """One tar entry to write; ``type`` is a tarfile type constant."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    pax: dict[str, str] = field(default_factory=dict)


def tar_bytes(entries: Iterable[Entry], *, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """Return a plain tar of the entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=fmt) as tf:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.type
            info.linkname = e.linkname
            info.mtime = 1_700_000_000
            info.mode = 0o755 if e.type == tarfile.DIRTYPE else 0o644
            if e.pax:
                info.pax_headers = dict(e.pax)
            if e.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                info.size = len(e.data)
                tf.addfile(info, io.BytesIO(e.data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def tgz(entries: Iterable[Entry], *, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """Return a gzip tar of the entries, as ``tar czf`` would write it."""
    return gzip.compress(tar_bytes(entries, fmt=fmt), mtime=0)


def files(**members: bytes | str) -> bytes:
    """Return a gzip tar of regular files given as name=content (str is UTF-8 encoded)."""
    return tgz(
        Entry(name, data.encode() if isinstance(data, str) else data)
        for name, data in members.items()
    )


def result_file(wu: str = "sweep_ab12_000001", n: int = 0, r: int = 1234567) -> str:
    """Return a result file name as the BOINC assimilator stores it."""
    return f"{wu}_{n}_r{r}_0.tgz"


def outer_tar(items: Iterable[tuple[str, bytes]], *, extra: Iterable[Entry] = ()) -> bytes:
    """Return the outer plain tar of a harvest chunk: (path, archive bytes) pairs plus extras."""
    entries = [Entry(path, data) for path, data in items]
    return tar_bytes([*entries, *extra])


def _gzip_header() -> bytes:
    return b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + b"\x00\xff"


def zeros_member_tgz(size: int, name: str = "zeros.bin") -> bytes:
    """Return a gzip tar holding one member of ``size`` zero bytes, built in O(1 MiB) memory.

    The tar stream is one header block followed by zeros only (data, padding,
    end-of-archive blocks, record padding), so it compresses to about 1/1000.
    """
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 1_700_000_000
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    padded = -(-size // 512) * 512
    total_zeros = padded + 1024
    total_zeros += -(len(header) + total_zeros) % tarfile.RECORDSIZE
    out = [_gzip_header()]
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    out.append(c.compress(header) + c.flush(zlib.Z_FULL_FLUSH))
    crc = zlib.crc32(header)
    zero = bytes(MiB)
    block_compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = block_compressor.compress(zero) + block_compressor.flush(zlib.Z_FULL_FLUSH)
    whole, rest = divmod(total_zeros, MiB)
    out.extend([block] * whole)
    for _ in range(whole):
        crc = zlib.crc32(zero, crc)
    last = zlib.compressobj(9, zlib.DEFLATED, -15)
    out.append(last.compress(bytes(rest)) + last.flush())
    crc = zlib.crc32(bytes(rest), crc)
    length = (len(header) + total_zeros) & 0xFFFFFFFF
    out.append(struct.pack("<II", crc & 0xFFFFFFFF, length))
    return b"".join(out)


def many_members_tgz(count: int) -> bytes:
    """Return a gzip tar of ``count`` one-byte members, built from raw headers (fast)."""
    parts = []
    for i in range(count):
        info = tarfile.TarInfo(f"f{i:06d}")
        info.size = 1
        parts.append(info.tobuf(format=tarfile.USTAR_FORMAT))
        parts.append(b"x" + bytes(511))
    parts.append(bytes(1024))
    return gzip.compress(b"".join(parts), compresslevel=1, mtime=0)


class Stream(io.RawIOBase):
    """A read-only, non-seekable stream over chunks (stands in for a transport's pipe)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def stream(data: bytes, chunk: int = 65536) -> io.BufferedReader:
    """Return a non-seekable buffered stream over ``data``, read in ``chunk`` pieces."""
    return io.BufferedReader(Stream(data[i : i + chunk] for i in range(0, len(data), chunk)))


def big_outer_entry(path: str, size: int) -> Iterator[bytes]:
    """Yield an outer tar holding one regular file of ``size`` zero bytes, without holding it."""
    info = tarfile.TarInfo(path)
    info.size = size
    info.mtime = 1_700_000_000
    yield info.tobuf(format=tarfile.GNU_FORMAT)
    zero = bytes(MiB)
    left = size
    while left:
        n = min(left, MiB)
        yield zero[:n]
        left -= n
    yield bytes(-size % 512) + bytes(1024)
