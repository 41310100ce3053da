-- Parked events are bounded: by bytes per peer uid and in total, and by age
-- (expired into dead_letters). Each row records its peer and its size so the
-- bounds are kept without reading the payloads.

ALTER TABLE parked_events ADD COLUMN peer_uid INTEGER;
ALTER TABLE parked_events ADD COLUMN size INTEGER NOT NULL DEFAULT 0;

UPDATE parked_events SET size = length(payload);

CREATE INDEX idx_parked_events_parked_at ON parked_events (parked_at);
