//! The reqwest Resource API adapter against the emulator over real HTTP:
//! every call of PROTOCOL §2 and every error the adapter maps.

use std::time::{Duration, SystemTime};

use azaion_loader::adapters::devstack::emulator::{self, EmulatorConfig, EmulatorHandle, Route};
use azaion_loader::adapters::outbound::resource_api_http::{HttpApiOptions, HttpResourceApi};
use azaion_loader::domain::cdn::CdnConfig;
use azaion_loader::domain::cipher;
use azaion_loader::domain::keys::{AesKey, api_key, hardware_hash};
use azaion_loader::domain::names::Folder;
use azaion_loader::domain::secret::SecretString;
use azaion_loader::domain::token::Claims;
use azaion_loader::ports::{ApiError, Credentials, ResourceApi};
use bytes::Bytes;

const EMAIL: &str = "operator@azaion.test";
const PASSWORD: &str = "correct horse";
const HARDWARE: &str = "CPU: Test CPU. GPU: none. Memory: 16384000. DriveSerial: SN-1";

fn credentials(password: &str) -> Credentials {
    Credentials {
        email: EMAIL.to_owned(),
        password: SecretString::new(password),
    }
}

fn password() -> SecretString {
    SecretString::new(PASSWORD)
}

fn folder(name: &str) -> Folder {
    Folder::parse(name).unwrap()
}

fn cdn() -> CdnConfig {
    CdnConfig::parse(
        b"host: http://127.0.0.1:9000\nregion: eu-central-1\ndownloader_access_key: down\ndownloader_access_secret: down-secret\nuploader_access_key: up\nuploader_access_secret: up-secret\n",
    )
    .unwrap()
}

/// Decrypts what the API sent under the API key of `EMAIL`/`PASSWORD` on `hardware`.
fn decrypt_from_api(ciphertext: &[u8], hardware: &str) -> Vec<u8> {
    let key = AesKey::from_key_string(&api_key(EMAIL, &password(), &hardware_hash(hardware)));
    cipher::decrypt(&key, ciphertext).unwrap()
}

fn api(base_url: &str) -> HttpResourceApi {
    HttpResourceApi::new(base_url, HttpApiOptions::default()).unwrap()
}

