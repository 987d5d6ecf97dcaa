//! An in-memory Resource API: users, files re-encrypted per user and
//! hardware like the real one (PROTOCOL §2), device binding, and faults.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Fault, FaultQueue, lock};
use crate::domain::cipher::encrypt;
use crate::domain::keys::{AesKey, api_key, hardware_hash};
use crate::domain::names::Folder;
use crate::domain::secret::{SecretBytes, SecretString};
use crate::ports::{ApiError, Credentials, ResourceApi};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FakeRoute {
    Login,
    GetResource,
    PutResource,
    KeyFragment,
}

#[derive(Default)]
struct State {
    users: HashMap<String, String>,
    files: HashMap<(String, String), Bytes>,
    bindings: HashMap<String, String>,
    tokens: HashMap<String, String>,
    revoked: HashSet<String>,
    key_fragment: Vec<u8>,
    malformed_tokens: bool,
    corrupt_next: usize,
}

#[derive(Default)]
pub struct FakeResourceApi {
    state: Mutex<State>,
    faults: Mutex<HashMap<FakeRoute, std::sync::Arc<FaultQueue<ApiError>>>>,
    calls: Mutex<HashMap<FakeRoute, usize>>,
    next_token: AtomicUsize,
}

fn folder_key(folder: Option<&Folder>) -> String {
    folder.map(|f| f.as_str().to_owned()).unwrap_or_default()
}

impl FakeResourceApi {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_user(&self, email: &str, password: &str) {
        lock(&self.state)
            .users
            .insert(email.to_owned(), password.to_owned());
    }

    /// Stores a file as the API keeps it (plaintext; it encrypts per caller on the way out).
    pub fn put_file(&self, folder: Option<&str>, name: &str, data: impl Into<Bytes>) {
        lock(&self.state).files.insert(
            (folder.unwrap_or_default().to_owned(), name.to_owned()),
            data.into(),
        );
    }

    pub fn file(&self, folder: Option<&str>, name: &str) -> Option<Bytes> {
        lock(&self.state)
            .files
            .get(&(folder.unwrap_or_default().to_owned(), name.to_owned()))
            .cloned()
    }

    pub fn remove_file(&self, folder: Option<&str>, name: &str) {
        lock(&self.state)
            .files
            .remove(&(folder.unwrap_or_default().to_owned(), name.to_owned()));
    }

    pub fn set_key_fragment(&self, fragment: &[u8]) {
        lock(&self.state).key_fragment = fragment.to_vec();
    }

    pub fn bound_hardware(&self, email: &str) -> Option<String> {
        lock(&self.state).bindings.get(email).cloned()
    }

    /// Logins from now on answer a token that is not a JWT.
    pub fn issue_malformed_tokens(&self, on: bool) {
        lock(&self.state).malformed_tokens = on;
    }

    /// The next `count` resource answers are damaged in transit (undecryptable).
    pub fn corrupt_next_resources(&self, count: usize) {
        lock(&self.state).corrupt_next = count;
    }

    /// Every token issued so far is refused from now on (as after expiry).
    pub fn expire_tokens(&self) {
        let mut s = lock(&self.state);
        let issued: Vec<String> = s.tokens.keys().cloned().collect();
        s.revoked.extend(issued);
    }

    pub fn fail_next(&self, route: FakeRoute, count: usize, error: ApiError) {
        self.queue(route).push(Fault::Fail(error), count);
    }

    pub fn stall_next(&self, route: FakeRoute, count: usize, delay: Duration) {
        self.queue(route).push(Fault::Stall(delay), count);
    }

    pub fn calls(&self, route: FakeRoute) -> usize {
        lock(&self.calls).get(&route).copied().unwrap_or(0)
    }

    fn queue(&self, route: FakeRoute) -> std::sync::Arc<FaultQueue<ApiError>> {
        lock(&self.faults).entry(route).or_default().clone()
    }

    async fn enter(&self, route: FakeRoute) -> Result<(), ApiError> {
        *lock(&self.calls).entry(route).or_default() += 1;
        self.queue(route).apply().await
    }

    fn user_of(&self, token: &SecretString) -> Result<String, ApiError> {
        let s = lock(&self.state);
        if s.revoked.contains(token.expose()) {
            return Err(ApiError::Unauthorized);
        }
        s.tokens
            .get(token.expose())
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }
}

/// A JWT-shaped token with readable claims (unsigned: the loader never checks signatures).
fn fake_jwt(n: usize, email: &str) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({"nameid": n.to_string(), "unique_name": email, "role": "User", "exp": 4_000_000_000u64});
    let body = URL_SAFE_NO_PAD.encode(claims.to_string().as_bytes());
    format!("{header}.{body}.ZmFrZS1zaWduYXR1cmU")
}

#[async_trait]
impl ResourceApi for FakeResourceApi {
    async fn login(&self, credentials: &Credentials) -> Result<SecretString, ApiError> {
        self.enter(FakeRoute::Login).await?;
        let mut s = lock(&self.state);
        match s.users.get(&credentials.email) {
            Some(pw) if pw == credentials.password.expose() => {
                let n = self.next_token.fetch_add(1, Ordering::Relaxed);
                let token = if s.malformed_tokens {
                    format!("not-a-jwt-{n}")
                } else {
                    fake_jwt(n, &credentials.email)
                };
                s.tokens.insert(token.clone(), credentials.email.clone());
                Ok(SecretString::new(token))
            }
            _ => Err(ApiError::Unauthorized),
        }
    }

    async fn get_resource(
        &self,
        token: &SecretString,
        folder: Option<&Folder>,
        file_name: &str,
        password: &SecretString,
        hardware: &str,
    ) -> Result<Bytes, ApiError> {
        self.enter(FakeRoute::GetResource).await?;
        let email = self.user_of(token)?;
        let mut s = lock(&self.state);
        let plain = s
            .files
            .get(&(folder_key(folder), file_name.to_owned()))
            .cloned()
            .ok_or(ApiError::NotFound)?;
        match s.bindings.get(&email) {
            Some(bound) if bound != hardware => return Err(ApiError::DeviceMismatch),
            Some(_) => {}
            None => {
                s.bindings.insert(email.clone(), hardware.to_owned());
            }
        }
        let key = AesKey::from_key_string(&api_key(&email, password, &hardware_hash(hardware)));
        let mut iv = [0u8; 16];
        getrandom::fill(&mut iv).map_err(|e| ApiError::Unexpected(e.to_string()))?;
        let mut answer = encrypt(&key, iv, &plain);
        if s.corrupt_next > 0 {
            s.corrupt_next -= 1;
            let n = answer.len();
            answer[n - 17] ^= 0x5a; // garbles the padding of the last block
        }
        Ok(Bytes::from(answer))
    }

    async fn put_resource(
        &self,
        token: &SecretString,
        folder: &Folder,
        file_name: &str,
        data: Bytes,
    ) -> Result<(), ApiError> {
        self.enter(FakeRoute::PutResource).await?;
        self.user_of(token)?;
        lock(&self.state)
            .files
            .insert((folder.as_str().to_owned(), file_name.to_owned()), data);
        Ok(())
    }

    async fn key_fragment(&self, token: &SecretString) -> Result<SecretBytes, ApiError> {
        self.enter(FakeRoute::KeyFragment).await?;
        self.user_of(token)?;
        Ok(SecretBytes::new(lock(&self.state).key_fragment.clone()))
    }
}
