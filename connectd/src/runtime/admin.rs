//! The admin HTTP server (SPEC §10): metrics, health, connector status, pause/resume.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /health` | `200 ok` while no connector is `failed`, else `503` with the failed names |
//! | `GET /connectors` | status of every connector (JSON) |
//! | `GET /connectors/{name}` | status of one connector |
//! | `POST /connectors/{name}/pause` | pause delivery (partitions paused, group kept) |
//! | `POST /connectors/{name}/resume` | resume delivery; starts a `failed` connector again |
//!
//! With `admin.token` set, every route but `/health` needs `Authorization: Bearer <token>`.

use axum::extract::{Path, Request, State as AxState};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use connector_core::config::Secret;
use serde_json::json;

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
        .merge(protected)
        .with_state(state)
}

async fn auth(AxState(s): AxState<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.expose().as_bytes()));
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

/// Compares without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn metrics(AxState(s): AxState<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.status.metrics.render(),
    )
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

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
