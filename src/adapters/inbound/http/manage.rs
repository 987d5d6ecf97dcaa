//! The operator's endpoints (issue 13): prefetch a big part into the cache,
//! remove one entry, prune the cache. Behind the same §5.3 guard as every
//! route, with §5's name rules checked before any work.

use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;

use super::openapi::{CacheEntryBody, LoadBody, PrefetchLine, PruneBody, RemovedBody, VerifyBody};
use super::{AppState, ErrorBody, HttpError, JsonBody, resource_of};
use crate::app::resources::Prefetch;
use crate::domain::names::{Folder, ResourceName};

/// How often a prefetch in progress reports.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

fn json_line(line: &PrefetchLine) -> bytes::Bytes {
    let mut text = serde_json::to_vec(line).unwrap_or_default();
    text.push(b'\n');
    bytes::Bytes::from(text)
}

/// Brings the big part of a resource into the cache without decrypting it.
/// The answer is JSON lines: progress while the CDN read runs, then one
/// line with `state` `done` (or `error` with a `detail`). The read goes on
/// if the client hangs up.
#[utoipa::path(
    post,
    path = "/prefetch/{filename}",
    tag = "loader",
    params(("filename" = String, Path, min_length = 1, max_length = 200, pattern = "^[A-Za-z0-9._-]{1,200}$", example = "demo.txt",
        description = "The resource: 1-200 bytes of A-Z a-z 0-9 . _ -, not . or ..")),
    request_body(content = LoadBody, content_type = "application/json"),
    responses(
        (status = 200, description = "JSON lines of PrefetchLine: progress, then `done`, `cached` or `error`", content_type = "application/x-ndjson", body = PrefetchLine),
        (status = 400, description = "A bad file name or folder, or a body that is not valid JSON", body = ErrorBody),
        (status = 401, description = "Not logged in, or the API refused the stored credentials again", body = ErrorBody),
        (status = 403, description = "The API refused this device's fingerprint", body = ErrorBody),
        (status = 404, description = "The resource is unknown to the API or the CDN", body = ErrorBody),
        (status = 409, description = "The parts belong to different uploads (PROTOCOL §5.4)", body = ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 422, description = "The JSON lacks a field or has one of the wrong type", body = ErrorBody),
        (status = 500, description = "The cache or the device's hardware cannot be used", body = ErrorBody),
        (status = 502, description = "The API or the CDN failed", body = ErrorBody),
        (status = 503, description = "The API or the CDN is unreachable, or every transfer slot is taken", body = ErrorBody),
        (status = 507, description = "The cache's file system is at its free-space floor", body = ErrorBody),
    )
)]
pub async fn prefetch(
    State(state): State<AppState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    JsonBody(body): JsonBody<LoadBody>,
) -> Result<Response, HttpError> {
    let (folder, name) = resource_of(path, &body)?;
    let lines: futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>> =
        match state.resources.prefetch(&folder, &name).await? {
            Prefetch::Cached { big_len } => futures::stream::once(async move {
                Ok(json_line(&PrefetchLine {
                    state: "cached".into(),
                    bytes_done: big_len,
                    bytes_total: big_len,
                    detail: None,
                }))
            })
            .boxed(),
            Prefetch::Fetching(job) => {
                let total = job.big_len();
                let (progress, seen) = tokio::sync::watch::channel(0u64);
                let transfer =
                    state
                        .transfers
                        .start("prefetch", format!("{folder}/{name}"), Some(total));
                // Its own task: a client that hangs up does not stop the read.
                let run = tokio::spawn(job.run(move |done| {
                    transfer.set(done);
                    progress.send_replace(done);
                }));
                let watch = Watch {
                    run,
                    seen,
                    total,
                    what: format!("{folder}/{name}"),
                };
                futures::stream::unfold(Some(watch), |watch| async move {
                    let mut watch = watch?;
                    let line = watch.next_line().await;
                    let last = line.state != "fetching";
                    Some((Ok(json_line(&line)), (!last).then_some(watch)))
                })
                .boxed()
            }
        };
    let mut response = Response::new(Body::from_stream(lines));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

/// A prefetch running in its own task, watched for the answer's lines.
struct Watch {
    run: tokio::task::JoinHandle<std::io::Result<u64>>,
    seen: tokio::sync::watch::Receiver<u64>,
    total: u64,
    what: String,
}

impl Watch {
    /// The next line: progress after [`PROGRESS_EVERY`], or the outcome.
    async fn next_line(&mut self) -> PrefetchLine {
        let line = |state: &str, done: u64, detail: Option<String>| PrefetchLine {
            state: state.into(),
            bytes_done: done,
            bytes_total: self.total,
            detail,
        };
        tokio::select! {
            joined = &mut self.run => {
                let seen = *self.seen.borrow();
                match joined {
                    Ok(Ok(done)) => line("done", done, None),
                    Ok(Err(e)) => {
                        tracing::warn!(resource = %self.what, "prefetch failed: {e}");
                        line("error", seen, Some(e.to_string()))
                    }
                    Err(e) => line("error", seen, Some(format!("the prefetch stopped: {e}"))),
                }
            }
            () = tokio::time::sleep(PROGRESS_EVERY) => line("fetching", *self.seen.borrow(), None),
        }
    }
}

fn removed_body(removed: Vec<crate::ports::CachedEntry>) -> RemovedBody {
    let freed_bytes = removed.iter().map(|e| e.bytes).sum();
    RemovedBody {
        removed: removed.into_iter().map(CacheEntryBody::from).collect(),
        freed_bytes,
    }
}

/// Removes one cached big part (the next load reads it from the CDN again).
#[utoipa::path(
    delete,
    path = "/cache/{folder}/{filename}",
    tag = "loader",
    params(
        ("folder" = String, Path, example = "models", description = "The resource's folder (PROTOCOL §5)"),
        ("filename" = String, Path, min_length = 1, max_length = 200, pattern = "^[A-Za-z0-9._-]{1,200}$", example = "demo.txt",
            description = "The resource: 1-200 bytes of A-Z a-z 0-9 . _ -, not . or ..")),
    responses(
        (status = 200, description = "The entry was removed", body = RemovedBody),
        (status = 400, description = "A bad folder or file name", body = ErrorBody),
        (status = 404, description = "The cache holds no such entry", body = ErrorBody),
        (status = 500, description = "The cache folder cannot be changed", body = ErrorBody),
    )
)]
pub async fn remove_entry(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
) -> Result<Json<RemovedBody>, HttpError> {
    let Path((folder, filename)) = path.map_err(|_| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            "the folder or file name in the path is not valid",
        )
    })?;
    let folder = Folder::parse(&folder)?;
    let name = ResourceName::parse(&filename)?;
    let Some(removed) = state.resources.remove_cached(&folder, &name).await? else {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            format!("the cache holds no big part of {folder}/{name}"),
        ));
    };
    Ok(Json(removed_body(vec![removed])))
}

