//! The local cache of big parts on the filesystem: one file per entry, a
//! checksummed header, the bytes, then a checksum per block. It must never
//! serve a block before it passed its checksum, never expose a half-written
//! entry, and never write outside its root. Each byte is read once: a block
//! is checked as it is read for serving (and the next one is read meanwhile),
//! so a hit costs one pass over the disk, not a checking pass and a serving
//! pass.
//!
//! Layout: `{root}/{folder}/{name}.big` = header (`RECORD_LEN` bytes) || big
//! part || block table (see `domain::cache_record`). Opening an entry checks
//! the header, the small part it belongs with, the file's length and the
//! table; a damaged block is found when it is read, and the entry is then
//! removed and the stream ends in an `InvalidData` error at that block's
//! first byte, for the caller to pick the rest up elsewhere. Writers fill
//! `{root}/{folder}/.{name}.big.tmp-<random>` and rename it into place once it
//! is durable; a crash leaves only such temporary files, removed when the
//! cache is next opened.
//!
//! Symlinks: the root may be one (it is canonicalised once), but nothing
//! below it is followed. A `{root}/{folder}` that is not a real directory is
//! a miss for `open` and `remove`, and is replaced by a real directory by
//! `create`; an entry path that is not a regular file is damaged.
//!
//! Size limit: usage counts the bytes of entry files on disk (header
//! included). After each commit the least recently used entries (by file
//! mtime, set on every commit and every hit) are evicted until usage fits,
//! skipping entries being read and the entry just committed. An entry larger
//! than the whole limit is not kept at all: its writer stops writing to disk
//! as soon as it outgrows the limit, and `commit` discards it with a warning
//! (it still returns `Ok`: a cache may decline to keep something). An entry
//! that fits the limit but not beside entries being read is kept, with a
//! warning; the next commit evicts again.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use tempfile::NamedTempFile;

use crate::domain::cache_record::{
    CacheRecord, RECORD_LEN, RecordBuilder, RecordHeader, block_checksum, block_count, entry_len,
};
use crate::domain::names::{Folder, ResourceName};
use crate::ports::object_store::TAIL_LEN;
use crate::ports::{
    BigPartCache, ByteStream, CacheError, CacheLookup, CacheUsage, CacheWriter, CachedEntry,
    HeldSpace, ObjectBody,
};

/// A writer gathers small incoming chunks up to this size before one write.
const WRITE_BATCH: usize = 1 << 20;
/// A write in progress makes room under the size limit every this many bytes.
const MAKE_ROOM_EVERY: u64 = 8 << 20;
/// A writer starts making what it wrote durable (`fdatasync` on a blocking
/// thread, never waited for by the stream) every this many bytes, so that the
/// sync before `commit`'s rename has little left to do and does not hold up
/// the end of a download.
const SYNC_EVERY: u64 = 64 << 20;
const ENTRY_SUFFIX: &str = ".big";
/// Marks a temporary file: `.{name}.big.tmp-<random>`.
const TEMP_MARK: &str = ".big.tmp-";
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
/// How often `open` re-inspects an entry that was replaced while it looked at it.
const INSPECT_ATTEMPTS: usize = 3;

/// `(folder, name)` of an entry.
type EntryKey = (String, String);

fn entry_key(folder: &Folder, name: &ResourceName) -> EntryKey {
    (folder.as_str().to_owned(), name.as_str().to_owned())
}

/// A big-part cache in a directory. Cheap to share: hold it as `Arc<dyn BigPartCache>`.
pub struct FsBigPartCache {
    shared: Arc<Shared>,
}

struct Shared {
    root: PathBuf,
    max_bytes: Option<u64>,
    /// Free bytes a write leaves on the file system (PROTOCOL §5.3); a write
    /// that would cross it stops caching that entry.
    min_free_bytes: u64,
    /// Stamps each entry's last use, for eviction (tests pass a fake one).
    clock: Arc<dyn crate::ports::Clock>,
    /// Open readers per entry. Its lock also covers every change of a final
    /// entry name (rename into place, removal), so that "is it read? is it
    /// still the same file?" and the change happen as one step.
    names: Mutex<HashMap<EntryKey, usize>>,
    /// Serialises commits (rename and eviction), so two commits never evict
    /// each other's fresh entry.
    commits: Mutex<()>,
    /// Bytes in the folder that no scan sees: uploads held in unnamed files.
    held: Arc<AtomicU64>,
}

impl std::fmt::Debug for FsBigPartCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsBigPartCache")
            .field("root", &self.shared.root)
            .field("max_bytes", &self.shared.max_bytes)
            .finish_non_exhaustive()
    }
}

/// A lock whose holder panicked is still usable: the maps it guards stay
/// consistent between statements.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn io_error(context: &str, path: &Path, e: &io::Error) -> CacheError {
    CacheError::Io(format!("{context} {}: {e}", path.display()))
}

fn join_error(e: tokio::task::JoinError) -> CacheError {
    CacheError::Io(format!("a cache task failed: {e}"))
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T, F>(work: F) -> Result<T, CacheError>
where
    F: FnOnce() -> Result<T, CacheError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(join_error)?
}

