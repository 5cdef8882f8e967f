//! The admin status page in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by `scripts/dev-services.sh browser`), driven over WebDriver:
//! it loads, lists the connectors, its pause button pauses a sink (checked through
//! `/connectors`), its live tail shows events posted to the source, and a screenshot is saved
//! to `target/test-artifacts/status-page.png`.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::{json, Value};

const KEY: &str = "page-key-0123456789abcdef";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// WebDriver's name of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    child: Child,
    addr: String,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One WebDriver command (HTTP/1.1 with a JSON body); returns `value`.
async fn wd(addr: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = wd_status(addr, method, path, body).await;
    assert!(status == 200, "{method} {path}: {status} {v}");
    v
}

/// [`wd`], with the HTTP status instead of a panic.
async fn wd_status(addr: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("chromedriver");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    // ChromeDriver keeps the connection open: read the head, then Content-Length bytes.
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            let n = s.read(&mut chunk).await.expect("read");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len || n == 0 {
                    return buf;
                }
            } else if n == 0 {
                return buf;
            }
        }
    };
    let buf = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("chromedriver answered in time");
    let resp = Resp::parse(&buf);
    (resp.status, resp.json()["value"].clone())
}

impl Driver {
    async fn start(profile: &std::path::Path) -> Self {
        assert!(
            std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
            "{CHROMEDRIVER} or {CHROMIUM} missing: run `bash scripts/dev-services.sh browser` (scripts/test.sh does)"
        );
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr = format!("127.0.0.1:{port}");
        wait_port(&addr);
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                // As root, without the sandbox; the network flags keep Chromium from calling home
                // on a machine with no internet.
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1500,1000",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let mut d = Driver {
            child,
            addr,
            session: String::new(),
        };
        let v = wd(&d.addr, "POST", "/session", Some(caps)).await;
        d.session = v["sessionId"].as_str().expect("session id").to_string();
        d
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        wd(
            &self.addr,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )
        .await
    }

    async fn script(&self, js: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
        .await
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .cmd(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    /// Clicks `css`; finds it again when the page re-rendered it in between (stale element).
    async fn click(&self, css: &str) {
        for _ in 0..5 {
            let id = self.element(css).await;
            let path = format!("/session/{}/element/{id}/click", self.session);
            let (status, v) = wd_status(&self.addr, "POST", &path, Some(json!({}))).await;
            if status == 200 {
                return;
            }
            eprintln!("click {css}: {status} {v}; again");
        }
        panic!("could not click {css}");
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Polls `js` until it returns `true`.
    async fn wait_for(&self, js: &str, what: &str) {
        let start = Instant::now();
        loop {
            if self.script(js).await == json!(true) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the page never showed {what}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn artifacts() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_lists_connectors_pauses_a_sink_and_tails_the_stream_in_chromium() {
    let dir = tempfile::tempdir().expect("tmp");
    let topic = unique("page");
    create_topic(&topic, 2).await;
    let http = format!("127.0.0.1:{}", free_port());
    let (source, sink) = (unique("front"), unique("archive"));
    let yaml = format!(
        r#"kafka:
  brokers: ${{KAFKA_BROKERS}}
admin:
  listen: ${{CONNECTD_ADMIN}}
shutdown_timeout: 5s
connectors:
  - name: {source}
    type: http_source
    output: {topic}
    listen: {http}
    static_keys:
      - name: page
        key: {KEY}
    stream: {{}}
  - name: {sink}
    type: file_sink
    input: {topic}
    path: {out}
"#,
        out = dir.path().join("out.jsonl").display()
    );
    let cfg = write_file(dir.path(), "c.yaml", &yaml);
    let c = Connectd::start(&cfg, &dir.path().join("log"), &[]);
    wait_port(&http);
    let driver = Driver::start(&dir.path().join("profile")).await;

    driver
        .cmd(
            "POST",
            "/url",
            Some(json!({"url": format!("http://{}/", c.admin)})),
        )
        .await;
    let rows = format!(
        "return document.querySelector('tr[data-connector=\"{source}\"]') !== null && document.querySelector('tr[data-connector=\"{sink}\"]') !== null"
    );
    driver.wait_for(&rows, "both connectors").await;
    let sink_running = format!("return document.querySelector('tr[data-connector=\"{sink}\"] .state').textContent === 'running'");
    driver.wait_for(&sink_running, "the sink running").await;

    // Pause through the page; the API confirms.
    driver
        .click(&format!("tr[data-connector=\"{sink}\"] button.pause"))
        .await;
    let start = Instant::now();
    loop {
        let (_, body) = c.get(&format!("/connectors/{sink}")).await;
        let v: Value = serde_json::from_str(&body).expect("json");
        if v["state"] == "paused" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the sink never paused: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sink_paused = format!("return document.querySelector('tr[data-connector=\"{sink}\"] .state').textContent === 'paused'");
    driver.wait_for(&sink_paused, "the sink paused").await;

    // The live tail, with the key offered as a sub-protocol.
    driver.type_into("#tail-key", KEY).await;
    driver.click("#tail-connect").await;
    driver
        .wait_for(
            "return document.getElementById('tail-status').textContent.startsWith('connected')",
            "the tail connected",
        )
        .await;
    let events: Vec<Value> = (0..7)
        .map(|i| {
            json!({
                "user_id": uuid::Uuid::new_v4().to_string(),
                "event_type": "page_view",
                "client_timestamp": "2026-12-02T10:00:00Z",
                "payload": {"n": i},
            })
        })
        .collect();
    let resp = post_json(
        &http,
        "/v1/events",
        &[("x-api-key", KEY)],
        "application/json",
        Value::Array(events).to_string().as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 202, "{}", resp.body);
    driver
        .wait_for(
            "return document.querySelectorAll('#tail-events li').length === 7",
            "the 7 events in the tail",
        )
        .await;
    let first = driver
        .script("return JSON.parse(document.querySelector('#tail-events li:last-child').textContent).payload.n")
        .await;
    assert_eq!(first, json!(0), "oldest at the bottom");
    // A source counts what the broker acknowledged as its records out.
    let (_, body) = c.get(&format!("/connectors/{source}")).await;
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["records_out"], 7, "{body}");

    let shot = driver.cmd("GET", "/screenshot", None).await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot.as_str().expect("base64"))
        .expect("png");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = artifacts().join("status-page.png");
    std::fs::write(&path, &png).expect("write screenshot");
    eprintln!("screenshot: {}", path.display());

    // Resume from the page too.
    driver
        .click(&format!("tr[data-connector=\"{sink}\"] button.resume"))
        .await;
    driver
        .wait_for(&sink_running, "the sink running again")
        .await;
    let _ = driver.cmd("DELETE", "", None).await;
}
