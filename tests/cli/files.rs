//! encrypt, decrypt, split, join and pack-images on real files.

use azaion_loader::domain::cipher::{ciphertext_len, decrypt};
use azaion_loader::domain::keys::{AesKey, resource_key};
use azaion_loader::domain::secret::SecretString;
use azaion_loader::domain::split::small_part_len;

use crate::support::{loader, names_in, path, pseudo_random, run, run_command, run_ok};

#[test]
fn encrypt_then_decrypt_gives_back_a_few_mib_of_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("model.onnx");
    let encrypted = dir.path().join("model.enc");
    let output = dir.path().join("model.out");
    let plain = pseudo_random(3 * 1024 * 1024 + 5, 1);
    std::fs::write(&input, &plain).unwrap();

    run_ok(&[
        "encrypt",
        "--key",
        "some key",
        path(&input),
        path(&encrypted),
    ]);
    let ciphertext = std::fs::read(&encrypted).unwrap();
    assert_eq!(ciphertext.len() as u64, ciphertext_len(plain.len() as u64));
    run_ok(&[
        "decrypt",
        "--key",
        "some key",
        path(&encrypted),
        path(&output),
    ]);

    assert_eq!(std::fs::read(&output).unwrap(), plain);
    assert_eq!(
        names_in(dir.path()),
        ["model.enc", "model.onnx", "model.out"]
    );
}

#[test]
fn encrypt_follows_section_1_2_for_a_key_string_and_for_the_resource_key() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let plain = pseudo_random(100_000, 2);
    std::fs::write(&input, &plain).unwrap();

    let with_key = dir.path().join("key.enc");
    let mut command = loader();
    command
        .args([
            "encrypt",
            "--key-env",
            "TEST_KEY",
            path(&input),
            path(&with_key),
        ])
        .env("TEST_KEY", "a key from the environment");
    assert!(run_command(command).success());
    let key = AesKey::from_key_string(&SecretString::new("a key from the environment"));
    assert_eq!(
        decrypt(&key, &std::fs::read(&with_key).unwrap()).unwrap(),
        plain
    );

    let with_resource_key = dir.path().join("resource.enc");
    run_ok(&[
        "encrypt",
        "--resource-key",
        path(&input),
        path(&with_resource_key),
    ]);
    let key = AesKey::from_key_string(&resource_key());
    let ciphertext = std::fs::read(&with_resource_key).unwrap();
    assert_eq!(decrypt(&key, &ciphertext).unwrap(), plain);
}

#[test]
fn decrypt_with_a_wrong_key_fails_and_leaves_neither_output_nor_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let encrypted = dir.path().join("in.enc");
    let output = dir.path().join("out");
    std::fs::write(&input, pseudo_random(2 * 1024 * 1024, 3)).unwrap();
    run_ok(&["encrypt", "--key", "right", path(&input), path(&encrypted)]);

    let outcome = run(&["decrypt", "--key", "wrong", path(&encrypted), path(&output)]);

    assert_eq!(outcome.code, Some(1), "{outcome:?}");
    assert!(outcome.stderr.contains("padding"), "{}", outcome.stderr);
    assert!(!outcome.stderr.contains("wrong\n") && !outcome.stderr.contains("right"));
    assert_eq!(names_in(dir.path()), ["in", "in.enc"]);
}

#[test]
fn decrypt_of_a_damaged_file_fails_and_keeps_an_older_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let encrypted = dir.path().join("in.enc");
    let output = dir.path().join("out");
    std::fs::write(&input, pseudo_random(4096, 4)).unwrap();
    run_ok(&["encrypt", "--key", "k", path(&input), path(&encrypted)]);
    let mut ciphertext = std::fs::read(&encrypted).unwrap();
    // Flips the padding byte of the last block: never valid padding again.
    let at = ciphertext.len() - 17;
    ciphertext[at] ^= 0xff;
    std::fs::write(&encrypted, &ciphertext).unwrap();
    std::fs::write(&output, b"older output").unwrap();

    let outcome = run(&["decrypt", "--key", "k", path(&encrypted), path(&output)]);

    assert_eq!(outcome.code, Some(1), "{outcome:?}");
    assert_eq!(std::fs::read(&output).unwrap(), b"older output");
    assert_eq!(names_in(dir.path()), ["in", "in.enc", "out"]);
}

