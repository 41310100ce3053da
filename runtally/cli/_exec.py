"""``runtally exec --pipeline P -- CMD ARGS...``: run any command as a tracked run.

The run has one step, named after the command (``--step`` to choose).  The
command must behave exactly as without us, whatever happens to tracking:

* stdin and stdout are inherited untouched (stdout goes through the relay
  too with ``--capture-stdout``); stderr is a pipe that a small forked
  process (``_relay``) copies to our stderr as the bytes come, keeping the
  last lines for the error row.  The relay outlives us as long as anything
  the command left in the background still holds that pipe, so such a
  worker keeps a working stderr and is neither killed nor waited for (the
  one visible difference: the command's stderr is a pipe, not a terminal);
* our exit status is the command's, ``128 + N`` when signal N killed it,
  127 when it cannot be found, 126 when it cannot be executed, and 124
  (as ``timeout(1)``) when ``--timeout`` stopped it: SIGTERM to the command,
  SIGKILL ``--kill-after`` later if it is still there;
* SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to us are passed on to the command
  and we keep waiting for it.  They are blocked and taken with
  ``sigtimedwait``, so we see who sent them: one the terminal sent to the
  whole foreground process group (``SI_KERNEL``: Ctrl-C) already reached the
  command and is not sent twice, nor is one the command sent itself;
* the command's environment has ``RUNTALLY_PARENT_RUN`` set to our run's uid,
  so a run it tracks itself is recorded as a child of this one; and when we
  were told where events go by ``--socket``, ``--spool`` or ``--config``,
  ``RUNTALLY_SOCKET`` and ``RUNTALLY_SPOOL`` (as we resolved them, absolute)
  and ``RUNTALLY_CONFIG`` too: otherwise the command's own runs go to the
  default paths, to a daemon that may not exist, and never land;
* tracking goes through ``RunTracker`` (``runtally.client``), which never
  raises and spools when the daemon is down; a tracking problem is at most a
  ``runtally: ...`` line on stderr.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..config import Settings
from ..protocol import stack_tail
from ._common import given_as_options, uses_settings, warn
from ._relay import Relay, start_relay
from ._render import DurationType, fmt_duration

__all__ = ["EXIT_TIMED_OUT", "exec_command", "exit_status", "tail_text"]

#: Signals passed on to the command.
FORWARDED = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT})
#: si_code of a signal the kernel itself sent: for these, the terminal's
#: INTR/QUIT keys or a hangup, sent to the whole foreground process group.
SI_KERNEL = 0x80
#: Lines of output kept for the run by default (``--tail-lines``).
TAIL_LINES = 20
#: Bytes of each stream the relay keeps: enough for TAIL_LINES long lines.
_TAIL_BYTES = 16 * 1024
#: Exit status after ``--timeout`` stopped the command (GNU ``timeout``'s).
EXIT_TIMED_OUT = 124


def exit_status(returncode: int) -> int:
    """A Popen return code as a shell reports it: ``-15`` -> 143."""
    return 128 - returncode if returncode < 0 else returncode


def tail_text(data: bytes, lines: int) -> str:
    """The last ``lines`` lines of some output, decoded (undecodable bytes replaced, not lost)."""
    if lines <= 0 or not data:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


@dataclass(slots=True)
class Outcome:
    """How the command ended, as the run records it."""

    code: int  # our exit status
    sig: str | None = None  # the signal that killed it (SIGTERM)
    timed_out_ms: int | None = None  # --timeout, when it struck
    why: str | None = None  # a failure's message (the error row)
    stderr_bytes: bytes = b""  # the end of its stderr, as the relay kept it
    stdout_bytes: bytes = b""  # the end of its stdout (--capture-stdout)
    stderr: str = ""  # its stderr tail, --tail-lines lines
    stdout: str | None = None  # its stdout tail (--capture-stdout)


class _Tracking:
    """The run around the command; every call is safe when tracking is off."""

    def __init__(self, pipeline: str, club: str, settings: Settings) -> None:
        self.tracker: Any = None
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

    def finish(self, step_name: str, argv: Sequence[str], end: Outcome) -> None:
        """Record the outcome; a failure adds an error row with the stderr tail."""
        if self.tracker is None:
            return
        from ..client._redact import redact_argv  # lazy, as the client itself

        detail: dict[str, Any] = {"exit_code": end.code}
        if self.capture_argv:
            detail = {"argv": redact_argv(argv), **detail}
        if end.sig is not None:
            detail["signal"] = end.sig
        if end.timed_out_ms is not None:
            detail["timed_out_after_ms"] = end.timed_out_ms
        if end.stdout is not None:
            detail["stdout_tail"] = end.stdout
        ok = end.code == 0
        t = self.tracker
        try:
            if not ok:
                stack = stack_tail(end.stderr) or None
                t.record_error(step_name, self.step_id, None, end.why, stack)
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


def _failure_message(name: str, end: Outcome) -> str:
    if end.timed_out_ms is not None:
        message = f"{name} timed out after {fmt_duration(end.timed_out_ms)}"
    elif end.sig is not None:
        message = f"{name} was killed by {end.sig} (exit status {end.code})"
    else:
        message = f"{name} exited with status {end.code}"
    last = next((line.strip() for line in reversed(end.stderr.splitlines()) if line.strip()), "")
    return f"{message}: {last}" if last else message


def _should_forward(info: Any, child_pid: int) -> bool:
    if info.si_code == SI_KERNEL:
        return False  # the terminal sent it to the whole process group: the child has it
    return info.si_pid != child_pid  # the child signalling its group reached us too


def _send(proc: subprocess.Popen[bytes], number: int) -> None:
    try:
        proc.send_signal(number)
    except ProcessLookupError:
        pass


class _Clock:
    """--timeout and --kill-after as deadlines (monotonic seconds); None: never."""

    def __init__(self, timeout_s: float | None, kill_after_s: float) -> None:
        now = time.monotonic()
        self.timeout_s = timeout_s
        self.term_at = now + timeout_s if timeout_s is not None else None
        self.kill_after_s = kill_after_s
        self.kill_at: float | None = None
        self.fired = False

    def next_wait(self) -> float:
        due = self.kill_at if self.fired else self.term_at
        return 1.0 if due is None else max(0.0, min(1.0, due - time.monotonic()))

    def tick(self, proc: subprocess.Popen[bytes]) -> None:
        now = time.monotonic()
        if not self.fired and self.term_at is not None and now >= self.term_at:
            self.fired = True
            self.kill_at = now + self.kill_after_s
            _send(proc, signal.SIGTERM)
        elif self.fired and self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None  # once
            _send(proc, signal.SIGKILL)


def _wait(proc: subprocess.Popen[bytes], waited: set[signal.Signals], clock: _Clock) -> int:
    """Wait for the command, passing on the signals we are sent; its return code."""
    while proc.poll() is None:
        info = signal.sigtimedwait(waited, clock.next_wait())
        clock.tick(proc)
        if info is None or info.si_signo == signal.SIGCHLD:
            continue
        if _should_forward(info, proc.pid):
            _send(proc, info.si_signo)
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
@click.option(
    "--club",
    "-c",
    default=None,
    help="Club (club_slug) of the run [default: the default_club setting, itself `rondo`].",
)
@click.option(
    "--step",
    "-s",
    "step_name",
    default=None,
    help="Name of the run's one step [default: the command's file name].",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=DurationType(),
    default=None,
    metavar="DURATION",
    help="Stop the command after DURATION (90s, 30m, 2h, 1h30m): SIGTERM, then SIGKILL"
    " --kill-after later; the run fails with 'timed out after ...', exit status 124.",
)
@click.option(
    "--kill-after",
    "kill_after_s",
    type=DurationType(),
    default=10.0,
    show_default="10s",
    metavar="DURATION",
    help="With --timeout: how long after SIGTERM to send SIGKILL.",
)
@click.option(
    "--tail-lines",
    type=click.IntRange(min=0),
    default=TAIL_LINES,
    show_default=True,
    metavar="N",
    help="Lines of stderr kept in a failed run's error row.",
)
@click.option(
    "--capture-stdout",
    is_flag=True,
    help="Keep the last --tail-lines lines of stdout too (step detail `stdout_tail`).",
)
@uses_settings("socket", "spool", fallback=True)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(
    settings: Settings,
    *,
    pipeline: str,
    club: str | None,
    step_name: str | None,
    timeout_s: float | None,
    kill_after_s: float,
    tail_lines: int,
    capture_stdout: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND as a tracked run; its output and exit status pass through.

    Put it in front of a crontab line:
    `runtally exec --pipeline people -- /opt/sync/people.sh --full`.
    Exit status: the command's, 128+N if signal N killed it, 127 if it cannot
    be found, 126 if it cannot be executed, 124 if --timeout stopped it.
    """
    argv = list(command)
    name = Path(argv[0]).name or argv[0]
    step_name = step_name or name
    waited = {*FORWARDED, signal.SIGCHLD}
    # Blocked from the start: a SIGTERM before the command starts is passed on
    # once it has, instead of killing us with the run left open.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    closed = _hold_closed_std_fds()
    try:
        # The relay first: forked while we have no thread, socket or spool file.
        relay = start_relay(capture_stdout=capture_stdout, tail_bytes=_TAIL_BYTES)
        tracking = _Tracking(pipeline, club or settings.default_club, settings)
        tracking.start(step_name)
        clock = _Clock(timeout_s, kill_after_s)
        env = _command_env(settings, tracking.run_id)
        end, cannot_start = _run(env, argv, relay, waited, old_mask, clock, closed)
        end.stderr = tail_text(end.stderr_bytes, tail_lines)
        if capture_stdout:
            end.stdout = tail_text(end.stdout_bytes, tail_lines)
        if end.code != 0:
            end.why = cannot_start or _failure_message(name, end)
        tracking.finish(step_name, argv, end)
    finally:
        _drain_pending(waited)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    if cannot_start is not None:
        error = click.ClickException(cannot_start)
        error.exit_code = end.code
        raise error
    raise SystemExit(end.code)


