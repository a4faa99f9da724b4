//! Detection: fold the leak onto the tile for each candidate geometry, align
//! it with the sync chips, decode the serial, and verify it.
//!
//! For every lattice from [`crate::sync`] (first the issued geometry,
//! [`crate::sync::as_issued`], then the autocorrelation's candidates), the
//! residual is folded into one tile at half-chip resolution, which averages
//! all the repetitions the leak holds. The eight flips/quarter-turns the
//! lattice cannot tell apart, the cyclic shift and the pattern variant are
//! found together by FFT correlation with the keyed sync chips. The data
//! chips then decode to a serial, and that serial's verify chips give the
//! statistic (see [`crate::stats`]) — which is charged for every candidate
//! evaluated, and in ledger mode for every copy tested.

use std::sync::OnceLock;

use image::DynamicImage;
use rayon::prelude::*;
use rustfft::num_complex::Complex32;
use serde::Serialize;

use crate::fft::Fft2;
use crate::key::SecretKey;
use crate::pattern::{Layout, CHIPS, TILE, VARIANTS};
use crate::payload;
use crate::plane::Plane;
use crate::register::{self, Homography};
use crate::stats;
use crate::sync::{self, Lattice, Prepared, Rect};

/// Informed detection (with the archived original) lives in [`crate::informed`].
pub use crate::informed::{detect_informed, InformedDetection, InformedOptions};

/// Rows per parallel block when folding.
const FOLD_ROWS: usize = 32;
/// Folded tile side, in bins (two per chip).
const BINS: usize = 2 * TILE;
const _: () = assert!(BINS.is_power_of_two(), "fold bins wrap by masking");
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
    /// Chip sizes, pixels, of the documents those copies were issued from
    /// ([`crate::embed::chip_px_for`] of each original's size). When nothing
    /// else decides, each is read as an upright lattice at the leak's own
    /// scale: an unscaled crop of an issued copy (a screenshot at 100 %) too
    /// small for its autocorrelation to show the lattice. Sizes within
    /// [`PERIOD_STEP`] of each other count once; a crop's chip is never
    /// smaller than its own size gives, so only larger sizes are read, at
    /// most [`MAX_ISSUED_CHIPS`] (the smallest), each charged.
    pub issued_chip_px: Vec<f64>,
}

/// Most issued chip sizes ([`DetectOptions::issued_chip_px`]) read per leak.
pub const MAX_ISSUED_CHIPS: usize = 16;

impl DetectOptions {
    /// The distinct issued chip sizes, smallest first: a size counts once
    /// within [`PERIOD_STEP`] (the fold tolerates that much).
    fn issued_chips(&self) -> Vec<f64> {
        let mut sizes: Vec<f64> = self
            .issued_chip_px
            .iter()
            .copied()
            .filter(|c| c.is_finite() && *c > 0.0)
            .collect();
        sizes.sort_by(f64::total_cmp);
        let mut out: Vec<f64> = Vec::new();
        for c in sizes {
            if out
                .last()
                .is_none_or(|&last| c > last * (1.0 + PERIOD_STEP))
            {
                out.push(c);
            }
        }
        out
    }

    /// The most readings one detection with these options can evaluate.
    fn max_readings(&self) -> usize {
        MAX_READINGS + self.issued_chips().len().min(MAX_ISSUED_CHIPS) * (1 + REFINE_ROUNDS)
    }
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
    /// Local affine map at the leak's centre from tile chip coordinates to leak pixels: [a, b, c, d] with dx = a·di + b·dj, dy = c·di + d·dj.
    pub chip_to_leak: [f64; 4],
    /// When perspective was refined: the homography (row-major 3×3) from folded tile chips to leak pixels.
    pub homography: Option<[f64; 9]>,
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
    /// `"blind"`, `"ledger"` or `"informed"` (registered on the original,
    /// [`crate::informed`]): how the winning serial was obtained.
    pub mode: &'static str,
    /// Geometry of the best hypothesis, when detected.
    pub geometry: Option<Geometry>,
    /// Geometric candidates examined.
    pub candidates: usize,
    /// The leak was too small to decide either way.
    pub too_small: bool,
}

/// A correspondence: tile chip coordinates, working pixel, weight.
type Match = ([f64; 2], [f64; 2], f64);

/// Maps working pixels to folded tile coordinates (chips), projectively:
/// `[i·w, j·w, w] = m · [x, y, 1]`. An affine frame has `m[6] = m[7] = 0`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Frame {
    m: [f64; 9],
}

impl Frame {
    /// The affine frame of a lattice: chip → pixel is x = (u·i + v·j)/64; inverted.
    fn from_lattice(lat: &Lattice) -> Option<Frame> {
        let t = TILE as f64;
        let chip_to_px = [
            lat.u[0] / t,
            lat.v[0] / t,
            0.0,
            lat.u[1] / t,
            lat.v[1] / t,
            0.0,
            0.0,
            0.0,
            1.0,
        ];
        invert3(&chip_to_px, 1e-12).map(|m| Frame { m })
    }

    #[inline]
    fn map(&self, x: f64, y: f64) -> (f64, f64) {
        let m = &self.m;
        let w = m[6] * x + m[7] * y + m[8];
        (
            (m[0] * x + m[1] * y + m[2]) / w,
            (m[3] * x + m[4] * y + m[5]) / w,
        )
    }
}

/// How a folded tile lines up with the issued tile.
#[derive(Clone, Copy, Debug)]
struct Alignment {
    /// Sync correlation peak, in standard deviations of all shifts.
    sync_z: f64,
    variant: u32,
    /// Index of the symmetry of the square applied to the folded tile.
    dihedral: usize,
    /// Cyclic shift, in bins of the aligned tile.
    shift: (usize, usize),
}

/// One way of reading the leak: a frame, the tile it folds to, and its alignment.
#[derive(Clone, Debug)]
struct Reading {
    frame: Frame,
    /// The residual folded under `frame` (kept: scoring reads its chips).
    folded: Vec<f32>,
    alignment: Alignment,
}

