//! The ledger: who received which marked copy of which document.
//!
//! Tracing a leak ends in a serial number; only the ledger turns that serial
//! into a recipient (and that recipient's tier-one parent). It records the
//! supplier tree, the documents issued, every copy with its serial, and the
//! result of every trace, in one SQLite file.
//!
//! Why it looks the way it does:
//!
//! - **Bound to one key.** Serials mean nothing under another key, so a
//!   ledger stores the fingerprint of the key it was made under and refuses
//!   any other ([`Error::LedgerWrongKey`]).
//! - **Nothing is lost.** Every write is a transaction; the journal is WAL;
//!   a missing file is never created implicitly ([`Error::LedgerMissing`]);
//!   the schema is versioned with `PRAGMA user_version` and a ledger written
//!   by a newer build is refused ([`Error::LedgerNewerSchema`]), never
//!   rewritten.
//! - **Issuing is resumable.** [`Ledger::allocate_or_get_copy`] reserves a
//!   serial before the marked file is written and
//!   [`Ledger::mark_copy_written`] confirms it afterwards. A batch that dies
//!   in between leaves a `reserved` row that the next run completes with the
//!   same serial, so a (document, recipient) pair never gets two serials.
//! - **Serials are not guessable.** They are drawn from the operating
//!   system's RNG, not counted up, so one leaked copy tells nothing about the
//!   serials of the others.
//! - **Several processes may share a ledger.** Each opens its own
//!   connection; writers wait for each other up to
//!   [`BUSY_TIMEOUT_S`] seconds.
//!
//! The ledger knows nothing of images, keys or marks: it stores the hex key
//! fingerprint, hashes and numbers the caller gives it. It never prints.
//!
//! # Examples
//!
//! ```
//! use leakmark::ledger::{CopyState, Ledger, NewDocument};
//!
//! let dir = tempfile::tempdir().expect("a temporary folder");
//! let path = dir.path().join("ledger.sqlite");
//! let mut ledger = Ledger::create(&path, "8f14e45fceea167a")?;
//!
//! let tier_one = ledger.add_supplier("Acme Plastics", None, Some("sec@acme.example"))?;
//! let tier_two = ledger.add_supplier("Moulds & Co", Some("Acme Plastics"), None)?;
//! let chain = ledger.chain(tier_two.id)?;
//! assert_eq!(chain.len(), 2);
//! assert_eq!(chain[1].name, tier_one.name);
//!
//! let doc = ledger.register_document(&NewDocument {
//!     name: "bumper_front_v3.png".into(),
//!     sha256: "ab".repeat(32),
//!     original_path: None,
//!     width: 4000,
//!     height: 3000,
//!     variant: 1,
//! })?;
//! let copy = ledger.allocate_or_get_copy(doc.id, tier_two.id)?;
//! assert_eq!(copy.state, CopyState::Reserved);
//! // ... embed `copy.serial` and write the marked file, then:
//! let copy = ledger.mark_copy_written(copy.id, &dir.path().join("out.png"), &"cd".repeat(32))?;
//! assert_eq!(copy.state, CopyState::Issued);
//!
//! let found = ledger.copy_by_serial(copy.serial)?.expect("just issued");
//! assert_eq!(found.recipient_name, "Moulds & Co");
//! # Ok::<(), leakmark::Error>(())
//! ```

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, ToSql, Transaction};
use rusqlite::{Row, TransactionBehavior};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The newest ledger schema this build reads and writes.
///
/// Equal to the number of entries in the migration list: a ledger at
/// version `v` is brought up to date by running migrations `v..`.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// How long a writer waits for another process holding the ledger, in seconds.
///
/// Issuing one copy holds the write lock for well under a millisecond, so
/// five seconds only runs out when another process is stuck.
pub const BUSY_TIMEOUT_S: u64 = 5;

/// `PRAGMA application_id` of a leakmark ledger ("LKML").
///
/// Lets [`Ledger::open`] tell a ledger from some other SQLite file.
const APPLICATION_ID: i32 = 0x4C4B_4D4C;

/// How many random serials to try before giving up.
///
/// With `n` copies in the ledger a draw collides with probability
/// `n / 2^32`; 64 straight collisions mean the RNG is broken, not bad luck.
const SERIAL_ATTEMPTS: usize = 64;

/// Schema migrations: entry `i` brings a ledger from version `i` to `i + 1`.
///
/// Append a new entry to change the schema; never edit a shipped one, since
/// ledgers in the field were made by it.
const MIGRATIONS: &[&str] = &[
    // v0 -> v1: the first schema.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;

    CREATE TABLE suppliers (
        id         INTEGER PRIMARY KEY,
        name       TEXT NOT NULL UNIQUE CHECK (length(name) > 0),
        contact    TEXT,
        parent_id  INTEGER REFERENCES suppliers(id),
        created_at INTEGER NOT NULL,
        CHECK (parent_id IS NULL OR parent_id <> id)
    ) STRICT;
    CREATE INDEX suppliers_by_parent ON suppliers(parent_id);

    CREATE TABLE documents (
        id            INTEGER PRIMARY KEY,
        name          TEXT NOT NULL,
        sha256        TEXT NOT NULL UNIQUE CHECK (length(sha256) = 64),
        original_path TEXT,
        width         INTEGER NOT NULL CHECK (width BETWEEN 1 AND 4294967295),
        height        INTEGER NOT NULL CHECK (height BETWEEN 1 AND 4294967295),
        variant       INTEGER NOT NULL CHECK (variant BETWEEN 0 AND 255),
        created_at    INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE copies (
        id            INTEGER PRIMARY KEY,
        document_id   INTEGER NOT NULL REFERENCES documents(id),
        recipient_id  INTEGER NOT NULL REFERENCES suppliers(id),
        serial        INTEGER NOT NULL UNIQUE CHECK (serial BETWEEN 1 AND 4294967295),
        state         TEXT NOT NULL CHECK (state IN ('reserved', 'issued')),
        reserved_at   INTEGER NOT NULL,
        issued_at     INTEGER,
        output_path   TEXT,
        output_sha256 TEXT,
        UNIQUE (document_id, recipient_id),
        CHECK ((state = 'issued') = (issued_at IS NOT NULL
                                     AND output_path IS NOT NULL
                                     AND output_sha256 IS NOT NULL))
    ) STRICT;
    CREATE INDEX copies_by_recipient ON copies(recipient_id);

    CREATE TABLE traces (
        id          INTEGER PRIMARY KEY,
        leak_path   TEXT NOT NULL,
        leak_sha256 TEXT NOT NULL CHECK (length(leak_sha256) = 64),
        traced_at   INTEGER NOT NULL,
        result_json TEXT NOT NULL CHECK (json_valid(result_json))
    ) STRICT;
    "#,
];

/// Row id of a supplier in one ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SupplierId(pub i64);

/// Row id of a document in one ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DocumentId(pub i64);

/// Row id of a copy in one ledger (not its serial).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CopyId(pub i64);

/// Row id of a recorded trace in one ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TraceId(pub i64);

/// A recipient of copies: a supplier at any tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Supplier {
    /// Row id.
    pub id: SupplierId,
    /// Unique name, as typed by the user (trimmed).
    pub name: String,
    /// Free-form contact (e-mail, person), if known.
    pub contact: Option<String>,
    /// The supplier this one is a subcontractor of; `None` for a tier-one.
    pub parent_id: Option<SupplierId>,
    /// When it was added, in seconds since the Unix epoch (UTC).
    pub created_at: i64,
}

/// One supplier with its subcontractors, as returned by [`Ledger::supplier_tree`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SupplierNode {
    /// The supplier.
    pub supplier: Supplier,
    /// Its direct subcontractors, sorted by name.
    pub children: Vec<SupplierNode>,
}

/// A supplier to add, as read from a CSV file by [`parse_suppliers_csv`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewSupplier {
    /// Unique name.
    pub name: String,
    /// Name of the parent supplier, if any. It may be another row of the
    /// same import or a supplier already in the ledger.
    pub parent: Option<String>,
    /// Free-form contact, if any.
    pub contact: Option<String>,
}

/// What [`Ledger::import_suppliers`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    /// Suppliers added.
    pub added: usize,
    /// Suppliers already present whose contact was filled in or changed.
    pub updated: usize,
    /// Suppliers already present exactly as in the import.
    pub unchanged: usize,
}

/// A document (an original design draft) that copies are issued of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Document {
    /// Row id.
    pub id: DocumentId,
    /// Human name, usually the original file name.
    pub name: String,
    /// SHA-256 of the original file, 64 lowercase hex digits. Unique.
    pub sha256: String,
    /// Where the original is archived, for reference-mode tracing.
    pub original_path: Option<PathBuf>,
    /// Width of the original in pixels.
    pub width: u32,
    /// Height of the original in pixels.
    pub height: u32,
    /// Watermark pattern variant the caller chose for this document.
    pub variant: u8,
    /// When it was registered, in seconds since the Unix epoch (UTC).
    pub created_at: i64,
}

/// A document to register with [`Ledger::register_document`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDocument {
    /// Human name, usually the original file name.
    pub name: String,
    /// SHA-256 of the original file, 64 hex digits (either case).
    pub sha256: String,
    /// Where the original is archived, if it is.
    pub original_path: Option<PathBuf>,
    /// Width in pixels (at least 1).
    pub width: u32,
    /// Height in pixels (at least 1).
    pub height: u32,
    /// Watermark pattern variant.
    pub variant: u8,
}

/// Where a copy is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyState {
    /// A serial is reserved; the marked file may or may not have been
    /// written (the run that reserved it may have died).
    Reserved,
    /// The marked file was written and its hash recorded.
    Issued,
}

impl CopyState {
    /// The name stored in the ledger: `reserved` or `issued`.
    pub fn as_str(self) -> &'static str {
        match self {
            CopyState::Reserved => "reserved",
            CopyState::Issued => "issued",
        }
    }
}

impl ToSql for CopyState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for CopyState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "reserved" => Ok(CopyState::Reserved),
            "issued" => Ok(CopyState::Issued),
            _ => Err(FromSqlError::InvalidType),
        }
    }
}

/// One copy of one document for one recipient, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyRecord {
    /// Row id.
    pub id: CopyId,
    /// The document.
    pub document_id: DocumentId,
    /// The recipient.
    pub recipient_id: SupplierId,
    /// The serial embedded in this copy: random, nonzero, unique in the ledger.
    pub serial: u32,
    /// Reserved or issued.
    pub state: CopyState,
    /// When the serial was reserved, in seconds since the Unix epoch (UTC).
    pub reserved_at: i64,
    /// When the marked file was first recorded as written, in seconds since
    /// the Unix epoch (UTC).
    pub issued_at: Option<i64>,
    /// Where the marked file was written.
    pub output_path: Option<PathBuf>,
    /// SHA-256 of the marked file, 64 lowercase hex digits.
    pub output_sha256: Option<String>,
}

