//! Load: 256 concurrent connections mix `/load`, `/status` and bad requests
//! against the `serve` binary for a bounded time (60 s, or
//! `AZAION_LOAD_SECS`). Good requests must all succeed byte-exact, bad ones
//! get their 4xx, and the loader's memory stays flat.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use azaion_loader::app::dev::{self, DEMO_FOLDER};
use bytes::Bytes;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::e2e::Loader;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[derive(Default)]
struct Counts {
    loads: AtomicU64,
    statuses: AtomicU64,
    bad: AtomicU64,
    failures: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_fifty_six_connections_for_a_minute_lose_nothing_and_memory_stays_flat() {
    let secs: u64 = std::env::var("AZAION_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let peers = dev::peers_in(dir.path()).await.unwrap();
    let plain: Vec<u8> = (0..(1usize << 20))
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    let digest = Sha256::digest(&plain);
    dev::seed_resource(
        &peers.emulator,
        &peers.cdn,
        DEMO_FOLDER,
        "m.bin",
        Bytes::from(plain),
    )
    .await
    .unwrap();
    let loader = Arc::new(Loader::spawn(&peers.emulator.base_url(), dir.path(), &[]));
    loader.login().await;
    let pid = loader.child.id();
    let counts = Arc::new(Counts::default());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for worker in 0..256usize {
        let (loader, counts, client) = (loader.clone(), counts.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = worker;
            while Instant::now() < deadline {
                n += 1;
                match n % 4 {
                    0 => {
                        let r = client
                            .post(loader.url("/load/m.bin"))
                            .json(&json!({"folder": DEMO_FOLDER}))
                            .send()
                            .await;
                        let ok = match r {
                            Ok(r) if r.status() == 200 => r
                                .bytes()
                                .await
                                .map(|b| Sha256::digest(&b) == digest)
                                .unwrap_or(false),
                            _ => false,
                        };
                        let c = if ok { &counts.loads } else { &counts.failures };
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    1 => {
                        let r = client
                            .post(loader.url("/load/bad%20name"))
                            .json(&json!({"folder": DEMO_FOLDER}))
                            .send()
                            .await;
                        let ok = matches!(r, Ok(ref r) if r.status() == 400);
                        let c = if ok { &counts.bad } else { &counts.failures };
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    2 => {
                        let r = client
                            .post(loader.url("/login"))
                            .header("content-type", "application/json")
                            .body("{broken")
                            .send()
                            .await;
                        let ok = matches!(r, Ok(ref r) if r.status() == 400);
                        let c = if ok { &counts.bad } else { &counts.failures };
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        let r = client.get(loader.url("/status")).send().await;
                        let ok = matches!(r, Ok(ref r) if r.status() == 200);
                        let c = if ok {
                            &counts.statuses
                        } else {
                            &counts.failures
                        };
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // RSS every second: after the warm-up it must level off, not keep climbing.
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(rss_kib(pid));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rss_end = rss_kib(pid);
    let peak = loader.peak_rss_kib();
    let (loads, statuses, bad, failures) = (
        counts.loads.load(Ordering::Relaxed),
        counts.statuses.load(Ordering::Relaxed),
        counts.bad.load(Ordering::Relaxed),
        counts.failures.load(Ordering::Relaxed),
    );
    // The second half of the run against the first: a leak keeps climbing, a
    // steady state does not.
    let half = samples.len() / 2;
    let first_half_max = samples[..half].iter().copied().max().unwrap_or(0);
    let rss_warm = first_half_max;
    println!(
        "load for {secs} s over 256 connections: {loads} loads of 1 MiB byte-exact, {statuses} /status, {bad} bad requests refused, {failures} failures; RSS (KiB, every second): {samples:?}; end {rss_end} KiB, peak {peak} KiB"
    );
    assert_eq!(failures, 0);
    assert!(loads > 0 && statuses > 0 && bad > 0);
    assert!(
        rss_end <= rss_warm + 32 * 1024,
        "memory kept growing under steady load: first-half peak {rss_warm} KiB, end {rss_end} KiB"
    );
}
