//! Detection: fold the leak onto the tile for each candidate geometry, align
//! it with the sync chips, decode the serial, and verify it.
//!
//! For every lattice from [`crate::sync`], the residual is folded into one
//! tile at half-chip resolution, which averages all the repetitions the leak
//! holds. The eight flips/quarter-turns the lattice cannot tell apart, the
//! cyclic shift and the pattern variant are found together by FFT
//! correlation with the keyed sync chips. The data chips then decode to a
//! serial, and that serial's verify chips give the statistic (see
//! [`crate::stats`]) — which is charged for every candidate evaluated, and in
//! ledger mode for every copy tested.

use image::DynamicImage;
use rayon::prelude::*;
use rustfft::num_complex::Complex32;
use serde::Serialize;

use crate::fft::Fft2;
use crate::key::SecretKey;
use crate::pattern::{Layout, CHIPS, TILE, VARIANTS};
use crate::payload;
use crate::plane::Plane;
use crate::stats;
use crate::sync::{self, Lattice, Prepared};

/// Folded tile side, in bins (two per chip).
const BINS: usize = 2 * TILE;
/// Smallest leak (short side, pixels) the detector decides on: two tiles of
/// the smallest chip that survives. Below it the answer is "too small to decide".
pub const MIN_LEAK_PX: u32 = 96;

/// A copy the ledger says was issued: test it as one hypothesis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct KnownCopy {
    /// Pattern variant of the copy's document.
    pub variant: u32,
    /// The copy's serial.
    pub serial: u32,
}

/// What the detector may use besides the key.
#[derive(Clone, Debug, Default)]
pub struct DetectOptions {
    /// Issued copies to test as hypotheses (ledger-informed mode). Empty: blind only.
    pub known_copies: Vec<KnownCopy>,
}

/// The geometry under which the mark was found.
#[derive(Clone, Debug, Serialize)]
pub struct Geometry {
    /// Leak pixels per chip along the first tile axis and the second.
    pub px_per_chip: [f64; 2],
    /// Rotation of the tile's x axis in the leak, degrees counter-clockwise in image coordinates (y down).
    pub rotation_deg: f64,
    /// Whether the leak is mirrored relative to the issued copy.
    pub mirrored: bool,
    /// Shear: angle between the tile axes in the leak minus 90°, degrees.
    pub shear_deg: f64,
    /// Where tile chip (0, 0) falls in the leak, pixels (the offset is known modulo one tile).
    pub origin_px: [f64; 2],
    /// Affine map from tile chip coordinates to leak pixels: [a, b, c, d] with x = a·i + b·j, y = c·i + d·j.
    pub chip_to_leak: [f64; 4],
}

/// The outcome of detection on one image.
#[derive(Clone, Debug, Serialize)]
pub struct Detection {
    /// A recipient's mark was found with false-alarm probability ≤ [`stats::REPORT_THRESHOLD`].
    pub detected: bool,
    /// The serial, when detected.
    pub serial: Option<u32>,
    /// The pattern variant, when detected.
    pub variant: Option<u32>,
    /// Union-bound false-alarm probability of the best hypothesis (reported even when not detected).
    pub false_alarm_probability: f64,
    /// Verify-chip score of the best hypothesis (≈ N(0,1) or smaller under no mark).
    pub score: f64,
    /// Hypotheses charged (geometric candidates × serials tested).
    pub hypotheses: u64,
    /// `"blind"` or `"ledger"`: how the winning serial was obtained.
    pub mode: &'static str,
    /// Geometry of the best hypothesis, when detected.
    pub geometry: Option<Geometry>,
    /// Geometric candidates examined.
    pub candidates: usize,
    /// The leak was too small to decide either way.
    pub too_small: bool,
}

/// Everything read off one candidate geometry.
struct Reading {
    variant: u32,
    /// Soft value per chip, row-major, in the issued tile's frame.
    chips: Vec<f32>,
    dihedral: usize,
    shift: (usize, usize),
}

