-- Idempotency keys: every event names its run, step or error by a
-- client-generated uid, so a replayed or repeated event finds its row.
-- Rows adopted from the old schema keep uid NULL (UNIQUE allows many NULLs).
-- end_key is "<ts ms, 15 digits>:<event id>" of the run_end/step_end applied,
-- so two different ends of one step resolve the same way in any order.

ALTER TABLE runs ADD COLUMN uid TEXT;
ALTER TABLE runs ADD COLUMN parent_run_id INTEGER REFERENCES runs(id);
ALTER TABLE runs ADD COLUMN parent_uid TEXT;
ALTER TABLE runs ADD COLUMN meta_json TEXT;
ALTER TABLE runs ADD COLUMN end_key TEXT;
ALTER TABLE run_steps ADD COLUMN uid TEXT;
ALTER TABLE run_steps ADD COLUMN end_key TEXT;
ALTER TABLE run_errors ADD COLUMN uid TEXT;

CREATE UNIQUE INDEX idx_runs_uid ON runs (uid);
CREATE UNIQUE INDEX idx_run_steps_uid ON run_steps (uid);
CREATE UNIQUE INDEX idx_run_errors_uid ON run_errors (uid);
CREATE INDEX idx_runs_parent_uid ON runs (parent_uid) WHERE parent_uid IS NOT NULL;
CREATE INDEX idx_runs_parent_run_id ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
CREATE INDEX idx_runs_started_at ON runs (started_at);
CREATE INDEX idx_run_errors_created_at ON run_errors (created_at);
