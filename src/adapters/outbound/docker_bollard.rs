//! The container runtime over the Docker Engine API (bollard): looks images up and streams
//! `docker save` archives into `POST /images/load`. It never buffers an archive or writes
//! it to disk, and never reports a load as done when Docker's answer or the archive stream
//! said otherwise.

use std::error::Error as StdError;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::BuildInfo;
use bollard::query_parameters::ImportImageOptionsBuilder;
use bollard::{API_DEFAULT_VERSION, ClientVersion, Docker};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::OnceCell;

use crate::ports::{ByteStream, ContainerRuntime, RuntimeError};

/// How long a short request (version, inspect) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a load may take before Docker answers. Docker reads the whole archive before
/// it writes its first line, so this bounds streaming a multi-gigabyte archive too.
const LOAD_TIMEOUT: Duration = Duration::from_secs(6 * 60 * 60);

/// Docker's own default when `DOCKER_HOST` is unset.
const DEFAULT_SOCKET_PATH: &str = "/var/run/docker.sock";

/// Where the Docker Engine API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    /// A Unix socket path (`unix:///run/docker.sock` or a bare absolute path).
    Unix(String),
    /// Plain HTTP (`tcp://host:2375` or `http://host:2375`).
    Http(String),
}

impl Endpoint {
    /// Reads a `DOCKER_HOST` value; `None` or empty means the local default socket.
    fn parse(docker_host: Option<&str>) -> Result<Self, RuntimeError> {
        let host = docker_host.map(str::trim).unwrap_or_default();
        if host.is_empty() {
            return Ok(Self::Unix(DEFAULT_SOCKET_PATH.to_owned()));
        }
        if let Some(path) = host.strip_prefix("unix://") {
            return Ok(Self::Unix(path.to_owned()));
        }
        if host.starts_with('/') {
            return Ok(Self::Unix(host.to_owned()));
        }
        if host.starts_with("tcp://") || host.starts_with("http://") {
            return Ok(Self::Http(host.to_owned()));
        }
        Err(RuntimeError::Unavailable(format!(
            "unsupported DOCKER_HOST {host:?}: expected unix://PATH or tcp://HOST:PORT"
        )))
    }

    fn connect(&self, version: &ClientVersion) -> Result<Docker, BollardError> {
        let timeout = REQUEST_TIMEOUT.as_secs();
        match self {
            Self::Unix(path) => Docker::connect_with_unix(path, timeout, version),
            Self::Http(address) => Docker::connect_with_http(address, timeout, version),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{path}"),
            Self::Http(address) => f.write_str(address),
        }
    }
}

/// Docker reached through its Engine API.
///
/// The connection is made on first use, not in [`BollardRuntime::connect`], so the loader
/// starts even while the daemon is still starting; a failed attempt is retried on the next
/// call.
pub struct BollardRuntime {
    endpoint: Endpoint,
    client: OnceCell<Docker>,
}

impl BollardRuntime {
    /// Prepares a client for `docker_host` (a `DOCKER_HOST` value: `unix://PATH` or
    /// `tcp://HOST:PORT`); `None` reads the `DOCKER_HOST` environment variable, and an
    /// unset or empty one means the local default socket.
    /// Errors: `Unavailable` when the address has an unsupported scheme.
    pub fn connect(docker_host: Option<&str>) -> Result<Self, RuntimeError> {
        let from_env = match docker_host {
            Some(_) => None,
            None => std::env::var("DOCKER_HOST").ok(),
        };
        let endpoint = Endpoint::parse(docker_host.or(from_env.as_deref()))?;
        Ok(Self {
            endpoint,
            client: OnceCell::new(),
        })
    }

    /// The client, connected and speaking an API version the daemon accepts.
    async fn client(&self) -> Result<&Docker, RuntimeError> {
        self.client
            .get_or_try_init(|| self.negotiate())
            .await
            .map_err(|err| self.unavailable_or_unexpected(err))
    }

    /// Lowers the client's API version to the daemon's when the daemon is older
    /// (Docker 20.10 speaks 1.41); a newer daemon keeps the client's version. (bollard
    /// 0.21 was seen to send unversioned paths, which every engine answers at its own
    /// version; this keeps working should it start prefixing `/v1.NN`.)
    async fn negotiate(&self) -> Result<Docker, BollardError> {
        let docker = self.endpoint.connect(API_DEFAULT_VERSION)?;
        match docker.negotiate_version().await {
            Ok(docker) => Ok(docker),
            // An engine that refuses a versioned `/version` names its maximum instead.
            Err(BollardError::DockerResponseServerError {
                status_code: 400,
                message,
            }) => match maximum_api_version(&message) {
                Some(version) => self.endpoint.connect(&version),
                None => Err(BollardError::DockerResponseServerError {
                    status_code: 400,
                    message,
                }),
            },
            Err(err) => Err(err),
        }
    }

    fn unavailable_or_unexpected(&self, err: BollardError) -> RuntimeError {
        if is_connection_failure(&err) {
            RuntimeError::Unavailable(format!("{}: {err}", self.endpoint))
        } else {
            RuntimeError::Unexpected(format!("{}: {err}", self.endpoint))
        }
    }
}