/// An emulator with one user and a CDN document, a client for it, and a token.
async fn setup() -> (EmulatorHandle, HttpResourceApi, SecretString) {
    let emulator = emulator::start(EmulatorConfig {
        cdn: Some(cdn()),
        key_fragment: b"the archive key fragment".to_vec(),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    emulator.add_user(EMAIL, PASSWORD);
    let api = api(&emulator.base_url());
    let token = api.login(&credentials(PASSWORD)).await.unwrap();
    (emulator, api, token)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn login_returns_a_jwt_with_the_users_email_and_expiry() {
    let (emulator, _api, token) = setup().await;
    let claims = Claims::from_jwt(token.expose()).unwrap();
    assert_eq!(claims.email.as_deref(), Some(EMAIL));
    assert!(claims.user_id.is_some());
    let exp = claims.expires_at.unwrap();
    let expected = now_secs() + 3600;
    assert!(
        (expected - 5..=expected + 1).contains(&exp),
        "exp {exp}, expected about {expected}"
    );
    assert_eq!(emulator.calls(Route::Login), 1);
}

#[tokio::test]
async fn get_resource_from_the_root_returns_cdn_yaml_encrypted_under_the_api_key() {
    let (emulator, api, token) = setup().await;
    let encrypted = api
        .get_resource(&token, None, "cdn.yaml", &password(), HARDWARE)
        .await
        .unwrap();
    let yaml = decrypt_from_api(&encrypted, HARDWARE);
    assert_eq!(CdnConfig::parse(&yaml).unwrap(), cdn());
    assert_eq!(emulator.bound_hardware(EMAIL).as_deref(), Some(HARDWARE));
    assert_eq!(emulator.calls(Route::GetResource), 1);
}

#[tokio::test]
async fn get_resource_from_a_folder_returns_the_file_encrypted_under_the_api_key() {
    let (emulator, api, token) = setup().await;
    let small = Bytes::from((0..3072u32).map(|i| (i * 7) as u8).collect::<Vec<u8>>());
    emulator.put_file(Some("models"), "model.onnx.small", small.clone());
    let first = api
        .get_resource(
            &token,
            Some(&folder("models")),
            "model.onnx.small",
            &password(),
            HARDWARE,
        )
        .await
        .unwrap();
    assert_eq!(decrypt_from_api(&first, HARDWARE), small);
    let second = api
        .get_resource(
            &token,
            Some(&folder("models")),
            "model.onnx.small",
            &password(),
            HARDWARE,
        )
        .await
        .unwrap();
    assert_ne!(first, second, "every answer has a fresh IV");
    assert_eq!(decrypt_from_api(&second, HARDWARE), small);
}

#[tokio::test]
async fn put_resource_stores_the_bytes_as_given_under_the_file_name() {
    let (emulator, api, token) = setup().await;
    let data = Bytes::from_static(b"\x00\x01 small part bytes \xff");
    api.put_resource(&token, &folder("models"), "model.onnx.small", data.clone())
        .await
        .unwrap();
    assert_eq!(
        emulator.file(Some("models"), "model.onnx.small"),
        Some(data.clone())
    );
    assert_eq!(emulator.calls(Route::PutResource), 1);
    let back = api
        .get_resource(
            &token,
            Some(&folder("models")),
            "model.onnx.small",
            &password(),
            HARDWARE,
        )
        .await
        .unwrap();
    assert_eq!(decrypt_from_api(&back, HARDWARE), data);
}

#[tokio::test]
async fn key_fragment_returns_the_configured_bytes() {
    let (emulator, api, token) = setup().await;
    let fragment = api.key_fragment(&token).await.unwrap();
    assert_eq!(fragment.expose(), b"the archive key fragment");
    emulator.set_key_fragment(vec![9; 64]);
    assert_eq!(
        api.key_fragment(&token).await.unwrap().expose(),
        &[9; 64][..]
    );
    assert_eq!(emulator.calls(Route::KeyFragment), 2);
}

#[tokio::test]
async fn a_missing_key_fragment_is_not_found() {
    let (emulator, api, token) = setup().await;
    emulator.set_key_fragment(Vec::new());
    assert_eq!(
        api.key_fragment(&token).await.unwrap_err(),
        ApiError::NotFound
    );
}

#[tokio::test]
async fn a_base_url_with_a_trailing_slash_works() {
    let (emulator, _api, _token) = setup().await;
    let api = api(&format!("{}/", emulator.base_url()));
    let token = api.login(&credentials(PASSWORD)).await.unwrap();
    assert!(api.key_fragment(&token).await.is_ok());
}

#[tokio::test]
async fn login_with_a_wrong_password_or_an_unknown_user_is_unauthorized() {
    let (emulator, api, _token) = setup().await;
    assert_eq!(
        api.login(&credentials("wrong")).await.unwrap_err(),
        ApiError::Unauthorized
    );
    let stranger = Credentials {
        email: "nobody@azaion.test".to_owned(),
        password: password(),
    };
    assert_eq!(
        api.login(&stranger).await.unwrap_err(),
        ApiError::Unauthorized
    );
    emulator.fail_next(Route::Login, 1, 401);
    assert_eq!(
        api.login(&credentials(PASSWORD)).await.unwrap_err(),
        ApiError::Unauthorized
    );
}

#[tokio::test]
async fn an_expired_or_revoked_token_is_unauthorized() {
    let (emulator, api, token) = setup().await;
    emulator.expire_tokens();
    assert_eq!(
        api.get_resource(&token, None, "cdn.yaml", &password(), HARDWARE)
            .await
            .unwrap_err(),
        ApiError::Unauthorized
    );
    assert_eq!(
        api.key_fragment(&token).await.unwrap_err(),
        ApiError::Unauthorized
    );
    assert_eq!(
        api.put_resource(
            &token,
            &folder("models"),
            "a.small",
            Bytes::from_static(b"x")
        )
        .await
        .unwrap_err(),
        ApiError::Unauthorized
    );

    // A fresh login works again; a token that is dead on arrival does not.
    let fresh = api.login(&credentials(PASSWORD)).await.unwrap();
    assert!(api.key_fragment(&fresh).await.is_ok());
    emulator.set_token_ttl(Duration::ZERO);
    let dead = api.login(&credentials(PASSWORD)).await.unwrap();
    assert_eq!(
        api.key_fragment(&dead).await.unwrap_err(),
        ApiError::Unauthorized
    );
    let garbage = SecretString::new("not-a-token");
    assert_eq!(
        api.key_fragment(&garbage).await.unwrap_err(),
        ApiError::Unauthorized
    );
}

#[tokio::test]
async fn an_unknown_file_is_not_found() {
    let (_emulator, api, token) = setup().await;
    assert_eq!(
        api.get_resource(
            &token,
            Some(&folder("models")),
            "missing.small",
            &password(),
            HARDWARE
        )
        .await
        .unwrap_err(),
        ApiError::NotFound
    );
}

#[tokio::test]
async fn a_second_hardware_string_is_a_device_mismatch() {
    let (emulator, api, token) = setup().await;
    api.get_resource(&token, None, "cdn.yaml", &password(), HARDWARE)
        .await
        .unwrap();
    assert_eq!(
        api.get_resource(&token, None, "cdn.yaml", &password(), "CPU: other")
            .await
            .unwrap_err(),
        ApiError::DeviceMismatch
    );
    assert_eq!(emulator.bound_hardware(EMAIL).as_deref(), Some(HARDWARE));
}

#[tokio::test]
async fn a_wrong_password_on_get_resource_is_refused_as_a_conflict() {
    // The emulator answers 409 (the real API's business error), which the
    // adapter can only read as the resource calls' 409.
    let (_emulator, api, token) = setup().await;
    assert_eq!(
        api.get_resource(
            &token,
            None,
            "cdn.yaml",
            &SecretString::new("wrong"),
            HARDWARE
        )
        .await
        .unwrap_err(),
        ApiError::DeviceMismatch
    );
}

#[tokio::test]
async fn injected_statuses_map_to_what_the_caller_can_act_on() {
    let (emulator, api, token) = setup().await;
    for (status, expected) in [
        (500, ApiError::Upstream { status: 500 }),
        (503, ApiError::Upstream { status: 503 }),
        (403, ApiError::Unauthorized),
        (401, ApiError::Unauthorized),
        (409, ApiError::DeviceMismatch),
        (404, ApiError::NotFound),
    ] {
        emulator.fail_next(Route::GetResource, 1, status);
        assert_eq!(
            api.get_resource(&token, None, "cdn.yaml", &password(), HARDWARE)
                .await
                .unwrap_err(),
            expected,
            "{status}"
        );
    }
    emulator.fail_next(Route::Login, 1, 500);
    assert_eq!(
        api.login(&credentials(PASSWORD)).await.unwrap_err(),
        ApiError::Upstream { status: 500 }
    );
    emulator.fail_next(Route::PutResource, 1, 500);
    assert_eq!(
        api.put_resource(
            &token,
            &folder("models"),
            "a.small",
            Bytes::from_static(b"x")
        )
        .await
        .unwrap_err(),
        ApiError::Upstream { status: 500 }
    );
    emulator.fail_next(Route::KeyFragment, 1, 502);
    assert_eq!(
        api.key_fragment(&token).await.unwrap_err(),
        ApiError::Upstream { status: 502 }
    );
    // The faults are used up: the next calls succeed.
    assert!(
        api.get_resource(&token, None, "cdn.yaml", &password(), HARDWARE)
            .await
            .is_ok()
    );
    assert!(api.key_fragment(&token).await.is_ok());
}

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = listener.local_addr().unwrap();
    drop(listener);
    let api = api(&format!("http://{dead}"));
    let err = api.login(&credentials(PASSWORD)).await.unwrap_err();
    assert!(matches!(err, ApiError::Unavailable(_)), "{err:?}");
    let ApiError::Unavailable(reason) = err else {
        unreachable!()
    };
    assert!(!reason.contains(PASSWORD), "{reason}");
}

#[tokio::test]
async fn a_stalled_server_past_the_request_timeout_is_unavailable() {
    let (emulator, _api, _token) = setup().await;
    let api = HttpResourceApi::new(
        &emulator.base_url(),
        HttpApiOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_millis(300),
        },
    )
    .unwrap();
    emulator.stall_next(Route::Login, 1, Duration::from_secs(3));
    let started = std::time::Instant::now();
    let err = api.login(&credentials(PASSWORD)).await.unwrap_err();
    assert!(matches!(err, ApiError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // A stall shorter than the timeout only slows the call down.
    emulator.stall_next(Route::Login, 1, Duration::from_millis(50));
    assert!(api.login(&credentials(PASSWORD)).await.is_ok());
}

#[tokio::test]
async fn a_shut_down_emulator_refuses_connections() {
    let (emulator, api, _token) = setup().await;
    emulator.shutdown();
    emulator.stopped().await;
    let fresh = self::api(&emulator.base_url());
    let err = fresh.login(&credentials(PASSWORD)).await.unwrap_err();
    assert!(matches!(err, ApiError::Unavailable(_)), "{err:?}");
    drop(api);
}

#[tokio::test]
async fn an_oversized_answer_is_refused_as_unexpected() {
    let (emulator, api, token) = setup().await;
    emulator.put_file(Some("models"), "huge.small", vec![0u8; 17 * 1024 * 1024]);
    let err = api
        .get_resource(
            &token,
            Some(&folder("models")),
            "huge.small",
            &password(),
            HARDWARE,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Unexpected(_)), "{err:?}");
}

/// A raw HTTP/1.1 response with the right length, closing the connection.
fn raw_response(status_line: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status_line}\r\n{extra_headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A server that answers every connection with the same raw HTTP response.
async fn canned_server(response: String) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let response: std::sync::Arc<str> = response.into();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_login_answer_without_a_token_is_unexpected() {
    let json = "content-type: application/json\r\n";
    for response in [
        raw_response("200 OK", json, r#"{"nope": 1}"#),
        raw_response("200 OK", json, r#"{"token": ""}"#),
        raw_response("200 OK", json, r#"{"token": 42}"#),
        raw_response("200 OK", "content-type: text/html\r\n", "<html>"),
    ] {
        let api = api(&canned_server(response.clone()).await);
        let err = api.login(&credentials(PASSWORD)).await.unwrap_err();
        assert!(
            matches!(err, ApiError::Unexpected(_)),
            "{err:?} for {response}"
        );
    }
}

#[tokio::test]
async fn an_empty_key_fragment_is_unexpected() {
    let base = canned_server(raw_response("200 OK", "", "")).await;
    let err = api(&base)
        .key_fragment(&SecretString::new("token"))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Unexpected(_)), "{err:?}");
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let base = canned_server(raw_response(
        "307 Temporary Redirect",
        "location: http://127.0.0.1:1/login\r\n",
        "",
    ))
    .await;
    assert_eq!(
        api(&base).login(&credentials(PASSWORD)).await.unwrap_err(),
        ApiError::Upstream { status: 307 }
    );
}

#[tokio::test]
async fn the_emulator_answers_malformed_requests_like_the_real_api() {
    let (emulator, _api, token) = setup().await;
    let http = reqwest::Client::new();
    let base = emulator.base_url();
    let login = |body: serde_json::Value| http.post(format!("{base}/login")).json(&body).send();
    assert_eq!(
        login(serde_json::json!({"email": EMAIL}))
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        login(serde_json::json!({"email": EMAIL, "password": "x"}))
            .await
            .unwrap()
            .status(),
        409
    );
    // No token: 401 before the body is even read.
    let no_token = http
        .post(format!("{base}/resources/get/"))
        .body("garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    let no_file_name = http
        .post(format!("{base}/resources/get/models"))
        .bearer_auth(token.expose())
        .json(&serde_json::json!({"password": PASSWORD, "hardware": HARDWARE}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_file_name.status(), 400);
    let no_data_field = http
        .post(format!("{base}/resources/models"))
        .bearer_auth(token.expose())
        .multipart(reqwest::multipart::Form::new().text("folder", "models"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_data_field.status(), 400);
    assert!(emulator.bound_hardware(EMAIL).is_none());
}
