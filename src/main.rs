//! The `azaion-loader` command: parses the command line and hands it to
//! [`azaion_loader::startup::cli`], which runs `serve`, `dev` and the tools.
//! It also picks the allocator.

use std::process::ExitCode;

use azaion_loader::startup::cli::{Cli, run};
use clap::Parser;

/// mimalloc instead of glibc's malloc. glibc kept the peak RSS low only with
/// its mmap threshold pinned at 256 KiB, so that every CDN segment, cache
/// batch and upload part was mapped, faulted in page by page and unmapped
/// again: ~400k minor faults and 3.9 CPU-s per GiB loaded from S3, against
/// ~40k and 2.5 CPU-s with mimalloc (BENCHMARKS.md, "The allocator").
/// Set up for a small peak RSS: `azaion_loader::startup::allocator`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    azaion_loader::startup::allocator::tune();
    run(Cli::parse())
}
