//! Opening an entry: the reader registration that keeps eviction away
//! from it, the check of header, small-part digest, length, block table and
//! last bytes (`inspect`), and the stream that serves the big part block by
//! block, each block checked just before it is handed out while the next one
//! is read.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use super::evict::remove_if_same;
use super::layout::{EntryKey, entry_key};
use super::{Shared, blocking, io_error, lock};
use crate::domain::cache_record::{
    CacheRecord, RECORD_LEN, RecordHeader, block_checksum, block_count,
};
use crate::domain::names::{Folder, ResourceName};
use crate::ports::object_store::TAIL_LEN;
use crate::ports::{ByteStream, CacheError, CacheLookup, EntryCheck, ObjectBody};

/// How often `open` re-inspects an entry that was replaced while it looked at it.
const INSPECT_ATTEMPTS: usize = 3;

/// Looks the entry up for the small part `small_digest`: a hit streams the
/// checked entry, a stale or damaged one is removed on the way.
pub(super) async fn open(
    shared: &Arc<Shared>,
    folder: &Folder,
    name: &ResourceName,
    small_digest: &[u8; 32],
) -> Result<CacheLookup, CacheError> {
    let key = entry_key(folder, name);
    // Registered before the file is opened, so eviction cannot take it
    // between the check and the stream.
    let reader = ReaderGuard::register(shared, key.clone());
    let shared = shared.clone();
    let folder_dir = shared.folder_dir(folder);
    let path = shared.entry_path(folder, name);
    let digest = *small_digest;
    let verdict = {
        let (shared, key, path) = (shared.clone(), key.clone(), path.clone());
        blocking(move || {
            for _ in 0..INSPECT_ATTEMPTS {
                match inspect(&shared, &key, &folder_dir, &path, &digest)? {
                    Verdict::Replaced => continue,
                    verdict => return Ok(verdict),
                }
            }
            Ok(Verdict::Miss)
        })
        .await?
    };
    Ok(match verdict {
        Verdict::Miss | Verdict::Replaced => CacheLookup::Miss,
        Verdict::Stale => CacheLookup::Stale,
        Verdict::Damaged => CacheLookup::Damaged,
        Verdict::Intact {
            file,
            record,
            identity,
            tail,
        } => CacheLookup::Hit(ObjectBody {
            small_sha256: None,
            len: record.big_len,
            version: None,
            tail: Some(tail),
            stream: body_stream(
                HitFile {
                    file,
                    record,
                    shared,
                    key,
                    path,
                    identity,
                },
                reader,
            ),
        }),
    })
}

/// Re-checks every block of the entry for the small part its header names;
/// a damaged entry is removed (by `open`, or by its stream at the damaged
/// block). The entry's last use is put back afterwards: a check is not a use.
pub(super) async fn verify(
    shared: &Arc<Shared>,
    folder: &Folder,
    name: &ResourceName,
) -> Result<EntryCheck, CacheError> {
    let path = shared.entry_path(folder, name);
    let recorded = {
        let path = path.clone();
        blocking(move || {
            let mut file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_error("cannot open", &path, e)),
            };
            let modified = file
                .metadata()
                .and_then(|m| m.modified())
                .map_err(|e| io_error("cannot read", &path, e))?;
            let mut header = [0u8; RECORD_LEN];
            // A header that cannot be read or decoded is found damaged by `open`,
            // whatever digest it is asked for.
            let digest = match file.read_exact(&mut header) {
                Ok(()) => RecordHeader::decode(&header)
                    .map(|h| h.small_digest)
                    .unwrap_or([0; 32]),
                Err(_) => [0; 32],
            };
            Ok(Some((digest, modified)))
        })
        .await?
    };
    let Some((digest, last_used)) = recorded else {
        return Ok(EntryCheck::Missing);
    };
    let check = match open(shared, folder, name, &digest).await? {
        CacheLookup::Hit(mut body) => {
            let mut intact = true;
            while let Some(chunk) = body.stream.next().await {
                if chunk.is_err() {
                    intact = false;
                    break;
                }
            }
            if intact {
                EntryCheck::Intact
            } else {
                EntryCheck::Damaged
            }
        }
        CacheLookup::Damaged => EntryCheck::Damaged,
        CacheLookup::Miss | CacheLookup::Stale => EntryCheck::Missing,
    };
    if check == EntryCheck::Intact {
        let restored = File::open(&path).and_then(|f| f.set_modified(last_used));
        if let Err(e) = restored {
            tracing::debug!(file = %path.display(), "cannot put back the last use: {e}");
        }
    }
    Ok(check)
}

