# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A disk file as a gzip-compressed GNU tar archive in the old GNU sparse format, streamed.

Compute Engine imports a raw disk from a ``.tar.gz`` holding one member, ``disk.raw``, whose size is a
whole number of GiB; GNU tar writes it with ``--format=oldgnu -S``. This writes the same archive
without the tar binary: the holes of the disk (found with ``SEEK_DATA``/``SEEK_HOLE``) are left out
of the archive and listed in the member's sparse map, and the padding up to the next GiB is a hole
too, so the disk file itself is never changed or copied. The archive comes out as a stream of
compressed blocks of bounded size.
"""

from __future__ import annotations

import errno
import os
import zlib
from collections.abc import Iterator

BLOCK = 512
RECORD = 20 * BLOCK  # GNU tar's default blocking factor
GIB = 1 << 30
_READ = 1 << 20
_HEADER_SPARSE = 4  # sparse entries in the member header
_EXTENDED_SPARSE = 21  # sparse entries in each extension block

Extents = list[tuple[int, int]]


def padded_size(size: int, unit: int = GIB) -> int:
    """*size* rounded up to a whole number of *unit* (at least one)."""
    return max(1, -(-size // unit)) * unit


def data_extents(fd: int, size: int) -> Extents:
    """(offset, length) of the parts of the file that hold data; holes are left out.

    File systems without ``SEEK_DATA`` support report the whole file as data, which is correct but
    not sparse.
    """
    extents: Extents = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole remains
                break
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return [(0, size)] if size else []
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if end > start:
            extents.append((start, end - start))
        offset = end
    return extents


def _number(value: int, width: int) -> bytes:
    """A numeric header field: octal with a NUL, or GNU base-256 when octal does not fit."""
    if value < 8 ** (width - 1):
        return b"%0*o\0" % (width - 1, value)
    out = bytearray(width)
    out[0] = 0x80
    for index in range(width - 1, 0, -1):
        out[index] = value & 0xFF
        value >>= 8
    if value:
        raise ValueError("number too large for a %d-byte tar field" % width)
    return bytes(out)


def _sparse_entries(extents: Extents) -> bytes:
    return b"".join(_number(offset, 12) + _number(length, 12) for offset, length in extents)


def header(name: str, real_size: int, extents: Extents, mtime: int = 0) -> bytes:
    """The member header (type ``S``) and its sparse extension blocks."""
    encoded = name.encode("utf-8")
    if len(encoded) > 99:
        raise ValueError("member name too long for an oldgnu header: %s" % name)
    stored = sum(extent[1] for extent in extents)
    first, rest = extents[:_HEADER_SPARSE], extents[_HEADER_SPARSE:]
    block = bytearray(BLOCK)
    block[0 : len(encoded)] = encoded
    block[100:108] = _number(0o644, 8)
    block[108:116] = _number(0, 8)
    block[116:124] = _number(0, 8)
    block[124:136] = _number(stored, 12)
    block[136:148] = _number(mtime, 12)
    block[156:157] = b"S"
    block[257:265] = b"ustar  \0"  # the old GNU magic and version
    block[265:269] = b"root"
    block[297:301] = b"root"
    block[386 : 386 + 24 * len(first)] = _sparse_entries(first)
    block[482] = 1 if rest else 0
    block[483:495] = _number(real_size, 12)
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    blocks = [bytes(block)]
    while rest:
        part, rest = rest[:_EXTENDED_SPARSE], rest[_EXTENDED_SPARSE:]
        ext = bytearray(BLOCK)
        ext[0 : 24 * len(part)] = _sparse_entries(part)
        ext[504] = 1 if rest else 0
        blocks.append(bytes(ext))
    return b"".join(blocks)


def tar_stream(path: str, name: str = "disk.raw", pad_to: int = GIB) -> Iterator[bytes]:
    """The uncompressed archive of *path* as member *name*, its size padded to a multiple of *pad_to*."""
    with open(path, "rb") as handle:
        fd = handle.fileno()
        info = os.fstat(fd)
        size = info.st_size
        real_size = padded_size(size, pad_to) if pad_to else size
        extents = data_extents(fd, size)
        # GNU tar ends the map with an empty entry at the end of the file when the file ends in a hole
        if not extents or extents[-1][0] + extents[-1][1] < real_size:
            extents.append((real_size, 0))
        yield header(name, real_size, extents, int(info.st_mtime))
        stored = 0
        for offset, length in extents:
            done = 0
            while done < length:
                data = os.pread(fd, min(_READ, length - done), offset + done)
                if not data:
                    raise OSError("%s shrank while it was being archived" % path)
                done += len(data)
                yield data
            stored += length
        tail = -stored % BLOCK
        end = tail + 2 * BLOCK
        total = BLOCK * (1 + max(0, -(-(len(extents) - _HEADER_SPARSE) // _EXTENDED_SPARSE))) + stored + end
        end += -total % RECORD
        yield bytes(end)


def gzip_stream(blocks: Iterator[bytes], level: int = 6, size: int = 8 << 20) -> Iterator[bytes]:
    """gzip of the concatenated *blocks*, yielded in pieces of exactly *size* bytes (the last may be shorter)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    pending = bytearray()
    for block in blocks:
        pending += compressor.compress(block)
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    pending += compressor.flush()
    while len(pending) > size:
        yield bytes(pending[:size])
        del pending[:size]
    if pending:
        yield bytes(pending)
