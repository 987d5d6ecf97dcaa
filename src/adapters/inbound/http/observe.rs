//! Observability of the HTTP API: every request gets an `x-request-id` (the
//! client's, when it is a plain token, else a new UUID) that tags every log
//! line of the request through a tracing span and comes back on the
//! response; every answer is counted for `GET /metrics`. A log line names
//! the method, the path and the status, never a query string, a header
//! other than the id, or a body.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Span;

use super::AppState;
use super::metrics::{CONTENT_TYPE, Gauges};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-chosen request id kept.
const REQUEST_ID_MAX: usize = 128;

/// Routes polled by monitors and the status page: their answers log at debug,
/// so a page left open does not fill the log.
const QUIET_ROUTES: &[&str] = &[
    "/",
    "/health",
    "/status",
    "/cache",
    "/unlock/status",
    "/metrics",
    "/openapi.json",
];

/// A request id from a client is kept only when it is 1-128 bytes of
/// `A-Z a-z 0-9 . _ - :`; anything else would let a client write arbitrary
/// text into the log, so it is dropped and a new id made.
fn usable_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= REQUEST_ID_MAX
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

/// Drops an unusable (or repeated) incoming `x-request-id` before the id is set.
pub async fn drop_unusable_request_id(mut req: Request) -> Request {
    let mut ids = req.headers().get_all(&X_REQUEST_ID).iter();
    let keep = match (ids.next(), ids.next()) {
        (None, _) => true,
        (Some(only), None) => usable_request_id(only),
        (Some(_), Some(_)) => false,
    };
    if !keep {
        req.headers_mut().remove(&X_REQUEST_ID);
    }
    req
}

/// The span around a request: its id, method and path (not the query).
pub fn request_span(req: &Request) -> Span {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        id = %id,
        method = %req.method(),
        path = %req.uri().path(),
        // The cause of a failed answer, set by `HttpError`.
        error = tracing::field::Empty,
    )
}

/// Counts the answer by matched route and status, and logs it (inside the
/// request's span). For a streamed body this is when the head goes out.
pub async fn count_and_log(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method = req.method().clone();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let route = route.as_deref().unwrap_or("unmatched");
    let elapsed = started.elapsed();
    state
        .metrics
        .record_request(route, &method, status, elapsed);
    let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    if method == Method::GET && QUIET_ROUTES.contains(&route) {
        tracing::debug!(status, elapsed_ms, "answered");
    } else {
        tracing::info!(status, elapsed_ms, "answered");
    }
    response
}

/// The loader's counters and gauges in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    responses((status = 200, description = "Counters and gauges in the Prometheus text exposition format 0.0.4", content_type = "text/plain", body = String))
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let cache = match state.resources.cache_usage().await {
        Ok(usage) => Some(usage),
        Err(e) => {
            tracing::warn!("metrics without cache usage: {e}");
            None
        }
    };
    let text = state.metrics.render(&Gauges {
        authenticated: state.session.is_authenticated(),
        cache,
        unlock: state.unlock.status(),
    });
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::usable_request_id;
    use axum::http::HeaderValue;

    #[test]
    fn only_plain_request_ids_are_kept() {
        for (id, usable) in [
            ("5f0c6a53-1d2e-4a7b-9c1f-2b3d4e5f6a7b", true),
            ("trace:abc.1_2", true),
            ("", false),
            ("a b", false),
            ("a\"b", false),
            ("{}", false),
            ("ü", false),
        ] {
            let value = HeaderValue::from_bytes(id.as_bytes()).unwrap();
            assert_eq!(usable_request_id(&value), usable, "{id:?}");
        }
        let long = HeaderValue::from_str(&"a".repeat(129)).unwrap();
        assert!(!usable_request_id(&long));
        let longest = HeaderValue::from_str(&"a".repeat(128)).unwrap();
        assert!(usable_request_id(&longest));
    }
}
