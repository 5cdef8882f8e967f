-- Event-time state of `aggregate` connectors, written in the same transaction as their window
-- rows and their offsets (connectd_offsets), so a crash never leaves them out of step.
-- Per input partition: the largest event time seen, and when it last delivered a record
-- (a partition quiet for idle_timeout stops holding the watermark back).
CREATE TABLE IF NOT EXISTS connectd_agg_partitions (
    group_id       TEXT        NOT NULL,
    topic          TEXT        NOT NULL,
    partition      INTEGER     NOT NULL,
    max_event_ts   TIMESTAMPTZ,
    last_record_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
-- Per connector: its watermark (never moves back). Every batch locks this row first, so the
-- batches of one connector commit one at a time, across slots and processes.
CREATE TABLE IF NOT EXISTS connectd_agg_watermarks (
    group_id   TEXT PRIMARY KEY,
    watermark  TIMESTAMPTZ,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
