//! F1–F3 through the loader's own HTTP port with only real adapters: the
//! `azaion-loader serve` binary as a child process, the Resource API emulator
//! over HTTP, the embedded S3 server (s3s-fs) and the filesystem cache.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use azaion_loader::startup::dev::{self, DEMO_EMAIL, DEMO_FOLDER, DEMO_PASSWORD, DEMO_RESOURCE};
use futures::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};

/// The loader binary running against the dev peers; killed on drop.
pub struct Loader {
    pub child: Child,
    pub base: String,
    pub client: reqwest::Client,
}

impl Drop for Loader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Loader {
    pub fn spawn(api_url: &str, data: &Path, extra_env: &[(&str, &str)]) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_azaion-loader"));
        cmd.arg("serve")
            .env("LOADER_LISTEN", "127.0.0.1:0")
            .env("RESOURCE_API_URL", api_url)
            .env("MODEL_CACHE_DIR", data.join("cache"))
            .env("IMAGES_PATH", data.join("images.enc"))
            .env("RUST_LOG", "info")
            .env_remove("LOADER_IMAGES")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("loader starts");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("loader printed its address")
                .expect("stderr line");
            if let Some(at) = line.find("listening on http://") {
                break line[at + "listening on ".len()..].trim().to_owned();
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Self {
            child,
            base,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()
                .unwrap(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn login(&self) {
        let r = self
            .client
            .post(self.url("/login"))
            .json(&json!({"email": DEMO_EMAIL, "password": DEMO_PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    /// `GET /unlock/status` as JSON.
    pub async fn unlock_status(&self) -> serde_json::Value {
        self.client
            .get(self.url("/unlock/status"))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("JSON")
    }

    /// `POST /load/{name}` of `folder`.
    pub async fn load(&self, folder: &str, name: &str) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/load/{name}")))
            .json(&json!({"folder": folder}))
            .send()
            .await
            .expect("request")
    }

    /// Peak resident memory of the loader process (VmHWM), in KiB. A test
    /// that cannot read it fails: a bound it cannot check is no bound.
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
    }
}

/// Every file below `dir`, at any depth (an unreadable folder counts as empty).
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// Deterministic pseudo-random bytes (xorshift), different for each `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Deterministic pseudo-random bytes, generated in chunks (never all at once).
fn chunk_of(seed: u64, index: u64, len: usize) -> Vec<u8> {
    let mut x = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const CHUNK: usize = 1 << 20;

fn body_stream(seed: u64, len: u64) -> reqwest::Body {
    let chunks = len.div_ceil(CHUNK as u64);
    let stream = futures::stream::iter(0..chunks).map(move |i| {
        let n = (len - i * CHUNK as u64).min(CHUNK as u64) as usize;
        Ok::<_, std::io::Error>(chunk_of(seed, i, n))
    });
    reqwest::Body::wrap_stream(stream)
}

fn expected_digest(seed: u64, len: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    let chunks = len.div_ceil(CHUNK as u64);
    for i in 0..chunks {
        let n = (len - i * CHUNK as u64).min(CHUNK as u64) as usize;
        h.update(chunk_of(seed, i, n));
    }
    h.finalize().into()
}

async fn upload(loader: &Loader, name: &str, seed: u64, len: u64) {
    let part = reqwest::multipart::Part::stream_with_length(body_stream(seed, len), len)
        .file_name(name.to_owned());
    let form = reqwest::multipart::Form::new()
        .text("folder", DEMO_FOLDER)
        .part("data", part);
    let r = loader
        .client
        .post(loader.url(&format!("/upload/{name}")))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "upload {name}: {}",
        r.text().await.unwrap()
    );
}

async fn download_digest(loader: &Loader, name: &str) -> ([u8; 32], u64) {
    let r = loader
        .client
        .post(loader.url(&format!("/load/{name}")))
        .json(&json!({"filename": name, "folder": DEMO_FOLDER}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "load {name}");
    let mut h = Sha256::new();
    let mut len = 0u64;
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("body completes");
        len += chunk.len() as u64;
        h.update(&chunk);
    }
    (h.finalize().into(), len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_of_every_size_round_trip_byte_exact_through_the_real_stack() {
    let dir = tempfile::tempdir().unwrap();
    let peers = dev::peers_in(dir.path()).await.unwrap();
    let loader = Loader::spawn(&peers.emulator.base_url(), dir.path(), &[]);
    loader.login().await;

    // The seeded demo resource comes through the API's per-user small part and S3.
    let r = loader.load(DEMO_FOLDER, DEMO_RESOURCE).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .await
            .unwrap()
            .starts_with("Hello from Azaion Loader")
    );

    let sizes: [(u64, &str); 5] = [
        (0, "zero.bin"),
        (1, "one.bin"),
        (3 * 1024, "three-k.bin"),
        (1 << 20, "one-m.bin"),
        (256 << 20, "big-256m.bin"),
    ];
    for (seed, (len, name)) in sizes.iter().enumerate() {
        upload(&loader, name, seed as u64, *len).await;
        // The big part is in S3 under {name}.big and the small part at the API.
        assert!(
            peers
                .emulator
                .file(Some(DEMO_FOLDER), &format!("{name}.small"))
                .is_some()
        );
        assert!(
            dir.path()
                .join("s3")
                .join(DEMO_FOLDER)
                .join(format!("{name}.big"))
                .exists()
        );
        // Served from the cache filled by the upload.
        let (digest, got) = download_digest(&loader, name).await;
        assert_eq!(got, *len, "{name}");
        assert_eq!(digest, expected_digest(seed as u64, *len), "{name}");
    }
    let upload_peak = loader.peak_rss_kib();
    // A fresh process, so that its peak is the loads' own (an allocator keeps
    // what the uploads used), and no cache: every big part comes from S3.
    drop(loader);
    std::fs::remove_dir_all(dir.path().join("cache").join(DEMO_FOLDER)).unwrap();
    let loader = Loader::spawn(&peers.emulator.base_url(), dir.path(), &[]);
    loader.login().await;
    for (seed, (len, name)) in sizes.iter().enumerate() {
        let (digest, got) = download_digest(&loader, name).await;
        assert_eq!(
            (digest, got),
            (expected_digest(seed as u64, *len), *len),
            "{name} from S3"
        );
    }
    let load_peak = loader.peak_rss_kib();
    println!(
        "loader peak RSS (debug build): uploads up to 256 MiB and their cached loads {upload_peak} KiB ({:.1} MiB); \
         loads from S3 up to 256 MiB {load_peak} KiB ({:.1} MiB)",
        upload_peak as f64 / 1024.0,
        load_peak as f64 / 1024.0
    );
    // The debug build (what `cargo test` runs) peaks at about 57 MiB here:
    // ~30 MiB at rest, four 4 MiB ranged reads in flight, the prefetch and
    // the cache writer's batch. A load that held the resource would pass
    // 256 MiB; one whose buffers lingered in glibc arenas reached 73 MiB.
    assert!(
        load_peak <= 64 * 1024,
        "peak RSS {load_peak} KiB loading a 256 MiB resource (bound: 64 MiB, debug build)"
    );
    // Uploads hold a little more (a 5 MiB multipart part being encrypted
    // ahead of its PUT): about 62 MiB; 94 MiB before the mmap threshold.
    assert!(
        upload_peak <= 80 * 1024,
        "peak RSS {upload_peak} KiB uploading a 256 MiB resource (bound: 80 MiB, debug build)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_or_damaged_file_in_the_real_cache_is_replaced_from_s3() {
    let dir = tempfile::tempdir().unwrap();
    let peers = dev::peers_in(dir.path()).await.unwrap();
    let loader = Loader::spawn(&peers.emulator.base_url(), dir.path(), &[]);
    loader.login().await;
    upload(&loader, "m.bin", 7, 100_000).await;
    let cached = dir.path().join("cache").join(DEMO_FOLDER).join("m.bin.big");
    assert!(cached.exists());
    // Damage one byte in the middle of the cached file.
    let mut bytes = std::fs::read(&cached).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&cached, &bytes).unwrap();
    let (digest, _) = download_digest(&loader, "m.bin").await;
    assert_eq!(digest, expected_digest(7, 100_000));
    // Re-upload other content under the same name elsewhere (directly to the peers):
    // the cached file now belongs to an old small part.
    dev::seed_resource(
        &peers.emulator,
        &peers.cdn,
        DEMO_FOLDER,
        "m.bin",
        chunk_of(8, 0, 50_000).into(),
    )
    .await
    .unwrap();
    let (digest, len) = download_digest(&loader, "m.bin").await;
    assert_eq!(len, 50_000);
    assert_eq!(
        digest,
        <[u8; 32]>::from(Sha256::digest(chunk_of(8, 0, 50_000)))
    );
}
