//! The encryption format of PROTOCOL §1.2 and §1.4:
//! `IV (16 bytes) || AES-256-CBC(key, IV, PKCS#7(plaintext))`.
//!
//! [`Encryptor`] and [`Decryptor`] take input in chunks of any size and emit
//! output as they go, so multi-GiB resources stream in constant memory. The
//! decryptor holds back only the last full block until [`Decryptor::finish`],
//! where the padding is checked: a truncated, misaligned or damaged
//! ciphertext is an error, never a silently shorter plaintext.
//! The IV comes from the caller: this module never touches randomness.

use aes::Aes256;
use cbc::cipher::inout::InOutBuf;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};

use super::aes_hw::CbcEncryptHw;
use super::keys::AesKey;

pub const BLOCK: usize = 16;
pub const IV_LEN: usize = 16;
/// The shortest valid ciphertext: an IV and one padded block.
pub const MIN_CIPHERTEXT_LEN: usize = IV_LEN + BLOCK;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    #[error("ciphertext too short: {0} bytes, at least 32 are needed")]
    TooShort(u64),
    #[error("ciphertext body of {0} bytes is not a multiple of 16")]
    Misaligned(u64),
    #[error("bad PKCS#7 padding: wrong key, or a damaged or truncated ciphertext")]
    BadPadding,
    #[error("ciphertext is {actual} bytes where {expected} were announced: truncated or overlong")]
    LengthMismatch { expected: u64, actual: u64 },
}

/// Ciphertext length for a plaintext of `plaintext_len` bytes.
pub fn ciphertext_len(plaintext_len: u64) -> u64 {
    IV_LEN as u64 + (plaintext_len / BLOCK as u64 + 1) * BLOCK as u64
}

/// Plaintext length given the ciphertext length and the value of its last padding byte.
pub fn plaintext_len(ciphertext_len: u64, padding: u8) -> u64 {
    ciphertext_len.saturating_sub(IV_LEN as u64 + padding as u64)
}

/// Runs CBC over the block-aligned prefix `buf`, in place.
fn decrypt_in_place(cipher: &mut cbc::Decryptor<Aes256>, buf: &mut [u8]) {
    debug_assert_eq!(buf.len() % BLOCK, 0);
    let (blocks, _) = InOutBuf::from(buf).into_chunks();
    cipher.decrypt_blocks_inout_mut(blocks);
}

/// Which AES implementation this CPU runs (issue 15: reported at start, by
/// `azaion-loader hardware`, on `/status`, the status page and `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CryptoBackend {
    /// x86_64 AES-NI (the `aes` crate detects it at run time).
    AesNi,
    /// ARMv8 Cryptography Extensions (aarch64 built with `--cfg aes_armv8`).
    ArmV8,
    /// The `aes` crate's constant-time software AES: correct, but one core
    /// decrypts at a few hundred MB/s at best.
    Software,
}

impl CryptoBackend {
    pub fn detect() -> Self {
        #[cfg(all(target_arch = "x86_64", not(aes_force_soft)))]
        if std::arch::is_x86_feature_detected!("aes") {
            return Self::AesNi;
        }
        #[cfg(all(target_arch = "aarch64", aes_armv8, not(aes_force_soft)))]
        if std::arch::is_aarch64_feature_detected!("aes") {
            return Self::ArmV8;
        }
        Self::Software
    }

    /// A label value: `aes-ni`, `armv8` or `software`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AesNi => "aes-ni",
            Self::ArmV8 => "armv8",
            Self::Software => "software",
        }
    }

    pub fn is_hardware(self) -> bool {
        self != Self::Software
    }
}

/// The CBC encryption engine: the CPU's AES instructions when it has them, else the `cbc` crate.
/// Both give the same bytes; the AES-NI / ARMv8 loop is faster (see `aes_hw`).
// Unboxed, as the `cbc` encryptor (~1 KiB) always was: no allocation per stream.
#[allow(clippy::large_enum_variant)]
enum EncryptBackend {
    Hw(CbcEncryptHw),
    Soft(cbc::Encryptor<Aes256>),
}

