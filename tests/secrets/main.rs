//! Secrets stay secret: a whole session through the HTTP API (login, load,
//! upload, unlock, and their failures) runs under a global TRACE-level
//! subscriber that captures every log line, as text and as JSON; neither the
//! log nor any response body may then hold a password, a token, a key or the
//! key fragment. Its own binary, because the subscriber is process-wide.

use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use azaion_loader::adapters::fakes::{FakeRoute, fake_archive};
use azaion_loader::domain::cipher::encrypt;
use azaion_loader::domain::keys::{AesKey, api_key, hardware_hash, resource_key};
use azaion_loader::domain::secret::SecretString;
use azaion_loader::ports::ApiError;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use azaion_loader::test_support::app::{EMAIL, FOLDER, PASSWORD, TestApp, cdn_config, pattern};

const WRONG_PASSWORD: &str = "Wr0ng-Passw0rd-917";
const FRAGMENT: &[u8] = b"fragment-S3CRET-4417";
const IMAGE: &str = "azaion/detector:1.0";
/// The signature part of every token the fake Resource API issues.
const FAKE_TOKEN_SIGNATURE: &str = "ZmFrZS1zaWduYXR1cmU";
/// `{"alg":"HS256","typ":"JWT"}`: the header part of those tokens.
const FAKE_TOKEN_HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

#[derive(Clone)]
struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Installs, once per process, a TRACE-level subscriber writing every event
/// and span (text and JSON) into a buffer, and returns the buffer.
fn captured_log() -> Arc<Mutex<Vec<u8>>> {
    static CAPTURE: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let buffer = Arc::new(Mutex::new(Vec::new()));
            let text = CaptureWriter(buffer.clone());
            let json = CaptureWriter(buffer.clone());
            tracing_subscriber::registry()
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(false)
                        .with_span_events(FmtSpan::FULL)
                        .with_writer(move || text.clone()),
                )
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .with_current_span(true)
                        .with_span_list(true)
                        .with_writer(move || json.clone()),
                )
                .with(LevelFilter::TRACE)
                .try_init()
                .expect("the only subscriber of this test binary");
            buffer
        })
        .clone()
}

fn log_text(buffer: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buffer.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// Every form a secret could take in a log line or a body.
fn forms_of_bytes(label: &str, bytes: &[u8]) -> Vec<(String, String)> {
    vec![
        (format!("{label} (hex)"), hex::encode(bytes)),
        (format!("{label} (HEX)"), hex::encode_upper(bytes)),
        (format!("{label} (base64)"), STANDARD.encode(bytes)),
        (
            format!("{label} (base64url)"),
            URL_SAFE_NO_PAD.encode(bytes),
        ),
        (format!("{label} (Debug)"), format!("{bytes:?}")),
    ]
}

fn secrets(app: &TestApp) -> Vec<(String, String)> {
    let hardware = app
        .api
        .bound_hardware(EMAIL)
        .expect("the device is bound after login");
    let api_key = api_key(
        EMAIL,
        &SecretString::new(PASSWORD),
        &hardware_hash(&hardware),
    );
    let resource_key = resource_key();
    let cdn = cdn_config();
    let mut list = vec![
        ("password".to_owned(), PASSWORD.to_owned()),
        ("wrong password".to_owned(), WRONG_PASSWORD.to_owned()),
        (
            "token signature".to_owned(),
            FAKE_TOKEN_SIGNATURE.to_owned(),
        ),
        ("token header".to_owned(), FAKE_TOKEN_HEADER.to_owned()),
        ("API key".to_owned(), api_key.expose().to_owned()),
        ("resource key".to_owned(), resource_key.expose().to_owned()),
        (
            "key fragment".to_owned(),
            String::from_utf8_lossy(FRAGMENT).into_owned(),
        ),
        (
            "CDN reader secret".to_owned(),
            cdn.downloader.secret_key.expose().to_owned(),
        ),
        (
            "CDN writer secret".to_owned(),
            cdn.uploader.secret_key.expose().to_owned(),
        ),
    ];
    list.extend(forms_of_bytes("key fragment", FRAGMENT));
    list.extend(forms_of_bytes(
        "resource AES key",
        AesKey::from_key_string(&resource_key).as_bytes(),
    ));
    list.extend(forms_of_bytes(
        "API AES key",
        AesKey::from_key_string(&api_key).as_bytes(),
    ));
    list.extend(forms_of_bytes(
        "archive AES key",
        AesKey::from_archive_fragment(FRAGMENT).as_bytes(),
    ));
    list
}

fn assert_holds_no_secret(what: &str, text: &str, secrets: &[(String, String)]) {
    for (name, secret) in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{what} holds the {name}: …{}…",
            context(text, secret)
        );
    }
}

