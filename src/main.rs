//! The `azaion-loader` command: `serve` runs the service (configured by the
//! environment of PROTOCOL §7 or flags), `dev` runs the whole system locally.

use std::net::SocketAddr;
use std::process::ExitCode;

use azaion_loader::app::compose::real_ports;
use azaion_loader::app::config::{DEFAULT_LISTEN, ServeArgs, parse_image_list};
use azaion_loader::app::{Application, dev};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "azaion-loader",
    version,
    about = "Serves split, encrypted AI models to local clients and unlocks the device's Docker images"
)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "LOG_FORMAT_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (production).
    ///
    /// Example: RESOURCE_API_URL=https://api.azaion.com MODEL_CACHE_DIR=/var/cache/azaion azaion-loader serve
    Serve(ServeArgs),
    /// Run the loader with a Resource API emulator and an S3 server, all on 127.0.0.1, offline.
    ///
    /// Example: azaion-loader dev   (then paste the printed curl lines)
    Dev {
        /// Address of the loader.
        #[arg(long, env = "LOADER_LISTEN", default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Keep the stack's data (cache, S3 objects) here instead of a temporary folder.
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// Docker endpoint for unlock.
        #[arg(long, env = "DOCKER_HOST")]
        docker_host: Option<String>,
        /// Expected images, comma-separated.
        #[arg(long, env = "LOADER_IMAGES", default_value = "")]
        images: String,
    },
}

fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: no new connections; requests in flight may finish");
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let config = args.into_config();
    tracing::info!(?config, "starting");
    let ports = real_ports(&config)?;
    let app = Application::build(&config, ports)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    tracing::info!(
        "listening on http://{}",
        app.local_addr().map_err(|e| e.to_string())?
    );
    app.serve(shutdown_signal())
        .await
        .map_err(|e| format!("serving failed: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Dev {
            listen,
            data_dir,
            docker_host,
            images,
        } => {
            dev::run(
                dev::DevOptions {
                    listen,
                    data_dir,
                    docker_host,
                    images: parse_image_list(&images),
                },
                shutdown_signal(),
            )
            .await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("azaion-loader: {e}");
            ExitCode::FAILURE
        }
    }
}