def _hold_closed_std_fds() -> frozenset[int]:
    """Which of stdin, stdout and stderr were closed when exec started.

    Each is held open on /dev/null while exec runs: otherwise the first pipe
    or file exec opens lands on fd 1, and a command writing to "its" stdout
    writes into our pipe and dies of SIGPIPE (141 where it would exit 0).
    The command gets them closed again (``_run``), exactly as without exec.
    """
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free fd: this one
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            closed.add(fd)
    return frozenset(closed)


#: The settings that say where events go, given as options: the variable each
#: is passed to the command in.
_WHERE = {"socket": "RUNTALLY_SOCKET", "spool": "RUNTALLY_SPOOL", "config_file": "RUNTALLY_CONFIG"}


def _command_env(settings: Settings, run_id: str | None) -> dict[str, str]:
    """The command's environment: ours, plus what its own tracking needs to agree with ours.

    ``RUNTALLY_PARENT_RUN``: our run, to nest its runs under.  What
    ``--socket``/``--spool``/``--config`` told us is in no variable the
    command inherits: once one of them is given, the socket and spool we
    resolved are exported (absolute: the command may chdir), and the config
    file when given, so the command's runs reach the same daemon and spool
    as ours and it reads the same settings (capture_argv, default_club...).
    Given by their variables instead, they are inherited already.
    """
    env = dict(os.environ)
    if run_id:
        from ..client import PARENT_ENV

        env[PARENT_ENV] = run_id
    given = given_as_options()
    if any(name in given for name in _WHERE):
        env[_WHERE["socket"]] = os.path.abspath(settings.socket)
        env[_WHERE["spool"]] = os.path.abspath(settings.spool)
    if given.get("config_file"):
        env[_WHERE["config_file"]] = os.path.abspath(given["config_file"])
    return env


