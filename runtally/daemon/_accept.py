"""The accept loop: ``trio.serve_listeners``, but one log line a minute when out of descriptors.

At the descriptor limit (EMFILE, or ENFILE/ENOMEM/ENOBUFS) trio's own loop
logs the error with a 9-line traceback every 0.1 s while it retries.  Here
the retry is the same (the pending connections wait in the listen backlog
and are accepted once descriptors free up), but the error is logged once a
minute with how many accepts failed, and one line says when accepting works
again and how many failed in all.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Awaitable, Callable

import trio

from ._log import logger
from ._throttle import Throttle

__all__ = ["serve_listeners"]

#: accept(2) errors that mean "out of resources now", not "this connection is bad".
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: Seconds between accept attempts while out of resources (trio's value).
RETRY_S = 0.1

Handler = Callable[[trio.SocketStream], Awaitable[object]]


async def serve_listeners(
    handler: Handler,
    listeners: list[trio.SocketListener],
    *,
    handler_nursery: trio.Nursery,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on every listener until cancelled; run ``handler(stream)`` in ``handler_nursery``.

    Each stream is closed when its handler returns or fails.  Any accept error
    other than running out of resources propagates (as in trio).
    """
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_serve_one, listener, handler_nursery, handler)
        task_status.started(listeners)


async def _run_handler(stream: trio.SocketStream, handler: Handler) -> None:
    try:
        await handler(stream)
    finally:
        await trio.aclose_forcefully(stream)


async def _serve_one(
    listener: trio.SocketListener, handler_nursery: trio.Nursery, handler: Handler
) -> None:
    throttle = Throttle()
    failed = 0  # accepts failed since the last success
    since = 0.0
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in CAPACITY_ERRNOS:
                    raise
                if not failed:
                    since = time.monotonic()
                failed += 1
                reported = throttle.hit(exc.errno)
                if reported is not None:
                    logger.error(
                        "cannot accept connections: %s (%s); %s, retrying every %g s"
                        " (raise LimitNOFILE= or lower max_connections)",
                        errno.errorcode.get(exc.errno, exc.errno),
                        os.strerror(exc.errno),
                        reported.describe("failed accepts"),
                        RETRY_S,
                    )
                await trio.sleep(RETRY_S)
                continue
            if failed:
                logger.warning(
                    "accepting connections again after %d failed accepts over %.1f s",
                    failed,
                    time.monotonic() - since,
                )
                failed = 0
            handler_nursery.start_soon(_run_handler, stream, handler)
