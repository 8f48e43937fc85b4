/// The names of the fuzz targets, as the files in `fuzz/fuzz_targets/`, the `[[bin]]`s of
/// `fuzz/Cargo.toml` and the folders of `fuzz/corpus/regressions/` are named. Included by
/// `bodies.rs` and by `cargo xtask fuzz` (`include!`), so the list exists once.
pub const TARGETS: &[&str] = &[
    "decoder",
    "stuffing",
    "sasl_line",
    "mbox",
    "maildir",
    "proxy",
    "lmtp",
];
