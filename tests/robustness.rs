//! Robustness floors: the whole leak-channel suite over the devset images.
//!
//! Every image of `../shared/devset` is marked once, each attack of
//! [`leakmark::attack::standard_suite`] is applied, and blind detection must
//! read the exact serial (with p ≤ 1e-12) on at least the floor's share of
//! the images. The floors are a ratchet: set a little below what is measured,
//! raised when the detector improves, never lowered to make a change pass.
//!
//! Runs with `cargo test --release -- --ignored`; skipped with a note when
//! the devset is not beside the repository.

mod common;

use std::time::Instant;

use common::{detect, devset, key, mark};
use leakmark::attack::{self, standard_suite};
use leakmark::stats::REPORT_THRESHOLD;
use rayon::prelude::*;

/// Smallest share of devset images (0–1) whose serial must be read exactly
/// after each attack. Measured share in the comment (10 devset images, key
/// `key(42)`, attack seed 6, detector of commit 13a0ec3, 25 Nov). Floors
/// sit one image below the measurement, except `none` (always all).
///
/// The suite's one seed flatters the screen-camera channel: over seeds 8–13
/// (key 1) blind detection read 22 of its 60 leaks (see README).
const FLOORS: &[(&str, f64)] = &[
    ("none", 1.0),                         // measured 10/10
    ("jpeg-75", 0.9),                      // measured 10/10
    ("jpeg-50", 0.9),                      // measured 10/10
    ("jpeg-30", 0.9),                      // measured 10/10
    ("scale-0.5", 0.9),                    // measured 10/10
    ("scale-0.333", 0.9),                  // measured 10/10
    ("scale-1.5", 0.9),                    // measured 10/10
    ("scale-2.0", 0.9),                    // measured 10/10
    ("crop-keep-50", 0.9),                 // measured 10/10
    ("crop-keep-25", 0.9),                 // measured 10/10
    ("rotate-2", 0.9),                     // measured 10/10
    ("rotate-10", 0.9),                    // measured 10/10
    ("rotate-30", 0.9),                    // measured 10/10
    ("rotate-45", 0.9),                    // measured 10/10
    ("rotate-90", 0.9),                    // measured 10/10
    ("rotate-180", 0.9),                   // measured 10/10
    ("rotate-random", 0.9),                // measured 10/10
    ("aspect-1.0x0.8", 0.9),               // measured 10/10
    ("aspect-0.8x1.0", 0.9),               // measured 10/10
    ("mirror-h", 0.9),                     // measured 10/10
    ("mirror-v", 0.9),                     // measured 10/10
    ("perspective-0.05", 0.9),             // measured 10/10
    ("perspective-0.10", 0.9),             // measured 10/10
    ("blur-1", 0.9),                       // measured 10/10
    ("median-1", 0.9),                     // measured 10/10
    ("noise-5", 0.9),                      // measured 10/10
    ("gamma-1.5", 0.9),                    // measured 10/10
    ("brightness+30", 0.9),                // measured 10/10
    ("contrast-0.7", 0.9),                 // measured 10/10
    ("grayscale", 0.9),                    // measured 10/10
    ("stamp-10", 0.9),                     // measured 10/10
    ("screenshot", 0.9),                   // measured 10/10
    ("screen-camera", 0.7),                // measured 8/10
    ("print-scan", 0.8),                   // measured 9/10
    ("crop50+rotate5+jpeg60", 0.9),        // measured 10/10
    ("scale0.5+jpeg50", 0.7),              // measured 8/10
    ("scale0.5+rotate30+jpeg50", 0.9),     // measured 10/10
    ("perspective0.08+blur1+jpeg70", 0.9), // measured 10/10
];

/// Seed of the attacks' random choices (stamp position, corner jitter, noise).
const ATTACK_SEED: u64 = 6;

fn serial_for(image_index: usize) -> u32 {
    0x5EED_0000 ^ (image_index as u32).wrapping_mul(0x9E37_79B9)
}

#[test]
#[ignore = "long: the attack suite over the devset; run with --ignored"]
fn attack_suite_stays_above_its_floors() {
    let Some(images) = devset() else {
        println!("note: ../shared/devset not found; robustness floors not checked");
        return;
    };
    let suite = standard_suite();
    for (name, _) in &suite {
        assert!(
            FLOORS.iter().any(|(f, _)| f == name),
            "attack {name} has no floor: add it to FLOORS"
        );
    }
    let start = Instant::now();
    let k = key(42);
    let marked: Vec<_> = images
        .par_iter()
        .enumerate()
        .map(|(i, (_, img))| mark(&k, img, serial_for(i)))
        .collect();
    // (attack index, image index, exact, score, seconds)
    let jobs: Vec<(usize, usize)> = (0..suite.len())
        .flat_map(|a| (0..images.len()).map(move |i| (a, i)))
        .collect();
    let results: Vec<(usize, usize, bool, f64, f64)> = jobs
        .par_iter()
        .map(|&(a, i)| {
            let leak = attack::apply(&suite[a].1, &marked[i], ATTACK_SEED);
            let t = Instant::now();
            let d = detect(&k, &leak);
            let secs = t.elapsed().as_secs_f64();
            let exact =
                d.serial == Some(serial_for(i)) && d.false_alarm_probability <= REPORT_THRESHOLD;
            (a, i, exact, d.score, secs)
        })
        .collect();

    println!();
    println!("| attack | serial exact | median score | floor | median detect s | failed on |");
    println!("|---|---|---|---|---|---|");
    let mut below = Vec::new();
    for (a, (name, _)) in suite.iter().enumerate() {
        let rows: Vec<_> = results.iter().filter(|r| r.0 == a).collect();
        let exact = rows.iter().filter(|r| r.2).count();
        let share = exact as f64 / rows.len() as f64;
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let score = median(rows.iter().map(|r| r.3).collect());
        let secs = median(rows.iter().map(|r| r.4).collect());
        let floor = FLOORS.iter().find(|(f, _)| f == name).map_or(0.0, |f| f.1);
        let failed: Vec<&str> = rows
            .iter()
            .filter(|r| !r.2)
            .map(|r| images[r.1].0.as_str())
            .collect();
        println!(
            "| {name} | {exact}/{} | {score:.1} | {floor:.2} | {secs:.2} | {} |",
            rows.len(),
            failed.join(" ")
        );
        if share + 1e-9 < floor {
            below.push(format!("{name}: {share:.2} < floor {floor:.2}"));
        }
    }
    println!("({:.0} s in all)", start.elapsed().as_secs_f64());
    assert!(below.is_empty(), "channels below their floor: {below:?}");
}
