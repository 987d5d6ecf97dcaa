//! The record kept with each cached big part: which small part it belongs
//! with (SHA-256 of the small part) and its length and XXH3-128 checksum.
//! A fixed-size binary header, so a cache can write it in place.

use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::Xxh3;

const MAGIC: &[u8; 8] = b"AZLBIG01";
/// Encoded size: magic, small digest, big length, checksum.
pub const RECORD_LEN: usize = 8 + 32 + 8 + 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheRecord {
    pub small_digest: [u8; 32],
    pub big_len: u64,
    pub checksum: u128,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cache record is malformed")]
pub struct MalformedRecord;

/// SHA-256 of a small part (as encrypted under the resource key).
pub fn small_part_digest(small: &[u8]) -> [u8; 32] {
    Sha256::digest(small).into()
}

impl CacheRecord {
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8..40].copy_from_slice(&self.small_digest);
        out[40..48].copy_from_slice(&self.big_len.to_le_bytes());
        out[48..64].copy_from_slice(&self.checksum.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, MalformedRecord> {
        if bytes.len() != RECORD_LEN || &bytes[..8] != MAGIC {
            return Err(MalformedRecord);
        }
        let mut small_digest = [0u8; 32];
        small_digest.copy_from_slice(&bytes[8..40]);
        let big_len = u64::from_le_bytes(bytes[40..48].try_into().map_err(|_| MalformedRecord)?);
        let checksum = u128::from_le_bytes(bytes[48..64].try_into().map_err(|_| MalformedRecord)?);
        Ok(Self {
            small_digest,
            big_len,
            checksum,
        })
    }
}

/// Streaming checksum of a big part (XXH3-128: fast enough that checking a
/// cached file before serving it costs little next to decrypting it).
#[derive(Default, Clone)]
pub struct BigPartChecksum {
    hasher: Xxh3,
    len: u64,
}

impl BigPartChecksum {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.len += chunk.len() as u64;
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(&self) -> u128 {
        self.hasher.digest128()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn records_round_trip(digest in any::<[u8; 32]>(), len in any::<u64>(), sum in any::<u128>()) {
            let r = CacheRecord { small_digest: digest, big_len: len, checksum: sum };
            prop_assert_eq!(CacheRecord::decode(&r.encode()), Ok(r));
        }

        #[test]
        fn checksum_ignores_chunking(data in proptest::collection::vec(any::<u8>(), 0..5000), cut in 0usize..5000) {
            let cut = cut.min(data.len());
            let mut a = BigPartChecksum::new();
            a.update(&data);
            let mut b = BigPartChecksum::new();
            b.update(&data[..cut]);
            b.update(&data[cut..]);
            prop_assert_eq!(a.finish(), b.finish());
            prop_assert_eq!(b.len(), data.len() as u64);
        }
    }

    #[test]
    fn garbage_is_not_a_record() {
        assert_eq!(CacheRecord::decode(b"short"), Err(MalformedRecord));
        assert_eq!(
            CacheRecord::decode(&[0u8; RECORD_LEN]),
            Err(MalformedRecord)
        );
    }

    #[test]
    fn checksum_sees_a_flipped_bit() {
        let mut a = BigPartChecksum::new();
        a.update(b"hello world");
        let mut b = BigPartChecksum::new();
        b.update(b"hello worle");
        assert_ne!(a.finish(), b.finish());
    }
}
