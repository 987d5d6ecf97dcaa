//! What the cache holds on disk: the scan of its folders for entry files
//! (and for the temporary files that writes in progress fill), and the
//! usage and entry list built from it.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::layout::{ENTRY_SUFFIX, EntryKey, is_temp_name};
use super::{Shared, io_error};
use crate::domain::names::{Folder, ResourceName};
use crate::ports::{CacheError, CacheUsage, CachedEntry};

/// An entry file found on disk.
pub(super) struct Scanned {
    pub(super) key: EntryKey,
    pub(super) path: PathBuf,
    pub(super) bytes: u64,
    pub(super) modified: SystemTime,
    pub(super) identity: (u64, u64),
}

/// The cache's files: its entries, and the bytes of the temporary files
/// that writes in progress hold (they take disk like entries do).
pub(super) struct Scan {
    pub(super) entries: Vec<Scanned>,
    pub(super) temp_bytes: u64,
}

impl Scan {
    pub(super) fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.bytes).sum::<u64>() + self.temp_bytes
    }
}

/// Lists the entry files: regular files named `{valid name}.big` in real
/// directories named as valid folders, and sums the temporary files beside
/// them. Anything else is not the cache's.
pub(super) fn scan(root: &Path) -> io::Result<Scan> {
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

impl Shared {
    pub(super) fn usage(&self) -> Result<CacheUsage, CacheError> {
        let scanned = scan(&self.root)
            .map_err(|e| io_error("cannot list the cache folder", &self.root, e))?;
        Ok(CacheUsage {
            // Writes in progress and held uploads count: they take disk already.
            bytes: scanned.bytes() + self.held.load(Ordering::Relaxed),
            entries: scanned.entries.len() as u64,
            limit: self.max_bytes,
        })
    }

    /// The entries on disk, by folder then name.
    pub(super) fn entries(&self) -> Result<Vec<CachedEntry>, CacheError> {
        let mut list: Vec<CachedEntry> = scan(&self.root)
            .map_err(|e| io_error("cannot list the cache folder", &self.root, e))?
            .entries
            .into_iter()
            .map(|e| CachedEntry {
                folder: e.key.0,
                name: e.key.1,
                bytes: e.bytes,
                last_used: e.modified,
            })
            .collect();
        list.sort_by(|a, b| (&a.folder, &a.name).cmp(&(&b.folder, &b.name)));
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::outbound::fs_cache::test_support::*;
    use crate::domain::cache_record::{BLOCK_LEN, RECORD_LEN};
    use crate::ports::BigPartCache;

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
        let entries = cache.entries().await.unwrap();
        assert_eq!(
            entries,
            vec![CachedEntry {
                folder: "models".into(),
                name: "model.onnx".into(),
                bytes: on_disk,
                last_used: entries[0].last_used,
            }]
        );
        let modified = std::fs::metadata(cache.root().join("models/model.onnx.big"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(
            entries[0].last_used, modified,
            "the stamp eviction orders by"
        );
        assert_eq!(
            files_in(&cache.root().join("models")),
            vec!["model.onnx.big"]
        );
    }
}
