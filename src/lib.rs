//! Azaion Loader: serves split, encrypted AI models to local clients and
//! unlocks the device's encrypted Docker image archive.
//!
//! Hexagonal layout: [`domain`] is pure logic, [`ports`] the traits for all
//! that is external, [`adapters`] the real and fake implementations, and
//! [`app`] the use cases, the HTTP API and the composition root.

pub mod adapters;
pub mod app;
pub mod domain;
pub mod ports;
