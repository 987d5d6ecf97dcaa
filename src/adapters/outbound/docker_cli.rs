//! The container runtime through the `docker` command-line client: `docker image inspect`
//! and `docker load` fed through a pipe. It never writes an archive to disk, never runs a
//! shell, and never reports a load as done when the CLI or the archive stream failed.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

use async_trait::async_trait;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, Command};

use super::docker_bollard::loaded_reference;
use crate::ports::{ByteStream, ContainerRuntime, RuntimeError};

/// At most this much of the CLI's stdout or stderr is kept; the rest is read and dropped
/// so the child never blocks on a full pipe.
const OUTPUT_LIMIT: usize = 1024 * 1024;

/// Docker reached by running its CLI.
pub struct DockerCliRuntime {
    docker_bin: PathBuf,
    docker_host: Option<String>,
}

impl DockerCliRuntime {
    /// `docker_bin` is the CLI to run; `docker_host` becomes its `DOCKER_HOST` (with `None`
    /// the CLI keeps the loader's environment and its own defaults).
    pub fn new(docker_bin: PathBuf, docker_host: Option<String>) -> Self {
        Self {
            docker_bin,
            docker_host,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.docker_bin);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(host) = &self.docker_host {
            command.env("DOCKER_HOST", host);
        }
        command
    }

    fn spawn_error(&self, err: std::io::Error) -> RuntimeError {
        RuntimeError::Unavailable(format!("cannot run {}: {err}", self.docker_bin.display()))
    }
}

#[async_trait]
impl ContainerRuntime for DockerCliRuntime {
    async fn image_present(&self, reference: &str) -> Result<bool, RuntimeError> {
        let output = self
            .command(&["image", "inspect", "--format", "{{.Id}}", "--", reference])
            .output()
            .await
            .map_err(|err| self.spawn_error(err))?;
        read_inspect_outcome(
            output.status.success(),
            &String::from_utf8_lossy(&output.stderr),
        )
    }

    async fn load(&self, archive: ByteStream) -> Result<Vec<String>, RuntimeError> {
        let mut command = self.command(&["load"]);
        command.stdin(Stdio::piped());
        let mut child = command.spawn().map_err(|err| self.spawn_error(err))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.start_kill();
            return Err(RuntimeError::Unexpected(
                "docker load started without its pipes".to_owned(),
            ));
        };

        let feeding = async {
            let mut stdin = stdin;
            let fed = feed(&mut stdin, archive).await;
            if let Fed::ArchiveFailed(_) = fed {
                // Kill Docker before closing its stdin: the close alone would read as the
                // end of a sound archive, and Docker would load what it had.
                let _ = child.start_kill();
            }
            drop(stdin);
            fed
        };
        let (fed, stdout, stderr) = tokio::join!(
            feeding,
            read_capped(stdout, OUTPUT_LIMIT),
            read_capped(stderr, OUTPUT_LIMIT)
        );
        let status: ExitStatus = child.wait().await.map_err(|err| {
            RuntimeError::Unexpected(format!("waiting for docker load failed: {err}"))
        })?;

        match fed {
            Fed::ArchiveFailed(reason) => {
                return Err(RuntimeError::LoadFailed(format!(
                    "the archive stream failed: {reason}"
                )));
            }
            // Docker stopped reading early; if it says the load worked, the rest of the
            // archive must still turn out sound.
            Fed::PipeClosed(rest) if status.success() => drain(rest).await?,
            Fed::PipeClosed(_) | Fed::Complete => {}
        }
        let stdout = stdout.map_err(|err| {
            RuntimeError::Unexpected(format!("reading docker load's output failed: {err}"))
        })?;
        let stderr = stderr.unwrap_or_default();
        read_load_outcome(
            status.success(),
            &String::from_utf8_lossy(&stdout),
            &String::from_utf8_lossy(&stderr),
        )
    }
}

/// How feeding the archive into `docker load` ended.
enum Fed {
    /// Every byte went into the pipe and the pipe was closed.
    Complete,
    /// The archive stream failed; nothing after the failure was written.
    ArchiveFailed(String),
    /// Docker closed its end first; the unread rest of the archive.
    PipeClosed(ByteStream),
}

/// Writes `archive` into Docker's stdin and closes it, unless the archive fails: then
/// the pipe is left open for the caller to kill Docker first.
async fn feed(stdin: &mut ChildStdin, mut archive: ByteStream) -> Fed {
    while let Some(chunk) = archive.next().await {
        match chunk {
            Ok(bytes) => {
                if stdin.write_all(&bytes).await.is_err() {
                    return Fed::PipeClosed(archive);
                }
            }
            Err(err) => return Fed::ArchiveFailed(err.to_string()),
        }
    }
    if stdin.shutdown().await.is_err() {
        return Fed::PipeClosed(archive);
    }
    Fed::Complete
}

