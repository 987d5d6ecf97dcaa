//! SDK errors reduced to the port's [`StoreError`]: a missing key or bucket, refused
//! keys, an unreachable or busy CDN, or anything else (described without a secret).

use std::io;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::domain::names::Folder;
use crate::ports::StoreError;

pub(super) fn body_failed(err: io::Error) -> StoreError {
    StoreError::Unexpected(format!("the body to upload failed: {err}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Get,
    Put,
}

/// What went wrong with one SDK call, reduced to what the mapping needs.
pub(super) enum Failure {
    Service {
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    Unreachable(String),
    Other(String),
}

impl Failure {
    pub(super) fn from_sdk<E>(err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &err {
            SdkError::ServiceError(service) => Self::Service {
                status: service.raw().status().as_u16(),
                code: service.err().code().map(str::to_owned),
                message: service.err().message().map(str::to_owned),
            },
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
                Self::Unreachable(DisplayErrorContext(&err).to_string())
            }
            _ => Self::Other(DisplayErrorContext(&err).to_string()),
        }
    }

    pub(super) fn is_range_not_satisfiable(&self) -> bool {
        matches!(self, Self::Service { status: 416, .. })
            || matches!(self, Self::Service { code: Some(code), .. } if code == "InvalidRange")
    }

    pub(super) fn into_store_error(self, op: Op, bucket: &Folder, key: &str) -> StoreError {
        let (status, code, message) = match self {
            Self::Unreachable(reason) => return StoreError::Unavailable(reason),
            Self::Other(reason) => return StoreError::Unexpected(reason),
            Self::Service {
                status,
                code,
                message,
            } => (status, code, message),
        };
        match (code.as_deref(), status, op) {
            (Some("NoSuchKey"), _, _) => StoreError::NoSuchKey(key.to_owned()),
            (Some("NoSuchBucket"), _, _) => StoreError::NoSuchBucket(bucket.to_string()),
            (
                Some(
                    "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "AccessDenied"
                    | "NotSignedUp"
                    | "ExpiredToken"
                    | "InvalidToken",
                ),
                _,
                _,
            )
            | (_, 401 | 403, _) => StoreError::Unauthorized,
            (None, 404, Op::Get) => StoreError::NoSuchKey(key.to_owned()),
            (None, 404, Op::Put) => StoreError::NoSuchBucket(bucket.to_string()),
            (_, 503, _) => StoreError::Unavailable(describe(status, code, message)),
            _ => StoreError::Unexpected(describe(status, code, message)),
        }
    }
}

fn describe(status: u16, code: Option<String>, message: Option<String>) -> String {
    format!(
        "HTTP {status} {}: {}",
        code.as_deref().unwrap_or("(no code)"),
        message.as_deref().unwrap_or("(no message)")
    )
}
