//! The `leakmark` binary, run for real in temporary folders on small
//! generated drawings.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::{Rgb, RgbImage};
use leakmark::ledger::Ledger;
use leakmark::SecretKey;
use serde_json::Value;

/// A 600×450 synthetic drawing: white paper, a few dark lines, a grey
/// gradient block. `seed` moves things so documents differ.
fn drawing(path: &Path, seed: u32) {
    let (w, h) = (600u32, 450u32);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let s = seed % 7;
    for y in (60 + 10 * s)..(200 + 10 * s) {
        for x in 320..540 {
            let v = (120 + (x - 320) / 2 + (y % 40)) as u8;
            img.put_pixel(x, y, Rgb([v, v, v]));
        }
    }
    for i in 0..6u32 {
        let y0 = 30 + i * 65 + s * 3;
        for x in 20..580 {
            for t in 0..2 {
                img.put_pixel(x, (y0 + t).min(h - 1), Rgb([20, 20, 30]));
            }
        }
        let x0 = 40 + i * 90 + s * 5;
        for y in 20..430 {
            img.put_pixel(x0.min(w - 1), y, Rgb([30, 30, 30]));
        }
    }
    // A diagonal so the drawing is not all axis-aligned.
    for k in 0..400u32 {
        let (x, y) = (100 + k, 40 + (k * 3) / 4 + s);
        if x < w && y < h {
            img.put_pixel(x, y, Rgb([0, 0, 0]));
        }
    }
    img.save(path).expect("write the test drawing");
}

/// Runs `leakmark` in `dir` with a clean environment plus `envs`.
fn leakmark(dir: &Path, args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leakmark"));
    cmd.current_dir(dir)
        .args(args)
        .env_remove("LEAKMARK_KEY")
        .env_remove("LEAKMARK_LEDGER")
        .env_remove("RUST_BACKTRACE");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run the leakmark binary")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the run failed with status 2 and one `error:` line mentioning `needle`.
fn assert_one_line_error(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(code(out), 2, "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

fn json_lines(out: &Output) -> Vec<Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

fn keygen(dir: &Path, name: &str) -> PathBuf {
    let out = leakmark(dir, &["keygen", "--out", name], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    dir.join(name)
}

#[test]
fn keygen_creates_a_private_key_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "k.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let before = std::fs::read(&key).unwrap();
    let again = leakmark(dir.path(), &["keygen", "--out", "k.key"], &[]);
    assert_one_line_error(&again, "already exists");
    assert_eq!(std::fs::read(&key).unwrap(), before);
}

#[test]
fn embed_then_detect_finds_the_payload_and_the_original_finds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path(), "k.key");
    drawing(&dir.path().join("orig.png"), 1);
    let out = leakmark(
        dir.path(),
        &[
            "embed",
            "--key",
            "k.key",
            "--payload",
            "3735928559",
            "orig.png",
            "marked.png",
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("PSNR"), "{}", stdout(&out));

    let out = leakmark(
        dir.path(),
        &["detect", "--key", "k.key", "--json", "marked.png"],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["path"], "marked.png");
    assert_eq!(lines[0]["detected"], true);
    assert_eq!(lines[0]["payload"], 3735928559u64);
    let p = lines[0]["false_alarm_probability"].as_f64().unwrap();
    assert!(p <= 1e-12, "p = {p}");

    let human = leakmark(dir.path(), &["detect", "--key", "k.key", "marked.png"], &[]);
    assert_eq!(code(&human), 0);
    assert!(
        stdout(&human).starts_with("marked.png: payload 3735928559, p = "),
        "{}",
        stdout(&human)
    );

    let out = leakmark(dir.path(), &["detect", "--key", "k.key", "orig.png"], &[]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stdout(&out).contains("no mark found"), "{}", stdout(&out));
}

#[test]
fn detect_reports_each_file_of_a_mixed_batch_and_exits_2_on_a_corrupt_one() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path(), "k.key");
    drawing(&dir.path().join("orig.png"), 2);
    let out = leakmark(
        dir.path(),
        &[
            "embed",
            "--key",
            "k.key",
            "--payload",
            "7",
            "orig.png",
            "marked.png",
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let png = std::fs::read(dir.path().join("orig.png")).unwrap();
    std::fs::write(dir.path().join("broken.png"), &png[..png.len() / 3]).unwrap();

    let out = leakmark(
        dir.path(),
        &[
            "detect",
            "--key",
            "k.key",
            "--json",
            "marked.png",
            "orig.png",
            "broken.png",
        ],
        &[],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3, "{}", stdout(&out));
    assert_eq!(lines[0]["payload"], 7);
    assert_eq!(lines[1]["detected"], false);
    assert!(lines[1]["false_alarm_probability"].is_null());
    assert_eq!(lines[2]["path"], "broken.png");
    assert!(lines[2]["error"].as_str().unwrap().contains("broken.png"));
    let err = stderr(&out);
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error: ")).count(),
        1,
        "{err}"
    );
}

#[test]
fn payload_out_of_range_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path(), "k.key");
    drawing(&dir.path().join("orig.png"), 3);
    for bad in ["-1", "4294967296", "abc", "1.5"] {
        let out = leakmark(
            dir.path(),
            &[
                "embed",
                "--key",
                "k.key",
                "--payload",
                bad,
                "orig.png",
                "out.png",
            ],
            &[],
        );
        assert_one_line_error(&out, "2^32");
        assert!(!dir.path().join("out.png").exists());
    }
}