fn context<'a>(text: &'a str, needle: &str) -> &'a str {
    let at = text.find(needle).unwrap_or(0);
    let start = text[..at]
        .char_indices()
        .rev()
        .nth(120)
        .map_or(0, |(i, _)| i);
    let end = text[at..]
        .char_indices()
        .nth(needle.len() + 120)
        .map_or(text.len(), |(i, _)| at + i);
    &text[start..end]
}

/// Writes the image archive, encrypted under the key of `fragment`.
fn write_archive(app: &TestApp, fragment: &[u8]) {
    let plain = fake_archive(&[IMAGE], 20_000);
    let encrypted = encrypt(&AesKey::from_archive_fragment(fragment), [9; 16], &plain);
    let dir = app.config.images_path.parent().expect("a folder");
    std::fs::create_dir_all(dir).expect("images folder");
    std::fs::write(&app.config.images_path, encrypted).expect("archive");
}

/// Every body the loader answered: (what, status, body).
struct Bodies(Vec<(String, u16, String)>);

impl Bodies {
    async fn keep(&mut self, what: &str, r: reqwest::Response) -> (u16, String) {
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        self.0.push((what.to_owned(), status, body.clone()));
        (status, body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_session_with_its_failures_logs_no_secret_and_answers_none() {
    let log = captured_log();
    let app = TestApp::spawn_with(|c| c.expected_images = vec![IMAGE.to_owned()]).await;
    app.api.set_key_fragment(FRAGMENT);
    let mut bodies = Bodies(Vec::new());

    // Before login.
    app.seed(FOLDER, "m.bin", &pattern(40_000, 1));
    let (status, _) = bodies
        .keep("load before login", app.load("m.bin", FOLDER).await)
        .await;
    assert_eq!(status, 401);

    // A wrong password, then the right one.
    let r = app
        .post_json(
            "/login",
            json!({"email": EMAIL, "password": WRONG_PASSWORD}),
        )
        .await;
    assert_eq!(bodies.keep("wrong login", r).await.0, 401);
    assert_eq!(bodies.keep("login", app.login().await).await.0, 200);

    // Load, upload, load again.
    let r = app.load("m.bin", FOLDER).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), pattern(40_000, 1));
    let r = app.upload("u.bin", FOLDER, pattern(30_000, 2)).await;
    assert_eq!(bodies.keep("upload", r).await.0, 200);
    let r = app.load("u.bin", FOLDER).await;
    assert_eq!(r.bytes().await.unwrap().to_vec(), pattern(30_000, 2));

    // An expired token is renewed under the hood.
    app.api.expire_tokens();
    let r = app.load("m.bin", FOLDER).await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    assert_eq!(app.api.calls(FakeRoute::Login), 3, "wrong, right, renewal");

    // Bad padding at the end of a big part: the transfer is cut.
    let (_, big) = app.seed(FOLDER, "d.bin", &pattern(30_000, 3));
    let mut damaged = big.to_vec();
    let n = damaged.len();
    damaged[n - 20] ^= 0xff;
    app.store.put_object(FOLDER, "d.bin.big", damaged);
    let sent = app
        .client
        .post(app.url("/load/d.bin"))
        .json(&json!({"folder": FOLDER}))
        .send()
        .await;
    if let Ok(r) = sent {
        assert!(r.bytes().await.is_err(), "a damaged end must cut the body");
    }
    // Upstream failures.
    app.api.fail_next(
        FakeRoute::GetResource,
        1,
        ApiError::Upstream { status: 500 },
    );
    let (status, _) = bodies
        .keep("API failure", app.load("m.bin", FOLDER).await)
        .await;
    assert_eq!(status, 502);
    app.api
        .fail_next(FakeRoute::GetResource, 1, ApiError::DeviceMismatch);
    let (status, _) = bodies
        .keep("device refused", app.load("m.bin", FOLDER).await)
        .await;
    assert_eq!(status, 403);
    let r = app
        .post_json("/load/m.bin", json!({"folder": "Bad_Folder"}))
        .await;
    assert_eq!(bodies.keep("bad folder", r).await.0, 400);
    let r = app
        .client
        .post(app.url("/login"))
        .header("content-type", "application/json")
        .body(format!(
            "{{\"email\": \"{EMAIL}\", \"password\": \"{PASSWORD}\""
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(bodies.keep("cut-off login body", r).await.0, 400);
    let r = app
        .post_json(
            "/login",
            json!({"email": EMAIL, "password": 17, "p": PASSWORD}),
        )
        .await;
    assert_eq!(bodies.keep("mistyped login body", r).await.0, 422);

    // Unlock: wrong password, an archive of another key (bad padding), then the real one.
    write_archive(&app, FRAGMENT);
    let r = app
        .post_json(
            "/unlock",
            json!({"email": EMAIL, "password": WRONG_PASSWORD}),
        )
        .await;
    assert_eq!(bodies.keep("unlock, wrong password", r).await.0, 200);
    let v = app.wait_unlock(&["ready", "error"]).await;
    assert_eq!(v["state"], "error", "{v}");
    bodies.0.push((
        "unlock status after a wrong password".into(),
        200,
        v.to_string(),
    ));
    write_archive(&app, b"another fragment entirely");
    let creds = json!({"email": EMAIL, "password": PASSWORD});
    let r = app.post_json("/unlock", creds.clone()).await;
    assert_eq!(bodies.keep("unlock, other key", r).await.0, 200);
    let v = app.wait_unlock(&["ready", "error"]).await;
    assert_eq!(v["state"], "error", "{v}");
    bodies
        .0
        .push(("unlock status after bad padding".into(), 200, v.to_string()));
    write_archive(&app, FRAGMENT);
    let r = app.post_json("/unlock", creds).await;
    assert_eq!(bodies.keep("unlock", r).await.0, 200);
    let v = app.wait_unlock(&["ready", "error"]).await;
    assert_eq!(v["state"], "ready", "{v}");
    assert!(app.runtime.has_image(IMAGE));

    // A refusal after renewal logs the loader out.
    app.api
        .fail_next(FakeRoute::GetResource, 2, ApiError::Unauthorized);
    let (status, _) = bodies
        .keep("refused twice", app.load("m.bin", FOLDER).await)
        .await;
    assert_eq!(status, 401);

    for path in [
        "/status",
        "/unlock/status",
        "/health",
        "/openapi.json",
        "/nope",
    ] {
        let r = app.get(path).await;
        bodies.keep(path, r).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    let secrets = secrets(&app);
    for (what, status, body) in &bodies.0 {
        assert_holds_no_secret(what, body, &secrets);
        if *status >= 400 {
            let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            assert!(v["detail"].is_string(), "{what}: {body}");
        }
    }
    let log = log_text(&log);
    assert!(
        log.contains("logged in") && log.contains(EMAIL),
        "the loader's own lines were captured"
    );
    assert!(log.contains("\"level\":"), "the JSON layer wrote too");
    assert_holds_no_secret("the log", &log, &secrets);
}
