//! PROTOCOL §5.3 through the real HTTP stack with fakes behind the ports:
//! each attack is performed, and each test checks that it was refused before
//! any port was called and that nothing was left behind.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use azaion_loader::adapters::fakes::FakeRoute;
use serde_json::json;

use crate::support::{FOLDER, TestApp, files_under, pattern};

/// Every route, with a body each accepts.
fn routes() -> Vec<(&'static str, &'static str, Option<serde_json::Value>)> {
    let creds = json!({"email": crate::support::EMAIL, "password": crate::support::PASSWORD});
    vec![
        ("GET", "/health", None),
        ("GET", "/status", None),
        ("GET", "/", None),
        ("GET", "/cache", None),
        ("GET", "/metrics", None),
        ("GET", "/openapi.json", None),
        ("GET", "/unlock/status", None),
        ("POST", "/login", Some(creds.clone())),
        (
            "POST",
            "/load/model.bin",
            Some(json!({"filename": "model.bin", "folder": FOLDER})),
        ),
        ("POST", "/unlock", Some(creds)),
        // Issue 13's routes, under the same rules.
        ("GET", "/ready", None),
        ("GET", "/transfers", None),
        (
            "POST",
            "/prefetch/model.bin",
            Some(json!({"folder": FOLDER})),
        ),
        ("DELETE", "/cache/models/model.bin", None),
        ("POST", "/cache/prune", Some(json!({"max_bytes": 0}))),
        ("POST", "/cache/verify", None),
    ]
}

async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = app.client.request(method.parse().unwrap(), app.url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.expect("request")
}

fn evil_form(app: &TestApp) -> reqwest::RequestBuilder {
    let form = reqwest::multipart::Form::new().text("folder", FOLDER).part(
        "data",
        reqwest::multipart::Part::bytes(b"planted weights".to_vec()).file_name("evil.bin"),
    );
    app.client.post(app.url("/upload/evil.bin")).multipart(form)
}

/// Nothing reached a port beyond the one login of the setup.
fn assert_no_upstream_calls(app: &TestApp) {
    assert_eq!(app.api.calls(FakeRoute::Login), 1, "login calls");
    assert_eq!(
        app.api.calls(FakeRoute::GetResource),
        1,
        "only cdn.yaml at login"
    );
    assert_eq!(app.api.calls(FakeRoute::PutResource), 0);
    assert_eq!(app.api.calls(FakeRoute::KeyFragment), 0);
    assert!(
        app.store.gets().is_empty(),
        "CDN reads: {:?}",
        app.store.gets()
    );
    assert_eq!(app.store.puts(), 0);
    assert_eq!(app.runtime.loads(), 0);
    assert!(app.store.object(FOLDER, "evil.bin.big").is_none());
    assert!(app.api.file(Some(FOLDER), "evil.bin.small").is_none());
}

async fn assert_session_untouched(app: &TestApp) {
    let status = TestApp::json(app.get("/status").await).await;
    assert_eq!(status["authenticated"], true, "{status}");
    assert_eq!(app.load_bytes("model.bin", FOLDER).await, pattern(5000, 3));
}

#[tokio::test]
async fn dns_rebinding_is_refused_on_every_route_before_any_port_is_called() {
    let app = TestApp::logged_in().await;
    app.seed(FOLDER, "model.bin", &pattern(5000, 3));
    for host in [
        "attacker.example:8080",
        "127.0.0.1.evil.example",
        "localhost.evil.example:8080",
    ] {
        for (method, path, body) in routes() {
            let r = send(&app, method, path, body, &[("host", host)]).await;
            assert_eq!(r.status(), 403, "{method} {path} with Host {host}");
            let detail = TestApp::json(r).await["detail"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(detail.contains("Host refused"), "{detail}");
        }
        let r = evil_form(&app).header("host", host).send().await.unwrap();
        assert_eq!(r.status(), 403, "upload with Host {host}");
    }
    assert_no_upstream_calls(&app);
    assert_session_untouched(&app).await;
}

#[tokio::test]
async fn the_loopback_names_pass_with_any_port() {
    let app = TestApp::logged_in().await;
    for host in ["localhost", "localhost:1", "127.0.0.1:65535", "[::1]:8080"] {
        let r = send(&app, "GET", "/status", None, &[("host", host)]).await;
        assert_eq!(r.status(), 200, "{host}");
    }
}

#[tokio::test]
async fn a_cross_site_form_post_plants_nothing() {
    let app = TestApp::logged_in().await;
    app.seed(FOLDER, "model.bin", &pattern(5000, 3));
    for headers in [
        vec![("origin", "https://evil.example")],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "cross-site")],
        vec![
            ("origin", "http://127.0.0.1"),
            ("sec-fetch-site", "same-site"),
        ],
    ] {
        let mut request = evil_form(&app);
        for (k, v) in &headers {
            request = request.header(*k, *v);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 403, "{headers:?}");
        assert!(
            TestApp::json(r).await["detail"]
                .as_str()
                .unwrap()
                .contains("cross-site")
        );
        for (method, path, body) in routes() {
            let r = send(&app, method, path, body, &headers).await;
            assert_eq!(r.status(), 403, "{method} {path} {headers:?}");
        }
    }
    assert_no_upstream_calls(&app);
    assert_session_untouched(&app).await;
}

