//! Ports: one trait for each thing outside the loader's control (the
//! Resource API, the CDN, the local cache, the hardware, the container
//! runtime, the clock). Held as `Arc<dyn Port>`; big data crosses them as
//! byte streams, never as one buffer.

pub mod cache;
pub mod clock;
pub mod hardware;
pub mod object_store;
pub mod resource_api;
pub mod runtime;

use std::io;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

pub use cache::{
    BigPartCache, CacheError, CacheLookup, CacheUsage, CacheWriter, CachedEntry, EntryCheck,
    HeldSpace,
};
pub use clock::Clock;
pub use hardware::{HardwareError, HardwareProbe};
pub use object_store::{ObjectBody, ObjectStore, ObjectStoreConnector, StoreError};
pub use resource_api::{ApiError, Credentials, ResourceApi};
pub use runtime::{ContainerRuntime, RuntimeError};

/// A stream of bytes: how big parts, resources and archives travel.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + 'static>>;
