//! Where the cache's files lie and what they are called: the canonical
//! root, `{root}/{folder}/{name}.big` entries, the temporary names that
//! writes in progress and removals use (and the clean-up of those a crash
//! left), and the making of directories: mode 0700, real directories only,
//! never a symlink below the root.

use std::fs::{self, DirBuilder, File, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{Shared, io_error};
use crate::domain::names::{Folder, ResourceName};
use crate::ports::CacheError;

pub(super) const ENTRY_SUFFIX: &str = ".big";
/// Marks a temporary file: `.{name}.big.tmp-<random>`.
pub(super) const TEMP_MARK: &str = ".big.tmp-";
const DIR_MODE: u32 = 0o700;
pub(super) const FILE_MODE: u32 = 0o600;

/// `(folder, name)` of an entry.
pub(super) type EntryKey = (String, String);

pub(super) fn entry_key(folder: &Folder, name: &ResourceName) -> EntryKey {
    (folder.as_str().to_owned(), name.as_str().to_owned())
}

impl Shared {
    pub(super) fn folder_dir(&self, folder: &Folder) -> PathBuf {
        self.root.join(folder.as_str())
    }

    pub(super) fn entry_path(&self, folder: &Folder, name: &ResourceName) -> PathBuf {
        self.folder_dir(folder)
            .join(format!("{}{ENTRY_SUFFIX}", name.as_str()))
    }
}

/// Makes the cache folder `root` (mode 0700) if it is missing and returns it
/// canonical and absolute. `root` itself may be a symlink; what it leads to
/// must be a directory.
pub(super) fn prepare_root(root: &Path) -> Result<PathBuf, CacheError> {
    match fs::symlink_metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(root)
                .map_err(|e| io_error("cannot create the cache folder", root, e))?;
            fs::set_permissions(root, Permissions::from_mode(DIR_MODE))
                .map_err(|e| io_error("cannot restrict the cache folder", root, e))?;
        }
        Err(e) => return Err(io_error("cannot read the cache folder", root, e)),
        Ok(_) => {}
    }
    let root =
        fs::canonicalize(root).map_err(|e| io_error("cannot resolve the cache folder", root, e))?;
    let meta =
        fs::metadata(&root).map_err(|e| io_error("cannot read the cache folder", &root, e))?;
    if !meta.is_dir() {
        return Err(CacheError::io(
            format!("the cache folder {}", root.display()),
            io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    Ok(root)
}

pub(super) fn is_temp_name(file_name: &str) -> bool {
    file_name.starts_with('.')
        && file_name.contains(TEMP_MARK)
        && !file_name.ends_with(ENTRY_SUFFIX)
}

/// A fresh name beside `entry` under which it can be moved aside (a temp
/// name, so a crash before its deletion leaves nothing the cache would read).
pub(super) fn aside_path(entry: &Path) -> PathBuf {
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
pub(super) fn delete_path(path: &Path) -> io::Result<()> {
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

/// Makes a real `{root}/{folder}` directory, replacing a symlink or file there.
pub(super) fn ensure_folder_dir(dir: &Path) -> io::Result<()> {
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

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes temporary files in the root and in each real folder directory
/// (the only places the cache makes them).
pub(super) fn remove_leftover_temp_files(root: &Path) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::outbound::fs_cache::test_support::*;
    use crate::domain::cache_record::{BLOCK_LEN, CacheRecord};
    use crate::ports::BigPartCache;
    use bytes::Bytes;

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
}
