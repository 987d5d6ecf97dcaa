//! The container runtime that receives the unlocked images (Docker).

use async_trait::async_trait;

use super::ByteStream;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("the container runtime is unreachable: {0}")]
    Unavailable(String),
    /// The runtime rejected the archive (Docker's `error` line in the load stream).
    #[error("the container runtime could not load the archive: {0}")]
    LoadFailed(String),
    #[error("the container runtime failed: {0}")]
    Unexpected(String),
}

#[async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// Whether the image `repository:tag` is present.
    /// Errors: `Unavailable`, `Unexpected`.
    async fn image_present(&self, reference: &str) -> Result<bool, RuntimeError>;

    /// Loads a `docker save` archive streamed in `archive` (no file in between);
    /// returns the references the runtime reported as loaded. A failing `archive`
    /// stream must fail the load. Errors: `Unavailable`, `LoadFailed`, `Unexpected`.
    async fn load(&self, archive: ByteStream) -> Result<Vec<String>, RuntimeError>;
}
