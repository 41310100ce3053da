"""RunTracker: the old tracker's API (seeds/2-run-tracker.plan.md), as events for the daemon.

The seed's tracker wrote SQLite itself; this one only builds events and hands
them to the process's Client, which sends or spools them.  What it keeps from
the seed is what pipelines rely on: outcome defaults to success, messages are
cut to 2000 characters and stacks to 4000, ``record_errors`` takes a list or a
count, and *nothing* raises - every public method is wrapped, a problem is
one line on stderr, and calls without an open run are no-ops returning None.

Durations are measured here with ``time.monotonic()`` (immune to clock steps)
and sent as ``duration_ms``; ``ts`` is the wall clock in epoch milliseconds.

Nesting.  A run's parent is the one passed to ``start_run``, else the run
this *thread* opened last and has not ended, else ``$RUNTALLY_PARENT_RUN`` as
the process was started with it or the program itself set it.  While a run is
open its uid is exported in ``$RUNTALLY_PARENT_RUN`` so a child *process*
(``subprocess``, a nested ``runtally exec``, a forked worker) nests its run
under it.  ``os.environ`` is one for the whole process, so what a tracker
exported is never read back as a parent by another thread's run: the
variable's value counts as inherited only when it is none of our own run ids
(``_open``: the open ones; ``_ended``: the last ones ended, for a thread that
read the value just before its run ended).  Without that, concurrent runs of
unrelated threads became each other's children.  No lock (a signal handler
may track too): each step is one list/deque operation, atomic under the GIL,
ordered so a run id is in ``_open`` or ``_ended`` while it can be seen in the
variable, and a reader retries when runs ended while it looked.  The one
window left: a thread held off for 256 run ends between picking the latest
open run and writing it, whose write another thread reads in the few
bytecodes before the first one corrects it.  A child process started by any
thread gets the latest open run of the process (the variable is shared); a
program running several runs in threads passes ``RUNTALLY_PARENT_RUN`` in the
child's ``env`` to choose.
"""

from __future__ import annotations

import functools
import itertools
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping

from ._ids import now_ms, uuid7
from ._warn import warn, warn_once

TYPE_CHECKING = False  # not typing's: msgspec loads typing later, with the first tracker
if TYPE_CHECKING:
    from typing import Any, ClassVar, TypeVar

    from runtally.protocol import (
        MAX_MESSAGE,
        MAX_NAME,
        MAX_STACK,
        ErrorEvent,
        Event,
        RunEnd,
        RunStart,
        StepEnd,
        StepStart,
    )

    from . import _coerce, _describe
    from ._connection import Client
    from ._meta import run_meta
    from ._registry import resolve_tracker

__all__ = ["PARENT_ENV", "RunTracker"]

#: A run's uid, exported while it is open, so a child process's run nests under it.
PARENT_ENV = "RUNTALLY_PARENT_RUN"
MAX_MEMBER = 512

#: Our open runs' uids, in the order they started: the variable shows the last.
_open: list[str] = []
#: The uids of the last ENDED_KEPT runs ended (a set, for an O(1) lookup, and
#: their order, to forget the oldest): still ours for a reader that saw one just before.
_ended: set[str] = set()
_ended_order: deque[str] = deque()
ENDED_KEPT = 256
#: The parent from outside our trackers: the variable as the process started
#: with it, or as the program itself last set it.
_outside: str | None = os.environ.get(PARENT_ENV)
#: Bumped (``next``, atomic) before each end: a reader that saw no change
#: between reading the variable and finding it none of ours can trust that.
_ends = itertools.count()
_generation = next(_ends)
#: Per thread: ``runs``, the uids of the runs this thread started and has not ended.
_threads: Any = None

if TYPE_CHECKING:
    _F = TypeVar("_F", bound=Callable[..., Any])


