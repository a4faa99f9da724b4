//! Hardening, through the real binary: originals are never overwritten
//! under any spelling, a failed write mid-batch leaves no partial file and a
//! ledger that matches the disk, every broken ledger gets its own error, and
//! the key's secret never leaves the key file.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

fn leakmark(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leakmark"))
        .current_dir(dir)
        .args(args)
        .env_remove("LEAKMARK_KEY")
        .env_remove("LEAKMARK_LEDGER")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run the leakmark binary")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_ok(out: &Output) {
    assert_eq!(code(out), 0, "{}", text(out));
}

/// Status 2 and exactly one `error:` line on stderr mentioning `needle`.
fn assert_one_line_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(out), 2, "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

/// A 480 × 400 photo-like image, big enough to mark.
fn picture(path: &Path, seed: u64) {
    common::photo(480, 400, seed)
        .save(path)
        .expect("write the test image");
}

/// Key, ledger and two recipients in `dir`, with `--key`/`--ledger` args.
fn setup(dir: &Path) {
    assert_ok(&leakmark(dir, &["keygen", "--out", "k.key"]));
    assert_ok(&leakmark(
        dir,
        &["--key", "k.key", "ledger", "init", "l.db"],
    ));
    for name in ["Acme Plastics", "Borg Metal"] {
        assert_ok(&leakmark(
            dir,
            &[
                "--key", "k.key", "--ledger", "l.db", "supplier", "add", name,
            ],
        ));
    }
}

fn with_key_and_ledger<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--key", "k.key", "--ledger", "l.db"];
    all.extend_from_slice(args);
    all
}

fn files_under(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.insert(path);
        }
    }
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// (recipient, state, output path, output sha, serial) of one copy row.
type CopyRow = (String, String, Option<String>, Option<String>, i64);

/// Every copy row, by recipient name.
fn copy_rows(ledger: &Path) -> Vec<CopyRow> {
    let conn =
        rusqlite::Connection::open_with_flags(ledger, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the ledger read-only");
    let mut stmt = conn
        .prepare(
            "SELECT s.name, c.state, c.output_path, c.output_sha256, c.serial
             FROM copies c JOIN suppliers s ON s.id = c.recipient_id ORDER BY s.name",
        )
        .expect("query copies");
    stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .expect("query copies")
    .collect::<Result<_, _>>()
    .expect("read copies")
}

// ---- originals are never overwritten ----

#[test]
fn embed_refuses_its_input_under_every_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_ok(&leakmark(d, &["keygen", "--out", "k.key"]));
    std::fs::create_dir(d.join("a")).unwrap();
    picture(&d.join("a/orig.png"), 1);
    let before = std::fs::read(d.join("a/orig.png")).unwrap();
    std::os::unix::fs::symlink("a/orig.png", d.join("link.png")).unwrap();
    std::fs::hard_link(d.join("a/orig.png"), d.join("hard.png")).unwrap();
    let absolute = d.join("a/orig.png").to_string_lossy().into_owned();
    for (input, output) in [
        ("a/orig.png", "a/orig.png"),
        ("a/orig.png", "./a/../a/orig.png"),
        ("a/orig.png", "a/./orig.png"),
        ("a/orig.png", absolute.as_str()),
        ("a/orig.png", "link.png"),
        ("link.png", "a/orig.png"),
        ("a/orig.png", "hard.png"),
    ] {
        let out = leakmark(
            d,
            &["embed", "--key", "k.key", "--payload", "5", input, output],
        );
        assert_one_line_error(&out, "originals are never overwritten");
        assert_eq!(
            std::fs::read(d.join("a/orig.png")).unwrap(),
            before,
            "{input} -> {output}"
        );
    }
    let names: Vec<String> = std::fs::read_dir(d.join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["orig.png"], "no temporary file is left");
}

