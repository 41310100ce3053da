-- When the daemon received each run's run_start, on the daemon's clock.
-- started_at is the client's: a host whose clock runs a year ahead made the
-- monitor expect the pipeline's next run a year from now, and late/missed
-- were silent that long (found from outside).  The monitor counts from the
-- earlier of the two.  NULL for runs from before this migration.
ALTER TABLE runs ADD COLUMN received_at TEXT;
