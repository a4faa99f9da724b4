//! The `leakmark issue` command against its ledger when things go wrong:
//! the process killed mid-batch, and two processes issuing at once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use image::{Rgb, RgbImage};
use sha2::{Digest, Sha256};

/// How many suppliers the ledger gets.
const SUPPLIERS: usize = 12;

/// A synthetic drawing of `w`×`h`: white paper, a grid of dark lines, a
/// grey gradient block. `seed` moves things so documents differ.
fn drawing(path: &Path, seed: u32, w: u32, h: u32) {
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let s = seed % 7;
    for y in (h / 8 + 10 * s)..(h / 2 + 10 * s) {
        for x in (w / 2)..(w - w / 10) {
            let v = (120 + (x - w / 2) / 3 % 100 + (y % 40)) as u8;
            img.put_pixel(x, y, Rgb([v, v, v]));
        }
    }
    for i in 0..8u32 {
        let y0 = (30 + i * (h / 9) + s * 3).min(h - 2);
        for x in 20..w - 20 {
            for t in 0..2 {
                img.put_pixel(x, y0 + t, Rgb([20, 20, 30]));
            }
        }
        let x0 = (40 + i * (w / 9) + s * 5).min(w - 1);
        for y in 20..h - 20 {
            img.put_pixel(x0, y, Rgb([30, 30, 30]));
        }
    }
    for k in 0..(w - 200) {
        let (x, y) = (100 + k, 40 + (k * 3) / 4 + s);
        if x < w && y < h {
            img.put_pixel(x, y, Rgb([0, 0, 0]));
        }
    }
    img.save(path).expect("write the test drawing");
}

/// `leakmark --key k.key --ledger leakmark.db ARGS`, run in `dir` with a
/// clean environment, not yet started.
fn command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leakmark"));
    cmd.current_dir(dir)
        .args(["--key", "k.key", "--ledger", "leakmark.db"])
        .args(args)
        .env_remove("LEAKMARK_KEY")
        .env_remove("LEAKMARK_LEDGER")
        .env_remove("RUST_BACKTRACE");
    cmd
}

fn run(dir: &Path, args: &[&str]) -> Output {
    command(dir, args)
        .output()
        .expect("run the leakmark binary")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: stdout: {} stderr: {}",
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
}

/// A key, a ledger with [`SUPPLIERS`] suppliers, and `docs` drafts of
/// `w`×`h` in `dir`; returns the drafts' file names.
fn setup(dir: &Path, docs: u32, w: u32, h: u32) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_leakmark"))
        .current_dir(dir)
        .args(["keygen", "--out", "k.key"])
        .output()
        .unwrap();
    assert_ok(&out, "keygen");
    assert_ok(&run(dir, &["ledger", "init"]), "ledger init");
    let mut csv = String::from("name,parent,contact\n");
    for i in 0..SUPPLIERS {
        // Half tier-one, half under the one before.
        if i % 2 == 0 {
            csv.push_str(&format!("Supplier {i:02},,s{i}@example.com\n"));
        } else {
            csv.push_str(&format!("Supplier {i:02},Supplier {:02},\n", i - 1));
        }
    }
    std::fs::write(dir.join("suppliers.csv"), csv).unwrap();
    assert_ok(
        &run(dir, &["supplier", "import", "suppliers.csv"]),
        "supplier import",
    );
    (0..docs)
        .map(|i| {
            let name = format!("draft-{i}.png");
            drawing(&dir.join(&name), i + 1, w, h);
            name
        })
        .collect()
}

