//! Ledger-informed tracing against blind decoding, and collusion (issue 5).
//!
//! Both are long sweeps over the dev set: `cargo test --release -- --ignored`.

mod common;

use image::DynamicImage;
use leakmark::attack::{apply, collusion_average, standard_suite};
use leakmark::detect::{detect, DetectOptions, KnownCopy};
use rayon::prelude::*;

/// Issued copies in the simulated ledger (colluders included).
const LEDGER_COPIES: usize = 1000;

fn ledger(variant: u32, guilty: &[u32], seed: u64) -> Vec<KnownCopy> {
    let mut rng = common::SplitMix(seed);
    let mut copies: Vec<KnownCopy> = guilty
        .iter()
        .map(|&serial| KnownCopy { variant, serial })
        .collect();
    while copies.len() < LEDGER_COPIES {
        let serial = rng.next_u64() as u32;
        if !guilty.contains(&serial) {
            copies.push(KnownCopy { variant, serial });
        }
    }
    copies
}

#[test]
#[ignore = "long: averaged pairs over the devset; run with --ignored"]
fn averaged_pairs_name_a_colluder_and_never_an_innocent() {
    let Some(covers) = common::devset() else {
        eprintln!("../shared/devset missing: skipped");
        return;
    };
    let key = common::key(11);
    let trials: Vec<(usize, u64)> = (0..60).map(|t| (t % covers.len(), t as u64)).collect();
    let outcomes: Vec<(bool, bool)> = trials
        .par_iter()
        .map(|&(i, t)| {
            let img = &covers[i].1;
            let variant =
                leakmark::embed::variant_for_image(&key, &DynamicImage::ImageRgb8(img.clone()));
            let mut rng = common::SplitMix(1000 + t);
            let (a, b) = (rng.next_u64() as u32, rng.next_u64() as u32);
            let average =
                collusion_average(&common::mark(&key, img, a), &common::mark(&key, img, b));
            // Half the trials also go through JPEG 75, as a forum upload would.
            let leak = if t % 2 == 0 {
                average
            } else {
                apply(&leakmark::attack::Attack::Jpeg { quality: 75 }, &average, t)
            };
            let options = DetectOptions {
                known_copies: ledger(variant, &[a, b], t),
                ..DetectOptions::default()
            };
            let d = detect(&key, &DynamicImage::ImageRgb8(leak), &options);
            let named = d.serial.filter(|_| d.detected);
            (
                named.is_some_and(|s| s == a || s == b),
                named.is_some_and(|s| s != a && s != b),
            )
        })
        .collect();
    let colluder = outcomes.iter().filter(|o| o.0).count();
    let innocent = outcomes.iter().filter(|o| o.1).count();
    println!("collusion: {} averaged pairs, a colluder named in {colluder}, an innocent named in {innocent}", outcomes.len());
    assert_eq!(innocent, 0, "an innocent recipient was named");
}

#[test]
#[ignore = "long: hard attacks over the devset, blind and ledger-informed; run with --ignored"]
fn ledger_informed_tracing_against_blind_decoding() {
    let Some(covers) = common::devset() else {
        eprintln!("../shared/devset missing: skipped");
        return;
    };
    let key = common::key(12);
    let hard = [
        "jpeg-30",
        "perspective-0.10",
        "scale0.5+rotate30+jpeg50",
        "print-scan",
        "perspective0.08+blur1+jpeg70",
        "brightness+30",
    ];
    let suite: Vec<_> = standard_suite()
        .into_iter()
        .filter(|(n, _)| hard.contains(n))
        .collect();
    let jobs: Vec<(usize, usize)> = (0..covers.len())
        .flat_map(|i| (0..suite.len()).map(move |a| (i, a)))
        .collect();
    let results: Vec<(usize, bool, bool)> = jobs
        .par_iter()
        .map(|&(i, a)| {
            let img = &covers[i].1;
            let serial = 0x0bad_f00d ^ i as u32;
            let variant =
                leakmark::embed::variant_for_image(&key, &DynamicImage::ImageRgb8(img.clone()));
            let leak =
                DynamicImage::ImageRgb8(apply(&suite[a].1, &common::mark(&key, img, serial), 5));
            let blind = detect(&key, &leak, &DetectOptions::default());
            let options = DetectOptions {
                known_copies: ledger(variant, &[serial], i as u64),
                ..DetectOptions::default()
            };
            let informed = detect(&key, &leak, &options);
            assert!(
                !blind.detected || blind.serial == Some(serial),
                "blind named a wrong serial"
            );
            assert!(
                !informed.detected || informed.serial == Some(serial),
                "ledger named an innocent"
            );
            (a, blind.detected, informed.detected)
        })
        .collect();
    println!(
        "{:30} {:>6} {:>6}   ({} copies in the ledger)",
        "attack", "blind", "ledger", LEDGER_COPIES
    );
    for (a, (name, _)) in suite.iter().enumerate() {
        let rows: Vec<_> = results.iter().filter(|r| r.0 == a).collect();
        let blind = rows.iter().filter(|r| r.1).count();
        let informed = rows.iter().filter(|r| r.2).count();
        println!(
            "{name:30} {blind:>3}/{:<2} {informed:>3}/{:<2}",
            rows.len(),
            rows.len()
        );
    }
}