/// Folds the residual under `frame` and aligns the tile: over every variant
/// and flip, or, when `known` gives them (a refinement of an earlier
/// reading), over the shift alone.
fn read_frame(
    prepared: &Prepared,
    frame: Frame,
    bank: &SyncBank,
    known: Option<&Alignment>,
) -> Option<Reading> {
    let folded = fold(prepared.for_reading(), &frame);
    let alignment = match known {
        None => align(&folded, &bank.pairs, None)?,
        Some(k) => align(&folded, &[bank.only(k.variant)], Some(k.dihedral))?,
    };
    Some(Reading {
        frame,
        folded,
        alignment,
    })
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
    // The charge is the most readings the search may ever evaluate, each
    // testing the blind serial and every known copy: a constant, so the
    // search may stop as soon as one reading clears the threshold (and a
    // leak with no lattice at all reports the same charge).
    let hypotheses = hypotheses_charged(options);
    none.hypotheses = hypotheses;
    let (prepared, same_surface) = sync::prepare_both(luma);
    // The issued geometry first (a forwarded file), then the one of the copy
    // resized as a whole (a thumbnail), each unless the autocorrelation
    // found the very same lattice; then the autocorrelation's.
    let issued = sync::as_issued(luma.width, luma.height, prepared.work_scale);
    let sync::Candidates {
        lattices: found,
        peak_squares,
        off_host,
    } = sync::candidates(&prepared);
    let resized = sync::as_resized(luma.width, luma.height, prepared.work_scale);
    let priors: Vec<Lattice> = std::iter::once(issued)
        .chain(resized)
        .filter(|p| {
            !found
                .iter()
                .any(|l| sync::same_lattice(l, p, SAME_AS_ISSUED_PX))
        })
        .collect();
    let prior_count = priors.len();
    let lattices: Vec<Lattice> = priors.into_iter().chain(found).collect();
    let layouts: Vec<Layout> = (0..VARIANTS).map(|v| Layout::new(key, v)).collect();
    let bank = SyncBank::new(&layouts);

    // Score a reading: the blind serial, then every known copy of its variant.
    let score = |r: &Reading| -> (f64, u32, &'static str) {
        let layout = &layouts[r.alignment.variant as usize];
        let chips = read_chips(&r.folded, &r.alignment);
        let verify: Vec<f32> = layout
            .verify_idx
            .iter()
            .map(|&i| chips[i as usize])
            .collect();
        let serial = decode_serial(layout, &chips);
        let z = stats::normalized_correlation(
            &Layout::verify_signs(key, layout.variant, serial),
            &verify,
        );
        let mut best = (z, serial, "blind");
        for copy in options
            .known_copies
            .iter()
            .filter(|c| c.variant == layout.variant)
        {
            let z = stats::normalized_correlation(
                &Layout::verify_signs(key, copy.variant, copy.serial),
                &verify,
            );
            if z > best.0 {
                best = (z, copy.serial, "ledger");
            }
        }
        best
    };

    let threshold = stats::threshold(stats::REPORT_THRESHOLD, hypotheses);
    let mut readings: Vec<Reading> = Vec::new();
    let mut scored: Vec<(f64, u32, &'static str)> = Vec::new();
    // Lattices in order of evidence, a fixed number at a time (so the answer
    // does not depend on the thread count); each gives a global reading and
    // perspective-refined ones when its sync is clear.
    let mut first_sync: Vec<f64> = Vec::new();
    for batch in lattices.chunks(LATTICES_PER_BATCH) {
        let per_lattice: Vec<Vec<Reading>> = batch
            .par_iter()
            .map(|lat| readings_for(&prepared, lat, &bank))
            .collect();
        first_sync.extend(
            per_lattice
                .iter()
                .map(|r| r.first().map_or(f64::INFINITY, |r| r.alignment.sync_z)),
        );
        let new: Vec<Reading> = per_lattice.into_iter().flatten().collect();
        scored.extend(new.par_iter().map(&score).collect::<Vec<_>>());
        readings.extend(new);
        if scored.iter().any(|s| s.0 >= threshold) {
            break;
        }
    }
    if scored.iter().all(|s| s.0 < threshold) {
        // The best lattices may be slightly off (see `nearby_reading`).
        // (Not the issued lattice: if it is the leak's, its period is exact.)
        let unclear: Vec<&Lattice> = lattices
            .iter()
            .zip(&first_sync)
            .skip(prior_count)
            .take(NEARBY_SEARCH_LATTICES)
            .filter(|(_, &z)| z < CLEAR_SYNC_Z)
            .map(|(lat, _)| lat)
            .collect();
        let new: Vec<Reading> = unclear
            .par_iter()
            .flat_map_iter(|lat| {
                nearby_reading(&prepared, lat, &bank)
                    .map(|first| refined_readings(&prepared, lat, &bank, first))
                    .unwrap_or_default()
            })
            .collect();
        scored.extend(new.par_iter().map(&score).collect::<Vec<_>>());
        readings.extend(new);
    }
    if scored.iter().all(|s| s.0 < threshold) {
        // Lower-ranked lattices shaped like the tile's with one side two or
        // three periods long: read with that side divided.
        let divided: Vec<Lattice> = lattices
            .iter()
            .skip(prior_count + NEARBY_SEARCH_LATTICES)
            .filter_map(sync::one_side_divided)
            .filter(|d| {
                !lattices
                    .iter()
                    .any(|l| sync::same_lattice(l, d, sync::SAME_LATTICE_PX))
            })
            .take(DIVIDED_LATTICES)
            .collect();
        let new: Vec<Reading> = divided
            .par_iter()
            .flat_map_iter(|lat| readings_for(&prepared, lat, &bank))
            .collect();
        scored.extend(new.par_iter().map(&score).collect::<Vec<_>>());
        readings.extend(new);
    }
    if scored.iter().all(|s| s.0 < threshold) {
        // Lattices of which only one side is the tile's: that side and
        // itself turned by 90° (see `squared_reading`).
        let found: Vec<Lattice> = lattices
            .iter()
            .skip(prior_count)
            .take(SQUARED_LATTICES)
            .copied()
            .collect();
        let new: Vec<Reading> = squared_reading(&prepared, &found, &peak_squares, &lattices, &bank)
            .map(|(lat, first)| refined_readings(&prepared, &lat, &bank, first))
            .unwrap_or_default();
        scored.extend(new.par_iter().map(&score).collect::<Vec<_>>());
        readings.extend(new);
    }
    if scored.iter().all(|s| s.0 < threshold) {
        // A periodic host's lattice took every place: the lattices through
        // the peaks off it, and their squares (see `off_host_reading`).
        let new: Vec<Reading> = off_host_reading(&prepared, &off_host, &lattices, &bank)
            .map(|(lat, first)| refined_readings(&prepared, &lat, &bank, first))
            .unwrap_or_default();
        scored.extend(new.par_iter().map(&score).collect::<Vec<_>>());
        readings.extend(new);
    }
    if scored.iter().all(|s| s.0 < threshold) {
        // A line drawing whose paper a brightness or contrast change clipped
        // to white keeps its mark only in the ink: read that, under the
        // issued geometry (see `sync::prepare_same_surface`).
        let ink = same_surface.prepared();
        let new = readings_for(&ink, &issued, &bank);
        scored.extend(new.par_iter().map(&score).collect::<Vec<_>>());
        readings.extend(new);
    }
    if scored.iter().all(|s| s.0 < threshold) {
        // Nothing decided: under strong perspective the global
        // autocorrelation is smeared, but the centre of the leak, seen
        // through the right tilt, still has a clean lattice. (This ran only
        // when no reading had aligned at REFINE_MIN_SYNC_Z either; a
        // partial alignment then kept the search from a print photo at
        // score 7.1 and a screen photo at 1.5, read at 25.2 and 15.6
        // without the gate. Null leaks mostly reach this point anyway.)
        let new = perspective_readings(&prepared, &bank);
        scored.extend(new.par_iter().map(&score).collect::<Vec<_>>());
        readings.extend(new);
    }
    if scored.iter().all(|s| s.0 < threshold) {
        // A crop of an issued copy at its own scale, too small to show its
        // lattice, still has the chip of the document it came from, which
        // is larger than the one its own size gives (that one was read
        // first, as the issued lattice).
        let leak_chip = crate::embed::chip_px_for(luma.width as u32, luma.height as u32);
        let new: Vec<Reading> = options
            .issued_chips()
            .iter()
            .filter(|&&chip| chip > leak_chip * (1.0 + PERIOD_STEP))
            .take(MAX_ISSUED_CHIPS)
            .map(|&chip| sync::upright(chip, prepared.work_scale))
            .collect::<Vec<_>>()
            .par_iter()
            .flat_map_iter(|lat| readings_for(&prepared, lat, &bank))
            .collect();
        scored.extend(new.par_iter().map(&score).collect::<Vec<_>>());
        readings.extend(new);
    }
    // The charge must cover every reading scored, or p is understated.
    let max_readings = options.max_readings();
    assert!(
        readings.len() <= max_readings,
        "{} readings scored, {max_readings} charged",
        readings.len()
    );
    none.candidates = readings.len();
    none.hypotheses = hypotheses;
    if readings.is_empty() {
        return none;
    }

    let (best_index, &(z, serial, mode)) = scored
        .iter()
        .enumerate()
        .max_by(|a, b| a.1 .0.total_cmp(&b.1 .0).then(b.0.cmp(&a.0)))
        .expect("readings is not empty");
    // A serial the ledger issued is a ledger-informed finding, whichever path found it first.
    let mode = if options.known_copies.iter().any(|c| c.serial == serial) {
        "ledger"
    } else {
        mode
    };
    let p = stats::false_alarm(z, hypotheses);
    let detected = p <= stats::REPORT_THRESHOLD;
    let reading = &readings[best_index];
    Detection {
        detected,
        serial: detected.then_some(serial),
        variant: detected.then_some(reading.alignment.variant),
        false_alarm_probability: p,
        score: z,
        hypotheses,
        mode,
        geometry: detected.then(|| geometry_of(reading, &prepared)),
        candidates: readings.len(),
        too_small: false,
    }
}

/// The readings of one lattice: global, then up to two perspective refinements.
fn readings_for(prepared: &Prepared, lat: &Lattice, bank: &SyncBank) -> Vec<Reading> {
    let Some(frame) = Frame::from_lattice(lat) else {
        return Vec::new();
    };
    let Some(first) = read_frame(prepared, frame, bank, None) else {
        return Vec::new();
    };
    refined_readings(prepared, lat, bank, first)
}

/// `first`, then up to [`REFINE_ROUNDS`] perspective refinements of it while its sync is clear.
fn refined_readings(
    prepared: &Prepared,
    lat: &Lattice,
    bank: &SyncBank,
    first: Reading,
) -> Vec<Reading> {
    let tile_px = norm2(lat.u).min(norm2(lat.v));
    let mut out = vec![first];
    for _ in 0..REFINE_ROUNDS {
        let current = out.last().expect("out starts with one reading");
        if current.alignment.sync_z < REFINE_MIN_SYNC_Z {
            break;
        }
        let Some(next) = refine(prepared, current, bank, tile_px)
            .and_then(|frame| read_frame(prepared, frame, bank, Some(&current.alignment)))
        else {
            break;
        };
        out.push(next);
    }
    out
}

/// Lattices aligned together before checking whether one already decided.
const LATTICES_PER_BATCH: usize = 2;

/// The best-synchronised reading among lattices near `lat`, each folded and
/// aligned with the full search. Two ways the autocorrelation misleads:
/// - JPEG after a downscale holds the mark mostly in its 8×8 blocks' means,
///   so the peaks are pulled towards multiples of the block along each
///   axis: a lattice off by 1–2 % (seen on the devset after scale 0.7 +
///   JPEG 40), which drifts the fold by chips across the leak although its
///   ranking is right. Tried: the lattice scaled by `1 ± PERIOD_STEP` along
///   the leak's x and y axes (its eight neighbours).
/// - After a rotation and JPEG, one basis vector may be the mark's and the
///   other twice or three times the mark's (the lattice points between are
///   weak). Tried: either vector halved or divided by three.
///
/// The fold and its sync chips are first-order and unbiased. The choice uses
/// sync chips only, so its verify statistic is as independent of it as any
/// reading's. Searched only when no reading has decided (a marked leak
/// rarely pays for it), so the chosen reading and its refinements come on
/// top of the lattice's own and are charged as such ([`MAX_READINGS`]).
fn nearby_reading(prepared: &Prepared, lat: &Lattice, bank: &SyncBank) -> Option<Reading> {
    let mut nearby = stretched(lat);
    for d in [2.0, 3.0] {
        nearby.push(Lattice {
            u: [lat.u[0] / d, lat.u[1] / d],
            ..*lat
        });
        nearby.push(Lattice {
            v: [lat.v[0] / d, lat.v[1] / d],
            ..*lat
        });
    }
    nearby
        .par_iter()
        .filter_map(|l| read_frame(prepared, Frame::from_lattice(l)?, bank, None))
        .max_by(|a, b| a.alignment.sync_z.total_cmp(&b.alignment.sync_z))
}

/// The best-synchronised square completion of `found`: after a rotation
/// and hard compression the autocorrelation may show one side of the tile
/// clearly and the other only as a wrong combination (a lattice of sides 1
/// and 2.25 periods), while the tile is square unless the leak's aspect
/// changed. Each of the first [`SQUARED_LATTICES`] lattices' sides is tried
/// with itself turned by 90° (a mirror is the same lattice, left to the
/// alignment's flips), and so are the squares on the autocorrelations'
/// strongest peaks ([`sync::Candidates::peak_squares`]: a table's rows
/// and columns can hide the tile from every lattice); the one whose sync
/// chips align best is read, and charged as one more lattice with its
/// refinements. The choice uses sync chips only, so its verify statistic
/// is as independent as any reading's.
fn squared_reading(
    prepared: &Prepared,
    found: &[Lattice],
    peak_squares: &[Lattice],
    known: &[Lattice],
    bank: &SyncBank,
) -> Option<(Lattice, Reading)> {
    let mut squares = square_completions(found, known);
    for &square in peak_squares {
        push_unseen(&mut squares, known, square, sync::SAME_SQUARE_PX);
    }
    best_synchronised(prepared, &squares, bank)
}

/// The best-synchronised of the lattices through the autocorrelation peaks
/// off a periodic host's lattice ([`sync::Candidates::off_host`]) and their
/// square completions, charged as one more lattice with its refinements.
/// Kept apart from [`squared_reading`]: in one pool, a spurious lattice off
/// the host aligned better than a tessellation's true square completion
/// and displaced it. The choice uses sync chips only.
fn off_host_reading(
    prepared: &Prepared,
    off_host: &[Lattice],
    known: &[Lattice],
    bank: &SyncBank,
) -> Option<(Lattice, Reading)> {
    let mut pool: Vec<Lattice> = Vec::new();
    for &lat in off_host {
        push_unseen(&mut pool, known, lat, sync::SAME_LATTICE_PX);
    }
    for square in square_completions(off_host, known) {
        push_unseen(&mut pool, known, square, sync::SAME_LATTICE_PX);
    }
    best_synchronised(prepared, &pool, bank)
}

/// The lattice of `pool` whose sync chips align best, with its reading.
fn best_synchronised(
    prepared: &Prepared,
    pool: &[Lattice],
    bank: &SyncBank,
) -> Option<(Lattice, Reading)> {
    pool.par_iter()
        .filter_map(|l| {
            Some((
                *l,
                read_frame(prepared, Frame::from_lattice(l)?, bank, None)?,
            ))
        })
        .max_by(|a, b| a.1.alignment.sync_z.total_cmp(&b.1.alignment.sync_z))
}

/// Each side of each lattice with itself turned by 90°, leaving out any
/// lattice already in `known` or listed before.
fn square_completions(found: &[Lattice], known: &[Lattice]) -> Vec<Lattice> {
    let mut squares: Vec<Lattice> = Vec::new();
    for lat in found {
        for side in [lat.u, lat.v] {
            let square = Lattice {
                u: side,
                v: [-side[1], side[0]],
                ..*lat
            };
            push_unseen(&mut squares, known, square, sync::SAME_LATTICE_PX);
        }
    }
    squares
}

/// Appends `lat` to `list` unless it or `known` already holds it (within
/// `tolerance_px`, see [`sync::same_lattice`]).
fn push_unseen(list: &mut Vec<Lattice>, known: &[Lattice], lat: Lattice, tolerance_px: f64) {
    let seen = known
        .iter()
        .chain(list.iter())
        .any(|l| sync::same_lattice(l, &lat, tolerance_px));
    if !seen {
        list.push(lat);
    }
}

/// The lattice scaled by `1 ± PERIOD_STEP` along the leak's x and y axes
/// (its eight neighbours, not itself).
fn stretched(lat: &Lattice) -> Vec<Lattice> {
    let steps = [-PERIOD_STEP, 0.0, PERIOD_STEP];
    steps
        .iter()
        .flat_map(|&sx| steps.iter().map(move |&sy| (1.0 + sx, 1.0 + sy)))
        .filter(|&s| s != (1.0, 1.0))
        .map(|(sx, sy)| Lattice {
            u: [lat.u[0] * sx, lat.u[1] * sy],
            v: [lat.v[0] * sx, lat.v[1] * sy],
            ..*lat
        })
        .collect()
}

/// Relative period correction tried per axis by [`nearby_reading`]. After
/// scale 0.7 + JPEG 40 the devset's lattices were off by −1.9 … +1.1 %;
/// the perspective refinement corrects what is left once the sync is clear.
const PERIOD_STEP: f64 = 0.0125;
/// Lattices, in order of evidence, whose neighbours are searched when no
/// reading decided and their sync is unclear (twelve full alignments each,
/// nulls included). On the devset after five downscale + JPEG channels, 2
/// and 4 gained the same.
const NEARBY_SEARCH_LATTICES: usize = 2;
/// Lattices beyond the nearby search read with one side divided
/// ([`sync::one_side_divided`]) when no reading has decided; each is charged
/// with its refinements.
const DIVIDED_LATTICES: usize = 2;
/// Lattices, in order of evidence, whose square completions
/// ([`squared_reading`]) are aligned when nothing else decided. On the
/// independent script's 1,680 leaks (25 Nov, eight seeds) the completions
/// read 3 more (1/2 + rotation 30° + JPEG 50 of a small render and of a
/// screenshot, 1/3 + JPEG 70 of a small photo; scores 1.4–2.0 → 9.5–10.3),
/// none lost (10 and all sixteen read the same; with 6 the small photo's
/// was missed, the only one tried). The peak squares joined them: 1,602 →
/// 1,611 of those leaks (½ + rotation 30° + JPEG 50 ×6, ⅓ + JPEG 70 ×3,
/// none lost), and 24 → 27 of 30 on a spreadsheet host; told apart from
/// other squares within [`sync::SAME_SQUARE_PX`] instead of
/// [`sync::SAME_LATTICE_PX`], 2,833 → 2,837 of 2,940 leaks of both attack
/// scripts, none lost.
/// Each completion is one more fold and full alignment on a leak where
/// nothing decides: an unmarked 0.5 MP leak 321 → 373 ms.
const SQUARED_LATTICES: usize = 10;
/// Sync evidence above which a lattice is taken as it is.
const CLEAR_SYNC_Z: f64 = 9.0;

/// Working pixels within which an autocorrelation lattice is the issued one
/// ([`sync::as_issued`]) and replaces it: half a pixel over a period of
/// 110–270 working pixels, so a leak rescaled by 0.5 % keeps both.
const SAME_AS_ISSUED_PX: f64 = 0.5;

/// The most readings one detection can evaluate: every lattice (the
/// autocorrelation's, the issued one and the resized one) with its refinements, the nearby
/// readings with theirs, the divided lattices with theirs, the best square
/// completion with its, the best lattice off a periodic host with its, the
/// issued lattice read in the ink
/// ([`sync::prepare_same_surface`]) with its refinements, plus the
/// perspective starts (the one off a host included). This is what is charged.
const MAX_READINGS: usize =
    (sync::MAX_CANDIDATES + 2 + NEARBY_SEARCH_LATTICES + DIVIDED_LATTICES + 1 + 1 + 1)
        * (1 + REFINE_ROUNDS)
        + PERSPECTIVE_STARTS
        + PERSPECTIVE_OFF_HOST_STARTS;

/// Perspective refinement rounds per lattice (each adds one charged hypothesis).
const REFINE_ROUNDS: usize = 2;
/// Global sync evidence needed before refining: below it the variant and flip are guesses.
const REFINE_MIN_SYNC_Z: f64 = 6.5;
/// Local sync evidence for a window to take part in the homography fit. A
/// window's search (one variant and flip, 16,384 shifts) peaks near 4 on
/// noise alone, so at 4 about half the windows without a mark joined the
/// fit and pulled it off; above 5 one in two hundred does (perspective 8 % +
/// blur + JPEG 70 on the devset: 3/10 → 7/10 with the anchor windows, Nov 23).
const WINDOW_MIN_SYNC_Z: f64 = 5.0;

/// A frame for a leak under strong perspective: each window of a grid gets
/// its own lattice from its own autocorrelation and an affine frame that
/// agrees with the global one at the window's centre; the windows nearest
/// the centre are aligned with a full search (variant, flip, shift), the
/// best anchors the others, aligned with its variant and flip; a homography
/// is fitted to their offsets.
fn local_start(
    prepared: &Prepared,
    lat: &Lattice,
    bank: &SyncBank,
    tile_px: f64,
    acfs: &sync::WindowAcfs,
) -> Option<Reading> {
    let r = &prepared.residual;
    let (w, h) = (r.width as f64, r.height as f64);
    let n = ((w.min(h) / (1.5 * tile_px)).round() as usize).clamp(2, 4);
    let (win_w, win_h) = (w / n as f64 * 1.5, h / n as f64 * 1.5);
    let global = Frame::from_lattice(lat)?;
    let windows: Vec<(f64, f64, Rect)> = (0..n)
        .flat_map(|j| {
            (0..n).map(move |i| {
                (
                    (i as f64 + 0.5) * w / n as f64,
                    (j as f64 + 0.5) * h / n as f64,
                )
            })
        })
        .map(|(cx, cy)| {
            let x0 = (cx - win_w / 2.0).max(0.0) as usize;
            let y0 = (cy - win_h / 2.0).max(0.0) as usize;
            let x1 = ((cx + win_w / 2.0) as usize).min(r.width);
            let y1 = ((cy + win_h / 2.0) as usize).min(r.height);
            (cx, cy, (x0, y0, x1, y1))
        })
        .collect();
    // A window's own affine frame, from its own autocorrelation, anchored to
    // the global frame at the window's centre.
    let local_frame = |i: usize| -> Option<Frame> {
        let (cx, cy, rect) = windows[i];
        let affine = Frame::from_lattice(&sync::local_lattice(prepared, rect, lat, acfs)?)?;
        let (gi, gj) = global.map(cx, cy);
        let (li, lj) = affine.map(cx, cy);
        let mut m = affine.m;
        m[2] += gi - li;
        m[5] += gj - lj;
        Some(Frame { m })
    };
    let fold_window = |i: usize| Some(fold_rect(r, &local_frame(i)?, windows[i].2));
    // The windows nearest the centre that hold a lattice are aligned; the
    // best anchors the rest. The mark's strength varies across a leak with
    // its content, so one window may read where its neighbour does not; the
    // others are folded only once an anchor aligns (most null leaks stop here).
    let mut by_distance: Vec<usize> = (0..windows.len()).collect();
    let d = |i: usize| (windows[i].0 - w / 2.0).powi(2) + (windows[i].1 - h / 2.0).powi(2);
    by_distance.sort_by(|&a, &b| d(a).total_cmp(&d(b)).then(a.cmp(&b)));
    let nearest: Vec<(usize, Vec<f32>)> = by_distance
        .iter()
        .filter_map(|&i| fold_window(i).map(|f| (i, f)))
        .take(ANCHOR_WINDOWS)
        .collect();
    let tried: Vec<(usize, Vec<f32>, Alignment)> = nearest
        .into_par_iter()
        .filter_map(|(i, f)| {
            let a = align(&f, &bank.pairs, None)?;
            Some((i, f, a))
        })
        .collect();
    let &(anchor_window, _, anchor) = tried
        .iter()
        .max_by(|a, b| a.2.sync_z.total_cmp(&b.2.sync_z).then(b.0.cmp(&a.0)))?;
    if anchor.sync_z < REFINE_MIN_SYNC_Z {
        return None;
    }
    let folds: Vec<Option<Vec<f32>>> = (0..windows.len())
        .into_par_iter()
        .map(|i| match tried.iter().find(|t| t.0 == i) {
            Some(t) => Some(t.1.clone()),
            None => fold_window(i),
        })
        .collect();
    let template = [bank.only(anchor.variant)];
    let matches: Vec<Match> = windows
        .iter()
        .zip(&folds)
        .filter_map(|(&(cx, cy, _), f)| {
            let la = align(f.as_ref()?, &template, Some(anchor.dihedral))?;
            if la.sync_z < WINDOW_MIN_SYNC_Z {
                return None;
            }
            let (fx, fy) = folded_offset(la.shift, anchor.shift, anchor.dihedral);
            let (ci, cj) = global.map(cx, cy);
            Some(([ci - fx / 2.0, cj - fy / 2.0], [cx, cy], la.sync_z))
        })
        .collect();
    // Too few windows read for a homography (a leak whose content leaves
    // the mark in one region): the anchor's own frame starts the refinement.
    let frame = match fit_homography(&matches).and_then(|m| invert3(&m, 1e-12)) {
        Some(m) => Frame { m },
        None => local_frame(anchor_window)?,
    };
    read_frame(prepared, frame, bank, Some(&anchor))
}

/// Readings started from the lattice of the leak's central region
/// ([`CENTRE_FRACTION`] of its sides), for leaks whose global lattice is
/// smeared by perspective.
///
/// A strong tilt changes the period across even the central region by more
/// than its autocorrelation tolerates (perspective 10 % of the devset's
/// photo: 183 px at a fifth of its width, 132 px at four fifths), so the
/// region is looked at through each tilt of a grid ([`Tilt`]): the one that
/// undoes most of the leak's perspective gives the sharpest lattice. The
/// best starts are read in their tilted view of the whole leak, whose
/// remaining perspective the windows correct, and the frame found there is
/// carried back to the leak.
fn perspective_readings(prepared: &Prepared, bank: &SyncBank) -> Vec<Reading> {
    let r = &prepared.residual;
    let (cw, ch) = (
        (r.width as f64 * CENTRE_FRACTION) as usize,
        (r.height as f64 * CENTRE_FRACTION) as usize,
    );
    let (x0, y0) = ((r.width - cw) / 2, (r.height - ch) / 2);
    // The central lattices only start the search (the windows then find
    // their own): on a large leak they are searched at half resolution, a
    // quarter of the cost. A small one is cheap, and likely a shrunk leak
    // whose chips are too fine to halve.
    let d = if r.width.min(r.height) >= PERSPECTIVE_DECIMATION_MIN_PX {
        PERSPECTIVE_DECIMATION
    } else {
        1
    };
    let halved;
    let coarse = if d > 1 {
        halved = r.resize_area(r.width / d, r.height / d);
        &halved
    } else {
        r
    };
    let centre_rect = (x0 / d, y0 / d, (x0 + cw) / d, (y0 + ch) / d);
    let tilts = Tilt::grid();
    let per_tilt: Vec<sync::Candidates> = tilts
        .par_iter()
        .map(|t| {
            let centre = Prepared {
                residual: t.view(coarse, centre_rect),
                work_scale: prepared.work_scale / d as f64,
                read_residual: None,
            };
            let sigma = if d > 1 {
                PERSPECTIVE_COARSE_ACF_BLUR
            } else {
                PERSPECTIVE_ACF_BLUR
            };
            sync::lattices_blurred(&centre, sigma, d as f64)
        })
        .collect();
    let (lattices, off_host): (Vec<Vec<Lattice>>, Vec<Vec<Lattice>>) = per_tilt
        .into_iter()
        .map(|c| (c.lattices, c.off_host))
        .unzip();
    // A periodic host's lattice is every tilt's best; the best lattice off
    // it starts one more search.
    let mut starts = perspective_starts(&tilts, &lattices, PERSPECTIVE_STARTS);
    starts.extend(perspective_starts(
        &tilts,
        &off_host,
        PERSPECTIVE_OFF_HOST_STARTS,
    ));
    starts
        .par_iter()
        .filter_map(|&(ti, lat)| {
            let tilt = tilts[ti];
            // Read from the searches' residual: a tilted view of the
            // reading residual as well changed none of the independent
            // script's 1,680 leaks (25 Nov), for four more resamplings.
            let view = Prepared {
                residual: tilt.view(r, (0, 0, r.width, r.height)),
                work_scale: prepared.work_scale,
                read_residual: None,
            };
            let tile_px = norm2(lat.u).min(norm2(lat.v));
            let acfs = sync::WindowAcfs::default();
            // Where the tilt has undone the perspective, the start's own
            // frame over the whole view may align better than the windows'
            // noisier local lattices: the clearer sync of the two goes on.
            let local = local_start(&view, &lat, bank, tile_px, &acfs);
            let whole = Frame::from_lattice(&lat).and_then(|f| read_frame(&view, f, bank, None));
            let start = [local, whole]
                .into_iter()
                .flatten()
                .max_by(|a, b| a.alignment.sync_z.total_cmp(&b.alignment.sync_z))?;
            let frame = refine(&view, &start, bank, tile_px)?;
            let frame = Frame {
                m: mul3(&frame.m, &tilt.leak_to_view(r.width, r.height).0),
            };
            read_frame(prepared, frame, bank, Some(&start.alignment))
        })
        .collect()
}

/// The `count` best central lattices over all tilts, each tilt giving at
/// most its best, and only where it is the best of its neighbours on the
/// grid (a tilt near the right one shows the same lattice a little less
/// sharply), then the best of the rest.
fn perspective_starts(
    tilts: &[Tilt],
    per_tilt: &[Vec<Lattice>],
    count: usize,
) -> Vec<(usize, Lattice)> {
    let best = |i: usize| per_tilt[i].first().map_or(f64::NEG_INFINITY, |l| l.score);
    let mut order: Vec<usize> = (0..tilts.len())
        .filter(|&i| !per_tilt[i].is_empty())
        .collect();
    order.sort_by(|&a, &b| best(b).total_cmp(&best(a)).then(a.cmp(&b)));
    let is_peak = |i: usize| {
        (0..tilts.len()).all(|j| j == i || !tilts[i].neighbours(&tilts[j]) || best(j) <= best(i))
    };
    let (peaks, rest): (Vec<usize>, Vec<usize>) = order.into_iter().partition(|&i| is_peak(i));
    peaks
        .into_iter()
        .chain(rest)
        .take(count)
        .map(|i| (i, per_tilt[i][0]))
        .collect()
}

/// A pure projective map about the leak's centre, the part of a perspective
/// an affine lattice cannot express: a leak point is seen at
/// (x, y) / (1 + g·x + h·y) in coordinates centred on the leak and
/// normalised by its half width and half height. `g` = 0.1 makes the period
/// along x 1.5 times longer at the left side than at the right.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Tilt {
    g: f64,
    h: f64,
}

