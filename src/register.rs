//! Registration: align a leak onto the archived original it was made from.
//!
//! Informed detection subtracts the original from the leak, so it needs to
//! know, for every pixel of the original, where it landed in the leak: a
//! homography from original pixels to leak pixels. It is found in two steps,
//! both on *structure* images (blurred, locally zero-mean, divided by the
//! local contrast), so that tone curves, gamma, vignetting and inverted
//! black levels matter little:
//!
//! 1. **Coarse similarity search.** Rotation candidates come from the
//!    histograms of gradient directions (a rotation shifts them, a mirror
//!    reverses them; cropping and scaling leave them alone), always
//!    including "no rotation". For each rotation, mirror and each scale of a
//!    geometric grid, the leak is resampled into a 128-px thumbnail of the
//!    original and phase-correlated with it; each of the surface's few
//!    highest peaks is a translation. The best few (scored by the peak's
//!    height over the correlation surface) go on.
//! 2. **Dense refinement.** Levenberg–Marquardt on the eight homography
//!    parameters (a similarity or affine map only on the levels where the
//!    leak spans too few pixels to pin eight down), coarse to fine
//!    (128 → 1024 px), minimising a Huber cost
//!    of the difference between the structure images, so overlaid text, a
//!    stamp or a screen's bezel count as outliers. The candidate with the
//!    highest final correlation wins.
//!
//! Knows nothing of keys or marks: the result depends on the two images
//! only, which is why [`crate::informed`] may use it without charging the
//! false-alarm statistic for anything but the registrations it reads.
//! There is no usable feature detector among our dependencies (and
//! `akaze` does not build on stable), so this is written out by hand.

use rayon::prelude::*;
use rustfft::num_complex::Complex32;
use serde::Serialize;

use crate::fft::Fft2;
use crate::plane::Plane;

/// A projective map from original pixel coordinates to leak pixel
/// coordinates, row-major 3×3 with `h[8] = 1`. Coordinates are continuous:
/// pixel `(i, j)` covers `[i, i+1) × [j, j+1)`, its centre is `(i+0.5, j+0.5)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Homography(pub [f64; 9]);

