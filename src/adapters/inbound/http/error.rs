//! The one place where errors become HTTP statuses and `{"detail": ...}`
//! bodies. A 4xx says what was wrong with the request. A 5xx body is a
//! fixed phrase for its kind (the Resource API, the CDN, the cache, the
//! hardware): the typed cause, whose text may come from upstream or name a
//! path, goes to the log and onto the request's span (`error` field), never
//! into the body (the pattern of axum's error-handling example).

use std::error::Error as StdError;

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::openapi::ErrorBody;
use crate::app::resources::{LoadError, TransfersBusy, UploadError};
use crate::app::session::{CallError, LoginError};
use crate::app::unlock::UnlockStartError;
use crate::domain::names::NameError;
use crate::ports::{ApiError, CacheError, StoreError};

#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub detail: String,
    /// Headers the answer needs (`Retry-After`, `WWW-Authenticate`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Why, for the log (a 5xx's body does not carry it).
    pub cause: Option<Box<dyn StdError + Send + Sync>>,
}

impl HttpError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            headers: Vec::new(),
            cause: None,
        }
    }

    /// A failure of the loader or a peer: the body says only `public`; the
    /// `cause` is logged with its chain of sources.
    pub fn server(
        status: StatusCode,
        public: impl Into<String>,
        cause: impl StdError + Send + Sync + 'static,
    ) -> Self {
        Self {
            cause: Some(Box::new(cause)),
            ..Self::new(status, public)
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

/// `error`, then each of its sources: `a: b: c`.
pub fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        let more = source.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = source.source();
    }
    text
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let cause = self
            .cause
            .as_deref()
            .map(|c| chain(c as &(dyn StdError + 'static)));
        if let Some(cause) = &cause {
            tracing::Span::current().record("error", cause.as_str());
        }
        match (&cause, self.status.is_server_error()) {
            (Some(cause), _) => {
                tracing::error!(status = self.status.as_u16(), error = %cause, "{}", self.detail)
            }
            (None, true) => tracing::error!(status = self.status.as_u16(), "{}", self.detail),
            (None, false) => tracing::info!(status = self.status.as_u16(), "{}", self.detail),
        }
        let mut response = (
            self.status,
            Json(ErrorBody {
                detail: self.detail,
            }),
        )
            .into_response();
        response.headers_mut().extend(self.headers);
        response
    }
}

impl From<NameError> for HttpError {
    fn from(e: NameError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e.to_string())
    }
}

impl From<LoginError> for HttpError {
    fn from(e: LoginError) -> Self {
        // PROTOCOL §5: bad credentials, an unreachable API and an undecryptable cdn.yaml all answer 401.
        match e {
            LoginError::Hardware(_) => Self::server(
                StatusCode::INTERNAL_SERVER_ERROR,
                "login failed: the hardware fingerprint cannot be read",
                e,
            ),
            _ => Self::new(StatusCode::UNAUTHORIZED, format!("login failed: {e}")),
        }
    }
}

fn api_status(e: &ApiError) -> StatusCode {
    match e {
        ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
        ApiError::DeviceMismatch => StatusCode::FORBIDDEN,
        ApiError::NotFound => StatusCode::NOT_FOUND,
        ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::Upstream { .. } | ApiError::Unexpected(_) => StatusCode::BAD_GATEWAY,
    }
}

fn store_status(e: &StoreError) -> StatusCode {
    match e {
        StoreError::NoSuchKey(_) | StoreError::NoSuchBucket(_) => StatusCode::NOT_FOUND,
        StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        StoreError::Unauthorized | StoreError::Unexpected(_) => StatusCode::BAD_GATEWAY,
    }
}

/// The fixed phrase a 5xx from a peer answers with.
fn peer_failure(status: StatusCode, peer: &str) -> String {
    match status {
        StatusCode::SERVICE_UNAVAILABLE => format!("{peer} is unavailable; try again later"),
        _ => format!("{peer} answered with an error"),
    }
}

impl From<CallError> for HttpError {
    fn from(e: CallError) -> Self {
        let status = match &e {
            CallError::NotLoggedIn | CallError::Unauthorized => StatusCode::UNAUTHORIZED,
            CallError::Api(api) => api_status(api),
            CallError::Hardware(_) => {
                return Self::server(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the hardware fingerprint cannot be read",
                    e,
                );
            }
        };
        if status.is_server_error() {
            Self::server(status, peer_failure(status, "the Resource API"), e)
        } else {
            Self::new(status, e.to_string())
        }
    }
}

/// A CDN failure: 404s name the object; 5xx say only that the CDN failed.
fn cdn_error(store: StoreError) -> HttpError {
    let status = store_status(&store);
    if status.is_server_error() {
        HttpError::server(status, peer_failure(status, "the CDN"), store)
    } else {
        HttpError::new(status, store.to_string())
    }
}

impl From<LoadError> for HttpError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Call(call) => call.into(),
            LoadError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, e.to_string()),
            LoadError::SmallPartUndecryptable => Self::new(StatusCode::BAD_GATEWAY, e.to_string()),
            LoadError::Cdn(store) => cdn_error(store),
            LoadError::Busy(busy) => busy.into(),
            LoadError::Mismatched(_) => Self::new(StatusCode::CONFLICT, e.to_string()),
            LoadError::Cache(CacheError::NoRoom { .. }) => {
                Self::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string())
            }
            LoadError::Cache(cache) => Self::server(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the cache cannot take the big part",
                cache,
            ),
        }
    }
}

/// Seconds a client is asked to wait when every transfer slot is taken.
pub const BUSY_RETRY_AFTER_SECS: u32 = 5;

impl From<TransfersBusy> for HttpError {
    fn from(e: TransfersBusy) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).with_header(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from(BUSY_RETRY_AFTER_SECS),
        )
    }
}

impl From<UploadError> for HttpError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Call(call) => call.into(),
            UploadError::NoSuchBucket(_) => Self::new(StatusCode::NOT_FOUND, e.to_string()),
            UploadError::BadBody(_) => Self::new(StatusCode::BAD_REQUEST, e.to_string()),
            UploadError::SmallPart(ref call) => {
                // Always a 5xx: the upload did not complete, whatever the API said.
                let status = match call {
                    CallError::Api(ApiError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::BAD_GATEWAY,
                };
                Self::server(
                    status,
                    "the big part was stored but the small part was not: upload the resource again",
                    e,
                )
            }
            UploadError::Cdn(store) => cdn_error(store),
        }
    }
}

impl From<UnlockStartError> for HttpError {
    fn from(e: UnlockStartError) -> Self {
        Self::new(StatusCode::NOT_FOUND, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::CacheError;

    #[test]
    fn a_server_error_keeps_its_cause_out_of_the_body_and_in_the_chain() {
        let cause = CacheError::io(
            "cannot read /var/cache/azaion/models",
            std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied"),
        );
        assert_eq!(
            chain(&cause),
            "the cache cannot be used: cannot read /var/cache/azaion/models: permission denied"
        );
        assert_eq!(cause.io_kind(), Some(std::io::ErrorKind::PermissionDenied));
        let error = HttpError::server(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the cache cannot be read",
            cause,
        );
        assert_eq!(error.detail, "the cache cannot be read");
        assert!(error.cause.is_some());
    }
}
