"""The daemon's log: 'runtallyd: ...' lines on stderr that can never raise."""

from __future__ import annotations

import io
import logging
import os
import sys
from pathlib import Path

import pytest

from runtally.daemon._log import _Formatter, _stderr_is_journal, logger


def test_lines_go_to_the_current_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    logger.warning("database busy, retrying: %s", "database is locked")
    assert capsys.readouterr().err == "runtallyd: database busy, retrying: database is locked\n"


@pytest.mark.parametrize("stderr", ["closed", "/dev/full"])
def test_a_closed_or_full_stderr_never_raises(monkeypatch: pytest.MonkeyPatch, stderr: str) -> None:
    if stderr == "closed":
        stream = io.StringIO()
        stream.close()
    else:
        stream = open(stderr, "w")  # noqa: SIM115 - every write fails with ENOSPC
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        for level in (logging.INFO, logging.WARNING, logging.ERROR):
            logger.log(level, "a line nobody will read")
    finally:
        monkeypatch.undo()
        if not stream.closed:
            with pytest.raises(OSError):
                stream.close()  # the buffered line cannot be flushed either


def test_under_journald_lines_carry_their_priority(tmp_path: Path) -> None:
    record = logging.LogRecord("runtally.daemon", logging.ERROR, __file__, 1, "boom", (), None)
    assert _Formatter(journal=False).format(record) == "runtallyd: boom"
    assert _Formatter(journal=True).format(record) == "<3>runtallyd: boom"


def test_journal_stream_is_recognised_only_when_it_names_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "stderr").open("w") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        st = os.fstat(stream.fileno())
        assert _stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not _stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not _stderr_is_journal({"JOURNAL_STREAM": "garbage"})
        assert not _stderr_is_journal({})
