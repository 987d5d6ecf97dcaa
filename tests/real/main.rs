//! Integration tests of the real adapters against real local peers: the
//! Resource API emulator over HTTP, an embedded S3 server, the filesystem,
//! and a Docker daemon (skipped with a printed reason where none runs,
//! mandatory when `AZAION_REQUIRE_DOCKER=1`, as in CI).

mod boundary;
mod crash;
mod docker;
mod e2e;
mod faults;
mod integrity;
mod load;
mod moto;
mod resource_api;
mod s3;
mod unlock;
