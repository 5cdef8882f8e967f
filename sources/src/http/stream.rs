//! The live stream of `http_source`: `GET /v1/stream` (WebSocket) pushes the events this
//! source accepted to connected clients, across every instance through Redis Pub/Sub.
//!
//! ## Path of an event
//! 1. A request's events are acknowledged by the broker (never before: a client of the stream
//!    sees nothing that could still be refused).
//! 2. The request handler hands the accepted envelopes, as one JSON array, to the
//!    [`Hub`]'s publisher without waiting (`try_send` into a bounded queue; full → counted in
//!    `connectd_stream_publish_dropped_total`, the 202 is never delayed by the stream).
//! 3. With `redis_url` set, the publisher `PUBLISH`es each array on the channel (several in
//!    one pipelined round trip when they queue up) and every instance's subscriber — this one
//!    included — receives it: a client connected to instance B sees what instance A accepted,
//!    no sticky sessions. Without Redis, or while `PUBLISH` fails, the array goes straight to
//!    this instance's clients.
//! 4. The subscriber parses each array once and puts it on a `tokio::sync::broadcast`
//!    channel of `client_queue` messages: one shared buffer, so the memory for N clients is
//!    that of one queue, not N.
//! 5. Each client's task sends the array as one text message — or, with `event_type` /
//!    `user_id` filters, the matching envelopes as an array of their own (nothing when none
//!    match).
//!
//! Order: each instance's arrays reach every client in the order the instance published them,
//! so the events of one client posting one request after the other arrive in that order.
//! Pub/Sub is at-most-once: the stream is a live view, not a delivery guarantee (the topic is).
//!
//! ## Slow clients
//! A client more than `client_queue` messages behind is closed with code **4000**
//! (`on_slow_client: close`, default) or skips the oldest messages it missed
//! (`drop_oldest`, counted in `connectd_stream_dropped_total`). A send that does not complete
//! within `write_timeout` (a client that stopped reading) closes it with **4000** as well. The
//! server pings every `ping_interval` and closes with **4001** a client that answered nothing
//! for two intervals; on shutdown every client is closed with **1001** (going away).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use connectd_redis::RedisConn;
use connector_core::metrics::{Counter, Gauge, Histogram, Metrics, LATENCY_BUCKETS};
use connector_core::prelude::*;
use futures::{SinkExt, StreamExt};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{broadcast, mpsc, Notify};

/// The sub-protocol a browser offers (with `connectd.key.<API key>` beside it) and the
/// server selects.
pub const PROTOCOL: &str = "connectd.v1";
/// Prefix of the sub-protocol entry that carries the API key (browsers cannot set headers).
pub const KEY_PROTOCOL_PREFIX: &str = "connectd.key.";
/// Close code: the client fell behind (`client_queue` exceeded or a send timed out).
pub const CLOSE_SLOW: u16 = 4000;
/// Close code: no pong (nor any other frame) for two ping intervals.
pub const CLOSE_NO_PONG: u16 = 4001;
/// Close code: the server is shutting down (RFC 6455 "going away").
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// What happens to a client that falls more than `client_queue` messages behind.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SlowClient {
    /// Close it with code 4000 (default): it reconnects and knows it missed events.
    #[default]
    Close,
    /// Skip the oldest messages it missed and go on (counted in `connectd_stream_dropped_total`).
    DropOldest,
}

