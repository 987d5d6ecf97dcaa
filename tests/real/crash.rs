//! Faults of the process itself: `kill -9` in the middle of a download, an
//! upload and an unlock, then a restart; and SIGTERM while a download streams.
//! The cache must then hold only complete, verified files, unlock starts at
//! `idle`, and nothing else is left behind.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use azaion_loader::app::dev::{self, DEMO_EMAIL, DEMO_FOLDER, DEMO_PASSWORD};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::e2e::{Loader, files_under, pattern};

/// Every file under the cache: none may be a temporary left by a crash, and
/// every entry must still load byte-exact.
fn cache_files(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = files_under(cache)
        .iter()
        .map(|path| path.strip_prefix(cache).unwrap().display().to_string())
        .collect();
    names.sort();
    names
}

fn kill(loader: &mut Loader, signal: &str) {
    let status = Command::new("kill")
        .arg(signal)
        .arg(loader.child.id().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success());
}

async fn load_all(loader: &Loader, name: &str) -> Vec<u8> {
    let r = loader
        .client
        .post(loader.url(&format!("/load/{name}")))
        .json(&json!({"folder": DEMO_FOLDER}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_download_leaves_no_partial_cache_file_and_a_restart_serves_it_whole() {
    let dir = tempfile::tempdir().unwrap();
    let peers = dev::peers_in(dir.path()).await.unwrap();
    let plain = pattern(64 << 20, 1);
    dev::seed_resource(
        &peers.emulator,
        &peers.cdn,
        DEMO_FOLDER,
        "big.bin",
        Bytes::from(plain.clone()),
    )
    .await
    .unwrap();
    let mut loader = Loader::spawn(&peers.emulator.base_url(), dir.path(), &[]);
    loader.login().await;
    let r = loader
        .client
        .post(loader.url("/load/big.bin"))
        .json(&json!({"folder": DEMO_FOLDER}))
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let mut got = 0usize;
    while got < (8 << 20) {
        got += body.next().await.unwrap().unwrap().len();
    }
    kill(&mut loader, "-KILL");
    let _ = loader.child.wait();
    let cache = dir.path().join("cache");
    drop(loader);

    let loader = Loader::spawn(&peers.emulator.base_url(), dir.path(), &[]);
    let files = cache_files(&cache);
    assert!(
        files.iter().all(|f| !f.contains(".tmp")),
        "temporary files survived a restart: {files:?}"
    );
    assert!(
        !files.contains(&"models/big.bin.big".to_owned()),
        "a partial entry was committed: {files:?}"
    );
    loader.login().await;
    assert_eq!(
        Sha256::digest(load_all(&loader, "big.bin").await),
        Sha256::digest(&plain)
    );
    assert_eq!(cache_files(&cache), vec!["models/big.bin.big".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_upload_leaves_nothing_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let peers = dev::peers_in(dir.path()).await.unwrap();
    let mut loader = Loader::spawn(&peers.emulator.base_url(), dir.path(), &[]);
    loader.login().await;
    // A body that trickles: 16 MiB, then it waits forever.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    let part =
        reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(stream)).file_name("up.bin");
    let form = reqwest::multipart::Form::new()
        .text("folder", DEMO_FOLDER)
        .part("data", part);
    let request = loader
        .client
        .post(loader.url("/upload/up.bin"))
        .multipart(form)
        .send();
    let sender = tokio::spawn(async move {
        for i in 0..16u8 {
            if tx.send(Ok(pattern(1 << 20, i))).await.is_err() {
                return;
            }
        }
        std::future::pending::<()>().await;
    });
    let upload = tokio::spawn(request);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    kill(&mut loader, "-KILL");
    let _ = loader.child.wait();
    assert!(
        upload.await.unwrap().is_err(),
        "the upload cannot have succeeded"
    );
    sender.abort();
    drop(loader);

    let loader = Loader::spawn(&peers.emulator.base_url(), dir.path(), &[]);
    let files = cache_files(&dir.path().join("cache"));
    assert!(files.is_empty(), "an interrupted upload left {files:?}");
    assert!(
        peers
            .emulator
            .file(Some(DEMO_FOLDER), "up.bin.small")
            .is_none()
    );
    assert!(
        !dir.path()
            .join("s3")
            .join(DEMO_FOLDER)
            .join("up.bin.big")
            .exists()
    );
    drop(loader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_unlock_then_a_restart_starts_idle_with_no_plaintext_left() {
    let dir = tempfile::tempdir().unwrap();
    let peers = dev::peers_in(dir.path()).await.unwrap();
    let marker = b"AZAION-PLAINTEXT-MARKER";
    let mut plain = pattern(32 << 20, 3);
    plain[..marker.len()].copy_from_slice(marker);
    let key = azaion_loader::domain::keys::AesKey::from_archive_fragment(dev::DEMO_FRAGMENT);
    std::fs::write(
        dir.path().join("images.enc"),
        azaion_loader::domain::cipher::encrypt(&key, [1; 16], &plain),
    )
    .unwrap();
    // Nothing listens at this socket: the runtime never answers, the run stays busy or fails.
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let dead_docker = format!("unix://{}/none.sock", dir.path().display());
    let env = [
        ("DOCKER_HOST", dead_docker.as_str()),
        ("TMPDIR", tmp.to_str().unwrap()),
    ];
    let mut loader = Loader::spawn(&peers.emulator.base_url(), dir.path(), &env);
    peers.emulator.stall_next(
        azaion_loader::adapters::emulator::Route::KeyFragment,
        1,
        Duration::from_secs(5),
    );
    let r = loader
        .client
        .post(loader.url("/unlock"))
        .json(&json!({"email": DEMO_EMAIL, "password": DEMO_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "authenticating");
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill(&mut loader, "-KILL");
    let _ = loader.child.wait();
    drop(loader);

    let loader = Loader::spawn(&peers.emulator.base_url(), dir.path(), &env);
    let v: Value = loader
        .client
        .get(loader.url("/unlock/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["state"], "idle");
    for p in files_under(dir.path()) {
        if let Ok(bytes) = std::fs::read(&p) {
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker),
                "plaintext in {}",
                p.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_download_in_flight_finish_and_refuses_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let peers = dev::peers_in(dir.path()).await.unwrap();
    let plain = pattern(48 << 20, 4);
    dev::seed_resource(
        &peers.emulator,
        &peers.cdn,
        DEMO_FOLDER,
        "big.bin",
        Bytes::from(plain.clone()),
    )
    .await
    .unwrap();
    let mut loader = Loader::spawn(&peers.emulator.base_url(), dir.path(), &[]);
    loader.login().await;
    let r = loader
        .client
        .post(loader.url("/load/big.bin"))
        .json(&json!({"folder": DEMO_FOLDER}))
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let mut hasher = Sha256::new();
    let first = body.next().await.unwrap().unwrap();
    hasher.update(&first);
    kill(&mut loader, "-TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fresh = reqwest::Client::new()
        .get(loader.url("/health"))
        .send()
        .await;
    assert!(
        fresh.is_err(),
        "a new connection was accepted after SIGTERM"
    );
    while let Some(chunk) = body.next().await {
        hasher.update(chunk.expect("the download in flight completes"));
    }
    assert_eq!(hasher.finalize(), Sha256::digest(&plain));
    let status = loader.child.wait().unwrap();
    assert!(status.success(), "clean exit after the grace: {status:?}");
    assert_eq!(
        cache_files(&dir.path().join("cache")),
        vec!["models/big.bin.big".to_owned()]
    );
}
