//! The big/small split of PROTOCOL §1.3: the first `min(3072, floor(3n/10))`
//! bytes of an encrypted resource are the small part, the rest the big part.

/// The small part never exceeds this many bytes.
pub const SMALL_PART_MAX: u64 = 3072;

/// Length of the small part of an encrypted resource of `encrypted_len` bytes.
pub fn small_part_len(encrypted_len: u64) -> u64 {
    // 3n/10 without overflow for any u64 n: floor(3n/10) = 3*(n/10) + floor(3*(n%10)/10).
    let three_tenths = 3 * (encrypted_len / 10) + (3 * (encrypted_len % 10)) / 10;
    three_tenths.min(SMALL_PART_MAX)
}

/// Length of the big part of an encrypted resource of `encrypted_len` bytes.
pub fn big_part_len(encrypted_len: u64) -> u64 {
    encrypted_len - small_part_len(encrypted_len)
}

/// Splits an encrypted resource held in memory into (small, big).
pub fn split(encrypted: &[u8]) -> (&[u8], &[u8]) {
    // small_part_len(n) <= n, so the index is always in range.
    let at = small_part_len(encrypted.len() as u64) as usize;
    encrypted.split_at(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        for (n, small) in [
            (0, 0),
            (1, 0),
            (3, 0),
            (4, 1),
            (10, 3),
            (32, 9),
            (10240, 3072),
            (10241, 3072),
        ] {
            assert_eq!(small_part_len(n), small, "n = {n}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn matches_the_naive_formula_and_parts_add_up(n in 0u64..(u64::MAX / 3)) {
            prop_assert_eq!(small_part_len(n), (3 * n / 10).min(3072));
            prop_assert_eq!(small_part_len(n) + big_part_len(n), n);
        }

        /// Streaming encrypt → split → join → streaming decrypt is the identity,
        /// whatever the plaintext (up to ~1 MiB) and however the input is chunked.
        #[test]
        fn encrypt_split_join_decrypt_round_trips(
            plain in proptest::collection::vec(any::<u8>(), 0..(1 << 20)),
            iv in any::<[u8; 16]>(),
            chunk in 1usize..70_000,
            extra_split in any::<prop::sample::Index>(),
        ) {
            use crate::domain::cipher::{Decryptor, Encryptor, encrypt};
            use crate::domain::keys::{AesKey, resource_key};
            let key = AesKey::from_key_string(&resource_key());
            let mut enc = Encryptor::new(&key, iv);
            let mut encrypted = Vec::new();
            for piece in plain.chunks(chunk) {
                enc.update(piece, &mut encrypted);
            }
            enc.finish(&mut encrypted);
            prop_assert_eq!(&encrypted, &encrypt(&key, iv, &plain));
            let (small, big) = split(&encrypted);
            prop_assert_eq!(small.len() as u64, small_part_len(encrypted.len() as u64));
            // Feed the parts as they arrive on download: small, then big cut anywhere.
            let cut = extra_split.index(big.len() + 1);
            let mut dec = Decryptor::new(&key).with_expected_len(encrypted.len() as u64);
            let mut out = Vec::new();
            dec.update(small, &mut out);
            dec.update(&big[..cut], &mut out);
            dec.update(&big[cut..], &mut out);
            dec.finish(&mut out).unwrap();
            prop_assert_eq!(out, plain);
        }

        #[test]
        fn never_overflows(n in any::<u64>()) {
            prop_assert!(small_part_len(n) <= SMALL_PART_MAX.min(n));
        }
    }
}
