//! Both Docker adapters (bollard and the CLI) against a real Docker daemon at `DOCKER_HOST`
//! (or the default socket): streamed loads, rejected archives, broken archive streams,
//! lookups and an unreachable daemon. Without a daemon the daemon tests print `SKIPPED`
//! and pass, unless `AZAION_REQUIRE_DOCKER=1`. Test images are removed afterwards.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use azaion_loader::adapters::outbound::docker_bollard::BollardRuntime;
use azaion_loader::adapters::outbound::docker_cli::DockerCliRuntime;
use azaion_loader::ports::{ByteStream, ContainerRuntime, RuntimeError};
use bollard::Docker;
use bollard::query_parameters::RemoveImageOptionsBuilder;
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};

const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// A minimal `docker save` archive: one layer holding one small file (unique to
/// `repo_tag`, so every tag gets its own image ID), its config, and a manifest naming
/// `repo_tag`.
pub fn docker_save_archive(repo_tag: &str) -> Vec<u8> {
    docker_save_archive_of_size(repo_tag, 0)
}

/// Like [`docker_save_archive`], with `padding` more bytes in the layer's file.
fn docker_save_archive_of_size(repo_tag: &str, padding: usize) -> Vec<u8> {
    let mut content = format!("hello from {repo_tag}\n").into_bytes();
    content.resize(content.len() + padding, b'.');
    let layer = tar(&[("etc/", b""), ("etc/azaion-test.txt", &content)]);
    docker_save_archive_with_layer(repo_tag, &layer, &sha256_hex(&layer))
}

/// An archive whose config names `diff_id` for `layer`; a wrong `diff_id` makes Docker
/// reject the archive after it has started answering.
pub(crate) fn docker_save_archive_with_layer(
    repo_tag: &str,
    layer: &[u8],
    diff_id: &str,
) -> Vec<u8> {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["sha256:{diff_id}"]}},"config":{{}}}}"#
    );
    let config_name = format!("{}.json", sha256_hex(config.as_bytes()));
    let layer_dir = sha256_hex(layer);
    let layer_path = format!("{layer_dir}/layer.tar");
    let manifest = format!(
        r#"[{{"Config":"{config_name}","RepoTags":["{repo_tag}"],"Layers":["{layer_path}"]}}]"#
    );
    tar(&[
        (&format!("{layer_dir}/"), b""),
        (&layer_path, layer),
        (&config_name, config.as_bytes()),
        ("manifest.json", manifest.as_bytes()),
    ])
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A ustar archive of `entries`; a name ending in `/` is a directory.
pub(crate) fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut archive = Vec::new();
    for (name, data) in entries {
        let is_dir = name.ends_with('/');
        let mut header = [0_u8; 512];
        assert!(name.len() < 100, "tar name too long: {name}");
        header[..name.len()].copy_from_slice(name.as_bytes());
        put_octal(&mut header[100..108], if is_dir { 0o755 } else { 0o644 });
        put_octal(&mut header[108..116], 0);
        put_octal(&mut header[116..124], 0);
        put_octal(&mut header[124..136], data.len() as u64);
        put_octal(&mut header[136..148], 1_700_000_000);
        header[148..156].fill(b' ');
        header[156] = if is_dir { b'5' } else { b'0' };
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        let checksum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        let checksum = format!("{checksum:06o}\0 ");
        header[148..156].copy_from_slice(checksum.as_bytes());
        archive.extend_from_slice(&header);
        archive.extend_from_slice(data);
        archive.resize(archive.len().next_multiple_of(512), 0);
    }
    archive.resize(archive.len() + 1024, 0);
    archive
}

/// Writes `value` as zero-padded octal followed by a NUL, filling `field`.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = format!("{value:0width$o}\0", width = field.len() - 1);
    field.copy_from_slice(digits.as_bytes());
}

/// `bytes` as a stream of `chunk_size` pieces, then `failure` if given. Every piece
/// arrives after a yield, so the adapter sends what it has instead of batching it all.
fn chunked(bytes: Vec<u8>, chunk_size: usize, failure: Option<&str>) -> ByteStream {
    let mut items: Vec<io::Result<Bytes>> = bytes
        .chunks(chunk_size)
        .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
        .collect();
    if let Some(reason) = failure {
        items.push(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            reason.to_owned(),
        )));
    }
    Box::pin(futures::stream::iter(items).then(|item| async move {
        tokio::task::yield_now().await;
        item
    }))
}

fn docker_host() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|host| !host.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_owned())
}

