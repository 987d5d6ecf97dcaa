//! A Resource API emulator (PROTOCOL §2) served over real HTTP on
//! 127.0.0.1, for the local dev stack and the integration tests, with fault
//! injection (failures, stalls, token expiry) and call counters.
//! It is a test double: it keeps everything in memory and must never be
//! exposed beyond the loopback interface or trusted with real credentials.
//!
//! Behaviour beyond the letter of §2, chosen to match the real API:
//! - wrong or unknown credentials at login → 409 (the real API's
//!   "business error"); a body without `email` or `password` → 400;
//! - on `/resources/get/...`, a `password` that is not the user's → 409, the
//!   same business error (not 401: a loader would log in again for nothing);
//! - the first hardware string sent for a user binds the user to it; another
//!   one afterwards → 409;
//! - checks run in this order: injected fault, token (401), body (400),
//!   password and hardware (409), file (404).

mod jwt;
mod routes;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::domain::cdn::CdnConfig;
use crate::domain::secret::SecretString;

/// The name of the CDN document at the root folder.
pub const CDN_FILE: &str = "cdn.yaml";

/// Starting configuration of an emulator.
#[derive(Clone)]
pub struct EmulatorConfig {
    /// HS256 signing secret of the tokens.
    pub jwt_secret: String,
    /// Lifetime of the tokens issued from now on.
    pub token_ttl: Duration,
    /// When set, served as `cdn.yaml` at the root folder.
    pub cdn: Option<CdnConfig>,
    /// Served by `/binary-split/key-fragment`; empty → 404.
    pub key_fragment: Vec<u8>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            jwt_secret: random_hex(32),
            token_ttl: Duration::from_secs(3600),
            cdn: None,
            key_fragment: random_bytes(32),
        }
    }
}

impl std::fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorConfig")
            .field("jwt_secret", &"***")
            .field("token_ttl", &self.token_ttl)
            .field("cdn", &self.cdn)
            .field(
                "key_fragment",
                &format_args!("***({} bytes)", self.key_fragment.len()),
            )
            .finish()
    }
}

/// The routes of §2, for fault injection and call counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `POST /login`
    Login,
    /// `POST /resources/get/{folder}` and `POST /resources/get/`
    GetResource,
    /// `POST /resources/{folder}`
    PutResource,
    /// `GET /binary-split/key-fragment`
    KeyFragment,
}

/// A fault waiting for the next call of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Answer this status without doing anything else.
    Fail(u16),
    /// Wait this long, then serve the call normally.
    Stall(Duration),
}

struct User {
    id: u64,
    password: SecretString,
    /// The hardware string the user is bound to, once one was seen.
    hardware: Option<String>,
}

/// Everything the emulator knows; locked briefly, never across an await.
struct State {
    users: HashMap<String, User>,
    next_user_id: u64,
    /// (folder, file name) → stored bytes; the root folder is "".
    files: HashMap<(String, String), Bytes>,
    key_fragment: Vec<u8>,
    token_ttl: Duration,
    next_token_serial: u64,
    /// Tokens with a serial below this are refused (see `expire_tokens`).
    revoked_below: u64,
    faults: HashMap<Route, VecDeque<Fault>>,
    calls: HashMap<Route, usize>,
}

pub(crate) struct Shared {
    jwt_secret: Vec<u8>,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave this plain data half-updated in a way
        // that matters to a test double: keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running emulator. Cheap to clone; every clone controls the same server.
/// The server runs until [`EmulatorHandle::shutdown`] or the end of the tokio
/// runtime; dropping the handles does not stop it.
#[derive(Clone)]
pub struct EmulatorHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Arc<watch::Sender<bool>>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for EmulatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Binds 127.0.0.1 on a free port and serves the emulator in a tokio task.
pub async fn start(config: EmulatorConfig) -> std::io::Result<EmulatorHandle> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    start_with_listener(config, listener)
}

