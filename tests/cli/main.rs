//! The `azaion-loader` command line end to end: the real binary runs on
//! temporary files, against a dead port, against a running `dev` stack and,
//! where a Docker daemon answers, through a whole unlock.

mod client;
mod commands;
mod files;
mod service;
mod support;
mod unlock;
