//! `GET /openapi.json`: the document lists every route the loader serves, with
//! its bodies and the `{"detail"}` error body for every error status.

use serde_json::Value;

use crate::support::TestApp;

/// Every operation of PROTOCOL §5, plus the document itself, the status page,
/// the cache listing and the metrics.
const OPERATIONS: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/status"),
    ("post", "/login"),
    ("post", "/load/{filename}"),
    ("post", "/upload/{filename}"),
    ("post", "/unlock"),
    ("get", "/unlock/status"),
    ("get", "/openapi.json"),
    ("get", "/"),
    ("get", "/cache"),
    ("post", "/cache/prune"),
    ("post", "/cache/verify"),
    ("delete", "/cache/{folder}/{filename}"),
    ("post", "/prefetch/{filename}"),
    ("get", "/metrics"),
    ("get", "/transfers"),
];

async fn document(app: &TestApp) -> Value {
    let r = app.get("/openapi.json").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let text = r.text().await.unwrap();
    serde_json::from_str(&text).expect("the document is JSON")
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.trim_start_matches("#/components/schemas/");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

#[tokio::test]
async fn the_openapi_document_is_openapi_3_and_lists_every_route() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "Azaion Loader");
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in OPERATIONS {
        assert!(
            paths.get(*path).and_then(|p| p.get(*method)).is_some(),
            "{method} {path} is missing"
        );
    }
    let listed: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        listed,
        OPERATIONS.len(),
        "the document lists an operation the test does not know"
    );
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let app = TestApp::spawn().await;
    for (method, path) in OPERATIONS {
        let url = app.url(
            &path
                .replace("{filename}", "x.bin")
                .replace("{folder}", "models"),
        );
        let request = match *method {
            "get" => app.client.get(url),
            "delete" => app.client.delete(url),
            _ => app.client.post(url),
        };
        let r = request.send().await.unwrap();
        let status = r.status();
        assert_ne!(status, 405, "{method} {path}");
        // A 404 of the route itself (no such cache entry) is not a missing route.
        let body = r.text().await.unwrap();
        assert!(
            !(status == 404 && body.contains("no such endpoint")),
            "{method} {path}: {body}"
        );
    }
}

#[tokio::test]
async fn every_error_status_is_documented_with_the_detail_body() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let error_body = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error_body["required"], serde_json::json!(["detail"]));
    assert_eq!(error_body["properties"]["detail"]["type"], "string");
    for (method, path) in OPERATIONS {
        let responses = doc["paths"][*path][*method]["responses"]
            .as_object()
            .unwrap();
        assert!(responses.contains_key("200"), "{method} {path}");
        for (status, response) in responses {
            if status.starts_with('2') {
                continue;
            }
            let schema = &response["content"]["application/json"]["schema"];
            // Not ready is an answer, not an error: the list of what is missing.
            if (*path, status.as_str()) == ("/ready", "503") {
                assert_eq!(schema["$ref"], "#/components/schemas/ReadyBody");
                continue;
            }
            assert_eq!(
                resolve(&doc, schema),
                error_body,
                "{method} {path} {status}"
            );
        }
    }
}

#[tokio::test]
async fn the_document_names_the_error_statuses_each_route_can_answer() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let statuses = |method: &str, path: &str| -> Vec<String> {
        doc["paths"][path][method]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    for (method, path, expected) in [
        (
            "post",
            "/login",
            &["200", "400", "401", "413", "415", "422", "500"][..],
        ),
        (
            "post",
            "/load/{filename}",
            &[
                "200", "400", "401", "403", "404", "409", "413", "415", "422", "500", "502", "503",
            ][..],
        ),
        (
            "post",
            "/upload/{filename}",
            &[
                "200", "400", "401", "403", "404", "408", "413", "500", "502", "503", "507",
            ][..],
        ),
        (
            "post",
            "/unlock",
            &["200", "400", "404", "413", "415", "422"][..],
        ),
    ] {
        let mut found = statuses(method, path);
        found.sort();
        assert_eq!(found, expected, "{method} {path}");
    }
}

#[tokio::test]
async fn the_documented_bodies_are_json_and_multipart_and_load_answers_octet_stream() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let body = |method: &str, path: &str, media: &str| -> Value {
        resolve(
            &doc,
            &doc["paths"][path][method]["requestBody"]["content"][media]["schema"],
        )
        .clone()
    };
    let credentials = body("post", "/login", "application/json");
    assert_eq!(
        credentials["required"],
        serde_json::json!(["email", "password"])
    );
    assert_eq!(body("post", "/unlock", "application/json"), credentials);
    let load = body("post", "/load/{filename}", "application/json");
    assert_eq!(load["required"], serde_json::json!(["folder"]));
    assert!(load["properties"]["filename"].is_object());
    let form = body("post", "/upload/{filename}", "multipart/form-data");
    let mut required: Vec<&str> = form["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort();
    assert_eq!(required, ["data", "folder"]);
    assert_eq!(form["properties"]["data"]["format"], "binary");
    assert!(
        doc["paths"]["/load/{filename}"]["post"]["responses"]["200"]["content"]
            ["application/octet-stream"]
            .is_object()
    );
}

#[tokio::test]
async fn the_documented_response_shapes_match_what_the_routes_answer() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    for (path, schema) in [
        ("/health", "HealthBody"),
        ("/status", "StatusBody"),
        ("/unlock/status", "UnlockStatusBody"),
    ] {
        let body = TestApp::json(app.get(path).await).await;
        let documented = &doc["components"]["schemas"][schema];
        for field in documented["required"].as_array().unwrap() {
            let field = field.as_str().unwrap();
            assert!(body.get(field).is_some(), "{path} lacks {field}: {body}");
        }
    }
    let states = doc["components"]["schemas"]["UnlockState"]["enum"]
        .as_array()
        .unwrap();
    assert_eq!(states.len(), 7);
    assert!(states.contains(&Value::from("loading_images")));
}

#[tokio::test]
async fn a_known_route_with_the_wrong_method_answers_405_with_a_detail() {
    let app = TestApp::spawn().await;
    let r = app.get("/login").await;
    assert_eq!(r.status(), 405);
    assert!(TestApp::json(r).await["detail"].is_string());
    let r = app.client.post(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert!(TestApp::json(r).await["detail"].is_string());
}
