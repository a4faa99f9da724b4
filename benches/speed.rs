//! Speed of embedding and blind detection, and the PNG-decode floor.
//!
//! `cargo bench` (a few minutes on 2 cores). Covers are synthetic photo-like
//! images from `tests/common`, so the bench needs no files. Throughput is in
//! pixels, so criterion prints Melem/s; s/MP is its inverse.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::io::Cursor;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use image::{DynamicImage, ImageFormat};
use leakmark::detect::{detect, DetectOptions};
use leakmark::embed::{embed, variant_for_image};

/// Width × height of a 4:3 image of about `mp` megapixels.
fn dims(mp: f64) -> (u32, u32) {
    let h = (mp * 1e6 * 3.0 / 4.0).sqrt();
    ((h * 4.0 / 3.0).round() as u32, h.round() as u32)
}

fn cover(mp: f64) -> DynamicImage {
    let (w, h) = dims(mp);
    DynamicImage::ImageRgb8(common::photo(w, h, 7))
}

fn bench_embed(c: &mut Criterion) {
    let key = common::key(1);
    let mut group = c.benchmark_group("embed");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for mp in [1.0, 4.0, 12.0] {
        let img = cover(mp);
        let variant = variant_for_image(&key, &img);
        let pixels = u64::from(img.width()) * u64::from(img.height());
        group.throughput(Throughput::Elements(pixels));
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
    group.throughput(Throughput::Elements(
        u64::from(img.width()) * u64::from(img.height()),
    ));
    group.bench_function(BenchmarkId::new("one-core", "4MP"), |b| {
        b.iter(|| pool.install(|| embed(&key, black_box(&img), 12345, variant).unwrap()))
    });
    group.finish();
}

fn bench_detect(c: &mut Criterion) {
    let key = common::key(1);
    let mut group = c.benchmark_group("detect-blind");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for mp in [0.5, 2.0, 8.0] {
        let img = cover(mp);
        let marked = embed(&key, &img, 12345, variant_for_image(&key, &img))
            .unwrap()
            .image;
        let options = DetectOptions::default();
        // Guard: a bench of a detector that finds nothing measures the wrong path.
        assert_eq!(detect(&key, &marked, &options).serial, Some(12345));
        let pixels = u64::from(marked.width()) * u64::from(marked.height());
        group.throughput(Throughput::Elements(pixels));
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{mp}MP")),
            &marked,
            |b, m| b.iter(|| detect(&key, black_box(m), &options)),
        );
    }
    group.finish();
}

fn bench_decode(c: &mut Criterion) {
    let img = cover(2.0);
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .unwrap();
    let mut group = c.benchmark_group("decode-png");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(
        u64::from(img.width()) * u64::from(img.height()),
    ));
    group.bench_function("2MP", |b| {
        b.iter(|| image::load_from_memory_with_format(black_box(&png), ImageFormat::Png).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_embed, bench_detect, bench_decode);
criterion_main!(benches);
