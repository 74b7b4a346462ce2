//! Compile-time tests of `#[advisory_locked]`: see `tests/ui.rs` and the `ui/` folder.