impl FsBigPartCache {
    /// Opens (creating it with mode 0700 if missing) the cache at `root`,
    /// removes temporary files a crash left behind, evicts down to
    /// `max_bytes` if the limit shrank, and logs the usage.
    ///
    /// Synchronous on purpose: it runs once at start, before serving, and can
    /// be called from sync or async code alike (it touches only the cache's
    /// own directories).
    /// Sets the free space that writes leave on the cache's file system:
    /// an entry whose next write would cross it is dropped (the load goes on
    /// streaming, uncached). Call right after [`FsBigPartCache::open`].
    pub fn with_min_free_bytes(mut self, floor: u64) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.min_free_bytes = floor;
        }
        self
    }

    /// Stamps last use with `clock` instead of the system's. Call right
    /// after [`FsBigPartCache::open`].
    pub fn with_clock(mut self, clock: Arc<dyn crate::ports::Clock>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.clock = clock;
        }
        self
    }

    pub fn open(root: PathBuf, max_bytes: Option<u64>) -> Result<Self, CacheError> {
        match fs::symlink_metadata(&root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(DIR_MODE)
                    .create(&root)
                    .map_err(|e| io_error("cannot create the cache folder", &root, &e))?;
                fs::set_permissions(&root, Permissions::from_mode(DIR_MODE))
                    .map_err(|e| io_error("cannot restrict the cache folder", &root, &e))?;
            }
            Err(e) => return Err(io_error("cannot read the cache folder", &root, &e)),
            Ok(_) => {}
        }
        let root = fs::canonicalize(&root)
            .map_err(|e| io_error("cannot resolve the cache folder", &root, &e))?;
        let meta =
            fs::metadata(&root).map_err(|e| io_error("cannot read the cache folder", &root, &e))?;
        if !meta.is_dir() {
            return Err(CacheError::Io(format!(
                "the cache folder {} is not a directory",
                root.display()
            )));
        }
        remove_leftover_temp_files(&root)
            .map_err(|e| io_error("cannot clean the cache folder", &root, &e))?;
        let shared = Arc::new(Shared {
            root,
            max_bytes,
            min_free_bytes: 0,
            clock: Arc::new(crate::adapters::outbound::system_clock::SystemClock),
            names: Mutex::new(HashMap::new()),
            commits: Mutex::new(()),
            held: Arc::default(),
        });
        if let Some(limit) = max_bytes {
            evict_to_fit(&shared, limit, None)
                .map_err(|e| io_error("cannot evict from the cache folder", &shared.root, &e))?;
        }
        let usage = shared.usage()?;
        tracing::info!(
            root = %shared.root.display(),
            bytes = usage.bytes,
            entries = usage.entries,
            limit = ?usage.limit,
            "big-part cache opened"
        );
        Ok(Self { shared })
    }

    /// The cache folder, canonical and absolute (what `/status` reports).
    pub fn root(&self) -> &Path {
        &self.shared.root
    }
}

impl Shared {
    fn folder_dir(&self, folder: &Folder) -> PathBuf {
        self.root.join(folder.as_str())
    }

    fn entry_path(&self, folder: &Folder, name: &ResourceName) -> PathBuf {
        self.folder_dir(folder)
            .join(format!("{}{ENTRY_SUFFIX}", name.as_str()))
    }

    fn usage(&self) -> Result<CacheUsage, CacheError> {
        let scanned = scan(&self.root)
            .map_err(|e| io_error("cannot list the cache folder", &self.root, &e))?;
        Ok(CacheUsage {
            // Writes in progress and held uploads count: they take disk already.
            bytes: scanned.bytes() + self.held.load(Ordering::Relaxed),
            entries: scanned.entries.len() as u64,
            limit: self.max_bytes,
        })
    }
}

fn is_temp_name(file_name: &str) -> bool {
    file_name.starts_with('.')
        && file_name.contains(TEMP_MARK)
        && !file_name.ends_with(ENTRY_SUFFIX)
}

/// A fresh name beside `entry` under which it can be moved aside (a temp
/// name, so a crash before its deletion leaves nothing the cache would read).
fn aside_path(entry: &Path) -> PathBuf {
    let mut random = [0u8; 8];
    if getrandom::fill(&mut random).is_err() {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        random = (nanos as u64).to_le_bytes();
    }
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let file_name = entry
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    entry.with_file_name(format!(".{file_name}.tmp-gone{suffix}"))
}

