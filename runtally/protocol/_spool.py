"""Spool format v1 record codec (sans-IO).

A spool file is the 8 bytes ``RLSPOOL1`` followed by records: 4-byte
big-endian payload length, 4-byte big-endian ``zlib.crc32`` of the payload,
then the payload (one event's MessagePack map exactly as on the wire).

``SpoolReader`` is fed bytes and returns complete, CRC-checked records.  At end
of file, ``finish()`` tells a torn tail (the writer died mid-append: expected,
the records before it are good) apart from corruption (a CRC mismatch, an
impossible length, a bad header: the file goes to ``corrupt/``).
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Literal

import msgspec

from ._frames import MAX_FRAME, check_length

__all__ = [
    "SPOOL_MAGIC",
    "SpoolReader",
    "SpoolTail",
    "encode_record",
    "read_spool",
    "spool_file_host",
]

_HOST_UNSAFE = re.compile(r"[^A-Za-z0-9_.]+")


def spool_file_host(hostname: str) -> str:
    """``hostname`` as a spool file name carries it: ``[A-Za-z0-9_.]``, at most 64
    characters, ``localhost`` if nothing is left (docs/protocol.md "Spool format").

    Writers and the replayer must agree on it: the replayer compares it with its
    own to judge whether a lockless writer's pid is a process of this host.
    """
    return _HOST_UNSAFE.sub("_", hostname)[:64] or "localhost"


SPOOL_MAGIC = b"RLSPOOL1"
_RECORD = struct.Struct(">II")


def encode_record(payload: bytes) -> bytes:
    """One spool record for ``payload`` (an encoded event).

    Raises LocalProtocolError unless ``1 <= len(payload) <= MAX_FRAME``: the reader
    would call such a record corrupt and quarantine the whole file.
    """
    size = len(payload)
    if not 1 <= size <= MAX_FRAME:  # check_length's test, inline: once per event
        check_length(size)
    return _RECORD.pack(size, zlib.crc32(payload)) + payload


class SpoolTail(msgspec.Struct, frozen=True):
    """How a spool file ended: ``clean``, ``torn`` or ``corrupt``.

    Fields: ``state``; ``reason``, why it is not clean (empty when it is);
    ``offset``, the byte offset in the file just past the last good record.
    """

    state: Literal["clean", "torn", "corrupt"]
    reason: str = ""
    offset: int = 0


class SpoolReader:
    """Incremental reader: ``receive_data``, ``records()``, then ``finish()``.

    After corruption is found, ``records()`` returns nothing more: nothing past
    a bad record can be trusted to be a record boundary.
    """

    __slots__ = ("_buf", "_corrupt", "_offset", "_pos", "_seen_magic")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._offset = 0  # file offset of self._buf[0]
        self._seen_magic = False
        self._corrupt: SpoolTail | None = None

    @property
    def good_offset(self) -> int:
        """File offset just past the last good record returned."""
        return self._offset + self._pos

    @property
    def corrupt(self) -> SpoolTail | None:
        """Why reading stopped, once corruption is found; None until then."""
        return self._corrupt

    def receive_data(self, data: bytes) -> None:
        """Append the next bytes of the file."""
        if self._pos:
            del self._buf[: self._pos]
            self._offset += self._pos
            self._pos = 0
        self._buf += data

    def records(self) -> list[bytes]:
        """The complete, CRC-checked record payloads buffered now, in file order."""
        out: list[bytes] = []
        if self._corrupt is not None:
            return out
        buf = self._buf
        if not self._seen_magic:
            if len(buf) < len(SPOOL_MAGIC):
                if not SPOOL_MAGIC.startswith(bytes(buf)):
                    self._corrupt = SpoolTail("corrupt", "not a runtally spool (bad header)", 0)
                return out
            header = bytes(buf[: len(SPOOL_MAGIC)])
            if header != SPOOL_MAGIC:
                self._corrupt = SpoolTail("corrupt", _bad_header(header), 0)
                return out
            self._pos = len(SPOOL_MAGIC)
            self._seen_magic = True
        pos, end = self._pos, len(buf)
        while end - pos >= 8:
            length, crc = _RECORD.unpack_from(buf, pos)
            if not 1 <= length <= MAX_FRAME:
                self._corrupt = SpoolTail(
                    "corrupt", f"record length {length} outside 1..{MAX_FRAME}", self._offset + pos
                )
                break
            stop = pos + 8 + length
            if stop > end:
                break
            payload = bytes(buf[pos + 8 : stop])
            if zlib.crc32(payload) != crc:
                self._corrupt = SpoolTail("corrupt", "record CRC mismatch", self._offset + pos)
                break
            out.append(payload)
            pos = stop
        self._pos = pos
        return out

    def finish(self) -> SpoolTail:
        """Call at end of file: the state of whatever was not returned."""
        if self._corrupt is not None:
            return self._corrupt
        left = len(self._buf) - self._pos
        if not self._seen_magic:
            # A writer killed before its header was complete wrote nothing else.
            return SpoolTail("torn", "header incomplete", 0) if left else SpoolTail("clean")
        if left:
            return SpoolTail("torn", f"{left} bytes of an incomplete record", self.good_offset)
        return SpoolTail("clean", "", self.good_offset)


def read_spool(data: bytes) -> tuple[list[bytes], SpoolTail]:
    """Whole-file convenience: the good records and how the file ended."""
    reader = SpoolReader()
    reader.receive_data(data)
    records = reader.records()
    return records, reader.finish()


def _bad_header(header: bytes) -> str:
    """Why a file with this 8-byte header is not read: a spool of another format
    version says so (``RLSPOOL2``: written by a newer runtally), anything else
    is not a runtally spool."""
    prefix = SPOOL_MAGIC[:-1]  # b"RLSPOOL"
    if header.startswith(prefix) and header[-1:].isdigit():
        version = header[len(prefix) :].decode("ascii", "backslashreplace")
        return (
            f"a spool of format {version!r}, which this daemon does not read (it reads"
            f" {SPOOL_MAGIC.decode()}): written by another runtally version"
        )
    return "not a runtally spool (bad header)"
