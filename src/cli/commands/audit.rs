//! `leakmark audit --key KEY IMAGE [--report DIR] [--json] [--attacks A,B]`:
//! how well one image keeps its mark through the simulated leak channels.
//!
//! Embeds a fixed test serial, runs [`attack::standard_suite`] on the marked
//! copy in parallel, and detects blind (key only, no ledger) on each result,
//! so the table shows the weakest of the detector's modes. Also measures
//! what the mark costs: luma PSNR and SSIM, and the largest change on
//! near-white paper. Knows nothing of the ledger.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, Context as _};
use image::{DynamicImage, GrayImage, Luma};
use leakmark::attack::{self, Attack};
use leakmark::detect::{self, DetectOptions};
use leakmark::plane::Plane;
use leakmark::{embed, imageio, stats};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::cli::args::AuditArgs;
use crate::cli::output::{self, JsonObject};
use crate::cli::{Context, Status};

/// The serial embedded for the audit. Any value works; this one has mixed
/// bits, so a decoder stuck at all-zero or all-one cannot pass by luck.
const TEST_SERIAL: u32 = 0x5A3C_96E1;

/// Original luma at or above this counts as near-white paper, where a mark
/// is most visible and must stay smallest (8-bit levels).
const NEAR_WHITE: f32 = 250.0;

/// Gain of the mark-strength picture: the mark is a few levels, ×40 makes
/// one level a clearly visible grey (40) and clips at about 6 levels.
const STRENGTH_GAIN: f32 = 40.0;

/// One attack's outcome.
struct Row {
    name: &'static str,
    detected: bool,
    serial_exact: bool,
    p_false_alarm: f64,
    detect_ms: f64,
    mode: &'static str,
}

/// What the mark costs the image.
struct Cost {
    psnr_db: f64,
    ssim: f64,
    /// Largest change on any RGB channel where the original luma is near white.
    near_white_max_levels: u8,
    near_white_pixels: usize,
}

/// Runs the audit and prints the table (or JSON).
pub fn run(ctx: &Context, args: &AuditArgs) -> anyhow::Result<Status> {
    let suite = select_attacks(&args.attacks)?;
    let key = ctx.load_key()?;
    let loaded = imageio::load(&args.image, &ctx.limits())?;
    if let Some(note) = &loaded.frames_note {
        eprintln!("note: {}: {note}", args.image.display());
    }
    let original = loaded.image;
    let variant = embed::variant_for_image(&key, &original);
    let marked = embed::embed(&key, &original, TEST_SERIAL, variant).map_err(|e| {
        anyhow::Error::new(e).context(format!("cannot mark {}", args.image.display()))
    })?;
    let marked_image = marked.image;
    let cost = cost(&original, &marked_image);

    let marked_rgb = marked_image.to_rgb8();
    let bar = output::progress(suite.len(), 1, "attacking");
    let options = DetectOptions::default();
    let rows: Vec<Row> = suite
        .par_iter()
        .enumerate()
        .map(|(index, (name, attack))| {
            // A fixed seed per suite position: the same audit gives the same table.
            let seed = 1 + index as u64;
            let row = audit_one(&key, name, attack, &marked_rgb, seed, &options);
            bar.inc(1);
            row
        })
        .collect();
    bar.finish_and_clear();

    if let Some(dir) = &args.report {
        write_report(dir, &args.image, &original, &marked_image, &rows, &cost)?;
    }
    if args.json {
        println!("{}", audit_json(&args.image, &rows, &cost));
    } else {
        print!("{}", table(&rows));
        print!("{}", cost_lines(&cost, &rows));
        if let Some(dir) = &args.report {
            println!("report written to {}", dir.join("report.md").display());
        }
    }
    Ok(Status::Success)
}

/// The suite, or the named part of it in suite order.
fn select_attacks(names: &[String]) -> anyhow::Result<Vec<(&'static str, Attack)>> {
    let suite = attack::standard_suite();
    if names.is_empty() {
        return Ok(suite);
    }
    for name in names {
        if !suite.iter().any(|(n, _)| n == name) {
            let known: Vec<&str> = suite.iter().map(|(n, _)| *n).collect();
            return Err(anyhow!(
                "unknown attack {name:?}; the suite has: {}",
                known.join(", ")
            ));
        }
    }
    Ok(suite
        .into_iter()
        .filter(|(n, _)| names.iter().any(|want| want == n))
        .collect())
}

fn audit_one(
    key: &leakmark::SecretKey,
    name: &'static str,
    attack: &Attack,
    marked: &image::RgbImage,
    seed: u64,
    options: &DetectOptions,
) -> Row {
    let leak = DynamicImage::ImageRgb8(attack::apply(attack, marked, seed));
    let start = Instant::now();
    let d = detect::detect(key, &leak, options);
    let detect_ms = start.elapsed().as_secs_f64() * 1e3;
    Row {
        name,
        detected: d.detected,
        serial_exact: d.detected && d.serial == Some(TEST_SERIAL),
        p_false_alarm: d.false_alarm_probability,
        detect_ms,
        mode: d.mode,
    }
}

