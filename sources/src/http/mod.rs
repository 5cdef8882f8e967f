//! `http_source`: authenticated, validated, idempotent HTTP ingest (SPEC §6).
//!
//! `POST /v1/events` takes a JSON object, a JSON array of objects or NDJSON
//! (`application/x-ndjson`), wraps each event in the envelope of SPEC §2 and answers
//! `202 Accepted` **only after the broker acknowledged every event** of the request.
//!
//! | answer | when |
//! | --- | --- |
//! | 202 | every event produced and acknowledged; body `{"accepted": n, "idempotency_keys": [...]}` |
//! | 400 | malformed JSON or UTF-8 (with position), invalid events (each with index, JSON pointer, reason), bad `Idempotency-Key`, a body not valid for its `Content-Encoding` |
//! | 401 / 403 | missing or unknown API key / disabled key |
//! | 408 | the body did not arrive within `body_timeout` |
//! | 409 | a request with the same `Idempotency-Key` is still in flight |
//! | 413 | body over `max_body_bytes` (compressed, or once decoded), more than `max_events` events, or an event whose envelope is over `max_event_bytes` (or that the broker refused as too large) |
//! | 415 | content type other than JSON / NDJSON, or a `Content-Encoding` other than `gzip`, `deflate`, `zstd`, `identity` (the answer lists them in `Accept-Encoding`) |
//! | 429 | the key's rate limit (with `Retry-After` and `RateLimit-Limit` / `-Remaining` / `-Reset`); per instance, or shared by every instance through Redis with `rate_limit_scope: cluster` |
//! | 500 | the broker rejected the events for a reason no retry can fix (unknown topic, not authorized) |
//! | 503 | broker unavailable, no acknowledgement within `ack_timeout`, key store unreachable, or shutting down (with `Retry-After`) |
//!
//! Compressed bodies (`Content-Encoding: gzip | deflate | zstd`, as SDKs, Vector, Fluent Bit and
//! OpenTelemetry collectors send them) are decoded with the decoded size capped by
//! `max_body_bytes` while decoding, so a decompression bomb costs no more memory than the limit.
//!
//! `GET /v1/stream` (WebSocket, with `stream:` set) pushes the accepted envelopes live to
//! clients, across instances through Redis Pub/Sub: see [`stream`].
//!
//! Invalid events in a batch: `invalid_events: reject_request` (default) refuses the whole
//! request with 400 and produces nothing; `accept_valid` produces the valid ones and answers 202
//! with the rejected ones listed under `rejected`.

mod auth;
pub mod contracts;
pub mod doc;
mod edge;
mod encoding;
pub mod event;
mod ratelimit;
mod server;
pub mod shape;
pub mod stream;

use std::path::PathBuf;
use std::sync::Arc;

use connector_core::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

pub use auth::{create_key, hash_key, set_disabled};

/// What to do with a request that has some invalid events.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum InvalidEvents {
    /// 400 for the whole request; nothing is produced (default).
    #[default]
    RejectRequest,
    /// Produce the valid events; 202 lists the rejected ones.
    AcceptValid,
}

/// Where per-key rate limits are kept.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitScope {
    /// In this process (default): N instances let a key through N times its limit.
    #[default]
    Instance,
    /// In Redis (`redis_url`), shared by every instance: one atomic GCRA step per request.
    /// While Redis does not answer, each instance limits on its own (counted, logged once).
    Cluster,
}

/// A key given in the configuration (use `${VAR}` for the key itself).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StaticKey {
    /// Name (the events' default `source`).
    pub name: String,
    /// The key.
    pub key: Secret,
}