impl Tilt {
    /// The tilts tried: every (g, h) on a grid of [`TILT_STEP`] up to [`TILT_MAX`].
    fn grid() -> Vec<Tilt> {
        let n = (TILT_MAX / TILT_STEP).round() as i32;
        (-n..=n)
            .flat_map(|j| {
                (-n..=n).map(move |i| Tilt {
                    g: f64::from(i) * TILT_STEP,
                    h: f64::from(j) * TILT_STEP,
                })
            })
            .collect()
    }

    fn neighbours(&self, other: &Tilt) -> bool {
        let near = |a: f64, b: f64| (a - b).abs() < 1.5 * TILT_STEP;
        near(self.g, other.g) && near(self.h, other.h)
    }

    /// `rect` of the leak as seen through the tilt: view pixel (x, y) holds
    /// the residual (bilinear) where the tilt sends its centre, zero outside.
    fn view(&self, residual: &Plane, rect: sync::Rect) -> Plane {
        let (x0, y0, x1, y1) = rect;
        let to_leak = self.view_to_leak(residual.width, residual.height);
        let mut out = Plane::filled(x1 - x0, y1 - y0, 0.0);
        for (row, y) in out.data.chunks_mut(x1 - x0).zip(y0..y1) {
            for (o, x) in row.iter_mut().zip(x0..x1) {
                if let Some(v) = to_leak
                    .map(x as f64 + 0.5, y as f64 + 0.5)
                    .and_then(|(u, v)| register::sample(residual, u, v))
                {
                    *o = v;
                }
            }
        }
        out
    }

