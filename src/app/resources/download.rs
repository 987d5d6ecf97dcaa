//! The download's stream: `small || big` decrypted chunk by chunk, the big
//! part teed into the cache, a cut CDN read resumed, one chunk prefetched.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use super::*;

/// The plaintext length of `small || big` (`total` bytes) from the big part's
/// last bytes (`big_tail`, up to `TAIL_LEN`; all of it when shorter): the
/// last block's padding, decrypted with the block before it as its IV.
/// `None` when it does not decrypt; the stream then ends in that error.
pub(super) fn exact_plaintext_len(
    key: &AesKey,
    small: &[u8],
    big_tail: &[u8],
    total: u64,
) -> Option<u64> {
    let mut tail = Vec::with_capacity(TAIL_LEN);
    if big_tail.len() < TAIL_LEN {
        let need = TAIL_LEN - big_tail.len();
        tail.extend_from_slice(&small[small.len().saturating_sub(need)..]);
    }
    tail.extend_from_slice(big_tail);
    if tail.len() != TAIL_LEN || total < TAIL_LEN as u64 {
        return None;
    }
    let last = decrypt(key, &tail).ok()?;
    Some(total - TAIL_LEN as u64 + last.len() as u64)
}

/// How to pick a CDN read up again after the connection was cut.
pub(super) struct Resume {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) bucket: Folder,
    pub(super) key: String,
    pub(super) big_len: u64,
    pub(super) version: Option<String>,
    /// The small part's tag: a resumed read of an object tagged otherwise is refused.
    pub(super) small_sha256: String,
}

pub(super) struct DecryptPump {
    pub(super) decryptor: Option<Decryptor>,
    pub(super) small: Option<Bytes>,
    pub(super) source: ByteStream,
    pub(super) writer: Option<Box<dyn CacheWriter>>,
    pub(super) resume: Option<Resume>,
    pub(super) big_received: u64,
    pub(super) attempts: u32,
    pub(super) done: bool,
    /// A CDN read's transfer slot and fill claim, freed when the stream ends or is dropped.
    pub(super) _held: Option<CdnHold>,
}

pub(super) fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// `small || big` → plaintext, teeing the big part into `writer` and
/// committing it only when the whole ciphertext decrypted with valid padding.
pub(super) fn decrypting_stream(
    key: &AesKey,
    small: Bytes,
    big: ByteStream,
    ciphertext_len: u64,
    writer: Option<Box<dyn CacheWriter>>,
    resume: Option<Resume>,
    held: Option<CdnHold>,
) -> ByteStream {
    let pump = DecryptPump {
        decryptor: Some(Decryptor::new(key).with_expected_len(ciphertext_len)),
        small: Some(small),
        source: big,
        writer,
        resume,
        big_received: 0,
        attempts: 0,
        done: false,
        _held: held,
    };
    let plaintext: ByteStream = Box::pin(futures::stream::unfold(pump, |mut p| async move {
        if p.done {
            return None;
        }
        loop {
            let decryptor = p.decryptor.as_mut()?;
            if let Some(small) = p.small.take() {
                let mut out = Vec::with_capacity(small.len());
                decryptor.update(&small, &mut out);
                if out.is_empty() {
                    continue;
                }
                return Some((Ok(Bytes::from(out)), p));
            }
            match p.source.next().await {
                Some(Ok(chunk)) => {
                    p.big_received += chunk.len() as u64;
                    let mut out = Vec::with_capacity(chunk.len() + 16);
                    decryptor.update(&chunk, &mut out);
                    if let Some(writer) = p.writer.as_mut()
                        && let Err(e) = writer.write(chunk).await
                    {
                        tracing::warn!("stopped caching this big part: {e}");
                        p.writer = None;
                    }
                    if out.is_empty() {
                        continue;
                    }
                    return Some((Ok(Bytes::from(out)), p));
                }
                Some(Err(e)) => {
                    if let Some(r) = p.resume.as_ref()
                        && p.attempts < RESUME_ATTEMPTS
                        && p.big_received < r.big_len
                    {
                        p.attempts += 1;
                        tracing::warn!(key = %r.key, at = p.big_received, "big part read cut ({e}); resuming from the CDN");
                        match r
                            .store
                            .get_version(&r.bucket, &r.key, p.big_received, r.version.as_deref())
                            .await
                        {
                            Ok(body)
                                if body.len == r.big_len - p.big_received
                                    && body
                                        .small_sha256
                                        .as_ref()
                                        .is_none_or(|tag| *tag == r.small_sha256) =>
                            {
                                p.source = body.stream;
                                continue;
                            }
                            Ok(_) => {
                                p.done = true;
                                return Some((
                                    Err(invalid("the CDN object changed during the download")),
                                    p,
                                ));
                            }
                            Err(again) => {
                                p.done = true;
                                return Some((
                                    Err(io::Error::other(format!("CDN read failed: {again}"))),
                                    p,
                                ));
                            }
                        }
                    }
                    p.done = true;
                    return Some((Err(e), p));
                }
                None => {
                    p.done = true;
                    let mut out = Vec::with_capacity(16);
                    let finished = p.decryptor.take().map(|d| d.finish(&mut out));
                    match finished {
                        Some(Ok(())) => {
                            if let Some(writer) = p.writer.take()
                                && let Err(e) = writer.commit().await
                            {
                                tracing::warn!("big part not cached: {e}");
                            }
                            if out.is_empty() {
                                return None;
                            }
                            return Some((Ok(Bytes::from(out)), p));
                        }
                        Some(Err(e)) => {
                            tracing::error!("resource does not decrypt: {e}");
                            return Some((Err(invalid(e)), p));
                        }
                        None => return None,
                    }
                }
            }
        }
    }));
    // Reading, checking and decrypting the next chunk overlaps sending this one.
    prefetch(plaintext)
}

