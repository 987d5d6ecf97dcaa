//! `POST /upload/{filename}`: a multipart form with a file field `data` and a
//! text field `folder`, in either order. With `folder` first the file streams
//! straight into the upload; with `data` first it is held, encrypted, in an
//! unnamed spool file until the folder is known. The rest of the form is
//! checked before the upload is allowed to finish, so a malformed form
//! stores nothing.
//!
//! Before a byte of the body is read (PROTOCOL §5.3): the name, the login,
//! the declared size and free space, and a transfer slot. While it is read:
//! the size, the pauses and the multipart shape ([`super::form_guard`]), and
//! multer's constraints (only `folder` and `data`, `folder` at most 1 KiB).

use std::io;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::AppState;
use super::form_guard::{BODY_IDLE, FormViolation, GuardedBody, ViolationSlot};
use super::openapi::{ErrorBody, OkBody, UploadForm};
use super::spool::{Spool, SpoolError};
use super::{HttpError, path_name};
use crate::domain::names::{Folder, ResourceName};
use crate::ports::ByteStream;

/// A `folder` text field longer than this is not a folder.
const FOLDER_FIELD_MAX: u64 = 1024;

/// What an upload may take (PROTOCOL §5.3).
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    /// Largest upload accepted, by its declared length or what arrives.
    pub max_upload_bytes: u64,
    /// Free space the spool and the cache leave on their file system.
    pub min_free_bytes: u64,
}

fn bad(detail: impl Into<String>) -> HttpError {
    HttpError::new(StatusCode::BAD_REQUEST, detail)
}

/// A parser error, answered for what caused it: a guard's cut-off has its
/// own status (413, 408, 400), anything else is a malformed form.
fn form_error(e: multer::Error, violation: &ViolationSlot) -> HttpError {
    let cut = violation.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match cut {
        Some(v @ FormViolation::TooLarge(_)) => {
            HttpError::new(StatusCode::PAYLOAD_TOO_LARGE, v.to_string())
        }
        Some(v @ FormViolation::Idle(_)) => {
            HttpError::new(StatusCode::REQUEST_TIMEOUT, v.to_string())
        }
        Some(v) => bad(format!("malformed multipart body: {v}")),
        None => match e {
            multer::Error::UnknownField { field_name } => bad(format!(
                "the form may hold only the fields folder and data, not {}",
                field_name.as_deref().unwrap_or("an unnamed field")
            )),
            multer::Error::FieldSizeExceeded { .. } => bad("the folder field is too long"),
            other => bad(format!("malformed multipart body: {other}")),
        },
    }
}

async fn read_folder(
    mut field: multer::Field<'_>,
    violation: &ViolationSlot,
) -> Result<Folder, HttpError> {
    let mut text = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| form_error(e, violation))? {
        text.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(text).map_err(|_| bad("the folder field is not UTF-8"))?;
    Ok(Folder::parse(text.trim())?)
}

fn channel_stream(rx: mpsc::Receiver<io::Result<Bytes>>) -> ByteStream {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn no_room(floor: u64) -> HttpError {
    HttpError::new(
        StatusCode::INSUFFICIENT_STORAGE,
        format!(
            "no room for this upload: it would leave less than {floor} bytes free (MODEL_CACHE_MIN_FREE_BYTES)"
        ),
    )
}

/// Encrypts, splits and stores a resource: big part in the CDN and the local
/// cache, small part at the API.
#[utoipa::path(
    post,
    path = "/upload/{filename}",
    tag = "loader",
    params(("filename" = String, Path, min_length = 1, max_length = 200, pattern = "^[A-Za-z0-9._-]{1,200}$", example = "upload.bin",
        description = "The resource: 1-200 bytes of A-Z a-z 0-9 . _ -, not . or ..")),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Stored in the CDN, the local cache and the API", body = OkBody),
        (status = 400, description = "A bad file name or folder, or a malformed form: not multipart, no or several folder or data fields, a field other than folder and data, a folder over 1 KiB, no boundary or an unfinished part header within 64 KiB", body = ErrorBody),
        (status = 401, description = "Not logged in (checked before any byte of the body is read), or the API refused the stored credentials again after a re-login", body = ErrorBody),
        (status = 403, description = "The API refused this device's fingerprint", body = ErrorBody),
        (status = 404, description = "The CDN has no bucket of that folder (the loader never creates one)", body = ErrorBody),
        (status = 408, description = "The client sent nothing for 30 s", body = ErrorBody),
        (status = 413, description = "The body is larger than LOADER_MAX_UPLOAD_BYTES (declared or as it streams)", body = ErrorBody),
        (status = 500, description = "The device's hardware cannot be read, or the upload cannot be held", body = ErrorBody),
        (status = 502, description = "The API or the CDN failed", body = ErrorBody),
        (status = 503, description = "The API or the CDN is unreachable, or LOADER_MAX_TRANSFERS transfers are in progress (with Retry-After)", body = ErrorBody),
        (status = 507, description = "The upload would leave less than MODEL_CACHE_MIN_FREE_BYTES free", body = ErrorBody),
    )
)]
pub async fn upload(
    State(state): State<AppState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<OkBody>, HttpError> {
    // Shape, name and login come before any byte of the body (§5, §5.3).
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        bad("expected a multipart/form-data body with a boundary (Content-Type: multipart/form-data; boundary=...)")
    })?;
    let name = ResourceName::parse(&path_name(path)?)?;
    state.session.require_login()?;
    let limits = &state.uploads;
    if let Some(declared) = declared_length(&headers) {
        if declared > limits.max_upload_bytes {
            return Err(HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                FormViolation::TooLarge(limits.max_upload_bytes).to_string(),
            ));
        }
        // The body needs its size on disk once (a spool or the cache's copy).
        match crate::adapters::disk::room_for(&state.cache_dir, declared, limits.min_free_bytes) {
            Ok(true) => {}
            Ok(false) => return Err(no_room(limits.min_free_bytes)),
            Err(e) => tracing::warn!("cannot read the cache's free space: {e}"),
        }
    }
    let slot = state.resources.transfer_slot().await?;

    // Listed by its name (the folder is a form field) and the body's bytes.
    let transfer = state.transfers.start(
        "upload",
        name.as_str().to_owned(),
        declared_length(&headers),
    );
    let counted = futures::StreamExt::inspect(body.into_data_stream(), move |chunk| {
        if let Ok(bytes) = chunk {
            transfer.add(bytes.len() as u64);
        }
    });
    let (guarded, violation) =
        GuardedBody::new(counted, &boundary, limits.max_upload_bytes, BODY_IDLE);
    let constraints = multer::Constraints::new()
        .allowed_fields(vec!["folder", "data"])
        .size_limit(multer::SizeLimit::new().for_field("folder", FOLDER_FIELD_MAX));
    let multipart = multer::Multipart::with_constraints(guarded, boundary, constraints);

    let (start_tx, start_rx) = oneshot::channel::<(Folder, ByteStream)>();
    let reader = read_form(&state, multipart, &violation, start_tx);
    let uploader = async {
        match start_rx.await {
            Ok((folder, stream)) => Some(state.resources.upload(&folder, &name, stream).await),
            Err(_) => None,
        }
    };
    let (read, uploaded) = tokio::join!(reader, uploader);
    drop(slot);
    read?;
    match uploaded {
        Some(result) => {
            let stored = result?;
            state.metrics.add_upload_bytes(stored);
            tracing::info!(bytes = stored, "stored");
            Ok(Json(OkBody::ok()))
        }
        None => Err(bad("the form has no data field")),
    }
}

