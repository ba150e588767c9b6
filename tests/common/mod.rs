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

/// The shared data sets (`COTEXT_DATA`, default `../shared/datasets`), as an
/// absolute path, or `None` after [`skip`] when they are absent.
#[allow(dead_code)]
pub fn shared_datasets() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("COTEXT_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/datasets"))
        });
    if dir.join("sst5").is_dir() {
        Some(dir.canonicalize().unwrap())
    } else {
        skip(&format!(
            "no shared datasets at {} (set COTEXT_DATA)",
            dir.display()
        ));
        None
    }
}