/// A copy joined with its document and recipient: one hypothesis for tracing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuedCopy {
    /// Row id of the copy.
    pub copy_id: CopyId,
    /// The serial embedded in the copy.
    pub serial: u32,
    /// Reserved or issued.
    pub state: CopyState,
    /// The document's pattern variant.
    pub variant: u8,
    /// The document.
    pub document_id: DocumentId,
    /// The document's name.
    pub document_name: String,
    /// SHA-256 of the document's original.
    pub document_sha256: String,
    /// The recipient.
    pub recipient_id: SupplierId,
    /// The recipient's name.
    pub recipient_name: String,
    /// Where the marked file was written, once issued.
    pub output_path: Option<PathBuf>,
    /// When it was issued (or reserved, if not yet issued), in seconds since
    /// the Unix epoch (UTC).
    pub time: i64,
}

/// A trace run, as stored by [`Ledger::record_trace`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceRecord {
    /// Row id.
    pub id: TraceId,
    /// The leaked file that was traced.
    pub leak_path: PathBuf,
    /// SHA-256 of the leaked file, 64 lowercase hex digits.
    pub leak_sha256: String,
    /// When it was traced, in seconds since the Unix epoch (UTC).
    pub traced_at: i64,
    /// What the detector found, as JSON text.
    pub result_json: String,
}

/// SHA-256 of a file's contents as 64 lowercase hex digits, read in chunks.
///
/// The form [`NewDocument::sha256`], [`Ledger::mark_copy_written`] and
/// [`Ledger::record_trace`] expect.
///
/// # Errors
///
/// [`Error::Read`] if the file cannot be read.
pub fn sha256_file(path: &Path) -> Result<String> {
    let read_err = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        // `read` never returns more than the buffer length.
        hasher.update(&buf[..n]);
    }
    Ok(to_hex(&hasher.finalize()))
}

/// SHA-256 of bytes already in memory, in the form of [`sha256_file`]: for
/// a file that is read once, checked and then decoded from the same bytes.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Parses a supplier list in CSV form.
///
/// The first non-blank line must be the header `name,parent,contact`
/// (any case). Each further non-blank line is one supplier; `parent` and
/// `contact` may be empty, and the `contact` column may be left out.
/// Fields may be quoted with `"` (double a quote inside a quoted field), so
/// a contact such as `"Doe, Jane <jane@x.example>"` works. Fields are
/// trimmed. A parent may appear before or after its children.
///
/// `source` only names the file in error messages.
///
/// # Errors
///
/// [`Error::SupplierCsv`] with the line number for a missing or wrong
/// header, a wrong number of fields, bad quoting, an empty name or a name
/// given twice.
///
/// # Examples
///
/// ```
/// use std::path::Path;
/// let rows = leakmark::ledger::parse_suppliers_csv(
///     "name,parent,contact\nAcme,,sec@acme.example\nMoulds,Acme,\"Doe, Jane\"\n",
///     Path::new("suppliers.csv"),
/// )?;
/// assert_eq!(rows[1].parent.as_deref(), Some("Acme"));
/// assert_eq!(rows[1].contact.as_deref(), Some("Doe, Jane"));
/// # Ok::<(), leakmark::Error>(())
/// ```
pub fn parse_suppliers_csv(text: &str, source: &Path) -> Result<Vec<NewSupplier>> {
    let csv_err = |line: usize, reason: String| Error::SupplierCsv {
        path: source.to_path_buf(),
        line,
        reason,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = Vec::new();
    let mut seen = HashSet::new();
    let mut header_seen = false;
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields = split_csv_line(line).map_err(|reason| csv_err(line_no, reason.into()))?;
        if !header_seen {
            let header: Vec<String> = fields.iter().map(|f| f.to_ascii_lowercase()).collect();
            if header != ["name", "parent", "contact"] {
                return Err(csv_err(line_no, format!("the header is `{}`", line.trim())));
            }
            header_seen = true;
            continue;
        }
        let (name, parent, contact) = match fields.as_slice() {
            [name, parent] => (name, parent, None),
            [name, parent, contact] => (name, parent, Some(contact)),
            _ => {
                return Err(csv_err(
                    line_no,
                    format!("expected 3 fields, found {}", fields.len()),
                ))
            }
        };
        if name.is_empty() {
            return Err(csv_err(line_no, "the name is empty".into()));
        }
        if !seen.insert(name.clone()) {
            return Err(csv_err(
                line_no,
                format!("supplier {name:?} is listed twice"),
            ));
        }
        let non_empty = |s: &String| (!s.is_empty()).then(|| s.clone());
        rows.push(NewSupplier {
            name: name.clone(),
            parent: non_empty(parent),
            contact: contact.and_then(non_empty),
        });
    }
    if !header_seen {
        return Err(csv_err(1, "the file is empty".into()));
    }
    Ok(rows)
}

/// Splits one CSV line into trimmed fields (RFC 4180 quoting, no line breaks
/// inside fields).
fn split_csv_line(line: &str) -> std::result::Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut in_quotes = false;
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            ',' => {
                fields.push(std::mem::take(&mut field).trim().to_string());
                quoted = false;
            }
            '"' if !quoted && field.trim().is_empty() => {
                field.clear();
                in_quotes = true;
                quoted = true;
            }
            '"' => return Err("a quote inside an unquoted field; quote the whole field and double the quotes inside it"),
            c if quoted && !c.is_whitespace() => {
                return Err("text after a closing quote; quote the whole field")
            }
            c => field.push(c),
        }
    }
    if in_quotes {
        return Err("a quoted field is not closed (fields cannot span lines)");
    }
    fields.push(field.trim().to_string());
    Ok(fields)
}

/// How [`Ledger`] treats a missing or empty file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenMode {
    /// The file must not exist yet.
    Create,
    /// The file must exist and hold a ledger.
    Open,
    /// Open if it exists, create otherwise.
    OpenOrCreate,
}

/// An open ledger: one SQLite connection to one ledger file.
///
/// Not shared between threads: open one `Ledger` per thread or process on
/// the same file; they coordinate through SQLite's locks.
#[derive(Debug)]
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
    key_fingerprint: String,
}

impl Ledger {
    /// Creates a new ledger at `path`, bound to the key with fingerprint
    /// `key_fingerprint` (hex; stored in lowercase).
    ///
    /// # Errors
    ///
    /// [`Error::Ledger`] if the file already exists (a ledger is never
    /// overwritten) or the fingerprint is not hex; [`Error::Write`] if the
    /// file cannot be created.
    pub fn create(path: &Path, key_fingerprint: &str) -> Result<Ledger> {
        Self::open_with(path, key_fingerprint, OpenMode::Create)
    }

    /// Opens the existing ledger at `path`, checking that it was made under
    /// the key with fingerprint `key_fingerprint`, and migrates an older
    /// schema to [`SCHEMA_VERSION`].
    ///
    /// # Errors
    ///
    /// - [`Error::LedgerMissing`] if there is no file at `path`;
    /// - [`Error::LedgerWrongKey`] if the ledger is bound to another key;
    /// - [`Error::LedgerNewerSchema`] if a newer leakmark wrote it;
    /// - [`Error::LedgerCorrupt`] if the file is damaged, not SQLite, or
    ///   another program's SQLite database;
    /// - [`Error::Ledger`] for other SQLite failures.
    pub fn open(path: &Path, key_fingerprint: &str) -> Result<Ledger> {
        Self::open_with(path, key_fingerprint, OpenMode::Open)
    }

    /// Opens the ledger at `path`, creating it if there is no file there.
    ///
    /// Safe when several processes race to create the same ledger: one
    /// creates it, the others open it.
    ///
    /// # Errors
    ///
    /// As [`Ledger::open`], except that a missing file is created.
    pub fn open_or_create(path: &Path, key_fingerprint: &str) -> Result<Ledger> {
        Self::open_with(path, key_fingerprint, OpenMode::OpenOrCreate)
    }

