//! `enrich`: attaches a context object, looked up by a key taken from each record, under a
//! field of the record (default `context`), through an in-process cache in front of a read
//! store (seed 001's processor).
//!
//! ```yaml
//! - name: enrich
//!   type: enrich
//!   input: events.unique
//!   output: events.enriched
//!   key: /user_id
//!   store:
//!     type: postgres
//!     database_url: postgres://…
//!     query: select user_id, tier, region from user_profiles where user_id = any($1::uuid[])
//!   defaults: { tier: unknown }
//! ```
//!
//! For each batch:
//!
//! 1. every record's key is read (one streaming pass over its JSON, no `Value` built);
//! 2. keys in the cache ([quick_cache](https://docs.rs/quick_cache): sharded, bounded by
//!    entries, S3-FIFO eviction; TTL for found keys, `negative_ttl` for keys the store does not
//!    know, see [`TtlCache`]) are served from it;
//! 3. the other keys are looked up in **one round trip** — one `= any($1)` query, or one
//!    pipeline of `HGETALL`s — and a key already being looked up for another in-flight batch
//!    (another slot of the same connector) is not asked again: the batch waits for that answer
//!    (single flight);
//! 4. each record is forwarded with `"<field>": {…columns, "enriched_at": "…"}`, keyed by its
//!    idempotency key (`output_key`), to the partition number it was read from
//!    (`output_partition`), in the input order of its partition.
//!
//! The store is guarded by a circuit breaker ([`breaker`]): consecutive failures or an error
//! ratio over a window open it for `cooldown`; then one probe lookup decides. While it is open,
//! or when a lookup fails or takes longer than `lookup_timeout`, `on_lookup_error` applies:
//! `fallback` (default) attaches `defaults` with `"fallback": "lookup_error"` and the header
//! `connectd-enrich: fallback` — a slow or dead store never stops the stream; `retry` fails the
//! batch as transient (the runtime backs off and retries, nothing is forwarded meanwhile);
//! `dlq` sends the affected records to the dead-letter topic. Cached keys keep being served
//! while the store is down.
//!
//! A key the store does not have: `on_not_found` (`defaults`, with `"fallback": "not_found"`;
//! `pass` forwards unchanged; `dlq`). A record without the key: `on_missing_key` (`pass` or
//! `dlq`). A record that is not a JSON object is a permanent failure (dead-lettered).
//!
//! The cache, the single-flight table and the breaker are shared by every slot of one
//! connector in the process (slots are separate transform objects, see
//! [`Transform`](connector_core::Transform)); they are not shared across processes.

pub mod breaker;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use std::time::{Duration as StdDuration, Instant};

use connectd_redis::RedisConn;
use connector_core::metrics::{Counter, Gauge, Histogram, LATENCY_BUCKETS};
use connector_core::prelude::*;
use connector_core::IDEMPOTENCY_KEY_HEADER;
use quick_cache::sync::Cache;
use quick_cache::{Lifecycle, UnitWeighter};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use self::breaker::{Breaker, BreakerPolicy, BreakerState, Permit};
use self::store::{wrap_query, Store, StoreError};
use crate::json_key::{probe, KeyPath, Probe};

/// The header telling how a record was enriched: `enriched`, `not_found`, `fallback` or
/// `no_key`.
pub const ENRICH_HEADER: &str = "connectd-enrich";

/// Where context objects are read from.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// A PostgreSQL query returning one row per key found.
    Postgres {
        /// Connection URL.
        database_url: Secret,
        /// The query. `$1` is the batch's missing keys as `text[]`: cast it to the column's
        /// type (`where user_id = any($1::uuid[])`). Every column becomes a member of the
        /// context object; the key column (`key_column`) is used to match rows to keys.
        query: String,
        /// The column holding the key (text or number). Default: the last segment of `key`
        /// (`/user_id` → `user_id`).
        #[serde(default)]
        key_column: Option<String>,
        /// Connections of the pool (shared by the connector's slots).
        #[serde(default = "default_pool")]
        pool_size: u32,
    },
    /// A Redis hash per key: `HGETALL <key_template>`, all keys of a batch in one pipeline.
    Redis {
        /// Redis URL.
        redis_url: Secret,
        /// The hash's key; `{key}` is replaced by the record's key (e.g. `profile:{key}`).
        key_template: String,
    },
}

fn default_pool() -> u32 {
    2
}

/// The in-process cache.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Entries kept (found and not-found keys together).
    #[serde(default = "default_entries")]
    pub max_entries: u64,
    /// How long a found context is reused.
    #[serde(default = "default_ttl")]
    pub ttl: Duration,
    /// How long "the store has no such key" is remembered.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_entries: default_entries(),
            ttl: default_ttl(),
            negative_ttl: default_negative_ttl(),
        }
    }
}

fn default_entries() -> u64 {
    100_000
}
fn default_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(60)
}

/// The circuit breaker around the store.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failed lookups that open it.
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    /// Ratio of failed lookups over `window` that opens it (0 < r ≤ 1).
    #[serde(default = "default_ratio")]
    pub error_ratio: f64,
    /// Window of the ratio.
    #[serde(default = "default_window")]
    pub window: Duration,
    /// Lookups within the window before the ratio counts.
    #[serde(default = "default_min_calls")]
    pub min_calls: u32,
    /// How long it stays open before one probe lookup is let through.
    #[serde(default = "default_cooldown")]
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive(),
            error_ratio: default_ratio(),
            window: default_window(),
            min_calls: default_min_calls(),
            cooldown: default_cooldown(),
        }
    }
}

