//! No false accusations: blind detection over many null cases never names a
//! recipient, and the reported false-alarm probabilities are conservative.
//!
//! A null case is an image that does not carry a mark under the detection
//! key: unmarked covers, covers marked under *another* key, and seeded
//! leak-like versions of both (random crops, rescales, rotations, mirrors,
//! aspect changes, tone changes, JPEG recompressions). Same key with
//! another serial is not a null for blind detection (the detector is
//! supposed to find that mark), so it is not used. Each case is checked
//! with its own detection key, so cases on the same cover are not the same
//! experiment twice.
//!
//! Sizes are those of real leaks: apart from a few unmarked or foreign
//! originals at full size (0.7–2.9 MP on the devset), every case is scaled
//! to between 0.2 and 1 MP after its crop and rotation, as thumbnails,
//! messenger copies and screenshots of a part are. This keeps 10,000 cases
//! within half an hour on two cores. The detector is the production one,
//! unmodified: every case is charged for every reading the search may make.
//!
//! For each level α the test counts the cases whose reported false-alarm
//! probability is ≤ α. If the bound is conservative, that fraction is at
//! most α (up to sampling noise); the test prints the table and fails on
//! any detection or on a fraction above α by more than three binomial
//! standard errors.
//!
//! ```sh
//! cargo test --release --test null -- --ignored --nocapture               # 10,000 cases
//! LEAKMARK_NULL_CASES=1000 cargo test --release --test null -- --ignored  # smoke run
//! ```
//!
//! With `LEAKMARK_NULL_LOG=FILE` every case's outcome is also written to
//! FILE as it finishes (tab-separated: case, detected, p, score,
//! hypotheses, what the case was), so a run stopped early keeps its
//! evidence. Covers are `../shared/devset` when present, synthetic ones
//! otherwise.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use common::{detect, devset, drawing, key, mark, photo, SplitMix};
use image::RgbImage;
use leakmark::attack::{self, Attack, Fill};
use leakmark::SecretKey;
use rayon::prelude::*;

/// Default number of null cases (issue 6 asks for at least 10,000).
const DEFAULT_CASES: usize = 10_000;
/// Foreign keys used to mark covers for the "marked under another key" cases.
const FOREIGN_KEYS: u8 = 4;
/// Smallest and largest leak size, megapixels (full-size originals aside).
const LEAK_MP: (f64, f64) = (0.2, 1.0);
/// Share of cases, in percent, that are a whole original at full size.
const FULL_SIZE_PERCENT: u32 = 6;
/// False-alarm probability levels of the table.
const P_LEVELS: [f64; 4] = [1e-1, 1e-2, 1e-3, 1e-4];
/// Score levels of the tail table.
const SCORE_LEVELS: [f64; 6] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];

/// The detection key of case `i`: distinct per case, never a foreign key.
fn case_key(i: usize) -> SecretKey {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
    bytes[8..16].copy_from_slice(b"nullcase");
    SecretKey::from_bytes(bytes)
}

/// Turns `base` into a seeded leak of realistic size: an optional crop, an
/// optional rotation / mirror / aspect change, a rescale to 0.2–1 MP, an
/// optional tone change, an optional JPEG recompression. A few cases stay
/// whole originals. Returns a label and the leak.
fn leak(base: &RgbImage, rng: &mut SplitMix) -> (String, RgbImage) {
    if rng.range(0, 100) < FULL_SIZE_PERCENT {
        return ("original".into(), base.clone());
    }
    let mut steps: Vec<String> = Vec::new();
    let mut img = base.clone();
    let mut step = |img: &mut RgbImage, label: String, a: Attack, rng: &mut SplitMix| {
        *img = attack::apply(&a, img, rng.next_u64());
        steps.push(label);
    };
    if rng.unit() < 0.6 {
        let keep = 0.15 + 0.8 * rng.unit() as f32;
        let (cx, cy) = (rng.unit() as f32, rng.unit() as f32);
        let a = Attack::Crop {
            keep_area: keep,
            cx,
            cy,
        };
        step(&mut img, format!("crop-{keep:.2}"), a, rng);
    }
    match rng.range(0, 10) {
        0 | 1 => {
            let degrees = (rng.unit() * 360.0) as f32;
            let fill = if rng.unit() < 0.5 {
                Fill::White
            } else {
                Fill::Black
            };
            let a = Attack::Rotate { degrees, fill };
            step(&mut img, format!("rotate-{degrees:.0}"), a, rng);
        }
        2 => step(&mut img, "mirror".into(), Attack::MirrorH, rng),
        3 => {
            let (sx, sy) = (
                0.75 + 0.5 * rng.unit() as f32,
                0.75 + 0.5 * rng.unit() as f32,
            );
            let a = Attack::Aspect { sx, sy };
            step(&mut img, format!("aspect-{sx:.2}x{sy:.2}"), a, rng);
        }
        _ => {}
    }
    // Rescale to the leak size drawn for this case.
    let target_mp = LEAK_MP.0 + (LEAK_MP.1 - LEAK_MP.0) * rng.unit();
    let mp = f64::from(img.width()) * f64::from(img.height()) / 1e6;
    let factor = (target_mp / mp).sqrt() as f32;
    step(
        &mut img,
        format!("scale-{factor:.2}"),
        Attack::Scale { factor },
        rng,
    );
    match rng.range(0, 12) {
        0 => step(&mut img, "blur-1".into(), Attack::Blur { sigma: 1.0 }, rng),
        1 => step(
            &mut img,
            "gamma-1.5".into(),
            Attack::Gamma { gamma: 1.5 },
            rng,
        ),
        2 => step(&mut img, "grey".into(), Attack::Grayscale, rng),
        3 => step(
            &mut img,
            "noise-3".into(),
            Attack::Noise { sigma: 3.0 },
            rng,
        ),
        _ => {}
    }
    if rng.unit() < 0.6 {
        let quality = rng.range(20, 96) as u8;
        step(
            &mut img,
            format!("jpeg-{quality}"),
            Attack::Jpeg { quality },
            rng,
        );
    }
    (steps.join("+"), img)
}

