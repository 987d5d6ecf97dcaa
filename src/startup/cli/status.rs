//! `status`: asks a running loader for `/health`, `/status` and
//! `/unlock/status` and prints the answers for a person (or as JSON). It only
//! reads: it never logs in or starts anything, and exits non-zero when the
//! loader cannot be reached or does not answer healthy.

use std::time::Duration;

use serde_json::{Value, json};

use super::CliError;
use super::progress::{human_bytes, human_duration};

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Base URL of the running loader [default: from --listen].
    #[arg(long, env = "LOADER_URL")]
    url: Option<String>,
    /// The loader's listen setting, as `serve` takes it: an address, or
    /// `unix:/path/loader.sock` (used when no --url is given) [default:
    /// the --config file's, else 127.0.0.1:8080].
    #[arg(long, env = "LOADER_LISTEN")]
    listen: Option<crate::startup::config::Listen>,
    /// The client token's file, as `serve` takes it (sent as `Authorization: Bearer`).
    #[arg(long, env = "LOADER_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// `serve`'s TOML configuration file: its `listen` and `token_file` are
    /// used unless given above.
    #[arg(long, env = "LOADER_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Exit non-zero unless the loader is ready to serve a model
    /// (`GET /ready`), not only alive (for a healthcheck that clients wait on).
    #[arg(long)]
    ready: bool,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_secs: u64,
    /// Print the three answers as one JSON object instead.
    #[arg(long)]
    json: bool,
}

/// How a client command reaches a running loader: base URL, transport and token.
pub struct LoaderEndpoint {
    /// `http://host:port`, or `http://localhost` over a Unix socket.
    pub base: String,
    /// Shown to the user: the URL or `unix:PATH`.
    pub shown: String,
    pub client: reqwest::Client,
}

/// How long a client waits: for each whole answer (`status`, `cache`), or
/// only to connect and then between two reads (a transfer of any length).
#[derive(Debug, Clone, Copy)]
pub enum Waits {
    Whole(Duration),
    Transfer { connect: Duration, idle: Duration },
}

/// Builds the client for `url` (when given) or the `listen` setting, with
/// the token from `token_file` on every request.
pub fn endpoint(
    url: Option<&str>,
    listen: &crate::startup::config::Listen,
    token_file: Option<&std::path::Path>,
    waits: Waits,
) -> Result<LoaderEndpoint, CliError> {
    use crate::startup::config::Listen;
    // reqwest is built without a crypto provider (one TLS stack for the crate): add ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = match waits {
        Waits::Whole(timeout) => reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout),
        Waits::Transfer { connect, idle } => reqwest::Client::builder()
            .connect_timeout(connect)
            .read_timeout(idle),
    };
    let (base, shown) = match (url, listen) {
        (Some(url), _) => {
            let base = url.trim_end_matches('/').to_owned();
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                return Err(CliError::Usage(format!(
                    "--url {base} is not an http:// or https:// URL"
                )));
            }
            (base.clone(), base)
        }
        (None, Listen::Tcp(addr)) => {
            // A wildcard listen address is reached on loopback.
            let ip = if addr.ip().is_unspecified() {
                if addr.is_ipv4() {
                    std::net::IpAddr::from([127, 0, 0, 1])
                } else {
                    std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
                }
            } else {
                addr.ip()
            };
            let base = format!("http://{}", std::net::SocketAddr::new(ip, addr.port()));
            (base.clone(), base)
        }
        (None, Listen::Unix(path)) => {
            builder = builder.unix_socket(path.clone());
            (
                "http://localhost".to_owned(),
                format!("unix:{}", path.display()),
            )
        }
    };
    if let Some(path) = token_file {
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            CliError::Usage(format!(
                "cannot read the token file {}: {e}",
                path.display()
            ))
        })?);
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", text.trim()))
            .map_err(|_| {
                CliError::Usage(format!(
                    "the token file {} holds characters a header cannot carry",
                    path.display()
                ))
            })?;
        value.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    let client = builder
        .build()
        .map_err(|e| CliError::Failed(format!("cannot build an HTTP client: {e}")))?;
    Ok(LoaderEndpoint {
        base,
        shown,
        client,
    })
}

