//! Fuzzing with proptest: generated requests thrown at the router (with every
//! fake healthy, no request may get a 5xx; every error is a `{"detail"}` JSON
//! body; nothing lands outside the cache folder). The pure parsers and the
//! streaming decryptor are fuzzed beside their code, in `src/domain`.

use std::time::Duration;

use azaion_loader::domain::names::ResourceName;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::support::{EMAIL, FOLDER, PASSWORD, TestApp, pattern};

// ---------------------------------------------------------------------------
// Requests at the router
// ---------------------------------------------------------------------------

const BOUNDARY: &str = "fuzzBoundary7MA4YWxk";

#[derive(Debug, Clone)]
struct FormPart {
    /// `None`: a part without a `name` in its Content-Disposition.
    name: Option<String>,
    filename: Option<String>,
    content: Vec<u8>,
}

#[derive(Debug, Clone)]
enum Body {
    Empty,
    Text(String),
    Bytes(Vec<u8>),
    Form { parts: Vec<FormPart>, closed: bool },
}

#[derive(Debug, Clone)]
struct FuzzRequest {
    post: bool,
    path: String,
    content_type: Option<String>,
    body: Body,
}

fn exact_route() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "/health",
        "/status",
        "/login",
        "/unlock",
        "/unlock/status",
        "/openapi.json",
    ])
    .prop_map(str::to_owned)
}

fn junk_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "%00",
            "%2F",
            "%2f",
            "%5C",
            "%FF",
            "%C3%28",
            "%E2%82",
            "..",
            ".",
            "/",
            "%2E%2E",
            "%",
            "%%",
            "%zz",
            "?x=1",
            "?folder=models",
            "%20",
            "+",
            ";",
            "%0D%0A",
            "m.bin",
            "%3F",
            "%23",
            "~",
            "'",
            "\"",
            "%u2215",
        ])
        .prop_map(str::to_owned),
        "[A-Za-z0-9._-]{1,12}",
        "\\PC{1,4}",
    ]
}

fn junk() -> impl Strategy<Value = String> {
    prop::collection::vec(junk_piece(), 1..6).prop_map(|p| p.concat())
}

fn file_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[A-Za-z0-9._-]{1,24}",
        3 => Just("m.bin".to_owned()),
        1 => Just(String::new()),
        4 => junk(),
        1 => (150usize..320).prop_map(|n| "a".repeat(n)),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => exact_route(),
        6 => (prop::sample::select(vec!["/load/", "/upload/"]), file_name())
            .prop_map(|(route, name)| format!("{route}{name}")),
        1 => (exact_route(), junk()).prop_map(|(route, junk)| format!("{route}{junk}")),
        1 => junk().prop_map(|junk| format!("/{junk}")),
    ]
}

fn json_leaf() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        prop::sample::select(vec![
            FOLDER,
            "m.bin",
            "nobucket",
            "Bad_Folder",
            "..",
            "",
            EMAIL,
            PASSWORD,
            "192.168.0.1",
            "a/b",
            "a\0b",
        ])
        .prop_map(serde_json::Value::from),
        "\\PC{0,40}".prop_map(serde_json::Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    json_leaf().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(vec!["email", "password", "folder", "filename"])
                        .prop_map(str::to_owned),
                    "[a-z]{1,8}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => json_value().prop_map(|v| v.to_string()),
        // The shapes the routes expect, with arbitrary values.
        3 => (json_leaf(), json_leaf()).prop_map(|(a, b)| serde_json::json!({"email": a, "password": b}).to_string()),
        6 => (prop::sample::select(vec![EMAIL, "nobody@example.com", ""]), prop::sample::select(vec![PASSWORD, "wrong", ""]))
            .prop_map(|(a, b)| serde_json::json!({"email": a, "password": b}).to_string()),
        3 => (json_leaf(), json_leaf()).prop_map(|(a, b)| serde_json::json!({"folder": a, "filename": b}).to_string()),
        // Cut-off and garbled JSON.
        2 => (json_value(), any::<prop::sample::Index>()).prop_map(|(v, cut)| {
            let text = v.to_string();
            let at = cut.index(text.len() + 1);
            text.char_indices().map(|(i, _)| i).take_while(|&i| i <= at).last().map_or(String::new(), |i| text[..i].to_owned())
        }),
        1 => (0usize..3).prop_map(|n| format!("{{\"folder\":\"models\",\"pad\":\"{}\"}}", "x".repeat(70_000 + n * 10_000))),
    ]
}