impl Homography {
    /// The identity map.
    pub const IDENTITY: Homography = Homography([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);

    /// Maps `(x, y)`; `None` where the point goes to infinity or behind the camera.
    #[inline]
    pub fn map(&self, x: f64, y: f64) -> Option<(f64, f64)> {
        let h = &self.0;
        let w = h[6] * x + h[7] * y + h[8];
        if w <= 1e-9 {
            return None;
        }
        Some((
            (h[0] * x + h[1] * y + h[2]) / w,
            (h[3] * x + h[4] * y + h[5]) / w,
        ))
    }

    /// The inverse map, if the matrix is invertible.
    pub fn inverse(&self) -> Option<Homography> {
        crate::detect::invert3(&self.0, 1e-15).map(|inv| Homography(inv).normalized())
    }

    /// `self ∘ other`: first `other`, then `self`.
    pub fn then_after(&self, other: &Homography) -> Homography {
        let (a, b) = (&self.0, &other.0);
        let mut out = [0.0; 9];
        for r in 0..3 {
            for c in 0..3 {
                out[r * 3 + c] = (0..3).map(|k| a[r * 3 + k] * b[k * 3 + c]).sum();
            }
        }
        Homography(out).normalized()
    }

    /// Scaled so that `h[8] = 1` (unchanged when `h[8]` is zero).
    fn normalized(self) -> Homography {
        let s = self.0[8];
        if s.abs() < 1e-300 {
            self
        } else {
            Homography(self.0.map(|v| v / s))
        }
    }

    /// Axis scaling `(x, y) → (sx·x, sy·y)`.
    fn scaling(sx: f64, sy: f64) -> Homography {
        Homography([sx, 0.0, 0.0, 0.0, sy, 0.0, 0.0, 0.0, 1.0])
    }

    /// The map's Jacobian (leak px per original px) at `(x, y)`: `[du/dx, du/dy, dv/dx, dv/dy]`.
    pub fn jacobian(&self, x: f64, y: f64) -> [f64; 4] {
        let h = &self.0;
        let w = h[6] * x + h[7] * y + h[8];
        let u = (h[0] * x + h[1] * y + h[2]) / w;
        let v = (h[3] * x + h[4] * y + h[5]) / w;
        [
            (h[0] - u * h[6]) / w,
            (h[1] - u * h[7]) / w,
            (h[3] - v * h[6]) / w,
            (h[4] - v * h[7]) / w,
        ]
    }
}

/// Where a leak sits on its original.
#[derive(Clone, Debug, Serialize)]
pub struct Registration {
    /// Original pixel coordinates → leak pixel coordinates.
    pub homography: Homography,
    /// The part of the original the leak shows, `[x0, y0, x1, y1]` in
    /// original pixels, end-exclusive.
    pub covered: [u32; 4],
    /// Correlation of the two structure images over the covered part (less
    /// a thin band along the original's border, see `BORDER_BAND`) after
    /// refinement (1 = identical structure; unrelated images give ≈ 0).
    pub similarity: f64,
    /// Coarse candidates that were refined.
    pub candidates: usize,
}

/// Long side of the original's thumbnail for the coarse search, pixels:
/// a crop to 10 % of the area still spans ~40 px of it; larger makes the
/// search (one FFT pair per rotation × scale) slower.
const COARSE_PX: usize = 128;
/// Scales at which the leak spans less than this share of the original's
/// long side are searched again on a thumbnail twice as large.
const SMALL_PART: f64 = 0.5;
/// Extra candidates refined from that second search.
const SMALL_PART_CANDIDATES: usize = 2;
/// Scale range searched, leak pixels per original pixel: a downscale to
/// 1/8 up to an enlargement ×2.5.
const SCALE_MIN: f64 = 0.12;
const SCALE_MAX: f64 = 2.5;
/// Ratio between neighbouring scales of the grid: 8 % keeps the edge of a
/// 128-px thumbnail within ~5 px, inside the phase-correlation peak.
const SCALE_STEP: f64 = 1.1;
/// Rotation peaks kept from the gradient-direction histograms, distinct
/// modulo a quarter turn (each is searched at its four quarter turns).
const ROTATION_PEAKS: usize = 2;
/// Peaks kept from each correlation surface. On a small crop of a dark
/// screenshot (the devset UI, 10 % of the area) the true shift is not the
/// highest peak even at the right scale: the toolbars' dense edges
/// correlate more with any canvas than the flat dialog it shows. With the
/// best peak alone it was never refined and the crop did not register.
const PEAKS: usize = 4;
/// Coarse candidates refined densely.
const REFINE_CANDIDATES: usize = 4;
/// Long side of the finest refinement level, pixels.
const FINE_PX: usize = 1024;
/// Points used per refinement iteration (a regular subsample).
const REFINE_POINTS: usize = 60_000;
/// Band along the original's border, level pixels, left out of the
/// refinement and its correlation. A leak padded with white (a print's
/// paper, a perspective warp's fill) has a strong edge along the image's
/// outline that the original, whose borders are clamped, lacks: the edge
/// reaches the box radius plus the blur (about 8 px) into the image. On a
/// dark screenshot whose own edges are faint that edge outweighs the
/// content: the dark-theme devset UI under 20 % perspective correlates 0.15
/// at the true map with it and 0.93 without 8 px, and its Huber cost was
/// lowest 187 px away from the truth. Content in the band still counts on
/// the finer levels, where 8 px is under 1 % of the side.
const BORDER_BAND: usize = 8;
/// Below this long side on a refinement level (level pixels) the leak is
/// fitted with a similarity only, and below the second with an affine map;
/// the full homography from there on. A tenth of the devset's sparse
/// line drawing (the T-part) spans 40 px of the 128-px level: fitted with
/// eight parameters there it slid into a strong false perspective
/// (correlation 0.96 on that level) from every start, the true map
/// included, and ended 26 px off; with this schedule the sweep reads it
/// (-log10 p 11.9 → 29.3). A whole leak spans 100–128 px of that level,
/// so perspective is still fitted from the first level.
const SIMILARITY_BELOW_PX: f64 = 48.0;
const AFFINE_BELOW_PX: f64 = 96.0;
/// Huber threshold on the structure difference (unit local contrast).
const HUBER: f64 = 0.5;
/// Blur of the structure images, level pixels: wide enough to wash out the
/// mark's chips at the finest level, so the mark does not pull the fit.
const STRUCTURE_BLUR: f32 = 1.5;
/// Extra blur of the coarsest level's first pass, level pixels.
const WIDE_BLUR: f32 = 2.5;
/// Refinement iterations on the coarse levels (cheap, wide basin) and the fine ones.
const COARSE_ITERATIONS: usize = 30;
const FINE_ITERATIONS: usize = 10;
/// Below this final similarity the registration is rejected.
pub const MIN_SIMILARITY: f64 = 0.2;

/// Aligns `leak` onto `original` (both luma on a 0–255 scale).
///
/// `None` when no candidate reaches [`MIN_SIMILARITY`] (the leak is not
/// of this original, or too little of it is left) or an image is smaller
/// than 16 px.
pub fn register(leak: &Plane, original: &Plane) -> Option<Registration> {
    if leak.width.min(leak.height) < 16 || original.width.min(original.height) < 16 {
        return None;
    }
    let o_pyr = Pyramid::new(original);
    let l_pyr = Pyramid::new(leak);
    let mut coarse = Vec::new();
    let all = coarse_candidates(&l_pyr, &o_pyr, COARSE_PX, |_| true);
    pick_distinct(&all, &mut coarse, REFINE_CANDIDATES, o_pyr.full, l_pyr.full);
    // Most leaks are not turned (a photo is held roughly level): the best
    // upright candidate is always refined, however many turned ones on a
    // sparse drawing's right angles outscore it.
    let upright: Vec<(f64, Homography)> = all
        .iter()
        .find(|(_, h)| is_upright(h))
        .into_iter()
        .cloned()
        .collect();
    let limit = coarse.len() + 1;
    pick_distinct(&upright, &mut coarse, limit, o_pyr.full, l_pyr.full);
    // A leak showing a small part of the original is only a few dozen
    // pixels of the coarse thumbnail: search those scales again at twice
    // the resolution, and refine its best too.
    let (l_long, o_long) = (
        leak.width.max(leak.height) as f64,
        original.width.max(original.height) as f64,
    );
    let small = coarse_candidates(&l_pyr, &o_pyr, 2 * COARSE_PX, |s| {
        l_long / s < SMALL_PART * o_long
    });
    let limit = coarse.len() + SMALL_PART_CANDIDATES;
    pick_distinct(&small, &mut coarse, limit, o_pyr.full, l_pyr.full);
    let candidates = coarse.len();
    // Every candidate on the coarse levels, the best one on the fine levels.
    let refined: Vec<(Homography, f64)> = coarse
        .par_iter()
        .filter_map(|h| refine(&l_pyr, &o_pyr, *h, COARSE_PX, 2 * COARSE_PX))
        .collect();
    let (start, _) = refined.into_iter().max_by(|a, b| a.1.total_cmp(&b.1))?;
    let (homography, similarity) =
        refine(&l_pyr, &o_pyr, start, 4 * COARSE_PX, FINE_PX).filter(|r| r.1 >= MIN_SIMILARITY)?;
    let covered = covered_box(&homography, leak, original)?;
    Some(Registration {
        homography,
        covered,
        similarity,
        candidates,
    })
}

/// Locally normalised structure image: blur by `sigma`, subtract the local
/// mean, divide by the local contrast (plus a floor, so flat paper stays ≈ 0), clip.
fn structure(p: &Plane, sigma: f32) -> Plane {
    const RADIUS: usize = 4;
    /// Contrast floor, levels: below it a region counts as flat.
    const FLOOR: f32 = 8.0;
    let s = p.gaussian(sigma);
    let mean = s.box_mean(RADIUS);
    let d: Vec<f32> = s.data.iter().zip(&mean.data).map(|(a, b)| a - b).collect();
    let var = Plane {
        width: p.width,
        height: p.height,
        data: d.iter().map(|v| v * v).collect(),
    }
    .box_mean(RADIUS);
    Plane {
        width: p.width,
        height: p.height,
        data: d
            .iter()
            .zip(&var.data)
            .map(|(&v, &q)| (v / (q.max(0.0).sqrt() + FLOOR)).clamp(-3.0, 3.0))
            .collect(),
    }
}

/// One level of a pyramid: the structure image and its scale per axis
/// relative to the full-resolution plane.
struct Level {
    img: Plane,
    scale: [f64; 2],
}

/// Halving pyramid of structure images, finest first (the finest is at
/// most [`FINE_PX`] on the long side).
struct Pyramid {
    levels: Vec<Level>,
    full: [usize; 2],
}

impl Pyramid {
    fn new(p: &Plane) -> Pyramid {
        let long = p.width.max(p.height);
        let mut levels = Vec::new();
        let mut k = 1.0f64;
        if long > FINE_PX {
            k = FINE_PX as f64 / long as f64;
        }
        loop {
            let w = ((p.width as f64 * k).round() as usize).max(1);
            let h = ((p.height as f64 * k).round() as usize).max(1);
            let raw = if w == p.width && h == p.height {
                p.clone()
            } else {
                p.resize_area(w, h)
            };
            levels.push(Level {
                img: structure(&raw, STRUCTURE_BLUR),
                scale: [w as f64 / p.width as f64, h as f64 / p.height as f64],
            });
            if w.max(h) <= COARSE_PX / 2 || w.min(h) <= 8 {
                break;
            }
            k *= 0.5;
        }
        Pyramid {
            levels,
            full: [p.width, p.height],
        }
    }

