//! The offline file commands: `encrypt`/`decrypt` with a key string
//! (docs/PROTOCOL.md §1.2), `split`/`join` (§1.3) and `pack-images` (§1.4). All of
//! them stream in fixed chunks and write outputs whole or not at all. Keys
//! never reach a log, an error or the progress display.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use clap::ArgGroup;
use zeroize::Zeroizing;

use super::CliError;
use super::files::{Input, Output, check_distinct, pump};
use super::progress::{Progress, ProgressMode};
use crate::domain::cipher::{Decryptor, Encryptor, IV_LEN, MIN_CIPHERTEXT_LEN};
use crate::domain::keys::{AesKey, resource_key};
use crate::domain::secret::{SecretBytes, SecretString};
use crate::domain::split::{SMALL_PART_MAX, small_part_len};

/// The largest key fragment `pack-images` accepts: fragments are small
/// (§2.4); a bigger file is most likely the wrong one.
pub const MAX_FRAGMENT_BYTES: u64 = 1 << 20;

/// The shortest encrypted resource whose small part has the full
/// [`SMALL_PART_MAX`] bytes: `split` only needs to hold this many bytes to
/// know where to cut, whatever the length of the rest.
pub const SPLIT_LOOKAHEAD: usize = (SMALL_PART_MAX * 10).div_ceil(3) as usize;

/// Where the key string of `encrypt`/`decrypt` comes from.
#[derive(clap::Args)]
#[command(group(
    ArgGroup::new("key_source")
        .required(true)
        .args(["key", "key_env", "resource_key"])
))]
pub struct KeyArgs {
    /// The key string; the AES key is SHA-256 of it (docs/PROTOCOL.md §1.2). Other
    /// users of the machine can see command lines: prefer --key-env.
    #[arg(long, value_name = "KEY STRING")]
    key: Option<String>,
    /// Name of an environment variable that holds the key string.
    #[arg(long, value_name = "VAR")]
    key_env: Option<String>,
    /// Use the resource key shared by every resource (docs/PROTOCOL.md §1.1), as
    /// the loader does before the big/small split.
    #[arg(long)]
    resource_key: bool,
}

impl KeyArgs {
    fn aes_key(self) -> Result<AesKey, CliError> {
        let key_string = if self.resource_key {
            resource_key()
        } else if let Some(var) = self.key_env {
            let value = std::env::var(&var).map_err(|_| {
                CliError::Usage(format!("the environment variable {var} is not set"))
            })?;
            SecretString::new(value)
        } else if let Some(key) = self.key {
            SecretString::new(key)
        } else {
            return Err(CliError::Usage(
                "give --key, --key-env or --resource-key".to_owned(),
            ));
        };
        if key_string.is_empty() {
            return Err(CliError::Usage("the key string is empty".to_owned()));
        }
        Ok(AesKey::from_key_string(&key_string))
    }
}

/// `encrypt`: IN → `IV || AES-256-CBC(SHA-256(key string), IV, PKCS#7(IN))`.
#[derive(clap::Args)]
pub struct EncryptArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// Plaintext file, or - for stdin.
    #[arg(value_name = "IN")]
    input: PathBuf,
    /// Encrypted file to write, or - for stdout.
    #[arg(value_name = "OUT")]
    output: PathBuf,
}

/// `decrypt`: the reverse of `encrypt`; OUT appears only if the padding checks out.
#[derive(clap::Args)]
pub struct DecryptArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// Encrypted file, or - for stdin.
    #[arg(value_name = "IN")]
    input: PathBuf,
    /// Plaintext file to write, or - for stdout (which cannot be taken back:
    /// on a failure it has received all but the last block).
    #[arg(value_name = "OUT")]
    output: PathBuf,
}

/// `split`: an encrypted resource → its small and big parts.
#[derive(clap::Args)]
pub struct SplitArgs {
    /// Encrypted resource, or - for stdin.
    #[arg(value_name = "ENCRYPTED")]
    input: PathBuf,
    /// Where the small part goes (the first min(3072, floor(3n/10)) bytes).
    #[arg(long, value_name = "OUT")]
    small: PathBuf,
    /// Where the big part goes (the rest).
    #[arg(long, value_name = "OUT")]
    big: PathBuf,
}