    /// View pixel → leak pixel (continuous coordinates, as frames use).
    fn view_to_leak(&self, width: usize, height: usize) -> Homography {
        self.matrix(width, height, 1.0)
    }

    /// Leak pixel → view pixel.
    fn leak_to_view(&self, width: usize, height: usize) -> Homography {
        self.matrix(width, height, -1.0)
    }

    /// N⁻¹ · [[1, 0, 0], [0, 1, 0], [±g, ±h, 1]] · N, N the normalisation.
    fn matrix(&self, width: usize, height: usize, sign: f64) -> Homography {
        let (sx, sy) = (width as f64 / 2.0, height as f64 / 2.0);
        let n = [1.0 / sx, 0.0, -1.0, 0.0, 1.0 / sy, -1.0, 0.0, 0.0, 1.0];
        let n_inv = [sx, 0.0, sx, 0.0, sy, sy, 0.0, 0.0, 1.0];
        let q = [
            1.0,
            0.0,
            0.0,
            0.0,
            1.0,
            0.0,
            sign * self.g,
            sign * self.h,
            1.0,
        ];
        Homography(mul3(&n_inv, &mul3(&q, &n)))
    }
}

/// Largest tilt tried, each way on each axis: perspective 10 % (corners
/// moved by up to a tenth of the sides) reaches about 0.2, and the windows
/// correct what the nearest tilt leaves.
const TILT_MAX: f64 = 0.15;
/// Step of the tilt grid. Devset under perspective 5 %, 10 % and 8 % +
/// blur + JPEG 70, key 7, attack seeds 6–9 (120 leaks): no tilt 92 read;
/// max / step 0.1 / 0.05 (25 tilts) 114, 0.15 / 0.075 (25) 113,
/// 0.15 / 0.05 (49) 112, 0.2 / 0.05 (81) 110, 0.2 / 0.1 (25) 108; the
/// wider of the two 25-tilt grids was kept for stronger tilts. Since then
/// the search has changed around it, and a photo of a print with some
/// defocus (blur σ 1.3, perspective 10 %, blur σ 0.8, noise, JPEG 80) was
/// found lost only because its tilt fell between the grid's points: with
/// the true tilt undone, both misses read at 25 and 20 (25 Nov). Step
/// 0.05 (49 tilts), on both attack scripts' 2,940 leaks: 2,837 → 2,858
/// (phone-style shots and screen photos, 22 gained, 1 lost); on six
/// images × three seeds of that print photo 6 → 13 of 18. An unmarked
/// 2 MP leak under another key took the same 0.44–0.46 s; an unmarked
/// 0.5 MP one, whose centre is searched at full resolution, 349 → 378 ms.
const TILT_STEP: f64 = 0.05;

