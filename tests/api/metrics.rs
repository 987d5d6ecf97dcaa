//! `GET /metrics` (Prometheus text format) counts what the loader did, and
//! every answer carries an `x-request-id`.

use std::time::Duration;

use azaion_loader::adapters::fakes::FakeRoute;
use azaion_loader::ports::{ApiError, StoreError};
use serde_json::json;

use crate::support::{FOLDER, TestApp, pattern};

async fn scrape(app: &TestApp) -> String {
    let r = app.get("/metrics").await;
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    r.text().await.unwrap()
}

/// The value of one series (name with its labels, exactly as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .parse::<f64>()
            .ok()
    })
}

fn assert_sample(text: &str, series: &str, expected: f64) {
    assert_eq!(sample(text, series), Some(expected), "{series} in:\n{text}");
}

async fn load_ok(app: &TestApp, name: &str) -> usize {
    let r = app.load(name, FOLDER).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap().len()
}

#[tokio::test]
async fn metrics_count_a_login_two_loads_and_the_404s() {
    let app = TestApp::spawn().await;
    let plaintext = pattern(20_000, 5);
    let (_, big) = app.seed(FOLDER, "m.bin", &plaintext);
    assert_eq!(app.login().await.status(), 200);
    assert_eq!(load_ok(&app, "m.bin").await, plaintext.len()); // from the CDN
    assert_eq!(load_ok(&app, "m.bin").await, plaintext.len()); // from the cache
    assert_eq!(app.load("nothing.bin", FOLDER).await.status(), 404);
    assert_eq!(app.get("/no/such/route").await.status(), 404);

    let text = scrape(&app).await;
    for (series, expected) in [
        (
            r#"azaion_http_requests_total{route="/login",method="POST",status="200"}"#,
            1.0,
        ),
        (
            r#"azaion_http_requests_total{route="/load/{filename}",method="POST",status="200"}"#,
            2.0,
        ),
        (
            r#"azaion_http_requests_total{route="/load/{filename}",method="POST",status="404"}"#,
            1.0,
        ),
        (
            r#"azaion_http_requests_total{route="unmatched",method="GET",status="404"}"#,
            1.0,
        ),
        ("azaion_load_bytes_total", 2.0 * plaintext.len() as f64),
        (r#"azaion_cache_lookups_total{result="hit"}"#, 1.0),
        (r#"azaion_cache_lookups_total{result="miss"}"#, 1.0),
        (r#"azaion_cache_lookups_total{result="stale"}"#, 0.0),
        (r#"azaion_cache_lookups_total{result="damaged"}"#, 0.0),
        (r#"azaion_cache_lookups_total{result="error"}"#, 0.0),
        ("azaion_cache_stores_total", 1.0),
        ("azaion_cache_bytes", big.len() as f64),
        ("azaion_cache_entries", 1.0),
        // login: the token; get_resource: cdn.yaml, m.bin.small twice, nothing.bin.small.
        (
            r#"azaion_upstream_request_duration_seconds_count{upstream="resource_api",operation="login"}"#,
            1.0,
        ),
        (
            r#"azaion_upstream_request_duration_seconds_count{upstream="resource_api",operation="get_resource"}"#,
            4.0,
        ),
        (
            r#"azaion_upstream_request_duration_seconds_count{upstream="cdn",operation="get"}"#,
            1.0,
        ),
        (
            r#"azaion_upstream_request_duration_seconds_bucket{upstream="cdn",operation="get",le="+Inf"}"#,
            1.0,
        ),
        (
            r#"azaion_upstream_request_duration_seconds_count{upstream="cdn",operation="put"}"#,
            0.0,
        ),
        (
            r#"azaion_upstream_errors_total{upstream="resource_api",operation="get_resource",kind="not_found"}"#,
            1.0,
        ),
        ("azaion_session_authenticated", 1.0),
        (r#"azaion_unlock_state{state="idle"}"#, 1.0),
        (r#"azaion_unlock_state{state="ready"}"#, 0.0),
        ("azaion_unlock_decrypted_bytes", 0.0),
        ("azaion_unlock_archive_bytes", 0.0),
    ] {
        assert_sample(&text, series, expected);
    }
    assert!(
        !text.contains("azaion_cache_limit_bytes "),
        "an unlimited cache has no limit series"
    );
    for line in text
        .lines()
        .filter(|l| l.starts_with("azaion_upstream_errors_total"))
    {
        assert!(
            line.contains(r#"kind="not_found""#),
            "unexpected error: {line}"
        );
    }
}

#[tokio::test]
async fn completed_uploads_count_the_encrypted_bytes_they_stored() {
    let app = TestApp::logged_in().await;
    assert_sample(&scrape(&app).await, "azaion_upload_bytes_total", 0.0);
    // IV + the ciphertext padded to a whole block: 16 + 1008 and 16 + 4112.
    assert_eq!(
        app.upload("a.bin", FOLDER, pattern(1000, 1)).await.status(),
        200
    );
    assert_eq!(
        app.upload("b.bin", FOLDER, pattern(4100, 2)).await.status(),
        200
    );
    assert_sample(
        &scrape(&app).await,
        "azaion_upload_bytes_total",
        1024.0 + 4128.0,
    );
}

#[tokio::test]
async fn stale_and_damaged_cache_entries_are_counted_apart_from_misses() {
    let app = TestApp::logged_in().await;
    app.seed(FOLDER, "m.bin", &pattern(20_000, 1));
    load_ok(&app, "m.bin").await;
    app.cache.damage_record(FOLDER, "m.bin");
    load_ok(&app, "m.bin").await;
    // A re-upload elsewhere: the cached big part now belongs to an older small part.
    app.seed(FOLDER, "m.bin", &pattern(20_000, 2));
    load_ok(&app, "m.bin").await;

    let text = scrape(&app).await;
    assert_sample(&text, r#"azaion_cache_lookups_total{result="miss"}"#, 1.0);
    assert_sample(
        &text,
        r#"azaion_cache_lookups_total{result="damaged"}"#,
        1.0,
    );
    assert_sample(&text, r#"azaion_cache_lookups_total{result="stale"}"#, 1.0);
    assert_sample(&text, r#"azaion_cache_lookups_total{result="hit"}"#, 0.0);
    assert_sample(&text, "azaion_cache_stores_total", 3.0);
}

#[tokio::test]
async fn upstream_failures_are_counted_by_kind_and_slow_calls_land_in_high_buckets() {
    let app = TestApp::logged_in().await;
    app.seed(FOLDER, "m.bin", &pattern(300_000, 1));
    app.store
        .fail_next_gets(1, StoreError::Unavailable("connection refused".into()));
    assert_eq!(app.load("m.bin", FOLDER).await.status(), 503);
    app.api.fail_next(
        FakeRoute::GetResource,
        1,
        ApiError::Upstream { status: 500 },
    );
    assert_eq!(app.load("m.bin", FOLDER).await.status(), 502);
    // A read cut mid-body is resumed, and counted.
    app.store.cut_next_read(100_000);
    load_ok(&app, "m.bin").await;
    app.api
        .stall_next(FakeRoute::GetResource, 1, Duration::from_millis(300));
    load_ok(&app, "m.bin").await;

    let text = scrape(&app).await;
    for (series, expected) in [
        (
            r#"azaion_upstream_errors_total{upstream="cdn",operation="get",kind="unavailable"}"#,
            1.0,
        ),
        (
            r#"azaion_upstream_errors_total{upstream="resource_api",operation="get_resource",kind="upstream_status"}"#,
            1.0,
        ),
        (
            r#"azaion_upstream_errors_total{upstream="cdn",operation="get",kind="read_cut"}"#,
            1.0,
        ),
        (
            r#"azaion_http_requests_total{route="/load/{filename}",method="POST",status="503"}"#,
            1.0,
        ),
        (
            r#"azaion_http_requests_total{route="/load/{filename}",method="POST",status="502"}"#,
            1.0,
        ),
    ] {
        assert_sample(&text, series, expected);
    }
    // cdn.yaml and four small parts; one of them took at least 300 ms.
    let count = r#"azaion_upstream_request_duration_seconds_count{upstream="resource_api",operation="get_resource"}"#;
    assert_sample(&text, count, 5.0);
    let fast = sample(
        &text,
        r#"azaion_upstream_request_duration_seconds_bucket{upstream="resource_api",operation="get_resource",le="0.25"}"#,
    )
    .unwrap();
    assert!(fast <= 4.0, "{fast}");
    let sum = sample(
        &text,
        r#"azaion_upstream_request_duration_seconds_sum{upstream="resource_api",operation="get_resource"}"#,
    )
    .unwrap();
    assert!(sum >= 0.3, "{sum}");
}

#[tokio::test]
async fn the_unlock_state_gauge_follows_the_unlock() {
    let app = TestApp::spawn().await;
    let text = scrape(&app).await;
    assert_sample(&text, "azaion_session_authenticated", 0.0);
    assert_sample(&text, r#"azaion_unlock_state{state="idle"}"#, 1.0);
    // No archive and no expected images: refused, still idle.
    let r = app
        .post_json(
            "/unlock",
            json!({"email": crate::support::EMAIL, "password": crate::support::PASSWORD}),
        )
        .await;
    assert_eq!(r.status(), 404);
    let text = scrape(&app).await;
    let set: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("azaion_unlock_state{") && l.ends_with(" 1"))
        .collect();
    assert_eq!(set, [r#"azaion_unlock_state{state="idle"} 1"#]);
}

#[tokio::test]
async fn every_answer_has_a_request_id_and_a_plain_one_from_the_client_is_kept() {
    let app = TestApp::spawn().await;
    let mut seen = std::collections::HashSet::new();
    for path in ["/health", "/no/such/route", "/metrics", "/"] {
        let r = app.get(path).await;
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36, "{path}: {id}");
        assert!(seen.insert(id), "{path}: a repeated id");
    }
    let r = app.post_json("/login", json!({"email": 1})).await;
    assert_eq!(r.status(), 422);
    assert!(r.headers().contains_key("x-request-id"));

    let kept = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "edge-42.retry_1")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "edge-42.retry_1");

    for unusable in ["has space", "a\"quote", &"x".repeat(200)] {
        let r = app
            .client
            .get(app.url("/health"))
            .header("x-request-id", unusable)
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(id, unusable);
        assert_eq!(id.len(), 36, "{id}");
    }
}