/// Detects the mark in `image` under `key`.
pub fn detect(key: &SecretKey, image: &DynamicImage, options: &DetectOptions) -> Detection {
    let luma = Plane::luma(image);
    detect_luma(key, &luma, options)
}

/// [`detect`] on a luma plane (0–255 scale).
pub fn detect_luma(key: &SecretKey, luma: &Plane, options: &DetectOptions) -> Detection {
    let mut none = Detection {
        detected: false,
        serial: None,
        variant: None,
        false_alarm_probability: 1.0,
        score: 0.0,
        hypotheses: 0,
        mode: if options.known_copies.is_empty() {
            "blind"
        } else {
            "ledger"
        },
        geometry: None,
        candidates: 0,
        too_small: false,
    };
    if (luma.width.min(luma.height) as u32) < MIN_LEAK_PX {
        none.too_small = true;
        return none;
    }
    let prepared = sync::prepare(luma);
    let lattices = sync::lattices(&prepared);
    none.candidates = lattices.len();
    if lattices.is_empty() {
        return none;
    }
    let layouts: Vec<Layout> = (0..VARIANTS).map(|v| Layout::new(key, v)).collect();
    let sync_spectra: Vec<Vec<Complex32>> = layouts.iter().map(sync_spectrum).collect();

    // Per candidate: read the chips, then score the blind serial and every known copy.
    let per_candidate: Vec<(f64, u32, u32, &'static str, usize)> = lattices
        .par_iter()
        .enumerate()
        .filter_map(|(ci, lat)| {
            let reading = read_candidate(&prepared, lat, &layouts, &sync_spectra)?;
            let layout = &layouts[reading.variant as usize];
            let verify_values: Vec<f32> = layout
                .verify_idx
                .iter()
                .map(|&i| reading.chips[i as usize])
                .collect();
            let serial = decode_serial(layout, &reading.chips);
            let blind_z = stats::normalized_correlation(
                &Layout::verify_signs(key, reading.variant, serial),
                &verify_values,
            );
            let mut best = (blind_z, serial, reading.variant, "blind", ci);
            for copy in options
                .known_copies
                .iter()
                .filter(|c| c.variant == reading.variant)
            {
                let z = stats::normalized_correlation(
                    &Layout::verify_signs(key, copy.variant, copy.serial),
                    &verify_values,
                );
                if z > best.0 {
                    best = (z, copy.serial, copy.variant, "ledger", ci);
                }
            }
            Some(best)
        })
        .collect();

    // Every candidate evaluated the blind serial plus each known copy.
    let per_candidate_hypotheses = 1 + options.known_copies.len() as u64;
    let hypotheses = lattices.len() as u64 * per_candidate_hypotheses;
    let Some(&(z, serial, variant, mode, ci)) = per_candidate
        .iter()
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.4.cmp(&a.4)))
    else {
        none.hypotheses = hypotheses;
        return none;
    };
    let p = stats::false_alarm(z, hypotheses);
    let detected = p <= stats::REPORT_THRESHOLD;
    let geometry = if detected {
        read_candidate(&prepared, &lattices[ci], &layouts, &sync_spectra)
            .map(|r| geometry_of(&lattices[ci], &r, prepared.work_scale))
    } else {
        None
    };
    Detection {
        detected,
        serial: detected.then_some(serial),
        variant: detected.then_some(variant),
        false_alarm_probability: p,
        score: z,
        hypotheses,
        mode,
        geometry,
        candidates: lattices.len(),
        too_small: false,
    }
}

/// Soft-decodes the serial from the data chips.
fn decode_serial(layout: &Layout, chips: &[f32]) -> u32 {
    let mut soft = vec![0.0f32; payload::CODED_BITS];
    for ((&i, &s), &b) in layout
        .data_idx
        .iter()
        .zip(&layout.data_sign)
        .zip(&layout.data_bit)
    {
        soft[b as usize] += s * chips[i as usize];
    }
    // Invariant: soft has exactly CODED_BITS entries.
    payload::decode(&soft).expect("soft vector has the coded length")
}