#[test]
fn encrypt_and_decrypt_stream_through_stdin_and_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let plain = pseudo_random(300_000, 5);
    std::fs::write(&input, &plain).unwrap();

    let mut encrypt = loader();
    encrypt
        .args(["encrypt", "--key", "k", "-", "-"])
        .stdin(std::fs::File::open(&input).unwrap());
    let encrypted = encrypt.output().unwrap();
    assert!(encrypted.status.success());
    let key = AesKey::from_key_string(&SecretString::new("k"));
    assert_eq!(decrypt(&key, &encrypted.stdout).unwrap(), plain);

    let enc_path = dir.path().join("in.enc");
    std::fs::write(&enc_path, &encrypted.stdout).unwrap();
    let mut decrypt_cmd = loader();
    decrypt_cmd.args(["decrypt", "--key", "k", path(&enc_path), "-"]);
    let decrypted = decrypt_cmd.output().unwrap();
    assert!(decrypted.status.success());
    assert_eq!(decrypted.stdout, plain);
}

#[test]
fn split_then_join_then_decrypt_gives_the_input_and_the_parts_follow_section_1_3() {
    for (n, plain_len) in [0usize, 100, 10_000, 20_000, 1_048_579]
        .into_iter()
        .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        let encrypted = dir.path().join("in.enc");
        let small = dir.path().join("in.small");
        let big = dir.path().join("in.big");
        let joined = dir.path().join("joined.enc");
        let output = dir.path().join("out");
        let plain = pseudo_random(plain_len, 10 + n as u64);
        std::fs::write(&input, &plain).unwrap();

        run_ok(&["encrypt", "--resource-key", path(&input), path(&encrypted)]);
        run_ok(&[
            "split",
            path(&encrypted),
            "--small",
            path(&small),
            "--big",
            path(&big),
        ]);
        let total = std::fs::metadata(&encrypted).unwrap().len();
        let small_len = std::fs::metadata(&small).unwrap().len();
        let big_len = std::fs::metadata(&big).unwrap().len();
        assert_eq!(small_len, small_part_len(total), "plaintext of {plain_len}");
        assert_eq!(small_len + big_len, total);
        let encrypted_bytes = std::fs::read(&encrypted).unwrap();
        assert_eq!(
            std::fs::read(&small).unwrap(),
            &encrypted_bytes[..small_len as usize]
        );

        run_ok(&[
            "join",
            "--small",
            path(&small),
            "--big",
            path(&big),
            path(&joined),
        ]);
        assert_eq!(std::fs::read(&joined).unwrap(), encrypted_bytes);
        run_ok(&["decrypt", "--resource-key", path(&joined), path(&output)]);
        assert_eq!(
            std::fs::read(&output).unwrap(),
            plain,
            "plaintext of {plain_len}"
        );
    }
}

#[test]
fn split_reads_stdin_and_join_refuses_swapped_parts_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let encrypted = dir.path().join("in.enc");
    std::fs::write(&input, pseudo_random(50_000, 20)).unwrap();
    run_ok(&["encrypt", "--resource-key", path(&input), path(&encrypted)]);
    let small = dir.path().join("s");
    let big = dir.path().join("b");
    let mut split = loader();
    split
        .args(["split", "-", "--small", path(&small), "--big", path(&big)])
        .stdin(std::fs::File::open(&encrypted).unwrap());
    assert!(run_command(split).success());
    assert_eq!(std::fs::metadata(&small).unwrap().len(), 3072);

    let joined = dir.path().join("joined");
    let outcome = run(&[
        "join",
        "--small",
        path(&big),
        "--big",
        path(&small),
        path(&joined),
    ]);

    assert_eq!(outcome.code, Some(1), "{outcome:?}");
    assert!(
        outcome.stderr.contains("do not belong together"),
        "{}",
        outcome.stderr
    );
    assert_eq!(names_in(dir.path()), ["b", "in", "in.enc", "s"]);
}

