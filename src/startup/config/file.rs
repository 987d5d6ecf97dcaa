//! The optional TOML configuration file: every key checked, unknown keys
//! refused, relative paths taken from the file's folder.

use std::path::{Path, PathBuf};

use super::*;

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
