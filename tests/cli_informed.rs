//! `leakmark trace` in informed mode: the original archived by `issue` is
//! used automatically, said so, and refused once it has changed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use leakmark::attack::{self, Attack};

fn command(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leakmark"))
        .current_dir(dir)
        .args(["--key", "k.key", "--ledger", "leakmark.db"])
        .args(args)
        .env_remove("LEAKMARK_KEY")
        .env_remove("LEAKMARK_LEDGER")
        .output()
        .expect("run the leakmark binary")
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: stdout: {} stderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn find_copy(dir: &Path, recipient_part: &str) -> PathBuf {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().contains(recipient_part) {
                return p;
            }
        }
    }
    panic!("no copy for {recipient_part} under {}", dir.display());
}

/// A key, a ledger with two suppliers, and the sample draft `sample` copied
/// into `dir` as `name` (returned).
fn key_ledger_and_draft(dir: &Path, sample: &str, name: &str) -> PathBuf {
    let keygen = Command::new(env!("CARGO_BIN_EXE_leakmark"))
        .current_dir(dir)
        .args(["keygen", "--out", "k.key"])
        .output()
        .unwrap();
    assert_ok(&keygen, "keygen");
    assert_ok(&command(dir, &["ledger", "init"]), "ledger init");
    for supplier in ["Alpha Plastics", "Beta Optics"] {
        assert_ok(
            &command(dir, &["supplier", "add", supplier]),
            "supplier add",
        );
    }
    let draft = dir.join(name);
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("samples/drafts")
            .join(sample),
        &draft,
    )
    .unwrap();
    draft
}

#[test]
fn trace_uses_the_archived_original_and_refuses_a_changed_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let draft = key_ledger_and_draft(dir, "cupholder_colour_study.png", "cupholder.png");
    assert_ok(
        &command(dir, &["issue", "cupholder.png", "--all", "--out", "issued"]),
        "issue",
    );
    // A phone photo of a screen showing Beta's copy, then a messenger's JPEG.
    let copy = image::open(find_copy(&dir.join("issued"), "Beta"))
        .unwrap()
        .to_rgb8();
    let chain = Attack::Chain(vec![
        Attack::ScreenCamera { severity: 0.5 },
        Attack::Jpeg { quality: 60 },
    ]);
    attack::apply(&chain, &copy, 3)
        .save(dir.join("leak.png"))
        .unwrap();

    let out = command(dir, &["trace", "--json", "leak.png"]);
    assert_ok(&out, "trace");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mode"], "informed", "{v}");
    assert_eq!(v["recipient"], "Beta Optics", "{v}");
    assert!(v["false_alarm_probability"].as_f64().unwrap() <= 1e-12);
    let covered: Vec<u64> = serde_json::from_value(v["covered_box"].clone()).unwrap();
    assert_eq!(covered.len(), 4);
    assert!(
        covered[2] > covered[0] + 500 && covered[3] > covered[1] + 300,
        "{v}"
    );

    let human = command(dir, &["trace", "leak.png"]);
    let line = String::from_utf8_lossy(&human.stdout);
    assert!(
        line.contains("informed mode") && line.contains("covers x"),
        "{line}"
    );

    // --report: report.md with every leak (an unreadable one too) and a
    // picture of where the leak sits, its outline drawn in red.
    std::fs::write(dir.join("bad.png"), b"not an image").unwrap();
    let out = command(dir, &["trace", "--report", "rep", "leak.png", "bad.png"]);
    assert_eq!(out.status.code(), Some(2), "an unreadable leak is an error");
    let md = std::fs::read_to_string(dir.join("rep/report.md")).unwrap();
    assert!(
        md.contains("Beta Optics") && md.contains("covers x"),
        "{md}"
    );
    assert!(
        md.contains("![where the leak sits](leak.where.png)"),
        "{md}"
    );
    assert!(
        md.contains("`bad.png`") && md.contains("could not be traced"),
        "{md}"
    );
    let picture = image::open(dir.join("rep/leak.where.png"))
        .unwrap()
        .to_rgb8();
    let red = picture.pixels().filter(|p| p.0 == [220, 30, 30]).count();
    assert!(red > 500, "{red} outline pixels");

    // The archived original changes: it is not used, and the trace says why.
    let mut changed = image::open(&draft).unwrap().to_rgb8();
    changed.put_pixel(0, 0, image::Rgb([1, 2, 3]));
    changed.save(&draft).unwrap();
    let out = command(dir, &["trace", "--json", "leak.png"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has changed since it was issued"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(v["mode"], "informed", "{v}");
}

#[test]
fn detect_with_an_original_reads_an_embed_copy_in_informed_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keygen = Command::new(env!("CARGO_BIN_EXE_leakmark"))
        .current_dir(dir)
        .args(["keygen", "--out", "k.key"])
        .output()
        .unwrap();
    assert_ok(&keygen, "keygen");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/drafts/car_render_v3.png"),
        dir.join("car.png"),
    )
    .unwrap();
    assert_ok(
        &command(dir, &["embed", "--payload", "9", "car.png", "marked.png"]),
        "embed",
    );
    let marked = image::open(dir.join("marked.png")).unwrap().to_rgb8();
    let leak = attack::apply(&Attack::Perspective { jitter: 0.2 }, &marked, 4);
    leak.save(dir.join("leak.png")).unwrap();

    let out = command(
        dir,
        &[
            "detect",
            "--json",
            "--original",
            "car.png",
            "leak.png",
            "car.png",
        ],
    );
    assert_ok(&out, "detect --original");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["payload"], 9, "{}", lines[0]);
    assert_eq!(lines[0]["mode"], "informed");
    // The original itself carries no mark.
    assert_eq!(lines[1]["detected"], false, "{}", lines[1]);
}

