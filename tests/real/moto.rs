//! The same S3 calls against a second, independent S3 server: moto (PyPI), so that
//! the S3 adapter is not tuned to s3s-fs's quirks (issue 16). moto differs where it
//! matters: it keeps objects in memory, answers a ranged GET after reading the whole
//! object, and checks no signature.
//!
//! moto's Python comes from `AZAION_MOTO_PYTHON` (scripts/test.sh sets it from
//! `scripts/moto.sh`) or `target/moto-venv`. Without it the tests skip with a
//! printed reason, unless `AZAION_REQUIRE_MOTO=1` (CI), where they must run.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use azaion_loader::adapters::outbound::s3::{S3Connector, S3Options};
use azaion_loader::domain::cdn::{CdnConfig, S3Keys};
use azaion_loader::domain::names::Folder;
use azaion_loader::domain::secret::SecretString;
use azaion_loader::ports::{ObjectStoreConnector, StoreError};
use azaion_loader::startup::dev::{self, DEMO_FOLDER};
use bytes::Bytes;
use futures::StreamExt;

use crate::e2e::{download_digest, expected_digest, pattern, spawn_loader, upload};

const MIB: usize = 1024 * 1024;

/// A moto S3 server on a free port of 127.0.0.1; killed on drop.
struct Moto {
    child: Child,
    url: String,
}

fn moto_python() -> Option<PathBuf> {
    if let Some(python) = std::env::var_os("AZAION_MOTO_PYTHON") {
        return Some(PathBuf::from(python));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/moto-venv/bin/python");
    venv.exists().then_some(venv)
}

impl Moto {
    /// Starts moto, or skips (prints why, `None`) unless it is required.
    fn start() -> Option<Self> {
        let required = std::env::var("AZAION_REQUIRE_MOTO").is_ok_and(|v| v == "1");
        let Some(python) = moto_python() else {
            assert!(
                !required,
                "AZAION_REQUIRE_MOTO=1 but no moto: run scripts/moto.sh"
            );
            eprintln!("SKIPPED: no moto S3 server (set AZAION_MOTO_PYTHON or run scripts/moto.sh)");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto with {}: {e}", python.display()));
        let moto = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not listen within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(moto)
    }

    fn cdn(&self) -> CdnConfig {
        let keys = |name: &str| S3Keys {
            access_key: name.into(),
            secret_key: SecretString::new(format!("{name}-secret")),
        };
        CdnConfig {
            host: self.url.clone(),
            region: "us-east-1".into(),
            downloader: keys("downloader"),
            uploader: keys("uploader"),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chunked(data: &[u8], chunk: usize) -> azaion_loader::ports::ByteStream {
    let pieces: Vec<std::io::Result<Bytes>> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures::stream::iter(pieces))
}

async fn read_all(body: azaion_loader::ports::ObjectBody) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len as usize);
    let mut stream = body.stream;
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

#[tokio::test]
async fn the_s3_adapter_reads_and_writes_moto_as_it_does_s3s_fs() {
    let Some(moto) = Moto::start() else { return };
    let cdn = moto.cdn();
    azaion_loader::adapters::outbound::s3::ensure_bucket(&cdn, "models")
        .await
        .unwrap();
    let store = S3Connector::new(S3Options {
        part_size: 5 * MIB,
        ..S3Options::default()
    })
    .connect(&cdn)
    .unwrap();
    let models = Folder::parse("models").unwrap();

    // One PutObject, with the §5.4 tag; read whole, from an offset, and at the end.
    let small = pattern(300_000, 7);
    store
        .put_tagged(&models, "a.big", chunked(&small, 4096 + 17), Some("ab12"))
        .await
        .unwrap();
    let body = store.get(&models, "a.big", 0).await.unwrap();
    assert_eq!(body.len, small.len() as u64);
    assert_eq!(body.small_sha256.as_deref(), Some("ab12"));
    assert_eq!(read_all(body).await, small);
    let body = store.get(&models, "a.big", 12_345).await.unwrap();
    assert_eq!(read_all(body).await, &small[12_345..]);
    let body = store
        .get(&models, "a.big", small.len() as u64)
        .await
        .unwrap();
    assert_eq!(body.len, 0, "a read from the very end is empty");

    // A multipart upload (three parts of 5 MiB, 5 MiB and 2 MiB + 1), then ranges of one version.
    let big = pattern(12 * MIB + 1, 9);
    store
        .put_tagged(&models, "b.big", chunked(&big, 64 * 1024 + 3), Some("cd34"))
        .await
        .unwrap();
    let body = store.get(&models, "b.big", 0).await.unwrap();
    let version = body.version.clone();
    assert!(version.is_some(), "moto tells the ETag");
    assert_eq!(body.small_sha256.as_deref(), Some("cd34"));
    assert_eq!(read_all(body).await, big);
    for (from, to) in [
        (0, 1),
        (5 * MIB as u64 - 1, 5 * MIB as u64 + 1),
        (12 * MIB as u64, 12 * MIB as u64 + 1),
    ] {
        let body = store
            .get_range(&models, "b.big", from, to, version.as_deref())
            .await
            .unwrap();
        assert_eq!(body.len, to - from);
        assert_eq!(
            read_all(body).await,
            &big[from as usize..to as usize],
            "{from}..{to}"
        );
    }
    // Another version: never spliced into a read of the first.
    store
        .put(&models, "b.big", chunked(&small, 65_536))
        .await
        .unwrap();
    let err = store
        .get_range(&models, "b.big", 0, 10, version.as_deref())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unexpected(_)), "{err:?}");

    // The errors map as they do against s3s-fs.
    let err = store.get(&models, "missing.big", 0).await.unwrap_err();
    assert!(matches!(err, StoreError::NoSuchKey(_)), "{err:?}");
    let nowhere = Folder::parse("no-such-bucket").unwrap();
    let err = store.get(&nowhere, "a.big", 0).await.unwrap_err();
    assert!(matches!(err, StoreError::NoSuchBucket(_)), "{err:?}");
    let err = store
        .put(&nowhere, "a.big", chunked(&small, 65_536))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NoSuchBucket(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_uploaded_through_the_loader_to_moto_loads_back_byte_exact() {
    let Some(moto) = Moto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (emulator, _s3, _cdn) = dev::start_peers_with(dir.path(), Some(&moto.url))
        .await
        .unwrap();
    let loader = spawn_loader(&emulator.base_url(), dir.path(), &[]);
    loader.login().await;
    // 24 MiB: a multipart upload of three parts, and six 4 MiB segments on the way
    // back, read in parallel ranges from a server that reads the whole object per range.
    let len = 24 * MIB as u64 + 5;
    upload(&loader, "moto.bin", 11, len).await;
    let cached = dir
        .path()
        .join("cache")
        .join(DEMO_FOLDER)
        .join("moto.bin.big");
    assert!(cached.exists(), "the upload filled the cache");
    std::fs::remove_file(&cached).unwrap();

    let (digest, got) = download_digest(&loader, "moto.bin").await;
    assert_eq!(got, len);
    assert_eq!(digest, expected_digest(11, len), "byte-exact from moto");
    assert!(cached.exists(), "the load from moto filled the cache again");
}
