-- The dashboard schema of the system runtally replaces, exactly as it was
-- (seeds/1-dashboard-db-schema.plan.md). IF NOT EXISTS adopts an existing
-- dashboard.sqlite in place, rows and ids intact.

CREATE TABLE IF NOT EXISTS runs (
  id INTEGER PRIMARY KEY,
  club_slug TEXT NOT NULL DEFAULT 'rondo',
  pipeline TEXT NOT NULL,
  started_at TEXT NOT NULL,
  finished_at TEXT,
  duration_ms INTEGER,
  outcome TEXT CHECK(outcome IN ('success', 'failure', 'running')),
  total_created INTEGER DEFAULT 0,
  total_updated INTEGER DEFAULT 0,
  total_skipped INTEGER DEFAULT 0,
  total_failed INTEGER DEFAULT 0,
  summary_json TEXT
);

CREATE INDEX IF NOT EXISTS idx_runs_club_pipeline
  ON runs (club_slug, pipeline, started_at);

CREATE TABLE IF NOT EXISTS run_steps (
  id INTEGER PRIMARY KEY,
  run_id INTEGER NOT NULL REFERENCES runs(id),
  club_slug TEXT NOT NULL DEFAULT 'rondo',
  step_name TEXT NOT NULL,
  started_at TEXT NOT NULL,
  finished_at TEXT,
  duration_ms INTEGER,
  outcome TEXT CHECK(outcome IN ('success', 'failure', 'skipped')),
  created_count INTEGER DEFAULT 0,
  updated_count INTEGER DEFAULT 0,
  skipped_count INTEGER DEFAULT 0,
  failed_count INTEGER DEFAULT 0,
  detail_json TEXT
);

CREATE INDEX IF NOT EXISTS idx_run_steps_run_id
  ON run_steps (run_id);

CREATE TABLE IF NOT EXISTS run_errors (
  id INTEGER PRIMARY KEY,
  run_id INTEGER NOT NULL REFERENCES runs(id),
  run_step_id INTEGER REFERENCES run_steps(id),
  club_slug TEXT NOT NULL DEFAULT 'rondo',
  step_name TEXT NOT NULL,
  member_identifier TEXT,
  error_message TEXT NOT NULL,
  error_stack TEXT,
  created_at TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS idx_run_errors_run_id
  ON run_errors (run_id);

CREATE INDEX IF NOT EXISTS idx_run_errors_club_step
  ON run_errors (club_slug, step_name, created_at);
