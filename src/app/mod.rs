//! The application: use cases (session, resources, unlock), configuration,
//! and the composition root that wires adapters to ports and serves HTTP.

pub mod cli;
pub mod compose;
pub mod config;
pub mod decrypt_file;
pub mod dev;
pub mod metrics;
pub mod ranged;
pub mod resources;
pub mod session;
pub mod spool;
pub mod unlock;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::ports::{
    BigPartCache, Clock, ContainerRuntime, HardwareProbe, ObjectStoreConnector, ResourceApi,
};
use config::Config;
use metrics::Metrics;
use resources::ResourceService;
use session::SessionService;
use unlock::{UnlockService, UnlockSettings};

/// How long requests in flight may run on after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long a client may take to send its request header.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request header accepted.
pub const HEADER_BUF_MAX: usize = 64 * 1024;

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

/// The state every HTTP handler shares.
#[derive(Clone)]
pub struct AppState {
    pub session: Arc<SessionService>,
    pub resources: Arc<ResourceService>,
    pub unlock: Arc<UnlockService>,
    /// Absolute path of the cache folder, reported by `/status`.
    pub cache_dir: PathBuf,
    /// What `GET /metrics` reports; the API, CDN and cache ports count into it.
    pub metrics: Arc<Metrics>,
}

impl AppState {
    pub fn new(config: &Config, ports: Ports) -> Self {
        let metrics = Arc::new(Metrics::new());
        let ports = metrics::metered(ports, &metrics);
        let session = Arc::new(SessionService::new(
            ports.api.clone(),
            ports.cdn.clone(),
            ports.hardware.clone(),
            ports.clock.clone(),
        ));
        let resources = Arc::new(
            ResourceService::new(session.clone(), ports.cache.clone())
                .with_cdn_reads(config.cdn_reads),
        );
        let unlock = Arc::new(UnlockService::new(
            ports.api.clone(),
            ports.runtime.clone(),
            ports.clock.clone(),
            UnlockSettings {
                images_path: config.images_path.clone(),
                expected_images: config.expected_images.clone(),
            },
        ));
        Self {
            session,
            resources,
            unlock,
            cache_dir: config.model_cache_dir.clone(),
            metrics,
        }
    }
}

/// A built application: bound to its address, ready to serve.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    header_read_timeout: Duration,
}

impl Application {
    /// Binds `config.listen` (port 0 picks a free port) and wires `ports`.
    pub async fn build(config: &Config, ports: Ports) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Self {
            listener,
            state: AppState::new(config, ports),
            header_read_timeout: HEADER_READ_TIMEOUT,
        })
    }

    /// Overrides [`HEADER_READ_TIMEOUT`] (tests use a short one).
    pub fn with_header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
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
        use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
        use hyper_util::server::conn::auto::Builder;
        use hyper_util::server::graceful::GracefulShutdown;
        use hyper_util::service::TowerToHyperService;

        let router = crate::adapters::http::router(self.state);
        // HTTP/1.1 only: local clients need nothing more, and protocol sniffing would
        // run before (and outside) the header read timeout.
        let mut builder = Builder::new(TokioExecutor::new()).http1_only();
        // A client must send its whole header within this time (slowloris), and headers
        // are capped in size (hyper answers 431 beyond it).
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(HEADER_BUF_MAX);
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, _peer) = match accepted {
                        Ok(conn) => conn,
                        Err(e) => {
                            // Out of file descriptors and the like: wait a little, keep serving.
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let service = TowerToHyperService::new(router.clone());
                    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let connection = graceful.watch(connection.into_owned());
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!("connection ended: {e}");
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }
        drop(self.listener);
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all requests finished"),
            () = tokio::time::sleep(grace) => tracing::warn!("shutdown grace of {grace:?} over: closing remaining connections"),
        }
        Ok(())
    }
}
