//! `POST /upload/{filename}`: a multipart form with a file field `data` and a
//! text field `folder`, in either order. With `folder` first the file streams
//! straight into the upload; with `data` first it is held, encrypted, in an
//! unnamed spool file until the folder is known. The rest of the form is
//! checked before the upload is allowed to finish, so a malformed form
//! stores nothing.

use std::io;

use axum::Json;
use axum::extract::multipart::{Field, Multipart, MultipartRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::openapi::{ErrorBody, OkBody, UploadForm};
use super::{HttpError, path_name};
use crate::app::AppState;
use crate::app::spool::Spool;
use crate::domain::names::{Folder, ResourceName};
use crate::ports::ByteStream;

/// A `folder` text field longer than this is not a folder.
const FOLDER_FIELD_MAX: usize = 1024;
/// A form needs two fields; past this many it is not an upload form.
const FORM_FIELDS_MAX: usize = 16;

fn bad(detail: impl Into<String>) -> HttpError {
    HttpError::new(StatusCode::BAD_REQUEST, detail)
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> HttpError {
    bad(format!("malformed multipart body: {}", e.body_text()))
}

async fn read_folder(mut field: Field<'_>) -> Result<Folder, HttpError> {
    let mut text = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        text.extend_from_slice(&chunk);
        if text.len() > FOLDER_FIELD_MAX {
            return Err(bad("the folder field is too long"));
        }
    }
    let text = String::from_utf8(text).map_err(|_| bad("the folder field is not UTF-8"))?;
    Ok(Folder::parse(text.trim())?)
}

fn channel_stream(rx: mpsc::Receiver<io::Result<Bytes>>) -> ByteStream {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

async fn drain(mut field: Field<'_>) -> Result<(), HttpError> {
    let mut seen = 0usize;
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        seen += chunk.len();
        if seen > FOLDER_FIELD_MAX {
            return Err(bad("the form holds an unexpected large field"));
        }
    }
    Ok(())
}

fn server_error(status: StatusCode, what: &str, e: io::Error) -> HttpError {
    HttpError::new(status, format!("{what}: {e}"))
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
        (status = 400, description = "A bad file name or folder, or a malformed form: not multipart, no or several folder or data fields, an oversized text field", body = ErrorBody),
        (status = 401, description = "Not logged in, or the API refused the stored credentials again after a re-login", body = ErrorBody),
        (status = 403, description = "The API refused this device's fingerprint", body = ErrorBody),
        (status = 404, description = "The CDN has no bucket of that folder (the loader never creates one)", body = ErrorBody),
        (status = 500, description = "The device's hardware cannot be read, or the upload cannot be held", body = ErrorBody),
        (status = 502, description = "The API or the CDN failed", body = ErrorBody),
        (status = 503, description = "The API or the CDN is unreachable", body = ErrorBody),
        (status = 507, description = "No room to hold an upload whose data came before its folder", body = ErrorBody),
    )
)]
pub async fn upload(
    State(state): State<AppState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<OkBody>, HttpError> {
    let multipart = multipart.map_err(|e| {
        bad(format!(
            "expected a multipart/form-data body: {}",
            e.body_text()
        ))
    })?;
    let name = ResourceName::parse(&path_name(path)?)?;
    let (start_tx, start_rx) = oneshot::channel::<(Folder, ByteStream)>();
    let reader = read_form(&state, multipart, start_tx);
    let uploader = async {
        match start_rx.await {
            Ok((folder, stream)) => Some(state.resources.upload(&folder, &name, stream).await),
            Err(_) => None,
        }
    };
    let (read, uploaded) = tokio::join!(reader, uploader);
    read?;
    match uploaded {
        Some(result) => {
            result?;
            Ok(Json(OkBody::ok()))
        }
        None => Err(bad("the form has no data field")),
    }
}

/// Reads the form. Hands the upload its folder and byte stream as soon as both
/// are known; a problem found later is sent down the stream so the upload fails.
async fn read_form(
    state: &AppState,
    mut multipart: Multipart,
    start: oneshot::Sender<(Folder, ByteStream)>,
) -> Result<(), HttpError> {
    let mut folder: Option<Folder> = None;
    let mut spool: Option<Spool> = None;
    let mut streaming: Option<mpsc::Sender<io::Result<Bytes>>> = None;
    let mut start = Some(start);

    let outcome: Result<(), HttpError> = async {
        let mut fields = 0usize;
        while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
            fields += 1;
            if fields > FORM_FIELDS_MAX {
                return Err(bad("the form holds too many fields"));
            }
            match field.name() {
                Some("folder") if folder.is_some() => {
                    return Err(bad("the form holds more than one folder field"));
                }
                Some("folder") => folder = Some(read_folder(field).await?),
                Some("data") if spool.is_some() || streaming.is_some() => {
                    return Err(bad("the form holds more than one data field"));
                }
                Some("data") => {
                    if let Some(folder) = folder.clone() {
                        // Streaming: the login is checked before a byte is read.
                        state.session.session()?;
                        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
                        if let Some(start) = start.take() {
                            let _ = start.send((folder, channel_stream(rx)));
                        }
                        // Kept outside this block before the first read: should the form
                        // break off midway, the error must go down the stream (below), or
                        // the upload would see a clean end and store a truncated resource.
                        let tx = streaming.insert(tx);
                        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                            if tx.send(Ok(chunk)).await.is_err() {
                                break; // the upload gave up; its error is reported
                            }
                        }
                    } else {
                        let mut held = Spool::new_in(&state.cache_dir).map_err(|e| {
                            server_error(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "cannot hold the upload",
                                e,
                            )
                        })?;
                        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                            held.write(&chunk).await.map_err(|e| {
                                server_error(
                                    StatusCode::INSUFFICIENT_STORAGE,
                                    "cannot hold the upload",
                                    e,
                                )
                            })?;
                        }
                        spool = Some(held);
                    }
                }
                _ => drain(field).await?,
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
    state.session.session()?;
    let stream = spool.into_stream().await.map_err(|e| {
        server_error(
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
