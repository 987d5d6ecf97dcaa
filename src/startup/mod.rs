//! Startup: the configuration, the composition root that wires adapters to
//! ports, and the [`Application`] that binds a listener and serves the HTTP
//! adapter. The only layer that names concrete adapters.

pub mod allocator;
pub mod cli;
pub mod compose;
pub mod config;
#[cfg(feature = "dev-stack")]
pub mod dev;
pub mod systemd;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::adapters::inbound::http::boundary::{CallerPolicy, ClientToken};
use crate::adapters::inbound::http::metrics::HttpMetrics;
use crate::adapters::inbound::http::serve::{Listener, ServeOptions, bind_unix};
use crate::adapters::inbound::http::{self, AppState, UploadLimits};
use crate::adapters::outbound::metered::{
    UpstreamMetrics, metered_api, metered_cache, metered_cdn,
};
use crate::app::readiness::{Backoff, Readiness};
use crate::app::resources::{self, ResourceService};
use crate::app::session::SessionService;
use crate::app::unlock::{UnlockService, UnlockSettings};
use crate::ports::{
    BigPartCache, Clock, ContainerRuntime, HardwareProbe, ObjectStoreConnector, ResourceApi,
};
use config::{Config, Listen};
use prometheus_client::registry::Registry;

/// How long requests in flight may run on after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long a client may take to send its request header.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Every port the application needs, as trait objects.
#[derive(Clone)]
pub struct Ports {
    pub api: Arc<dyn ResourceApi>,
    pub cdn: Arc<dyn ObjectStoreConnector>,
    pub cache: Arc<dyn BigPartCache>,
    pub hardware: Arc<dyn HardwareProbe>,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub clock: Arc<dyn Clock>,
}

/// Wires the use cases to `ports` (metered) for the HTTP adapter.
pub fn app_state(config: &Config, ports: Ports) -> AppState {
    {
        // One registry: the decorators around the ports and the HTTP API
        // declare their families in it; GET /metrics renders it.
        let mut registry = Registry::with_prefix("azaion");
        let upstream = UpstreamMetrics::register(&mut registry);
        let ports = Ports {
            api: metered_api(ports.api, &upstream),
            cdn: metered_cdn(ports.cdn, &upstream),
            cache: metered_cache(ports.cache, &upstream),
            ..ports
        };
        let metrics = HttpMetrics::new(registry);
        let session = Arc::new(SessionService::new(
            ports.api.clone(),
            ports.cdn.clone(),
            ports.hardware.clone(),
            ports.clock.clone(),
        ));
        let resources = Arc::new(
            ResourceService::new(session.clone(), ports.cache.clone())
                .with_cdn_reads(config.cdn_reads)
                .with_transfer_limit(config.limits.max_transfers, resources::TRANSFER_WAIT),
        );
        let unlock = Arc::new(UnlockService::new(
            ports.api.clone(),
            ports.runtime.clone(),
            ports.clock.clone(),
            UnlockSettings {
                images_path: config.images_path.clone(),
                expected_images: config.expected_images.clone(),
                timeout: config.limits.unlock_timeout,
            },
        ));
        let readiness = Arc::new(Readiness::new(
            session.clone(),
            ports.cache.clone(),
            unlock.clone(),
            ports.clock.clone(),
            !config.expected_images.is_empty(),
        ));
        AppState {
            readiness,
            transfers: Arc::default(),
            session,
            resources,
            unlock,
            cache_dir: config.model_cache_dir.clone(),
            metrics,
            uploads: UploadLimits {
                max_upload_bytes: config.limits.max_upload_bytes,
                min_free_bytes: config.limits.min_free_bytes,
            },
        }
    }
}

/// The §5.3 caller rules for `config`'s listener, with the token read from
/// its file. Refuses a token file that others may read.
pub fn caller_policy(
    config: &Config,
) -> Result<CallerPolicy, crate::adapters::inbound::http::boundary::TokenFileError> {
    let token = config
        .limits
        .token_file
        .as_deref()
        .map(ClientToken::load)
        .transpose()?;
    let listen_host = match &config.listen {
        Listen::Tcp(addr) => Some(match addr.ip() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        }),
        Listen::Unix(_) => None,
    };
    Ok(CallerPolicy::new(
        listen_host,
        &config.limits.allowed_hosts,
        token,
    ))
}

/// A built application: bound to its address, ready to serve.
pub struct Application {
    listener: Listener,
    state: AppState,
    policy: CallerPolicy,
    header_read_timeout: Duration,
    max_connections: usize,
    /// Stored credentials to log in with once serving, until it works.
    auto_login: Option<(crate::ports::Credentials, Backoff)>,
}

impl Application {
    /// Binds `config.listen` (port 0 picks a free port) and wires `ports`.
    pub async fn build(config: &Config, ports: Ports) -> std::io::Result<Self> {
        let policy = caller_policy(config)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let listener = match &config.listen {
            Listen::Tcp(addr) => Listener::Tcp(TcpListener::bind(addr).await?),
            Listen::Unix(path) => {
                let (listener, file) = bind_unix(path)?;
                Listener::Unix(listener, file)
            }
        };
        Ok(Self {
            listener,
            state: app_state(config, ports),
            policy,
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_connections: config.limits.max_connections.max(1),
            auto_login: None,
        })
    }

    /// Logs in with `credentials` as soon as it serves, and again with
    /// `backoff` until it works (`GET /ready` shows how it goes).
    pub fn with_auto_login(
        mut self,
        credentials: Option<crate::ports::Credentials>,
        backoff: Backoff,
    ) -> Self {
        self.auto_login = credentials.map(|c| (c, backoff));
        self
    }

    /// Overrides [`HEADER_READ_TIMEOUT`] (tests use a short one).
    pub fn with_header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// The TCP address served (an error on a Unix socket).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.listener {
            Listener::Tcp(l) => l.local_addr(),
            Listener::Unix(..) => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the loader listens on a Unix socket",
            )),
        }
    }

    /// What a client connects to: `http://ADDR` or `unix:PATH`.
    pub fn endpoint(&self) -> String {
        match &self.listener {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "http://?".to_owned(), |a| format!("http://{a}")),
            Listener::Unix(_, file) => format!("unix:{}", file.path().display()),
        }
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes; then accepts nothing new and lets
    /// requests in flight (a long download) finish for up to [`SHUTDOWN_GRACE`].
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_with_grace(shutdown, SHUTDOWN_GRACE).await
    }

    pub async fn serve_with_grace(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        grace: Duration,
    ) -> std::io::Result<()> {
        // Stops with the server (the handle aborts the task when dropped).
        let _auto_login = self.auto_login.map(|(credentials, backoff)| {
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
                self.state
                    .readiness
                    .clone()
                    .log_in_until_it_works(credentials, backoff),
            ))
        });
        let router = http::router(self.state, self.policy);
        http::serve::serve(
            self.listener,
            router,
            ServeOptions {
                header_read_timeout: self.header_read_timeout,
                max_connections: self.max_connections,
                grace,
            },
            shutdown,
        )
        .await
    }
}
