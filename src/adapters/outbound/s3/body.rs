//! A GetObject answer as the port's [`ObjectBody`]: its announced length, ETag and
//! small-part tag, and the SDK body as a byte stream that fails when the CDN stalls and
//! hands on chunks that arrived together as one.

use std::io;
use std::time::Duration;

use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::store::small_sha256_of;
use crate::domain::names::Folder;
use crate::ports::{ByteStream, ObjectBody, StoreError};

/// A GetObject answer as a body: its announced length, ETag and bytes; the bytes stop with
/// `TimedOut` when none come for `idle`.
pub(super) fn object_body(
    output: GetObjectOutput,
    bucket: &Folder,
    key: &str,
    idle: Duration,
) -> Result<ObjectBody, StoreError> {
    let len = output
        .content_length()
        .and_then(|len| u64::try_from(len).ok())
        .ok_or_else(|| {
            StoreError::Unexpected(format!(
                "GetObject {bucket}/{key} answered without a content length"
            ))
        })?;
    Ok(ObjectBody {
        len,
        version: output.e_tag().map(str::to_owned),
        small_sha256: small_sha256_of(output.metadata()),
        tail: None,
        stream: body_stream(output.body, idle),
    })
}

/// At most this many chunks that arrived together are joined into one.
const GATHER_READY: usize = 64;

/// Adapts the SDK body to the port's stream, chunk by chunk; a chunk that takes longer than
/// `idle` to arrive ends the stream with `TimedOut`.
fn body_stream(body: SdkByteStream, idle: Duration) -> ByteStream {
    Box::pin(
        timed_body(body, idle)
            .ready_chunks(GATHER_READY)
            .flat_map(|ready| futures::stream::iter(gather(ready))),
    )
}

/// The body's chunks as they come, ending in an error if none comes for `idle`.
fn timed_body(
    body: SdkByteStream,
    idle: Duration,
) -> impl futures::Stream<Item = io::Result<Bytes>> {
    futures::stream::unfold(Some(body), move |body| async move {
        let mut body = body?;
        match tokio::time::timeout(idle, body.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(body))),
            Ok(Some(Err(err))) => Some((Err(io::Error::from(err)), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the CDN stopped sending the object",
                )),
                None,
            )),
        }
    })
}

/// Joins chunks that were ready at once into one (an error stays last), so
/// the decryption, the cache and the client see a few large chunks instead of
/// the many small ones a local server hands over: per-chunk costs (a task
/// wake-up, a write call) are paid per 100s of KiB, not per 4 KiB. Chunks
/// are never held back waiting for more.
fn gather(ready: Vec<io::Result<Bytes>>) -> Vec<io::Result<Bytes>> {
    if ready.len() <= 1 {
        return ready;
    }
    let mut out = Vec::with_capacity(2);
    // Sized once: growing by doubling would copy the bytes again and again,
    // and leave up to twice their size allocated behind the frozen chunk.
    let size = ready
        .iter()
        .map_while(|item| item.as_ref().ok().map(Bytes::len))
        .sum();
    let mut joined = BytesMut::with_capacity(size);
    for item in ready {
        match item {
            Ok(chunk) => joined.extend_from_slice(&chunk),
            Err(e) => {
                if !joined.is_empty() {
                    out.push(Ok(joined.split().freeze()));
                }
                out.push(Err(e));
            }
        }
    }
    if !joined.is_empty() {
        out.push(Ok(joined.freeze()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_joins_ready_chunks_in_order_and_keeps_an_error_last() {
        let ok = |s: &str| Ok(Bytes::copy_from_slice(s.as_bytes()));
        let texts = |v: Vec<io::Result<Bytes>>| -> Vec<Result<String, String>> {
            v.into_iter()
                .map(|r| {
                    r.map(|b| String::from_utf8(b.to_vec()).unwrap())
                        .map_err(|e| e.to_string())
                })
                .collect()
        };
        assert_eq!(texts(gather(vec![])), vec![]);
        assert_eq!(texts(gather(vec![ok("one")])), vec![Ok("one".to_owned())]);
        assert_eq!(
            texts(gather(vec![ok("ab"), ok("cd"), ok("e")])),
            vec![Ok("abcde".to_owned())]
        );
        let cut = || Err(io::Error::other("cut"));
        assert_eq!(
            texts(gather(vec![ok("ab"), ok("cd"), cut()])),
            vec![Ok("abcd".to_owned()), Err("cut".to_owned())]
        );
        assert_eq!(texts(gather(vec![cut()])), vec![Err("cut".to_owned())]);
    }
}
