//! The HTTP server of `http_source`: routes, limits, and the accept loop with timeouts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use connector_core::metrics::{Counter, Histogram, Metrics, LATENCY_BUCKETS};
use connector_core::prelude::*;
use connector_core::EmitError;
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};

use super::auth::{AuthMetrics, AuthResult, Authenticator, KeyInfo};
use super::doc::{Doc, Json};
use super::edge::{Claim, Edge, Stored};
use super::encoding::{self, Coding, DecodeError};
use super::event::{parse_body, BodyError, FieldError, RequestFacts};
use super::ratelimit::{Decision, RateLimiter, Scope};
use super::shape;
use super::stream::{self, Filter, Hub, Refused};
use super::{HttpSourceConfig, InvalidEvents, RateLimitScope};
use connectd_redis::RedisConn;

struct HttpMetrics {
    base: Metrics,
    latency: Histogram,
    accepted: Counter,
    rejected: Counter,
    edge_hits: Counter,
    edge_bypassed: Counter,
}

/// Everything a request needs.
pub struct State {
    config: HttpSourceConfig,
    name: String,
    emitter: Arc<dyn Emitter>,
    output: String,
    auth: Authenticator,
    edge: Option<Edge>,
    limiter: RateLimiter,
    schema: Option<jsonschema::Validator>,
    contracts: Option<super::contracts::Contracts>,
    /// The event shape (the growth shape without `shape:`) with the partition key, compiled once.
    shape: shape::Shape,
    metrics: HttpMetrics,
    shutdown: Shutdown,
    hub: Option<Arc<Hub>>,
}

fn permanent(class: &str, msg: impl Into<String>) -> ConnectorError {
    ConnectorError::permanent(class, msg)
}

