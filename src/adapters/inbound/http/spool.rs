//! Holds an upload whose `data` field arrived before its `folder` field.
//! The bytes are encrypted with a one-off key that lives only in memory, into
//! an unnamed temporary file in the cache folder: no plaintext on disk, and
//! nothing left behind even after a crash (the file has no name). It never
//! takes the file system's free space under its floor (PROTOCOL §5.3), and
//! what it holds counts in the cache's usage, so the cache makes room for it.

use std::io::SeekFrom;
use std::path::Path;

use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::adapters::disk::FreeSpaceFloor;
use crate::app::resources::UploadRoom;
use crate::domain::cipher::{Decryptor, Encryptor};
use crate::domain::keys::AesKey;
use crate::ports::ByteStream;

const CHUNK: usize = 1 << 20;

/// The cache is asked to make room each time the spool grows by this much.
const MAKE_ROOM_EVERY: u64 = 8 << 20;

/// Writing on would take the free space under the floor.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("holding the upload would leave less than {0} bytes free (MODEL_CACHE_MIN_FREE_BYTES)")]
    NoRoom(u64),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub struct Spool {
    file: tokio::fs::File,
    floor: FreeSpaceFloor,
    key: AesKey,
    encryptor: Encryptor,
    buf: Vec<u8>,
    written: u64,
    room: UploadRoom,
    room_made_until: u64,
}

impl Spool {
    /// A spool in `dir` (the cache folder) whose bytes count in the cache's
    /// usage through `room`.
    pub fn new_in(dir: &Path, min_free_bytes: u64, room: UploadRoom) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let file = tokio::fs::File::from_std(tempfile::tempfile_in(dir)?);
        let mut key = [0u8; 32];
        let mut iv = [0u8; 16];
        getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
        getrandom::fill(&mut iv).map_err(|e| std::io::Error::other(e.to_string()))?;
        let key = AesKey::from_bytes(key);
        Ok(Self {
            encryptor: Encryptor::new(&key, iv),
            key,
            file,
            floor: FreeSpaceFloor::new(dir, min_free_bytes),
            buf: Vec::with_capacity(CHUNK + 32),
            written: 0,
            room,
            room_made_until: 0,
        })
    }

    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), SpoolError> {
        // The ciphertext is at most one block longer than the chunk.
        if !self.floor.reserve(chunk.len() as u64 + 16)? {
            return Err(SpoolError::NoRoom(self.floor.floor()));
        }
        self.buf.clear();
        self.encryptor.update(chunk, &mut self.buf);
        self.file.write_all(&self.buf).await?;
        self.grow(self.buf.len() as u64).await
    }

    async fn grow(&mut self, bytes: u64) -> Result<(), SpoolError> {
        self.written += bytes;
        self.room.grow(bytes);
        if self.written >= self.room_made_until {
            self.room_made_until = self.written + MAKE_ROOM_EVERY;
            self.room
                .make_room()
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        Ok(())
    }

    /// Ends writing and streams the original bytes back.
    pub async fn into_stream(mut self) -> std::io::Result<ByteStream> {
        self.buf.clear();
        self.encryptor.finish(&mut self.buf);
        self.file.write_all(&self.buf).await?;
        self.written += self.buf.len() as u64;
        self.room.grow(self.buf.len() as u64);
        self.file.flush().await?;
        self.file.seek(SeekFrom::Start(0)).await?;
        let decryptor = Decryptor::new(&self.key).with_expected_len(self.written);
        // The file's space stays counted until the stream ends or is dropped.
        let room = self.room;
        Ok(crate::app::decrypt_file::decrypting_file(
            self.file,
            decryptor,
            "the spooled upload",
            |_| {},
            move || drop(room),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::fakes::FakeCache;
    use crate::ports::BigPartCache;
    use futures::StreamExt;
    use std::sync::Arc;

    fn room(cache: FakeCache) -> UploadRoom {
        UploadRoom::in_cache(Arc::new(cache))
    }

    #[tokio::test]
    async fn spooled_bytes_come_back_exactly_and_the_file_holds_no_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::new_in(dir.path(), 0, room(FakeCache::new())).unwrap();
        let data = crate::test_support::pattern(3_000_000, 9);
        for piece in data.chunks(77_777) {
            spool.write(piece).await.unwrap();
        }
        // The spool file is unnamed: nothing is visible in the folder.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut stream = spool.into_stream().await.unwrap();
        let mut back = Vec::new();
        while let Some(chunk) = stream.next().await {
            back.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(back, data);
    }

    #[tokio::test]
    async fn a_write_that_would_cross_the_free_space_floor_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let free = crate::adapters::disk::free_bytes(dir.path()).unwrap();
        let mut spool =
            Spool::new_in(dir.path(), free + (1 << 40), room(FakeCache::new())).unwrap();
        assert!(matches!(
            spool.write(b"abc").await,
            Err(SpoolError::NoRoom(_))
        ));
    }

    #[tokio::test]
    async fn what_a_spool_holds_counts_in_the_cache_usage_until_its_stream_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FakeCache::new();
        let mut spool = Spool::new_in(dir.path(), 0, room(cache.clone())).unwrap();
        let usage = || async { cache.usage().await.unwrap().bytes };
        assert_eq!(usage().await, 0);
        spool.write(&[7u8; 100_000]).await.unwrap();
        // What is on disk: the IV and the ciphertext so far.
        assert_eq!(usage().await, spool.written);
        assert!(spool.written >= 100_000);
        assert_eq!(cache.rooms_made(), 1, "room is made before the spool grows");
        for _ in 0..90 {
            spool.write(&[7u8; 100_000]).await.unwrap();
        }
        // 9.1 MB written: room made again after 8 MiB.
        assert_eq!(cache.rooms_made(), 2);
        let mut stream = spool.into_stream().await.unwrap();
        assert_eq!(
            usage().await,
            16 + 9_100_000 + 16,
            "IV, ciphertext, padding block"
        );
        stream.next().await.unwrap().unwrap();
        assert!(usage().await > 0, "held while the stream is read");
        drop(stream);
        assert_eq!(usage().await, 0);
    }
}