impl EncryptBackend {
    fn new(key: &AesKey, iv: &[u8; IV_LEN]) -> Self {
        match CbcEncryptHw::new(key.as_bytes(), iv) {
            Some(hw) => Self::Hw(hw),
            None => Self::soft(key, iv),
        }
    }

    fn soft(key: &AesKey, iv: &[u8; IV_LEN]) -> Self {
        Self::Soft(cbc::Encryptor::<Aes256>::new(
            key.as_bytes().into(),
            iv.into(),
        ))
    }

    /// Encrypts the block-aligned `input`, appending the ciphertext to `out`.
    #[inline]
    fn encrypt_append(&mut self, input: &[u8], out: &mut Vec<u8>) {
        debug_assert_eq!(input.len() % BLOCK, 0);
        match self {
            // Straight from `input` to `out`: one pass over the data.
            Self::Hw(hw) => hw.encrypt_append(input, out),
            Self::Soft(cipher) => {
                let start = out.len();
                out.extend_from_slice(input);
                let (blocks, _) = InOutBuf::from(&mut out[start..]).into_chunks();
                cipher.encrypt_blocks_inout_mut(blocks);
            }
        }
    }
}

/// Incremental encryptor: `update` any number of times, then `finish`.
pub struct Encryptor {
    cipher: EncryptBackend,
    iv: Option<[u8; IV_LEN]>,
    partial: [u8; BLOCK],
    partial_len: usize,
    total_in: u64,
}

impl Encryptor {
    pub fn new(key: &AesKey, iv: [u8; IV_LEN]) -> Self {
        Self::with_backend(EncryptBackend::new(key, &iv), iv)
    }

    /// The `cbc`-crate engine whatever the CPU: the oracle for the hardware one.
    #[cfg(test)]
    fn new_soft(key: &AesKey, iv: [u8; IV_LEN]) -> Self {
        Self::with_backend(EncryptBackend::soft(key, &iv), iv)
    }

    fn with_backend(cipher: EncryptBackend, iv: [u8; IV_LEN]) -> Self {
        Self {
            cipher,
            iv: Some(iv),
            partial: [0; BLOCK],
            partial_len: 0,
            total_in: 0,
        }
    }

    /// Exact length of the whole ciphertext once `plaintext_len` bytes went in.
    pub fn output_len(plaintext_len: u64) -> u64 {
        ciphertext_len(plaintext_len)
    }

    /// Encrypts `input`, appending every byte that is now final to `out`
    /// (the IV on the first call). At most 15 bytes are held back.
    pub fn update(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        self.total_in += input.len() as u64;
        if let Some(iv) = self.iv.take() {
            out.extend_from_slice(&iv);
        }
        if self.partial_len > 0 {
            let take = (BLOCK - self.partial_len).min(input.len());
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&input[..take]);
            self.partial_len += take;
            input = &input[take..];
            if self.partial_len < BLOCK {
                return;
            }
            self.cipher.encrypt_append(&self.partial, out);
            self.partial_len = 0;
        }
        let whole = input.len() / BLOCK * BLOCK;
        self.cipher.encrypt_append(&input[..whole], out);
        let rest = &input[whole..];
        self.partial[..rest.len()].copy_from_slice(rest);
        self.partial_len = rest.len();
    }

    /// Pads and encrypts the last block (always 1..=16 padding bytes).
    pub fn finish(mut self, out: &mut Vec<u8>) {
        if let Some(iv) = self.iv.take() {
            out.extend_from_slice(&iv);
        }
        let pad = (BLOCK - self.partial_len) as u8;
        for byte in &mut self.partial[self.partial_len..] {
            *byte = pad;
        }
        self.cipher.encrypt_append(&self.partial, out);
    }

    /// Plaintext bytes taken so far.
    pub fn bytes_in(&self) -> u64 {
        self.total_in
    }
}

