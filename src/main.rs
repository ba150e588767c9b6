//! The `cotext` binary: parse, validate, dispatch, map errors to exit codes.
//!
//! Exit codes: 0 success, 1 internal failure, 2 bad input (a malformed file,
//! flag or config value), as the error says.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Keep a training step's freed buffers in the heap (fewer page faults).
    cotext::malloc::tune();
    // candle's elementwise workers spin less between ops (unless the user says).
    cotext::threads::spin_less();
    // Run inside the rayon pool, so that parallel kernels share work with this
    // thread instead of handing it over and waiting.
    match cotext::threads::install(cli::run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed pipe (`cotext ... | head`) is not a failure.
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            eprintln!("error: {err:#}");
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