fn docker_required() -> bool {
    std::env::var("AZAION_REQUIRE_DOCKER").is_ok_and(|value| value == "1")
}

/// Skips (prints why and answers `None`) or, when Docker is required, fails.
fn skip(reason: &str) -> Option<Daemon> {
    assert!(!docker_required(), "AZAION_REQUIRE_DOCKER=1 but {reason}");
    eprintln!("SKIPPED: {reason}");
    None
}

/// The daemon under test and a bollard client of our own for checks and clean-up.
pub(crate) struct Daemon {
    pub(crate) host: String,
    pub(crate) docker: Docker,
}

pub(crate) async fn daemon() -> Option<Daemon> {
    let host = docker_host();
    let docker = match Docker::connect_with_host(&host) {
        Ok(docker) => docker,
        Err(err) => return skip(&format!("no Docker daemon at {host}: {err}")),
    };
    let docker =
        match tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version()).await {
            Ok(Ok(docker)) => docker,
            Ok(Err(err)) => return skip(&format!("no Docker daemon answers at {host}: {err}")),
            Err(_) => {
                return skip(&format!(
                    "the Docker daemon at {host} did not answer in 10 s"
                ));
            }
        };
    Some(Daemon { host, docker })
}

/// The adapters under test, each pointed at `host`.
fn adapters(host: &str) -> Vec<(&'static str, Box<dyn ContainerRuntime>)> {
    let mut adapters: Vec<(&'static str, Box<dyn ContainerRuntime>)> = Vec::new();
    match BollardRuntime::connect(Some(host)) {
        Ok(runtime) => adapters.push(("bollard", Box::new(runtime))),
        Err(err) => panic!("BollardRuntime::connect({host}) failed: {err}"),
    }
    match docker_cli() {
        Some(bin) => adapters.push((
            "cli",
            Box::new(DockerCliRuntime::new(bin, Some(host.to_owned()))),
        )),
        None => {
            assert!(
                !docker_required(),
                "AZAION_REQUIRE_DOCKER=1 but no docker CLI on PATH"
            );
            eprintln!("SKIPPED: the docker CLI adapter (no docker CLI on PATH)");
        }
    }
    adapters
}

pub(crate) fn docker_cli() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("docker"))
        .find(|candidate| candidate.is_file())
}

