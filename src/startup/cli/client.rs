//! Client commands for a running loader (issue 13): `get`, `put`,
//! `prefetch` and `cache ls|rm|prune|verify`. They reach it as `status`
//! does (`--url`, or serve's listen setting and token file, from flags, the
//! environment or `--config`), show progress with rate and ETA on a
//! terminal (plain lines otherwise), and print an error as one line with the
//! loader's `detail`. `get` writes its file under a temporary name and
//! renames it only once complete: an interrupted or failed `get` leaves no
//! partial file.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use serde_json::{Value, json};

use super::CliError;
use super::files::Output;
use super::progress::{Progress, ProgressMode, human_bytes, human_duration};
use super::status::{LoaderEndpoint, Waits, chain, endpoint, resolve_listen, root_cause};
use crate::domain::names::{Folder, ResourceName};
use crate::startup::config::{Listen, Secs, Size};

/// How to reach the running loader (the same settings as `status`).
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Base URL of the running loader [default: from --listen].
    #[arg(long, env = "LOADER_URL")]
    url: Option<String>,
    /// The loader's listen setting, as `serve` takes it: an address, or
    /// `unix:/path/loader.sock` [default: the --config file's, else 127.0.0.1:8080].
    #[arg(long, env = "LOADER_LISTEN")]
    listen: Option<Listen>,
    /// The client token's file, as `serve` takes it.
    #[arg(long, env = "LOADER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// `serve`'s TOML configuration file: its `listen` and `token_file` are
    /// used unless given above.
    #[arg(long, env = "LOADER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConnectArgs {
    fn connect(&self, waits: Waits) -> Result<LoaderEndpoint, CliError> {
        let (listen, token_file) = resolve_listen(
            self.listen.clone(),
            self.token_file.clone(),
            self.config.clone(),
        )?;
        endpoint(self.url.as_deref(), &listen, token_file.as_deref(), waits)
    }
}

/// A transfer waits 10 s to connect, then at most 5 min between two reads.
const TRANSFER: Waits = Waits::Transfer {
    connect: Duration::from_secs(10),
    idle: Duration::from_secs(300),
};
/// A cache listing or change answers within a minute.
const QUICK: Waits = Waits::Whole(Duration::from_secs(60));

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The resource, as FOLDER/NAME.
    resource: String,
    /// Where to write it (`-`: stdout) [default: NAME in the current folder].
    #[arg(short, long)]
    output: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct PutArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The resource, as FOLDER/NAME.
    resource: String,
    /// The file to upload.
    file: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct PrefetchArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The resources, as FOLDER/NAME.
    #[arg(required = true)]
    resources: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct CacheArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    action: CacheAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum CacheAction {
    /// List the cached big parts, their size and last use.
    Ls,
    /// Remove cached big parts (the next load reads them from the CDN again).
    Rm {
        /// The resources, as FOLDER/NAME.
        #[arg(required = true)]
        resources: Vec<String>,
    },
    /// Remove entries unused for a while, then the least recently used down to a size.
    Prune {
        /// Keep at most this much (`20G`, `512MiB` or bytes).
        #[arg(long)]
        max_bytes: Option<Size>,
        /// Remove what was not used for this long (`7d`, `12h`, or seconds).
        #[arg(long)]
        unused_for: Option<Secs>,
    },
    /// Re-read every entry against its checksums; damaged ones are removed.
    Verify,
}

/// `FOLDER/NAME`, checked as the loader checks them (§5).
fn parse_resource(text: &str) -> Result<(Folder, ResourceName), CliError> {
    let (folder, name) = text.split_once('/').ok_or_else(|| {
        CliError::Usage(format!(
            "`{text}` is not FOLDER/NAME (for example models/detector.onnx)"
        ))
    })?;
    let folder = Folder::parse(folder).map_err(|e| CliError::Usage(format!("{text}: {e}")))?;
    let name = ResourceName::parse(name).map_err(|e| CliError::Usage(format!("{text}: {e}")))?;
    Ok((folder, name))
}