/// Serves the emulator on a listener bound by the caller (a fixed port for
/// the dev stack). Bind it to a loopback address; call it inside a tokio runtime.
pub fn start_with_listener(
    config: EmulatorConfig,
    listener: tokio::net::TcpListener,
) -> std::io::Result<EmulatorHandle> {
    let addr = listener.local_addr()?;
    let mut files = HashMap::new();
    if let Some(cdn) = &config.cdn {
        files.insert(
            (String::new(), CDN_FILE.to_owned()),
            Bytes::from(cdn.to_yaml()),
        );
    }
    let shared = Arc::new(Shared {
        jwt_secret: config.jwt_secret.into_bytes(),
        state: Mutex::new(State {
            users: HashMap::new(),
            next_user_id: 1,
            files,
            key_fragment: config.key_fragment,
            token_ttl: config.token_ttl,
            next_token_serial: 0,
            revoked_below: 0,
            faults: HashMap::new(),
            calls: HashMap::new(),
        }),
    });
    let (stop, mut stopped) = watch::channel(false);
    let router = routes::router(shared.clone());
    let task = tokio::spawn(async move {
        let signal = async move {
            if stopped.wait_for(|stop| *stop).await.is_err() {
                // Every sender is gone without a stop: serve until the runtime ends.
                std::future::pending::<()>().await;
            }
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(signal)
            .await
        {
            tracing::warn!(error = %e, "the Resource API emulator stopped");
        }
    });
    tracing::debug!(%addr, "Resource API emulator listening");
    Ok(EmulatorHandle {
        shared,
        addr,
        stop: Arc::new(stop),
        task: Arc::new(Mutex::new(Some(task))),
    })
}

impl EmulatorHandle {
    /// `http://127.0.0.1:{port}`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds a user, or replaces the password of an existing one (which also
    /// releases its hardware binding).
    pub fn add_user(&self, email: impl Into<String>, password: impl Into<String>) {
        let mut state = self.shared.lock();
        let id = state.next_user_id;
        state.next_user_id += 1;
        state.users.insert(
            email.into(),
            User {
                id,
                password: SecretString::new(password),
                hardware: None,
            },
        );
    }

    /// Stores a file as the API keeps it: in plaintext, encrypted per caller
    /// on every download. `folder` `None` is the root (where `cdn.yaml` lives).
    pub fn put_file(&self, folder: Option<&str>, name: &str, plaintext: impl Into<Bytes>) {
        self.shared
            .lock()
            .files
            .insert(file_key(folder, name), plaintext.into());
    }

    /// The bytes stored for a file (as uploaded or put), if any.
    pub fn file(&self, folder: Option<&str>, name: &str) -> Option<Bytes> {
        self.shared
            .lock()
            .files
            .get(&file_key(folder, name))
            .cloned()
    }

    pub fn remove_file(&self, folder: Option<&str>, name: &str) -> Option<Bytes> {
        self.shared.lock().files.remove(&file_key(folder, name))
    }

    /// Serves `cdn.to_yaml()` as `cdn.yaml` at the root folder.
    pub fn set_cdn(&self, cdn: CdnConfig) {
        self.put_file(None, CDN_FILE, cdn.to_yaml());
    }

    /// Serves these bytes as `cdn.yaml`, for malformed documents.
    pub fn set_cdn_yaml_raw(&self, yaml: impl Into<Bytes>) {
        self.put_file(None, CDN_FILE, yaml);
    }

    /// The key fragment served from now on; empty → 404.
    pub fn set_key_fragment(&self, fragment: Vec<u8>) {
        self.shared.lock().key_fragment = fragment;
    }

    /// The hardware string the user is bound to, once a download bound it.
    pub fn bound_hardware(&self, email: &str) -> Option<String> {
        self.shared
            .lock()
            .users
            .get(email)
            .and_then(|user| user.hardware.clone())
    }

    /// Forgets the user's hardware binding, as an administrator would.
    pub fn unbind_hardware(&self, email: &str) {
        if let Some(user) = self.shared.lock().users.get_mut(email) {
            user.hardware = None;
        }
    }

    /// The next `count` calls of `route` answer `status` and do nothing else.
    /// Faults queue per route in the order they were asked for.
    pub fn fail_next(&self, route: Route, count: usize, status: u16) {
        self.push_faults(route, count, Fault::Fail(status));
    }

    /// The next `count` calls of `route` wait `delay`, then are served normally.
    pub fn stall_next(&self, route: Route, count: usize, delay: Duration) {
        self.push_faults(route, count, Fault::Stall(delay));
    }

    /// Drops every fault not yet triggered.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    fn push_faults(&self, route: Route, count: usize, fault: Fault) {
        self.shared
            .lock()
            .faults
            .entry(route)
            .or_default()
            .extend(std::iter::repeat_n(fault, count));
    }

    /// Every token issued so far is refused (401) from now on; new logins work.
    pub fn expire_tokens(&self) {
        let mut state = self.shared.lock();
        state.revoked_below = state.next_token_serial;
    }

    /// Lifetime of the tokens issued from now on (zero: dead on arrival).
    pub fn set_token_ttl(&self, ttl: Duration) {
        self.shared.lock().token_ttl = ttl;
    }

    /// Calls of `route` so far, faulted ones included.
    pub fn calls(&self, route: Route) -> usize {
        self.shared.lock().calls.get(&route).copied().unwrap_or(0)
    }

    /// Stops accepting connections; calls in flight finish. Returns at once:
    /// await [`EmulatorHandle::stopped`] to wait for the server to be gone.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until the server task has ended (after [`EmulatorHandle::shutdown`]).
    pub async fn stopped(&self) {
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

fn file_key(folder: Option<&str>, name: &str) -> (String, String) {
    (folder.unwrap_or("").to_owned(), name.to_owned())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Random bytes for secrets and IVs; falls back to the clock only if the OS
/// has no randomness (acceptable for a test double's defaults, never for IVs:
/// the routes use `getrandom` directly and fail the call instead).
fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    if getrandom::fill(&mut bytes).is_err() {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            .to_le_bytes();
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = seed[i % seed.len()] ^ (i as u8).wrapping_mul(151);
        }
    }
    bytes
}

fn random_hex(len: usize) -> String {
    random_bytes(len)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn faults_queue_per_route_in_the_order_asked() {
        let emulator = start(EmulatorConfig::default()).await.unwrap();
        emulator.fail_next(Route::Login, 2, 500);
        emulator.stall_next(Route::Login, 1, Duration::from_millis(1));
        emulator.fail_next(Route::KeyFragment, 1, 503);
        {
            let state = emulator.shared.lock();
            let login: Vec<Fault> = state.faults[&Route::Login].iter().copied().collect();
            assert_eq!(
                login,
                vec![
                    Fault::Fail(500),
                    Fault::Fail(500),
                    Fault::Stall(Duration::from_millis(1))
                ]
            );
            assert_eq!(state.faults[&Route::KeyFragment].len(), 1);
        }
        emulator.shutdown();
        emulator.stopped().await;
    }

    #[tokio::test]
    async fn config_cdn_is_served_as_cdn_yaml_at_the_root() {
        let cdn = CdnConfig::parse(
            b"host: http://127.0.0.1:9000\ndownloader_access_key: d\ndownloader_access_secret: ds\nuploader_access_key: u\nuploader_access_secret: us\n",
        )
        .unwrap();
        let emulator = start(EmulatorConfig {
            cdn: Some(cdn.clone()),
            ..EmulatorConfig::default()
        })
        .await
        .unwrap();
        let yaml = emulator.file(None, CDN_FILE).unwrap();
        assert_eq!(CdnConfig::parse(&yaml).unwrap(), cdn);
        emulator.set_cdn_yaml_raw(&b"not: [yaml"[..]);
        assert_eq!(emulator.file(None, CDN_FILE).unwrap(), &b"not: [yaml"[..]);
    }

    #[test]
    fn the_default_config_has_a_fresh_secret_and_fragment_and_hides_them() {
        let a = EmulatorConfig::default();
        let b = EmulatorConfig::default();
        assert_ne!(a.jwt_secret, b.jwt_secret);
        assert_eq!(a.key_fragment.len(), 32);
        assert_eq!(a.token_ttl, Duration::from_secs(3600));
        let shown = format!("{a:?}");
        assert!(!shown.contains(&a.jwt_secret), "{shown}");
    }
}
