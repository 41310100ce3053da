"""The store: idempotent, order-independent apply on real sqlite files (no mocks)."""

from __future__ import annotations

import itertools
import random
import re
import shutil
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from daemon_helpers import run_events as helper_run_events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtally.daemon._store import (
    ApplyError,
    AuditEntry,
    DeadLetter,
    Origin,
    Store,
    StoreBusy,
)
from runtally.protocol import (
    MAX_MESSAGE,
    MAX_STACK,
    ErrorEvent,
    Event,
    RunEnd,
    RunStart,
    StepEnd,
    StepStart,
)

T = 1_770_562_380_123  # 2026-02-08T14:53:00.123Z
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

RS = RunStart(
    id="ev-rs", ts=T, run="R", pipeline="people", club_slug="club-a", meta={"host": "h", "pid": 7}
)
SS1 = StepStart(id="ev-ss1", ts=T + 10, run="R", step="S1", name="download")
SS2 = StepStart(id="ev-ss2", ts=T + 20, run="R", step="S2", name="submit")
SE1 = StepEnd(
    id="ev-se1",
    ts=T + 110,
    run="R",
    step="S1",
    outcome="success",
    created=10,
    updated=2,
    detail={"files": 3},
)
SE2 = StepEnd(
    id="ev-se2",
    ts=T + 220,
    run="R",
    step="S2",
    outcome="failure",
    updated=5,
    skipped=7,
    failed=1,
    duration_ms=150,
)
ER1 = ErrorEvent(
    id="ev-er1",
    ts=T + 50,
    run="R",
    step="S1",
    step_name="download",
    member="KNVB123",
    message="no email",
    stack="Traceback ...",
)
ER2 = ErrorEvent(id="ev-er2", ts=T + 60, run="R", step="S2", step_name="submit", message="409")
ER3 = ErrorEvent(id="ev-er3", ts=T + 70, run="R", step_name="run", message="config warning")
CS = RunStart(id="ev-cs", ts=T + 30, run="C", pipeline="child", parent="R")
RE = RunEnd(id="ev-re", ts=T + 300, run="R", outcome="success", summary={"ok": True})

EVENTS: list[Event] = [RS, SS1, SS2, SE1, SE2, ER1, ER2, ER3, CS, RE]
#: A subset small enough to try every permutation (6! = 720).
SMALL: list[Event] = [RS, SS1, SE1, ER1, CS, RE]

HYPOTHESIS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- helpers ------------------------------------------------------------------------


class Databases:
    """Fresh migrated databases, copied from one template (fast)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.template = folder / "template.sqlite"
        store = Store.open(self.template)
        store.checkpoint()
        store.close()
        self._n = 0

    def fresh(self) -> Path:
        self._n += 1
        path = self.folder / f"db{self._n}.sqlite"
        shutil.copyfile(self.template, path)
        return path

    def open(self, **kwargs: Any) -> Store:
        return Store.open(self.fresh(), **kwargs)


@pytest.fixture(scope="module")
def dbs(tmp_path_factory: pytest.TempPathFactory) -> Databases:
    return Databases(tmp_path_factory.mktemp("store"))


def _rows(store: Store, table: str) -> list[dict[str, Any]]:
    cols = [c[1] for c in store.query(f"PRAGMA table_info({table})")]
    return [dict(zip(cols, r, strict=True)) for r in store.query(f"SELECT * FROM {table}")]


def snapshot(store: Store) -> dict[str, Any]:
    """Every row of the dashboard tables with autoincrement ids replaced by uids."""
    runs = _rows(store, "runs")
    steps = _rows(store, "run_steps")
    errors = _rows(store, "run_errors")
    run_uid = {r["id"]: r["uid"] for r in runs}
    step_uid = {s["id"]: s["uid"] for s in steps}
    for r in runs:
        r["id"] = r["uid"]
        r["parent_run_id"] = run_uid.get(r["parent_run_id"])
        del r["received_at"]  # the daemon's clock when it came: not the events' doing
    for s in steps:
        s["id"] = s["uid"]
        s["run_id"] = run_uid[s["run_id"]]
    for e in errors:
        e["id"] = e["uid"]
        e["run_id"] = run_uid[e["run_id"]]
        e["run_step_id"] = step_uid.get(e["run_step_id"])
    return {
        "runs": sorted(runs, key=lambda r: r["uid"]),
        "run_steps": sorted(steps, key=lambda r: r["uid"]),
        "run_errors": sorted(errors, key=lambda r: r["uid"]),
        "parked_events": store.query("SELECT event_id, waiting_for FROM parked_events"),
        "dead_letters": store.query("SELECT event_id, reason FROM dead_letters"),
    }


def check_invariants(store: Store) -> None:
    """Totals are the sums of the steps' counts; nothing left parked; FKs hold."""
    mismatched = store.query(
        "SELECT r.uid FROM runs r WHERE (r.total_created, r.total_updated, r.total_skipped,"
        " r.total_failed) IS NOT (SELECT COALESCE(SUM(created_count), 0),"
        " COALESCE(SUM(updated_count), 0), COALESCE(SUM(skipped_count), 0),"
        " COALESCE(SUM(failed_count), 0) FROM run_steps s WHERE s.run_id = r.id)"
    )
    assert mismatched == []
    assert store.query("SELECT count(*) FROM parked_events") == [(0,)]
    assert store.parked == 0
    assert store.query("PRAGMA foreign_key_check") == []