    fn open_with(path: &Path, key_fingerprint: &str, mode: OpenMode) -> Result<Ledger> {
        let fingerprint = normalize_hex(key_fingerprint, None).ok_or_else(|| {
            message(
                path,
                format!("the key fingerprint {key_fingerprint:?} is not a hex string"),
            )
        })?;
        // `create_new` makes creation atomic: two creators cannot both win.
        let created_file = match mode {
            OpenMode::Open => {
                if !path.exists() {
                    return Err(Error::LedgerMissing {
                        path: path.to_path_buf(),
                    });
                }
                false
            }
            OpenMode::Create | OpenMode::OpenOrCreate => {
                match OpenOptions::new().write(true).create_new(true).open(path) {
                    Ok(_) => true,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        if mode == OpenMode::Create {
                            return Err(message(
                                path,
                                "already exists; open it instead, or choose another path \
                                 (a ledger is never overwritten)",
                            ));
                        }
                        false
                    }
                    Err(source) => {
                        return Err(Error::Write {
                            path: path.to_path_buf(),
                            source,
                        })
                    }
                }
            }
        };
        let result = Self::connect(path, fingerprint, mode != OpenMode::Open);
        if result.is_err() && created_file && mode == OpenMode::Create {
            // Leave nothing half-made behind a failed `create`; nobody else
            // can be using a file this call created and failed to initialise.
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.as_os_str().to_owned();
                p.push(suffix);
                let _ = std::fs::remove_file(PathBuf::from(p));
            }
        }
        result
    }

    fn connect(path: &Path, fingerprint: String, may_init: bool) -> Result<Ledger> {
        let sql = |doing: &'static str| sql_at(path, doing);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags).map_err(sql("open the ledger"))?;
        conn.busy_timeout(Duration::from_secs(BUSY_TIMEOUT_S))
            .map_err(sql("set the busy timeout"))?;

        // Look at the header before writing anything, so that a foreign or
        // newer file is refused untouched.
        // One read transaction, so the three header fields come from one
        // snapshot: read one by one, a concurrent creator's commit could land
        // between them and make a half-seen ledger look like a foreign file.
        let header = retry_busy(|| {
            let tx = conn.unchecked_transaction()?;
            let header = read_header(&tx)?;
            tx.commit()?;
            Ok(header)
        })
        .map_err(sql("read the ledger header"))?;
        check_header(path, header, may_init)?;

        // Outside any transaction: both pragmas are no-ops inside one.
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(sql("enable foreign keys"))?;
        retry_busy(|| conn.pragma_update(None, "journal_mode", "WAL"))
            .map_err(sql("switch the journal to WAL"))?;

        if header.user_version < i64::from(SCHEMA_VERSION) {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql("lock the ledger to set up its schema"))?;
            // Re-read under the lock: another process may have initialised
            // or migrated the file since we looked.
            let header = read_header(&tx).map_err(sql("read the ledger header"))?;
            check_header(path, header, may_init)?;
            if header.user_version == 0 {
                tx.pragma_update(None, "application_id", APPLICATION_ID)
                    .map_err(sql("mark the file as a leakmark ledger"))?;
            }
            migrate(&tx, header.user_version).map_err(sql("upgrade the ledger schema"))?;
            if header.user_version == 0 {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES
                         ('key_fingerprint', ?1), ('created_at', ?2), ('created_by', ?3)",
                    params![
                        fingerprint,
                        now_unix().to_string(),
                        concat!("leakmark ", env!("CARGO_PKG_VERSION"))
                    ],
                )
                .map_err(sql("record the key fingerprint"))?;
            }
            tx.commit().map_err(sql("commit the ledger schema"))?;
        }

        let stored: Option<String> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'key_fingerprint'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("read the key fingerprint"))?;
        let Some(stored) = stored else {
            return Err(Error::LedgerCorrupt {
                path: path.to_path_buf(),
                reason: "it records no key fingerprint".into(),
                source: None,
            });
        };
        if stored != fingerprint {
            return Err(Error::LedgerWrongKey {
                path: path.to_path_buf(),
                ledger_key: stored,
                given_key: fingerprint,
            });
        }
        Ok(Ledger {
            conn,
            path: path.to_path_buf(),
            key_fingerprint: fingerprint,
        })
    }

    /// The ledger file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fingerprint of the key this ledger is bound to (lowercase hex).
    pub fn key_fingerprint(&self) -> &str {
        &self.key_fingerprint
    }

    fn sql(&self, doing: &'static str) -> impl Fn(rusqlite::Error) -> Error + '_ {
        sql_at(&self.path, doing)
    }

    fn begin(&mut self, doing: &'static str) -> Result<Transaction<'_>> {
        let path = &self.path;
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| db_error(path, doing, e))
    }

    // ---------------------------------------------------------------- suppliers

    /// Adds a supplier under `parent` (by name), or as a tier-one if `None`.
    ///
    /// The name is trimmed; an empty contact counts as none.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownSupplier`] if `parent` is not in the ledger;
    /// [`Error::Ledger`] if the name is empty or already taken.
    pub fn add_supplier(
        &mut self,
        name: &str,
        parent: Option<&str>,
        contact: Option<&str>,
    ) -> Result<Supplier> {
        let name = name.trim();
        let contact = contact.map(str::trim).filter(|c| !c.is_empty());
        if name.is_empty() {
            return Err(message(&self.path, "a supplier name cannot be empty"));
        }
        let path_buf = self.path.clone();
        let path = path_buf.as_path();
        let sql = |doing: &'static str| sql_at(path, doing);
        let tx = self.begin("lock the ledger to add a supplier")?;
        if supplier_by_name_in(&tx, name)
            .map_err(sql("look up a supplier"))?
            .is_some()
        {
            return Err(message(
                path,
                format!("supplier {name:?} already exists; choose another name"),
            ));
        }
        let parent_id = match parent.map(str::trim).filter(|p| !p.is_empty()) {
            None => None,
            Some(p) => Some(
                supplier_by_name_in(&tx, p)
                    .map_err(sql("look up a supplier"))?
                    .ok_or_else(|| unknown_supplier(p))?
                    .id,
            ),
        };
        let id = insert_supplier(&tx, name, contact, parent_id).map_err(sql("add a supplier"))?;
        let supplier = supplier_by_id_in(&tx, id)
            .map_err(sql("read back a supplier"))?
            .ok_or_else(|| unknown_supplier(&format!("#{}", id.0)))?;
        tx.commit().map_err(sql("commit the new supplier"))?;
        Ok(supplier)
    }

    /// Moves `supplier` under `new_parent` (or to tier one if `None`).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownSupplier`] if either is not in the ledger;
    /// [`Error::SupplierCycle`] if `new_parent` is `supplier` or one of its
    /// descendants.
    pub fn set_parent(&mut self, supplier: &str, new_parent: Option<&str>) -> Result<Supplier> {
        let path_buf = self.path.clone();
        let path = path_buf.as_path();
        let sql = |doing: &'static str| sql_at(path, doing);
        let tx = self.begin("lock the ledger to move a supplier")?;
        let child = supplier_by_name_in(&tx, supplier.trim())
            .map_err(sql("look up a supplier"))?
            .ok_or_else(|| unknown_supplier(supplier))?;
        let parent_id = match new_parent {
            None => None,
            Some(p) => {
                let parent = supplier_by_name_in(&tx, p.trim())
                    .map_err(sql("look up a supplier"))?
                    .ok_or_else(|| unknown_supplier(p))?;
                let ancestors = chain_in(&tx, path, parent.id)?;
                if ancestors.iter().any(|s| s.id == child.id) {
                    return Err(Error::SupplierCycle {
                        supplier: child.name,
                        parent: parent.name,
                    });
                }
                Some(parent.id)
            }
        };
        tx.execute(
            "UPDATE suppliers SET parent_id = ?1 WHERE id = ?2",
            params![parent_id.map(|p| p.0), child.id.0],
        )
        .map_err(sql("move a supplier"))?;
        let moved = supplier_by_id_in(&tx, child.id)
            .map_err(sql("read back a supplier"))?
            .ok_or_else(|| unknown_supplier(supplier))?;
        tx.commit().map_err(sql("commit the move"))?;
        Ok(moved)
    }

    /// Imports suppliers, all or nothing, in one transaction.
    ///
    /// Rows may name parents that come later in `rows` or are already in the
    /// ledger. A row whose name is already in the ledger must have the same
    /// parent; its contact is updated if the row gives one. Importing the
    /// same list twice therefore changes nothing the second time.
    ///
    /// # Errors
    ///
    /// - [`Error::UnknownSupplier`] if a parent is neither in `rows` nor in
    ///   the ledger;
    /// - [`Error::SupplierCycle`] if the rows' parents form a cycle;
    /// - [`Error::Ledger`] for an empty or repeated name, or an existing
    ///   supplier whose parent differs (use [`Ledger::set_parent`]).
    pub fn import_suppliers(&mut self, rows: &[NewSupplier]) -> Result<ImportSummary> {
        let path_buf = self.path.clone();
        let path = path_buf.as_path();
        let sql = |doing: &'static str| sql_at(path, doing);
        let mut names = HashSet::new();
        for row in rows {
            let name = row.name.trim();
            if name.is_empty() {
                return Err(message(path, "a supplier name cannot be empty"));
            }
            if !names.insert(name) {
                return Err(message(
                    path,
                    format!("supplier {name:?} is listed twice in the import"),
                ));
            }
        }
        let tx = self.begin("lock the ledger to import suppliers")?;
        let mut summary = ImportSummary::default();
        // Rows still waiting for their parent to exist.
        let mut pending: Vec<&NewSupplier> = Vec::new();
        for row in rows {
            let name = row.name.trim();
            let parent = row
                .parent
                .as_deref()
                .map(str::trim)
                .filter(|p| !p.is_empty());
            let contact = row
                .contact
                .as_deref()
                .map(str::trim)
                .filter(|c| !c.is_empty());
            let Some(existing) =
                supplier_by_name_in(&tx, name).map_err(sql("look up a supplier"))?
            else {
                pending.push(row);
                continue;
            };
            let existing_parent = match existing.parent_id {
                None => None,
                Some(id) => supplier_by_id_in(&tx, id)
                    .map_err(sql("look up a supplier"))?
                    .map(|s| s.name),
            };
            if existing_parent.as_deref() != parent {
                return Err(message(
                    path,
                    format!(
                        "supplier {name:?} already exists under {}, the import puts it under {}; \
                         move it first if that is intended",
                        existing_parent.as_deref().unwrap_or("no parent"),
                        parent.unwrap_or("no parent"),
                    ),
                ));
            }
            match contact {
                Some(c) if existing.contact.as_deref() != Some(c) => {
                    tx.execute(
                        "UPDATE suppliers SET contact = ?1 WHERE id = ?2",
                        params![c, existing.id.0],
                    )
                    .map_err(sql("update a supplier's contact"))?;
                    summary.updated += 1;
                }
                _ => summary.unchanged += 1,
            }
        }
        // Insert in passes: each pass adds the rows whose parent now exists.
        // A pass that adds nothing means a missing parent or a cycle.
        while !pending.is_empty() {
            let before = pending.len();
            let mut waiting = Vec::new();
            for row in pending {
                let parent = row
                    .parent
                    .as_deref()
                    .map(str::trim)
                    .filter(|p| !p.is_empty());
                let parent_id = match parent {
                    None => None,
                    Some(p) => {
                        match supplier_by_name_in(&tx, p).map_err(sql("look up a supplier"))? {
                            Some(s) => Some(s.id),
                            None => {
                                waiting.push(row);
                                continue;
                            }
                        }
                    }
                };
                let contact = row
                    .contact
                    .as_deref()
                    .map(str::trim)
                    .filter(|c| !c.is_empty());
                insert_supplier(&tx, row.name.trim(), contact, parent_id)
                    .map_err(sql("add a supplier"))?;
                summary.added += 1;
            }
            if waiting.len() == before {
                // Nothing could be placed. A parent outside the import is
                // unknown; otherwise every waiting row waits on another one.
                let waiting_names: HashSet<&str> = waiting.iter().map(|r| r.name.trim()).collect();
                for row in &waiting {
                    let p = row.parent.as_deref().map(str::trim).unwrap_or_default();
                    if !waiting_names.contains(p) {
                        return Err(unknown_supplier(p));
                    }
                }
                // Every row in `waiting` has a waiting parent, so following
                // parents from any of them must come back to a name already
                // seen: that name lies on a cycle (the start may only hang
                // off one).
                let parent_of: HashMap<&str, &str> = waiting
                    .iter()
                    .map(|r| {
                        let p = r.parent.as_deref().map(str::trim).unwrap_or_default();
                        (r.name.trim(), p)
                    })
                    .collect();
                let mut seen = HashSet::new();
                let mut name = waiting.first().map_or("", |r| r.name.trim());
                while seen.insert(name) {
                    name = parent_of.get(name).copied().unwrap_or_default();
                }
                return Err(Error::SupplierCycle {
                    supplier: name.to_string(),
                    parent: parent_of.get(name).copied().unwrap_or_default().to_string(),
                });
            }
            pending = waiting;
        }
        tx.commit().map_err(sql("commit the import"))?;
        Ok(summary)
    }

    /// Reads a CSV supplier list (see [`parse_suppliers_csv`]) and imports
    /// it with [`Ledger::import_suppliers`].
    ///
    /// # Errors
    ///
    /// [`Error::Read`] if the file cannot be read, [`Error::SupplierCsv`] if
    /// it is malformed or not UTF-8, and the errors of
    /// [`Ledger::import_suppliers`].
    pub fn import_suppliers_csv(&mut self, csv_path: &Path) -> Result<ImportSummary> {
        let bytes = std::fs::read(csv_path).map_err(|source| Error::Read {
            path: csv_path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let line = e
                .as_bytes()
                .get(..e.utf8_error().valid_up_to())
                .map_or(1, |ok| 1 + ok.iter().filter(|&&b| b == b'\n').count());
            Error::SupplierCsv {
                path: csv_path.to_path_buf(),
                line,
                reason: "the file is not UTF-8 text; save it as UTF-8".into(),
            }
        })?;
        let rows = parse_suppliers_csv(&text, csv_path)?;
        self.import_suppliers(&rows)
    }

    /// The supplier named `name` (trimmed).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownSupplier`] if there is none.
    pub fn supplier_by_name(&self, name: &str) -> Result<Supplier> {
        supplier_by_name_in(&self.conn, name.trim())
            .map_err(self.sql("look up a supplier"))?
            .ok_or_else(|| unknown_supplier(name))
    }

    /// The supplier with row id `id`.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownSupplier`] if there is none.
    pub fn supplier(&self, id: SupplierId) -> Result<Supplier> {
        supplier_by_id_in(&self.conn, id)
            .map_err(self.sql("look up a supplier"))?
            .ok_or_else(|| unknown_supplier(&format!("#{}", id.0)))
    }

    /// All suppliers, sorted by name.
    ///
    /// # Errors
    ///
    /// [`Error::Ledger`] or [`Error::LedgerCorrupt`] if the ledger cannot be read.
    pub fn suppliers(&self) -> Result<Vec<Supplier>> {
        let mut stmt = self
            .conn
            .prepare(&format!("{SUPPLIER_SELECT} ORDER BY name"))
            .map_err(self.sql("list suppliers"))?;
        let rows = stmt
            .query_map([], supplier_from_row)
            .map_err(self.sql("list suppliers"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.sql("list suppliers"))
    }

    /// The supplier tree: tier-one suppliers (no parent) with their
    /// subcontractors below them, every level sorted by name.
    ///
    /// # Errors
    ///
    /// [`Error::LedgerCorrupt`] if the stored parents form a cycle (only
    /// possible if the file was edited by hand), and the errors of
    /// [`Ledger::suppliers`].
    pub fn supplier_tree(&self) -> Result<Vec<SupplierNode>> {
        let all = self.suppliers()?;
        let total = all.len();
        let parent_of: HashMap<SupplierId, Option<SupplierId>> =
            all.iter().map(|s| (s.id, s.parent_id)).collect();
        // Depth of every supplier reachable from a root, found without
        // recursion so that neither a deep tree nor a hand-made cycle can
        // overflow the stack.
        let mut children_of: HashMap<Option<SupplierId>, Vec<SupplierId>> = HashMap::new();
        for s in &all {
            children_of.entry(s.parent_id).or_default().push(s.id);
        }
        let mut depth: HashMap<SupplierId, usize> = HashMap::new();
        let mut stack: Vec<(SupplierId, usize)> = children_of
            .get(&None)
            .map(|roots| roots.iter().map(|&id| (id, 0)).collect())
            .unwrap_or_default();
        while let Some((id, d)) = stack.pop() {
            depth.insert(id, d);
            if let Some(kids) = children_of.get(&Some(id)) {
                stack.extend(kids.iter().map(|&k| (k, d + 1)));
            }
        }
        if depth.len() != total {
            return Err(Error::LedgerCorrupt {
                path: self.path.clone(),
                reason: "its supplier parents form a cycle".into(),
                source: None,
            });
        }
        // Build bottom-up: deepest suppliers first, so every node's children
        // are complete before the node itself is made.
        // Indexing `depth` cannot panic: every id is in it (checked above).
        let mut order = all;
        order.sort_by(|a, b| depth[&b.id].cmp(&depth[&a.id]));
        let mut built: HashMap<Option<SupplierId>, Vec<SupplierNode>> = HashMap::new();
        for supplier in order {
            let mut children = built.remove(&Some(supplier.id)).unwrap_or_default();
            children.sort_by(|a, b| a.supplier.name.cmp(&b.supplier.name));
            let parent = parent_of.get(&supplier.id).copied().flatten();
            built
                .entry(parent)
                .or_default()
                .push(SupplierNode { supplier, children });
        }
        let mut roots = built.remove(&None).unwrap_or_default();
        roots.sort_by(|a, b| a.supplier.name.cmp(&b.supplier.name));
        Ok(roots)
    }

    /// `supplier` followed by its ancestors up to the tier-one:
    /// `[tier-two, tier-one]` for a tier-two, `[tier-one]` for a tier-one.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownSupplier`] if `supplier` is not in the ledger;
    /// [`Error::LedgerCorrupt`] if the stored parents form a cycle.
    pub fn chain(&self, supplier: SupplierId) -> Result<Vec<Supplier>> {
        chain_in(&self.conn, &self.path, supplier)
    }

    // ---------------------------------------------------------------- documents

    /// Registers a document, or returns the one already registered with the
    /// same SHA-256.
    ///
    /// Returning the existing row makes a re-run of an interrupted batch
    /// reuse the same document (and so the same copies and serials). The
    /// stored row wins: compare its `variant` with yours if that matters.
    ///
    /// # Errors
    ///
    /// [`Error::Ledger`] if the hash is not 64 hex digits, the name is empty,
    /// a dimension is zero, or the archived path is not UTF-8.
    pub fn register_document(&mut self, doc: &NewDocument) -> Result<Document> {
        let sha = normalize_hex(&doc.sha256, Some(64)).ok_or_else(|| {
            message(
                &self.path,
                format!(
                    "the document hash {:?} is not a SHA-256 (64 hex digits)",
                    doc.sha256
                ),
            )
        })?;
        let name = doc.name.trim();
        if name.is_empty() {
            return Err(message(&self.path, "a document name cannot be empty"));
        }
        if doc.width == 0 || doc.height == 0 {
            return Err(message(
                &self.path,
                format!(
                    "document {name:?} is {}x{} px; both sides must be at least 1 px",
                    doc.width, doc.height
                ),
            ));
        }
        let original = doc
            .original_path
            .as_deref()
            .map(|p| path_text(&self.path, p))
            .transpose()?;
        let path_buf = self.path.clone();
        let path = path_buf.as_path();
        let sql = |doing: &'static str| sql_at(path, doing);
        let tx = self.begin("lock the ledger to register a document")?;
        if let Some(existing) =
            document_where(&tx, "sha256 = ?1", [&sha]).map_err(sql("look up a document"))?
        {
            return Ok(existing);
        }
        tx.execute(
            "INSERT INTO documents (name, sha256, original_path, width, height, variant, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                name,
                sha,
                original,
                doc.width,
                doc.height,
                doc.variant,
                now_unix()
            ],
        )
        .map_err(sql("register a document"))?;
        let id = tx.last_insert_rowid();
        let document = document_where(&tx, "id = ?1", [id])
            .map_err(sql("read back a document"))?
            .ok_or_else(|| message(path, "a just-registered document vanished"))?;
        tx.commit().map_err(sql("commit the document"))?;
        Ok(document)
    }

    /// The document with row id `id`, if any.
    ///
    /// # Errors
    ///
    /// [`Error::Ledger`] or [`Error::LedgerCorrupt`] if the ledger cannot be read.
    pub fn document(&self, id: DocumentId) -> Result<Option<Document>> {
        document_where(&self.conn, "id = ?1", [id.0]).map_err(self.sql("look up a document"))
    }

    /// The document whose original has SHA-256 `sha256` (hex, either case), if any.
    ///
    /// # Errors
    ///
    /// [`Error::Ledger`] or [`Error::LedgerCorrupt`] if the ledger cannot be read.
    pub fn document_by_sha256(&self, sha256: &str) -> Result<Option<Document>> {
        let Some(sha) = normalize_hex(sha256, Some(64)) else {
            return Ok(None);
        };
        document_where(&self.conn, "sha256 = ?1", [sha]).map_err(self.sql("look up a document"))
    }

    /// All documents, oldest first.
    ///
    /// # Errors
    ///
    /// [`Error::Ledger`] or [`Error::LedgerCorrupt`] if the ledger cannot be read.
    pub fn documents(&self) -> Result<Vec<Document>> {
        let mut stmt = self
            .conn
            .prepare(&format!("{DOCUMENT_SELECT} ORDER BY id"))
            .map_err(self.sql("list documents"))?;
        let rows = stmt
            .query_map([], document_from_row)
            .map_err(self.sql("list documents"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.sql("list documents"))
    }

    // ---------------------------------------------------------------- copies

    /// The copy of `document` for `recipient`: the existing one if it was
    /// already allocated (reserved or issued), otherwise a new one in state
    /// [`CopyState::Reserved`] with a fresh serial.
    ///
    /// A fresh serial is a random nonzero `u32` from the operating system's
    /// RNG, redrawn until it is unused in this ledger. All of this happens in
    /// one `IMMEDIATE` transaction, so concurrent issuers never hand out the
    /// same serial twice or two serials for the same pair.
    ///
    /// Call [`Ledger::mark_copy_written`] once the marked file is on disk.
    ///
    /// # Errors
    ///
    /// [`Error::Ledger`] if `document` is not in the ledger or the OS RNG
    /// fails; [`Error::UnknownSupplier`] if `recipient` is not.
    pub fn allocate_or_get_copy(
        &mut self,
        document: DocumentId,
        recipient: SupplierId,
    ) -> Result<CopyRecord> {
        let path_buf = self.path.clone();
        let path = path_buf.as_path();
        let sql = |doing: &'static str| sql_at(path, doing);
        let tx = self.begin("lock the ledger to allocate a copy")?;
        if let Some(existing) = copy_where(
            &tx,
            "document_id = ?1 AND recipient_id = ?2",
            params![document.0, recipient.0],
        )
        .map_err(sql("look up a copy"))?
        {
            return Ok(existing);
        }
        if document_where(&tx, "id = ?1", [document.0])
            .map_err(sql("look up a document"))?
            .is_none()
        {
            return Err(message(
                path,
                format!(
                    "no document #{} in the ledger; register the document first",
                    document.0
                ),
            ));
        }
        if supplier_by_id_in(&tx, recipient)
            .map_err(sql("look up a supplier"))?
            .is_none()
        {
            return Err(unknown_supplier(&format!("#{}", recipient.0)));
        }
        let mut serial = None;
        for _ in 0..SERIAL_ATTEMPTS {
            let candidate = random_serial(path)?;
            let taken: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM copies WHERE serial = ?1)",
                    [candidate],
                    |r| r.get(0),
                )
                .map_err(sql("check a serial"))?;
            if !taken {
                serial = Some(candidate);
                break;
            }
        }
        let Some(serial) = serial else {
            return Err(message(
                path,
                format!(
                    "{SERIAL_ATTEMPTS} random serials in a row were already taken; \
                     the OS random number generator looks broken"
                ),
            ));
        };
        tx.execute(
            "INSERT INTO copies (document_id, recipient_id, serial, state, reserved_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                document.0,
                recipient.0,
                serial,
                CopyState::Reserved,
                now_unix()
            ],
        )
        .map_err(sql("reserve a serial"))?;
        let id = tx.last_insert_rowid();
        let copy = copy_where(&tx, "id = ?1", params![id])
            .map_err(sql("read back a copy"))?
            .ok_or_else(|| message(path, "a just-reserved copy vanished"))?;
        tx.commit().map_err(sql("commit the reserved serial"))?;
        Ok(copy)
    }

    /// Records that the marked file of copy `copy` was written to
    /// `output_path` with SHA-256 `output_sha256`, and marks it
    /// [`CopyState::Issued`].
    ///
    /// Calling it again (a re-run rewrote the file) updates the path and
    /// hash and keeps the first issue time.
    ///
    /// # Errors
    ///
    /// [`Error::Ledger`] if the copy is not in the ledger, the hash is not
    /// 64 hex digits or the path is not UTF-8.
    pub fn mark_copy_written(
        &mut self,
        copy: CopyId,
        output_path: &Path,
        output_sha256: &str,
    ) -> Result<CopyRecord> {
        let sha = normalize_hex(output_sha256, Some(64)).ok_or_else(|| {
            message(
                &self.path,
                format!("the output hash {output_sha256:?} is not a SHA-256 (64 hex digits)"),
            )
        })?;
        let out = path_text(&self.path, output_path)?;
        let path_buf = self.path.clone();
        let path = path_buf.as_path();
        let sql = |doing: &'static str| sql_at(path, doing);
        let tx = self.begin("lock the ledger to record a written copy")?;
        let changed = tx
            .execute(
                "UPDATE copies
                 SET state = ?1, output_path = ?2, output_sha256 = ?3,
                     issued_at = COALESCE(issued_at, ?4)
                 WHERE id = ?5",
                params![CopyState::Issued, out, sha, now_unix(), copy.0],
            )
            .map_err(sql("record a written copy"))?;
        if changed == 0 {
            return Err(message(
                path,
                format!(
                    "no copy #{} in the ledger; allocate it before recording it",
                    copy.0
                ),
            ));
        }
        let record = copy_where(&tx, "id = ?1", params![copy.0])
            .map_err(sql("read back a copy"))?
            .ok_or_else(|| message(path, "a just-updated copy vanished"))?;
        tx.commit().map_err(sql("commit the written copy"))?;
        Ok(record)
    }

    /// The copy with row id `id`, if any.
    ///
    /// # Errors
    ///
    /// [`Error::Ledger`] or [`Error::LedgerCorrupt`] if the ledger cannot be read.
    pub fn copy(&self, id: CopyId) -> Result<Option<CopyRecord>> {
        copy_where(&self.conn, "id = ?1", params![id.0]).map_err(self.sql("look up a copy"))
    }

    /// Every copy as a tracing hypothesis, ordered by serial.
    ///
    /// With `include_reserved`, copies still [`CopyState::Reserved`] are
    /// included too: their marked file may exist (the issuing run may have
    /// died after writing it), so a careful trace tests them as well.
    ///
    /// # Errors
    ///
    /// [`Error::Ledger`] or [`Error::LedgerCorrupt`] if the ledger cannot be read.
    pub fn issued_copies(&self, include_reserved: bool) -> Result<Vec<IssuedCopy>> {
        let filter = if include_reserved {
            ""
        } else {
            "WHERE c.state = 'issued'"
        };
        let mut stmt = self
            .conn
            .prepare(&format!("{ISSUED_SELECT} {filter} ORDER BY c.serial"))
            .map_err(self.sql("list issued copies"))?;
        let rows = stmt
            .query_map([], issued_from_row)
            .map_err(self.sql("list issued copies"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.sql("list issued copies"))
    }

    /// The copy carrying `serial`, reserved or issued, if any.
    ///
    /// # Errors
    ///
    /// [`Error::Ledger`] or [`Error::LedgerCorrupt`] if the ledger cannot be read.
    pub fn copy_by_serial(&self, serial: u32) -> Result<Option<IssuedCopy>> {
        self.conn
            .query_row(
                &format!("{ISSUED_SELECT} WHERE c.serial = ?1"),
                [serial],
                issued_from_row,
            )
            .optional()
            .map_err(self.sql("look up a serial"))
    }

    // ---------------------------------------------------------------- traces

    /// Records a trace of the leaked file `leak_path` (SHA-256
    /// `leak_sha256`) and what the detector found (`result_json`, any valid
    /// JSON text).
    ///
    /// # Errors
    ///
    /// [`Error::Ledger`] if the hash is not 64 hex digits, the path is not
    /// UTF-8 or `result_json` is not valid JSON.
    pub fn record_trace(
        &mut self,
        leak_path: &Path,
        leak_sha256: &str,
        result_json: &str,
    ) -> Result<TraceRecord> {
        let sha = normalize_hex(leak_sha256, Some(64)).ok_or_else(|| {
            message(
                &self.path,
                format!("the leak hash {leak_sha256:?} is not a SHA-256 (64 hex digits)"),
            )
        })?;
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(result_json) {
            return Err(message(
                &self.path,
                format!("the trace result is not valid JSON ({e}); this is a bug in the caller"),
            ));
        }
        let leak = path_text(&self.path, leak_path)?;
        let path_buf = self.path.clone();
        let path = path_buf.as_path();
        let sql = |doing: &'static str| sql_at(path, doing);
        let tx = self.begin("lock the ledger to record a trace")?;
        tx.execute(
            "INSERT INTO traces (leak_path, leak_sha256, traced_at, result_json)
             VALUES (?1, ?2, ?3, ?4)",
            params![leak, sha, now_unix(), result_json],
        )
        .map_err(sql("record a trace"))?;
        let id = tx.last_insert_rowid();
        let record = tx
            .query_row(
                &format!("{TRACE_SELECT} WHERE id = ?1"),
                [id],
                trace_from_row,
            )
            .map_err(sql("read back a trace"))?;
        tx.commit().map_err(sql("commit the trace"))?;
        Ok(record)
    }

    /// All recorded traces, oldest first.
    ///
    /// # Errors
    ///
    /// [`Error::Ledger`] or [`Error::LedgerCorrupt`] if the ledger cannot be read.
    pub fn traces(&self) -> Result<Vec<TraceRecord>> {
        let mut stmt = self
            .conn
            .prepare(&format!("{TRACE_SELECT} ORDER BY id"))
            .map_err(self.sql("list traces"))?;
        let rows = stmt
            .query_map([], trace_from_row)
            .map_err(self.sql("list traces"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.sql("list traces"))
    }
}

// -------------------------------------------------------------------- helpers

/// The two header fields that identify a ledger and its schema.
#[derive(Debug, Clone, Copy)]
struct Header {
    application_id: i64,
    user_version: i64,
    /// Number of schema objects (tables, indexes, ...).
    objects: i64,
}

/// Runs `f` again while SQLite answers "busy" without waiting (it does so,
/// rather than call the busy handler, when two connections race to set up a
/// new file), for at most [`BUSY_TIMEOUT_S`].
fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + Duration::from_secs(BUSY_TIMEOUT_S);
    loop {
        match f() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            result => return result,
        }
    }
}

