//! The loader's own HTTP API (PROTOCOL §5), served with axum. Validates
//! shapes and names before any I/O, maps every error to a status and a
//! `{"detail": ...}` body in one place, and never puts a secret in a body.
//! `GET /openapi.json` describes it, generated from the annotations here.
//! Every request carries an `x-request-id` into its log lines and back on
//! its response; `GET /metrics` counts, `GET /` shows a status page.
//!
//! Limits: a JSON body is at most 64 KiB (413 past that); an upload streams,
//! but its `folder` and any unknown field are at most 1 KiB and a form holds
//! at most 16 fields (400 past either). The request head's size and read time
//! are bounded by the accept loop ([`serve`]): hyper answers 431 to a head that
//! is too large, before any handler and with an empty body.

pub mod boundary;
mod error;
pub mod form_guard;
mod manage;
pub mod metrics;
mod observe;
mod openapi;
mod page;
pub mod serve;
mod spool;
pub mod transfers;
mod upload;
pub mod write_idle;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures::StreamExt;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use error::HttpError;
pub use openapi::{ApiDoc, ErrorBody, document as openapi_document};

use crate::app::readiness::Readiness;
use crate::app::resources::ResourceService;
use crate::app::session::SessionService;
use crate::app::unlock::UnlockService;
use crate::domain::cipher::CryptoBackend;
use crate::domain::names::{Folder, ResourceName};
use crate::ports::Credentials;
use openapi::{
    CredentialsBody, HealthBody, LoadBody, MissingBody, OkBody, ReadyBody, ResourceBytes,
    StatusBody, TransfersBody, UnlockProgressBody, UnlockStartBody, UnlockStatusBody,
};

pub use upload::UploadLimits;

/// The state every HTTP handler shares.
#[derive(Clone)]
pub struct AppState {
    pub session: Arc<SessionService>,
    pub resources: Arc<ResourceService>,
    pub unlock: Arc<UnlockService>,
    /// Absolute path of the cache folder, reported by `/status`.
    pub cache_dir: PathBuf,
    /// What `GET /metrics` reports; the API, CDN and cache ports count into
    /// the same registry.
    pub metrics: Arc<metrics::HttpMetrics>,
    /// PROTOCOL §5.3's upload limits.
    pub uploads: UploadLimits,
    /// What `GET /ready` checks.
    pub readiness: Arc<Readiness>,
    /// Loads, prefetches and uploads in progress (`GET /transfers`).
    pub transfers: Arc<transfers::Transfers>,
}

/// JSON bodies are small; uploads have their own (streaming) route.
const JSON_BODY_LIMIT: usize = 64 * 1024;

/// The API with §5.3's caller checks ahead of every handler.
pub fn router(state: AppState, policy: boundary::CallerPolicy) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/status", get(status))
        .route("/login", post(login))
        .route("/load/{filename}", post(load))
        // §5: an empty name is a bad name, not an unknown endpoint.
        .route("/load/", post(empty_name))
        .route("/upload/", post(empty_name))
        .route(
            "/upload/{filename}",
            post(upload::upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/unlock", post(unlock))
        .route("/unlock/status", get(unlock_status))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/", get(page::status_page))
        .route("/cache", get(page::cache))
        .route("/cache/prune", post(manage::prune))
        .route("/cache/verify", post(manage::verify))
        .route("/cache/{folder}/{filename}", delete(manage::remove_entry))
        .route("/prefetch/{filename}", post(manage::prefetch))
        .route("/prefetch/", post(empty_name))
        .route("/metrics", get(observe::metrics))
        .route("/transfers", get(transfers_list))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Innermost first: each layer below wraps the ones above it.
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(middleware::map_request(idle_bodies))
        // Who may call (§5.3): before any handler; after a small body was
        // drained, so that the refusal reaches the client (see below).
        .layer(middleware::from_fn_with_state(
            std::sync::Arc::new(policy),
            boundary::guard,
        ))
        .layer(middleware::from_fn(read_small_body_first))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            observe::count_and_log,
        ))
        .layer(PropagateRequestIdLayer::new(observe::X_REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(observe::request_span)
                .on_request(())
                .on_response(()),
        )
        .layer(SetRequestIdLayer::new(
            observe::X_REQUEST_ID,
            MakeRequestUuid,
        ))
        .layer(middleware::map_request(observe::drop_unusable_request_id))
        .with_state(state)
}

