//! The `azaion-loader` command line: `serve` and `dev` run the service, the
//! other commands are tools around it (file encryption, split and join,
//! packing the image archive, unlock without HTTP, the hardware fingerprint,
//! the status of a running loader). It parses, dispatches and turns errors
//! into exit codes; it must never print a key, a password or a fragment.

pub mod client;
pub mod crypt;
pub mod files;
pub mod hardware;
pub mod progress;
pub mod status;
pub mod unlock;

use std::future::Future;
use std::io::Write;
#[cfg(feature = "dev-stack")]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use super::config::ServeArgs;
#[cfg(feature = "dev-stack")]
use super::config::{DEFAULT_LISTEN, parse_image_list};
#[cfg(feature = "dev-stack")]
use super::dev;
use super::{Application, compose::real_ports};
use crate::app::readiness::Backoff;
use progress::ProgressMode;

#[derive(Parser)]
#[command(
    name = "azaion-loader",
    version,
    about = "Serves split, encrypted AI models to local clients and unlocks the device's Docker images",
    after_help = "Run `azaion-loader <COMMAND> --help` for a command's options and examples."
)]
pub struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "LOG_FORMAT_JSON")]
    pub log_json: bool,
    /// Show no progress (errors are still printed).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

const SERVE_EXAMPLES: &str = "\
Examples:
  RESOURCE_API_URL=https://api.azaion.com MODEL_CACHE_DIR=/var/cache/azaion azaion-loader serve
  azaion-loader serve --config /etc/azaion/loader.toml --listen 127.0.0.1:8080

