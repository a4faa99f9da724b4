//! Speed of embedding, blind detection, ledger tracing, and the decode floor.
//!
//! `cargo bench` (about ten minutes on 2 quiet cores). Covers are synthetic
//! images from `tests/common`, so the bench needs no files. Throughput is in
//! pixels where that means something, so criterion prints Melem/s (s/MP is
//! its inverse); per-leak figures are plain times.
//!
//! Groups:
//! - `embed`: s/MP at 1, 4 and 12 MP, all cores, and 4 MP on one core;
//! - `detect-blind`: one marked leak at 0.5, 2 and 12 MP, and one unmarked
//!   0.5 MP image (the path a folder of scraped images mostly takes: every
//!   candidate is read, nothing stops the search early);
//! - `trace`: a realistic leak of one issued copy (half the page, tilted 5°,
//!   JPEG 60) against ledgers of 100 and 10,000 copies, and an unmarked
//!   drawing against none (blind), 100 and 10,000 copies;
//! - `decode`: `imageio::load` of the detect-blind leaks as PNG and as JPEG
//!   files, to read against `detect-blind` at the same size: the share of a
//!   trace spent decoding, which no detector speed-up can remove.
//!
//! Every group uses flat sampling with 10 samples: a detection takes about a
//! second, and criterion's default linear sampling would run 55 of them.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::io::Cursor;
use std::path::Path;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode,
    Throughput,
};
use image::{DynamicImage, ImageFormat};
use leakmark::attack::{self, Attack, Fill};
use leakmark::detect::{detect, DetectOptions, KnownCopy};
use leakmark::embed::{chip_px_for, embed, variant_for_image};
use leakmark::imageio::{self, LoadLimits};
use leakmark::pattern::VARIANTS;

/// Width × height of a 4:3 image of about `mp` megapixels.
fn dims(mp: f64) -> (u32, u32) {
    let h = (mp * 1e6 * 3.0 / 4.0).sqrt();
    ((h * 4.0 / 3.0).round() as u32, h.round() as u32)
}

/// A synthetic photo of `mp` megapixels whose content scales with its size,
/// as a real photo's does: `common::photo` drawn at up to 2 MP, enlarged,
/// with fresh pixel noise (σ ≈ 2 levels). Drawn at full size its waves
/// would keep their frequency in pixels and become mid-frequency texture at
/// working resolution, which hid the mark of the 8 and 12 MP covers.
fn cover(mp: f64) -> DynamicImage {
    let (w, h) = dims(mp);
    let shrink = (mp / 2.0).sqrt().max(1.0);
    let (sw, sh) = (
        (f64::from(w) / shrink).round() as u32,
        (f64::from(h) / shrink).round() as u32,
    );
    let small = DynamicImage::ImageRgb8(common::photo(sw, sh, 7));
    let mut big = small
        .resize_exact(w, h, image::imageops::FilterType::Triangle)
        .to_rgb8();
    let mut rng = common::SplitMix(0x5ca1e);
    for p in big.pixels_mut() {
        let n = (rng.unit() + rng.unit() - 1.0) * 4.9;
        for c in p.0.iter_mut() {
            *c = (f64::from(*c) + n).round().clamp(0.0, 255.0) as u8;
        }
    }
    DynamicImage::ImageRgb8(big)
}

fn pixels(img: &DynamicImage) -> u64 {
    u64::from(img.width()) * u64::from(img.height())
}

/// A group with 10 flat samples and short warm-up and measurement times.
fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group
}

fn bench_embed(c: &mut Criterion) {
    let key = common::key(1);
    let mut group = group(c, "embed");
    for mp in [1.0, 4.0, 12.0] {
        let img = cover(mp);
        let variant = variant_for_image(&key, &img);
        group.throughput(Throughput::Elements(pixels(&img)));
        group.bench_with_input(
            BenchmarkId::new("all-cores", format!("{mp}MP")),
            &img,
            |b, img| b.iter(|| embed(&key, black_box(img), 12345, variant).unwrap()),
        );
    }
    // Issue 3's target is per core: embed 4 MP on a one-thread pool.
    let img = cover(4.0);
    let variant = variant_for_image(&key, &img);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    group.throughput(Throughput::Elements(pixels(&img)));
    group.bench_function(BenchmarkId::new("one-core", "4MP"), |b| {
        b.iter(|| pool.install(|| embed(&key, black_box(&img), 12345, variant).unwrap()))
    });
    group.finish();
}

/// The marked leaks of `detect-blind`, shared with `decode`: 0.5, 2 and 12
/// MP.
fn marked_leaks() -> Vec<(f64, DynamicImage)> {
    let key = common::key(1);
    [0.5, 2.0, 12.0]
        .into_iter()
        .map(|mp| {
            let img = cover(mp);
            let marked = embed(&key, &img, 12345, variant_for_image(&key, &img))
                .unwrap()
                .image;
            (mp, marked)
        })
        .collect()
}