#[test]
fn issue_refuses_to_write_a_copy_over_its_own_document() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    std::fs::create_dir_all(d.join("out/Acme Plastics")).unwrap();
    let doc = d.join("out/Acme Plastics/doc.png");
    picture(&doc, 2);
    let before = std::fs::read(&doc).unwrap();
    let out = leakmark(
        d,
        &with_key_and_ledger(&[
            "issue",
            "out/Acme Plastics/doc.png",
            "--to",
            "Acme Plastics",
            "--out",
            "out",
        ]),
    );
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        text(&out).contains("originals are never overwritten"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(&doc).unwrap(), before);
    let rows = copy_rows(&d.join("l.db"));
    assert!(rows.iter().all(|r| r.1 != "issued"), "{rows:?}");
}

#[test]
fn embed_refuses_to_replace_a_device_or_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_ok(&leakmark(d, &["keygen", "--out", "k.key"]));
    picture(&d.join("orig.png"), 3);
    let fifo = d.join("pipe.png");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let out = leakmark(
        d,
        &[
            "embed",
            "--key",
            "k.key",
            "--payload",
            "5",
            "orig.png",
            "pipe.png",
        ],
    );
    assert_one_line_error(&out, "not a regular file");
    let meta = std::fs::symlink_metadata(&fifo).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(meta.file_type().is_fifo(), "the FIFO was replaced");
}

// ---- failed writes ----

#[test]
fn embed_into_a_folder_that_is_a_file_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_ok(&leakmark(d, &["keygen", "--out", "k.key"]));
    picture(&d.join("orig.png"), 4);
    std::fs::write(d.join("notes.txt"), "a file, not a folder").unwrap();
    let before = files_under(d);
    let out = leakmark(
        d,
        &[
            "embed",
            "--key",
            "k.key",
            "--payload",
            "5",
            "orig.png",
            "notes.txt/marked.png",
        ],
    );
    assert_one_line_error(&out, "cannot write notes.txt/marked.png");
    assert_eq!(files_under(d), before, "nothing written");
}

#[test]
fn a_write_failing_mid_batch_leaves_no_partial_file_and_the_ledger_matches_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    picture(&d.join("doc.png"), 5);
    // Borg Metal's copy cannot be written: its path is taken by a folder.
    std::fs::create_dir_all(d.join("out/Borg Metal/doc.png")).unwrap();
    let args = with_key_and_ledger(&[
        "issue",
        "doc.png",
        "--to",
        "Acme Plastics",
        "Borg Metal",
        "--out",
        "out",
    ]);
    let out = leakmark(d, &args);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        text(&out).contains("1 written, 0 already issued, 1 failed"),
        "{}",
        text(&out)
    );
    let files = files_under(&d.join("out"));
    assert_eq!(
        files,
        BTreeSet::from([d.join("out/Acme Plastics/doc.png")]),
        "only the good copy, no temporary file"
    );
    let rows = copy_rows(&d.join("l.db"));
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (acme, borg) = (&rows[0], &rows[1]);
    assert_eq!(acme.1, "issued");
    let acme_file = std::fs::read(d.join("out/Acme Plastics/doc.png")).unwrap();
    assert_eq!(acme.3.as_deref(), Some(sha256_hex(&acme_file).as_str()));
    assert_ne!(
        borg.1, "issued",
        "a copy not on disk is not issued: {rows:?}"
    );
    assert_eq!(borg.3, None);

    // Clear the obstacle and re-run: the missing copy is written with the
    // serial reserved for it, the good one is kept.
    std::fs::remove_dir(d.join("out/Borg Metal/doc.png")).unwrap();
    let out = leakmark(d, &args);
    assert_ok(&out);
    assert!(
        text(&out).contains("1 written, 1 already issued, 0 failed"),
        "{}",
        text(&out)
    );
    let again = copy_rows(&d.join("l.db"));
    assert_eq!(again[1].4, borg.4, "the reserved serial is kept");
    for row in &again {
        assert_eq!(row.1, "issued");
        let bytes = std::fs::read(row.2.as_deref().unwrap()).unwrap();
        assert_eq!(row.3.as_deref(), Some(sha256_hex(&bytes).as_str()));
    }
}

