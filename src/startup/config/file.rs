//! The optional TOML configuration file. It holds the same settings as the
//! flags ([`ServeArgs`], deserialized with `deny_unknown_fields`): each key
//! is checked on its own so an error names it, unknown keys are refused,
//! and relative paths are taken from the file's folder.

use std::path::{Path, PathBuf};

use serde::Deserialize;

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
    #[error("the config file {path} has an unknown key `{key}` ({known})")]
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
    /// A value that breaks its setting's rule (from a flag or the
    /// environment; in the file it becomes `BadValue`).
    #[error("{key}: {reason}")]
    Setting { key: &'static str, reason: String },
}

/// The keys whose relative paths are taken from the file's folder.
const PATH_KEYS: [&str; 4] = [
    "model_cache_dir",
    "images_path",
    "token_file",
    "credentials_file",
];

/// Reads and checks a TOML configuration file.
pub fn load(path: &Path) -> Result<ServeArgs, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    parse(&text, path, base)
}

/// Parses the text of a file at `path`; relative paths are taken against `base`.
pub fn parse(text: &str, path: &Path, base: &Path) -> Result<ServeArgs, ConfigError> {
    let raw: toml::Table = text.parse().map_err(|e: toml::de::Error| {
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
    let mut table = toml::Table::new();
    for (raw_key, mut value) in raw {
        let key = raw_key.replace('-', "_");
        rebase(&key, &mut value, base);
        // Each key alone first, so that an error names it.
        let one: toml::Table = [(key.clone(), value.clone())].into_iter().collect();
        if let Err(e) = ServeArgs::deserialize(one) {
            let message = e.message().trim().to_owned();
            return Err(match message.strip_prefix("unknown field") {
                Some(rest) => ConfigError::UnknownKey {
                    path: path.to_path_buf(),
                    key: raw_key,
                    known: rest
                        .split_once(", ")
                        .map_or(message.clone(), |(_, known)| known.to_owned()),
                },
                None => ConfigError::BadValue {
                    path: path.to_path_buf(),
                    key: raw_key,
                    reason: message,
                },
            });
        }
        table.insert(key, value);
    }
    let settings = ServeArgs::deserialize(table).map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        message: e.message().trim().to_owned(),
    })?;
    settings.check().map_err(|e| match e {
        ConfigError::Setting { key, reason } => ConfigError::BadValue {
            path: path.to_path_buf(),
            key: key.to_owned(),
            reason,
        },
        other => other,
    })?;
    Ok(settings)
}

/// A relative path in the file means one beside the file.
fn rebase(key: &str, value: &mut toml::Value, base: &Path) {
    let toml::Value::String(text) = value else {
        return;
    };
    if PATH_KEYS.contains(&key) && !text.is_empty() && Path::new(text.as_str()).is_relative() {
        *text = base.join(text.as_str()).display().to_string();
    } else if key == "listen"
        && let Some(socket) = text.strip_prefix("unix:")
        && !socket.is_empty()
        && Path::new(socket).is_relative()
    {
        *text = format!("unix:{}", base.join(socket).display());
    }
}

fn count_lines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|b| **b == b'\n').count()
}