#[tokio::test]
async fn a_same_origin_page_request_passes() {
    let app = TestApp::logged_in().await;
    let origin = app.base.clone();
    let r = send(
        &app,
        "GET",
        "/status",
        None,
        &[("origin", &origin), ("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = send(&app, "GET", "/", None, &[("sec-fetch-site", "none")]).await;
    assert_eq!(r.status(), 200);
}

async fn app_with_token(token: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.keep().join("loader.token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    TestApp::spawn_with(|c| c.limits.token_file = Some(path)).await
}

#[tokio::test]
async fn a_stray_process_without_the_token_gets_nothing() {
    let token = "c2VjcmV0LWNsaWVudC10b2tlbg";
    let app = app_with_token(token).await;
    let creds = json!({"email": crate::support::EMAIL, "password": crate::support::PASSWORD});
    for auth in [
        None,
        Some("Bearer wrong-token".to_owned()),
        Some(format!("Bearer {token}x")),
        Some(format!("Basic {token}")),
        Some(token.to_owned()),
    ] {
        for (method, path, body) in routes() {
            if path == "/health" || (path == "/" && method == "GET") {
                continue;
            }
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            let r = send(&app, method, path, body, &headers).await;
            assert_eq!(r.status(), 401, "{method} {path} with {auth:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
            let detail = TestApp::json(r).await["detail"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(!detail.contains(token), "the token leaked: {detail}");
        }
    }
    assert_eq!(app.api.calls(FakeRoute::Login), 0);
    // Liveness and the page shell stay open; with the token everything works.
    assert_eq!(app.get("/health").await.status(), 200);
    assert_eq!(app.get("/").await.status(), 200);
    let bearer = format!("Bearer {token}");
    let r = send(
        &app,
        "POST",
        "/login",
        Some(creds),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = send(&app, "GET", "/status", None, &[("authorization", &bearer)]).await;
    assert_eq!(TestApp::json(r).await["authenticated"], true);
}

#[tokio::test]
async fn a_token_file_readable_by_others_is_refused_when_the_app_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loader.token");
    std::fs::write(&path, "token").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut config = azaion_loader::startup::config::Config::defaults();
    config.limits.token_file = Some(path);
    let err = azaion_loader::startup::caller_policy(&config).unwrap_err();
    assert!(
        err.to_string()
            .contains("readable or writable by other users"),
        "{err}"
    );
}

/// Nothing was left in the test folder: no spool, no cache entry.
fn assert_no_files(app: &TestApp) {
    let left = files_under(app.dir.path());
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A multipart body whose data comes first: it would be spooled.
fn data_first(boundary: &str, data: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"data\"; filename=\"x\"\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(
        format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"folder\"\r\n\r\n{FOLDER}\r\n--{boundary}--\r\n").as_bytes(),
    );
    body
}

async fn post_raw(
    app: &TestApp,
    path: &str,
    boundary: &str,
    body: reqwest::Body,
) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn an_upload_before_login_is_refused_before_its_body_is_read() {
    let app = TestApp::spawn().await;
    let r = app
        .raw_post(
            "/upload/early.bin",
            &[("content-type", "multipart/form-data; boundary=B")],
            data_first("B", &pattern(64 << 20, 1)),
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    // Answered while most of the body was still unsent: the loader read
    // none of it (an unnamed spool would not show among the files below).
    assert!(
        r.sent_at_answer < 32 << 20,
        "answered after {} MiB of 64 were sent",
        r.sent_at_answer >> 20
    );
    assert_eq!(app.store.puts(), 0);
    assert_no_files(&app);
}

#[tokio::test]
async fn an_upload_over_the_size_limit_is_refused_declared_or_streamed_and_leaves_nothing() {
    let app = TestApp::spawn_with(|c| c.limits.max_upload_bytes = 1 << 20).await;
    app.login().await;
    // Declared: refused before a byte is read.
    let r = app
        .raw_post(
            "/upload/big.bin",
            &[("content-type", "multipart/form-data; boundary=B")],
            data_first("B", &pattern(2 << 20, 2)),
        )
        .await;
    assert_eq!(r.status, 413, "{}", r.body);
    // Streamed without a length, folder first and data first.
    for folder_first in [true, false] {
        let body = if folder_first {
            let mut b = format!("--B\r\nContent-Disposition: form-data; name=\"folder\"\r\n\r\n{FOLDER}\r\n--B\r\nContent-Disposition: form-data; name=\"data\"; filename=\"x\"\r\n\r\n").into_bytes();
            b.extend_from_slice(&pattern(2 << 20, 3));
            b.extend_from_slice(b"\r\n--B--\r\n");
            b
        } else {
            data_first("B", &pattern(2 << 20, 3))
        };
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
        let r = post_raw(
            &app,
            "/upload/big.bin",
            "B",
            reqwest::Body::wrap_stream(futures::stream::iter(chunks)),
        )
        .await;
        assert_eq!(r.status(), 413, "folder first: {folder_first}");
        let detail = TestApp::json(r).await["detail"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(detail.contains("LOADER_MAX_UPLOAD_BYTES"), "{detail}");
    }
    assert!(app.store.object(FOLDER, "big.bin.big").is_none());
    assert!(app.api.file(Some(FOLDER), "big.bin.small").is_none());
    assert!(!app.cache.contains(FOLDER, "big.bin"));
    assert_no_files(&app);
    // An upload within the limit still works.
    let r = app.upload("small.bin", FOLDER, pattern(1000, 4)).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_body_without_a_boundary_is_answered_after_64_kib() {
    let app = TestApp::logged_in().await;
    let boundary_x = [("content-type", "multipart/form-data; boundary=X")];
    let r = app
        .raw_post("/upload/flood.bin", &boundary_x, vec![b'A'; 1 << 20])
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("no multipart boundary"), "{}", r.body);
    // An endless part header likewise.
    let mut body = b"--X\r\nContent-Disposition: form-data; name=\"data\"\r\nX-Pad: ".to_vec();
    body.extend(std::iter::repeat_n(b'a', 1 << 20));
    let r = app.raw_post("/upload/flood.bin", &boundary_x, body).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("part header"), "{}", r.body);
    assert_eq!(app.store.puts(), 0);
}

#[tokio::test]
async fn an_upload_that_would_cross_the_free_space_floor_gets_507_and_leaves_nothing() {
    let app = TestApp::spawn_with(|c| c.limits.min_free_bytes = u64::MAX / 4).await;
    app.login().await;
    // Declared length: refused before the body.
    let r = app
        .raw_post(
            "/upload/full.bin",
            &[("content-type", "multipart/form-data; boundary=B")],
            data_first("B", &pattern(100_000, 5)),
        )
        .await;
    assert_eq!(r.status, 507, "{}", r.body);
    // No length, data first: the spool refuses its first write.
    let body = data_first("B", &pattern(100_000, 5));
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    let r = post_raw(
        &app,
        "/upload/full.bin",
        "B",
        reqwest::Body::wrap_stream(futures::stream::iter(chunks)),
    )
    .await;
    assert_eq!(r.status(), 507);
    assert!(
        TestApp::json(r).await["detail"]
            .as_str()
            .unwrap()
            .contains("MODEL_CACHE_MIN_FREE_BYTES")
    );
    assert_eq!(app.store.puts(), 0);
    assert_no_files(&app);
}

#[tokio::test]
async fn a_transfer_storm_waits_for_a_slot_then_gets_503_with_retry_after() {
    let app = TestApp::spawn_with(|c| c.limits.max_transfers = 1).await;
    app.login().await;
    // Larger than the socket buffers can take, so the download stays in progress.
    app.seed(FOLDER, "held.bin", &pattern(48 << 20, 6));
    app.seed(FOLDER, "next.bin", &pattern(5000, 7));
    app.seed(FOLDER, "cached.bin", &pattern(5000, 8));
    assert_eq!(app.load("cached.bin", FOLDER).await.status(), 200);
    // One CDN download held open: the client reads its head and waits.
    let held = app.load("held.bin", FOLDER).await;
    assert_eq!(held.status(), 200);
    let started = std::time::Instant::now();
    let r = app.load("next.bin", FOLDER).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "refused without waiting"
    );
    assert!(
        TestApp::json(r).await["detail"]
            .as_str()
            .unwrap()
            .contains("LOADER_MAX_TRANSFERS")
    );
    // An upload is a transfer too; a cache hit is not.
    let r = app.upload("up.bin", FOLDER, pattern(1000, 9)).await;
    assert_eq!(r.status(), 503);
    assert!(app.store.object(FOLDER, "up.bin.big").is_none());
    assert_eq!(app.load("cached.bin", FOLDER).await.status(), 200);
    // The held download ends: its slot is free again.
    assert_eq!(held.bytes().await.unwrap().len(), 48 << 20);
    assert_eq!(app.load_bytes("next.bin", FOLDER).await, pattern(5000, 7));
}

#[tokio::test]
async fn a_slow_body_is_cut_off_after_30_s_and_stores_nothing() {
    let app = TestApp::logged_in().await;
    let head = format!("--B\r\nContent-Disposition: form-data; name=\"folder\"\r\n\r\n{FOLDER}\r\n--B\r\nContent-Disposition: form-data; name=\"data\"; filename=\"x\"\r\n\r\n").into_bytes();
    let stalled =
        futures::stream::iter(vec![Ok::<_, std::io::Error>(head), Ok(pattern(100_000, 1))])
            .chain(futures::stream::pending());
    let started = std::time::Instant::now();
    let r = post_raw(
        &app,
        "/upload/slow.bin",
        "B",
        reqwest::Body::wrap_stream(stalled),
    )
    .await;
    assert_eq!(r.status(), 408);
    assert!(started.elapsed() >= Duration::from_secs(29));
    assert!(app.store.object(FOLDER, "slow.bin.big").is_none());
    assert!(app.api.file(Some(FOLDER), "slow.bin.small").is_none());
}

use futures::StreamExt;

#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_off_after_60_s_and_frees_its_slot() {
    let app = TestApp::spawn_with(|c| c.limits.max_transfers = 1).await;
    app.login().await;
    app.seed(FOLDER, "stuck.bin", &pattern(48 << 20, 1));
    app.seed(FOLDER, "after.bin", &pattern(5000, 2));
    // Reads the head of the answer, then nothing. Its own client has no
    // overall timeout, so only the loader can cut this download short.
    let patient = reqwest::Client::new();
    let stuck = patient
        .post(app.url("/load/stuck.bin"))
        .json(&json!({"filename": "stuck.bin", "folder": FOLDER}))
        .send()
        .await
        .unwrap();
    assert_eq!(stuck.status(), 200);
    tokio::time::sleep(Duration::from_secs(65)).await;
    // The loader gave the connection up, and with it the only transfer slot.
    let r = app.load("after.bin", FOLDER).await;
    assert_eq!(r.status(), 200, "the stuck reader still holds the slot");
    assert!(
        stuck.bytes().await.is_err(),
        "the stuck download was not cut off"
    );
}

#[tokio::test]
async fn connections_over_the_cap_wait_until_one_ends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_with(|c| c.limits.max_connections = 1).await;
    app.login().await;
    app.seed(FOLDER, "long.bin", &pattern(48 << 20, 3));
    let held = app.load("long.bin", FOLDER).await;
    assert_eq!(held.status(), 200);
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut second = tokio::net::TcpStream::connect(&addr).await.unwrap();
    second
        .write_all(
            format!("GET /health HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a second connection was served past the cap"
    );
    drop(held);
    let n = tokio::time::timeout(Duration::from_secs(10), second.read(&mut buf))
        .await
        .expect("served once the first connection ended")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}
