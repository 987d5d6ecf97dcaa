//! The loader's configuration (docs/PROTOCOL.md §7), read once at start: flags over
//! the environment over an optional TOML file over the defaults. Never holds
//! a secret, and never prints one: [`Config::describe`] masks anything named
//! like a secret and the user part of URLs.

mod args;
pub mod credentials;
mod file;
#[cfg(test)]
mod tests;
mod values;

pub use args::{Origin, Resolved, ServeArgs};
pub use file::ConfigError;
pub use values::{List, Secs, Size};

use crate::app::ranged::CdnReads;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Where the service listens: a TCP address, or a Unix socket
/// (`unix:/run/azaion-loader/loader.sock`, docs/PROTOCOL.md §5.3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(
                    "`unix:` needs a socket path, e.g. unix:/run/azaion-loader/loader.sock"
                        .to_owned(),
                );
            }
            return Ok(Self::Unix(absolute(PathBuf::from(path))));
        }
        text.parse().map(Self::Tcp).map_err(|_| {
            format!("`{text}` is not an address such as \"127.0.0.1:8080\" or \"unix:/run/azaion-loader/loader.sock\"")
        })
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl From<SocketAddr> for Listen {
    fn from(addr: SocketAddr) -> Self {
        Self::Tcp(addr)
    }
}

/// Which container runtime adapter talks to Docker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RuntimeKind {
    /// The Docker Engine API through bollard.
    #[default]
    Bollard,
    /// The `docker` command-line client.
    Cli,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bollard => "bollard",
            Self::Cli => "cli",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    pub resource_api_url: String,
    /// Absolute path of the big-part cache.
    pub model_cache_dir: PathBuf,
    /// Cache size limit in bytes; `None` means unlimited.
    pub cache_max_bytes: Option<u64>,
    pub images_path: PathBuf,
    /// Expected images, `repository:tag`.
    pub expected_images: Vec<String>,
    pub docker_host: Option<String>,
    pub runtime: RuntimeKind,
    pub api_connect_timeout: Duration,
    pub api_request_timeout: Duration,
    /// How big parts are read from the CDN (segment size, requests in flight).
    pub cdn_reads: CdnReads,
    /// The email and password to log in with at start, and again with
    /// backoff until it works (`LOADER_CREDENTIALS_FILE`, or systemd's
    /// `$CREDENTIALS_DIRECTORY/login`); `None`: an operator logs in.
    pub credentials_file: Option<PathBuf>,
    /// §5.3 who may call and how much: host names, token, limits.
    pub limits: Limits,
}

/// The settings of docs/PROTOCOL.md §5.3: who may call, and the limits that keep a
/// flood, a full disk or a hung peer from taking the device down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Extra host names a request's `Host` may carry (`LOADER_ALLOWED_HOSTS`).
    pub allowed_hosts: Vec<String>,
    /// File holding the client token; `None`: no token is asked for.
    pub token_file: Option<PathBuf>,
    pub max_upload_bytes: u64,
    /// Free space the cache and upload spools leave on their file system.
    pub min_free_bytes: u64,
    /// CDN downloads and uploads in progress at once.
    pub max_transfers: usize,
    pub unlock_timeout: Duration,
    /// Allow `http://` to a Resource API that is not on loopback.
    pub allow_insecure_http: bool,
    /// Connections served at once; the next waits in the kernel's backlog.
    pub max_connections: usize,
}

pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 64 << 30;
pub const DEFAULT_MIN_FREE_BYTES: u64 = 1 << 30;
pub const DEFAULT_MAX_TRANSFERS: u64 = 16;
pub const DEFAULT_UNLOCK_TIMEOUT_SECS: u64 = 7200;
pub const DEFAULT_MAX_CONNECTIONS: u64 = 512;

impl Default for Limits {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            token_file: None,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            max_transfers: DEFAULT_MAX_TRANSFERS as usize,
            unlock_timeout: Duration::from_secs(DEFAULT_UNLOCK_TIMEOUT_SECS),
            allow_insecure_http: false,
            max_connections: DEFAULT_MAX_CONNECTIONS as usize,
        }
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_RESOURCE_API_URL: &str = "https://api.azaion.com";
pub const DEFAULT_IMAGES_PATH: &str = "/opt/azaion/images.enc";
pub const DEFAULT_CACHE_DIR: &str = "cache";
pub const DEFAULT_API_CONNECT_TIMEOUT_SECS: u64 = 5;
pub const DEFAULT_API_REQUEST_TIMEOUT_SECS: u64 = 60;
/// Bounds of `cdn_segment_mib` and `cdn_parallel_reads`.
pub const CDN_SEGMENT_MIB_RANGE: (u64, u64) = (1, 64);
pub const CDN_PARALLEL_READS_RANGE: (u64, u64) = (1, 16);
/// Bounds of `max_transfers` and `max_connections`.
pub const MAX_TRANSFERS_RANGE: (u64, u64) = (1, 4096);
pub const MAX_CONNECTIONS_RANGE: (u64, u64) = (1, 65536);