/// Reads the form. Hands the upload its folder and byte stream as soon as both
/// are known; a problem found later is sent down the stream so the upload fails.
async fn read_form(
    state: &AppState,
    mut multipart: multer::Multipart<'static>,
    violation: &ViolationSlot,
    start: oneshot::Sender<(Folder, ByteStream)>,
) -> Result<(), HttpError> {
    let mut folder: Option<Folder> = None;
    let mut spool: Option<Spool> = None;
    let mut streaming: Option<mpsc::Sender<io::Result<Bytes>>> = None;
    let mut start = Some(start);
    let form_error = |e| form_error(e, violation);

    let outcome: Result<(), HttpError> = async {
        while let Some(mut field) = multipart.next_field().await.map_err(form_error)? {
            match field.name() {
                Some("folder") if folder.is_some() => {
                    return Err(bad("the form holds more than one folder field"));
                }
                Some("folder") => folder = Some(read_folder(field, violation).await?),
                Some("data") if spool.is_some() || streaming.is_some() => {
                    return Err(bad("the form holds more than one data field"));
                }
                Some("data") => {
                    if let Some(folder) = folder.clone() {
                        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
                        if let Some(start) = start.take() {
                            let _ = start.send((folder, channel_stream(rx)));
                        }
                        // Kept outside this block before the first read: should the form
                        // break off midway, the error must go down the stream (below), or
                        // the upload would see a clean end and store a truncated resource.
                        let tx = streaming.insert(tx);
                        while let Some(chunk) = field.chunk().await.map_err(form_error)? {
                            if tx.send(Ok(chunk)).await.is_err() {
                                break; // the upload gave up; its error is reported
                            }
                        }
                    } else {
                        let floor = state.uploads.min_free_bytes;
                        let room = state.resources.upload_room();
                        let mut held =
                            Spool::new_in(&state.cache_dir, floor, room).map_err(|e| {
                                HttpError::server(
                                    StatusCode::INTERNAL_SERVER_ERROR,
                                    "cannot hold the upload",
                                    e,
                                )
                            })?;
                        while let Some(chunk) = field.chunk().await.map_err(form_error)? {
                            held.write(&chunk).await.map_err(|e| match e {
                                SpoolError::NoRoom(floor) => no_room(floor),
                                SpoolError::Io(e) => HttpError::server(
                                    StatusCode::INSUFFICIENT_STORAGE,
                                    "cannot hold the upload",
                                    e,
                                ),
                            })?;
                        }
                        spool = Some(held);
                    }
                }
                // multer refuses any other field name (its constraints).
                _ => return Err(bad("the form holds a field without a name")),
            }
        }
        Ok(())
    }
    .await;

    if let Some(tx) = streaming {
        // The stream ends cleanly only if the whole form was well-formed.
        if let Err(e) = &outcome {
            let _ = tx.send(Err(io::Error::other(e.detail.clone()))).await;
        }
        return outcome;
    }
    outcome?;
    let folder = folder.ok_or_else(|| bad("the form has no folder field"))?;
    let spool = spool.ok_or_else(|| bad("the form has no data field"))?;
    state.session.require_login()?;
    let stream = spool.into_stream().await.map_err(|e| {
        HttpError::server(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the held upload",
            e,
        )
    })?;
    if let Some(start) = start.take() {
        let _ = start.send((folder, stream));
    }
    Ok(())
}
