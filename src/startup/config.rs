//! The loader's configuration (docs/PROTOCOL.md §7), read once at start: flags over
//! the environment over an optional TOML file over the defaults. Never holds
//! a secret, and never prints one: [`Config::describe`] masks anything named
//! like a secret and the user part of URLs.

use crate::app::ranged::CdnReads;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

/// Splits `LOADER_ALLOWED_HOSTS`: comma-separated, lower-cased, blanks ignored.
pub fn parse_host_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect()
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

/// The keys a configuration file may hold (named like the `serve` flags).
pub const FILE_KEYS: &[&str] = &[
    "listen",
    "resource_api_url",
    "model_cache_dir",
    "cache_max_bytes",
    "images_path",
    "images",
    "docker_host",
    "runtime",
    "api_connect_timeout_secs",
    "api_request_timeout_secs",
    "cdn_segment_mib",
    "cdn_parallel_reads",
    "allowed_hosts",
    "token_file",
    "max_upload_bytes",
    "min_free_bytes",
    "max_transfers",
    "unlock_timeout_secs",
    "allow_insecure_http",
    "max_connections",
];

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

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A `serve` flag or its environment variable.
    FlagOrEnv,
    File,
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FlagOrEnv => "flag or env",
            Self::File => "file",
            Self::Default => "default",
        })
    }
}

/// A resolved configuration and where each of its settings came from.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub config: Config,
    /// The configuration file that was read, if any.
    pub file: Option<PathBuf>,
    pub origins: BTreeMap<&'static str, Origin>,
}

impl Resolved {
    /// One line for the start-up log: `key=value (origin)` for every
    /// setting, secrets masked.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .config
            .describe()
            .into_iter()
            .map(|(key, value)| {
                let origin = self.origins.get(key).copied().unwrap_or(Origin::Default);
                format!("{key}={value} ({origin})")
            })
            .collect();
        if let Some(file) = &self.file {
            parts.insert(0, format!("config_file={}", file.display()));
        }
        parts.join(", ")
    }
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("the config file {path} has an unknown key `{key}` (known keys: {known})")]
    UnknownKey {
        path: PathBuf,
        key: String,
        known: String,
    },
    #[error("the config file {path}: key `{key}`: {reason}")]
    BadValue {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// The settings a configuration file gave; `None` where it said nothing.
/// Relative paths in it are already resolved against the file's folder.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileSettings {
    pub listen: Option<Listen>,
    pub resource_api_url: Option<String>,
    pub model_cache_dir: Option<PathBuf>,
    pub cache_max_bytes: Option<u64>,
    pub images_path: Option<PathBuf>,
    pub images: Option<Vec<String>>,
    pub docker_host: Option<String>,
    pub runtime: Option<RuntimeKind>,
    pub api_connect_timeout_secs: Option<u64>,
    pub api_request_timeout_secs: Option<u64>,
    pub cdn_segment_mib: Option<u64>,
    pub cdn_parallel_reads: Option<u64>,
    pub allowed_hosts: Option<Vec<String>>,
    pub token_file: Option<PathBuf>,
    pub max_upload_bytes: Option<u64>,
    pub min_free_bytes: Option<u64>,
    pub max_transfers: Option<u64>,
    pub unlock_timeout_secs: Option<u64>,
    pub allow_insecure_http: Option<bool>,
    pub max_connections: Option<u64>,
}