#[test]
fn issue_archive_keeps_the_original_that_trace_uses_after_the_draft_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let draft = key_ledger_and_draft(dir, "car_render_v3.png", "car.png");
    let sha = leakmark::ledger::sha256_file(&draft).unwrap();
    let args = [
        "issue",
        "car.png",
        "--all",
        "--out",
        "issued",
        "--archive",
        "vault",
    ];
    assert_ok(&command(dir, &args), "issue --archive");
    let archived = dir.join("vault").join(format!("{sha}.png"));
    assert_eq!(leakmark::ledger::sha256_file(&archived).unwrap(), sha);
    assert!(std::fs::metadata(&archived)
        .unwrap()
        .permissions()
        .readonly());
    // A second run keeps the archived file as it is.
    assert_ok(&command(dir, &args), "issue --archive again");

    // The draft is edited after issue; the archive still holds what was issued.
    let mut changed = image::open(&draft).unwrap().to_rgb8();
    changed.put_pixel(0, 0, image::Rgb([1, 2, 3]));
    changed.save(&draft).unwrap();

    let copy = image::open(find_copy(&dir.join("issued"), "Alpha"))
        .unwrap()
        .to_rgb8();
    let leak = attack::apply(&Attack::Perspective { jitter: 0.2 }, &copy, 5);
    leak.save(dir.join("leak.png")).unwrap();
    let out = command(dir, &["trace", "--json", "leak.png"]);
    assert_ok(&out, "trace");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mode"], "informed", "{v}");
    assert_eq!(v["recipient"], "Alpha Plastics", "{v}");
    let original = v["original"].as_str().unwrap();
    assert!(original.ends_with(&format!("{sha}.png")), "{v}");
}

#[test]
fn trace_reads_a_small_unscaled_crop_at_the_chip_of_the_issued_document() {
    // The original is gone (no informed mode), and a tenth of the copy is
    // too small for its lattice to show and too small for its own size to
    // give its chip: `trace` reads it at the chip of the document the
    // ledger issued.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let draft = key_ledger_and_draft(dir, "pipe_tee_rev_b.png", "tee.png");
    assert_ok(
        &command(dir, &["issue", "tee.png", "--all", "--out", "issued"]),
        "issue",
    );
    std::fs::remove_file(&draft).unwrap();
    let copy = image::open(find_copy(&dir.join("issued"), "Alpha"))
        .unwrap()
        .to_rgb8();
    let crop = Attack::Crop {
        keep_area: 0.1,
        cx: 0.4,
        cy: 0.45,
    };
    attack::apply(&crop, &copy, 1)
        .save(dir.join("leak.png"))
        .unwrap();

    let out = command(dir, &["trace", "--json", "leak.png"]);
    assert_ok(&out, "trace");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["recipient"], "Alpha Plastics", "{v}");
    assert_ne!(v["mode"], "informed", "{v}");
    assert!(
        v["false_alarm_probability"].as_f64().unwrap() <= 1e-12,
        "{v}"
    );
}
