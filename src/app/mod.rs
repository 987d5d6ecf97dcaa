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
pub mod unlock;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::adapters::http::boundary::{CallerPolicy, ClientToken};
use crate::ports::{
    BigPartCache, Clock, ContainerRuntime, HardwareProbe, ObjectStoreConnector, ResourceApi,
};
use config::{Config, Listen};
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
    /// PROTOCOL §5.3's limits (upload size, free-space floor, ...).
    pub limits: config::Limits,
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
        Self {
            session,
            resources,
            unlock,
            cache_dir: config.model_cache_dir.clone(),
            metrics,
            limits: config.limits.clone(),
        }
    }
}

/// Where a built application listens.
enum Listener {
    Tcp(TcpListener),
    /// The socket file is removed when the listener is dropped.
    Unix(tokio::net::UnixListener, SocketFile),
}

/// A Unix socket's path, removed on drop (at exit).
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds a Unix socket at `path` with mode 0660. A stale socket (nothing
/// answers on it) is removed first; a live one, or any other kind of file,
/// is left alone and the bind fails.
fn bind_unix(path: &std::path::Path) -> std::io::Result<(tokio::net::UnixListener, SocketFile)> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("another process serves on {}", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
            tracing::info!(socket = %path.display(), "removed a stale socket");
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    let file = SocketFile(path.to_path_buf());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok((listener, file))
}

/// The §5.3 caller rules for `config`'s listener, with the token read from
/// its file. Refuses a token file that others may read.
pub fn caller_policy(
    config: &Config,
) -> Result<CallerPolicy, crate::adapters::http::boundary::TokenFileError> {
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
            state: AppState::new(config, ports),
            policy,
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_connections: config.limits.max_connections.max(1),
        })
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
            Listener::Unix(_, file) => format!("unix:{}", file.0.display()),
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
        use hyper_util::rt::{TokioExecutor, TokioTimer};
        use hyper_util::server::conn::auto::Builder;
        use hyper_util::server::graceful::GracefulShutdown;

        let router = crate::adapters::http::router(self.state, self.policy);
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
        // At most this many connections at once: the next one waits in the
        // kernel's backlog until one ends (a flood cannot exhaust descriptors).
        let connections = Arc::new(tokio::sync::Semaphore::new(self.max_connections));
        let mut shutdown = std::pin::pin!(shutdown);
        let listener = self.listener;
        loop {
            let permit = tokio::select! {
                permit = connections.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = &mut shutdown => break,
            };
            let accepted = tokio::select! {
                accepted = accept(&listener) => accepted,
                () = &mut shutdown => break,
            };
            match accepted {
                Ok(Accepted::Tcp(stream)) => {
                    let _ = stream.set_nodelay(true);
                    serve_connection(stream, &builder, &graceful, &router, permit);
                }
                Ok(Accepted::Unix(stream)) => {
                    serve_connection(stream, &builder, &graceful, &router, permit);
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(listener);
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all requests finished"),
            () = tokio::time::sleep(grace) => tracing::warn!("shutdown grace of {grace:?} over: closing remaining connections"),
        }
        Ok(())
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Accepted> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
        Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

/// Serves one connection on its own task, holding its connection slot.
fn serve_connection<I>(
    io: I,
    builder: &hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    router: &axum::Router,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use crate::adapters::http::write_idle::{RESPONSE_WRITE_IDLE, WriteIdle};
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;

    let io = WriteIdle::new(io, RESPONSE_WRITE_IDLE);
    let service = TowerToHyperService::new(router.clone());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let connection = graceful.watch(connection.into_owned());
    tokio::spawn(async move {
        let _permit = permit;
        if let Err(e) = connection.await {
            tracing::debug!("connection ended: {e}");
        }
    });
}
