//! The binary's allocator is mimalloc (`src/main.rs`), set up for a small
//! peak RSS:
//! - its arenas are committed on use rather than eagerly: `.cargo/config.toml`
//!   passes `MI_DEFAULT_ARENA_EAGER_COMMIT=0` to its C build, because the
//!   first arena is made before `main` runs, and a test checks the build;
//! - freed memory goes back to the system after [`PURGE_DELAY_MS`] instead
//!   of mimalloc's 1 s, set by [`tune`] at the start of `main`.
//!
//! Either can still be set by the operator (`MIMALLOC_ARENA_EAGER_COMMIT`,
//! `MIMALLOC_PURGE_DELAY`).

/// `mi_option_arena_eager_commit` and `mi_option_purge_delay`: indexes 4 and
/// 15 of mimalloc's `mi_option_e` (the same in its v2 and v3), which
/// libmimalloc-sys does not name.
pub const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
pub const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long a fully freed page is kept before it goes back to the system.
/// mimalloc's default (1 s) held a second's worth of transfer buffers: a peak
/// RSS of 87 MiB for a 1 GiB load from S3, 57 MiB with 10 ms and 44 MiB with
/// 0, at the same throughput (BENCHMARKS.md, "The allocator"); blocks are
/// still reused within their pages at once.
pub const PURGE_DELAY_MS: std::ffi::c_long = 0;

/// Sets mimalloc's purge delay unless the environment sets it.
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: stores one of mimalloc's options; no pointer is involved.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }
}

/// mimalloc's purge delay in milliseconds, as it is now.
pub fn purge_delay_ms() -> std::ffi::c_long {
    // SAFETY: reads one of mimalloc's options; no pointer is involved.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
}

/// mimalloc's arena eager-commit option as built (or as the environment's
/// `MIMALLOC_ARENA_EAGER_COMMIT` sets it).
pub fn arena_eager_commit() -> std::ffi::c_long {
    // SAFETY: reads one of mimalloc's options; no pointer is involved.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tune_sets_the_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            eprintln!("SKIPPED: MIMALLOC_PURGE_DELAY is set in the environment");
            return;
        }
        super::tune();
        assert_eq!(super::purge_delay_ms(), super::PURGE_DELAY_MS);
    }

    #[test]
    fn mimalloc_is_built_to_commit_its_arenas_on_use() {
        if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_some() {
            eprintln!("SKIPPED: MIMALLOC_ARENA_EAGER_COMMIT is set in the environment");
            return;
        }
        assert_eq!(
            super::arena_eager_commit(),
            0,
            "mimalloc was built without MI_DEFAULT_ARENA_EAGER_COMMIT=0 (a CFLAGS of the \
             environment replaced .cargo/config.toml's?)"
        );
    }
}