/// Deletes what lies at `path` without following it (a symlink goes, not its target).
fn delete_path(path: &Path) -> io::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Removes the entry at `path` if it still is the file `(dev, ino)` and, when
/// `only_unread`, nobody reads it. The rename aside happens under the names
/// lock; the (possibly slow) deletion of gigabytes after it.
/// Returns whether it removed something.
fn remove_if_same(
    shared: &Shared,
    key: &EntryKey,
    path: &Path,
    identity: (u64, u64),
    only_unread: bool,
) -> io::Result<bool> {
    let aside = {
        let names = lock(&shared.names);
        if only_unread && names.get(key).is_some_and(|&readers| readers > 0) {
            return Ok(false);
        }
        match fs::symlink_metadata(path) {
            Ok(meta) if (meta.dev(), meta.ino()) == identity => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
        let aside = aside_path(path);
        fs::rename(path, &aside)?;
        aside
    };
    delete_path(&aside)?;
    Ok(true)
}

/// Removes the entry at `path`, whatever it is, even while it is read (an
/// open reader keeps its bytes until it closes them).
fn remove_entry(shared: &Shared, path: &Path) -> io::Result<()> {
    let aside = {
        let _names = lock(&shared.names);
        match fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        let aside = aside_path(path);
        fs::rename(path, &aside)?;
        aside
    };
    delete_path(&aside)
}

/// Removes temporary files in the root and in each real folder directory
/// (the only places the cache makes them).
fn remove_leftover_temp_files(root: &Path) -> io::Result<()> {
    let mut dirs = vec![root.to_path_buf()];
    for dent in fs::read_dir(root)? {
        let dent = dent?;
        if dent.file_type()?.is_dir() {
            dirs.push(dent.path());
        }
    }
    for dir in dirs {
        let listing = match fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for dent in listing {
            let dent = dent?;
            let name = dent.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_temp_name(name) && !dent.file_type()?.is_dir() {
                tracing::info!(file = %dent.path().display(), "removing a temporary cache file left by a crash");
                match fs::remove_file(dent.path()) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// An entry file found on disk.
struct Scanned {
    key: EntryKey,
    path: PathBuf,
    bytes: u64,
    modified: SystemTime,
    identity: (u64, u64),
}

/// The cache's files: its entries, and the bytes of the temporary files
/// that writes in progress hold (they take disk like entries do).
struct Scan {
    entries: Vec<Scanned>,
    temp_bytes: u64,
}

impl Scan {
    fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.bytes).sum::<u64>() + self.temp_bytes
    }
}

/// Lists the entry files: regular files named `{valid name}.big` in real
/// directories named as valid folders, and sums the temporary files beside
/// them. Anything else is not the cache's.
fn scan(root: &Path) -> io::Result<Scan> {
    let mut found = Vec::new();
    let mut temp_bytes = 0;
    for dent in fs::read_dir(root)? {
        let dent = dent?;
        let Some(folder) = dent.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if Folder::parse(&folder).is_err() || !dent.file_type()?.is_dir() {
            continue;
        }
        let listing = match fs::read_dir(dent.path()) {
            Ok(listing) => listing,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for file in listing {
            let file = file?;
            let file_name = file.file_name();
            if file_name.to_str().is_some_and(is_temp_name) {
                // Vanished since listed: its writer finished or gave up.
                if let Ok(meta) = file.metadata()
                    && meta.file_type().is_file()
                {
                    temp_bytes += meta.len();
                }
                continue;
            }
            let Some(name) = file_name
                .to_str()
                .and_then(|n| n.strip_suffix(ENTRY_SUFFIX))
            else {
                continue;
            };
            if ResourceName::parse(name).is_err() {
                continue;
            }
            let meta = match file.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if !meta.file_type().is_file() {
                continue;
            }
            found.push(Scanned {
                key: (folder.clone(), name.to_owned()),
                path: file.path(),
                bytes: meta.len(),
                modified: meta.modified()?,
                identity: (meta.dev(), meta.ino()),
            });
        }
    }
    Ok(Scan {
        entries: found,
        temp_bytes,
    })
}

/// Evicts least recently used entries until usage ≤ `limit`, never one being
/// read and never `keep`.
fn evict_to_fit(shared: &Shared, limit: u64, keep: Option<&EntryKey>) -> io::Result<()> {
    let scanned = scan(&shared.root)?;
    let mut total = scanned.bytes() + shared.held.load(Ordering::Relaxed);
    let mut entries = scanned.entries;
    if total <= limit {
        return Ok(());
    }
    entries.sort_by(|a, b| (a.modified, &a.key).cmp(&(b.modified, &b.key)));
    for entry in &entries {
        if total <= limit {
            break;
        }
        if keep == Some(&entry.key) {
            continue;
        }
        if remove_if_same(shared, &entry.key, &entry.path, entry.identity, true)? {
            total = total.saturating_sub(entry.bytes);
            tracing::info!(
                folder = %entry.key.0,
                name = %entry.key.1,
                bytes = entry.bytes,
                "evicted a big part from the cache"
            );
        }
    }
    if total > limit {
        tracing::warn!(
            bytes = total,
            limit,
            "the cache stays over its size limit: the other entries are being read"
        );
    }
    Ok(())
}

/// Makes a real `{root}/{folder}` directory, replacing a symlink or file there.
fn ensure_folder_dir(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => {
            tracing::warn!(path = %dir.display(), "replacing a cache folder that is not a real directory");
            delete_path(dir)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Another writer made it a moment ago; it must be a real directory.
            if fs::symlink_metadata(dir)?.is_dir() {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the cache folder is not a directory",
                ))
            }
        }
        Err(e) => Err(e),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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
        Err(e) => return Err(io_error("cannot read", folder_dir, &e)),
    }
    let link = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Verdict::Miss),
        Err(e) => return Err(io_error("cannot read", path, &e)),
    };
    let link_identity = (link.dev(), link.ino());
    let damaged = |identity: (u64, u64), reason: &str| -> Result<Verdict, CacheError> {
        tracing::warn!(file = %path.display(), reason, "removing a damaged cached big part");
        remove_if_same(shared, key, path, identity, false)
            .map_err(|e| io_error("cannot remove the damaged", path, &e))?;
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
        .map_err(|e| io_error("cannot read", path, &e))?;
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
            .map_err(|e| io_error("cannot remove the stale", path, &e))?;
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

#[async_trait]
impl BigPartCache for FsBigPartCache {
    async fn open(
        &self,
        folder: &Folder,
        name: &ResourceName,
        small_digest: &[u8; 32],
    ) -> Result<CacheLookup, CacheError> {
        let key = entry_key(folder, name);
        // Registered before the file is opened, so eviction cannot take it
        // between the check and the stream.
        let reader = ReaderGuard::register(&self.shared, key.clone());
        let shared = self.shared.clone();
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

    async fn create(
        &self,
        folder: &Folder,
        name: &ResourceName,
        small_digest: &[u8; 32],
    ) -> Result<Box<dyn CacheWriter>, CacheError> {
        let folder_dir = self.shared.folder_dir(folder);
        let prefix = format!(".{}{TEMP_MARK}", name.as_str());
        let temp = blocking(move || {
            ensure_folder_dir(&folder_dir)
                .map_err(|e| io_error("cannot make the cache folder", &folder_dir, &e))?;
            let mut temp = tempfile::Builder::new()
                .prefix(&prefix)
                .rand_bytes(12)
                .permissions(Permissions::from_mode(FILE_MODE))
                .tempfile_in(&folder_dir)
                .map_err(|e| io_error("cannot create a file in", &folder_dir, &e))?;
            temp.as_file()
                .set_permissions(Permissions::from_mode(FILE_MODE))
                .and_then(|()| temp.write_all(&[0u8; RECORD_LEN]))
                .map_err(|e| io_error("cannot write", temp.path(), &e))?;
            Ok(temp)
        })
        .await?;
        Ok(Box::new(FsCacheWriter {
            shared: self.shared.clone(),
            key: entry_key(folder, name),
            final_path: self.shared.entry_path(folder, name),
            temp_path: temp.path().to_path_buf(),
            temp: Some(temp),
            in_flight: None,
            unsynced: 0,
            syncing: None,
            pending: Vec::new(),
            pending_len: 0,
            record: RecordBuilder::new(*small_digest),
            oversized: false,
            floor: crate::adapters::disk::FreeSpaceFloor::new(
                &self.shared.root,
                self.shared.min_free_bytes,
            ),
            room_made_until: 0,
        }))
    }

    async fn remove(&self, folder: &Folder, name: &ResourceName) -> Result<(), CacheError> {
        let shared = self.shared.clone();
        let folder_dir = shared.folder_dir(folder);
        let path = shared.entry_path(folder, name);
        blocking(move || {
            match fs::symlink_metadata(&folder_dir) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_error("cannot read", &folder_dir, &e)),
            }
            remove_entry(&shared, &path).map_err(|e| io_error("cannot remove", &path, &e))
        })
        .await
    }

    async fn usage(&self) -> Result<CacheUsage, CacheError> {
        let shared = self.shared.clone();
        blocking(move || shared.usage()).await
    }

    fn hold_space(&self) -> HeldSpace {
        HeldSpace::counting_into(self.shared.held.clone())
    }

    async fn make_room(&self) -> Result<(), CacheError> {
        let Some(limit) = self.shared.max_bytes else {
            return Ok(());
        };
        let shared = self.shared.clone();
        blocking(move || {
            evict_to_fit(&shared, limit, None)
                .map_err(|e| io_error("cannot evict from", &shared.root, &e))
        })
        .await
    }

    async fn entries(&self) -> Result<Vec<CachedEntry>, CacheError> {
        let shared = self.shared.clone();
        blocking(move || {
            let mut list: Vec<CachedEntry> = scan(&shared.root)
                .map_err(|e| io_error("cannot list the cache folder", &shared.root, &e))?
                .entries
                .into_iter()
                .map(|e| CachedEntry {
                    folder: e.key.0,
                    name: e.key.1,
                    bytes: e.bytes,
                })
                .collect();
            list.sort_by(|a, b| (&a.folder, &a.name).cmp(&(&b.folder, &b.name)));
            Ok(list)
        })
        .await
    }
}

