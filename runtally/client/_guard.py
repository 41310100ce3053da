"""A lock that a signal handler on the same thread can neither deadlock nor corrupt.

A Python signal handler runs on the main thread between two bytecodes,
possibly half-way through a locked update of the Client.  An RLock keeps the
handler from deadlocking on its own thread, but then it would run in the
middle of that update.  So ``run`` tells a re-entering call to wait its turn:
work marked ``park`` (an emit) runs as soon as the interrupted call is done,
anything else is skipped.
"""

from __future__ import annotations

import _thread  # threading.RLock is _thread.RLock; threading.py costs a cron process ~1.3 ms
import collections
from collections.abc import Callable
from typing import Any, TypeVar

from ._warn import warn_once

__all__ = ["SignalSafeLock"]

_R = TypeVar("_R")


class SignalSafeLock:
    """Runs functions one at a time across threads, and after one another within a thread."""

    __slots__ = ("_busy", "_lock", "_pending")

    def __init__(self) -> None:
        self._lock = _thread.RLock()
        self._busy = False  # a call is running on the thread that holds the lock
        self._pending: collections.deque[tuple[Callable[..., Any], tuple]] = collections.deque()

    @property
    def busy(self) -> bool:
        """True while a call runs (seen as True only by a re-entering signal handler)."""
        return self._busy

    def running_here(self) -> bool:
        """Whether a call runs on this very thread: the caller interrupted it (a signal
        handler), and it resumes once the caller is done."""
        return self._busy and self._lock._is_owned()  # type: ignore[attr-defined]

    def first_when_done(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` as soon as the running call is done, before any parked work.

        Only for a caller that ``running_here()`` found inside that call.
        """
        self._pending.appendleft((fn, ()))

    def run(
        self,
        fn: Callable[..., _R],
        *args: Any,
        park: bool = False,
        on_park: Callable[..., object] | None = None,
    ) -> _R | None:
        """``fn(*args)`` under the lock; its own result, or None when re-entered.

        Re-entered (from a signal handler, while a call runs on this thread),
        ``fn`` is parked if ``park`` and skipped otherwise.  Parked work runs
        as soon as the running call is done; it is checked for only after the
        busy flag is cleared, so nothing parked can be left behind.  The
        caller gets ``fn``'s own result, never a parked call's, and a parked
        call that raises is reported on stderr, not to the caller.
        ``on_park(*args)`` runs at once when ``fn`` is parked (in the handler:
        what must not wait, such as writing an event ahead; its errors are
        reported, not raised).
        """
        with self._lock:
            if self._busy:
                if park:
                    self._pending.append((fn, args))
                    if on_park is not None:
                        try:
                            on_park(*args)
                        except Exception as exc:  # noqa: BLE001 - a signal handler's caller
                            warn_once(f"park-{type(exc).__name__}", f"event parked: {exc!r}")
                return None
            self._busy = True
            try:
                result = fn(*args)
            finally:
                self._busy = False
            while self._pending:
                parked, parked_args = self._pending.popleft()
                self._busy = True
                try:
                    parked(*parked_args)
                except Exception as exc:  # noqa: BLE001 - not the caller's failure to report
                    warn_once(f"emit-{type(exc).__name__}", f"event not recorded: {exc!r}")
                finally:
                    self._busy = False
            return result