fn cost(original: &DynamicImage, marked: &DynamicImage) -> Cost {
    let a = Plane::luma(original);
    let b = Plane::luma(marked);
    let psnr_db = stats::psnr(&a.data, &b.data);
    let ssim = stats::ssim(&a.data, &b.data, a.width, a.height);
    let (ra, rb) = (original.to_rgb8(), marked.to_rgb8());
    let mut near_white_max_levels = 0u8;
    let mut near_white_pixels = 0usize;
    for ((pa, pb), &y) in ra.pixels().zip(rb.pixels()).zip(&a.data) {
        if y >= NEAR_WHITE {
            near_white_pixels += 1;
            for (ca, cb) in pa.0.iter().zip(pb.0) {
                near_white_max_levels = near_white_max_levels.max(ca.abs_diff(cb));
            }
        }
    }
    Cost {
        psnr_db,
        ssim,
        near_white_max_levels,
        near_white_pixels,
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The per-attack table, with a header and a rule, as plain text.
fn table(rows: &[Row]) -> String {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(6).max(6);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:>8}  {:>12}  {:>15}  {:>9}",
        "attack", "detected", "serial exact", "p false alarm", "detect ms"
    );
    let _ = writeln!(out, "{}", "-".repeat(width + 54));
    for r in rows {
        let _ = writeln!(
            out,
            "{:<width$}  {:>8}  {:>12}  {:>15}  {:>9.0}",
            r.name,
            yes_no(r.detected),
            yes_no(r.serial_exact),
            output::format_p(r.p_false_alarm),
            r.detect_ms
        );
    }
    out
}

fn cost_lines(cost: &Cost, rows: &[Row]) -> String {
    let exact = rows.iter().filter(|r| r.serial_exact).count();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "serial exact on {exact} of {} attacks (blind detection, key only; \
         detect times are wall time with attacks running in parallel)",
        rows.len()
    );
    let _ = writeln!(out, "PSNR {:.2} dB (luma)", cost.psnr_db);
    let _ = writeln!(out, "SSIM {:.4} (luma)", cost.ssim);
    if cost.near_white_pixels > 0 {
        let _ = writeln!(
            out,
            "largest change on near-white pixels (luma >= {NEAR_WHITE}): {} levels over {} pixels",
            cost.near_white_max_levels, cost.near_white_pixels
        );
    } else {
        let _ = writeln!(out, "no near-white pixels (luma >= {NEAR_WHITE})");
    }
    out
}

fn audit_json(path: &Path, rows: &[Row], cost: &Cost) -> JsonObject {
    let mut obj = JsonObject::default();
    obj.push("path", Value::String(path.display().to_string()));
    obj.push("serial", json!(TEST_SERIAL));
    obj.push("psnr_db", json!(cost.psnr_db));
    obj.push("ssim", json!(cost.ssim));
    obj.push("near_white_max_change", json!(cost.near_white_max_levels));
    obj.push("near_white_pixels", json!(cost.near_white_pixels));
    let attacks: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "attack": r.name,
                "detected": r.detected,
                "serial_exact": r.serial_exact,
                "false_alarm_probability": r.p_false_alarm,
                "detect_ms": r.detect_ms,
                "mode": r.mode,
            })
        })
        .collect();
    obj.push("attacks", Value::Array(attacks));
    obj
}

/// Writes marked.png, mark_strength.png and report.md into `dir`, each
/// atomically (temporary file, then rename).
fn write_report(
    dir: &Path,
    input: &Path,
    original: &DynamicImage,
    marked: &DynamicImage,
    rows: &[Row],
    cost: &Cost,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create the report folder {}: check that --report points to a writable place",
            dir.display()
        )
    })?;
    imageio::save(marked, &dir.join("marked.png"), Some(input), None)?;
    let strength = DynamicImage::ImageLuma8(strength_picture(original, marked));
    imageio::save(&strength, &dir.join("mark_strength.png"), Some(input), None)?;

    let mut md = String::new();
    let _ = writeln!(md, "# leakmark audit of `{}`\n", input.display());
    let _ = writeln!(
        md,
        "Test serial {TEST_SERIAL} embedded, each attack of the suite applied to the \
         marked copy, then blind detection (key only). A serial is reported only when \
         its false-alarm probability is at most 1e-12.\n"
    );
    let _ = writeln!(
        md,
        "| attack | detected | serial exact | p false alarm | detect ms |"
    );
    let _ = writeln!(md, "|---|---|---|---|---:|");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} |",
            r.name,
            yes_no(r.detected),
            yes_no(r.serial_exact),
            output::format_p(r.p_false_alarm),
            r.detect_ms
        );
    }
    let _ = writeln!(md, "\n## What the mark costs\n");
    for line in cost_lines(cost, rows).lines() {
        let _ = writeln!(md, "- {line}");
    }
    let _ = writeln!(
        md,
        "\n## Pictures\n\n\
         - [The marked copy](marked.png)\n\
         - [Where the mark lives](mark_strength.png): |marked − original| luma × {STRENGTH_GAIN}, \
         clipped at 255 (black: untouched; white: 6 levels or more)\n\n\
         ![mark strength](mark_strength.png)"
    );
    output::write_atomic(&dir.join("report.md"), md.as_bytes())
}

/// |marked − original| luma, amplified by [`STRENGTH_GAIN`], as grey.
fn strength_picture(original: &DynamicImage, marked: &DynamicImage) -> GrayImage {
    let a = Plane::luma(original);
    let b = Plane::luma(marked);
    let width = u32::try_from(a.width).unwrap_or(u32::MAX);
    let height = u32::try_from(a.height).unwrap_or(u32::MAX);
    GrayImage::from_fn(width, height, |x, y| {
        let i = y as usize * a.width + x as usize;
        let diff = match (a.data.get(i), b.data.get(i)) {
            (Some(&p), Some(&q)) => (p - q).abs(),
            _ => 0.0,
        };
        Luma([(diff * STRENGTH_GAIN).round().clamp(0.0, 255.0) as u8])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attack_filter_keeps_suite_order_and_refuses_unknown_names() {
        let picked = select_attacks(&["jpeg-50".into(), "none".into()]).unwrap();
        let names: Vec<&str> = picked.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["none", "jpeg-50"]);
        let err = select_attacks(&["jpeg-51".into()])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("jpeg-50"), "{err}");
    }
}
