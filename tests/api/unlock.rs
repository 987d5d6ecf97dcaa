//! F4/F5: unlock of the image archive and its status.

use serde_json::json;

use crate::support::{EMAIL, PASSWORD, TestApp};
use azaion_loader::adapters::fakes::{FakeRoute, fake_archive};
use azaion_loader::domain::cipher::encrypt;
use azaion_loader::domain::keys::AesKey;
use azaion_loader::ports::{ApiError, RuntimeError};

const IMAGE: &str = "azaion/detector:1.0";
const FRAGMENT: &[u8] = b"fragment-0001";

fn creds() -> serde_json::Value {
    json!({"email": EMAIL, "password": PASSWORD})
}

/// Writes an archive encrypted under the fragment's key; returns its size.
fn write_archive(app: &TestApp, fragment: &[u8], refs: &[&str], min_len: usize) -> usize {
    let plain = fake_archive(refs, min_len);
    let encrypted = encrypt(&AesKey::from_archive_fragment(fragment), [4; 16], &plain);
    std::fs::create_dir_all(app.config.images_path.parent().unwrap()).unwrap();
    std::fs::write(&app.config.images_path, &encrypted).unwrap();
    encrypted.len()
}

async fn app_with_images(images: &[&str]) -> TestApp {
    let list: Vec<String> = images.iter().map(|s| s.to_string()).collect();
    let app = TestApp::spawn_with(|c| c.expected_images = list).await;
    app.api.set_key_fragment(FRAGMENT);
    app
}

#[tokio::test]
async fn unlock_status_starts_idle() {
    let app = TestApp::spawn().await;
    let v = TestApp::json(app.get("/unlock/status").await).await;
    assert_eq!(v["state"], "idle");
    assert_eq!(v["error"], serde_json::Value::Null);
    assert_eq!(v["progress"]["bytes_done"], 0);
}