/// The request could not be sent or its answer broke off.
fn unreachable(shown: &str, e: &reqwest::Error) -> CliError {
    let why = if e.is_timeout() {
        "no answer in time".to_owned()
    } else if e.is_connect() {
        root_cause(e)
    } else {
        chain(e)
    };
    CliError::Unreachable(format!("cannot reach the loader at {shown}: {why}"))
}

/// A non-success answer as one line with the loader's `detail`.
async fn refused(what: &str, response: reqwest::Response) -> CliError {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(200).collect());
    let hint = match status.as_u16() {
        401 if detail.contains("token") => " (set LOADER_TOKEN_FILE or --token-file)",
        401 => " (log in first: POST /login, or LOADER_CREDENTIALS_FILE)",
        _ => "",
    };
    CliError::Failed(format!("{what}: {status}: {detail}{hint}"))
}

pub async fn get(args: GetArgs, mode: ProgressMode) -> Result<(), CliError> {
    let (folder, name) = parse_resource(&args.resource)?;
    let target = args.output.unwrap_or_else(|| PathBuf::from(name.as_str()));
    let loader = args.connect.connect(TRANSFER)?;
    let response = loader
        .client
        .post(format!("{}/load/{name}", loader.base))
        .json(&json!({"folder": folder.as_str()}))
        .send()
        .await
        .map_err(|e| unreachable(&loader.shown, &e))?;
    if !response.status().is_success() {
        return Err(refused(&format!("get {folder}/{name}"), response).await);
    }
    // Created only once the loader said yes: a refusal leaves nothing behind.
    let mut output = Output::create(&target)?;
    let mut progress = Progress::new(format!("{folder}/{name}"), response.content_length(), mode);
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            CliError::Failed(format!(
                "get {folder}/{name}: the transfer broke off: {}",
                chain(&e)
            ))
        })?;
        output.write_all(&chunk)?;
        progress.advance(chunk.len() as u64);
    }
    output.commit()?;
    progress.finish();
    Ok(())
}

pub async fn put(args: PutArgs, mode: ProgressMode) -> Result<(), CliError> {
    let (folder, name) = parse_resource(&args.resource)?;
    let file = tokio::fs::File::open(&args.file)
        .await
        .map_err(|e| CliError::io(format!("opening {}", args.file.display()), e))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| CliError::io(format!("reading {}", args.file.display()), e))?
        .len();
    let loader = args.connect.connect(TRANSFER)?;
    let progress = std::sync::Arc::new(std::sync::Mutex::new(Progress::new(
        format!("{folder}/{name}"),
        Some(len),
        mode,
    )));
    let counted = progress.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            counted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .advance(chunk.len() as u64);
        }
    });
    // `folder` first: the loader streams the file without holding it.
    let form = reqwest::multipart::Form::new()
        .text("folder", folder.as_str().to_owned())
        .part(
            "data",
            reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), len)
                .file_name(name.as_str().to_owned()),
        );
    let response = loader
        .client
        .post(format!("{}/upload/{name}", loader.base))
        .multipart(form)
        .send()
        .await
        .map_err(|e| unreachable(&loader.shown, &e))?;
    if !response.status().is_success() {
        return Err(refused(&format!("put {folder}/{name}"), response).await);
    }
    if let Ok(progress) = std::sync::Arc::try_unwrap(progress) {
        progress
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .finish();
    }
    Ok(())
}

pub async fn prefetch(args: PrefetchArgs, mode: ProgressMode) -> Result<(), CliError> {
    let resources = args
        .resources
        .iter()
        .map(|r| parse_resource(r))
        .collect::<Result<Vec<_>, _>>()?;
    let loader = args.connect.connect(TRANSFER)?;
    let mut failed = Vec::new();
    for (folder, name) in resources {
        if let Err(e) = prefetch_one(&loader, &folder, &name, mode).await {
            eprintln!("azaion-loader: {e}");
            failed.push(format!("{folder}/{name}"));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "{} of the resources were not prefetched: {}",
            failed.len(),
            failed.join(", ")
        )))
    }
}