/// Windows nearest the leak's centre tried as the anchor of a perspective
/// start: the mark's strength follows the content, so the nearest window
/// alone often holds too little of it. Perspective 8 % + blur + JPEG 70 on
/// the devset with 1, 2, 3, 4, 6, 9 windows: 3, 4, 5, 7, 7, 7 of 10 (Nov 24).
/// The cost falls on leaks that reach the perspective search, nulls included.
const ANCHOR_WINDOWS: usize = 4;
/// Side of the central region whose lattices start the perspective search,
/// as a fraction of the leak's: perspective changes the period across a
/// leak, and half the side already smeared it beyond finding (perspective
/// 8 % + blur + JPEG 70: 5/10 at 0.5, 7/10 at 0.4, 5/10 at 0.33). Since
/// the tilts undo most of the perspective and the chips grew (99cb4a0: a
/// 0.4 region of a small photo held 1.3 tiles), a larger region pays:
/// perspective rows of the devset under key 7, seeds 6–9, 103 / 109 / 110 /
/// 108 / 108 of 120 at 0.4 / 0.5 / 0.6 / 0.7 / 0.8; robustness suite 361 →
/// 363; phone-style shots and screen photos of the independent attack
/// script (five seeds) 115 → 124 of 140.
const CENTRE_FRACTION: f64 = 0.6;
/// Central-region lattices tried when the global ones do not align.
const PERSPECTIVE_STARTS: usize = 4;
/// Central-region lattices off a periodic host's tried as well (see
/// [`sync::Candidates::off_host`]): with only the best lattices of each
/// tilt, a tessellation under perspective 10 % + JPEG 75 read 0 of 4 (the
/// third attack script's Truchet and Art Nouveau wallpapers, two seeds);
/// with the best off-host lattice over the tilts as one more start, 4 of 4
/// at p ≤ 1e-100.
const PERSPECTIVE_OFF_HOST_STARTS: usize = 1;
/// Blur of the central autocorrelation, working pixels: gathers peaks that
/// perspective smeared (perspective 5 % on the devset: 7/10 → 9/10 with 1.0;
/// 3.0 merges neighbouring peaks and loses them).
const PERSPECTIVE_ACF_BLUR: f32 = 1.0;
/// Shrink factor of the leak whose central lattices start the perspective
/// search (the blur above already keeps little of the frequencies it drops).
const PERSPECTIVE_DECIMATION: usize = 2;
/// Shortest working side of a leak shrunk for the perspective search.
const PERSPECTIVE_DECIMATION_MIN_PX: usize = 512;
/// [`PERSPECTIVE_ACF_BLUR`] once shrunk, in the shrunk leak's pixels.
/// Robustness suite (key 42, seed 6) with 0.35 / 0.5 / 0.7 / 1.0: 368 /
/// 368 / 370 / 370 of 380 (370 unshrunk); perspective and screen rows of
/// `examples/suite2` (key 7, seeds 6–9, 200 leaks): 0.5 / 0.7 / 1.0: 168 /
/// 169 / 168 (166 unshrunk, with the spatial blur).
const PERSPECTIVE_COARSE_ACF_BLUR: f32 = 0.7;

/// How far a window's aligned shift is from the reference shift, in folded
/// bins: wrapped to ±half a tile, then taken back through the flip.
fn folded_offset(shift: (usize, usize), reference: (usize, usize), dihedral: usize) -> (f64, f64) {
    let wrap = |a: usize, b: usize| {
        let d = (a as i64 - b as i64).rem_euclid(BINS as i64);
        if d >= BINS as i64 / 2 {
            (d - BINS as i64) as f64
        } else {
            d as f64
        }
    };
    let (dx, dy) = (wrap(shift.0, reference.0), wrap(shift.1, reference.1));
    let (mut fx, mut fy) = if dihedral & 4 != 0 {
        (dy, dx)
    } else {
        (dx, dy)
    };
    if dihedral & 1 != 0 {
        fx = -fx;
    }
    if dihedral & 2 != 0 {
        fy = -fy;
    }
    (fx, fy)
}

/// Fits a homography to local offsets: a phone photo is affine only locally,
/// so the frame is folded window by window, each window's sync shift says
/// how far its part of the leak is from where the current frame puts it, and
/// a projective map is fitted to those correspondences. Uses sync chips only,
/// so the verify statistic stays independent of the choice.
fn refine(prepared: &Prepared, reading: &Reading, bank: &SyncBank, tile_px: f64) -> Option<Frame> {
    let r = &prepared.residual;
    let (w, h) = (r.width as f64, r.height as f64);
    let nx = ((w / tile_px).round() as usize).clamp(2, 6);
    let ny = ((h / tile_px).round() as usize).clamp(2, 6);
    let (win_w, win_h) = (w / nx as f64 * 1.6, h / ny as f64 * 1.6);
    let al = reading.alignment;
    let template = [bank.only(al.variant)];
    let windows: Vec<(f64, f64)> = (0..ny)
        .flat_map(|j| {
            (0..nx).map(move |i| {
                (
                    (i as f64 + 0.5) * w / nx as f64,
                    (j as f64 + 0.5) * h / ny as f64,
                )
            })
        })
        .collect();
    let matches: Vec<Match> = windows
        .par_iter()
        .filter_map(|&(cx, cy)| {
            let x0 = (cx - win_w / 2.0).max(0.0) as usize;
            let y0 = (cy - win_h / 2.0).max(0.0) as usize;
            let x1 = ((cx + win_w / 2.0) as usize).min(r.width);
            let y1 = ((cy + win_h / 2.0) as usize).min(r.height);
            let local = fold_rect(r, &reading.frame, (x0, y0, x1, y1));
            let la = align(&local, &template, Some(al.dihedral))?;
            if la.sync_z < WINDOW_MIN_SYNC_Z {
                return None;
            }
            let (fx, fy) = folded_offset(la.shift, al.shift, al.dihedral);
            let (ci, cj) = reading.frame.map(cx, cy);
            Some(([ci - fx / 2.0, cj - fy / 2.0], [cx, cy], la.sync_z))
        })
        .collect();
    let chip_to_px = fit_homography(&matches)?;
    invert3(&chip_to_px, 1e-12).map(|m| Frame { m })
}

