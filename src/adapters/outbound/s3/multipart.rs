//! A long body goes up as an S3 multipart upload: [`PartReader`] cuts the stream into
//! parts, up to `parallel_parts` of them go up at once while the next is read, and an
//! upload that fails or is dropped half way is aborted (its parts in flight with it).

use std::io;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::errors::{Failure, Op, body_failed};
use super::store::{S3ObjectStore, len_i64, metadata_of};
use crate::domain::names::Folder;
use crate::ports::{ByteStream, StoreError};

/// The smallest part S3 accepts in a multipart upload (all but the last part).
pub(super) const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// S3 allows at most this many parts in one multipart upload.
const MAX_PARTS: i32 = 10_000;

impl S3ObjectStore {
    pub(super) async fn put_multipart(
        &self,
        bucket: &Folder,
        key: &str,
        first: Bytes,
        mut parts: PartReader,
        small_sha256: Option<&str>,
    ) -> Result<(), StoreError> {
        let created = self
            .uploader
            .create_multipart_upload()
            .bucket(bucket.as_str())
            .key(key)
            .set_metadata(metadata_of(small_sha256))
            .send()
            .await
            .map_err(|err| Failure::from_sdk(err).into_store_error(Op::Put, bucket, key))?;
        let upload_id = created.upload_id().map(str::to_owned).ok_or_else(|| {
            StoreError::Unexpected(format!(
                "CreateMultipartUpload {bucket}/{key} answered without an upload id"
            ))
        })?;
        let mut guard = AbortOnDrop {
            client: self.uploader.clone(),
            bucket: bucket.as_str().to_owned(),
            key: key.to_owned(),
            upload_id: Some(upload_id.clone()),
        };

        let result = self
            .upload_parts(bucket, key, &upload_id, first, &mut parts)
            .await;
        match result {
            Ok(()) => {
                guard.upload_id = None;
                Ok(())
            }
            Err(err) => {
                guard.abort_now().await;
                Err(err)
            }
        }
    }

    /// Uploads up to `parallel_parts` parts at once, each in a task of its own (so its
    /// signing hash runs beside the encryption that makes the next part), while the next
    /// part is read from the body; then completes the upload. At most
    /// `parallel_parts + 1` parts are held in memory. The first part to fail ends the
    /// upload; the parts still in flight are aborted with it.
    async fn upload_parts(
        &self,
        bucket: &Folder,
        key: &str,
        upload_id: &str,
        first: Bytes,
        parts: &mut PartReader,
    ) -> Result<(), StoreError> {
        let mut completed = Vec::new();
        let mut in_flight = tokio::task::JoinSet::new();
        let mut part = first;
        let mut last = false;
        let mut number: i32 = 1;
        loop {
            if number > MAX_PARTS {
                return Err(StoreError::Unexpected(format!(
                    "{bucket}/{key} needs more than {MAX_PARTS} parts of {} bytes",
                    self.part_size
                )));
            }
            while in_flight.len() >= self.parallel_parts {
                completed.push(joined(in_flight.join_next().await)?);
            }
            in_flight.spawn(upload_part(
                self.uploader.clone(),
                bucket.clone(),
                key.to_owned(),
                upload_id.to_owned(),
                number,
                part,
            ));
            // A part that failed meanwhile ends the upload before more of the body is read.
            while let Some(done) = in_flight.try_join_next() {
                completed.push(joined(Some(done))?);
            }
            if last {
                break;
            }
            let (next_part, next_last) = parts.next_part().await.map_err(body_failed)?;
            if next_part.is_empty() {
                break;
            }
            part = next_part;
            last = next_last;
            number += 1;
        }
        while let Some(done) = in_flight.join_next().await {
            completed.push(joined(Some(done))?);
        }
        completed.sort_by_key(|p: &CompletedPart| p.part_number());
        self.uploader
            .complete_multipart_upload()
            .bucket(bucket.as_str())
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await
            .map_err(|err| Failure::from_sdk(err).into_store_error(Op::Put, bucket, key))?;
        Ok(())
    }
}

/// The outcome of a part's task.
fn joined(
    done: Option<Result<Result<CompletedPart, StoreError>, tokio::task::JoinError>>,
) -> Result<CompletedPart, StoreError> {
    match done {
        Some(Ok(part)) => part,
        Some(Err(e)) => Err(StoreError::Unexpected(format!("a part upload ended: {e}"))),
        None => Err(StoreError::Unexpected("no part upload in flight".into())),
    }
}

async fn upload_part(
    client: Client,
    bucket: Folder,
    key: String,
    upload_id: String,
    number: i32,
    body: Bytes,
) -> Result<CompletedPart, StoreError> {
    let output = client
        .upload_part()
        .bucket(bucket.as_str())
        .key(&key)
        .upload_id(upload_id)
        .part_number(number)
        .content_length(len_i64(body.len()))
        .body(SdkByteStream::from(body))
        .send()
        .await
        .map_err(|err| Failure::from_sdk(err).into_store_error(Op::Put, &bucket, &key))?;
    Ok(CompletedPart::builder()
        .part_number(number)
        .set_e_tag(output.e_tag().map(str::to_owned))
        .build())
}