/// Reads a small body (declared length up to the JSON limit) whole before
/// routing. An early answer (404, 405, 415, a bad name) otherwise leaves the
/// body unread, and closing a connection with unread input makes the kernel
/// reset it: the client may then lose the answer. Larger bodies stream.
async fn read_small_body_first(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    match declared {
        Some(len) if len > 0 && len <= JSON_BODY_LIMIT => {
            let (parts, body) = req.into_parts();
            match tokio::time::timeout(form_guard::BODY_IDLE, axum::body::to_bytes(body, len)).await
            {
                Ok(Ok(bytes)) => {
                    next.run(Request::from_parts(parts, Body::from(bytes)))
                        .await
                }
                Ok(Err(_)) => HttpError::new(
                    StatusCode::BAD_REQUEST,
                    "the body does not match its declared length",
                )
                .into_response(),
                Err(_) => HttpError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "the client did not send its body in time",
                )
                .into_response(),
            }
        }
        _ => next.run(req).await,
    }
}

/// Bodies other than uploads' (which have their own guard) are cut off when
/// the client sends nothing for [`form_guard::BODY_IDLE`].
async fn idle_bodies(req: Request) -> Request {
    if req.uri().path().starts_with("/upload/") {
        return req;
    }
    let (parts, body) = req.into_parts();
    let stream = body.into_data_stream();
    let idle = IdleBody {
        inner: stream,
        clock: write_idle::IdleClock::new(form_guard::BODY_IDLE),
    };
    Request::from_parts(parts, Body::from_stream(idle))
}

struct IdleBody<S> {
    inner: S,
    clock: write_idle::IdleClock,
}

impl<S> futures::Stream for IdleBody<S>
where
    S: futures::Stream<Item = Result<bytes::Bytes, axum::Error>> + Unpin,
{
    type Item = Result<bytes::Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(item) => {
                this.clock.reset();
                Poll::Ready(item.map(|r| r.map_err(std::io::Error::other)))
            }
            Poll::Pending if this.clock.expired(cx) => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client sent nothing for 30 s",
            )))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A handler that panics answers 500 with the usual body instead of dropping
/// the connection; the panic's message goes to the log only.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %what, "a request handler panicked");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(ErrorBody {
            detail: "internal error".to_owned(),
        }),
    )
        .into_response()
}

/// A JSON body whose rejections answer with the same `{"detail"}` shape.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(HttpError))]
pub struct JsonBody<T>(pub T);

impl From<JsonRejection> for HttpError {
    fn from(rejection: JsonRejection) -> Self {
        json_rejection(rejection)
    }
}

fn json_rejection(rejection: JsonRejection) -> HttpError {
    let status = rejection.status();
    let detail = match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "expected a JSON body with Content-Type: application/json".to_owned()
        }
        JsonRejection::JsonSyntaxError(_) => "the body is not valid JSON".to_owned(),
        JsonRejection::JsonDataError(e) => format!(
            "the JSON body does not have the expected fields: {}",
            without_quoted_strings(&e.body_text())
        ),
        other => other.body_text(),
    };
    HttpError::new(status, detail)
}

/// serde quotes a string value it did not expect (`invalid type: string
/// "...", expected ...`), and that value may be a password: keep the shape of
/// the message, drop every double-quoted span.
fn without_quoted_strings(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    let mut escaped = false;
    for c in message.chars() {
        if quoted {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => {
                    quoted = false;
                    out.push_str("\"…\"");
                }
                _ => escaped = false,
            }
        } else if c == '"' {
            quoted = true;
        } else {
            out.push(c);
        }
    }
    if quoted {
        out.push_str("\"…");
    }
    out
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "loader",
    responses((status = 200, description = "The process serves", body = HealthBody))
)]
async fn health() -> Json<HealthBody> {
    Json(HealthBody {
        status: "healthy".to_owned(),
    })
}

