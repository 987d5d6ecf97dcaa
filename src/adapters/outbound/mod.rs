//! What the application drives: one module per real thing behind a port,
//! and the decorators (retry, metering) that wrap them.

pub mod docker_bollard;
pub mod docker_cli;
pub mod fs_cache;
pub mod hardware_sysinfo;
pub mod metered;
pub mod resource_api_http;
pub mod retry;
pub mod s3;
pub mod system_clock;