/// Settings of the live stream (`GET /v1/stream`). Fan-out across instances goes through
/// Redis Pub/Sub when the source's `redis_url` is set; otherwise the stream serves only the
/// events this instance accepted.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Redis Pub/Sub channel shared by the instances (default `connectd:stream:<connector name>`).
    #[serde(default)]
    pub channel: Option<String>,
    /// Messages (one per accepted request) a client may fall behind before `on_slow_client`
    /// applies. One buffer of this size is shared by all clients.
    #[serde(default = "default_queue")]
    #[schemars(range(min = 1))]
    pub client_queue: usize,
    /// `close` (code 4000, default) or `drop_oldest`.
    #[serde(default)]
    pub on_slow_client: SlowClient,
    /// Longest wait for one message to be written to a client before it is closed as slow.
    #[serde(default = "default_write_timeout")]
    pub write_timeout: Duration,
    /// Interval of the server's pings; a client silent for two intervals is closed (4001).
    #[serde(default = "default_ping")]
    pub ping_interval: Duration,
    /// Most simultaneous clients per API key (more → 429).
    #[serde(default = "default_per_key")]
    #[schemars(range(min = 1))]
    pub max_clients_per_key: usize,
    /// Most simultaneous clients of this instance (more → 503).
    #[serde(default = "default_max_clients")]
    #[schemars(range(min = 1))]
    pub max_clients: usize,
}

fn default_queue() -> usize {
    1024
}
fn default_write_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_ping() -> Duration {
    Duration::from_secs(15)
}
fn default_per_key() -> usize {
    16
}
fn default_max_clients() -> usize {
    1000
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            channel: None,
            client_queue: default_queue(),
            on_slow_client: SlowClient::default(),
            write_timeout: default_write_timeout(),
            ping_interval: default_ping(),
            max_clients_per_key: default_per_key(),
            max_clients: default_max_clients(),
        }
    }
}

/// Issues of a stream configuration (pure; paths relative to `stream`).
pub fn validate(c: &StreamConfig) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    if c.ping_interval.as_std() < StdDuration::from_millis(100) {
        issues.push(ConfigIssue::new(
            "stream.ping_interval",
            "must be at least 100ms",
        ));
    }
    if c.write_timeout.as_std().is_zero() {
        issues.push(ConfigIssue::new(
            "stream.write_timeout",
            "must be more than 0",
        ));
    }
    if c.channel.as_deref().is_some_and(str::is_empty) {
        issues.push(ConfigIssue::new("stream.channel", "must not be empty"));
    }
    issues
}

/// One published array of envelopes, parsed once for every client of this instance.
struct Batch {
    /// The JSON array as published.
    text: Utf8Bytes,
    /// Each envelope's byte range in `text` and its filter fields.
    items: Vec<Item>,
}

struct Item {
    start: usize,
    end: usize,
    event_type: String,
    user_id: String,
}

#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    event_type: String,
    #[serde(default)]
    user_id: String,
}

impl Batch {
    /// Parses a published array; `None` for anything that is not an array of objects.
    fn parse(text: String) -> Option<Batch> {
        let raws: Vec<&RawValue> = serde_json::from_str(&text).ok()?;
        let base = text.as_ptr() as usize;
        let mut items = Vec::with_capacity(raws.len());
        for raw in raws {
            let s = raw.get();
            let head: Head = serde_json::from_str(s).ok()?;
            let start = s.as_ptr() as usize - base;
            items.push(Item {
                start,
                end: start + s.len(),
                event_type: head.event_type,
                user_id: head.user_id,
            });
        }
        Some(Batch {
            text: Utf8Bytes::from(text),
            items,
        })
    }

    /// The message for a client with `filter`: the whole array, the matching envelopes, or
    /// nothing.
    fn frame(&self, filter: &Filter) -> Option<Utf8Bytes> {
        if filter.is_empty() {
            return (!self.items.is_empty()).then(|| self.text.clone());
        }
        let matching: Vec<&Item> = self.items.iter().filter(|i| filter.admits(i)).collect();
        if matching.is_empty() {
            return None;
        }
        if matching.len() == self.items.len() {
            return Some(self.text.clone());
        }
        let text = self.text.as_str();
        let mut out =
            String::with_capacity(matching.iter().map(|i| i.end - i.start + 1).sum::<usize>() + 2);
        out.push('[');
        for (n, i) in matching.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push_str(&text[i.start..i.end]);
        }
        out.push(']');
        Some(Utf8Bytes::from(out))
    }
}

/// A client's filters (`?event_type=a,b&user_id=u`): empty lists admit everything.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    event_types: Vec<String>,
    user_ids: Vec<String>,
}

