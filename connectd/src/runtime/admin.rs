//! The admin HTTP server (SPEC §10): metrics, health, connector status, pause/resume.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /` | the status page (HTML/JS/CSS compiled into the binary, no CDN): connectors, state, partitions, lag, rates, DLQ counts, breaker, pause/resume, live tail of a source's `/v1/stream` |
//! | `GET /metrics` | OpenMetrics when `Accept` asks for it, else the Prometheus text format 0.0.4 |
//! | `GET /health` | `200 ok` while no connector is `failed`, else `503` with the failed names |
//! | `GET /connectors` | status of every connector (JSON) |
//! | `GET /connectors/{name}` | status of one connector |
//! | `POST /connectors/{name}/pause` | pause delivery (partitions paused, group kept) |
//! | `POST /connectors/{name}/resume` | resume delivery; starts a `failed` connector again |
//!
//! With `admin.token` set, every route but `/health` and the page's static files needs
//! `Authorization: Bearer <token>`; the page asks for the token when the API answers 401 and
//! keeps it in the tab's `sessionStorage`.

use axum::extract::{Path, Request, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use connector_core::config::Secret;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::status::{Control, State, StatusRegistry};

#[derive(Clone)]
struct AppState {
    status: StatusRegistry,
    token: Option<Secret>,
}

/// The admin router over `status`.
pub fn router(status: StatusRegistry, token: Option<Secret>) -> Router {
    let state = AppState { status, token };
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/connectors", get(list))
        .route("/connectors/{name}", get(one))
        .route("/connectors/{name}/pause", post(pause))
        .route("/connectors/{name}/resume", post(resume))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/health", get(health))
        .route("/", get(page))
        .route("/ui/app.js", get(script))
        .route("/ui/app.css", get(style))
        .merge(protected)
        .with_state(state)
}

/// The page allows scripts and styles from this server only; it may open WebSockets to any
/// host (the stream lives on the http_source's own port).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", include_str!("ui/index.html"))
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("ui/app.js"))
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("ui/app.css"))
}

async fn auth(AxState(s): AxState<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(token.expose().as_bytes())));
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "missing or wrong admin token"})),
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// `/metrics`: OpenMetrics when the scraper asks for it (Prometheus does, in `Accept`), the
/// classic Prometheus text format otherwise.
async fn metrics(AxState(s): AxState<AppState>, headers: HeaderMap) -> impl IntoResponse {
    record_runtime_busy(&s.status.metrics);
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            s.status.metrics.render_openmetrics(),
        )
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            s.status.metrics.render(),
        )
    }
}

/// The time tokio's worker threads spent busy (not parked), summed, as
/// `connectd_runtime_busy_microseconds`: beside each connector's
/// `connectd_connector_busy_microseconds_total` (`connector_core::task`), the share of the
/// runtime's CPU each connector used; the rest is work no connector's task did (library
/// drivers, timers, this server).
fn record_runtime_busy(metrics: &connector_core::metrics::Metrics) {
    let m = tokio::runtime::Handle::current().metrics();
    let micros: u128 = (0..m.num_workers())
        .map(|w| m.worker_total_busy_duration(w).as_micros())
        .sum();
    metrics
        .gauge(
            "connectd_runtime_busy_microseconds",
            "Time the runtime's worker threads spent busy since start, summed over workers, in microseconds",
        )
        .set(i64::try_from(micros).unwrap_or(i64::MAX));
    metrics
        .gauge("connectd_runtime_workers", "The runtime's worker threads")
        .set(i64::try_from(m.num_workers()).unwrap_or(i64::MAX));
}

async fn health(AxState(s): AxState<AppState>) -> Response {
    let failed: Vec<String> = s
        .status
        .all()
        .into_iter()
        .filter(|h| h.state() == State::Failed)
        .map(|h| h.name.clone())
        .collect();
    if failed.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "failed": failed})),
        )
            .into_response()
    }
}

async fn list(AxState(s): AxState<AppState>) -> impl IntoResponse {
    Json(s.status.all().iter().map(|h| h.view()).collect::<Vec<_>>())
}

fn not_found(name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": format!("no connector named {name:?}")})),
    )
        .into_response()
}

async fn one(AxState(s): AxState<AppState>, Path(name): Path<String>) -> Response {
    match s.status.get(&name) {
        Some(h) => Json(h.view()).into_response(),
        None => not_found(&name),
    }
}

async fn pause(AxState(s): AxState<AppState>, Path(name): Path<String>) -> Response {
    match s.status.get(&name) {
        Some(h) => {
            h.send_control(Control::Pause);
            Json(json!({"name": name, "requested": "pause"})).into_response()
        }
        None => not_found(&name),
    }
}

async fn resume(AxState(s): AxState<AppState>, Path(name): Path<String>) -> Response {
    match s.status.get(&name) {
        Some(h) => {
            h.send_control(Control::Run);
            if h.state() == State::Failed {
                h.request_restart();
            }
            Json(json!({"name": name, "requested": "resume"})).into_response()
        }
        None => not_found(&name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use connector_core::metrics::Metrics;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(
        router: &Router,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, String, String) {
        let mut req = Request::builder().uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = router
            .clone()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, ctype, String::from_utf8_lossy(&body).into_owned())
    }

    fn registry() -> StatusRegistry {
        let metrics = Metrics::new();
        metrics
            .with_label("connector", "c")
            .counter("connectd_records_in_total", "Records read")
            .add(7);
        StatusRegistry::new(metrics)
    }

    #[tokio::test]
    async fn the_token_guards_every_route_but_health() {
        let router = router(registry(), Some(Secret::new("s3cret")));
        assert_eq!(
            get(&router, "/metrics", &[]).await.0,
            StatusCode::UNAUTHORIZED
        );
        let wrong = [("authorization", "Bearer s3cre")];
        assert_eq!(
            get(&router, "/metrics", &wrong).await.0,
            StatusCode::UNAUTHORIZED
        );
        let right = [("authorization", "Bearer s3cret")];
        assert_eq!(get(&router, "/metrics", &right).await.0, StatusCode::OK);
        assert_eq!(get(&router, "/connectors", &right).await.0, StatusCode::OK);
        assert_eq!(get(&router, "/health", &[]).await.0, StatusCode::OK);
        // The page itself holds no data: it loads, then asks for the token.
        let (status, ctype, body) = get(&router, "/", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(ctype.starts_with("text/html"), "{ctype}");
        assert!(body.contains("/ui/app.js"), "{body}");
        assert_eq!(get(&router, "/ui/app.js", &[]).await.0, StatusCode::OK);
        assert_eq!(get(&router, "/ui/app.css", &[]).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_speak_openmetrics_to_whoever_asks_for_it() {
        let router = router(registry(), None);
        let (status, ctype, body) = get(&router, "/metrics", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
        assert!(
            body.contains("# TYPE connectd_records_in_total counter"),
            "{body}"
        );
        assert!(
            body.contains("connectd_records_in_total{connector=\"c\"} 7"),
            "{body}"
        );
        assert!(!body.contains("# EOF"), "{body}");
        // The runtime's busy time, to set each connector's busy time against.
        assert!(
            body.contains("# TYPE connectd_runtime_busy_microseconds gauge"),
            "{body}"
        );
        assert!(body.contains("connectd_runtime_workers{} 1"), "{body}");
        // What Prometheus sends.
        let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let (_, ctype, body) = get(&router, "/metrics", &[("accept", accept)]).await;
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        assert!(
            body.contains("# TYPE connectd_records_in counter"),
            "{body}"
        );
        assert!(
            body.contains("connectd_records_in_total{connector=\"c\"} 7"),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
}
