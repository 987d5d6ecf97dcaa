//! The one login session shared by every request (F1): credentials, token,
//! claims, API key and CDN configuration. Renews the token shortly before it
//! runs out and once on a 401/403 (PROTOCOL §2.5), one renewal at a time.
//! Never logs a password, token or key.

use std::future::Future;
use std::sync::{Arc, RwLock};

use tokio::sync::{Mutex, OnceCell};

use crate::domain::cdn::{CdnConfig, CdnConfigError};
use crate::domain::cipher::decrypt;
use crate::domain::keys::{AesKey, api_key, hardware_hash};
use crate::domain::secret::SecretString;
use crate::domain::token::Claims;
use crate::ports::{
    ApiError, Clock, Credentials, HardwareProbe, ObjectStore, ObjectStoreConnector, ResourceApi,
};

/// Renew the token when it runs out within this many seconds.
const RENEW_MARGIN_SECS: u64 = 60;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LoginError {
    #[error("the Resource API refused the credentials")]
    BadCredentials,
    #[error("the Resource API refused this device's hardware fingerprint")]
    DeviceMismatch,
    #[error("the Resource API is unreachable or failing: {0}")]
    Unavailable(String),
    #[error("the API's token is not a readable JWT")]
    MalformedToken,
    #[error("cdn.yaml could not be fetched: {0}")]
    CdnConfigMissing(String),
    #[error("cdn.yaml could not be decrypted with this user's key on this device")]
    CdnConfigUndecryptable,
    #[error("{0}")]
    CdnConfigInvalid(CdnConfigError),
    #[error("the CDN configuration cannot be used: {0}")]
    CdnUnusable(String),
    #[error("cannot read this device's hardware: {0}")]
    Hardware(String),
}

/// Why an authenticated call failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    #[error("not logged in: POST /login first")]
    NotLoggedIn,
    #[error("the Resource API refused the stored credentials again after a new login")]
    Unauthorized,
    #[error(transparent)]
    Api(ApiError),
    #[error("cannot read this device's hardware: {0}")]
    Hardware(String),
}

/// This device's identity toward the API.
#[derive(Debug, Clone)]
pub struct Device {
    pub hardware: String,
    pub hw_hash: String,
}

/// A working login: what every authenticated call needs.
pub struct Session {
    pub credentials: Credentials,
    pub token: SecretString,
    pub claims: Claims,
    pub api_key: AesKey,
    pub cdn: CdnConfig,
    pub store: Arc<dyn ObjectStore>,
    pub device: Device,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("email", &self.credentials.email)
            .field("expires_at", &self.claims.expires_at)
            .finish_non_exhaustive()
    }
}

struct Slot {
    session: Option<Arc<Session>>,
    /// False after a failed renewal: the session is kept for another try, but is not working.
    working: bool,
}

pub struct SessionService {
    api: Arc<dyn ResourceApi>,
    connector: Arc<dyn ObjectStoreConnector>,
    hardware: Arc<dyn HardwareProbe>,
    clock: Arc<dyn Clock>,
    device: OnceCell<Device>,
    slot: RwLock<Slot>,
    renewing: Mutex<()>,
}