/// Settings of an `http_source`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// Listen address.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Default `source` of events when neither the event nor the API key names one
    /// (default: the API key's name).
    #[serde(default)]
    pub source: Option<String>,
    /// The Kafka key (the partition key): envelope fields (`event_type`, `source`,
    /// `idempotency_key`, `trace_id`, or a field the shape lifts, such as the growth shape's
    /// `user_id`) or JSON pointers into the event as sent (`/order_id`), their values joined with
    /// `|`. Default `[user_id]` for growth events; a declared `shape` must name its own.
    #[serde(default)]
    pub partition_key: Option<Vec<String>>,
    /// The shape of accepted events: which pointers give the event type, the event time, the
    /// derived idempotency key, the fields lifted into the envelope and the payload (see
    /// [`shape`]). Unset: the growth-event shape ([`shape::ShapeConfig::growth`]: `user_id` a
    /// UUID, `event_type`, `client_timestamp` or `event_ts`, other fields into `payload`).
    #[serde(default)]
    pub shape: Option<shape::ShapeConfig>,
    /// PostgreSQL URL of the `api_keys` table (keys are looked up there when set).
    #[serde(default)]
    pub database_url: Option<Secret>,
    /// Redis URL: API-key cache and edge idempotency (`Idempotency-Key`).
    #[serde(default)]
    pub redis_url: Option<Secret>,
    /// Keys from the configuration, for simple setups.
    #[serde(default)]
    pub static_keys: Vec<StaticKey>,
    /// Accept requests without a key (name `anonymous`). Off by default.
    #[serde(default)]
    pub allow_anonymous: bool,
    /// How long a key lookup is cached (a disabled key keeps working up to this long).
    #[serde(default = "default_cache_ttl")]
    pub auth_cache_ttl: Duration,
    /// Entries of the in-process key cache used while Redis is down.
    #[serde(default = "default_lru")]
    #[schemars(range(min = 1))]
    pub auth_lru_capacity: usize,
    /// Requests per second per key when the key has no limit of its own (unset: unlimited).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub default_rate_limit: Option<u32>,
    /// Where rate limits are kept: `instance` (default) or `cluster` (Redis, needs `redis_url`).
    #[serde(default)]
    pub rate_limit_scope: RateLimitScope,
    /// Largest body accepted (bytes).
    #[serde(default = "default_max_body")]
    #[schemars(range(min = 1))]
    pub max_body_bytes: usize,
    /// Largest event accepted, measured as its envelope (bytes). Keep it below the producer's
    /// `message.max.bytes` (librdkafka's default 1,000,000) and the topic's `max.message.bytes`,
    /// with room for key and headers: a larger event is answered 413 naming its index, and
    /// nothing of its request is accepted.
    #[serde(default = "default_max_event")]
    #[schemars(range(min = 1))]
    pub max_event_bytes: usize,
    /// Most events in one request.
    #[serde(default = "default_max_events")]
    #[schemars(range(min = 1))]
    pub max_events: usize,
    /// Longest wait for the request headers.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Duration,
    /// Longest wait for the whole body.
    #[serde(default = "default_body_timeout")]
    pub body_timeout: Duration,
    /// Longest wait for the broker's acknowledgements before answering 503.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout: Duration,
    /// Requests with some invalid events.
    #[serde(default)]
    pub invalid_events: InvalidEvents,
    /// A JSON Schema file every event must also satisfy (on top of the built-in shape).
    #[serde(default)]
    pub schema_file: Option<PathBuf>,
    /// Versioned contracts: each event's payload validated against the JSON Schema of its
    /// `event_type` and `schema_version` (folder `<dir>/<event_type>/v<N>.json`).
    #[serde(default)]
    pub contracts: Option<contracts::ContractsConfig>,
    /// How long an `Idempotency-Key` stays locked while its request is in flight.
    #[serde(default = "default_lock_ttl")]
    pub idempotency_lock_ttl: Duration,
    /// How long a completed request's response is replayed for its `Idempotency-Key`.
    #[serde(default = "default_response_ttl")]
    pub idempotency_response_ttl: Duration,
    /// Apply the migrations (the `api_keys` table) at start-up when `database_url` is set.
    #[serde(default = "default_true")]
    pub auto_migrate: bool,
    /// The live stream `GET /v1/stream` (WebSocket): off unless set (`stream: {}` for the
    /// defaults). Instances share it through Redis Pub/Sub when `redis_url` is set.
    #[serde(default)]
    pub stream: Option<stream::StreamConfig>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
