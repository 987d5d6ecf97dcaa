//! The loader's HTTP API end to end, fully offline: the app is built with
//! in-memory fakes behind every port and driven over real HTTP on 127.0.0.1.

mod boundary;
mod fuzz;
mod integrity;
mod load;
mod load_cache;
mod login_and_status;
mod manage;
mod metrics;
mod openapi;
mod page;
mod ready;
mod security;
mod support;
mod unlock;
mod upload;
