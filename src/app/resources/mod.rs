//! Download (F2, PROTOCOL §5.1) and upload (F3, §5.2) of split resources.
//! Everything streams: a resource of several GiB passes through in constant
//! memory, decrypted or encrypted chunk by chunk; plaintext never touches
//! the disk, and the cache only ever holds complete, verified big parts.

use std::sync::{Arc, Mutex as StdMutex};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, watch};

mod download;
mod fills;
mod prefetch;
mod upload;

pub use prefetch::{Prefetch, PrefetchJob};

use download::*;
use fills::*;
use upload::*;

use super::ranged::{CdnReads, parallel_body};
use super::session::{CallError, Session, SessionService};
use crate::domain::cache_record::{small_part_digest, small_sha256_hex};
use crate::domain::cipher::{Decryptor, Encryptor, decrypt};
use crate::domain::keys::{AesKey, resource_key};
use crate::domain::names::{Folder, ResourceName};
use crate::domain::split::{SMALL_PART_MAX, small_part_len};
use crate::ports::object_store::TAIL_LEN;
use crate::ports::{
    BigPartCache, ByteStream, CacheError, CacheLookup, CacheUsage, CacheWriter, CachedEntry,
    HeldSpace, ObjectBody, ObjectStore, StoreError,
};

/// `LOADER_MAX_TRANSFERS` unless configured.
const DEFAULT_TRANSFERS: usize = 16;
/// How often a CDN read cut mid-object is resumed from where it stopped.
const RESUME_ATTEMPTS: u32 = 3;
/// Plaintext chunks made ahead of the client: while one is sent, the next is
/// read, checked and decrypted on another thread.
const PREFETCH: usize = 1;
/// Once this much ciphertext is known, the small part is exactly `SMALL_PART_MAX` bytes.
const SPLIT_KNOWN_AT: usize = (SMALL_PART_MAX as usize * 10).div_ceil(3);

/// How long a transfer waits for a slot before it is refused (PROTOCOL §5.3).
pub const TRANSFER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Every transfer slot stayed taken for [`TRANSFER_WAIT`]: try again later.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0} CDN transfers are in progress (LOADER_MAX_TRANSFERS); try again shortly")]
pub struct TransfersBusy(pub usize);

/// A slot among the CDN downloads and uploads in progress; freed on drop.
pub struct TransferSlot(#[allow(dead_code)] OwnedSemaphorePermit);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("resource {0} not found")]
    NotFound(String),
    #[error("the small part from the API does not decrypt with this user's key")]
    SmallPartUndecryptable,
    #[error(transparent)]
    Cdn(StoreError),
    #[error(transparent)]
    Busy(#[from] TransfersBusy),
    /// §5.4: the CDN's big part belongs to another upload than the API's small part.
    #[error(
        "{0} is being replaced, or its last upload failed: its parts belong to different uploads"
    )]
    Mismatched(String),
    /// A prefetch needs a cache entry, and the cache cannot give one.
    #[error(transparent)]
    Cache(CacheError),
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("the CDN has no bucket {0}")]
    NoSuchBucket(String),
    #[error("the upload body could not be read: {0}")]
    BadBody(String),
    /// The big part is stored, the small part is not: the resource now
    /// answers 409 until it is uploaded again (§5.4).
    #[error("the big part was stored but the small part was not ({0}): upload the resource again")]
    SmallPart(CallError),
    #[error(transparent)]
    Cdn(StoreError),
}

/// Where the big part of a download came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BigPartSource {
    Cache,
    Cdn,
}

pub struct Download {
    pub source: BigPartSource,
    /// Length of the whole ciphertext (small + big).
    pub ciphertext_len: u64,
    /// The plaintext's exact length, when it is known before the first byte
    /// (a cache hit knows its checked last blocks; a CDN read would need
    /// another request).
    pub plaintext_len: Option<u64>,
    /// The plaintext; ends with an error if the ciphertext turns out damaged.
    pub plaintext: ByteStream,
}

