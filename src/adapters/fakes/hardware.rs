//! A fixed hardware fingerprint, with a switch to make the probe fail.

use std::sync::Mutex;

use async_trait::async_trait;

use super::lock;
use crate::domain::hardware::HardwareParts;
use crate::ports::{HardwareError, HardwareProbe};

pub struct FakeHardware {
    parts: Mutex<HardwareParts>,
    broken: Mutex<bool>,
}

impl FakeHardware {
    pub fn new(parts: HardwareParts) -> Self {
        Self {
            parts: Mutex::new(parts),
            broken: Mutex::new(false),
        }
    }

    /// Simulates moving the user to another device.
    pub fn set_parts(&self, parts: HardwareParts) {
        *lock(&self.parts) = parts;
    }

    pub fn set_broken(&self, broken: bool) {
        *lock(&self.broken) = broken;
    }
}

impl Default for FakeHardware {
    fn default() -> Self {
        Self::new(HardwareParts {
            cpu_model: "Fake CPU".into(),
            gpu_names: vec!["Fake GPU".into()],
            memory_kib: 8_000_000,
            drive_serial: Some("FAKE-SERIAL-1".into()),
        })
    }
}

#[async_trait]
impl HardwareProbe for FakeHardware {
    async fn probe(&self) -> Result<HardwareParts, HardwareError> {
        if *lock(&self.broken) {
            return Err(HardwareError("fake probe broken".into()));
        }
        Ok(lock(&self.parts).clone())
    }
}
