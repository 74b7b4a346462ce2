//! What `#[advisory_locked]` accepts (`ui/pass`, compiled and run without a
//! database) and the exact errors it gives for misuse (`ui/fail`).
//!
//! Regenerate the expected errors with `TRYBUILD=overwrite cargo test -p
//! advisory-locked-ui-tests`, then read every changed `.stderr`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