struct Outcome {
    label: String,
    foreign: bool,
    whole: bool,
    megapixels: f64,
    detected: bool,
    serial: Option<u32>,
    p: f64,
    score: f64,
    hypotheses: u64,
    candidates: usize,
    too_small: bool,
}

/// Fraction of `outcomes` whose reported false-alarm probability is ≤ `level`.
fn tail_count(outcomes: &[Outcome], level: f64) -> usize {
    outcomes.iter().filter(|o| o.p <= level).count()
}

#[test]
#[ignore = "long: 10,000 detections (about half an hour on 2 cores); run with --ignored"]
fn null_cases_never_detect() {
    let cases: usize = std::env::var("LEAKMARK_NULL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let covers: Vec<(String, RgbImage)> = devset().unwrap_or_else(|| {
        println!("note: ../shared/devset not found; using synthetic covers");
        (0..6)
            .map(|s| {
                if s % 2 == 0 {
                    (format!("synthetic-drawing-{s}"), drawing(1600, 1200, s))
                } else {
                    (format!("synthetic-photo-{s}"), photo(1200, 800, s))
                }
            })
            .collect()
    });
    let start = Instant::now();
    // Covers marked under foreign keys (never a detection key: those carry "nullcase").
    let foreign: Vec<(String, RgbImage)> = covers
        .par_iter()
        .flat_map_iter(|(name, img)| {
            (0..FOREIGN_KEYS).map(move |f| {
                let serial = 0x1000_0000 + u32::from(f) * 7919;
                (
                    format!("{name}@foreign{f}"),
                    mark(&key(200 + f), img, serial),
                )
            })
        })
        .collect();
    let prepare_s = start.elapsed().as_secs_f64();
    println!(
        "{} covers, {} foreign-marked copies, {cases} cases ({prepare_s:.1} s to prepare, {} threads)",
        covers.len(),
        foreign.len(),
        rayon::current_num_threads()
    );

    // One line per case as it finishes, so that a run stopped early still
    // leaves its evidence: case, detected, p, score, hypotheses, label.
    let case_log = std::env::var_os("LEAKMARK_NULL_LOG").map(|path| {
        Mutex::new(std::fs::File::create(&path).expect("LEAKMARK_NULL_LOG names a writable file"))
    });
    let done = AtomicUsize::new(0);
    let log = Mutex::new(());
    let outcomes: Vec<Outcome> = (0..cases)
        .into_par_iter()
        .map(|i| {
            let mut rng = SplitMix(0x6e75_6c6c_0006 ^ (i as u64) << 16);
            // Every third case starts from a foreign-marked copy.
            let foreign_case = i % 3 == 2;
            let pool = if foreign_case { &foreign } else { &covers };
            let (name, base) = &pool[rng.range(0, pool.len() as u32) as usize];
            let (tname, leak) = leak(base, &mut rng);
            let d = detect(&case_key(i), &leak);
            if let Some(file) = &case_log {
                // A poisoned lock only means another case panicked; logging is still fine.
                let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
                writeln!(
                    file,
                    "{i}\t{}\t{:e}\t{:.4}\t{}\t{name} {tname} {}x{}",
                    u8::from(d.detected),
                    d.false_alarm_probability,
                    d.score,
                    d.hypotheses,
                    leak.width(),
                    leak.height()
                )
                .expect("the case log is writable");
            }
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if n % 500 == 0 {
                // A poisoned lock only means another case panicked; printing is still fine.
                let _guard = log.lock().unwrap_or_else(|e| e.into_inner());
                let s = start.elapsed().as_secs_f64() - prepare_s;
                println!(
                    "  {n}/{cases} cases, {s:.0} s ({:.2} cases/s)",
                    n as f64 / s
                );
            }
            Outcome {
                label: format!(
                    "case {i}: {name} {tname} {}x{}",
                    leak.width(),
                    leak.height()
                ),
                foreign: foreign_case,
                whole: tname == "original",
                megapixels: f64::from(leak.width()) * f64::from(leak.height()) / 1e6,
                detected: d.detected,
                serial: d.serial,
                p: d.false_alarm_probability,
                score: d.score,
                hypotheses: d.hypotheses,
                candidates: d.candidates,
                too_small: d.too_small,
            }
        })
        .collect();
    let detect_s = start.elapsed().as_secs_f64() - prepare_s;

    let n = outcomes.len() as f64;
    let detections: Vec<&Outcome> = outcomes.iter().filter(|o| o.detected).collect();
    let min_p = outcomes
        .iter()
        .min_by(|a, b| a.p.total_cmp(&b.p).then(b.score.total_cmp(&a.score)))
        .expect("at least one case");
    let max_h = outcomes.iter().map(|o| o.hypotheses).max().unwrap_or(0);
    let mean_readings = outcomes.iter().map(|o| o.candidates).sum::<usize>() as f64 / n;
    let too_small = outcomes.iter().filter(|o| o.too_small).count();
    let foreign_n = outcomes.iter().filter(|o| o.foreign).count();
    let mut sizes: Vec<f64> = outcomes.iter().map(|o| o.megapixels).collect();
    sizes.sort_by(f64::total_cmp);
    let full = outcomes.iter().filter(|o| o.whole).count();
    println!();
    println!(
        "null cases: {} ({} unmarked, {foreign_n} marked under another key; {full} whole originals)",
        outcomes.len(),
        outcomes.len() - foreign_n
    );
    println!(
        "  leak size: median {:.2} MP, range {:.2}-{:.2} MP",
        sizes[sizes.len() / 2],
        sizes[0],
        sizes[sizes.len() - 1]
    );
    println!("  too small to decide: {too_small}");
    println!(
        "  hypotheses charged per case: {max_h} (readings evaluated: mean {mean_readings:.1})"
    );
    println!(
        "  smallest false-alarm probability: {:.3e} (score {:.2}, {})",
        min_p.p, min_p.score, min_p.label
    );
    for (what, foreign) in [("unmarked", false), ("other-key", true)] {
        let best = outcomes
            .iter()
            .filter(|o| o.foreign == foreign)
            .min_by(|a, b| a.p.total_cmp(&b.p).then(b.score.total_cmp(&a.score)));
        if let Some(o) = best {
            println!(
                "    smallest among {what} cases: {:.3e} (score {:.2})",
                o.p, o.score
            );
        }
    }
    println!("  detections: {}", detections.len());
    println!(
        "  detection time: {detect_s:.0} s, {:.2} cases/s on {} threads",
        n / detect_s,
        rayon::current_num_threads()
    );

    println!();
    println!("  reported false-alarm probability p vs the bound (conservative: fraction <= level)");
    println!("  | level | cases with p <= level | fraction | <= level |");
    println!("  |---|---|---|---|");
    let mut violations = Vec::new();
    for &level in &P_LEVELS {
        let count = tail_count(&outcomes, level);
        let fraction = count as f64 / n;
        // "n/a" when even one case would exceed the level: not measurable.
        let measurable = level * n >= 1.0;
        println!(
            "  | {level:.0e} | {count} | {fraction:.2e} | {} |",
            match (measurable, fraction <= level) {
                (false, _) => "not measurable",
                (true, true) => "yes",
                (true, false) => "NO",
            }
        );
        // Sampling noise: three binomial standard errors of slack.
        let slack = 3.0 * (level * (1.0 - level) / n).sqrt();
        if fraction > level + slack {
            violations.push(("p", level, fraction));
        }
    }

    println!();
    println!("  verify score tail (score = best over the readings of a case)");
    println!("  | t | cases with score >= t | empirical | mean of min(1, H tail(t)) | tail(t) |");
    println!("  |---|---|---|---|---|");
    for &t in &SCORE_LEVELS {
        let count = outcomes.iter().filter(|o| o.score >= t).count();
        let empirical = count as f64 / n;
        let single = leakmark::stats::ln_tail(t).exp();
        let bound = outcomes
            .iter()
            .map(|o| (o.hypotheses.max(1) as f64 * single).min(1.0))
            .sum::<f64>()
            / n;
        println!("  | {t:.0} | {count} | {empirical:.4} | {bound:.4} | {single:.2e} |");
        let slack = 3.0 * (bound * (1.0 - bound) / n).sqrt();
        if empirical > bound + slack {
            violations.push(("score", t, empirical));
        }
    }
    for o in &detections {
        println!(
            "  FALSE DETECTION {}: serial {:?} p {:.3e}",
            o.label, o.serial, o.p
        );
    }
    println!("  ({:.0} s in all)", start.elapsed().as_secs_f64());
    assert!(
        detections.is_empty(),
        "{} false detections",
        detections.len()
    );
    assert!(
        violations.is_empty(),
        "empirical tail above the bound: {violations:?}"
    );
}