#[async_trait]
impl ContainerRuntime for BollardRuntime {
    async fn image_present(&self, reference: &str) -> Result<bool, RuntimeError> {
        let docker = self.client().await?;
        match docker.inspect_image(reference).await {
            Ok(_) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(err) => Err(self.unavailable_or_unexpected(err)),
        }
    }

    async fn load(&self, archive: ByteStream) -> Result<Vec<String>, RuntimeError> {
        let docker = self.client().await?.clone().with_timeout(LOAD_TIMEOUT);

        // The body goes to hyper; keep the first failure of the archive stream for ourselves,
        // because hyper only reports that the request broke off.
        let archive_failure: Arc<Mutex<Option<String>>> = Arc::default();
        let recorder = Arc::clone(&archive_failure);
        let body = archive.inspect_err(move |err: &io::Error| {
            if let Ok(mut slot) = recorder.lock() {
                slot.get_or_insert_with(|| err.to_string());
            }
        });

        let options = ImportImageOptionsBuilder::default().quiet(false).build();
        let mut answer = docker.import_image_stream(options, body, None);
        let mut loaded = Vec::new();
        let mut outcome = Ok(());
        while let Some(message) = answer.next().await {
            match message.map(|message| read_load_message(&message)) {
                Ok(LoadLine::Loaded(reference)) => loaded.push(reference),
                Ok(LoadLine::Progress) => {}
                Ok(LoadLine::Failed(reason)) => {
                    outcome = Err(RuntimeError::LoadFailed(reason));
                    break;
                }
                Err(err) => {
                    outcome = Err(self.load_error(err));
                    break;
                }
            }
        }
        drop(answer);

        let archive_failure = archive_failure.lock().ok().and_then(|slot| slot.clone());
        if let Some(reason) = archive_failure {
            return Err(RuntimeError::LoadFailed(format!(
                "the archive stream failed: {reason}"
            )));
        }
        outcome?;
        if loaded.is_empty() {
            return Err(RuntimeError::LoadFailed(
                "Docker reported no loaded image".to_owned(),
            ));
        }
        Ok(loaded)
    }
}

impl BollardRuntime {
    fn load_error(&self, err: BollardError) -> RuntimeError {
        match err {
            // Docker answers with an error status when the load fails before its first line,
            // and with an `errorDetail` line (which bollard turns into this) after it.
            BollardError::DockerResponseServerError { message, .. }
            | BollardError::DockerStreamError { error: message } => {
                RuntimeError::LoadFailed(message)
            }
            BollardError::JsonDataError { message, .. } => RuntimeError::Unexpected(format!(
                "unreadable line in Docker's load answer: {message}"
            )),
            err => self.unavailable_or_unexpected(err),
        }
    }
}

/// What one line of Docker's answer to `POST /images/load` says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LoadLine {
    /// `Loaded image: repo:tag` or `Loaded image ID: sha256:...`.
    Loaded(String),
    /// An `errorDetail` line: the load failed although the status was 200. (Docker writes
    /// `error` beside it; bollard's model keeps only `errorDetail`. Should an engine send
    /// `error` alone, the load still fails, for reporting no loaded image.)
    Failed(String),
    /// Anything else (layer progress, blank lines).
    Progress,
}

/// Classifies one message of the load answer.
fn read_load_message(message: &BuildInfo) -> LoadLine {
    if let Some(detail) = &message.error_detail {
        let reason = detail
            .message
            .clone()
            .unwrap_or_else(|| "Docker reported an error without a message".to_owned());
        return LoadLine::Failed(reason);
    }
    match message.stream.as_deref().and_then(loaded_reference) {
        Some(reference) => LoadLine::Loaded(reference.to_owned()),
        None => LoadLine::Progress,
    }
}

/// The reference in one line of load output: `Loaded image: repo:tag` gives `repo:tag`,
/// `Loaded image ID: sha256:...` gives the ID. Shared with the CLI adapter, whose stdout
/// carries the same text.
pub(crate) fn loaded_reference(line: &str) -> Option<&str> {
    let line = line.trim();
    let reference = line
        .strip_prefix("Loaded image ID:")
        .or_else(|| line.strip_prefix("Loaded image:"))?
        .trim();
    (!reference.is_empty()).then_some(reference)
}

/// Reads `X.Y` out of Docker's "client version ... is too new. Maximum supported API
/// version is X.Y".
fn maximum_api_version(message: &str) -> Option<ClientVersion> {
    let (_, tail) = message.split_once("Maximum supported API version is ")?;
    let version = tail.split_whitespace().next()?;
    let (major, minor) = version.split_once('.')?;
    Some(ClientVersion {
        major_version: major.parse().ok()?,
        minor_version: minor.trim_end_matches('.').parse().ok()?,
    })
}