fn issue_args<'a>(docs: &'a [String], out: &'a str) -> Vec<&'a str> {
    let mut args = vec!["issue"];
    args.extend(docs.iter().map(String::as_str));
    args.extend(["--all", "--out", out]);
    args
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

fn is_temp(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_string_lossy();
    name.contains(".part") || name.starts_with(".leakmark-")
}

fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One row of the `copies` table.
#[derive(Debug)]
struct Copy {
    serial: i64,
    state: String,
    document: String,
    recipient: String,
    output_path: Option<String>,
    output_sha256: Option<String>,
}

fn copies(ledger: &Path) -> Vec<Copy> {
    let conn =
        rusqlite::Connection::open_with_flags(ledger, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT c.serial, c.state, d.name, s.name, c.output_path, c.output_sha256
             FROM copies c
             JOIN documents d ON d.id = c.document_id
             JOIN suppliers s ON s.id = c.recipient_id",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok(Copy {
            serial: r.get(0)?,
            state: r.get(1)?,
            document: r.get(2)?,
            recipient: r.get(3)?,
            output_path: r.get(4)?,
            output_sha256: r.get(5)?,
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// The ledger holds exactly one issued copy per (document, recipient),
/// with distinct serials, and the file it records matches its hash; every
/// copy file under each of `outs` is in the layout OUT/<recipient>/<doc>
/// and matches the ledger's hash too. Temp files in `allowed_temp` are
/// tolerated (left by a killed run); any other is an error.
fn assert_consistent(dir: &Path, docs: &[String], outs: &[&str], allowed_temp: &HashSet<PathBuf>) {
    let rows = copies(&dir.join("leakmark.db"));
    assert_eq!(rows.len(), docs.len() * SUPPLIERS, "{rows:#?}");
    let serials: HashSet<i64> = rows.iter().map(|c| c.serial).collect();
    assert_eq!(serials.len(), rows.len(), "duplicate serials: {rows:#?}");
    let issued = rows.iter().filter(|c| c.state == "issued").count();
    assert_eq!(issued, docs.len() * SUPPLIERS, "{rows:#?}");
    let pairs: HashSet<(&str, &str)> = rows
        .iter()
        .map(|c| (c.document.as_str(), c.recipient.as_str()))
        .collect();
    assert_eq!(pairs.len(), rows.len(), "a pair issued twice: {rows:#?}");

    let mut want_sha = HashMap::new();
    for c in &rows {
        let sha = c.output_sha256.clone().unwrap();
        let recorded = PathBuf::from(c.output_path.as_deref().unwrap());
        assert_eq!(sha256_hex(&recorded), sha, "{}", recorded.display());
        want_sha.insert((c.recipient.clone(), c.document.clone()), sha);
    }

    let recipients: BTreeSet<String> = rows.iter().map(|c| c.recipient.clone()).collect();
    for out in outs {
        let out_dir = dir.join(out);
        let mut found = BTreeSet::new();
        for file in files_under(&out_dir) {
            if is_temp(&file) {
                assert!(
                    allowed_temp.contains(&file),
                    "temp file left by a run that finished: {}",
                    file.display()
                );
                continue;
            }
            let rel = file.strip_prefix(&out_dir).unwrap();
            let parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            assert_eq!(parts.len(), 2, "unexpected file {}", file.display());
            let key = (parts[0].clone(), parts[1].clone());
            let want = want_sha
                .get(&key)
                .unwrap_or_else(|| panic!("unexpected file {}", file.display()));
            assert_eq!(&sha256_hex(&file), want, "{}", file.display());
            found.insert(key);
        }
        let expected: BTreeSet<(String, String)> = recipients
            .iter()
            .flat_map(|r| docs.iter().map(move |d| (r.clone(), d.clone())))
            .collect();
        assert_eq!(found, expected, "copies under {out}");
    }
}

/// Waits for `child` up to `limit`, killing it if it overruns.
fn wait_with_limit(child: &mut Child, limit: Duration, what: &str) {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_during_issue_then_rerun_leaves_a_consistent_ledger() {
    // Bigger drafts if the kill keeps landing after the batch is done.
    for (attempt, (w, h)) in [(800, 600), (1600, 1200), (2400, 1800)]
        .into_iter()
        .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let docs = setup(dir.path(), 2, w, h);
        let args = issue_args(&docs, "out");
        let out_dir = dir.path().join("out");
        let mut child = command(dir.path(), &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let mut killed = false;
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if files_under(&out_dir).iter().any(|f| !is_temp(f)) {
                child.kill().unwrap();
                child.wait().unwrap();
                killed = true;
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no copy written within a minute"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        if !killed {
            eprintln!("attempt {attempt}: issue of {w}x{h} finished before the kill; larger");
            continue;
        }
        let written = files_under(&out_dir).iter().filter(|f| !is_temp(f)).count();
        let leftovers: HashSet<PathBuf> = files_under(&out_dir)
            .into_iter()
            .filter(|f| is_temp(f))
            .collect();
        eprintln!(
            "killed after {:?} with {written} of {} copies written; {} temp file(s) left: {:?}",
            start.elapsed(),
            docs.len() * SUPPLIERS,
            leftovers.len(),
            leftovers
        );

        let rerun = run(dir.path(), &args);
        assert_ok(&rerun, "re-run after the kill");
        assert!(!stderr(&rerun).contains("panicked"), "{}", stderr(&rerun));
        assert_consistent(dir.path(), &docs, &["out"], &leftovers);

        // A third run finds everything issued and rewrites nothing.
        let again = run(dir.path(), &args);
        assert_ok(&again, "third run");
        let text = String::from_utf8_lossy(&again.stdout).into_owned();
        assert!(
            text.contains(&format!(
                "0 written, {} already issued, 0 failed",
                docs.len() * SUPPLIERS
            )),
            "{text}"
        );
        return;
    }
    panic!("every issue finished before it could be killed");
}

#[test]
fn two_processes_issuing_into_one_ledger_both_succeed_or_one_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let docs = setup(dir.path(), 2, 800, 600);
    let outs = ["out-a", "out-b"];
    let children: Vec<Child> = outs
        .iter()
        .map(|out| {
            command(dir.path(), &issue_args(&docs, out))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let results: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();

    let mut any_failed = false;
    for (out, result) in outs.iter().zip(&results) {
        let err = stderr(result);
        assert!(!err.contains("panicked"), "{out}: {err}");
        assert!(result.status.code().is_some(), "{out}: killed by a signal");
        if result.status.success() {
            continue;
        }
        any_failed = true;
        eprintln!("{out} failed cleanly: {err}");
        assert!(!err.trim().is_empty(), "{out}: failed without a message");
        for line in err.lines() {
            assert!(
                line.starts_with("error: ") || line.starts_with("note: "),
                "{out}: unexpected stderr line {line:?} in {err}"
            );
        }
        assert!(
            err.lines().any(|l| l.starts_with("error: ")
                && ["ledger", "busy", "locked"]
                    .iter()
                    .any(|w| l.to_lowercase().contains(w))),
            "{out}: no error line about the ledger: {err}"
        );
    }

    let mut finished = outs.to_vec();
    if any_failed {
        // Whatever the failed run left reserved, a re-run finishes it.
        let mut rerun = command(dir.path(), &issue_args(&docs, "out-a"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_with_limit(&mut rerun, Duration::from_secs(60), "re-run");
        assert!(rerun.wait().unwrap().success());
        // out-b may be incomplete if it was the one that failed.
        if !results[1].status.success() {
            finished.retain(|o| *o != "out-b");
        }
    }
    assert_consistent(dir.path(), &docs, &finished, &HashSet::new());
}
