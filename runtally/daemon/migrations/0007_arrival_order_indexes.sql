-- Listings follow the order the daemon received rows in (id), not the
-- clients' clocks (issue 13).  An index on equality columns alone ends in the
-- rowid, so "WHERE pipeline = ? ORDER BY id DESC LIMIT n" is an index range
-- read newest first; the (column, started_at) indexes of 0004 made SQLite
-- read and sort every row of the pipeline instead (330 ms p95 on 1M runs).
-- The seed's own indexes (0001) stay exactly as they are.
DROP INDEX IF EXISTS idx_runs_pipeline_started;
CREATE INDEX idx_runs_pipeline_id ON runs (pipeline);
DROP INDEX IF EXISTS idx_runs_outcome_started;
CREATE INDEX idx_runs_outcome_id ON runs (outcome);
DROP INDEX IF EXISTS idx_run_errors_step;
CREATE INDEX idx_run_errors_step_id ON run_errors (step_name);
CREATE INDEX idx_run_errors_club_step_id ON run_errors (club_slug, step_name);
DROP INDEX IF EXISTS idx_run_errors_member;
CREATE INDEX idx_run_errors_member_id
  ON run_errors (member_identifier) WHERE member_identifier IS NOT NULL;
