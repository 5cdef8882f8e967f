//! The read stores `enrich` looks context up in: one round trip for all the keys of a batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use connectd_redis::{redis, RedisCallError, RedisConn};
use serde_json::{Map, Value};

/// Why a lookup failed. Every variant is treated as "the store is unavailable" by the
/// transform (breaker, `on_lookup_error`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL refused the query or could not be reached.
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    /// Redis could not be reached or answered with an error.
    #[error("{0}")]
    Redis(#[from] RedisCallError),
    /// No answer within `lookup_timeout`.
    #[error("lookup timed out after {0:?}")]
    Timeout(Duration),
    /// A row the query returned cannot be used (no key column, not an object).
    #[error("bad row: {0}")]
    BadRow(String),
}

/// Found context objects by key; keys absent from the map were not found.
pub type Found = HashMap<Arc<str>, Map<String, Value>>;

/// A built store.
pub enum Store {
    /// `query` wrapped as `select row_to_json(t)::text from (<query>) t`, `$1` = the keys as
    /// `text[]`; `key_column` names the key in each row (removed from the context object).
    Postgres {
        /// The pool (connected lazily: a store that is down at start does not stop the
        /// transform; its breaker opens instead).
        pool: sqlx::PgPool,
        /// The wrapped statement.
        sql: String,
        /// Column holding the key.
        key_column: String,
    },
    /// `HGETALL` of `key_template` (`{key}` replaced) for each key, in one pipeline; an empty
    /// hash is "not found".
    Redis {
        /// The connection.
        conn: Arc<RedisConn>,
        /// Key template.
        key_template: String,
    },
}

/// The statement sent for a Postgres store's `query`.
pub fn wrap_query(query: &str) -> String {
    format!(
        "select row_to_json(t)::text from ({}) as t",
        query.trim().trim_end_matches(';')
    )
}

impl Store {
    /// Looks up every key in one round trip.
    pub async fn lookup(&self, keys: &[Arc<str>]) -> Result<Found, StoreError> {
        match self {
            Store::Postgres {
                pool,
                sql,
                key_column,
            } => {
                let arg: Vec<&str> = keys.iter().map(|k| &**k).collect();
                let rows: Vec<String> = sqlx::query_scalar(sql).bind(arg).fetch_all(pool).await?;
                let wanted: HashMap<&str, &Arc<str>> = keys.iter().map(|k| (&**k, k)).collect();
                let mut found = Found::with_capacity(rows.len());
                for row in rows {
                    let mut obj = match serde_json::from_str::<Value>(&row) {
                        Ok(Value::Object(m)) => m,
                        _ => return Err(StoreError::BadRow(row)),
                    };
                    let key = match obj.remove(key_column) {
                        Some(Value::String(s)) => s,
                        Some(Value::Number(n)) => n.to_string(),
                        _ => {
                            return Err(StoreError::BadRow(format!(
                                "the query must return the key column {key_column:?} (text or number): {row}"
                            )))
                        }
                    };
                    if let Some(k) = wanted.get(key.as_str()) {
                        // First row of a key wins (a query should return one per key).
                        found.entry(Arc::clone(k)).or_insert(obj);
                    }
                }
                Ok(found)
            }
            Store::Redis { conn, key_template } => {
                let mut pipe = redis::pipe();
                for k in keys {
                    pipe.cmd("HGETALL").arg(key_template.replace("{key}", k));
                }
                let replies: Vec<HashMap<String, String>> = conn.pipeline(&pipe).await?;
                if replies.len() != keys.len() {
                    return Err(StoreError::BadRow(format!(
                        "{} replies for {} keys",
                        replies.len(),
                        keys.len()
                    )));
                }
                Ok(keys
                    .iter()
                    .zip(replies)
                    .filter(|(_, h)| !h.is_empty())
                    .map(|(k, h)| {
                        let obj = h.into_iter().map(|(f, v)| (f, Value::String(v))).collect();
                        (Arc::clone(k), obj)
                    })
                    .collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_wrapped_for_row_to_json() {
        assert_eq!(
            wrap_query(" select a from t where k = any($1);\n"),
            "select row_to_json(t)::text from (select a from t where k = any($1)) as t"
        );
    }
}