    /// The finest level with at most `px_per_unit` × 1.5 of its pixels per
    /// unit (`px_per_unit` = pixels of the full plane per pixel of the other image).
    fn level_for(&self, full_px_per_unit: f64) -> &Level {
        self.levels
            .iter()
            .find(|l| l.scale[0] * full_px_per_unit <= 1.5)
            .unwrap_or_else(|| self.levels.last().expect("a pyramid has a level"))
    }

    /// The level whose long side is closest to `px` (never larger than 1.5 × px).
    fn level_near(&self, px: usize) -> &Level {
        let long = self.full[0].max(self.full[1]) as f64;
        self.level_for(long / px as f64)
    }
}

/// Bilinear sample at continuous coordinates (pixel centres at `i + 0.5`);
/// `None` outside the plane.
#[inline]
pub(crate) fn sample(p: &Plane, u: f64, v: f64) -> Option<f32> {
    let (x, y) = (u - 0.5, v - 0.5);
    if !(x >= 0.0 && y >= 0.0) {
        return None;
    }
    let (x0, y0) = (x as usize, y as usize);
    if x0 + 1 >= p.width || y0 + 1 >= p.height {
        return None;
    }
    let (fx, fy) = ((x - x0 as f64) as f32, (y - y0 as f64) as f32);
    let i = y0 * p.width + x0;
    let d = &p.data;
    let top = d[i] + fx * (d[i + 1] - d[i]);
    let bottom = d[i + p.width] + fx * (d[i + p.width + 1] - d[i + p.width]);
    Some(top + fy * (bottom - top))
}

/// [`sample`] with the gradient (per unit of `u`, `v`).
#[inline]
fn sample_grad(p: &Plane, u: f64, v: f64) -> Option<(f32, f32, f32)> {
    let (x, y) = (u - 0.5, v - 0.5);
    if !(x >= 0.0 && y >= 0.0) {
        return None;
    }
    let (x0, y0) = (x as usize, y as usize);
    if x0 + 1 >= p.width || y0 + 1 >= p.height {
        return None;
    }
    let (fx, fy) = ((x - x0 as f64) as f32, (y - y0 as f64) as f32);
    let i = y0 * p.width + x0;
    let d = &p.data;
    let (a, b, c, e) = (d[i], d[i + 1], d[i + p.width], d[i + p.width + 1]);
    let top = a + fx * (b - a);
    let bottom = c + fx * (e - c);
    let gx = (b - a) * (1.0 - fy) + (e - c) * fy;
    let gy = bottom - top;
    Some((top + fy * (bottom - top), gx, gy))
}

/// Histogram of gradient directions modulo 180°, weighted by magnitude.
fn direction_histogram(p: &Plane) -> Vec<f64> {
    const BINS: usize = 90;
    let mut h = vec![0.0f64; BINS];
    for y in 1..p.height.saturating_sub(1) {
        for x in 1..p.width - 1 {
            let i = y * p.width + x;
            let gx = f64::from(p.data[i + 1] - p.data[i - 1]);
            let gy = f64::from(p.data[i + p.width] - p.data[i - p.width]);
            let m = (gx * gx + gy * gy).sqrt();
            if m < 1e-3 {
                continue;
            }
            let a = gy.atan2(gx).rem_euclid(std::f64::consts::PI);
            let b = ((a / std::f64::consts::PI * BINS as f64) as usize).min(BINS - 1);
            h[b] += m;
        }
    }
    h
}

/// Rotation candidates `(radians, mirrored)`: peaks of the circular
/// correlation of the gradient-direction histograms, each with its four
/// quarter turns; "no rotation, not mirrored" always first.
fn rotation_candidates(leak: &Plane, original: &Plane) -> Vec<(f64, bool)> {
    let hl = direction_histogram(leak);
    let ho = direction_histogram(original);
    let n = ho.len();
    let mut peaks: Vec<(f64, usize, bool)> = Vec::new();
    for mirrored in [false, true] {
        // Mirroring (x → −x) maps a direction φ to π − φ.
        let hom: Vec<f64> = (0..n)
            .map(|i| if mirrored { ho[(n - i) % n] } else { ho[i] })
            .collect();
        let c: Vec<f64> = (0..n)
            .map(|k| (0..n).map(|i| hom[i] * hl[(i + k) % n]).sum())
            .collect();
        for k in 0..n {
            if c[k] >= c[(k + 1) % n] && c[k] > c[(k + n - 1) % n] {
                peaks.push((c[k], k, mirrored));
            }
        }
    }
    peaks.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    // Drawings and screens are full of right angles, so a turn θ and
    // θ + 90° give nearly the same histogram peak: each peak stands for its
    // four quarter turns, and a peak a quarter turn from a kept one is the same.
    let quarter = n / 2;
    let mut kept: Vec<(usize, bool)> = Vec::new();
    for &(_, k, mirrored) in &peaks {
        if kept.len() == ROTATION_PEAKS {
            break;
        }
        let same = |&(j, m): &(usize, bool)| {
            let d = (k + n - j) % quarter;
            m == mirrored && d.min(quarter - d) <= 1
        };
        if !kept.iter().any(same) {
            kept.push((k, mirrored));
        }
    }
    let mut out = vec![(0.0, false)];
    for (k, mirrored) in kept {
        let base = k as f64 * std::f64::consts::PI / n as f64;
        for turn in 0..4 {
            let theta = base + f64::from(turn) * std::f64::consts::FRAC_PI_2;
            let dup = out.iter().any(|&(t, m)| {
                m == mirrored && {
                    let d = (t - theta).rem_euclid(std::f64::consts::TAU);
                    d.min(std::f64::consts::TAU - d) < 0.05
                }
            });
            if !dup {
                out.push((theta, mirrored));
            }
        }
    }
    out
}

/// The coarse similarity candidates (original → leak) with their scores,
/// from a search on a `thumb_px` thumbnail over the scales `keep` accepts.
fn coarse_candidates(
    l_pyr: &Pyramid,
    o_pyr: &Pyramid,
    thumb_px: usize,
    keep: impl Fn(f64) -> bool + Sync,
) -> Vec<(f64, Homography)> {
    let o_level = o_pyr.level_near(thumb_px);
    let ol = &o_level.img;
    let [ax, ay] = o_level.scale;
    let n = 2 * thumb_px;
    let fft = Fft2::new(n, n);
    let mut fo = vec![Complex32::new(0.0, 0.0); n * n];
    for y in 0..ol.height.min(n) {
        for x in 0..ol.width.min(n) {
            fo[y * n + x] = Complex32::new(ol.data[y * ol.width + x], 0.0);
        }
    }
    fft.forward(&mut fo);

    let rotations = rotation_candidates(&l_pyr.level_near(256).img, &o_pyr.level_near(256).img);
    let steps = ((SCALE_MAX / SCALE_MIN).ln() / SCALE_STEP.ln()).ceil() as usize;
    let grid: Vec<(f64, bool, f64)> = rotations
        .iter()
        .flat_map(|&(t, m)| (0..=steps).map(move |k| (t, m, SCALE_MIN * SCALE_STEP.powi(k as i32))))
        .filter(|g| keep(g.2))
        .collect();
    let (lw, lh) = (l_pyr.full[0] as f64, l_pyr.full[1] as f64);
    let mut scored: Vec<(f64, Homography)> = grid
        .par_iter()
        .filter_map(|&(theta, mirrored, s)| -> Option<Vec<(f64, Homography)>> {
            let (sin, cos) = theta.sin_cos();
            let mx = if mirrored { -1.0 } else { 1.0 };
            // A = s·R(θ)·M, original → leak (before translation).
            let a = [s * cos * mx, -s * sin, s * sin * mx, s * cos];
            let det = a[0] * a[3] - a[1] * a[2];
            let ainv = [a[3] / det, -a[1] / det, -a[2] / det, a[0] / det];
            // The leak's corners in thumbnail coordinates.
            let corners = [(0.0, 0.0), (lw, 0.0), (0.0, lh), (lw, lh)].map(|(u, v)| {
                (
                    (ainv[0] * u + ainv[1] * v) * ax,
                    (ainv[2] * u + ainv[3] * v) * ay,
                )
            });
            let (x0, x1) = corners.iter().fold((f64::MAX, f64::MIN), |acc, c| {
                (acc.0.min(c.0), acc.1.max(c.0))
            });
            let (y0, y1) = corners.iter().fold((f64::MAX, f64::MIN), |acc, c| {
                (acc.0.min(c.1), acc.1.max(c.1))
            });
            let cw = ((x1 - x0).ceil() as usize).min(thumb_px);
            let ch = ((y1 - y0).ceil() as usize).min(thumb_px);
            if cw < 8 || ch < 8 {
                return None;
            }
            let origin = (
                (x0 + x1) / 2.0 - cw as f64 / 2.0,
                (y0 + y1) / 2.0 - ch as f64 / 2.0,
            );
            let level = l_pyr.level_for(s / ax);
            let [bx, by] = level.scale;
            let mut canvas = vec![Complex32::new(0.0, 0.0); n * n];
            let mut sum = 0.0f32;
            let mut count = 0usize;
            for j in 0..ch {
                for i in 0..cw {
                    let tx = (origin.0 + i as f64 + 0.5) / ax;
                    let ty = (origin.1 + j as f64 + 0.5) / ay;
                    let u = (a[0] * tx + a[1] * ty) * bx;
                    let v = (a[2] * tx + a[3] * ty) * by;
                    if let Some(val) = sample(&level.img, u, v) {
                        canvas[j * n + i] = Complex32::new(val, 0.0);
                        sum += val;
                        count += 1;
                    }
                }
            }
            if count < 64 {
                return None;
            }
            let mean = sum / count as f32;
            for j in 0..ch {
                for c in &mut canvas[j * n..j * n + cw] {
                    if c.re != 0.0 {
                        c.re -= mean;
                    }
                }
            }
            fft.forward(&mut canvas);
            for (c, o) in canvas.iter_mut().zip(&fo) {
                let p = o * c.conj();
                // Half-whitened: sharper peaks than plain correlation, less
                // noise-driven than phase-only correlation.
                *c = p / (p.norm().sqrt() + 1e-6);
            }
            fft.inverse(&mut canvas);
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for c in &canvas {
                s1 += f64::from(c.re);
                s2 += f64::from(c.re) * f64::from(c.re);
            }
            let nn = (n * n) as f64;
            let sd = (s2 / nn - (s1 / nn).powi(2)).max(1e-30).sqrt();
            let wrap = |d: usize| {
                if d >= n / 2 {
                    d as f64 - n as f64
                } else {
                    d as f64
                }
            };
            let found: Vec<(f64, Homography)> = top_peaks(&canvas, n, PEAKS)
                .into_iter()
                .map(|(at, value)| {
                    let z = (f64::from(value) - s1 / nn) / sd;
                    let (dx, dy) = (wrap(at % n), wrap(at / n));
                    // Canvas pixel q sits at thumbnail q + d, not at origin + q:
                    // t = −A·D⁻¹·(d − origin).
                    let (ex, ey) = ((dx - origin.0) / ax, (dy - origin.1) / ay);
                    let t = (-(a[0] * ex + a[1] * ey), -(a[2] * ex + a[3] * ey));
                    (
                        z,
                        Homography([a[0], a[1], t.0, a[2], a[3], t.1, 0.0, 0.0, 1.0]),
                    )
                })
                .collect();
            Some(found)
        })
        .flatten()
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored
}

/// The `k` highest local maxima (over the 3 × 3 neighbourhood, wrapping
/// round) of a correlation surface's real part: `(index, value)`, best first.
fn top_peaks(surface: &[Complex32], n: usize, k: usize) -> Vec<(usize, f32)> {
    let mut top: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
    for (i, c) in surface.iter().enumerate() {
        let r = c.re;
        if top.len() == k && r <= top[k - 1].1 {
            continue;
        }
        let (x, y) = (i % n, i / n);
        // Ties go to the lower index, so a flat top is one peak.
        let is_max = (0..3).all(|dy| {
            (0..3).all(|dx| {
                let j = ((y + n + dy - 1) % n) * n + (x + n + dx - 1) % n;
                let q = surface[j].re;
                j == i || q < r || (q == r && j > i)
            })
        });
        if is_max {
            let pos = top.iter().position(|t| t.1 < r).unwrap_or(top.len());
            top.insert(pos, (i, r));
            top.truncate(k);
        }
    }
    top
}

/// Whether a coarse candidate is unturned and unmirrored (its linear part
/// is `s·I`; the rotation grid holds an exact zero).
fn is_upright(h: &Homography) -> bool {
    h.0[1] == 0.0 && h.0[3] == 0.0 && h.0[0] > 0.0 && h.0[4] > 0.0
}

/// Adds the best of `scored` to `out` until it holds `limit`, skipping
/// near-duplicates: a neighbour on the scale grid with the same
/// translation is the same answer.
fn pick_distinct(
    scored: &[(f64, Homography)],
    out: &mut Vec<Homography>,
    limit: usize,
    o_full: [usize; 2],
    l_full: [usize; 2],
) {
    let (cx, cy) = (o_full[0] as f64 / 2.0, o_full[1] as f64 / 2.0);
    let l_long = l_full[0].max(l_full[1]) as f64;
    let det = |h: &Homography| h.0[0] * h.0[4] - h.0[1] * h.0[3];
    for (_, h) in scored {
        if out.len() >= limit {
            break;
        }
        let Some(p) = h.map(cx, cy) else { continue };
        let near = out.iter().any(|g| {
            let q = g.map(cx, cy).unwrap_or((f64::MAX, f64::MAX));
            let scale_ratio = det(g).abs().sqrt() / det(h).abs().sqrt();
            let same_turn =
                (g.0[0] * h.0[0] + g.0[1] * h.0[1]) > 0.0 && det(g).signum() == det(h).signum();
            same_turn
                && (0.85..1.18).contains(&scale_ratio)
                && ((p.0 - q.0).powi(2) + (p.1 - q.1).powi(2)).sqrt() < 0.05 * l_long
        });
        if !near {
            out.push(*h);
        }
    }
}

/// Refines a homography (original → leak, full resolution) coarse to fine;
/// returns it with the structure correlation at the finest level.
fn refine(
    l_pyr: &Pyramid,
    o_pyr: &Pyramid,
    start: Homography,
    from_px: usize,
    to_px: usize,
) -> Option<(Homography, f64)> {
    let mut h = start;
    let long = o_pyr.full[0].max(o_pyr.full[1]);
    let mut px = from_px;
    loop {
        let o_level = o_pyr.level_near(px);
        let s = local_scale(&h, o_pyr.full)?;
        let l_level = l_pyr.level_for(s / o_level.scale[0]);
        let to_level = Homography::scaling(l_level.scale[0], l_level.scale[1]);
        let from_o = Homography::scaling(1.0 / o_level.scale[0], 1.0 / o_level.scale[1]);
        let hl = to_level.then_after(&h).then_after(&from_o);
        // The leak's long side on this level of the original, pixels: a
        // few dozen pixels of sparse lines do not pin down eight parameters.
        let footprint = (l_pyr.full[0].max(l_pyr.full[1]) as f64 / s * o_level.scale[0])
            .min(o_level.img.width.max(o_level.img.height) as f64);
        let motion = if footprint < SIMILARITY_BELOW_PX {
            Motion::Similarity
        } else if footprint < AFFINE_BELOW_PX {
            Motion::Affine
        } else {
            Motion::Projective
        };
        let iterations = if px <= 2 * COARSE_PX {
            COARSE_ITERATIONS
        } else {
            FINE_ITERATIONS
        };
        let hl = if px == COARSE_PX {
            // A wide basin first: strong perspective leaves the coarse
            // similarity tens of pixels off at the corners.
            lm(
                &o_level.img.gaussian(WIDE_BLUR),
                &l_level.img.gaussian(WIDE_BLUR),
                hl,
                iterations,
                motion,
            )
            .map_or(hl, |r| r.0)
        } else {
            hl
        };
        let (hl, ncc) = lm(&o_level.img, &l_level.img, hl, iterations, motion)?;
        let back_l = Homography::scaling(1.0 / l_level.scale[0], 1.0 / l_level.scale[1]);
        let to_o = Homography::scaling(o_level.scale[0], o_level.scale[1]);
        h = back_l.then_after(&hl).then_after(&to_o);
        if px >= to_px.min(long) || px >= FINE_PX {
            return Some((h, ncc));
        }
        px *= 2;
    }
}

/// Leak pixels per original pixel at the original's centre.
fn local_scale(h: &Homography, full: [usize; 2]) -> Option<f64> {
    let j = h.jacobian(full[0] as f64 / 2.0, full[1] as f64 / 2.0);
    let s = (j[0] * j[3] - j[1] * j[2]).abs().sqrt();
    (s.is_finite() && s > 1e-6).then_some(s)
}

/// Normal equations of one Gauss–Newton step and the robust cost.
struct Normal {
    ata: [[f64; 8]; 8],
    atb: [f64; 8],
    cost: f64,
    count: usize,
    /// Σ o·l, Σ o², Σ l², Σ o, Σ l over the valid points (for the correlation).
    moments: [f64; 5],
}

/// Builds the normal equations at `h` over a regular subsample of `o`
/// less its [`BORDER_BAND`].
fn normal_equations(o: &Plane, l: &Plane, h: &Homography) -> Normal {
    let stride = ((o.width * o.height) as f64 / REFINE_POINTS as f64)
        .sqrt()
        .ceil()
        .max(1.0) as usize;
    let rows: Vec<usize> = (BORDER_BAND..o.height.saturating_sub(BORDER_BAND))
        .step_by(stride)
        .collect();
    // Fixed row blocks summed in order: the same bits for any thread count.
    let parts: Vec<Normal> = rows
        .par_chunks(16)
        .map(|block| {
            let mut n = Normal {
                ata: [[0.0; 8]; 8],
                atb: [0.0; 8],
                cost: 0.0,
                count: 0,
                moments: [0.0; 5],
            };
            let m = &h.0;
            for &y in block {
                let yf = y as f64 + 0.5;
                for x in (BORDER_BAND..o.width.saturating_sub(BORDER_BAND)).step_by(stride) {
                    let xf = x as f64 + 0.5;
                    let w = m[6] * xf + m[7] * yf + m[8];
                    if w <= 1e-9 {
                        continue;
                    }
                    let u = (m[0] * xf + m[1] * yf + m[2]) / w;
                    let v = (m[3] * xf + m[4] * yf + m[5]) / w;
                    let Some((lv, gx, gy)) = sample_grad(l, u, v) else {
                        continue;
                    };
                    let ov = o.data[y * o.width + x];
                    let e = f64::from(lv - ov);
                    let (gx, gy) = (f64::from(gx), f64::from(gy));
                    let jac = [
                        gx * xf / w,
                        gx * yf / w,
                        gx / w,
                        gy * xf / w,
                        gy * yf / w,
                        gy / w,
                        -(gx * u + gy * v) * xf / w,
                        -(gx * u + gy * v) * yf / w,
                    ];
                    let wt = if e.abs() <= HUBER {
                        1.0
                    } else {
                        HUBER / e.abs()
                    };
                    n.cost += if e.abs() <= HUBER {
                        0.5 * e * e
                    } else {
                        HUBER * (e.abs() - 0.5 * HUBER)
                    };
                    for a in 0..8 {
                        n.atb[a] += wt * jac[a] * e;
                        for b in a..8 {
                            n.ata[a][b] += wt * jac[a] * jac[b];
                        }
                    }
                    n.count += 1;
                    let (o64, l64) = (f64::from(ov), f64::from(lv));
                    n.moments[0] += o64 * l64;
                    n.moments[1] += o64 * o64;
                    n.moments[2] += l64 * l64;
                    n.moments[3] += o64;
                    n.moments[4] += l64;
                }
            }
            n
        })
        .collect();
    let mut total = Normal {
        ata: [[0.0; 8]; 8],
        atb: [0.0; 8],
        cost: 0.0,
        count: 0,
        moments: [0.0; 5],
    };
    for p in parts {
        for a in 0..8 {
            total.atb[a] += p.atb[a];
            for b in a..8 {
                total.ata[a][b] += p.ata[a][b];
            }
        }
        total.cost += p.cost;
        total.count += p.count;
        for k in 0..5 {
            total.moments[k] += p.moments[k];
        }
    }
    for a in 0..8 {
        for b in 0..a {
            total.ata[a][b] = total.ata[b][a];
        }
    }
    total
}

impl Normal {
    fn correlation(&self) -> f64 {
        let n = self.count.max(1) as f64;
        let [ol, oo, ll, so, sl] = self.moments;
        let cov = ol / n - so * sl / (n * n);
        let vo = oo / n - (so / n).powi(2);
        let vl = ll / n - (sl / n).powi(2);
        if vo <= 1e-12 || vl <= 1e-12 {
            0.0
        } else {
            cov / (vo * vl).sqrt()
        }
    }
}

/// Which maps a refinement step may move within.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Motion {
    /// Scale, turn and shift (4 parameters).
    Similarity,
    /// Any linear map and shift (6 parameters).
    Affine,
    /// The full homography (8 parameters).
    Projective,
}