impl FileSettings {
    /// Reads and checks a TOML configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        Self::parse(&text, path, base)
    }

    /// Parses the text of a file at `path`; relative paths are taken against `base`.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Self, ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|span| count_lines(&text.as_bytes()[..span.start.min(text.len())]) + 1);
            ConfigError::Syntax {
                path: path.to_path_buf(),
                message: match line {
                    Some(line) => format!("line {line}: {}", e.message().trim()),
                    None => e.message().trim().to_owned(),
                },
            }
        })?;
        let mut settings = Self::default();
        for (raw_key, value) in &table {
            let key = raw_key.replace('-', "_");
            let bad = |reason: String| ConfigError::BadValue {
                path: path.to_path_buf(),
                key: raw_key.clone(),
                reason,
            };
            match key.as_str() {
                "listen" => {
                    let text = as_str(value).map_err(bad)?;
                    settings.listen = Some(match text.strip_prefix("unix:") {
                        Some(path) if !path.is_empty() => Listen::Unix(base.join(path)),
                        _ => text.parse().map_err(bad)?,
                    });
                }
                "resource_api_url" => {
                    let text = as_str(value).map_err(bad)?;
                    if !(text.starts_with("http://") || text.starts_with("https://")) {
                        return Err(bad(format!(
                            "`{}` is not an http:// or https:// URL",
                            mask_url_userinfo(text)
                        )));
                    }
                    settings.resource_api_url = Some(text.to_owned());
                }
                "model_cache_dir" => {
                    let text = non_empty_str(value).map_err(bad)?;
                    settings.model_cache_dir = Some(base.join(text));
                }
                "cache_max_bytes" => {
                    settings.cache_max_bytes = Some(as_u64(value).map_err(bad)?);
                }
                "images_path" => {
                    let text = non_empty_str(value).map_err(bad)?;
                    settings.images_path = Some(base.join(text));
                }
                "images" => {
                    settings.images =
                        Some(as_string_list(value, "\"repository:tag\" strings").map_err(bad)?);
                }
                "docker_host" => {
                    let text = as_str(value).map_err(bad)?;
                    settings.docker_host = (!text.is_empty()).then(|| text.to_owned());
                }
                "runtime" => {
                    let text = as_str(value).map_err(bad)?;
                    settings.runtime = Some(
                        <RuntimeKind as clap::ValueEnum>::from_str(text, true).map_err(|_| {
                            bad(format!("`{text}` is not one of \"bollard\", \"cli\""))
                        })?,
                    );
                }
                "api_connect_timeout_secs" => {
                    settings.api_connect_timeout_secs = Some(as_timeout(value).map_err(bad)?);
                }
                "api_request_timeout_secs" => {
                    settings.api_request_timeout_secs = Some(as_timeout(value).map_err(bad)?);
                }
                "cdn_segment_mib" => {
                    settings.cdn_segment_mib =
                        Some(as_within(value, CDN_SEGMENT_MIB_RANGE).map_err(bad)?);
                }
                "cdn_parallel_reads" => {
                    settings.cdn_parallel_reads =
                        Some(as_within(value, CDN_PARALLEL_READS_RANGE).map_err(bad)?);
                }
                "allowed_hosts" => {
                    settings.allowed_hosts = Some(
                        as_string_list(value, "host names")
                            .map_err(bad)?
                            .iter()
                            .flat_map(|h| parse_host_list(h))
                            .collect(),
                    );
                }
                "token_file" => {
                    let text = non_empty_str(value).map_err(bad)?;
                    settings.token_file = Some(base.join(text));
                }
                "max_upload_bytes" => {
                    settings.max_upload_bytes = Some(as_u64(value).map_err(bad)?);
                }
                "min_free_bytes" => {
                    settings.min_free_bytes = Some(as_u64(value).map_err(bad)?);
                }
                "max_transfers" => {
                    settings.max_transfers =
                        Some(as_within(value, MAX_TRANSFERS_RANGE).map_err(bad)?);
                }
                "unlock_timeout_secs" => {
                    settings.unlock_timeout_secs = Some(as_timeout(value).map_err(bad)?);
                }
                "allow_insecure_http" => {
                    settings.allow_insecure_http = Some(value.as_bool().ok_or_else(|| {
                        bad(format!(
                            "expected true or false, found {}",
                            type_name(value)
                        ))
                    })?);
                }
                "max_connections" => {
                    settings.max_connections =
                        Some(as_within(value, MAX_CONNECTIONS_RANGE).map_err(bad)?);
                }
                _ => {
                    return Err(ConfigError::UnknownKey {
                        path: path.to_path_buf(),
                        key: raw_key.clone(),
                        known: FILE_KEYS.join(", "),
                    });
                }
            }
        }
        Ok(settings)
    }
}

fn count_lines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

fn type_name(value: &toml::Value) -> &'static str {
    value.type_str()
}

fn as_str(value: &toml::Value) -> Result<&str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("expected a string, found {}", type_name(value)))
}

