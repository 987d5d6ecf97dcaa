//! The device's hardware, read for its fingerprint (PROTOCOL §4).

use async_trait::async_trait;

use crate::domain::hardware::HardwareParts;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read the hardware: {0}")]
pub struct HardwareError(pub String);

#[async_trait]
pub trait HardwareProbe: Send + Sync {
    /// Reads the parts of the fingerprint. Must give the same parts on every
    /// call and across restarts of the same device.
    async fn probe(&self) -> Result<HardwareParts, HardwareError>;
}
