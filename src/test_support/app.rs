//! [`TestApp`]: the loader with in-memory fakes behind every port, served on
//! a free port, and request helpers (the offline API tests, the secrets test).

use std::sync::Arc;
use std::time::Duration;

use crate::adapters::fakes::{
    FakeCache, FakeClock, FakeHardware, FakeObjectStore, FakeObjectStoreConnector, FakeResourceApi,
    FakeRuntime,
};
use crate::domain::cdn::{CdnConfig, S3Keys};
use crate::domain::cipher::encrypt;
use crate::domain::keys::{AesKey, resource_key};
use crate::domain::split::split;
use crate::startup::config::Config;
use crate::startup::{Application, Ports};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub use super::{files_under, pattern};

pub const EMAIL: &str = "operator@azaion.com";
pub const PASSWORD: &str = "s3cr3t!";
pub const FOLDER: &str = "models";

pub struct TestApp {
    pub base: String,
    pub api: Arc<FakeResourceApi>,
    pub store: Arc<FakeObjectStore>,
    pub connector: Arc<FakeObjectStoreConnector>,
    pub cache: FakeCache,
    pub hardware: Arc<FakeHardware>,
    pub runtime: Arc<FakeRuntime>,
    pub clock: Arc<FakeClock>,
    pub client: reqwest::Client,
    pub config: Config,
    /// The use cases behind the HTTP API, to drive them without it.
    pub state: crate::adapters::inbound::http::AppState,
    pub dir: tempfile::TempDir,
    _shutdown: oneshot::Sender<()>,
}

