//! The emulator's HTTP routes (PROTOCOL §2). Each handler first applies any
//! injected fault, then checks the token, then the body; it never logs a
//! password, a token or a key.

use std::sync::Arc;

use axum::Router;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Deserialize;

use super::jwt::{self, TokenClaims};
use super::{Fault, Route, Shared, now_secs};
use crate::domain::cipher::{self, IV_LEN};
use crate::domain::keys::{AesKey, api_key, hardware_hash};
use crate::domain::secret::SecretString;

/// Uploads are small parts (at most 3 KiB), but the emulator also backs the
/// dev stack and tests: allow generous bodies.
const BODY_LIMIT: usize = 64 * 1024 * 1024;

type AppState = State<Arc<Shared>>;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/login", post(login))
        .route("/resources/get/", post(get_root_resource))
        .route("/resources/get/{folder}", post(get_folder_resource))
        .route("/resources/{folder}", post(put_resource))
        .route("/binary-split/key-fragment", get(key_fragment))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(shared)
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "message": message })),
    )
        .into_response()
}

fn octet_stream(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        body,
    )
        .into_response()
}

/// Counts the call and applies the next injected fault of the route:
/// `Some(response)` for a failure, after waiting out a stall `None`.
async fn enter(shared: &Shared, route: Route) -> Option<Response> {
    let fault = {
        let mut state = shared.lock();
        *state.calls.entry(route).or_default() += 1;
        state
            .faults
            .get_mut(&route)
            .and_then(|queue| queue.pop_front())
    };
    match fault {
        Some(Fault::Fail(status)) => Some(error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "injected failure",
        )),
        Some(Fault::Stall(delay)) => {
            tokio::time::sleep(delay).await;
            None
        }
        None => None,
    }
}

/// The claims of a valid, unexpired, unrevoked bearer token of a known user.
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Option<TokenClaims> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)?;
    let claims = jwt::verify(&shared.jwt_secret, token, now_secs())?;
    let state = shared.lock();
    let serial_ok = claims
        .serial()
        .is_some_and(|serial| serial >= state.revoked_below);
    (serial_ok && state.users.contains_key(&claims.unique_name)).then_some(claims)
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "missing, invalid or expired token",
    )
}

#[derive(Deserialize)]
struct LoginBody {
    email: Option<String>,
    password: Option<SecretString>,
}

async fn login(State(shared): AppState, body: Bytes) -> Response {
    if let Some(response) = enter(&shared, Route::Login).await {
        return response;
    }
    let Ok(LoginBody {
        email: Some(email),
        password: Some(password),
    }) = serde_json::from_slice(&body)
    else {
        return error(StatusCode::BAD_REQUEST, "email and password are required");
    };
    let issued = {
        let mut state = shared.lock();
        let Some(user_id) = state
            .users
            .get(&email)
            .filter(|user| user.password == password)
            .map(|user| user.id)
        else {
            return error(StatusCode::CONFLICT, "wrong email or password");
        };
        let serial = state.next_token_serial;
        state.next_token_serial += 1;
        TokenClaims {
            nameid: user_id.to_string(),
            unique_name: email,
            role: "ApiAdmin".to_owned(),
            exp: now_secs().saturating_add(state.token_ttl.as_secs()),
            jti: serial.to_string(),
        }
    };
    match jwt::issue(&shared.jwt_secret, &issued) {
        Ok(token) => axum::Json(serde_json::json!({ "token": token })).into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "cannot sign the token"),
    }
}

#[derive(Deserialize)]
struct GetResourceBody {
    password: Option<SecretString>,
    hardware: Option<String>,
    #[serde(rename = "fileName")]
    file_name: Option<String>,
}

async fn get_root_resource(state: AppState, headers: HeaderMap, body: Bytes) -> Response {
    get_resource(state, String::new(), headers, body).await
}

async fn get_folder_resource(
    state: AppState,
    Path(folder): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    get_resource(state, folder, headers, body).await
}

async fn get_resource(
    State(shared): AppState,
    folder: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(response) = enter(&shared, Route::GetResource).await {
        return response;
    }
    let Some(claims) = authenticate(&shared, &headers) else {
        return unauthorized();
    };
    let Ok(GetResourceBody {
        password: Some(password),
        hardware: Some(hardware),
        file_name: Some(file_name),
    }) = serde_json::from_slice(&body)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "password, hardware and fileName are required",
        );
    };
    let email = claims.unique_name;
    let plaintext = {
        let mut state = shared.lock();
        let Some(user) = state.users.get_mut(&email) else {
            return unauthorized();
        };
        if user.password != password {
            return error(StatusCode::CONFLICT, "wrong password");
        }
        match &user.hardware {
            None => user.hardware = Some(hardware.clone()),
            Some(bound) if *bound != hardware => {
                return error(
                    StatusCode::CONFLICT,
                    "hardware mismatch: the user is bound to another device",
                );
            }
            Some(_) => {}
        }
        let Some(plaintext) = state.files.get(&(folder, file_name)).cloned() else {
            return error(StatusCode::NOT_FOUND, "no such file");
        };
        plaintext
    };
    let key = AesKey::from_key_string(&api_key(&email, &password, &hardware_hash(&hardware)));
    let mut iv = [0u8; IV_LEN];
    if getrandom::fill(&mut iv).is_err() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no randomness for the IV",
        );
    }
    octet_stream(cipher::encrypt(&key, iv, &plaintext))
}

async fn put_resource(
    State(shared): AppState,
    Path(folder): Path<String>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    if let Some(response) = enter(&shared, Route::PutResource).await {
        return response;
    }
    if authenticate(&shared, &headers).is_none() {
        return unauthorized();
    }
    let Ok(mut multipart) = multipart else {
        return error(StatusCode::BAD_REQUEST, "multipart/form-data expected");
    };
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => return error(StatusCode::BAD_REQUEST, "no file field 'data'"),
            Err(_) => return error(StatusCode::BAD_REQUEST, "malformed multipart body"),
        };
        if field.name() != Some("data") {
            continue;
        }
        let Some(name) = field
            .file_name()
            .map(str::to_owned)
            .filter(|n| !n.is_empty())
        else {
            return error(StatusCode::BAD_REQUEST, "the field 'data' has no file name");
        };
        let Ok(bytes) = field.bytes().await else {
            return error(StatusCode::BAD_REQUEST, "malformed multipart body");
        };
        shared.lock().files.insert((folder, name), bytes);
        return StatusCode::OK.into_response();
    }
}

async fn key_fragment(State(shared): AppState, headers: HeaderMap) -> Response {
    if let Some(response) = enter(&shared, Route::KeyFragment).await {
        return response;
    }
    if authenticate(&shared, &headers).is_none() {
        return unauthorized();
    }
    let fragment = shared.lock().key_fragment.clone();
    if fragment.is_empty() {
        return error(StatusCode::NOT_FOUND, "no key fragment configured");
    }
    octet_stream(fragment)
}