/// Registers a reader of an entry for as long as it lives, so eviction leaves
/// the entry alone.
struct ReaderGuard {
    shared: Arc<Shared>,
    key: EntryKey,
}

impl ReaderGuard {
    fn register(shared: &Arc<Shared>, key: EntryKey) -> Self {
        *lock(&shared.names).entry(key.clone()).or_insert(0) += 1;
        Self {
            shared: shared.clone(),
            key,
        }
    }
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let mut names = lock(&self.shared.names);
        if let Some(readers) = names.get_mut(&self.key) {
            *readers = readers.saturating_sub(1);
            if *readers == 0 {
                names.remove(&self.key);
            }
        }
    }
}

/// What inspecting an entry found.
enum Verdict {
    Miss,
    Stale,
    Damaged,
    /// Replaced while inspected; look again.
    Replaced,
    Intact {
        file: File,
        record: CacheRecord,
        identity: (u64, u64),
        tail: Bytes,
    },
}

/// Checks the entry at `path` completely (header, digest, length, checksum)
/// and removes it when stale or damaged.
fn inspect(
    shared: &Shared,
    key: &EntryKey,
    folder_dir: &Path,
    path: &Path,
    small_digest: &[u8; 32],
) -> Result<Verdict, CacheError> {
    match fs::symlink_metadata(folder_dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Ok(Verdict::Miss),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Verdict::Miss),
        Err(e) => return Err(io_error("cannot read", folder_dir, e)),
    }
    let link = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Verdict::Miss),
        Err(e) => return Err(io_error("cannot read", path, e)),
    };
    let link_identity = (link.dev(), link.ino());
    let damaged = |identity: (u64, u64), reason: &str| -> Result<Verdict, CacheError> {
        tracing::warn!(file = %path.display(), reason, "removing a damaged cached big part");
        remove_if_same(shared, key, path, identity, false)
            .map_err(|e| io_error("cannot remove the damaged", path, e))?;
        Ok(Verdict::Damaged)
    };
    if !link.file_type().is_file() {
        return damaged(link_identity, "not a regular file");
    }
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Verdict::Replaced),
        Err(e) => return damaged(link_identity, &format!("cannot open it: {e}")),
    };
    let meta = file
        .metadata()
        .map_err(|e| io_error("cannot read", path, e))?;
    let identity = (meta.dev(), meta.ino());
    if identity != link_identity || !meta.file_type().is_file() {
        return Ok(Verdict::Replaced);
    }

    let mut header = [0u8; RECORD_LEN];
    if let Err(e) = file.read_exact(&mut header) {
        return damaged(identity, &format!("cannot read its header: {e}"));
    }
    let Ok(header) = RecordHeader::decode(&header) else {
        return damaged(identity, "malformed header");
    };
    if &header.small_digest != small_digest {
        tracing::info!(file = %path.display(), "removing a cached big part of an older small part");
        remove_if_same(shared, key, path, identity, false)
            .map_err(|e| io_error("cannot remove the stale", path, e))?;
        return Ok(Verdict::Stale);
    }
    if Some(meta.len()) != header.entry_len() {
        return damaged(identity, "its length differs from its header");
    }
    // The table is small (32 KiB per GiB); read where it lies, leaving the
    // file's position at the first byte of the big part.
    let mut table = vec![0u8; usize::try_from(header.table_len()).unwrap_or(usize::MAX)];
    if let Err(e) = file.read_exact_at(&mut table, RECORD_LEN as u64 + header.big_len) {
        return damaged(identity, &format!("cannot read its block table: {e}"));
    }
    let Ok(record) = header.with_table(&table) else {
        return damaged(identity, "header or block table fails its check");
    };
    let tail = match checked_tail(&file, &record) {
        Ok(tail) => tail,
        Err(reason) => return damaged(identity, &reason),
    };
    // Last use, for eviction. Best effort: a failure only makes eviction less fair.
    if let Err(e) = file.set_modified(shared.clock.now()) {
        tracing::debug!(file = %path.display(), error = %e, "cannot mark a cached big part as used");
    }
    Ok(Verdict::Intact {
        file,
        record,
        identity,
        tail,
    })
}

