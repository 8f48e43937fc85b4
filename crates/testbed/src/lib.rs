//! The test bed shared by the end-to-end tests, xtask and the bench: std only, so that it
//! builds with nothing but the toolchain.
//!
//! It knows the programs it starts (nginx here) only by their command lines and files; it
//! knows nothing of pop3d's crates.

pub mod nginx;
pub mod rng;
