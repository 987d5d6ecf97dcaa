//! Adapters: one module per real thing behind a port (reqwest, S3, the
//! filesystem, sysinfo, Docker via bollard or its CLI, the axum server),
//! the in-memory fakes beside them, and the Resource API emulator used by
//! the local stack and the integration tests.

pub mod disk;
pub mod docker_bollard;
pub mod docker_cli;
pub mod emulator;
pub mod fakes;
pub mod fs_cache;
pub mod hardware_sysinfo;
pub mod http;
pub mod resource_api_http;
pub mod retry;
pub mod s3;
pub mod s3_server;
pub mod system_clock;
