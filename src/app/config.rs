//! The loader's configuration (PROTOCOL §7), read once at start from the
//! environment and optional flags. Never holds or prints a secret.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which container runtime adapter talks to Docker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RuntimeKind {
    /// The Docker Engine API through bollard.
    #[default]
    Bollard,
    /// The `docker` command-line client.
    Cli,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
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
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_RESOURCE_API_URL: &str = "https://api.azaion.com";
pub const DEFAULT_IMAGES_PATH: &str = "/opt/azaion/images.enc";

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
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080))),
            resource_api_url: DEFAULT_RESOURCE_API_URL.to_owned(),
            model_cache_dir: absolute(PathBuf::from("cache")),
            cache_max_bytes: None,
            images_path: PathBuf::from(DEFAULT_IMAGES_PATH),
            expected_images: Vec::new(),
            docker_host: None,
            runtime: RuntimeKind::Bollard,
            api_connect_timeout: Duration::from_secs(5),
            api_request_timeout: Duration::from_secs(60),
        }
    }
}

/// The settings of `serve`, from flags or the environment variables of §7.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to serve on. Keep it on loopback unless clients on other hosts must reach it.
    #[arg(long, env = "LOADER_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Resource API base URL.
    #[arg(long, env = "RESOURCE_API_URL", default_value = DEFAULT_RESOURCE_API_URL)]
    pub resource_api_url: String,
    /// Local cache of big parts [default: ./cache].
    #[arg(long, env = "MODEL_CACHE_DIR")]
    pub model_cache_dir: Option<PathBuf>,
    /// Cache size limit in bytes; least recently used entries are evicted beyond it.
    #[arg(long, env = "MODEL_CACHE_MAX_BYTES")]
    pub cache_max_bytes: Option<u64>,
    /// Encrypted image archive.
    #[arg(long, env = "IMAGES_PATH", default_value = DEFAULT_IMAGES_PATH)]
    pub images_path: PathBuf,
    /// Expected images, comma-separated `repository:tag`.
    #[arg(long, env = "LOADER_IMAGES", default_value = "")]
    pub images: String,
    /// Container runtime endpoint [default: the runtime's own default socket].
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// How to talk to Docker.
    #[arg(long, env = "LOADER_RUNTIME", value_enum, default_value_t = RuntimeKind::Bollard)]
    pub runtime: RuntimeKind,
    /// Seconds allowed to connect to the Resource API.
    #[arg(long, env = "API_CONNECT_TIMEOUT_SECS", default_value_t = 5)]
    pub api_connect_timeout_secs: u64,
    /// Seconds allowed for one Resource API call.
    #[arg(long, env = "API_REQUEST_TIMEOUT_SECS", default_value_t = 60)]
    pub api_request_timeout_secs: u64,
}

impl ServeArgs {
    pub fn into_config(self) -> Config {
        Config {
            listen: self.listen,
            resource_api_url: self.resource_api_url,
            model_cache_dir: absolute(
                self.model_cache_dir
                    .unwrap_or_else(|| PathBuf::from("cache")),
            ),
            cache_max_bytes: self.cache_max_bytes,
            images_path: self.images_path,
            expected_images: parse_image_list(&self.images),
            docker_host: self.docker_host.filter(|h| !h.is_empty()),
            runtime: self.runtime,
            api_connect_timeout: Duration::from_secs(self.api_connect_timeout_secs),
            api_request_timeout: Duration::from_secs(self.api_request_timeout_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_list_ignores_blanks_and_spaces() {
        assert_eq!(parse_image_list(""), Vec::<String>::new());
        assert_eq!(parse_image_list(" a:1 , ,b:2,"), vec!["a:1", "b:2"]);
    }

    #[test]
    fn defaults_follow_the_protocol() {
        let c = Config::defaults();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.resource_api_url, "https://api.azaion.com");
        assert!(c.model_cache_dir.is_absolute() && c.model_cache_dir.ends_with("cache"));
        assert_eq!(c.images_path, PathBuf::from("/opt/azaion/images.enc"));
    }
}
