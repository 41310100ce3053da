"""``track_run``: a run and its steps as context managers.

Leaving a block normally records success; leaving it with an exception
records the step as failed, an error row with the traceback, the run as
failed - and lets the exception propagate: tracking observes, it never
swallows.  ``sys.exit(0)`` inside a block is a normal exit.

A forked child that leaves a block it inherited from its parent records
nothing: that run or step belongs to the parent.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any

from ._tracker import RunTracker
from ._warn import warn, warn_once

__all__ = ["RUN_STEP_NAME", "Run", "Step", "track_run"]

#: ``step_name`` of an error raised inside a run but outside any step.
RUN_STEP_NAME = "(run)"

_TRACKER_KWARGS = ("socket", "spool", "client", "member_keys")


def track_run(pipeline: str, club_slug: str | None = None, **kw: Any) -> Run:
    """Context manager for one run: ``with track_run("people") as run: ...``.

    Keywords: ``socket``, ``spool``, ``client``, ``member_keys`` (as for
    RunTracker), ``parent`` (a parent run uid), ``flush_timeout`` (seconds to
    wait for acks at the end; default from settings).
    """
    parent = kw.pop("parent", None)
    flush_timeout = kw.pop("flush_timeout", None)
    unknown = sorted(set(kw) - set(_TRACKER_KWARGS))
    if unknown:
        warn(f"track_run: ignoring unknown argument(s) {', '.join(unknown)}")
    tracker = RunTracker(pipeline, club_slug, **{k: kw[k] for k in _TRACKER_KWARGS if k in kw})
    return Run(tracker, parent=parent, flush_timeout=flush_timeout)


def _is_failure(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    if isinstance(exc, SystemExit):
        return exc.code not in (None, 0)
    return not isinstance(exc, GeneratorExit)


class Run:
    """An open run: ``.step(name)``, ``.error(...)``; set ``.success``/``.summary`` freely."""

    def __init__(
        self,
        tracker: RunTracker,
        *,
        parent: str | None = None,
        flush_timeout: float | None = None,
    ) -> None:
        self.tracker = tracker
        self.uid: str | None = None
        self.success = True
        self.summary: Any = None
        self._parent = parent
        self._flush_timeout = flush_timeout
        self._pid = os.getpid()
        self._recorded: BaseException | None = None  # already has its error row

    def __enter__(self) -> Run:
        self._pid = os.getpid()
        self.uid = self.tracker.start_run(self._parent)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if os.getpid() != self._pid:
                return
            if _is_failure(exc):
                self.success = False
                if exc is not self._recorded:
                    self.tracker.record_error(RUN_STEP_NAME, None, None, exc)
            self.tracker.end_run(self.success, self.summary)
            self.tracker.close(self._flush_timeout)
        except Exception as err:  # noqa: BLE001 - never mask or add to the pipeline's own error
            warn_once("run-exit", f"track_run could not finish the run: {err!r}")
        finally:
            self._recorded = None  # drop the traceback's frames

    def step(self, name: str) -> Step:
        """Context manager for one step of this run."""
        return Step(self, name)

    def fail(self) -> None:
        """Mark the run failed without raising."""
        self.success = False

    def error(
        self,
        message: Any,
        member: Any = None,
        stack: Any = None,
        *,
        step_name: str = RUN_STEP_NAME,
    ) -> None:
        """Record an error row not tied to a step."""
        self.tracker.record_error(step_name, None, member, message, stack)


class Step:
    """An open step: mutable ``created/updated/skipped/failed``, ``detail``, ``outcome``.

    ``outcome`` left as None means success (failure if the block raises).
    ``error()`` records a row; it does not change ``failed`` - counts are yours.
    """

    def __init__(self, run: Run, name: str) -> None:
        self.run = run
        self.name = name
        self.uid: str | None = None
        self.created: Any = 0
        self.updated: Any = 0
        self.skipped: Any = 0
        self.failed: Any = 0
        self.detail: Any = None
        self.outcome: Any = None
        self._pid = os.getpid()

    def __enter__(self) -> Step:
        self._pid = os.getpid()
        self.uid = self.run.tracker.start_step(self.name)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if os.getpid() != self._pid:
                return
            tracker = self.run.tracker
            outcome = self.outcome
            if _is_failure(exc):
                if exc is not self.run._recorded:  # an inner step recorded it already
                    tracker.record_error(self.name, self.uid, None, exc)
                    self.run._recorded = exc
                self.run.success = False
                outcome = "failure"
            tracker.end_step(
                self.uid,
                outcome if outcome is not None else "success",
                self.created,
                self.updated,
                self.skipped,
                self.failed,
                self.detail,
            )
        except Exception as err:  # noqa: BLE001
            warn_once("step-exit", f"track_run could not finish step {self.name!r}: {err!r}")

    def error(self, message: Any, member: Any = None, stack: Any = None) -> None:
        """Record an error row for this step (``message`` may be an exception)."""
        self.run.tracker.record_error(self.name, self.uid, member, message, stack)
