-- A dead letter is idempotent on what it is, not on where its copy sat: one row per
-- (connector, error class, the record's idempotency key, replay generation). A poison event
-- redelivered after a crash reaches the failing connector again at a new offset; before this
-- migration that made a second row (845 rows for 400 poison events after 10 kills).
--
--   identity     'key:<idempotency key>' when the record has one, else
--                'origin:<topic>/<partition>/<offset>' (the old behaviour)
--   copies       how many distinct copies were dead-lettered (a redelivery of the same DLQ
--                message is not a new copy)
--   origins      '<topic>/<partition>/<offset>' of each copy, the first 64 (past 64 copies a
--                redelivered one may be counted again)
--
--   generation   the record's `connectd.replay.count` when it failed (0: never replayed). Part
--                of the identity: a replayed record that fails again is a new fact, a row of
--                its own, which the replay loop guard counts. (`replay_count` is not: `connectd
--                dlq replay` bumps it on the row it replays.)
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS idempotency_key TEXT;
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS identity TEXT;
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS copies INTEGER NOT NULL DEFAULT 1;
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS origins TEXT[];

-- Existing rows: keyed by idempotency key where that is unique, by origin otherwise (no row is
-- deleted or merged by a migration).
UPDATE dead_letters SET generation = (headers->>'connectd.replay.count')::int
 WHERE headers->>'connectd.replay.count' ~ '^[0-9]{1,9}$';
UPDATE dead_letters SET idempotency_key = payload_json->>'idempotency_key'
 WHERE idempotency_key IS NULL AND jsonb_typeof(payload_json->'idempotency_key') = 'string'
   AND payload_json->>'idempotency_key' <> '';
WITH ranked AS (
    SELECT id, row_number() OVER (PARTITION BY connector, error_class, idempotency_key, generation ORDER BY id) AS n
      FROM dead_letters WHERE idempotency_key IS NOT NULL AND identity IS NULL
)
UPDATE dead_letters d SET identity = 'key:' || d.idempotency_key
  FROM ranked r WHERE r.id = d.id AND r.n = 1;
UPDATE dead_letters
   SET identity = 'origin:' || original_topic || '/' || original_partition || '/' || original_offset
 WHERE identity IS NULL;
UPDATE dead_letters
   SET origins = ARRAY[original_topic || '/' || original_partition || '/' || original_offset]
 WHERE origins IS NULL;
ALTER TABLE dead_letters ALTER COLUMN origins SET NOT NULL;
ALTER TABLE dead_letters ALTER COLUMN identity SET NOT NULL;

-- The old unique constraint on the origin coordinates gives way to the identity.
DO $$
DECLARE c TEXT;
BEGIN
    FOR c IN SELECT conname FROM pg_constraint
              WHERE conrelid = 'dead_letters'::regclass AND contype = 'u'
    LOOP
        EXECUTE format('ALTER TABLE dead_letters DROP CONSTRAINT %I', c);
    END LOOP;
END $$;
CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_identity
    ON dead_letters (connector, error_class, identity, generation);
CREATE INDEX IF NOT EXISTS dead_letters_origin
    ON dead_letters (original_topic, original_partition, original_offset);