fn default_consecutive() -> u32 {
    3
}
fn default_ratio() -> f64 {
    0.5
}
fn default_window() -> Duration {
    Duration::from_secs(30)
}
fn default_min_calls() -> u32 {
    20
}
fn default_cooldown() -> Duration {
    Duration::from_secs(5)
}

/// What to do with records whose lookup failed (store error, timeout, breaker open).
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnLookupError {
    /// Attach `defaults` with `"fallback": "lookup_error"`, header `connectd-enrich: fallback`.
    #[default]
    Fallback,
    /// Fail the batch as transient: the runtime backs off and retries it.
    Retry,
    /// Dead-letter the affected records.
    Dlq,
}

/// What to do with a key the store does not have.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnNotFound {
    /// Attach `defaults` with `"fallback": "not_found"` (header `connectd-enrich: not_found`).
    #[default]
    Defaults,
    /// Forward unchanged (header `connectd-enrich: not_found`).
    Pass,
    /// Dead-letter the record.
    Dlq,
}

/// What to do with a record that has no key.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnMissingKey {
    /// Forward unchanged (header `connectd-enrich: no_key`).
    #[default]
    Pass,
    /// Dead-letter the record.
    Dlq,
}

/// Which key the forwarded records carry.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OutputKey {
    /// The idempotency key (header `connectd.idempotency_key`, else the `idempotency_key`
    /// field); the input key when there is none. With `output_partition: key`, copies of one
    /// event land in one partition (with `input` they do as long as the input's do).
    #[default]
    IdempotencyKey,
    /// The input record's key (keeps the input's partitioning, e.g. by user).
    Input,
}

/// Which partition of the output topic a forwarded record goes to.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OutputPartition {
    /// The input record's partition number, when the output topic has it (else as `key`): the
    /// records of one input partition stay together and in order although their key changed,
    /// and the producer fills a few large batches instead of one small batch per partition
    /// (keyed by idempotency key, a 5000-record batch of one input partition spreads over every
    /// output partition: measured at ~25% more CPU per record).
    #[default]
    Input,
    /// Chosen by the producer's partitioner from the output key.
    Key,
}

/// Settings of an `enrich` transform.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// The read store.
    pub store: StoreConfig,
    /// Where the lookup key is: a JSON pointer (`/user_id`) or a top-level field name. Strings
    /// and numbers are keys.
    #[serde(default = "default_key")]
    pub key: String,
    /// Top-level member the context object is written to (replaced if present).
    #[serde(default = "default_field")]
    pub field: String,
    /// The cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Longest wait for one lookup round trip; later is a lookup error.
    #[serde(default = "default_timeout")]
    pub lookup_timeout: Duration,
    /// The circuit breaker.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Behaviour when a lookup fails or the breaker is open.
    #[serde(default)]
    pub on_lookup_error: OnLookupError,
    /// Behaviour for keys the store does not have.
    #[serde(default)]
    pub on_not_found: OnNotFound,
    /// Behaviour for records without a key.
    #[serde(default)]
    pub on_missing_key: OnMissingKey,
    /// Context members attached by the fallbacks (`on_lookup_error: fallback`,
    /// `on_not_found: defaults`).
    #[serde(default)]
    pub defaults: Map<String, Value>,
    /// Key of the forwarded records.
    #[serde(default)]
    pub output_key: OutputKey,
    /// Partition of the forwarded records.
    #[serde(default)]
    pub output_partition: OutputPartition,
}

fn default_key() -> String {
    "/user_id".into()
}
fn default_field() -> String {
    "context".into()
}
fn default_timeout() -> Duration {
    Duration::from_millis(500)
}

/// A cached answer of the store.
#[derive(Debug, Clone)]
enum Entry {
    /// The context's members, serialised without the braces (`"tier":"gold","region":"eu"`),
    /// ready to be spliced into records.
    Found(Arc<str>),
    /// The store has no such key.
    Missing,
}

/// What a key resolved to for one batch.
#[derive(Debug, Clone)]
enum Resolved {
    Entry(Entry),
    Failed,
}

/// An in-flight lookup's answer (`None` until it is known).
type Flight = watch::Receiver<Option<Resolved>>;

struct EnrichMetrics {
    hits: Counter,
    negative_hits: Counter,
    misses: Counter,
    coalesced: Counter,
    evictions: Counter,
    lookups: Counter,
    keys_looked_up: Counter,
    lookup_errors: Counter,
    fallbacks: Counter,
    not_found: Counter,
    no_key: Counter,
    enriched: Counter,
    latency: Histogram,
    breaker: Gauge,
    entries: Gauge,
}

impl EnrichMetrics {
    fn new(m: &Metrics) -> Self {
        Self {
            hits: m.counter("connectd_enrich_cache_hits_total", "Records whose context came from the cache"),
            negative_hits: m.counter("connectd_enrich_cache_negative_hits_total", "Records whose key is cached as not found"),
            misses: m.counter("connectd_enrich_cache_misses_total", "Keys not in the cache when a batch needed them (looked up, or joined an in-flight lookup)"),
            coalesced: m.counter("connectd_enrich_single_flight_total", "Missed keys answered by another slot's in-flight lookup"),
            evictions: m.counter("connectd_enrich_cache_evictions_total", "Entries evicted by the size bound"),
            lookups: m.counter("connectd_enrich_lookups_total", "Store round trips"),
            keys_looked_up: m.counter("connectd_enrich_keys_looked_up_total", "Keys sent to the store"),
            lookup_errors: m.counter("connectd_enrich_lookup_errors_total", "Failed or timed-out store round trips"),
            fallbacks: m.counter("connectd_enrich_fallbacks_total", "Records given the defaults because the lookup failed or the breaker was open"),
            not_found: m.counter("connectd_enrich_not_found_total", "Records whose key the store does not have"),
            no_key: m.counter("connectd_enrich_no_key_total", "Records without a key"),
            enriched: m.counter("connectd_enrich_enriched_total", "Records given their context from the store"),
            latency: m.histogram("connectd_enrich_lookup_seconds", "Store round trip per lookup", LATENCY_BUCKETS),
            breaker: m.gauge("connectd_enrich_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open"),
            entries: m.gauge("connectd_enrich_cache_entries", "Entries in the cache"),
        }
    }
}