/// Writes one entry into a temporary file; `commit` renames it into place.
/// Dropped uncommitted, it deletes the temporary file.
struct FsCacheWriter {
    shared: Arc<Shared>,
    key: EntryKey,
    final_path: PathBuf,
    temp_path: PathBuf,
    /// `None` while a write is in flight, once discarded (oversized) or after a failed write.
    temp: Option<NamedTempFile>,
    /// The batch being written behind the stream; it hands the file back.
    in_flight: Option<tokio::task::JoinHandle<Result<NamedTempFile, CacheError>>>,
    /// Bytes written since the last `fdatasync` started.
    unsynced: u64,
    /// The `fdatasync` running behind the writes, if any.
    syncing: Option<tokio::task::JoinHandle<Result<(), CacheError>>>,
    pending: Vec<Bytes>,
    pending_len: usize,
    record: RecordBuilder,
    /// Outgrew the size limit: counted from then on, never stored.
    oversized: bool,
    /// The free space this entry's writes leave on the file system.
    floor: crate::adapters::disk::FreeSpaceFloor,
    /// The entry's length at which it next makes room under the size limit.
    room_made_until: u64,
}

impl FsCacheWriter {
    fn broken() -> CacheError {
        CacheError::Io("an earlier write to this cache entry failed".to_owned())
    }

    /// Waits for the write in flight, if any, and takes the file back.
    async fn settle(&mut self) -> Result<(), CacheError> {
        if let Some(write) = self.in_flight.take() {
            self.temp = Some(write.await.map_err(join_error)??);
        }
        Ok(())
    }

    /// Waits for the background `fdatasync`, if any, and reports its failure.
    async fn settle_sync(&mut self) -> Result<(), CacheError> {
        if let Some(sync) = self.syncing.take() {
            sync.await.map_err(join_error)??;
        }
        Ok(())
    }