Precedence: flags, then environment, then the --config file, then the defaults.
A config file uses the flag names with underscores, for example:
  listen = \"127.0.0.1:8080\"
  resource_api_url = \"https://api.azaion.com\"
  model_cache_dir = \"/var/cache/azaion\"
  cache_max_bytes = 20000000000
  images_path = \"/opt/azaion/images.enc\"
  images = [\"azaion/detector:1.4\"]
  runtime = \"bollard\"
  api_connect_timeout_secs = 5
  api_request_timeout_secs = 60";

#[cfg(feature = "dev-stack")]
const DEV_EXAMPLES: &str = "\
Examples:
  azaion-loader dev            (then paste the printed curl lines)
  azaion-loader dev --listen 127.0.0.1:9090 --data-dir /tmp/azaion-dev";

const ENCRYPT_EXAMPLES: &str = "\
Examples:
  MODEL_KEY='my key string' azaion-loader encrypt --key-env MODEL_KEY model.onnx model.onnx.enc
  azaion-loader encrypt --resource-key model.onnx model.enc
  tar c data/ | azaion-loader encrypt --key-env MODEL_KEY - data.tar.enc";

const DECRYPT_EXAMPLES: &str = "\
Examples:
  azaion-loader decrypt --resource-key model.enc model.onnx
  azaion-loader decrypt --key-env MODEL_KEY model.onnx.enc - | sha256sum

OUT is written as OUT.tmp-XXXXXX beside it and renamed only once the padding
checked out: a wrong key or a damaged file leaves no OUT (an older OUT stays).";

const SPLIT_EXAMPLES: &str = "\
Example:
  azaion-loader split model.enc --small model.onnx.small --big model.onnx.big

The small part is the first min(3072, floor(3n/10)) bytes of the n-byte
encrypted resource (docs/PROTOCOL.md §1.3), the big part the rest.";

const JOIN_EXAMPLES: &str = "\
Example:
  azaion-loader join --small model.onnx.small --big model.onnx.big model.enc

The parts are checked against docs/PROTOCOL.md §1.3 (swapped or mismatched parts are refused).";

const PACK_IMAGES_EXAMPLES: &str = "\
Examples:
  docker save azaion/detector:1.4 -o images.tar
  azaion-loader pack-images --fragment fragment.bin images.tar /opt/azaion/images.enc
  docker save azaion/detector:1.4 | azaion-loader pack-images --fragment fragment.bin - images.enc

images.enc = IV || AES-256-CBC(SHA-256(fragment), IV, PKCS#7(tar)) (docs/PROTOCOL.md §1.4).";

const UNLOCK_EXAMPLES: &str = "\
Examples:
  AZAION_PASSWORD=... azaion-loader unlock --email user@example.com --password-env AZAION_PASSWORD \\
      --images azaion/detector:1.4
  printf '%s\\n' \"$PW\" | azaion-loader unlock --email user@example.com --password-stdin \\
      --config /etc/azaion/loader.toml

Takes the same settings as `serve` (flags, environment, --config). Exits 0
once the images are loaded and checked (ready), 1 on an error.";

const HARDWARE_EXAMPLES: &str = "\
Example:
  azaion-loader hardware

Prints the fingerprint line (docs/PROTOCOL.md §4), then `hash: ` and its hash (§1.1).";

const STATUS_EXAMPLES: &str = "\
Examples:
  azaion-loader status
  azaion-loader status --url http://127.0.0.1:8080 --json

Exits non-zero when the loader cannot be reached or is not healthy.";

#[derive(Subcommand)]
pub enum Command {
    /// Run the service (production), configured by flags, the environment of
    /// docs/PROTOCOL.md §7 or a TOML file.
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(ServeArgs),
    /// Run the loader with a Resource API emulator and an S3 server, all on
    /// 127.0.0.1, offline.
    #[cfg(feature = "dev-stack")]
    #[command(after_help = DEV_EXAMPLES)]
    Dev {
        /// Address of the loader.
        #[arg(long, env = "LOADER_LISTEN", default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Keep the stack's data (cache, S3 objects) here instead of a temporary folder.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Docker endpoint for unlock.
        #[arg(long, env = "DOCKER_HOST")]
        docker_host: Option<String>,
        /// Expected images, comma-separated.
        #[arg(long, env = "LOADER_IMAGES", default_value = "")]
        images: String,
        /// Use this S3 server (e.g. moto: `python3 -m moto.server`) instead of the
        /// embedded one; it must accept the demo keys. The bucket `models` is created there.
        #[arg(long, value_name = "URL")]
        s3_endpoint: Option<String>,
    },
    /// Encrypt a file with a key string (docs/PROTOCOL.md §1.2), streaming.
    #[command(after_help = ENCRYPT_EXAMPLES)]
    Encrypt(crypt::EncryptArgs),
    /// Decrypt a file made by `encrypt` (or a joined resource), streaming.
    #[command(after_help = DECRYPT_EXAMPLES)]
    Decrypt(crypt::DecryptArgs),
    /// Split an encrypted resource into its small and big parts (docs/PROTOCOL.md §1.3).
    #[command(after_help = SPLIT_EXAMPLES)]
    Split(crypt::SplitArgs),
    /// Join a small and a big part back into the encrypted resource.
    #[command(after_help = JOIN_EXAMPLES)]
    Join(crypt::JoinArgs),
    /// Encrypt a `docker save` archive into images.enc with a key fragment (docs/PROTOCOL.md §1.4).
    #[command(after_help = PACK_IMAGES_EXAMPLES)]
    PackImages(crypt::PackImagesArgs),
    /// Unlock the image archive here and now, without the HTTP service.
    #[command(after_help = UNLOCK_EXAMPLES)]
    Unlock(unlock::UnlockArgs),
    /// Print this device's hardware fingerprint and its hash.
    #[command(after_help = HARDWARE_EXAMPLES)]
    Hardware,
    /// Show the health, readiness, login and unlock state of a running loader.
    #[command(after_help = STATUS_EXAMPLES)]
    Status(status::StatusArgs),
    /// Download a resource from a running loader into a file (never a partial one).
    #[command(after_help = GET_EXAMPLES)]
    Get(client::GetArgs),
    /// Upload a file as a resource through a running loader.
    #[command(after_help = PUT_EXAMPLES)]
    Put(client::PutArgs),
    /// Bring resources' big parts into a running loader's cache, ahead of use.
    #[command(after_help = PREFETCH_EXAMPLES)]
    Prefetch(client::PrefetchArgs),
    /// List, remove, prune or verify a running loader's cache.
    #[command(after_help = CACHE_EXAMPLES)]
    Cache(client::CacheArgs),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write one page per command into a folder.
    #[command(after_help = MAN_EXAMPLES)]
    Man {
        /// Write azaion-loader.1 and azaion-loader-COMMAND.1 for every command here.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

const GET_EXAMPLES: &str = "\
Examples:
  azaion-loader get models/detector.onnx
  azaion-loader get models/detector.onnx -o /opt/models/detector.onnx
  LOADER_LISTEN=unix:/run/azaion-loader/loader.sock LOADER_TOKEN_FILE=/etc/azaion/loader.token \\
      azaion-loader get models/detector.onnx -o - | sha256sum

Reaches the loader as `status` does. The file is written as FILE.tmp-XXXXXX
beside it and renamed once complete: Ctrl-C or an error leaves no partial file.
Exit 0 done, 1 failed, 2 bad arguments, 130 interrupted.";

const PUT_EXAMPLES: &str = "\
Example:
  azaion-loader put models/detector.onnx ./detector.onnx

Streams the file: the loader encrypts and splits it (docs/PROTOCOL.md §5).";

const PREFETCH_EXAMPLES: &str = "\
Examples:
  azaion-loader prefetch models/detector.onnx models/tracker.onnx
  azaion-loader --quiet prefetch models/detector.onnx && azaion-loader status --ready

Warms the device at base: the big parts come into the cache without being
decrypted, so a later load needs only the small part from the API.";

const CACHE_EXAMPLES: &str = "\
Examples:
  azaion-loader cache ls
  azaion-loader cache rm models/old.onnx
  azaion-loader cache prune --max-bytes 10G
  azaion-loader cache prune --unused-for 30d
  azaion-loader cache verify";

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  azaion-loader completions bash > /usr/share/bash-completion/completions/azaion-loader
  azaion-loader completions zsh > \"${fpath[1]}/_azaion-loader\"
  azaion-loader completions fish > ~/.config/fish/completions/azaion-loader.fish

The .deb installs the bash, zsh and fish scripts.";

const MAN_EXAMPLES: &str = "\
Examples:
  azaion-loader man | man -l -
  azaion-loader man --dir /usr/local/share/man/man1

The .deb installs every page.";

/// Why a command failed; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command was asked for something it cannot do as given (exit 2).
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// A running loader could not be reached (exit 1).
    #[error("{0}")]
    Unreachable(String),
    /// The work itself failed (exit 1).
    #[error("{0}")]
    Failed(String),
    /// Ctrl-C, SIGTERM or SIGHUP (exit 130).
    #[error("interrupted")]
    Interrupted,
    /// `serve` stopped by a signal after its requests in flight (exit 128 +
    /// the signal's number: 143 for SIGTERM).
    #[error("stopped by {}", .0.name())]
    Stopped(StopSignal),
}

impl CliError {
    pub fn io(what: String, source: std::io::Error) -> Self {
        Self::Io { what, source }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Interrupted => 130,
            Self::Stopped(signal) => signal.exit_code(),
            Self::Io { .. } | Self::Unreachable(_) | Self::Failed(_) => 1,
        }
    }
}

impl Command {
    /// The log filter unless `RUST_LOG` says otherwise: the service logs
    /// what it does, the tools only what went wrong (their progress and
    /// their final error say the rest).
    fn default_log_filter(&self) -> &'static str {
        match self {
            Self::Serve(_) => "info",
            #[cfg(feature = "dev-stack")]
            Self::Dev { .. } => "info",
            // The unlock use case logs its failure; the command prints it once, at the end.
            Self::Unlock(_) => "warn,azaion_loader::app::unlock=error",
            _ => "warn",
        }
    }
}

fn init_logging(json: bool, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A signal that stops the process; a stopped `serve` exits 128 + its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Interrupt,
    Terminate,
    Hangup,
}

impl StopSignal {
    pub fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
            Self::Hangup => "SIGHUP",
        }
    }

    /// 128 + the signal's number, as a shell reports a process it killed.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Interrupt => 130,
            Self::Terminate => 143,
            Self::Hangup => 129,
        }
    }
}

