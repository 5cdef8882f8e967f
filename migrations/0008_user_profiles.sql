-- The read store of the default pipeline's `enrich` stage (seed 001): one profile per user,
-- looked up by `user_id` in one `= any($1::uuid[])` query per batch of cache misses.
CREATE TABLE IF NOT EXISTS user_profiles (
    user_id    UUID        PRIMARY KEY,
    tier       TEXT        NOT NULL,
    region     TEXT        NOT NULL,
    signup_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The context `enrich` attached to each stored event ({"tier", "region", "signup_at",
-- "enriched_at"}, plus "fallback" when the defaults were used). Nullable: tables written by
-- the envelope mapping alone leave it empty.
ALTER TABLE growth_events ADD COLUMN IF NOT EXISTS context JSONB;
