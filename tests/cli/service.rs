//! `serve` as a service (issue 13): systemd's notify protocol with a fake
//! `NOTIFY_SOCKET`, exit 143 after SIGTERM, and the stored login that brings
//! it back to ready after a restart without an operator.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use azaion_loader::startup::dev::{DEMO_EMAIL, DEMO_PASSWORD};

use crate::support::{DevStack, free_port, http_get, loader, path};

fn credentials_file(dir: &Path, mode: u32) -> std::path::PathBuf {
    let file = dir.join("login.credentials");
    std::fs::write(
        &file,
        format!("email={DEMO_EMAIL}\npassword={DEMO_PASSWORD}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    file
}

/// `serve` on `addr` against the Resource API at `api`, cache under `dir`.
fn serve(addr: &str, api: &str, dir: &Path, env: &[(&str, &std::ffi::OsStr)]) -> Child {
    let mut command = loader();
    command
        .args(["serve", "--listen", addr])
        .env("RESOURCE_API_URL", api)
        .env("MODEL_CACHE_DIR", dir.join("cache"))
        .env("IMAGES_PATH", dir.join("images.enc"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    command.spawn().expect("serve starts")
}

/// Polls `GET /ready` until it answers 200; its body.
fn wait_ready(addr: &str, child: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(body) = http_get(addr, "/ready") {
            return body;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "serve exited before it was ready"
        );
        assert!(Instant::now() < deadline, "not ready within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sigterm(child: &Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn serve_tells_systemd_ready_pings_the_watchdog_says_stopping_and_exits_143() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = serve(
        &addr,
        "http://127.0.0.1:9",
        dir.path(),
        &[
            ("NOTIFY_SOCKET", socket_path.as_os_str()),
            // 200 ms: a ping every 100 ms.
            ("WATCHDOG_USEC", "200000".as_ref()),
        ],
    );
    let mut buf = [0u8; 512];
    let mut receive = || {
        let n = socket.recv(&mut buf).expect("a notification within 30 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // A watchdog ping or two may come first (every 100 ms): READY=1 is sent
    // right after the listener is bound, so within a few.
    let first = (0..20)
        .map(|_| receive())
        .find(|m| m != "WATCHDOG=1")
        .expect("READY=1 among the first 20 notifications");
    assert!(first.starts_with("READY=1\n"), "{first:?}");
    assert!(
        first.contains(&format!("STATUS=listening on http://{addr}")),
        "{first:?}"
    );
    // Ready means bound: the listener answers at once.
    assert!(http_get(&addr, "/health").is_some());
    let pings = (0..3).filter(|_| receive() == "WATCHDOG=1").count();
    assert_eq!(pings, 3, "the watchdog is pinged while it serves");

    sigterm(&child);
    let stopping = loop {
        let message = receive();
        if message != "WATCHDOG=1" {
            break message;
        }
    };
    assert!(stopping.starts_with("STOPPING=1"), "{stopping:?}");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "128 + SIGTERM: {status:?}");
}

#[test]
fn without_notify_socket_serve_runs_and_sigint_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = serve(&addr, "http://127.0.0.1:9", dir.path(), &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&addr, "/health").is_none() {
        assert!(Instant::now() < deadline, "no /health in 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130));
}

#[test]
fn stored_credentials_bring_serve_back_to_ready_after_a_restart_without_an_operator() {
    let stack = DevStack::start();
    let dir = tempfile::tempdir().unwrap();
    let file = credentials_file(dir.path(), 0o600);
    for run in ["first start", "after a crash (kill -9)"] {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut child = serve(
            &addr,
            &stack.emulator_url,
            dir.path(),
            &[("LOADER_CREDENTIALS_FILE", file.as_os_str())],
        );
        let body = wait_ready(&addr, &mut child);
        assert_eq!(body, r#"{"ready":true,"missing":[]}"#, "{run}");
        let status = http_get(&addr, "/status").unwrap();
        assert!(
            status.contains(r#""authenticated":true"#),
            "{run}: {status}"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[test]
fn serve_refuses_a_credentials_file_that_others_can_read_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = credentials_file(dir.path(), 0o644);
    let mut command = loader();
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .env("LOADER_CREDENTIALS_FILE", &file)
        .env("MODEL_CACHE_DIR", dir.path().join("cache"));
    let outcome = crate::support::run_command(command);
    assert_eq!(outcome.code, Some(2), "{outcome:?}");
    assert!(
        outcome
            .stderr
            .contains("readable or writable by other users"),
        "{outcome:?}"
    );
    assert!(outcome.stderr.contains(path(&file)), "{outcome:?}");
    assert!(!outcome.stderr.contains(DEMO_PASSWORD), "{outcome:?}");
    assert!(
        !dir.path().join("cache").exists(),
        "it built things before refusing"
    );
}

#[test]
fn status_finds_the_loader_through_serves_config_file_and_ready_says_what_is_missing() {
    let stack = DevStack::start();
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("loader.toml");
    std::fs::write(&config, format!("listen = \"{addr}\"\n")).unwrap();
    let mut command = loader();
    command
        .args(["serve", "--config", path(&config)])
        .env("RESOURCE_API_URL", &stack.emulator_url)
        .env("MODEL_CACHE_DIR", dir.path().join("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&addr, "/health").is_none() {
        assert!(Instant::now() < deadline, "no /health in 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The same file tells `status` where the loader listens (no --url, no LOADER_LISTEN).
    let status = crate::support::run(&["status", "--config", path(&config)]);
    assert_eq!(status.code, Some(0), "{status:?}");
    assert!(
        status.stdout.contains(&format!("http://{addr}")),
        "{status:?}"
    );
    assert!(
        status
            .stdout
            .contains("ready          no: login (not logged in"),
        "{status:?}"
    );
    // --ready: alive is not enough.
    let ready = crate::support::run(&["status", "--config", path(&config), "--ready"]);
    assert_eq!(ready.code, Some(1), "{ready:?}");
    assert!(ready.stderr.contains("is not ready: login"), "{ready:?}");
    child.kill().unwrap();
    child.wait().unwrap();
}