impl SessionService {
    pub fn new(
        api: Arc<dyn ResourceApi>,
        connector: Arc<dyn ObjectStoreConnector>,
        hardware: Arc<dyn HardwareProbe>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            api,
            connector,
            hardware,
            clock,
            device: OnceCell::new(),
            slot: RwLock::new(Slot {
                session: None,
                working: false,
            }),
            renewing: Mutex::new(()),
        }
    }

    pub fn api(&self) -> &Arc<dyn ResourceApi> {
        &self.api
    }

    /// The hardware line and its hash, probed once per process.
    pub async fn device(&self) -> Result<Device, String> {
        self.device
            .get_or_try_init(|| async {
                let parts = self.hardware.probe().await.map_err(|e| e.0)?;
                let hardware = parts.fingerprint_line();
                let hw_hash = hardware_hash(&hardware);
                Ok::<_, String>(Device { hardware, hw_hash })
            })
            .await
            .cloned()
    }

    /// True while a working session (token and CDN configuration) is held.
    pub fn is_authenticated(&self) -> bool {
        let slot = self.slot.read().unwrap_or_else(|p| p.into_inner());
        slot.session.is_some() && slot.working
    }

    fn current(&self) -> Option<Arc<Session>> {
        self.slot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .session
            .clone()
    }

    fn store_session(&self, session: Option<Arc<Session>>, working: bool) {
        let mut slot = self.slot.write().unwrap_or_else(|p| p.into_inner());
        slot.session = session;
        slot.working = working;
    }

    /// F1: logs in, fetches and decrypts `cdn.yaml`, connects the CDN. On
    /// failure the previous session, if any, stays as it was.
    pub async fn login(&self, credentials: Credentials) -> Result<(), LoginError> {
        let session = self.open_session(credentials).await?;
        tracing::info!(email = %session.credentials.email, "logged in; CDN at {}", session.cdn.host);
        self.store_session(Some(Arc::new(session)), true);
        Ok(())
    }

    async fn open_session(&self, credentials: Credentials) -> Result<Session, LoginError> {
        let device = self.device().await.map_err(LoginError::Hardware)?;
        let token = self.api.login(&credentials).await.map_err(login_error)?;
        let claims = Claims::from_jwt(token.expose()).map_err(|_| LoginError::MalformedToken)?;
        // The API key is derived from the email we logged in with; the token's email is informative.
        let key = AesKey::from_key_string(&api_key(
            &credentials.email,
            &credentials.password,
            &device.hw_hash,
        ));
        let encrypted = self
            .api
            .get_resource(
                &token,
                None,
                "cdn.yaml",
                &credentials.password,
                &device.hardware,
            )
            .await
            .map_err(|e| match e {
                ApiError::Unauthorized => LoginError::BadCredentials,
                ApiError::DeviceMismatch => LoginError::DeviceMismatch,
                other => LoginError::CdnConfigMissing(other.to_string()),
            })?;
        // cdn.yaml holds the CDN's keys: its plaintext is wiped once parsed.
        let yaml = zeroize::Zeroizing::new(
            decrypt(&key, &encrypted).map_err(|_| LoginError::CdnConfigUndecryptable)?,
        );
        let cdn = CdnConfig::parse(&yaml).map_err(LoginError::CdnConfigInvalid)?;
        let store = self
            .connector
            .connect(&cdn)
            .map_err(|e| LoginError::CdnUnusable(e.to_string()))?;
        Ok(Session {
            credentials,
            token,
            claims,
            api_key: key,
            cdn,
            store,
            device,
        })
    }

    /// A call went through: a session marked not working after a failed renewal works again.
    fn mark_working(&self, session: &Arc<Session>) {
        let mut slot = self.slot.write().unwrap_or_else(|p| p.into_inner());
        if !slot.working
            && slot
                .session
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            slot.working = true;
        }
    }

    /// Renews the token of `stale` unless another caller already did.
    async fn renew(&self, stale: &Arc<Session>) -> Result<Arc<Session>, CallError> {
        let _one_at_a_time = self.renewing.lock().await;
        if let Some(current) = self.current()
            && !Arc::ptr_eq(&current, stale)
        {
            return Ok(current);
        }
        tracing::info!("renewing the Resource API token");
        match self.api.login(&stale.credentials).await {
            Ok(token) => {
                let claims = Claims::from_jwt(token.expose()).map_err(|_| {
                    self.store_session(Some(stale.clone()), false);
                    CallError::Api(ApiError::Unexpected(
                        "the API's token is not a readable JWT".into(),
                    ))
                })?;
                let renewed = Arc::new(Session {
                    credentials: stale.credentials.clone(),
                    token,
                    claims,
                    api_key: stale.api_key.clone(),
                    cdn: stale.cdn.clone(),
                    store: stale.store.clone(),
                    device: stale.device.clone(),
                });
                self.store_session(Some(renewed.clone()), true);
                Ok(renewed)
            }
            Err(ApiError::Unauthorized) => {
                tracing::warn!("the Resource API refused the stored credentials; logged out");
                self.store_session(None, false);
                Err(CallError::Unauthorized)
            }
            Err(other) => {
                tracing::warn!("token renewal failed: {other}");
                self.store_session(Some(stale.clone()), false);
                Err(CallError::Api(other))
            }
        }
    }

    /// Runs an authenticated call with the current session; renews the token
    /// before it runs out, and once more on a 401/403, then repeats the call once.
    pub async fn call<T, F, Fut>(&self, op: F) -> Result<(T, Arc<Session>), CallError>
    where
        F: Fn(Arc<Session>) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut session = self.current().ok_or(CallError::NotLoggedIn)?;
        if session
            .claims
            .expires_within(self.clock.unix_secs(), RENEW_MARGIN_SECS)
        {
            session = self.renew(&session).await?;
        }
        match op(session.clone()).await {
            Ok(value) => {
                self.mark_working(&session);
                Ok((value, session))
            }
            Err(ApiError::Unauthorized) => {
                let renewed = self.renew(&session).await?;
                match op(renewed.clone()).await {
                    Ok(value) => Ok((value, renewed)),
                    Err(ApiError::Unauthorized) => {
                        self.store_session(Some(renewed), false);
                        Err(CallError::Unauthorized)
                    }
                    Err(other) => Err(CallError::Api(other)),
                }
            }
            Err(other) => Err(CallError::Api(other)),
        }
    }

    /// The current session, for calls that need no token (CDN reads).
    pub fn session(&self) -> Result<Arc<Session>, CallError> {
        self.current().ok_or(CallError::NotLoggedIn)
    }

    /// `NotLoggedIn` unless a session is open (a refusal before any work).
    pub fn require_login(&self) -> Result<(), CallError> {
        self.session().map(|_| ())
    }
}

