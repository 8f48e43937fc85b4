//! cargo-fuzz target `lmtp`: see `targets/bodies.rs`.
#![no_main]

#[path = "../targets/bodies.rs"]
#[allow(dead_code)]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::lmtp(data));