/// The sync chips of a layout as a BINS² template, conjugated spectrum.
fn sync_spectrum(layout: &Layout) -> Vec<Complex32> {
    let mut t = vec![Complex32::new(0.0, 0.0); BINS * BINS];
    for (&i, &s) in layout.sync_idx.iter().zip(&layout.sync_sign) {
        let (cx, cy) = (i as usize % TILE, i as usize / TILE);
        for (a, b) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            t[(2 * cy + b) * BINS + 2 * cx + a] = Complex32::new(s, 0.0);
        }
    }
    Fft2::new(BINS, BINS).forward(&mut t);
    t.iter().map(|c| c.conj()).collect()
}

/// Folds the residual onto the tile for one lattice, then finds the flip,
/// shift and variant whose sync chips match best, and reads every chip.
fn read_candidate(
    prepared: &Prepared,
    lat: &Lattice,
    layouts: &[Layout],
    sync_spectra: &[Vec<Complex32>],
) -> Option<Reading> {
    let folded = fold(&prepared.residual, lat)?;
    let fft = Fft2::new(BINS, BINS);
    let mut best: Option<(f64, u32, usize, (usize, usize))> = None;
    for d in 0..8 {
        let mut spec: Vec<Complex32> = dihedral(&folded, d)
            .into_iter()
            .map(|v| Complex32::new(v, 0.0))
            .collect();
        fft.forward(&mut spec);
        for (v, sync) in sync_spectra.iter().enumerate() {
            let mut corr: Vec<Complex32> = spec.iter().zip(sync).map(|(a, b)| a * b).collect();
            fft.inverse(&mut corr);
            let (mut sum, mut sum2, mut peak, mut at) = (0.0f64, 0.0f64, f32::NEG_INFINITY, 0usize);
            for (i, c) in corr.iter().enumerate() {
                let r = c.re;
                sum += f64::from(r);
                sum2 += f64::from(r) * f64::from(r);
                if r > peak {
                    peak = r;
                    at = i;
                }
            }
            let n = corr.len() as f64;
            let mean = sum / n;
            let sd = (sum2 / n - mean * mean).max(1e-30).sqrt();
            let z = (f64::from(peak) - mean) / sd;
            if best.is_none_or(|b| z > b.0) {
                best = Some((z, v as u32, d, (at % BINS, at / BINS)));
            }
        }
    }
    let (_, variant, d, shift) = best?;
    let aligned = dihedral(&folded, d);
    let mut chips = vec![0.0f32; CHIPS];
    for (i, chip) in chips.iter_mut().enumerate() {
        let (cx, cy) = (i % TILE, i / TILE);
        for (a, b) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            let x = (2 * cx + a + shift.0) % BINS;
            let y = (2 * cy + b + shift.1) % BINS;
            *chip += aligned[y * BINS + x];
        }
    }
    let _ = layouts;
    Some(Reading {
        variant,
        chips,
        dihedral: d,
        shift,
    })
}

