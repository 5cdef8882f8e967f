//! `connectd stream`: follows an `http_source`'s live stream (`GET /v1/stream`) and prints
//! each accepted envelope as one JSON line.
//!
//! ```text
//! connectd stream --url ws://127.0.0.1:8080/v1/stream --key "$KEY" --event-type purchase
//! ```
//!
//! The key goes in the `x-api-key` header, never in the URL. `connected` is printed on stderr
//! once the server accepted the stream; the exit code is 0 after `--max` envelopes or
//! `--idle-exit` of silence, 1 when the server closes the stream or cannot be reached.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{EXIT_OK, EXIT_RUNTIME, EXIT_USAGE};

/// `connectd stream` arguments.
#[derive(Debug, Args)]
pub struct StreamArgs {
    /// The stream's URL (`ws://` or `wss://`, path `/v1/stream`).
    #[arg(
        long,
        env = "CONNECTD_STREAM_URL",
        default_value = "ws://127.0.0.1:8080/v1/stream"
    )]
    pub url: String,
    /// API key of the http_source.
    #[arg(long, env = "CONNECTD_API_KEY", hide_env_values = true)]
    pub key: String,
    /// Only these event types (comma-separated).
    #[arg(long)]
    pub event_type: Option<String>,
    /// Only these user ids (comma-separated).
    #[arg(long)]
    pub user_id: Option<String>,
    /// Stop after this many envelopes.
    #[arg(long)]
    pub max: Option<u64>,
    /// Stop when nothing arrived for this long (`5s`; default: follow until interrupted).
    #[arg(long)]
    pub idle_exit: Option<connector_core::config::Duration>,
}

fn with_query(url: &str, a: &StreamArgs) -> String {
    let mut params = Vec::new();
    if let Some(t) = &a.event_type {
        params.push(format!("event_type={}", encode(t)));
    }
    if let Some(u) = &a.user_id {
        params.push(format!("user_id={}", encode(u)));
    }
    if params.is_empty() {
        return url.to_string();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{}", params.join("&"))
}

/// Percent-encodes a query value (everything but unreserved characters and commas).
fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~,".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs `connectd stream`.
pub async fn run(a: StreamArgs) -> u8 {
    let url = with_query(&a.url, &a);
    let mut req = match url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {:?} is not a WebSocket URL: {e}", a.url);
            return EXIT_USAGE;
        }
    };
    match HeaderValue::from_str(&a.key) {
        Ok(v) => {
            req.headers_mut().insert("x-api-key", v);
        }
        Err(_) => {
            eprintln!("error: the key has characters a header cannot carry");
            return EXIT_USAGE;
        }
    }
    let (mut ws, _) = match tokio_tungstenite::connect_async(req).await {
        Ok(c) => c,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            eprintln!(
                "error: the server refused the stream: {} {body}",
                resp.status()
            );
            return EXIT_RUNTIME;
        }
        Err(e) => {
            eprintln!("error: cannot open {}: {e}", a.url);
            return EXIT_RUNTIME;
        }
    };
    eprintln!("connected");
    let idle = a.idle_exit.map(|d| d.as_std());
    let mut seen = 0u64;
    let stdout = std::io::stdout();
    loop {
        let next = match idle {
            Some(d) => match tokio::time::timeout(d, ws.next()).await {
                Ok(m) => m,
                Err(_) => {
                    eprintln!(
                        "{seen} envelopes; nothing for {}s, stopping",
                        d.as_secs_f64()
                    );
                    return EXIT_OK;
                }
            },
            None => ws.next().await,
        };
        match next {
            Some(Ok(Message::Text(t))) => {
                let envelopes: Vec<&serde_json::value::RawValue> =
                    match serde_json::from_str(t.as_str()) {
                        Ok(v) => v,
                        Err(e) => {
                            eprintln!("warning: a message is not an array of envelopes: {e}");
                            continue;
                        }
                    };
                let mut out = stdout.lock();
                for e in envelopes {
                    if writeln!(out, "{}", e.get()).is_err() {
                        return EXIT_OK; // stdout closed (e.g. `| head`)
                    }
                    seen += 1;
                    if a.max.is_some_and(|m| seen >= m) {
                        let _ = out.flush();
                        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                        return EXIT_OK;
                    }
                }
                let _ = out.flush();
            }
            Some(Ok(Message::Close(frame))) => {
                match frame {
                    Some(f) => eprintln!(
                        "the server closed the stream: {} {}",
                        u16::from(f.code),
                        f.reason
                    ),
                    None => eprintln!("the server closed the stream"),
                }
                return EXIT_RUNTIME;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                eprintln!("error: the stream failed: {e}");
                return EXIT_RUNTIME;
            }
            None => {
                eprintln!("the stream ended");
                return EXIT_RUNTIME;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_go_in_the_query_encoded() {
        let a = StreamArgs {
            url: "ws://h/v1/stream".into(),
            key: "k".into(),
            event_type: Some("purchase,page view".into()),
            user_id: None,
            max: None,
            idle_exit: None,
        };
        assert_eq!(
            with_query(&a.url, &a),
            "ws://h/v1/stream?event_type=purchase,page%20view"
        );
    }
}