#[test]
fn issue_into_an_out_folder_that_is_a_file_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    picture(&d.join("doc.png"), 6);
    std::fs::write(d.join("out"), "a file, not a folder").unwrap();
    let out = leakmark(
        d,
        &with_key_and_ledger(&["issue", "doc.png", "--to", "Acme Plastics", "--out", "out"]),
    );
    assert_one_line_error(&out, "cannot create folder");
    assert_eq!(
        std::fs::read(d.join("out")).unwrap(),
        b"a file, not a folder"
    );
    let rows = copy_rows(&d.join("l.db"));
    assert!(rows.iter().all(|r| r.1 != "issued"), "{rows:?}");
}

// ---- broken ledgers: each its own error ----

#[test]
fn missing_corrupt_foreign_newer_and_locked_ledgers_each_get_their_own_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    let list = |ledger: &str| {
        leakmark(
            d,
            &["--key", "k.key", "--ledger", ledger, "supplier", "list"],
        )
    };

    assert_one_line_error(
        &list("none.db"),
        "does not exist: create it with `leakmark ledger init",
    );

    std::fs::write(d.join("garbage.db"), [0xA5_u8; 8192]).unwrap();
    assert_one_line_error(&list("garbage.db"), "restore the ledger from a backup");

    // A healthy ledger with one page overwritten.
    let mut bytes = std::fs::read(d.join("l.db")).unwrap();
    if bytes.len() < 4096 * 2 {
        // Checkpointed copy too small to damage a data page: use the header.
        bytes.truncate(100);
    } else {
        for b in &mut bytes[4096..8192] {
            *b = 0x5A;
        }
    }
    bytes[..16].copy_from_slice(b"SQLite format 3\0");
    std::fs::write(d.join("damaged.db"), &bytes).unwrap();
    let out = list("damaged.db");
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        text(&out).contains("is unusable") || text(&out).contains("restore"),
        "{}",
        text(&out)
    );

    {
        let conn = rusqlite::Connection::open(d.join("other.db")).unwrap();
        conn.execute_batch("CREATE TABLE photos (id INTEGER PRIMARY KEY);")
            .unwrap();
    }
    assert_one_line_error(&list("other.db"), "is unusable");

    std::fs::copy(d.join("l.db"), d.join("newer.db")).unwrap();
    {
        let conn = rusqlite::Connection::open(d.join("newer.db")).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    assert_one_line_error(&list("newer.db"), "upgrade leakmark");

    // Another process holds the write lock for longer than the busy timeout.
    let conn = rusqlite::Connection::open(d.join("l.db")).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE;").unwrap();
    let out = leakmark(
        d,
        &with_key_and_ledger(&["supplier", "add", "Castings Ltd"]),
    );
    assert_one_line_error(&out, "locked");
    assert!(text(&out).contains("retry"), "{}", text(&out));
    conn.execute_batch("ROLLBACK;").unwrap();
    drop(conn);
    assert_ok(&leakmark(
        d,
        &with_key_and_ledger(&["supplier", "add", "Castings Ltd"]),
    ));
}

// ---- the key ----

#[test]
fn keygen_is_private_even_under_a_permissive_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("sh")
        .current_dir(dir.path())
        .arg("-c")
        .arg(format!(
            "umask 000 && '{}' keygen --out k.key",
            env!("CARGO_BIN_EXE_leakmark")
        ))
        .output()
        .unwrap()
        .status;
    assert!(status.success());
    let mode = std::fs::metadata(dir.path().join("k.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    for loose in [0o640, 0o604, 0o666] {
        std::fs::set_permissions(
            dir.path().join("k.key"),
            std::fs::Permissions::from_mode(loose),
        )
        .unwrap();
        picture(&dir.path().join("x.png"), 7);
        let out = leakmark(dir.path(), &["detect", "--key", "k.key", "x.png"]);
        assert_one_line_error(&out, "run `chmod 600 k.key`");
    }
}