async fn prefetch_one(
    loader: &LoaderEndpoint,
    folder: &Folder,
    name: &ResourceName,
    mode: ProgressMode,
) -> Result<(), CliError> {
    let what = format!("prefetch {folder}/{name}");
    let response = loader
        .client
        .post(format!("{}/prefetch/{name}", loader.base))
        .json(&json!({"folder": folder.as_str()}))
        .send()
        .await
        .map_err(|e| unreachable(&loader.shown, &e))?;
    if !response.status().is_success() {
        return Err(refused(&what, response).await);
    }
    let mut progress = Progress::new(format!("{folder}/{name}"), None, mode);
    let mut total_known = false;
    let mut pending = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            CliError::Failed(format!("{what}: the answer broke off: {}", chain(&e)))
        })?;
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line: Value = serde_json::from_slice(&line).map_err(|e| {
                CliError::Failed(format!("{what}: an answer line is not JSON: {e}"))
            })?;
            let number = |key: &str| line.get(key).and_then(Value::as_u64).unwrap_or(0);
            if !total_known {
                progress.set_total(number("bytes_total"));
                total_known = true;
            }
            progress.set_position(number("bytes_done"));
            match line.get("state").and_then(Value::as_str) {
                Some("fetching") => {}
                Some("done") => {
                    progress.finish();
                    return Ok(());
                }
                Some("cached") => {
                    progress.note(&format!("{folder}/{name}: already in the cache"));
                    progress.finish();
                    return Ok(());
                }
                _ => {
                    let detail = line.get("detail").and_then(Value::as_str).unwrap_or("?");
                    return Err(CliError::Failed(format!("{what}: {detail}")));
                }
            }
        }
    }
    Err(CliError::Failed(format!(
        "{what}: the answer ended before the outcome"
    )))
}

pub async fn cache(args: CacheArgs) -> Result<(), CliError> {
    let loader = args.connect.connect(match args.action {
        // Reads every byte of the cache.
        CacheAction::Verify => TRANSFER,
        _ => QUICK,
    })?;
    let send = |request: reqwest::RequestBuilder| async {
        request
            .send()
            .await
            .map_err(|e| unreachable(&loader.shown, &e))
    };
    match args.action {
        CacheAction::Ls => {
            let response = send(loader.client.get(format!("{}/cache", loader.base))).await?;
            if !response.status().is_success() {
                return Err(refused("cache ls", response).await);
            }
            let body: Value = response
                .json()
                .await
                .map_err(|e| CliError::Failed(format!("cache ls: {e}")))?;
            print!("{}", render_listing(&body, SystemTime::now()));
        }
        CacheAction::Rm { resources } => {
            let resources = resources
                .iter()
                .map(|r| parse_resource(r))
                .collect::<Result<Vec<_>, _>>()?;
            for (folder, name) in resources {
                let response = send(
                    loader
                        .client
                        .delete(format!("{}/cache/{folder}/{name}", loader.base)),
                )
                .await?;
                if !response.status().is_success() {
                    return Err(refused(&format!("cache rm {folder}/{name}"), response).await);
                }
                let body: Value = response.json().await.unwrap_or_default();
                println!(
                    "removed {folder}/{name} ({})",
                    human_bytes(body["freed_bytes"].as_u64().unwrap_or(0))
                );
            }
        }
        CacheAction::Prune {
            max_bytes,
            unused_for,
        } => {
            if max_bytes.is_none() && unused_for.is_none() {
                return Err(CliError::Usage(
                    "cache prune needs --max-bytes, --unused-for or both".into(),
                ));
            }
            let request = json!({
                "max_bytes": max_bytes.map(|s| s.0),
                "unused_for_secs": unused_for.map(|s| s.0.as_secs()),
            });
            let response = send(
                loader
                    .client
                    .post(format!("{}/cache/prune", loader.base))
                    .json(&request),
            )
            .await?;
            if !response.status().is_success() {
                return Err(refused("cache prune", response).await);
            }
            let body: Value = response.json().await.unwrap_or_default();
            for entry in body["removed"].as_array().into_iter().flatten() {
                println!(
                    "removed {}/{} ({})",
                    entry["folder"].as_str().unwrap_or("?"),
                    entry["name"].as_str().unwrap_or("?"),
                    human_bytes(entry["bytes"].as_u64().unwrap_or(0))
                );
            }
            println!(
                "freed {}",
                human_bytes(body["freed_bytes"].as_u64().unwrap_or(0))
            );
        }
        CacheAction::Verify => {
            let response =
                send(loader.client.post(format!("{}/cache/verify", loader.base))).await?;
            if !response.status().is_success() {
                return Err(refused("cache verify", response).await);
            }
            let body: Value = response.json().await.unwrap_or_default();
            let damaged = body["damaged"].as_array().cloned().unwrap_or_default();
            for entry in &damaged {
                println!(
                    "damaged, removed: {}/{}",
                    entry["folder"].as_str().unwrap_or("?"),
                    entry["name"].as_str().unwrap_or("?")
                );
            }
            println!(
                "checked {} entries, {} damaged",
                body["checked"].as_u64().unwrap_or(0),
                damaged.len()
            );
        }
    }
    Ok(())
}

