"""Reading a small file named by a user or the environment, without trusting what it is."""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["MAX_SMALL_FILE", "read_small_file"]

#: Bytes such a file (a config file) may have; a bigger one is refused, not read.
MAX_SMALL_FILE = 1 << 20


def read_small_file(path: str | os.PathLike[str], limit: int = MAX_SMALL_FILE) -> bytes:
    """The bytes of the regular file ``path``, of at most ``limit`` bytes.

    Opened ``O_NONBLOCK`` (a FIFO with no writer does not hang the open) and
    checked with ``fstat`` before a byte is read, so a FIFO, a device
    (``/dev/zero``) or a huge file never blocks nor fills memory.  Raises
    FileNotFoundError when it does not exist, else OSError with a readable
    ``strerror`` ("not a regular file", "over 1048576 bytes", EACCES...).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"over {limit} bytes ({st.st_size})")
        chunks, size = [], 0
        while chunk := os.read(fd, limit + 1 - size):  # growing meanwhile: bounded too
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise OSError(errno.EFBIG, f"over {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)