#[test]
fn a_binary_key_file_is_malformed_not_missing() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("k.key"), [0xFF_u8, 0xFE, 0x00, 0x80]).unwrap();
    std::fs::set_permissions(d.join("k.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    picture(&d.join("x.png"), 8);
    let out = leakmark(d, &["detect", "--key", "k.key", "x.png"]);
    assert_one_line_error(&out, "is malformed (it is not a text file)");
}

#[test]
fn the_secret_never_appears_in_output_errors_json_ledger_or_copies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    picture(&d.join("doc.png"), 9);
    picture(&d.join("plain.png"), 10);
    let key_text = std::fs::read_to_string(d.join("k.key")).unwrap();
    let secret = key_text
        .lines()
        .find_map(|l| l.strip_prefix("secret:"))
        .map(str::trim)
        .expect("the key file has a secret line")
        .to_string();
    assert_eq!(secret.len(), 64);
    let raw: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&secret[2 * i..2 * i + 2], 16).unwrap())
        .collect();

    let mut seen = String::new();
    let runs: Vec<Vec<&str>> = vec![
        vec![
            "--key",
            "k.key",
            "embed",
            "--payload",
            "7",
            "doc.png",
            "m.png",
        ],
        vec![
            "--key",
            "k.key",
            "detect",
            "--json",
            "m.png",
            "plain.png",
            "missing.png",
        ],
        vec!["--key", "k.key", "detect", "m.png", "plain.png"],
        vec![
            "--key",
            "k.key",
            "embed",
            "--payload",
            "-1",
            "doc.png",
            "x.png",
        ],
        vec![
            "--key",
            "k.key",
            "embed",
            "--payload",
            "7",
            "doc.png",
            "doc.png",
        ],
        with_key_and_ledger(&["issue", "doc.png", "--all", "--out", "out"]),
        with_key_and_ledger(&["trace", "--json", "out", "plain.png"]),
        with_key_and_ledger(&["trace", "out/Acme Plastics/doc.png"]),
        with_key_and_ledger(&["supplier", "list"]),
        with_key_and_ledger(&["supplier", "add", "Acme Plastics"]),
        with_key_and_ledger(&["ledger", "init", "l.db"]),
        vec!["--key", "k.key", "ledger", "init", "second.db"],
        vec!["--key", "k.key", "keygen", "--out", "k.key"],
    ];
    for args in &runs {
        let out = leakmark(d, args);
        seen.push_str(&text(&out));
    }
    assert!(
        seen.contains("\"detected\":true"),
        "the runs did real work: {seen}"
    );
    let fingerprint = common_fingerprint(&key_text);
    assert!(
        seen.contains(&fingerprint),
        "the fingerprint is what is shown"
    );

    let lower = secret.to_ascii_lowercase();
    let upper = secret.to_ascii_uppercase();
    // Any 8 consecutive hex digits of the secret would be a leak too.
    let pieces: Vec<&str> = (0..=56).step_by(8).map(|i| &lower[i..i + 8]).collect();
    let lower_seen = seen.to_ascii_lowercase();
    for piece in &pieces {
        assert!(!lower_seen.contains(piece), "secret hex in the output");
    }
    let mut files: Vec<PathBuf> = files_under(d).into_iter().collect();
    files.retain(|p| p.file_name().is_some_and(|n| n != "k.key"));
    assert!(files.iter().any(|p| p.ends_with("l.db")));
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        for needle in [lower.as_bytes(), upper.as_bytes(), &raw[..]] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "secret in {}",
                file.display()
            );
        }
        for piece in &pieces {
            assert!(
                !bytes
                    .windows(8)
                    .any(|w| w.eq_ignore_ascii_case(piece.as_bytes())),
                "part of the secret in {}",
                file.display()
            );
        }
    }
}

fn common_fingerprint(key_text: &str) -> String {
    key_text
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint:"))
        .map(|s| s.trim().to_string())
        .expect("the key file has a fingerprint line")
}
