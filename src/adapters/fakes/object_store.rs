//! An in-memory S3: buckets, objects, streamed reads in small chunks, and
//! faults (fail the next calls, cut a read short, stall).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::{Fault, FaultQueue, lock};
use crate::domain::cdn::CdnConfig;
use crate::domain::names::Folder;
use crate::ports::{ByteStream, ObjectBody, ObjectStore, ObjectStoreConnector, StoreError};

#[derive(Default)]
struct State {
    buckets: HashSet<String>,
    objects: HashMap<(String, String), Bytes>,
    /// Each object's `small-sha256` metadata, when it has one.
    small_sha256: HashMap<(String, String), String>,
    /// Cut the next N reads after this many bytes.
    cut_reads: Vec<u64>,
    /// After the next cut, the object is replaced by these bytes (a re-upload mid-download).
    replace_after_cut: Option<Bytes>,
}

pub struct FakeObjectStore {
    state: Mutex<State>,
    get_faults: FaultQueue<StoreError>,
    put_faults: FaultQueue<StoreError>,
    gets: Mutex<Vec<(String, u64)>>,
    /// Reads that got past their faults and answered with a body.
    answered: Mutex<usize>,
    puts: Mutex<usize>,
    chunk: usize,
}

impl Default for FakeObjectStore {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            get_faults: FaultQueue::default(),
            put_faults: FaultQueue::default(),
            gets: Mutex::default(),
            answered: Mutex::default(),
            puts: Mutex::default(),
            chunk: 64 * 1024,
        }
    }
}

impl FakeObjectStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn create_bucket(&self, bucket: &str) {
        lock(&self.state).buckets.insert(bucket.to_owned());
    }

    /// Stores an object without metadata, as older tools did.
    pub fn put_object(&self, bucket: &str, key: &str, data: impl Into<Bytes>) {
        let mut s = lock(&self.state);
        s.buckets.insert(bucket.to_owned());
        let at = (bucket.to_owned(), key.to_owned());
        s.small_sha256.remove(&at);
        s.objects.insert(at, data.into());
    }

    /// The object's `small-sha256` metadata, if any.
    pub fn small_sha256(&self, bucket: &str, key: &str) -> Option<String> {
        lock(&self.state)
            .small_sha256
            .get(&(bucket.to_owned(), key.to_owned()))
            .cloned()
    }

    pub fn object(&self, bucket: &str, key: &str) -> Option<Bytes> {
        lock(&self.state)
            .objects
            .get(&(bucket.to_owned(), key.to_owned()))
            .cloned()
    }

    pub fn remove_object(&self, bucket: &str, key: &str) {
        lock(&self.state)
            .objects
            .remove(&(bucket.to_owned(), key.to_owned()));
    }

    pub fn fail_next_gets(&self, count: usize, error: StoreError) {
        self.get_faults.push(Fault::Fail(error), count);
    }

    pub fn fail_next_puts(&self, count: usize, error: StoreError) {
        self.put_faults.push(Fault::Fail(error), count);
    }

    pub fn stall_next_gets(&self, count: usize, delay: Duration) {
        self.get_faults.push(Fault::Stall(delay), count);
    }

    /// The next read ends with a connection error after `after` bytes.
    pub fn cut_next_read(&self, after: u64) {
        lock(&self.state).cut_reads.push(after);
    }

    /// The next read is cut after `after` bytes, and the object replaced by `data` meanwhile.
    pub fn cut_next_read_and_replace(&self, after: u64, data: impl Into<Bytes>) {
        let mut s = lock(&self.state);
        s.cut_reads.push(after);
        s.replace_after_cut = Some(data.into());
    }

    /// Every read so far: (key, offset).
    pub fn gets(&self) -> Vec<(String, u64)> {
        lock(&self.gets).clone()
    }

    /// Reads that answered (a read still stalled, or dropped while
    /// stalled, is not counted).
    pub fn answered_gets(&self) -> usize {
        *lock(&self.answered)
    }

    pub fn puts(&self) -> usize {
        *lock(&self.puts)
    }
}