/// Readiness, as against `/health`'s liveness: 200 only when a model can be
/// served now (logged in; the cache folder writable above its free-space
/// floor; the unlock `ready` when images are configured).
#[utoipa::path(
    get,
    path = "/ready",
    tag = "loader",
    responses(
        (status = 200, description = "The loader can serve a model now", body = ReadyBody),
        (status = 503, description = "Something is missing: each item names the check and what to do", body = ReadyBody),
    )
)]
async fn ready(State(state): State<AppState>) -> Response {
    let missing: Vec<MissingBody> = state
        .readiness
        .missing()
        .await
        .into_iter()
        .map(|m| MissingBody {
            check: m.check.to_owned(),
            detail: m.detail,
        })
        .collect();
    let status = if missing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = ReadyBody {
        ready: missing.is_empty(),
        missing,
    };
    (status, Json(body)).into_response()
}

#[utoipa::path(
    get,
    path = "/status",
    tag = "loader",
    responses((status = 200, description = "Session and cache folder", body = StatusBody))
)]
async fn status(State(state): State<AppState>) -> Json<StatusBody> {
    Json(StatusBody {
        status: "healthy".to_owned(),
        authenticated: state.session.is_authenticated(),
        model_cache_dir: state.cache_dir.display().to_string(),
        crypto_backend: CryptoBackend::detect().as_str().to_owned(),
    })
}

impl From<CredentialsBody> for Credentials {
    fn from(body: CredentialsBody) -> Self {
        Credentials {
            email: body.email,
            password: body.password,
        }
    }
}

/// Logs in to the Resource API and fetches the device's CDN configuration.
#[utoipa::path(
    post,
    path = "/login",
    tag = "loader",
    request_body(content = CredentialsBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Logged in; the CDN configuration is loaded", body = OkBody),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 401, description = "Bad credentials, the API is unreachable, or cdn.yaml does not decrypt", body = ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 422, description = "The JSON lacks a field or has one of the wrong type", body = ErrorBody),
        (status = 500, description = "The device's hardware cannot be read", body = ErrorBody),
    )
)]
async fn login(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CredentialsBody>,
) -> Result<Json<OkBody>, HttpError> {
    state.session.login(body.into()).await?;
    Ok(Json(OkBody::ok()))
}

/// The folder and name of a `/load` or `/prefetch` request (§5): the path's
/// name, which the body's `filename` must equal when given.
fn resource_of(
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: &LoadBody,
) -> Result<(Folder, ResourceName), HttpError> {
    let filename = path_name(path)?;
    if let Some(in_body) = &body.filename
        && in_body != &filename
    {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "the filename in the body differs from the one in the path",
        ));
    }
    let name = ResourceName::parse(&filename)?;
    let folder = Folder::parse(&body.folder)?;
    Ok((folder, name))
}

fn path_name(
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<String, HttpError> {
    path.map(|Path(p)| p).map_err(|_| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            "the file name in the path is not valid",
        )
    })
}

