//! The domain's streaming cipher (`Encryptor`, `Decryptor`) over 64 MiB at the
//! chunk sizes the adapters use, as throughput. Kept short: ten samples each.
//!
//!   cargo bench --bench crypto
//!
//! Under `cargo test --all-targets` (no `--bench` argument, an unoptimised
//! build) each case runs once over 1 MiB, as a quick check that it works.

use std::hint::black_box;
use std::time::Duration;

use azaion_loader::domain::cipher::{Decryptor, Encryptor, encrypt};
use azaion_loader::domain::keys::{AesKey, resource_key};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const INPUT_LEN: usize = 64 << 20;
const TEST_MODE_INPUT_LEN: usize = 1 << 20;
const CHUNKS: [usize; 4] = [16 << 10, 256 << 10, 1 << 20, 4 << 20];
const IV: [u8; 16] = [0x5a; 16];

/// Incompressible, reproducible bytes (xorshift64*), so no run gets lucky.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Feeds `input` in `chunk`-sized pieces, emptying one reused output buffer
/// after each piece, as a streaming adapter does.
fn encrypt_streaming(key: &AesKey, input: &[u8], chunk: usize, out: &mut Vec<u8>) -> usize {
    let mut encryptor = Encryptor::new(key, IV);
    let mut produced = 0;
    for piece in input.chunks(chunk) {
        out.clear();
        encryptor.update(piece, out);
        produced += black_box(&*out).len();
    }
    out.clear();
    encryptor.finish(out);
    produced + out.len()
}

fn decrypt_streaming(key: &AesKey, input: &[u8], chunk: usize, out: &mut Vec<u8>) -> usize {
    let mut decryptor = Decryptor::new(key).with_expected_len(input.len() as u64);
    let mut produced = 0;
    for piece in input.chunks(chunk) {
        out.clear();
        decryptor.update(piece, out);
        produced += black_box(&*out).len();
    }
    out.clear();
    decryptor
        .finish(out)
        .expect("the benchmark's own ciphertext decrypts");
    produced + out.len()
}

fn streaming_cipher(c: &mut Criterion) {
    let benchmarking = std::env::args().any(|arg| arg == "--bench");
    let input_len = if benchmarking {
        INPUT_LEN
    } else {
        TEST_MODE_INPUT_LEN
    };
    let key = AesKey::from_key_string(&resource_key());
    let plaintext = pseudo_random(input_len);
    let ciphertext = encrypt(&key, IV, &plaintext);

    let mut group = c.benchmark_group("cipher_64MiB");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Bytes(input_len as u64));
    for chunk in CHUNKS {
        let label = format!("{}KiB", chunk >> 10);
        let mut out = Vec::with_capacity(chunk + 32);
        group.bench_with_input(BenchmarkId::new("decrypt", &label), &chunk, |b, &chunk| {
            b.iter(|| decrypt_streaming(&key, &ciphertext, chunk, &mut out))
        });
        group.bench_with_input(BenchmarkId::new("encrypt", &label), &chunk, |b, &chunk| {
            b.iter(|| encrypt_streaming(&key, &plaintext, chunk, &mut out))
        });
    }
    group.finish();
}

criterion_group!(benches, streaming_cipher);
criterion_main!(benches);
