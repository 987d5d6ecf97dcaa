//! Free space on a file system (statvfs), for the floor that the cache and
//! upload spools leave free (PROTOCOL §5.3, `MODEL_CACHE_MIN_FREE_BYTES`).

use std::io;
use std::path::{Path, PathBuf};

/// How many bytes a [`FreeSpaceFloor`] lets through between two statvfs calls.
const CHECK_EVERY: u64 = 4 << 20;

/// The permission bits of a secret file (a token, a stored password) when
/// others may read or write it, or its group may write it; `None` when it
/// is private enough (0600, or 0640 for a group of trusted readers).
pub fn exposed_mode(metadata: &std::fs::Metadata) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o7777;
        (mode & 0o026 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = metadata;
        None
    }
}

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

/// Keeps one writer's bytes under `dir` from taking the free space under
/// `floor`, asking the file system at most once per 4 MiB written (so the
/// floor may be crossed by at most that much per writer at once).
pub struct FreeSpaceFloor {
    dir: PathBuf,
    floor: u64,
    /// Bytes known to fit without asking again.
    allowance: u64,
}

impl FreeSpaceFloor {
    pub fn new(dir: &Path, floor: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            floor,
            allowance: 0,
        }
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// True when `n` more bytes keep the floor; they are then counted.
    pub fn reserve(&mut self, n: u64) -> io::Result<bool> {
        if self.floor == 0 {
            return Ok(true);
        }
        if n <= self.allowance {
            self.allowance -= n;
            return Ok(true);
        }
        let room = free_bytes(&self.dir)?.saturating_sub(self.floor);
        if room < n {
            self.allowance = 0;
            return Ok(false);
        }
        self.allowance = (room - n).min(CHECK_EVERY);
        Ok(true)
    }
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

    #[test]
    fn a_floor_lets_writes_through_while_they_fit_and_refuses_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut open = FreeSpaceFloor::new(dir.path(), 0);
        assert!(open.reserve(u64::MAX).unwrap());
        let mut small = FreeSpaceFloor::new(dir.path(), 1);
        for _ in 0..100 {
            assert!(small.reserve(1 << 20).unwrap());
        }
        let free = free_bytes(dir.path()).unwrap();
        let mut full = FreeSpaceFloor::new(dir.path(), free + (1 << 40));
        assert!(!full.reserve(1).unwrap());
        // Exactly what is free above the floor fits; one byte more does not.
        let mut edge = FreeSpaceFloor::new(dir.path(), 1 << 20);
        assert!(
            !edge
                .reserve(free.saturating_sub(1 << 20) + (1 << 30))
                .unwrap()
        );
        let missing = FreeSpaceFloor::new(&dir.path().join("missing"), 1).reserve(1);
        assert!(missing.is_err());
    }
}