impl Filter {
    /// From the query parameters (comma-separated lists).
    pub fn new(event_type: Option<&str>, user_id: Option<&str>) -> Self {
        let list = |v: Option<&str>| -> Vec<String> {
            v.map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
        };
        Self {
            event_types: list(event_type),
            user_ids: list(user_id),
        }
    }

    fn is_empty(&self) -> bool {
        self.event_types.is_empty() && self.user_ids.is_empty()
    }

    fn admits(&self, i: &Item) -> bool {
        (self.event_types.is_empty() || self.event_types.contains(&i.event_type))
            && (self.user_ids.is_empty() || self.user_ids.contains(&i.user_id))
    }
}

struct StreamMetrics {
    clients: Gauge,
    messages_sent: Counter,
    events_sent: Counter,
    dropped: Counter,
    slow_closes: Counter,
    published: Counter,
    publish_dropped: Counter,
    publish_failed: Counter,
    publish_seconds: Histogram,
    base: Metrics,
}

impl StreamMetrics {
    fn new(m: &Metrics) -> Self {
        Self {
            clients: m.gauge(
                "connectd_stream_clients",
                "WebSocket clients connected to /v1/stream",
            ),
            messages_sent: m.counter(
                "connectd_stream_messages_sent_total",
                "Messages (arrays of envelopes) sent to stream clients",
            ),
            events_sent: m.counter(
                "connectd_stream_events_sent_total",
                "Envelopes sent to stream clients (one per client that received it)",
            ),
            dropped: m.counter(
                "connectd_stream_dropped_total",
                "Messages skipped by slow clients under on_slow_client: drop_oldest",
            ),
            slow_closes: m.counter(
                "connectd_stream_slow_closes_total",
                "Clients closed for falling behind (code 4000)",
            ),
            published: m.counter(
                "connectd_stream_published_total",
                "Accepted requests published to the stream",
            ),
            publish_dropped: m.counter(
                "connectd_stream_publish_dropped_total",
                "Accepted requests not published because the publisher queue was full",
            ),
            publish_failed: m.counter(
                "connectd_stream_publish_failed_total",
                "Redis PUBLISH failures (the events went to this instance's clients only)",
            ),
            publish_seconds: m.histogram(
                "connectd_stream_publish_seconds",
                "Seconds from the broker's acknowledgement to the Redis PUBLISH reply",
                LATENCY_BUCKETS,
            ),
            base: m.clone(),
        }
    }

    fn refused(&self, reason: &str) {
        self.base
            .with_label("reason", reason)
            .counter(
                "connectd_stream_refused_total",
                "Stream connections refused, by reason",
            )
            .inc();
    }
}

/// Why a client could not connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_clients_per_key` reached (429).
    PerKey,
    /// `max_clients` reached (503).
    Full,
}

/// The fan-out of one `http_source`: publisher, Redis subscriber and the clients.
pub struct Hub {
    config: StreamConfig,
    channel: String,
    redis: Option<Arc<RedisConn>>,
    publish_tx: mpsc::Sender<(String, Instant)>,
    publish_rx: Mutex<Option<mpsc::Receiver<(String, Instant)>>>,
    tx: broadcast::Sender<Arc<Batch>>,
    per_key: Mutex<HashMap<String, usize>>,
    active: AtomicUsize,
    idle: Notify,
    metrics: StreamMetrics,
    connector: String,
}

/// A connected client's place in the hub; frees it when dropped.
pub struct Slot {
    hub: Arc<Hub>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = match self.hub.per_key.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(n) = g.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                g.remove(&self.key);
            }
        }
        drop(g);
        self.hub.metrics.clients.add(-1);
        if self.hub.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.hub.idle.notify_waiters();
        }
    }
}

