//! The upload's stream: plaintext encrypted as it arrives into the big
//! part, teed into the cache writer.

use std::sync::{Arc, Mutex as StdMutex};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Mutex;

use super::*;

pub(super) struct UploadShared {
    pub(super) writer: Mutex<Option<Box<dyn CacheWriter>>>,
    pub(super) input_error: StdMutex<Option<String>>,
    pub(super) big_len: StdMutex<u64>,
}

pub(super) struct EncryptPump {
    pub(super) head: Option<Bytes>,
    pub(super) plaintext: ByteStream,
    pub(super) encryptor: Option<Encryptor>,
    pub(super) shared: Arc<UploadShared>,
}

/// The big part: what is left of the head, then the rest of the plaintext
/// encrypted as it arrives; teed into the cache writer.
pub(super) fn encrypting_stream(
    head: Bytes,
    plaintext: ByteStream,
    encryptor: Option<Encryptor>,
    shared: Arc<UploadShared>,
) -> ByteStream {
    let pump = EncryptPump {
        head: Some(head),
        plaintext,
        encryptor,
        shared,
    };
    Box::pin(futures::stream::unfold(pump, |mut p| async move {
        loop {
            let chunk = if let Some(head) = p.head.take() {
                head
            } else {
                let encryptor = p.encryptor.as_mut()?;
                let mut out = Vec::new();
                match p.plaintext.next().await {
                    Some(Ok(chunk)) => {
                        out.reserve(chunk.len() + 16);
                        encryptor.update(&chunk, &mut out);
                    }
                    Some(Err(e)) => {
                        *p.shared
                            .input_error
                            .lock()
                            .unwrap_or_else(|x| x.into_inner()) = Some(e.to_string());
                        p.encryptor = None;
                        return Some((Err(e), p));
                    }
                    None => {
                        if let Some(enc) = p.encryptor.take() {
                            enc.finish(&mut out);
                        }
                    }
                }
                Bytes::from(out)
            };
            if chunk.is_empty() {
                continue;
            }
            *p.shared.big_len.lock().unwrap_or_else(|x| x.into_inner()) += chunk.len() as u64;
            let mut writer = p.shared.writer.lock().await;
            if let Some(w) = writer.as_mut()
                && let Err(e) = w.write(chunk.clone()).await
            {
                tracing::warn!("stopped caching the uploaded big part: {e}");
                *writer = None;
            }
            drop(writer);
            return Some((Ok(chunk), p));
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plaintext_in_chunks_of_any_size_encrypts_as_one_piece_would() {
        let key = AesKey::from_bytes([7; 32]);
        let iv = [3; 16];
        let plain = crate::test_support::pattern(1000, 4);
        // Chunks of 1 to 15 bytes, smaller than a block, then a large one.
        let mut chunks: Vec<std::io::Result<Bytes>> = Vec::new();
        let mut at = 0;
        for size in (1..16).cycle().take(40) {
            chunks.push(Ok(Bytes::copy_from_slice(&plain[at..at + size])));
            at += size;
        }
        chunks.push(Ok(Bytes::copy_from_slice(&plain[at..])));
        let shared = Arc::new(UploadShared {
            writer: Mutex::new(None),
            input_error: StdMutex::new(None),
            big_len: StdMutex::new(0),
        });
        let mut stream = encrypting_stream(
            Bytes::from_static(b"head"),
            Box::pin(futures::stream::iter(chunks)),
            Some(Encryptor::new(&key, iv)),
            shared.clone(),
        );
        let mut got = Vec::new();
        while let Some(chunk) = stream.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        let mut whole = b"head".to_vec();
        let mut encryptor = Encryptor::new(&key, iv);
        encryptor.update(&plain, &mut whole);
        encryptor.finish(&mut whole);
        assert_eq!(got, whole);
        assert_eq!(*shared.big_len.lock().unwrap(), whole.len() as u64);
    }
}
