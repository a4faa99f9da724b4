//! `leakmark ledger init`: create a ledger bound to the key.

use leakmark::ledger::Ledger;

use crate::cli::args::LedgerCommand;
use crate::cli::{Context, Status};

/// Runs a `ledger` subcommand.
pub fn run(ctx: &Context, cmd: LedgerCommand) -> anyhow::Result<Status> {
    match cmd {
        LedgerCommand::Init { path } => {
            let key = ctx.load_key()?;
            let path = path.unwrap_or_else(|| ctx.ledger_path());
            Ledger::create(&path, &key.fingerprint())?;
            println!(
                "created ledger {} bound to key {}",
                path.display(),
                key.fingerprint()
            );
            Ok(Status::Success)
        }
    }
}