    /// Starts writing the gathered chunks (after the previous batch is done)
    /// and returns without waiting for them.
    async fn flush(&mut self) -> Result<(), CacheError> {
        self.settle().await?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut temp = self.temp.take().ok_or_else(Self::broken)?;
        // Everything before this batch is written: start making it durable,
        // unless the previous sync is still at work.
        if self.unsynced >= SYNC_EVERY && self.syncing.as_ref().is_none_or(|s| s.is_finished()) {
            self.settle_sync().await?;
            self.unsynced = 0;
            let path = temp.path().to_path_buf();
            let file = temp
                .as_file()
                .try_clone()
                .map_err(|e| io_error("cannot reopen", &path, &e))?;
            self.syncing = Some(tokio::task::spawn_blocking(move || {
                file.sync_data()
                    .map_err(|e| io_error("cannot flush", &path, &e))
            }));
        }
        let chunks = std::mem::take(&mut self.pending);
        self.unsynced += std::mem::take(&mut self.pending_len) as u64;
        // On failure the temporary file is dropped (deleted) with the closure.
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            for chunk in &chunks {
                temp.write_all(chunk)
                    .map_err(|e| io_error("cannot write", temp.path(), &e))?;
            }
            Ok(temp)
        }));
        Ok(())
    }
}

