"""Packaging: the sdist and wheel `make dist` builds carry what an install needs.

The build is the real one (``python -m build --no-isolation``, the venv's own
setuptools, no network) from a copy of the checkout, so the checkout gets no
``build/`` or ``dist/``.  The wheel is built from the sdist, as ``make dist``
does, so a file the sdist forgets is missing here too.  Then the wheel's own
code, unpacked and first on ``sys.path``, runs ``runtally --version`` and
``runtally db migrate``: the migrations are read from the wheel, not the
checkout.
"""

from __future__ import annotations

import configparser
import email.parser
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from runtally._version import __version__

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = sorted(p.name for p in (ROOT / "runtally" / "daemon" / "migrations").glob("*.sql"))
# What the checkout copy needs to build; the rest of the tree is left out on
# purpose (MANIFEST.in's missing directories are then simply not there).
SOURCES = ["pyproject.toml", "README.md", "MANIFEST.in", "runtally", "systemd", "docs"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(wheel, sdist) built from a copy of this checkout."""
    base = tmp_path_factory.mktemp("dist")
    src, out = base / "src", base / "out"
    src.mkdir()
    for name in SOURCES:
        item = ROOT / name
        if item.is_dir():
            shutil.copytree(item, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(item, src / name)
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = out.glob("runtally-*.whl")
    (sdist,) = out.glob("runtally-*.tar.gz")
    return wheel, sdist


def test_wheel_has_package_data_and_entry_points(built: tuple[Path, Path]) -> None:
    wheel, _ = built
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = f"runtally-{__version__}.dist-info"
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        metadata = email.parser.HeaderParser().parsestr(zf.read(f"{dist_info}/METADATA").decode())

    assert "runtally/py.typed" in names
    assert MIGRATIONS, "no migrations in the checkout?"
    packaged = sorted(
        n.rsplit("/", 1)[1] for n in names if n.startswith("runtally/daemon/migrations/")
    )
    assert packaged == MIGRATIONS
    assert not [n for n in names if n.split("/")[0] not in {"runtally", dist_info}]

    scripts = configparser.ConfigParser()
    scripts.read_string(entry_points)
    assert dict(scripts["console_scripts"]) == {
        "runtally": "runtally.cli:main",
        "runtallyd": "runtally.cli:daemon_main",
    }
    # pyproject's version mirrors runtally/_version.py; a drift shows here.
    assert (metadata["Name"], metadata["Version"]) == ("runtally", __version__)


def test_sdist_has_migrations_and_units(built: tuple[Path, Path]) -> None:
    _, sdist = built
    top = f"runtally-{__version__}"
    with tarfile.open(sdist) as tf:
        names = set(tf.getnames())
    for name in MIGRATIONS:
        assert f"{top}/runtally/daemon/migrations/{name}" in names
    for path in ("runtally/py.typed", "pyproject.toml", "systemd/runtally.service"):
        assert f"{top}/{path}" in names
    assert not [n for n in names if "__pycache__" in n]


def test_wheel_code_runs_and_migrates_from_the_wheel(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    wheel, _ = built
    unpacked = tmp_path / "wheel"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(unpacked)
    # PYTHONPATH comes before the venv's site-packages and its editable
    # install of the checkout, so `runtally` is imported from the wheel.
    # The paths are given as flags, which beat any variable in the environment.
    env = {**os.environ, "PYTHONPATH": str(unpacked)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runtally.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=30,
            check=False,
        )

    where = subprocess.run(
        [sys.executable, "-c", "import runtally; print(runtally.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=30,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(unpacked)

    version = cli("--version")
    assert version.returncode == 0, version.stderr
    assert __version__ in version.stdout

    db = tmp_path / "dashboard.sqlite"
    migrate = cli("db", "migrate", "--db", str(db), "--socket", str(tmp_path / "none.sock"))
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    with sqlite3.connect(db) as conn:
        applied = [r[0] for r in conn.execute("SELECT id FROM schema_migrations ORDER BY id")]
    assert applied == [name.removesuffix(".sql") for name in MIGRATIONS]