/// Removes the entries unused for a while, and the least recently used
/// ones until the cache holds at most a size.
#[utoipa::path(
    post,
    path = "/cache/prune",
    tag = "loader",
    request_body(content = PruneBody, content_type = "application/json"),
    responses(
        (status = 200, description = "What was removed, least recently used first", body = RemovedBody),
        (status = 400, description = "Neither max_bytes nor unused_for_secs, or a body that is not valid JSON", body = ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 422, description = "A field of the wrong type, or an unknown one", body = ErrorBody),
        (status = 500, description = "The cache folder cannot be changed", body = ErrorBody),
    )
)]
pub async fn prune(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<PruneBody>,
) -> Result<Json<RemovedBody>, HttpError> {
    if body.max_bytes.is_none() && body.unused_for_secs.is_none() {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "say max_bytes, unused_for_secs or both",
        ));
    }
    let unused_since = body
        .unused_for_secs
        .map(|secs| SystemTime::now() - Duration::from_secs(secs.min(100 * 365 * 86_400)));
    let removed = state.resources.prune(body.max_bytes, unused_since).await?;
    Ok(Json(removed_body(removed)))
}

/// Re-reads every cached big part against its block checksums and removes
/// the damaged ones (a load would never serve them, but would find them only
/// when it reached the block). Slow for a large cache: it reads every byte.
#[utoipa::path(
    post,
    path = "/cache/verify",
    tag = "loader",
    responses(
        (status = 200, description = "How many entries were checked, and the damaged ones (removed)", body = VerifyBody),
        (status = 500, description = "The cache folder cannot be read", body = ErrorBody),
    )
)]
pub async fn verify(State(state): State<AppState>) -> Result<Json<VerifyBody>, HttpError> {
    let (checked, damaged) = state.resources.verify_cache().await?;
    Ok(Json(VerifyBody {
        checked,
        damaged: damaged.into_iter().map(CacheEntryBody::from).collect(),
    }))
}
