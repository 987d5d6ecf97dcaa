//! The use cases: the session (login, CDN configuration), resources (load,
//! upload) and the unlock of the image archive. They see the world only
//! through [`crate::ports`] and compute with [`crate::domain`]; nothing here
//! names an adapter or the startup code (checked by `tests/layers.rs`).

pub mod decrypt_file;
pub mod ranged;
pub mod readiness;
pub mod resources;
pub mod session;
pub mod unlock;