/// Incremental decryptor: `update` any number of times, then `finish`.
pub struct Decryptor {
    key: AesKey,
    iv: [u8; IV_LEN],
    iv_len: usize,
    cipher: Option<cbc::Decryptor<Aes256>>,
    /// Ciphertext not yet decrypted: a partial block, or the last full block held back.
    pending: [u8; 2 * BLOCK],
    pending_len: usize,
    total_in: u64,
    expected_len: Option<u64>,
}

impl Decryptor {
    pub fn new(key: &AesKey) -> Self {
        Self {
            key: key.clone(),
            iv: [0; IV_LEN],
            iv_len: 0,
            cipher: None,
            pending: [0; 2 * BLOCK],
            pending_len: 0,
            total_in: 0,
            expected_len: None,
        }
    }

    /// Announces the whole ciphertext length. CBC with PKCS#7 cannot tell a
    /// ciphertext cut on a block boundary from a whole one when the new last
    /// block happens to end in valid padding; with the length known (a file
    /// size, a Content-Length), any truncation is an error.
    pub fn with_expected_len(mut self, ciphertext_len: u64) -> Self {
        self.expected_len = Some(ciphertext_len);
        self
    }

    /// Decrypts what it can of `input`, appending plaintext that is now
    /// certain to `out`. Holds back the last full block (for the padding
    /// check) and any partial block; never fails (errors surface in `finish`).
    pub fn update(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        self.total_in += input.len() as u64;
        if self.iv_len < IV_LEN {
            let take = (IV_LEN - self.iv_len).min(input.len());
            self.iv[self.iv_len..self.iv_len + take].copy_from_slice(&input[..take]);
            self.iv_len += take;
            input = &input[take..];
            if self.iv_len < IV_LEN {
                return;
            }
            self.cipher = Some(cbc::Decryptor::<Aes256>::new(
                self.key.as_bytes().into(),
                (&self.iv).into(),
            ));
        }
        let Some(cipher) = self.cipher.as_mut() else {
            return;
        };
        let total = self.pending_len + input.len();
        // Decrypt every full block except the last one when nothing partial follows it:
        // that one may be the final, padded block.
        let decryptable = if total.is_multiple_of(BLOCK) {
            total.saturating_sub(BLOCK)
        } else {
            total / BLOCK * BLOCK
        };
        if decryptable == 0 {
            self.pending[self.pending_len..total].copy_from_slice(input);
            self.pending_len = total;
            return;
        }
        let start = out.len();
        out.extend_from_slice(&self.pending[..self.pending_len]);
        let from_input = decryptable - self.pending_len;
        out.extend_from_slice(&input[..from_input]);
        decrypt_in_place(cipher, &mut out[start..]);
        let rest = &input[from_input..];
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// Checks length and padding and appends the last plaintext bytes.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), CipherError> {
        if let Some(expected) = self.expected_len
            && expected != self.total_in
        {
            return Err(CipherError::LengthMismatch {
                expected,
                actual: self.total_in,
            });
        }
        if self.total_in < MIN_CIPHERTEXT_LEN as u64 {
            return Err(CipherError::TooShort(self.total_in));
        }
        let body = self.total_in - IV_LEN as u64;
        if !body.is_multiple_of(BLOCK as u64) || self.pending_len != BLOCK {
            return Err(CipherError::Misaligned(body));
        }
        let Some(cipher) = self.cipher.as_mut() else {
            return Err(CipherError::TooShort(self.total_in));
        };
        let mut last = [0u8; BLOCK];
        last.copy_from_slice(&self.pending[..BLOCK]);
        decrypt_in_place(cipher, &mut last);
        let pad = last[BLOCK - 1] as usize;
        if pad == 0 || pad > BLOCK || last[BLOCK - pad..].iter().any(|&b| b as usize != pad) {
            return Err(CipherError::BadPadding);
        }
        out.extend_from_slice(&last[..BLOCK - pad]);
        Ok(())
    }

    /// Ciphertext bytes taken so far.
    pub fn bytes_in(&self) -> u64 {
        self.total_in
    }
}