/// `join`: small part + big part → the encrypted resource.
#[derive(clap::Args)]
pub struct JoinArgs {
    /// The small part.
    #[arg(long, value_name = "IN")]
    small: PathBuf,
    /// The big part.
    #[arg(long, value_name = "IN")]
    big: PathBuf,
    /// Encrypted resource to write, or - for stdout.
    #[arg(value_name = "OUT")]
    output: PathBuf,
}

/// `pack-images`: a `docker save` archive → `images.enc`.
#[derive(clap::Args)]
#[command(group(
    ArgGroup::new("fragment_source")
        .required(true)
        .args(["fragment", "fragment_hex"])
))]
pub struct PackImagesArgs {
    /// File holding the raw key fragment (the bytes the Resource API serves
    /// at /binary-split/key-fragment); the AES key is SHA-256 of them.
    #[arg(long, value_name = "FILE")]
    fragment: Option<PathBuf>,
    /// The key fragment as hex digits (visible to other users of the
    /// machine in the process list: prefer --fragment).
    #[arg(long, value_name = "HEX")]
    fragment_hex: Option<String>,
    /// The `docker save` archive, or - for stdin.
    #[arg(value_name = "DOCKER_SAVE_TAR")]
    input: PathBuf,
    /// Where images.enc goes, or - for stdout.
    #[arg(value_name = "OUT")]
    output: PathBuf,
}

fn random_iv() -> Result<[u8; IV_LEN], CliError> {
    let mut iv = [0u8; IV_LEN];
    getrandom::fill(&mut iv)
        .map_err(|e| CliError::Failed(format!("no randomness for the IV: {e}")))?;
    Ok(iv)
}

/// Streams `input` through a fresh [`Encryptor`] into `output`.
fn encrypt_stream(
    label: &str,
    key: &AesKey,
    input_path: &Path,
    output_path: &Path,
    mode: ProgressMode,
    cancel: &AtomicBool,
) -> Result<(), CliError> {
    check_distinct(&[input_path], &[output_path])?;
    let mut input = Input::open(input_path)?;
    let mut output = Output::create(output_path)?;
    let mut encryptor = Encryptor::new(key, random_iv()?);
    let mut progress = Progress::new(label, input.known_len(), mode);
    pump(
        &mut input,
        &mut output,
        &mut progress,
        cancel,
        |chunk, out| encryptor.update(chunk, out),
    )?;
    let mut tail = Vec::with_capacity(IV_LEN * 2);
    encryptor.finish(&mut tail);
    output.write_all(&tail)?;
    output.commit()?;
    progress.finish();
    Ok(())
}

pub fn encrypt(args: EncryptArgs, mode: ProgressMode, cancel: &AtomicBool) -> Result<(), CliError> {
    let key = args.key.aes_key()?;
    encrypt_stream("encrypt", &key, &args.input, &args.output, mode, cancel)
}

pub fn decrypt(args: DecryptArgs, mode: ProgressMode, cancel: &AtomicBool) -> Result<(), CliError> {
    let key = args.key.aes_key()?;
    check_distinct(&[&args.input], &[&args.output])?;
    let mut input = Input::open(&args.input)?;
    let mut output = Output::create(&args.output)?;
    let mut decryptor = Decryptor::new(&key);
    if let Some(len) = input.known_len() {
        // A file that grows or shrinks while it is read is caught too.
        decryptor = decryptor.with_expected_len(len);
    }
    let mut progress = Progress::new("decrypt", input.known_len(), mode);
    pump(
        &mut input,
        &mut output,
        &mut progress,
        cancel,
        |chunk, out| decryptor.update(chunk, out),
    )?;
    let mut tail = Vec::with_capacity(IV_LEN);
    decryptor.finish(&mut tail).map_err(|e| {
        let consequence = if output.name() == "stdout" {
            "the output on stdout is incomplete"
        } else {
            "nothing was written"
        };
        CliError::Failed(format!(
            "cannot decrypt {}: {e}; {consequence}",
            input.name()
        ))
    })?;
    output.write_all(&tail)?;
    output.commit()?;
    progress.finish();
    Ok(())
}