fn bench_detect(c: &mut Criterion) {
    let key = common::key(1);
    let options = DetectOptions::default();
    let mut group = group(c, "detect-blind");
    for (mp, marked) in marked_leaks() {
        // Guard: a bench of a detector that finds nothing measures the wrong path.
        assert_eq!(detect(&key, &marked, &options).serial, Some(12345));
        group.throughput(Throughput::Elements(pixels(&marked)));
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{mp}MP")),
            &marked,
            |b, m| b.iter(|| detect(&key, black_box(m), &options)),
        );
    }
    let unmarked = cover(0.5);
    assert!(!detect(&key, &unmarked, &options).detected);
    group.throughput(Throughput::Elements(pixels(&unmarked)));
    group.bench_function("unmarked-0.5MP", |b| {
        b.iter(|| detect(&key, black_box(&unmarked), &options))
    });
    group.finish();
}

/// A ledger's copies as the detector sees them: `n` copies, serials and
/// document variants spread as the ledger draws them (random), with
/// `issued` among them.
fn ledger_copies(n: usize, issued: KnownCopy) -> Vec<KnownCopy> {
    let mut rng = common::SplitMix(0x1ed6e7);
    let mut copies: Vec<KnownCopy> = (0..n - 1)
        .map(|_| KnownCopy {
            variant: rng.range(0, VARIANTS),
            serial: rng.range(1, u32::MAX),
        })
        .collect();
    copies.insert(n / 2, issued);
    copies
}

/// Ledger options as `trace` builds them: the copies, and the chip sizes
/// of the documents they were issued from (here five sizes, 1 to 12 MP,
/// read on a leak nothing else decides).
#[allow(clippy::needless_update)] // The detector may grow options; keep their defaults.
fn trace_options(known_copies: Vec<KnownCopy>) -> DetectOptions {
    let issued_chip_px = [1.0, 2.0, 4.0, 8.0, 12.0]
        .map(|mp| {
            let (w, h) = dims(mp);
            chip_px_for(w, h)
        })
        .to_vec();
    DetectOptions {
        known_copies,
        issued_chip_px,
        ..DetectOptions::default()
    }
}

fn bench_trace(c: &mut Criterion) {
    let key = common::key(1);
    // A 2 MP drawing issued to one recipient, leaked as demo does it: half
    // the page cropped, tilted 5°, JPEG quality 60.
    let (w, h) = dims(2.0);
    let draft = common::drawing(w, h, 11);
    let variant = variant_for_image(&key, &DynamicImage::ImageRgb8(draft.clone()));
    let issued = KnownCopy {
        variant,
        serial: 0x5eed_0042,
    };
    let copy = common::mark(&key, &draft, issued.serial);
    let channel = Attack::Chain(vec![
        Attack::Crop {
            keep_area: 0.5,
            cx: 0.3,
            cy: 0.6,
        },
        Attack::Rotate {
            degrees: 5.0,
            fill: Fill::White,
        },
        Attack::Jpeg { quality: 60 },
    ]);
    let leak = DynamicImage::ImageRgb8(attack::apply(&channel, &copy, 3));
    let unmarked = DynamicImage::ImageRgb8(common::drawing(w, h, 12));

    let mut group = group(c, "trace");
    for n in [100, 10_000] {
        let options = trace_options(ledger_copies(n, issued));
        // Guard: the leak must trace to the issued copy, or this measures a miss.
        let found = detect(&key, &leak, &options);
        assert_eq!(found.serial, Some(issued.serial), "{found:?}");
        group.bench_with_input(
            BenchmarkId::new("leak", format!("{n}-copies")),
            &options,
            |b, o| b.iter(|| detect(&key, black_box(&leak), o)),
        );
    }
    // An unmarked image reads every candidate and tests every copy of each
    // candidate's variant: the ledger's worst case, against blind (0 copies).
    for n in [0, 100, 10_000] {
        let options = if n == 0 {
            DetectOptions::default()
        } else {
            trace_options(ledger_copies(n, issued))
        };
        assert!(!detect(&key, &unmarked, &options).detected);
        group.bench_with_input(
            BenchmarkId::new("unmarked", format!("{n}-copies")),
            &options,
            |b, o| b.iter(|| detect(&key, black_box(&unmarked), o)),
        );
    }
    group.finish();
}

fn write_file(
    dir: &Path,
    name: &str,
    img: &DynamicImage,
    format: ImageFormat,
) -> std::path::PathBuf {
    let mut bytes = Vec::new();
    match format {
        ImageFormat::Jpeg => {
            // Quality 85, as a camera or messenger writes it.
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85);
            img.to_rgb8().write_with_encoder(enc).unwrap();
        }
        _ => img.write_to(&mut Cursor::new(&mut bytes), format).unwrap(),
    }
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn bench_decode(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let limits = LoadLimits::default();
    let mut group = group(c, "decode");
    for (mp, marked) in marked_leaks() {
        group.throughput(Throughput::Elements(pixels(&marked)));
        for (ext, format) in [("png", ImageFormat::Png), ("jpeg", ImageFormat::Jpeg)] {
            let path = write_file(dir.path(), &format!("{mp}.{ext}"), &marked, format);
            group.bench_with_input(BenchmarkId::new(ext, format!("{mp}MP")), &path, |b, p| {
                b.iter(|| imageio::load(black_box(p), &limits).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_embed,
    bench_detect,
    bench_trace,
    bench_decode
);
criterion_main!(benches);
