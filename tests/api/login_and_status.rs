//! F1 and F6: login, health, status.

use serde_json::json;

use crate::support::{EMAIL, TestApp, cdn_config};
use azaion_loader::adapters::fakes::FakeRoute;
use azaion_loader::ports::ApiError;

#[tokio::test]
async fn health_answers_healthy() {
    let app = TestApp::spawn().await;
    let r = app.get("/health").await;
    assert_eq!(r.status(), 200);
    assert_eq!(TestApp::json(r).await, json!({"status": "healthy"}));
}

#[tokio::test]
async fn status_reports_not_authenticated_before_login_and_the_absolute_cache_dir() {
    let app = TestApp::spawn().await;
    let v = TestApp::json(app.get("/status").await).await;
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["authenticated"], false);
    let dir = v["modelCacheDir"].as_str().unwrap();
    assert!(std::path::Path::new(dir).is_absolute());
    assert_eq!(dir, app.config.model_cache_dir.display().to_string());
    // Issue 15: which AES runs on this CPU.
    let backend = azaion_loader::domain::cipher::CryptoBackend::detect();
    assert_eq!(v["cryptoBackend"], backend.as_str());
}

#[tokio::test]
async fn login_succeeds_fetches_cdn_yaml_and_status_turns_authenticated() {
    let app = TestApp::spawn().await;
    let r = app.login().await;
    assert_eq!(r.status(), 200);
    assert_eq!(TestApp::json(r).await, json!({"status": "ok"}));
    assert_eq!(
        TestApp::json(app.get("/status").await).await["authenticated"],
        true
    );
    // The CDN was configured from the decrypted cdn.yaml.
    assert_eq!(app.connector.configs_seen(), vec![cdn_config()]);
    // The device got bound to this hardware fingerprint.
    let bound = app.api.bound_hardware(EMAIL).unwrap();
    assert!(
        bound.starts_with(
            "CPU: Fake CPU. GPU: Fake GPU. Memory: 8000000. DriveSerial: FAKE-SERIAL-1"
        )
    );
}

#[tokio::test]
async fn login_with_a_wrong_password_answers_401_and_stays_unauthenticated() {
    let app = TestApp::spawn().await;
    let r = app
        .post_json("/login", json!({"email": EMAIL, "password": "wrong"}))
        .await;
    assert_eq!(r.status(), 401);
    let v = TestApp::json(r).await;
    assert!(v["detail"].as_str().unwrap().contains("refused"));
    assert!(
        !v.to_string().contains("wrong"),
        "the body must not echo the password"
    );
    assert_eq!(
        TestApp::json(app.get("/status").await).await["authenticated"],
        false
    );
}

#[tokio::test]
async fn login_answers_401_when_the_api_is_unreachable() {
    let app = TestApp::spawn().await;
    app.api.fail_next(
        FakeRoute::Login,
        1,
        ApiError::Unavailable("connection refused".into()),
    );
    assert_eq!(app.login().await.status(), 401);
}

#[tokio::test]
async fn login_answers_401_when_cdn_yaml_does_not_parse_or_is_missing() {
    let app = TestApp::spawn().await;
    // Stored under another user's key: the fake re-encrypts for us, so plant bytes that are not YAML.
    app.api
        .put_file(None, "cdn.yaml", b"host: [unterminated".to_vec());
    let r = app.login().await;
    assert_eq!(r.status(), 401);
    assert!(
        TestApp::json(r).await["detail"]
            .as_str()
            .unwrap()
            .contains("cdn.yaml")
    );
    app.api.remove_file(None, "cdn.yaml");
    assert_eq!(app.login().await.status(), 401);
    assert_eq!(
        TestApp::json(app.get("/status").await).await["authenticated"],
        false
    );
}

#[tokio::test]
async fn login_rejects_a_malformed_body_with_a_detail() {
    let app = TestApp::spawn().await;
    let r = app.post_json("/login", json!({"email": EMAIL})).await;
    assert_eq!(r.status(), 422);
    assert!(TestApp::json(r).await["detail"].is_string());
    let r = app
        .client
        .post(app.url("/login"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(TestApp::json(r).await["detail"].is_string());
    let r = app
        .client
        .post(app.url("/login"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
}

#[tokio::test]
async fn unknown_routes_answer_404_with_a_detail() {
    let app = TestApp::spawn().await;
    let r = app.get("/nope").await;
    assert_eq!(r.status(), 404);
    assert!(TestApp::json(r).await["detail"].is_string());
}

#[tokio::test]
async fn a_client_that_never_finishes_its_header_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut buf),
    )
    .await;
    assert!(
        read.is_ok(),
        "the server kept a slow client's connection open"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(!text.contains("healthy"), "{text}");
}

#[tokio::test]
async fn an_oversized_request_header_is_refused() {
    let app = TestApp::spawn().await;
    let r = app
        .client
        .get(app.url("/health"))
        .header("x-big", "a".repeat(100 * 1024))
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => assert!(
            e.is_request() || e.is_connect() || e.to_string().contains("connection"),
            "{e}"
        ),
    }
}

#[tokio::test]
async fn login_answers_401_when_the_api_token_is_not_a_jwt() {
    let app = TestApp::spawn().await;
    app.api.issue_malformed_tokens(true);
    let r = app.login().await;
    assert_eq!(r.status(), 401);
    assert!(
        TestApp::json(r).await["detail"]
            .as_str()
            .unwrap()
            .contains("JWT")
    );
    assert_eq!(
        TestApp::json(app.get("/status").await).await["authenticated"],
        false
    );
}

#[tokio::test]
async fn login_answers_401_when_cdn_yaml_does_not_decrypt() {
    let app = TestApp::spawn().await;
    app.api.corrupt_next_resources(1);
    let r = app.login().await;
    assert_eq!(r.status(), 401);
    assert!(
        TestApp::json(r).await["detail"]
            .as_str()
            .unwrap()
            .contains("could not be decrypted")
    );
}
