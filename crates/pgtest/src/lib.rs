//! The throw-away PostgreSQL cluster, now [`testbed::pg`]; this name stays for the crates
//! that still use it.

pub use testbed::pg::*;