/// Resolves on Ctrl-C, SIGTERM or SIGHUP with which it was; never, if none
/// can be listened for.
async fn interrupted() -> StopSignal {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let unix_signal = |kind: tokio::signal::unix::SignalKind| async move {
        match tokio::signal::unix::signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(unix)]
    let (term, hangup) = (
        unix_signal(tokio::signal::unix::SignalKind::terminate()),
        // A closed terminal: stop as cleanly as for Ctrl-C.
        unix_signal(tokio::signal::unix::SignalKind::hangup()),
    );
    #[cfg(not(unix))]
    let (term, hangup) = (std::future::pending::<()>(), std::future::pending::<()>());
    tokio::select! {
        _ = ctrl_c => StopSignal::Interrupt,
        _ = term => StopSignal::Terminate,
        _ = hangup => StopSignal::Hangup,
    }
}

#[cfg(feature = "dev-stack")]
async fn shutdown_signal() {
    interrupted().await;
    tracing::info!("shutting down: no new connections; requests in flight may finish");
}

/// Runs a blocking file command on its own thread; Ctrl-C, SIGTERM or SIGHUP asks it
/// to stop, and it then drops its unfinished outputs.
async fn blocking(
    job: impl FnOnce(&AtomicBool) -> Result<(), CliError> + Send + 'static,
) -> Result<(), CliError> {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let mut task = tokio::task::spawn_blocking(move || job(&flag));
    tokio::select! {
        joined = &mut task => {
            joined.map_err(|e| CliError::Failed(format!("the command stopped unexpectedly: {e}")))?
        }
        _ = interrupted() => {
            cancel.store(true, Ordering::Relaxed);
            // The job checks the flag between chunks and removes its temporary files.
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            Err(CliError::Interrupted)
        }
    }
}