/// A tag no other test (or earlier run) uses.
pub(crate) fn unique_tag(adapter: &str, test: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or_default();
    format!(
        "azaion-test/{adapter}-{test}-{}-{nanos}-{}:1",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Daemon {
    /// Removes the test images (absent ones are fine), whatever the test found.
    pub(crate) async fn remove(&self, tags: &[String]) {
        let options = RemoveImageOptionsBuilder::default()
            .force(true)
            .noprune(false)
            .build();
        for tag in tags {
            match self
                .docker
                .remove_image(tag, Some(options.clone()), None)
                .await
            {
                Ok(_) => {}
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(err) => eprintln!("could not remove test image {tag}: {err}"),
            }
        }
    }

    pub(crate) async fn present(&self, tag: &str) -> bool {
        self.docker.inspect_image(tag).await.is_ok()
    }
}

#[tokio::test]
async fn an_archive_streamed_in_small_chunks_loads_and_its_image_is_then_present() {
    let Some(daemon) = daemon().await else { return };
    for (name, runtime) in adapters(&daemon.host) {
        let tag = unique_tag(name, "load");
        let before = runtime.image_present(&tag).await;
        let loaded = runtime
            .load(chunked(
                docker_save_archive_of_size(&tag, 256 * 1024),
                1000,
                None,
            ))
            .await;
        let after = runtime.image_present(&tag).await;
        let really_there = daemon.present(&tag).await;
        daemon.remove(std::slice::from_ref(&tag)).await;

        assert_eq!(before, Ok(false), "{name}: present before the load");
        let loaded = loaded.unwrap_or_else(|err| panic!("{name}: load failed: {err}"));
        assert!(
            loaded.contains(&tag),
            "{name}: load reported {loaded:?}, not {tag}"
        );
        assert_eq!(after, Ok(true), "{name}: present after the load");
        assert!(really_there, "{name}: Docker does not know {tag}");
    }
}

#[tokio::test]
async fn a_garbage_archive_fails_the_load() {
    let Some(daemon) = daemon().await else { return };
    for (name, runtime) in adapters(&daemon.host) {
        let garbage: Vec<u8> = (0..20_000_u32).map(|i| (i * 7 + 13) as u8).collect();
        let result = runtime.load(chunked(garbage, 997, None)).await;
        assert!(
            matches!(result, Err(RuntimeError::LoadFailed(_))),
            "{name}: a garbage archive gave {result:?}"
        );
    }
}

#[tokio::test]
async fn an_archive_whose_layer_does_not_match_its_config_fails_and_loads_nothing() {
    let Some(daemon) = daemon().await else { return };
    for (name, runtime) in adapters(&daemon.host) {
        let tag = unique_tag(name, "mismatch");
        let layer = tar(&[("azaion-test.txt", tag.as_bytes())]);
        let wrong_diff_id = sha256_hex(b"some other layer");
        let archive = docker_save_archive_with_layer(&tag, &layer, &wrong_diff_id);
        let result = runtime.load(chunked(archive, 1000, None)).await;
        let present = runtime.image_present(&tag).await;
        daemon.remove(std::slice::from_ref(&tag)).await;

        assert!(
            matches!(result, Err(RuntimeError::LoadFailed(_))),
            "{name}: a mismatched layer gave {result:?}"
        );
        assert_eq!(
            present,
            Ok(false),
            "{name}: {tag} present after a failed load"
        );
    }
}

#[tokio::test]
async fn an_archive_stream_that_fails_midway_fails_the_load_and_loads_nothing() {
    let Some(daemon) = daemon().await else { return };
    for (name, runtime) in adapters(&daemon.host) {
        let tag = unique_tag(name, "broken");
        let mut archive = docker_save_archive_of_size(&tag, 512 * 1024);
        archive.truncate(archive.len() / 2);
        let result = runtime
            .load(chunked(archive, 1000, Some("bad padding")))
            .await;
        // Give a daemon that wrongly accepted the half archive time to show it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let present = runtime.image_present(&tag).await;
        daemon.remove(std::slice::from_ref(&tag)).await;

        match &result {
            Err(RuntimeError::LoadFailed(reason)) => assert!(
                reason.contains("bad padding"),
                "{name}: the failure does not name the stream's error: {reason}"
            ),
            other => panic!("{name}: a failing archive stream gave {other:?}"),
        }
        assert_eq!(
            present,
            Ok(false),
            "{name}: {tag} present after a broken stream"
        );
    }
}

#[tokio::test]
async fn an_archive_stream_that_fails_at_the_very_end_fails_the_load() {
    let Some(daemon) = daemon().await else { return };
    for (name, runtime) in adapters(&daemon.host) {
        let tag = unique_tag(name, "late");
        let archive = docker_save_archive_of_size(&tag, 512 * 1024);
        let result = runtime
            .load(chunked(archive, 4096, Some("bad padding")))
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let present = runtime.image_present(&tag).await;
        daemon.remove(std::slice::from_ref(&tag)).await;

        assert!(
            matches!(&result, Err(RuntimeError::LoadFailed(reason)) if reason.contains("bad padding")),
            "{name}: a stream failing after the whole archive gave {result:?}"
        );
        assert_eq!(
            present,
            Ok(false),
            "{name}: Docker loaded {tag} although the stream failed at its end"
        );
    }
}

#[tokio::test]
async fn an_unknown_reference_is_not_present() {
    let Some(daemon) = daemon().await else { return };
    for (name, runtime) in adapters(&daemon.host) {
        let tag = unique_tag(name, "unknown");
        assert_eq!(runtime.image_present(&tag).await, Ok(false), "{name}");
    }
}

#[tokio::test]
async fn a_daemon_that_is_not_there_is_unavailable() {
    let folder = tempfile::tempdir().unwrap_or_else(|err| panic!("no temporary folder: {err}"));
    let missing = folder.path().join("missing.sock");
    // A socket file nobody listens on any more, as a crashed daemon leaves behind.
    let dead = folder.path().join("dead.sock");
    drop(
        std::os::unix::net::UnixListener::bind(&dead)
            .unwrap_or_else(|err| panic!("cannot bind {}: {err}", dead.display())),
    );
    for socket in [missing, dead] {
        let host = format!("unix://{}", socket.display());
        for (name, runtime) in adapters(&host) {
            let present = runtime.image_present("azaion-test/any:1").await;
            assert!(
                matches!(present, Err(RuntimeError::Unavailable(_))),
                "{name} at {host}: image_present gave {present:?}"
            );
            let loaded = runtime
                .load(chunked(
                    docker_save_archive("azaion-test/any:1"),
                    1000,
                    None,
                ))
                .await;
            assert!(
                matches!(loaded, Err(RuntimeError::Unavailable(_))),
                "{name} at {host}: load gave {loaded:?}"
            );
        }
    }
}