/// Reads and checks the blocks that hold the big part's last `TAIL_LEN`
/// bytes (the last block, and the one before when the last is shorter) and
/// returns those bytes: a hit then knows its plaintext's exact length before
/// its first byte, at the cost of reading at most two blocks twice.
fn checked_tail(file: &File, record: &CacheRecord) -> Result<Bytes, String> {
    let block_len = u64::from(record.block_len);
    let blocks = block_count(record.big_len, record.block_len);
    if blocks == 0 {
        return Ok(Bytes::new());
    }
    let mut first = blocks - 1;
    if record.big_len - first * block_len < TAIL_LEN as u64 && first > 0 {
        first -= 1;
    }
    let start = first * block_len;
    let mut bytes = vec![0u8; usize::try_from(record.big_len - start).map_err(|e| e.to_string())?];
    file.read_exact_at(&mut bytes, RECORD_LEN as u64 + start)
        .map_err(|e| format!("cannot read its last block: {e}"))?;
    for (i, block) in bytes.chunks(record.block_len as usize).enumerate() {
        if record.block(first + i as u64) != Some(block_checksum(block)) {
            return Err("its last block fails its checksum".to_owned());
        }
    }
    let keep = bytes.len().min(TAIL_LEN);
    Ok(Bytes::copy_from_slice(&bytes[bytes.len() - keep..]))
}

/// What the reads of one hit share with their blocking tasks.
struct HitFile {
    /// Positioned at the next block to read (blocks are read in order, one at a time).
    file: File,
    record: CacheRecord,
    shared: Arc<Shared>,
    key: EntryKey,
    path: PathBuf,
    identity: (u64, u64),
}

/// Reads block `index` (the file is positioned at it) and checks it; a
/// damaged block removes the entry and is an `InvalidData` error.
fn read_block(hit: &HitFile, index: u64) -> io::Result<Vec<u8>> {
    let block_len = u64::from(hit.record.block_len);
    let start = index * block_len;
    let want = (hit.record.big_len - start).min(block_len);
    // Read into fresh capacity: no zero-filling of a buffer about to be overwritten.
    let mut buf = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
    (&hit.file).take(want).read_to_end(&mut buf)?;
    let reason = if buf.len() as u64 != want {
        "it is shorter than its header says"
    } else if hit.record.block(index) != Some(block_checksum(&buf)) {
        "a block fails its checksum"
    } else {
        return Ok(buf);
    };
    tracing::warn!(file = %hit.path.display(), block = index, reason, "removing a damaged cached big part");
    if let Err(e) = remove_if_same(&hit.shared, &hit.key, &hit.path, hit.identity, false) {
        tracing::warn!(file = %hit.path.display(), error = %e, "cannot remove a damaged cached big part");
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the cached big part is damaged from byte {start} on"),
    ))
}

/// State of a hit's byte stream.
struct Body {
    hit: Arc<HitFile>,
    /// Index of the next block to start reading.
    next: u64,
    blocks: u64,
    /// The read of the block after the one being served.
    ahead: Option<tokio::task::JoinHandle<io::Result<Vec<u8>>>>,
    _reader: ReaderGuard,
}

impl Body {
    fn start_next(&mut self) {
        if self.next < self.blocks {
            let (hit, index) = (self.hit.clone(), self.next);
            self.next += 1;
            self.ahead = Some(tokio::task::spawn_blocking(move || read_block(&hit, index)));
        }
    }
}

