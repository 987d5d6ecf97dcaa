//! Faults of the peers, with real adapters: the Resource API emulator and the
//! embedded S3 server inject failures, stalls, expiry and cut connections
//! while the `serve` binary works through them.

use std::time::Duration;

use azaion_loader::adapters::devstack::emulator::Route;
use azaion_loader::startup::dev::{self, DEMO_FOLDER};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::e2e::{Loader, pattern, spawn_loader};

struct Setup {
    dir: tempfile::TempDir,
    peers: std::sync::Arc<dev::DevPeers>,
    loader: Loader,
}

async fn setup(resources: &[(&str, usize)]) -> (Setup, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let peers = dev::peers_in(dir.path()).await.unwrap();
    let mut plains = Vec::new();
    for (i, (name, len)) in resources.iter().enumerate() {
        let plain = pattern(*len, i as u8);
        dev::seed_resource(
            &peers.emulator,
            &peers.cdn,
            DEMO_FOLDER,
            name,
            Bytes::from(plain.clone()),
        )
        .await
        .unwrap();
        plains.push(plain);
    }
    let loader = spawn_loader(
        &peers.emulator.base_url(),
        dir.path(),
        &[("API_REQUEST_TIMEOUT_SECS", "1")],
    );
    loader.login().await;
    (Setup { dir, peers, loader }, plains)
}

async fn load(loader: &Loader, name: &str) -> (u16, Result<Vec<u8>, String>) {
    let r = loader
        .client
        .post(loader.url(&format!("/load/{name}")))
        .json(&json!({"folder": DEMO_FOLDER}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        r.bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| e.to_string()),
    )
}

fn cache_entry(s: &Setup, name: &str) -> std::path::PathBuf {
    s.dir
        .path()
        .join("cache")
        .join(DEMO_FOLDER)
        .join(format!("{name}.big"))
}

fn temp_files(s: &Setup) -> Vec<String> {
    std::fs::read_dir(s.dir.path().join("cache").join(DEMO_FOLDER))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_5xx_is_retried_a_bounded_number_of_times() {
    let (s, plains) = setup(&[("m.bin", 100_000)]).await;
    let before = s.peers.emulator.calls(Route::GetResource);
    s.peers.emulator.fail_next(Route::GetResource, 2, 500);
    let (status, body) = load(&s.loader, "m.bin").await;
    assert_eq!(status, 200);
    assert_eq!(body.unwrap(), plains[0]);
    assert_eq!(s.peers.emulator.calls(Route::GetResource) - before, 3);

    let before = s.peers.emulator.calls(Route::GetResource);
    s.peers.emulator.fail_next(Route::GetResource, 10, 503);
    let (status, _) = load(&s.loader, "m.bin").await;
    assert_eq!(status, 502);
    assert_eq!(
        s.peers.emulator.calls(Route::GetResource) - before,
        3,
        "no retry storm"
    );
    s.peers.emulator.clear_faults();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_stalled_past_the_timeout_answers_503_and_a_dead_api_too() {
    let (s, _) = setup(&[("m.bin", 10_000)]).await;
    s.peers
        .emulator
        .stall_next(Route::GetResource, 3, Duration::from_secs(3));
    let (status, _) = load(&s.loader, "m.bin").await;
    assert_eq!(status, 503);
    s.peers.emulator.shutdown();
    s.peers.emulator.stopped().await;
    let (status, _) = load(&s.loader, "m.bin").await;
    assert_eq!(status, 503);
    let r = s
        .loader
        .client
        .post(s.loader.url("/login"))
        .json(&json!({"email": dev::DEMO_EMAIL, "password": dev::DEMO_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "login answers 401 when the API is unreachable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expired_mid_session_is_renewed_once() {
    let (s, plains) = setup(&[("m.bin", 50_000)]).await;
    let logins = s.peers.emulator.calls(Route::Login);
    s.peers.emulator.expire_tokens();
    let (status, body) = load(&s.loader, "m.bin").await;
    assert_eq!(status, 200);
    assert_eq!(body.unwrap(), plains[0]);
    assert_eq!(s.peers.emulator.calls(Route::Login) - logins, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_cdn_yaml_fails_login_with_401() {
    let dir = tempfile::tempdir().unwrap();
    let peers = dev::peers_in(dir.path()).await.unwrap();
    peers
        .emulator
        .set_cdn_yaml_raw(Bytes::from_static(b"host: [not yaml"));
    let loader = spawn_loader(&peers.emulator.base_url(), dir.path(), &[]);
    let r = loader
        .client
        .post(loader.url("/login"))
        .json(&json!({"email": dev::DEMO_EMAIL, "password": dev::DEMO_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("cdn.yaml"));
    assert!(!body.to_string().contains("dev-reader-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cdn_read_cut_midway_resumes_and_caches_only_the_whole_part() {
    let (s, plains) = setup(&[("m.bin", 24 << 20)]).await;
    s.peers.s3.cut_next_get_after(5 << 20);
    let (status, body) = load(&s.loader, "m.bin").await;
    assert_eq!(status, 200);
    assert_eq!(Sha256::digest(body.unwrap()), Sha256::digest(&plains[0]));
    assert!(cache_entry(&s, "m.bin").exists());
    assert!(temp_files(&s).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_cdn_still_delivers_byte_exact() {
    let (s, plains) = setup(&[("m.bin", 8 << 20)]).await;
    s.peers
        .s3
        .stall_next_get_after(1 << 20, Duration::from_secs(2));
    let (status, body) = load(&s.loader, "m.bin").await;
    assert_eq!(status, 200);
    assert_eq!(Sha256::digest(body.unwrap()), Sha256::digest(&plains[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cdn_that_is_down_answers_503_and_a_cached_part_is_still_served() {
    let (s, plains) = setup(&[("cached.bin", 200_000), ("uncached.bin", 200_000)]).await;
    assert_eq!(load(&s.loader, "cached.bin").await.1.unwrap(), plains[0]);
    s.peers.s3.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = load(&s.loader, "uncached.bin").await;
    assert_eq!(status, 503);
    let (status, body) = load(&s.loader, "cached.bin").await;
    assert_eq!(status, 200);
    assert_eq!(body.unwrap(), plains[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_download_leaves_nothing_half_written() {
    let (s, plains) = setup(&[("m.bin", 32 << 20)]).await;
    // Slow the CDN after 4 MiB so the client can hang up mid-transfer.
    s.peers
        .s3
        .stall_next_get_after(4 << 20, Duration::from_secs(3));
    let r = s
        .loader
        .client
        .post(s.loader.url("/load/m.bin"))
        .json(&json!({"folder": DEMO_FOLDER}))
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let mut got = 0;
    while got < (1 << 20) {
        got += body.next().await.unwrap().unwrap().len();
    }
    drop(body);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !cache_entry(&s, "m.bin").exists(),
        "a partial part was committed"
    );
    assert!(
        temp_files(&s).is_empty(),
        "temporary files stayed: {:?}",
        temp_files(&s)
    );
    let (status, again) = load(&s.loader, "m.bin").await;
    assert_eq!(status, 200);
    assert_eq!(Sha256::digest(again.unwrap()), Sha256::digest(&plains[0]));
}
