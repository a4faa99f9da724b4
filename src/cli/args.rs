//! The command line, as clap derive types.
//!
//! Only the shape of the arguments lives here: defaults that come from the
//! environment (`LEAKMARK_KEY`, `LEAKMARK_LEDGER`) are resolved in
//! [`super::Context`], so that every command finds the key and the ledger the
//! same way.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Exit statuses, shown under every `--help`.
const EXIT_STATUS: &str = "\
Exit status (like grep):
  0  success; for detect and trace: a mark was found in at least one input
  1  detect and trace only: no mark was found in any input
  2  an error occurred (for detect and trace: any input could not be read,
     even if a mark was found in another one)

Environment:
  LEAKMARK_KEY     key file used when --key is not given
  LEAKMARK_LEDGER  ledger used when --ledger is not given (else ./leakmark.db)";

/// Give every recipient of a design draft its own invisibly watermarked
/// copy, keep a ledger of who got which copy, and trace a leaked picture
/// back to the recipient and its parent in the supplier tree.
#[derive(Debug, Parser)]
#[command(name = "leakmark", version, after_help = EXIT_STATUS, propagate_version = true)]
pub struct Cli {
    /// The secret key file [default: $LEAKMARK_KEY].
    #[arg(long, global = true, value_name = "KEYFILE")]
    pub key: Option<PathBuf>,

    /// The ledger file [default: $LEAKMARK_LEDGER, else leakmark.db in the
    /// current folder].
    #[arg(long, global = true, value_name = "PATH")]
    pub ledger: Option<PathBuf>,

    /// Refuse images with more pixels than this (protects against
    /// decompression bombs) [default: 100000000].
    #[arg(long, global = true, value_name = "PIXELS")]
    pub max_pixels: Option<u64>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new secret key file (mode 0600; an existing file is never overwritten).
    #[command(after_help = EXIT_STATUS)]
    Keygen {
        /// Where to write the key.
        #[arg(long, value_name = "KEYFILE")]
        out: PathBuf,
    },

    /// Mark one image with a payload number, without a ledger.
    #[command(after_help = EXIT_STATUS)]
    Embed {
        /// The number to hide, 0 <= N < 2^32.
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        payload: String,
        /// The original image (never modified).
        input: PathBuf,
        /// Where to write the marked copy (.png, .jpg, .tif or .webp).
        output: PathBuf,
    },

    /// Look for a mark in images (blind: key only, no ledger), in parallel.
    #[command(after_help = EXIT_STATUS)]
    Detect {
        /// Print one JSON object per input per line instead of text.
        #[arg(long)]
        json: bool,
        /// The unmarked original the inputs were made from: read them in
        /// informed mode (registered on it, the original subtracted).
        #[arg(long, value_name = "FILE")]
        original: Option<PathBuf>,
        /// Images, or folders searched for images.
        #[arg(required = true, value_name = "INPUT")]
        inputs: Vec<PathBuf>,
    },

    /// Create or inspect a ledger.
    #[command(subcommand)]
    Ledger(LedgerCommand),

    /// Manage the supplier tree kept in the ledger.
    #[command(subcommand)]
    Supplier(SupplierCommand),

    /// Issue marked copies of documents to suppliers, recorded in the ledger.
    #[command(after_help = EXIT_STATUS)]
    Issue(IssueArgs),

    /// Trace leaked images back to the copy, its recipient and the
    /// recipient's chain up the supplier tree. Uses informed mode (leak
    /// registered on the archived original) whenever the original is at hand.
    #[command(after_help = EXIT_STATUS)]
    Trace {
        /// Print one JSON object per leak per line instead of text.
        #[arg(long)]
        json: bool,
        /// A folder holding archived originals (found by SHA-256); without
        /// it, each document's original is read from where `issue` recorded it.
        #[arg(long, value_name = "DIR")]
        originals: Option<PathBuf>,
        /// Also write DIR/report.md (every leak's finding and SHA-256) and,
        /// for each leak registered on an original, DIR/<leak>.where.png: the
        /// original with the leak's outline (red) and covered box (blue).
        #[arg(long, value_name = "DIR")]
        report: Option<PathBuf>,
        /// Leaked images, or folders searched for images.
        #[arg(required = true, value_name = "LEAK")]
        inputs: Vec<PathBuf>,
    },

