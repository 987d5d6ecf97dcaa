//! `unlock` without the HTTP service, against a `dev` stack's Resource API
//! emulator and, where one answers, a real Docker daemon.

use std::process::Stdio;
use std::time::Duration;

use azaion_loader::startup::dev::{DEMO_EMAIL, DEMO_FRAGMENT, DEMO_PASSWORD};
use sha2::{Digest, Sha256};

use crate::support::{DevStack, loader, path, run_command, run_ok};

#[test]
fn unlock_without_an_archive_or_images_exits_1_naming_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("images.enc");
    let mut command = loader();
    command
        .args([
            "unlock",
            "--email",
            "someone@example.com",
            "--password-env",
            "PW",
        ])
        .args(["--images-path", path(&archive)])
        .args(["--model-cache-dir", path(&dir.path().join("cache"))])
        .args([
            "--resource-api-url",
            "http://127.0.0.1:9",
            "--runtime",
            "cli",
        ])
        .env("PW", "pw");

    let outcome = run_command(command);

    assert_eq!(outcome.code, Some(1), "{outcome:?}");
    assert!(
        outcome.stderr.contains(path(&archive)),
        "{}",
        outcome.stderr
    );
    assert!(outcome.stderr.contains("missing"), "{}", outcome.stderr);
}

#[test]
fn unlock_with_an_unset_password_variable_is_a_usage_error() {
    let mut command = loader();
    command
        .args([
            "unlock",
            "--email",
            "e@example.com",
            "--password-env",
            "NO_SUCH_VAR_FOR_TEST",
        ])
        .env_remove("NO_SUCH_VAR_FOR_TEST");

    let outcome = run_command(command);

    assert_eq!(outcome.code, Some(2), "{outcome:?}");
    assert!(
        outcome.stderr.contains("NO_SUCH_VAR_FOR_TEST"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn unlock_with_a_wrong_password_from_stdin_exits_1_with_the_reason_and_never_prints_it() {
    let stack = DevStack::start();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("images.enc");
    std::fs::write(&archive, [0u8; 64]).unwrap();
    let mut child = loader()
        .args(["unlock", "--email", DEMO_EMAIL, "--password-stdin"])
        .args(["--resource-api-url", &stack.emulator_url])
        .args(["--images-path", path(&archive)])
        .args(["--model-cache-dir", path(&dir.path().join("cache"))])
        .args([
            "--runtime",
            "cli",
            "--docker-host",
            "unix:///nonexistent/docker.sock",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"not-the-password-42\n").unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("login refused"), "{stderr}");
    assert!(stderr.contains("unlock: authenticating"), "{stderr}");
    assert!(!stderr.contains("not-the-password-42"), "{stderr}");
}

/// A minimal `docker save` archive: one layer with one file, its config and a manifest.
fn docker_save_archive(repo_tag: &str) -> Vec<u8> {
    let sha = |bytes: &[u8]| hex::encode(Sha256::digest(bytes));
    let content = format!("hello from {repo_tag}\n");
    let layer = tar(&[
        ("etc/", b""),
        ("etc/azaion-cli-test.txt", content.as_bytes()),
    ]);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["sha256:{}"]}},"config":{{}}}}"#,
        sha(&layer)
    );
    let config_name = format!("{}.json", sha(config.as_bytes()));
    let layer_dir = sha(&layer);
    let layer_path = format!("{layer_dir}/layer.tar");
    let manifest = format!(
        r#"[{{"Config":"{config_name}","RepoTags":["{repo_tag}"],"Layers":["{layer_path}"]}}]"#
    );
    tar(&[
        (&format!("{layer_dir}/"), b""),
        (&layer_path, &layer),
        (&config_name, config.as_bytes()),
        ("manifest.json", manifest.as_bytes()),
    ])
}

/// A ustar archive of `entries`; a name ending in `/` is a folder.
fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let octal = |field: &mut [u8], value: u64| {
        let digits = format!("{value:0width$o}\0", width = field.len() - 1);
        field.copy_from_slice(digits.as_bytes());
    };
    let mut archive = Vec::new();
    for (name, data) in entries {
        let is_dir = name.ends_with('/');
        let mut header = [0_u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut header[100..108], if is_dir { 0o755 } else { 0o644 });
        octal(&mut header[108..116], 0);
        octal(&mut header[116..124], 0);
        octal(&mut header[124..136], data.len() as u64);
        octal(&mut header[136..148], 1_700_000_000);
        header[148..156].fill(b' ');
        header[156] = if is_dir { b'5' } else { b'0' };
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        let checksum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        header[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
        archive.extend_from_slice(&header);
        archive.extend_from_slice(data);
        archive.resize(archive.len().next_multiple_of(512), 0);
    }
    archive.resize(archive.len() + 1024, 0);
    archive
}

/// The daemon at `DOCKER_HOST` (or the default socket), if one answers;
/// without one the test skips, unless `AZAION_REQUIRE_DOCKER=1`.
async fn docker() -> Option<(String, bollard::Docker)> {
    let host = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned());
    let required = std::env::var("AZAION_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    let answered = match bollard::Docker::connect_with_host(&host) {
        Ok(docker) => tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
            .await
            .ok()
            .and_then(Result::ok),
        Err(_) => None,
    };
    match answered {
        Some(docker) => Some((host, docker)),
        None => {
            assert!(
                !required,
                "AZAION_REQUIRE_DOCKER=1 but no Docker daemon at {host}"
            );
            eprintln!("SKIPPED: no Docker daemon answers at {host}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unlock_packs_loads_and_checks_an_archive_then_exits_0_ready() {
    let Some((host, docker)) = docker().await else {
        return;
    };
    let tag = format!("azaion-test/cli-unlock-{}:1", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("images.tar");
    let fragment = dir.path().join("fragment.bin");
    let archive = dir.path().join("images.enc");
    std::fs::write(&tar, docker_save_archive(&tag)).unwrap();
    std::fs::write(&fragment, DEMO_FRAGMENT).unwrap();
    let stack = tokio::task::spawn_blocking(DevStack::start).await.unwrap();
    run_ok(&[
        "pack-images",
        "--fragment",
        path(&fragment),
        path(&tar),
        path(&archive),
    ]);

    let mut command = loader();
    command
        .args([
            "unlock",
            "--email",
            DEMO_EMAIL,
            "--password-env",
            "AZAION_TEST_PW",
        ])
        .args(["--resource-api-url", &stack.emulator_url])
        .args(["--images-path", path(&archive), "--images", &tag])
        .args(["--model-cache-dir", path(&dir.path().join("cache"))])
        .args(["--docker-host", &host])
        .env("AZAION_TEST_PW", DEMO_PASSWORD);
    let outcome = tokio::task::spawn_blocking(move || run_command(command))
        .await
        .unwrap();

    let present = docker.inspect_image(&tag).await.is_ok();
    let _ = docker
        .remove_image(
            &tag,
            Some(
                bollard::query_parameters::RemoveImageOptionsBuilder::default()
                    .force(true)
                    .build(),
            ),
            None,
        )
        .await;
    assert!(outcome.success(), "{outcome:?}");
    assert_eq!(outcome.stdout, "ready\n");
    assert!(
        outcome.stderr.contains("unlock: done"),
        "{}",
        outcome.stderr
    );
    assert!(present, "{tag} is not in the runtime after the unlock");
    drop(stack);
}
