"""``runtally exec --pipeline P -- CMD ARGS...``: run any command as a tracked run.

The run has one step, named after the command (``--step`` to choose).  The
command must behave exactly as without us, whatever happens to tracking:

* stdin and stdout are inherited untouched; stderr goes through a pipe that
  a thread copies to our stderr as the bytes come, keeping the last lines for
  the error row (the one visible difference: the command's stderr is a pipe,
  not a terminal);
* our exit status is the command's, ``128 + N`` when signal N killed it,
  127 when it cannot be found and 126 when it cannot be executed;
* SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to us are passed on to the command
  and we keep waiting for it.  They are blocked and taken with
  ``sigtimedwait``, so we see who sent them: one the terminal sent to the
  whole foreground process group (``SI_KERNEL``: Ctrl-C) already reached the
  command and is not sent twice, nor is one the command sent itself;
* the command's environment has ``RUNTALLY_PARENT_RUN`` set to our run's uid,
  so a run it tracks itself is recorded as a child of this one;
* tracking goes through ``RunTracker`` (``runtally.client``), which never
  raises and spools when the daemon is down; a tracking problem is at most a
  ``runtally: ...`` line on stderr.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ..config import Settings
from ..protocol import MAX_STACK
from ._common import uses_settings, warn

__all__ = ["StderrTee", "exec_command", "exit_status"]

#: Signals passed on to the command.
FORWARDED = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT})
#: si_code of a signal the kernel itself sent: for these, the terminal's
#: INTR/QUIT keys or a hangup, sent to the whole foreground process group.
SI_KERNEL = 0x80
#: Lines of stderr kept for the error row of a failed command.
TAIL_LINES = 20
_TAIL_BYTES = 16 * 1024
#: After the command exits, how long to wait for the rest of its stderr (a
#: background grandchild may hold the pipe open forever).
_DRAIN_S = 1.0


def exit_status(returncode: int) -> int:
    """A Popen return code as a shell reports it: ``-15`` -> 143."""
    return 128 - returncode if returncode < 0 else returncode


class StderrTee(threading.Thread):
    """Copies a pipe to our stderr as bytes arrive and keeps the last lines."""

    def __init__(self, fd: int, out: Any) -> None:
        super().__init__(name="runtally-exec-stderr", daemon=True)
        self._fd = fd
        self._out = out  # a binary stream, or None when ours is gone
        self._tail = bytearray()

    def run(self) -> None:
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except InterruptedError:
                continue
            except OSError:
                break
            if not chunk:
                break
            self._write(chunk)
            self._tail += chunk
            if len(self._tail) > 2 * _TAIL_BYTES:
                del self._tail[:-_TAIL_BYTES]
        os.close(self._fd)

    def _write(self, chunk: bytes) -> None:
        if self._out is None:
            return
        try:
            self._out.write(chunk)
            self._out.flush()
        except (OSError, ValueError):
            # Our stderr is closed or broken: keep draining the command's pipe
            # so it never blocks on a full pipe or dies of SIGPIPE because of us.
            self._out = None

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last ``lines`` lines seen, decoded (undecodable bytes replaced)."""
        data = bytes(self._tail[-_TAIL_BYTES:])
        text = data.decode("utf-8", errors="replace")
        kept = text.rstrip("\n").splitlines()[-lines:]
        return "\n".join(kept)


def _binary_stderr() -> Any:
    return getattr(sys.stderr, "buffer", None)


class _Tracking:
    """The run around the command; every call is safe when tracking is off."""

    def __init__(self, pipeline: str, club: str | None, settings: Settings) -> None:
        self.tracker: Any = None
        #: The stderr tail for a failure's error row.
        self.stack: str | None = None
        self.run_id: str | None = None
        self.step_id: str | None = None
        self.capture_argv = settings.capture_argv
        try:
            # Lazy: the client is light, but `runtally runs` should not load it.
            from ..client import RunTracker

            self.tracker = RunTracker(
                pipeline, club_slug=club, socket=settings.socket, spool=settings.spool
            )
        except Exception as exc:  # noqa: BLE001 - tracking must not stop the command
            warn(f"tracking is off for this run ({exc!r})")

    def start(self, step_name: str) -> None:
        if self.tracker is None:
            return
        try:
            self.run_id = self.tracker.start_run()
            self.step_id = self.tracker.start_step(step_name)
        except Exception as exc:  # noqa: BLE001 - RunTracker never raises; belt and braces
            warn(f"could not record the start of the run ({exc!r})")

    def finish(
        self, step_name: str, argv: Sequence[str], code: int, why: str | None, sig: str | None
    ) -> None:
        """Record the outcome; ``why`` (a failure's message) adds an error row."""
        if self.tracker is None:
            return
        from ..client._redact import redact_argv  # lazy, as the client itself

        detail: dict[str, Any] = {"exit_code": code}
        if self.capture_argv:
            detail = {"argv": redact_argv(argv), **detail}
        if sig is not None:
            detail["signal"] = sig
        ok = code == 0
        t = self.tracker
        try:
            if not ok:
                t.record_error(step_name, self.step_id, None, why, self.stack)
            t.end_step(self.step_id, "success" if ok else "failure", detail=detail)
            t.end_run(success=ok, stats=detail)
            t.close()
        except Exception as exc:  # noqa: BLE001 - RunTracker never raises; belt and braces
            warn(f"could not record the end of the run ({exc!r})")