impl State {
    /// Opens the database pool (lazily), Redis, the schema file; applies migrations.
    pub async fn build(
        config: HttpSourceConfig,
        ctx: &SourceContext,
    ) -> Result<Self, ConnectorError> {
        let pool = match &config.database_url {
            Some(url) => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(2))
                    .connect_lazy(url.expose())
                    .map_err(|e| permanent("bad_database_url", e.to_string()))?;
                if config.auto_migrate {
                    connectd_migrations::run(&pool)
                        .await
                        .map_err(|e| ConnectorError::retriable("migrate", e.to_string()))?;
                }
                Some(pool)
            }
            None => None,
        };
        let redis = match &config.redis_url {
            Some(url) => Some(Arc::new(
                RedisConn::new(url.expose(), Duration::from_millis(250))
                    .map_err(|e| permanent("bad_redis_url", e.to_string()))?,
            )),
            None => None,
        };
        let schema = match &config.schema_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    permanent(
                        "schema_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let value: Value = serde_json::from_str(&text).map_err(|e| {
                    permanent(
                        "schema_file",
                        format!("{} is not JSON: {e}", path.display()),
                    )
                })?;
                Some(
                    jsonschema::options()
                        .should_validate_formats(true)
                        .build(&value)
                        .map_err(|e| {
                            permanent(
                                "schema_file",
                                format!("{} is not a valid JSON Schema: {e}", path.display()),
                            )
                        })?,
                )
            }
            None => None,
        };
        let contracts = match &config.contracts {
            Some(c) => {
                let loaded = super::contracts::Contracts::load(c)
                    .map_err(|e| permanent("contracts", e.to_string()))?;
                tracing::info!(connector = %ctx.name, event_types = loaded.len(), dir = %c.dir.display(), "contracts loaded");
                Some(loaded)
            }
            None => None,
        };
        let m = &ctx.metrics;
        let auth = Authenticator::new(
            config
                .static_keys
                .iter()
                .map(|k| (k.name.clone(), k.key.expose().to_string()))
                .collect(),
            pool,
            redis.clone(),
            config.auth_cache_ttl.as_std(),
            config.auth_lru_capacity,
            config.allow_anonymous,
            AuthMetrics {
                cache_hits: m.counter(
                    "connectd_http_auth_cache_hits_total",
                    "API-key lookups answered by Redis or the in-process cache",
                ),
                cache_misses: m.counter(
                    "connectd_http_auth_cache_misses_total",
                    "API-key lookups that went to the database",
                ),
            },
        );
        let limiter = RateLimiter::new(match (config.rate_limit_scope, &redis) {
            (RateLimitScope::Cluster, Some(r)) => Scope::Cluster {
                redis: r.clone(),
                prefix: format!("connectd:ratelimit:{}", ctx.name),
                fallbacks: m.counter(
                    "connectd_http_rate_limit_fallback_total",
                    "Rate-limit decisions taken per instance because Redis did not answer",
                ),
            },
            _ => Scope::Instance,
        });
        let hub = config
            .stream
            .clone()
            .map(|sc| Hub::new(&ctx.name, sc, redis.clone(), m));
        let edge = redis.map(|r| {
            Edge::new(
                r,
                &ctx.name,
                config.idempotency_lock_ttl.as_std(),
                config.idempotency_response_ttl.as_std(),
            )
        });
        Ok(Self {
            metrics: HttpMetrics {
                base: m.clone(),
                latency: m.histogram(
                    "connectd_http_request_seconds",
                    "HTTP request latency",
                    LATENCY_BUCKETS,
                ),
                accepted: m.counter(
                    "connectd_http_events_accepted_total",
                    "Events acknowledged by the broker and answered 202",
                ),
                rejected: m.counter(
                    "connectd_http_events_rejected_total",
                    "Events refused as invalid",
                ),
                edge_hits: m.counter(
                    "connectd_http_edge_dedup_hits_total",
                    "Requests answered from the Idempotency-Key store (replay or 409)",
                ),
                edge_bypassed: m.counter(
                    "connectd_http_edge_dedup_bypassed_total",
                    "Requests with Idempotency-Key handled without the store (Redis down)",
                ),
            },
            name: ctx.name.clone(),
            emitter: ctx.emitter.clone(),
            output: ctx.output_topic.clone(),
            auth,
            edge,
            limiter,
            schema,
            contracts,
            shape: config.compiled_shape(),
            shutdown: ctx.shutdown.clone(),
            hub,
            config,
        })
    }

    fn count(&self, route: &str, status: StatusCode) {
        self.metrics
            .base
            .with_label("route", route)
            .with_label("status", status.as_str())
            .counter(
                "connectd_http_requests_total",
                "HTTP requests by route and status",
            )
            .inc();
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    json_response(
        status,
        json!({"error": code, "message": message.into()}).to_string(),
    )
}

fn retry_after(mut r: Response, secs: u64) -> Response {
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    r
}

/// 429 with `Retry-After` and the `RateLimit-*` headers.
fn rate_limited(d: &Decision) -> Response {
    let mut r = retry_after(
        error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("more than {} requests per second for this key", d.limit),
        ),
        d.retry_after.as_secs_f64().ceil() as u64,
    );
    let h = r.headers_mut();
    h.insert("ratelimit-limit", HeaderValue::from(d.limit));
    h.insert("ratelimit-remaining", HeaderValue::from(d.remaining));
    h.insert(
        "ratelimit-reset",
        HeaderValue::from(d.reset.as_secs_f64().ceil().max(1.0) as u64),
    );
    r
}

/// The key's holder, or the answer to a request whose key was refused: 401 missing (with
/// `how_to_send`) or unknown, 403 disabled, 503 while the key store is unreachable.
// The Err is the response itself, handed straight back to axum: boxing it would only add an
// allocation to the refusal path.
#[allow(clippy::result_large_err)]
fn authorized(result: AuthResult, how_to_send: &str) -> Result<KeyInfo, Response> {
    match result {
        AuthResult::Ok(i) => Ok(i),
        AuthResult::Missing => Err(error(
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
            how_to_send,
        )),
        AuthResult::Unknown => Err(error(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "unknown API key",
        )),
        AuthResult::Disabled(_) => Err(error(
            StatusCode::FORBIDDEN,
            "api_key_disabled",
            "this API key is disabled",
        )),
        AuthResult::Unavailable => Err(retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "auth_unavailable",
                "the key store is unreachable; retry",
            ),
            2,
        )),
    }
}