/// The hasher of the per-record maps and the cache: keys are looked up several times per
/// record, and the standard SipHash was ~5% of the transform's CPU. HashDoS resistance is
/// kept by foldhash's per-process random seed.
type FastHash = foldhash::fast::RandomState;

/// State shared by the slots of one connector.
struct Shared {
    store: Store,
    cache: TtlCache,
    inflight: Mutex<HashMap<Arc<str>, Flight, FastHash>>,
    breaker: Mutex<Breaker>,
    metrics: EnrichMetrics,
    lookup_timeout: StdDuration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Shared state by connector name: the runtime builds one transform per slot.
static SHARED: LazyLock<Mutex<HashMap<String, Weak<Shared>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The in-process cache: a bounded [`quick_cache`] map whose entries carry their expiry.
///
/// Why not moka (used before): its `get` (epoch-pinned hash table, read log, frequency sketch,
/// a clock read for the per-entry expiry) was ~10% of `enrich`'s CPU in a `perf` profile of the
/// benchmark. quick_cache's `get` is a read lock on one shard and a hash probe, but it has no
/// TTL, so each entry keeps the instant it expires and a read at or after it is a miss. The
/// caller reads the clock once per batch. An expired entry stays until it is replaced (the
/// next lookup of its key) or evicted by the size bound, so `len` may count expired entries.
struct TtlCache {
    inner: Cache<Arc<str>, Timed, UnitWeighter, FastHash, CountEvictions>,
    found: StdDuration,
    missing: StdDuration,
}

/// A cached answer and when it stops being served.
#[derive(Clone)]
struct Timed {
    entry: Entry,
    expires: Instant,
}

/// Counts the entries the size bound pushes out.
#[derive(Clone)]
struct CountEvictions(Counter);

impl Lifecycle<Arc<str>, Timed> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: Arc<str>, _val: Timed) {
        self.0.inc();
    }
}

impl TtlCache {
    fn new(max_entries: u64, found: StdDuration, missing: StdDuration, evictions: Counter) -> Self {
        let items = usize::try_from(max_entries).unwrap_or(usize::MAX);
        Self {
            inner: Cache::with(
                items,
                max_entries,
                UnitWeighter,
                FastHash::default(),
                CountEvictions(evictions),
            ),
            found,
            missing,
        }
    }

    /// The entry for `key`, unless absent or expired at `now`.
    fn get(&self, key: &str, now: Instant) -> Option<Entry> {
        self.inner
            .get(key)
            .filter(|t| t.expires > now)
            .map(|t| t.entry)
    }

    /// Stores `entry` with the TTL of its kind, counted from `now`.
    fn insert(&self, key: Arc<str>, entry: Entry, now: Instant) {
        let ttl = match entry {
            Entry::Found(_) => self.found,
            Entry::Missing => self.missing,
        };
        let expires = now
            .checked_add(ttl)
            .unwrap_or(now + StdDuration::from_secs(86_400 * 365));
        self.inner.insert(key, Timed { entry, expires });
    }

    /// Entries held (expired ones included until replaced or evicted).
    fn len(&self) -> usize {
        self.inner.len()
    }
}

/// Removes a batch's claims from the single-flight table when it is done — also when its
/// future is dropped mid-lookup (waiters then see the sender gone and treat it as failed).
struct Claims<'a> {
    shared: &'a Shared,
    keys: Vec<Arc<str>>,
    senders: Vec<watch::Sender<Option<Resolved>>>,
}

impl Drop for Claims<'_> {
    fn drop(&mut self) {
        let mut inflight = lock(&self.shared.inflight);
        for k in &self.keys {
            inflight.remove(k);
        }
    }
}

impl Shared {
    fn breaker_state(&self) -> BreakerState {
        lock(&self.breaker).state(Instant::now())
    }

    /// Resolves the distinct keys of a batch not found in the cache: claims the ones nobody
    /// is looking up, waits for the others, looks the claimed ones up in one round trip.
    async fn resolve(
        &self,
        missing: Vec<Arc<str>>,
        out: &mut HashMap<Arc<str>, Resolved, FastHash>,
    ) {
        let mut claims = Claims {
            shared: self,
            keys: Vec::new(),
            senders: Vec::new(),
        };
        let mut waits: Vec<(Arc<str>, Flight)> = Vec::new();
        let now = Instant::now();
        {
            let mut inflight = lock(&self.inflight);
            for k in missing {
                // Checked again under the lock: a lookup that finished since the first check
                // stored its answer before releasing its claim.
                if let Some(e) = self.cache.get(&k, now) {
                    out.insert(k, Resolved::Entry(e));
                } else if let Some(rx) = inflight.get(&k) {
                    waits.push((k, rx.clone()));
                } else {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(Arc::clone(&k), rx);
                    claims.keys.push(k);
                    claims.senders.push(tx);
                }
            }
        }
        if !claims.keys.is_empty() {
            let answers = self.lookup(&claims.keys).await;
            let now = Instant::now();
            for (k, tx) in claims.keys.iter().zip(&claims.senders) {
                let r = match &answers {
                    Ok(found) => Resolved::Entry(match found.get(k) {
                        Some(inner) => Entry::Found(Arc::clone(inner)),
                        None => Entry::Missing,
                    }),
                    Err(()) => Resolved::Failed,
                };
                if let Resolved::Entry(e) = &r {
                    self.cache.insert(Arc::clone(k), e.clone(), now);
                }
                tx.send_replace(Some(r.clone()));
                out.insert(Arc::clone(k), r);
            }
        }
        drop(claims);
        self.metrics.coalesced.add(waits.len() as u64);
        for (k, mut rx) in waits {
            let r = tokio::time::timeout(
                self.lookup_timeout + StdDuration::from_secs(1),
                rx.wait_for(Option::is_some),
            )
            .await;
            let r = match r {
                Ok(Ok(v)) => v.clone().unwrap_or(Resolved::Failed),
                _ => Resolved::Failed,
            };
            out.insert(k, r);
        }
    }

