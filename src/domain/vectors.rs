//! Reproduces every entry of the shared test vectors (`fixtures/wire-format.json`,
//! made by an independent implementation) byte for byte.

use serde::Deserialize;

use super::cipher::{Decryptor, Encryptor, decrypt};
use super::keys::{AesKey, api_key, hardware_hash, resource_key};
use super::secret::SecretString;
use super::split::{big_part_len, small_part_len, split};

const VECTORS: &str = include_str!("../../fixtures/wire-format.json");

#[derive(Deserialize)]
struct Vectors {
    key_derivation: Vec<KeyDerivation>,
    aes_cbc: Vec<AesCbc>,
    split: Vec<Split>,
    resource_roundtrip: Vec<ResourceRoundtrip>,
    archive: Vec<Archive>,
    resource_key: String,
}

#[derive(Deserialize)]
struct KeyDerivation {
    hardware: String,
    hw_hash: String,
    email: String,
    password: String,
    api_key: String,
}

#[derive(Deserialize)]
struct AesCbc {
    key: String,
    aes_key_hex: String,
    iv_hex: String,
    plaintext_hex: String,
    ciphertext_hex: String,
}

#[derive(Deserialize)]
struct Split {
    encrypted_len: u64,
    small_len: u64,
    big_len: u64,
}

#[derive(Deserialize)]
struct ResourceRoundtrip {
    plaintext_hex: String,
    hardware: String,
    email: String,
    password: String,
    small_on_wire_hex: String,
    big_hex: String,
}

#[derive(Deserialize)]
struct Archive {
    fragment_hex: String,
    aes_key_hex: String,
    plaintext_hex: String,
    encrypted_hex: String,
}

fn vectors() -> Vectors {
    serde_json::from_str(VECTORS).expect("fixtures/wire-format.json parses")
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("vector hex")
}

#[test]
fn key_derivation_matches_every_vector() {
    let v = vectors();
    assert!(!v.key_derivation.is_empty());
    for case in &v.key_derivation {
        let hw = hardware_hash(&case.hardware);
        assert_eq!(hw, case.hw_hash, "hw_hash of {:?}", case.hardware);
        let key = api_key(&case.email, &SecretString::new(case.password.clone()), &hw);
        assert_eq!(key.expose(), case.api_key, "api_key of {:?}", case.email);
    }
    assert_eq!(resource_key().expose(), v.resource_key);
}

#[test]
fn aes_cbc_matches_every_vector_one_shot_and_streamed() {
    let v = vectors();
    assert_eq!(v.aes_cbc.len(), 11);
    for case in &v.aes_cbc {
        let key = AesKey::from_key_string(&SecretString::new(case.key.clone()));
        assert_eq!(key.as_bytes().to_vec(), unhex(&case.aes_key_hex));
        let iv: [u8; 16] = unhex(&case.iv_hex).try_into().expect("16-byte iv");
        let plain = unhex(&case.plaintext_hex);
        let expected = unhex(&case.ciphertext_hex);
        assert_eq!(
            super::cipher::encrypt(&key, iv, &plain),
            expected,
            "encrypt {}",
            case.plaintext_hex.len() / 2
        );
        assert_eq!(decrypt(&key, &expected).unwrap(), plain);
        // Byte by byte through the streaming interfaces.
        let mut enc = Encryptor::new(&key, iv);
        let mut out = Vec::new();
        for b in &plain {
            enc.update(std::slice::from_ref(b), &mut out);
        }
        enc.finish(&mut out);
        assert_eq!(out, expected);
        let mut dec = Decryptor::new(&key).with_expected_len(expected.len() as u64);
        let mut back = Vec::new();
        for b in &expected {
            dec.update(std::slice::from_ref(b), &mut back);
        }
        dec.finish(&mut back).unwrap();
        assert_eq!(back, plain);
    }
}

#[test]
fn split_matches_every_vector() {
    let v = vectors();
    for case in &v.split {
        assert_eq!(
            small_part_len(case.encrypted_len),
            case.small_len,
            "n = {}",
            case.encrypted_len
        );
        assert_eq!(
            big_part_len(case.encrypted_len),
            case.big_len,
            "n = {}",
            case.encrypted_len
        );
    }
}

#[test]
fn resource_round_trip_vectors_decrypt_through_the_per_user_small_part() {
    let v = vectors();
    for case in &v.resource_roundtrip {
        let hw = hardware_hash(&case.hardware);
        let user_key = AesKey::from_key_string(&api_key(
            &case.email,
            &SecretString::new(case.password.clone()),
            &hw,
        ));
        let small = decrypt(&user_key, &unhex(&case.small_on_wire_hex))
            .expect("small part decrypts with the API key");
        let big = unhex(&case.big_hex);
        let joined: Vec<u8> = small.iter().chain(big.iter()).copied().collect();
        // The split the vector used is the one of §1.3.
        assert_eq!(small.len() as u64, small_part_len(joined.len() as u64));
        let (s, b) = split(&joined);
        assert_eq!((s, b), (&small[..], &big[..]));
        let plain =
            decrypt(&AesKey::from_key_string(&resource_key()), &joined).expect("resource decrypts");
        assert_eq!(plain, unhex(&case.plaintext_hex));
    }
}

#[test]
fn archive_vectors_use_the_fragment_hash_as_the_key() {
    let v = vectors();
    for case in &v.archive {
        let key = AesKey::from_archive_fragment(&unhex(&case.fragment_hex));
        assert_eq!(key.as_bytes().to_vec(), unhex(&case.aes_key_hex));
        let encrypted = unhex(&case.encrypted_hex);
        assert_eq!(
            decrypt(&key, &encrypted).unwrap(),
            unhex(&case.plaintext_hex)
        );
        let iv: [u8; 16] = encrypted[..16].try_into().unwrap();
        assert_eq!(
            super::cipher::encrypt(&key, iv, &unhex(&case.plaintext_hex)),
            encrypted
        );
    }
}
