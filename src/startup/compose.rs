//! The composition root: builds the real adapters from the configuration and
//! hands them to the application as ports. The only place that names them.

use std::path::PathBuf;
use std::sync::Arc;

use super::Ports;
use super::config::{Config, RuntimeKind};
use crate::adapters::outbound::docker_bollard::BollardRuntime;
use crate::adapters::outbound::docker_cli::DockerCliRuntime;
use crate::adapters::outbound::fs_cache::FsBigPartCache;
use crate::adapters::outbound::hardware_sysinfo::SysinfoProbe;
use crate::adapters::outbound::resource_api_http::{HttpApiOptions, HttpResourceApi};
use crate::adapters::outbound::retry::{RetryPolicy, RetryingResourceApi};
use crate::adapters::outbound::s3::S3Connector;
use crate::adapters::outbound::system_clock::SystemClock;
use crate::ports::ContainerRuntime;

/// Builds every real adapter. Errors name the part that could not be built.
pub fn real_ports(config: &Config) -> Result<Ports, String> {
    let api = HttpResourceApi::new(
        &config.resource_api_url,
        HttpApiOptions {
            connect_timeout: config.api_connect_timeout,
            request_timeout: config.api_request_timeout,
        },
    )
    .map_err(|e| format!("Resource API client: {e}"))?;
    let cache = FsBigPartCache::open(config.model_cache_dir.clone(), config.cache_max_bytes)
        .map_err(|e| format!("cache at {}: {e}", config.model_cache_dir.display()))?
        .with_min_free_bytes(config.limits.min_free_bytes);
    let runtime: Arc<dyn ContainerRuntime> = match config.runtime {
        RuntimeKind::Bollard => Arc::new(
            BollardRuntime::connect(config.docker_host.as_deref())
                .map_err(|e| format!("Docker (bollard): {e}"))?,
        ),
        RuntimeKind::Cli => Arc::new(DockerCliRuntime::new(
            PathBuf::from("docker"),
            config.docker_host.clone(),
        )),
    };
    Ok(Ports {
        api: Arc::new(RetryingResourceApi::new(
            Arc::new(api),
            RetryPolicy::default(),
        )),
        cdn: Arc::new(S3Connector::default()),
        cache: Arc::new(cache),
        hardware: Arc::new(SysinfoProbe::new()),
        runtime,
        clock: Arc::new(SystemClock),
    })
}
