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
