"""Serve the dashboard with Hypercorn's trio worker until SIGINT/SIGTERM."""

from __future__ import annotations

import signal

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

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
    trio.run(lambda: hypercorn_serve(app, hc, shutdown_trigger=_until_signal))  # type: ignore[arg-type]