def _run(  # noqa: PLR0917 - private helper of one command
    env: dict[str, str],
    argv: list[str],
    relay: Relay | None,
    waited: set[signal.Signals],
    old_mask: set[signal.Signals],
    clock: _Clock,
    closed: frozenset[int] = frozenset(),
) -> tuple[Outcome, str | None]:
    """Start and wait for the command: how it ended, and why it could not start (or None)."""

    def child_mask() -> None:  # runs in the child between fork and exec
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for fd in closed:  # closed for the command, as they were for us
            os.close(fd)

    streams: dict[str, Any] = {}
    if relay is not None:
        # A stream that was closed stays closed: nothing of it to tee or keep.
        if 2 not in closed:
            streams["stderr"] = relay.stderr_w
        if relay.stdout_w is not None and 1 not in closed:
            streams["stdout"] = relay.stdout_w
    try:
        proc = subprocess.Popen(argv, env=env, preexec_fn=child_mask, **streams)  # noqa: PLW1509 - no other thread exists yet
    except OSError as exc:
        if relay is not None:
            relay.close_write_ends()
            relay.report()
        if isinstance(exc, FileNotFoundError):
            return Outcome(127), f"cannot run {argv[0]!r}: command not found"
        if isinstance(exc, PermissionError):
            return Outcome(126), f"cannot run {argv[0]!r}: permission denied"
        return Outcome(126), f"cannot run {argv[0]!r}: {exc.strerror or exc}"
    if relay is not None:
        relay.close_write_ends()  # only the command and its children hold them now
    returncode = _wait(proc, waited, clock)
    end = Outcome(exit_status(returncode))
    if clock.fired:
        end.code = EXIT_TIMED_OUT
        end.timed_out_ms = round((clock.timeout_s or 0) * 1000)
    elif returncode < 0:
        end.sig = _signal_name(-returncode)
    if relay is not None:
        end.stderr_bytes, end.stdout_bytes = relay.report()
    return end, None
