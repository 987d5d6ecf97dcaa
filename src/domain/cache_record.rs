//! The record kept with each cached big part: which small part it belongs
//! with (SHA-256 of the small part), its length, and an XXH3-64 checksum of
//! every block of `BLOCK_LEN` bytes, so a reader checks each block just
//! before serving it and the bytes are read once, not twice.
//!
//! An entry on disk is `header (RECORD_LEN) || big part || block table`, the
//! table being one little-endian u64 per block. The header ends with an
//! XXH3-128 of its own fields and the table, so a damaged header or table is
//! found when the entry is opened, and a damaged block before it is served.

use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

const MAGIC: &[u8; 8] = b"AZLBIG02";
/// Encoded header size: magic, small digest, big length, block length, check.
pub const RECORD_LEN: usize = FIELDS_LEN + 16;
/// Bytes covered by one block checksum (the cache also reads in blocks of this
/// size): small enough that a block, its plaintext and the next block stay in
/// the CPU's L2 cache between reading, checking, decrypting and sending; the
/// table costs 32 KiB per GiB.
pub const BLOCK_LEN: u32 = 256 << 10;
const SUM_LEN: u64 = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRecord {
    pub small_digest: [u8; 32],
    pub big_len: u64,
    pub block_len: u32,
    /// XXH3-64 of each block, the last one possibly shorter.
    pub blocks: Vec<u64>,
}

/// The fixed-size header alone, enough to know where the table is and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub small_digest: [u8; 32],
    pub big_len: u64,
    pub block_len: u32,
    check: u128,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cache record is malformed")]
pub struct MalformedRecord;

/// SHA-256 of a small part (as encrypted under the resource key).
pub fn small_part_digest(small: &[u8]) -> [u8; 32] {
    Sha256::digest(small).into()
}

/// A small part's digest as the big part's `small-sha256` metadata carries
/// it (PROTOCOL §5.4): lowercase hex.
pub fn small_sha256_hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checksum of one block.
pub fn block_checksum(block: &[u8]) -> u64 {
    xxh3_64(block)
}

/// Number of blocks of `block_len` bytes in `big_len` bytes.
pub fn block_count(big_len: u64, block_len: u32) -> u64 {
    big_len.div_ceil(u64::from(block_len.max(1)))
}

/// Size on disk of an entry holding `big_len` bytes: header, bytes and table.
pub fn entry_len(big_len: u64) -> u64 {
    RECORD_LEN as u64 + big_len + SUM_LEN * block_count(big_len, BLOCK_LEN)
}

/// Length of the header's fields, before the check that covers them.
const FIELDS_LEN: usize = 8 + 32 + 8 + 4;

/// The header's fields as they are written: magic, small digest, big length, block length.
fn fields(small_digest: &[u8; 32], big_len: u64, block_len: u32) -> [u8; FIELDS_LEN] {
    let mut out = [0u8; FIELDS_LEN];
    out[..8].copy_from_slice(MAGIC);
    out[8..40].copy_from_slice(small_digest);
    out[40..48].copy_from_slice(&big_len.to_le_bytes());
    out[48..].copy_from_slice(&block_len.to_le_bytes());
    out
}

fn check_of(fields: &[u8], table: &[u8]) -> u128 {
    let mut h = Xxh3::new();
    h.update(fields);
    h.update(table);
    h.digest128()
}

impl CacheRecord {
    /// Table bytes: one little-endian u64 per block.
    pub fn encode_table(&self) -> Vec<u8> {
        self.blocks.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    pub fn encode_header(&self) -> [u8; RECORD_LEN] {
        let fields = fields(&self.small_digest, self.big_len, self.block_len);
        let mut out = [0u8; RECORD_LEN];
        out[..FIELDS_LEN].copy_from_slice(&fields);
        let check = check_of(&fields, &self.encode_table());
        out[FIELDS_LEN..].copy_from_slice(&check.to_le_bytes());
        out
    }

    /// The checksum of block `index`, if the record has one.
    pub fn block(&self, index: u64) -> Option<u64> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.blocks.get(i).copied())
    }
}

impl RecordHeader {
    pub fn decode(bytes: &[u8]) -> Result<Self, MalformedRecord> {
        if bytes.len() != RECORD_LEN || &bytes[..8] != MAGIC {
            return Err(MalformedRecord);
        }
        let mut small_digest = [0u8; 32];
        small_digest.copy_from_slice(&bytes[8..40]);
        let big_len = u64::from_le_bytes(bytes[40..48].try_into().map_err(|_| MalformedRecord)?);
        let block_len = u32::from_le_bytes(bytes[48..52].try_into().map_err(|_| MalformedRecord)?);
        let check = u128::from_le_bytes(
            bytes[FIELDS_LEN..]
                .try_into()
                .map_err(|_| MalformedRecord)?,
        );
        if block_len == 0 {
            return Err(MalformedRecord);
        }
        Ok(Self {
            small_digest,
            big_len,
            block_len,
            check,
        })
    }

    /// Length in bytes of the block table that follows the big part.
    pub fn table_len(&self) -> u64 {
        SUM_LEN * block_count(self.big_len, self.block_len)
    }

    /// Size on disk of the whole entry this header describes.
    pub fn entry_len(&self) -> Option<u64> {
        (RECORD_LEN as u64)
            .checked_add(self.big_len)?
            .checked_add(self.table_len())
    }

