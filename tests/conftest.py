"""Shared fixtures: short real directories, in-process and subprocess daemons."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
from daemon_helpers import DaemonProcess, settings_for, short_dir

from runtally.daemon._server import Daemon, serve


@pytest.fixture
def short_root() -> Iterator[Path]:
    """A short directory under /tmp for sockets, databases and spools."""
    root = short_dir()
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def daemon(short_root: Path, nursery: trio.Nursery) -> AsyncIterator[Daemon]:
    """The real daemon, in this process, on a real socket in ``short_root``."""
    d: Daemon = await nursery.start(serve, settings_for(short_root))
    yield d
    d.request_stop()


@pytest.fixture
def daemon_proc(short_root: Path) -> Iterator[DaemonProcess]:
    """The real daemon as a child process (for kill -9, signals, systemd)."""
    d = DaemonProcess(short_root).start()
    try:
        yield d
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(timeout=10)
