"""The Node.js client (clients/node) driven from pytest: a real ``node`` process."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from daemon_helpers import REPO

NODE = shutil.which("node")
NODE_DIR = REPO / "clients" / "node"
FIXTURES = NODE_DIR / "test" / "fixtures"

#: Skip where the Node client cannot run: ``make test`` installs node
#: (scripts/system-deps.sh) and runs ``npm ci`` before pytest.
needs_node = pytest.mark.skipif(
    NODE is None or not (NODE_DIR / "node_modules" / "@msgpack" / "msgpack").is_dir(),
    reason="needs node and `npm ci` in clients/node (make test does both)",
)


def node_env(socket: Path, spool: Path) -> dict[str, str]:
    """The environment of a Node pipeline pointed at ``socket`` and ``spool``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNTALLY_")}
    env.update(RUNTALLY_SOCKET=str(socket), RUNTALLY_SPOOL=str(spool))
    return env


def node_pipeline(scenario: str, socket: Path, spool: Path, **popen: object) -> subprocess.Popen:
    """Start ``test/fixtures/pipeline.js <scenario>`` (stdout piped)."""
    assert NODE is not None
    return subprocess.Popen(
        [NODE, str(FIXTURES / "pipeline.js"), scenario],
        env=node_env(socket, spool),
        stdout=subprocess.PIPE,
        **popen,  # type: ignore[arg-type]
    )
