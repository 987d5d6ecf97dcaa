//! Faults of the process itself: `kill -9` in the middle of a download, an
//! upload and an unlock, then a restart; and SIGTERM while a download streams.
//! The cache must then hold only complete, verified files, unlock starts at
//! `idle`, and nothing else is left behind.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use azaion_loader::startup::dev::{self, DEMO_EMAIL, DEMO_FOLDER, DEMO_PASSWORD};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::e2e::{Loader, files_under, pattern, spawn_loader};

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
    let mut loader = spawn_loader(&peers.emulator.base_url(), dir.path(), &[]);
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

    let loader = spawn_loader(&peers.emulator.base_url(), dir.path(), &[]);
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
    let mut loader = spawn_loader(&peers.emulator.base_url(), dir.path(), &[]);
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
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let sender = tokio::spawn(async move {
        for i in 0..16u8 {
            if tx.send(Ok(pattern(1 << 20, i))).await.is_err() {
                return;
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        std::future::pending::<()>().await;
    });
    let upload = tokio::spawn(request);
    // Kill once the upload is under way in the loader: its bytes are being
    // taken (the channel holds only 4 MiB) and its cache entry is being written.
    let cache = dir.path().join("cache");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sent.load(std::sync::atomic::Ordering::Relaxed) < 8 || cache_files(&cache).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never got under way: {} MiB taken, cache {:?}",
            sent.load(std::sync::atomic::Ordering::Relaxed),
            cache_files(&cache)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kill(&mut loader, "-KILL");
    let _ = loader.child.wait();
    assert!(
        upload.await.unwrap().is_err(),
        "the upload cannot have succeeded"
    );
    sender.abort();
    drop(loader);

    let loader = spawn_loader(&peers.emulator.base_url(), dir.path(), &[]);
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
    // A Docker that takes the archive slowly: the kill lands while the
    // loader is decrypting, with plaintext in flight.
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let socket = dir.path().join("slow-docker.sock");
    let slow_docker = tokio::spawn(serve_slow_docker(
        tokio::net::UnixListener::bind(&socket).unwrap(),
    ));
    let docker_host = format!("unix://{}", socket.display());
    let env = [
        ("DOCKER_HOST", docker_host.as_str()),
        ("TMPDIR", tmp.to_str().unwrap()),
    ];
    let mut loader = spawn_loader(&peers.emulator.base_url(), dir.path(), &env);
    let r = loader
        .client
        .post(loader.url("/unlock"))
        .json(&json!({"email": DEMO_EMAIL, "password": DEMO_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "authenticating");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = loader.unlock_status().await;
        if v["state"] == "decrypting" && v["progress"]["bytes_done"].as_u64() > Some(1 << 20) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline && v["state"] != "error",
            "the unlock never got to decrypting: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill(&mut loader, "-KILL");
    let _ = loader.child.wait();
    drop(loader);
    slow_docker.abort();

    let loader = spawn_loader(&peers.emulator.base_url(), dir.path(), &env);
    assert_eq!(loader.unlock_status().await["state"], "idle");
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
    let mut loader = spawn_loader(&peers.emulator.base_url(), dir.path(), &[]);
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
    assert_eq!(
        status.code(),
        Some(143),
        "exit 128 + SIGTERM after the grace: {status:?}"
    );
    assert_eq!(
        cache_files(&dir.path().join("cache")),
        vec!["models/big.bin.big".to_owned()]
    );
}

/// Enough of the Docker Engine API over a Unix socket for an unlock to reach
/// its load: `/version` answers, anything else is unknown, and
/// `POST /images/load` takes its body at about 320 KiB/s and never answers.
async fn serve_slow_docker(listener: tokio::net::UnixListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            let mut head = Vec::new();
            loop {
                let Ok(n) = conn.read(&mut buf).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                head.extend_from_slice(&buf[..n]);
                let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let request = String::from_utf8_lossy(&head[..end]).into_owned();
                head.drain(..end + 4);
                let line = request.lines().next().unwrap_or_default().to_owned();
                if line.contains("/images/load") {
                    loop {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                }
                let (status, body) = if line.contains("/version") {
                    (
                        "200 OK",
                        r#"{"ApiVersion":"1.47","MinAPIVersion":"1.24","Version":"27.0.0"}"#,
                    )
                } else {
                    ("404 Not Found", r#"{"message":"not here"}"#)
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if conn.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}