def apply_one_by_one(store: Store, events: Sequence[Event]) -> None:
    for event in events:
        assert store.apply([event]) == [None], event


def dump(path: Path) -> list[str]:
    """The whole database as SQL, read on a separate connection."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def reference(dbs: Databases) -> dict[str, Any]:
    """The state after applying EVENTS once, in order, one event per call."""
    store = dbs.open()
    try:
        apply_one_by_one(store, EVENTS)
        check_invariants(store)
        return snapshot(store)
    finally:
        store.close()


@pytest.fixture(scope="module")
def small_reference(dbs: Databases) -> dict[str, Any]:
    store = dbs.open()
    try:
        apply_one_by_one(store, SMALL)
        return snapshot(store)
    finally:
        store.close()


def _final_state(dbs: Databases, batches: Sequence[Sequence[Event]]) -> dict[str, Any]:
    store = dbs.open()
    try:
        for batch in batches:
            assert store.apply(batch) == [None] * len(batch)
        check_invariants(store)
        return snapshot(store)
    finally:
        store.close()
        for side in ("", "-wal", "-shm"):
            Path(str(store.path) + side).unlink(missing_ok=True)


# -- the in-order result is the one we mean ---------------------------------------------


def test_in_order_application_gives_the_expected_rows(reference: dict[str, Any]) -> None:
    runs = {r["uid"]: r for r in reference["runs"]}
    steps = {s["uid"]: s for s in reference["run_steps"]}
    errors = {e["uid"]: e for e in reference["run_errors"]}
    assert set(runs) == {"R", "C"}
    assert set(steps) == {"S1", "S2"}
    assert set(errors) == {"ev-er1", "ev-er2", "ev-er3"}

    r = runs["R"]
    assert r["club_slug"] == "club-a"
    assert r["pipeline"] == "people"
    assert r["started_at"] == "2026-02-08T14:53:00.123Z"
    assert r["finished_at"] == "2026-02-08T14:53:00.423Z"
    assert r["duration_ms"] == 300  # no client duration: ts difference
    assert r["outcome"] == "success"
    assert (r["total_created"], r["total_updated"], r["total_skipped"], r["total_failed"]) == (
        10,
        7,
        7,
        1,
    )
    assert msgspec.json.decode(r["summary_json"]) == {"ok": True}
    assert msgspec.json.decode(r["meta_json"]) == {"host": "h", "pid": 7}
    assert r["parent_run_id"] is None

    c = runs["C"]
    assert c["parent_run_id"] == "R"  # linked by id to its parent
    assert c["parent_uid"] == "R"
    assert c["outcome"] == "running"
    assert c["club_slug"] == "rondo"  # the seed default
    assert c["finished_at"] is None

    s1, s2 = steps["S1"], steps["S2"]
    assert s1["run_id"] == s2["run_id"] == "R"
    assert s1["club_slug"] == "club-a"
    assert s1["duration_ms"] == 100  # ts difference
    assert s2["duration_ms"] == 150  # the client's own measure
    assert (s1["outcome"], s2["outcome"]) == ("success", "failure")
    assert (s1["created_count"], s1["updated_count"]) == (10, 2)
    assert (s2["updated_count"], s2["skipped_count"], s2["failed_count"]) == (5, 7, 1)
    assert msgspec.json.decode(s1["detail_json"]) == {"files": 3}
    assert s2["detail_json"] is None

    assert errors["ev-er1"]["run_step_id"] == "S1"
    assert errors["ev-er1"]["member_identifier"] == "KNVB123"
    assert errors["ev-er1"]["error_stack"] == "Traceback ..."
    assert errors["ev-er2"]["run_step_id"] == "S2"
    assert errors["ev-er3"]["run_step_id"] is None
    assert errors["ev-er3"]["step_name"] == "run"
    assert all(e["club_slug"] == "club-a" for e in errors.values())
    assert reference["parked_events"] == []
    assert reference["dead_letters"] == []

    stamps = [
        row[col]
        for table in ("runs", "run_steps", "run_errors")
        for row in reference[table]
        for col in ("started_at", "finished_at", "created_at")
        if row.get(col) is not None
    ]
    assert len(stamps) == 2 + 1 + 2 * 2 + 3
    assert all(ISO.fullmatch(s) for s in stamps), stamps


def test_one_batch_in_order_equals_one_by_one(dbs: Databases, reference) -> None:
    assert _final_state(dbs, [EVENTS]) == reference


def test_a_step_started_and_ended_in_one_batch_is_inserted_finished(dbs: Databases) -> None:
    """One INSERT per such step, no UPDATE (issue 17); a later second end in the
    same batch still wins by end_key, and the run's totals add up."""
    store = dbs.open()
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    run = helper_run_events("M1", steps=2, errors=0, ts=T)
    later = msgspec.structs.replace(run[2], id="M1-s0-late", ts=T + 100, created=40)
    store.apply([*run, later])
    store._conn.set_trace_callback(None)
    # Two merged INSERTs; the one UPDATE is the late second end's.
    assert sum(sql.startswith("INSERT INTO run_steps") for sql in statements) == 2
    assert sum(sql.startswith("UPDATE run_steps") for sql in statements) == 1
    steps = store.query(
        "SELECT uid, finished_at IS NOT NULL, outcome, created_count, end_key FROM run_steps"
        " ORDER BY uid"
    )
    assert steps == [
        ("M1-s0", 1, "success", 40, f"{T + 100:015d}:M1-s0-late"),
        ("M1-s1", 1, "success", 2, f"{T + 15:015d}:M1-s1-e"),
    ]
    assert store.query("SELECT total_created FROM runs") == [(42,)]