def _safe(method: _F) -> _F:
    """Never let a tracking problem reach the pipeline: warn once, return None."""

    @functools.wraps(method)
    def wrapper(self: RunTracker, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the whole point
            warn_once(
                f"tracker-{method.__name__}-{type(exc).__name__}",
                f"RunTracker.{method.__name__} failed ({exc!r}); the pipeline continues",
            )
            return None

    return wrapper  # type: ignore[return-value]


def _load() -> None:
    """Bind what events are built with, on the first RunTracker rather than at import.

    msgspec, the protocol, the socket and the config resolver are most of a
    cron process's tracking cost; ``from runtally import RunTracker`` must not
    pay it (nor a module that imports the tracker and never tracks).
    """
    global MAX_MESSAGE, MAX_NAME, MAX_STACK, ErrorEvent, RunEnd, RunStart  # noqa: PLW0603
    global StepEnd, StepStart, _coerce, _describe, run_meta, resolve_tracker  # noqa: PLW0603
    global _loaded, _threads  # noqa: PLW0603
    if _loaded:
        return  # ~5 us of import statements per RunTracker otherwise
    # _thread's, not threading's: a cron process does not pay for threading.
    from _thread import _local

    from runtally.protocol import (
        MAX_MESSAGE,
        MAX_NAME,
        MAX_STACK,
        ErrorEvent,
        RunEnd,
        RunStart,
        StepEnd,
        StepStart,
    )

    from . import _coerce, _describe
    from ._meta import run_meta
    from ._registry import resolve_tracker

    _threads = _local()
    _loaded = True


_loaded = False


class _Step:
    __slots__ = ("name", "started")

    def __init__(self, name: str, started: float) -> None:
        self.name = name
        self.started = started  # time.monotonic()


class RunTracker:
    """Records one pipeline run at a time: its steps, their counts, its errors.

    ``member_keys`` lists the attributes/keys ``record_errors`` looks in, in
    order, for the member an error is about.
    """

    member_keys: ClassVar[tuple[str, ...]] = (
        "knvb_id",
        "email",
        "dossier_id",
        "team_name",
        "commissie_name",
    )

    def __init__(
        self,
        pipeline: str,
        club_slug: str | None = None,
        *,
        socket: str | os.PathLike[str] | None = None,
        spool: str | os.PathLike[str] | None = None,
        client: Client | None = None,
        member_keys: Iterable[str] | None = None,
    ) -> None:
        self.run_id: str | None = None
        self.pipeline = "unknown"
        self.club_slug: str | None = None
        self._client: Client | None = client
        self._steps: dict[str, _Step] = {}
        self._run_started = 0.0
        self._run_pid = 0  # the process that started the open run
        #: (run uid, the list of its thread's open runs) while exported
        self._exported: tuple[str, list[str]] | None = None
        self._noop_warned = False
        self._capture = True  # this tracker's capture_argv setting
        try:
            _load()
            self.pipeline = _coerce.name(pipeline, "pipeline", "unknown")
            self.club_slug = _coerce.text(club_slug, MAX_NAME).strip() or None
            if member_keys is not None:
                keys = [member_keys] if isinstance(member_keys, str) else member_keys
                self.member_keys = tuple(str(k) for k in keys)
            if client is None:
                self._client, default_club, self._capture = resolve_tracker(socket, spool)
            else:
                options = client.options
                default_club, self._capture = options.default_club, options.capture_argv
            if self.club_slug is None:
                self.club_slug = default_club
        except Exception as exc:  # noqa: BLE001
            warn(f"RunTracker could not be set up ({exc!r}); tracking is disabled")

    def _capture_argv(self) -> bool:
        return self._capture

    @property
    def client(self) -> Client | None:
        """The Client events go to; None if setting the tracker up failed."""
        return self._client

    # -- runs -----------------------------------------------------------------------

    @_safe
    def start_run(self, parent: str | None = None) -> str | None:
        """Start a run; returns its uid.

        Links it under ``parent``, else under the run this thread opened last
        and has not ended, else under an inherited $RUNTALLY_PARENT_RUN (never
        one another thread's tracker exported).
        """
        if self.run_id is not None:
            warn(f"start_run while run {self.run_id} is open; that run is left unfinished")
            self._unexport()
        parent_id = _coerce.uid(parent if parent is not None else _inherited(), "parent")
        ts = now_ms()
        run_id = uuid7(ts)
        self._emit(
            RunStart(
                id=uuid7(ts),
                ts=ts,
                run=run_id,
                pipeline=self.pipeline,
                club_slug=self.club_slug,
                parent=parent_id,
                meta=run_meta(capture_argv=self._capture_argv()),
            )
        )
        self.run_id = run_id
        self._run_pid = os.getpid()  # see close
        self._run_started = time.monotonic()
        self._steps.clear()
        self._noop_warned = False
        self._export(run_id)
        return run_id

    @_safe
    def end_run(self, success: Any = True, stats: Any = None) -> None:
        """Finish the run: outcome success/failure, ``stats`` kept as its summary."""
        if not self._has_run("end_run"):
            return
        ts = now_ms()
        self._emit(
            RunEnd(
                id=uuid7(ts),
                ts=ts,
                run=self.run_id,  # type: ignore[arg-type]
                outcome=_coerce.outcome(success, ("success", "failure")),  # type: ignore[arg-type]
                summary=_coerce.plain(stats),
                duration_ms=_elapsed_ms(self._run_started),
            )
        )
        self.run_id = None
        self._steps.clear()
        self._unexport()

    @_safe
    def close(self, timeout: float | None = None) -> None:
        """Safety net: end an open run as a failure, then flush the events.

        Only in the process that started the run: a forked child's copy of the
        tracker does not own its parent's run (found from outside: a worker
        tidying up what it inherited turned the parent's success into a
        failure, its run_end being the later one).  It flushes its own events.
        """
        if self.run_id is not None and self._run_pid == os.getpid():
            warn(f"run {self.run_id} closed without end_run; recorded as a failure")
            self.end_run(False, {"reason": "closed without end_run"})
        self._unexport()
        if self._client is not None:
            self._client.flush(timeout)

    # -- steps ----------------------------------------------------------------------

    @_safe
    def start_step(self, name: str) -> str | None:
        """Start a step of the open run; returns its uid."""
        if not self._has_run("start_step"):
            return None
        step_name = _coerce.name(name, "step name", "step")
        ts = now_ms()
        step_id = uuid7(ts)
        self._emit(StepStart(id=uuid7(ts), ts=ts, run=self.run_id, step=step_id, name=step_name))  # type: ignore[arg-type]
        self._steps[step_id] = _Step(step_name, time.monotonic())
        return step_id

    @_safe
    def end_step(  # noqa: PLR0917 - the seed's positional call shape
        self,
        step_id: str | None,
        outcome: Any = "success",
        created: Any = 0,
        updated: Any = 0,
        skipped: Any = 0,
        failed: Any = 0,
        detail: Any = None,
    ) -> None:
        """Finish a step with its outcome and created/updated/skipped/failed counts.

        The seed's call shape ``end_step(sid, {"outcome": ..., "created": ...})``
        is accepted too.
        """
        if type(outcome) is not str and isinstance(outcome, Mapping):  # the seed's one object
            opts = dict(outcome)
            outcome = opts.get("outcome", "success")
            created = opts.get("created", created)
            updated = opts.get("updated", updated)
            skipped = opts.get("skipped", skipped)
            failed = opts.get("failed", failed)
            detail = opts.get("detail", detail)
        if not self._has_run("end_step"):
            return
        sid = _coerce.uid(step_id, "step_id")
        if sid is None:
            return  # start_step failed (and said so) or had no run
        step = self._steps.pop(sid, None)
        ts = now_ms()
        self._emit(
            StepEnd(
                id=uuid7(ts),
                ts=ts,
                run=self.run_id,  # type: ignore[arg-type]
                step=sid,
                outcome=_coerce.outcome(outcome, ("success", "failure", "skipped")),  # type: ignore[arg-type]
                created=_coerce.count(created, "created"),
                updated=_coerce.count(updated, "updated"),
                skipped=_coerce.count(skipped, "skipped"),
                failed=_coerce.count(failed, "failed"),
                detail=_coerce.plain(detail),
                duration_ms=_elapsed_ms(step.started) if step is not None else None,
            )
        )

    # -- errors ---------------------------------------------------------------------

    @_safe
    def record_error(
        self,
        step_name: Any,
        step_id: str | None = None,
        member_identifier: Any = None,
        error_message: Any = "",
        error_stack: Any = None,
    ) -> str | None:
        """Record one error row; returns its event id.

        ``error_message`` may be an exception: its text, and its traceback when
        no stack is given.  The seed's ``record_error({stepName: ...})`` works too.
        """
        if type(step_name) is not str and isinstance(step_name, Mapping):
            opts = step_name
            step_name = _first(opts, "step_name", "stepName")
            step_id = _first(opts, "step_id", "stepId") or step_id
            member_identifier = _first(opts, "member_identifier", "memberIdentifier")
            error_message = _first(opts, "error_message", "errorMessage") or ""
            error_stack = _first(opts, "error_stack", "errorStack")
        if not self._has_run("record_error"):
            return None
        sid = _coerce.uid(step_id, "step_id")
        if step_name is None and sid in self._steps:
            step_name = self._steps[sid].name
        if isinstance(error_message, BaseException):
            error_stack = error_stack or _describe.format_traceback(error_message)
            error_message = _describe.exception_text(error_message)
        member = _coerce.text(member_identifier, MAX_MEMBER) or None
        stack = _coerce.text(error_stack, MAX_STACK) or None
        ts = now_ms()
        event_id = uuid7(ts)
        self._emit(
            ErrorEvent(
                id=event_id,
                ts=ts,
                run=self.run_id,  # type: ignore[arg-type]
                step_name=_coerce.name(step_name, "step name", "step"),
                message=_coerce.text(error_message, MAX_MESSAGE),
                step=sid,
                member=member,
                stack=stack,
            )
        )
        return event_id

    @_safe
    def record_errors(self, step_name: Any, step_id: str | None, errors: Any) -> int | None:
        """Record a step's errors: a list of dicts/objects/exceptions, or a count.

        A count ``n > 0`` records one error "Step reported n error(s)".  Returns
        how many error rows were recorded.
        """
        if not self._has_run("record_errors"):
            return None
        if errors is None:
            return 0
        if isinstance(errors, int | float) and not isinstance(errors, bool):
            n = _coerce.count(errors, "errors")
            if n <= 0:
                return 0
            self.record_error(step_name, step_id, None, f"Step reported {n} error(s)")
            return 1
        if isinstance(errors, str | bytes | Mapping | BaseException) or not isinstance(
            errors, Iterable
        ):
            errors = [errors]
        recorded = 0
        for item in errors:
            member, message, stack = _describe.describe(item, self.member_keys)
            if self.record_error(step_name, step_id, member, message, stack) is not None:
                recorded += 1
        return recorded

    # -- plumbing --------------------------------------------------------------------

    def _has_run(self, method: str) -> bool:
        if self.run_id is not None:
            return True
        if not self._noop_warned:
            self._noop_warned = True
            warn(f"RunTracker.{method} without an open run (start_run first); ignored")
        return False

    def _emit(self, event: Event) -> None:
        if self._client is not None:
            self._client.emit(event)

    def __del__(self) -> None:
        # A tracker dropped with its run open (no end_run, no close) stops
        # being exported: its run no longer parents this thread's later runs
        # nor child processes.  Its run itself stays open (the daemon calls it
        # crashed later), as before.
        try:
            if getattr(self, "_exported", None) is not None:
                self._unexport()
        except Exception:  # noqa: BLE001 - never raise from a finalizer (interpreter exit)
            pass

    def _export(self, run_id: str) -> None:
        """Show ``run_id`` to child processes and to this thread's later runs."""
        try:
            mine: list[str] = _threads.runs
        except AttributeError:
            mine = _threads.runs = []
        mine.append(run_id)
        _open.append(run_id)  # before it can be seen in the variable: see the module doc
        self._exported = (run_id, mine)
        os.environ[PARENT_ENV] = run_id

    def _unexport(self) -> None:
        """The run is over: children and later runs no longer see it."""
        token, self._exported = self._exported, None
        if token is None:
            return
        global _generation  # noqa: PLW0603
        run_id, mine = token
        _discard(mine, run_id)
        _generation = next(_ends)  # before _ended may forget an id a reader holds
        _ended.add(run_id)  # before it leaves _open: it is always one or the other
        _ended_order.append(run_id)
        _discard(_open, run_id)
        if len(_ended_order) > ENDED_KEPT:
            try:
                _ended.discard(_ended_order.popleft())
            except IndexError:  # another thread took the last one meanwhile
                pass
        _show_latest()


def _ours(value: str) -> bool:
    """Whether ``value`` is a run id one of this process's trackers exported."""
    return value in _open or value in _ended


def _inherited() -> str | None:
    """The parent of a run started without one (see the module doc)."""
    global _outside  # noqa: PLW0603
    mine = getattr(_threads, "runs", None)
    if mine:
        return mine[-1]
    while True:
        seen = _generation
        value = os.environ.get(PARENT_ENV)
        if value is not None and _ours(value):
            return _outside  # another thread's run: not ours to nest under
        if _generation == seen:  # else a run ended meanwhile: its id may have left _ended
            _outside = value  # the process's own (or the program's): remembered beneath ours
            return value


def _show_latest() -> None:
    """After a run ended: the variable shows the latest open run, else the outside parent.

    Left alone when it shows an open run or a value the program set itself.
    Written, then checked again: a run that ended meanwhile (in another
    thread, while this one waited for the GIL) is written over, and one that
    ends after the check sees what was written in its own ``_show_latest``,
    so no ended run is left in the variable.
    """
    value = os.environ.get(PARENT_ENV)
    if value is None or value in _open or value not in _ended:
        return
    while True:
        latest = _open[-1:]  # one atomic copy: another thread may change _open
        value = latest[0] if latest else _outside
        if value is None:
            try:  # not pop(): that reads the value first (another encode and decode)
                del os.environ[PARENT_ENV]
            except KeyError:
                pass
        else:
            os.environ[PARENT_ENV] = value
        if not latest or value in _open:
            return


def _discard(runs: list[str], run_id: str) -> None:
    try:
        runs.remove(run_id)
    except ValueError:
        pass


def _first(opts: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if opts.get(key) is not None:
            return opts[key]
    return None


def _elapsed_ms(started: float) -> int:
    return max(0, round((time.monotonic() - started) * 1000))
