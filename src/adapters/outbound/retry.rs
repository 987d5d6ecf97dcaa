//! Bounded retries with exponential backoff and jitter around any
//! [`ResourceApi`], for the failures worth another try (unreachable, 5xx).
//! Never retries a refusal (401/403/404/409): those are answers, and a retry
//! storm against a struggling API helps nobody.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::domain::names::Folder;
use crate::domain::secret::{SecretBytes, SecretString};
use crate::ports::{ApiError, Credentials, ResourceApi};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included (1 = no retry).
    pub attempts: u32,
    /// Delay before the first retry; doubles each time, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based): exponential, capped, with
    /// "equal jitter" (half fixed, half random) so clients do not retry in step.
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(
                1u32.checked_shl(retry.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(self.max_delay);
        let mut random = [0u8; 4];
        let fraction = match getrandom::fill(&mut random) {
            Ok(()) => f64::from(u32::from_le_bytes(random)) / f64::from(u32::MAX),
            Err(_) => 0.5,
        };
        exp / 2 + exp.mul_f64(fraction / 2.0)
    }
}

fn worth_retrying(e: &ApiError) -> bool {
    match e {
        ApiError::Unavailable(_) => true,
        ApiError::Upstream { status } => matches!(status, 500 | 502 | 503 | 504),
        _ => false,
    }
}

pub struct RetryingResourceApi {
    inner: Arc<dyn ResourceApi>,
    policy: RetryPolicy,
}

impl RetryingResourceApi {
    pub fn new(inner: Arc<dyn ResourceApi>, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }

    async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T, ApiError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let attempts = self.policy.attempts.max(1);
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if attempt < attempts && worth_retrying(&e) => {
                    let delay = self.policy.delay(attempt);
                    tracing::warn!(
                        "{what} failed ({e}); retry {attempt} of {} in {delay:?}",
                        attempts - 1
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[async_trait]
impl ResourceApi for RetryingResourceApi {
    async fn login(&self, credentials: &Credentials) -> Result<SecretString, ApiError> {
        self.run("login", || self.inner.login(credentials)).await
    }

    async fn get_resource(
        &self,
        token: &SecretString,
        folder: Option<&Folder>,
        file_name: &str,
        password: &SecretString,
        hardware: &str,
    ) -> Result<Bytes, ApiError> {
        self.run("resource fetch", || {
            self.inner
                .get_resource(token, folder, file_name, password, hardware)
        })
        .await
    }

    async fn put_resource(
        &self,
        token: &SecretString,
        folder: &Folder,
        file_name: &str,
        data: Bytes,
    ) -> Result<(), ApiError> {
        // Storing the same bytes again is harmless, so a put is retried too.
        self.run("small part upload", || {
            self.inner
                .put_resource(token, folder, file_name, data.clone())
        })
        .await
    }

    async fn key_fragment(&self, token: &SecretString) -> Result<SecretBytes, ApiError> {
        self.run("key fragment fetch", || self.inner.key_fragment(token))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::fakes::{FakeResourceApi, FakeRoute};

    fn setup() -> (Arc<FakeResourceApi>, RetryingResourceApi) {
        let fake = Arc::new(FakeResourceApi::new());
        fake.add_user("a@b.c", "pw");
        let api = RetryingResourceApi::new(fake.clone(), RetryPolicy::default());
        (fake, api)
    }

    fn creds() -> Credentials {
        Credentials {
            email: "a@b.c".into(),
            password: "pw".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_the_call_goes_through() {
        let (fake, api) = setup();
        fake.fail_next(FakeRoute::Login, 2, ApiError::Unavailable("refused".into()));
        assert!(api.login(&creds()).await.is_ok());
        assert_eq!(fake.calls(FakeRoute::Login), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_after_the_configured_attempts() {
        let (fake, api) = setup();
        fake.fail_next(FakeRoute::Login, 10, ApiError::Upstream { status: 503 });
        assert_eq!(
            api.login(&creds()).await.unwrap_err(),
            ApiError::Upstream { status: 503 }
        );
        assert_eq!(fake.calls(FakeRoute::Login), 3, "no retry storm");
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_never_retried() {
        let (fake, api) = setup();
        for error in [
            ApiError::Unauthorized,
            ApiError::NotFound,
            ApiError::DeviceMismatch,
            ApiError::Upstream { status: 400 },
        ] {
            let before = fake.calls(FakeRoute::Login);
            fake.fail_next(FakeRoute::Login, 1, error.clone());
            assert_eq!(api.login(&creds()).await.unwrap_err(), error);
            assert_eq!(fake.calls(FakeRoute::Login) - before, 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_waits_grow_and_the_total_wait_is_bounded() {
        let (fake, api) = setup();
        fake.fail_next(FakeRoute::Login, 2, ApiError::Unavailable("x".into()));
        let start = tokio::time::Instant::now();
        api.login(&creds()).await.unwrap();
        let waited = start.elapsed();
        // 100–200 ms, then 200–400 ms.
        assert!(
            waited >= Duration::from_millis(300) && waited <= Duration::from_millis(600),
            "{waited:?}"
        );
    }

    #[test]
    fn delays_double_with_jitter_and_respect_the_cap() {
        let p = RetryPolicy::default();
        for retry in 1..=8 {
            let full = (p.base_delay * 2u32.pow(retry - 1)).min(p.max_delay);
            let d = p.delay(retry);
            assert!(
                d >= full / 2 && d <= full,
                "retry {retry}: {d:?} vs {full:?}"
            );
        }
        assert!(p.delay(40) <= p.max_delay);
    }
}
