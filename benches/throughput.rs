//! One throughput figure of the domain's streaming cipher, in memory, for
//! `scripts/bench.sh` to set beside `openssl enc` on the same size and chunk:
//!
//!   cargo bench --bench throughput -- --op decrypt --bytes 1073741824 --chunk 1048576 --reps 3
//!   cargo bench --bench throughput -- --op encrypt --input plain.bin --key-hex K --iv-hex IV
//!
//! prints one line `throughput op=decrypt bytes=... chunk=... seconds=... mb_per_s=...`
//! (the best of `--reps` runs; MB = 10^6 bytes). The plaintext is `--input`
//! (read into memory first) or `--bytes` of pseudo-random bytes; `decrypt`
//! first encrypts it, untimed, so with the same key and IV it decrypts the very
//! ciphertext `openssl enc -e -K K -iv IV` makes of that file. Without
//! `--bytes` or `--input` (as under `cargo test --all-targets`) it checks
//! itself on 1 MiB and stops at once.

use std::hint::black_box;
use std::time::{Duration, Instant};

use azaion_loader::domain::cipher::{Decryptor, Encryptor, encrypt};
use azaion_loader::domain::keys::{AesKey, resource_key};

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Encrypt,
    Decrypt,
}

struct Args {
    op: Op,
    bytes: usize,
    input: Option<String>,
    key: [u8; 32],
    iv: [u8; 16],
    chunk: usize,
    reps: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        op: Op::Decrypt,
        bytes: 1 << 20,
        input: None,
        key: *AesKey::from_key_string(&resource_key()).as_bytes(),
        iv: [0x5a; 16],
        chunk: 1 << 20,
        reps: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--op" => {
                args.op = match value("--op")?.as_str() {
                    "encrypt" => Op::Encrypt,
                    "decrypt" => Op::Decrypt,
                    other => return Err(format!("--op {other}: expected encrypt or decrypt")),
                }
            }
            "--bytes" => args.bytes = number(&value("--bytes")?)?,
            "--input" => args.input = Some(value("--input")?),
            "--key-hex" => hex::decode_to_slice(value("--key-hex")?, &mut args.key)
                .map_err(|e| format!("--key-hex: {e} (64 hex digits expected)"))?,
            "--iv-hex" => hex::decode_to_slice(value("--iv-hex")?, &mut args.iv)
                .map_err(|e| format!("--iv-hex: {e} (32 hex digits expected)"))?,
            "--chunk" => args.chunk = number(&value("--chunk")?)?.max(1),
            "--reps" => args.reps = number(&value("--reps")?)?.max(1) as u32,
            // `--bench` from cargo, test filters from `cargo test`: not ours.
            _ => {}
        }
    }
    Ok(args)
}

fn number(text: &str) -> Result<usize, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a number"))
}

/// Incompressible, reproducible bytes (xorshift64*).
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

/// One streaming pass over `input`; returns the time and the bytes produced.
fn run_once(op: Op, key: &AesKey, iv: [u8; 16], input: &[u8], chunk: usize) -> (Duration, usize) {
    let mut out = Vec::with_capacity(chunk + 32);
    let mut produced = 0;
    let started = Instant::now();
    match op {
        Op::Encrypt => {
            let mut encryptor = Encryptor::new(key, iv);
            for piece in input.chunks(chunk) {
                out.clear();
                encryptor.update(piece, &mut out);
                produced += black_box(&out).len();
            }
            out.clear();
            encryptor.finish(&mut out);
        }
        Op::Decrypt => {
            let mut decryptor = Decryptor::new(key).with_expected_len(input.len() as u64);
            for piece in input.chunks(chunk) {
                out.clear();
                decryptor.update(piece, &mut out);
                produced += black_box(&out).len();
            }
            out.clear();
            if let Err(e) = decryptor.finish(&mut out) {
                eprintln!("throughput: the benchmark's own ciphertext does not decrypt: {e}");
                std::process::exit(1);
            }
        }
    }
    (started.elapsed(), produced + out.len())
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("throughput: {e}");
            std::process::exit(2);
        }
    };
    let key = AesKey::from_bytes(args.key);
    let plaintext = match &args.input {
        Some(path) => match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => {
                eprintln!("throughput: cannot read {path}: {e}");
                std::process::exit(2);
            }
        },
        None => pseudo_random(args.bytes),
    };
    let plaintext_len = plaintext.len();
    let input = match args.op {
        Op::Encrypt => plaintext,
        Op::Decrypt => encrypt(&key, args.iv, &plaintext),
    };
    let expected = match args.op {
        // The IV, then the plaintext padded to the next whole block.
        Op::Encrypt => 16 + (plaintext_len / 16 + 1) * 16,
        Op::Decrypt => plaintext_len,
    };
    let mut best = Duration::MAX;
    for _ in 0..args.reps {
        let (took, produced) = run_once(args.op, &key, args.iv, &input, args.chunk);
        if produced != expected {
            eprintln!("throughput: produced {produced} bytes where {expected} were expected");
            std::process::exit(1);
        }
        best = best.min(took);
    }
    let seconds = best.as_secs_f64();
    println!(
        "throughput op={} bytes={} chunk={} seconds={seconds:.6} mb_per_s={:.1}",
        match args.op {
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
        },
        plaintext_len,
        args.chunk,
        plaintext_len as f64 / seconds / 1e6,
    );
}