/// Space an upload takes in the cache folder outside any entry; see
/// [`ResourceService::upload_room`].
pub struct UploadRoom {
    held: HeldSpace,
    cache: Arc<dyn BigPartCache>,
}

impl UploadRoom {
    pub fn in_cache(cache: Arc<dyn BigPartCache>) -> Self {
        Self {
            held: cache.hold_space(),
            cache,
        }
    }

    pub fn grow(&mut self, bytes: u64) {
        self.held.grow(bytes);
    }

    /// Evicts entries until the cache (this hold included) fits its limit.
    pub async fn make_room(&self) -> Result<(), CacheError> {
        self.cache.make_room().await
    }
}

pub struct ResourceService {
    session: Arc<SessionService>,
    cache: Arc<dyn BigPartCache>,
    resource_key: AesKey,
    cdn_reads: CdnReads,
    /// Caps CDN downloads and uploads in progress (`LOADER_MAX_TRANSFERS`).
    transfers: Arc<Semaphore>,
    max_transfers: usize,
    transfer_wait: std::time::Duration,
    /// CDN reads in progress, one per resource: concurrent misses wait for it.
    fills: Arc<Fills>,
}

impl ResourceService {
    pub fn new(session: Arc<SessionService>, cache: Arc<dyn BigPartCache>) -> Self {
        Self {
            session,
            cache,
            resource_key: AesKey::from_key_string(&resource_key()),
            cdn_reads: CdnReads::default(),
            transfers: Arc::new(Semaphore::new(DEFAULT_TRANSFERS)),
            max_transfers: DEFAULT_TRANSFERS,
            transfer_wait: TRANSFER_WAIT,
            fills: Arc::default(),
        }
    }

    /// At most `max` CDN downloads and uploads at once; the next waits up to
    /// `wait` for a slot.
    pub fn with_transfer_limit(mut self, max: usize, wait: std::time::Duration) -> Self {
        let max = max.max(1);
        self.transfers = Arc::new(Semaphore::new(max));
        self.max_transfers = max;
        self.transfer_wait = wait;
        self
    }

    /// A slot for a CDN download or an upload; cache hits need none.
    pub async fn transfer_slot(&self) -> Result<TransferSlot, TransfersBusy> {
        match tokio::time::timeout(self.transfer_wait, self.transfers.clone().acquire_owned()).await
        {
            Ok(Ok(permit)) => Ok(TransferSlot(permit)),
            _ => Err(TransfersBusy(self.max_transfers)),
        }
    }

    /// How big parts are read from the CDN (ranged GETs in parallel by default).
    pub fn with_cdn_reads(mut self, reads: CdnReads) -> Self {
        self.cdn_reads = reads;
        self
    }

    /// What the cache holds now, and its limit.
    pub async fn cache_usage(&self) -> Result<CacheUsage, CacheError> {
        self.cache.usage().await
    }

    /// Removes the cached big part of `folder/name`: the entry removed, or
    /// `None` when there was none.
    pub async fn remove_cached(
        &self,
        folder: &Folder,
        name: &ResourceName,
    ) -> Result<Option<CachedEntry>, CacheError> {
        let entry = self
            .cache
            .entries()
            .await?
            .into_iter()
            .find(|e| e.folder == folder.as_str() && e.name == name.as_str());
        if entry.is_some() {
            self.cache.remove(folder, name).await?;
        }
        Ok(entry)
    }

