//! AES-256-CBC encryption with the CPU's AES instructions: AES-NI on x86_64,
//! the ARMv8 Cryptography Extensions on aarch64 (Jetsons).
//!
//! CBC encryption is serial: each block waits for the one before it, so the
//! speed is set by the latency of the 14 AES rounds. Each loop below keeps
//! all 15 round keys and the chaining value in registers and takes the XOR
//! of the next plaintext block off the dependency chain (folded into the
//! last round key), so that only the AES instructions (and on aarch64 one
//! XOR) sit between two blocks. The `cbc` crate, which runs a round-key load
//! and a call per block, is the fallback and the tests' oracle.
//!
//! [`CbcEncryptHw::new`] returns `None` when the CPU lacks the instructions
//! (and always on other architectures, or when built with
//! `--cfg aes_force_soft`); the caller then falls back to the `cbc` crate.

#[cfg(all(target_arch = "x86_64", not(aes_force_soft)))]
use x86 as arch;

#[cfg(all(target_arch = "aarch64", not(aes_force_soft)))]
use arm as arch;

#[cfg(all(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(aes_force_soft)
))]
pub(crate) use hw::CbcEncryptHw;

#[cfg(any(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    aes_force_soft
))]
pub(crate) use stub::CbcEncryptHw;

#[cfg(all(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(aes_force_soft)
))]
const BLOCK: usize = 16;
#[cfg(all(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(aes_force_soft)
))]
const ROUND_KEYS: usize = 15;

/// The state over either architecture's loop: the expanded key and the
/// chaining value, only constructed once the instructions were detected.
#[cfg(all(
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(aes_force_soft)
))]
mod hw {
    use super::{BLOCK, ROUND_KEYS, arch};
    use zeroize::{Zeroize, ZeroizeOnDrop};

    /// AES-256-CBC encryption state: the expanded key and the chaining value.
    #[derive(Zeroize, ZeroizeOnDrop)]
    pub(crate) struct CbcEncryptHw {
        round_keys: [[u8; BLOCK]; ROUND_KEYS],
        chain: [u8; BLOCK],
    }

    impl CbcEncryptHw {
        /// `None` when this CPU has no AES instructions.
        pub(crate) fn new(key: &[u8; 32], iv: &[u8; BLOCK]) -> Option<Self> {
            if !arch::detected() {
                return None;
            }
            let mut round_keys = [[0u8; BLOCK]; ROUND_KEYS];
            // SAFETY: the AES instructions were detected just above.
            unsafe { arch::expand_key(key, &mut round_keys) };
            Some(Self {
                round_keys,
                chain: *iv,
            })
        }

        /// Encrypts the block-aligned `input` and appends the ciphertext to
        /// `out`, carrying the chaining value over to the next call.
        #[inline]
        pub(crate) fn encrypt_append(&mut self, input: &[u8], out: &mut Vec<u8>) {
            assert!(
                input.len().is_multiple_of(BLOCK),
                "CBC input must be whole blocks"
            );
            out.reserve(input.len());
            let dst = out.spare_capacity_mut()[..input.len()]
                .as_mut_ptr()
                .cast::<u8>();
            // SAFETY: a `CbcEncryptHw` exists only if the AES instructions were
            // detected (`new`); `input` is whole blocks (asserted) and `dst`
            // has room for its `input.len()` bytes (just reserved).
            unsafe { arch::cbc_encrypt(&self.round_keys, &mut self.chain, input, dst) };
            // SAFETY: `cbc_encrypt` wrote all `input.len()` bytes after the old length.
            unsafe { out.set_len(out.len() + input.len()) };
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn key_expansion_matches_fips_197_appendix_a3() {
            if !arch::detected() {
                eprintln!("no AES instructions on this CPU: skipped");
                return;
            }
            let key: [u8; 32] =
                hex::decode("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
                    .unwrap()
                    .try_into()
                    .unwrap();
            let mut round_keys = [[0u8; BLOCK]; ROUND_KEYS];
            // SAFETY: the AES instructions were detected above.
            unsafe { arch::expand_key(&key, &mut round_keys) };
            assert_eq!(
                hex::encode(round_keys[2]),
                "9ba354118e6925afa51a8b5f2067fcde"
            );
            assert_eq!(
                hex::encode(round_keys[3]),
                "a8b09c1a93d194cdbe49846eb75d5b9a"
            );
            assert_eq!(
                hex::encode(round_keys[14]),
                "fe4890d1e6188d0b046df344706c631e"
            );
        }
    }
}

#[cfg(all(target_arch = "x86_64", not(aes_force_soft)))]
mod x86 {
    use std::arch::x86_64::{
        __m128i, _MM_HINT_T0, _mm_aesenc_si128, _mm_aesenclast_si128, _mm_aeskeygenassist_si128,
        _mm_loadu_si128, _mm_prefetch, _mm_shuffle_epi32, _mm_slli_si128, _mm_storeu_si128,
        _mm_xor_si128,
    };

