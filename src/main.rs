//! The `leakmark` command. `main` only runs the CLI, prints the error
//! chain once and maps the outcome to an exit code (0 found / success,
//! 1 nothing found, 2 error); all the work lives in the library and in
//! `cli`.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    cli::install_quiet_panic_hook();
    // Clap prints its own usage errors and exits with status 2.
    let args = cli::args::Cli::parse();
    match std::panic::catch_unwind(|| cli::run(args)) {
        Ok(Ok(status)) => status.exit_code(),
        Ok(Err(err)) if cli::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Ok(Err(err)) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
        Err(payload) => {
            eprintln!(
                "error: internal error ({}); this is a bug in leakmark, please report it",
                cli::panic_message(payload.as_ref())
            );
            ExitCode::from(2)
        }
    }
}
