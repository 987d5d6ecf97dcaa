//! Pure domain logic of the loader: byte formats, key derivation, split math,
//! name validation, configuration documents and the unlock state machine.
//! Nothing here does I/O, spawns tasks or knows about HTTP, S3 or Docker.

pub(crate) mod aes_hw;
pub mod cache_record;
pub mod cdn;
pub mod cipher;
pub mod hardware;
pub mod keys;
pub mod names;
pub mod secret;
pub mod split;
pub mod token;
pub mod unlock;

#[cfg(test)]
mod vectors;
