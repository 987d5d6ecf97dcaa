//! The OpenAPI 3 document of the loader's HTTP API (`GET /openapi.json`),
//! generated from the handlers' own annotations and the body types below, so
//! it cannot drift from the code. It describes shapes only: never an example
//! credential, token or key.

use serde::{Deserialize, Serialize};
use utoipa::openapi::OpenApi as OpenApiDocument;
use utoipa::{OpenApi, ToSchema};

use crate::domain::secret::SecretString;
use crate::domain::unlock::UnlockPhase;

/// The body of every error: `{"detail": "<human-readable reason>"}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person; never a secret.
    pub detail: String,
}

/// `GET /health`.
#[derive(Serialize, ToSchema)]
pub struct HealthBody {
    /// Always `healthy` while the process serves.
    #[schema(example = "healthy")]
    pub status: String,
}

/// `GET /ready`: 200 with `ready: true` and nothing missing, or 503 with
/// what is missing.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadyBody {
    /// True when the loader can serve a model now.
    pub ready: bool,
    /// Each unmet condition; empty when ready.
    pub missing: Vec<MissingBody>,
}

/// One condition `GET /ready` found unmet.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MissingBody {
    /// `login`, `cache` or `unlock`.
    #[schema(example = "login")]
    pub check: String,
    /// What is wrong and what would fix it, for a person.
    pub detail: String,
}

/// `GET /status`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusBody {
    /// Always `healthy` while the process serves.
    #[schema(example = "healthy")]
    pub status: String,
    /// True while the loader holds a working session (token and CDN configuration).
    pub authenticated: bool,
    /// The cache folder in use, as an absolute path.
    pub model_cache_dir: String,
    /// The AES implementation this CPU runs: `aes-ni`, `armv8` or `software`.
    #[schema(example = "aes-ni")]
    pub crypto_backend: String,
}

/// `{"status": "ok"}` after a login or an upload.
#[derive(Serialize, ToSchema)]
pub struct OkBody {
    #[schema(example = "ok")]
    pub status: String,
}

impl OkBody {
    pub fn ok() -> Self {
        Self {
            status: "ok".to_owned(),
        }
    }
}

/// A state of the unlock (PROTOCOL §6).
// Mirrors the domain's `UnlockPhase` so the document can list the values;
// the exhaustive match in `From` keeps the two in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnlockState {
    Idle,
    Authenticating,
    DownloadingKey,
    Decrypting,
    LoadingImages,
    Ready,
    Error,
}

impl From<UnlockPhase> for UnlockState {
    fn from(phase: UnlockPhase) -> Self {
        match phase {
            UnlockPhase::Idle => Self::Idle,
            UnlockPhase::Authenticating => Self::Authenticating,
            UnlockPhase::DownloadingKey => Self::DownloadingKey,
            UnlockPhase::Decrypting => Self::Decrypting,
            UnlockPhase::LoadingImages => Self::LoadingImages,
            UnlockPhase::Ready => Self::Ready,
            UnlockPhase::Error => Self::Error,
        }
    }
}

/// `POST /unlock`: the state the unlock is in after the request.
#[derive(Serialize, ToSchema)]
pub struct UnlockStartBody {
    pub state: UnlockState,
}

/// Progress of the current unlock phase.
#[derive(Serialize, ToSchema)]
pub struct UnlockProgressBody {
    /// Archive bytes decrypted so far.
    pub bytes_done: u64,
    /// Size of the archive, once known.
    pub bytes_total: u64,
    /// Time spent in the current state.
    pub phase_elapsed_ms: u64,
}

/// `GET /unlock/status`.
#[derive(Serialize, ToSchema)]
pub struct UnlockStatusBody {
    pub state: UnlockState,
    /// Why the last run failed (in state `error`), else null.
    #[schema(required = true)]
    pub error: Option<String>,
    pub progress: UnlockProgressBody,
}

/// `GET /cache`: what the local cache of big parts holds.
#[derive(Serialize, ToSchema)]
pub struct CacheBody {
    pub usage: CacheUsageBody,
    /// The cached big parts, by folder and name.
    pub entries: Vec<CacheEntryBody>,
}

/// How much the cache holds, against its limit.
#[derive(Serialize, ToSchema)]
pub struct CacheUsageBody {
    /// Bytes of every cached big part together.
    pub bytes: u64,
    /// How many big parts are cached.
    pub entries: u64,
    /// The size limit in bytes; null when the cache is unlimited.
    #[schema(required = true)]
    pub limit: Option<u64>,
}

/// One cached big part (still encrypted).
#[derive(Serialize, ToSchema)]
pub struct CacheEntryBody {
    #[schema(example = "models")]
    pub folder: String,
    /// The resource it belongs to.
    #[schema(example = "demo.txt")]
    pub name: String,
    pub bytes: u64,
    /// When it was last written or served, in seconds since the Unix epoch.
    pub last_used_unix_secs: u64,
}