pub fn cdn_config() -> CdnConfig {
    CdnConfig {
        host: "http://127.0.0.1:9".into(),
        region: "us-east-1".into(),
        downloader: S3Keys {
            access_key: "reader".into(),
            secret_key: "reader-secret".into(),
        },
        uploader: S3Keys {
            access_key: "writer".into(),
            secret_key: "writer-secret".into(),
        },
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::build(adjust, false).await
    }

    /// Like [`TestApp::spawn`], with the real filesystem cache
    /// (`FsBigPartCache` in the test folder) instead of the fake one; then
    /// `cache` is not wired and must not be used.
    pub async fn spawn_with_fs_cache() -> Self {
        Self::build(|_| {}, true).await
    }

    /// [`TestApp::spawn_with_fs_cache`] with `adjust` applied to the
    /// configuration first (its free-space floor reaches the cache).
    pub async fn spawn_with_fs_cache_and(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::build(adjust, true).await
    }

    async fn build(adjust: impl FnOnce(&mut Config), fs_cache: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::defaults();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.model_cache_dir = dir.path().join("cache");
        config.images_path = dir.path().join("images").join("images.enc");
        adjust(&mut config);

        let api = Arc::new(FakeResourceApi::new());
        api.add_user(EMAIL, PASSWORD);
        api.put_file(None, "cdn.yaml", cdn_config().to_yaml().into_bytes());
        let store = Arc::new(FakeObjectStore::new());
        store.create_bucket(FOLDER);
        let connector = Arc::new(FakeObjectStoreConnector::new(store.clone()));
        let cache = FakeCache::new();
        let hardware = Arc::new(FakeHardware::default());
        let runtime = Arc::new(FakeRuntime::new());
        let clock = Arc::new(FakeClock::default());
        let ports = Ports {
            api: api.clone(),
            cdn: connector.clone(),
            cache: if fs_cache {
                Arc::new(
                    crate::adapters::outbound::fs_cache::FsBigPartCache::open(
                        config.model_cache_dir.clone(),
                        None,
                    )
                    .expect("fs cache opens")
                    .with_min_free_bytes(config.limits.min_free_bytes),
                )
            } else {
                Arc::new(cache.clone())
            },
            hardware: hardware.clone(),
            runtime: runtime.clone(),
            clock: clock.clone(),
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let app = Application::build(&config, ports)
            .await
            .expect("app builds")
            .with_header_read_timeout(Duration::from_millis(500))
            // Stored credentials, as `serve` reads them; retried every 50 ms.
            .with_auto_login(
                config.credentials_file.as_deref().map(|path| {
                    crate::startup::config::credentials::read(path).expect("credentials file")
                }),
                crate::app::readiness::Backoff {
                    first: Duration::from_millis(50),
                    max: Duration::from_millis(50),
                    refused: Duration::from_millis(50),
                },
            );
        let addr = app.local_addr().unwrap();
        let state = app.state().clone();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(app.serve(async {
            let _ = rx.await;
        }));
        Self {
            base: format!("http://{addr}"),
            api,
            store,
            connector,
            cache,
            hardware,
            runtime,
            clock,
            client: reqwest::Client::builder()
                .timeout(client_timeout())
                // The server closes a connection idle for its 500 ms header
                // timeout (above): never reuse one idle for that long.
                .pool_idle_timeout(Duration::from_millis(250))
                .build()
                .unwrap(),
            config,
            state,
            dir,
            _shutdown: tx,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_json(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        // A GET may be sent again: once, when the idle connection it went out
        // on was being closed by the server's 500 ms header timeout (seen
        // under qemu, where a poll can stall past the pool's idle limit).
        match self.client.get(self.url(path)).send().await {
            Ok(response) => response,
            Err(e) if e.is_request() => self
                .client
                .get(self.url(path))
                .send()
                .await
                .expect("request"),
            Err(e) => panic!("request: {e}"),
        }
    }

    pub async fn login(&self) -> reqwest::Response {
        self.post_json("/login", json!({"email": EMAIL, "password": PASSWORD}))
            .await
    }

    pub async fn logged_in() -> Self {
        let app = Self::spawn().await;
        let r = app.login().await;
        assert_eq!(
            r.status(),
            200,
            "login: {}",
            r.text().await.unwrap_or_default()
        );
        app
    }

    pub async fn load(&self, name: &str, folder: &str) -> reqwest::Response {
        self.post_json(
            &format!("/load/{name}"),
            json!({"filename": name, "folder": folder}),
        )
        .await
    }

    pub async fn upload(&self, name: &str, folder: &str, data: Vec<u8>) -> reqwest::Response {
        let form = reqwest::multipart::Form::new()
            .text("folder", folder.to_owned())
            .part(
                "data",
                reqwest::multipart::Part::bytes(data).file_name(name.to_owned()),
            );
        self.client
            .post(self.url(&format!("/upload/{name}")))
            .multipart(form)
            .send()
            .await
            .expect("request")
    }

    /// Puts a resource where an earlier upload would have: small part at the API, big part in the CDN.
    /// Returns the (small, big) parts.
    pub fn seed(&self, folder: &str, name: &str, plaintext: &[u8]) -> (Bytes, Bytes) {
        let mut iv = [0u8; 16];
        getrandom::fill(&mut iv).unwrap();
        let encrypted = encrypt(&AesKey::from_key_string(&resource_key()), iv, plaintext);
        let (small, big) = split(&encrypted);
        let (small, big) = (Bytes::copy_from_slice(small), Bytes::copy_from_slice(big));
        self.api
            .put_file(Some(folder), &format!("{name}.small"), small.clone());
        self.store
            .put_object(folder, &format!("{name}.big"), big.clone());
        (small, big)
    }

    pub async fn json(r: reqwest::Response) -> Value {
        r.json().await.expect("JSON body")
    }

    /// Polls `/unlock/status` until the state is one of `states` (or 10 s pass).
    pub async fn wait_unlock(&self, states: &[&str]) -> Value {
        for _ in 0..1000 {
            let v = Self::json(self.get("/unlock/status").await).await;
            if states.contains(&v["state"].as_str().unwrap_or_default()) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("unlock never reached {states:?}");
    }

    /// Files under the test folder outside the cache folder (nothing should be written there).
    pub fn files_outside_cache(&self) -> Vec<std::path::PathBuf> {
        files_under(self.dir.path())
            .into_iter()
            .filter(|path| !path.starts_with(&self.config.model_cache_dir))
            .collect()
    }

    /// Loads a resource, insisting on a 200, and returns its bytes.
    pub async fn load_bytes(&self, name: &str, folder: &str) -> Vec<u8> {
        let r = self.load(name, folder).await;
        assert_eq!(r.status(), 200, "load {folder}/{name}");
        r.bytes().await.expect("load body").to_vec()
    }
}

/// A response read off a raw connection.
pub struct RawResponse {
    pub status: u16,
    pub body: String,
    /// Body bytes the client had handed to its socket when the answer's first byte came.
    pub sent_at_answer: usize,
}

impl TestApp {
    /// POSTs `body` on a raw connection while reading the answer at the same
    /// time, as a browser or curl would: a server that answers before it has
    /// read the body (a refusal) closes the connection on the unread rest,
    /// which an ordinary client may report as a reset instead of the answer.
    pub async fn raw_post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> RawResponse {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.base.trim_start_matches("http://").to_owned();
        let stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let (mut read, mut write) = stream.into_split();
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = sent.clone();
        let writer = tokio::spawn(async move {
            if write.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for chunk in body.chunks(64 * 1024) {
                if write.write_all(chunk).await.is_err() {
                    return;
                }
                counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
            }
        });
        let mut sent_at_answer = None;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let read_all = async {
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        sent_at_answer
                            .get_or_insert(sent.load(std::sync::atomic::Ordering::Relaxed));
                        got.extend_from_slice(&buf[..n]);
                    }
                }
            }
        };
        tokio::time::timeout(client_timeout(), read_all)
            .await
            .expect("an answer within the client timeout");
        writer.abort();
        let text = String::from_utf8_lossy(&got).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {head:?}"));
        RawResponse {
            status,
            body: body.to_owned(),
            sent_at_answer: sent_at_answer.unwrap_or(0),
        }
    }
}

/// How long a test client waits for a whole answer: 60 s, or
/// `AZAION_TEST_CLIENT_TIMEOUT_SECS` (scripts/aarch64-test.sh raises it: under
/// qemu the same work takes several times longer).
fn client_timeout() -> Duration {
    std::env::var("AZAION_TEST_CLIENT_TIMEOUT_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .map_or(Duration::from_secs(60), Duration::from_secs)
}
