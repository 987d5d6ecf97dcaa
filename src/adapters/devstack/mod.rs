//! The local peers of `azaion-loader dev` and of the integration tests: a
//! Resource API emulator and an S3 server on the local disk.

pub mod emulator;
pub mod s3_server;
