"""Serve the dashboard with Hypercorn's trio worker until SIGINT/SIGTERM."""

from __future__ import annotations

import signal

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from ..cli._errors import CliError
from ._app import WebConfig, create_app

__all__ = ["serve"]


async def _until_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


def serve(config: WebConfig, host: str, port: int) -> None:
    """Run the dashboard on ``host:port`` (blocks; returns after SIGINT/SIGTERM)."""
    hc = Config()
    hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hc.accesslog = None
    hc.errorlog = "-"
    hc.graceful_timeout = 2.0
    app = create_app(config)
    try:
        trio.run(lambda: hypercorn_serve(app, hc, shutdown_trigger=_until_signal))  # type: ignore[arg-type]
    except (OSError, BaseExceptionGroup) as exc:
        # A port in use, an address not ours, a name that does not resolve: one
        # line, not trio's exception group (found from outside: 40 lines).
        cause = _os_error(exc)
        if cause is None:
            raise
        why = cause.strerror or str(cause)
        raise CliError(f"cannot serve the dashboard on {hc.bind[0]}: {why}") from None


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError ``exc`` is, or the first one inside its exception group."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _os_error(inner)) is not None:
                return found
    return None