/// One-shot encryption, built on [`Encryptor`].
pub fn encrypt(key: &AesKey, iv: [u8; IV_LEN], plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ciphertext_len(plaintext.len() as u64) as usize);
    let mut enc = Encryptor::new(key, iv);
    enc.update(plaintext, &mut out);
    enc.finish(&mut out);
    out
}

/// One-shot decryption, built on [`Decryptor`].
pub fn decrypt(key: &AesKey, ciphertext: &[u8]) -> Result<Vec<u8>, CipherError> {
    let mut out = Vec::with_capacity(ciphertext.len());
    let mut dec = Decryptor::new(key);
    dec.update(ciphertext, &mut out);
    dec.finish(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_matches_what_the_cpu_offers() {
        let backend = CryptoBackend::detect();
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            backend == CryptoBackend::AesNi,
            std::arch::is_x86_feature_detected!("aes")
        );
        assert_eq!(backend.is_hardware(), backend != CryptoBackend::Software);
        assert!(["aes-ni", "armv8", "software"].contains(&backend.as_str()));
    }
    use crate::domain::secret::SecretString;
    use proptest::prelude::*;

    fn key() -> AesKey {
        AesKey::from_key_string(&SecretString::new("test key"))
    }

    fn chunked_decrypt(key: &AesKey, data: &[u8], cuts: &[usize]) -> Result<Vec<u8>, CipherError> {
        let mut dec = Decryptor::new(key);
        let mut out = Vec::new();
        let mut at = 0;
        for &cut in cuts {
            let end = (at + cut).min(data.len());
            dec.update(&data[at..end], &mut out);
            at = end;
        }
        dec.update(&data[at..], &mut out);
        dec.finish(&mut out)?;
        Ok(out)
    }

    fn chunked_encrypt(key: &AesKey, iv: [u8; 16], data: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut enc = Encryptor::new(key, iv);
        let mut out = Vec::new();
        let mut at = 0;
        for &cut in cuts {
            let end = (at + cut).min(data.len());
            enc.update(&data[at..end], &mut out);
            at = end;
        }
        enc.update(&data[at..], &mut out);
        enc.finish(&mut out);
        out
    }

    #[test]
    fn empty_plaintext_encrypts_to_32_bytes() {
        let c = encrypt(&key(), [7; 16], b"");
        assert_eq!(c.len(), 32);
        assert_eq!(decrypt(&key(), &c).unwrap(), b"");
    }

    #[test]
    fn rejects_short_misaligned_and_badly_padded_input() {
        let c = encrypt(&key(), [1; 16], b"hello world, this is thirty-two!");
        assert_eq!(c.len(), 64);
        assert_eq!(decrypt(&key(), &c[..31]), Err(CipherError::TooShort(31)));
        assert_eq!(decrypt(&key(), &c[..40]), Err(CipherError::Misaligned(24)));
        assert_eq!(decrypt(&key(), &c[..48]), Err(CipherError::BadPadding));
        let wrong = AesKey::from_key_string(&SecretString::new("other"));
        assert!(decrypt(&wrong, &c).is_err());
    }

    #[test]
    fn a_cut_on_a_block_boundary_needs_the_announced_length_to_be_caught() {
        // The last kept block decrypts to genuine plaintext; when that ends in 0x01
        // the padding looks valid. Only the announced length catches this cut.
        let mut plain = vec![0u8; 40];
        plain[31] = 1;
        let c = encrypt(&key(), [2; 16], &plain);
        let cut = &c[..48];
        assert_eq!(decrypt(&key(), cut).unwrap(), plain[..31].to_vec());
        let mut dec = Decryptor::new(&key()).with_expected_len(c.len() as u64);
        let mut out = Vec::new();
        dec.update(cut, &mut out);
        assert_eq!(
            dec.finish(&mut out),
            Err(CipherError::LengthMismatch {
                expected: 64,
                actual: 48
            })
        );
    }

    #[test]
    fn decryptor_holds_back_only_the_last_block() {
        let plain = vec![42u8; 100];
        let c = encrypt(&key(), [3; 16], &plain);
        let mut dec = Decryptor::new(&key());
        let mut out = Vec::new();
        dec.update(&c, &mut out);
        // 100 bytes of plaintext → 112 bytes of body; all but the last block is out.
        assert_eq!(out.len(), 96);
        dec.finish(&mut out).unwrap();
        assert_eq!(out, plain);
    }

    #[test]
    fn encrypts_with_the_aes_instructions_when_the_cpu_has_them() {
        let enc = Encryptor::new(&key(), [0; 16]);
        let hardware = matches!(enc.cipher, EncryptBackend::Hw(_));
        #[cfg(all(target_arch = "x86_64", not(aes_force_soft)))]
        assert_eq!(hardware, std::arch::is_x86_feature_detected!("aes"));
        #[cfg(all(target_arch = "aarch64", not(aes_force_soft)))]
        assert_eq!(hardware, std::arch::is_aarch64_feature_detected!("aes"));
        #[cfg(any(
            not(any(target_arch = "x86_64", target_arch = "aarch64")),
            aes_force_soft
        ))]
        assert!(!hardware);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The AES-NI / ARMv8 engine (when present) against the `cbc` crate one, through
        /// the whole streaming API: random key, IV, data and chunking.
        #[test]
        fn the_hardware_engine_gives_the_cbc_crate_bytes(
            key_bytes in any::<[u8; 32]>(),
            iv in any::<[u8; 16]>(),
            plain in proptest::collection::vec(any::<u8>(), 0..5_000),
            cuts in proptest::collection::vec(0usize..700, 0..12),
        ) {
            let key = AesKey::from_bytes(key_bytes);
            let mut fast = Encryptor::new(&key, iv);
            let mut soft = Encryptor::new_soft(&key, iv);
            let (mut fast_out, mut soft_out) = (Vec::new(), Vec::new());
            let mut at = 0;
            for &cut in &cuts {
                let end = (at + cut).min(plain.len());
                fast.update(&plain[at..end], &mut fast_out);
                soft.update(&plain[at..end], &mut soft_out);
                prop_assert_eq!(&fast_out, &soft_out);
                prop_assert_eq!(fast.bytes_in(), soft.bytes_in());
                at = end;
            }
            fast.update(&plain[at..], &mut fast_out);
            soft.update(&plain[at..], &mut soft_out);
            fast.finish(&mut fast_out);
            soft.finish(&mut soft_out);
            prop_assert_eq!(fast_out.len() as u64, Encryptor::output_len(plain.len() as u64));
            prop_assert_eq!(&fast_out, &soft_out);
            prop_assert_eq!(decrypt(&key, &fast_out).unwrap(), plain);
        }

        #[test]
        fn any_chunking_gives_the_one_shot_bytes(
            plain in proptest::collection::vec(any::<u8>(), 0..20_000),
            iv in any::<[u8; 16]>(),
            enc_cuts in proptest::collection::vec(0usize..5000, 0..12),
            dec_cuts in proptest::collection::vec(0usize..5000, 0..12),
        ) {
            let one_shot = encrypt(&key(), iv, &plain);
            prop_assert_eq!(one_shot.len() as u64, ciphertext_len(plain.len() as u64));
            let streamed = chunked_encrypt(&key(), iv, &plain, &enc_cuts);
            prop_assert_eq!(&streamed, &one_shot);
            prop_assert_eq!(chunked_decrypt(&key(), &one_shot, &dec_cuts).unwrap(), plain);
        }

        #[test]
        fn truncation_with_the_length_announced_is_always_an_error(
            plain in proptest::collection::vec(any::<u8>(), 0..4000),
            cut in any::<prop::sample::Index>(),
        ) {
            let c = encrypt(&key(), [9; 16], &plain);
            let keep = cut.index(c.len()); // strictly shorter than c
            let mut dec = Decryptor::new(&key()).with_expected_len(c.len() as u64);
            let mut out = Vec::new();
            dec.update(&c[..keep], &mut out);
            prop_assert!(dec.finish(&mut out).is_err());
        }

        #[test]
        fn truncation_off_a_block_boundary_is_always_an_error(
            plain in proptest::collection::vec(any::<u8>(), 0..4000),
            cut in any::<prop::sample::Index>(),
        ) {
            let c = encrypt(&key(), [9; 16], &plain);
            let keep = cut.index(c.len());
            prop_assume!(keep < 32 || (keep - 16) % 16 != 0);
            prop_assert!(chunked_decrypt(&key(), &c[..keep], &[7, 300]).is_err());
        }

        #[test]
        fn a_damaged_last_block_is_an_error(
            plain in proptest::collection::vec(any::<u8>(), 0..4000),
            byte in 0usize..16,
            flip in 1u8..=255,
        ) {
            let mut c = encrypt(&key(), [5; 16], &plain);
            let len = c.len();
            // Damage the second-to-last ciphertext block (or the IV), which flips
            // exactly the chosen byte of the last plaintext block.
            c[len - 32 + byte] ^= flip;
            match decrypt(&key(), &c) {
                Err(e) => prop_assert_eq!(e, CipherError::BadPadding),
                Ok(p) => {
                    // Only a change in the data bytes can keep the padding valid;
                    // then the plaintext differs and has the same length.
                    prop_assert_eq!(p.len(), plain.len());
                    prop_assert_ne!(p, plain);
                }
            }
        }
    }
}