    /// One round trip under the breaker: the members of each found key, serialised.
    async fn lookup(&self, keys: &[Arc<str>]) -> Result<HashMap<Arc<str>, Arc<str>>, ()> {
        let permit = lock(&self.breaker).permit(Instant::now());
        if permit == Permit::Refused {
            self.metrics.breaker.set(self.breaker_state().gauge());
            return Err(());
        }
        self.metrics.lookups.inc();
        self.metrics.keys_looked_up.add(keys.len() as u64);
        let started = Instant::now();
        let r = match tokio::time::timeout(self.lookup_timeout, self.store.lookup(keys)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(self.lookup_timeout)),
        };
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        lock(&self.breaker).record(permit, r.is_ok(), Instant::now());
        self.metrics.breaker.set(self.breaker_state().gauge());
        match r {
            Ok(found) => Ok(found
                .into_iter()
                .map(|(k, obj)| (k, members(&obj)))
                .collect()),
            Err(e) => {
                self.metrics.lookup_errors.inc();
                tracing::warn!(error = %e, keys = keys.len(), "enrich: lookup failed");
                Err(())
            }
        }
    }
}

/// An object's members without the braces.
fn members(obj: &Map<String, Value>) -> Arc<str> {
    let s = Value::Object(obj.clone()).to_string();
    Arc::from(&s[1..s.len() - 1])
}

/// `s` as `Bytes`: a slice of `value` (no copy) when `s` lies inside it, else a copy.
fn share(value: &Bytes, s: &str) -> Bytes {
    let (base, len) = (value.as_ptr() as usize, value.len());
    let start = s.as_ptr() as usize;
    if start >= base && start + s.len() <= base + len {
        value.slice_ref(s.as_bytes())
    } else {
        Bytes::copy_from_slice(s.as_bytes())
    }
}

/// The transform (one per slot; see [`Shared`]).
pub struct Enrich {
    config: EnrichConfig,
    key_path: KeyPath,
    field_json: String,
    defaults: Arc<str>,
    shared: Arc<Shared>,
}

/// How a record is to be written.
enum Attach<'a> {
    Context(&'a str, Option<&'static str>),
    Unchanged,
}

impl Enrich {
    /// `record` with `"<field>": {<inner>, ["fallback": why,] "enriched_at": at}`.
    fn attach(
        &self,
        r: &Record,
        p: &Probe,
        inner: &str,
        fallback: Option<&'static str>,
        at: &str,
    ) -> Result<Bytes, ConnectorError> {
        if !p.is_object {
            return Err(ConnectorError::permanent(
                "not_an_object",
                "enrich needs a JSON object",
            ));
        }
        // `{<inner>, ["fallback": why,] "enriched_at": at}`, written where it goes.
        let write_ctx = |out: &mut Vec<u8>| {
            out.push(b'{');
            out.extend_from_slice(inner.as_bytes());
            if !inner.is_empty() {
                out.push(b',');
            }
            if let Some(why) = fallback {
                out.extend_from_slice(b"\"fallback\":\"");
                out.extend_from_slice(why.as_bytes());
                out.extend_from_slice(b"\",");
            }
            out.extend_from_slice(b"\"enriched_at\":\"");
            out.extend_from_slice(at.as_bytes());
            out.extend_from_slice(b"\"}");
        };
        if p.has_field {
            // Rare: replace the member through a full parse.
            let mut ctx = Vec::with_capacity(inner.len() + 64);
            write_ctx(&mut ctx);
            let mut v: Value = serde_json::from_slice(&r.value)
                .map_err(|e| ConnectorError::permanent("invalid_json", e.to_string()))?;
            let c: Value = serde_json::from_slice(&ctx)
                .map_err(|e| ConnectorError::permanent("internal", e.to_string()))?;
            if let Some(o) = v.as_object_mut() {
                o.insert(self.config.field.clone(), c);
            }
            return Ok(Bytes::from(v.to_string()));
        }
        // Splice before the closing brace: the input is not re-serialised.
        let v = &r.value[..];
        let end = v
            .iter()
            .rposition(|b| *b == b'}')
            .ok_or_else(|| ConnectorError::permanent("not_an_object", "no closing brace"))?;
        // The exact length: `Bytes::from` a full `Vec` takes it over without another
        // allocation.
        let ctx_len = 1
            + inner.len()
            + usize::from(!inner.is_empty())
            + fallback.map_or(0, |why| 14 + why.len())
            + 15
            + at.len()
            + 2;
        let len = end + usize::from(p.members > 0) + self.field_json.len() + 1 + ctx_len + 1;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&v[..end]);
        if p.members > 0 {
            out.push(b',');
        }
        out.extend_from_slice(self.field_json.as_bytes());
        out.push(b':');
        write_ctx(&mut out);
        out.push(b'}');
        debug_assert_eq!(out.len(), len, "attach's length arithmetic");
        Ok(Bytes::from(out))
    }

    fn output(
        &self,
        r: &Record,
        p: &Probe,
        value: Option<Bytes>,
        header: &'static str,
    ) -> TransformOutcome {
        let mut out = r.clone();
        out.origin = None;
        if let Some(v) = value {
            out.value = v;
        }
        out.headers.set(ENRICH_HEADER, header);
        if self.config.output_key == OutputKey::IdempotencyKey {
            // The header's bytes are shared, and a key without escapes is a slice of the
            // value: neither copies.
            let ik = match r.headers.get(IDEMPOTENCY_KEY_HEADER) {
                Some(h) if !h.is_empty() && std::str::from_utf8(h).is_ok() => Some(h.clone()),
                _ => p.idempotency_key.as_deref().map(|k| share(&r.value, k)),
            };
            if let Some(ik) = ik {
                out.key = Some(ik);
            }
        }
        let o = Output::new(out);
        TransformOutcome::Emit(vec![match (self.config.output_partition, &r.origin) {
            (OutputPartition::Input, Some(at)) => o.in_partition(at.partition),
            _ => o,
        }])
    }
}