/// The error and its causes on one line (reqwest's own text names only the URL).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The innermost cause (`Connection refused (os error 111)`), which says it best.
pub fn root_cause(error: &dyn std::error::Error) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

async fn get_json(
    client: &reqwest::Client,
    base: &str,
    shown: &str,
    path: &str,
) -> Result<Value, CliError> {
    let url = format!("{base}{path}");
    let response = client.get(&url).send().await.map_err(|e| {
        let why = if e.is_timeout() {
            "no answer in time".to_owned()
        } else if e.is_connect() {
            root_cause(&e)
        } else {
            chain(&e)
        };
        CliError::Unreachable(format!(
            "cannot reach the loader at {shown}: {why} (is it running? `azaion-loader serve` starts it)"
        ))
    })?;
    let status = response.status();
    let body = response.text().await.map_err(|e| {
        CliError::Unreachable(format!("{url}: the answer broke off: {}", chain(&e)))
    })?;
    if !status.is_success() {
        let detail = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| body.chars().take(200).collect());
        let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
            " (set LOADER_TOKEN_FILE or --token-file to the loader's token file)"
        } else {
            ""
        };
        return Err(CliError::Failed(format!(
            "{shown}{path} answered {status}: {detail}{hint}"
        )));
    }
    serde_json::from_str(&body)
        .map_err(|e| CliError::Failed(format!("{url} did not answer JSON: {e}")))
}

/// The listen address and token file as `serve` resolves them: flags and
/// environment over the `--config` file over the defaults.
pub fn resolve_listen(
    listen: Option<crate::startup::config::Listen>,
    token_file: Option<std::path::PathBuf>,
    config: Option<std::path::PathBuf>,
) -> Result<(crate::startup::config::Listen, Option<std::path::PathBuf>), CliError> {
    let args = crate::startup::config::ServeArgs {
        config,
        listen,
        token_file,
        ..Default::default()
    };
    let resolved = args
        .resolve()
        .map_err(|e| CliError::Usage(e.to_string()))?
        .config;
    Ok((resolved.listen, resolved.limits.token_file))
}

pub async fn run(args: StatusArgs) -> Result<(), CliError> {
    let (listen, token_file) = resolve_listen(args.listen, args.token_file, args.config)?;
    let LoaderEndpoint {
        base,
        shown,
        client,
    } = endpoint(
        args.url.as_deref(),
        &listen,
        token_file.as_deref(),
        Waits::Whole(Duration::from_secs(args.timeout_secs)),
    )?;
    let health = get_json(&client, &base, &shown, "/health").await?;
    let status = get_json(&client, &base, &shown, "/status").await?;
    let unlock = get_json(&client, &base, &shown, "/unlock/status").await?;
    let ready = get_ready(&client, &base, &shown).await?;
    let base = shown;
    if args.json {
        println!(
            "{}",
            json!({"url": base, "health": health, "status": status, "unlock": unlock, "ready": ready})
        );
    } else {
        print!("{}", render(&base, &health, &status, &unlock, &ready));
    }
    if health.get("status").and_then(Value::as_str) != Some("healthy") {
        return Err(CliError::Failed(format!(
            "the loader at {base} is not healthy"
        )));
    }
    if args.ready && ready.get("ready").and_then(Value::as_bool) != Some(true) {
        return Err(CliError::Failed(format!(
            "the loader at {base} is not ready: {}",
            missing_line(&ready)
        )));
    }
    Ok(())
}

/// `GET /ready`: its body whether 200 or 503 (both are answers).
async fn get_ready(client: &reqwest::Client, base: &str, shown: &str) -> Result<Value, CliError> {
    let response = client
        .get(format!("{base}/ready"))
        .send()
        .await
        .map_err(|e| CliError::Unreachable(format!("{shown}/ready: {}", chain(&e))))?;
    let status = response.status();
    if status == reqwest::StatusCode::SERVICE_UNAVAILABLE || status.is_success() {
        response
            .json()
            .await
            .map_err(|e| CliError::Failed(format!("{shown}/ready did not answer JSON: {e}")))
    } else {
        Err(CliError::Failed(format!("{shown}/ready answered {status}")))
    }
}

