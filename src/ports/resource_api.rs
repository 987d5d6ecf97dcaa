//! The vendor's Resource API (PROTOCOL §2).

use async_trait::async_trait;
use bytes::Bytes;

use crate::domain::names::Folder;
use crate::domain::secret::{SecretBytes, SecretString};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub email: String,
    pub password: SecretString,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 401/403, or wrong credentials at login (401/409).
    #[error("the Resource API refused the credentials or the token")]
    Unauthorized,
    /// 409 on a resource call: the user is bound to another hardware fingerprint.
    #[error("the Resource API refused this device's hardware fingerprint")]
    DeviceMismatch,
    #[error("the Resource API has no such file")]
    NotFound,
    /// Connection refused, DNS, TLS, or a timeout: worth a retry later.
    #[error("the Resource API is unreachable: {0}")]
    Unavailable(String),
    /// A 5xx or another status the protocol does not define.
    #[error("the Resource API failed with status {status}")]
    Upstream { status: u16 },
    /// An answer that does not fit the protocol (no token, bad JSON).
    #[error("the Resource API answered something unexpected: {0}")]
    Unexpected(String),
}

#[async_trait]
pub trait ResourceApi: Send + Sync {
    /// `POST /login` → the JWT. Errors: `Unauthorized` (401/409), `Unavailable`, `Upstream`, `Unexpected`.
    async fn login(&self, credentials: &Credentials) -> Result<SecretString, ApiError>;

    /// `POST /resources/get/{folder}`: `file_name` encrypted under the caller's API key.
    /// `folder` is `None` for the root (where `cdn.yaml` lives).
    /// Errors: `Unauthorized` (401/403), `DeviceMismatch` (409), `NotFound` (404), `Unavailable`, `Upstream`.
    async fn get_resource(
        &self,
        token: &SecretString,
        folder: Option<&Folder>,
        file_name: &str,
        password: &SecretString,
        hardware: &str,
    ) -> Result<Bytes, ApiError>;

    /// `POST /resources/{folder}` (multipart field `data`): stores a small part as given.
    /// Errors as for `get_resource`.
    async fn put_resource(
        &self,
        token: &SecretString,
        folder: &Folder,
        file_name: &str,
        data: Bytes,
    ) -> Result<(), ApiError>;

    /// `GET /binary-split/key-fragment`: the raw key fragment of the image archive.
    /// Errors: `Unauthorized`, `NotFound`, `Unavailable`, `Upstream`.
    async fn key_fragment(&self, token: &SecretString) -> Result<SecretBytes, ApiError>;
}
