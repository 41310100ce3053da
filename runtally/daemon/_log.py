"""The daemon's log: ``logging`` with one handler that writes to stderr and never raises.

Under systemd, stderr goes to the journal, which stamps time, unit and pid
itself, so a line is only ``runtallyd: <message>``; when stderr *is* the
journal (``JOURNAL_STREAM`` names it, systemd.exec(5)) each line starts with
its sd-daemon(3) priority (``<4>`` for a warning) so ``journalctl -p`` works.
A log line must never take the daemon down: stderr may be a file on the very
disk that just filled up, or closed, so write errors are dropped in silence.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

from .._text import clean_text

__all__ = ["logger"]

#: The daemon's logger; its one handler is installed on import (see the module doc).
logger = logging.getLogger("runtally.daemon")

#: sd-daemon(3) priorities (syslog's) for logging's levels.
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def _stderr_is_journal(env: Mapping[str, str] = os.environ) -> bool:
    """True when stderr is the journal's stream (``JOURNAL_STREAM=<dev>:<inode>``)."""
    try:
        dev, inode = (int(part) for part in env.get("JOURNAL_STREAM", "").split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, inode)


class _Formatter(logging.Formatter):
    """``runtallyd: message``, prefixed by ``<priority>`` when writing to the journal."""

    def __init__(self, journal: bool) -> None:
        super().__init__("runtallyd: %(message)s")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        # A path or name from outside may hold bytes that are not UTF-8: shown
        # as \\xNN (``_text``), never a line the stream cannot encode.
        line = clean_text(super().format(record))
        if self.journal:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time (as logging.lastResort does)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    def handleError(self, record: logging.LogRecord) -> None:
        # A full disk, a closed stderr: losing a log line is better than the daemon.
        pass


def _install() -> None:
    if any(isinstance(h, _StderrHandler) for h in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(_Formatter(_stderr_is_journal()))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    # Embedders (and pytest) configure the root logger: one line, not two.
    logger.propagate = False


_install()
