//! Unlock for real (PROTOCOL §6): the `serve` binary streams an encrypted
//! `docker save` archive through decryption into a real Docker daemon, with
//! both runtime adapters. Skips with a printed reason where no daemon runs,
//! unless `AZAION_REQUIRE_DOCKER=1` (CI).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use azaion_loader::adapters::devstack::emulator::Route;
use azaion_loader::domain::cipher::{Encryptor, encrypt};
use azaion_loader::domain::keys::AesKey;
use azaion_loader::startup::dev::{self, DEMO_EMAIL, DEMO_FRAGMENT, DEMO_PASSWORD, DevPeers};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::docker::{Daemon, daemon, docker_cli, docker_save_archive, tar, unique_tag};
use crate::e2e::{Loader, spawn_loader};

const RUNTIMES: [&str; 2] = ["bollard", "cli"];

struct Stage {
    dir: tempfile::TempDir,
    peers: std::sync::Arc<DevPeers>,
    daemon: Daemon,
}

impl Stage {
    async fn new() -> Option<Self> {
        let daemon = daemon().await?;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let peers = dev::peers_in(dir.path()).await.unwrap();
        Some(Self { dir, peers, daemon })
    }

    fn archive_path(&self) -> PathBuf {
        self.dir.path().join("images.enc")
    }

    fn loader(&self, runtime: &str, images: &[&str], docker_host: &str) -> Loader {
        let images = images.join(",");
        let tmp = self.dir.path().join("tmp");
        spawn_loader(
            &self.peers.emulator.base_url(),
            self.dir.path(),
            &[
                ("LOADER_RUNTIME", runtime),
                ("LOADER_IMAGES", &images),
                ("DOCKER_HOST", docker_host),
                ("TMPDIR", tmp.to_str().unwrap()),
            ],
        )
    }

    fn write_archive(&self, fragment: &[u8], plain: &[u8]) -> Vec<u8> {
        let encrypted = encrypt(&AesKey::from_archive_fragment(fragment), [7; 16], plain);
        std::fs::write(self.archive_path(), &encrypted).unwrap();
        encrypted
    }

    /// No file under the archive's folder (the archive aside), the cache or the
    /// loader's temp dir holds the archive's plaintext marker.
    fn assert_no_plaintext_on_disk(&self, marker: &[u8]) {
        let mut stack = vec![self.dir.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                if path.starts_with(self.dir.path().join("s3")) || path == self.archive_path() {
                    continue;
                }
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let bytes = std::fs::read(&path).unwrap_or_default();
                    assert!(
                        !bytes.windows(marker.len()).any(|w| w == marker),
                        "plaintext found in {}",
                        path.display()
                    );
                }
            }
        }
    }
}

async fn post_unlock(loader: &Loader, password: &str) -> reqwest::Response {
    loader
        .client
        .post(loader.url("/unlock"))
        .json(&json!({"email": DEMO_EMAIL, "password": password}))
        .send()
        .await
        .unwrap()
}