impl Motion {
    /// The step's directions in the eight homography parameters.
    fn basis(self) -> Vec<[f64; 8]> {
        let e = |i: usize| {
            let mut v = [0.0; 8];
            v[i] = 1.0;
            v
        };
        match self {
            Motion::Similarity => vec![
                [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
                [0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0],
                e(2),
                e(5),
            ],
            Motion::Affine => (0..6).map(e).collect(),
            Motion::Projective => (0..8).map(e).collect(),
        }
    }
}

/// Levenberg–Marquardt on the parameters of `h` (level coordinates) that
/// `motion` frees. Returns the refined map and its structure correlation.
fn lm(
    o: &Plane,
    l: &Plane,
    mut h: Homography,
    iterations: usize,
    motion: Motion,
) -> Option<(Homography, f64)> {
    let min_points = 200;
    let mut cur = normal_equations(o, l, &h);
    if cur.count < min_points {
        return None;
    }
    let basis = motion.basis();
    let k = basis.len();
    let mut lambda = 1e-3;
    for _ in 0..iterations {
        // The normal equations in the basis (Bᵀ·A·B, Bᵀ·b), padded to 8 × 8
        // with the identity for the directions left out.
        let mut a = [[0.0f64; 8]; 8];
        let mut b = [0.0f64; 8];
        for i in 0..8 {
            if i >= k {
                a[i][i] = 1.0;
                continue;
            }
            for p in 0..8 {
                b[i] -= basis[i][p] * cur.atb[p];
                for j in 0..k {
                    for q in 0..8 {
                        a[i][j] += basis[i][p] * cur.ata[p][q] * basis[j][q];
                    }
                }
            }
        }
        for (i, row) in a.iter_mut().enumerate().take(k) {
            row[i] += lambda * row[i].max(1e-12);
        }
        let Some(x) = crate::detect::solve8(a, b, 1e-300) else {
            break;
        };
        let mut delta = [0.0f64; 8];
        for (dir, xi) in basis.iter().zip(x) {
            for (d, v) in delta.iter_mut().zip(dir) {
                *d += xi * v;
            }
        }
        let mut next = h;
        for (v, d) in next.0.iter_mut().zip(delta) {
            *v += d;
        }
        let cand = normal_equations(o, l, &next);
        // Compare mean costs: the set of points inside the leak may change.
        let improves = cand.count >= min_points
            && cand.cost / cand.count as f64 <= cur.cost / cur.count as f64;
        if improves {
            let small = delta
                .iter()
                .zip(&h.0)
                .all(|(d, v)| d.abs() <= 1e-7 * v.abs().max(1e-3));
            h = next;
            cur = cand;
            lambda = (lambda * 0.3).max(1e-7);
            if small {
                break;
            }
        } else {
            lambda *= 10.0;
            if lambda > 1e6 {
                break;
            }
        }
    }
    Some((h, cur.correlation()))
}

/// The bounding box of the original's pixels that land inside the leak,
/// from a 64 × 64 grid of probes.
fn covered_box(h: &Homography, leak: &Plane, original: &Plane) -> Option<[u32; 4]> {
    const PROBES: usize = 64;
    let (w, ht) = (original.width as f64, original.height as f64);
    let (lw, lh) = (leak.width as f64, leak.height as f64);
    let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
    for j in 0..=PROBES {
        for i in 0..=PROBES {
            let (x, y) = (i as f64 / PROBES as f64 * w, j as f64 / PROBES as f64 * ht);
            if let Some((u, v)) = h.map(x, y) {
                if (0.0..=lw).contains(&u) && (0.0..=lh).contains(&v) {
                    x0 = x0.min(x);
                    y0 = y0.min(y);
                    x1 = x1.max(x);
                    y1 = y1.max(y);
                }
            }
        }
    }
    if x1 < x0 {
        return None;
    }
    // Widen by one probe step (the true edge lies between probes), clip.
    let (sx, sy) = (w / PROBES as f64, ht / PROBES as f64);
    Some([
        (x0 - sx).max(0.0) as u32,
        (y0 - sy).max(0.0) as u32,
        (x1 + sx).min(w) as u32,
        (y1 + sy).min(ht) as u32,
    ])
}

/// Largest distance, in original pixels, between where two maps send the
/// corners of the `covered` box back from the leak: a registration error
/// that does not depend on how much of the leak is margin.
pub fn corner_error(estimate: &Homography, truth: &Homography, covered: [u32; 4]) -> Option<f64> {
    let [x0, y0, x1, y1] = covered.map(f64::from);
    let mut worst = 0.0f64;
    for (x, y) in [(x0, y0), (x1, y0), (x0, y1), (x1, y1)] {
        let (u, v) = truth.map(x, y)?;
        let (xe, ye) = estimate.inverse()?.map(u, v)?;
        worst = worst.max(((xe - x).powi(2) + (ye - y).powi(2)).sqrt());
    }
    Some(worst)
}

/// A cheap global descriptor of an image, for picking which of many
/// originals a leak may come from before registering: gradient directions
/// (compared over every rotation) and a histogram of tones. Both survive
/// cropping and rescaling roughly; this only ranks, registration decides.
#[derive(Clone, Debug)]
pub struct Descriptor {
    directions: Vec<f64>,
    tones: Vec<f64>,
}

impl Descriptor {
    /// The descriptor of a luma plane (0–255).
    pub fn of(p: &Plane) -> Descriptor {
        let long = p.width.max(p.height).max(1);
        let k = (256.0 / long as f64).min(1.0);
        let small = p.resize_area(
            ((p.width as f64 * k).round() as usize).max(1),
            ((p.height as f64 * k).round() as usize).max(1),
        );
        let unit = |v: Vec<f64>| {
            let n = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            v.into_iter().map(|x| x / n).collect::<Vec<f64>>()
        };
        let mut tones = vec![0.0f64; 32];
        for &v in &small.data {
            tones[((v.clamp(0.0, 255.0) / 8.0) as usize).min(31)] += 1.0;
        }
        Descriptor {
            directions: unit(direction_histogram(&structure(&small, STRUCTURE_BLUR))),
            tones: unit(tones.into_iter().map(f64::sqrt).collect()),
        }
    }