#[test]
fn embed_refuses_to_overwrite_its_input() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path(), "k.key");
    drawing(&dir.path().join("orig.png"), 4);
    let before = std::fs::read(dir.path().join("orig.png")).unwrap();
    let out = leakmark(
        dir.path(),
        &[
            "embed",
            "--key",
            "k.key",
            "--payload",
            "1",
            "orig.png",
            "./orig.png",
        ],
        &[],
    );
    assert_one_line_error(&out, "originals are never overwritten");
    assert_eq!(std::fs::read(dir.path().join("orig.png")).unwrap(), before);
}

#[test]
fn key_problems_are_one_line_errors_that_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    drawing(&dir.path().join("orig.png"), 5);
    let out = leakmark(
        dir.path(),
        &["detect", "--key", "nope.key", "orig.png"],
        &[],
    );
    assert_one_line_error(&out, "leakmark keygen");
    let out = leakmark(dir.path(), &["detect", "orig.png"], &[]);
    assert_one_line_error(&out, "LEAKMARK_KEY");
    std::fs::write(dir.path().join("bad.key"), "hello\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let perm = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(dir.path().join("bad.key"), perm).unwrap();
        let out = leakmark(dir.path(), &["detect", "--key", "bad.key", "orig.png"], &[]);
        assert_one_line_error(&out, "malformed");
        let key = keygen(dir.path(), "open.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = leakmark(
            dir.path(),
            &["detect", "--key", "open.key", "orig.png"],
            &[],
        );
        assert_one_line_error(&out, "chmod 600");
    }
}

#[test]
fn a_wrong_key_finds_nothing_and_is_no_error() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path(), "a.key");
    keygen(dir.path(), "b.key");
    drawing(&dir.path().join("orig.png"), 6);
    let out = leakmark(
        dir.path(),
        &[
            "embed",
            "--key",
            "a.key",
            "--payload",
            "99",
            "orig.png",
            "marked.png",
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = leakmark(
        dir.path(),
        &["detect", "--key", "b.key", "--json", "marked.png"],
        &[],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert_eq!(json_lines(&out)[0]["detected"], false);
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

/// A key, a ledger and a two-tier supplier tree in `dir`.
fn ledger_with_tree(dir: &Path) -> Vec<(&'static str, &'static Path)> {
    keygen(dir, "k.key");
    let env: Vec<(&str, &Path)> = vec![("LEAKMARK_KEY", Path::new("k.key"))];
    let out = leakmark(dir, &["ledger", "init", "leakmark.db"], &env);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for args in [
        &[
            "supplier",
            "add",
            "Acme Plastics",
            "--contact",
            "sec@acme.example",
        ][..],
        &["supplier", "add", "Borg Metal"][..],
        &[
            "supplier",
            "add",
            "Moulds & Co",
            "--parent",
            "Acme Plastics",
        ][..],
        &[
            "supplier",
            "add",
            "Tooling GmbH",
            "--parent",
            "Acme Plastics",
        ][..],
        &["supplier", "add", "Castings Ltd", "--parent", "Borg Metal"][..],
    ] {
        let out = leakmark(dir, args, &env);
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
    }
    env
}

#[test]
fn supplier_list_prints_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let env = ledger_with_tree(dir.path());
    let out = leakmark(dir.path(), &["supplier", "list"], &env);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "Acme Plastics  <sec@acme.example>\n├── Moulds & Co\n└── Tooling GmbH\nBorg Metal\n└── Castings Ltd\n"
    );
    let out = leakmark(
        dir.path(),
        &["supplier", "add", "X", "--parent", "Nobody"],
        &env,
    );
    assert_one_line_error(&out, "no supplier Nobody");
}

#[test]
fn supplier_import_reads_a_csv_tree() {
    let dir = tempfile::tempdir().unwrap();
    let env = ledger_with_tree(dir.path());
    std::fs::write(
        dir.path().join("tree.csv"),
        "name,parent,contact\nNew Tier One,,\nNew Vendor,New Tier One,\"Doe, Jane\"\n",
    )
    .unwrap();
    let out = leakmark(dir.path(), &["supplier", "import", "tree.csv"], &env);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("2 added"), "{}", stdout(&out));
    let out = leakmark(dir.path(), &["supplier", "list"], &env);
    assert!(
        stdout(&out).contains("New Tier One\n└── New Vendor  <Doe, Jane>\n"),
        "{}",
        stdout(&out)
    );
}