# -- arrival order does not matter ----------------------------------------------------


def test_every_permutation_of_a_small_run(dbs: Databases, small_reference) -> None:
    count = 0
    for order in itertools.permutations(SMALL):
        assert _final_state(dbs, [[e] for e in order]) == small_reference, order
        count += 1
    assert count == 720


@HYPOTHESIS
@given(order=st.permutations(EVENTS))
def test_any_order_one_event_per_apply(dbs: Databases, reference, order) -> None:
    assert _final_state(dbs, [[e] for e in order]) == reference


@HYPOTHESIS
@given(order=st.permutations(EVENTS))
def test_any_order_in_one_batch(dbs: Databases, reference, order) -> None:
    assert _final_state(dbs, [order]) == reference


@HYPOTHESIS
@given(order=st.permutations(EVENTS + EVENTS))
def test_every_event_twice_in_any_order(dbs: Databases, reference, order) -> None:
    assert _final_state(dbs, [[e] for e in order]) == reference


@HYPOTHESIS
@given(
    order=st.permutations(EVENTS + EVENTS),
    cuts=st.lists(st.integers(min_value=1, max_value=2 * len(EVENTS) - 1), max_size=6),
)
def test_duplicates_in_any_order_and_any_batching(dbs: Databases, reference, order, cuts) -> None:
    bounds = [0, *sorted(set(cuts)), len(order)]
    batches = [order[a:b] for a, b in itertools.pairwise(bounds)]
    assert _final_state(dbs, batches) == reference


def test_duplicates_are_acknowledged_and_change_nothing(dbs: Databases, reference) -> None:
    store = dbs.open()
    try:
        apply_one_by_one(store, EVENTS)
        before = dump(store.path)
        assert store.apply(EVENTS) == [None] * len(EVENTS)
        apply_one_by_one(store, list(reversed(EVENTS)))
        assert dump(store.path) == before
        assert snapshot(store) == reference
    finally:
        store.close()


# -- ends: late, repeated, competing -------------------------------------------------------


def _run_row(store: Store, uid: str) -> tuple:
    return store.query(
        "SELECT outcome, finished_at, total_created, total_updated, total_skipped,"
        " total_failed FROM runs WHERE uid = ?",
        (uid,),
    )[0]