/// §1.2: what any encrypted resource's length looks like.
fn check_ciphertext_len(name: &str, len: u64) -> Result<(), CliError> {
    if len < MIN_CIPHERTEXT_LEN as u64 || !(len - IV_LEN as u64).is_multiple_of(16) {
        return Err(CliError::Failed(format!(
            "{name} is not an encrypted resource: {len} bytes is not 16 (IV) + a non-zero multiple of 16"
        )));
    }
    Ok(())
}

pub fn split(args: SplitArgs, mode: ProgressMode, cancel: &AtomicBool) -> Result<(), CliError> {
    check_distinct(&[&args.input], &[&args.small, &args.big])?;
    let mut input = Input::open(&args.input)?;
    let mut small = Output::create(&args.small)?;
    let mut big = Output::create(&args.big)?;
    let mut progress = Progress::new("split", input.known_len(), mode);
    // Up to SPLIT_LOOKAHEAD bytes decide where the cut is; past them it is always SMALL_PART_MAX.
    let mut head = vec![0u8; SPLIT_LOOKAHEAD];
    let head_len = input.read_up_to(&mut head)?;
    let small_len = if head_len < SPLIT_LOOKAHEAD {
        small_part_len(head_len as u64) as usize
    } else {
        SMALL_PART_MAX as usize
    };
    small.write_all(&head[..small_len])?;
    big.write_all(&head[small_len..head_len])?;
    progress.advance(head_len as u64);
    let rest = pump(&mut input, &mut big, &mut progress, cancel, |chunk, out| {
        out.extend_from_slice(chunk)
    })?;
    let total = head_len as u64 + rest;
    check_ciphertext_len(input.name(), total)?;
    if small_part_len(total) != small_len as u64 {
        return Err(CliError::Failed(format!(
            "internal error: cut at {small_len} where §1.3 gives {} for {total} bytes",
            small_part_len(total)
        )));
    }
    small.commit()?;
    big.commit()?;
    progress.finish();
    Ok(())
}

/// §1.3: the small part of a `total`-byte resource has exactly `small_part_len(total)` bytes.
fn check_parts(small_len: u64, total: u64) -> Result<(), CliError> {
    if small_part_len(total) != small_len {
        return Err(CliError::Failed(format!(
            "the parts do not belong together: a {total}-byte resource has a small part of {} bytes (docs/PROTOCOL.md §1.3), not {small_len} (swapped, or from different resources?); nothing was written",
            small_part_len(total)
        )));
    }
    Ok(())
}

pub fn join(args: JoinArgs, mode: ProgressMode, cancel: &AtomicBool) -> Result<(), CliError> {
    check_distinct(&[&args.small, &args.big], &[&args.output])?;
    let mut small = Input::open(&args.small)?;
    let mut big = Input::open(&args.big)?;
    let total = small.known_len().zip(big.known_len()).map(|(s, b)| s + b);
    if let (Some(small_len), Some(total)) = (small.known_len(), total) {
        check_parts(small_len, total)?;
    }
    let mut output = Output::create(&args.output)?;
    let mut progress = Progress::new("join", total, mode);
    let copy = |chunk: &[u8], out: &mut Vec<u8>| out.extend_from_slice(chunk);
    let small_len = pump(&mut small, &mut output, &mut progress, cancel, copy)?;
    let big_len = pump(&mut big, &mut output, &mut progress, cancel, copy)?;
    let joined_len = small_len + big_len;
    check_parts(small_len, joined_len)?;
    check_ciphertext_len("the joined resource", joined_len)?;
    output.commit()?;
    progress.finish();
    Ok(())
}

