//! hardware, status, --help and serve's configuration file.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use azaion_loader::domain::keys::hardware_hash;

use crate::support::{DevStack, free_port, loader, path, run, run_ok};

const COMMANDS: &[&str] = &[
    "serve",
    "dev",
    "encrypt",
    "decrypt",
    "split",
    "join",
    "pack-images",
    "unlock",
    "hardware",
    "status",
    "get",
    "put",
    "prefetch",
    "cache",
    "completions",
    "man",
];

#[test]
fn the_help_of_every_command_contains_an_example() {
    for command in COMMANDS {
        let outcome = run_ok(&[command, "--help"]);
        assert!(
            outcome.stdout.contains("Example"),
            "{command} --help: {}",
            outcome.stdout
        );
    }
}

#[test]
fn completions_name_every_command_for_bash_zsh_and_fish() {
    for (shell, marker) in [
        ("bash", "-o default azaion-loader"),
        ("zsh", "#compdef azaion-loader"),
        ("fish", "complete -c azaion-loader"),
    ] {
        let script = run_ok(&["completions", shell]).stdout;
        assert!(script.contains(marker), "{shell}: {script}");
        for command in COMMANDS {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
    }
    let outcome = run(&["completions", "tcsh"]);
    assert_eq!(outcome.code, Some(2), "{outcome:?}");
    assert!(outcome.stderr.contains("possible values"), "{outcome:?}");
}

#[test]
fn man_prints_the_top_page_or_writes_one_page_per_command() {
    let page = run_ok(&["man"]).stdout;
    assert!(page.contains(".TH azaion-loader 1"), "{page}");
    for command in COMMANDS {
        // roff escapes each hyphen.
        let escaped = format!("azaion\\-loader\\-{}(1)", command.replace('-', "\\-"));
        assert!(page.contains(&escaped), "the top page lacks {escaped}");
    }
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man1");
    run_ok(&["man", "--dir", path(&pages)]);
    let mut expected: Vec<String> = COMMANDS
        .iter()
        .map(|command| format!("azaion-loader-{command}.1"))
        .chain(["azaion-loader.1".to_owned()])
        // `cache` has subcommands: a page each.
        .chain(
            ["ls", "prune", "rm", "verify"]
                .iter()
                .map(|sub| format!("azaion-loader-cache-{sub}.1")),
        )
        .collect();
    expected.sort();
    assert_eq!(crate::support::names_in(&pages), expected);
    let serve = std::fs::read_to_string(pages.join("azaion-loader-serve.1")).unwrap();
    assert!(serve.contains("RESOURCE_API_URL"), "{serve}");
}

#[test]
fn hardware_prints_the_fingerprint_line_and_its_64_character_hash() {
    let outcome = run_ok(&["hardware"]);
    let lines: Vec<&str> = outcome.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", outcome.stdout);
    assert!(lines[0].starts_with("CPU: "), "{}", lines[0]);
    assert!(lines[0].contains(". GPU: ") && lines[0].contains(". DriveSerial: "));
    let hash = lines[1].strip_prefix("hash: ").expect("a hash line");
    assert_eq!(hash.len(), 64, "{hash}");
    assert_eq!(hash, hardware_hash(lines[0]));
    let crypto = lines[2].strip_prefix("crypto: ").expect("a crypto line");
    let backend = azaion_loader::domain::cipher::CryptoBackend::detect();
    assert!(crypto.starts_with(backend.as_str()), "{crypto}");
    // The same device gives the same line on every call.
    assert_eq!(run_ok(&["hardware"]).stdout, outcome.stdout);
}

#[test]
fn status_of_a_dead_port_exits_non_zero_with_a_clear_message() {
    let url = format!("http://127.0.0.1:{}", free_port());

    let outcome = run(&["status", "--url", &url]);

    assert_eq!(outcome.code, Some(1), "{outcome:?}");
    assert!(
        outcome
            .stderr
            .contains(&format!("cannot reach the loader at {url}")),
        "{}",
        outcome.stderr
    );
    assert!(outcome.stderr.contains("refused"), "{}", outcome.stderr);
    assert_eq!(outcome.stdout, "");
}

#[test]
fn status_of_a_running_dev_stack_prints_healthy_idle_and_not_logged_in() {
    let stack = DevStack::start();

    let outcome = run_ok(&["status", "--url", &stack.url()]);

    let line = |name: &str| {
        outcome
            .stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line in {}", outcome.stdout))
            .to_owned()
    };
    assert!(line("health").ends_with("healthy"), "{}", outcome.stdout);
    assert!(line("authenticated").ends_with("no"), "{}", outcome.stdout);
    assert!(line("unlock").contains("idle"), "{}", outcome.stdout);

    let json = run_ok(&["status", "--url", &stack.url(), "--json"]);
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(value["health"]["status"], "healthy");
    assert_eq!(value["unlock"]["state"], "idle");
}

#[test]
fn serve_with_a_bad_config_value_fails_with_a_message_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("listen = \"not an address\"\n", "listen"),
        ("cache_max_bytes = -5\n", "cache_max_bytes"),
        ("runtime = \"podman\"\n", "runtime"),
        ("listne = \"127.0.0.1:1\"\n", "listne"),
    ] {
        let file = dir.path().join("loader.toml");
        std::fs::write(&file, text).unwrap();

        let outcome = run(&["serve", "--config", path(&file)]);

        assert_eq!(outcome.code, Some(2), "{text}: {outcome:?}");
        assert!(
            outcome.stderr.contains(&format!("`{key}`")) && outcome.stderr.contains("loader.toml"),
            "{text}: {}",
            outcome.stderr
        );
    }
    let outcome = run(&["serve", "--config", path(&dir.path().join("missing.toml"))]);
    assert_eq!(outcome.code, Some(2), "{outcome:?}");
    assert!(
        outcome.stderr.contains("cannot read the config file"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn serve_logs_its_effective_configuration_with_flags_over_env_over_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("loader.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1\"\nruntime = \"cli\"\nmodel_cache_dir = \"models\"\napi_request_timeout_secs = 7\nimages = [\"a:1\", \"b:2\"]\ncdn_segment_mib = 8\n",
    )
    .unwrap();
    let mut child = loader()
        .args(["serve", "--config", path(&file), "--listen", "127.0.0.1:0"])
        .env("API_REQUEST_TIMEOUT_SECS", "9")
        .env("CDN_PARALLEL_READS", "2")
        .env("RESOURCE_API_URL", "http://user:hunter2@127.0.0.1:9")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("listening on")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = seen.join("\n");
    let config_line = seen
        .iter()
        .find(|l| l.contains("effective configuration"))
        .unwrap_or_else(|| panic!("no configuration logged: {log}"));
    for expected in [
        "listen=127.0.0.1:0 (flag or env)",
        "runtime=cli (file)",
        "api_request_timeout_secs=9 (flag or env)",
        "api_connect_timeout_secs=5 (default)",
        "cdn_segment_mib=8 (file)",
        "cdn_parallel_reads=2 (flag or env)",
        "images=a:1,b:2 (file)",
        "resource_api_url=http://***@127.0.0.1:9 (flag or env)",
    ] {
        assert!(
            config_line.contains(expected),
            "{expected} missing: {config_line}"
        );
    }
    let cache = dir.path().join("models");
    assert!(config_line.contains(&format!("model_cache_dir={} (file)", cache.display())));
    assert!(!log.contains("hunter2"), "{log}");
    assert!(log.contains("listening on http://127.0.0.1:"), "{log}");
}

#[test]
fn serve_refuses_a_token_file_that_others_can_read_with_exit_2() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("loader.token");
    std::fs::write(&token, "t0ken").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut command = loader();
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .env("LOADER_TOKEN_FILE", &token)
        .env("MODEL_CACHE_DIR", dir.path().join("cache"));
    let outcome = crate::support::run_command(command);
    assert_eq!(outcome.code, Some(2), "{outcome:?}");
    assert!(
        outcome
            .stderr
            .contains("readable or writable by other users"),
        "{outcome:?}"
    );
    assert!(!outcome.stderr.contains("t0ken"), "{outcome:?}");
    assert!(
        !dir.path().join("cache").exists(),
        "it built things before refusing"
    );
}

#[test]
fn serve_refuses_plain_http_to_a_resource_api_off_loopback_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = loader();
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .env("RESOURCE_API_URL", "http://api.example")
        .env("MODEL_CACHE_DIR", dir.path().join("cache"));
    let outcome = crate::support::run_command(command);
    assert_eq!(outcome.code, Some(2), "{outcome:?}");
    assert!(
        outcome.stderr.contains("LOADER_ALLOW_INSECURE_HTTP"),
        "{outcome:?}"
    );
}