def test_a_step_end_after_the_run_end_still_updates_totals(dbs: Databases) -> None:
    store = dbs.open()
    try:
        apply_one_by_one(store, [RS, SS1, SS2, SE2, RE])
        assert _run_row(store, "R") == ("success", "2026-02-08T14:53:00.423Z", 0, 5, 7, 1)
        apply_one_by_one(store, [SE1])  # arrives after the run has ended
        assert _run_row(store, "R") == ("success", "2026-02-08T14:53:00.423Z", 10, 7, 7, 1)
        check_invariants(store)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("first_ts", "second_ts"),
    [(T + 100, T + 200), (T + 100, T + 100)],  # a later end wins; a tie is broken by id
)
def test_two_ends_of_one_step_resolve_to_the_same_winner(
    dbs: Databases, first_ts: int, second_ts: int
) -> None:
    a = StepEnd(id="end-a", ts=first_ts, run="R", step="S1", outcome="failure", created=1)
    b = StepEnd(id="end-b", ts=second_ts, run="R", step="S1", outcome="success", created=2)
    ra = RunEnd(id="run-end-a", ts=first_ts + 1000, run="R", outcome="failure")
    rb = RunEnd(id="run-end-b", ts=second_ts + 1000, run="R", outcome="success")
    states = []
    for order in ([a, b, ra, rb], [b, a, rb, ra], [rb, b, ra, a], [a, rb, ra, b]):
        store = dbs.open()
        try:
            apply_one_by_one(store, [RS, SS1, *order])
            check_invariants(store)
            states.append(snapshot(store))
        finally:
            store.close()
    assert all(s == states[0] for s in states)
    (step,) = states[0]["run_steps"]
    assert (step["outcome"], step["created_count"]) == ("success", 2)  # end-b wins
    (run,) = states[0]["runs"]
    assert (run["outcome"], run["total_created"]) == ("success", 2)


def test_duration_comes_from_the_client_when_given_else_from_timestamps(dbs: Databases) -> None:
    store = dbs.open()
    try:
        apply_one_by_one(
            store,
            [
                RunStart(id="a", ts=T, run="R1", pipeline="p"),
                StepStart(id="b", ts=T + 1000, run="R1", step="S1", name="one"),
                StepStart(id="c", ts=T + 1000, run="R1", step="S2", name="two"),
                StepEnd(id="d", ts=T + 4500, run="R1", step="S1", outcome="success"),
                # 0 is a real measure, not "missing".
                StepEnd(id="e", ts=T + 4500, run="R1", step="S2", outcome="skipped", duration_ms=0),
                RunEnd(id="f", ts=T + 9999, run="R1", outcome="failure", duration_ms=9876),
                RunStart(id="g", ts=T, run="R2", pipeline="p"),
                RunEnd(id="h", ts=T + 61_000, run="R2", outcome="success"),
            ],
        )
        assert store.query("SELECT uid, duration_ms FROM run_steps ORDER BY uid") == [
            ("S1", 3500),
            ("S2", 0),
        ]
        assert store.query("SELECT uid, duration_ms FROM runs ORDER BY uid") == [
            ("R1", 9876),
            ("R2", 61_000),
        ]
    finally:
        store.close()


# -- values as the seed stored them -----------------------------------------------------


def test_error_message_and_stack_are_truncated(dbs: Databases) -> None:
    store = dbs.open()
    try:
        apply_one_by_one(
            store,
            [
                RS,
                ErrorEvent(
                    id="long",
                    ts=T,
                    run="R",
                    step_name="x",
                    message="m" * 5000,
                    stack="s" * 9000,
                ),
                ErrorEvent(
                    id="exact",
                    ts=T,
                    run="R",
                    step_name="x",
                    message="é" * MAX_MESSAGE,
                    stack="ß" * MAX_STACK,
                ),
                ErrorEvent(id="short", ts=T, run="R", step_name="x", message="short"),
            ],
        )
        rows = {
            uid: (msg, stack)
            for uid, msg, stack in store.query(
                "SELECT uid, error_message, error_stack FROM run_errors"
            )
        }
        assert rows["long"] == ("m" * 2000, "s" * 4000)
        assert rows["exact"] == ("é" * 2000, "ß" * 4000)
        assert rows["short"] == ("short", None)
        assert MAX_MESSAGE == 2000
        assert MAX_STACK == 4000
    finally:
        store.close()


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (T, "2026-02-08T14:53:00.123Z"),
        (0, "1970-01-01T00:00:00.000Z"),
        (5, "1970-01-01T00:00:00.005Z"),
        (1_000_000_000_050, "2001-09-09T01:46:40.050Z"),
        (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
    ],
)
def test_timestamps_are_utc_iso_with_milliseconds(dbs: Databases, ts: int, text: str) -> None:
    store = dbs.open()
    try:
        apply_one_by_one(
            store,
            [
                RunStart(id="a", ts=ts, run="R", pipeline="p"),
                StepStart(id="b", ts=ts, run="R", step="S", name="s"),
                StepEnd(id="c", ts=ts, run="R", step="S", outcome="success"),
                ErrorEvent(id="d", ts=ts, run="R", step_name="s", message="m"),
                RunEnd(id="e", ts=ts, run="R", outcome="success"),
            ],
        )
        assert store.query("SELECT started_at, finished_at FROM runs") == [(text, text)]
        assert store.query("SELECT started_at, finished_at FROM run_steps") == [(text, text)]
        assert store.query("SELECT created_at FROM run_errors") == [(text,)]
    finally:
        store.close()


# -- all or nothing -------------------------------------------------------------------------


