//! The status page (`GET /`) and the cache listing it shows (`GET /cache`).
//! The page is one self-contained HTML document (inline style and script,
//! no external asset, no build step) that polls the JSON endpoints; its
//! Content-Security-Policy allows exactly its own inline style and script (by
//! hash) and requests to this loader, nothing else. The script inserts every
//! value as text, never as HTML.

use std::sync::LazyLock;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::AppState;
use super::HttpError;
use super::openapi::{CacheBody, CacheEntryBody, CacheUsageBody, ErrorBody};
use crate::ports::CacheError;

const TEMPLATE: &str = include_str!("page/status.html");
const STYLE: &str = include_str!("page/status.css");
const SCRIPT: &str = include_str!("page/status.js");

struct Page {
    html: String,
    content_security_policy: HeaderValue,
}

/// `'sha256-…'`: the CSP source that allows exactly this inline text.
fn csp_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

static PAGE: LazyLock<Page> = LazyLock::new(|| {
    let html = TEMPLATE
        .replacen("{{style}}", STYLE, 1)
        .replacen("{{script}}", SCRIPT, 1);
    let policy = format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        csp_hash(SCRIPT),
        csp_hash(STYLE)
    );
    Page {
        html,
        // Base64, quotes and ASCII words only: always a valid header value.
        content_security_policy: HeaderValue::from_str(&policy)
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'")),
    }
});

/// A person's view of the loader: health, login, unlock progress and cache.
#[utoipa::path(
    get,
    path = "/",
    tag = "meta",
    responses((status = 200, description = "The status page: one self-contained HTML document that polls /health, /status, /cache, /transfers, /metrics and /unlock/status", content_type = "text/html", body = String))
)]
pub async fn status_page() -> Response {
    let page = &*PAGE;
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                page.content_security_policy.clone(),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        ],
        page.html.clone(),
    )
        .into_response()
}

impl From<CacheError> for HttpError {
    fn from(e: CacheError) -> Self {
        Self::server(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the cache cannot be read",
            e,
        )
    }
}

/// The big parts in the local cache, and how much room they take.
#[utoipa::path(
    get,
    path = "/cache",
    tag = "loader",
    responses(
        (status = 200, description = "Cache usage and the cached big parts, by folder and name", body = CacheBody),
        (status = 500, description = "The cache folder cannot be read", body = ErrorBody),
    )
)]
pub async fn cache(State(state): State<AppState>) -> Result<Response, HttpError> {
    let usage = state.resources.cache_usage().await?;
    let entries = state.resources.cache_entries().await?;
    let body = CacheBody {
        usage: CacheUsageBody {
            bytes: usage.bytes,
            entries: usage.entries,
            limit: usage.limit,
        },
        entries: entries.into_iter().map(CacheEntryBody::from).collect(),
    };
    Ok((
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_assembled_whole_and_its_policy_names_both_hashes() {
        let page = &*PAGE;
        assert!(!page.html.contains("{{"), "a placeholder was left");
        assert!(page.html.contains(SCRIPT) && page.html.contains(STYLE));
        let policy = page.content_security_policy.to_str().unwrap();
        assert!(policy.contains(&csp_hash(SCRIPT)), "{policy}");
        assert!(policy.contains(&csp_hash(STYLE)), "{policy}");
        assert_ne!(policy, "default-src 'none'");
    }

    #[test]
    fn the_script_never_parses_data_as_html() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!SCRIPT.contains(sink), "the script uses {sink}");
        }
    }
}
