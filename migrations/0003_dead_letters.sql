-- Dead letters stored by dlq_sink, one row per origin record (idempotent on its coordinates).
CREATE TABLE IF NOT EXISTS dead_letters (
    id                 BIGSERIAL PRIMARY KEY,
    dlq_topic          TEXT        NOT NULL,
    original_topic     TEXT        NOT NULL,
    original_partition INTEGER     NOT NULL,
    original_offset    BIGINT      NOT NULL,
    connector          TEXT        NOT NULL,
    error_class        TEXT        NOT NULL,
    error_message      TEXT        NOT NULL,
    attempts           INTEGER     NOT NULL DEFAULT 1,
    record_key         BYTEA,
    payload            BYTEA       NOT NULL,
    payload_json       JSONB,
    headers            JSONB       NOT NULL DEFAULT '{}'::jsonb,
    first_seen         TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen          TIMESTAMPTZ NOT NULL DEFAULT now(),
    failed_at          TIMESTAMPTZ,
    replay_count       INTEGER     NOT NULL DEFAULT 0,
    replayed_at        TIMESTAMPTZ,
    UNIQUE (original_topic, original_partition, original_offset, connector)
);
CREATE INDEX IF NOT EXISTS dead_letters_connector_class ON dead_letters (connector, error_class, first_seen);
