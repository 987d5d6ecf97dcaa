//! Request hardening: bounded forms, bounded heads, early refusals that still
//! reach the client, and error bodies that never echo what was sent.

use serde_json::json;

use crate::support::{EMAIL, FOLDER, PASSWORD, TestApp, pattern};
use azaion_loader::adapters::fakes::FakeRoute;

const BOUNDARY: &str = "hardeningBoundary";

fn form(parts: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, content) in parts {
        out.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
                .as_bytes(),
        );
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

async fn post_form(app: &TestApp, path: &str, body: Vec<u8>) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn a_form_with_fields_other_than_folder_and_data_answers_400_and_stores_nothing() {
    let app = TestApp::logged_in().await;
    let mut parts: Vec<(&str, Vec<u8>)> = (0..40).map(|_| ("note", b"x".to_vec())).collect();
    parts.push(("folder", FOLDER.as_bytes().to_vec()));
    parts.push(("data", vec![1, 2, 3]));
    let r = post_form(&app, "/upload/many.bin", form(&parts)).await;
    assert_eq!(r.status(), 400);
    assert!(
        TestApp::json(r).await["detail"]
            .as_str()
            .unwrap()
            .contains("only the fields folder and data")
    );
    assert_eq!(app.store.puts(), 0);
    assert_eq!(app.api.calls(FakeRoute::PutResource), 0);
}

#[tokio::test]
async fn an_oversized_folder_or_unknown_field_answers_400() {
    let app = TestApp::logged_in().await;
    for parts in [
        vec![("folder", vec![b'a'; 5_000]), ("data", vec![1, 2, 3])],
        vec![
            ("folder", FOLDER.as_bytes().to_vec()),
            ("comment", vec![b'c'; 5_000]),
            ("data", vec![1, 2, 3]),
        ],
    ] {
        let r = post_form(&app, "/upload/big-field.bin", form(&parts)).await;
        assert_eq!(r.status(), 400);
        assert!(TestApp::json(r).await["detail"].is_string());
    }
    assert_eq!(app.store.puts(), 0);
}

#[tokio::test]
async fn a_form_that_stops_midway_answers_400_and_stores_nothing() {
    let app = TestApp::logged_in().await;
    let mut body = form(&[
        ("folder", FOLDER.as_bytes().to_vec()),
        ("data", vec![7; 50_000]),
    ]);
    body.truncate(body.len() - 30);
    let r = post_form(&app, "/upload/cut.bin", body).await;
    assert_eq!(r.status(), 400);
    assert!(app.store.object(FOLDER, "cut.bin.big").is_none());
    assert!(app.api.file(Some(FOLDER), "cut.bin.small").is_none());
    assert!(app.files_outside_cache().is_empty());
}

#[tokio::test]
async fn an_oversized_request_head_is_refused_before_any_handler() {
    let app = TestApp::spawn().await;
    let r = app
        .client
        .get(app.url("/health"))
        .header("x-padding", "p".repeat(200_000))
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 431),
        // The server may close the connection while the head is still arriving.
        Err(e) => assert!(e.is_request(), "{e}"),
    }
    assert_eq!(app.get("/health").await.status(), 200);
}

#[tokio::test]
async fn early_refusals_of_a_body_still_reach_the_client() {
    let app = TestApp::spawn().await;
    // Refused without reading a byte of the body: unknown route, wrong method,
    // not JSON. The body is read first, so the answer is never lost to a reset.
    for _ in 0..20 {
        let body = vec![b'z'; 60_000];
        let r = app
            .client
            .post(app.url("/no-such-route"))
            .body(body.clone())
            .send()
            .await
            .expect("the 404 arrives");
        assert_eq!(r.status(), 404);
        let r = app
            .client
            .post(app.url("/health"))
            .body(body.clone())
            .send()
            .await
            .expect("the 405 arrives");
        assert_eq!(r.status(), 405);
        let r = app
            .client
            .post(app.url("/login"))
            .header("content-type", "text/plain")
            .body(body)
            .send()
            .await
            .expect("the 415 arrives");
        assert_eq!(r.status(), 415);
    }
}

#[tokio::test]
async fn error_bodies_never_echo_the_request() {
    let app = TestApp::spawn().await;
    let marker = "S3KRIT-marker-5519";
    let cases = [
        json!({"email": EMAIL, "password": marker}),
        json!({"email": EMAIL, "password": 5, "extra": marker}),
        json!({"email": marker}),
        json!([marker]),
        json!(marker),
    ];
    for body in cases {
        for path in ["/login", "/unlock", "/load/a.bin"] {
            let r = app.post_json(path, body.clone()).await;
            let status = r.status();
            let text = r.text().await.unwrap();
            assert!(!text.contains(marker), "{path} {status}: {text}");
            assert!(!text.contains(PASSWORD), "{path} {status}: {text}");
        }
    }
    let r = app
        .client
        .post(app.url("/login"))
        .header("content-type", "application/json")
        .body(format!(
            "{{\"email\": \"{EMAIL}\", \"password\": \"{marker}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(!r.text().await.unwrap().contains(marker));
}

/// A 5xx body is a fixed phrase for its kind: text from a peer (an address,
/// a bucket, a server's message) goes to the log, never to the client.
#[tokio::test]
async fn a_5xx_body_never_carries_upstream_text() {
    use azaion_loader::ports::{ApiError, StoreError};

    const UPSTREAM: &str = "10.9.8.7:9000 said: internal bucket azaion-prod-secret";
    let app = TestApp::logged_in().await;
    app.seed(FOLDER, "m.bin", &pattern(20_000, 3));

    app.api.fail_next(
        FakeRoute::GetResource,
        1,
        ApiError::Unavailable(UPSTREAM.into()),
    );
    let r = app.load("m.bin", FOLDER).await;
    assert_eq!(r.status(), 503);
    let body = TestApp::json(r).await;
    assert_eq!(
        body["detail"],
        "the Resource API is unavailable; try again later"
    );

    app.api.fail_next(
        FakeRoute::GetResource,
        1,
        ApiError::Unexpected(UPSTREAM.into()),
    );
    let r = app.load("m.bin", FOLDER).await;
    assert_eq!(r.status(), 502);
    assert_eq!(
        TestApp::json(r).await["detail"],
        "the Resource API answered with an error"
    );

    app.store
        .fail_next_gets(1, StoreError::Unexpected(UPSTREAM.into()));
    let r = app.load("m.bin", FOLDER).await;
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains("10.9.8.7") && !text.contains("azaion-prod"),
        "{text}"
    );
    assert!(text.contains("the CDN answered with an error"), "{text}");

    // A 4xx still says what was wrong with the request.
    let r = app.load("nothing-here.bin", FOLDER).await;
    assert_eq!(r.status(), 404);
    assert!(
        TestApp::json(r).await["detail"]
            .as_str()
            .unwrap()
            .contains("nothing-here.bin")
    );
}