    use super::{BLOCK, ROUND_KEYS};
    /// How far ahead of the block being encrypted the input is prefetched. The
    /// loop touches memory slowly (16 bytes per ~14 dependent rounds), so the
    /// hardware prefetchers, which stop at page boundaries, leave it waiting
    /// on cache misses; asking early measured ~10% faster over 256 MiB.
    const PREFETCH_AHEAD: usize = 2048;

    pub(super) fn detected() -> bool {
        std::arch::is_x86_feature_detected!("aes")
    }

    #[inline(always)]
    fn load(bytes: &[u8; BLOCK]) -> __m128i {
        // SAFETY: reads 16 bytes from a 16-byte array; `loadu` has no alignment requirement.
        unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
    }

    #[inline(always)]
    fn store(bytes: &mut [u8; BLOCK], value: __m128i) {
        // SAFETY: writes 16 bytes into a 16-byte array; `storeu` has no alignment requirement.
        unsafe { _mm_storeu_si128(bytes.as_mut_ptr().cast(), value) }
    }

    /// One step of the AES-256 schedule: `prev ^ (prev << 32) ^ (prev << 64) ^ (prev << 96) ^ t`.
    #[inline]
    #[target_feature(enable = "aes,sse2")]
    fn schedule_step(prev: __m128i, t: __m128i) -> __m128i {
        let mut x = prev;
        x = _mm_xor_si128(x, _mm_slli_si128::<4>(x));
        x = _mm_xor_si128(x, _mm_slli_si128::<4>(x));
        x = _mm_xor_si128(x, _mm_slli_si128::<4>(x));
        _mm_xor_si128(x, t)
    }

    /// AES-256 key expansion (FIPS-197 §5.2) into 15 round keys.
    ///
    /// # Safety
    /// The CPU must support AES-NI.
    #[target_feature(enable = "aes,sse2")]
    pub(super) unsafe fn expand_key(key: &[u8; 32], out: &mut [[u8; BLOCK]; ROUND_KEYS]) {
        let (lo, hi) = key.split_at(BLOCK);
        let mut a = load(lo.try_into().expect("16 bytes"));
        let mut b = load(hi.try_into().expect("16 bytes"));
        store(&mut out[0], a);
        store(&mut out[1], b);
        // Even key: RotWord(SubWord(w[3])) ^ rcon, from the previous (odd) key.
        macro_rules! even {
            ($i:literal, $rcon:literal) => {
                let t = _mm_aeskeygenassist_si128::<$rcon>(b);
                a = schedule_step(a, _mm_shuffle_epi32::<0xff>(t));
                store(&mut out[$i], a);
            };
        }
        // Odd key: SubWord(w[3]), no rotation and no rcon, from the new even key.
        macro_rules! odd {
            ($i:literal) => {
                let t = _mm_aeskeygenassist_si128::<0>(a);
                b = schedule_step(b, _mm_shuffle_epi32::<0xaa>(t));
                store(&mut out[$i], b);
            };
        }
        even!(2, 0x01);
        odd!(3);
        even!(4, 0x02);
        odd!(5);
        even!(6, 0x04);
        odd!(7);
        even!(8, 0x08);
        odd!(9);
        even!(10, 0x10);
        odd!(11);
        even!(12, 0x20);
        odd!(13);
        even!(14, 0x40);
    }

