-- API keys of http_source: stored as SHA-256 hashes (hex), never in clear.
CREATE TABLE IF NOT EXISTS api_keys (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT        NOT NULL UNIQUE,
    key_hash    TEXT        NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    disabled    BOOLEAN     NOT NULL DEFAULT false,
    disabled_at TIMESTAMPTZ,
    -- Requests per second allowed for this key; NULL: the source's default.
    rate_limit  INTEGER CHECK (rate_limit IS NULL OR rate_limit > 0)
);