impl HttpSourceConfig {
    /// The partition key's fields: as configured, else `[user_id]` (growth events).
    pub fn partition_fields(&self) -> Vec<String> {
        self.partition_key
            .clone()
            .unwrap_or_else(shape::ShapeConfig::growth_partition_key)
    }

    /// The shape events are read with (the growth shape when `shape` is unset) and the
    /// partition key, compiled.
    pub fn compiled_shape(&self) -> shape::Shape {
        match &self.shape {
            Some(sh) => shape::Shape::new(sh, &self.partition_fields()),
            None => shape::Shape::growth(),
        }
    }
}
fn default_cache_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_lru() -> usize {
    10_000
}
fn default_max_body() -> usize {
    5 * 1024 * 1024
}
fn default_max_event() -> usize {
    900_000
}
fn default_max_events() -> usize {
    1000
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_lock_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_response_ttl() -> Duration {
    Duration::from_secs(86_400)
}
fn default_true() -> bool {
    true
}

/// Factory of the HTTP source.
pub struct HttpSourcePlugin;

#[async_trait]
impl SourcePlugin for HttpSourcePlugin {
    const TYPE: &'static str = "http_source";
    const DESCRIPTION: &'static str =
        "HTTP ingest: POST /v1/events (JSON, array, NDJSON), API keys, validation, 202 after broker ack";
    type Config = HttpSourceConfig;

    fn validate(c: &HttpSourceConfig) -> Result<(), Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        if c.listen.parse::<std::net::SocketAddr>().is_err() {
            issues.push(ConfigIssue::new(
                "listen",
                format!("{:?} is not an address like 127.0.0.1:8080", c.listen),
            ));
        }
        if c.partition_key.as_ref().is_some_and(|k| k.is_empty()) {
            issues.push(ConfigIssue::new(
                "partition_key",
                "needs at least one field",
            ));
        }
        match &c.shape {
            Some(sh) => issues.extend(shape::validate(sh, c.partition_key.as_deref())),
            None => issues.extend(shape::validate(
                &shape::ShapeConfig::growth(),
                Some(&c.partition_fields()),
            )),
        }
        if c.database_url.is_none() && c.static_keys.is_empty() && !c.allow_anonymous {
            issues.push(ConfigIssue::new("", "no way to authenticate: set database_url (api_keys table), static_keys, or allow_anonymous: true"));
        }
        for (i, k) in c.static_keys.iter().enumerate() {
            if k.key.expose().len() < 16 {
                issues.push(ConfigIssue::new(
                    format!("static_keys.{i}.key"),
                    "must be at least 16 characters",
                ));
            }
        }
        if c.rate_limit_scope == RateLimitScope::Cluster && c.redis_url.is_none() {
            issues.push(ConfigIssue::new(
                "rate_limit_scope",
                "cluster keeps the limits in Redis: set redis_url",
            ));
        }
        if c.ack_timeout.as_std().is_zero() {
            issues.push(ConfigIssue::new("ack_timeout", "must be more than 0"));
        }
        if let Some(st) = &c.stream {
            issues.extend(stream::validate(st));
        }
        if let Some(ct) = &c.contracts {
            issues.extend(contracts::validate(ct));
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }

    async fn build(
        config: HttpSourceConfig,
        ctx: &SourceContext,
    ) -> Result<Box<dyn Source>, ConnectorError> {
        let state = server::State::build(config, ctx).await?;
        Ok(Box::new(HttpSource {
            state: Arc::new(state),
        }))
    }
}

/// The built source.
pub struct HttpSource {
    state: Arc<server::State>,
}

#[async_trait]
impl Source for HttpSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ConnectorError> {
        server::serve(self.state, ctx.shutdown.clone()).await
    }
}