/// Cuts a stream of unknown length into parts of `part_size` bytes, telling which is last.
pub(super) struct PartReader {
    body: Option<ByteStream>,
    buf: BytesMut,
    part_size: usize,
}

impl PartReader {
    pub(super) fn new(body: ByteStream, part_size: usize) -> Self {
        Self {
            body: Some(body),
            buf: BytesMut::new(),
            part_size,
        }
    }

    /// The next part (empty only at the end) and whether it is the last one. Reads one
    /// chunk past the part, so that a body of exactly one part is known to be one.
    pub(super) async fn next_part(&mut self) -> io::Result<(Bytes, bool)> {
        self.buf
            .reserve(self.part_size.saturating_sub(self.buf.len()));
        while self.buf.len() <= self.part_size {
            let Some(body) = self.body.as_mut() else {
                break;
            };
            match body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(err)) => {
                    self.body = None;
                    return Err(err);
                }
                None => self.body = None,
            }
        }
        let part = if self.buf.len() > self.part_size {
            self.buf.split_to(self.part_size).freeze()
        } else {
            self.buf.split().freeze()
        };
        let last = self.body.is_none() && self.buf.is_empty();
        Ok((part, last))
    }
}

/// Aborts a multipart upload left unfinished, also when the `put` future is dropped.
struct AbortOnDrop {
    client: Client,
    bucket: String,
    key: String,
    upload_id: Option<String>,
}

impl AbortOnDrop {
    async fn abort_now(&mut self) {
        if let Some(upload_id) = self.upload_id.take() {
            abort(&self.client, &self.bucket, &self.key, &upload_id).await;
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (client, bucket, key) = (
                self.client.clone(),
                std::mem::take(&mut self.bucket),
                std::mem::take(&mut self.key),
            );
            runtime.spawn(async move { abort(&client, &bucket, &key, &upload_id).await });
        }
    }
}

async fn abort(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    let result = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await;
    if let Err(err) = result {
        tracing::warn!(
            bucket,
            key,
            error = %DisplayErrorContext(&err),
            "could not abort an unfinished multipart upload"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    async fn parts_of(data: &[u8], chunks: &[usize], part_size: usize) -> Vec<(Vec<u8>, bool)> {
        let mut pieces: Vec<io::Result<Bytes>> = Vec::new();
        let mut at = 0;
        for &len in chunks.iter().cycle().take(data.len() + 1) {
            if at >= data.len() {
                break;
            }
            let end = (at + len).min(data.len());
            pieces.push(Ok(Bytes::copy_from_slice(&data[at..end])));
            at = end;
        }
        let mut reader = PartReader::new(Box::pin(futures::stream::iter(pieces)), part_size);
        let mut parts = Vec::new();
        loop {
            let (part, last) = reader.next_part().await.unwrap();
            if part.is_empty() && !last {
                parts.push((Vec::new(), false));
                break;
            }
            parts.push((part.to_vec(), last));
            if last {
                break;
            }
        }
        parts
    }

    fn run<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn a_body_of_exactly_one_part_is_known_to_be_the_last() {
        let parts = run(parts_of(&[1, 2, 3, 4], &[4], 4));
        assert_eq!(parts, vec![(vec![1, 2, 3, 4], true)]);
        let parts = run(parts_of(&[], &[4], 4));
        assert_eq!(parts, vec![(vec![], true)]);
    }

    #[test]
    fn a_failing_body_fails_the_part() {
        let body =
            futures::stream::iter([Ok(Bytes::from_static(b"ab")), Err(io::Error::other("x"))]);
        let mut reader = PartReader::new(Box::pin(body), 4);
        assert!(run(reader.next_part()).is_err());
    }

    proptest! {
        #[test]
        fn any_chunking_gives_whole_parts_that_join_to_the_body(
            len in 0usize..200,
            chunks in proptest::collection::vec(1usize..40, 1..6),
            part_size in 1usize..32,
        ) {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let parts = run(parts_of(&data, &chunks, part_size));
            let (last, rest) = parts.split_last().unwrap();
            prop_assert!(last.1, "the last part is marked last");
            for (part, is_last) in rest {
                prop_assert_eq!(part.len(), part_size);
                prop_assert!(!is_last);
            }
            prop_assert!(last.0.len() <= part_size);
            prop_assert!(!last.0.is_empty() || len == 0, "only an empty body has an empty part");
            let joined: Vec<u8> = parts.iter().flat_map(|(p, _)| p.clone()).collect();
            prop_assert_eq!(joined, data);
        }
    }
}