#[async_trait]
impl Transform for Enrich {
    async fn transform(
        &mut self,
        batch: &[Record],
    ) -> Result<Vec<TransformOutcome>, ConnectorError> {
        let shared = Arc::clone(&self.shared);
        let m = &shared.metrics;
        let probes: Vec<Result<Probe, String>> = batch
            .iter()
            .map(|r| {
                probe(&r.value, &self.key_path, &self.config.field).map_err(|e| format!("{e:?}"))
            })
            .collect();
        // Each distinct key once: from the cache, or looked up (`results` by first appearance;
        // `key_of[i]` is record i's entry there). Hits allocate nothing.
        let now = Instant::now();
        let mut results: Vec<Option<Resolved>> = Vec::new();
        let mut key_of: Vec<Option<usize>> = vec![None; batch.len()];
        let mut first_miss: Vec<bool> = vec![false; batch.len()];
        let mut missing: Vec<(usize, Arc<str>)> = Vec::new();
        // While the breaker is open no lookup is let through (nor a probe: that waits for
        // half-open), so a miss fails at once: the fallback path claims nothing, allocates
        // nothing per key and costs no more than a hit.
        let open = shared.breaker_state() == BreakerState::Open;
        let mut refused = 0u64;
        {
            let mut distinct: HashMap<&str, usize, FastHash> =
                HashMap::with_capacity_and_hasher(batch.len(), FastHash::default());
            for (i, p) in probes.iter().enumerate() {
                let Some(k) = p.as_ref().ok().and_then(|p| p.key.as_deref()) else {
                    continue;
                };
                if let Some(&d) = distinct.get(k) {
                    key_of[i] = Some(d);
                    continue;
                }
                let d = results.len();
                distinct.insert(k, d);
                key_of[i] = Some(d);
                match shared.cache.get(k, now) {
                    Some(e) => results.push(Some(Resolved::Entry(e))),
                    None if open => {
                        results.push(Some(Resolved::Failed));
                        refused += 1;
                        first_miss[i] = true;
                    }
                    None => {
                        results.push(None);
                        missing.push((d, Arc::from(k)));
                        first_miss[i] = true;
                    }
                }
            }
        }
        m.misses.add(missing.len() as u64 + refused);
        if open {
            m.breaker.set(BreakerState::Open.gauge());
        }
        if !missing.is_empty() {
            let mut looked_up: HashMap<Arc<str>, Resolved, FastHash> =
                HashMap::with_capacity_and_hasher(missing.len(), FastHash::default());
            shared
                .resolve(
                    missing.iter().map(|(_, k)| Arc::clone(k)).collect(),
                    &mut looked_up,
                )
                .await;
            for (d, k) in &missing {
                results[*d] = looked_up.remove(k);
            }
        }
        m.entries.set(shared.cache.len() as i64);
        let failed = results
            .iter()
            .any(|r| matches!(r, None | Some(Resolved::Failed)));
        if failed && self.config.on_lookup_error == OnLookupError::Retry {
            return Err(ConnectorError::retriable(
                if shared.breaker_state() == BreakerState::Closed {
                    "lookup_failed"
                } else {
                    "breaker_open"
                },
                "enrich: the store did not answer; retrying the batch (on_lookup_error: retry)",
            ));
        }
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        // Counted here, added once per batch (the slots share the counters).
        let (mut hits, mut negative_hits, mut enriched, mut not_found, mut fallbacks, mut no_key) =
            (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
        let mut outcomes = Vec::with_capacity(batch.len());
        for (i, (r, p)) in batch.iter().zip(&probes).enumerate() {
            let p = match p {
                Ok(p) => p,
                Err(e) => {
                    outcomes.push(TransformOutcome::Permanent(ConnectorError::permanent(
                        "invalid_json",
                        format!("value is not JSON: {e}"),
                    )));
                    continue;
                }
            };
            if !p.is_object {
                outcomes.push(TransformOutcome::Permanent(ConnectorError::permanent(
                    "not_an_object",
                    "enrich needs a JSON object",
                )));
                continue;
            }
            let Some(key) = p.key.as_deref() else {
                no_key += 1;
                outcomes.push(match self.config.on_missing_key {
                    OnMissingKey::Pass => self.output(r, p, None, "no_key"),
                    OnMissingKey::Dlq => TransformOutcome::Permanent(ConnectorError::permanent(
                        "missing_key",
                        format!("no lookup key at {:?}", self.config.key),
                    )),
                });
                continue;
            };
            let first = first_miss[i];
            let res = key_of[i].and_then(|d| results[d].as_ref());
            let attach = match res {
                Some(Resolved::Entry(Entry::Found(inner))) => {
                    if !first {
                        hits += 1;
                    }
                    enriched += 1;
                    Ok((Attach::Context(inner, None), "enriched"))
                }
                Some(Resolved::Entry(Entry::Missing)) => {
                    if !first {
                        negative_hits += 1;
                    }
                    not_found += 1;
                    match self.config.on_not_found {
                        OnNotFound::Defaults => Ok((
                            Attach::Context(&self.defaults, Some("not_found")),
                            "not_found",
                        )),
                        OnNotFound::Pass => Ok((Attach::Unchanged, "not_found")),
                        OnNotFound::Dlq => Err(ConnectorError::permanent(
                            "not_found",
                            format!("no context for key {key:?}"),
                        )),
                    }
                }
                Some(Resolved::Failed) | None => match self.config.on_lookup_error {
                    OnLookupError::Dlq => Err(ConnectorError::permanent(
                        "lookup_failed",
                        "the store did not answer (on_lookup_error: dlq)",
                    )),
                    _ => {
                        fallbacks += 1;
                        Ok((
                            Attach::Context(&self.defaults, Some("lookup_error")),
                            "fallback",
                        ))
                    }
                },
            };
            outcomes.push(match attach {
                Err(e) => TransformOutcome::Permanent(e),
                Ok((Attach::Unchanged, h)) => self.output(r, p, None, h),
                Ok((Attach::Context(inner, why), h)) => match self.attach(r, p, inner, why, &at) {
                    Ok(v) => self.output(r, p, Some(v), h),
                    Err(e) => TransformOutcome::Permanent(e),
                },
            });
        }
        m.hits.add(hits);
        m.negative_hits.add(negative_hits);
        m.enriched.add(enriched);
        m.not_found.add(not_found);
        m.fallbacks.add(fallbacks);
        m.no_key.add(no_key);
        Ok(outcomes)
    }

    fn status(&self) -> Value {
        let m = &self.shared.metrics;
        let hits = m.hits.get() + m.negative_hits.get();
        let total = hits + m.misses.get();
        let b = lock(&self.shared.breaker);
        json!({
            "cache_hits": m.hits.get(),
            "cache_negative_hits": m.negative_hits.get(),
            "cache_misses": m.misses.get(),
            "hit_ratio": if total == 0 { 0.0 } else { hits as f64 / total as f64 },
            "cache_entries": self.shared.cache.len(),
            "cache_evictions": m.evictions.get(),
            "single_flight": m.coalesced.get(),
            "lookups": m.lookups.get(),
            "keys_looked_up": m.keys_looked_up.get(),
            "lookup_errors": m.lookup_errors.get(),
            "enriched": m.enriched.get(),
            "not_found": m.not_found.get(),
            "fallbacks": m.fallbacks.get(),
            "no_key": m.no_key.get(),
            "breaker": b.state(Instant::now()).as_str(),
            "breaker_opens": b.opens(),
        })
    }
}

/// Factory of [`Enrich`].
pub struct EnrichPlugin;

fn url_issue(field: &str, url: &str, schemes: &[&str]) -> Option<ConfigIssue> {
    (!schemes.iter().any(|s| url.starts_with(s)))
        .then(|| ConfigIssue::new(field, format!("must start with one of {schemes:?}")))
}

#[async_trait]
impl TransformPlugin for EnrichPlugin {
    const TYPE: &'static str = "enrich";
    const DESCRIPTION: &'static str = "Attaches a context object looked up by key in Postgres or Redis (cache, single flight, circuit breaker, fallbacks)";
    type Config = EnrichConfig;