/// Streams the decrypted resource: small part from the API, big part from
/// the local cache or the CDN.
#[utoipa::path(
    post,
    path = "/load/{filename}",
    tag = "loader",
    params(("filename" = String, Path, min_length = 1, max_length = 200, pattern = "^[A-Za-z0-9._-]{1,200}$", example = "demo.txt",
        description = "The resource: 1-200 bytes of A-Z a-z 0-9 . _ -, not . or ..")),
    request_body(content = LoadBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The decrypted resource, streamed. A big part damaged at its very end cuts the transfer instead of ending it cleanly", content_type = "application/octet-stream", body = ResourceBytes),
        (status = 400, description = "A bad file name or folder, a body file name that differs from the path's, or a body that is not valid JSON", body = ErrorBody),
        (status = 401, description = "Not logged in, or the API refused the stored credentials again after a re-login", body = ErrorBody),
        (status = 403, description = "The API refused this device's fingerprint", body = ErrorBody),
        (status = 404, description = "The resource is unknown to the API or the CDN", body = ErrorBody),
        (status = 409, description = "The API's small part and the CDN's big part belong to different uploads: the resource is being replaced, or its last upload failed (PROTOCOL §5.4)", body = ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 422, description = "The JSON lacks a field or has one of the wrong type", body = ErrorBody),
        (status = 500, description = "The device's hardware cannot be read", body = ErrorBody),
        (status = 502, description = "The API or the CDN failed, or sent a part that does not decrypt", body = ErrorBody),
        (status = 503, description = "The API or the CDN is unreachable, or LOADER_MAX_TRANSFERS CDN transfers are in progress (with Retry-After)", body = ErrorBody),
    )
)]
async fn load(
    State(state): State<AppState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    JsonBody(body): JsonBody<LoadBody>,
) -> Result<Response, HttpError> {
    let (folder, name) = resource_of(path, &body)?;
    let download = state.resources.download(&folder, &name).await?;
    let metrics = state.metrics.clone();
    // Listed until the stream ends or the client goes.
    let transfer =
        state
            .transfers
            .start("load", format!("{folder}/{name}"), download.plaintext_len);
    let plaintext = download.plaintext.inspect(move |chunk| {
        if let Ok(bytes) = chunk {
            metrics.add_load_bytes(bytes.len() as u64);
            transfer.add(bytes.len() as u64);
        }
    });
    let mut response = Response::new(Body::from_stream(plaintext));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    // Known for a cache hit: clients see progress and any cut as a short body.
    if let Some(len) = download.plaintext_len {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Ok(response)
}

/// Starts unlocking the image archive in the background (PROTOCOL §6).
#[utoipa::path(
    post,
    path = "/unlock",
    tag = "loader",
    request_body(content = CredentialsBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The unlock's state: authenticating when a run started, else the current one", body = UnlockStartBody),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 404, description = "The archive is missing and the expected images are not loaded", body = ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 422, description = "The JSON lacks a field or has one of the wrong type", body = ErrorBody),
    )
)]
async fn unlock(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CredentialsBody>,
) -> Result<Json<UnlockStartBody>, HttpError> {
    let phase = state.unlock.start(body.into()).await?;
    Ok(Json(UnlockStartBody {
        state: phase.into(),
    }))
}

#[utoipa::path(
    get,
    path = "/unlock/status",
    tag = "loader",
    responses((status = 200, description = "The unlock's state, its last error and progress", body = UnlockStatusBody))
)]
async fn unlock_status(State(state): State<AppState>) -> Json<UnlockStatusBody> {
    let status = state.unlock.status();
    Json(UnlockStatusBody {
        state: status.phase.into(),
        error: status.error,
        progress: UnlockProgressBody {
            bytes_done: status.progress.bytes_done,
            bytes_total: status.progress.bytes_total,
            phase_elapsed_ms: u64::try_from(status.progress.phase_elapsed.as_millis())
                .unwrap_or(u64::MAX),
        },
    })
}

/// The loads, prefetches and uploads in progress, for the status page.
#[utoipa::path(
    get,
    path = "/transfers",
    tag = "loader",
    responses((status = 200, description = "Each transfer in progress with its bytes, total when known and rate", body = TransfersBody))
)]
async fn transfers_list(State(state): State<AppState>) -> Json<TransfersBody> {
    Json(TransfersBody {
        transfers: state.transfers.list(),
    })
}

async fn empty_name() -> impl IntoResponse {
    HttpError::new(
        StatusCode::BAD_REQUEST,
        "the file name in the path is empty (1-200 bytes of A-Z a-z 0-9 . _ -)",
    )
}

async fn not_found() -> impl IntoResponse {
    HttpError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn method_not_allowed() -> impl IntoResponse {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this endpoint does not answer to that method",
    )
}

#[cfg(test)]
mod tests {
    use super::without_quoted_strings;

    #[test]
    fn quoted_values_are_dropped_from_deserialisation_messages() {
        for (message, expected) in [
            (
                r#"invalid type: string "hunter2", expected struct X at line 1 column 9"#,
                r#"invalid type: string "…", expected struct X at line 1 column 9"#,
            ),
            (
                r#"password: invalid type: string "a\"b\\", expected u8"#,
                r#"password: invalid type: string "…", expected u8"#,
            ),
            ("missing field `password`", "missing field `password`"),
            (r#"cut "off"#, r#"cut "…"#),
            ("", ""),
        ] {
            assert_eq!(without_quoted_strings(message), expected, "{message}");
        }
    }
}