    /// Similarity in 0–2 (higher is closer): best rotation of the
    /// direction histograms plus the cosine of the tone histograms.
    pub fn similarity(&self, other: &Descriptor) -> f64 {
        let n = self.directions.len();
        let directions = (0..n)
            .map(|k| {
                (0..n)
                    .map(|i| self.directions[i] * other.directions[(i + k) % n])
                    .sum::<f64>()
            })
            .fold(0.0f64, f64::max);
        let tones: f64 = self
            .tones
            .iter()
            .zip(&other.tones)
            .map(|(a, b)| a * b)
            .sum();
        directions + tones
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic "drawing" with texture at several scales.
    fn scene(w: usize, h: usize, seed: u64) -> Plane {
        let mut data = vec![255.0f32; w * h];
        let mut state = seed;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as f64 / (1u64 << 31) as f64
        };
        for _ in 0..60 {
            let (cx, cy, r) = (next() * w as f64, next() * h as f64, 5.0 + next() * 60.0);
            let grey = (next() * 200.0) as f32;
            let rect = next() < 0.5;
            for y in 0..h {
                for x in 0..w {
                    let (dx, dy) = (x as f64 - cx, y as f64 - cy);
                    let inside = if rect {
                        dx.abs() < r && dy.abs() < r * 0.6
                    } else {
                        (dx * dx + dy * dy).sqrt() < r
                    };
                    if inside {
                        data[y * w + x] = grey;
                    }
                }
            }
        }
        Plane {
            width: w,
            height: h,
            data,
        }
    }

