-- Kafka offsets stored by exactly-once sinks in the same transaction as their rows.
CREATE TABLE IF NOT EXISTS connectd_offsets (
    group_id    TEXT    NOT NULL,
    topic       TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset BIGINT  NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
