-- The default events table of the seed pipeline (envelope of SPEC §2).
-- The key includes the time column so that the table can become a TimescaleDB hypertable.
CREATE TABLE IF NOT EXISTS growth_events (
    idempotency_key TEXT        NOT NULL,
    event_ts        TIMESTAMPTZ NOT NULL,
    trace_id        TEXT,
    schema_version  INTEGER     NOT NULL DEFAULT 1,
    source          TEXT        NOT NULL,
    event_type      TEXT        NOT NULL CHECK (length(event_type) <= 200),
    user_id         UUID        NOT NULL,
    payload         JSONB       NOT NULL DEFAULT '{}'::jsonb,
    ingested_at     TIMESTAMPTZ NOT NULL,
    stored_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (idempotency_key, event_ts)
);
CREATE INDEX IF NOT EXISTS growth_events_user_type_ts ON growth_events (user_id, event_type, event_ts);
