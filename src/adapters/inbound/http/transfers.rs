//! The transfers in progress (issue 13): each load, prefetch and upload the
//! loader is serving, with its bytes so far, for `GET /transfers` and the
//! status page. A transfer is listed from its start until its handle is
//! dropped (the stream ended, failed or its client went away).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use super::openapi::TransferBody;

#[derive(Debug)]
struct Live {
    kind: &'static str,
    resource: String,
    total: Option<u64>,
    done: AtomicU64,
    started: Instant,
}

/// The registry; cheap to share.
#[derive(Debug, Default)]
pub struct Transfers {
    next: AtomicU64,
    live: Mutex<BTreeMap<u64, Arc<Live>>>,
}

/// One listed transfer; dropping it takes it off the list.
#[derive(Debug)]
pub struct TransferHandle {
    id: u64,
    registry: Arc<Transfers>,
    live: Arc<Live>,
}

impl TransferHandle {
    /// Counts `bytes` more as done.
    pub fn add(&self, bytes: u64) {
        self.live.done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Sets the bytes done so far.
    pub fn set(&self, done: u64) {
        self.live.done.store(done, Ordering::Relaxed);
    }
}

impl Drop for TransferHandle {
    fn drop(&mut self) {
        self.registry
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl Transfers {
    /// Lists a `kind` (`load`, `prefetch`, `upload`) transfer of `resource`
    /// of `total` bytes when known, until the handle is dropped.
    pub fn start(
        self: &Arc<Self>,
        kind: &'static str,
        resource: String,
        total: Option<u64>,
    ) -> TransferHandle {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let live = Arc::new(Live {
            kind,
            resource,
            total,
            done: AtomicU64::new(0),
            started: Instant::now(),
        });
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, live.clone());
        TransferHandle {
            id,
            registry: self.clone(),
            live,
        }
    }

    /// The transfers in progress, oldest first, with their average rate.
    pub fn list(&self) -> Vec<TransferBody> {
        let live: Vec<Arc<Live>> = self
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        live.iter()
            .map(|t| {
                let elapsed = t.started.elapsed();
                let done = t.done.load(Ordering::Relaxed);
                let secs = elapsed.as_secs_f64();
                TransferBody {
                    kind: t.kind.to_owned(),
                    resource: t.resource.clone(),
                    bytes_done: done,
                    bytes_total: t.total,
                    elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                    rate_bytes_per_sec: if secs > 0.0 {
                        (done as f64 / secs) as u64
                    } else {
                        0
                    },
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_is_listed_with_its_bytes_until_its_handle_is_dropped() {
        let transfers = Arc::new(Transfers::default());
        let load = transfers.start("load", "models/a.onnx".into(), Some(100));
        let upload = transfers.start("upload", "b.bin".into(), None);
        load.add(30);
        load.add(12);
        upload.set(7);
        let listed = transfers.list();
        assert_eq!(listed.len(), 2);
        assert_eq!(
            (
                listed[0].kind.as_str(),
                listed[0].resource.as_str(),
                listed[0].bytes_done,
                listed[0].bytes_total
            ),
            ("load", "models/a.onnx", 42, Some(100))
        );
        assert_eq!((listed[1].bytes_done, listed[1].bytes_total), (7, None));
        drop(load);
        let listed = transfers.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].kind, "upload");
        drop(upload);
        assert!(transfers.list().is_empty());
    }
}