fn part_content() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(vec![FOLDER, "nobucket", "Bad_Folder", "", " models ", "ab"]).prop_map(|s| s.as_bytes().to_vec()),
        4 => prop::collection::vec(any::<u8>(), 0..3000),
        1 => (1_000usize..200_000).prop_map(|n| pattern(n, 7)),
    ]
}

fn form_part() -> impl Strategy<Value = FormPart> {
    (
        prop_oneof![
            4 => Just(Some("folder".to_owned())),
            4 => Just(Some("data".to_owned())),
            1 => Just(None),
            1 => "[a-z\"; ]{0,10}".prop_map(Some),
        ],
        prop::option::of("[A-Za-z0-9._ -]{0,20}"),
        part_content(),
    )
        .prop_map(|(name, filename, content)| FormPart {
            name,
            filename,
            content,
        })
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        2 => Just(Body::Empty),
        5 => json_text().prop_map(Body::Text),
        2 => prop::collection::vec(any::<u8>(), 0..2000).prop_map(Body::Bytes),
        5 => (prop::collection::vec(form_part(), 0..5), prop::bool::weighted(0.85))
            .prop_map(|(parts, closed)| Body::Form { parts, closed }),
    ]
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop::option::weighted(
        0.85,
        prop::sample::select(vec![
            "application/json".to_owned(),
            "application/json; charset=utf-8".to_owned(),
            "text/plain".to_owned(),
            "application/octet-stream".to_owned(),
            format!("multipart/form-data; boundary={BOUNDARY}"),
            format!("multipart/form-data; boundary=\"{BOUNDARY}\""),
            "multipart/form-data".to_owned(),
            "multipart/form-data; boundary=other".to_owned(),
            "multipart/mixed; boundary=x".to_owned(),
            "application/x-www-form-urlencoded".to_owned(),
            "application/jsonx".to_owned(),
            ";;;".to_owned(),
        ]),
    )
}

/// The content type usually fits the body (so requests get past the extractors),
/// and sometimes is anything at all.
fn content_type_for(body: &Body) -> BoxedStrategy<Option<String>> {
    let fitting = match body {
        Body::Form { .. } => Some(format!("multipart/form-data; boundary={BOUNDARY}")),
        Body::Text(_) => Some("application/json".to_owned()),
        Body::Empty | Body::Bytes(_) => None,
    };
    match fitting {
        Some(fitting) => prop_oneof![3 => Just(Some(fitting)), 1 => content_type()].boxed(),
        None => content_type().boxed(),
    }
}

/// Routes that answer GET; the rest answer POST.
const GET_ROUTES: &[&str] = &["/health", "/status", "/unlock/status", "/openapi.json"];

fn request() -> impl Strategy<Value = FuzzRequest> {
    // Usually the method the route answers to, sometimes the other one.
    (prop::bool::weighted(0.85), path(), body()).prop_flat_map(|(fitting, path, body)| {
        let post = fitting != GET_ROUTES.contains(&path.as_str());
        content_type_for(&body).prop_map(move |content_type| FuzzRequest {
            post,
            path: path.clone(),
            content_type,
            body: body.clone(),
        })
    })
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Empty => 0,
            Body::Text(text) => text.len(),
            Body::Bytes(bytes) => bytes.len(),
            Body::Form { parts, closed } => form_bytes(parts, *closed).len(),
        }
    }
}

/// Bodies up to this size are read whole before the loader answers, so the
/// answer always arrives; past it an early refusal may reset the connection.
const READ_WHOLE_MAX: usize = 64 * 1024;

fn form_bytes(parts: &[FormPart], closed: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Disposition: form-data").as_bytes());
        if let Some(name) = &part.name {
            out.extend_from_slice(format!("; name=\"{name}\"").as_bytes());
        }
        if let Some(filename) = &part.filename {
            out.extend_from_slice(format!("; filename=\"{filename}\"").as_bytes());
        }
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&part.content);
        out.extend_from_slice(b"\r\n");
    }
    if closed {
        out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    }
    out
}

