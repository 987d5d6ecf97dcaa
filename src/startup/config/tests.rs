//! The configuration's tests: the file, the flags over it, the defaults, masking.

use super::*;
use std::path::Path;

fn parse(text: &str) -> Result<ServeArgs, ConfigError> {
    file::parse(
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
fn a_flag_or_env_value_breaking_a_rule_is_refused_with_its_key() {
    let args = ServeArgs {
        cdn_segment_mib: Some(65),
        ..ServeArgs::default()
    };
    let err = args.resolve().unwrap_err().to_string();
    assert!(
        err.starts_with("cdn_segment_mib: 65 is outside 1-64"),
        "{err}"
    );
    let args = ServeArgs {
        unlock_timeout_secs: Some("0s".parse().unwrap()),
        ..ServeArgs::default()
    };
    assert!(
        args.resolve()
            .unwrap_err()
            .to_string()
            .starts_with("unlock_timeout_secs")
    );
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
    assert_eq!(
        s.images,
        Some(List(vec!["a:1".to_owned(), "b:2".to_owned()]))
    );
    assert_eq!(s.runtime, Some(RuntimeKind::Cli));
    assert_eq!(s.cache_max_bytes, Some(Size(1000)));
    assert_eq!(
        s.api_request_timeout_secs,
        Some(Secs(Duration::from_secs(30)))
    );
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
        Some(List(vec!["Loader".to_owned(), "gs-1.local".to_owned()]))
    );
    // Host names are compared lower-cased.
    let merged = ServeArgs::default().merge(s.clone(), None);
    assert_eq!(
        merged.config.limits.allowed_hosts,
        vec!["loader", "gs-1.local"]
    );
    assert_eq!(
        s.token_file,
        Some(PathBuf::from("/etc/azaion/loader.token"))
    );
    assert_eq!(
        (s.max_upload_bytes, s.min_free_bytes, s.max_transfers),
        (Some(Size(1000)), Some(Size(0)), Some(2))
    );
    assert_eq!(s.unlock_timeout_secs, Some(Secs(Duration::from_secs(30))));
    assert_eq!(s.allow_insecure_http, Some(true));
    assert_eq!(s.max_connections, Some(8));
    assert_eq!(
        "unix:/run/a.sock".parse::<Listen>().unwrap(),
        Listen::Unix(PathBuf::from("/run/a.sock"))
    );
    assert!("unix:".parse::<Listen>().is_err());
    assert!("localhost:80".parse::<Listen>().is_err());
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
    assert_eq!(
        s.images,
        Some(List(vec!["a:1".to_owned(), "b:2".to_owned()]))
    );
}

#[test]
fn sizes_and_durations_take_human_forms_in_the_file() {
    let s = parse(
        r#"
        cache_max_bytes = "20G"
        min_free_bytes = "512MiB"
        unlock_timeout_secs = "2h"
        api_request_timeout_secs = "1m 30s"
        "#,
    )
    .unwrap();
    let config = ServeArgs::default().merge(s, None).config;
    assert_eq!(config.cache_max_bytes, Some(20_000_000_000));
    assert_eq!(config.limits.min_free_bytes, 512 << 20);
    assert_eq!(config.limits.unlock_timeout, Duration::from_secs(7200));
    assert_eq!(config.api_request_timeout, Duration::from_secs(90));
}

#[test]
fn bad_values_name_their_key() {
    for (text, key) in [
        (r#"listen = "nowhere""#, "listen"),
        ("listen = 8080", "listen"),
        ("cache_max_bytes = -1", "cache_max_bytes"),
        (r#"cache_max_bytes = "10 lightyears""#, "cache_max_bytes"),
        (r#"unlock_timeout_secs = "soon""#, "unlock_timeout_secs"),
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
        err.contains("unknown key `listn`") && err.contains("`listen`"),
        "{err}"
    );
    let err = parse("config = \"other.toml\"").unwrap_err().to_string();
    assert!(err.contains("unknown key `config`"), "{err}");
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
