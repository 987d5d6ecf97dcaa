//! The `serve` settings from flags and the environment (clap), laid over a
//! configuration file and the defaults, with where each value came from.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use super::file;
use super::values::{List, Secs, Size};
use super::*;
use crate::app::ranged::CdnReads;

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A `serve` flag or its environment variable.
    FlagOrEnv,
    File,
    /// systemd's `LoadCredential=` (`$CREDENTIALS_DIRECTORY`).
    Systemd,
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FlagOrEnv => "flag or env",
            Self::File => "file",
            Self::Systemd => "systemd credential",
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

/// Every setting of `serve` (and `unlock`), each written once: its flag,
/// its environment variable (docs/PROTOCOL.md §7), its help, and its key in
/// the TOML file (`--config`, the same names; `deny_unknown_fields`).
///
/// Every value is optional so that one layer can fill what another leaves
/// out: flags over the environment (clap), over the file, over the
/// defaults, in [`ServeArgs::resolve`]. Sizes take `20G`/`512MiB` or bytes;
/// durations `30s`/`2h` or seconds.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with any of the settings below, under their flag names
    /// (`resource_api_url = "..."`). Flags and environment override it;
    /// relative paths in it are taken from its folder.
    #[arg(long, env = "LOADER_CONFIG", value_name = "FILE")]
    #[serde(skip)]
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
    /// Cache size limit (`20G`, `512MiB` or bytes); least recently used
    /// entries are evicted beyond it [default: unlimited].
    #[arg(long, env = "MODEL_CACHE_MAX_BYTES")]
    pub cache_max_bytes: Option<Size>,
    /// Encrypted image archive [default: /opt/azaion/images.enc].
    #[arg(long, env = "IMAGES_PATH")]
    pub images_path: Option<PathBuf>,
    /// Expected images, comma-separated `repository:tag` [default: none].
    #[arg(long, env = "LOADER_IMAGES")]
    pub images: Option<List>,
    /// Container runtime endpoint [default: the runtime's own default socket].
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// How to talk to Docker [default: bollard].
    #[arg(long, env = "LOADER_RUNTIME", value_enum)]
    pub runtime: Option<RuntimeKind>,
    /// Time allowed to connect to the Resource API (`5s`, or seconds) [default: 5].
    #[arg(long, env = "API_CONNECT_TIMEOUT_SECS")]
    pub api_connect_timeout_secs: Option<Secs>,
    /// Time allowed for one Resource API call (`1m`, or seconds) [default: 60].
    #[arg(long, env = "API_REQUEST_TIMEOUT_SECS")]
    pub api_request_timeout_secs: Option<Secs>,
    /// MiB per ranged GET when a big part comes from the CDN, 1-64 [default: 4].
    #[arg(long, env = "CDN_SEGMENT_MIB")]
    pub cdn_segment_mib: Option<u64>,
    /// Ranged GETs in flight for one big part, 1-16 (1: one plain GET) [default: 4].
    #[arg(long, env = "CDN_PARALLEL_READS")]
    pub cdn_parallel_reads: Option<u64>,
    /// Extra host names a request's Host header may carry, comma-separated
    /// (localhost, 127.0.0.1, [::1] and the listen host always may) [default: none].
    #[arg(long, env = "LOADER_ALLOWED_HOSTS")]
    pub allowed_hosts: Option<List>,
    /// File holding the client token every request but `GET /health` must
    /// carry as `Authorization: Bearer`; must not be readable by others [default: none].
    #[arg(long, env = "LOADER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Largest upload body (`64GiB`, or bytes; 413 beyond) [default: 64GiB].
    #[arg(long, env = "LOADER_MAX_UPLOAD_BYTES")]
    pub max_upload_bytes: Option<Size>,
    /// Free space the cache and upload spools leave on their file system
    /// (`1GiB`, or bytes) [default: 1GiB].
    #[arg(long, env = "MODEL_CACHE_MIN_FREE_BYTES")]
    pub min_free_bytes: Option<Size>,
    /// CDN downloads and uploads in progress at once, 1-4096 [default: 16].
    #[arg(long, env = "LOADER_MAX_TRANSFERS")]
    pub max_transfers: Option<u64>,
    /// Time an unlock may take before it ends in `error` (`2h`, or seconds) [default: 7200].
    #[arg(long, env = "UNLOCK_TIMEOUT_SECS")]
    pub unlock_timeout_secs: Option<Secs>,
    /// Allow `http://` to a Resource API that is not on loopback (the password travels in clear).
    #[arg(long, env = "LOADER_ALLOW_INSECURE_HTTP")]
    pub allow_insecure_http: Option<bool>,
    /// Connections served at once, 1-65536 [default: 512].
    #[arg(long, env = "LOADER_MAX_CONNECTIONS")]
    pub max_connections: Option<u64>,
    /// File with `email=` and `password=` lines: the loader logs in at start
    /// and retries with backoff until it works (`GET /ready` shows how it
    /// goes). Must not be readable by others. Without it, systemd's
    /// `LoadCredential=login:PATH` is used when given [default: none].
    #[arg(long, env = "LOADER_CREDENTIALS_FILE")]
    pub credentials_file: Option<PathBuf>,
}