fn presented_key(h: &HeaderMap) -> Option<String> {
    if let Some(v) = h.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_string());
    }
    h.get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").map(|k| k.trim().to_string()))
}

fn trace_id(h: &HeaderMap) -> String {
    // W3C traceparent: 00-<trace id>-<span id>-<flags>
    if let Some(tp) = h.get("traceparent").and_then(|v| v.to_str().ok()) {
        let parts: Vec<&str> = tp.split('-').collect();
        if parts.len() == 4
            && parts[1].len() == 32
            && parts[1].bytes().all(|b| b.is_ascii_hexdigit())
        {
            return parts[1].to_ascii_lowercase();
        }
    }
    if let Some(t) = h.get("x-trace-id").and_then(|v| v.to_str().ok()) {
        if !t.is_empty() && t.len() <= 128 && t.bytes().all(|b| b.is_ascii_graphic()) {
            return t.to_string();
        }
    }
    uuid::Uuid::new_v4().simple().to_string()
}

/// The codings of `Content-Encoding` (every header line, in order).
fn content_codings(h: &HeaderMap) -> Result<Vec<Coding>, DecodeError> {
    let mut out = Vec::new();
    for v in h.get_all(header::CONTENT_ENCODING) {
        let v = v
            .to_str()
            .map_err(|_| DecodeError::Unsupported(String::from_utf8_lossy(v.as_bytes()).into()))?;
        out.extend(encoding::parse(v)?);
    }
    Ok(out)
}

fn unsupported_encoding(e: &DecodeError) -> Response {
    let mut r = error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_content_encoding",
        e.to_string(),
    );
    r.headers_mut().insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static(encoding::SUPPORTED),
    );
    r
}

/// Decodes a compressed body; large ones on the blocking pool (decompression is CPU work).
async fn decode_body(
    body: Bytes,
    codings: Vec<Coding>,
    limit: usize,
) -> Result<Bytes, DecodeError> {
    if body.len() <= 64 * 1024 {
        return encoding::decode(&body, &codings, limit).map(Bytes::from);
    }
    connector_core::task::spawn_blocking(move || {
        encoding::decode(&body, &codings, limit).map(Bytes::from)
    })
    .await
    .unwrap_or_else(|e| {
        Err(DecodeError::Invalid {
            coding: "body",
            message: format!("decoder task failed: {e}"),
        })
    })
}

async fn events(AxState(s): AxState<Arc<State>>, req: Request) -> Response {
    let started = Instant::now();
    let response = handle_events(&s, req).await;
    s.metrics.latency.observe(started.elapsed().as_secs_f64());
    s.count("/v1/events", response.status());
    response
}

