//! The CDN configuration document `cdn.yaml` (PROTOCOL §2.6): the S3 endpoint
//! and two key pairs, downloader for reads and uploader for writes.

use serde::Deserialize;

use super::secret::SecretString;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Keys {
    pub access_key: String,
    pub secret_key: SecretString,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdnConfig {
    /// S3 endpoint URL, path-style.
    pub host: String,
    pub region: String,
    pub downloader: S3Keys,
    pub uploader: S3Keys,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CdnConfigError {
    #[error("cdn.yaml is not valid YAML or lacks a field: {0}")]
    Invalid(String),
    #[error("cdn.yaml host is not an http(s) URL")]
    BadHost,
}

#[derive(Deserialize)]
struct RawCdnConfig {
    host: String,
    downloader_access_key: String,
    downloader_access_secret: SecretString,
    uploader_access_key: String,
    uploader_access_secret: SecretString,
    #[serde(default)]
    region: Option<String>,
}

pub const DEFAULT_REGION: &str = "us-east-1";

impl CdnConfig {
    /// Parses the decrypted document. Unknown keys are ignored.
    pub fn parse(yaml: &[u8]) -> Result<Self, CdnConfigError> {
        let raw: RawCdnConfig = serde_yaml_ng::from_slice(yaml)
            .map_err(|e| CdnConfigError::Invalid(redact_yaml_error(&e)))?;
        let host = raw.host.trim().trim_end_matches('/').to_owned();
        if !(host.starts_with("http://") || host.starts_with("https://"))
            || host.len() <= "https://".len()
        {
            return Err(CdnConfigError::BadHost);
        }
        Ok(Self {
            host,
            region: raw
                .region
                .filter(|r| !r.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_REGION.to_owned()),
            downloader: S3Keys {
                access_key: raw.downloader_access_key,
                secret_key: raw.downloader_access_secret,
            },
            uploader: S3Keys {
                access_key: raw.uploader_access_key,
                secret_key: raw.uploader_access_secret,
            },
        })
    }

    /// Renders the document (used by the emulator and tests).
    pub fn to_yaml(&self) -> String {
        format!(
            "host: {}\nregion: {}\ndownloader_access_key: {}\ndownloader_access_secret: {}\nuploader_access_key: {}\nuploader_access_secret: {}\n",
            self.host,
            self.region,
            self.downloader.access_key,
            self.downloader.secret_key.expose(),
            self.uploader.access_key,
            self.uploader.secret_key.expose()
        )
    }
}

/// YAML errors can quote the input, which holds secrets: keep only the position.
fn redact_yaml_error(e: &serde_yaml_ng::Error) -> String {
    match e.location() {
        Some(loc) => format!("error at line {}, column {}", loc.line(), loc.column()),
        None => "missing field or wrong type".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_default_region_and_ignores_unknown_keys() {
        let yaml = b"host: http://127.0.0.1:9000/\ndownloader_access_key: d\ndownloader_access_secret: ds\nuploader_access_key: u\nuploader_access_secret: us\nextra: 1\n";
        let cfg = CdnConfig::parse(yaml).unwrap();
        assert_eq!(cfg.host, "http://127.0.0.1:9000");
        assert_eq!(cfg.region, "us-east-1");
        assert_eq!(cfg.downloader.access_key, "d");
        assert_eq!(cfg.uploader.secret_key.expose(), "us");
        assert_eq!(CdnConfig::parse(cfg.to_yaml().as_bytes()).unwrap(), cfg);
    }

    #[test]
    fn errors_never_quote_secrets() {
        let yaml =
            b"host: http://h\ndownloader_access_key: d\ndownloader_access_secret: [TOPSECRET\n";
        let err = CdnConfig::parse(yaml).unwrap_err().to_string();
        assert!(!err.contains("TOPSECRET"), "{err}");
        assert!(CdnConfig::parse(b"host: ftp://x\ndownloader_access_key: d\ndownloader_access_secret: s\nuploader_access_key: u\nuploader_access_secret: s\n").is_err());
        assert!(CdnConfig::parse(b"\xff\xfe").is_err());
    }
}

/// `cdn.yaml` from arbitrary bytes: never a panic, never a secret in an error.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 512, failure_persistence: None, ..proptest::test_runner::Config::default() })]

        #[test]
        fn cdn_config_parsing_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(config) = CdnConfig::parse(&bytes) {
                prop_assert!(config.host.starts_with("http://") || config.host.starts_with("https://"));
            }
        }

        #[test]
        fn cdn_config_errors_never_quote_a_secret(
            secret in "S3KRIT[A-Za-z0-9]{6}",
            host in prop_oneof![Just("http://127.0.0.1:9000".to_owned()), "\\PC{0,12}"],
            shape in 0usize..8,
            region in prop::option::of("\\PC{0,8}"),
        ) {
            let value = match shape {
                0 => secret.clone(),
                1 => format!("[{secret}"),
                2 => format!("{{{secret}: 1"),
                3 => format!("\"{secret}"),
                4 => format!("[{secret}, 2]"),
                5 => format!("{{a: {secret}}}"),
                6 => format!("'{secret}\n  - x"),
                _ => format!("|\n  {secret}\n bad: ["),
            };
            let mut yaml = format!("host: {host}\ndownloader_access_key: d\ndownloader_access_secret: {value}\nuploader_access_key: u\nuploader_access_secret: {value}\n");
            if let Some(region) = region {
                yaml.push_str(&format!("region: {region}\n"));
            }
            match CdnConfig::parse(yaml.as_bytes()) {
                Ok(config) => prop_assert!(!format!("{config:?}").contains(&secret), "Debug shows the secret"),
                Err(e) => {
                    prop_assert!(!e.to_string().contains(&secret), "{e}");
                    prop_assert!(!format!("{e:?}").contains(&secret), "{e:?}");
                }
            }
        }
    }
}
