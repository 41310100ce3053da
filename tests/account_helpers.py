"""A second local account for the "nobody gets in where they don't belong" tests.

Root only (CI runs as root): ``useradd`` creates ``rt-test-<random>`` with its
own primary group, and an extra group it is a supplementary member of (as
``usermod -aG`` would make it); both are removed afterwards.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

needs_root = pytest.mark.skipif(
    os.getuid() != 0 or shutil.which("useradd") is None,
    reason="needs root and useradd to create a second local account",
)


@dataclass(frozen=True)
class Account:
    """A throwaway local user: uid, its primary gid, and a supplementary group."""

    name: str
    uid: int
    gid: int
    extra_group: str
    extra_gid: int

    def become(self) -> str:
        """Python source that turns a root child into this user, with its real groups.

        Done inside the child (after its imports) rather than with Popen's
        ``user=``: the test's interpreter may live where other users cannot
        execute it.
        """
        return (
            f"import os; os.setgroups([{self.gid}, {self.extra_gid}]);"
            f" os.setgid({self.gid}); os.setuid({self.uid})\n"
        )


@contextlib.contextmanager
def local_account() -> Iterator[Account]:
    """Create the account and its extra group; remove both on exit."""
    tag = uuid.uuid4().hex[:8]
    name, extra = f"rt-test-{tag}", f"rt-grp-{tag}"
    subprocess.run(["groupadd", extra], check=True, capture_output=True)
    try:
        subprocess.run(
            ["useradd", "--no-create-home", "--user-group", "-G", extra, name],
            check=True,
            capture_output=True,
        )
        try:
            entry = pwd.getpwnam(name)
            yield Account(name, entry.pw_uid, entry.pw_gid, extra, grp.getgrnam(extra).gr_gid)
        finally:
            subprocess.run(["userdel", "-r", name], check=False, capture_output=True)
    finally:
        subprocess.run(["groupdel", extra], check=False, capture_output=True)