/// Whether `err` means the daemon could not be reached (no socket, refused, reset, timed out).
fn is_connection_failure(err: &BollardError) -> bool {
    match err {
        BollardError::SocketNotFoundError(_) | BollardError::RequestTimeoutError => true,
        BollardError::HyperLegacyError { err } if err.is_connect() => true,
        // Transparent: its `source()` skips the `io::Error` itself.
        BollardError::IOError { err } => is_connection_kind(err.kind()),
        err => io_error_in_chain(err).is_some_and(|io_err| is_connection_kind(io_err.kind())),
    }
}

fn is_connection_kind(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::NotFound
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::PermissionDenied
            | io::ErrorKind::TimedOut
    )
}

fn io_error_in_chain<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(err) = current {
        if let Some(io_err) = err.downcast_ref::<io::Error>() {
            return Some(io_err);
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as Docker writes them, parsed the way bollard parses them.
    fn line(json: &str) -> Result<LoadLine, serde_json::Error> {
        serde_json::from_str::<BuildInfo>(json).map(|message| read_load_message(&message))
    }

    #[test]
    fn load_answer_lines_are_classified() {
        let cases: &[(&str, LoadLine)] = &[
            (
                r#"{"stream":"Loaded image: azaion/detector:1.2\n"}"#,
                LoadLine::Loaded("azaion/detector:1.2".to_owned()),
            ),
            (
                r#"{"stream":"Loaded image ID: sha256:0123abcd\n"}"#,
                LoadLine::Loaded("sha256:0123abcd".to_owned()),
            ),
            (
                r#"{"errorDetail":{"message":"unexpected EOF"},"error":"unexpected EOF"}"#,
                LoadLine::Failed("unexpected EOF".to_owned()),
            ),
            (
                r#"{"errorDetail":{"message":"invalid tar header"}}"#,
                LoadLine::Failed("invalid tar header".to_owned()),
            ),
            (
                r#"{"errorDetail":{}}"#,
                LoadLine::Failed("Docker reported an error without a message".to_owned()),
            ),
            (
                r#"{"status":"Loading layer","progressDetail":{"current":512,"total":1024},"id":"ab12"}"#,
                LoadLine::Progress,
            ),
            (r#"{"stream":"\n"}"#, LoadLine::Progress),
            (r#"{}"#, LoadLine::Progress),
        ];
        for (json, expected) in cases {
            assert_eq!(line(json).ok().as_ref(), Some(expected), "line {json}");
        }
    }

    #[test]
    fn a_garbage_line_is_not_a_load_message() {
        for garbage in ["not json", "{\"stream\":", "<html>502</html>"] {
            assert!(line(garbage).is_err(), "line {garbage}");
        }
    }

    #[test]
    fn loaded_reference_reads_both_forms_and_nothing_else() {
        let cases = [
            ("Loaded image: repo/name:tag\n", Some("repo/name:tag")),
            ("Loaded image ID: sha256:abc", Some("sha256:abc")),
            (
                "  Loaded image: localhost:5000/a:b  ",
                Some("localhost:5000/a:b"),
            ),
            ("Loaded image: ", None),
            ("Loading layer 1/2", None),
            ("", None),
        ];
        for (line, expected) in cases {
            assert_eq!(loaded_reference(line), expected, "line {line:?}");
        }
    }

    #[test]
    fn docker_host_values_map_to_endpoints() {
        let cases = [
            (
                None,
                Some(Endpoint::Unix("/var/run/docker.sock".to_owned())),
            ),
            (
                Some(""),
                Some(Endpoint::Unix("/var/run/docker.sock".to_owned())),
            ),
            (
                Some("unix:///tmp/d/docker.sock"),
                Some(Endpoint::Unix("/tmp/d/docker.sock".to_owned())),
            ),
            (
                Some("/run/docker.sock"),
                Some(Endpoint::Unix("/run/docker.sock".to_owned())),
            ),
            (
                Some("tcp://127.0.0.1:2375"),
                Some(Endpoint::Http("tcp://127.0.0.1:2375".to_owned())),
            ),
            (Some("ssh://user@host"), None),
            (Some("npipe:////./pipe/docker_engine"), None),
        ];
        for (host, expected) in cases {
            assert_eq!(Endpoint::parse(host).ok(), expected, "host {host:?}");
        }
    }

    #[test]
    fn the_maximum_api_version_is_read_from_dockers_refusal() {
        let refusal = "client version 1.53 is too new. Maximum supported API version is 1.41";
        assert_eq!(
            maximum_api_version(refusal),
            Some(ClientVersion {
                major_version: 1,
                minor_version: 41
            })
        );
        assert_eq!(maximum_api_version("page not found"), None);
    }

    #[test]
    fn a_missing_socket_is_a_connection_failure() {
        let err = BollardError::SocketNotFoundError("/nope/docker.sock".to_owned());
        assert!(is_connection_failure(&err));
        let refused = BollardError::IOError {
            err: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert!(is_connection_failure(&refused));
        let server = BollardError::DockerResponseServerError {
            status_code: 500,
            message: "boom".to_owned(),
        };
        assert!(!is_connection_failure(&server));
    }
}