/// Hex digits → bytes; whitespace and a leading `0x` are ignored.
pub fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    // The digits are the secret itself in another spelling: wiped when dropped.
    let digits: Zeroizing<Vec<u8>> = Zeroizing::new(
        text.trim()
            .trim_start_matches("0x")
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .collect(),
    );
    if !digits.len().is_multiple_of(2) {
        return Err("an odd number of hex digits".to_owned());
    }
    let value = |b: u8| match b {
        b'0'..=b'9' => Ok(b - b'0'),
        b'a'..=b'f' => Ok(b - b'a' + 10),
        b'A'..=b'F' => Ok(b - b'A' + 10),
        _ => Err("a character that is not a hex digit".to_owned()),
    };
    digits
        .chunks(2)
        .map(|pair| Ok(value(pair[0])? << 4 | value(pair[1])?))
        .collect()
}

fn read_fragment(path: &Path) -> Result<SecretBytes, CliError> {
    let name = path.display();
    let len = std::fs::metadata(path)
        .map_err(|e| CliError::io(format!("cannot read the fragment {name}"), e))?
        .len();
    if len > MAX_FRAGMENT_BYTES {
        return Err(CliError::Usage(format!(
            "the fragment {name} is {len} bytes: a key fragment is small, is it the right file?"
        )));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| CliError::io(format!("cannot read the fragment {name}"), e))?;
    Ok(SecretBytes::new(bytes))
}

/// A `docker save` archive is a tar: a file without the ustar magic at
/// offset 257 will be refused by `docker load`, at unlock time. Says so now
/// (stdin is not peeked at).
fn tar_warning(path: &Path) -> Option<String> {
    use std::io::Read;
    if super::files::is_dash(path) {
        return None;
    }
    let mut head = Vec::with_capacity(263);
    let file = std::fs::File::open(path).ok()?;
    file.take(263).read_to_end(&mut head).ok()?;
    (head.get(257..262) != Some(b"ustar".as_slice())).then(|| {
        format!(
            "{} does not look like a tar archive (no ustar header): `docker load` will refuse it at unlock",
            path.display()
        )
    })
}

pub fn pack_images(
    args: PackImagesArgs,
    mode: ProgressMode,
    cancel: &AtomicBool,
) -> Result<(), CliError> {
    let fragment = match (&args.fragment, &args.fragment_hex) {
        (Some(path), _) => read_fragment(path)?,
        (None, Some(hex)) => SecretBytes::new(
            decode_hex(hex).map_err(|e| CliError::Usage(format!("--fragment-hex has {e}")))?,
        ),
        (None, None) => {
            return Err(CliError::Usage(
                "give --fragment or --fragment-hex".to_owned(),
            ));
        }
    };
    if fragment.expose().is_empty() {
        return Err(CliError::Usage("the key fragment is empty".to_owned()));
    }
    let key = AesKey::from_archive_fragment(fragment.expose());
    drop(fragment);
    if let Some(warning) = tar_warning(&args.input) {
        eprintln!("warning: {warning}");
    }
    encrypt_stream("pack-images", &key, &args.input, &args.output, mode, cancel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_lookahead_is_the_first_length_with_a_full_small_part() {
        assert_eq!(small_part_len(SPLIT_LOOKAHEAD as u64), SMALL_PART_MAX);
        assert!(small_part_len(SPLIT_LOOKAHEAD as u64 - 1) < SMALL_PART_MAX);
    }

    #[test]
    fn hex_decodes_and_rejects_what_is_not_hex() {
        assert_eq!(decode_hex("00ff10").unwrap(), vec![0, 255, 16]);
        assert_eq!(decode_hex("0xAB cd\n").unwrap(), vec![0xab, 0xcd]);
        assert_eq!(decode_hex("").unwrap(), Vec::<u8>::new());
        assert!(decode_hex("abc").is_err());
        assert!(decode_hex("zz").is_err());
    }

    #[test]
    fn only_ciphertext_shaped_lengths_pass() {
        for len in [32, 48, 16 + 16 * 1000] {
            assert!(check_ciphertext_len("x", len).is_ok(), "{len}");
        }
        for len in [0, 16, 31, 33, 47] {
            assert!(check_ciphertext_len("x", len).is_err(), "{len}");
        }
    }
}