fn non_empty_str(value: &toml::Value) -> Result<&str, String> {
    let text = as_str(value)?;
    if text.is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(text)
}

fn as_u64(value: &toml::Value) -> Result<u64, String> {
    let number = value
        .as_integer()
        .ok_or_else(|| format!("expected a whole number, found {}", type_name(value)))?;
    u64::try_from(number).map_err(|_| format!("{number} is negative"))
}

fn as_timeout(value: &toml::Value) -> Result<u64, String> {
    match as_u64(value)? {
        0 => Err("must be at least 1 second".to_owned()),
        secs => Ok(secs),
    }
}

fn as_within(value: &toml::Value, (low, high): (u64, u64)) -> Result<u64, String> {
    match as_u64(value)? {
        n if (low..=high).contains(&n) => Ok(n),
        n => Err(format!("{n} is not between {low} and {high}")),
    }
}

/// A list of strings, or one comma-separated string like `LOADER_IMAGES`.
fn as_string_list(value: &toml::Value, what: &str) -> Result<Vec<String>, String> {
    if let Some(text) = value.as_str() {
        return Ok(parse_image_list(text));
    }
    let items = value.as_array().ok_or_else(|| {
        format!(
            "expected a list of {what} or one comma-separated string, found {}",
            type_name(value)
        )
    })?;
    items
        .iter()
        .map(|item| {
            item.as_str()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| "every entry must be a non-empty string".to_owned())
        })
        .collect()
}

/// The settings of `serve` (and `unlock`), from flags or the environment
/// variables of §7, optionally on top of a TOML file (`--config`).
///
/// Every value is optional here so that the file can fill what flags and
/// environment leave out; the defaults come last, in [`ServeArgs::resolve`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of: listen, resource_api_url, model_cache_dir,
    /// cache_max_bytes, images_path, images, docker_host, runtime,
    /// api_connect_timeout_secs, api_request_timeout_secs, cdn_segment_mib,
    /// cdn_parallel_reads. Flags and
    /// environment override it; relative paths in it are taken from its folder.
    #[arg(long, env = "LOADER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to serve on, or `unix:/path/loader.sock` for a Unix socket
    /// (mode 0660) [default: 127.0.0.1:8080]. Keep TCP on loopback unless
    /// clients on other hosts must reach it.
    #[arg(long, env = "LOADER_LISTEN")]
    pub listen: Option<Listen>,
    /// Resource API base URL [default: https://api.azaion.com].
    #[arg(long, env = "RESOURCE_API_URL")]
    pub resource_api_url: Option<String>,
    /// Local cache of big parts [default: ./cache].
    #[arg(long, env = "MODEL_CACHE_DIR")]
    pub model_cache_dir: Option<PathBuf>,
    /// Cache size limit in bytes; least recently used entries are evicted
    /// beyond it [default: unlimited].
    #[arg(long, env = "MODEL_CACHE_MAX_BYTES")]
    pub cache_max_bytes: Option<u64>,
    /// Encrypted image archive [default: /opt/azaion/images.enc].
    #[arg(long, env = "IMAGES_PATH")]
    pub images_path: Option<PathBuf>,
    /// Expected images, comma-separated `repository:tag` [default: none].
    #[arg(long, env = "LOADER_IMAGES")]
    pub images: Option<String>,
    /// Container runtime endpoint [default: the runtime's own default socket].
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// How to talk to Docker [default: bollard].
    #[arg(long, env = "LOADER_RUNTIME", value_enum)]
    pub runtime: Option<RuntimeKind>,
    /// Seconds allowed to connect to the Resource API [default: 5].
    #[arg(long, env = "API_CONNECT_TIMEOUT_SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub api_connect_timeout_secs: Option<u64>,
    /// Seconds allowed for one Resource API call [default: 60].
    #[arg(long, env = "API_REQUEST_TIMEOUT_SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub api_request_timeout_secs: Option<u64>,
    /// MiB per ranged GET when a big part comes from the CDN, 1-64 [default: 4].
    #[arg(long, env = "CDN_SEGMENT_MIB", value_parser = clap::value_parser!(u64).range(1..=64))]
    pub cdn_segment_mib: Option<u64>,
    /// Ranged GETs in flight for one big part, 1-16 (1: one plain GET) [default: 4].
    #[arg(long, env = "CDN_PARALLEL_READS", value_parser = clap::value_parser!(u64).range(1..=16))]
    pub cdn_parallel_reads: Option<u64>,
    /// Extra host names a request's Host header may carry, comma-separated
    /// (localhost, 127.0.0.1, [::1] and the listen host always may) [default: none].
    #[arg(long, env = "LOADER_ALLOWED_HOSTS")]
    pub allowed_hosts: Option<String>,
    /// File holding the client token every request but `GET /health` must
    /// carry as `Authorization: Bearer`; must not be readable by others [default: none].
    #[arg(long, env = "LOADER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Largest upload body in bytes (413 beyond) [default: 68719476736].
    #[arg(long, env = "LOADER_MAX_UPLOAD_BYTES")]
    pub max_upload_bytes: Option<u64>,
    /// Free bytes the cache and upload spools leave on their file system [default: 1073741824].
    #[arg(long, env = "MODEL_CACHE_MIN_FREE_BYTES")]
    pub min_free_bytes: Option<u64>,
    /// CDN downloads and uploads in progress at once, 1-4096 [default: 16].
    #[arg(long, env = "LOADER_MAX_TRANSFERS", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_transfers: Option<u64>,
    /// Seconds an unlock may take before it ends in `error` [default: 7200].
    #[arg(long, env = "UNLOCK_TIMEOUT_SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub unlock_timeout_secs: Option<u64>,
    /// Allow `http://` to a Resource API that is not on loopback (the password travels in clear).
    #[arg(long, env = "LOADER_ALLOW_INSECURE_HTTP")]
    pub allow_insecure_http: Option<bool>,
    /// Connections served at once, 1-65536 [default: 512].
    #[arg(long, env = "LOADER_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_connections: Option<u64>,
}