/// Weighted least-squares homography (chip → pixel) from correspondences,
/// with the worst outlier dropped while any is off by more than a chip.
fn fit_homography(matches: &[Match]) -> Option<[f64; 9]> {
    let mut pts: Vec<Match> = matches.to_vec();
    loop {
        if pts.len() < 5 {
            return None;
        }
        // Normalise both point sets for conditioning.
        let norm_of = |sel: &dyn Fn(&Match) -> [f64; 2]| {
            let n = pts.len() as f64;
            let mx = pts.iter().map(|p| sel(p)[0]).sum::<f64>() / n;
            let my = pts.iter().map(|p| sel(p)[1]).sum::<f64>() / n;
            let sd = (pts
                .iter()
                .map(|p| (sel(p)[0] - mx).powi(2) + (sel(p)[1] - my).powi(2))
                .sum::<f64>()
                / n)
                .sqrt()
                .max(1e-9);
            (mx, my, sd)
        };
        let (tmx, tmy, tsd) = norm_of(&|p| p.0);
        let (pmx, pmy, psd) = norm_of(&|p| p.1);
        let mut ata = [[0.0f64; 8]; 8];
        let mut atb = [0.0f64; 8];
        for (t, p, wgt) in &pts {
            let (tx, ty) = ((t[0] - tmx) / tsd, (t[1] - tmy) / tsd);
            let (px, py) = ((p[0] - pmx) / psd, (p[1] - pmy) / psd);
            for (row, rhs) in [
                ([tx, ty, 1.0, 0.0, 0.0, 0.0, -px * tx, -px * ty], px),
                ([0.0, 0.0, 0.0, tx, ty, 1.0, -py * tx, -py * ty], py),
            ] {
                for a in 0..8 {
                    atb[a] += wgt * row[a] * rhs;
                    for b in 0..8 {
                        ata[a][b] += wgt * row[a] * row[b];
                    }
                }
            }
        }
        let hn = solve8(ata, atb, 1e-12)?;
        // Undo the normalisation: H = Np⁻¹ · Hn · Nt.
        let hn = [hn[0], hn[1], hn[2], hn[3], hn[4], hn[5], hn[6], hn[7], 1.0];
        let nt = [
            1.0 / tsd,
            0.0,
            -tmx / tsd,
            0.0,
            1.0 / tsd,
            -tmy / tsd,
            0.0,
            0.0,
            1.0,
        ];
        let np_inv = [psd, 0.0, pmx, 0.0, psd, pmy, 0.0, 0.0, 1.0];
        let h = mul3(&np_inv, &mul3(&hn, &nt));
        // Residuals in chips: project, compare, convert px → chips by the local scale.
        let px_per_chip = psd / tsd;
        let errs: Vec<f64> = pts
            .iter()
            .map(|(t, p, _)| {
                let w = h[6] * t[0] + h[7] * t[1] + h[8];
                let x = (h[0] * t[0] + h[1] * t[1] + h[2]) / w;
                let y = (h[3] * t[0] + h[4] * t[1] + h[5]) / w;
                ((x - p[0]).powi(2) + (y - p[1]).powi(2)).sqrt() / px_per_chip
            })
            .collect();
        let (worst, &err) = errs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
        if err <= 1.0 {
            return Some(h);
        }
        pts.remove(worst);
    }
}

/// Gaussian elimination with partial pivoting on an 8×8 system; `None` when
/// a pivot is below `min_pivot` (or NaN) or the solution is not finite.
pub(crate) fn solve8(mut a: [[f64; 8]; 8], mut b: [f64; 8], min_pivot: f64) -> Option<[f64; 8]> {
    for col in 0..8 {
        let pivot = (col..8).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        let p = a[pivot][col].abs();
        if p.is_nan() || p < min_pivot {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..8 {
            let f = a[row][col] / a[col][col];
            let pivot_row = a[col];
            for (x, p) in a[row].iter_mut().zip(pivot_row).skip(col) {
                *x -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0f64; 8];
    for row in (0..8).rev() {
        let s: f64 = (row + 1..8).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

fn mul3(a: &[f64; 9], b: &[f64; 9]) -> [f64; 9] {
    let mut out = [0.0; 9];
    for r in 0..3 {
        for c in 0..3 {
            out[r * 3 + c] = (0..3).map(|k| a[r * 3 + k] * b[k * 3 + c]).sum();
        }
    }
    out
}

/// Inverse of a 3×3 matrix; `None` when its determinant is below `min_det`
/// in magnitude (or not finite).
pub(crate) fn invert3(m: &[f64; 9], min_det: f64) -> Option<[f64; 9]> {
    let det = m[0] * (m[4] * m[8] - m[5] * m[7]) - m[1] * (m[3] * m[8] - m[5] * m[6])
        + m[2] * (m[3] * m[7] - m[4] * m[6]);
    if !det.is_finite() || det.abs() < min_det {
        return None;
    }
    let inv = [
        m[4] * m[8] - m[5] * m[7],
        m[2] * m[7] - m[1] * m[8],
        m[1] * m[5] - m[2] * m[4],
        m[5] * m[6] - m[3] * m[8],
        m[0] * m[8] - m[2] * m[6],
        m[2] * m[3] - m[0] * m[5],
        m[3] * m[7] - m[4] * m[6],
        m[1] * m[6] - m[0] * m[7],
        m[0] * m[4] - m[1] * m[3],
    ];
    Some(inv.map(|v| v / det))
}

fn norm2(v: [f64; 2]) -> f64 {
    (v[0] * v[0] + v[1] * v[1]).sqrt()
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

/// The transforms of the folded tile, planned once.
fn bins_fft() -> &'static Fft2 {
    static FFT: OnceLock<Fft2> = OnceLock::new();
    FFT.get_or_init(|| Fft2::new(BINS, BINS))
}

/// The sync templates of every variant, paired for the alignment search.
struct SyncBank {
    /// Variants 2k and 2k + 1 in pair k.
    pairs: Vec<SyncPair>,
    /// Each variant's template spectrum alone.
    spectra: Vec<Vec<Complex32>>,
}

impl SyncBank {
    fn new(layouts: &[Layout]) -> Self {
        let spectra: Vec<Vec<Complex32>> = layouts.iter().map(sync_spectrum).collect();
        let pairs = layouts
            .chunks(2)
            .zip(spectra.chunks(2))
            .map(|(l, s)| {
                let parts: Vec<(u32, &[Complex32])> = l
                    .iter()
                    .zip(s)
                    .map(|(l, s)| (l.variant, s.as_slice()))
                    .collect();
                SyncPair::new(&parts)
            })
            .collect();
        SyncBank { pairs, spectra }
    }

    /// The template of one variant, for a search whose variant is known.
    fn only(&self, variant: u32) -> SyncPair {
        SyncPair::new(&[(variant, &self.spectra[variant as usize])])
    }
}

/// The template spectra `a` and `b` of one or two variants, combined as
/// `a + i·b`: both correlations with a real fold are real, so one product
/// and one inverse transform give the first in the real part and the second
/// in the imaginary part.
struct SyncPair {
    variants: Vec<u32>,
    /// Real and imaginary parts of `a + i·b`, apart so that the product loop vectorises.
    combined: [Vec<f32>; 2],
    /// `|a|²` and `|b|²` per bin (zero for a missing `b`), for Parseval.
    power: [Vec<f32>; 2],
}

impl SyncPair {
    /// From one or two `(variant, conjugated template spectrum)` parts.
    fn new(parts: &[(u32, &[Complex32])]) -> Self {
        let a = parts[0].1;
        let power = |t: &[Complex32]| t.iter().map(|c| c.norm_sqr()).collect();
        let i = Complex32::new(0.0, 1.0);
        let (combined, power_b): (Vec<Complex32>, Vec<f32>) = match parts.get(1) {
            Some(&(_, b)) => (a.iter().zip(b).map(|(a, b)| a + i * b).collect(), power(b)),
            None => (a.to_vec(), vec![0.0; a.len()]),
        };
        SyncPair {
            variants: parts.iter().map(|p| p.0).collect(),
            combined: [
                combined.iter().map(|c| c.re).collect(),
                combined.iter().map(|c| c.im).collect(),
            ],
            power: [power(a), power_b],
        }
    }
}

/// The sync chips of a layout as a BINS² template, conjugated spectrum in
/// the transposed order of [`Fft2::forward_transposed`].
fn sync_spectrum(layout: &Layout) -> Vec<Complex32> {
    let mut t = vec![Complex32::new(0.0, 0.0); BINS * BINS];
    for (&i, &s) in layout.sync_idx.iter().zip(&layout.sync_sign) {
        let (cx, cy) = (i as usize % TILE, i as usize / TILE);
        for (a, b) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            t[(2 * cy + b) * BINS + 2 * cx + a] = Complex32::new(s, 0.0);
        }
    }
    bins_fft().forward_transposed(&mut t);
    t.iter().map(|c| c.conj()).collect()
}

/// Finds the flip, shift and variant (of those in `pairs`) whose sync chips
/// match the folded tile best. `only_dihedral` restricts the flip search.
fn align(folded: &[f32], pairs: &[SyncPair], only_dihedral: Option<usize>) -> Option<Alignment> {
    let fft = bins_fft();
    let mut best: Option<Alignment> = None;
    let flips: Vec<usize> = match only_dihedral {
        Some(d) => vec![d],
        None => (0..8).collect(),
    };
    let mut corr: Vec<Complex32> = Vec::with_capacity(BINS * BINS);
    for d in flips {
        let mut spec: Vec<Complex32> = dihedral(folded, d)
            .into_iter()
            .map(|v| Complex32::new(v, 0.0))
            .collect();
        fft.forward_transposed(&mut spec);
        let spec = SplitSpectrum::new(&spec);
        for pair in pairs {
            let moments = correlation_spectrum(&spec, pair, &mut corr);
            fft.inverse_from_transposed(&mut corr);
            let peaks = peaks(&corr);
            for (k, &variant) in pair.variants.iter().enumerate() {
                let (mean, mean_square) = moments[k];
                let sd = (mean_square - mean * mean).max(1e-30).sqrt();
                let z = (f64::from(peaks[k]) - mean) / sd;
                if best.is_none_or(|b| z > b.sync_z) {
                    // Where the peak is, looked up only when it is the best yet.
                    let part = |c: &Complex32| if k == 0 { c.re } else { c.im };
                    let at = corr.iter().position(|c| part(c) == peaks[k]).unwrap_or(0);
                    best = Some(Alignment {
                        sync_z: z,
                        variant,
                        dihedral: d,
                        shift: (at % BINS, at / BINS),
                    });
                }
            }
        }
    }
    best
}

/// A folded tile's spectrum split into real and imaginary parts, with its
/// power per bin: computed once per flip, read once per template pair.
struct SplitSpectrum {
    re: Vec<f32>,
    im: Vec<f32>,
    power: Vec<f32>,
}

impl SplitSpectrum {
    fn new(spec: &[Complex32]) -> Self {
        SplitSpectrum {
            re: spec.iter().map(|c| c.re).collect(),
            im: spec.iter().map(|c| c.im).collect(),
            power: spec.iter().map(|c| c.norm_sqr()).collect(),
        }
    }
}

/// Writes into `out` the spectrum of the correlations of `spec` with the
/// pair's sync templates (the second in the imaginary part) and returns the
/// mean and mean square of each correlation over all shifts. By Parseval,
/// these come from the spectrum (DC bin; energy) and need no pass over the
/// result.
fn correlation_spectrum(
    spec: &SplitSpectrum,
    pair: &SyncPair,
    out: &mut Vec<Complex32>,
) -> [(f64, f64); 2] {
    out.clear();
    let [c_re, c_im] = &pair.combined;
    // The complex product from split parts (interleaved, the loop did not vectorise).
    out.extend(
        spec.re
            .iter()
            .zip(&spec.im)
            .zip(c_re.iter().zip(c_im))
            .map(|((&a, &b), (&c, &d))| Complex32::new(a * c - b * d, a * d + b * c)),
    );
    let mut energy = [0.0f64; 2];
    // Eight independent f32 sums per run (so the loop vectorises), f64
    // across runs (so 16,384 bins lose no precision that matters).
    const LANES: usize = 8;
    const RUN: usize = 32 * LANES;
    let [power_a, power_b] = &pair.power;
    let runs = spec
        .power
        .chunks(RUN)
        .zip(power_a.chunks(RUN).zip(power_b.chunks(RUN)));
    for (ps, (pa, pb)) in runs {
        let mut e = [[0.0f32; LANES]; 2];
        let lanes = ps
            .chunks_exact(LANES)
            .zip(pa.chunks_exact(LANES).zip(pb.chunks_exact(LANES)));
        for (ps, (pa, pb)) in lanes {
            for l in 0..LANES {
                e[0][l] += ps[l] * pa[l];
                e[1][l] += ps[l] * pb[l];
            }
        }
        for (total, lane) in energy.iter_mut().zip(&e) {
            *total += lane.iter().map(|&v| f64::from(v)).sum::<f64>();
        }
    }
    // The DC bins of both correlations are real, so they sit apart in out[0].
    let dc = out[0];
    [(f64::from(dc.re), energy[0]), (f64::from(dc.im), energy[1])]
}

/// The largest value of the real and of the imaginary part.
fn peaks(corr: &[Complex32]) -> [f32; 2] {
    // Lane-wise maxima (the loop vectorises), then across lanes.
    let mut lanes = [[f32::NEG_INFINITY; 4]; 2];
    let chunks = corr.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..4 {
            lanes[0][l] = if c[l].re > lanes[0][l] {
                c[l].re
            } else {
                lanes[0][l]
            };
            lanes[1][l] = if c[l].im > lanes[1][l] {
                c[l].im
            } else {
                lanes[1][l]
            };
        }
    }
    let mut max = lanes.map(|l| l.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)));
    for c in tail {
        max[0] = max[0].max(c.re);
        max[1] = max[1].max(c.im);
    }
    max
}

/// Soft value of every chip of the issued tile (row-major), from an aligned fold.
fn read_chips(folded: &[f32], al: &Alignment) -> Vec<f32> {
    let aligned = dihedral(folded, al.dihedral);
    let mut chips = vec![0.0f32; CHIPS];
    for (i, chip) in chips.iter_mut().enumerate() {
        let (cx, cy) = (i % TILE, i / TILE);
        for (a, b) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            let x = (2 * cx + a + al.shift.0) % BINS;
            let y = (2 * cy + b + al.shift.1) % BINS;
            *chip += aligned[y * BINS + x];
        }
    }
    chips
}