fn login_error(e: ApiError) -> LoginError {
    match e {
        ApiError::Unauthorized => LoginError::BadCredentials,
        ApiError::DeviceMismatch => LoginError::DeviceMismatch,
        ApiError::NotFound => LoginError::BadCredentials,
        ApiError::Unavailable(m) => LoginError::Unavailable(m),
        ApiError::Upstream { status } => LoginError::Unavailable(format!("status {status}")),
        ApiError::Unexpected(m) => LoginError::Unavailable(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::fakes::FakeObjectStore;
    use crate::domain::cdn::S3Keys;

    #[test]
    fn a_session_shows_who_and_until_when_and_none_of_its_secrets() {
        let keys = |access: &str, secret: &str| S3Keys {
            access_key: access.into(),
            secret_key: SecretString::new(secret),
        };
        let session = Session {
            credentials: Credentials {
                email: "operator@example.com".into(),
                password: SecretString::new("the-password"),
            },
            token: SecretString::new("the-jwt"),
            claims: Claims {
                user_id: Some("u1".into()),
                email: Some("operator@example.com".into()),
                role: Some("operator".into()),
                expires_at: Some(1_900_000_000),
            },
            api_key: AesKey::from_key_string(&SecretString::new("the-api-key")),
            cdn: CdnConfig {
                host: "https://cdn.example.com".into(),
                region: "eu".into(),
                downloader: keys("AKDOWN", "the-download-secret"),
                uploader: keys("AKUP", "the-upload-secret"),
            },
            store: Arc::new(FakeObjectStore::new()),
            device: Device {
                hardware: "CPU: x".into(),
                hw_hash: "hash".into(),
            },
        };
        let shown = format!("{session:?}");
        assert!(shown.starts_with("Session {"), "{shown}");
        assert!(shown.contains("operator@example.com"), "{shown}");
        assert!(shown.contains("1900000000"), "{shown}");
        for secret in [
            "the-password",
            "the-jwt",
            "the-api-key",
            "the-download-secret",
            "the-upload-secret",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
}
