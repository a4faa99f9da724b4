//! Synthetic cover images and helpers shared by the integration tests.
//!
//! The default test run must not depend on files outside the repository, so
//! the covers are drawn in code: a line drawing on white paper and a smooth
//! "photo". Everything is seeded; the same call gives the same pixels.

#![allow(dead_code)] // each test crate uses a different subset

use std::path::PathBuf;

use image::{DynamicImage, Rgb, RgbImage};
use leakmark::SecretKey;

/// A key made from a one-byte seed (tests need several distinct keys).
pub fn key(seed: u8) -> SecretKey {
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = seed.wrapping_mul(31).wrapping_add(i as u8).wrapping_mul(7) ^ 0x5a;
    }
    SecretKey::from_bytes(bytes)
}

/// SplitMix64: a tiny seeded generator whose output never changes with a
/// dependency upgrade (the tests' pixels must stay the same forever).
pub struct SplitMix(pub u64);

impl SplitMix {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in [lo, hi).
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next_u64() % u64::from(hi - lo)) as u32
    }
}

fn fill_rect(img: &mut RgbImage, x0: u32, y0: u32, x1: u32, y1: u32, c: [u8; 3]) {
    for y in y0.min(img.height())..y1.min(img.height()) {
        for x in x0.min(img.width())..x1.min(img.width()) {
            img.put_pixel(x, y, Rgb(c));
        }
    }
}

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), width: f64, c: [u8; 3]) {
    let steps = ((x1 - x0).abs().max((y1 - y0).abs()) * 2.0).ceil().max(1.0) as usize;
    let r = (width / 2.0).max(0.5);
    for s in 0..=steps {
        let t = s as f64 / steps as f64;
        let (cx, cy) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
        let (xa, xb) = ((cx - r).round() as i64, (cx + r).round() as i64);
        let (ya, yb) = ((cy - r).round() as i64, (cy + r).round() as i64);
        for y in ya..yb.max(ya + 1) {
            for x in xa..xb.max(xa + 1) {
                if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
                    img.put_pixel(x as u32, y as u32, Rgb(c));
                }
            }
        }
    }
}

/// A technical drawing: white paper, a frame and title block, black lines
/// and rectangles, rows of text-like strokes, a circle and a grey gradient
/// block. Mostly white, like the drafts the tool protects.
pub fn drawing(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut rng = SplitMix(seed);
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let (w, h) = (f64::from(width), f64::from(height));
    let black = [0, 0, 0];
    // Frame.
    let m = 0.03 * w.min(h);
    for (a, b) in [
        ((m, m), (w - m, m)),
        ((w - m, m), (w - m, h - m)),
        ((w - m, h - m), (m, h - m)),
        ((m, h - m), (m, m)),
    ] {
        line(&mut img, a, b, 2.0, black);
    }
    // Part outlines: rectangles and a circle.
    for _ in 0..6 {
        let x0 = m + rng.unit() * (w * 0.6);
        let y0 = m + rng.unit() * (h * 0.55);
        let (rw, rh) = (w * (0.08 + 0.2 * rng.unit()), h * (0.08 + 0.2 * rng.unit()));
        let lw = if rng.unit() < 0.5 { 1.0 } else { 2.0 };
        for (a, b) in [
            ((x0, y0), (x0 + rw, y0)),
            ((x0 + rw, y0), (x0 + rw, y0 + rh)),
            ((x0 + rw, y0 + rh), (x0, y0 + rh)),
            ((x0, y0 + rh), (x0, y0)),
        ] {
            line(&mut img, a, b, lw, black);
        }
    }
    let (ccx, ccy, cr) = (w * 0.7, h * 0.35, h * 0.15);
    for k in 0..720 {
        let t0 = f64::from(k) / 720.0 * std::f64::consts::TAU;
        let t1 = f64::from(k + 1) / 720.0 * std::f64::consts::TAU;
        line(
            &mut img,
            (ccx + cr * t0.cos(), ccy + cr * t0.sin()),
            (ccx + cr * t1.cos(), ccy + cr * t1.sin()),
            1.0,
            black,
        );
    }
    // Dimension lines (thin, grey-blue).
    for _ in 0..5 {
        let y = m + rng.unit() * (h - 2.0 * m);
        let x0 = m + rng.unit() * w * 0.3;
        line(&mut img, (x0, y), (x0 + w * 0.4, y), 1.0, [60, 60, 140]);
    }
    // Grey gradient block (a shaded face).
    let (gx0, gy0) = ((w * 0.08) as u32, (h * 0.62) as u32);
    let (gx1, gy1) = ((w * 0.42) as u32, (h * 0.80) as u32);
    for y in gy0..gy1 {
        for x in gx0..gx1 {
            let t = f64::from(x - gx0) / f64::from(gx1 - gx0);
            let v = (90.0 + 140.0 * t).round() as u8;
            img.put_pixel(x, y, Rgb([v, v, v]));
        }
    }
    // Title block with text-like strokes: short glyph-sized marks in rows.
    let (tx0, ty0) = (w * 0.55, h * 0.72);
    let (tx1, ty1) = (w - m, h - m);
    for (a, b) in [((tx0, ty0), (tx1, ty0)), ((tx0, ty0), (tx0, ty1))] {
        line(&mut img, a, b, 2.0, black);
    }
    let glyph = (h * 0.022).max(5.0);
    let mut y = ty0 + glyph;
    while y + glyph < ty1 {
        let mut x = tx0 + glyph * 0.6;
        while x + glyph < tx1 {
            if rng.unit() < 0.15 {
                x += glyph; // word gap
                continue;
            }
            match rng.range(0, 4) {
                0 => line(&mut img, (x, y), (x, y + glyph), 1.0, black),
                1 => line(&mut img, (x, y + glyph), (x + glyph * 0.6, y), 1.0, black),
                2 => {
                    line(&mut img, (x, y), (x + glyph * 0.6, y), 1.0, black);
                    line(
                        &mut img,
                        (x, y + glyph),
                        (x + glyph * 0.6, y + glyph),
                        1.0,
                        black,
                    );
                }
                _ => line(
                    &mut img,
                    (x, y + glyph * 0.5),
                    (x + glyph * 0.6, y + glyph * 0.5),
                    1.0,
                    black,
                ),
            }
            x += glyph * 0.8;
        }
        y += glyph * 1.8;
    }
    fill_rect(
        &mut img,
        (w * 0.05) as u32,
        (h * 0.05) as u32,
        (w * 0.05) as u32 + 12,
        (h * 0.05) as u32 + 12,
        black,
    );
    img
}