/// Sends one request and checks the answer; returns its status (`None`: not sendable).
async fn send_and_check(
    app: &TestApp,
    client: &reqwest::Client,
    req: &FuzzRequest,
) -> Result<Option<u16>, TestCaseError> {
    let Ok(url) = reqwest::Url::parse(&app.url(&req.path)) else {
        return Ok(None); // not a URL a client could send
    };
    // A refused upload stores nothing: neither part of a name that did not exist.
    let upload_name = req
        .path
        .strip_prefix("/upload/")
        .filter(|name| ResourceName::parse(name).is_ok())
        .map(str::to_owned);
    let stored = |name: &str| {
        app.store.object(FOLDER, &format!("{name}.big")).is_some()
            || app
                .api
                .file(Some(FOLDER), &format!("{name}.small"))
                .is_some()
    };
    let existed = upload_name.as_deref().map(stored);
    let mut builder = if req.post {
        client.post(url)
    } else {
        client.get(url)
    };
    if let Some(ct) = &req.content_type {
        builder = builder.header("content-type", ct);
    }
    builder = match &req.body {
        Body::Empty => builder,
        Body::Text(text) => builder.body(text.clone()),
        Body::Bytes(bytes) => builder.body(bytes.clone()),
        Body::Form { parts, closed } => builder.body(form_bytes(parts, *closed)),
    };
    let sent = tokio::time::timeout(Duration::from_secs(30), builder.send())
        .await
        .map_err(|_| TestCaseError::fail("no answer within 30 s"))?;
    let response = match sent {
        Ok(response) => response,
        // A large body refused before it was read: the connection may be reset under
        // the answer. Anything else (a panic, a hang-up) is a failure, and the loader
        // must still serve afterwards.
        Err(e) if req.body.len() > READ_WHOLE_MAX && e.is_request() => {
            let health = app.get("/health").await.status();
            prop_assert_eq!(health, 200);
            if let (Some(name), Some(false)) = (&upload_name, existed) {
                prop_assert!(!stored(name), "a failed upload stored {name}");
            }
            return Ok(Some(0));
        }
        Err(e) => {
            return Err(TestCaseError::fail(format!("the request failed: {e:?}")));
        }
    };
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = tokio::time::timeout(Duration::from_secs(30), response.bytes())
        .await
        .map_err(|_| TestCaseError::fail("the body never ended"))?
        .map_err(|e| TestCaseError::fail(format!("the body failed: {e}")))?;
    prop_assert!(
        !status.is_server_error(),
        "{status} for {req:?}: {}",
        String::from_utf8_lossy(&body)
    );
    if !status.is_success() {
        prop_assert!(
            content_type.starts_with("application/json"),
            "{status} answered {content_type:?}"
        );
        let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            TestCaseError::fail(format!(
                "{status}: not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            ))
        })?;
        prop_assert!(value["detail"].is_string(), "{status}: {value}");
    }
    if !status.is_success()
        && let (Some(name), Some(false)) = (&upload_name, existed)
    {
        prop_assert!(!stored(name), "a refused upload ({status}) stored {name}");
    }
    let outside = app.files_outside_cache();
    prop_assert!(outside.is_empty(), "files outside the cache: {outside:?}");
    Ok(Some(status.as_u16()))
}

#[test]
fn generated_requests_never_get_a_5xx_and_every_error_is_a_json_detail() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The real filesystem cache: "nothing outside the cache" is about files.
    let app = runtime.block_on(async {
        let app = TestApp::spawn_with_fs_cache().await;
        assert_eq!(app.login().await.status(), 200);
        app
    });
    app.seed(FOLDER, "m.bin", &pattern(20_000, 3));
    // A fresh connection per request: a refused large body may close its
    // connection, and a pooled one could then fail the next, unrelated case.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 1000,
        failure_persistence: None,
        max_shrink_time: 30_000,
        ..Config::default()
    });
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<u16, usize>::new());
    let result = runner.run(&request(), |req| {
        if let Some(status) = runtime.block_on(send_and_check(&app, &client, &req))? {
            *seen.lock().unwrap().entry(status).or_default() += 1;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let seen = seen.into_inner().unwrap();
    eprintln!("statuses seen: {seen:?}");
    // The generator reaches past the router into every kind of answer.
    for status in [200, 400, 404, 405, 415, 422] {
        assert!(seen.contains_key(&status), "never saw {status}: {seen:?}");
    }
    // The session survived the storm: the seeded resource still loads.
    let loaded = runtime.block_on(async { app.load("m.bin", FOLDER).await.status() });
    assert_eq!(loaded, 200);
}
