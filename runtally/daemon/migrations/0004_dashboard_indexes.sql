-- Indexes for the read-only dashboard (runtally web), so each page is an index
-- range on a big database (1M runs, 10M steps, 2M errors: benchmarks/bench_web.py).
-- A run page counts each step's errors by run_step_id.
CREATE INDEX IF NOT EXISTS idx_run_errors_run_step_id
  ON run_errors (run_step_id) WHERE run_step_id IS NOT NULL;
-- "What happened to member X": newest first without scanning every error.
CREATE INDEX IF NOT EXISTS idx_run_errors_member
  ON run_errors (member_identifier, created_at) WHERE member_identifier IS NOT NULL;
-- Errors of one step across clubs (idx_run_errors_club_step needs the club).
CREATE INDEX IF NOT EXISTS idx_run_errors_step
  ON run_errors (step_name, created_at);
-- Runs of one pipeline across clubs, and runs by outcome (running, failure), newest first.
CREATE INDEX IF NOT EXISTS idx_runs_pipeline_started
  ON runs (pipeline, started_at);
CREATE INDEX IF NOT EXISTS idx_runs_outcome_started
  ON runs (outcome, started_at);
-- The overview: each pipeline's last runs and its 24 h / 7 d counts by outcome,
-- read from the index alone (no table lookup per run).
CREATE INDEX IF NOT EXISTS idx_runs_club_pipeline_outcome
  ON runs (club_slug, pipeline, started_at, outcome, duration_ms);
