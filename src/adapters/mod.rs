//! Adapters: everything that touches the world outside the use cases.
//!
//! - [`inbound`]: what drives the application (the HTTP API).
//! - [`outbound`]: what the application drives, one module per real thing
//!   behind a port (reqwest, S3, the file system, sysinfo, Docker via bollard
//!   or its CLI, the clock), plus the retry and metering decorators.
//! - `devstack` (feature `dev-stack`, default on): the local peers of
//!   `azaion-loader dev` and the integration tests (the Resource API
//!   emulator, an S3 server).
//! - `fakes` (feature `test-support`, and the crate's own unit tests):
//!   in-memory ports for the offline tests.
//! - [`disk`]: free-space checks that both sides use (the cache, the
//!   upload spool).
//!
//! docs/ARCHITECTURE.md gives the rule: `inbound` uses `app`; `outbound`
//! implements `ports`; neither names the other.

#[cfg(feature = "dev-stack")]
pub mod devstack;
pub mod disk;
#[cfg(any(test, feature = "test-support"))]
pub mod fakes;
pub mod inbound;
pub mod outbound;