fn read_header(conn: &Connection) -> rusqlite::Result<Header> {
    Ok(Header {
        application_id: conn.pragma_query_value(None, "application_id", |r| r.get(0))?,
        user_version: conn.pragma_query_value(None, "user_version", |r| r.get(0))?,
        objects: conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?,
    })
}

/// Refuses files that are not (yet) a ledger this build can use.
fn check_header(path: &Path, header: Header, may_init: bool) -> Result<()> {
    let blank = header.application_id == 0 && header.user_version == 0 && header.objects == 0;
    if blank {
        if may_init {
            return Ok(());
        }
        return Err(Error::LedgerCorrupt {
            path: path.to_path_buf(),
            reason: "the file holds no ledger, perhaps because creating it was interrupted; \
                     delete it and create the ledger again"
                .into(),
            source: None,
        });
    }
    if header.application_id != i64::from(APPLICATION_ID) {
        return Err(Error::LedgerCorrupt {
            path: path.to_path_buf(),
            reason: "it is an SQLite database of some other program, not a leakmark ledger".into(),
            source: None,
        });
    }
    if header.user_version > i64::from(SCHEMA_VERSION) || header.user_version < 0 {
        return Err(Error::LedgerNewerSchema {
            path: path.to_path_buf(),
            found: header.user_version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Brings the schema from version `from` to [`SCHEMA_VERSION`], inside the
/// caller's transaction.
fn migrate(tx: &Transaction<'_>, from: i64) -> rusqlite::Result<()> {
    let start = usize::try_from(from).unwrap_or(usize::MAX);
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(start) {
        tx.execute_batch(sql)?;
        // `step + 1` <= MIGRATIONS.len(), which is tiny.
        tx.pragma_update(None, "user_version", step as i64 + 1)?;
    }
    Ok(())
}

/// [`db_error`] as a closure for `map_err`.
fn sql_at<'a>(path: &'a Path, doing: &'static str) -> impl Fn(rusqlite::Error) -> Error + 'a {
    move |e| db_error(path, doing, e)
}

/// Maps an SQLite error to the error the user can act on.
fn db_error(path: &Path, doing: &str, err: rusqlite::Error) -> Error {
    let path = path.to_path_buf();
    let message = match err.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            return Error::LedgerCorrupt {
                path,
                reason: format!("SQLite could not {doing}: the file is damaged or not a database"),
                source: Some(err),
            }
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => format!(
            "cannot {doing}: another process kept the ledger locked for more than \
             {BUSY_TIMEOUT_S} s; retry when it has finished"
        ),
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            format!("cannot {doing}: check that the ledger file and its folder are writable")
        }
        Some(ErrorCode::DiskFull) => {
            format!("cannot {doing}: the disk is full; free space and retry")
        }
        _ => format!("cannot {doing}"),
    };
    Error::Ledger {
        path,
        message,
        source: Some(err),
    }
}

fn message(path: &Path, message: impl Into<String>) -> Error {
    Error::Ledger {
        path: path.to_path_buf(),
        message: message.into(),
        source: None,
    }
}

fn unknown_supplier(name: &str) -> Error {
    Error::UnknownSupplier {
        name: name.trim().to_string(),
    }
}

/// Lowercase hex if `s` (trimmed) is non-empty hex of the given length.
fn normalize_hex(s: &str, len: Option<usize>) -> Option<String> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_hexdigit())
        && len.is_none_or(|n| s.len() == n);
    ok.then(|| s.to_ascii_lowercase())
}