/// A smooth, photo-like image: colour fields made of a few sinusoids of
/// random frequency and phase, plus seeded pixel noise (σ ≈ 2 levels).
pub fn photo(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut rng = SplitMix(seed ^ 0xfeed_f00d);
    let waves: Vec<[f64; 5]> = (0..6)
        .map(|_| {
            [
                (rng.unit() - 0.5) * 0.06,          // fx, cycles per pixel
                (rng.unit() - 0.5) * 0.06,          // fy
                rng.unit() * std::f64::consts::TAU, // phase
                10.0 + 30.0 * rng.unit(),           // amplitude, levels
                rng.unit(),                         // colour mix
            ]
        })
        .collect();
    let mut img = RgbImage::new(width, height);
    for y in 0..height {
        for x in 0..width {
            let (xf, yf) = (f64::from(x), f64::from(y));
            let mut c = [120.0f64, 110.0, 100.0];
            for wv in &waves {
                let s = wv[3] * (std::f64::consts::TAU * (wv[0] * xf + wv[1] * yf) + wv[2]).sin();
                c[0] += s * (0.5 + wv[4]);
                c[1] += s;
                c[2] += s * (1.5 - wv[4]);
            }
            // Noise: sum of two uniforms, σ ≈ 2 levels.
            let n = (rng.unit() + rng.unit() - 1.0) * 4.9;
            let px = c.map(|v| (v + n).round().clamp(0.0, 255.0) as u8);
            img.put_pixel(x, y, Rgb(px));
        }
    }
    img
}

/// The attack suite's channel called `name`.
pub fn suite_channel(name: &str) -> leakmark::attack::Attack {
    leakmark::attack::standard_suite()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, attack)| attack)
        .unwrap_or_else(|| panic!("the attack suite has no channel {name}"))
}

/// A draft of `samples/drafts`, as RGB.
pub fn sample(name: &str) -> RgbImage {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples/drafts")
        .join(name);
    image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

/// The shared development images, when `../shared/devset` exists beside the
/// repository (as on the development machine and in CI).
pub fn devset() -> Option<Vec<(String, RgbImage)>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/devset");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    paths.sort();
    let images: Vec<(String, RgbImage)> = paths
        .iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            // Test input: a devset file that does not decode is a broken checkout.
            let img = image::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (name, img.to_rgb8())
        })
        .collect();
    (!images.is_empty()).then_some(images)
}

/// Marks an RGB image with `serial` under `key`, with the image's own variant.
pub fn mark(key: &SecretKey, img: &RgbImage, serial: u32) -> RgbImage {
    let dynimg = DynamicImage::ImageRgb8(img.clone());
    let variant = leakmark::embed::variant_for_image(key, &dynimg);
    leakmark::embed::embed(key, &dynimg, serial, variant)
        .expect("test covers are large enough")
        .image
        .to_rgb8()
}

/// Blind detection on an RGB image.
pub fn detect(key: &SecretKey, img: &RgbImage) -> leakmark::detect::Detection {
    leakmark::detect::detect(
        key,
        &DynamicImage::ImageRgb8(img.clone()),
        &leakmark::detect::DetectOptions::default(),
    )
}