    /// CBC-encrypts the whole blocks of `input` to `dst`, chaining from and
    /// back into `chain`.
    ///
    /// # Safety
    /// The CPU must support AES-NI (and SSE2, always there on x86_64); `input`
    /// must be whole blocks and `dst` valid for writing `input.len()` bytes.
    #[target_feature(enable = "aes,sse2")]
    pub(super) unsafe fn cbc_encrypt(
        round_keys: &[[u8; BLOCK]; ROUND_KEYS],
        chain: &mut [u8; BLOCK],
        input: &[u8],
        dst: *mut u8,
    ) {
        let [
            k0,
            k1,
            k2,
            k3,
            k4,
            k5,
            k6,
            k7,
            k8,
            k9,
            k10,
            k11,
            k12,
            k13,
            k14,
        ] = round_keys.each_ref().map(load);
        let blocks = input.len() / BLOCK;
        let src = input.as_ptr();
        // SAFETY (for `read` and `write`): `i < blocks`, so block `i` lies within
        // `input` and within the `input.len()` bytes writable at `dst`.
        let read = |i: usize| unsafe { _mm_loadu_si128(src.add(i * BLOCK).cast()) };
        let write = |i: usize, value| unsafe { _mm_storeu_si128(dst.add(i * BLOCK).cast(), value) };
        if blocks == 0 {
            return;
        }
        // Whitened input of the current block: plaintext ^ previous ciphertext ^ k0.
        let mut state = _mm_xor_si128(_mm_xor_si128(read(0), load(chain)), k0);
        macro_rules! rounds_1_to_13 {
            ($s:ident) => {
                $s = _mm_aesenc_si128($s, k1);
                $s = _mm_aesenc_si128($s, k2);
                $s = _mm_aesenc_si128($s, k3);
                $s = _mm_aesenc_si128($s, k4);
                $s = _mm_aesenc_si128($s, k5);
                $s = _mm_aesenc_si128($s, k6);
                $s = _mm_aesenc_si128($s, k7);
                $s = _mm_aesenc_si128($s, k8);
                $s = _mm_aesenc_si128($s, k9);
                $s = _mm_aesenc_si128($s, k10);
                $s = _mm_aesenc_si128($s, k11);
                $s = _mm_aesenc_si128($s, k12);
                $s = _mm_aesenc_si128($s, k13);
            };
        }
        for i in 1..blocks {
            if i % 4 == 0 {
                // A hint only: never faults, so the address may run past `input`.
                _mm_prefetch::<_MM_HINT_T0>(src.wrapping_add(i * BLOCK + PREFETCH_AHEAD).cast());
            }
            // Off the dependency chain: the next plaintext, whitened with k0 and
            // folded into the last round key, so that the last round yields the
            // next block's whitened input directly:
            // aesenclast(s, k14 ^ m) = ciphertext ^ m, with m = next ^ k0.
            let m = _mm_xor_si128(read(i), k0);
            rounds_1_to_13!(state);
            state = _mm_aesenclast_si128(state, _mm_xor_si128(k14, m));
            write(i - 1, _mm_xor_si128(state, m));
        }
        rounds_1_to_13!(state);
        let last = _mm_aesenclast_si128(state, k14);
        write(blocks - 1, last);
        store(chain, last);
    }
}

#[cfg(all(target_arch = "aarch64", not(aes_force_soft)))]
mod arm {
    use std::arch::aarch64::{
        uint8x16_t, vaeseq_u8, vaesmcq_u8, vdupq_n_u8, vdupq_n_u32, veorq_u8, vgetq_lane_u32,
        vld1q_u8, vreinterpretq_u8_u32, vreinterpretq_u32_u8, vst1q_u8,
    };

    use zeroize::Zeroize;

    use super::{BLOCK, ROUND_KEYS};

    pub(super) fn detected() -> bool {
        std::arch::is_aarch64_feature_detected!("aes")
    }

    /// SubWord (FIPS-197 §5.2) with the AES instruction, in constant time: with
    /// the word in all four columns, ShiftRows moves nothing, so `aese` with a
    /// zero key leaves SubBytes of the word in every column.
    #[inline]
    #[target_feature(enable = "aes")]
    fn sub_word(word: u32) -> u32 {
        let state = vreinterpretq_u8_u32(vdupq_n_u32(word));
        vgetq_lane_u32::<0>(vreinterpretq_u32_u8(vaeseq_u8(state, vdupq_n_u8(0))))
    }