fn serials(dir: &Path) -> Vec<(String, String, u32)> {
    let key = SecretKey::load(&dir.join("k.key")).unwrap();
    let ledger = Ledger::open(&dir.join("leakmark.db"), &key.fingerprint()).unwrap();
    ledger
        .issued_copies(true)
        .unwrap()
        .into_iter()
        .map(|c| (c.document_name, c.recipient_name, c.serial))
        .collect()
}

#[test]
fn issuing_twice_is_a_no_op_and_trace_names_the_recipient_and_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let env = ledger_with_tree(d);
    drawing(&d.join("bumper.png"), 7);
    let args = [
        "issue",
        "bumper.png",
        "--to",
        "Moulds & Co",
        "Castings Ltd",
        "--out",
        "out",
    ];
    let out = leakmark(d, &args, &env);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("2 written"), "{}", stdout(&out));
    let copy = d.join("out/Moulds & Co/bumper.png");
    let other = d.join("out/Castings Ltd/bumper.png");
    let first = (
        std::fs::read(&copy).unwrap(),
        std::fs::read(&other).unwrap(),
    );
    let first_serials = serials(d);
    assert_eq!(first_serials.len(), 2);

    let out = leakmark(d, &args, &env);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("0 written, 2 already issued"),
        "{}",
        stdout(&out)
    );
    assert_eq!(serials(d), first_serials);
    assert_eq!(
        (
            std::fs::read(&copy).unwrap(),
            std::fs::read(&other).unwrap()
        ),
        first
    );

    // A lost copy is rewritten with the same serial and the same bytes.
    std::fs::remove_file(&copy).unwrap();
    let out = leakmark(d, &args, &env);
    assert!(
        stdout(&out).contains("1 written, 1 already issued"),
        "{}",
        stdout(&out)
    );
    assert_eq!(serials(d), first_serials);
    assert_eq!(std::fs::read(&copy).unwrap(), first.0);

    let out = leakmark(d, &["trace", "--json", "out/Moulds & Co/bumper.png"], &env);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let line = &json_lines(&out)[0];
    assert_eq!(line["detected"], true, "{line}");
    assert_eq!(line["document"], "bumper.png");
    assert_eq!(line["recipient"], "Moulds & Co");
    assert_eq!(
        line["chain"],
        serde_json::json!(["Moulds & Co", "Acme Plastics"])
    );
    assert!(line["false_alarm_probability"].as_f64().unwrap() <= 1e-12);

    let out = leakmark(d, &["trace", "out"], &env);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("issued to Castings Ltd (chain: Castings Ltd -> Borg Metal)"),
        "{text}"
    );
    assert!(
        text.contains("issued to Moulds & Co (chain: Moulds & Co -> Acme Plastics)"),
        "{text}"
    );

    let key = SecretKey::load(&d.join("k.key")).unwrap();
    let ledger = Ledger::open(&d.join("leakmark.db"), &key.fingerprint()).unwrap();
    assert_eq!(ledger.traces().unwrap().len(), 3);
}

#[test]
fn trace_of_an_unmarked_image_finds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let env = ledger_with_tree(dir.path());
    drawing(&dir.path().join("plain.png"), 8);
    let out = leakmark(dir.path(), &["trace", "plain.png"], &env);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stdout(&out).contains("no mark found"), "{}", stdout(&out));
}

#[test]
fn issue_to_an_unknown_supplier_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let env = ledger_with_tree(dir.path());
    drawing(&dir.path().join("doc.png"), 9);
    let out = leakmark(dir.path(), &["issue", "doc.png", "--to", "Nobody"], &env);
    assert_one_line_error(&out, "no supplier Nobody");
}

#[test]
fn a_missing_ledger_names_ledger_init() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path(), "k.key");
    let out = leakmark(dir.path(), &["--key", "k.key", "supplier", "list"], &[]);
    assert_one_line_error(&out, "leakmark ledger init");
}

#[test]
fn a_ledger_made_under_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    ledger_with_tree(dir.path());
    keygen(dir.path(), "other.key");
    let out = leakmark(dir.path(), &["supplier", "list", "--key", "other.key"], &[]);
    assert_one_line_error(&out, "made under key");
    let env = [
        ("LEAKMARK_KEY", Path::new("other.key")),
        ("LEAKMARK_LEDGER", Path::new("leakmark.db")),
    ];
    drawing(&dir.path().join("x.png"), 1);
    let out = leakmark(dir.path(), &["trace", "x.png"], &env);
    assert_one_line_error(&out, "made under key");
}
