"""Warnings on stderr: the only way the client ever reports a problem.

A pipeline must never see an exception from tracking, but an operator must
see that tracking is degraded.  So problems become one line on stderr, and a
problem that repeats per event (a full disk) is reported once per process.
"""

from __future__ import annotations

import sys

__all__ = ["reset_after_fork", "warn", "warn_once"]

_warned: set[str] = set()


def warn(message: str) -> None:
    """Write ``runtally: message`` to stderr; never raises (stderr may be closed)."""
    try:
        sys.stderr.write(f"runtally: {message}\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - a broken stderr must not break the pipeline
        pass


def warn_once(key: str, message: str) -> bool:
    """Warn the first time ``key`` is seen in this process; True if it warned."""
    if key in _warned:
        return False
    _warned.add(key)
    warn(message)
    return True


def reset_after_fork() -> None:
    """A forked child is a new process: it gets its own first warnings."""
    _warned.clear()