    /// AES-256 key expansion (FIPS-197 §5.2) into 15 round keys.
    ///
    /// # Safety
    /// The CPU must have the AES instructions.
    #[target_feature(enable = "aes")]
    pub(super) unsafe fn expand_key(key: &[u8; 32], out: &mut [[u8; BLOCK]; ROUND_KEYS]) {
        const RCON: [u32; 7] = [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40];
        // Words as the bytes lie in memory (little-endian lanes): RotWord is
        // then a rotation right by one byte, and Rcon goes in the low byte.
        let mut words = [0u32; 4 * ROUND_KEYS];
        for (word, bytes) in words.iter_mut().zip(key.chunks_exact(4)) {
            *word = u32::from_le_bytes(bytes.try_into().expect("4 bytes"));
        }
        for i in 8..words.len() {
            let previous = words[i - 1];
            let mixed = match i % 8 {
                0 => sub_word(previous.rotate_right(8)) ^ RCON[i / 8 - 1],
                4 => sub_word(previous),
                _ => previous,
            };
            words[i] = words[i - 8] ^ mixed;
        }
        for (round_key, chunk) in out.iter_mut().zip(words.chunks_exact(4)) {
            for (bytes, word) in round_key.chunks_exact_mut(4).zip(chunk) {
                bytes.copy_from_slice(&word.to_le_bytes());
            }
        }
        words.zeroize();
    }

    /// CBC-encrypts the whole blocks of `input` to `dst`, chaining from and
    /// back into `chain`.
    ///
    /// # Safety
    /// The CPU must have the AES instructions; `input` must be whole blocks
    /// and `dst` valid for writing `input.len()` bytes.
    #[target_feature(enable = "aes")]
    pub(super) unsafe fn cbc_encrypt(
        round_keys: &[[u8; BLOCK]; ROUND_KEYS],
        chain: &mut [u8; BLOCK],
        input: &[u8],
        dst: *mut u8,
    ) {
        // SAFETY: each round key is 16 readable bytes.
        let load = |bytes: &[u8; BLOCK]| unsafe { vld1q_u8(bytes.as_ptr()) };
        let [
            k0,
            k1,
            k2,
            k3,
            k4,
            k5,
            k6,
            k7,
            k8,
            k9,
            k10,
            k11,
            k12,
            k13,
            k14,
        ] = round_keys.each_ref().map(load);
        let blocks = input.len() / BLOCK;
        let src = input.as_ptr();
        // SAFETY (for `read` and `write`): `i < blocks`, so block `i` lies within
        // `input` and within the `input.len()` bytes writable at `dst`.
        let read = |i: usize| unsafe { vld1q_u8(src.add(i * BLOCK)) };
        let write = |i: usize, value: uint8x16_t| unsafe { vst1q_u8(dst.add(i * BLOCK), value) };
        if blocks == 0 {
            return;
        }
        // `aese` XORs its key in first: round r is aesmc(aese(s, k_r)), the
        // last aese(s, k13) ^ k14.
        macro_rules! rounds_0_to_13 {
            ($s:ident) => {{
                $s = vaesmcq_u8(vaeseq_u8($s, k0));
                $s = vaesmcq_u8(vaeseq_u8($s, k1));
                $s = vaesmcq_u8(vaeseq_u8($s, k2));
                $s = vaesmcq_u8(vaeseq_u8($s, k3));
                $s = vaesmcq_u8(vaeseq_u8($s, k4));
                $s = vaesmcq_u8(vaeseq_u8($s, k5));
                $s = vaesmcq_u8(vaeseq_u8($s, k6));
                $s = vaesmcq_u8(vaeseq_u8($s, k7));
                $s = vaesmcq_u8(vaeseq_u8($s, k8));
                $s = vaesmcq_u8(vaeseq_u8($s, k9));
                $s = vaesmcq_u8(vaeseq_u8($s, k10));
                $s = vaesmcq_u8(vaeseq_u8($s, k11));
                $s = vaesmcq_u8(vaeseq_u8($s, k12));
                vaeseq_u8($s, k13)
            }};
        }
        // The current block's input: plaintext ^ previous ciphertext.
        let mut state = veorq_u8(read(0), load(chain));
        for i in 1..blocks {
            // Off the dependency chain: the next plaintext with k14 folded in,
            // so that one XOR turns the last round into the next block's input:
            // t ^ (k14 ^ next) = ciphertext ^ next.
            let m = veorq_u8(read(i), k14);
            let t = rounds_0_to_13!(state);
            write(i - 1, veorq_u8(t, k14));
            state = veorq_u8(t, m);
        }
        let last = veorq_u8(rounds_0_to_13!(state), k14);
        write(blocks - 1, last);
        // SAFETY: `chain` is 16 writable bytes.
        unsafe { vst1q_u8(chain.as_mut_ptr(), last) };
    }
}

#[cfg(any(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    aes_force_soft
))]
mod stub {
    /// Never constructed: no AES instructions are used on this target.
    pub(crate) enum CbcEncryptHw {}