async fn handle_events(s: &State, req: Request) -> Response {
    if s.shutdown.is_triggered() {
        return retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down; retry",
            ),
            1,
        );
    }
    let headers = req.headers().clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let ndjson = match mime.as_str() {
        "application/json" => false,
        "application/x-ndjson" | "application/ndjson" => true,
        other => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("content type {other:?} is not accepted; use application/json or application/x-ndjson"),
            )
        }
    };
    let codings = match content_codings(&headers) {
        Ok(c) => c,
        Err(e) => return unsupported_encoding(&e),
    };
    // Authentication.
    let key_info = match authorized(
        s.auth.check(presented_key(&headers).as_deref()).await,
        "send the key in x-api-key or Authorization: Bearer",
    ) {
        Ok(i) => i,
        Err(r) => return r,
    };
    if let Some(rate) = key_info.rate_limit.or(s.config.default_rate_limit) {
        let d = s.limiter.check(&key_info.name, rate).await;
        if !d.allowed {
            return rate_limited(&d);
        }
    }
    let idem_header = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 200 && k.bytes().all(|b| b.is_ascii_graphic()) => {
                Some(k.to_string())
            }
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 200 visible ASCII characters",
                )
            }
        },
    };
    // Body, bounded in size and time.
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > s.config.max_body_bytes {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "body of {len} bytes; at most {} allowed",
                    s.config.max_body_bytes
                ),
            );
        }
    }
    let body = Limited::new(req.into_body(), s.config.max_body_bytes);
    let bytes = match tokio::time::timeout(s.config.body_timeout.as_std(), body.collect()).await {
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the body did not arrive in time",
            )
        }
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("body over {} bytes", s.config.max_body_bytes),
                );
            }
            return error(
                StatusCode::BAD_REQUEST,
                "body_error",
                format!("cannot read the body: {e}"),
            );
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    let bytes = if codings.is_empty() {
        bytes
    } else {
        match decode_body(bytes, codings, s.config.max_body_bytes).await {
            Ok(b) => b,
            Err(e @ DecodeError::TooLarge(_)) => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    e.to_string(),
                )
            }
            Err(e @ DecodeError::Invalid { .. }) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_content_encoding",
                    e.to_string(),
                )
            }
            Err(e @ DecodeError::Unsupported(_)) => return unsupported_encoding(&e),
        }
    };
    // Edge idempotency.
    let claimed = match (&s.edge, &idem_header) {
        (Some(edge), Some(k)) => match edge.claim(&key_info.name, k).await {
            Claim::Claimed => true,
            Claim::InFlight => {
                s.metrics.edge_hits.inc();
                return error(
                    StatusCode::CONFLICT,
                    "request_in_flight",
                    "a request with this Idempotency-Key is still being handled",
                );
            }
            Claim::Replay(stored) => {
                s.metrics.edge_hits.inc();
                let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
                let mut r = json_response(status, stored.body);
                r.headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                return r;
            }
            Claim::Bypassed => {
                s.metrics.edge_bypassed.inc();
                tracing::warn!(connector = %s.name, "redis unavailable: Idempotency-Key handled without the edge store");
                false
            }
        },
        _ => false,
    };
    let (status, body) = ingest(
        s,
        &bytes,
        ndjson,
        &key_info.name,
        idem_header.as_deref(),
        &headers,
    )
    .await;
    if claimed {
        if let (Some(edge), Some(k)) = (&s.edge, &idem_header) {
            edge.finish(
                &key_info.name,
                k,
                &Stored {
                    status: status.as_u16(),
                    body: body.clone(),
                },
            )
            .await;
        }
    }
    let r = json_response(status, body);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        return retry_after(r, 1);
    }
    r
}

fn body_err(status: StatusCode, code: &str, message: String) -> (StatusCode, String) {
    (
        status,
        json!({"error": code, "message": message}).to_string(),
    )
}

