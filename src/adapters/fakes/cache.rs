//! An in-memory big-part cache that checks records and checksums the way a
//! real one must, with hooks to damage entries and to make writes fail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use super::lock;
use crate::domain::cache_record::{BigPartChecksum, CacheRecord};
use crate::domain::names::{Folder, ResourceName};
use crate::ports::{
    BigPartCache, CacheError, CacheLookup, CacheUsage, CacheWriter, CachedEntry, ObjectBody,
};

type Key = (String, String);

#[derive(Default)]
struct State {
    entries: HashMap<Key, (CacheRecord, Bytes)>,
    fail_writes: bool,
    commits: usize,
}

#[derive(Default, Clone)]
pub struct FakeCache {
    state: Arc<Mutex<State>>,
}

fn key(folder: &Folder, name: &ResourceName) -> Key {
    (folder.as_str().to_owned(), name.as_str().to_owned())
}

impl FakeCache {
    pub fn new() -> Self {
        Self::default()
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
            .map(|(_, d)| d.clone())
    }

    /// Flips one bit of the stored bytes, as a failing disk would.
    pub fn damage(&self, folder: &str, name: &str) {
        let mut s = lock(&self.state);
        if let Some((_, data)) = s.entries.get_mut(&(folder.to_owned(), name.to_owned())) {
            let mut bytes = data.to_vec();
            if let Some(b) = bytes.last_mut() {
                *b ^= 1;
            }
            *data = Bytes::from(bytes);
        }
    }

    /// Stores an entry for an older small part (as left by a previous upload).
    pub fn insert_raw(&self, folder: &str, name: &str, small_digest: [u8; 32], data: Bytes) {
        let mut sum = BigPartChecksum::new();
        sum.update(&data);
        let record = CacheRecord {
            small_digest,
            big_len: data.len() as u64,
            checksum: sum.finish(),
        };
        lock(&self.state)
            .entries
            .insert((folder.to_owned(), name.to_owned()), (record, data));
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
        let Some((record, data)) = s.entries.get(&k).cloned() else {
            return Ok(CacheLookup::Miss);
        };
        if &record.small_digest != small_digest {
            s.entries.remove(&k);
            return Ok(CacheLookup::Stale);
        }
        let mut sum = BigPartChecksum::new();
        sum.update(&data);
        if sum.len() != record.big_len || sum.finish() != record.checksum {
            s.entries.remove(&k);
            return Ok(CacheLookup::Damaged);
        }
        let len = data.len() as u64;
        let pieces: Vec<std::io::Result<Bytes>> = data
            .chunks(48 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Ok(CacheLookup::Hit(ObjectBody {
            len,
            version: None,
            stream: Box::pin(futures::stream::iter(pieces)),
        }))
    }

    async fn create(
        &self,
        folder: &Folder,
        name: &ResourceName,
        small_digest: &[u8; 32],
    ) -> Result<Box<dyn CacheWriter>, CacheError> {
        if lock(&self.state).fail_writes {
            return Err(CacheError::Io("fake: disk full".into()));
        }
        Ok(Box::new(FakeCacheWriter {
            cache: self.state.clone(),
            key: key(folder, name),
            small_digest: *small_digest,
            data: BytesMut::new(),
            sum: BigPartChecksum::new(),
        }))
    }

    async fn remove(&self, folder: &Folder, name: &ResourceName) -> Result<(), CacheError> {
        lock(&self.state).entries.remove(&key(folder, name));
        Ok(())
    }

    async fn usage(&self) -> Result<CacheUsage, CacheError> {
        let s = lock(&self.state);
        Ok(CacheUsage {
            bytes: s.entries.values().map(|(r, _)| r.big_len).sum(),
            entries: s.entries.len() as u64,
            limit: None,
        })
    }

    async fn entries(&self) -> Result<Vec<CachedEntry>, CacheError> {
        let s = lock(&self.state);
        let mut list: Vec<CachedEntry> = s
            .entries
            .iter()
            .map(|((folder, name), (r, _))| CachedEntry {
                folder: folder.clone(),
                name: name.clone(),
                bytes: r.big_len,
            })
            .collect();
        list.sort_by(|a, b| (&a.folder, &a.name).cmp(&(&b.folder, &b.name)));
        Ok(list)
    }
}

struct FakeCacheWriter {
    cache: Arc<Mutex<State>>,
    key: Key,
    small_digest: [u8; 32],
    data: BytesMut,
    sum: BigPartChecksum,
}

#[async_trait]
impl CacheWriter for FakeCacheWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), CacheError> {
        if lock(&self.cache).fail_writes {
            return Err(CacheError::Io("fake: disk full".into()));
        }
        self.sum.update(&chunk);
        self.data.extend_from_slice(&chunk);
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), CacheError> {
        let record = CacheRecord {
            small_digest: self.small_digest,
            big_len: self.sum.len(),
            checksum: self.sum.finish(),
        };
        let mut s = lock(&self.cache);
        s.entries
            .insert(self.key.clone(), (record, self.data.clone().freeze()));
        s.commits += 1;
        Ok(())
    }
}