    /// Warps `src` by `h` (original → leak) into a `w` × `h` leak, white outside.
    fn warp(src: &Plane, h: &Homography, w: usize, ht: usize) -> Plane {
        let inv = h.inverse().unwrap();
        let mut data = vec![255.0f32; w * ht];
        for y in 0..ht {
            for x in 0..w {
                if let Some((u, v)) = inv.map(x as f64 + 0.5, y as f64 + 0.5) {
                    if let Some(val) = sample(src, u, v) {
                        data[y * w + x] = val;
                    }
                }
            }
        }
        Plane {
            width: w,
            height: ht,
            data,
        }
    }

    #[test]
    fn registration_recovers_a_known_homography() {
        let original = scene(640, 480, 12345);
        // Scale 0.7, rotation 3°, perspective, shifted; then a tone change.
        let (s, c) = (0.7 * 3f64.to_radians().sin(), 0.7 * 3f64.to_radians().cos());
        let truth = Homography([c, -s, 30.0, s, c, 10.0, 4e-5, -3e-5, 1.0]);
        let mut leak = warp(&original, &truth, 520, 400);
        for v in &mut leak.data {
            *v = 20.0 + 0.8 * *v;
        }
        let reg = register(&leak, &original).expect("registers");
        let err = corner_error(&reg.homography, &truth, reg.covered).unwrap();
        assert!(err < 1.0, "corner error {err} px, {reg:?}");
        assert!(reg.similarity > 0.8);
    }

