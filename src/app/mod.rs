//! The application: use cases (session, resources, unlock), configuration,
//! and the composition root that wires adapters to ports and serves HTTP.

pub mod compose;
pub mod config;
pub mod dev;
pub mod resources;
pub mod session;
pub mod spool;
pub mod unlock;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::ports::{
    BigPartCache, Clock, ContainerRuntime, HardwareProbe, ObjectStoreConnector, ResourceApi,
};
use config::Config;
use resources::ResourceService;
use session::SessionService;
use unlock::{UnlockService, UnlockSettings};

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
}

impl AppState {
    pub fn new(config: &Config, ports: Ports) -> Self {
        let session = Arc::new(SessionService::new(
            ports.api.clone(),
            ports.cdn.clone(),
            ports.hardware.clone(),
            ports.clock.clone(),
        ));
        let resources = Arc::new(ResourceService::new(session.clone(), ports.cache.clone()));
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
        }
    }
}

/// A built application: bound to its address, ready to serve.
pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Binds `config.listen` (port 0 picks a free port) and wires `ports`.
    pub async fn build(config: &Config, ports: Ports) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Self {
            listener,
            state: AppState::new(config, ports),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then lets requests in flight finish.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = crate::adapters::http::router(self.state);
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}
