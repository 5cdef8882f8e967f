-- Daily active users. On plain PostgreSQL a view; when TimescaleDB is available,
-- connectd_migrations::run replaces it by a continuous aggregate with a refresh policy.
CREATE OR REPLACE VIEW daily_active_users AS
SELECT date_trunc('day', event_ts) AS day, count(DISTINCT user_id) AS active_users
FROM growth_events
GROUP BY 1;
