//! The one place where errors become HTTP statuses and `{"detail": ...}`
//! bodies. Logs the cause; the body names the problem but never a secret.

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::openapi::ErrorBody;
use crate::app::resources::{LoadError, TransfersBusy, UploadError};
use crate::app::session::{CallError, LoginError};
use crate::app::unlock::UnlockStartError;
use crate::domain::names::NameError;
use crate::ports::{ApiError, StoreError};

#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub detail: String,
    /// Headers the answer needs (`Retry-After`, `WWW-Authenticate`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl HttpError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), "{}", self.detail);
        } else {
            tracing::info!(status = self.status.as_u16(), "{}", self.detail);
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
        let status = match e {
            LoginError::Hardware(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::UNAUTHORIZED,
        };
        Self::new(status, format!("login failed: {e}"))
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

impl From<CallError> for HttpError {
    fn from(e: CallError) -> Self {
        let status = match &e {
            CallError::NotLoggedIn | CallError::Unauthorized => StatusCode::UNAUTHORIZED,
            CallError::Api(api) => api_status(api),
            CallError::Hardware(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

impl From<LoadError> for HttpError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Call(call) => call.into(),
            LoadError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, e.to_string()),
            LoadError::SmallPartUndecryptable => Self::new(StatusCode::BAD_GATEWAY, e.to_string()),
            LoadError::Cdn(ref store) => Self::new(store_status(store), e.to_string()),
            LoadError::Busy(busy) => busy.into(),
            LoadError::Mismatched(_) => Self::new(StatusCode::CONFLICT, e.to_string()),
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
                Self::new(status, e.to_string())
            }
            UploadError::Cdn(ref store) => Self::new(store_status(store), e.to_string()),
        }
    }
}

impl From<UnlockStartError> for HttpError {
    fn from(e: UnlockStartError) -> Self {
        Self::new(StatusCode::NOT_FOUND, e.to_string())
    }
}