def _unencodable_step_end(run: str = "R", step: str = "S1") -> StepEnd:
    # MessagePack carries an Ext fine; JSON (detail_json) cannot encode it.
    return StepEnd(
        id="ev-ext",
        ts=T + 500,
        run=run,
        step=step,
        outcome="success",
        created=99,
        detail={"blob": msgspec.msgpack.Ext(1, b"x")},
    )


def test_a_batch_that_cannot_be_applied_leaves_the_database_as_it_was(dbs: Databases) -> None:
    store = dbs.open()
    try:
        apply_one_by_one(store, [RS, SS1])
        before = dump(store.path)
        r2 = RunStart(id="ev-r2", ts=T, run="R2", pipeline="other")
        batch = [SS2, SE1, r2, ER1, _unencodable_step_end(), ER3, RE]
        with pytest.raises(ApplyError, match="Ext"):
            store.apply(
                batch,
                dead_letters=[DeadLetter(b"\xc1", "garbage frame")],
                audit=[AuditEntry("replay", "replayed one file")],
            )
        assert dump(store.path) == before  # no half-apply, no dead letter, no audit row
        # The store forgot what the rolled-back batch cached: R2 does not exist,
        # so its step is parked, not inserted against a stale run id.
        assert store.apply([StepStart(id="ev-r2s", ts=T, run="R2", step="R2S", name="x")]) == [None]
        assert store.query("SELECT count(*) FROM run_steps WHERE uid = 'R2S'") == [(0,)]
        assert store.parked == 1
        # And the good events still apply afterwards.
        assert store.apply([SS2, SE1, r2, ER1, ER3, RE]) == [None] * 6
        assert store.parked == 0
        assert store.query("SELECT total_created FROM runs WHERE uid = 'R'") == [(10,)]
    finally:
        store.close()


def test_an_unencodable_event_fails_when_it_arrives_even_before_its_run(dbs: Databases) -> None:
    """Parked, it would fail later, when its run arrives, and take the run down with it."""
    store = dbs.open()
    try:
        before = dump(store.path)
        with pytest.raises(ApplyError):
            store.apply([_unencodable_step_end()])
        assert dump(store.path) == before
        apply_one_by_one(store, EVENTS)  # the run itself is not poisoned
        check_invariants(store)
    finally:
        store.close()


def test_a_step_of_another_run_is_dead_lettered_and_the_rest_commits(dbs: Databases) -> None:
    store = dbs.open()
    try:
        r2 = RunStart(id="ev-r2", ts=T, run="R2", pipeline="other")
        bad_end = StepEnd(id="bad-end", ts=T + 5, run="R2", step="S1", outcome="success", created=5)
        bad_error = ErrorEvent(
            id="bad-err", ts=T + 5, run="R2", step="S1", step_name="x", message="m"
        )
        bad_start = StepStart(id="bad-start", ts=T + 5, run="R2", step="S1", name="x")
        batch = [RS, SS1, r2, bad_end, SE1, bad_error, bad_start, RE]
        frames = [f"frame-{e.id}".encode() for e in batch]
        origins = [Origin("socket", uid=1000, gid=100, pid=4242)] * len(batch)
        results = store.apply(batch, frames=frames, origins=origins)
        assert [r is None for r in results] == [True, True, True, False, True, False, False, True]
        for index in (3, 5, 6):
            assert "belongs to another run" in results[index]
        letters = store.query(
            "SELECT event_id, reason, frame, source, peer_uid, peer_gid, peer_pid, received_at"
            " FROM dead_letters ORDER BY id"
        )
        assert [row[0] for row in letters] == ["bad-end", "bad-err", "bad-start"]
        for row, index in zip(letters, (3, 5, 6), strict=True):
            assert row[1] == results[index]
            assert row[2] == frames[index]
            assert row[3:7] == ("socket", 1000, 100, 4242)
            assert ISO.fullmatch(row[7])
        # The good events committed; the bad ones changed nothing.
        assert store.query("SELECT uid, run_id FROM run_steps") == [
            ("S1", store.query("SELECT id FROM runs WHERE uid = 'R'")[0][0])
        ]
        assert store.query("SELECT created_count FROM run_steps") == [(10,)]
        assert store.query("SELECT uid, total_created, outcome FROM runs ORDER BY uid") == [
            ("R", 10, "success"),
            ("R2", 0, "running"),
        ]
        assert store.query("SELECT count(*) FROM run_errors") == [(0,)]
        check_invariants(store)
    finally:
        store.close()


