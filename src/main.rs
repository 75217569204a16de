//! The `anamnesis` binary: the command line of [`anamnesis::cli`], run with
//! the process's allocator and exit code.

use std::process::ExitCode;

use clap::Parser;

use anamnesis::cli::Cli;
use anamnesis::error::ApiError;
use anamnesis::service::ServiceError;

/// Profiling showed glibc's malloc and free among the top costs of both the
/// read and the write path (many short-lived strings and vectors per
/// request, freed on other threads); mimalloc keeps per-thread heaps.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match anamnesis::cli::run(Cli::parse(), api_code) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the cause chain on one line; no backtrace noise.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The code the API answers `refused` with, from the one error-code table:
/// the import's rejects report names it (see `anamnesis::cli::RefusalCode`).
fn api_code(refused: ServiceError) -> &'static str {
    ApiError::Service(refused).status_and_code().1
}