impl Hub {
    /// A hub for connector `name`; Redis fan-out when `redis` is given.
    pub fn new(
        name: &str,
        config: StreamConfig,
        redis: Option<Arc<RedisConn>>,
        metrics: &Metrics,
    ) -> Arc<Self> {
        let (publish_tx, publish_rx) = mpsc::channel(4096);
        let (tx, _) = broadcast::channel(config.client_queue.max(1));
        Arc::new(Self {
            channel: config
                .channel
                .clone()
                .unwrap_or_else(|| format!("connectd:stream:{name}")),
            config,
            redis,
            publish_tx,
            publish_rx: Mutex::new(Some(publish_rx)),
            tx,
            per_key: Mutex::new(HashMap::new()),
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            metrics: StreamMetrics::new(metrics),
            connector: name.to_string(),
        })
    }

    /// Hands the accepted envelopes (a JSON array) to the publisher; never waits.
    pub fn publish(&self, array: String) {
        match self.publish_tx.try_send((array, Instant::now())) {
            Ok(()) => {}
            Err(_) => self.metrics.publish_dropped.inc(),
        }
    }

    /// Takes a client's place, or says why not.
    pub fn join(self: &Arc<Self>, key: &str) -> Result<Slot, Refused> {
        let mut g = match self.per_key.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if self.active.load(Ordering::SeqCst) >= self.config.max_clients {
            self.metrics.refused("max_clients");
            return Err(Refused::Full);
        }
        let n = g.entry(key.to_string()).or_insert(0);
        if *n >= self.config.max_clients_per_key {
            self.metrics.refused("max_clients_per_key");
            return Err(Refused::PerKey);
        }
        *n += 1;
        self.active.fetch_add(1, Ordering::SeqCst);
        self.metrics.clients.add(1);
        Ok(Slot {
            hub: self.clone(),
            key: key.to_string(),
        })
    }

    /// Counts a refused authentication.
    pub fn refused_auth(&self) {
        self.metrics.refused("auth");
    }

    /// Waits (at most `limit`) until every client task has ended.
    pub async fn wait_idle(&self, limit: StdDuration) {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                if self.active.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }

    fn deliver_local(&self, text: String) {
        match Batch::parse(text) {
            // No receiver is not an error: nobody is connected.
            Some(b) => {
                let _ = self.tx.send(Arc::new(b));
            }
            None => {
                tracing::warn!(connector = %self.connector, channel = %self.channel, "stream message is not an array of envelopes; ignored")
            }
        }
    }

