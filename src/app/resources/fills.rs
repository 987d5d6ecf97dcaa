//! Single-flight per resource: concurrent misses of one `{folder}/{name}`
//! share one CDN read and one cache write.

use std::sync::{Arc, Mutex as StdMutex};

use tokio::sync::watch;

use super::*;

/// The resources whose big part is being read from the CDN into the cache.
#[derive(Default)]
pub(super) struct Fills(StdMutex<std::collections::HashMap<(String, String), watch::Receiver<()>>>);

/// A miss either reads the CDN itself (and fills the cache), or waits for
/// the read already under way and then looks again.
pub(super) enum Claim {
    Leader(FillGuard),
    Follower(watch::Receiver<()>),
}

impl Fills {
    pub(super) fn claim(self: &Arc<Self>, folder: &Folder, name: &ResourceName) -> Claim {
        let key = (folder.as_str().to_owned(), name.as_str().to_owned());
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = map.get(&key) {
            return Claim::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        map.insert(key.clone(), rx);
        Claim::Leader(FillGuard {
            fills: self.clone(),
            key,
            _done: tx,
        })
    }
}

/// Held by the one CDN read of a resource; dropped (the read ended, failed
/// or was abandoned), it wakes every waiter.
pub(super) struct FillGuard {
    pub(super) fills: Arc<Fills>,
    pub(super) key: (String, String),
    pub(super) _done: watch::Sender<()>,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.fills
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// What a CDN read holds until its stream ends or is dropped.
pub(super) struct CdnHold {
    pub(super) _slot: TransferSlot,
    pub(super) _fill: FillGuard,
}