def test_another_event_under_a_used_id_is_refused_not_dropped(dbs: Databases) -> None:
    """Found from outside: an error reusing an applied error's id (another run, another
    message) was acked and dropped in silence, and a second run_start of a run under
    another pipeline and club was acked and ignored.  A copy is still a duplicate."""
    store = dbs.open()
    try:
        first = [
            RunStart(id="a-rs", ts=T, run="A", pipeline="dupA"),
            RunStart(id="b-rs", ts=T, run="B", pipeline="dupB"),
            ErrorEvent(id="e2", ts=T, run="A", step_name="s", message="first"),
        ]
        assert store.apply(first) == [None] * 3
        again = [
            ErrorEvent(id="e2", ts=T, run="A", step_name="s", message="first"),  # a copy
            ErrorEvent(id="e2", ts=T, run="B", step_name="s", message="second, other run"),
            RunStart(id="a-rs", ts=T, run="A", pipeline="dupA"),  # a copy
            RunStart(id="a-rs2", ts=T, run="A", pipeline="renamed", club_slug="otherclub"),
        ]
        results = store.apply(again)
        assert results[0] is None and results[2] is None
        assert results[1] and "another error was recorded under this id" in results[1]
        assert results[3] and "started already as pipeline 'dupA'" in results[3]
        letters = [r for (r,) in store.query("SELECT event_id FROM dead_letters ORDER BY id")]
        assert letters == ["e2", "a-rs2"]
        assert store.query("SELECT pipeline, club_slug FROM runs WHERE uid = 'A'") == [
            ("dupA", "rondo")
        ]
        assert store.query("SELECT count(*) FROM run_errors") == [(1,)]
    finally:
        store.close()


def test_a_parked_event_refused_on_release_does_not_refuse_its_releaser(dbs: Databases) -> None:
    """A parked event that turns out to be wrong when its run arrives is
    dead-lettered on its own; the run_start and the other parked events apply."""
    store = dbs.open()
    try:
        apply_one_by_one(store, [RS, SS1])
        parked = [
            StepEnd(id="bad-end", ts=T + 5, run="R2", step="S1", outcome="success", created=5),
            StepStart(id="ok-start", ts=T + 6, run="R2", step="R2S", name="x"),
            StepEnd(id="ok-end", ts=T + 9, run="R2", step="R2S", outcome="success", created=3),
        ]
        assert store.apply(parked) == [None, None, None]
        assert store.parked == 3
        r2 = RunStart(id="ev-r2", ts=T, run="R2", pipeline="other")
        assert store.apply([r2]) == [None]
        assert store.parked == 0
        assert store.query("SELECT event_id, source FROM dead_letters") == [("bad-end", "parked")]
        reason = store.query("SELECT reason FROM dead_letters")[0][0]
        assert "belongs to another run" in reason
        assert store.query("SELECT uid, total_created FROM runs ORDER BY uid") == [
            ("R", 0),
            ("R2", 3),
        ]
        check_invariants(store)
    finally:
        store.close()


def test_huge_counts_saturate_instead_of_wedging_the_store(dbs: Databases) -> None:
    store = dbs.open()
    try:
        big = 2**62
        apply_one_by_one(
            store,
            [
                RS,
                SS1,
                SS2,
                StepEnd(id="a", ts=T, run="R", step="S1", outcome="success", created=big),
                StepEnd(id="b", ts=T, run="R", step="S2", outcome="success", created=big),
            ],
        )
        assert store.query("SELECT total_created FROM runs") == [(2**63 - 1,)]
    finally:
        store.close()


# -- locks, dead letters, audit -------------------------------------------------------------


def test_a_held_write_lock_raises_store_busy_and_writes_nothing(dbs: Databases) -> None:
    store = dbs.open(busy_timeout_ms=50)
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        apply_one_by_one(store, [RS])
        before = dump(store.path)
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StoreBusy):
            store.apply(
                [SS1, SE1, RE],
                dead_letters=[DeadLetter(b"\xc1", "garbage frame")],
                audit=[AuditEntry("start", "daemon started")],
            )
        assert time.monotonic() - started < 5
        other.execute("ROLLBACK")
        assert dump(store.path) == before
        # Retrying later works, and nothing from the failed attempt was kept.
        assert store.apply([SS1, SE1, RE]) == [None] * 3
        assert store.query("SELECT count(*) FROM dead_letters") == [(0,)]
        assert store.query("SELECT count(*) FROM audit_log") == [(0,)]
        assert store.query("SELECT total_created, outcome FROM runs") == [(10, "success")]
    finally:
        other.close()
        store.close()