    #[test]
    fn registration_of_a_dark_image_ignores_the_white_fill_outline() {
        // A dark theme: faint grey-on-grey shapes, then warped in strong
        // perspective onto white (as a print or the perspective attack pads).
        // With the image's outline in the refinement: 8.2 px off, similarity 0.42.
        let mut original = scene(640, 480, 4242);
        for v in &mut original.data {
            *v = 30.0 + 0.1 * *v;
        }
        let truth = Homography([1.05, 0.06, 40.0, -0.05, 1.1, 60.0, 1.5e-4, 2e-4, 1.0]);
        let leak = warp(&original, &truth, 760, 720);
        let reg = register(&leak, &original).expect("registers");
        let err = corner_error(&reg.homography, &truth, reg.covered).unwrap();
        assert!(err < 1.0, "corner error {err} px, {reg:?}");
    }

    #[test]
    fn registration_finds_a_small_crop() {
        let original = scene(800, 600, 12345);
        // 10 % of the area, off-centre.
        let truth = Homography([1.0, 0.0, -430.0, 0.0, 1.0, -300.0, 0.0, 0.0, 1.0]);
        let leak = warp(&original, &truth, 253, 190);
        let reg = register(&leak, &original).expect("registers");
        let err = corner_error(&reg.homography, &truth, reg.covered).unwrap();
        assert!(err < 1.0, "corner error {err} px, {reg:?}");
        let [x0, y0, x1, y1] = reg.covered;
        assert!(
            x0.abs_diff(430) < 15 && y0.abs_diff(300) < 15,
            "{:?}",
            reg.covered
        );
        assert!(
            x1.abs_diff(683) < 15 && y1.abs_diff(490) < 15,
            "{:?}",
            reg.covered
        );
    }

    #[test]
    fn registration_rejects_an_unrelated_image() {
        let reg = register(&scene(640, 480, 777), &scene(640, 480, 12345));
        assert!(reg.is_none(), "{reg:?}");
    }
}
