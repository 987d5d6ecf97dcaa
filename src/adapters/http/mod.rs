//! The loader's own HTTP API (PROTOCOL §5), served with axum. Validates
//! shapes and names before any I/O, maps every error to a status and a
//! `{"detail": ...}` body in one place, and never puts a secret in a body.

mod error;
mod upload;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub use error::HttpError;

use crate::app::AppState;
use crate::domain::names::{Folder, ResourceName};
use crate::domain::secret::SecretString;
use crate::ports::Credentials;

/// JSON bodies are small; uploads have their own (streaming) route.
const JSON_BODY_LIMIT: usize = 64 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/login", post(login))
        .route("/load/{filename}", post(load))
        .route(
            "/upload/{filename}",
            post(upload::upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/unlock", post(unlock))
        .route("/unlock/status", get(unlock_status))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .with_state(state)
}

/// A JSON body whose rejections answer with the same `{"detail"}` shape.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> HttpError {
    let status = rejection.status();
    let detail = match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "expected a JSON body with Content-Type: application/json".to_owned()
        }
        JsonRejection::JsonSyntaxError(_) => "the body is not valid JSON".to_owned(),
        JsonRejection::JsonDataError(e) => format!(
            "the JSON body does not have the expected fields: {}",
            e.body_text()
        ),
        other => other.body_text(),
    };
    HttpError::new(status, detail)
}

async fn health() -> Json<Value> {
    Json(json!({"status": "healthy"}))
}

async fn status(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "healthy",
        "authenticated": state.session.is_authenticated(),
        "modelCacheDir": state.cache_dir.display().to_string(),
    }))
}

#[derive(Deserialize)]
struct CredentialsBody {
    email: String,
    password: SecretString,
}

impl From<CredentialsBody> for Credentials {
    fn from(body: CredentialsBody) -> Self {
        Credentials {
            email: body.email,
            password: body.password,
        }
    }
}

async fn login(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CredentialsBody>,
) -> Result<Json<Value>, HttpError> {
    state.session.login(body.into()).await?;
    Ok(Json(json!({"status": "ok"})))
}

#[derive(Deserialize)]
struct LoadBody {
    #[serde(default)]
    filename: Option<String>,
    folder: String,
}

fn path_name(
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<String, HttpError> {
    path.map(|Path(p)| p).map_err(|_| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            "the file name in the path is not valid",
        )
    })
}

async fn load(
    State(state): State<AppState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    JsonBody(body): JsonBody<LoadBody>,
) -> Result<Response, HttpError> {
    let filename = path_name(path)?;
    if let Some(in_body) = &body.filename
        && in_body != &filename
    {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "the filename in the body differs from the one in the path",
        ));
    }
    let name = ResourceName::parse(&filename)?;
    let folder = Folder::parse(&body.folder)?;
    let download = state.resources.download(&folder, &name).await?;
    let mut response = Response::new(Body::from_stream(download.plaintext));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

async fn unlock(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CredentialsBody>,
) -> Result<Json<Value>, HttpError> {
    let phase = state.unlock.start(body.into()).await?;
    Ok(Json(json!({"state": phase})))
}

async fn unlock_status(State(state): State<AppState>) -> Json<Value> {
    let status = state.unlock.status();
    Json(json!({
        "state": status.phase,
        "error": status.error,
        "progress": {
            "bytes_done": status.progress.bytes_done,
            "bytes_total": status.progress.bytes_total,
            "phase_elapsed_ms": status.progress.phase_elapsed.as_millis() as u64,
        },
    }))
}

async fn not_found() -> impl IntoResponse {
    HttpError::new(StatusCode::NOT_FOUND, "no such endpoint")
}