def test_dead_letters_and_audit_rows_commit_with_the_events(dbs: Databases) -> None:
    store = dbs.open()
    reader = None
    try:
        letter = DeadLetter(
            b"\x81\xa4type\xa3bad",
            "unknown message type 'bad'",
            None,
            Origin("spool:/var/spool/runtally/x.spool", uid=0),
            received_ms=T,
        )
        audit = AuditEntry(
            "replay", "replayed 1 file", level="warning", scope="spool", data={"files": 1}, ts_ms=T
        )
        assert store.apply([RS, SS1], dead_letters=[letter], audit=[audit]) == [None, None]
        reader = sqlite3.connect(store.path)  # committed: another connection sees it all
        assert reader.execute(
            "SELECT received_at, source, peer_uid, peer_gid, peer_pid, event_id, reason, frame"
            " FROM dead_letters"
        ).fetchall() == [
            (
                "2026-02-08T14:53:00.123Z",
                "spool:/var/spool/runtally/x.spool",
                0,
                None,
                None,
                None,
                "unknown message type 'bad'",
                b"\x81\xa4type\xa3bad",
            )
        ]
        assert reader.execute(
            "SELECT ts, level, run_id, scope, event, message, data_json FROM audit_log"
        ).fetchall() == [
            (
                "2026-02-08T14:53:00.123Z",
                "warning",
                None,
                "spool",
                "replay",
                "replayed 1 file",
                '{"files":1}',
            )
        ]
        assert reader.execute("SELECT count(*) FROM runs").fetchone() == (1,)
        assert reader.execute("SELECT count(*) FROM run_steps").fetchone() == (1,)
        # An audit row on its own (no events) is a transaction of its own.
        store.audit("stop", "daemon stopped")
        assert reader.execute("SELECT event FROM audit_log ORDER BY id").fetchall() == [
            ("replay",),
            ("stop",),
        ]
        ts = reader.execute("SELECT ts FROM audit_log WHERE event = 'stop'").fetchone()[0]
        assert ISO.fullmatch(ts)
    finally:
        if reader is not None:
            reader.close()
        store.close()