/// `value` within `low..=high`, or why not.
fn within(
    key: &'static str,
    value: Option<u64>,
    (low, high): (u64, u64),
) -> Result<(), ConfigError> {
    match value {
        Some(v) if v < low || v > high => Err(ConfigError::Setting {
            key,
            reason: format!("{v} is outside {low}-{high}"),
        }),
        _ => Ok(()),
    }
}

fn positive(key: &'static str, value: Option<Secs>) -> Result<(), ConfigError> {
    match value {
        Some(Secs(d)) if d.is_zero() => Err(ConfigError::Setting {
            key,
            reason: "must be more than 0 seconds".to_owned(),
        }),
        _ => Ok(()),
    }
}

impl ServeArgs {
    /// The rules a value must keep, wherever it came from.
    pub fn check(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.resource_api_url
            && !url.is_empty()
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::Setting {
                key: "resource_api_url",
                reason: format!(
                    "`{}` is not an http:// or https:// URL",
                    mask_url_userinfo(url)
                ),
            });
        }
        if self
            .model_cache_dir
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(ConfigError::Setting {
                key: "model_cache_dir",
                reason: "must not be empty".to_owned(),
            });
        }
        positive("api_connect_timeout_secs", self.api_connect_timeout_secs)?;
        positive("api_request_timeout_secs", self.api_request_timeout_secs)?;
        positive("unlock_timeout_secs", self.unlock_timeout_secs)?;
        within(
            "cdn_segment_mib",
            self.cdn_segment_mib,
            CDN_SEGMENT_MIB_RANGE,
        )?;
        within(
            "cdn_parallel_reads",
            self.cdn_parallel_reads,
            CDN_PARALLEL_READS_RANGE,
        )?;
        within("max_transfers", self.max_transfers, MAX_TRANSFERS_RANGE)?;
        within(
            "max_connections",
            self.max_connections,
            MAX_CONNECTIONS_RANGE,
        )?;
        Ok(())
    }
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
    /// Flags over environment (clap) over the `--config` file over the defaults.
    pub fn resolve(self) -> Result<Resolved, ConfigError> {
        self.check()?;
        let mut resolved = match self.config.clone() {
            Some(path) => {
                let file = file::load(&path)?;
                self.merge(file, Some(path))
            }
            None => self.merge(ServeArgs::default(), None),
        };
        if resolved.config.credentials_file.is_none()
            && let Some(path) = credentials::from_systemd(
                std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            )
        {
            resolved.config.credentials_file = Some(path);
            resolved.origins.insert("credentials_file", Origin::Systemd);
        }
        Ok(resolved)
    }

    pub(super) fn merge(self, file: ServeArgs, file_path: Option<PathBuf>) -> Resolved {
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
            self.cache_max_bytes.map(|s| Some(s.0)),
            file.cache_max_bytes.map(|s| Some(s.0)),
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
            self.images.map(|l| l.0),
            file.images.map(|l| l.0),
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
            self.api_connect_timeout_secs.map(|s| s.0),
            file.api_connect_timeout_secs.map(|s| s.0),
            defaults.api_connect_timeout,
        );
        let request = pick(
            o,
            "api_request_timeout_secs",
            self.api_request_timeout_secs.map(|s| s.0),
            file.api_request_timeout_secs.map(|s| s.0),
            defaults.api_request_timeout,
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
            self.allowed_hosts.map(|l| lowercase(l.0)),
            file.allowed_hosts.map(|l| lowercase(l.0)),
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
        let credentials_file = pick(
            o,
            "credentials_file",
            self.credentials_file.map(Some),
            file.credentials_file.map(Some),
            None,
        )
        .map(absolute);
        let d = Limits::default();
        let max_upload_bytes = pick(
            o,
            "max_upload_bytes",
            self.max_upload_bytes.map(|s| s.0),
            file.max_upload_bytes.map(|s| s.0),
            d.max_upload_bytes,
        );
        let min_free_bytes = pick(
            o,
            "min_free_bytes",
            self.min_free_bytes.map(|s| s.0),
            file.min_free_bytes.map(|s| s.0),
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
            self.unlock_timeout_secs.map(|s| s.0),
            file.unlock_timeout_secs.map(|s| s.0),
            d.unlock_timeout,
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
                api_connect_timeout: connect,
                api_request_timeout: request,
                cdn_reads: CdnReads {
                    segment: segment_mib << 20,
                    // At most 16, from the parser's range.
                    parallel: usize::try_from(parallel).unwrap_or(1),
                },
                credentials_file,
                limits: Limits {
                    allowed_hosts,
                    token_file,
                    max_upload_bytes,
                    min_free_bytes,
                    // Both bounded by their parsers' ranges.
                    max_transfers: usize::try_from(max_transfers).unwrap_or(1),
                    unlock_timeout,
                    allow_insecure_http,
                    max_connections: usize::try_from(max_connections).unwrap_or(1),
                },
            },
            file: file_path,
            origins,
        }
    }
}

fn lowercase(hosts: Vec<String>) -> Vec<String> {
    hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect()
}