/// Arbitrary and damaged ciphertext in any chunking: a clean error or the bytes, never a panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::domain::keys::AesKey;
    use proptest::prelude::*;

    fn decrypt_in_chunks(
        key: &AesKey,
        data: &[u8],
        chunks: &[usize],
        expected_len: Option<u64>,
    ) -> Result<Vec<u8>, String> {
        let mut dec = Decryptor::new(key);
        if let Some(len) = expected_len {
            dec = dec.with_expected_len(len);
        }
        let mut out = Vec::new();
        let mut rest = data;
        let mut sizes = chunks.iter().cycle();
        while !rest.is_empty() {
            let n = sizes.next().copied().unwrap_or(1).clamp(1, rest.len());
            dec.update(&rest[..n], &mut out);
            rest = &rest[n..];
        }
        dec.finish(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 512, failure_persistence: None, ..proptest::test_runner::Config::default() })]

        #[test]
        fn the_streaming_decryptor_takes_arbitrary_bytes_in_any_chunking_without_panicking(
            key in any::<[u8; 32]>(),
            data in prop::collection::vec(any::<u8>(), 0..700),
            chunks in prop::collection::vec(1usize..70, 1..8),
        ) {
            let key = AesKey::from_bytes(key);
            let streamed = decrypt_in_chunks(&key, &data, &chunks, None);
            let whole = decrypt(&key, &data).map_err(|e| e.to_string());
            prop_assert_eq!(&streamed, &whole);
            if let Ok(plain) = streamed {
                prop_assert!(plain.len() + 17 <= data.len(), "IV and at least one padding byte");
            }
        }

        #[test]
        fn a_damaged_or_cut_ciphertext_decrypts_to_a_clean_error_or_to_bytes_never_a_panic(
            key in any::<[u8; 32]>(),
            iv in any::<[u8; 16]>(),
            plain in prop::collection::vec(any::<u8>(), 0..400),
            flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..3),
            cut in prop::option::of(any::<prop::sample::Index>()),
            announce in prop::option::of(0u64..1000),
            chunks in prop::collection::vec(1usize..40, 1..6),
        ) {
            let key = AesKey::from_bytes(key);
            let mut data = encrypt(&key, iv, &plain);
            let untouched = flips.is_empty() && cut.is_none();
            for (at, mask) in &flips {
                let i = at.index(data.len());
                data[i] ^= mask;
            }
            if let Some(cut) = cut {
                data.truncate(cut.index(data.len()));
            }
            let result = decrypt_in_chunks(&key, &data, &chunks, announce);
            if untouched && announce.is_none_or(|n| n == data.len() as u64) {
                prop_assert_eq!(result, Ok(plain));
            } else if let Some(n) = announce && n != data.len() as u64 {
                prop_assert!(result.is_err(), "a length other than the announced one must fail");
            }
        }
    }
}