/// Picks the first value present and records where it came from.
fn pick<T>(
    origins: &mut BTreeMap<&'static str, Origin>,
    key: &'static str,
    flag_or_env: Option<T>,
    file: Option<T>,
    default: T,
) -> T {
    let (value, origin) = match (flag_or_env, file) {
        (Some(v), _) => (v, Origin::FlagOrEnv),
        (None, Some(v)) => (v, Origin::File),
        (None, None) => (default, Origin::Default),
    };
    origins.insert(key, origin);
    value
}

impl ServeArgs {
    /// Flags and environment over the defaults, ignoring `--config`.
    /// Kept for callers that never take a file; `serve` and `unlock` use
    /// [`ServeArgs::resolve`].
    pub fn into_config(self) -> Config {
        self.merge(FileSettings::default(), None).config
    }

    /// Flags over environment (clap) over the `--config` file over the defaults.
    pub fn resolve(self) -> Result<Resolved, ConfigError> {
        match self.config.clone() {
            Some(path) => {
                let file = FileSettings::load(&path)?;
                Ok(self.merge(file, Some(path)))
            }
            None => Ok(self.merge(FileSettings::default(), None)),
        }
    }

    fn merge(self, file: FileSettings, file_path: Option<PathBuf>) -> Resolved {
        let defaults = Config::defaults();
        let mut origins = BTreeMap::new();
        let o = &mut origins;
        let listen = pick(o, "listen", self.listen, file.listen, defaults.listen);
        let resource_api_url = pick(
            o,
            "resource_api_url",
            self.resource_api_url.filter(|u| !u.is_empty()),
            file.resource_api_url,
            defaults.resource_api_url,
        );
        let model_cache_dir = absolute(pick(
            o,
            "model_cache_dir",
            self.model_cache_dir,
            file.model_cache_dir,
            defaults.model_cache_dir,
        ));
        let cache_max_bytes = pick(
            o,
            "cache_max_bytes",
            self.cache_max_bytes.map(Some),
            file.cache_max_bytes.map(Some),
            defaults.cache_max_bytes,
        );
        let images_path = pick(
            o,
            "images_path",
            self.images_path,
            file.images_path,
            defaults.images_path,
        );
        let expected_images = pick(
            o,
            "images",
            self.images.as_deref().map(parse_image_list),
            file.images,
            defaults.expected_images,
        );
        let docker_host = pick(
            o,
            "docker_host",
            self.docker_host.filter(|h| !h.is_empty()).map(Some),
            file.docker_host.map(Some),
            defaults.docker_host,
        );
        let runtime = pick(o, "runtime", self.runtime, file.runtime, defaults.runtime);
        let connect = pick(
            o,
            "api_connect_timeout_secs",
            self.api_connect_timeout_secs,
            file.api_connect_timeout_secs,
            DEFAULT_API_CONNECT_TIMEOUT_SECS,
        );
        let request = pick(
            o,
            "api_request_timeout_secs",
            self.api_request_timeout_secs,
            file.api_request_timeout_secs,
            DEFAULT_API_REQUEST_TIMEOUT_SECS,
        );
        let segment_mib = pick(
            o,
            "cdn_segment_mib",
            self.cdn_segment_mib,
            file.cdn_segment_mib,
            defaults.cdn_reads.segment >> 20,
        );
        let parallel = pick(
            o,
            "cdn_parallel_reads",
            self.cdn_parallel_reads,
            file.cdn_parallel_reads,
            defaults.cdn_reads.parallel as u64,
        );
        let allowed_hosts = pick(
            o,
            "allowed_hosts",
            self.allowed_hosts.as_deref().map(parse_host_list),
            file.allowed_hosts,
            Vec::new(),
        );
        let token_file = pick(
            o,
            "token_file",
            self.token_file.map(Some),
            file.token_file.map(Some),
            None,
        )
        .map(absolute);
        let d = Limits::default();
        let max_upload_bytes = pick(
            o,
            "max_upload_bytes",
            self.max_upload_bytes,
            file.max_upload_bytes,
            d.max_upload_bytes,
        );
        let min_free_bytes = pick(
            o,
            "min_free_bytes",
            self.min_free_bytes,
            file.min_free_bytes,
            d.min_free_bytes,
        );
        let max_transfers = pick(
            o,
            "max_transfers",
            self.max_transfers,
            file.max_transfers,
            DEFAULT_MAX_TRANSFERS,
        );
        let unlock_timeout = pick(
            o,
            "unlock_timeout_secs",
            self.unlock_timeout_secs,
            file.unlock_timeout_secs,
            DEFAULT_UNLOCK_TIMEOUT_SECS,
        );
        let allow_insecure_http = pick(
            o,
            "allow_insecure_http",
            self.allow_insecure_http,
            file.allow_insecure_http,
            false,
        );
        let max_connections = pick(
            o,
            "max_connections",
            self.max_connections,
            file.max_connections,
            DEFAULT_MAX_CONNECTIONS,
        );
        Resolved {
            config: Config {
                listen,
                resource_api_url,
                model_cache_dir,
                cache_max_bytes,
                images_path,
                expected_images,
                docker_host,
                runtime,
                api_connect_timeout: Duration::from_secs(connect),
                api_request_timeout: Duration::from_secs(request),
                cdn_reads: CdnReads {
                    segment: segment_mib << 20,
                    // At most 16, from the parser's range.
                    parallel: usize::try_from(parallel).unwrap_or(1),
                },
                limits: Limits {
                    allowed_hosts,
                    token_file,
                    max_upload_bytes,
                    min_free_bytes,
                    // Both bounded by their parsers' ranges.
                    max_transfers: usize::try_from(max_transfers).unwrap_or(1),
                    unlock_timeout: Duration::from_secs(unlock_timeout),
                    allow_insecure_http,
                    max_connections: usize::try_from(max_connections).unwrap_or(1),
                },
            },
            file: file_path,
            origins,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileSettings, ConfigError> {
        FileSettings::parse(
            text,
            Path::new("/etc/azaion/loader.toml"),
            Path::new("/etc/azaion"),
        )
    }

    #[test]
    fn image_list_ignores_blanks_and_spaces() {
        assert_eq!(parse_image_list(""), Vec::<String>::new());
        assert_eq!(parse_image_list(" a:1 , ,b:2,"), vec!["a:1", "b:2"]);
    }

    #[test]
    fn defaults_follow_the_protocol() {
        let c = Config::defaults();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.limits.max_upload_bytes, 68_719_476_736);
        assert_eq!(c.limits.min_free_bytes, 1_073_741_824);
        assert_eq!(c.limits.max_transfers, 16);
        assert_eq!(c.limits.unlock_timeout, Duration::from_secs(7200));
        assert!(!c.limits.allow_insecure_http && c.limits.token_file.is_none());
        assert_eq!(c.resource_api_url, "https://api.azaion.com");
        assert!(c.model_cache_dir.is_absolute() && c.model_cache_dir.ends_with("cache"));
        assert_eq!(c.images_path, PathBuf::from("/opt/azaion/images.enc"));
    }

    #[test]
    fn no_flags_and_no_file_give_the_defaults() {
        let resolved = ServeArgs::default().resolve().unwrap();
        let d = Config::defaults();
        assert_eq!(resolved.config.listen, d.listen);
        assert_eq!(resolved.config.resource_api_url, d.resource_api_url);
        assert_eq!(resolved.config.api_request_timeout, d.api_request_timeout);
        assert_eq!(resolved.config.cdn_reads, CdnReads::default());
        assert!(resolved.origins.values().all(|o| *o == Origin::Default));
    }

    #[test]
    fn a_file_reads_every_key_and_resolves_paths_against_its_folder() {
        let s = parse(
            r#"
            listen = "0.0.0.0:9000"
            resource_api_url = "http://api.local"
            model_cache_dir = "cache"
            cache_max_bytes = 1000
            images_path = "/opt/x/images.enc"
            images = ["a:1", "b:2"]
            docker_host = "unix:///run/docker.sock"
            runtime = "cli"
            api_connect_timeout_secs = 3
            api-request-timeout-secs = 30
            cdn_segment_mib = 16
            cdn_parallel_reads = 2
            "#,
        )
        .unwrap();
        assert_eq!(s.listen, Some(Listen::Tcp("0.0.0.0:9000".parse().unwrap())));
        assert_eq!(s.model_cache_dir, Some(PathBuf::from("/etc/azaion/cache")));
        assert_eq!(s.images_path, Some(PathBuf::from("/opt/x/images.enc")));
        assert_eq!(s.images, Some(vec!["a:1".to_owned(), "b:2".to_owned()]));
        assert_eq!(s.runtime, Some(RuntimeKind::Cli));
        assert_eq!(s.cache_max_bytes, Some(1000));
        assert_eq!(s.api_request_timeout_secs, Some(30));
        assert_eq!(s.cdn_segment_mib, Some(16));
        assert_eq!(s.cdn_parallel_reads, Some(2));
    }

    #[test]
    fn the_trust_boundary_settings_read_from_a_file_and_from_text() {
        let s = parse(
            r#"
            listen = "unix:run/loader.sock"
            allowed_hosts = ["Loader", "gs-1.local"]
            token_file = "loader.token"
            max_upload_bytes = 1000
            min_free_bytes = 0
            max_transfers = 2
            unlock_timeout_secs = 30
            allow_insecure_http = true
            max_connections = 8
            "#,
        )
        .unwrap();
        assert_eq!(
            s.listen,
            Some(Listen::Unix(PathBuf::from("/etc/azaion/run/loader.sock")))
        );
        assert_eq!(
            s.allowed_hosts,
            Some(vec!["loader".to_owned(), "gs-1.local".to_owned()])
        );
        assert_eq!(
            s.token_file,
            Some(PathBuf::from("/etc/azaion/loader.token"))
        );
        assert_eq!(
            (s.max_upload_bytes, s.min_free_bytes, s.max_transfers),
            (Some(1000), Some(0), Some(2))
        );
        assert_eq!(s.unlock_timeout_secs, Some(30));
        assert_eq!(s.allow_insecure_http, Some(true));
        assert_eq!(s.max_connections, Some(8));
        assert_eq!(
            "unix:/run/a.sock".parse::<Listen>().unwrap(),
            Listen::Unix(PathBuf::from("/run/a.sock"))
        );
        assert!("unix:".parse::<Listen>().is_err());
        assert!("localhost:80".parse::<Listen>().is_err());
        assert_eq!(parse_host_list(" A.local, ,b "), vec!["a.local", "b"]);
        for (text, key) in [
            ("max_transfers = 0", "max_transfers"),
            ("allow_insecure_http = 1", "allow_insecure_http"),
            ("unlock_timeout_secs = 0", "unlock_timeout_secs"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
        }
    }

    #[test]
    fn images_may_be_one_comma_separated_string() {
        let s = parse(r#"images = "a:1, b:2""#).unwrap();
        assert_eq!(s.images, Some(vec!["a:1".to_owned(), "b:2".to_owned()]));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            (r#"listen = "nowhere""#, "listen"),
            ("listen = 8080", "listen"),
            ("cache_max_bytes = -1", "cache_max_bytes"),
            (r#"cache_max_bytes = "10G""#, "cache_max_bytes"),
            (r#"runtime = "podman""#, "runtime"),
            ("images = [1, 2]", "images"),
            ("api_connect_timeout_secs = 0", "api_connect_timeout_secs"),
            ("cdn_segment_mib = 0", "cdn_segment_mib"),
            ("cdn_segment_mib = 65", "cdn_segment_mib"),
            ("cdn_parallel_reads = 17", "cdn_parallel_reads"),
            (r#"resource_api_url = "ftp://x""#, "resource_api_url"),
            (r#"model_cache_dir = """#, "model_cache_dir"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
        }
    }

    #[test]
    fn unknown_keys_and_broken_toml_are_refused() {
        let err = parse("listn = \"x\"").unwrap_err().to_string();
        assert!(
            err.contains("unknown key `listn`") && err.contains("listen"),
            "{err}"
        );
        let err = parse("listen = ").unwrap_err().to_string();
        assert!(err.contains("not valid TOML"), "{err}");
    }

    #[test]
    fn flags_override_the_file_which_overrides_the_defaults() {
        let args = ServeArgs {
            listen: Some(Listen::Tcp("127.0.0.1:1".parse().unwrap())),
            cdn_parallel_reads: Some(8),
            ..ServeArgs::default()
        };
        let file = parse(
            r#"
            listen = "127.0.0.1:2"
            runtime = "cli"
            cdn_segment_mib = 16
            cdn_parallel_reads = 2
            "#,
        )
        .unwrap();
        let resolved = args.merge(file, Some(PathBuf::from("/etc/azaion/loader.toml")));
        assert_eq!(resolved.config.listen.to_string(), "127.0.0.1:1");
        assert_eq!(
            resolved.config.cdn_reads,
            CdnReads {
                segment: 16 << 20,
                parallel: 8
            }
        );
        assert_eq!(resolved.origins["cdn_parallel_reads"], Origin::FlagOrEnv);
        assert_eq!(resolved.origins["cdn_segment_mib"], Origin::File);
        assert_eq!(resolved.config.runtime, RuntimeKind::Cli);
        assert_eq!(resolved.config.api_connect_timeout, Duration::from_secs(5));
        assert_eq!(resolved.origins["listen"], Origin::FlagOrEnv);
        assert_eq!(resolved.origins["runtime"], Origin::File);
        assert_eq!(resolved.origins["images_path"], Origin::Default);
        let summary = resolved.summary();
        assert!(
            summary.starts_with("config_file=/etc/azaion/loader.toml"),
            "{summary}"
        );
        assert!(summary.contains("runtime=cli (file)"), "{summary}");
    }

    #[test]
    fn secrets_and_url_credentials_are_masked_when_printed() {
        for (key, value, shown) in [
            ("api_token", "abc", "***"),
            ("s3_secret_key", "abc", "***"),
            ("Password", "abc", "***"),
            (
                "docker_host",
                "tcp://user:pw@host:2376",
                "tcp://***@host:2376",
            ),
            (
                "resource_api_url",
                "https://u:p@api/x@y",
                "https://***@api/x@y",
            ),
            (
                "resource_api_url",
                "https://api.azaion.com",
                "https://api.azaion.com",
            ),
            ("images_path", "/opt/a@b", "/opt/a@b"),
        ] {
            assert_eq!(mask_value(key, value), shown, "{key}");
        }
        let mut config = Config::defaults();
        config.resource_api_url = "https://user:hunter2@api.local".into();
        let printed = format!("{:?}", config.describe());
        assert!(!printed.contains("hunter2"), "{printed}");
    }
}