async fn interruptible(work: impl Future<Output = Result<(), CliError>>) -> Result<(), CliError> {
    tokio::select! {
        result = work => result,
        _ = interrupted() => Err(CliError::Interrupted),
    }
}

async fn serve(args: ServeArgs) -> Result<(), CliError> {
    harden_process();
    log_crypto_backend();
    let resolved = args.resolve().map_err(|e| CliError::Usage(e.to_string()))?;
    tracing::info!("effective configuration: {}", resolved.summary());
    let config = resolved.config;
    check_resource_api_url(&config.resource_api_url, config.limits.allow_insecure_http)
        .map_err(CliError::Usage)?;
    // A token file that others may read is refused before anything is bound.
    super::caller_policy(&config).map_err(|e| CliError::Usage(e.to_string()))?;
    // So is a credentials file that others may read (issue 13).
    let credentials = config
        .credentials_file
        .as_deref()
        .map(super::config::credentials::read)
        .transpose()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let ports = real_ports(&config).map_err(CliError::Failed)?;
    let app = Application::build(&config, ports)
        .await
        .map_err(|e| CliError::Failed(format!("cannot listen on {}: {e}", config.listen)))?
        .with_auto_login(credentials, Backoff::default());
    tracing::info!("listening on {}", app.endpoint());
    // systemd (Type=notify): ready once bound, a watchdog ping while the
    // runtime runs, stopping at the signal (issue 13).
    let notifier = super::systemd::Notifier::from_env().map(Arc::new);
    let _watchdog = notifier.clone().and_then(|notifier| {
        let every = super::systemd::watchdog_interval()?;
        Some(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            async move {
                let mut ticks = tokio::time::interval(every);
                loop {
                    ticks.tick().await;
                    notifier.notify("WATCHDOG=1");
                }
            },
        )))
    });
    if let Some(notifier) = &notifier {
        notifier.notify(&format!("READY=1\nSTATUS=listening on {}", app.endpoint()));
    }
    let (stopped_by, stop) = tokio::sync::oneshot::channel();
    let shutdown = async move {
        let signal = interrupted().await;
        tracing::info!(
            "{}: shutting down; no new connections, requests in flight may finish",
            signal.name()
        );
        if let Some(notifier) = &notifier {
            notifier.notify("STOPPING=1\nSTATUS=finishing the requests in flight");
        }
        let _ = stopped_by.send(signal);
    };
    app.serve(shutdown)
        .await
        .map_err(|e| CliError::Failed(format!("serving failed: {e}")))?;
    // Stopped by a signal: exit as a shell would report it (SIGTERM: 143).
    match stop.await {
        Ok(signal) => Err(CliError::Stopped(signal)),
        Err(_) => Ok(()),
    }
}

/// Issue 15: which AES runs, a warning when it is the software one.
fn log_crypto_backend() {
    let backend = crate::domain::cipher::CryptoBackend::detect();
    if backend.is_hardware() {
        tracing::info!(
            crypto = backend.as_str(),
            "AES runs on the CPU's AES instructions"
        );
    } else {
        tracing::warn!(
            crypto = backend.as_str(),
            "AES runs in software: decryption is capped by one core (on aarch64, build with --cfg aes_armv8)"
        );
    }
}

/// No core dumps, and no ptrace by other processes of the same user: the
/// process holds decrypted models and keys in memory (docs/PROTOCOL.md §5.3).
fn harden_process() {
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        tracing::warn!("cannot turn core dumps off: {e}");
    }
}

/// §5.3: the password travels to the Resource API, so `http://` is allowed
/// only to a loopback host unless the operator says otherwise.
pub fn check_resource_api_url(url: &str, allow_insecure_http: bool) -> Result<(), String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("RESOURCE_API_URL is not a URL ({e})"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if loopback || allow_insecure_http {
                Ok(())
            } else {
                Err(format!(
                    "RESOURCE_API_URL {} is plain http:// to another host: the password would travel in clear. \
                     Use https://, or set LOADER_ALLOW_INSECURE_HTTP=true on a network you trust",
                    super::config::mask_value("resource_api_url", url)
                ))
            }
        }
        other => Err(format!(
            "RESOURCE_API_URL must be http:// or https://, not {other}://"
        )),
    }
}