/// Parses, validates, produces; returns the status and JSON body.
///
/// The JSON Schema and the versioned contracts validate `serde_json::Value`s; without either,
/// the events are parsed into borrowed [`Json`] trees, which cost a fraction of a `Value` to
/// build and drop. The envelopes are the same bytes either way.
async fn ingest(
    s: &State,
    bytes: &[u8],
    ndjson: bool,
    principal: &str,
    idem: Option<&str>,
    headers: &HeaderMap,
) -> (StatusCode, String) {
    fn refused(e: BodyError) -> (StatusCode, String) {
        let status = match e {
            BodyError::TooMany { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        body_err(status, e.code(), e.message())
    }
    if s.schema.is_none() && s.contracts.is_none() {
        match parse_body::<Json<'_>>(bytes, ndjson, s.config.max_events) {
            Ok(events) => accept(s, &events, principal, idem, headers).await,
            Err(e) => refused(e),
        }
    } else {
        match parse_body::<Value>(bytes, ndjson, s.config.max_events) {
            Ok(events) => accept(s, &events, principal, idem, headers).await,
            Err(e) => refused(e),
        }
    }
}

/// Validates parsed events, produces their envelopes; returns the status and JSON body.
async fn accept<D: Doc + Sync>(
    s: &State,
    events: &[D],
    principal: &str,
    idem: Option<&str>,
    headers: &HeaderMap,
) -> (StatusCode, String) {
    let trace = trace_id(headers);
    let source = s
        .config
        .source
        .clone()
        .unwrap_or_else(|| principal.to_string());
    let facts = RequestFacts {
        source: &source,
        header_key: idem,
        count: events.len(),
        trace_id: &trace,
        now: chrono::Utc::now(),
    };
    let mut good = Vec::with_capacity(events.len());
    let mut bad: Vec<FieldError> = Vec::new();
    for (i, ev) in events.iter().enumerate() {
        let mut errs = Vec::new();
        if let Some(schema) = &s.schema {
            // `ingest` parses into `Value`s whenever a schema is set; never skip it silently.
            let Some(value) = ev.as_value() else {
                bad.push(FieldError {
                    index: i,
                    pointer: String::new(),
                    message: "internal: the JSON Schema needs the event as a JSON value".into(),
                });
                continue;
            };
            for e in schema.iter_errors(value) {
                errs.push(FieldError {
                    index: i,
                    pointer: e.instance_path().as_str().to_string(),
                    message: e.to_string(),
                });
            }
        }
        let checked = s.shape.envelope(i, ev, &facts).and_then(|mut env| {
            env.partition_key = s.shape.partition_key(&env).map_err(|(pointer, m)| {
                vec![FieldError {
                    index: i,
                    pointer,
                    message: format!("{m} (the partition key)"),
                }]
            })?;
            if let Some(c) = &s.contracts {
                // `ingest` parses into `Value`s whenever contracts are set.
                let (Some(ev), Some(payload)) = (ev.as_value(), env.payload()) else {
                    return Err(vec![FieldError {
                        index: i,
                        pointer: String::new(),
                        message: "internal: the contracts need the event as a JSON value".into(),
                    }]);
                };
                env.schema_version = c.check(i, ev, env.event_type(), &payload)?;
            }
            Ok(env)
        });
        match checked {
            Ok(env) if errs.is_empty() => good.push(env),
            Ok(_) => bad.extend(errs),
            Err(mut e) => {
                e.extend(errs);
                bad.extend(e);
            }
        }
    }
    let n_bad_events = {
        let mut idx: Vec<usize> = bad.iter().map(|e| e.index).collect();
        idx.dedup();
        idx.len()
    };
    if !bad.is_empty() {
        s.metrics.rejected.add(n_bad_events as u64);
        if s.config.invalid_events == InvalidEvents::RejectRequest || good.is_empty() {
            return (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_events", "message": format!("{n_bad_events} of {} events are invalid; nothing was accepted", events.len()), "errors": bad}).to_string(),
            );
        }
    }
    // Every event must fit in one broker message: a too-large one is the client's to fix (413),
    // never a 503 that every client would retry.
    let mut outputs: Vec<Output> = Vec::with_capacity(good.len());
    let mut too_large = Vec::new();
    // The stream's copy of what is produced: one JSON array, published after the ack.
    let mut streamed = s.hub.as_ref().map(|_| b"[".to_vec());
    // Each envelope's buffer is sized after the previous one (a request's events are alike):
    // growing it from empty cost several reallocations per event.
    let mut size_hint = 256;
    for e in &good {
        // Written straight from the parsed event (no intermediate tree); cannot fail, every key
        // being a string.
        let mut value = Vec::with_capacity(size_hint);
        if serde_json::to_writer(&mut value, e).is_err() {
            value.clear();
        }
        size_hint = value.len() + 64;
        if let Some(a) = streamed.as_mut() {
            if a.len() > 1 {
                a.push(b',');
            }
            a.extend_from_slice(&value);
        }
        if value.len() > s.config.max_event_bytes {
            too_large.push(
                json!({"index": e.index, "bytes": value.len(), "limit": s.config.max_event_bytes}),
            );
            continue;
        }
        outputs.push(Output::new(
            Record::new(value).with_key(e.partition_key.clone()),
        ));
    }
    if !too_large.is_empty() {
        s.metrics.rejected.add(too_large.len() as u64);
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": "event_too_large", "message": format!("{} event(s) over max_event_bytes ({} bytes as an envelope); nothing was accepted", too_large.len(), s.config.max_event_bytes), "errors": too_large}).to_string(),
        );
    }
    let n = outputs.len();
    match tokio::time::timeout(s.config.ack_timeout.as_std(), s.emitter.emit(outputs)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let (status, code, msg) = match e {
                EmitError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down; retry".to_string()),
                EmitError::QueueFull => (StatusCode::SERVICE_UNAVAILABLE, "overloaded", "the producer queue is full; retry".to_string()),
                EmitError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable", format!("the broker did not acknowledge: {m}")),
                // Permanent: retrying the same request cannot succeed.
                EmitError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "event_too_large", format!("the broker refused an event as too large ({m}); lower max_event_bytes below the producer's message.max.bytes")),
                EmitError::Rejected(m) => (StatusCode::INTERNAL_SERVER_ERROR, "broker_rejected", format!("the broker rejected the events: {m}")),
            };
            tracing::warn!(connector = %s.name, topic = %s.output, error = %msg, "events not acknowledged");
            return (status, json!({"error": code, "message": msg}).to_string());
        }
        Err(_) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "broker_timeout", "message": "the broker did not acknowledge in time; retry (the request is idempotent)"}).to_string(),
            )
        }
    }
    s.metrics.accepted.add(n as u64);
    if let (Some(hub), Some(mut a)) = (&s.hub, streamed) {
        a.push(b']');
        // serde_json writes UTF-8 only: checked here rather than assumed.
        match String::from_utf8(a) {
            Ok(a) => hub.publish(a),
            Err(e) => {
                tracing::error!(connector = %s.name, error = %e, "stream message is not UTF-8; not published")
            }
        }
    }
    let keys: Vec<&str> = good.iter().map(|e| e.idempotency_key.as_str()).collect();
    let mut body = json!({"accepted": n, "idempotency_keys": keys});
    if !bad.is_empty() {
        body["rejected"] = json!(bad);
    }
    (StatusCode::ACCEPTED, body.to_string())
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, json!({"status": "ok"}).to_string())
}