#[async_trait]
impl ObjectStore for FakeObjectStore {
    async fn get(&self, bucket: &Folder, key: &str, from: u64) -> Result<ObjectBody, StoreError> {
        lock(&self.gets).push((key.to_owned(), from));
        self.get_faults.apply().await?;
        let (data, cut, small_sha256) = {
            let mut s = lock(&self.state);
            if !s.buckets.contains(bucket.as_str()) {
                return Err(StoreError::NoSuchBucket(bucket.to_string()));
            }
            let data = s
                .objects
                .get(&(bucket.as_str().to_owned(), key.to_owned()))
                .cloned()
                .ok_or_else(|| StoreError::NoSuchKey(key.to_owned()))?;
            let cut = if s.cut_reads.is_empty() {
                None
            } else {
                Some(s.cut_reads.remove(0))
            };
            if cut.is_some()
                && let Some(newer) = s.replace_after_cut.take()
            {
                s.objects
                    .insert((bucket.as_str().to_owned(), key.to_owned()), newer);
            }
            let tag = s
                .small_sha256
                .get(&(bucket.as_str().to_owned(), key.to_owned()))
                .cloned();
            (data, cut, tag)
        };
        *lock(&self.answered) += 1;
        let start = (from as usize).min(data.len());
        let body = data.slice(start..);
        let len = body.len() as u64;
        let chunk = self.chunk;
        let served = match cut {
            Some(after) => body.slice(..(after as usize).min(body.len())),
            None => body.clone(),
        };
        let pieces: Vec<std::io::Result<Bytes>> = (0..served.len())
            .step_by(chunk)
            .map(|at| Ok(served.slice(at..(at + chunk).min(served.len()))))
            .chain(cut.map(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "fake: connection cut",
                ))
            }))
            .collect();
        Ok(ObjectBody {
            len,
            version: Some(format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&data))),
            small_sha256,
            tail: None,
            stream: Box::pin(futures::stream::iter(pieces)),
        })
    }

    async fn put_tagged(
        &self,
        bucket: &Folder,
        key: &str,
        mut body: ByteStream,
        small_sha256: Option<&str>,
    ) -> Result<(), StoreError> {
        *lock(&self.puts) += 1;
        self.put_faults.apply().await?;
        if !lock(&self.state).buckets.contains(bucket.as_str()) {
            return Err(StoreError::NoSuchBucket(bucket.to_string()));
        }
        let mut all = BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| StoreError::Unexpected(format!("upload body failed: {e}")))?;
            all.extend_from_slice(&chunk);
        }
        let mut s = lock(&self.state);
        let at = (bucket.as_str().to_owned(), key.to_owned());
        match small_sha256 {
            Some(tag) => s.small_sha256.insert(at.clone(), tag.to_owned()),
            None => s.small_sha256.remove(&at),
        };
        s.objects.insert(at, all.freeze());
        Ok(())
    }
}

/// Hands out one shared fake store and remembers the configuration it was given.
pub struct FakeObjectStoreConnector {
    store: Arc<FakeObjectStore>,
    seen: Mutex<Vec<CdnConfig>>,
}

impl FakeObjectStoreConnector {
    pub fn new(store: Arc<FakeObjectStore>) -> Self {
        Self {
            store,
            seen: Mutex::default(),
        }
    }

    pub fn configs_seen(&self) -> Vec<CdnConfig> {
        lock(&self.seen).clone()
    }
}

impl ObjectStoreConnector for FakeObjectStoreConnector {
    fn connect(&self, cdn: &CdnConfig) -> Result<Arc<dyn ObjectStore>, StoreError> {
        lock(&self.seen).push(cdn.clone());
        Ok(self.store.clone())
    }
}
