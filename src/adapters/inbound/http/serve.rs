//! The accept loop: HTTP/1.1 over TCP or a Unix socket, with a header read
//! timeout, a cap on header size and on connections at once, an idle limit
//! on response writes, and a graceful shutdown.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

/// The largest request header accepted.
pub const HEADER_BUF_MAX: usize = 64 * 1024;

/// How the accept loop treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// A client must send its whole request header within this time.
    pub header_read_timeout: Duration,
    /// Connections served at once; the next waits in the kernel's backlog.
    pub max_connections: usize,
    /// How long requests in flight may run on after the shutdown signal.
    pub grace: Duration,
}

/// Where the API listens.
pub enum Listener {
    Tcp(TcpListener),
    /// The socket file is removed when the listener is dropped.
    Unix(tokio::net::UnixListener, SocketFile),
}

/// A Unix socket's path, removed on drop (at exit).
pub struct SocketFile(PathBuf);

impl SocketFile {
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds a Unix socket at `path` with mode 0660. A stale socket (nothing
/// answers on it) is removed first; a live one, or any other kind of file,
/// is left alone and the bind fails.
pub fn bind_unix(
    path: &std::path::Path,
) -> std::io::Result<(tokio::net::UnixListener, SocketFile)> {
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

/// Serves `router` on `listener` until `shutdown` completes; then accepts
/// nothing new and lets requests in flight finish for up to `options.grace`.
pub async fn serve(
    listener: Listener,
    router: axum::Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    // A client must send its whole header within this time (slowloris), and headers
    // are capped in size (hyper answers 431 beyond it).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(HEADER_BUF_MAX);
    let graceful = GracefulShutdown::new();
    // At most this many connections at once: the next one waits in the
    // kernel's backlog until one ends (a flood cannot exhaust descriptors).
    let connections = Arc::new(tokio::sync::Semaphore::new(options.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
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
        () = tokio::time::sleep(options.grace) => tracing::warn!("shutdown grace of {:?} over: closing remaining connections", options.grace),
    }
    Ok(())
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
    use super::write_idle::{RESPONSE_WRITE_IDLE, WriteIdle};
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
