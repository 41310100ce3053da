-- The monitor (issue 15): who ran each run, to tell a crashed run from a long
-- one, and each pipeline's state as the daemon last computed it.

-- The process that sent run_start (SO_PEERCRED pid) and its start time
-- (/proc/<pid>/stat field 22, clock ticks since boot): a pid that exists with
-- another start time was reused, so the run's process is gone.
ALTER TABLE runs ADD COLUMN peer_pid INTEGER;
ALTER TABLE runs ADD COLUMN peer_start INTEGER;

CREATE TABLE pipeline_states (
  pipeline TEXT PRIMARY KEY,
  state TEXT NOT NULL CHECK(state IN
    ('ok', 'running', 'late', 'missed', 'failing', 'stuck', 'crashed', 'paused')),
  since TEXT NOT NULL,             -- when it entered this state
  paused INTEGER NOT NULL DEFAULT 0,
  club_slug TEXT,
  last_run_id INTEGER,
  expected_at TEXT,                -- the slot that is late or missed
  next_expected_at TEXT,           -- the next slot of its schedule
  detail TEXT,                     -- one sentence: why this state
  alerted_state TEXT,              -- the state last alerted (or recovered: ok)
  alerted_at TEXT,
  first_seen_at TEXT NOT NULL,     -- no run yet: the schedule counts from here
  updated_at TEXT NOT NULL
);