#[tokio::test]
async fn unlock_decrypts_the_archive_into_the_runtime_and_reaches_ready() {
    let app = app_with_images(&[IMAGE]).await;
    let size = write_archive(&app, FRAGMENT, &[IMAGE], 3_000_000);
    let r = app.post_json("/unlock", creds()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(TestApp::json(r).await, json!({"state": "authenticating"}));
    let v = app.wait_unlock(&["ready", "error"]).await;
    assert_eq!(v["state"], "ready", "{v}");
    assert!(app.runtime.has_image(IMAGE));
    assert_eq!(v["progress"]["bytes_done"], size as u64);
    assert_eq!(v["progress"]["bytes_total"], size as u64);
    // Nothing but the archive itself exists beside it: no plaintext tar.
    let beside: Vec<_> = std::fs::read_dir(app.config.images_path.parent().unwrap())
        .unwrap()
        .collect();
    assert_eq!(beside.len(), 1);
}

#[tokio::test]
async fn a_second_unlock_during_a_run_starts_nothing_and_answers_the_current_state() {
    let app = app_with_images(&[IMAGE]).await;
    write_archive(&app, FRAGMENT, &[IMAGE], 100_000);
    app.runtime.hold_loads();
    assert_eq!(
        TestApp::json(app.post_json("/unlock", creds()).await).await["state"],
        "authenticating"
    );
    let running = app.wait_unlock(&["decrypting", "loading_images"]).await;
    let again = TestApp::json(app.post_json("/unlock", creds()).await).await;
    assert_eq!(again["state"], running["state"]);
    app.runtime.release_loads();
    assert_eq!(app.wait_unlock(&["ready", "error"]).await["state"], "ready");
    assert_eq!(app.runtime.loads(), 1);
    assert_eq!(app.api.calls(FakeRoute::Login), 1);
}

#[tokio::test]
async fn two_concurrent_unlocks_start_one_run() {
    let app = std::sync::Arc::new(app_with_images(&[IMAGE]).await);
    write_archive(&app, FRAGMENT, &[IMAGE], 100_000);
    app.runtime.hold_loads();
    let (a, b) = tokio::join!(
        app.post_json("/unlock", creds()),
        app.post_json("/unlock", creds())
    );
    assert_eq!(a.status(), 200);
    assert_eq!(b.status(), 200);
    app.runtime.release_loads();
    assert_eq!(app.wait_unlock(&["ready", "error"]).await["state"], "ready");
    assert_eq!(app.api.calls(FakeRoute::Login), 1);
    assert_eq!(app.runtime.loads(), 1);
}

#[tokio::test]
async fn a_wrong_key_fragment_lands_in_error_and_loads_nothing() {
    let app = app_with_images(&[IMAGE]).await;
    write_archive(&app, b"another fragment", &[IMAGE], 50_000);
    app.post_json("/unlock", creds()).await;
    let v = app.wait_unlock(&["ready", "error"]).await;
    assert_eq!(v["state"], "error");
    assert!(v["error"].as_str().unwrap().len() > 5);
    assert!(!app.runtime.has_image(IMAGE));
}

#[tokio::test]
async fn a_truncated_archive_lands_in_error() {
    let app = app_with_images(&[IMAGE]).await;
    let size = write_archive(&app, FRAGMENT, &[IMAGE], 50_000);
    let bytes = std::fs::read(&app.config.images_path).unwrap();
    std::fs::write(&app.config.images_path, &bytes[..size - 16]).unwrap();
    app.post_json("/unlock", creds()).await;
    let v = app.wait_unlock(&["ready", "error"]).await;
    assert_eq!(v["state"], "error", "{v}");
}

#[tokio::test]
async fn wrong_credentials_land_in_error_with_the_reason() {
    let app = app_with_images(&[IMAGE]).await;
    write_archive(&app, FRAGMENT, &[IMAGE], 1000);
    app.post_json("/unlock", json!({"email": EMAIL, "password": "nope"}))
        .await;
    let v = app.wait_unlock(&["ready", "error"]).await;
    assert_eq!(v["state"], "error");
    assert!(v["error"].as_str().unwrap().contains("login"));
}

#[tokio::test]
async fn an_unreachable_runtime_lands_in_error() {
    let app = app_with_images(&[IMAGE]).await;
    write_archive(&app, FRAGMENT, &[IMAGE], 1000);
    app.runtime.set_unavailable(true);
    app.post_json("/unlock", creds()).await;
    let v = app.wait_unlock(&["ready", "error"]).await;
    assert_eq!(v["state"], "error");
    assert!(v["error"].as_str().unwrap().contains("unreachable"), "{v}");
}

#[tokio::test]
async fn an_unlock_failure_then_a_retry_reaches_ready() {
    let app = app_with_images(&[IMAGE]).await;
    write_archive(&app, FRAGMENT, &[IMAGE], 10_000);
    app.api.fail_next(
        FakeRoute::KeyFragment,
        1,
        ApiError::Upstream { status: 500 },
    );
    app.post_json("/unlock", creds()).await;
    assert_eq!(app.wait_unlock(&["ready", "error"]).await["state"], "error");
    let r = app.post_json("/unlock", creds()).await;
    assert_eq!(TestApp::json(r).await["state"], "authenticating");
    let v = app.wait_unlock(&["ready", "error"]).await;
    assert_eq!(v["state"], "ready");
    assert_eq!(v["error"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_load_that_leaves_an_expected_image_missing_lands_in_error_naming_it() {
    let app = app_with_images(&[IMAGE, "azaion/other:2"]).await;
    write_archive(&app, FRAGMENT, &[IMAGE], 1000);
    app.post_json("/unlock", creds()).await;
    let v = app.wait_unlock(&["ready", "error"]).await;
    assert_eq!(v["state"], "error");
    assert!(v["error"].as_str().unwrap().contains("azaion/other:2"));
}

#[tokio::test]
async fn a_runtime_load_error_lands_in_error() {
    let app = app_with_images(&[IMAGE]).await;
    write_archive(&app, FRAGMENT, &[IMAGE], 1000);
    app.runtime
        .fail_next_load(RuntimeError::LoadFailed("invalid tar header".into()));
    app.post_json("/unlock", creds()).await;
    let v = app.wait_unlock(&["ready", "error"]).await;
    assert!(v["error"].as_str().unwrap().contains("invalid tar header"));
}

#[tokio::test]
async fn images_already_present_skip_the_work_and_reach_ready() {
    let app = app_with_images(&[IMAGE]).await;
    write_archive(&app, FRAGMENT, &[IMAGE], 1000);
    app.runtime.add_image(IMAGE);
    app.post_json("/unlock", creds()).await;
    assert_eq!(app.wait_unlock(&["ready", "error"]).await["state"], "ready");
    assert_eq!(app.api.calls(FakeRoute::Login), 0);
    assert_eq!(app.runtime.loads(), 0);
}

#[tokio::test]
async fn archive_missing_with_images_present_answers_ready() {
    let app = app_with_images(&[IMAGE]).await;
    app.runtime.add_image(IMAGE);
    let r = app.post_json("/unlock", creds()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(TestApp::json(r).await["state"], "ready");
}

#[tokio::test]
async fn archive_missing_with_images_absent_answers_404() {
    let app = app_with_images(&[IMAGE]).await;
    let r = app.post_json("/unlock", creds()).await;
    assert_eq!(r.status(), 404);
    assert!(
        TestApp::json(r).await["detail"]
            .as_str()
            .unwrap()
            .contains("missing")
    );
    assert_eq!(
        TestApp::json(app.get("/unlock/status").await).await["state"],
        "idle"
    );
}

#[tokio::test]
async fn with_no_expected_images_a_missing_archive_answers_404_and_an_existing_one_is_loaded() {
    let app = app_with_images(&[]).await;
    assert_eq!(app.post_json("/unlock", creds()).await.status(), 404);
    write_archive(&app, FRAGMENT, &[IMAGE], 1000);
    app.post_json("/unlock", creds()).await;
    assert_eq!(app.wait_unlock(&["ready", "error"]).await["state"], "ready");
    assert_eq!(app.runtime.loads(), 1);
}

#[tokio::test]
async fn unlock_rejects_a_malformed_body() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.post_json("/unlock", json!({"email": EMAIL}))
            .await
            .status(),
        422
    );
}

#[tokio::test]
async fn a_hung_key_fragment_ends_in_error_past_the_unlock_timeout_and_a_retry_reaches_ready() {
    let app = TestApp::spawn_with(|c| {
        c.expected_images = vec![IMAGE.to_owned()];
        c.limits.unlock_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    app.api.set_key_fragment(FRAGMENT);
    write_archive(&app, FRAGMENT, &[IMAGE], 100_000);
    app.api.stall_next(
        FakeRoute::KeyFragment,
        1,
        std::time::Duration::from_secs(15),
    );
    let started = std::time::Instant::now();
    let r = app.post_json("/unlock", creds()).await;
    assert_eq!(r.status(), 200);
    let v = app.wait_unlock(&["error", "ready"]).await;
    assert_eq!(v["state"], "error", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("UNLOCK_TIMEOUT_SECS"),
        "{v}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the stall was waited out"
    );
    assert_eq!(app.runtime.loads(), 0);
    // The retry is not stalled and reaches ready.
    let r = app.post_json("/unlock", creds()).await;
    assert_eq!(TestApp::json(r).await["state"], "authenticating");
    let v = app.wait_unlock(&["error", "ready"]).await;
    assert_eq!(v["state"], "ready", "{v}");
    assert!(app.runtime.has_image(IMAGE));
}

#[tokio::test]
async fn a_panicking_runtime_ends_the_unlock_in_error_and_a_retry_reaches_ready() {
    let app = app_with_images(&[IMAGE]).await;
    write_archive(&app, FRAGMENT, &[IMAGE], 100_000);
    app.runtime.panic_next_load();
    app.post_json("/unlock", creds()).await;
    let v = app.wait_unlock(&["error", "ready"]).await;
    assert_eq!(v["state"], "error", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("internal error"),
        "{v}"
    );
    app.post_json("/unlock", creds()).await;
    let v = app.wait_unlock(&["error", "ready"]).await;
    assert_eq!(v["state"], "ready", "{v}");
}

#[tokio::test]
async fn the_time_in_a_state_starts_again_at_each_change_of_state() {
    let app = app_with_images(&[IMAGE]).await;
    write_archive(&app, FRAGMENT, &[IMAGE], 100_000);
    // A long idle time before the run.
    app.clock.advance(std::time::Duration::from_secs(100));
    let idle = app.wait_unlock(&["idle"]).await;
    assert_eq!(idle["progress"]["phase_elapsed_ms"], 100_000);
    app.runtime.hold_loads();
    app.post_json("/unlock", creds()).await;
    // The fake clock stands still: a state just entered has been so for 0 ms.
    let running = app.wait_unlock(&["decrypting", "loading_images"]).await;
    assert_eq!(running["progress"]["phase_elapsed_ms"], 0, "{running}");
    app.clock.advance(std::time::Duration::from_secs(5));
    let later = app.wait_unlock(&["decrypting", "loading_images"]).await;
    assert_eq!(later["progress"]["phase_elapsed_ms"], 5_000, "{later}");
    app.runtime.release_loads();
    assert_eq!(app.wait_unlock(&["ready", "error"]).await["state"], "ready");
}