/// Mean residual per half-chip bin of the tile, under the lattice's affine map.
fn fold(residual: &Plane, lat: &Lattice) -> Option<Vec<f32>> {
    // Chip → working px: x = (u·i + v·j)/64. Invert it.
    let (a, b, c, d) = (
        lat.u[0] / TILE as f64,
        lat.v[0] / TILE as f64,
        lat.u[1] / TILE as f64,
        lat.v[1] / TILE as f64,
    );
    let det = a * d - b * c;
    if det.abs() < 1e-9 {
        return None;
    }
    let (ia, ib, ic, id) = (d / det, -b / det, -c / det, a / det);
    let w = residual.width;
    let rows: Vec<(Vec<f32>, Vec<u32>)> = residual
        .data
        .par_chunks(w)
        .enumerate()
        .fold(
            || (vec![0.0f32; BINS * BINS], vec![0u32; BINS * BINS]),
            |(mut sum, mut cnt), (y, row)| {
                let yf = y as f64 + 0.5;
                for (x, &r) in row.iter().enumerate() {
                    let xf = x as f64 + 0.5;
                    let ci = ia * xf + ib * yf;
                    let cj = ic * xf + id * yf;
                    let bx = ((2.0 * ci).floor() as i64).rem_euclid(BINS as i64) as usize;
                    let by = ((2.0 * cj).floor() as i64).rem_euclid(BINS as i64) as usize;
                    sum[by * BINS + bx] += r;
                    cnt[by * BINS + bx] += 1;
                }
                (sum, cnt)
            },
        )
        .collect();
    let mut sum = vec![0.0f32; BINS * BINS];
    let mut cnt = vec![0u32; BINS * BINS];
    for (s, c) in rows {
        for i in 0..BINS * BINS {
            sum[i] += s[i];
            cnt[i] += c[i];
        }
    }
    Some(
        sum.iter()
            .zip(&cnt)
            .map(|(&s, &c)| if c > 0 { s / c as f32 } else { 0.0 })
            .collect(),
    )
}

/// One of the eight symmetries of the square bin grid, applied to the folded tile.
fn dihedral(tile: &[f32], d: usize) -> Vec<f32> {
    let n = BINS;
    let mut out = vec![0.0f32; n * n];
    for y in 0..n {
        for x in 0..n {
            let (mut sx, mut sy) = if d & 4 != 0 { (y, x) } else { (x, y) };
            if d & 1 != 0 {
                sx = n - 1 - sx;
            }
            if d & 2 != 0 {
                sy = n - 1 - sy;
            }
            out[y * n + x] = tile[sy * n + sx];
        }
    }
    out
}

/// The geometry report for a reading: the lattice composed with the flip, in leak pixels.
fn geometry_of(lat: &Lattice, reading: &Reading, work_scale: f64) -> Geometry {
    // Bin coordinates of the aligned tile map to folded bins through the flip;
    // the folded bins map to working pixels through the lattice.
    let s = 1.0 / work_scale / TILE as f64;
    let (mut ex, mut ey) = ([1.0f64, 0.0], [0.0f64, 1.0]);
    let d = reading.dihedral;
    if d & 1 != 0 {
        ex = [-ex[0], -ex[1]];
    }
    if d & 2 != 0 {
        ey = [-ey[0], -ey[1]];
    }
    if d & 4 != 0 {
        // The aligned grid reads folded (y, x): swap the roles of the axes.
        (ex, ey) = ([ex[1], ex[0]], [ey[1], ey[0]]);
    }
    let map = |e: [f64; 2]| {
        [
            (lat.u[0] * e[0] + lat.v[0] * e[1]) * s,
            (lat.u[1] * e[0] + lat.v[1] * e[1]) * s,
        ]
    };
    let (ax, ay) = (map(ex), map(ey));
    let len = |v: [f64; 2]| (v[0] * v[0] + v[1] * v[1]).sqrt();
    let det = ax[0] * ay[1] - ax[1] * ay[0];
    let angle_between = (ax[0] * ay[0] + ax[1] * ay[1]) / (len(ax) * len(ay));
    let origin_bins = [reading.shift.0 as f64 / 2.0, reading.shift.1 as f64 / 2.0];
    Geometry {
        px_per_chip: [len(ax), len(ay)],
        rotation_deg: (-ax[1]).atan2(ax[0]).to_degrees(),
        mirrored: det < 0.0,
        shear_deg: angle_between.clamp(-1.0, 1.0).acos().to_degrees() - 90.0,
        origin_px: map([origin_bins[0], origin_bins[1]]).map(|v| v * TILE as f64 / TILE as f64),
        chip_to_leak: [ax[0], ay[0], ax[1], ay[1]],
    }
}