    fn validate(c: &EnrichConfig) -> Result<(), Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        if c.key.is_empty() || c.key == "/" {
            issues.push(ConfigIssue::new(
                "key",
                "must name a field or a JSON pointer",
            ));
        }
        if c.field.is_empty() {
            issues.push(ConfigIssue::new("field", "must not be empty"));
        }
        if c.cache.max_entries == 0 {
            issues.push(ConfigIssue::new("cache.max_entries", "must be at least 1"));
        }
        for (f, d) in [
            ("cache.ttl", &c.cache.ttl),
            ("cache.negative_ttl", &c.cache.negative_ttl),
            ("lookup_timeout", &c.lookup_timeout),
            ("breaker.cooldown", &c.breaker.cooldown),
            ("breaker.window", &c.breaker.window),
        ] {
            if d.as_std() < StdDuration::from_millis(1) {
                issues.push(ConfigIssue::new(f, "must be at least 1ms"));
            }
        }
        if !(c.breaker.error_ratio > 0.0 && c.breaker.error_ratio <= 1.0) {
            issues.push(ConfigIssue::new("breaker.error_ratio", "must be in (0, 1]"));
        }
        if c.breaker.consecutive_failures == 0 {
            issues.push(ConfigIssue::new(
                "breaker.consecutive_failures",
                "must be at least 1",
            ));
        }
        match &c.store {
            StoreConfig::Postgres {
                database_url,
                query,
                key_column,
                pool_size,
            } => {
                issues.extend(url_issue(
                    "store.database_url",
                    database_url.expose(),
                    &["postgres://", "postgresql://"],
                ));
                if !query.contains("$1") {
                    issues.push(ConfigIssue::new(
                        "store.query",
                        "must use $1 (the keys, text[]), e.g. where user_id = any($1::uuid[])",
                    ));
                }
                if key_column.as_deref().is_some_and(str::is_empty) {
                    issues.push(ConfigIssue::new("store.key_column", "must not be empty"));
                }
                if *pool_size == 0 {
                    issues.push(ConfigIssue::new("store.pool_size", "must be at least 1"));
                }
            }
            StoreConfig::Redis {
                redis_url,
                key_template,
            } => {
                issues.extend(url_issue(
                    "store.redis_url",
                    redis_url.expose(),
                    &["redis://", "rediss://", "unix://"],
                ));
                if !key_template.contains("{key}") {
                    issues.push(ConfigIssue::new(
                        "store.key_template",
                        "must contain {key}, e.g. profile:{key}",
                    ));
                }
            }
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }

