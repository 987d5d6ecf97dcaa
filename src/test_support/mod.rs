//! Test support, for this crate's tests (feature `test-support`): one byte
//! generator, one directory walker, one way to run the binary with a clean
//! environment, the loader over fakes ([`app::TestApp`]) and the real binary
//! as a child process ([`process::LoaderProcess`], with `dev-stack`).

pub mod app;
#[cfg(feature = "dev-stack")]
pub mod process;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Deterministic pseudo-random bytes (xorshift), different for each `seed`
/// and without a short period (a block never repeats its neighbour).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Chunk `index` of a long deterministic stream for `seed`, made on its
/// own (for bodies of hundreds of MiB that are never held whole).
pub fn pattern_chunk(seed: u64, index: u64, len: usize) -> Vec<u8> {
    let mut x = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Every file below `dir`, at any depth (an unreadable folder counts as empty).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Settings the loader reads from the environment: a developer's own must not leak in.
pub const LOADER_ENV: &[&str] = &[
    "LOADER_LISTEN",
    "RESOURCE_API_URL",
    "MODEL_CACHE_DIR",
    "MODEL_CACHE_MAX_BYTES",
    "IMAGES_PATH",
    "LOADER_IMAGES",
    "LOADER_RUNTIME",
    "API_CONNECT_TIMEOUT_SECS",
    "API_REQUEST_TIMEOUT_SECS",
    "CDN_SEGMENT_MIB",
    "CDN_PARALLEL_READS",
    "LOADER_CONFIG",
    "LOADER_ALLOWED_HOSTS",
    "LOADER_TOKEN_FILE",
    "LOADER_MAX_UPLOAD_BYTES",
    "MODEL_CACHE_MIN_FREE_BYTES",
    "LOADER_MAX_TRANSFERS",
    "UNLOCK_TIMEOUT_SECS",
    "LOADER_ALLOW_INSECURE_HTTP",
    "LOADER_MAX_CONNECTIONS",
    "LOADER_URL",
    "RUST_LOG",
    "LOG_FORMAT_JSON",
];

/// `bin` with none of the loader's settings in its environment (a
/// developer's own must not leak into a test) and no stdin.
pub fn clean_command(bin: &Path) -> Command {
    let mut command = Command::new(bin);
    for var in LOADER_ENV {
        command.env_remove(var);
    }
    command.stdin(Stdio::null());
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_by_seed_and_do_not_repeat() {
        let a = pattern(1 << 16, 1);
        assert_eq!(a, pattern(1 << 16, 1));
        assert_ne!(a, pattern(1 << 16, 2));
        assert_eq!(pattern(13, 1), a[..13]);
        assert!(a.chunks(16).collect::<std::collections::HashSet<_>>().len() == (1 << 12));
    }

    #[test]
    fn chunks_differ_by_seed_and_index() {
        let a = pattern_chunk(1, 0, 4096);
        assert_eq!(a, pattern_chunk(1, 0, 4096));
        assert_ne!(a, pattern_chunk(1, 1, 4096));
        assert_ne!(a, pattern_chunk(2, 0, 4096));
        assert_eq!(pattern_chunk(1, 0, 10), a[..10]);
    }

    #[test]
    fn files_are_found_at_any_depth() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/x"), b"1").unwrap();
        std::fs::write(dir.path().join("y"), b"2").unwrap();
        assert_eq!(
            files_under(dir.path()),
            vec![dir.path().join("a/b/x"), dir.path().join("y")]
        );
    }
}
