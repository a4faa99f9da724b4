//! `leakmark demo` and `leakmark audit`, run for real: the README's main
//! command and the pre-issue check a security team runs.

use std::path::Path;
use std::process::{Command, Output};

use image::{Rgb, RgbImage};

/// Runs `leakmark` in `dir` with a clean environment.
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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A 600×450 synthetic drawing: white paper, dark lines, a grey gradient block.
fn drawing(path: &Path) {
    let (w, h) = (600u32, 450u32);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    for y in 60..200 {
        for x in 320..540 {
            let v = (120 + (x - 320) / 2 + (y % 40)) as u8;
            img.put_pixel(x, y, Rgb([v, v, v]));
        }
    }
    for i in 0..6u32 {
        let y0 = 30 + i * 65;
        for x in 20..580 {
            img.put_pixel(x, y0, Rgb([20, 20, 30]));
        }
        let x0 = 40 + i * 90;
        for y in 20..430 {
            img.put_pixel(x0, y, Rgb([30, 30, 30]));
        }
    }
    img.save(path).expect("write the test drawing");
}

#[test]
fn demo_names_the_leaking_vendor_and_its_tier_one_parent() {
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("demo");
    // Run from the crate root, as the README says.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = leakmark(root, &["demo", "--dir", scratch.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    assert!(scratch.join("leak.jpg").is_file());
    assert!(stdout.contains("MATCH"), "{stdout}");

    // The named vendor and its chain, checked against samples/suppliers.csv.
    let csv = std::fs::read_to_string(root.join("samples/suppliers.csv")).unwrap();
    let vendor = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("named vendor:"))
        .map(str::trim)
        .expect("a named vendor line");
    let parent = csv
        .lines()
        .skip(1)
        .find_map(|l| {
            let mut fields = l.splitn(3, ',');
            (fields.next() == Some(vendor)).then(|| fields.next().unwrap_or("").to_string())
        })
        .expect("the vendor is in suppliers.csv");
    assert!(!parent.is_empty(), "{vendor} is a tier-two vendor");
    assert!(
        stdout.contains(&format!("{vendor} -> {parent}")),
        "chain {vendor} -> {parent} not in {stdout}"
    );

    // The scratch folder must be new or empty: a second run refuses it.
    let again = leakmark(root, &["demo", "--dir", scratch.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("not empty"));
}

#[test]
fn audit_prints_a_table_and_the_cost_and_writes_a_report() {
    let dir = tempfile::tempdir().unwrap();
    drawing(&dir.path().join("d.png"));
    let out = leakmark(dir.path(), &["keygen", "--out", "k.key"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = leakmark(
        dir.path(),
        &[
            "audit",
            "--key",
            "k.key",
            "--attacks",
            "none,jpeg-50",
            "--report",
            "rep",
            "d.png",
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let none = stdout
        .lines()
        .find(|l| l.starts_with("none "))
        .expect("a row for none");
    assert!(none.contains("yes"), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("jpeg-50 ")),
        "{stdout}"
    );
    assert!(stdout.contains("PSNR"), "{stdout}");
    assert!(stdout.contains("SSIM"), "{stdout}");
    assert!(stdout.contains("near-white"), "{stdout}");
    for file in ["marked.png", "mark_strength.png", "report.md"] {
        assert!(dir.path().join("rep").join(file).is_file(), "{file}");
    }
    let report = std::fs::read_to_string(dir.path().join("rep/report.md")).unwrap();
    assert!(report.contains("| jpeg-50 |"), "{report}");
    assert!(report.contains("mark_strength.png"), "{report}");

    let out = leakmark(
        dir.path(),
        &["audit", "--key", "k.key", "--attacks", "jpeg-51", "d.png"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown attack"));
}