async fn readyz(AxState(s): AxState<Arc<State>>) -> Response {
    if !s.shutdown.is_triggered() && s.emitter.ready().await {
        json_response(StatusCode::OK, json!({"status": "ready"}).to_string())
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not ready", "reason": "broker unreachable or shutting down"})
                .to_string(),
        )
    }
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; POST /v1/events",
    )
}

/// Query parameters of `GET /v1/stream`.
#[derive(Debug, serde::Deserialize)]
struct StreamQuery {
    /// Comma-separated event types (default: all).
    event_type: Option<String>,
    /// Comma-separated user ids (default: all).
    user_id: Option<String>,
    /// Refused: keys in URLs end up in access logs and browser history.
    key: Option<String>,
    /// Refused, as `key`.
    api_key: Option<String>,
}

/// `GET /v1/stream`: authenticates (header, or `connectd.key.<key>` in the
/// `Sec-WebSocket-Protocol` offer), takes a place, upgrades.
async fn stream_route(
    AxState(s): AxState<Arc<State>>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let response = handle_stream(&s, query, &headers, ws).await;
    s.count("/v1/stream", response.status());
    response
}

async fn handle_stream(
    s: &Arc<State>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
    headers: &HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Some(hub) = s.hub.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "stream_disabled",
            "the live stream is off for this source; set `stream: {}` in its configuration",
        );
    };
    if s.shutdown.is_triggered() {
        return retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down; retry",
            ),
            1,
        );
    }
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_query", e.body_text()),
    };
    if q.key.is_some() || q.api_key.is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            "key_in_url",
            "API keys do not belong in URLs (they end up in logs): send x-api-key / Authorization: Bearer, or from a browser offer the sub-protocols connectd.v1 and connectd.key.<key>",
        );
    }
    let (protocol_key, offers_ours) = stream::key_from_protocols(
        headers
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok()),
    );
    let presented = presented_key(headers).or(protocol_key);
    let key_info = match authorized(
        s.auth.check(presented.as_deref()).await,
        "send the key in x-api-key, Authorization: Bearer, or the sub-protocol connectd.key.<key>",
    ) {
        Ok(i) => i,
        Err(r) => {
            if r.status() != StatusCode::SERVICE_UNAVAILABLE {
                hub.refused_auth();
            }
            return r;
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return error(
                StatusCode::UPGRADE_REQUIRED,
                "websocket_required",
                format!("GET /v1/stream is a WebSocket: {}", e.body_text()),
            )
        }
    };
    let slot = match hub.join(&key_info.name) {
        Ok(slot) => slot,
        Err(Refused::PerKey) => {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                "this API key has max_clients_per_key streams open",
            )
        }
        Err(Refused::Full) => {
            return retry_after(
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "stream_full",
                    "this instance has max_clients streams open; retry or use another instance",
                ),
                5,
            )
        }
    };
    let ws = if offers_ours {
        ws.protocols([stream::PROTOCOL])
    } else {
        ws
    };
    let filter = Filter::new(q.event_type.as_deref(), q.user_id.as_deref());
    let shutdown = s.shutdown.clone();
    ws.max_message_size(64 * 1024)
        .on_upgrade(move |socket| hub.serve_client(socket, filter, slot, shutdown))
}

