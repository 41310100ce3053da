"""The declared pipelines, as the config file says now: ``runtally web`` runs for weeks.

Found by a new user: after adding a ``[pipelines.<name>]`` table and
restarting the daemon (as the README says), the dashboard still showed the
pipeline as not declared, with no schedule, until ``runtally web`` was
restarted too.  So the dashboard reads the tables again when the file
changes (its size, mtime or inode), looking at most once a second.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from .._pipeline_config import PipelineConfig
from ..config import ConfigError, pipelines_in
from ..daemon._log import logger

__all__ = ["LivePipelines"]

#: Seconds between two looks at the file.
CHECK_S = 1.0


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class LivePipelines(Mapping[str, PipelineConfig]):
    """``[pipelines]`` of ``path`` (``initial`` as read at start), kept current.

    A file that turns unreadable or wrong keeps the tables last read, with one
    warning per change; without a file (``path`` None) it is ``initial``.
    """

    def __init__(self, path: Path | None, initial: Mapping[str, PipelineConfig]) -> None:
        self._path = path
        self._tables = dict(initial)
        self._stamp = _stamp(path) if path is not None else None
        self._checked = time.monotonic()

    def _current(self) -> dict[str, PipelineConfig]:
        now = time.monotonic()
        if self._path is None or now - self._checked < CHECK_S:
            return self._tables
        self._checked = now
        stamp = _stamp(self._path)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._tables = pipelines_in(self._path)
            except ConfigError as exc:
                logger.warning("keeping the pipelines read before: %s", exc)
        return self._tables

    def __getitem__(self, name: str) -> PipelineConfig:
        return self._current()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())
