//! `get`, `put`, `prefetch` and `cache` against a real running loader
//! (`serve`, logged in by its stored credentials) and the dev peers
//! (the Resource API emulator and the S3 server, in this process so a test
//! can stall or stop S3).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use azaion_loader::startup::dev::{self, DEMO_EMAIL, DEMO_FOLDER, DEMO_PASSWORD, DevPeers};

use crate::support::{Outcome, free_port, http_get, loader, path, pseudo_random, run_command};

struct Stack {
    peers: Arc<DevPeers>,
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Stack {
    /// Peers, then `serve` (one CDN read per big part: `CDN_PARALLEL_READS=1`,
    /// so a stalled S3 GET stalls the whole transfer), ready.
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let peers = dev::peers_in(dir.path()).await.unwrap();
        let credentials = dir.path().join("login.credentials");
        std::fs::write(
            &credentials,
            format!("email={DEMO_EMAIL}\npassword={DEMO_PASSWORD}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o600)).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = loader()
            .args(["serve", "--listen", &addr])
            .env("RESOURCE_API_URL", peers.emulator.base_url())
            .env("MODEL_CACHE_DIR", dir.path().join("cache"))
            .env("LOADER_CREDENTIALS_FILE", &credentials)
            .env("CDN_PARALLEL_READS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stack = Self {
            peers,
            child,
            url: format!("http://{addr}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let probe = addr.clone();
        while tokio::task::spawn_blocking({
            let probe = probe.clone();
            move || http_get(&probe, "/ready").is_none()
        })
        .await
        .unwrap()
        {
            assert!(Instant::now() < deadline, "serve was not ready in 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stack
    }

    /// The CLI with `--url` of this loader after the command's name.
    async fn cli(&self, args: &[&str]) -> Outcome {
        let mut command = loader();
        command
            .arg("--quiet")
            .arg(args[0])
            .args(["--url", &self.url]);
        command.args(&args[1..]);
        tokio::task::spawn_blocking(move || run_command(command))
            .await
            .unwrap()
    }

    async fn cli_ok(&self, args: &[&str]) -> Outcome {
        let outcome = self.cli(args).await;
        assert!(outcome.success(), "{args:?}: {outcome:?}");
        outcome
    }

    fn file(&self, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
        let bytes = pseudo_random(len, seed);
        let file = self.dir.path().join(name);
        std::fs::write(&file, &bytes).unwrap();
        (file, bytes)
    }

    fn cached(&self, name: &str) -> PathBuf {
        self.dir
            .path()
            .join("cache")
            .join(DEMO_FOLDER)
            .join(format!("{name}.big"))
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_then_get_is_byte_exact_to_a_file_and_to_stdout() {
    let stack = Stack::start().await;
    let (file, bytes) = stack.file("model.bin", 5 << 20, 1);
    let resource = format!("{DEMO_FOLDER}/model.bin");
    stack.cli_ok(&["put", &resource, path(&file)]).await;

    let out = stack.dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let target = out.join("got.bin");
    stack.cli_ok(&["get", &resource, "-o", path(&target)]).await;
    assert!(
        std::fs::read(&target).unwrap() == bytes,
        "get is not byte-exact"
    );
    assert_eq!(names_in(&out), ["got.bin"], "a temporary file was left");

    let piped = {
        let mut command = loader();
        command.args(["--quiet", "get", "--url", &stack.url, &resource, "-o", "-"]);
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap()
    };
    assert!(piped.status.success());
    assert!(piped.stdout == bytes, "get -o - is not byte-exact");

    // A refusal is one line with the loader's detail, exit 1, and no file.
    let missing = stack
        .cli(&[
            "get",
            &format!("{DEMO_FOLDER}/missing.bin"),
            "-o",
            path(&out.join("m.bin")),
        ])
        .await;
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert!(missing.stderr.contains("404"), "{missing:?}");
    assert_eq!(missing.stderr.lines().count(), 1, "{missing:?}");
    assert_eq!(names_in(&out), ["got.bin"]);
    // A bad name never reaches the loader: exit 2.
    assert_eq!(stack.cli(&["get", "no-folder.bin"]).await.code, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_interrupted_with_sigint_exits_130_and_leaves_no_partial_file() {
    let stack = Stack::start().await;
    let (file, _) = stack.file("big.bin", 24 << 20, 2);
    let resource = format!("{DEMO_FOLDER}/big.bin");
    stack.cli_ok(&["put", &resource, path(&file)]).await;
    // From the CDN, stalled for a minute after 8 MiB.
    stack.cli_ok(&["cache", "rm", &resource]).await;
    stack
        .peers
        .s3
        .stall_next_get_after(8 << 20, Duration::from_secs(60));

    let out = stack.dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let target = out.join("big.bin");
    let mut get = loader()
        .args([
            "--quiet",
            "get",
            "--url",
            &stack.url,
            &resource,
            "-o",
            path(&target),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the temporary file holds some of the transfer.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let partial = std::fs::read_dir(&out)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false));
        if partial {
            break;
        }
        assert!(Instant::now() < deadline, "no partial file in 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signalled = std::process::Command::new("kill")
        .args(["-INT", &get.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let status = tokio::task::spawn_blocking(move || get.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert_eq!(
        names_in(&out),
        Vec::<String>::new(),
        "a partial file was left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetched_resource_is_got_from_the_cache_with_s3_stopped() {
    let stack = Stack::start().await;
    let (file, bytes) = stack.file("warm.bin", 3 << 20, 3);
    let resource = format!("{DEMO_FOLDER}/warm.bin");
    stack.cli_ok(&["put", &resource, path(&file)]).await;
    stack.cli_ok(&["cache", "rm", &resource]).await;
    assert!(!stack.cached("warm.bin").exists());

    stack.cli_ok(&["prefetch", &resource]).await;
    assert!(stack.cached("warm.bin").exists());
    let again = stack.cli_ok(&["prefetch", &resource]).await;
    assert_eq!(again.stderr, "", "{again:?}");

    stack.peers.s3.shutdown();
    let target = stack.dir.path().join("from-cache.bin");
    stack.cli_ok(&["get", &resource, "-o", path(&target)]).await;
    assert!(std::fs::read(&target).unwrap() == bytes);
    // With S3 gone, a resource that is not cached cannot be prefetched: exit 1.
    let failed = stack
        .cli(&["prefetch", &format!("{DEMO_FOLDER}/never-uploaded.bin")])
        .await;
    assert_eq!(failed.code, Some(1), "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_ls_rm_and_prune_free_space_and_the_next_get_fetches_again() {
    let stack = Stack::start().await;
    for (i, name) in ["a.bin", "b.bin"].into_iter().enumerate() {
        let (file, _) = stack.file(name, 1 << 20, 10 + i as u64);
        stack
            .cli_ok(&["put", &format!("{DEMO_FOLDER}/{name}"), path(&file)])
            .await;
    }
    let listing = stack.cli_ok(&["cache", "ls"]).await.stdout;
    assert!(
        listing.contains(&format!("{DEMO_FOLDER}/a.bin")),
        "{listing}"
    );
    assert!(
        listing.contains(&format!("{DEMO_FOLDER}/b.bin")),
        "{listing}"
    );

    let removed = stack
        .cli_ok(&["cache", "rm", &format!("{DEMO_FOLDER}/a.bin")])
        .await;
    assert!(
        removed
            .stdout
            .starts_with(&format!("removed {DEMO_FOLDER}/a.bin")),
        "{removed:?}"
    );
    assert!(!stack.cached("a.bin").exists());
    // Removing it again: the loader's 404 detail, exit 1.
    let again = stack
        .cli(&["cache", "rm", &format!("{DEMO_FOLDER}/a.bin")])
        .await;
    assert_eq!(again.code, Some(1), "{again:?}");
    assert!(again.stderr.contains("holds no big part"), "{again:?}");

    // The next get reads the CDN and fills the cache again.
    let target = stack.dir.path().join("a.out");
    stack
        .cli_ok(&["get", &format!("{DEMO_FOLDER}/a.bin"), "-o", path(&target)])
        .await;
    assert!(stack.cached("a.bin").exists());

    let pruned = stack.cli_ok(&["cache", "prune", "--max-bytes", "0"]).await;
    assert!(pruned.stdout.contains("freed"), "{pruned:?}");
    assert!(!stack.cached("a.bin").exists() && !stack.cached("b.bin").exists());
    let listing = stack.cli_ok(&["cache", "ls"]).await.stdout;
    assert!(listing.contains("0 entries"), "{listing}");
    assert_eq!(stack.cli(&["cache", "prune"]).await.code, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_verify_finds_and_removes_a_damaged_entry() {
    let stack = Stack::start().await;
    for (i, name) in ["good.bin", "rotten.bin"].into_iter().enumerate() {
        let (file, _) = stack.file(name, 2 << 20, 20 + i as u64);
        stack
            .cli_ok(&["put", &format!("{DEMO_FOLDER}/{name}"), path(&file)])
            .await;
    }
    let rotten = stack.cached("rotten.bin");
    let mut bytes = std::fs::read(&rotten).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&rotten, &bytes).unwrap();

    let verified = stack.cli_ok(&["cache", "verify"]).await;
    assert!(
        verified
            .stdout
            .contains(&format!("damaged, removed: {DEMO_FOLDER}/rotten.bin")),
        "{verified:?}"
    );
    assert!(
        verified.stdout.contains("checked 2 entries, 1 damaged"),
        "{verified:?}"
    );
    assert!(!rotten.exists());
    assert!(stack.cached("good.bin").exists());
}
