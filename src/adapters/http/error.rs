//! The one place where errors become HTTP statuses and `{"detail": ...}`
//! bodies. Logs the cause; the body names the problem but never a secret.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::openapi::ErrorBody;
use crate::app::resources::{LoadError, UploadError};
use crate::app::session::{CallError, LoginError};
use crate::app::unlock::UnlockStartError;
use crate::domain::names::NameError;
use crate::ports::{ApiError, StoreError};

#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub detail: String,
}

impl HttpError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), "{}", self.detail);
        } else {
            tracing::info!(status = self.status.as_u16(), "{}", self.detail);
        }
        (
            self.status,
            Json(ErrorBody {
                detail: self.detail,
            }),
        )
            .into_response()
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
        }
    }
}

impl From<UploadError> for HttpError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Call(call) => call.into(),
            UploadError::NoSuchBucket(_) => Self::new(StatusCode::NOT_FOUND, e.to_string()),
            UploadError::BadBody(_) => Self::new(StatusCode::BAD_REQUEST, e.to_string()),
            UploadError::Cdn(ref store) => Self::new(store_status(store), e.to_string()),
        }
    }
}

impl From<UnlockStartError> for HttpError {
    fn from(e: UnlockStartError) -> Self {
        Self::new(StatusCode::NOT_FOUND, e.to_string())
    }
}
