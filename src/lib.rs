//! Azaion Loader: serves split, encrypted AI models to local clients and
//! unlocks the device's encrypted Docker image archive.
//!
//! Hexagonal layout (docs/ARCHITECTURE.md): [`domain`] is pure logic,
//! [`ports`] the traits for all that is external, [`app`] the use cases,
//! [`adapters`] the inbound (HTTP) and outbound (reqwest, S3, disk, Docker)
//! implementations, and [`startup`] the configuration, the composition root
//! and the running application.

pub mod adapters;
pub mod app;
pub mod domain;
pub mod ports;
pub mod startup;
#[cfg(feature = "test-support")]
pub mod test_support;
