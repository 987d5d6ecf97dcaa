//! Prefetch (issue 13): brings a resource's big part into the cache without
//! decrypting it, to warm a device at base before it goes where the network
//! is poor. The bytes go from the CDN to the cache as they are; only the last
//! two blocks are decrypted, to check the padding, the same gate a load
//! passes before it commits an entry. Concurrent prefetches and loads of one
//! resource share one CDN read, as loads do.

use std::io;

use bytes::Bytes;
use futures::StreamExt;

use super::download::exact_plaintext_len;
use super::fills::CdnHold;
use super::*;

/// What a prefetch found or started.
pub enum Prefetch {
    /// The cache already holds an intact entry for the current small part.
    Cached { big_len: u64 },
    /// A CDN read into the cache, to be run.
    Fetching(PrefetchJob),
}

/// A big part on its way from the CDN into the cache.
pub struct PrefetchJob {
    key: AesKey,
    small: Bytes,
    big: ByteStream,
    big_len: u64,
    writer: Box<dyn CacheWriter>,
    _held: CdnHold,
}

impl PrefetchJob {
    /// Bytes of the big part to read.
    pub fn big_len(&self) -> u64 {
        self.big_len
    }

    /// Copies the big part into the cache, calling `progress` with the bytes
    /// done so far after each chunk, and commits the entry once all of it
    /// arrived and its padding checks out. Any failure drops the entry.
    pub async fn run(mut self, mut progress: impl FnMut(u64) + Send) -> io::Result<u64> {
        let mut done = 0u64;
        let mut tail: Vec<u8> = Vec::with_capacity(2 * TAIL_LEN);
        while let Some(chunk) = self.big.next().await {
            let chunk = chunk?;
            done += chunk.len() as u64;
            if done > self.big_len {
                return Err(download::invalid(
                    "the CDN sent more than the big part's length",
                ));
            }
            tail.extend_from_slice(&chunk[chunk.len().saturating_sub(TAIL_LEN)..]);
            if tail.len() > TAIL_LEN {
                tail.drain(..tail.len() - TAIL_LEN);
            }
            self.writer
                .write(chunk)
                .await
                .map_err(|e| io::Error::other(format!("the cache refused the big part: {e}")))?;
            progress(done);
        }
        if done != self.big_len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the CDN sent {done} of {} bytes", self.big_len),
            ));
        }
        let total = self.small.len() as u64 + self.big_len;
        if exact_plaintext_len(&self.key, &self.small, &tail, total).is_none() {
            return Err(download::invalid(
                "the resource does not decrypt: its parts do not belong together",
            ));
        }
        self.writer
            .commit()
            .await
            .map_err(|e| io::Error::other(format!("the cache did not keep the big part: {e}")))?;
        Ok(done)
    }
}

impl ResourceService {
    /// Looks the resource up and, unless the cache holds it already, opens
    /// its CDN read and a cache entry: every refusal (a bad login, an unknown
    /// resource, parts of different uploads, a full cache) comes here, before
    /// any byte is copied.
    pub async fn prefetch(
        &self,
        folder: &Folder,
        name: &ResourceName,
    ) -> Result<Prefetch, LoadError> {
        loop {
            let (small, session) = self.small_part(folder, name).await?;
            let digest = small_part_digest(&small);
            if let Ok(CacheLookup::Hit(body)) = self.cache.open(folder, name, &digest).await {
                return Ok(Prefetch::Cached { big_len: body.len });
            }
            let fill = match self.fills.claim(folder, name) {
                fills::Claim::Leader(fill) => fill,
                fills::Claim::Follower(mut wait) => {
                    let _ = wait.changed().await;
                    continue;
                }
            };
            let slot = self.transfer_slot().await?;
            let (body, small, digest) = self
                .open_big_part(folder, name, &session, small, digest)
                .await?;
            let writer = self
                .cache
                .create(folder, name, &digest)
                .await
                .map_err(LoadError::Cache)?;
            let big_len = body.len;
            let big = parallel_body(
                session.store.clone(),
                folder.clone(),
                name.big_part_key(),
                body,
                self.cdn_reads,
            );
            return Ok(Prefetch::Fetching(PrefetchJob {
                key: self.resource_key.clone(),
                small,
                big,
                big_len,
                writer,
                _held: CdnHold {
                    _slot: slot,
                    _fill: fill,
                },
            }));
        }
    }
}
