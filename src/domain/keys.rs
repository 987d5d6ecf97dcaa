//! Key derivation of PROTOCOL §1.1 and §1.4: every key starts as text,
//! `H(s)` = base64(SHA-384(s)); AES keys are SHA-256 of a key string or of the
//! raw archive key fragment. Keys are secrets: never log them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256, Sha384};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::secret::SecretString;

/// `H(s)` of §1.1: standard base64 (padded) of SHA-384 of the UTF-8 bytes.
pub fn key_hash(text: &str) -> String {
    STANDARD.encode(Sha384::digest(text.as_bytes()))
}

/// The hardware hash: `H("Azaion_" + hardware + "_%$$$)0_")`.
pub fn hardware_hash(hardware: &str) -> String {
    key_hash(&format!("Azaion_{hardware}_%$$$)0_"))
}

/// The per-user, per-device key under which the API encrypts what it sends.
pub fn api_key(email: &str, password: &SecretString, hw_hash: &str) -> SecretString {
    // The text holds the password: wiped once hashed.
    let text = zeroize::Zeroizing::new(format!(
        "{email}-{}-{hw_hash}-#%@AzaionKey@%#---",
        password.expose()
    ));
    SecretString::new(key_hash(&text))
}

/// The key shared by every resource (before the split).
pub fn resource_key() -> SecretString {
    SecretString::new(key_hash("-#%@AzaionKey@%#---234sdfklgvhjbnn"))
}

/// A 32-byte AES-256 key, wiped on drop and never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct AesKey([u8; 32]);

impl AesKey {
    /// §1.2: SHA-256 of the UTF-8 bytes of a key string.
    pub fn from_key_string(key: &SecretString) -> Self {
        Self(Sha256::digest(key.expose().as_bytes()).into())
    }

    /// §1.4: SHA-256 of the raw bytes of the key fragment, used directly.
    pub fn from_archive_fragment(fragment: &[u8]) -> Self {
        Self(Sha256::digest(fragment).into())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_key_is_the_documented_hash() {
        // Independent check: SHA-384 output is 48 bytes, so 64 base64 chars, no padding.
        let key = resource_key();
        assert_eq!(key.expose().len(), 64);
        assert_eq!(key.expose(), key_hash("-#%@AzaionKey@%#---234sdfklgvhjbnn"));
    }

    #[test]
    fn aes_key_debug_hides_the_key() {
        let key = AesKey::from_archive_fragment(b"x");
        assert_eq!(format!("{key:?}"), "AesKey(***)");
    }
}