/// Reads the rest of an archive Docker did not need, to surface a late failure (say, bad
/// padding found by the decryptor at the very end).
async fn drain(mut rest: ByteStream) -> Result<(), RuntimeError> {
    while let Some(chunk) = rest.next().await {
        if let Err(err) = chunk {
            return Err(RuntimeError::LoadFailed(format!(
                "the archive stream failed: {err}"
            )));
        }
    }
    Ok(())
}

async fn read_capped(
    mut reader: impl AsyncRead + Unpin,
    limit: usize,
) -> Result<Vec<u8>, std::io::Error> {
    let mut kept = Vec::new();
    let mut buffer = [0_u8; 8192];
    loop {
        let read = reader.read(&mut buffer).await?;
        if read == 0 {
            return Ok(kept);
        }
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&buffer[..read.min(room)]);
    }
}

/// What `docker image inspect` answered: present, absent, or a failure.
fn read_inspect_outcome(success: bool, stderr: &str) -> Result<bool, RuntimeError> {
    if success {
        return Ok(true);
    }
    if stderr.to_ascii_lowercase().contains("no such image") {
        return Ok(false);
    }
    Err(cli_failure(stderr, "docker image inspect failed"))
}

/// What `docker load` answered: the references from its stdout, or why it failed.
fn read_load_outcome(
    success: bool,
    stdout: &str,
    stderr: &str,
) -> Result<Vec<String>, RuntimeError> {
    if !success {
        return Err(match cli_failure(stderr, "docker load failed") {
            RuntimeError::Unexpected(reason) => RuntimeError::LoadFailed(reason),
            unavailable => unavailable,
        });
    }
    let loaded: Vec<String> = stdout
        .lines()
        .filter_map(loaded_reference)
        .map(str::to_owned)
        .collect();
    if loaded.is_empty() {
        return Err(RuntimeError::LoadFailed(format!(
            "docker load reported no loaded image: {}",
            stdout.trim()
        )));
    }
    Ok(loaded)
}

/// `Unavailable` when the CLI could not reach the daemon, else `Unexpected` with its words.
fn cli_failure(stderr: &str, fallback: &str) -> RuntimeError {
    let words = stderr.trim();
    let lower = words.to_ascii_lowercase();
    let unreachable = [
        "cannot connect to the docker daemon",
        "is the docker daemon running",
        "error during connect",
        "permission denied while trying to connect",
    ]
    .iter()
    .any(|sign| lower.contains(sign));
    let reason = if words.is_empty() {
        fallback.to_owned()
    } else {
        words.to_owned()
    };
    if unreachable {
        RuntimeError::Unavailable(reason)
    } else {
        RuntimeError::Unexpected(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNREACHABLE: &str = "Cannot connect to the Docker daemon at unix:///nope/docker.sock. \
                               Is the docker daemon running?\n";

    #[test]
    fn inspect_answers_are_read() {
        let cases = [
            (true, "", Ok(true)),
            (false, "Error: No such image: azaion/x:1\n", Ok(false)),
            (
                false,
                "Error response from daemon: No such image: azaion/x:1\n",
                Ok(false),
            ),
            (
                false,
                UNREACHABLE,
                Err(RuntimeError::Unavailable(UNREACHABLE.trim().to_owned())),
            ),
            (
                false,
                "",
                Err(RuntimeError::Unexpected(
                    "docker image inspect failed".to_owned(),
                )),
            ),
        ];
        for (success, stderr, expected) in cases {
            assert_eq!(
                read_inspect_outcome(success, stderr),
                expected,
                "stderr {stderr:?}"
            );
        }
    }

    #[test]
    fn load_answers_are_read() {
        let cases = [
            (
                true,
                "Loaded image: azaion/a:1\nLoaded image ID: sha256:ab\n",
                "",
                Ok(vec!["azaion/a:1".to_owned(), "sha256:ab".to_owned()]),
            ),
            (
                true,
                "",
                "",
                Err(RuntimeError::LoadFailed(
                    "docker load reported no loaded image: ".to_owned(),
                )),
            ),
            (
                false,
                "",
                "unexpected EOF\n",
                Err(RuntimeError::LoadFailed("unexpected EOF".to_owned())),
            ),
            (
                false,
                "",
                UNREACHABLE,
                Err(RuntimeError::Unavailable(UNREACHABLE.trim().to_owned())),
            ),
            (
                false,
                "",
                "",
                Err(RuntimeError::LoadFailed("docker load failed".to_owned())),
            ),
        ];
        for (success, stdout, stderr, expected) in cases {
            assert_eq!(
                read_load_outcome(success, stdout, stderr),
                expected,
                "stdout {stdout:?}, stderr {stderr:?}"
            );
        }
    }

    #[tokio::test]
    async fn read_capped_keeps_the_limit_and_reads_to_the_end() {
        let input = vec![7_u8; 20_000];
        let kept = read_capped(&input[..], 100).await;
        assert_eq!(kept.ok(), Some(vec![7_u8; 100]));
    }
}
