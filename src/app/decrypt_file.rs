//! A file of ciphertext as a stream of plaintext, decrypted as it is read,
//! in constant memory (one reused read buffer). Used by unlock (the image
//! archive) and by the upload spool. Never writes anything.

use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::domain::cipher::Decryptor;
use crate::ports::ByteStream;

const READ_CHUNK: usize = 1 << 20;

struct Pump<P, E> {
    file: tokio::fs::File,
    decryptor: Option<Decryptor>,
    buf: Vec<u8>,
    on_read: P,
    on_end: Option<E>,
    what: &'static str,
}

/// Streams `file` through `decryptor` (which should know the file's length).
/// `on_read` hears every ciphertext byte count read; `on_end` runs once the
/// last byte decrypted with valid padding. A bad ending is an `InvalidData`
/// error naming `what`.
pub fn decrypting_file<P, E>(
    file: tokio::fs::File,
    decryptor: Decryptor,
    what: &'static str,
    on_read: P,
    on_end: E,
) -> ByteStream
where
    P: FnMut(u64) + Send + 'static,
    E: FnOnce() + Send + 'static,
{
    let pump = Pump {
        file,
        decryptor: Some(decryptor),
        buf: vec![0u8; READ_CHUNK],
        on_read,
        on_end: Some(on_end),
        what,
    };
    Box::pin(futures::stream::unfold(pump, |mut p| async move {
        loop {
            let decryptor = p.decryptor.as_mut()?;
            let n = match p.file.read(&mut p.buf).await {
                Ok(n) => n,
                Err(e) => {
                    p.decryptor = None;
                    return Some((Err(e), p));
                }
            };
            let mut out = Vec::with_capacity(n + 16);
            if n == 0 {
                let finished = p.decryptor.take().map(|d| d.finish(&mut out));
                return match finished {
                    Some(Ok(())) => {
                        if let Some(on_end) = p.on_end.take() {
                            on_end();
                        }
                        (!out.is_empty()).then(|| (Ok(Bytes::from(out)), p))
                    }
                    Some(Err(e)) => {
                        let e = std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("{} does not decrypt: {e}", p.what),
                        );
                        Some((Err(e), p))
                    }
                    None => None,
                };
            }
            decryptor.update(&p.buf[..n], &mut out);
            (p.on_read)(n as u64);
            if !out.is_empty() {
                return Some((Ok(Bytes::from(out)), p));
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::cipher::encrypt;
    use crate::domain::keys::AesKey;
    use futures::StreamExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    async fn decrypt_file(ciphertext: &[u8], key: &AesKey) -> (Vec<u8>, Option<String>, u64, bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file.enc");
        std::fs::write(&path, ciphertext).unwrap();
        let file = tokio::fs::File::open(&path).await.unwrap();
        let (read, ended) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (r, e) = (read.clone(), ended.clone());
        let mut stream = decrypting_file(
            file,
            Decryptor::new(key).with_expected_len(ciphertext.len() as u64),
            "the test file",
            move |n| {
                r.fetch_add(n, Ordering::Relaxed);
            },
            move || e.store(true, Ordering::Relaxed),
        );
        let mut plain = Vec::new();
        let mut error = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => plain.extend_from_slice(&chunk),
                Err(e) => error = Some(e.to_string()),
            }
        }
        (
            plain,
            error,
            read.load(Ordering::Relaxed),
            ended.load(Ordering::Relaxed),
        )
    }

    #[tokio::test]
    async fn every_plaintext_byte_comes_out_whatever_the_length_and_the_end_is_heard_once_valid() {
        let key = AesKey::from_archive_fragment(b"decrypt-file-test");
        // Lengths around the 1 MiB read and the 16-byte block, the last one partial.
        for len in [
            0usize,
            1,
            15,
            16,
            17,
            READ_CHUNK - 1,
            READ_CHUNK + 5,
            2 * READ_CHUNK + 31,
        ] {
            let plain = crate::test_support::pattern(len, 7);
            let ciphertext = encrypt(&key, [9; 16], &plain);
            let (got, error, read, ended) = decrypt_file(&ciphertext, &key).await;
            assert_eq!(error, None, "{len}");
            assert!(
                got == plain,
                "{len}: {} bytes out of {}",
                got.len(),
                plain.len()
            );
            assert_eq!(read, ciphertext.len() as u64, "{len}");
            assert!(ended, "{len}: on_end not called");
        }
    }

    #[tokio::test]
    async fn a_file_under_the_wrong_key_ends_in_an_error_naming_it_and_no_end() {
        let plain = crate::test_support::pattern(1000, 8);
        let ciphertext = encrypt(&AesKey::from_archive_fragment(b"right"), [9; 16], &plain);
        let (_, error, _, ended) =
            decrypt_file(&ciphertext, &AesKey::from_archive_fragment(b"wrong")).await;
        let error = error.expect("an error");
        assert!(error.contains("the test file does not decrypt"), "{error}");
        assert!(!ended);
    }
}