    /// Measure how well one image keeps its mark through simulated leaks:
    /// embed a test serial, run the attack suite, detect blind, print a table.
    #[command(after_help = AUDIT_EXIT_STATUS)]
    Audit(AuditArgs),

    /// Run the whole story on samples/ in a scratch folder: key, ledger,
    /// supplier tree, issue every draft to every tier-two vendor, leak one
    /// copy as a phone photo, trace it.
    #[command(after_help = DEMO_EXIT_STATUS)]
    Demo {
        /// Scratch folder (created; must be empty if it exists)
        /// [default: a new temporary folder, kept and printed].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Exit statuses of `audit`.
const AUDIT_EXIT_STATUS: &str = "\
Exit status:
  0  the audit ran (whatever the attacks did to the mark)
  2  an error occurred (unreadable image or key, unknown attack name, ...)";

/// Exit statuses of `demo`.
const DEMO_EXIT_STATUS: &str = "\
Exit status:
  0  the trace named the vendor who really received the leaked copy
  1  no mark was found in the leak
  2  an error occurred, or the trace named someone else";

/// `leakmark audit ...`
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The image to audit (never modified).
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,

    /// Also write DIR/marked.png, DIR/mark_strength.png and DIR/report.md.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,

    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Run only these attacks of the suite, by name (comma-separated;
    /// `none,jpeg-50`); the table lists every name without it.
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    pub attacks: Vec<String>,
}

/// `leakmark ledger ...`
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Create a new, empty ledger bound to the key given with --key.
    #[command(after_help = EXIT_STATUS)]
    Init {
        /// Where to create it [default: --ledger, $LEAKMARK_LEDGER, else ./leakmark.db].
        #[arg(value_name = "LEDGER")]
        path: Option<PathBuf>,
    },
}

/// `leakmark supplier ...`
#[derive(Debug, Subcommand)]
pub enum SupplierCommand {
    /// Add a supplier, as a tier-one or under a parent.
    #[command(after_help = EXIT_STATUS)]
    Add {
        /// Its unique name.
        name: String,
        /// The supplier it works for (leave out for a tier-one).
        #[arg(long, value_name = "NAME")]
        parent: Option<String>,
        /// Who to contact there (e-mail, person).
        #[arg(long, value_name = "TEXT")]
        contact: Option<String>,
    },
    /// Add or update suppliers from a CSV file with the header `name,parent,contact`.
    #[command(after_help = EXIT_STATUS)]
    Import {
        /// The CSV file.
        #[arg(value_name = "FILE.csv")]
        file: PathBuf,
    },
    /// Print the supplier tree.
    #[command(after_help = EXIT_STATUS)]
    List,
}

/// `leakmark issue ...`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("recipients").required(true).args(["to", "all"])))]
pub struct IssueArgs {
    /// The original drafts to issue (never modified).
    #[arg(required = true, value_name = "DOC")]
    pub docs: Vec<PathBuf>,

    /// Recipients, by supplier name (repeat, or list several after one --to).
    #[arg(long, num_args = 1.., value_name = "SUPPLIER")]
    pub to: Vec<String>,

    /// Issue to every supplier in the ledger.
    #[arg(long)]
    pub all: bool,

    /// Folder for the copies: DIR/<recipient>/<document file name>.
    #[arg(long, value_name = "DIR", default_value = "issued")]
    pub out: PathBuf,

    /// Keep a read-only copy of each original in DIR, named by its SHA-256,
    /// and record that copy in the ledger: `trace` then finds it for
    /// informed detection even after the draft is edited or moved. (A
    /// document already in the ledger keeps the path recorded when it was
    /// first issued; `trace --originals DIR` finds archived copies by hash.)
    #[arg(long, value_name = "DIR")]
    pub archive: Option<PathBuf>,
}