/// `GET /cache` as aligned lines: each entry, then the usage.
pub fn render_listing(body: &Value, now: SystemTime) -> String {
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut out = String::new();
    let entries = body["entries"].as_array().cloned().unwrap_or_default();
    let width = entries
        .iter()
        .map(|e| {
            e["folder"].as_str().unwrap_or("").len() + 1 + e["name"].as_str().unwrap_or("").len()
        })
        .max()
        .unwrap_or(0)
        .max("RESOURCE".len());
    out.push_str(&format!(
        "{:<width$}  {:>10}  LAST USED\n",
        "RESOURCE", "SIZE"
    ));
    for entry in &entries {
        let resource = format!(
            "{}/{}",
            entry["folder"].as_str().unwrap_or("?"),
            entry["name"].as_str().unwrap_or("?")
        );
        let used = entry["last_used_unix_secs"].as_u64().unwrap_or(0);
        let age = human_duration(Duration::from_secs(now_secs.saturating_sub(used)));
        out.push_str(&format!(
            "{resource:<width$}  {:>10}  {age} ago\n",
            human_bytes(entry["bytes"].as_u64().unwrap_or(0))
        ));
    }
    let usage = &body["usage"];
    let limit = usage["limit"].as_u64().map_or_else(
        || "no limit".to_owned(),
        |l| format!("limit {}", human_bytes(l)),
    );
    out.push_str(&format!(
        "{} entries, {} ({limit})\n",
        usage["entries"].as_u64().unwrap_or(0),
        human_bytes(usage["bytes"].as_u64().unwrap_or(0)),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_is_folder_slash_name_checked_as_the_loader_checks_it() {
        let (folder, name) = parse_resource("models/detector.onnx").unwrap();
        assert_eq!(
            (folder.as_str(), name.as_str()),
            ("models", "detector.onnx")
        );
        for bad in [
            "detector.onnx",
            "models/",
            "/x.bin",
            "models/a/b",
            "models/..",
            "../etc/x",
        ] {
            assert!(
                matches!(parse_resource(bad), Err(CliError::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_listing_shows_each_entry_its_size_and_age_then_the_usage() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let text = render_listing(
            &json!({
                "usage": {"bytes": 3072, "entries": 1, "limit": 1048576},
                "entries": [{"folder": "models", "name": "a.onnx", "bytes": 3072, "last_used_unix_secs": 9_940}],
            }),
            now,
        );
        assert_eq!(
            text,
            "RESOURCE             SIZE  LAST USED\n\
             models/a.onnx     3.0 KiB  1m00s ago\n\
             1 entries, 3.0 KiB (limit 1.0 MiB)\n"
        );
    }
}
