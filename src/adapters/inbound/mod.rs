//! What drives the application: the HTTP API that local clients call.

pub mod http;