/// Runs `stream` in a task of its own, `PREFETCH` items ahead of the reader,
/// so producing the next item overlaps handing out this one. The task stops
/// as soon as the reader is dropped (a client that hung up), dropping the
/// stream and whatever it holds.
pub(super) fn prefetch(mut stream: ByteStream) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel(PREFETCH);
    tokio::spawn(async move {
        loop {
            let item = tokio::select! {
                () = tx.closed() => return,
                item = stream.next() => item,
            };
            let Some(item) = item else { return };
            let last = item.is_err();
            if tx.send(item).await.is_err() || last {
                return;
            }
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::cipher::encrypt;
    use crate::domain::secret::SecretString;

    #[tokio::test]
    async fn prefetch_hands_on_every_item_and_stops_at_the_first_error() {
        let polled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = polled.clone();
        let items: Vec<std::io::Result<Bytes>> = vec![
            Ok(Bytes::from_static(b"a")),
            Ok(Bytes::from_static(b"b")),
            Err(std::io::Error::other("cut")),
            Ok(Bytes::from_static(b"after the error")),
        ];
        let source = futures::stream::iter(items).inspect(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        let out: Vec<_> = prefetch(Box::pin(source)).collect().await;
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[0].as_ref().unwrap(), "a");
        assert_eq!(out[1].as_ref().unwrap(), "b");
        assert!(out[2].is_err());
        assert_eq!(
            polled.load(std::sync::atomic::Ordering::SeqCst),
            3,
            "nothing read after the error"
        );
    }

    #[test]
    fn the_plaintext_length_comes_from_the_last_two_blocks_wherever_they_lie() {
        let key = AesKey::from_key_string(&SecretString::new("tail test"));
        let plain = vec![7u8; 100];
        // 16 bytes of IV, then 100 bytes padded to 112.
        let encrypted = encrypt(&key, [3; 16], &plain);
        let total = encrypted.len() as u64;
        assert_eq!(total, 128);
        // A big part longer than the tail: its last TAIL_LEN bytes suffice.
        let (small, big) = encrypted.split_at(60);
        let tail = &big[big.len() - TAIL_LEN..];
        assert_eq!(exact_plaintext_len(&key, small, tail, total), Some(100));
        // A big part shorter than the tail: the rest comes from the small part's end.
        for big_len in [1, 12, TAIL_LEN - 1, TAIL_LEN] {
            let (small, big) = encrypted.split_at(encrypted.len() - big_len);
            assert_eq!(
                exact_plaintext_len(&key, small, big, total),
                Some(100),
                "big part of {big_len} bytes"
            );
        }
        // Damaged padding, or fewer bytes in all than one tail: unknown.
        let mut damaged = encrypted.clone();
        damaged[100] ^= 0x55;
        let (small, big) = damaged.split_at(60);
        assert_eq!(
            exact_plaintext_len(&key, small, &big[big.len() - TAIL_LEN..], total),
            None
        );
        assert_eq!(
            exact_plaintext_len(&key, &encrypted[..8], &encrypted[8..24], 24),
            None
        );
        // A tail longer than TAIL_LEN is not the last two blocks: refused,
        // though its own last block would decrypt with valid padding.
        let (small, big) = encrypted.split_at(60);
        assert_eq!(
            exact_plaintext_len(&key, small, &big[big.len() - 3 * 16..], total),
            None
        );
    }
}