/// Paths are stored as text; refuse the rare non-UTF-8 one rather than
/// store a lossy copy that no longer names the file.
fn path_text(ledger: &Path, p: &Path) -> Result<String> {
    p.to_str().map(str::to_owned).ok_or_else(|| {
        message(
            ledger,
            format!(
                "the path {} is not valid UTF-8; rename it to record it in the ledger",
                p.display()
            ),
        )
    })
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A nonzero serial from the OS RNG. Zero is never issued, so an all-zero
/// payload never names anyone.
fn random_serial(path: &Path) -> Result<u32> {
    use rand::TryRng;
    loop {
        let serial = rand::rngs::SysRng.try_next_u32().map_err(|e| {
            message(
                path,
                format!("cannot draw a serial: the OS random number generator failed ({e})"),
            )
        })?;
        if serial != 0 {
            return Ok(serial);
        }
    }
}

const SUPPLIER_SELECT: &str = "SELECT id, name, contact, parent_id, created_at FROM suppliers";

fn supplier_from_row(r: &Row<'_>) -> rusqlite::Result<Supplier> {
    Ok(Supplier {
        id: SupplierId(r.get(0)?),
        name: r.get(1)?,
        contact: r.get(2)?,
        parent_id: r.get::<_, Option<i64>>(3)?.map(SupplierId),
        created_at: r.get(4)?,
    })
}

fn supplier_by_name_in(conn: &Connection, name: &str) -> rusqlite::Result<Option<Supplier>> {
    conn.query_row(
        &format!("{SUPPLIER_SELECT} WHERE name = ?1"),
        [name],
        supplier_from_row,
    )
    .optional()
}

fn supplier_by_id_in(conn: &Connection, id: SupplierId) -> rusqlite::Result<Option<Supplier>> {
    conn.query_row(
        &format!("{SUPPLIER_SELECT} WHERE id = ?1"),
        [id.0],
        supplier_from_row,
    )
    .optional()
}

fn insert_supplier(
    conn: &Connection,
    name: &str,
    contact: Option<&str>,
    parent: Option<SupplierId>,
) -> rusqlite::Result<SupplierId> {
    conn.execute(
        "INSERT INTO suppliers (name, contact, parent_id, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![name, contact, parent.map(|p| p.0), now_unix()],
    )?;
    Ok(SupplierId(conn.last_insert_rowid()))
}

/// `start` and its ancestors, refusing a (hand-made) cycle instead of looping.
fn chain_in(conn: &Connection, path: &Path, start: SupplierId) -> Result<Vec<Supplier>> {
    let lookup =
        |id| supplier_by_id_in(conn, id).map_err(|e| db_error(path, "look up a supplier", e));
    let mut chain: Vec<Supplier> = Vec::new();
    let mut seen = HashSet::new();
    let mut next = Some(start);
    while let Some(id) = next {
        if !seen.insert(id) {
            return Err(Error::LedgerCorrupt {
                path: path.to_path_buf(),
                reason: "its supplier parents form a cycle".into(),
                source: None,
            });
        }
        let Some(supplier) = lookup(id)? else {
            return Err(unknown_supplier(&format!("#{}", id.0)));
        };
        next = supplier.parent_id;
        chain.push(supplier);
    }
    Ok(chain)
}

const DOCUMENT_SELECT: &str = "SELECT id, name, sha256, original_path, width, height, variant, \
                               created_at FROM documents";

fn document_from_row(r: &Row<'_>) -> rusqlite::Result<Document> {
    Ok(Document {
        id: DocumentId(r.get(0)?),
        name: r.get(1)?,
        sha256: r.get(2)?,
        original_path: r.get::<_, Option<String>>(3)?.map(PathBuf::from),
        width: r.get(4)?,
        height: r.get(5)?,
        variant: r.get(6)?,
        created_at: r.get(7)?,
    })
}

fn document_where<P: rusqlite::Params>(
    conn: &Connection,
    condition: &str,
    params: P,
) -> rusqlite::Result<Option<Document>> {
    conn.query_row(
        &format!("{DOCUMENT_SELECT} WHERE {condition}"),
        params,
        document_from_row,
    )
    .optional()
}

const COPY_SELECT: &str = "SELECT id, document_id, recipient_id, serial, state, reserved_at, \
                           issued_at, output_path, output_sha256 FROM copies";

fn copy_from_row(r: &Row<'_>) -> rusqlite::Result<CopyRecord> {
    Ok(CopyRecord {
        id: CopyId(r.get(0)?),
        document_id: DocumentId(r.get(1)?),
        recipient_id: SupplierId(r.get(2)?),
        serial: r.get(3)?,
        state: r.get(4)?,
        reserved_at: r.get(5)?,
        issued_at: r.get(6)?,
        output_path: r.get::<_, Option<String>>(7)?.map(PathBuf::from),
        output_sha256: r.get(8)?,
    })
}

fn copy_where<P: rusqlite::Params>(
    conn: &Connection,
    condition: &str,
    params: P,
) -> rusqlite::Result<Option<CopyRecord>> {
    conn.query_row(
        &format!("{COPY_SELECT} WHERE {condition}"),
        params,
        copy_from_row,
    )
    .optional()
}

const ISSUED_SELECT: &str = "SELECT c.id, c.serial, c.state, d.variant, d.id, d.name, d.sha256, \
                             s.id, s.name, c.output_path, COALESCE(c.issued_at, c.reserved_at) \
                             FROM copies c \
                             JOIN documents d ON d.id = c.document_id \
                             JOIN suppliers s ON s.id = c.recipient_id";

fn issued_from_row(r: &Row<'_>) -> rusqlite::Result<IssuedCopy> {
    Ok(IssuedCopy {
        copy_id: CopyId(r.get(0)?),
        serial: r.get(1)?,
        state: r.get(2)?,
        variant: r.get(3)?,
        document_id: DocumentId(r.get(4)?),
        document_name: r.get(5)?,
        document_sha256: r.get(6)?,
        recipient_id: SupplierId(r.get(7)?),
        recipient_name: r.get(8)?,
        output_path: r.get::<_, Option<String>>(9)?.map(PathBuf::from),
        time: r.get(10)?,
    })
}

const TRACE_SELECT: &str = "SELECT id, leak_path, leak_sha256, traced_at, result_json FROM traces";

fn trace_from_row(r: &Row<'_>) -> rusqlite::Result<TraceRecord> {
    Ok(TraceRecord {
        id: TraceId(r.get(0)?),
        leak_path: PathBuf::from(r.get::<_, String>(1)?),
        leak_sha256: r.get(2)?,
        traced_at: r.get(3)?,
        result_json: r.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use tempfile::TempDir;

    const FP: &str = "0123456789abcdef0123456789abcdef";
    const OTHER_FP: &str = "fedcba9876543210fedcba9876543210";

    fn new_ledger() -> (TempDir, PathBuf, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let ledger = Ledger::create(&path, FP).unwrap();
        (dir, path, ledger)
    }

    fn new_doc(name: &str, sha_byte: u8) -> NewDocument {
        NewDocument {
            name: name.into(),
            sha256: to_hex(&[sha_byte; 32]),
            original_path: Some(PathBuf::from(format!("/archive/{name}"))),
            width: 640,
            height: 480,
            variant: 3,
        }
    }

    fn sha(byte: u8) -> String {
        to_hex(&[byte; 32])
    }

    #[test]
    fn create_then_open_keeps_the_data() {
        let (_dir, path, mut ledger) = new_ledger();
        assert_eq!(ledger.key_fingerprint(), FP);
        ledger.add_supplier("Acme", None, None).unwrap();
        drop(ledger);
        let ledger = Ledger::open(&path, FP).unwrap();
        assert_eq!(ledger.suppliers().unwrap().len(), 1);
        assert_eq!(ledger.path(), path);
    }

    #[test]
    fn ledger_file_is_wal_versioned_and_marked() {
        let (_dir, path, ledger) = new_ledger();
        drop(ledger);
        let conn = Connection::open(&path).unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, i64::from(SCHEMA_VERSION));
        let app: i64 = conn
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .unwrap();
        assert_eq!(app, i64::from(APPLICATION_ID));
    }

    #[test]
    fn fingerprint_is_compared_case_insensitively() {
        let (_dir, path, ledger) = new_ledger();
        drop(ledger);
        Ledger::open(&path, &FP.to_ascii_uppercase()).unwrap();
    }

    #[test]
    fn open_refuses_wrong_fingerprint() {
        let (_dir, path, ledger) = new_ledger();
        drop(ledger);
        let err = Ledger::open(&path, OTHER_FP).unwrap_err();
        match &err {
            Error::LedgerWrongKey {
                ledger_key,
                given_key,
                ..
            } => {
                assert_eq!(ledger_key, FP);
                assert_eq!(given_key, OTHER_FP);
            }
            other => panic!("expected LedgerWrongKey, got {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "this ledger was made under key {FP}, you passed key {OTHER_FP}"
            )),
            "{text}"
        );
        // open_or_create must refuse too, not rebind.
        assert!(matches!(
            Ledger::open_or_create(&path, OTHER_FP),
            Err(Error::LedgerWrongKey { .. })
        ));
    }

    #[test]
    fn open_refuses_non_hex_fingerprint() {
        let (_dir, path, ledger) = new_ledger();
        drop(ledger);
        assert!(matches!(
            Ledger::open(&path, "not hex!"),
            Err(Error::Ledger { .. })
        ));
        assert!(matches!(Ledger::open(&path, ""), Err(Error::Ledger { .. })));
    }

    #[test]
    fn open_refuses_missing_file_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.sqlite");
        let err = Ledger::open(&path, FP).unwrap_err();
        assert!(matches!(err, Error::LedgerMissing { .. }), "{err:?}");
        assert!(!path.exists());
    }

    #[test]
    fn create_refuses_existing_file() {
        let (_dir, path, ledger) = new_ledger();
        drop(ledger);
        let err = Ledger::create(&path, FP).unwrap_err();
        assert!(matches!(err, Error::Ledger { .. }), "{err:?}");
        assert!(err.to_string().contains("already exists"));
        // The existing ledger is intact.
        Ledger::open(&path, FP).unwrap();
    }

    #[test]
    fn open_or_create_creates_then_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite");
        let mut a = Ledger::open_or_create(&path, FP).unwrap();
        a.add_supplier("Acme", None, None).unwrap();
        drop(a);
        let b = Ledger::open_or_create(&path, FP).unwrap();
        assert_eq!(b.suppliers().unwrap().len(), 1);
    }

    #[test]
    fn open_refuses_newer_schema() {
        let (_dir, path, ledger) = new_ledger();
        drop(ledger);
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = Ledger::open(&path, FP).unwrap_err();
        match err {
            Error::LedgerNewerSchema {
                found, supported, ..
            } => {
                assert_eq!(found, 99);
                assert_eq!(supported, SCHEMA_VERSION);
            }
            other => panic!("expected LedgerNewerSchema, got {other:?}"),
        }
        // Refused untouched.
        let conn = Connection::open(&path).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, 99);
    }

    #[test]
    fn open_refuses_garbage_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.sqlite");
        let garbage: Vec<u8> = (0..8192u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&path, &garbage).unwrap();
        let err = Ledger::open(&path, FP).unwrap_err();
        assert!(matches!(err, Error::LedgerCorrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("restore"), "{err}");
        // Nothing was written to it.
        assert_eq!(std::fs::read(&path).unwrap(), garbage);
    }

    #[test]
    fn open_refuses_a_text_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "this is not a database\n".repeat(300)).unwrap();
        assert!(matches!(
            Ledger::open_or_create(&path, FP),
            Err(Error::LedgerCorrupt { .. })
        ));
    }

    #[test]
    fn open_refuses_another_programs_sqlite_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        drop(conn);
        let err = Ledger::open(&path, FP).unwrap_err();
        assert!(matches!(err, Error::LedgerCorrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("not a leakmark ledger"), "{err}");
    }

    #[test]
    fn open_refuses_an_empty_file_but_open_or_create_initialises_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.sqlite");
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(
            Ledger::open(&path, FP),
            Err(Error::LedgerCorrupt { .. })
        ));
        Ledger::open_or_create(&path, FP).unwrap();
        Ledger::open(&path, FP).unwrap();
    }

    #[test]
    fn migrations_from_zero_reach_the_current_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        let tx = conn.transaction().unwrap();
        migrate(&tx, 0).unwrap();
        tx.commit().unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, i64::from(SCHEMA_VERSION));
    }

    #[test]
    fn supplier_tree_add_chain_and_list() {
        let (_dir, _path, mut l) = new_ledger();
        let acme = l
            .add_supplier(" Acme ", None, Some("sec@acme.example"))
            .unwrap();
        assert_eq!(acme.name, "Acme");
        assert_eq!(acme.contact.as_deref(), Some("sec@acme.example"));
        let bolt = l.add_supplier("Bolt", None, Some("  ")).unwrap();
        assert_eq!(bolt.contact, None);
        let moulds = l.add_supplier("Moulds", Some("Acme"), None).unwrap();
        let tools = l.add_supplier("Tools", Some("Moulds"), None).unwrap();
        l.add_supplier("Alpha", Some("Acme"), None).unwrap();
        assert_eq!(moulds.parent_id, Some(acme.id));

        let chain: Vec<String> = l
            .chain(tools.id)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(chain, ["Tools", "Moulds", "Acme"]);
        assert_eq!(l.chain(bolt.id).unwrap().len(), 1);

        let tree = l.supplier_tree().unwrap();
        let names = |nodes: &[SupplierNode]| -> Vec<String> {
            nodes.iter().map(|n| n.supplier.name.clone()).collect()
        };
        assert_eq!(names(&tree), ["Acme", "Bolt"]);
        assert_eq!(names(&tree[0].children), ["Alpha", "Moulds"]);
        assert_eq!(names(&tree[0].children[1].children), ["Tools"]);
        assert!(tree[1].children.is_empty());

        assert_eq!(l.supplier_by_name("Moulds").unwrap().id, moulds.id);
        assert_eq!(l.supplier(tools.id).unwrap().name, "Tools");
        assert_eq!(l.suppliers().unwrap().len(), 5);
    }

    #[test]
    fn supplier_tree_is_serialisable() {
        let (_dir, _path, mut l) = new_ledger();
        l.add_supplier("Acme", None, None).unwrap();
        l.add_supplier("Moulds", Some("Acme"), None).unwrap();
        let json = serde_json::to_string(&l.supplier_tree().unwrap()).unwrap();
        assert!(json.contains("\"children\":[{\"supplier\":{"), "{json}");
    }

    #[test]
    fn add_supplier_refuses_unknown_parent_duplicate_and_empty_name() {
        let (_dir, _path, mut l) = new_ledger();
        l.add_supplier("Acme", None, None).unwrap();
        assert!(matches!(
            l.add_supplier("Moulds", Some("Nobody"), None),
            Err(Error::UnknownSupplier { name }) if name == "Nobody"
        ));
        assert!(matches!(
            l.add_supplier("Acme", None, None),
            Err(Error::Ledger { .. })
        ));
        assert!(matches!(
            l.add_supplier("  ", None, None),
            Err(Error::Ledger { .. })
        ));
        assert!(matches!(
            l.supplier_by_name("Nobody"),
            Err(Error::UnknownSupplier { .. })
        ));
        assert!(matches!(
            l.chain(SupplierId(999)),
            Err(Error::UnknownSupplier { .. })
        ));
        assert_eq!(l.suppliers().unwrap().len(), 1);
    }

    #[test]
    fn set_parent_refuses_cycles() {
        let (_dir, _path, mut l) = new_ledger();
        l.add_supplier("A", None, None).unwrap();
        l.add_supplier("B", Some("A"), None).unwrap();
        l.add_supplier("C", Some("B"), None).unwrap();
        for (child, parent) in [("A", "C"), ("A", "B"), ("A", "A"), ("B", "C")] {
            let err = l.set_parent(child, Some(parent)).unwrap_err();
            assert!(
                matches!(err, Error::SupplierCycle { .. }),
                "{child} under {parent}: {err:?}"
            );
        }
        // Legal moves work, and the tree stays a tree.
        let c = l.set_parent("C", Some("A")).unwrap();
        assert_eq!(c.parent_id, Some(l.supplier_by_name("A").unwrap().id));
        l.set_parent("B", None).unwrap();
        assert_eq!(l.supplier_tree().unwrap().len(), 2);
        assert!(matches!(
            l.set_parent("B", Some("Nobody")),
            Err(Error::UnknownSupplier { .. })
        ));
    }

    #[test]
    fn chain_and_tree_report_a_hand_made_cycle() {
        let (_dir, path, mut l) = new_ledger();
        let a = l.add_supplier("A", None, None).unwrap();
        let b = l.add_supplier("B", Some("A"), None).unwrap();
        drop(l);
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE suppliers SET parent_id = ?1 WHERE id = ?2",
            [b.id.0, a.id.0],
        )
        .unwrap();
        drop(conn);
        let l = Ledger::open(&path, FP).unwrap();
        assert!(matches!(l.chain(b.id), Err(Error::LedgerCorrupt { .. })));
        assert!(matches!(
            l.supplier_tree(),
            Err(Error::LedgerCorrupt { .. })
        ));
    }

    #[test]
    fn csv_parser_handles_quotes_blank_lines_and_missing_contact() {
        let text = "\u{feff}Name, Parent ,CONTACT\r\n\
                    \r\n\
                    Moulds,Acme,\"Doe, Jane \"\"JD\"\"\"\r\n\
                    Acme,,\r\n\
                    Bolt, \r\n";
        let rows = parse_suppliers_csv(text, Path::new("s.csv")).unwrap();
        assert_eq!(
            rows,
            [
                NewSupplier {
                    name: "Moulds".into(),
                    parent: Some("Acme".into()),
                    contact: Some("Doe, Jane \"JD\"".into()),
                },
                NewSupplier {
                    name: "Acme".into(),
                    parent: None,
                    contact: None,
                },
                NewSupplier {
                    name: "Bolt".into(),
                    parent: None,
                    contact: None,
                },
            ]
        );
    }

    #[test]
    fn csv_parser_reports_the_bad_line() {
        let cases = [
            ("", 1),
            ("name,contact\nA,x\n", 1),
            ("name,parent,contact\nA,,x,extra\n", 2),
            ("name,parent,contact\nA\n", 2),
            ("name,parent,contact\nA,,\n\n,B,\n", 4),
            ("name,parent,contact\nA,,\"open\n", 2),
            ("name,parent,contact\nA,,x\"y\n", 2),
            ("name,parent,contact\nA,,\"x\"y\n", 2),
            ("name,parent,contact\nA,,\nA,,\n", 3),
        ];
        for (text, want_line) in cases {
            match parse_suppliers_csv(text, Path::new("s.csv")) {
                Err(Error::SupplierCsv { line, .. }) => assert_eq!(line, want_line, "{text:?}"),
                other => panic!("{text:?}: expected SupplierCsv, got {other:?}"),
            }
        }
    }

    #[test]
    fn import_builds_the_tree_in_any_row_order_and_is_idempotent() {
        let (dir, _path, mut l) = new_ledger();
        l.add_supplier("Existing", None, None).unwrap();
        let csv = dir.path().join("suppliers.csv");
        std::fs::write(
            &csv,
            "name,parent,contact\n\
             T3,T2,\n\
             T2,T1,t2@x.example\n\
             T1,,\n\
             Sub,Existing,\n\
             Existing,,boss@existing.example\n",
        )
        .unwrap();
        let summary = l.import_suppliers_csv(&csv).unwrap();
        assert_eq!(
            summary,
            ImportSummary {
                added: 4,
                updated: 1,
                unchanged: 0
            }
        );
        let t3 = l.supplier_by_name("T3").unwrap();
        let chain: Vec<String> = l
            .chain(t3.id)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(chain, ["T3", "T2", "T1"]);
        assert_eq!(
            l.supplier_by_name("Existing").unwrap().contact.as_deref(),
            Some("boss@existing.example")
        );
        let again = l.import_suppliers_csv(&csv).unwrap();
        assert_eq!(
            again,
            ImportSummary {
                added: 0,
                updated: 0,
                unchanged: 5
            }
        );
        assert_eq!(l.suppliers().unwrap().len(), 5);
    }

    #[test]
    fn import_refuses_cycles_and_unknown_parents_atomically() {
        let (_dir, _path, mut l) = new_ledger();
        let row = |name: &str, parent: Option<&str>| NewSupplier {
            name: name.into(),
            parent: parent.map(Into::into),
            contact: None,
        };
        let cyclic = [
            row("Fine", None),
            row("A", Some("B")),
            row("B", Some("C")),
            row("C", Some("A")),
        ];
        assert!(matches!(
            l.import_suppliers(&cyclic),
            Err(Error::SupplierCycle { .. })
        ));
        // The row reported is on the cycle, not merely hanging off it.
        let hanging = [
            row("X", Some("A")),
            row("A", Some("B")),
            row("B", Some("A")),
        ];
        match l.import_suppliers(&hanging) {
            Err(Error::SupplierCycle { supplier, parent }) => {
                assert!(
                    [("A", "B"), ("B", "A")].contains(&(supplier.as_str(), parent.as_str())),
                    "{supplier} under {parent}"
                );
            }
            other => panic!("expected SupplierCycle, got {other:?}"),
        }
        let self_parent = [row("S", Some("S"))];
        assert!(matches!(
            l.import_suppliers(&self_parent),
            Err(Error::SupplierCycle { .. })
        ));
        let orphan = [row("Fine", None), row("X", Some("Ghost"))];
        assert!(matches!(
            l.import_suppliers(&orphan),
            Err(Error::UnknownSupplier { name }) if name == "Ghost"
        ));
        // All or nothing: "Fine" was rolled back each time.
        assert!(l.suppliers().unwrap().is_empty());
    }

    #[test]
    fn import_refuses_an_existing_supplier_under_another_parent() {
        let (_dir, _path, mut l) = new_ledger();
        l.add_supplier("P", None, None).unwrap();
        l.add_supplier("Q", None, None).unwrap();
        l.add_supplier("C", Some("P"), None).unwrap();
        let rows = [NewSupplier {
            name: "C".into(),
            parent: Some("Q".into()),
            contact: None,
        }];
        let err = l.import_suppliers(&rows).unwrap_err();
        assert!(matches!(err, Error::Ledger { .. }), "{err:?}");
        assert!(err.to_string().contains("already exists under P"), "{err}");
    }

    #[test]
    fn register_document_is_idempotent_on_hash() {
        let (_dir, _path, mut l) = new_ledger();
        let mut new = new_doc("bumper.png", 7);
        new.sha256 = new.sha256.to_ascii_uppercase();
        let d1 = l.register_document(&new).unwrap();
        assert_eq!(d1.sha256, sha(7));
        assert_eq!(d1.variant, 3);
        assert_eq!((d1.width, d1.height), (640, 480));
        assert_eq!(
            d1.original_path.as_deref(),
            Some(Path::new("/archive/bumper.png"))
        );
        let mut renamed = new_doc("bumper copy.png", 7);
        renamed.variant = 9;
        let d2 = l.register_document(&renamed).unwrap();
        assert_eq!(d1, d2);
        let other = l.register_document(&new_doc("door.png", 8)).unwrap();
        assert_ne!(other.id, d1.id);
        assert_eq!(l.documents().unwrap(), [d1.clone(), other]);
        assert_eq!(l.document(d1.id).unwrap(), Some(d1.clone()));
        assert_eq!(l.document_by_sha256(&sha(7)).unwrap(), Some(d1));
        assert_eq!(l.document_by_sha256(&sha(9)).unwrap(), None);
        assert_eq!(l.document_by_sha256("xyz").unwrap(), None);
    }

    #[test]
    fn register_document_refuses_bad_input() {
        let (_dir, _path, mut l) = new_ledger();
        let mut bad_hash = new_doc("a.png", 1);
        bad_hash.sha256 = "abc".into();
        let mut zero = new_doc("b.png", 2);
        zero.height = 0;
        let mut unnamed = new_doc("c.png", 3);
        unnamed.name = " ".into();
        for doc in [bad_hash, zero, unnamed] {
            assert!(matches!(
                l.register_document(&doc),
                Err(Error::Ledger { .. })
            ));
        }
        assert!(l.documents().unwrap().is_empty());
    }

    #[test]
    fn allocating_twice_returns_the_same_copy() {
        let (_dir, _path, mut l) = new_ledger();
        let s = l.add_supplier("Acme", None, None).unwrap();
        let d = l.register_document(&new_doc("a.png", 1)).unwrap();
        let first = l.allocate_or_get_copy(d.id, s.id).unwrap();
        assert_eq!(first.state, CopyState::Reserved);
        assert_ne!(first.serial, 0);
        let second = l.allocate_or_get_copy(d.id, s.id).unwrap();
        assert_eq!(first, second);
        // Still the same after it was issued.
        let issued = l
            .mark_copy_written(first.id, Path::new("/out/a_acme.png"), &sha(2))
            .unwrap();
        let third = l.allocate_or_get_copy(d.id, s.id).unwrap();
        assert_eq!(third, issued);
        assert_eq!(third.serial, first.serial);
    }

    #[test]
    fn allocate_refuses_unknown_document_or_recipient() {
        let (_dir, _path, mut l) = new_ledger();
        let s = l.add_supplier("Acme", None, None).unwrap();
        let d = l.register_document(&new_doc("a.png", 1)).unwrap();
        assert!(matches!(
            l.allocate_or_get_copy(DocumentId(999), s.id),
            Err(Error::Ledger { .. })
        ));
        assert!(matches!(
            l.allocate_or_get_copy(d.id, SupplierId(999)),
            Err(Error::UnknownSupplier { .. })
        ));
        assert!(matches!(
            l.mark_copy_written(CopyId(999), Path::new("/x.png"), &sha(1)),
            Err(Error::Ledger { .. })
        ));
        assert!(l.issued_copies(true).unwrap().is_empty());
    }

    #[test]
    fn serials_are_unique_and_not_sequential_over_many_copies() {
        let (_dir, _path, mut l) = new_ledger();
        let docs: Vec<Document> = (0..5)
            .map(|i| {
                l.register_document(&new_doc(&format!("d{i}.png"), i))
                    .unwrap()
            })
            .collect();
        let suppliers: Vec<Supplier> = (0..100)
            .map(|i| l.add_supplier(&format!("S{i:03}"), None, None).unwrap())
            .collect();
        let mut serials = Vec::new();
        for d in &docs {
            for s in &suppliers {
                serials.push(l.allocate_or_get_copy(d.id, s.id).unwrap().serial);
            }
        }
        let distinct: HashSet<u32> = serials.iter().copied().collect();
        assert_eq!(distinct.len(), 500);
        assert!(!distinct.contains(&0));
        // Consecutive allocations are not neighbours: a counter would give
        // differences of 1; random draws almost never give any.
        let adjacent = serials
            .windows(2)
            .filter(|w| w[0].abs_diff(w[1]) <= 1000)
            .count();
        assert!(adjacent < 5, "{adjacent} near-sequential serials");
        assert_eq!(l.issued_copies(true).unwrap().len(), 500);
        assert!(l.issued_copies(false).unwrap().is_empty());
    }

    #[test]
    fn reserved_copy_is_completed_on_rerun_with_the_same_serial() {
        let (_dir, path, mut l) = new_ledger();
        let s = l.add_supplier("Acme", None, None).unwrap();
        let d = l.register_document(&new_doc("a.png", 1)).unwrap();
        let reserved = l.allocate_or_get_copy(d.id, s.id).unwrap();
        // The run dies before the file is written.
        drop(l);

        let mut l = Ledger::open(&path, FP).unwrap();
        let pending = l.issued_copies(true).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].state, CopyState::Reserved);
        assert!(l.issued_copies(false).unwrap().is_empty());

        // The re-run registers the same document and gets the same copy.
        let d_again = l.register_document(&new_doc("a.png", 1)).unwrap();
        assert_eq!(d_again.id, d.id);
        let resumed = l.allocate_or_get_copy(d.id, s.id).unwrap();
        assert_eq!(resumed.id, reserved.id);
        assert_eq!(resumed.serial, reserved.serial);
        assert_eq!(resumed.state, CopyState::Reserved);
        let out = Path::new("/out/a_acme.png");
        let issued = l.mark_copy_written(resumed.id, out, &sha(5)).unwrap();
        assert_eq!(issued.state, CopyState::Issued);
        assert_eq!(issued.output_path.as_deref(), Some(out));
        assert_eq!(issued.output_sha256, Some(sha(5)));
        let first_time = issued.issued_at;
        assert!(first_time.is_some());

        // Marking again updates the file but keeps the first issue time.
        let again = l
            .mark_copy_written(resumed.id, Path::new("/out2/a.png"), &sha(6))
            .unwrap();
        assert_eq!(again.issued_at, first_time);
        assert_eq!(again.output_sha256, Some(sha(6)));
        assert_eq!(l.copy(resumed.id).unwrap(), Some(again));

        let issued = l.issued_copies(false).unwrap();
        assert_eq!(issued.len(), 1);
        assert_eq!(issued[0].serial, reserved.serial);
    }

    #[test]
    fn mark_copy_written_refuses_a_bad_hash() {
        let (_dir, _path, mut l) = new_ledger();
        let s = l.add_supplier("Acme", None, None).unwrap();
        let d = l.register_document(&new_doc("a.png", 1)).unwrap();
        let c = l.allocate_or_get_copy(d.id, s.id).unwrap();
        assert!(matches!(
            l.mark_copy_written(c.id, Path::new("/o.png"), "12"),
            Err(Error::Ledger { .. })
        ));
        assert_eq!(l.copy(c.id).unwrap().unwrap().state, CopyState::Reserved);
    }

    #[test]
    fn lookup_by_serial_names_document_recipient_and_variant() {
        let (_dir, _path, mut l) = new_ledger();
        l.add_supplier("Acme", None, None).unwrap();
        let s = l.add_supplier("Moulds", Some("Acme"), None).unwrap();
        let d = l.register_document(&new_doc("bumper.png", 1)).unwrap();
        let c = l.allocate_or_get_copy(d.id, s.id).unwrap();
        l.mark_copy_written(c.id, Path::new("/out/b.png"), &sha(3))
            .unwrap();
        let found = l.copy_by_serial(c.serial).unwrap().unwrap();
        assert_eq!(found.copy_id, c.id);
        assert_eq!(found.variant, 3);
        assert_eq!(found.document_name, "bumper.png");
        assert_eq!(found.document_sha256, sha(1));
        assert_eq!(found.recipient_name, "Moulds");
        assert_eq!(found.state, CopyState::Issued);
        assert_eq!(found.output_path.as_deref(), Some(Path::new("/out/b.png")));
        let chain = l.chain(found.recipient_id).unwrap();
        assert_eq!(chain[1].name, "Acme");
        assert_eq!(l.copy_by_serial(c.serial.wrapping_add(1)).unwrap(), None);
        assert_eq!(l.issued_copies(false).unwrap(), [found]);
    }

    #[test]
    fn concurrent_writers_get_distinct_serials() {
        const PER_THREAD: usize = 150;
        let (_dir, path, mut l) = new_ledger();
        let d = l.register_document(&new_doc("a.png", 1)).unwrap();
        for t in 0..2 {
            for i in 0..PER_THREAD {
                l.add_supplier(&format!("T{t}-{i:03}"), None, None).unwrap();
            }
        }
        drop(l);
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let path = path.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || -> Result<Vec<u32>> {
                    let mut l = Ledger::open(&path, FP)?;
                    barrier.wait();
                    let mut serials = Vec::new();
                    for i in 0..PER_THREAD {
                        // Every thread also touches the other's pairs, so
                        // both race on the same (document, recipient) rows.
                        let own = l.supplier_by_name(&format!("T{t}-{i:03}"))?;
                        let other = l.supplier_by_name(&format!("T{}-{i:03}", 1 - t))?;
                        let c = l.allocate_or_get_copy(d.id, own.id)?;
                        l.mark_copy_written(c.id, Path::new("/out/x.png"), &sha(9))?;
                        l.allocate_or_get_copy(d.id, other.id)?;
                        serials.push(c.serial);
                    }
                    Ok(serials)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().unwrap().unwrap());
        }
        assert_eq!(all.len(), 2 * PER_THREAD);
        let distinct: HashSet<u32> = all.iter().copied().collect();
        assert_eq!(distinct.len(), all.len());
        let l = Ledger::open(&path, FP).unwrap();
        let copies = l.issued_copies(true).unwrap();
        assert_eq!(copies.len(), 2 * PER_THREAD);
        let stored: HashSet<u32> = copies.iter().map(|c| c.serial).collect();
        assert_eq!(stored, distinct);
        assert!(copies.iter().all(|c| c.state == CopyState::Issued));
    }

    #[test]
    fn concurrent_open_or_create_yields_one_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("race.sqlite");
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || -> Result<()> {
                    let mut l = Ledger::open_or_create(&path, FP)?;
                    l.add_supplier(&format!("S{i}"), None, None)?;
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
        let l = Ledger::open(&path, FP).unwrap();
        assert_eq!(l.suppliers().unwrap().len(), 4);
    }

    #[test]
    fn traces_are_recorded_and_listed() {
        let (_dir, _path, mut l) = new_ledger();
        let json = r#"{"mode":"blind","serial":1234,"p_false_alarm":1e-15}"#;
        let t = l
            .record_trace(Path::new("/leaks/forum.jpg"), &sha(4), json)
            .unwrap();
        assert_eq!(t.result_json, json);
        assert_eq!(t.leak_sha256, sha(4));
        assert_eq!(l.traces().unwrap(), [t]);
        assert!(matches!(
            l.record_trace(Path::new("/leaks/x.jpg"), &sha(4), "{not json"),
            Err(Error::Ledger { .. })
        ));
        assert!(matches!(
            l.record_trace(Path::new("/leaks/x.jpg"), "abc", "{}"),
            Err(Error::Ledger { .. })
        ));
        assert_eq!(l.traces().unwrap().len(), 1);
    }

    #[test]
    fn sha256_file_matches_known_vector() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc.txt");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(matches!(
            sha256_file(&dir.path().join("missing")),
            Err(Error::Read { .. })
        ));
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Ledger::open(&dir.path().join("m.sqlite"), FP).unwrap_err();
        assert!(missing.to_string().contains("check the path"), "{missing}");
    }
}