#[async_trait]
impl CacheWriter for FsCacheWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), CacheError> {
        self.record.update(&chunk);
        if self.oversized {
            return Ok(());
        }
        if self.temp.is_none() && self.in_flight.is_none() {
            return Err(Self::broken());
        }
        if let Some(limit) = self.shared.max_bytes
            && entry_len(self.record.len()) > limit
        {
            self.oversized = true;
            self.pending.clear();
            self.pending_len = 0;
            self.settle().await?;
            if let Some(temp) = self.temp.take() {
                blocking(move || {
                    temp.close()
                        .map_err(|e| CacheError::Io(format!("cannot delete a temporary file: {e}")))
                })
                .await?;
            }
            return Ok(());
        }
        if chunk.is_empty() {
            return Ok(());
        }
        if !self.floor.reserve(chunk.len() as u64).unwrap_or(false) {
            let floor = self.floor.floor();
            // Dropping the writer deletes the temporary file.
            self.pending.clear();
            self.pending_len = 0;
            return Err(CacheError::Io(format!(
                "caching would leave less than {floor} bytes free (MODEL_CACHE_MIN_FREE_BYTES)"
            )));
        }
        self.pending_len += chunk.len();
        self.pending.push(chunk);
        if self.pending_len >= WRITE_BATCH {
            self.flush().await?;
        }
        // Make room as the entry grows, not only once it is committed: older
        // entries go while this one is still being written.
        if let Some(limit) = self.shared.max_bytes
            && self.record.len() >= self.room_made_until
        {
            self.room_made_until = self.record.len() + MAKE_ROOM_EVERY;
            let (shared, key) = (self.shared.clone(), self.key.clone());
            blocking(move || {
                evict_to_fit(&shared, limit, Some(&key))
                    .map_err(|e| io_error("cannot evict from", &shared.root, &e))
            })
            .await?;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<(), CacheError> {
        if self.oversized {
            tracing::warn!(
                folder = %self.key.0,
                name = %self.key.1,
                bytes = self.record.len(),
                limit = ?self.shared.max_bytes,
                "not caching a big part larger than the cache's size limit"
            );
            return Ok(());
        }
        self.flush().await?;
        self.settle().await?;
        self.settle_sync().await?;
        let temp = self.temp.take().ok_or_else(Self::broken)?;
        let record = std::mem::replace(&mut self.record, RecordBuilder::new([0; 32])).finish();
        let shared = self.shared.clone();
        let key = self.key.clone();
        let final_path = self.final_path.clone();
        blocking(move || finish_entry(&shared, temp, &record, &key, &final_path)).await
    }
}

/// Writes the real header, makes the file durable, renames it into place,
/// makes the rename durable, then evicts to fit the limit.
fn finish_entry(
    shared: &Shared,
    temp: NamedTempFile,
    record: &CacheRecord,
    key: &EntryKey,
    final_path: &Path,
) -> Result<(), CacheError> {
    let file = temp.as_file();
    file.write_all_at(&record.encode_table(), RECORD_LEN as u64 + record.big_len)
        .and_then(|()| file.write_all_at(&record.encode_header(), 0))
        .map_err(|e| io_error("cannot write", temp.path(), &e))?;
    // First use, for eviction (explicit, so every entry's time has the same precision).
    if let Err(e) = file.set_modified(shared.clock.now()) {
        tracing::debug!(file = %temp.path().display(), error = %e, "cannot set a cache file's time");
    }
    file.sync_all()
        .map_err(|e| io_error("cannot flush", temp.path(), &e))?;

    let _commits = lock(&shared.commits);
    {
        let _names = lock(&shared.names);
        temp.persist(final_path)
            .map_err(|e| io_error("cannot rename into", final_path, &e.error))?;
    }
    if let Some(dir) = final_path.parent() {
        sync_dir(dir).map_err(|e| io_error("cannot flush", dir, &e))?;
    }
    if let Some(limit) = shared.max_bytes
        && let Err(e) = evict_to_fit(shared, limit, Some(key))
    {
        tracing::warn!(error = %e, "cannot evict from the cache");
    }
    Ok(())
}

impl Drop for FsCacheWriter {
    fn drop(&mut self) {
        // Uncommitted: delete the temporary file (best effort; a leftover is
        // removed the next time the cache is opened).
        if let Some(temp) = self.temp.take() {
            let path = temp.path().to_path_buf();
            if let Err(e) = temp.close() {
                tracing::debug!(file = %path.display(), error = %e, "cannot delete a temporary cache file");
            }
        }
        // A write still in flight holds the file: unlink it now (its random name
        // is nobody else's); the write finishes into the unlinked file.
        if self.in_flight.take().is_some()
            && let Err(e) = fs::remove_file(&self.temp_path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::debug!(file = %self.temp_path.display(), error = %e, "cannot delete a temporary cache file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::cache_record::BLOCK_LEN;
    use futures::StreamExt;
    use std::time::Duration;

    fn folder(s: &str) -> Folder {
        Folder::parse(s).unwrap()
    }

    fn name(s: &str) -> ResourceName {
        ResourceName::parse(s).unwrap()
    }

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn new_cache(dir: &tempfile::TempDir, limit: Option<u64>) -> FsBigPartCache {
        FsBigPartCache::open(dir.path().join("cache"), limit).unwrap()
    }

    async fn put(cache: &FsBigPartCache, f: &str, n: &str, digest: [u8; 32], bytes: &[u8]) {
        let mut w = cache.create(&folder(f), &name(n), &digest).await.unwrap();
        // Uneven chunks, some above the write batch.
        for chunk in bytes.chunks(300_001) {
            w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        w.commit().await.unwrap();
    }

    async fn read_all(body: ObjectBody) -> Vec<u8> {
        let mut stream = body.stream;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    async fn hit(cache: &FsBigPartCache, f: &str, n: &str, digest: [u8; 32]) -> Vec<u8> {
        match cache.open(&folder(f), &name(n), &digest).await.unwrap() {
            CacheLookup::Hit(body) => {
                let len = body.len;
                let bytes = read_all(body).await;
                assert_eq!(bytes.len() as u64, len);
                bytes
            }
            CacheLookup::Miss => panic!("miss"),
            CacheLookup::Stale => panic!("stale"),
            CacheLookup::Damaged => panic!("damaged"),
        }
    }

    async fn lookup(cache: &FsBigPartCache, f: &str, n: &str, digest: [u8; 32]) -> &'static str {
        match cache.open(&folder(f), &name(n), &digest).await.unwrap() {
            CacheLookup::Hit(_) => "hit",
            CacheLookup::Miss => "miss",
            CacheLookup::Stale => "stale",
            CacheLookup::Damaged => "damaged",
        }
    }

    /// Every file under the folder directory, by name.
    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn a_committed_entry_is_a_hit_with_the_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(&dir, None);
        let bytes = data(3 * BLOCK_LEN as usize + 12_345, 7);
        put(&cache, "models", "model.onnx", [1; 32], &bytes).await;

        assert_eq!(hit(&cache, "models", "model.onnx", [1; 32]).await, bytes);
        let usage = cache.usage().await.unwrap();
        assert_eq!(usage.entries, 1);
        let on_disk = RECORD_LEN as u64 + bytes.len() as u64 + 4 * 8;
        assert_eq!(usage.bytes, on_disk);
        assert_eq!(
            cache.entries().await.unwrap(),
            vec![CachedEntry {
                folder: "models".into(),
                name: "model.onnx".into(),
                bytes: on_disk,
            }]
        );
        assert_eq!(
            files_in(&cache.root().join("models")),
            vec!["model.onnx.big"]
        );
    }

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
    async fn a_dropped_writer_leaves_neither_an_entry_nor_a_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(&dir, None);
        let mut w = cache
            .create(&folder("models"), &name("m"), &[1; 32])
            .await
            .unwrap();
        w.write(Bytes::from(data(2 * WRITE_BATCH + 5, 1)))
            .await
            .unwrap();
        assert_eq!(files_in(&cache.root().join("models")).len(), 1);
        drop(w);

        assert!(files_in(&cache.root().join("models")).is_empty());
        assert_eq!(lookup(&cache, "models", "m", [1; 32]).await, "miss");
    }

    #[tokio::test]
    async fn a_writer_in_progress_never_shows_under_the_final_name() {
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(&dir, None);
        let old = data(5000, 1);
        let new = data(3 * WRITE_BATCH, 2);
        put(&cache, "models", "m", [1; 32], &old).await;

        let mut w = cache
            .create(&folder("models"), &name("m"), &[2; 32])
            .await
            .unwrap();
        w.write(Bytes::copy_from_slice(&new[..2 * WRITE_BATCH]))
            .await
            .unwrap();
        assert_eq!(hit(&cache, "models", "m", [1; 32]).await, old);
        w.write(Bytes::copy_from_slice(&new[2 * WRITE_BATCH..]))
            .await
            .unwrap();
        w.commit().await.unwrap();

        assert_eq!(hit(&cache, "models", "m", [2; 32]).await, new);
    }

    #[tokio::test]
    async fn a_temporary_file_left_by_a_crash_is_ignored_then_cleaned_on_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(&dir, None);
        put(&cache, "models", "other", [1; 32], b"keep me").await;
        let models = cache.root().join("models");
        let crashed = models.join(".m.big.tmp-Ab3dE9xYz012");
        let mut header = CacheRecord {
            small_digest: [1; 32],
            big_len: 4,
            block_len: BLOCK_LEN,
            blocks: vec![0],
        }
        .encode_header()
        .to_vec();
        header.extend_from_slice(b"half");
        fs::write(&crashed, &header).unwrap();
        let in_root = cache.root().join(".x.big.tmp-gone0011");
        fs::write(&in_root, b"junk").unwrap();

        assert_eq!(lookup(&cache, "models", "m", [1; 32]).await, "miss");
        assert_eq!(cache.usage().await.unwrap().entries, 1);

        drop(cache);
        let cache = new_cache(&dir, None);
        assert!(!crashed.exists());
        assert!(!in_root.exists());
        assert_eq!(hit(&cache, "models", "other", [1; 32]).await, b"keep me");
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

    #[tokio::test]
    async fn folders_are_0700_and_entries_0600() {
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(&dir, None);
        assert_eq!(mode(cache.root()), 0o700);
        let mut w = cache
            .create(&folder("models"), &name("m"), &[1; 32])
            .await
            .unwrap();
        w.write(Bytes::from_static(b"abc")).await.unwrap();
        let temp = cache
            .root()
            .join("models")
            .join(&files_in(&cache.root().join("models"))[0]);
        assert_eq!(mode(&temp), 0o600);
        w.commit().await.unwrap();
        assert_eq!(mode(&cache.root().join("models")), 0o700);
        assert_eq!(mode(&cache.root().join("models/m.big")), 0o600);
    }

    #[tokio::test]
    async fn a_symlinked_folder_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(&dir, None);
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let header = CacheRecord {
            small_digest: [1; 32],
            big_len: 0,
            block_len: BLOCK_LEN,
            blocks: vec![],
        };
        fs::write(outside.join("m.big"), header.encode_header()).unwrap();
        std::os::unix::fs::symlink(&outside, cache.root().join("models")).unwrap();

        assert_eq!(lookup(&cache, "models", "m", [1; 32]).await, "miss");
        assert_eq!(cache.usage().await.unwrap().entries, 0);
        put(&cache, "models", "m", [1; 32], b"inside").await;

        assert!(
            fs::symlink_metadata(cache.root().join("models"))
                .unwrap()
                .is_dir()
        );
        assert_eq!(files_in(&outside), vec!["m.big"]);
        assert_eq!(hit(&cache, "models", "m", [1; 32]).await, b"inside");
    }

    #[tokio::test]
    async fn remove_deletes_an_entry_and_ignores_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(&dir, None);
        put(&cache, "models", "m", [1; 32], b"abc").await;
        cache.remove(&folder("models"), &name("m")).await.unwrap();
        cache.remove(&folder("models"), &name("m")).await.unwrap();
        cache.remove(&folder("nofolder"), &name("m")).await.unwrap();
        assert_eq!(lookup(&cache, "models", "m", [1; 32]).await, "miss");
        assert!(files_in(&cache.root().join("models")).is_empty());
    }

