-- What the daemon itself keeps: what it did, what it refused, and events that
-- arrived before the run or step they refer to.

CREATE TABLE audit_log (
  id INTEGER PRIMARY KEY,
  ts TEXT NOT NULL,
  level TEXT NOT NULL CHECK(level IN ('debug', 'info', 'warning', 'error')),
  run_id INTEGER REFERENCES runs(id),
  scope TEXT NOT NULL,
  event TEXT NOT NULL,
  message TEXT NOT NULL,
  data_json TEXT
);

CREATE INDEX idx_audit_log_ts ON audit_log (ts);

CREATE TABLE dead_letters (
  id INTEGER PRIMARY KEY,
  received_at TEXT NOT NULL,
  source TEXT NOT NULL,
  peer_uid INTEGER,
  peer_gid INTEGER,
  peer_pid INTEGER,
  event_id TEXT,
  reason TEXT NOT NULL,
  frame BLOB
);

CREATE INDEX idx_dead_letters_received_at ON dead_letters (received_at);

-- An event parked until the run or step it refers to exists. It is written in
-- the same transaction as its ack, and removed in the one that applies it.
CREATE TABLE parked_events (
  event_id TEXT PRIMARY KEY,
  waiting_for TEXT NOT NULL,
  parked_at TEXT NOT NULL,
  payload BLOB NOT NULL
);

CREATE INDEX idx_parked_events_waiting_for ON parked_events (waiting_for);
