//! The one error type of the library, split by who is at fault.
//!
//! Messages say what to do next; the cause sits in `#[source]` so the CLI
//! can print the whole chain once.

use std::path::PathBuf;

/// Everything that can go wrong in leakmark.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- the user's input ----
    /// The file could not be opened or read.
    #[error("cannot read {path}: check that the file exists and is readable")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an image this build can decode, or it is corrupt or truncated.
    #[error("cannot decode {path} as an image (PNG, JPEG, TIFF, WebP and GIF are supported); the file may be corrupt or truncated")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The decoder's cause.
        #[source]
        source: image::ImageError,
    },
    /// The image claims more pixels or memory than the configured limits allow.
    #[error("{path} claims {width}x{height} pixels, above the safety limit ({limit}); if the file is trusted, raise it with --max-pixels")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Claimed width.
        width: u32,
        /// Claimed height.
        height: u32,
        /// The limit, human readable.
        limit: String,
    },
    /// The image is too small to carry or to decide on a mark.
    #[error("image is {width}x{height} px; at least {min_px} px on the short side is needed")]
    TooSmall {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// The minimum short side in pixels.
        min_px: u32,
    },
    /// The payload does not fit in 32 bits.
    #[error("payload {0} is out of range: it must satisfy 0 <= N < 2^32")]
    PayloadRange(String),
    /// The output would overwrite the input.
    #[error("refusing to write {output}: it is the input file; originals are never overwritten, choose another output path")]
    WouldOverwriteInput {
        /// The output path.
        output: PathBuf,
    },
    /// The output could not be written.
    #[error("cannot write {path}: check the folder exists, is writable and has space")]
    Write {
        /// The output path.
        path: PathBuf,
        /// The I/O cause.
        #[source]
        source: std::io::Error,
    },
    /// The image could not be encoded in the requested format.
    #[error("cannot encode {path}: use a .png, .jpg, .tif or .webp extension")]
    Encode {
        /// The output path.
        path: PathBuf,
        /// The encoder's cause.
        #[source]
        source: image::ImageError,
    },

    // ---- keys ----
    /// The key file is missing or unreadable.
    #[error("cannot read key file {path}: create one with `leakmark keygen --out {path}`")]
    KeyRead {
        /// The key file.
        path: PathBuf,
        /// The I/O cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file is not in the expected format.
    #[error(
        "key file {path} is malformed ({reason}); it must be a file written by `leakmark keygen`"
    )]
    KeyFormat {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key file can be read by other users.
    #[error("key file {path} is readable by other users; run `chmod 600 {path}`")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
    },
    /// The key file already exists.
    #[error("key file {path} already exists; refusing to overwrite a key (marks made with it would become untraceable)")]
    KeyExists {
        /// The key file.
        path: PathBuf,
    },

    // ---- the ledger ----
    /// A ledger operation failed.
    #[error("ledger {path}: {message}")]
    Ledger {
        /// The ledger file.
        path: PathBuf,
        /// What went wrong and what to do.
        message: String,
        /// The SQLite cause, if any.
        #[source]
        source: Option<rusqlite::Error>,
    },
    /// The ledger file does not exist and creating it was not asked for.
    #[error("ledger {path} does not exist: check the path, or create a new ledger there (an existing ledger is never created implicitly)")]
    LedgerMissing {
        /// The ledger file.
        path: PathBuf,
    },
    /// The ledger is bound to another key than the one passed.
    #[error("ledger {path}: this ledger was made under key {ledger_key}, you passed key {given_key}; pass the key the ledger was made with, or use another ledger")]
    LedgerWrongKey {
        /// The ledger file.
        path: PathBuf,
        /// Fingerprint of the key the ledger is bound to.
        ledger_key: String,
        /// Fingerprint of the key that was passed.
        given_key: String,
    },
    /// The ledger was written by a newer leakmark with a schema this build does not know.
    #[error("ledger {path} has schema version {found}, this build reads up to version {supported}: upgrade leakmark to use this ledger")]
    LedgerNewerSchema {
        /// The ledger file.
        path: PathBuf,
        /// The schema version found in the file.
        found: i64,
        /// The newest schema version this build reads.
        supported: u32,
    },
    /// The file is damaged, or is not a leakmark ledger at all.
    #[error(
        "ledger {path} is unusable ({reason}): check the path, or restore the ledger from a backup"
    )]
    LedgerCorrupt {
        /// The ledger file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
        /// The SQLite cause, if any.
        #[source]
        source: Option<rusqlite::Error>,
    },
    /// No supplier of that name (or id) is in the ledger.
    #[error("no supplier {name} in the ledger: add it first, or check the spelling against the supplier list")]
    UnknownSupplier {
        /// The supplier's name, or `#id` when looked up by id.
        name: String,
    },
    /// Re-parenting a supplier would make the supplier tree a cycle.
    #[error("making {parent} the parent of {supplier} would create a cycle ({supplier} is {parent} or one of its ancestors); choose a parent outside the subtree of {supplier}")]
    SupplierCycle {
        /// The supplier being (re)parented.
        supplier: String,
        /// The requested parent.
        parent: String,
    },
    /// A supplier CSV file is malformed.
    #[error("{path} line {line}: {reason}; supplier files are CSV with the header `name,parent,contact` (parent and contact may be empty)")]
    SupplierCsv {
        /// The CSV file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },

    // ---- the user's input, continued ----
    /// The file is empty.
    #[error("{path} is empty (0 bytes): the copy or download was probably interrupted; get the file again")]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },
    /// The file's content is not a format this build can decode.
    #[error("{path} is not a supported image: its content is not PNG, JPEG, TIFF, WebP or GIF (the extension does not matter)")]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
    },
    /// The file ends before its image data does.
    #[error("{path} is a truncated {format} file: it ends before the image data does (an interrupted download or copy?); get a complete copy")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The detected format, e.g. "JPEG".
        format: String,
        /// The decoder's cause, if it reported one.
        #[source]
        source: Option<image::ImageError>,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