    #[tokio::test]
    async fn eviction_keeps_the_most_recently_used_entries() {
        let dir = tempfile::tempdir().unwrap();
        let entry = entry_len(1000);
        let clock = Arc::new(crate::adapters::fakes::FakeClock::default());
        let cache = new_cache(&dir, Some(2 * entry)).with_clock(clock.clone());
        put(&cache, "models", "a", [1; 32], &data(1000, 1)).await;
        clock.advance(Duration::from_secs(1));
        put(&cache, "models", "b", [1; 32], &data(1000, 2)).await;
        clock.advance(Duration::from_secs(1));
        hit(&cache, "models", "a", [1; 32]).await;
        clock.advance(Duration::from_secs(1));
        put(&cache, "models", "c", [1; 32], &data(1000, 3)).await;

        let names: Vec<String> = cache
            .entries()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["a", "c"]);
        let usage = cache.usage().await.unwrap();
        assert_eq!(
            (usage.bytes, usage.entries, usage.limit),
            (2 * entry, 2, Some(2 * entry))
        );
    }

    #[tokio::test]
    async fn space_held_outside_entries_counts_in_usage_and_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let entry = entry_len(1000);
        let clock = Arc::new(crate::adapters::fakes::FakeClock::default());
        let cache = new_cache(&dir, Some(2 * entry)).with_clock(clock.clone());
        put(&cache, "models", "a", [1; 32], &data(1000, 1)).await;
        clock.advance(Duration::from_secs(1));
        put(&cache, "models", "b", [1; 32], &data(1000, 2)).await;
        // An upload held in an unnamed file, as big as one entry.
        let mut held = cache.hold_space();
        held.grow(entry);
        assert_eq!(cache.usage().await.unwrap().bytes, 3 * entry);
        cache.make_room().await.unwrap();
        let usage = cache.usage().await.unwrap();
        assert_eq!((usage.bytes, usage.entries), (2 * entry, 1));
        assert!(!cache.entries().await.unwrap().iter().any(|e| e.name == "a"));
        // A commit counts it too: c pushes b out while the space is held.
        clock.advance(Duration::from_secs(1));
        put(&cache, "models", "c", [1; 32], &data(1000, 3)).await;
        let names: Vec<String> = cache
            .entries()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["c"]);
        drop(held);
        assert_eq!(cache.usage().await.unwrap().bytes, entry);
    }

    #[tokio::test]
    async fn a_write_in_progress_counts_in_usage_and_makes_room_before_it_commits() {
        let dir = tempfile::tempdir().unwrap();
        let size = 10 << 20;
        let entry = entry_len(size as u64);
        let clock = Arc::new(crate::adapters::fakes::FakeClock::default());
        let cache = new_cache(&dir, Some(2 * entry + (1 << 20))).with_clock(clock.clone());
        put(&cache, "models", "a", [1; 32], &data(size, 1)).await;
        clock.advance(Duration::from_secs(1));
        put(&cache, "models", "b", [1; 32], &data(size, 2)).await;
        clock.advance(Duration::from_secs(1));
        // A third entry, written but not committed yet.
        let mut w = cache
            .create(&folder("models"), &name("c"), &[1; 32])
            .await
            .unwrap();
        for chunk in data(size, 3).chunks(1 << 20) {
            w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        let names: Vec<String> = cache
            .entries()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(
            names,
            vec!["b"],
            "the oldest entry made room before c committed"
        );
        let usage = cache.usage().await.unwrap();
        // The last batch may still be on its way to the temporary file.
        assert!(
            usage.bytes >= entry + size as u64 - (2 << 20) && usage.entries == 1,
            "the write in progress is not counted: {usage:?}"
        );
        w.commit().await.unwrap();
        assert_eq!(hit(&cache, "models", "c", [1; 32]).await, data(size, 3));
    }

    #[tokio::test]
    async fn eviction_never_takes_an_entry_being_read() {
        let dir = tempfile::tempdir().unwrap();
        let entry = entry_len(1000);
        let clock = Arc::new(crate::adapters::fakes::FakeClock::default());
        let cache = new_cache(&dir, Some(2 * entry)).with_clock(clock.clone());
        put(&cache, "models", "a", [1; 32], &data(1000, 1)).await;
        clock.advance(Duration::from_secs(1));
        put(&cache, "models", "b", [1; 32], &data(1000, 2)).await;
        let CacheLookup::Hit(reading) = cache
            .open(&folder("models"), &name("a"), &[1; 32])
            .await
            .unwrap()
        else {
            panic!("expected a hit");
        };
        // `a` is older again than `b`: only the open reader protects it.
        let past = SystemTime::now() - Duration::from_secs(3600);
        File::open(cache.root().join("models/a.big"))
            .unwrap()
            .set_modified(past)
            .unwrap();
        put(&cache, "models", "c", [1; 32], &data(1000, 3)).await;

        let names: Vec<String> = cache
            .entries()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["a", "c"]);
        assert_eq!(read_all(reading).await, data(1000, 1));

        // With both readers gone and every entry unread, the limit holds again.
        put(&cache, "models", "d", [1; 32], &data(1000, 4)).await;
        assert_eq!(cache.usage().await.unwrap().entries, 2);
        assert!(!cache.root().join("models/a.big").exists());
    }

    #[tokio::test]
    async fn an_entry_that_fits_only_beside_entries_being_read_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let entry = entry_len(1000);
        let cache = new_cache(&dir, Some(entry));
        put(&cache, "models", "a", [1; 32], &data(1000, 1)).await;
        let CacheLookup::Hit(reading) = cache
            .open(&folder("models"), &name("a"), &[1; 32])
            .await
            .unwrap()
        else {
            panic!("expected a hit");
        };
        put(&cache, "models", "b", [1; 32], &data(1000, 2)).await;
        assert_eq!(cache.usage().await.unwrap().entries, 2);
        assert_eq!(read_all(reading).await, data(1000, 1));
    }

    #[tokio::test]
    async fn an_entry_larger_than_the_limit_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = new_cache(&dir, Some(10_000));
        put(&cache, "models", "small", [1; 32], &data(1000, 1)).await;
        put(&cache, "models", "huge", [1; 32], &data(3 * WRITE_BATCH, 2)).await;

        assert_eq!(lookup(&cache, "models", "huge", [1; 32]).await, "miss");
        assert_eq!(hit(&cache, "models", "small", [1; 32]).await, data(1000, 1));
        assert_eq!(files_in(&cache.root().join("models")), vec!["small.big"]);
    }

    #[tokio::test]
    async fn opening_with_a_smaller_limit_evicts_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(crate::adapters::fakes::FakeClock::default());
        let cache = new_cache(&dir, None).with_clock(clock.clone());
        put(&cache, "models", "old", [1; 32], &data(1000, 1)).await;
        clock.advance(Duration::from_secs(1));
        put(&cache, "models", "new", [1; 32], &data(1000, 2)).await;
        drop(cache);

        let cache = new_cache(&dir, Some(1500));
        let names: Vec<String> = cache
            .entries()
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec!["new"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_writers_of_one_key_leave_one_complete_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(new_cache(&dir, None));
        let first = data(2 * WRITE_BATCH + 77, 1);
        let second = data(WRITE_BATCH + 3, 2);
        let mut w1 = cache
            .create(&folder("models"), &name("m"), &[1; 32])
            .await
            .unwrap();
        let mut w2 = cache
            .create(&folder("models"), &name("m"), &[2; 32])
            .await
            .unwrap();
        for (a, b) in first.chunks(100_000).zip(second.chunks(100_000)) {
            w1.write(Bytes::copy_from_slice(a)).await.unwrap();
            w2.write(Bytes::copy_from_slice(b)).await.unwrap();
        }
        for a in first.chunks(100_000).skip(second.chunks(100_000).count()) {
            w1.write(Bytes::copy_from_slice(a)).await.unwrap();
        }
        let (r1, r2) = tokio::join!(
            tokio::spawn(async move { w1.commit().await }),
            tokio::spawn(async move { w2.commit().await })
        );
        r1.unwrap().unwrap();
        r2.unwrap().unwrap();

        assert_eq!(files_in(&cache.root().join("models")), vec!["m.big"]);
        let header = fs::read(cache.root().join("models/m.big")).unwrap();
        let record = RecordHeader::decode(&header[..RECORD_LEN]).unwrap();
        let expected = if record.small_digest == [1; 32] {
            &first
        } else {
            &second
        };
        assert_eq!(
            &hit(&cache, "models", "m", record.small_digest).await,
            expected
        );
        assert_eq!(cache.usage().await.unwrap().entries, 1);
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
}
