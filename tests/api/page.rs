//! `GET /`: the status page, self-contained and locked down by its
//! Content-Security-Policy; `GET /cache`: the cache listing it shows.

use serde_json::json;

use crate::support::{FOLDER, TestApp, pattern};

#[tokio::test]
async fn the_status_page_is_html_with_every_section_it_fills_in() {
    let app = TestApp::spawn().await;
    let r = app.get("/").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let html = r.text().await.unwrap();
    assert!(html.starts_with("<!doctype html>"));
    for element in [
        r#"<html lang="en">"#,
        "<title>",
        "<main",
        r#"<h1>Azaion Loader</h1>"#,
        r#"id="health""#,
        r#"id="session""#,
        r#"id="cache-dir""#,
        r#"id="crypto""#,
        r#"id="cache-bytes""#,
        r#"id="cache-entries""#,
        r#"id="cache-limit""#,
        r#"<tbody id="cache-rows">"#,
        r#"<th scope="col">Resource</th>"#,
        r#"id="unlock-state""#,
        r#"<label class="bar-label" for="unlock-progress">"#,
        r#"<progress id="unlock-progress""#,
        r#"<label class="bar-label" for="cache-meter">"#,
        "/unlock/status",
        "/cache",
        "<script>",
        "<style>",
    ] {
        assert!(html.contains(element), "the page lacks {element}");
    }
    assert!(!html.contains("{{"), "a template placeholder was left");
}

#[tokio::test]
async fn the_status_page_loads_nothing_from_elsewhere_and_runs_only_its_own_script() {
    let app = TestApp::spawn().await;
    let r = app.get("/").await;
    let policy = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    let html = r.text().await.unwrap();
    assert!(policy.starts_with("default-src 'none'"), "{policy}");
    assert!(policy.contains("script-src 'sha256-"), "{policy}");
    assert!(policy.contains("style-src 'sha256-"), "{policy}");
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe"), "{policy}");
    assert!(
        !html.contains(" src="),
        "the page loads an external resource"
    );
    assert!(!html.contains("http://") && !html.contains("https://"));
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
    ] {
        assert!(!html.contains(sink), "the page uses {sink}");
    }
    assert!(html.contains("textContent"));
}

#[tokio::test]
async fn cache_lists_nothing_before_the_first_load() {
    let app = TestApp::spawn().await;
    let r = app.get("/cache").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(
        TestApp::json(r).await,
        json!({"usage": {"bytes": 0, "entries": 0, "limit": null}, "entries": []})
    );
}

#[tokio::test]
async fn cache_lists_each_loaded_resource_with_its_size() {
    let app = TestApp::logged_in().await;
    let (_, big_b) = app.seed(FOLDER, "b.bin", &pattern(30_000, 2));
    let (_, big_a) = app.seed(FOLDER, "a.onnx", &pattern(20_000, 1));
    for name in ["b.bin", "a.onnx"] {
        let r = app.load(name, FOLDER).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let mut body = TestApp::json(app.get("/cache").await).await;
    // Last use: now, give or take the test's run.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for entry in body["entries"].as_array_mut().unwrap() {
        let used = entry
            .as_object_mut()
            .unwrap()
            .remove("last_used_unix_secs")
            .and_then(|v| v.as_u64())
            .expect("a last-use stamp");
        assert!(now.abs_diff(used) < 600, "{used} against {now}");
    }
    assert_eq!(
        body,
        json!({
            "usage": {
                "bytes": big_a.len() + big_b.len(),
                "entries": 2,
                "limit": null,
            },
            "entries": [
                {"folder": FOLDER, "name": "a.onnx", "bytes": big_a.len()},
                {"folder": FOLDER, "name": "b.bin", "bytes": big_b.len()},
            ],
        })
    );
}

#[tokio::test]
async fn the_document_describes_the_page_the_cache_listing_and_the_metrics() {
    let app = TestApp::spawn().await;
    let doc = TestApp::json(app.get("/openapi.json").await).await;
    let ok = |path: &str| doc["paths"][path]["get"]["responses"]["200"]["content"].clone();
    assert!(ok("/").get("text/html").is_some(), "{}", ok("/"));
    assert!(
        ok("/metrics").get("text/plain").is_some(),
        "{}",
        ok("/metrics")
    );
    let cache = &ok("/cache")["application/json"]["schema"]["$ref"];
    assert_eq!(cache, "#/components/schemas/CacheBody");
    let usage = &doc["components"]["schemas"]["CacheUsageBody"];
    let mut required: Vec<&str> = usage["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort();
    assert_eq!(required, ["bytes", "entries", "limit"]);
}
