//! Readiness (issue 13): whether the loader can serve a model right now
//! (`GET /ready`), and the login that gets it there by itself after a
//! reboot, from stored credentials, retried with backoff.
//!
//! `/health` stays the liveness check: the process answers. Ready means
//! more: logged in, the cache folder writable above its free-space floor,
//! and, when images are expected, the unlock `ready`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use super::session::{LoginError, SessionService};
use super::unlock::UnlockService;
use crate::domain::unlock::UnlockPhase;
use crate::ports::{BigPartCache, Clock, Credentials};

/// How the login is retried when it fails: doubling from `first` up to
/// `max`; a refusal of the credentials or of the device waits `refused`
/// (a wrong password retried every second could lock the account).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub refused: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
            refused: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// The wait after the `failures`-th failure in a row (1 for the first).
    pub fn delay(&self, failures: u32, error: &LoginError) -> Duration {
        if matches!(
            error,
            LoginError::BadCredentials | LoginError::DeviceMismatch
        ) {
            return self.refused;
        }
        let doublings = failures.saturating_sub(1).min(30);
        self.first.saturating_mul(1u32 << doublings).min(self.max)
    }
}

/// Where the login by itself stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoLoginState {
    /// No stored credentials: an operator logs in (`POST /login`).
    Off,
    /// Logging in: `failures` attempts failed so far, the last with
    /// `last_error`; the next one starts at `next_try`.
    Trying {
        failures: u32,
        last_error: Option<String>,
        next_try: Option<SystemTime>,
    },
    /// Logged in after `attempts` attempts.
    Done { attempts: u32 },
}

/// [`AutoLoginState`], written by the login task, read by `/ready`.
#[derive(Debug)]
struct AutoLoginProgress(Mutex<AutoLoginState>);

impl Default for AutoLoginProgress {
    fn default() -> Self {
        Self(Mutex::new(AutoLoginState::Off))
    }
}

impl AutoLoginProgress {
    fn get(&self) -> AutoLoginState {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, state: AutoLoginState) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }
}

/// One thing that keeps the loader from being ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// `login`, `cache` or `unlock`.
    pub check: &'static str,
    pub detail: String,
}

/// The checks of `GET /ready`.
pub struct Readiness {
    session: Arc<SessionService>,
    cache: Arc<dyn BigPartCache>,
    unlock: Arc<UnlockService>,
    clock: Arc<dyn Clock>,
    /// Images are configured (`LOADER_IMAGES`): the unlock must be `ready`.
    images_expected: bool,
    login: AutoLoginProgress,
}

impl Readiness {
    pub fn new(
        session: Arc<SessionService>,
        cache: Arc<dyn BigPartCache>,
        unlock: Arc<UnlockService>,
        clock: Arc<dyn Clock>,
        images_expected: bool,
    ) -> Self {
        Self {
            session,
            cache,
            unlock,
            clock,
            images_expected,
            login: AutoLoginProgress::default(),
        }
    }

    /// Logs in with `credentials` until it works, waiting as `backoff` says
    /// between attempts. Returns once logged in; stop it by dropping its task.
    pub async fn log_in_until_it_works(
        self: Arc<Self>,
        credentials: Credentials,
        backoff: Backoff,
    ) {
        let mut failures = 0u32;
        self.login.set(AutoLoginState::Trying {
            failures,
            last_error: None,
            next_try: None,
        });
        loop {
            match self.session.login(credentials.clone()).await {
                Ok(()) => {
                    self.login.set(AutoLoginState::Done {
                        attempts: failures + 1,
                    });
                    tracing::info!(
                        attempts = failures + 1,
                        "logged in with the stored credentials"
                    );
                    return;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = backoff.delay(failures, &e);
                    tracing::warn!(
                        attempt = failures,
                        next_try_in_secs = wait.as_secs_f64(),
                        "login with the stored credentials failed: {e}"
                    );
                    self.login.set(AutoLoginState::Trying {
                        failures,
                        last_error: Some(e.to_string()),
                        next_try: Some(self.clock.now() + wait),
                    });
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// What is missing; empty when the loader can serve a model now.
    pub async fn missing(&self) -> Vec<Missing> {
        let mut missing = Vec::new();
        if let Some(detail) = self.login_missing() {
            missing.push(Missing {
                check: "login",
                detail,
            });
        }
        if let Err(e) = self.cache.check_writable().await {
            missing.push(Missing {
                check: "cache",
                detail: e.to_string(),
            });
        }
        if self.images_expected {
            let status = self.unlock.status();
            if status.phase != UnlockPhase::Ready {
                let mut detail = format!("the unlock is {}", status.phase);
                match (status.phase, status.error) {
                    (UnlockPhase::Idle, _) => detail.push_str(": POST /unlock"),
                    (_, Some(error)) => detail.push_str(&format!(": {error}")),
                    _ => {}
                }
                missing.push(Missing {
                    check: "unlock",
                    detail,
                });
            }
        }
        missing
    }

    fn login_missing(&self) -> Option<String> {
        if self.session.is_authenticated() {
            return None;
        }
        Some(match self.login.get() {
            AutoLoginState::Off => {
                "not logged in: POST /login, or set LOADER_CREDENTIALS_FILE".to_owned()
            }
            AutoLoginState::Trying { failures: 0, .. } => {
                "logging in with the stored credentials".to_owned()
            }
            AutoLoginState::Trying {
                failures,
                last_error,
                next_try,
            } => {
                let wait = next_try
                    .and_then(|t| t.duration_since(self.clock.now()).ok())
                    .unwrap_or_default();
                format!(
                    "logging in with the stored credentials: {failures} attempt(s) failed, the last with: {}; next try in {} s",
                    last_error.unwrap_or_default(),
                    wait.as_secs()
                )
            }
            AutoLoginState::Done { .. } => {
                "the session stopped working: it is renewed on the next call, or POST /login"
                    .to_owned()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_up_to_its_ceiling_and_a_refusal_waits_longest() {
        let backoff = Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
            refused: Duration::from_secs(600),
        };
        let unavailable = LoginError::Unavailable("connection refused".into());
        let waits: Vec<u64> = (1..=9)
            .map(|n| backoff.delay(n, &unavailable).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(
            backoff.delay(u32::MAX, &unavailable),
            Duration::from_secs(60)
        );
        for refusal in [LoginError::BadCredentials, LoginError::DeviceMismatch] {
            assert_eq!(backoff.delay(1, &refusal), Duration::from_secs(600));
        }
    }
}
