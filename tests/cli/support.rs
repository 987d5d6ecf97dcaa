//! Runs the real binary with a clean environment, makes test data, and
//! starts a `dev` stack on a free port that is stopped when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary, with none of the loader's settings in its environment.
pub fn loader() -> Command {
    azaion_loader::test_support::clean_command(Path::new(env!("CARGO_BIN_EXE_azaion-loader")))
}

/// What a finished run left.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

pub fn run_command(mut command: Command) -> Outcome {
    let output = command.output().expect("the binary runs");
    Outcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

pub fn run(args: &[&str]) -> Outcome {
    let mut command = loader();
    command.args(args);
    run_command(command)
}

/// Runs and insists on success, showing stderr otherwise.
pub fn run_ok(args: &[&str]) -> Outcome {
    let outcome = run(args);
    assert!(outcome.success(), "{args:?} failed: {outcome:?}");
    outcome
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Deterministic bytes that do not compress (xorshift64*).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        bytes.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// The names in a folder, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("folder")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET path` over plain HTTP/1.1; the body when the answer is 200.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// A running `azaion-loader dev`; killed when dropped.
pub struct DevStack {
    child: Child,
    /// The loader's `host:port`.
    pub addr: String,
    /// Base URL of the stack's Resource API emulator.
    pub emulator_url: String,
    _dir: tempfile::TempDir,
}

impl DevStack {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = format!("127.0.0.1:{}", free_port());
        let mut child = loader()
            .args(["dev", "--listen", &addr, "--data-dir", path(dir.path())])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dev starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stack = Self {
            child,
            addr,
            emulator_url: String::new(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while stack.emulator_url.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = received
                .recv_timeout(left)
                .expect("dev prints its banner within 60 s");
            if let Some(rest) = line.trim().strip_prefix("Resource API (emul.)") {
                stack.emulator_url = rest.trim().to_owned();
            }
        }
        while http_get(&stack.addr, "/health").is_none() {
            assert!(Instant::now() < deadline, "dev answered no /health in 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        stack
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for DevStack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