def test_random_interleavings_of_many_runs(dbs: Databases) -> None:
    """Several runs' events shuffled together, duplicated, in random batches."""
    rng = random.Random(20260208)

    def run_events(n: int) -> list[Event]:
        run, base = f"run-{n}", T + n * 10_000
        events: list[Event] = [RunStart(id=f"{run}-s", ts=base, run=run, pipeline=f"p{n % 3}")]
        for k in range(4):
            step = f"{run}-step-{k}"
            events += [
                StepStart(id=f"{step}-s", ts=base + k, run=run, step=step, name=f"s{k}"),
                StepEnd(
                    id=f"{step}-e",
                    ts=base + 100 + k,
                    run=run,
                    step=step,
                    outcome="success",
                    created=n + k,
                    failed=k % 2,
                ),
                ErrorEvent(
                    id=f"{step}-err",
                    ts=base + 50,
                    run=run,
                    step=step,
                    step_name=f"s{k}",
                    message="m",
                ),
            ]
        events.append(RunEnd(id=f"{run}-e", ts=base + 999, run=run, outcome="success"))
        if n:
            events.append(
                RunStart(id=f"{run}-child", ts=base + 5, run=f"{run}-c", pipeline="c", parent=run)
            )
        return events

    everything = [e for n in range(8) for e in run_events(n)]
    expected = _final_state(dbs, [[e] for e in everything])
    for _ in range(15):
        shuffled = everything + rng.sample(everything, len(everything) // 2)
        rng.shuffle(shuffled)
        batches: list[list[Event]] = []
        while shuffled:
            size = rng.choice([1, 1, 2, 7, 50])
            batches.append(shuffled[:size])
            shuffled = shuffled[size:]
        assert _final_state(dbs, batches) == expected


def test_parked_events_survive_a_rollback_and_a_reopen(dbs: Databases) -> None:
    """What waits for which run is rebuilt from parked_events after a rollback or restart."""
    path = dbs.fresh()
    store = Store.open(path)
    try:
        ss = StepStart(id="p-ss", ts=T + 1, run="P", step="PS", name="x")
        se = StepEnd(id="p-se", ts=T + 9, run="P", step="PS", outcome="success", created=4)
        assert store.apply([se, ss]) == [None, None]
        assert store.parked == 2
        with pytest.raises(ApplyError):  # rolled back: the store re-reads what is parked
            store.apply(
                [
                    RunStart(id="p-rs0", ts=T, run="Q", pipeline="q"),
                    _unencodable_step_end(run="Q", step="QS"),
                ]
            )
        assert store.parked == 2
    finally:
        store.close()
    store = Store.open(path)  # a restarted daemon
    try:
        assert store.parked == 2
        assert store.apply([RunStart(id="p-rs", ts=T, run="P", pipeline="p")]) == [None]
        assert store.parked == 0
        assert store.query("SELECT total_created FROM runs WHERE uid = 'P'") == [(4,)]
        assert store.query("SELECT outcome FROM run_steps WHERE uid = 'PS'") == [("success",)]
    finally:
        store.close()


class TestBusyWait:
    """The writer's loop-thread commits run with no busy wait; worker threads wait again."""

    @staticmethod
    def _timeout(store: Store) -> int:
        return store.query("PRAGMA busy_timeout")[0][0]

    def test_toggles_and_context_manager_restores(self, tmp_path: Path) -> None:
        store = Store.open(tmp_path / "db.sqlite", busy_timeout_ms=1234)
        try:
            assert self._timeout(store) == 1234
            store.busy_wait(False)
            store.busy_wait(False)  # idempotent
            assert self._timeout(store) == 0
            store.busy_wait(True)
            assert self._timeout(store) == 1234
            with store.no_busy_wait():
                assert self._timeout(store) == 0
            assert self._timeout(store) == 1234
        finally:
            store.close()

    def test_reopen_and_checkpoint_wait_again(self, tmp_path: Path) -> None:
        store = Store.open(tmp_path / "db.sqlite", busy_timeout_ms=1234)
        try:
            store.busy_wait(False)
            store.reopen()  # a new connection waits, and the store knows it
            assert self._timeout(store) == 1234
            store.busy_wait(False)
            assert self._timeout(store) == 0
            store.checkpoint()  # at shutdown: waits for readers as before
            assert self._timeout(store) == 1234
        finally:
            store.close()


class TestPeer:
    """A run_start from a socket records its peer's pid and start time on the run."""

    SOCKET = Origin(uid=1000, pid=4242, start=99)
    OTHER = Origin(uid=1000, pid=5151, start=7)

    def peer(self, store: Store, run: str = "R") -> tuple[Any, ...]:
        return tuple(store.query("SELECT peer_pid, peer_start FROM runs WHERE uid = ?", (run,))[0])

    def test_a_new_run_records_its_peer(self, dbs: Databases) -> None:
        store = dbs.open()
        assert store.apply([RS, SS1], origins=[self.SOCKET, self.SOCKET]) == [None, None]
        assert self.peer(store) == (4242, 99)

    @pytest.mark.parametrize("origin", [Origin(source="spool:x.rts", pid=4242), Origin()])
    def test_no_peer_from_a_spool_or_without_a_pid(self, dbs: Databases, origin: Origin) -> None:
        store = dbs.open()
        store.apply([RS], origins=[origin])
        store.apply([CS])  # no origins at all
        assert self.peer(store) == (None, None)
        assert self.peer(store, "C") == (None, None)

    @pytest.mark.parametrize("cached", [True, False], ids=["cached", "reopened"])
    def test_a_duplicate_from_a_socket_fills_in_a_missing_peer_only(
        self, dbs: Databases, cached: bool
    ) -> None:
        store = dbs.open()
        store.apply([RS], origins=[Origin(source="spool:x.rts")])
        if not cached:
            store.forget_cached()  # the duplicate goes through the INSERT's conflict
        store.apply([RS], origins=[self.SOCKET])
        assert self.peer(store) == (4242, 99)
        store.apply([RS], origins=[self.OTHER])  # the first peer stays
        assert self.peer(store) == (4242, 99)


class TestParentLinks:
    """A child that started before its parent is linked when the parent's run_start comes,
    whatever happened in between (the store keeps which parents children wait for)."""

    def parent_of(self, store: Store, run: str = "C") -> Any:
        (row,) = store.query(
            "SELECT p.uid FROM runs c LEFT JOIN runs p ON p.id = c.parent_run_id WHERE c.uid = ?",
            (run,),
        )
        return row[0]

    def test_across_a_restart(self, dbs: Databases) -> None:
        store = dbs.open()
        assert store.apply([CS]) == [None]
        store.close()
        store = Store.open(store.path)
        assert store.apply([RS]) == [None]
        assert self.parent_of(store) == "R"

    def test_across_a_rolled_back_batch(self, dbs: Databases) -> None:
        store = dbs.open()
        assert store.apply([CS]) == [None]
        with pytest.raises(ApplyError, match="Ext"):
            store.apply([RS, _unencodable_step_end()])  # links C, then rolls back
        assert self.parent_of(store) is None
        assert store.apply([RS]) == [None]
        assert self.parent_of(store) == "R"

    def test_a_rolled_back_child_leaves_no_link_to_make(self, dbs: Databases) -> None:
        store = dbs.open()
        with pytest.raises(ApplyError, match="Ext"):
            store.apply([CS, _unencodable_step_end()])
        assert store.apply([RS, CS]) == [None, None]
        assert self.parent_of(store) == "R"

    def test_a_run_that_names_itself_as_parent(self, dbs: Databases) -> None:
        store = dbs.open()
        me = RunStart(id="ev-me", ts=T, run="ME", pipeline="p", parent="ME")
        assert store.apply([me]) == [None]
        assert self.parent_of(store, "ME") == "ME"  # as before: the UPDATE linked it to itself
        assert store.apply([me]) == [None]
