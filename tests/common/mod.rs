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

/// The shared data sets (`COTEXT_DATA`, default `../shared/datasets`) as an
/// absolute path when `marker` (a data set's folder, or `README.md`) is there,
/// or `None` after [`skip`].
#[allow(dead_code)]
pub fn shared_data_with(marker: &str) -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("COTEXT_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/datasets"))
        });
    if dir.join(marker).exists() {
        Some(dir.canonicalize().unwrap())
    } else {
        skip(&format!(
            "no shared datasets with {marker} at {} (set COTEXT_DATA)",
            dir.display()
        ));
        None
    }
}

/// The shared data sets, as [`shared_data_with`] finds them by `sst5`.
#[allow(dead_code)]
pub fn shared_datasets() -> Option<std::path::PathBuf> {
    shared_data_with("sst5")
}

/// The `cotext` binary with `args`, run in `cwd`, with the hub pointed at a
/// closed port and its cache in `cwd/hf` (tests never reach the network).
#[allow(dead_code)]
pub fn command(cwd: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cotext"));
    cmd.args(args)
        .current_dir(cwd)
        .env("HF_HOME", cwd.join("hf"))
        .env("HF_ENDPOINT", "http://127.0.0.1:9");
    cmd
}

/// Runs [`command`] to the end, with `stdin` as its standard input (none: an
/// empty one).
#[allow(dead_code)]
pub fn run(mut cmd: std::process::Command, stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let Some(input) = stdin else {
        return cmd.stdin(Stdio::null()).output().unwrap();
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `cotext args` in `cwd` (see [`command`]), with `stdin`.
#[allow(dead_code)]
pub fn cotext(cwd: &std::path::Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    run(command(cwd, args), stdin)
}

/// A finished command's stdout and stderr, as one text.
#[allow(dead_code)]
pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