/// What `/ready` found missing, on one line: `login (not logged in: ...); cache (...)`.
fn missing_line(ready: &Value) -> String {
    ready
        .get("missing")
        .and_then(Value::as_array)
        .map(|missing| {
            missing
                .iter()
                .map(|m| format!("{} ({})", text(m, "check"), text(m, "detail")))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("?")
}

/// The answers as aligned `name  value` lines.
pub fn render(base: &str, health: &Value, status: &Value, unlock: &Value, ready: &Value) -> String {
    let authenticated = match status.get("authenticated").and_then(Value::as_bool) {
        Some(true) => "yes",
        Some(false) => "no",
        None => "?",
    };
    let progress = unlock.get("progress");
    let number = |key: &str| {
        progress
            .and_then(|p| p.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let (done, total, elapsed_ms) = (
        number("bytes_done"),
        number("bytes_total"),
        number("phase_elapsed_ms"),
    );
    let mut unlock_line = text(unlock, "state").to_owned();
    if total > 0 && unlock_line == "decrypting" {
        let percent = u128::from(done.min(total)) * 100 / u128::from(total);
        unlock_line.push_str(&format!(", {percent}% of {}", human_bytes(total)));
    }
    unlock_line.push_str(&format!(
        " (for {})",
        human_duration(Duration::from_millis(elapsed_ms))
    ));
    let ready_line = match ready.get("ready").and_then(Value::as_bool) {
        Some(true) => "yes".to_owned(),
        Some(false) => format!("no: {}", missing_line(ready)),
        None => "?".to_owned(),
    };
    let mut lines = vec![
        ("loader", base.to_owned()),
        ("health", text(health, "status").to_owned()),
        ("ready", ready_line),
        ("authenticated", authenticated.to_owned()),
        ("model cache", text(status, "modelCacheDir").to_owned()),
        ("unlock", unlock_line),
    ];
    if let Some(error) = unlock.get("error").and_then(Value::as_str) {
        lines.push(("unlock error", error.to_owned()));
    }
    lines
        .into_iter()
        .map(|(name, value)| format!("{name:<14} {value}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_healthy_idle_loader_reads_as_aligned_lines() {
        let text = render(
            "http://127.0.0.1:8080",
            &json!({"status": "healthy"}),
            &json!({"status": "healthy", "authenticated": false, "modelCacheDir": "/c"}),
            &json!({"state": "idle", "error": null, "progress": {"bytes_done": 0, "bytes_total": 0, "phase_elapsed_ms": 1500}}),
            &json!({"ready": false, "missing": [{"check": "login", "detail": "not logged in"}]}),
        );
        assert_eq!(
            text,
            "loader         http://127.0.0.1:8080\n\
             health         healthy\n\
             ready          no: login (not logged in)\n\
             authenticated  no\n\
             model cache    /c\n\
             unlock         idle (for 1s)\n"
        );
    }

    #[test]
    fn a_decrypting_unlock_shows_its_share_and_an_error_its_reason() {
        let text = render(
            "u",
            &json!({"status": "healthy"}),
            &json!({"authenticated": true}),
            &json!({"state": "decrypting", "progress": {"bytes_done": 512, "bytes_total": 2048, "phase_elapsed_ms": 61000}}),
            &json!({"ready": true, "missing": []}),
        );
        assert!(text.contains("ready          yes\n"), "{text}");
        assert!(
            text.contains("unlock         decrypting, 25% of 2.0 KiB (for 1m01s)"),
            "{text}"
        );
        let text = render(
            "u",
            &json!({}),
            &json!({}),
            &json!({"state": "error", "error": "login refused"}),
            &json!({}),
        );
        assert!(text.contains("unlock error   login refused"), "{text}");
    }
}
