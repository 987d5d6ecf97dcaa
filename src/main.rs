//! The `azaion-loader` command: parses the command line and hands it to
//! [`azaion_loader::startup::cli`], which runs `serve`, `dev` and the tools.
//! Nothing else lives here.

use std::process::ExitCode;

use azaion_loader::startup::cli::{Cli, run};
use clap::Parser;

fn main() -> ExitCode {
    run(Cli::parse())
}