    /// The whole record, if `table` is the table this header was written with.
    pub fn with_table(self, table: &[u8]) -> Result<CacheRecord, MalformedRecord> {
        if table.len() as u64 != self.table_len() {
            return Err(MalformedRecord);
        }
        let fields = fields(&self.small_digest, self.big_len, self.block_len);
        if check_of(&fields, table) != self.check {
            return Err(MalformedRecord);
        }
        let blocks = table
            .chunks_exact(SUM_LEN as usize)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        Ok(CacheRecord {
            small_digest: self.small_digest,
            big_len: self.big_len,
            block_len: self.block_len,
            blocks,
        })
    }
}

/// Builds the record of a big part from chunks of any size.
#[derive(Clone)]
pub struct RecordBuilder {
    small_digest: [u8; 32],
    hasher: Xxh3,
    in_block: u32,
    blocks: Vec<u64>,
    len: u64,
}

impl RecordBuilder {
    pub fn new(small_digest: [u8; 32]) -> Self {
        Self {
            small_digest,
            hasher: Xxh3::new(),
            in_block: 0,
            blocks: Vec::new(),
            len: 0,
        }
    }

    pub fn update(&mut self, mut chunk: &[u8]) {
        self.len += chunk.len() as u64;
        while !chunk.is_empty() {
            let room = (BLOCK_LEN - self.in_block) as usize;
            let take = room.min(chunk.len());
            self.hasher.update(&chunk[..take]);
            // `take` is at most BLOCK_LEN, which fits in a u32.
            self.in_block += take as u32;
            chunk = &chunk[take..];
            if self.in_block == BLOCK_LEN {
                self.blocks.push(self.hasher.digest());
                self.hasher.reset();
                self.in_block = 0;
            }
        }
    }

    /// Bytes taken so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(mut self) -> CacheRecord {
        if self.in_block > 0 {
            self.blocks.push(self.hasher.digest());
        }
        CacheRecord {
            small_digest: self.small_digest,
            big_len: self.len,
            block_len: BLOCK_LEN,
            blocks: self.blocks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record_of(data: &[u8], cuts: &[usize]) -> CacheRecord {
        let mut b = RecordBuilder::new([7; 32]);
        let mut at = 0;
        for &cut in cuts {
            let cut = cut.clamp(at, data.len());
            b.update(&data[at..cut]);
            at = cut;
        }
        b.update(&data[at..]);
        b.finish()
    }

    proptest! {
        #[test]
        fn records_round_trip(digest in any::<[u8; 32]>(), sums in proptest::collection::vec(any::<u64>(), 0..20)) {
            let len = sums.len() as u64 * u64::from(BLOCK_LEN);
            let r = CacheRecord { small_digest: digest, big_len: len, block_len: BLOCK_LEN, blocks: sums };
            let header = RecordHeader::decode(&r.encode_header()).unwrap();
            prop_assert_eq!(header.entry_len(), Some(entry_len(len)));
            prop_assert_eq!(header.with_table(&r.encode_table()), Ok(r));
        }

        #[test]
        fn a_changed_table_or_header_byte_is_malformed(sums in proptest::collection::vec(any::<u64>(), 1..8), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let r = CacheRecord { small_digest: [3; 32], big_len: sums.len() as u64 * 100, block_len: 100, blocks: sums };
            let mut table = r.encode_table();
            let i = at.index(table.len());
            table[i] ^= 1 << bit;
            let header = RecordHeader::decode(&r.encode_header()).unwrap();
            prop_assert_eq!(header.with_table(&table), Err(MalformedRecord));
            let mut head = r.encode_header();
            let j = 8 + at.index(RECORD_LEN - 8);
            head[j] ^= 1 << bit;
            let ok = RecordHeader::decode(&head).and_then(|h| h.with_table(&r.encode_table()));
            prop_assert_eq!(ok, Err(MalformedRecord));
        }

        #[test]
        fn block_sums_ignore_chunking(len in 0usize..(3 * BLOCK_LEN as usize), cuts in proptest::collection::vec(0usize..(3 * BLOCK_LEN as usize), 0..6)) {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut cuts = cuts;
            cuts.sort_unstable();
            let r = record_of(&data, &cuts);
            prop_assert_eq!(r.big_len, len as u64);
            prop_assert_eq!(r.blocks.len() as u64, block_count(len as u64, BLOCK_LEN));
            for (i, block) in data.chunks(BLOCK_LEN as usize).enumerate() {
                prop_assert_eq!(r.blocks[i], block_checksum(block));
            }
        }
    }

    #[test]
    fn the_small_part_digest_is_sha256_as_lowercase_hex() {
        // FIPS 180-2's "abc" example.
        let digest = small_part_digest(b"abc");
        assert_eq!(
            small_sha256_hex(&digest),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(small_part_digest(b"abd"), digest);
        assert_eq!(small_sha256_hex(&[0x0f; 32]), "0f".repeat(32));
    }

    #[test]
    fn garbage_is_not_a_record() {
        assert_eq!(RecordHeader::decode(b"short"), Err(MalformedRecord));
        assert_eq!(
            RecordHeader::decode(&[0u8; RECORD_LEN]),
            Err(MalformedRecord)
        );
    }

    #[test]
    fn block_sums_see_a_flipped_bit() {
        let mut data = vec![5u8; BLOCK_LEN as usize + 10];
        let a = record_of(&data, &[]);
        data[BLOCK_LEN as usize + 3] ^= 4;
        let b = record_of(&data, &[]);
        assert_eq!(a.blocks[0], b.blocks[0]);
        assert_ne!(a.blocks[1], b.blocks[1]);
        assert_eq!(
            entry_len(data.len() as u64),
            RECORD_LEN as u64 + data.len() as u64 + 16
        );
        assert_eq!(entry_len(0), RECORD_LEN as u64);
    }
}