/// Splits `LOADER_IMAGES`: comma-separated, blanks ignored.
pub fn parse_image_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Makes a cache path absolute against the working directory without touching the disk.
pub fn absolute(path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        path
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(&path))
            .unwrap_or(path)
    }
}

impl Config {
    /// The defaults of §7, for a given working directory's `cache` folder.
    pub fn defaults() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 8080)))),
            resource_api_url: DEFAULT_RESOURCE_API_URL.to_owned(),
            model_cache_dir: absolute(PathBuf::from(DEFAULT_CACHE_DIR)),
            cache_max_bytes: None,
            images_path: PathBuf::from(DEFAULT_IMAGES_PATH),
            expected_images: Vec::new(),
            docker_host: None,
            runtime: RuntimeKind::Bollard,
            api_connect_timeout: Duration::from_secs(DEFAULT_API_CONNECT_TIMEOUT_SECS),
            api_request_timeout: Duration::from_secs(DEFAULT_API_REQUEST_TIMEOUT_SECS),
            cdn_reads: CdnReads::default(),
            credentials_file: None,
            limits: Limits::default(),
        }
    }

    /// Every setting as `(key, value)`, ready to print: values of keys named
    /// like a secret read `***`, and URLs lose their `user:password@` part.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let images = if self.expected_images.is_empty() {
            "(none)".to_owned()
        } else {
            self.expected_images.join(",")
        };
        let entries = [
            ("listen", self.listen.to_string()),
            ("resource_api_url", self.resource_api_url.clone()),
            (
                "model_cache_dir",
                self.model_cache_dir.display().to_string(),
            ),
            (
                "cache_max_bytes",
                self.cache_max_bytes
                    .map_or_else(|| "unlimited".to_owned(), |b| b.to_string()),
            ),
            ("images_path", self.images_path.display().to_string()),
            ("images", images),
            (
                "docker_host",
                self.docker_host
                    .clone()
                    .unwrap_or_else(|| "(runtime default)".to_owned()),
            ),
            ("runtime", self.runtime.as_str().to_owned()),
            (
                "api_connect_timeout_secs",
                self.api_connect_timeout.as_secs().to_string(),
            ),
            (
                "api_request_timeout_secs",
                self.api_request_timeout.as_secs().to_string(),
            ),
            (
                "cdn_segment_mib",
                (self.cdn_reads.segment >> 20).to_string(),
            ),
            ("cdn_parallel_reads", self.cdn_reads.parallel.to_string()),
            (
                "allowed_hosts",
                if self.limits.allowed_hosts.is_empty() {
                    "(none)".to_owned()
                } else {
                    self.limits.allowed_hosts.join(",")
                },
            ),
            (
                // The path only: the token itself is never read into a printed value.
                "token_file",
                self.limits
                    .token_file
                    .as_ref()
                    .map_or_else(|| "(none)".to_owned(), |p| p.display().to_string()),
            ),
            ("max_upload_bytes", self.limits.max_upload_bytes.to_string()),
            ("min_free_bytes", self.limits.min_free_bytes.to_string()),
            ("max_transfers", self.limits.max_transfers.to_string()),
            (
                "unlock_timeout_secs",
                self.limits.unlock_timeout.as_secs().to_string(),
            ),
            (
                "allow_insecure_http",
                self.limits.allow_insecure_http.to_string(),
            ),
            ("max_connections", self.limits.max_connections.to_string()),
            (
                // The path only, like token_file.
                "credentials_file",
                self.credentials_file
                    .as_ref()
                    .map_or_else(|| "(none)".to_owned(), |p| p.display().to_string()),
            ),
        ];
        entries
            .into_iter()
            .map(|(key, value)| (key, mask_value(key, &value)))
            .collect()
    }
}

/// What a printed configuration may show of `value`: nothing for keys named
/// like a secret, and URLs without their user part.
pub fn mask_value(key: &str, value: &str) -> String {
    let lower = key.to_ascii_lowercase();
    if lower != "token_file"
        && ["secret", "password", "token"]
            .iter()
            .any(|word| lower.contains(word))
    {
        return "***".to_owned();
    }
    mask_url_userinfo(value)
}

/// `scheme://user:pass@host/...` → `scheme://***@host/...`; other text unchanged.
fn mask_url_userinfo(value: &str) -> String {
    let Some((scheme, rest)) = value.split_once("://") else {
        return value.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => value.to_owned(),
    }
}
