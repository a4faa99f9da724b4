//! The command-line shell over the library: parse, call, print.
//!
//! Everything that touches stdout, stderr, the environment or progress bars
//! lives here (the library never prints). Each command is one file in
//! `commands/`; [`output`] holds the shared formatting and the ordered,
//! parallel, panic-proof loop over files. Knows nothing of how marks are
//! made or found.

pub mod args;
mod commands;
mod output;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::anyhow;
use leakmark::imageio::LoadLimits;
use leakmark::ledger::Ledger;
use leakmark::SecretKey;

use args::{Cli, Command};

/// Ledger file used when neither `--ledger` nor `LEAKMARK_LEDGER` is given.
const DEFAULT_LEDGER: &str = "leakmark.db";

/// How a command ended, when it did not fail outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Done; for detect and trace: a mark was found in at least one input.
    Success,
    /// Detect and trace: no mark in any input.
    NothingFound,
    /// Some inputs failed; each error was already printed on its own line.
    Failed,
}

impl Status {
    /// The process exit code (grep's convention).
    pub fn exit_code(self) -> ExitCode {
        match self {
            Status::Success => ExitCode::SUCCESS,
            Status::NothingFound => ExitCode::from(1),
            Status::Failed => ExitCode::from(2),
        }
    }
}

/// Runs one parsed command line.
///
/// # Errors
///
/// Any failure that stops the whole command; `main` prints it once.
pub fn run(cli: Cli) -> anyhow::Result<Status> {
    let ctx = Context {
        key: cli.key,
        ledger: cli.ledger,
        max_pixels: cli.max_pixels,
    };
    match cli.command {
        Command::Keygen { out } => commands::keygen::run(&out),
        Command::Embed {
            payload,
            input,
            output,
        } => commands::embed::run(&ctx, &payload, &input, &output),
        Command::Detect {
            json,
            original,
            inputs,
        } => commands::detect::run(&ctx, &inputs, json, original.as_deref()),
        Command::Ledger(cmd) => commands::ledger::run(&ctx, cmd),
        Command::Supplier(cmd) => commands::supplier::run(&ctx, cmd),
        Command::Issue(args) => commands::issue::run(&ctx, &args),
        Command::Trace {
            json,
            originals,
            report,
            inputs,
        } => commands::trace::run(&ctx, &inputs, json, originals.as_deref(), report.as_deref()),
        Command::Audit(args) => commands::audit::run(&ctx, &args),
        Command::Demo { dir } => commands::demo::run(&ctx, dir.as_deref()),
    }
}

/// Makes panics silent: `main` and the per-file loops catch them and print
/// one `error:` line instead of a backtrace dump. `RUST_BACKTRACE` keeps the
/// default hook, for debugging.
pub fn install_quiet_panic_hook() {
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        std::panic::set_hook(Box::new(|_| {}));
    }
}

/// The text of a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Whether an error is a closed stdout (e.g. `leakmark detect ... | head`),
/// which ends the program quietly, as in ripgrep.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Where the key and the ledger are, and the decoding limits: the options
/// every command resolves the same way.
pub struct Context {
    key: Option<PathBuf>,
    ledger: Option<PathBuf>,
    max_pixels: Option<u64>,
}

impl Context {
    /// The key file: `--key`, else `$LEAKMARK_KEY`.
    fn key_path(&self) -> anyhow::Result<PathBuf> {
        if let Some(path) = &self.key {
            return Ok(path.clone());
        }
        match std::env::var_os("LEAKMARK_KEY") {
            Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
            _ => Err(anyhow!(
                "no key given: pass --key KEYFILE or set LEAKMARK_KEY \
                 (create a key with `leakmark keygen --out KEYFILE`)"
            )),
        }
    }

    /// Loads the key.
    fn load_key(&self) -> anyhow::Result<SecretKey> {
        Ok(SecretKey::load(&self.key_path()?)?)
    }

    /// The ledger file: `--ledger`, else `$LEAKMARK_LEDGER`, else `./leakmark.db`.
    fn ledger_path(&self) -> PathBuf {
        if let Some(path) = &self.ledger {
            return path.clone();
        }
        match std::env::var_os("LEAKMARK_LEDGER") {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => PathBuf::from(DEFAULT_LEDGER),
        }
    }

    /// Opens the existing ledger under `key`, saying how to create one if
    /// it is missing.
    fn open_ledger(&self, key: &SecretKey) -> anyhow::Result<Ledger> {
        let path = self.ledger_path();
        Ledger::open(&path, &key.fingerprint()).map_err(|e| match e {
            leakmark::Error::LedgerMissing { path } => missing_ledger(&path),
            other => other.into(),
        })
    }

    /// Decoding limits, raised by `--max-pixels`.
    fn limits(&self) -> LoadLimits {
        let mut limits = LoadLimits::default();
        if let Some(max_pixels) = self.max_pixels {
            limits.max_pixels = max_pixels;
            // Room for 16-bit RGBA (8 bytes a pixel) plus decoder scratch.
            limits.max_alloc_bytes = limits.max_alloc_bytes.max(max_pixels.saturating_mul(10));
        }
        limits
    }
}

fn missing_ledger(path: &Path) -> anyhow::Error {
    anyhow!(
        "ledger {} does not exist: create it with `leakmark ledger init --key KEYFILE {}`, \
         or point to an existing one with --ledger PATH or LEAKMARK_LEDGER",
        path.display(),
        path.display()
    )
}

/// Loads the key and opens the ledger bound to it: the start of every
/// ledger-using command.
fn key_and_ledger(ctx: &Context) -> anyhow::Result<(SecretKey, Ledger)> {
    let key = ctx.load_key()?;
    let ledger = ctx.open_ledger(&key)?;
    Ok((key, ledger))
}