async fn status(loader: &Loader) -> Value {
    loader
        .client
        .get(loader.url("/unlock/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_for(loader: &Loader, states: &[&str]) -> Value {
    for _ in 0..6000 {
        let v = status(loader).await;
        if states.contains(&v["state"].as_str().unwrap_or_default()) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("unlock never reached {states:?}: {}", status(loader).await);
}

fn runtimes() -> Vec<&'static str> {
    RUNTIMES
        .into_iter()
        .filter(|r| *r != "cli" || docker_cli().is_some())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_streams_the_archive_into_docker_and_reaches_ready_with_both_adapters() {
    let Some(stage) = Stage::new().await else {
        return;
    };
    for runtime in runtimes() {
        let tag = unique_tag(runtime, "unlock-ready");
        let plain = docker_save_archive(&tag);
        let encrypted = stage.write_archive(DEMO_FRAGMENT, &plain);
        let loader = stage.loader(runtime, &[&tag], &stage.daemon.host);
        let r = post_unlock(&loader, DEMO_PASSWORD).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["state"], "authenticating");
        let v = wait_for(&loader, &["ready", "error"]).await;
        assert_eq!(v["state"], "ready", "{runtime}: {v}");
        assert_eq!(v["progress"]["bytes_done"], encrypted.len() as u64);
        assert_eq!(v["progress"]["bytes_total"], encrypted.len() as u64);
        assert!(stage.daemon.present(&tag).await, "{runtime}: image loaded");
        stage.assert_no_plaintext_on_disk(tag.as_bytes());
        // A later POST answers ready and starts nothing.
        let again = post_unlock(&loader, DEMO_PASSWORD)
            .await
            .json::<Value>()
            .await
            .unwrap();
        assert_eq!(again["state"], "ready");
        stage.daemon.remove(&[tag]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_fragment_a_truncated_archive_and_a_damaged_last_block_end_in_error_with_nothing_loaded()
 {
    let Some(stage) = Stage::new().await else {
        return;
    };
    for runtime in runtimes() {
        for case in ["wrong-fragment", "truncated", "damaged-last-block"] {
            let tag = unique_tag(runtime, case);
            let plain = docker_save_archive(&tag);
            let fragment: &[u8] = if case == "wrong-fragment" {
                b"not the fragment"
            } else {
                DEMO_FRAGMENT
            };
            let mut encrypted = encrypt(&AesKey::from_archive_fragment(fragment), [9; 16], &plain);
            match case {
                "truncated" => encrypted.truncate(encrypted.len() - 16),
                "damaged-last-block" => {
                    let n = encrypted.len();
                    encrypted[n - 17] ^= 0x5a; // garbles the padding of the last block
                }
                _ => {}
            }
            std::fs::write(stage.archive_path(), &encrypted).unwrap();
            let loader = stage.loader(runtime, &[&tag], &stage.daemon.host);
            post_unlock(&loader, DEMO_PASSWORD).await;
            let v = wait_for(&loader, &["ready", "error"]).await;
            assert_eq!(v["state"], "error", "{runtime} {case}: {v}");
            assert!(v["error"].as_str().unwrap().len() > 5);
            assert!(
                !stage.daemon.present(&tag).await,
                "{runtime} {case}: nothing may be loaded"
            );
            stage.daemon.remove(&[tag]).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_daemon_ends_in_error_and_a_retry_after_an_error_reaches_ready() {
    let Some(stage) = Stage::new().await else {
        return;
    };
    for runtime in runtimes() {
        let tag = unique_tag(runtime, "retry");
        stage.write_archive(DEMO_FRAGMENT, &docker_save_archive(&tag));
        let missing = format!("unix://{}/no-docker.sock", stage.dir.path().display());
        let dead = stage.loader(runtime, &[&tag], &missing);
        post_unlock(&dead, DEMO_PASSWORD).await;
        let v = wait_for(&dead, &["ready", "error"]).await;
        assert_eq!(v["state"], "error", "{runtime}: {v}");
        drop(dead);

        let loader = stage.loader(runtime, &[&tag], &stage.daemon.host);
        // Three 500s in a row outlast the retries (three tries with backoff).
        stage.peers.emulator.fail_next(Route::KeyFragment, 3, 500);
        post_unlock(&loader, DEMO_PASSWORD).await;
        let v = wait_for(&loader, &["ready", "error"]).await;
        assert_eq!(v["state"], "error");
        let r = post_unlock(&loader, DEMO_PASSWORD)
            .await
            .json::<Value>()
            .await
            .unwrap();
        assert_eq!(r["state"], "authenticating", "a retry starts from error");
        let v = wait_for(&loader, &["ready", "error"]).await;
        assert_eq!(v["state"], "ready", "{runtime}: {v}");
        assert_eq!(v["error"], Value::Null);
        assert!(stage.daemon.present(&tag).await);
        stage.daemon.remove(&[tag]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_unlock_during_a_run_starts_nothing() {
    let Some(stage) = Stage::new().await else {
        return;
    };
    let tag = unique_tag("bollard", "second-post");
    stage.write_archive(DEMO_FRAGMENT, &docker_save_archive(&tag));
    let loader = stage.loader("bollard", &[&tag], &stage.daemon.host);
    let logins_before = stage.peers.emulator.calls(Route::Login);
    stage
        .peers
        .emulator
        .stall_next(Route::KeyFragment, 1, Duration::from_millis(1500));
    post_unlock(&loader, DEMO_PASSWORD).await;
    wait_for(&loader, &["downloading_key"]).await;
    let again = post_unlock(&loader, DEMO_PASSWORD)
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(again["state"], "downloading_key");
    assert_eq!(
        wait_for(&loader, &["ready", "error"]).await["state"],
        "ready"
    );
    assert_eq!(
        stage.peers.emulator.calls(Route::Login) - logins_before,
        1,
        "one run, one login"
    );
    assert_eq!(stage.peers.emulator.calls(Route::KeyFragment), 1);
    stage.daemon.remove(&[tag]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_archive_answers_ready_when_the_images_are_present_and_404_when_not() {
    let Some(stage) = Stage::new().await else {
        return;
    };
    for runtime in runtimes() {
        let tag = unique_tag(runtime, "no-archive");
        let absent = stage.loader(runtime, &[&tag], &stage.daemon.host);
        let r = post_unlock(&absent, DEMO_PASSWORD).await;
        assert_eq!(r.status(), 404, "{runtime}");
        drop(absent);
        // Load the image directly, then ask again without an archive.
        stage.write_archive(DEMO_FRAGMENT, &docker_save_archive(&tag));
        let loader = stage.loader(runtime, &[&tag], &stage.daemon.host);
        post_unlock(&loader, DEMO_PASSWORD).await;
        assert_eq!(
            wait_for(&loader, &["ready", "error"]).await["state"],
            "ready"
        );
        drop(loader);
        std::fs::remove_file(stage.archive_path()).unwrap();
        let present = stage.loader(runtime, &[&tag], &stage.daemon.host);
        let r = post_unlock(&present, DEMO_PASSWORD).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.json::<Value>().await.unwrap()["state"],
            "ready",
            "{runtime}"
        );
        stage.daemon.remove(&[tag]).await;
    }
}

/// Writes a `docker save` archive whose layer holds one file of `content_len`
/// pseudo-random bytes, encrypted per §1.4, streaming (never all in memory).
fn write_big_encrypted_archive(path: &Path, tag: &str, content_len: u64, fragment: &[u8]) {
    const CHUNK: usize = 1 << 20;
    let key = AesKey::from_archive_fragment(fragment);
    let mut enc = Encryptor::new(&key, [3; 16]);
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut out = Vec::with_capacity(CHUNK + 64);
    let mut emit =
        |bytes: &[u8], enc: &mut Encryptor, file: &mut std::io::BufWriter<std::fs::File>| {
            out.clear();
            enc.update(bytes, &mut out);
            file.write_all(&out).unwrap();
        };
    // The layer tar: a header for the file, the data, padding, end blocks.
    let file_header = {
        let t = tar(&[("big.bin", &[])]);
        let mut h = t[..512].to_vec();
        set_size(&mut h, content_len);
        h
    };
    let padded = content_len.next_multiple_of(512);
    let layer_len = 512 + padded + 1024;
    let mut outer_header = tar(&[("layer/layer.tar", &[])])[..512].to_vec();
    set_size(&mut outer_header, layer_len);
    emit(&tar(&[("layer/", b"")])[..512], &mut enc, &mut file);
    emit(&outer_header, &mut enc, &mut file);
    let mut layer_hash = Sha256::new();
    layer_hash.update(&file_header);
    emit(&file_header, &mut enc, &mut file);
    let mut written = 0u64;
    let mut index = 0u64;
    while written < padded {
        let n = (padded - written).min(CHUNK as u64) as usize;
        let mut buf = azaion_loader::test_support::pattern_chunk(0x1234, index, n);
        index += 1;
        let data_end = content_len.saturating_sub(written).min(n as u64) as usize;
        buf[data_end..n].fill(0);
        layer_hash.update(&buf[..n]);
        emit(&buf[..n], &mut enc, &mut file);
        written += n as u64;
    }
    layer_hash.update([0u8; 1024]);
    emit(&[0u8; 1024], &mut enc, &mut file);
    let diff_id = hex::encode(layer_hash.finalize());
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["sha256:{diff_id}"]}},"config":{{}}}}"#
    );
    let manifest = format!(
        r#"[{{"Config":"config.json","RepoTags":["{tag}"],"Layers":["layer/layer.tar"]}}]"#
    );
    // config.json, manifest.json and the end-of-archive blocks.
    let rest = tar(&[
        ("config.json", config.as_bytes()),
        ("manifest.json", manifest.as_bytes()),
    ]);
    emit(&rest, &mut enc, &mut file);
    out.clear();
    enc.finish(&mut out);
    file.write_all(&out).unwrap();
    file.flush().unwrap();
}

/// Rewrites the size field of a tar header and its checksum.
fn set_size(header: &mut [u8], size: u64) {
    let digits = format!("{size:011o}\0");
    header[124..136].copy_from_slice(digits.as_bytes());
    header[148..156].fill(b' ');
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// Bytes the process caused to be written to storage (`write_bytes` of
/// /proc/PID/io). Unreadable fails the test: "0 bytes written" must be a
/// reading, never a default.
fn storage_writes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/io: {e}"));
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no write_bytes in /proc/{pid}/io"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gib_archive_unlocks_in_bounded_memory_with_no_plaintext_written() {
    let Some(stage) = Stage::new().await else {
        return;
    };
    let tag = unique_tag("bollard", "one-gib");
    let content_len: u64 = 1 << 30;
    write_big_encrypted_archive(&stage.archive_path(), &tag, content_len, DEMO_FRAGMENT);
    let archive_len = std::fs::metadata(stage.archive_path()).unwrap().len();
    let loader = stage.loader("bollard", &[&tag], &stage.daemon.host);
    let writes_before = storage_writes(loader.child.id());
    let started = std::time::Instant::now();
    post_unlock(&loader, DEMO_PASSWORD).await;
    let v = wait_for(&loader, &["ready", "error"]).await;
    assert_eq!(v["state"], "ready", "{v}");
    let written = storage_writes(loader.child.id()) - writes_before;
    let peak = loader.peak_rss_kib();
    println!(
        "unlock of a {:.2} GiB archive: {:.1} s, loader peak RSS {} KiB ({:.1} MiB), bytes the loader wrote to disk: {}",
        archive_len as f64 / (1u64 << 30) as f64,
        started.elapsed().as_secs_f64(),
        peak,
        peak as f64 / 1024.0,
        written
    );
    assert_eq!(written, 0, "the loader wrote to disk during the unlock");
    // The debug build (what `cargo test` runs).
    assert!(
        peak <= 64 * 1024,
        "peak RSS {peak} KiB during the unlock (bound: 64 MiB)"
    );
    assert!(stage.daemon.present(&tag).await);
    stage.daemon.remove(&[tag]).await;
}
