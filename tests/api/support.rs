//! The offline API tests' support: [`azaion_loader::test_support::app`].

pub use azaion_loader::test_support::app::*;
