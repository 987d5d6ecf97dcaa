//! Issue 13: `GET /ready` is 200 only when a model can be served now, and
//! 503 with what is missing otherwise; stored credentials log in by
//! themselves, retried until they work.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{EMAIL, PASSWORD, TestApp};
use azaion_loader::adapters::fakes::{FakeRoute, fake_archive};
use azaion_loader::domain::cipher::encrypt;
use azaion_loader::domain::keys::AesKey;

async fn ready(app: &TestApp) -> (u16, Value) {
    let r = app.get("/ready").await;
    let status = r.status().as_u16();
    (status, TestApp::json(r).await)
}

/// The checks `/ready` names as missing.
fn missing_checks(body: &Value) -> Vec<String> {
    body["missing"]
        .as_array()
        .expect("a missing list")
        .iter()
        .map(|m| m["check"].as_str().expect("a check name").to_owned())
        .collect()
}

/// Polls `/ready` until it answers `status`, for up to 10 s.
async fn wait_ready(app: &TestApp, status: u16) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (now, body) = ready(app).await;
        if now == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready stayed {now}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn ready_is_503_before_login_and_200_after() {
    let app = TestApp::spawn().await;
    let (status, body) = ready(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(missing_checks(&body), ["login"]);
    let detail = body["missing"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("POST /login"), "{detail}");
    // Liveness is another matter: the process answers.
    assert_eq!(app.get("/health").await.status(), 200);

    assert_eq!(app.login().await.status(), 200);
    let (status, body) = ready(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"ready": true, "missing": []}));
}

#[tokio::test]
async fn ready_is_503_when_the_cache_cannot_be_written() {
    let app = TestApp::spawn().await;
    app.login().await;
    app.cache.set_fail_writes(true);
    let (status, body) = ready(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(missing_checks(&body), ["cache"]);
    app.cache.set_fail_writes(false);
    assert_eq!(ready(&app).await.0, 200);
}

#[tokio::test]
async fn ready_is_503_when_the_free_space_floor_is_crossed() {
    // A floor above the disk's free space: the real cache folder is crossed.
    let free = azaion_loader::adapters::disk::free_bytes(std::env::temp_dir().as_path()).unwrap();
    let app =
        TestApp::spawn_with_fs_cache_and(|c| c.limits.min_free_bytes = free + (1 << 40)).await;
    app.login().await;
    let (status, body) = ready(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(missing_checks(&body), ["cache"]);
    let detail = body["missing"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("MODEL_CACHE_MIN_FREE_BYTES"), "{detail}");

    // The same folder with a floor below the free space is ready.
    let app = TestApp::spawn_with_fs_cache_and(|c| c.limits.min_free_bytes = 1 << 20).await;
    app.login().await;
    assert_eq!(ready(&app).await.0, 200);
}

#[tokio::test]
async fn with_images_configured_ready_waits_for_the_unlock() {
    const IMAGE: &str = "azaion/detector:1.0";
    const FRAGMENT: &[u8] = b"fragment-ready";
    let app = TestApp::spawn_with(|c| c.expected_images = vec![IMAGE.to_owned()]).await;
    app.api.set_key_fragment(FRAGMENT);
    let plain = fake_archive(&[IMAGE], 100_000);
    let archive = encrypt(&AesKey::from_archive_fragment(FRAGMENT), [4; 16], &plain);
    std::fs::create_dir_all(app.config.images_path.parent().unwrap()).unwrap();
    std::fs::write(&app.config.images_path, archive).unwrap();
    app.login().await;

    let (status, body) = ready(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(missing_checks(&body), ["unlock"]);
    assert!(
        body["missing"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("idle: POST /unlock"),
        "{body}"
    );
    app.runtime.hold_loads();
    app.post_json("/unlock", json!({"email": EMAIL, "password": PASSWORD}))
        .await;
    app.wait_unlock(&["decrypting", "loading_images"]).await;
    assert_eq!(missing_checks(&ready(&app).await.1), ["unlock"]);
    app.runtime.release_loads();
    assert_eq!(app.wait_unlock(&["ready", "error"]).await["state"], "ready");
    assert_eq!(ready(&app).await.0, 200);
}

fn credentials_file(dir: &std::path::Path, email: &str, password: &str) -> std::path::PathBuf {
    let path = dir.join("login.credentials");
    std::fs::write(&path, format!("email={email}\npassword={password}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[tokio::test]
async fn stored_credentials_log_in_by_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let file = credentials_file(dir.path(), EMAIL, PASSWORD);
    let app = TestApp::spawn_with(|c| c.credentials_file = Some(file)).await;
    wait_ready(&app, 200).await;
    assert_eq!(app.api.calls(FakeRoute::Login), 1);
    assert_eq!(
        TestApp::json(app.get("/status").await).await["authenticated"],
        true
    );
}

#[tokio::test]
async fn a_failing_stored_login_is_retried_and_ready_shows_how_it_goes() {
    // The account does not exist yet: each attempt is refused.
    let dir = tempfile::tempdir().unwrap();
    let file = credentials_file(dir.path(), "late@azaion.com", "late-password");
    let app = TestApp::spawn_with(|c| c.credentials_file = Some(file)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = ready(&app).await;
        assert_eq!(status, 503, "{body}");
        let detail = body["missing"][0]["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if detail.contains("attempt(s) failed") && app.api.calls(FakeRoute::Login) >= 2 {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let detail = body["missing"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("refused the credentials"), "{detail}");
    assert!(!detail.contains("late-password"), "{detail}");

    app.api.add_user("late@azaion.com", "late-password");
    wait_ready(&app, 200).await;
    let attempts = app.api.calls(FakeRoute::Login);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.api.calls(FakeRoute::Login),
        attempts,
        "the login went on after it worked"
    );
}
