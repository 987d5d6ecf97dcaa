//! `unlock` without the HTTP service: the same unlock use case, built from
//! the same settings as `serve`, driven from the command line until it is
//! ready or failed. The password comes from an environment variable or
//! stdin, never from the command line, and is never printed.

use std::io::BufRead;
use std::sync::Arc;
use std::time::Duration;

use clap::ArgGroup;

use super::CliError;
use super::progress::{Progress, ProgressMode};
use crate::app::unlock::{UnlockService, UnlockSettings};
use crate::domain::secret::SecretString;
use crate::domain::unlock::UnlockPhase;
use crate::ports::Credentials;
use crate::startup::compose::real_ports;
use crate::startup::config::ServeArgs;

/// How often the use case's status is read.
const POLL: Duration = Duration::from_millis(200);

#[derive(clap::Args)]
#[command(group(
    ArgGroup::new("password_source")
        .required(true)
        .args(["password_env", "password_stdin"])
))]
pub struct UnlockArgs {
    /// The user's email at the Resource API.
    #[arg(long)]
    email: String,
    /// Name of an environment variable that holds the password.
    #[arg(long, value_name = "VAR")]
    password_env: Option<String>,
    /// Read the password from the first line of stdin.
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    settings: ServeArgs,
}

fn password(args: &UnlockArgs) -> Result<SecretString, CliError> {
    let password =
        if let Some(var) = &args.password_env {
            SecretString::new(std::env::var(var).map_err(|_| {
                CliError::Usage(format!("the environment variable {var} is not set"))
            })?)
        } else {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| CliError::io("cannot read the password from stdin".to_owned(), e))?;
            while line.ends_with(['\n', '\r']) {
                line.pop();
            }
            SecretString::new(line)
        };
    if password.is_empty() {
        return Err(CliError::Usage("the password is empty".to_owned()));
    }
    Ok(password)
}

/// Runs the unlock to its end: `Ok` once ready, an error with the reason otherwise.
pub async fn run(args: UnlockArgs, mode: ProgressMode) -> Result<(), CliError> {
    if args.email.trim().is_empty() {
        return Err(CliError::Usage("the email is empty".to_owned()));
    }
    let password = password(&args)?;
    let resolved = args
        .settings
        .resolve()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    tracing::info!("effective configuration: {}", resolved.summary());
    let config = resolved.config;
    let ports = real_ports(&config).map_err(CliError::Failed)?;
    let service = Arc::new(UnlockService::new(
        ports.api,
        ports.runtime,
        ports.clock,
        UnlockSettings {
            images_path: config.images_path.clone(),
            expected_images: config.expected_images.clone(),
            timeout: config.limits.unlock_timeout,
        },
    ));
    let mut progress = Progress::new("unlock", None, mode);
    let first = service
        .start(Credentials {
            email: args.email,
            password,
        })
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?;
    progress.set_stage(first.as_str());
    let mut shown = first;
    loop {
        let status = service.status();
        if status.phase != shown {
            shown = status.phase;
            progress.set_stage(shown.as_str());
        }
        if status.phase == UnlockPhase::Decrypting && status.progress.bytes_total > 0 {
            progress.set_total(status.progress.bytes_total);
            progress.set_position(status.progress.bytes_done);
        }
        match status.phase {
            UnlockPhase::Ready => {
                progress.finish();
                println!("ready");
                return Ok(());
            }
            UnlockPhase::Error => {
                let reason = status.error.unwrap_or_else(|| "no reason given".to_owned());
                return Err(CliError::Failed(format!("unlock failed: {reason}")));
            }
            _ => tokio::time::sleep(POLL).await,
        }
    }
}