/// Streams the big part of a checked entry block by block, each checked just
/// before it is handed out, with the next block's read already under way.
fn body_stream(hit: HitFile, reader: ReaderGuard) -> ByteStream {
    let blocks = block_count(hit.record.big_len, hit.record.block_len);
    let mut body = Body {
        hit: Arc::new(hit),
        next: 0,
        blocks,
        ahead: None,
        _reader: reader,
    };
    body.start_next();
    Box::pin(futures::stream::unfold(body, |mut body| async move {
        // Nothing ahead: the end, or the poll after an error (no read follows one).
        let read = body.ahead.take()?;
        match read.await {
            Ok(Ok(buf)) => {
                body.start_next();
                Some((Ok(Bytes::from(buf)), body))
            }
            Ok(Err(e)) => Some((Err(e), body)),
            Err(e) => Some((Err(io::Error::other(e)), body)),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::outbound::fs_cache::test_support::*;
    use crate::domain::cache_record::BLOCK_LEN;
    use crate::ports::BigPartCache;
    use futures::StreamExt;

    #[tokio::test]
    async fn an_absent_entry_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(&dir, None);
        assert_eq!(lookup(&cache, "models", "nothing", [1; 32]).await, "miss");
        put(&cache, "models", "other", [1; 32], b"x").await;
        assert_eq!(lookup(&cache, "models", "nothing", [1; 32]).await, "miss");
    }

    #[tokio::test]
    async fn an_empty_big_part_is_cached_and_served() {
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(&dir, None);
        put(&cache, "models", "empty", [3; 32], b"").await;
        assert_eq!(
            hit(&cache, "models", "empty", [3; 32]).await,
            Vec::<u8>::new()
        );
    }

    #[tokio::test]
    async fn an_entry_for_another_small_part_is_stale_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(&dir, None);
        put(&cache, "models", "m", [1; 32], &data(1000, 1)).await;

        assert_eq!(lookup(&cache, "models", "m", [2; 32]).await, "stale");
        assert!(!cache.root().join("models/m.big").exists());
        assert!(files_in(&cache.root().join("models")).is_empty());
        assert_eq!(lookup(&cache, "models", "m", [1; 32]).await, "miss");
    }

    #[tokio::test]
    async fn a_flipped_byte_in_the_header_or_block_table_is_damaged_at_open_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(&dir, None);
        let path = cache.root().join("models/m.big");
        let big = data(BLOCK_LEN as usize + 100_000, 1);
        // In the length, the block size, the check, and the last block's table entry.
        for at in [44, 50, 60, RECORD_LEN + big.len() + 9] {
            put(&cache, "models", "m", [1; 32], &big).await;
            let mut bytes = fs::read(&path).unwrap();
            bytes[at] ^= 0x10;
            fs::write(&path, &bytes).unwrap();

            assert_eq!(
                lookup(&cache, "models", "m", [1; 32]).await,
                "damaged",
                "byte {at}"
            );
            assert!(files_in(&cache.root().join("models")).is_empty());
        }
    }

    #[tokio::test]
    async fn a_hit_carries_the_checked_last_bytes_and_a_damaged_last_block_is_found_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(&dir, None);
        let block = BLOCK_LEN as usize;
        for len in [
            0,
            1,
            31,
            32,
            33,
            block,
            block + 1,
            block + 31,
            block + 32,
            2 * block + 7,
        ] {
            let big = data(len, 3);
            put(&cache, "models", "m", [1; 32], &big).await;
            let CacheLookup::Hit(body) = cache
                .open(&folder("models"), &name("m"), &[1; 32])
                .await
                .unwrap()
            else {
                panic!("len {len}: a hit");
            };
            let keep = len.min(TAIL_LEN);
            assert_eq!(body.tail.as_deref(), Some(&big[len - keep..]), "len {len}");
            assert_eq!(read_all(body).await, big, "len {len}");
        }
        // Damage in the bytes before a last block shorter than 32: checked at open too.
        let path = cache.root().join("models/m.big");
        for (len, at) in [(block + 10, block - 3), (block + 10, block + 9), (5000, 0)] {
            put(&cache, "models", "m", [1; 32], &data(len, 3)).await;
            let mut bytes = fs::read(&path).unwrap();
            bytes[RECORD_LEN + at] ^= 1;
            fs::write(&path, &bytes).unwrap();
            assert_eq!(
                lookup(&cache, "models", "m", [1; 32]).await,
                "damaged",
                "len {len} at {at}"
            );
            assert!(!path.exists());
        }
    }

    #[tokio::test]
    async fn a_damaged_block_is_never_served_ends_the_stream_and_removes_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(&dir, None);
        let block = BLOCK_LEN as usize;
        let big = data(3 * block + 54_321, 1);
        put(&cache, "models", "m", [1; 32], &big).await;
        let path = cache.root().join("models/m.big");
        let mut bytes = fs::read(&path).unwrap();
        bytes[RECORD_LEN + 2 * block + 10] ^= 0x10;
        fs::write(&path, &bytes).unwrap();

        let CacheLookup::Hit(body) = cache
            .open(&folder("models"), &name("m"), &[1; 32])
            .await
            .unwrap()
        else {
            panic!("the header and table are intact: a hit");
        };
        let mut stream = body.stream;
        let mut served = Vec::new();
        let err = loop {
            match stream.next().await {
                Some(Ok(chunk)) => served.extend_from_slice(&chunk),
                Some(Err(e)) => break e,
                None => panic!("a damaged block must end the stream in an error"),
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string()
                .contains(&format!("from byte {}", 2 * block)),
            "{err}"
        );
        // Exactly the intact blocks before it, and nothing of the damaged one.
        assert_eq!(served, big[..2 * block]);
        assert!(stream.next().await.is_none());
        assert!(files_in(&cache.root().join("models")).is_empty());
        assert_eq!(lookup(&cache, "models", "m", [1; 32]).await, "miss");
    }

    #[tokio::test]
    async fn a_truncated_or_headerless_entry_is_damaged_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(&dir, None);
        let path = cache.root().join("models/m.big");
        for cut in [RECORD_LEN + 500, RECORD_LEN, 10, 0] {
            put(&cache, "models", "m", [1; 32], &data(1000, 1)).await;
            let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.set_len(cut as u64).unwrap();
            drop(file);
            assert_eq!(
                lookup(&cache, "models", "m", [1; 32]).await,
                "damaged",
                "cut at {cut}"
            );
            assert!(!path.exists());
        }
        fs::write(
            &path,
            b"not a cache record at all, just some bytes that are long enough for one",
        )
        .unwrap();
        assert_eq!(lookup(&cache, "models", "m", [1; 32]).await, "damaged");
        assert!(!path.exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn readers_during_rewrites_see_only_whole_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(new_cache(&dir, None));
        let versions: Vec<Vec<u8>> = (0..4u8).map(|v| data(300_000 + v as usize, v)).collect();
        put(&cache, "models", "m", [0; 32], &versions[0]).await;
        let writer = {
            let cache = cache.clone();
            let versions = versions.clone();
            tokio::spawn(async move {
                for round in 0..12u8 {
                    let v = (round % 4) as usize;
                    put(&cache, "models", "m", [v as u8; 32], &versions[v]).await;
                }
            })
        };
        for round in 0..40usize {
            let v = round % 4;
            if let CacheLookup::Hit(body) = cache
                .open(&folder("models"), &name("m"), &[v as u8; 32])
                .await
                .unwrap()
            {
                assert_eq!(read_all(body).await, versions[v]);
            }
        }
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn verify_finds_a_damaged_block_removes_the_entry_and_keeps_an_intact_ones_last_use() {
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(&dir, None);
        let block = BLOCK_LEN as usize;
        put(&cache, "models", "good", [1; 32], &data(3 * block + 7, 1)).await;
        put(&cache, "models", "bad", [2; 32], &data(3 * block + 7, 2)).await;
        let good = cache.root().join("models/good.big");
        let long_ago =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        File::open(&good).unwrap().set_modified(long_ago).unwrap();
        let bad = cache.root().join("models/bad.big");
        let mut bytes = fs::read(&bad).unwrap();
        bytes[RECORD_LEN + block + 10] ^= 0x10;
        fs::write(&bad, &bytes).unwrap();

        let models = folder("models");
        let (good_name, bad_name) = (name("good"), name("bad"));
        let check = |n: &'static str| {
            let n = if n == "good" { &good_name } else { &bad_name };
            cache.verify(&models, n)
        };
        assert_eq!(check("good").await.unwrap(), EntryCheck::Intact);
        assert_eq!(
            fs::metadata(&good).unwrap().modified().unwrap(),
            long_ago,
            "a check is not a use"
        );
        assert_eq!(check("bad").await.unwrap(), EntryCheck::Damaged);
        assert!(!bad.exists());
        assert_eq!(check("bad").await.unwrap(), EntryCheck::Missing);

        // A header that does not decode is damaged too.
        fs::write(&bad, b"not a cache entry").unwrap();
        assert_eq!(check("bad").await.unwrap(), EntryCheck::Damaged);
        assert!(!bad.exists());
    }
}
