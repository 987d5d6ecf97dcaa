//! Helpers the cache's tests share: a cache in a temporary directory,
//! entries written and read through the port, and a look at the files.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use bytes::Bytes;
use futures::StreamExt;

use super::FsBigPartCache;
use crate::domain::names::{Folder, ResourceName};
use crate::ports::{BigPartCache, CacheLookup, ObjectBody};

pub(super) fn folder(s: &str) -> Folder {
    Folder::parse(s).unwrap()
}

pub(super) fn name(s: &str) -> ResourceName {
    ResourceName::parse(s).unwrap()
}

pub(super) fn data(len: usize, seed: u8) -> Vec<u8> {
    crate::test_support::pattern(len, seed)
}

pub(super) fn new_cache(dir: &tempfile::TempDir, limit: Option<u64>) -> FsBigPartCache {
    FsBigPartCache::open(dir.path().join("cache"), limit).unwrap()
}

pub(super) async fn put(cache: &FsBigPartCache, f: &str, n: &str, digest: [u8; 32], bytes: &[u8]) {
    let mut w = cache.create(&folder(f), &name(n), &digest).await.unwrap();
    // Uneven chunks, some above the write batch.
    for chunk in bytes.chunks(300_001) {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    w.commit().await.unwrap();
}

pub(super) async fn read_all(body: ObjectBody) -> Vec<u8> {
    let mut stream = body.stream;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

pub(super) async fn hit(cache: &FsBigPartCache, f: &str, n: &str, digest: [u8; 32]) -> Vec<u8> {
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

pub(super) async fn lookup(
    cache: &FsBigPartCache,
    f: &str,
    n: &str,
    digest: [u8; 32],
) -> &'static str {
    match cache.open(&folder(f), &name(n), &digest).await.unwrap() {
        CacheLookup::Hit(_) => "hit",
        CacheLookup::Miss => "miss",
        CacheLookup::Stale => "stale",
        CacheLookup::Damaged => "damaged",
    }
}

/// Every file under the folder directory, by name.
pub(super) fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub(super) fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
}