    /// Removes the entries last used before `unused_since`, then the least
    /// recently used ones until the cache holds at most `max_bytes` (held
    /// uploads and writes in progress count, but are not removed). Returns
    /// what it removed, oldest first.
    pub async fn prune(
        &self,
        max_bytes: Option<u64>,
        unused_since: Option<std::time::SystemTime>,
    ) -> Result<Vec<CachedEntry>, CacheError> {
        let mut entries = self.cache.entries().await?;
        entries.sort_by_key(|e| e.last_used);
        let mut usage = self.cache.usage().await?.bytes;
        let mut removed = Vec::new();
        for entry in entries {
            let unused = unused_since.is_some_and(|since| entry.last_used < since);
            let over = max_bytes.is_some_and(|max| usage > max);
            if !(unused || over) {
                continue;
            }
            let (Ok(folder), Ok(name)) = (
                Folder::parse(&entry.folder),
                ResourceName::parse(&entry.name),
            ) else {
                continue;
            };
            self.cache.remove(&folder, &name).await?;
            usage = usage.saturating_sub(entry.bytes);
            removed.push(entry);
        }
        Ok(removed)
    }

    /// Re-checks every cached big part's blocks; returns the entries checked
    /// and, among them, the damaged ones (removed).
    pub async fn verify_cache(&self) -> Result<(u64, Vec<CachedEntry>), CacheError> {
        let mut checked = 0;
        let mut damaged = Vec::new();
        for entry in self.cache_entries().await? {
            let (Ok(folder), Ok(name)) = (
                Folder::parse(&entry.folder),
                ResourceName::parse(&entry.name),
            ) else {
                continue;
            };
            match self.cache.verify(&folder, &name).await? {
                crate::ports::EntryCheck::Intact => checked += 1,
                crate::ports::EntryCheck::Damaged => {
                    checked += 1;
                    tracing::warn!(%folder, %name, "cache verify: damaged entry removed");
                    damaged.push(entry);
                }
                crate::ports::EntryCheck::Missing => {}
            }
        }
        Ok((checked, damaged))
    }

    /// The cached big parts, by folder and name.
    pub async fn cache_entries(&self) -> Result<Vec<CachedEntry>, CacheError> {
        let mut entries = self.cache.entries().await?;
        entries.sort_by(|a, b| (&a.folder, &a.name).cmp(&(&b.folder, &b.name)));
        Ok(entries)
    }

    /// Room in the cache for an upload held before its folder is known: its
    /// bytes count in the cache's usage while the returned hold lives.
    pub fn upload_room(&self) -> UploadRoom {
        UploadRoom::in_cache(self.cache.clone())
    }

    /// The small part of `folder/name` from the API, decrypted with this
    /// user's key, and the session that fetched it.
    async fn small_part(
        &self,
        folder: &Folder,
        name: &ResourceName,
    ) -> Result<(Bytes, Arc<Session>), LoadError> {
        let small_name = name.small_part_name();
        let api = self.session.api().clone();
        let (small_wire, session) = self
            .session
            .call(|s: Arc<Session>| {
                let (api, folder, small_name) = (api.clone(), folder.clone(), small_name.clone());
                async move {
                    api.get_resource(
                        &s.token,
                        Some(&folder),
                        &small_name,
                        &s.credentials.password,
                        &s.device.hardware,
                    )
                    .await
                }
            })
            .await
            .map_err(|e| match e {
                CallError::Api(crate::ports::ApiError::NotFound) => {
                    LoadError::NotFound(format!("{folder}/{name}"))
                }
                other => LoadError::Call(other),
            })?;
        let small = Bytes::from(
            decrypt(&session.api_key, &small_wire)
                .map_err(|_| LoadError::SmallPartUndecryptable)?,
        );
        Ok((small, session))
    }

    /// F2: small part from the API, big part from the cache when it belongs with
    /// that small part and is intact, else from the CDN (filling the cache).
    /// Concurrent misses of one resource make one CDN read: the others wait
    /// for it to end and then find the entry in the cache.
    pub async fn download(
        &self,
        folder: &Folder,
        name: &ResourceName,
    ) -> Result<Download, LoadError> {
        loop {
            match self.try_download(folder, name).await? {
                Ok(download) => return Ok(download),
                // Resolves when the read ends, however it ends; then look again.
                Err(mut wait) => {
                    tracing::debug!(%folder, %name, "waiting for the CDN read under way");
                    let _ = wait.changed().await;
                }
            }
        }
    }