#[test]
fn split_refuses_a_file_that_is_not_ciphertext_shaped() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("plain.txt");
    std::fs::write(&input, b"not encrypted at all").unwrap();
    let small = dir.path().join("s");
    let big = dir.path().join("b");

    let outcome = run(&[
        "split",
        path(&input),
        "--small",
        path(&small),
        "--big",
        path(&big),
    ]);

    assert_eq!(outcome.code, Some(1), "{outcome:?}");
    assert!(
        outcome.stderr.contains("not an encrypted resource"),
        "{}",
        outcome.stderr
    );
    assert_eq!(names_in(dir.path()), ["plain.txt"]);
}

#[test]
fn pack_images_output_decrypts_with_the_fragment_key_to_the_input_tar() {
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("images.tar");
    let fragment = dir.path().join("fragment.bin");
    let plain = pseudo_random(1_500_000, 30);
    std::fs::write(&tar, &plain).unwrap();
    let fragment_bytes = b"\x00raw fragment bytes\xff";
    std::fs::write(&fragment, fragment_bytes).unwrap();
    let key = AesKey::from_archive_fragment(fragment_bytes);

    let from_file = dir.path().join("images.enc");
    run_ok(&[
        "pack-images",
        "--fragment",
        path(&fragment),
        path(&tar),
        path(&from_file),
    ]);
    let packed = std::fs::read(&from_file).unwrap();
    assert_eq!(packed.len() as u64, ciphertext_len(plain.len() as u64));
    assert_eq!(decrypt(&key, &packed).unwrap(), plain);

    let from_hex = dir.path().join("images-hex.enc");
    let hex_fragment = hex::encode(fragment_bytes);
    run_ok(&[
        "pack-images",
        "--fragment-hex",
        &hex_fragment,
        path(&tar),
        path(&from_hex),
    ]);
    let packed_hex = std::fs::read(&from_hex).unwrap();
    assert_eq!(decrypt(&key, &packed_hex).unwrap(), plain);
    // A fresh random IV each time.
    assert_ne!(packed[..16], packed_hex[..16]);
}

#[test]
fn pack_images_refuses_a_fragment_that_is_not_hex() {
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("images.tar");
    std::fs::write(&tar, b"tar").unwrap();
    let out = dir.path().join("images.enc");

    let outcome = run(&[
        "pack-images",
        "--fragment-hex",
        "xyz1",
        path(&tar),
        path(&out),
    ]);

    assert_eq!(outcome.code, Some(2), "{outcome:?}");
    assert!(
        outcome.stderr.contains("--fragment-hex"),
        "{}",
        outcome.stderr
    );
    assert!(!out.exists());
}

#[test]
fn a_big_encrypt_prints_plain_progress_lines_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big");
    let output = dir.path().join("big.enc");
    std::fs::write(&input, pseudo_random(64 * 1024 * 1024, 40)).unwrap();

    let outcome = run_ok(&["encrypt", "--key", "k", path(&input), path(&output)]);

    let progress: Vec<&str> = outcome
        .stderr
        .lines()
        .filter(|line| line.starts_with("encrypt: ") && line.contains("% ("))
        .collect();
    assert!(
        !progress.is_empty(),
        "no progress line in: {}",
        outcome.stderr
    );
    assert!(progress[0].contains("of 64.0 MiB"), "{}", progress[0]);
    assert!(
        outcome.stderr.contains("encrypt: done, 64.0 MiB"),
        "{}",
        outcome.stderr
    );
    // No terminal control sequences: this is not a terminal.
    assert!(!outcome.stderr.contains('\u{1b}'), "{}", outcome.stderr);

    let quiet = run_ok(&[
        "encrypt",
        "--quiet",
        "--key",
        "k",
        path(&input),
        path(&output),
    ]);
    assert_eq!(quiet.stderr, "");
}

#[test]
fn an_encrypt_stopped_by_sigterm_exits_130_and_leaves_no_partial_output() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big");
    let output = dir.path().join("big.enc");
    std::fs::write(&input, pseudo_random(64 * 1024 * 1024, 50)).unwrap();
    let mut child = loader()
        .args(["encrypt", "--key", "k", path(&input), path(&output)])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    assert!(first.starts_with("encrypt: "), "{first}");

    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let status = child.wait().unwrap();

    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{first}{rest}");
    assert!(rest.contains("interrupted"), "{rest}");
    assert_eq!(names_in(dir.path()), ["big"]);
}