    /// Runs the publisher and (with Redis) the subscriber until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let rx = match self.publish_rx.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        let Some(rx) = rx else { return };
        let publisher = self.clone().publisher(rx, shutdown.clone());
        match self.redis.clone() {
            Some(redis) => {
                let subscriber = self.clone().subscriber(redis, shutdown);
                tokio::join!(publisher, subscriber);
            }
            None => publisher.await,
        }
    }

    async fn publisher(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<(String, Instant)>,
        mut shutdown: Shutdown,
    ) {
        let mut batch = Vec::with_capacity(64);
        loop {
            let n = tokio::select! {
                n = rx.recv_many(&mut batch, 64) => n,
                _ = shutdown.wait() => return,
            };
            if n == 0 {
                return;
            }
            self.metrics.published.add(n as u64);
            let Some(redis) = &self.redis else {
                for (text, _) in batch.drain(..) {
                    self.deliver_local(text);
                }
                continue;
            };
            let mut pipe = redis::pipe();
            for (text, _) in &batch {
                pipe.cmd("PUBLISH")
                    .arg(&self.channel)
                    .arg(text.as_str())
                    .ignore();
            }
            match redis.pipeline::<()>(&pipe).await {
                Ok(()) => {
                    for (_, at) in batch.drain(..) {
                        self.metrics
                            .publish_seconds
                            .observe(at.elapsed().as_secs_f64());
                    }
                }
                Err(e) => {
                    self.metrics.publish_failed.add(n as u64);
                    tracing::warn!(connector = %self.connector, error = %e, "stream: redis PUBLISH failed; events go to this instance's clients only");
                    for (text, _) in batch.drain(..) {
                        self.deliver_local(text);
                    }
                }
            }
        }
    }

    /// Subscribes to the channel, reconnecting (once a second) until shutdown.
    async fn subscriber(self: Arc<Self>, redis: Arc<RedisConn>, mut shutdown: Shutdown) {
        loop {
            let connect = async {
                let mut ps = redis.client().get_async_pubsub().await?;
                ps.subscribe(&self.channel).await?;
                Ok::<_, redis::RedisError>(ps)
            };
            let ps = tokio::select! {
                r = tokio::time::timeout(StdDuration::from_secs(2), connect) => r,
                _ = shutdown.wait() => return,
            };
            match ps {
                Ok(Ok(ps)) => {
                    tracing::info!(connector = %self.connector, channel = %self.channel, "stream: subscribed");
                    let mut messages = ps.into_on_message();
                    loop {
                        let m = tokio::select! {
                            m = messages.next() => m,
                            _ = shutdown.wait() => return,
                        };
                        let Some(m) = m else { break };
                        match String::from_utf8(m.get_payload_bytes().to_vec()) {
                            Ok(text) => self.deliver_local(text),
                            Err(_) => {
                                tracing::warn!(connector = %self.connector, "stream message is not UTF-8; ignored")
                            }
                        }
                    }
                    tracing::warn!(connector = %self.connector, channel = %self.channel, "stream: subscription lost; reconnecting");
                }
                Ok(Err(e)) => {
                    tracing::warn!(connector = %self.connector, error = %e, "stream: cannot subscribe; retrying")
                }
                Err(_) => {
                    tracing::warn!(connector = %self.connector, "stream: subscribing timed out; retrying")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(StdDuration::from_secs(1)) => {}
                _ = shutdown.wait() => return,
            }
        }
    }

    /// Serves one client until it leaves, falls behind, goes silent or the server stops.
    pub async fn serve_client(
        self: Arc<Self>,
        socket: WebSocket,
        filter: Filter,
        slot: Slot,
        mut shutdown: Shutdown,
    ) {
        let mut rx = self.tx.subscribe();
        let (mut sink, mut incoming) = socket.split();
        let ping_every = self.config.ping_interval.as_std();
        let write_timeout = self.config.write_timeout.as_std();
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let mut last_heard = Instant::now();
        let close = |code: u16, reason: &'static str| {
            Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            }))
        };
        let reason: Option<Message> = loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Ok(batch) => {
                        let Some(frame) = batch.frame(&filter) else { continue };
                        let events = if filter.is_empty() { batch.items.len() } else {
                            batch.items.iter().filter(|i| filter.admits(i)).count()
                        };
                        match tokio::time::timeout(write_timeout, sink.send(Message::Text(frame))).await {
                            Ok(Ok(())) => {
                                self.metrics.messages_sent.inc();
                                self.metrics.events_sent.add(events as u64);
                            }
                            Ok(Err(_)) => break None,
                            Err(_) => {
                                self.metrics.slow_closes.inc();
                                tracing::info!(connector = %self.connector, "stream: client closed, a send took longer than write_timeout");
                                break Some(close(CLOSE_SLOW, "slow client: write_timeout"));
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        if self.config.on_slow_client == SlowClient::DropOldest {
                            self.metrics.dropped.add(n);
                            continue;
                        }
                        self.metrics.slow_closes.inc();
                        tracing::info!(connector = %self.connector, behind = n, "stream: client closed, more than client_queue messages behind");
                        break Some(close(CLOSE_SLOW, "slow client: client_queue exceeded"));
                    }
                    Err(broadcast::error::RecvError::Closed) => break Some(close(CLOSE_GOING_AWAY, "server shutting down")),
                },
                m = incoming.next() => match m {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                    Some(Ok(_)) => last_heard = Instant::now(),
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > ping_every * 2 {
                        break Some(close(CLOSE_NO_PONG, "no pong"));
                    }
                    if tokio::time::timeout(write_timeout, sink.send(Message::Ping(bytes::Bytes::from_static(b"connectd")))).await.map_or(true, |r| r.is_err()) {
                        break None;
                    }
                }
                _ = shutdown.wait() => break Some(close(CLOSE_GOING_AWAY, "server shutting down")),
            }
        };
        if let Some(frame) = reason {
            let _ = tokio::time::timeout(StdDuration::from_secs(1), async {
                if sink.send(frame).await.is_ok() {
                    // Wait briefly for the client's close reply so the close is clean.
                    let _ = tokio::time::timeout(StdDuration::from_millis(500), async {
                        while let Some(Ok(m)) = incoming.next().await {
                            if matches!(m, Message::Close(_)) {
                                break;
                            }
                        }
                    })
                    .await;
                }
            })
            .await;
        }
        let _ = sink.close().await;
        drop(slot);
    }
}

