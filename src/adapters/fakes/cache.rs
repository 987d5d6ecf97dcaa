//! An in-memory big-part cache that checks records and block checksums the
//! way a real one must (a damaged record at open, a damaged block when the
//! stream reaches it), with hooks to damage entries and to make writes fail.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::lock;
use crate::domain::cache_record::{CacheRecord, RecordBuilder, block_checksum};
use crate::domain::names::{Folder, ResourceName};
use crate::ports::object_store::TAIL_LEN;
use crate::ports::{
    BigPartCache, CacheError, CacheLookup, CacheUsage, CacheWriter, CachedEntry, HeldSpace,
    ObjectBody,
};

type Key = (String, String);

#[derive(Default)]
struct State {
    /// The record, its bytes, and whether the record itself is damaged.
    entries: HashMap<Key, (CacheRecord, Bytes, bool)>,
    fail_writes: bool,
    commits: usize,
    /// Rooms made (`make_room` calls).
    rooms_made: usize,
    /// Last write or hit of each entry.
    last_used: HashMap<Key, std::time::SystemTime>,
}

#[derive(Default, Clone)]
pub struct FakeCache {
    state: Arc<Mutex<State>>,
    held: Arc<AtomicU64>,
}

fn key(folder: &Folder, name: &ResourceName) -> Key {
    (folder.as_str().to_owned(), name.as_str().to_owned())
}

impl FakeCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times room was made for space held outside entries.
    pub fn rooms_made(&self) -> usize {
        lock(&self.state).rooms_made
    }

    pub fn contains(&self, folder: &str, name: &str) -> bool {
        lock(&self.state)
            .entries
            .contains_key(&(folder.to_owned(), name.to_owned()))
    }

    pub fn data(&self, folder: &str, name: &str) -> Option<Bytes> {
        lock(&self.state)
            .entries
            .get(&(folder.to_owned(), name.to_owned()))
            .map(|(_, d, _)| d.clone())
    }

    /// Damages the entry's record (header or block table): found when it is opened.
    pub fn damage_record(&self, folder: &str, name: &str) {
        let mut s = lock(&self.state);
        if let Some((_, _, damaged)) = s.entries.get_mut(&(folder.to_owned(), name.to_owned())) {
            *damaged = true;
        }
    }

    /// Flips one bit of stored byte `at`, as a failing disk would: found when the stream reaches its
    /// block, or at open when it lies in the blocks of the last 32 bytes.
    pub fn damage_at(&self, folder: &str, name: &str, at: usize) {
        let mut s = lock(&self.state);
        if let Some((_, data, _)) = s.entries.get_mut(&(folder.to_owned(), name.to_owned())) {
            let mut bytes = data.to_vec();
            if let Some(b) = bytes.get_mut(at) {
                *b ^= 1;
            }
            *data = Bytes::from(bytes);
        }
    }

    /// Stores an entry for an older small part (as left by a previous upload).
    pub fn insert_raw(&self, folder: &str, name: &str, small_digest: [u8; 32], data: Bytes) {
        let mut record = RecordBuilder::new(small_digest);
        record.update(&data);
        let mut s = lock(&self.state);
        let key = (folder.to_owned(), name.to_owned());
        s.last_used
            .insert(key.clone(), std::time::SystemTime::now());
        s.entries.insert(key, (record.finish(), data, false));
    }

    /// Forgets every entry (to force the next download through the CDN).
    pub fn remove_all_for_test(&self) {
        lock(&self.state).entries.clear();
    }

    /// Makes every write fail, as a full or read-only disk would.
    pub fn set_fail_writes(&self, fail: bool) {
        lock(&self.state).fail_writes = fail;
    }

    pub fn commits(&self) -> usize {
        lock(&self.state).commits
    }
}

