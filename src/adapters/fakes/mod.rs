//! In-memory fakes for every port, with fault injection, for the offline
//! test suite. They model the real peers' behaviour closely enough that the
//! use cases cannot tell the difference; they never touch disk or network.

mod cache;
mod clock;
mod hardware;
mod object_store;
mod resource_api;
mod runtime;

pub use cache::FakeCache;
pub use clock::FakeClock;
pub use hardware::FakeHardware;
pub use object_store::{FakeObjectStore, FakeObjectStoreConnector};
pub use resource_api::{FakeResourceApi, FakeRoute};
pub use runtime::{FakeRuntime, fake_archive};

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// Faults queued for the next calls of one operation.
pub(crate) struct FaultQueue<E> {
    faults: Mutex<VecDeque<Fault<E>>>,
}

impl<E> Default for FaultQueue<E> {
    fn default() -> Self {
        Self {
            faults: Mutex::new(VecDeque::new()),
        }
    }
}

pub(crate) enum Fault<E> {
    Fail(E),
    Stall(Duration),
}

impl<E: Clone> FaultQueue<E> {
    pub(crate) fn push(&self, fault: Fault<E>, count: usize) {
        let mut q = lock(&self.faults);
        for _ in 0..count {
            q.push_back(match &fault {
                Fault::Fail(e) => Fault::Fail(e.clone()),
                Fault::Stall(d) => Fault::Stall(*d),
            });
        }
    }

    /// Applies the next queued fault, if any: sleeps for a stall, returns an error for a failure.
    pub(crate) async fn apply(&self) -> Result<(), E> {
        let next = lock(&self.faults).pop_front();
        match next {
            Some(Fault::Fail(e)) => Err(e),
            Some(Fault::Stall(d)) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// Locks a mutex, recovering from poisoning (a panicking test thread must not cascade).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
