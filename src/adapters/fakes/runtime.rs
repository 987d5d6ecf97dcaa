//! A container runtime that keeps a set of image references. It "loads" a
//! fake archive: a marker line followed by one `repository:tag` per line.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::Semaphore;

use super::{Fault, FaultQueue, lock};
use crate::ports::{ByteStream, ContainerRuntime, RuntimeError};

const MARKER: &str = "FAKE-DOCKER-ARCHIVE";

/// A fake archive the fake runtime accepts, padded to at least `min_len` bytes.
pub fn fake_archive(references: &[&str], min_len: usize) -> Vec<u8> {
    let mut text = format!("{MARKER}\n");
    for r in references {
        text.push_str(r);
        text.push('\n');
    }
    let mut bytes = text.into_bytes();
    if bytes.len() < min_len {
        bytes.push(b'#');
        bytes.resize(min_len, b'#');
    }
    bytes
}

pub struct FakeRuntime {
    images: Mutex<HashSet<String>>,
    unavailable: Mutex<bool>,
    load_faults: FaultQueue<RuntimeError>,
    /// Loads wait for a permit: tests hold loads to observe a run in progress.
    gate: Arc<Semaphore>,
    loads: Mutex<usize>,
    panic_next: Mutex<bool>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self {
            images: Mutex::default(),
            unavailable: Mutex::new(false),
            load_faults: FaultQueue::default(),
            gate: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            loads: Mutex::new(0),
            panic_next: Mutex::new(false),
        }
    }
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_image(&self, reference: &str) {
        lock(&self.images).insert(reference.to_owned());
    }

    pub fn has_image(&self, reference: &str) -> bool {
        lock(&self.images).contains(reference)
    }

    pub fn set_unavailable(&self, unavailable: bool) {
        *lock(&self.unavailable) = unavailable;
    }

    pub fn fail_next_load(&self, error: RuntimeError) {
        self.load_faults.push(Fault::Fail(error), 1);
    }

    /// The next load panics, as a runtime adapter with a bug would.
    pub fn panic_next_load(&self) {
        *lock(&self.panic_next) = true;
    }

    /// Makes loads wait until [`FakeRuntime::release_loads`].
    pub fn hold_loads(&self) {
        let held = self.gate.available_permits();
        if held > 0 {
            self.gate.forget_permits(held);
        }
    }

    pub fn release_loads(&self) {
        self.gate
            .add_permits(Semaphore::MAX_PERMITS - self.gate.available_permits());
    }

    pub fn loads(&self) -> usize {
        *lock(&self.loads)
    }

    fn check_available(&self) -> Result<(), RuntimeError> {
        if *lock(&self.unavailable) {
            Err(RuntimeError::Unavailable("fake: daemon not running".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn image_present(&self, reference: &str) -> Result<bool, RuntimeError> {
        self.check_available()?;
        Ok(self.has_image(reference))
    }

    async fn load(&self, mut archive: ByteStream) -> Result<Vec<String>, RuntimeError> {
        *lock(&self.loads) += 1;
        if std::mem::take(&mut *lock(&self.panic_next)) {
            panic!("fake runtime: a bug in the runtime adapter");
        }
        self.check_available()?;
        let _permit = self
            .gate
            .acquire()
            .await
            .map_err(|_| RuntimeError::Unexpected("fake: gate closed".into()))?;
        self.load_faults.apply().await?;
        let mut all = Vec::new();
        while let Some(chunk) = archive.next().await {
            let chunk = chunk
                .map_err(|e| RuntimeError::LoadFailed(format!("archive stream failed: {e}")))?;
            all.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&all);
        let mut lines = text.lines();
        if lines.next() != Some(MARKER) {
            return Err(RuntimeError::LoadFailed(
                "fake: not an image archive".into(),
            ));
        }
        let refs: Vec<String> = lines
            .take_while(|l| !l.starts_with('#'))
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        lock(&self.images).extend(refs.iter().cloned());
        Ok(refs)
    }
}