/// The API key a browser offers in `Sec-WebSocket-Protocol` (`connectd.key.<key>`), and whether
/// the offer names [`PROTOCOL`].
pub fn key_from_protocols(header: Option<&str>) -> (Option<String>, bool) {
    let Some(h) = header else {
        return (None, false);
    };
    let mut key = None;
    let mut ours = false;
    for p in h.split(',').map(str::trim) {
        if p == PROTOCOL {
            ours = true;
        } else if let Some(k) = p.strip_prefix(KEY_PROTOCOL_PREFIX) {
            key = Some(k.to_string());
        }
    }
    (key, ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(t: &str, u: &str, n: u32) -> String {
        format!(r#"{{"event_type":"{t}","user_id":"{u}","payload":{{"n":{n},"s":"a,]"}}}}"#)
    }

    #[test]
    fn a_batch_is_sent_whole_or_as_the_envelopes_a_filter_admits() {
        let text = format!(
            "[{},{},{}]",
            env("view", "u1", 1),
            env("buy", "u2", 2),
            env("view", "u2", 3)
        );
        let b = Batch::parse(text.clone()).expect("parses");
        assert_eq!(b.items.len(), 3);
        assert_eq!(b.frame(&Filter::default()).expect("all").as_str(), text);
        let views = b.frame(&Filter::new(Some("view"), None)).expect("views");
        assert_eq!(
            views.as_str(),
            format!("[{},{}]", env("view", "u1", 1), env("view", "u2", 3))
        );
        let u2_buys = b
            .frame(&Filter::new(Some(" buy ,x"), Some("u2")))
            .expect("u2 buys");
        assert_eq!(u2_buys.as_str(), format!("[{}]", env("buy", "u2", 2)));
        assert!(b.frame(&Filter::new(Some("signup"), None)).is_none());
        // Every range is an envelope of its own.
        let parsed: Vec<serde_json::Value> = serde_json::from_str(views.as_str()).expect("json");
        assert_eq!(parsed[1]["payload"]["n"], 3);
    }

    #[test]
    fn what_is_not_an_array_of_objects_is_ignored() {
        assert!(Batch::parse("{}".into()).is_none());
        assert!(Batch::parse("[1]".into()).is_none());
        assert!(Batch::parse("[".into()).is_none());
    }

    #[test]
    fn the_key_rides_in_the_protocol_offer() {
        assert_eq!(
            key_from_protocols(Some("connectd.v1, connectd.key.cd_abc")),
            (Some("cd_abc".to_string()), true)
        );
        assert_eq!(key_from_protocols(Some("chat")), (None, false));
        assert_eq!(key_from_protocols(None), (None, false));
    }

    #[tokio::test]
    async fn places_are_limited_per_key_and_in_all_and_freed_on_drop() {
        let config = StreamConfig {
            max_clients_per_key: 2,
            max_clients: 3,
            ..StreamConfig::default()
        };
        let hub = Hub::new("t", config, None, &Metrics::new());
        let a1 = hub.join("a").expect("a1");
        let _a2 = hub.join("a").expect("a2");
        assert_eq!(hub.join("a").err(), Some(Refused::PerKey));
        let _b1 = hub.join("b").expect("b1");
        assert_eq!(hub.join("c").err(), Some(Refused::Full));
        drop(a1);
        let _a3 = hub.join("a").expect("a place freed by a1");
        assert_eq!(hub.metrics.clients.get(), 3);
    }
}
