//! Helpers shared by the integration tests (`mod common;`).

/// Says why a test that needs external files (the shared data sets, the
/// MiniLM checkpoint) returns without checking anything. With
/// `COTEXT_REQUIRE_DATA` set (and not `0`), as `.ci/run` sets it, a missing file
/// is a failure instead: CI must not pass a test that did not run.
#[allow(dead_code)]
pub fn skip(reason: &str) {
    if std::env::var_os("COTEXT_REQUIRE_DATA").is_some_and(|v| v != "0") {
        panic!("{reason} (COTEXT_REQUIRE_DATA is set, so this is a failure, not a skip)");
    }
    eprintln!("skipped: {reason}");
}