/// The router (exposed for tests).
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/v1/events", post(events))
        .route("/v1/stream", get(stream_route))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state)
}

/// Accepts connections until shutdown; then stops accepting and lets requests in flight finish.
pub async fn serve(state: Arc<State>, mut shutdown: Shutdown) -> Result<(), ConnectorError> {
    let listener = tokio::net::TcpListener::bind(&state.config.listen)
        .await
        .map_err(|e| {
            ConnectorError::retriable(
                "bind",
                format!("cannot listen on {}: {e}", state.config.listen),
            )
        })?;
    tracing::info!(connector = %state.name, addr = %state.config.listen, "http_source listening");
    let header_timeout = state.config.header_timeout.as_std();
    let app = router(state.clone());
    let hub_task = state
        .hub
        .clone()
        .map(|hub| connector_core::task::spawn(hub.run(shutdown.clone())));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let mut sd = shutdown.clone();
                conns.spawn(connector_core::task::counted(async move {
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(true);
                    // with_upgrades: `GET /v1/stream` turns the connection into a WebSocket.
                    let conn = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
                    tokio::pin!(conn);
                    tokio::select! {
                        r = conn.as_mut() => { let _ = r; }
                        _ = sd.wait() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
                        }
                    }
                }));
                while conns.try_join_next().is_some() {}
            }
        }
    }
    let drain = async { while conns.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(15), drain).await;
    if let Some(hub) = &state.hub {
        // Stream clients were sent a close (1001) when the shutdown fired.
        hub.wait_idle(Duration::from_secs(3)).await;
    }
    if let Some(t) = hub_task {
        let _ = t.await;
    }
    tracing::info!(connector = %state.name, "http_source stopped");
    Ok(())
}