    impl CbcEncryptHw {
        pub(crate) fn new(_key: &[u8; 32], _iv: &[u8; 16]) -> Option<Self> {
            None
        }

        pub(crate) fn encrypt_append(&mut self, _input: &[u8], _out: &mut Vec<u8>) {
            match *self {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CbcEncryptHw;
    use aes::Aes256;
    use cbc::cipher::inout::InOutBuf;
    use cbc::cipher::{BlockEncryptMut, KeyIvInit};
    use proptest::prelude::*;

    fn unhex<const N: usize>(text: &str) -> [u8; N] {
        hex::decode(text).unwrap().try_into().unwrap()
    }

    /// NIST SP 800-38A F.2.5, CBC-AES256.Encrypt.
    #[test]
    fn sp800_38a_f25_cbc_aes256_encrypt() {
        let key = unhex::<32>("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
        let iv = unhex::<16>("000102030405060708090a0b0c0d0e0f");
        let plain = hex::decode(concat!(
            "6bc1bee22e409f96e93d7e117393172a",
            "ae2d8a571e03ac9c9eb76fac45af8e51",
            "30c81c46a35ce411e5fbc1191a0a52ef",
            "f69f2445df4f9b17ad2b417be66c3710",
        ))
        .unwrap();
        let cipher = concat!(
            "f58c4c04d6e5f1ba779eabfb5f7bfbd6",
            "9cfc4e967edb808d679f777bc6702c7d",
            "39f23369a9d9bacfa530e26304231461",
            "b2eb05e2c39be9fcda6c19078c6a9d1b",
        );
        let Some(mut ni) = CbcEncryptHw::new(&key, &iv) else {
            eprintln!("no AES-NI on this CPU: skipped");
            return;
        };
        let mut out = b"kept".to_vec();
        ni.encrypt_append(&plain, &mut out);
        assert_eq!(&out[..4], b"kept");
        assert_eq!(hex::encode(&out[4..]), cipher);
        // The same again, one block per call: the chaining value carries over.
        let mut ni = CbcEncryptHw::new(&key, &iv).unwrap();
        let mut out = Vec::new();
        for block in plain.chunks(16) {
            ni.encrypt_append(block, &mut out);
            ni.encrypt_append(&[], &mut out);
        }
        assert_eq!(hex::encode(&out), cipher);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// The `cbc` crate is the oracle.
        #[test]
        fn matches_the_cbc_crate_for_any_key_iv_data_and_chunking(
            key in any::<[u8; 32]>(),
            iv in any::<[u8; 16]>(),
            blocks in 0usize..300,
            seed in any::<u64>(),
            cuts in proptest::collection::vec(0usize..40, 0..10),
        ) {
            let Some(mut ni) = CbcEncryptHw::new(&key, &iv) else {
                return Ok(());
            };
            let mut state = seed | 1;
            let plain: Vec<u8> = (0..blocks * 16)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();

            let mut expected = plain.clone();
            let mut oracle = cbc::Encryptor::<Aes256>::new((&key).into(), (&iv).into());
            let (chunks, _) = InOutBuf::from(&mut expected[..]).into_chunks();
            oracle.encrypt_blocks_inout_mut(chunks);

            let mut actual = Vec::new();
            let mut rest = &plain[..];
            for cut in cuts {
                let (head, tail) = rest.split_at((cut * 16).min(rest.len()));
                ni.encrypt_append(head, &mut actual);
                rest = tail;
            }
            ni.encrypt_append(rest, &mut actual);
            prop_assert_eq!(actual, expected);
        }
    }
}
