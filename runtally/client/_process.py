"""What lives once per process: the live Clients, the shared ones, and the hooks that mind them.

* At exit, every live Client is closed: acks are awaited (bounded), what is
  still unacked is spooled and the spool files are unlocked for the replayer.
* In a forked child, every Client forgets the parent's socket and spool file
  without touching them, and the warnings start afresh.
* multiprocessing's fork-started children leave through ``os._exit``, where
  atexit never runs; its own finalizers do, so one is armed in each child.

The hooks are installed when the first Client is adopted, not at import: a
process that imports the client and never tracks anything registers nothing.
"""

from __future__ import annotations

import _thread  # threading.Lock is _thread.allocate_lock; threading.py costs ~1.3 ms
import atexit
import os
import sys
from _weakrefset import WeakSet  # weakref.WeakSet itself, without weakref.py (~0.5 ms)
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Protocol, TypeVar

from ._warn import reset_after_fork

__all__ = ["adopt", "point_at_devnull", "shared"]


class _ProcessBound(Protocol):
    def close(self, timeout: float | None = None) -> None: ...
    def _forget_after_fork(self) -> None: ...


_T = TypeVar("_T")

_live: WeakSet[Any] = WeakSet()
_shared: dict[Hashable, Any] = {}
_lock = _thread.allocate_lock()  # guards _live and the hooks
_shared_lock = _thread.allocate_lock()  # held while a factory runs, which may adopt()
_hooks_installed = False


def adopt(client: _ProcessBound) -> None:
    """Have ``client`` closed at exit and reset in forked children (held weakly)."""
    global _hooks_installed  # noqa: PLW0603 - installed once per process
    with _lock:
        _live.add(client)
        if _hooks_installed:
            return
        _hooks_installed = True
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    atexit.register(_close_all_at_exit)


def shared(key: Hashable, factory: Callable[[], _T]) -> _T:
    """The process's one object for ``key``, made by ``factory`` on first use."""
    with _shared_lock:
        obj = _shared.get(key)
        if obj is None:
            obj = _shared[key] = factory()
    return obj


def release_idle(keep: Any, limit: int) -> None:
    """Once the process has more than ``limit`` shared objects, let the others that
    hold nothing unacked close their connection and spool file (``release_if_idle``).

    A process that tracks to many (socket, spool) pairs over its life otherwise
    keeps a connection and a file per pair for ever (the daemon's per-uid
    connection limit, then the fd limit); a released Client reconnects when
    used again.
    """
    if len(_shared) <= limit:
        return
    for obj in list(_shared.values()):
        if obj is not keep:
            obj.release_if_idle()


def point_at_devnull(fds: Iterable[int]) -> None:
    """In a forked child: ``dup2`` /dev/null over each of the parent's ``fds``.

    For a call that a forking signal handler interrupted and that resumes in
    the child: whatever it still does with them (send, write, truncate,
    unlock, close) reaches none of the parent's socket or files, and their
    numbers stay taken, so nothing opened meanwhile is written by mistake.
    """
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in fds:
            os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _after_fork_in_child() -> None:
    global _lock, _shared_lock  # noqa: PLW0603 - the parent's may be held forever here
    _lock = _thread.allocate_lock()
    _shared_lock = _thread.allocate_lock()
    reset_after_fork()
    for client in list(_live):
        client._forget_after_fork()


def _close_all_at_exit() -> None:
    for client in list(_live):
        client.close()  # never raises


class _MultiprocessingHook:
    """Weak-referenceable key for multiprocessing's after-fork registry."""


_mp_hook = _MultiprocessingHook()
_mp_hook_registered = False


def _before_fork() -> None:
    # multiprocessing clears its finalizer registry in the child, then runs
    # its after-fork hooks: register one that arms a finalizer there.
    global _mp_hook_registered  # noqa: PLW0603
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is None or _mp_hook_registered:
        return
    try:
        mp_util.register_after_fork(_mp_hook, _arm_multiprocessing_exit)
        _mp_hook_registered = True
    except Exception:  # noqa: BLE001 - a private-ish API: best effort, never fatal
        pass


def _arm_multiprocessing_exit(_hook: object) -> None:
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        mp_util.Finalize(None, _close_all_at_exit, exitpriority=0)
