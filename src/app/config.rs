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
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// Makes a cache path absolute against the working directory without touching the disk.
pub fn absolute(path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        path
    } else {
        std::env::current_dir().map(|cwd| cwd.join(&path)).unwrap_or(path)
    }
}

impl Config {
    /// The defaults of §7, for a given working directory's `cache` folder.
    pub fn defaults() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080))),
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