/// Mean residual per half-chip bin of the tile, over the whole plane.
fn fold(residual: &Plane, frame: &Frame) -> Vec<f32> {
    fold_rect(residual, frame, (0, 0, residual.width, residual.height))
}

/// One in the 32.32 fixed point of [`fold_rect`]'s bin coordinates.
const FIXED_ONE: f64 = 4_294_967_296.0;

/// Mean residual per half-chip bin of the tile, over the rectangle `(x0, y0, x1, y1)`.
fn fold_rect(residual: &Plane, frame: &Frame, rect: Rect) -> Vec<f32> {
    let (x0, y0, x1, y1) = rect;
    let w = residual.width;
    let bins = BINS as i64;
    // Fixed row blocks summed in order: the result is the same for any thread count.
    let rows: Vec<usize> = (y0..y1).collect();
    let partial: Vec<(Vec<f32>, Vec<u32>)> = rows
        .par_chunks(FOLD_ROWS)
        .map(|block| {
            let (mut sum, mut cnt) = (vec![0.0f32; BINS * BINS], vec![0u32; BINS * BINS]);
            // Floor by truncation: `f64::floor` is a libm call without SSE4.1.
            let bin = |t: f64| {
                let i = t as i64;
                let i = if (i as f64) > t { i - 1 } else { i };
                // rem_euclid for a power of two, without a division.
                (i & (bins - 1)) as usize
            };
            let m = &frame.m;
            let affine = m[6] == 0.0 && m[7] == 0.0 && m[8] == 1.0;
            for &y in block {
                let yf = y as f64 + 0.5;
                let row = &residual.data[y * w + x0..y * w + x1];
                let mut add = |ci: f64, cj: f64, r: f32| {
                    let (bx, by) = (bin(2.0 * ci), bin(2.0 * cj));
                    sum[by * BINS + bx] += r;
                    cnt[by * BINS + bx] += 1;
                };
                if affine {
                    // Along a row an affine frame moves by a constant step:
                    // bin coordinates in 32.32 fixed point, whose integer
                    // part wraps modulo 2³² (a multiple of BINS), so the
                    // low bits are the bin, floored, with no float rounding.
                    let (ci0, cj0) = frame.map(x0 as f64 + 0.5, yf);
                    let fixed = |t: f64| (t * 2.0 * FIXED_ONE) as i64;
                    let (mut fx, mut fy) = (fixed(ci0), fixed(cj0));
                    let (sx, sy) = (fixed(m[0]), fixed(m[3]));
                    for &r in row {
                        let bx = ((fx >> 32) & (bins - 1)) as usize;
                        let by = ((fy >> 32) & (bins - 1)) as usize;
                        sum[by * BINS + bx] += r;
                        cnt[by * BINS + bx] += 1;
                        fx = fx.wrapping_add(sx);
                        fy = fy.wrapping_add(sy);
                    }
                } else {
                    for (x, &r) in row.iter().enumerate() {
                        let (ci, cj) = frame.map((x + x0) as f64 + 0.5, yf);
                        add(ci, cj, r);
                    }
                }
            }
            (sum, cnt)
        })
        .collect();
    let mut sum = vec![0.0f32; BINS * BINS];
    let mut cnt = vec![0u32; BINS * BINS];
    for (s, c) in partial {
        for i in 0..BINS * BINS {
            sum[i] += s[i];
            cnt[i] += c[i];
        }
    }
    sum.iter()
        .zip(&cnt)
        .map(|(&s, &c)| if c > 0 { s / c as f32 } else { 0.0 })
        .collect()
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

/// The geometry of a reading, in leak pixels: the local affine map at the
/// leak's centre from the issued tile's axes, and the full homography.
fn geometry_of(reading: &Reading, prepared: &Prepared) -> Geometry {
    let r = &prepared.residual;
    let s = 1.0 / prepared.work_scale;
    // Issued tile axis e (in aligned chips) → folded chips through the flip.
    let d = reading.alignment.dihedral;
    let to_folded = |e: [f64; 2]| {
        let (mut x, mut y) = if d & 4 != 0 {
            (e[1], e[0])
        } else {
            (e[0], e[1])
        };
        if d & 1 != 0 {
            x = -x;
        }
        if d & 2 != 0 {
            y = -y;
        }
        [x, y]
    };
    let chip_to_px =
        invert3(&reading.frame.m, 1e-12).unwrap_or([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    let project = |c: [f64; 2]| {
        let h = &chip_to_px;
        let w = h[6] * c[0] + h[7] * c[1] + h[8];
        [
            (h[0] * c[0] + h[1] * c[1] + h[2]) / w * s,
            (h[3] * c[0] + h[4] * c[1] + h[5]) / w * s,
        ]
    };
    let centre = reading
        .frame
        .map(r.width as f64 / 2.0, r.height as f64 / 2.0);
    let at = |e: [f64; 2]| {
        let f = to_folded(e);
        let a = project([centre.0 + f[0], centre.1 + f[1]]);
        let b = project([centre.0, centre.1]);
        [a[0] - b[0], a[1] - b[1]]
    };
    let (ax, ay) = (at([1.0, 0.0]), at([0.0, 1.0]));
    let det = ax[0] * ay[1] - ax[1] * ay[0];
    let cos = (ax[0] * ay[0] + ax[1] * ay[1]) / (norm2(ax) * norm2(ay));
    // Tile origin: aligned bin `shift` is issued chip (0,0); find it in folded chips, project.
    let (sx, sy) = (
        reading.alignment.shift.0 as f64 / 2.0,
        reading.alignment.shift.1 as f64 / 2.0,
    );
    let o = to_folded([sx, sy]);
    let origin = project(o);
    let perspective = reading.frame.m[6] != 0.0 || reading.frame.m[7] != 0.0;
    Geometry {
        px_per_chip: [norm2(ax), norm2(ay)],
        rotation_deg: (-ax[1]).atan2(ax[0]).to_degrees(),
        mirrored: det < 0.0,
        shear_deg: cos.clamp(-1.0, 1.0).acos().to_degrees() - 90.0,
        origin_px: origin,
        chip_to_leak: [ax[0], ay[0], ax[1], ay[1]],
        homography: perspective.then(|| {
            let sc = [s, 0.0, 0.0, 0.0, s, 0.0, 0.0, 0.0, 1.0];
            mul3(&sc, &chip_to_px)
        }),
    }
}

/// Sync evidence needed before an informed reading trusts the sync chips'
/// shift over the registration's (a wrong shift from noise stays below it:
/// the maximum over 128² shifts of one variant and flip is ≈ 4.3 σ).
const INFORMED_RESYNC_Z: f64 = 5.5;

/// What an informed reading found: the best hypothesis on a residual that
/// is already on the issued grid.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GridReading {
    /// Verify-chip score of the best hypothesis.
    pub z: f64,
    /// Its serial.
    pub serial: u32,
    /// Whether the serial came from the known copies rather than blind decoding.
    pub from_ledger: bool,
    /// Sync correlation at the best shift, in standard deviations.
    pub sync_z: f64,
    /// Shift (in half-chip bins) the sync chips asked for; (0, 0) when the
    /// registration was kept as is.
    pub shift_bins: (usize, usize),
}

/// Informed reading: `residual` is laid on the issued copy's own chip grid
/// (chip (0, 0) at `origin_px`, `chip_px` pixels per chip on each axis), so
/// no lattice, flip or variant search is needed. Folds it, lets the sync
/// chips correct the shift when they clearly disagree with the
/// registration, decodes the serial from the data chips and scores it, and
/// every known copy of `variant`, on the verify chips. Neither the fold nor
/// the shift looks at the verify chips, so the bound of [`crate::stats`]
/// holds for each hypothesis scored here: one blind serial plus the copies.
pub(crate) fn read_on_grid(
    key: &SecretKey,
    residual: &Plane,
    chip_px: [f64; 2],
    origin_px: [f64; 2],
    variant: u32,
    known: &[KnownCopy],
) -> GridReading {
    let frame = Frame {
        m: [
            1.0 / chip_px[0],
            0.0,
            -origin_px[0] / chip_px[0],
            0.0,
            1.0 / chip_px[1],
            -origin_px[1] / chip_px[1],
            0.0,
            0.0,
            1.0,
        ],
    };
    let folded = fold(residual, &frame);
    let layout = Layout::new(key, variant);
    let sync = SyncPair::new(&[(variant, &sync_spectrum(&layout))]);
    let mut alignment = Alignment {
        sync_z: 0.0,
        variant,
        dihedral: 0,
        shift: (0, 0),
    };
    if let Some(found) = align(&folded, std::slice::from_ref(&sync), Some(0)) {
        alignment.sync_z = found.sync_z;
        if found.sync_z >= INFORMED_RESYNC_Z {
            alignment.shift = found.shift;
        }
    }
    let chips = read_chips(&folded, &alignment);
    let verify: Vec<f32> = layout
        .verify_idx
        .iter()
        .map(|&i| chips[i as usize])
        .collect();
    let serial = decode_serial(&layout, &chips);
    let z = stats::normalized_correlation(&Layout::verify_signs(key, variant, serial), &verify);
    let mut best = GridReading {
        z,
        serial,
        from_ledger: false,
        sync_z: alignment.sync_z,
        shift_bins: alignment.shift,
    };
    for copy in known.iter().filter(|c| c.variant == variant) {
        let z = stats::normalized_correlation(
            &Layout::verify_signs(key, copy.variant, copy.serial),
            &verify,
        );
        if z > best.z {
            best.z = z;
            best.serial = copy.serial;
            best.from_ledger = true;
        }
    }
    best
}

/// Hypotheses [`detect_luma`] charges with these options (their known
/// copies and issued chip sizes), fixed before it runs: a caller that may
/// also test other hypotheses on the same leak (informed mode) adds this to
/// its own charge.
pub fn hypotheses_charged(options: &DetectOptions) -> u64 {
    options.max_readings() as u64 * (1 + options.known_copies.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_chip_sizes_count_once_within_a_period_step_and_their_charge_is_capped() {
        let options = DetectOptions {
            known_copies: vec![KnownCopy {
                variant: 0,
                serial: 1,
            }],
            issued_chip_px: vec![4.04, 3.0, 5.0, f64::NAN, 3.02, 4.0, -1.0],
        };
        assert_eq!(options.issued_chips(), vec![3.0, 4.0, 5.0]);
        assert_eq!(
            hypotheses_charged(&options),
            2 * (MAX_READINGS + 3 * (1 + REFINE_ROUNDS)) as u64
        );
        let many = DetectOptions {
            issued_chip_px: (0..40).map(|i| 3.0 * 1.05f64.powi(i)).collect(),
            ..DetectOptions::default()
        };
        assert_eq!(many.issued_chips().len(), 40);
        assert_eq!(
            hypotheses_charged(&many),
            (MAX_READINGS + MAX_ISSUED_CHIPS * (1 + REFINE_ROUNDS)) as u64
        );
        assert_eq!(
            hypotheses_charged(&DetectOptions::default()),
            MAX_READINGS as u64
        );
    }

    #[test]
    fn a_tilt_fixes_the_leak_centre_and_its_inverse_undoes_it() {
        let (w, h) = (300, 200);
        let t = Tilt { g: 0.15, h: -0.075 };
        let (there, back) = (t.view_to_leak(w, h), t.leak_to_view(w, h));
        let (cx, cy) = there.map(150.0, 100.0).unwrap();
        assert!((cx - 150.0).abs() < 1e-9 && (cy - 100.0).abs() < 1e-9);
        for (x, y) in [(0.0, 0.0), (299.0, 10.0), (37.5, 180.0)] {
            let (lx, ly) = there.map(x, y).unwrap();
            assert!((lx - x).abs() > 1.0, "a tilt moves the sides");
            let (vx, vy) = back.map(lx, ly).unwrap();
            assert!((vx - x).abs() < 1e-9 && (vy - y).abs() < 1e-9, "({x}, {y})");
        }
    }

    #[test]
    fn a_tilted_view_samples_the_residual_where_the_tilt_sends_each_pixel() {
        let (w, h) = (300, 200);
        let residual = Plane {
            width: w,
            height: h,
            data: (0..w * h).map(|i| ((i % w) + 3 * (i / w)) as f32).collect(),
        };
        let t = Tilt { g: 0.15, h: -0.075 };
        let there = t.view_to_leak(w, h);
        let view = t.view(&residual, (0, 0, w, h));
        for (x, y) in [(40, 30), (150, 100), (260, 170)] {
            let (lx, ly) = there.map(x as f64 + 0.5, y as f64 + 0.5).unwrap();
            // Pixel centres at i + 0.5: the ramp's value there is i.
            let want = (lx - 0.5) + 3.0 * (ly - 0.5);
            let got = f64::from(view.data[y * w + x]);
            assert!((got - want).abs() < 1e-2, "({x}, {y}): {got} vs {want}");
        }
        let upright = Tilt { g: 0.0, h: 0.0 }.view(&residual, (10, 20, 50, 60));
        assert_eq!(upright.data, residual.crop((10, 20, 50, 60)).data);
    }

    #[test]
    fn a_lattice_with_one_true_side_is_completed_into_the_square_tile() {
        // One side 100 px at 30°, the other a wrong combination (2.25 long).
        let side = [
            100.0 * 30f64.to_radians().cos(),
            100.0 * 30f64.to_radians().sin(),
        ];
        let turned = [-side[1], side[0]];
        let half_open = Lattice {
            u: side,
            v: [
                2.0 * turned[0] + side[0] * 0.5,
                2.0 * turned[1] + side[1] * 0.5,
            ],
            score: 1.0,
        };
        let tile = Lattice {
            u: side,
            v: turned,
            score: 0.0,
        };
        let squares = square_completions(&[half_open], &[half_open]);
        assert!(
            squares
                .iter()
                .any(|l| sync::same_lattice(l, &tile, sync::SAME_LATTICE_PX)),
            "{squares:?}"
        );
        // Known already (the autocorrelation found it): not tried again, and
        // a mirrored orientation of the same side is the same lattice.
        let mirrored = Lattice {
            u: side,
            v: [-turned[0], -turned[1]],
            score: 0.0,
        };
        let squares = square_completions(&[half_open, mirrored], &[half_open, tile]);
        assert!(
            !squares
                .iter()
                .any(|l| sync::same_lattice(l, &tile, sync::SAME_LATTICE_PX)),
            "{squares:?}"
        );
        assert_eq!(
            squares.len(),
            1,
            "only the wrong side's square: {squares:?}"
        );
    }
}