    async fn build(
        config: EnrichConfig,
        ctx: TransformContext,
    ) -> Result<Box<dyn Transform>, ConnectorError> {
        let key_path = KeyPath::parse(&config.key);
        let shared = {
            let mut all = lock(&SHARED);
            all.retain(|_, w| w.strong_count() > 0);
            match all.get(&ctx.name).and_then(Weak::upgrade) {
                Some(s) => s,
                None => {
                    let s = Arc::new(new_shared(&config, &ctx)?);
                    all.insert(ctx.name.clone(), Arc::downgrade(&s));
                    s
                }
            }
        };
        let field_json = serde_json::to_string(&config.field)
            .map_err(|e| ConnectorError::permanent("bad_config", e.to_string()))?;
        Ok(Box::new(Enrich {
            key_path,
            field_json,
            defaults: members(&config.defaults),
            shared,
            config,
        }))
    }
}

fn new_shared(config: &EnrichConfig, ctx: &TransformContext) -> Result<Shared, ConnectorError> {
    let timeout = config.lookup_timeout.as_std();
    let store = match &config.store {
        StoreConfig::Postgres {
            database_url,
            query,
            key_column,
            pool_size,
        } => {
            let options: sqlx::postgres::PgConnectOptions =
                database_url.expose().parse().map_err(|e: sqlx::Error| {
                    ConnectorError::permanent("bad_database_url", e.to_string())
                })?;
            let options = options.options([("statement_timeout", timeout.as_millis().to_string())]);
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(*pool_size)
                .acquire_timeout(timeout)
                .connect_lazy_with(options);
            let key_column = key_column.clone().unwrap_or_else(|| {
                config
                    .key
                    .rsplit('/')
                    .next()
                    .unwrap_or(&config.key)
                    .to_string()
            });
            Store::Postgres {
                pool,
                sql: wrap_query(query),
                key_column,
            }
        }
        StoreConfig::Redis {
            redis_url,
            key_template,
        } => Store::Redis {
            conn: Arc::new(
                RedisConn::new(redis_url.expose(), timeout)
                    .map_err(|e| ConnectorError::permanent("bad_redis_url", e.to_string()))?,
            ),
            key_template: key_template.clone(),
        },
    };
    let metrics = EnrichMetrics::new(&ctx.metrics);
    let cache = TtlCache::new(
        config.cache.max_entries,
        config.cache.ttl.as_std(),
        config.cache.negative_ttl.as_std(),
        metrics.evictions.clone(),
    );
    let b = &config.breaker;
    Ok(Shared {
        store,
        cache,
        inflight: Mutex::new(HashMap::default()),
        breaker: Mutex::new(Breaker::new(BreakerPolicy {
            consecutive_failures: b.consecutive_failures,
            error_ratio: b.error_ratio,
            window: b.window.as_std(),
            min_calls: b.min_calls,
            cooldown: b.cooldown.as_std(),
        })),
        metrics,
        lookup_timeout: timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(v: Value) -> EnrichConfig {
        serde_json::from_value(v).expect("config")
    }

    #[test]
    fn validation_lists_every_problem() {
        let c = config(json!({
            "store": {"type": "postgres", "database_url": "mysql://x", "query": "select 1"},
            "key": "",
            "cache": {"max_entries": 0},
            "breaker": {"error_ratio": 1.5}
        }));
        let issues = EnrichPlugin::validate(&c).expect_err("invalid");
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        for p in [
            "key",
            "cache.max_entries",
            "breaker.error_ratio",
            "store.database_url",
            "store.query",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        let c = config(json!({
            "store": {"type": "redis", "redis_url": "redis://h:1", "key_template": "profile"}
        }));
        let issues = EnrichPlugin::validate(&c).expect_err("invalid");
        assert_eq!(issues[0].path, "store.key_template");
        let c = config(json!({
            "store": {"type": "redis", "redis_url": "redis://h:1", "key_template": "p:{key}"}
        }));
        assert!(EnrichPlugin::validate(&c).is_ok());
        assert!(serde_json::from_value::<EnrichConfig>(json!({
            "store": {"type": "redis", "redis_url": "redis://h", "key_template": "p:{key}", "x": 1}
        }))
        .is_err(), "unknown store settings are refused");
    }

    fn enrich(field: &str) -> Enrich {
        let c = config(json!({
            "store": {"type": "redis", "redis_url": "redis://127.0.0.1:1", "key_template": "p:{key}"},
            "field": field
        }));
        let ctx = TransformContext {
            name: format!("unit-{field}"),
            output_topic: "o".into(),
            metrics: Metrics::new(),
            shutdown: Shutdown::never(),
        };
        Enrich {
            key_path: KeyPath::parse(&c.key),
            field_json: serde_json::to_string(&c.field).expect("json"),
            defaults: members(&c.defaults),
            shared: Arc::new(new_shared(&c, &ctx).expect("shared")),
            config: c,
        }
    }

    fn attached(e: &Enrich, v: &str, inner: &str, why: Option<&'static str>) -> Value {
        let r = Record::new(v.to_string());
        let p = probe(v.as_bytes(), &e.key_path, &e.config.field).expect("probe");
        let b = e
            .attach(&r, &p, inner, why, "2026-12-02T00:00:00.000Z")
            .expect("attach");
        serde_json::from_slice(&b).expect("valid JSON")
    }

    #[tokio::test]
    async fn context_is_spliced_into_the_object_or_replaces_the_member() {
        let e = enrich("context");
        let v = attached(&e, r#"{"user_id":"u","n":1}  "#, r#""tier":"gold""#, None);
        assert_eq!(
            v,
            json!({"user_id":"u","n":1,"context":{"tier":"gold","enriched_at":"2026-12-02T00:00:00.000Z"}})
        );
        let v = attached(&e, r#"{}"#, "", Some("not_found"));
        assert_eq!(
            v,
            json!({"context":{"fallback":"not_found","enriched_at":"2026-12-02T00:00:00.000Z"}})
        );
        let v = attached(
            &e,
            r#"{"user_id":"u","context":{"old":true}}"#,
            r#""a":1"#,
            None,
        );
        assert_eq!(
            v["context"],
            json!({"a":1,"enriched_at":"2026-12-02T00:00:00.000Z"})
        );
        let e = enrich("we\"ird");
        let v = attached(&e, r#"{"user_id":"u"}"#, "", None);
        assert!(v["we\"ird"].is_object());
    }

    #[tokio::test]
    async fn outputs_keep_the_input_partition_and_take_the_idempotency_key() {
        let mut e = enrich("context");
        let v = r#"{"idempotency_key":"ik-7","user_id":"u"}"#;
        let mut r = Record::new(v.to_string()).with_key("user-key");
        r.origin = Some(connector_core::Origin {
            topic: Arc::from("in"),
            partition: 4,
            offset: 9,
        });
        let p = probe(&r.value, &e.key_path, &e.config.field).expect("probe");
        let emitted = |o: TransformOutcome| match o {
            TransformOutcome::Emit(mut outs) if outs.len() == 1 => outs.remove(0),
            other => panic!("{other:?}"),
        };
        let o = emitted(e.output(&r, &p, None, "enriched"));
        assert_eq!(o.partition, Some(4));
        assert_eq!(o.record.key.as_deref(), Some(&b"ik-7"[..]));
        assert!(o.record.origin.is_none());
        e.config.output_partition = OutputPartition::Key;
        e.config.output_key = OutputKey::Input;
        let o = emitted(e.output(&r, &p, None, "enriched"));
        assert_eq!(o.partition, None);
        assert_eq!(o.record.key.as_deref(), Some(&b"user-key"[..]));
    }

    #[test]
    fn share_slices_inside_the_value_and_copies_otherwise() {
        let value = Bytes::from_static(br#"{"idempotency_key":"ik-1"}"#);
        let inside = std::str::from_utf8(&value[20..24]).expect("utf8");
        let s = share(&value, inside);
        assert_eq!(&s[..], b"ik-1");
        assert_eq!(s.as_ptr(), value[20..].as_ptr());
        let outside = String::from("ik-1");
        let c = share(&value, &outside);
        assert_eq!(&c[..], b"ik-1");
        assert_ne!(c.as_ptr(), outside.as_ptr());
    }

    #[test]
    fn members_drop_the_braces() {
        let m: Map<String, Value> = serde_json::from_str(r#"{"a":1,"b":"x"}"#).expect("map");
        assert_eq!(&*members(&m), r#""a":1,"b":"x""#);
        assert_eq!(&*members(&Map::new()), "");
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    fn found(s: &str) -> Entry {
        Entry::Found(Arc::from(s))
    }

    #[test]
    fn entries_expire_after_the_ttl_of_their_kind() {
        let m = Metrics::new();
        let c = TtlCache::new(
            100,
            StdDuration::from_secs(60),
            StdDuration::from_secs(5),
            m.counter("t_evictions", "t"),
        );
        let t0 = Instant::now();
        c.insert(Arc::from("a"), found("\"x\":1"), t0);
        c.insert(Arc::from("b"), Entry::Missing, t0);
        assert!(matches!(c.get("a", t0), Some(Entry::Found(s)) if &*s == "\"x\":1"));
        assert!(matches!(c.get("b", t0), Some(Entry::Missing)));
        let later = t0 + StdDuration::from_secs(5);
        assert!(c.get("a", later).is_some(), "found keys keep their 60 s");
        assert!(
            c.get("b", later).is_none(),
            "a miss is cached for negative_ttl only"
        );
        assert!(c.get("a", t0 + StdDuration::from_secs(60)).is_none());
        // Replacing an expired entry serves it again.
        c.insert(Arc::from("b"), found("\"y\":2"), later);
        assert!(matches!(c.get("b", later), Some(Entry::Found(_))));
        assert!(c.get("zz", t0).is_none());
    }

    #[test]
    fn the_size_bound_holds_and_evictions_are_counted() {
        let m = Metrics::new();
        let evictions = m.counter("t_evictions", "t");
        let c = TtlCache::new(
            64,
            StdDuration::from_secs(60),
            StdDuration::from_secs(60),
            evictions.clone(),
        );
        let now = Instant::now();
        for i in 0..1000 {
            c.insert(Arc::from(format!("k{i}").as_str()), Entry::Missing, now);
        }
        assert!(c.len() <= 64, "{} entries", c.len());
        assert!(
            evictions.get() >= 1000 - 64,
            "{} evictions",
            evictions.get()
        );
    }
}