impl From<crate::ports::CachedEntry> for CacheEntryBody {
    fn from(e: crate::ports::CachedEntry) -> Self {
        Self {
            folder: e.folder,
            name: e.name,
            bytes: e.bytes,
            last_used_unix_secs: e
                .last_used
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// `POST /cache/prune`: at least one of the two.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneBody {
    /// Remove the least recently used entries until the cache holds at most this many bytes.
    pub max_bytes: Option<u64>,
    /// Remove the entries not used for this many seconds.
    pub unused_for_secs: Option<u64>,
}

/// What `POST /cache/prune` or `DELETE /cache/{folder}/{name}` removed.
#[derive(Serialize, ToSchema)]
pub struct RemovedBody {
    /// The removed entries, least recently used first.
    pub removed: Vec<CacheEntryBody>,
    /// Their bytes together.
    pub freed_bytes: u64,
}

/// One transfer in progress (`GET /transfers`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TransferBody {
    /// `load`, `prefetch` or `upload`.
    #[schema(example = "load")]
    pub kind: String,
    /// `folder/name` (an upload: its name until its folder field arrives).
    #[schema(example = "models/demo.txt")]
    pub resource: String,
    pub bytes_done: u64,
    /// Null when the length is not known ahead (a load from the CDN).
    #[schema(required = true)]
    pub bytes_total: Option<u64>,
    pub elapsed_ms: u64,
    /// Average since the start.
    pub rate_bytes_per_sec: u64,
}

/// `GET /transfers`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TransfersBody {
    /// Oldest first.
    pub transfers: Vec<TransferBody>,
}

/// What `POST /cache/verify` found.
#[derive(Serialize, ToSchema)]
pub struct VerifyBody {
    /// Entries whose every block was re-read.
    pub checked: u64,
    /// The damaged ones among them, now removed (a load would never have served them).
    pub damaged: Vec<CacheEntryBody>,
}

/// One line of `POST /prefetch/{filename}`'s answer (JSON lines, one per
/// update, `state` `done`, `cached` or `error` on the last).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct PrefetchLine {
    /// `fetching`, then `done`; `cached` when the entry was there already; `error`.
    #[schema(example = "fetching")]
    pub state: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Why it failed (`error` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `POST /login` and `POST /unlock`: the Resource API credentials.
#[derive(Deserialize, ToSchema)]
pub struct CredentialsBody {
    #[schema(example = "operator@example.com")]
    pub email: String,
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
}

/// `POST /load/{filename}`.
#[derive(Deserialize, ToSchema)]
pub struct LoadBody {
    /// The resource; must equal the path's file name when given.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[A-Za-z0-9._-]{1,200}$",
        example = "demo.txt"
    )]
    pub filename: Option<String>,
    /// The folder (an S3 bucket name).
    #[schema(
        min_length = 3,
        max_length = 63,
        pattern = "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        example = "models"
    )]
    pub folder: String,
}

/// The bytes of a resource, as `POST /load` streams them.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary, content_media_type = "application/octet-stream")]
#[allow(dead_code)] // describes the stream; the handler never builds one
pub struct ResourceBytes(Vec<u8>);

/// `POST /upload/{filename}`: a multipart form, fields in either order
/// (`folder` first lets the loader stream the file without holding it).
#[derive(ToSchema)]
#[allow(dead_code)] // describes the form; the handler reads it field by field
pub struct UploadForm {
    /// The folder (an S3 bucket name that must already exist in the CDN).
    #[schema(
        min_length = 3,
        max_length = 63,
        pattern = "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        example = "models"
    )]
    pub folder: String,
    /// The resource's bytes.
    #[schema(value_type = String, format = Binary, content_media_type = "application/octet-stream")]
    pub data: Vec<u8>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Azaion Loader",
        description = "Serves split, encrypted AI models to local clients and unlocks the device's \
                       Docker images (PROTOCOL §5). Every error answers `{\"detail\": \"...\"}`."
    ),
    paths(
        super::health,
        super::ready,
        super::status,
        super::login,
        super::load,
        super::upload::upload,
        super::unlock,
        super::unlock_status,
        super::page::cache,
        super::manage::prefetch,
        super::manage::remove_entry,
        super::manage::prune,
        super::manage::verify,
        super::transfers_list,
        super::page::status_page,
        super::observe::metrics,
        openapi_json,
    ),
    components(schemas(
        ErrorBody,
        HealthBody,
        ReadyBody,
        MissingBody,
        StatusBody,
        OkBody,
        UnlockState,
        UnlockStartBody,
        UnlockProgressBody,
        UnlockStatusBody,
        CacheBody,
        CacheUsageBody,
        CacheEntryBody,
        PruneBody,
        RemovedBody,
        VerifyBody,
        TransferBody,
        TransfersBody,
        PrefetchLine,
        CredentialsBody,
        LoadBody,
        UploadForm,
        ResourceBytes,
    ))
)]
pub struct ApiDoc;

/// The document, built from the annotations at each call (cheap, and never stale).
pub fn document() -> OpenApiDocument {
    ApiDoc::openapi()
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI document of this API", content_type = "application/json", body = Object))
)]
pub async fn openapi_json() -> axum::Json<OpenApiDocument> {
    axum::Json(document())
}
