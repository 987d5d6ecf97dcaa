//! F1–F3 through the loader's own HTTP port with only real adapters: the
//! `azaion-loader serve` binary as a child process, the Resource API emulator
//! over HTTP, the embedded S3 server (s3s-fs) and the filesystem cache.

use std::path::Path;

use azaion_loader::startup::dev::{self, DEMO_FOLDER, DEMO_RESOURCE};
use azaion_loader::test_support::process::LoaderProcess;
use futures::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};

/// The `serve` binary against the dev peers; killed on drop.
pub type Loader = LoaderProcess;

/// Starts this build's `serve` against the Resource API at `api_url`.
pub fn spawn_loader(api_url: &str, data: &Path, extra_env: &[(&str, &str)]) -> Loader {
    LoaderProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_azaion-loader")),
        api_url,
        data,
        extra_env,
    )
}

use azaion_loader::test_support::pattern_chunk as chunk_of;
pub use azaion_loader::test_support::{files_under, pattern};

const CHUNK: usize = 1 << 20;

fn body_stream(seed: u64, len: u64) -> reqwest::Body {
    let chunks = len.div_ceil(CHUNK as u64);
    let stream = futures::stream::iter(0..chunks).map(move |i| {
        let n = (len - i * CHUNK as u64).min(CHUNK as u64) as usize;
        Ok::<_, std::io::Error>(chunk_of(seed, i, n))
    });
    reqwest::Body::wrap_stream(stream)
}

pub(crate) fn expected_digest(seed: u64, len: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    let chunks = len.div_ceil(CHUNK as u64);
    for i in 0..chunks {
        let n = (len - i * CHUNK as u64).min(CHUNK as u64) as usize;
        h.update(chunk_of(seed, i, n));
    }
    h.finalize().into()
}

pub(crate) async fn upload(loader: &Loader, name: &str, seed: u64, len: u64) {
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

pub(crate) async fn download_digest(loader: &Loader, name: &str) -> ([u8; 32], u64) {
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
    let loader = spawn_loader(&peers.emulator.base_url(), dir.path(), &[]);
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
    let loader = spawn_loader(&peers.emulator.base_url(), dir.path(), &[]);
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
    let loader = spawn_loader(&peers.emulator.base_url(), dir.path(), &[]);
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