async fn dispatch(command: Command, mode: ProgressMode) -> Result<(), CliError> {
    match command {
        Command::Serve(args) => serve(args).await,
        #[cfg(feature = "dev-stack")]
        Command::Dev {
            listen,
            data_dir,
            docker_host,
            images,
            s3_endpoint,
        } => dev::run(
            dev::DevOptions {
                listen,
                data_dir,
                docker_host,
                images: parse_image_list(&images),
                s3_endpoint,
            },
            shutdown_signal(),
        )
        .await
        .map_err(CliError::Failed),
        Command::Encrypt(args) => blocking(move |c| crypt::encrypt(args, mode, c)).await,
        Command::Decrypt(args) => blocking(move |c| crypt::decrypt(args, mode, c)).await,
        Command::Split(args) => blocking(move |c| crypt::split(args, mode, c)).await,
        Command::Join(args) => blocking(move |c| crypt::join(args, mode, c)).await,
        Command::PackImages(args) => blocking(move |c| crypt::pack_images(args, mode, c)).await,
        Command::Unlock(args) => interruptible(unlock::run(args, mode)).await,
        Command::Hardware => hardware::run().await,
        Command::Status(args) => interruptible(status::run(args)).await,
        // Dropped on Ctrl-C: `get`'s temporary file goes with it.
        Command::Get(args) => interruptible(client::get(args, mode)).await,
        Command::Put(args) => interruptible(client::put(args, mode)).await,
        Command::Prefetch(args) => interruptible(client::prefetch(args, mode)).await,
        Command::Cache(args) => interruptible(client::cache(args)).await,
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "azaion-loader", &mut script);
            print_stdout(&script, "the completion script")
        }
        Command::Man { dir } => man_pages(dir),
    }
}

/// Writes `bytes` to stdout; a reader that went away (`| head`) is not an error.
fn print_stdout(bytes: &[u8], what: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::io(format!("writing {what}"), e))
        }
        _ => Ok(()),
    }
}

/// The manual: the top page on stdout, or every page into `dir`.
fn man_pages(dir: Option<PathBuf>) -> Result<(), CliError> {
    let command = Cli::command();
    match dir {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command)
                .render(&mut page)
                .map_err(|e| CliError::io("rendering the manual page".into(), e))?;
            print_stdout(&page, "the manual page")
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| CliError::io(format!("creating {}", dir.display()), e))?;
            clap_mangen::generate_to(command, &dir)
                .map_err(|e| CliError::io(format!("writing the pages into {}", dir.display()), e))
        }
    }
}

/// Runs a parsed command line to its exit code; errors go to stderr.
pub fn run(cli: Cli) -> ExitCode {
    init_logging(cli.log_json, cli.command.default_log_filter());
    let mode = ProgressMode::detect(cli.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("azaion-loader: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli.command, mode));
    // A job still blocked on stdin after an interrupt must not hold the exit.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("azaion-loader: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_an_example_in_its_help() {
        let mut cli = Cli::command();
        for sub in cli.get_subcommands_mut() {
            let help = sub.render_long_help().to_string();
            assert!(help.contains("Example"), "{}: {help}", sub.get_name());
        }
    }

    #[test]
    fn plain_http_is_refused_for_a_resource_api_off_loopback() {
        for (url, insecure, ok) in [
            ("https://api.azaion.com", false, true),
            ("http://api.example", false, false),
            ("http://api.example", true, true),
            ("http://127.0.0.1:9000", false, true),
            ("http://127.8.0.1", false, true),
            ("http://localhost:1", false, true),
            ("http://[::1]:1", false, true),
            ("http://10.0.0.1", false, false),
            ("http://localhost.evil.example", false, false),
            ("ftp://x", true, false),
            ("not a url", true, false),
        ] {
            assert_eq!(check_resource_api_url(url, insecure).is_ok(), ok, "{url}");
        }
        let err = check_resource_api_url("http://user:pw@api.example", false).unwrap_err();
        assert!(!err.contains("pw"), "{err}");
    }

    #[test]
    fn encrypt_needs_exactly_one_key_source() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|_| ());
        assert!(parse(&["azaion-loader", "encrypt", "a", "b"]).is_err());
        assert!(
            parse(&[
                "azaion-loader",
                "encrypt",
                "--key",
                "k",
                "--resource-key",
                "a",
                "b"
            ])
            .is_err()
        );
        assert!(parse(&["azaion-loader", "encrypt", "--resource-key", "a", "b"]).is_ok());
        assert!(parse(&["azaion-loader", "unlock", "--email", "e"]).is_err());
    }
}
