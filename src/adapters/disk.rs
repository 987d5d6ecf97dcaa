//! Free space on a file system (statvfs), for the floor that the cache and
//! upload spools leave free (PROTOCOL §5.3, `MODEL_CACHE_MIN_FREE_BYTES`).

use std::io;
use std::path::Path;

/// Bytes an unprivileged process may still write on the file system of `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(path).map_err(io::Error::from)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// True when writing `more` bytes under `path` keeps at least `floor` bytes
/// free. A floor of 0 asks nothing of the disk.
pub fn room_for(path: &Path, more: u64, floor: u64) -> io::Result<bool> {
    if floor == 0 {
        return Ok(true);
    }
    Ok(free_bytes(path)? >= floor.saturating_add(more))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_and_the_floor_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        assert!(room_for(dir.path(), u64::MAX, 0).unwrap());
        assert!(room_for(dir.path(), 0, 1).unwrap());
        assert!(!room_for(dir.path(), 1, free.saturating_add(1 << 40)).unwrap());
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }
}