def _signal_name(number: int) -> str | None:
    try:
        return signal.Signals(number).name
    except ValueError:
        return None


def _failure_message(name: str, code: int, sig: str | None, tail: str) -> str:
    if sig is not None:
        message = f"{name} was killed by {sig} (exit status {code})"
    else:
        message = f"{name} exited with status {code}"
    last = next((line.strip() for line in reversed(tail.splitlines()) if line.strip()), "")
    return f"{message}: {last}" if last else message


def _should_forward(info: Any, child_pid: int) -> bool:
    if info.si_code == SI_KERNEL:
        return False  # the terminal sent it to the whole process group: the child has it
    return info.si_pid != child_pid  # the child signalling its group reached us too


def _wait(proc: subprocess.Popen[bytes], waited: set[signal.Signals]) -> int:
    """Wait for the command, passing on the signals we are sent; its return code."""
    while proc.poll() is None:
        info = signal.sigtimedwait(waited, 1.0)
        if info is None or info.si_signo == signal.SIGCHLD:
            continue
        if _should_forward(info, proc.pid):
            try:
                proc.send_signal(info.si_signo)
            except ProcessLookupError:
                pass
    return proc.returncode


def _drain_pending(waited: set[signal.Signals]) -> None:
    """Take any signal still pending, so unblocking does not deliver it to us."""
    try:
        while signal.sigtimedwait(waited, 0) is not None:
            pass
    except OSError:
        pass


@click.command(
    name="exec",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--pipeline", "-p", required=True, help="Pipeline name of the run.")
@click.option("--club", "-c", default=None, help="Club (club_slug) of the run.")
@click.option(
    "--step",
    "-s",
    "step_name",
    default=None,
    help="Name of the run's one step [default: the command's file name].",
)
@uses_settings("socket", "spool", fallback=True)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(
    settings: Settings,
    *,
    pipeline: str,
    club: str | None,
    step_name: str | None,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND as a tracked run; its output and exit status pass through.

    Put it in front of a crontab line:
    `runtally exec --pipeline people -- /opt/sync/people.sh --full`.
    Exit status: the command's, 128+N if signal N killed it, 127 if it cannot
    be found, 126 if it cannot be executed.
    """
    argv = list(command)
    name = Path(argv[0]).name or argv[0]
    step_name = step_name or name
    waited = {*FORWARDED, signal.SIGCHLD}
    # Blocked from the start: a SIGTERM before the command starts is passed on
    # once it has, instead of killing us with the run left open.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    try:
        tracking = _Tracking(pipeline, club, settings)
        code, cannot_start = _run(tracking, argv, name, step_name, waited, old_mask)
    finally:
        _drain_pending(waited)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    if cannot_start is not None:
        error = click.ClickException(cannot_start)
        error.exit_code = code
        raise error
    raise SystemExit(code)


def _run(  # noqa: PLR0917 - private helper of one command
    tracking: _Tracking,
    argv: list[str],
    name: str,
    step_name: str,
    waited: set[signal.Signals],
    old_mask: set[signal.Signals],
) -> tuple[int, str | None]:
    """Start and wait for the command.

    Returns its exit status, and why it could not be started (None if it was).
    """
    tracking.start(step_name)
    env = dict(os.environ)
    if tracking.run_id:
        from ..client import PARENT_ENV

        env[PARENT_ENV] = tracking.run_id

    def child_mask() -> None:  # runs in the child between fork and exec
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    why: str | None = None
    cannot_start: str | None = None
    sig: str | None = None
    try:
        proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, preexec_fn=child_mask)  # noqa: PLW1509 - no other thread exists yet
    except FileNotFoundError:
        code, cannot_start = 127, f"cannot run {argv[0]!r}: command not found"
    except PermissionError:
        code, cannot_start = 126, f"cannot run {argv[0]!r}: permission denied"
    except OSError as exc:
        code, cannot_start = 126, f"cannot run {argv[0]!r}: {exc.strerror or exc}"
    else:
        assert proc.stderr is not None
        tee = StderrTee(os.dup(proc.stderr.fileno()), _binary_stderr())
        proc.stderr.close()
        tee.start()
        returncode = _wait(proc, waited)
        code = exit_status(returncode)
        sig = _signal_name(-returncode) if returncode < 0 else None
        tee.join(_DRAIN_S)
        tracking.stack = tee.tail()[-MAX_STACK:] or None  # the seed's limit, keeping the end
        if code != 0:
            why = _failure_message(name, code, sig, tracking.stack or "")
    tracking.finish(step_name, argv, code, why or cannot_start, sig)
    return code, cannot_start