    async fn try_download(
        &self,
        folder: &Folder,
        name: &ResourceName,
    ) -> Result<Result<Download, watch::Receiver<()>>, LoadError> {
        let (mut small, session) = self.small_part(folder, name).await?;
        let mut digest = small_part_digest(&small);

        let key = name.big_part_key();
        match self.cache.open(folder, name, &digest).await {
            Ok(CacheLookup::Hit(body)) => {
                tracing::debug!(%folder, %name, "big part from the cache");
                let total = small.len() as u64 + body.len;
                let plaintext_len = body
                    .tail
                    .as_deref()
                    .and_then(|tail| exact_plaintext_len(&self.resource_key, &small, tail, total));
                // A block found damaged mid-way (the cache checks each one just
                // before it is served) is picked up from the CDN at that byte.
                // The cache knows no ETag: a refetch must carry this small part's tag.
                let resume = Resume {
                    store: session.store.clone(),
                    bucket: folder.clone(),
                    key,
                    big_len: body.len,
                    version: None,
                    small_sha256: small_sha256_hex(&digest),
                };
                return Ok(Ok(Download {
                    source: BigPartSource::Cache,
                    ciphertext_len: total,
                    plaintext_len,
                    plaintext: decrypting_stream(
                        &self.resource_key,
                        small,
                        body.stream,
                        total,
                        None,
                        Some(resume),
                        None,
                    ),
                }));
            }
            Ok(CacheLookup::Miss) => {}
            Ok(CacheLookup::Stale) => {
                tracing::info!(%folder, %name, "cached big part is stale; fetching from the CDN")
            }
            Ok(CacheLookup::Damaged) => {
                tracing::warn!(%folder, %name, "cached big part is damaged; fetching from the CDN")
            }
            Err(e) => {
                tracing::warn!(%folder, %name, "cache unreadable ({e}); fetching from the CDN")
            }
        }

        let fill = match self.fills.claim(folder, name) {
            Claim::Leader(fill) => fill,
            Claim::Follower(wait) => return Ok(Err(wait)),
        };
        let slot = self.transfer_slot().await?;
        let body;
        (body, small, digest) = self
            .open_big_part(folder, name, &session, small, digest)
            .await?;
        let writer = match self.cache.create(folder, name, &digest).await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(%folder, %name, "not caching the big part: {e}");
                None
            }
        };
        let total = small.len() as u64 + body.len;
        let resume = Resume {
            store: session.store.clone(),
            bucket: folder.clone(),
            key: key.clone(),
            big_len: body.len,
            version: body.version.clone(),
            small_sha256: small_sha256_hex(&digest),
        };
        let big = parallel_body(
            session.store.clone(),
            folder.clone(),
            key,
            body,
            self.cdn_reads,
        );
        Ok(Ok(Download {
            source: BigPartSource::Cdn,
            ciphertext_len: total,
            plaintext_len: None,
            plaintext: decrypting_stream(
                &self.resource_key,
                small,
                big,
                total,
                writer,
                Some(resume),
                Some(CdnHold {
                    _slot: slot,
                    _fill: fill,
                }),
            ),
        }))
    }

    /// Opens the big part in the CDN, checked against the small part
    /// (`small`, `digest`) per §5.4: a big part tagged for another small part
    /// is another upload's. The small part may just have been replaced (an
    /// upload finishing): it is asked for once more before refusing. Returns
    /// the body and the small part it belongs with.
    async fn open_big_part(
        &self,
        folder: &Folder,
        name: &ResourceName,
        session: &Session,
        small: Bytes,
        digest: [u8; 32],
    ) -> Result<(ObjectBody, Bytes, [u8; 32]), LoadError> {
        let body = session
            .store
            .get(folder, &name.big_part_key(), 0)
            .await
            .map_err(|e| match e {
                StoreError::NoSuchKey(_) | StoreError::NoSuchBucket(_) => {
                    LoadError::NotFound(format!("{folder}/{name} (no big part in the CDN)"))
                }
                other => LoadError::Cdn(other),
            })?;
        match body.small_sha256.clone() {
            Some(tag) if tag != small_sha256_hex(&digest) => {
                let (again, _) = self.small_part(folder, name).await?;
                let again_digest = small_part_digest(&again);
                if tag != small_sha256_hex(&again_digest) {
                    tracing::warn!(%folder, %name, "the big part in the CDN belongs to another upload");
                    return Err(LoadError::Mismatched(format!("{folder}/{name}")));
                }
                Ok((body, again, again_digest))
            }
            _ => Ok((body, small, digest)),
        }
    }

    /// F3: encrypts `plaintext` with the resource key, puts the big part in the
    /// CDN and the cache, then the small part in the API.
    pub async fn upload(
        &self,
        folder: &Folder,
        name: &ResourceName,
        mut plaintext: ByteStream,
    ) -> Result<u64, UploadError> {
        let session = self.session.session()?;
        let mut iv = [0u8; 16];
        getrandom::fill(&mut iv)
            .map_err(|e| UploadError::Cdn(StoreError::Unexpected(format!("no randomness: {e}"))))?;
        let mut encryptor = Encryptor::new(&self.resource_key, iv);

        // Encrypt until the split point is known: at most SPLIT_KNOWN_AT bytes are held.
        let mut head = Vec::with_capacity(SPLIT_KNOWN_AT + 64 * 1024);
        let mut ended = false;
        while head.len() < SPLIT_KNOWN_AT {
            match plaintext.next().await {
                Some(Ok(chunk)) => encryptor.update(&chunk, &mut head),
                Some(Err(e)) => return Err(UploadError::BadBody(e.to_string())),
                None => {
                    ended = true;
                    break;
                }
            }
        }
        let mut encryptor = Some(encryptor);
        if ended && let Some(enc) = encryptor.take() {
            enc.finish(&mut head);
        }
        let small_len = if ended {
            small_part_len(head.len() as u64) as usize
        } else {
            SMALL_PART_MAX as usize
        };
        let head = Bytes::from(head);
        let small = head.slice(..small_len);
        let big_head = head.slice(small_len..);
        let digest = small_part_digest(&small);

        let writer = match self.cache.create(folder, name, &digest).await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(%folder, %name, "not caching the uploaded big part: {e}");
                None
            }
        };
        let shared = Arc::new(UploadShared {
            writer: Mutex::new(writer),
            input_error: StdMutex::new(None),
            big_len: StdMutex::new(0),
        });
        let big = encrypting_stream(big_head, plaintext, encryptor, shared.clone());
        let tag = small_sha256_hex(&digest);
        let put = session
            .store
            .put_tagged(folder, &name.big_part_key(), big, Some(&tag))
            .await;
        let input_error = shared
            .input_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(reason) = input_error {
            return Err(UploadError::BadBody(reason));
        }
        put.map_err(|e| match e {
            StoreError::NoSuchBucket(b) => UploadError::NoSuchBucket(b),
            other => UploadError::Cdn(other),
        })?;
        if let Some(writer) = shared.writer.lock().await.take()
            && let Err(e) = writer.commit().await
        {
            tracing::warn!(%folder, %name, "uploaded big part not cached: {e}");
        }

        let small_name = name.small_part_name();
        let api = self.session.api().clone();
        self.session
            .call(|s: Arc<Session>| {
                let (api, folder, small_name, small) = (
                    api.clone(),
                    folder.clone(),
                    small_name.clone(),
                    small.clone(),
                );
                async move {
                    api.put_resource(&s.token, &folder, &small_name, small)
                        .await
                }
            })
            .await
            .map_err(UploadError::SmallPart)?;
        let big_len = *shared.big_len.lock().unwrap_or_else(|p| p.into_inner());
        Ok(small.len() as u64 + big_len)
    }
}