#[async_trait]
impl BigPartCache for FakeCache {
    async fn open(
        &self,
        folder: &Folder,
        name: &ResourceName,
        small_digest: &[u8; 32],
    ) -> Result<CacheLookup, CacheError> {
        let mut s = lock(&self.state);
        let k = key(folder, name);
        let Some((record, data, record_damaged)) = s.entries.get(&k).cloned() else {
            return Ok(CacheLookup::Miss);
        };
        if &record.small_digest != small_digest {
            s.entries.remove(&k);
            return Ok(CacheLookup::Stale);
        }
        if record_damaged || record.big_len != data.len() as u64 {
            s.entries.remove(&k);
            return Ok(CacheLookup::Damaged);
        }
        s.last_used.insert(k.clone(), std::time::SystemTime::now());
        // Intact blocks in pieces of 48 KiB, up to the first damaged block.
        let mut pieces: Vec<std::io::Result<Bytes>> = Vec::new();
        let mut damaged_at = None;
        for (index, block) in data.chunks(record.block_len as usize).enumerate() {
            if record.block(index as u64) != Some(block_checksum(block)) {
                damaged_at = Some(index as u64 * u64::from(record.block_len));
                break;
            }
            pieces.extend(
                block
                    .chunks(48 * 1024)
                    .map(|c| Ok(Bytes::copy_from_slice(c))),
            );
        }
        // Like the real cache, the blocks of the last 32 bytes are checked at open.
        let tail_from = data.len().saturating_sub(TAIL_LEN) as u64 / u64::from(record.block_len);
        if damaged_at.is_some_and(|at| at / u64::from(record.block_len) >= tail_from) {
            s.entries.remove(&k);
            return Ok(CacheLookup::Damaged);
        }
        let state = self.state.clone();
        let tail = futures::stream::iter(damaged_at).map(move |at| {
            // The real cache removes the entry when it finds the damage.
            lock(&state).entries.remove(&k);
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("fake: the cached big part is damaged from byte {at} on"),
            ))
        });
        let keep = data.len().min(TAIL_LEN);
        Ok(CacheLookup::Hit(ObjectBody {
            small_sha256: None,
            len: data.len() as u64,
            version: None,
            tail: Some(data.slice(data.len() - keep..)),
            stream: Box::pin(futures::stream::iter(pieces).chain(tail)),
        }))
    }

    async fn create(
        &self,
        folder: &Folder,
        name: &ResourceName,
        small_digest: &[u8; 32],
    ) -> Result<Box<dyn CacheWriter>, CacheError> {
        if lock(&self.state).fail_writes {
            return Err(CacheError::io(
                "fake: writing",
                std::io::Error::new(std::io::ErrorKind::StorageFull, "fake: disk full"),
            ));
        }
        Ok(Box::new(FakeCacheWriter {
            cache: self.state.clone(),
            key: key(folder, name),
            data: BytesMut::new(),
            record: RecordBuilder::new(*small_digest),
        }))
    }

    async fn remove(&self, folder: &Folder, name: &ResourceName) -> Result<(), CacheError> {
        lock(&self.state).entries.remove(&key(folder, name));
        Ok(())
    }

    async fn usage(&self) -> Result<CacheUsage, CacheError> {
        let s = lock(&self.state);
        Ok(CacheUsage {
            bytes: s.entries.values().map(|(r, _, _)| r.big_len).sum::<u64>()
                + self.held.load(Ordering::Relaxed),
            entries: s.entries.len() as u64,
            limit: None,
        })
    }

    fn hold_space(&self) -> HeldSpace {
        HeldSpace::counting_into(self.held.clone())
    }

    async fn make_room(&self) -> Result<(), CacheError> {
        lock(&self.state).rooms_made += 1;
        Ok(())
    }

    async fn entries(&self) -> Result<Vec<CachedEntry>, CacheError> {
        let s = lock(&self.state);
        let mut list: Vec<CachedEntry> = s
            .entries
            .iter()
            .map(|(key, (r, _, _))| CachedEntry {
                folder: key.0.clone(),
                name: key.1.clone(),
                bytes: r.big_len,
                last_used: s
                    .last_used
                    .get(key)
                    .copied()
                    .unwrap_or(std::time::UNIX_EPOCH),
            })
            .collect();
        list.sort_by(|a, b| (&a.folder, &a.name).cmp(&(&b.folder, &b.name)));
        Ok(list)
    }

    async fn verify(
        &self,
        folder: &Folder,
        name: &ResourceName,
    ) -> Result<crate::ports::EntryCheck, CacheError> {
        use crate::ports::EntryCheck;
        let mut s = lock(&self.state);
        let k = key(folder, name);
        let Some((record, data, record_damaged)) = s.entries.get(&k) else {
            return Ok(EntryCheck::Missing);
        };
        let intact = !record_damaged
            && record.big_len == data.len() as u64
            && data
                .chunks(record.block_len as usize)
                .enumerate()
                .all(|(i, block)| record.block(i as u64) == Some(block_checksum(block)));
        if intact {
            Ok(EntryCheck::Intact)
        } else {
            s.entries.remove(&k);
            Ok(EntryCheck::Damaged)
        }
    }

    async fn check_writable(&self) -> Result<(), CacheError> {
        if lock(&self.state).fail_writes {
            Err(CacheError::NoRoom { floor: 0 })
        } else {
            Ok(())
        }
    }
}

struct FakeCacheWriter {
    cache: Arc<Mutex<State>>,
    key: Key,
    data: BytesMut,
    record: RecordBuilder,
}

#[async_trait]
impl CacheWriter for FakeCacheWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), CacheError> {
        if lock(&self.cache).fail_writes {
            return Err(CacheError::io(
                "fake: writing",
                std::io::Error::new(std::io::ErrorKind::StorageFull, "fake: disk full"),
            ));
        }
        self.record.update(&chunk);
        self.data.extend_from_slice(&chunk);
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), CacheError> {
        let record = self.record.finish();
        let mut s = lock(&self.cache);
        s.last_used
            .insert(self.key.clone(), std::time::SystemTime::now());
        s.entries
            .insert(self.key, (record, self.data.freeze(), false));
        s.commits += 1;
        Ok(())
    }
}
