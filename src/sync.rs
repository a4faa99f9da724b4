//! Blind geometry: find the lattice on which the keyed tile repeats.
//!
//! The mark repeats every 64 chips, so the autocorrelation of the leak's
//! noise residual has peaks on a lattice whose two basis vectors are the
//! images of the tile's sides under whatever the leak went through: their
//! lengths give scale and aspect, their angles rotation and shear, and their
//! orientation a possible mirror. Host images have their own periodicities
//! (lines, UI dot grids, textures), so the power spectrum is flattened first
//! and several lattices are kept as candidates; the detector verifies each
//! and the statistics charge for each. Knows nothing of keys: the lattice
//! comes from the image alone, which is why choosing it costs the
//! false-alarm statistic nothing beyond the candidate count.

use rayon::prelude::*;
use rustfft::num_complex::Complex32;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::fft::{fast_size, RealFft2};
use crate::plane::Plane;

/// Longest side of the working image, pixels: larger leaks are shrunk first
/// (a chip stays above a pixel for any leak that still carries the mark).
pub const WORK_MAX_PX: usize = 1024;
/// Shortest lattice vector searched, working pixels (64 chips of 0.6 px).
const MIN_PERIOD_PX: f64 = 36.0;
/// Autocorrelation peaks examined when forming bases.
const PEAKS: usize = 24;
/// Lattice candidates handed to the detector: twelve from the searches'
/// residual, [`READ_CANDIDATES`] from the reading's, [`DESPIKED_CANDIDATES`]
/// from the despiked autocorrelation.
pub const MAX_CANDIDATES: usize = 16;
/// Candidates kept by the density score before their index-2 neighbours are added.
const DENSITY_CANDIDATES: usize = 4;
/// JPEG block size, leak pixels.
const JPEG_BLOCK_PX: f64 = 8.0;

/// A candidate lattice: basis vectors in working pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lattice {
    /// First basis vector (x, y).
    pub u: [f64; 2],
    /// Second basis vector (x, y).
    pub v: [f64; 2],
    /// Evidence for the lattice (sum of peak z-scores).
    pub score: f64,
}

/// The leak prepared for synchronisation and folding.
pub struct Prepared {
    /// Normalised noise residual at working resolution: what the lattice
    /// and alignment searches look at.
    pub residual: Plane,
    /// Working pixels per leak pixel (≤ 1).
    pub work_scale: f64,
    /// The residual with the reading's larger activity floor
    /// ([`READ_FLOOR`]), which a reading folds for its chips; `None`: the
    /// readings fold `residual`.
    pub read_residual: Option<Plane>,
}

impl Prepared {
    /// The residual a reading folds.
    pub fn for_reading(&self) -> &Plane {
        self.read_residual.as_ref().unwrap_or(&self.residual)
    }
}

/// Radius of the neighbourhood the detail is taken against, working pixels.
/// A 7×7 box rather than 5×5 lets the residual keep the mark's lower
/// frequencies, the ones JPEG quantises least: on the devset JPEG 30 went
/// 6/10 → 8/10 in the robustness test (10/14 → 13/14 with the dev harness's
/// seeds), no channel's floor lost (23 Nov); radius 4 gave the same, 1 was worse.
const DETAIL_RADIUS: usize = 3;

/// Local activity (RMS of the detail, levels) above which a pixel's weight
/// falls as 1/activity. Below it the mark grows with the host's texture (the
/// embedding's mask), so detail over activity is the matched weight; above
/// it the mark stops growing (the mask's ceiling, and its floor on lines and
/// text) while the host keeps growing, so detail over activity² (inverse
/// variance) is. Robustness suite on the devset (24 Nov): 349 → 354 of 380
/// (screen-camera 3 → 5, scale ½ + JPEG 50 4 → 5, perspective 8 % + blur +
/// JPEG 70 7 → 9, brightness +30 6 → 7); knee 7 / 14 gave 353 / 350, a square
/// law 351, √ 351.
const KNEE_ACTIVITY: f32 = 10.0;

/// Added to the local activity (levels) before the detail is divided by it,
/// for the searches: near-flat areas count almost fully, which the lattice
/// and alignment searches need (1.0 there lost phone shots, screen photos
/// and quarter crops on the independent script, 993 → 989 of 1,050).
const SYNC_FLOOR: f32 = 0.35;
/// The same for the folds the chips are read from: after heavy compression
/// the near-flat areas hold blocking and ringing that the small floor
/// scales up to the mark's size while their mark is gone. Independent
/// script, same leaks (25 Nov): 993 → 996 of 1,050, none lost (the Inkscape
/// screenshot after JPEG 30 and after ½ + JPEG 60); 2.0 also gave 996 but
/// lost two ½ + rotation 30° + JPEG 50 leaks.
const READ_FLOOR: f32 = 1.0;

/// Shrinks the luma to working size and extracts a normalised noise residual:
/// local detail (against the box mean) divided by local activity and
/// clipped, then weighted down past [`KNEE_ACTIVITY`], so that edges, lines
/// and text, where the host dwarfs the mark, weigh less than the flat and
/// textured areas that carry it.
///
/// Both residuals, the searches' and the reading's, are the sum of two:
/// against the box mean, and against the pixel's own surface
/// ([`prepare_same_surface`]). Each whitened, they see the mark alike but
/// the host differently (the box mean leaves a halo beside every edge, the
/// surface mean none, but it follows slopes), so the sum holds less host
/// than either. A sum is one reading per geometry, as before, so nothing
/// more is charged. For the reading (e3fdc12): robustness suite (key 42, 41
/// channels, 410 leaks) scores up by 0.86 on average, 395 of 410 up, 384 →
/// 388 read, none lost; third script (510 leaks) +0.92 on average, 429 →
/// 433 read (6 gained, a small photo after JPEG 30 lost twice, 9.3 → 7.7).
/// Weighting the surface residual by 0.5 read 386 and 431, by 1.5 387 and
/// 432. For the searches too: third script 433 → 442 (the print and screen
/// photos of its two periodic hosts, whose lattice no longer owns the
/// autocorrelation, 6; none lost), held-out seeds 3 and 4 437 → 445 (none
/// lost); the suite 388 → 387 (JPEG 30 of the Inkscape UI read, 7.93; its
/// print-scan, 11.4 → 2.8, and one ½ + JPEG 40 lost).
pub fn prepare(luma: &Plane) -> Prepared {
    prepare_both(luma).0
}

/// [`prepare`], and the same-surface residuals it summed, which
/// [`SameSurface::prepared`] gives as [`prepare_same_surface`]'s result
/// without taking them again.
pub fn prepare_both(luma: &Plane) -> (Prepared, SameSurface) {
    let (work, work_scale) = working(luma);
    let (box_detail, surface) = rayon::join(
        || Detail::against(&work, &work.box_mean(DETAIL_RADIUS)),
        || SameSurface::of(&work, work_scale),
    );
    let (residual, read_residual) = rayon::join(
        || summed(box_detail.normalised(SYNC_FLOOR), &surface.residual),
        || summed(box_detail.normalised(READ_FLOOR), &surface.read_residual),
    );
    (
        Prepared {
            residual,
            work_scale,
            read_residual: Some(read_residual),
        },
        surface,
    )
}

/// `a + b`, pixel by pixel (planes of one size).
fn summed(a: Plane, b: &Plane) -> Plane {
    Plane {
        data: a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect(),
        ..a
    }
}

/// The same-surface residuals [`prepare_both`] took, kept for the reading
/// in the ink (most null leaks come to it).
pub struct SameSurface {
    residual: Plane,
    read_residual: Plane,
    work_scale: f64,
}

impl SameSurface {
    fn of(work: &Plane, work_scale: f64) -> SameSurface {
        let detail = Detail::against(work, &similar_mean(work, DETAIL_RADIUS, edge_levels(work)));
        let (residual, read_residual) = rayon::join(
            || detail.normalised(SYNC_FLOOR),
            || detail.normalised(READ_FLOOR),
        );
        SameSurface {
            residual,
            read_residual,
            work_scale,
        }
    }

    /// What [`prepare_same_surface`] gives for the same luma.
    pub fn prepared(self) -> Prepared {
        Prepared {
            residual: self.residual,
            work_scale: self.work_scale,
            read_residual: Some(self.read_residual),
        }
    }
}

/// [`prepare`] with the detail taken against the pixel's own surface
/// ([`similar_mean`]) rather than the box mean, for the searches too: what
/// reads the ink of a line drawing whose paper was clipped to white. Not
/// alone the default: on a smooth slope the selection follows the pixel's
/// own mark (synthetic smooth photos, unattacked, 480×400 and 640×480: score
/// 23.2 and 26.0 with the box mean, 2.1 and 1.7 with it; with a rule falling
/// back to the box mean on two-sided slopes, a 4 MP one still scored 6.3
/// against 14.8).
pub fn prepare_same_surface(luma: &Plane) -> Prepared {
    let (work, work_scale) = working(luma);
    SameSurface::of(&work, work_scale).prepared()
}

/// The luma at working size (long side at most [`WORK_MAX_PX`]) and its scale.
fn working(luma: &Plane) -> (Plane, f64) {
    let long = luma.width.max(luma.height);
    if long > WORK_MAX_PX {
        let s = WORK_MAX_PX as f64 / long as f64;
        let w = ((luma.width as f64 * s).round() as usize).max(1);
        let h = ((luma.height as f64 * s).round() as usize).max(1);
        (luma.resize_area(w, h), s)
    } else {
        (luma.clone(), 1.0)
    }
}

/// A working plane's detail against a smoothed copy, with its local activity.
struct Detail {
    detail: Plane,
    /// Mean square of the detail over a 9×9 box.
    activity: Plane,
}

impl Detail {
    fn against(work: &Plane, smooth: &Plane) -> Detail {
        let detail = Plane {
            data: work
                .data
                .iter()
                .zip(&smooth.data)
                .map(|(a, b)| a - b)
                .collect(),
            ..work.clone()
        };
        let activity = Plane {
            data: detail.data.iter().map(|v| v * v).collect(),
            ..work.clone()
        }
        .box_mean(4);
        Detail { detail, activity }
    }

    /// The detail over its activity plus `floor`, clipped, weighted down past
    /// [`KNEE_ACTIVITY`], and whitened.
    fn normalised(&self, floor: f32) -> Plane {
        let data = self
            .detail
            .data
            .iter()
            .zip(&self.activity.data)
            .map(|(&d, &a)| {
                let activity = a.max(0.0).sqrt();
                let weight = (KNEE_ACTIVITY / activity).min(1.0);
                (d / (activity + floor)).clamp(-2.5, 2.5) * weight
            })
            .collect();
        flatten_spectrum(&Plane {
            data,
            ..self.detail.clone()
        })
    }
}

/// Rings of equal frequency (0 to the corner, 0.71 cycle per pixel) over
/// which [`flatten_spectrum`] takes the median power.
const FLATTEN_RINGS: usize = 64;

/// The ring of frequency bin (kx, ky) of a `w` × `h` transform.
fn ring_of(kx: usize, ky: usize, w: usize, h: usize) -> usize {
    let fold = |k: usize, n: usize| k.min(n.saturating_sub(k)) as f32 / n as f32;
    let r = fold(kx, w).hypot(fold(ky, h)) / std::f32::consts::FRAC_1_SQRT_2;
    ((r * FLATTEN_RINGS as f32) as usize).min(FLATTEN_RINGS - 1)
}

/// Frequency bins (each way) over which [`flatten_spectrum`] averages the
/// residual's power: wide enough that the tile's harmonics (a few bins
/// apart) do not flatten themselves away.
const FLATTEN_RADIUS: usize = 8;

/// Divides the residual's spectrum by the fourth root of its locally
/// averaged power (half-way to white), keeping its RMS. What is left of the
/// host after the local normalisation is far from white once a leak has
/// been through JPEG (8×8 block edges), a screen's sub-pixel grid and moiré,
/// or a blur: a few bands hold most of the noise, and every chip read
/// through them was drowned. Taming them before the fold lifts the mark
/// wherever it sits. A fixed linear filter of the leak alone: the verify
/// chips stay independent of it, so the bound of [`crate::stats`] is
/// untouched. Robustness suite (24 Nov): 363 → 371 of 380, none lost
/// (screen-camera 3 → 8, scale ½ + JPEG 50 7 → 8, scale ½ + rotation 30° +
/// JPEG 50 7 → 9); on five hard channels of the dev harness (50 cases)
/// full whitening (power ½) read 36 against 40 for power ¼ and ⅜.
///
/// On top of that, a bin whose averaged power stands above the median of its
/// ring (the bins at the same frequency, every direction) loses the excess
/// entirely. The mark, drawn from independent chips, is about isotropic;
/// what stands out in a direction is the host's (lines, text, the JPEG
/// grid) or the channel's: the moiré of a screen photographed at about one
/// display pixel per image pixel, which beats at ~9 px and, under the
/// photo's perspective, spreads over a band the local averaging cannot
/// tame. The suite's channels under key 42 seed 6 / key 7 seed 7 / key 3
/// seed 11 (a dev harness with its own serials): 368 / 362 / 362 → 368 /
/// 364 / 367 of 380; screen-camera over seeds 4, 7 and 8 (display pitch
/// 0.95–1.03) 1 → 8 of 30.
fn flatten_spectrum(residual: &Plane) -> Plane {
    let (rw, rh) = (residual.width, residual.height);
    // A margin of zeros keeps opposite borders from leaking into each other.
    let (w, h) = (fast_size(rw + 16), fast_size(rh + 16));
    let mut buf = vec![0.0f32; w * h];
    for (row, src) in buf.chunks_mut(w).zip(residual.data.chunks(rw)) {
        row[..rw].copy_from_slice(src);
    }
    let fft = RealFft2::new(w, h);
    let mut spectrum = fft.forward_transposed(&mut buf);
    let power = Plane {
        width: h,
        height: fft.half_width(),
        data: spectrum.iter().map(|c| c.norm_sqr()).collect(),
    }
    .box_mean(FLATTEN_RADIUS);
    let mean_power = power.data.iter().sum::<f32>() / power.data.len() as f32;
    let floor = 1e-3 * mean_power + f32::MIN_POSITIVE;
    // The spectrum is transposed: bin i holds kx = i / h, ky = i % h.
    let rings: Vec<usize> = (0..power.data.len())
        .map(|i| ring_of(i / h, i % h, w, h))
        .collect();
    let mut by_ring: Vec<Vec<f32>> = vec![Vec::new(); FLATTEN_RINGS];
    for (&ring, &p) in rings.iter().zip(&power.data) {
        by_ring[ring].push(p);
    }
    let ring_median: Vec<f32> = by_ring
        .into_iter()
        .map(|mut ps| {
            if ps.is_empty() {
                return 0.0;
            }
            let mid = ps.len() / 2;
            *ps.select_nth_unstable_by(mid, f32::total_cmp).1
        })
        .collect();
    spectrum
        .par_iter_mut()
        .zip(&power.data)
        .zip(&rings)
        .for_each(|((c, &p), &ring)| {
            let above_ring = ((ring_median[ring] + floor) / (p + floor)).min(1.0);
            *c *= (p + floor).sqrt().sqrt().recip() * above_ring.sqrt();
        });
    let out = fft.inverse_from_transposed(&mut spectrum);
    let mut data: Vec<f32> = out
        .chunks(w)
        .take(rh)
        .flat_map(|row| &row[..rw])
        .copied()
        .collect();
    let rms = |d: &[f32]| (d.iter().map(|v| v * v).sum::<f32>() / d.len().max(1) as f32).sqrt();
    let gain = rms(&residual.data) / rms(&data).max(f32::MIN_POSITIVE);
    data.iter_mut().for_each(|v| *v *= gain);
    Plane {
        data,
        width: rw,
        height: rh,
    }
}

/// Robust standard deviations of the leak's fine detail beyond which a
/// neighbour is taken to lie across an edge (see [`similar_mean`]).
const EDGE_SIGMAS: f32 = 3.0;
/// Bounds of the edge threshold, levels. The floor keeps the mark itself
/// (a few levels) inside; the ceiling keeps a noisy leak's predictor local.
const EDGE_LEVELS: (f32, f32) = (6.0, 48.0);

/// The level difference beyond which two neighbours are not the same
/// surface: [`EDGE_SIGMAS`] robust standard deviations (1.4826 × the median
/// absolute deviation) of the detail against the plain box mean, clamped to
/// [`EDGE_LEVELS`]. Measured medians: 0–3 levels on clean, JPEG'd and
/// brightened devset copies, 3.6–7.7 after a phone photo of a screen.
fn edge_levels(work: &Plane) -> f32 {
    let smooth = work.box_mean(DETAIL_RADIUS);
    // Every 7th pixel: the median of a sample is as good and 7× cheaper.
    let mut abs: Vec<f32> = work
        .data
        .iter()
        .zip(&smooth.data)
        .step_by(7)
        .map(|(a, b)| (a - b).abs())
        .collect();
    if abs.is_empty() {
        return EDGE_LEVELS.0;
    }
    let mid = abs.len() / 2;
    let median = *abs.select_nth_unstable_by(mid, f32::total_cmp).1;
    (EDGE_SIGMAS * 1.4826 * median).clamp(EDGE_LEVELS.0, EDGE_LEVELS.1)
}

/// Neighbours of the same level needed for a prediction; fewer (a pixel on
/// an antialiased edge, alone in its shade) and the pixel predicts itself:
/// no detail, so no say in the fold.
const MIN_SIMILAR: u32 = 6;

/// Lee's sigma filter: the mean over the (2r+1)² box of the pixels within
/// `t` levels of the centre. A box mean reaches across edges, so next to a
/// line, a letter or a clipped paper border the detail is the host's edge,
/// hundreds of times the mark; this predictor stays on the pixel's own
/// surface. It is what lets the ink of a line drawing carry the mark once
/// a brightness or contrast change has clipped its paper to white.
fn similar_mean(plane: &Plane, r: usize, t: f32) -> Plane {
    let (w, h) = (plane.width, plane.height);
    let mut out = vec![0.0f32; w * h];
    out.par_chunks_mut(w).enumerate().for_each(|(y, row)| {
        let centre = &plane.data[y * w..][..w];
        let mut sum = vec![0.0f32; w];
        let mut n = vec![0u32; w];
        // Offsets outermost and pixels innermost, so the loop vectorises;
        // each pixel still adds its neighbours row by row, left to right.
        for yy in y.saturating_sub(r)..=(y + r).min(h - 1) {
            let line = &plane.data[yy * w..][..w];
            for dx in -(r as isize)..=r as isize {
                let (x0, x1) = (
                    (-dx).max(0) as usize,
                    (w as isize - dx.max(0)).max(0) as usize,
                );
                if x0 >= x1 {
                    continue;
                }
                let shifted = &line[(x0 as isize + dx) as usize..][..x1 - x0];
                for (((s, k), &c), &v) in sum[x0..x1]
                    .iter_mut()
                    .zip(&mut n[x0..x1])
                    .zip(&centre[x0..x1])
                    .zip(shifted)
                {
                    let same = (v - c).abs() <= t;
                    *s += if same { v } else { 0.0 };
                    *k += u32::from(same);
                }
            }
        }
        for (((o, &s), &k), &c) in row.iter_mut().zip(&sum).zip(&n).zip(centre) {
            *o = if k >= MIN_SIMILAR { s / k as f32 } else { c };
        }
    });
    Plane {
        data: out,
        ..plane.clone()
    }
}

/// Autocorrelation of the residual with a flattened spectrum, as a centred
/// plane (lag (0,0) at the centre), normalised to 1 at lag 0.
fn whitened_autocorrelation(residual: &Plane, grid_px: f64) -> Acf {
    let (mut acfs, w, h) = whitened_autocorrelations(residual, grid_px, &[AcfKind::blurred(0.0)]);
    (acfs.pop().expect("one kind asked"), w, h)
}

/// One autocorrelation asked of [`whitened_autocorrelations`].
#[derive(Clone, Copy, Debug)]
struct AcfKind {
    /// σ of the Gaussian blur, working pixels (0: none).
    blur: f32,
    /// Whitened power above which a frequency bin is a spike and is set to
    /// its neighbourhood's mean, 1 (∞: none is).
    spike_level: f32,
}

impl AcfKind {
    const fn blurred(blur: f32) -> Self {
        Self {
            blur,
            spike_level: f32::INFINITY,
        }
    }
}

/// [`whitened_autocorrelation`] of each kind: blurred by a Gaussian of σ
/// `blur` (working pixels) and with each bin whose whitened power exceeds
/// `spike_level` reset to 1, each normalised to 1 at lag 0 before its blur. The blur
/// is a weight on the spectrum, applied before the inverse transform: the
/// same as blurring the plane (up to the kernel's truncation and the far
/// lags' wrap-around), for no more than the inverse each needs anyway (as
/// a convolution it took 3 of the 13 ms of each tilted view's search).
fn whitened_autocorrelations(
    residual: &Plane,
    grid_px: f64,
    kinds: &[AcfKind],
) -> (Vec<Plane>, usize, usize) {
    // Zero padding by half the size lets lags reach 3/4 of the short side
    // without wrapping: a quarter-area crop may hold barely two periods.
    let (w, h) = (
        fast_size(residual.width * 3 / 2),
        fast_size(residual.height * 3 / 2),
    );
    let mean = residual.data.iter().sum::<f32>() / residual.data.len().max(1) as f32;
    // Cosine taper over the outer 6 % so the borders do not ring.
    let taper = |n: usize| -> Vec<f32> {
        let edge = (n as f32 * 0.06).max(1.0);
        (0..n)
            .map(|i| {
                let d = (i as f32 + 0.5).min(n as f32 - i as f32 - 0.5);
                if d >= edge {
                    1.0
                } else {
                    0.5 - 0.5 * (std::f32::consts::PI * d / edge).cos()
                }
            })
            .collect()
    };
    let (taper_x, taper_y) = (taper(residual.width), taper(residual.height));
    let mut buf = vec![0.0f32; w * h];
    for ((row, src), &ty) in buf
        .chunks_mut(w)
        .zip(residual.data.chunks(residual.width))
        .zip(&taper_y)
    {
        for ((b, &v), &tx) in row.iter_mut().zip(src).zip(&taper_x) {
            *b = (v - mean) * ty * tx;
        }
    }
    // The residual is real: only the half spectrum kx ≤ w/2 is computed,
    // left in transposed order (row kx holds every ky) since it is only
    // weighted bin by bin before going back.
    let fft = RealFft2::new(w, h);
    let mut spectrum = fft.forward_transposed(&mut buf);
    let power: Vec<f32> = spectrum.iter().map(|c| c.norm_sqr()).collect();
    let smooth = Plane {
        width: h,
        height: fft.half_width(),
        data: power.clone(),
    }
    .box_mean(4);
    // Axes carry borders and straight lines of the host, not the mark; JPEG's
    // 8×8 block grid puts energy on lines at multiples of 1/8 cycle per leak
    // pixel. Both are zeroed, per frequency row and column, at positive and
    // negative frequencies alike.
    let masked = |n: usize| -> Vec<bool> {
        let period = n as f64 / grid_px;
        (0..n)
            .map(|f| {
                let signed = if f <= n / 2 { f } else { n - f };
                let r = signed as f64 / period;
                let near_grid = (r - r.round()).abs() * period < 1.5 && r.round() != 0.0;
                signed <= 1 || near_grid
            })
            .collect()
    };
    let (mask_x, mask_y) = (masked(w), masked(h));
    for (fx, ((row, p), s)) in spectrum
        .chunks_mut(h)
        .zip(power.chunks(h))
        .zip(smooth.data.chunks(h))
        .enumerate()
    {
        for (fy, ((c, &p), &s)) in row.iter_mut().zip(p).zip(s).enumerate() {
            let flat = if mask_y[fy] || mask_x[fx] {
                0.0
            } else {
                p / (s.max(0.0) + 1e-12)
            };
            *c = Complex32::new(flat, 0.0);
        }
    }
    // Lag 0 is the spectrum's sum (the inverse is unnormalised): the half
    // spectrum's inner columns stand for two (kx and w − kx), the first
    // and, for an even width, the last for one.
    let half = fft.half_width();
    let lag_zero = |spectrum: &[Complex32]| -> f32 {
        spectrum
            .chunks(h)
            .enumerate()
            .map(|(fx, col)| {
                let twice = fx != 0 && !(w % 2 == 0 && fx == half - 1);
                let sum: f32 = col.iter().map(|c| c.re).sum();
                if twice {
                    2.0 * sum
                } else {
                    sum
                }
            })
            .sum::<f32>()
            .max(1e-12)
    };
    // exp(−2π²σ²f²), f in cycles per pixel: a Gaussian's transform.
    let gaussian = |sigma: f32, n: usize, len: usize| -> Vec<f32> {
        (0..len)
            .map(|k| {
                let f = k.min(n - k) as f32 / n as f32;
                (-2.0 * (std::f32::consts::PI * sigma * f).powi(2)).exp()
            })
            .collect()
    };
    let one_kind = |mut spectrum: Vec<Complex32>, kind: AcfKind| -> Plane {
        if kind.spike_level.is_finite() {
            spectrum
                .iter_mut()
                .filter(|c| c.re > kind.spike_level)
                .for_each(|c| c.re = 1.0);
        }
        let zero = lag_zero(&spectrum);
        if kind.blur > 0.0 {
            let (gx, gy) = (gaussian(kind.blur, w, half), gaussian(kind.blur, h, h));
            for (col, &wx) in spectrum.chunks_mut(h).zip(&gx) {
                for (c, &wy) in col.iter_mut().zip(&gy) {
                    *c *= wx * wy;
                }
            }
        }
        centre_lags(&fft.inverse_from_transposed(&mut spectrum), w, h, zero)
    };
    let acfs = match kinds {
        [kind] => vec![one_kind(spectrum, *kind)],
        _ => kinds
            .par_iter()
            .map(|&kind| one_kind(spectrum.clone(), kind))
            .collect(),
    };
    (acfs, w, h)
}

/// The inverse transform's `w` × `h` lags, (0, 0) first and wrapped, as a
/// plane with lag (0, 0) at the centre, divided by `zero`.
fn centre_lags(buf: &[f32], w: usize, h: usize, zero: f32) -> Plane {
    let mut centred = Plane::filled(w, h, 0.0);
    for (y, row) in buf.chunks(w).enumerate() {
        let cy = (y + h / 2) % h;
        let out = &mut centred.data[cy * w..(cy + 1) * w];
        let (left, right) = row.split_at(w - w / 2);
        let (out_low, out_high) = out.split_at_mut(w / 2);
        for (o, c) in out_high
            .iter_mut()
            .zip(left)
            .chain(out_low.iter_mut().zip(right))
        {
            *o = c / zero;
        }
    }
    centred
}

/// The lattice of the copy as it was issued, seen in a leak of
/// `width` × `height` pixels: the chip size the embedder gives an image of
/// that size, axes upright. A leak that is the issued file with only its
/// tones, noise or compression changed has exactly this lattice, whatever
/// its autocorrelation shows: on a sparse line drawing whose paper was
/// clipped to white the mark survives only in the ink, and pairs of ink
/// pixels one period apart are too rare for the autocorrelation to see it.
pub fn as_issued(width: usize, height: usize, work_scale: f64) -> Lattice {
    upright(
        crate::embed::chip_px_for(width as u32, height as u32),
        work_scale,
    )
}

/// The lattice of an issued copy resized as a whole to `width` × `height`
/// (a thumbnail, a forum's downscale): the chip keeps its share of the short
/// side, which [`as_issued`] does not give once the leak is so small that
/// the embedder's smallest chip would bind. (Exact for documents whose short
/// side was at least `MIN_CHIP_PX × CHIPS_PER_SHORT_SIDE`, 864 px; smaller
/// ones had their chip clamped when issued.) `None` when the two agree
/// within 1 %, which the fold tolerates.
///
/// Third script (510 leaks): ⅓ + JPEG 75 of a 1000 × 872 photo, twice,
/// 1.1 → 11.6, none lost; the samples after ½ / 0.4 / ⅓ + JPEG 30 / 40 under
/// two keys: 13 → 14 of 48, with three more from about 2 to 6–7.7.
pub fn as_resized(width: usize, height: usize, work_scale: f64) -> Option<Lattice> {
    let chip = width.min(height) as f64 / crate::embed::CHIPS_PER_SHORT_SIDE;
    let issued = crate::embed::chip_px_for(width as u32, height as u32);
    (chip < issued * 0.99).then(|| upright(chip, work_scale))
}

/// The lattice of a tile of `chip_px`-pixel chips, axes upright, unscaled,
/// in working pixels.
pub fn upright(chip_px: f64, work_scale: f64) -> Lattice {
    let period = chip_px * crate::pattern::TILE as f64 * work_scale;
    Lattice {
        u: [period, 0.0],
        v: [0.0, period],
        score: 0.0,
    }
}

/// Candidate lattices for a prepared leak, best first (possibly none).
///
/// Several searches share one whitened autocorrelation, blurred by each of
/// [`ACF_BLURS`]. The whitening gives every frequency the same weight, but
/// JPEG, blur and downscaling leave the mark only in the lower ones, so
/// after them the high bands add noise and nothing else; blurring the
/// autocorrelation is weighting the spectrum towards low frequencies. The
/// lists are interleaved (sharpest first) into the first places; the last
/// [`READ_CANDIDATES`] go to the best lattices of the reading residual's
/// autocorrelation ([`Prepared::read_residual`], blurred by
/// [`READ_ACF_BLUR`]), then [`DESPIKED_CANDIDATES`] to those of the
/// despiked one ([`SPIKE_LEVEL`]), unless they are already there. The
/// count, and so the charge, is at most [`MAX_CANDIDATES`].
pub fn lattices(prepared: &Prepared) -> Vec<Lattice> {
    candidates(prepared).lattices
}

/// What [`candidates`] finds in a leak's autocorrelations.
pub struct Candidates {
    /// Lattices, best first, at most [`MAX_CANDIDATES`] (see [`lattices`]).
    pub lattices: Vec<Lattice>,
    /// Square lattices on the strongest single peaks, at most
    /// [`PEAK_SQUARES`] per autocorrelation, no two alike: the sides of a
    /// tile whose other side the host hides (see [`PEAK_SQUARES`]).
    pub peak_squares: Vec<Lattice>,
    /// Lattices through the peaks off each autocorrelation's best lattice,
    /// at most [`OFF_HOST_LATTICES`] per autocorrelation, no two alike: a
    /// periodic host's lattice takes every place in `lattices`.
    pub off_host: Vec<Lattice>,
}

/// [`lattices`], and the square lattices on the strongest peaks.
pub fn candidates(prepared: &Prepared) -> Candidates {
    let grid = grid_px(prepared);
    let search_in = |residual: &Plane, kinds: &[AcfKind]| -> Vec<Found> {
        let (acfs, w, h) = whitened_autocorrelations(residual, grid, kinds);
        acfs.par_iter()
            .map(|acf| search(acf, w, h, prepared, MIN_PERIOD_PX))
            .collect()
    };
    let (mut own, mut read) = rayon::join(
        || {
            search_in(
                &prepared.residual,
                &[
                    AcfKind::blurred(ACF_BLURS[0]),
                    AcfKind::blurred(ACF_BLURS[1]),
                    AcfKind {
                        blur: DESPIKED_ACF_BLUR,
                        spike_level: SPIKE_LEVEL,
                    },
                ],
            )
        },
        || {
            prepared
                .read_residual
                .as_ref()
                .map(|read| search_in(read, &[AcfKind::blurred(READ_ACF_BLUR)]))
                .unwrap_or_default()
        },
    );
    let mut peak_squares: Vec<Lattice> = Vec::new();
    let squares: Vec<Vec<Lattice>> = own
        .iter_mut()
        .chain(read.iter_mut())
        .map(|f| std::mem::take(&mut f.peak_squares))
        .collect();
    interleave_into(&mut peak_squares, &squares, usize::MAX, SAME_SQUARE_PX);
    let off: Vec<Vec<Lattice>> = own
        .iter_mut()
        .chain(read.iter_mut())
        .map(|f| std::mem::take(&mut f.off_host))
        .collect();
    let mut off_host: Vec<Lattice> = Vec::new();
    interleave_into(&mut off_host, &off, usize::MAX, SAME_LATTICE_PX);
    let read: Vec<Lattice> = read.into_iter().flat_map(|f| f.lattices).collect();
    let mut lists: Vec<Vec<Lattice>> = own.into_iter().map(|f| f.lattices).collect();
    let despiked = lists.pop().unwrap_or_default();
    let mut out: Vec<Lattice> = Vec::with_capacity(MAX_CANDIDATES);
    let cap = MAX_CANDIDATES - READ_CANDIDATES - DESPIKED_CANDIDATES;
    interleave_into(&mut out, &lists, cap, SAME_LATTICE_PX);
    let cap = MAX_CANDIDATES - DESPIKED_CANDIDATES;
    interleave_into(&mut out, &[read], cap, SAME_LATTICE_PX);
    interleave_into(&mut out, &[despiked], MAX_CANDIDATES, SAME_LATTICE_PX);
    interleave_into(&mut out, &lists, MAX_CANDIDATES, SAME_LATTICE_PX);
    Candidates {
        lattices: out,
        peak_squares,
        off_host,
    }
}

/// Appends the lists' lattices to `out` in turn (first of each, then
/// second of each, …), skipping any `out` already holds (within
/// `tolerance_px`, see [`same_lattice`]), until it has `cap`.
fn interleave_into(out: &mut Vec<Lattice>, lists: &[Vec<Lattice>], cap: usize, tolerance_px: f64) {
    let longest = lists.iter().map(Vec::len).max().unwrap_or(0);
    for rank in 0..longest {
        for lat in lists.iter().filter_map(|l| l.get(rank)) {
            if out.len() >= cap {
                return;
            }
            if !out.iter().any(|c| same_lattice(c, lat, tolerance_px)) {
                out.push(*lat);
            }
        }
    }
}

/// Blurs of the autocorrelation searched for lattices, working pixels (a
/// Gaussian of σ px keeps frequencies below about 0.2 / σ cycle per
/// pixel). On the devset after scale ½ + JPEG 50 the true lattice was
/// missing from the sharp list of 8 of 10 images; adding σ 2 px changed
/// nothing on the robustness suite.
const ACF_BLURS: [f32; 2] = [0.0, 1.0];
/// Blur of the reading residual's autocorrelation, searched as well.
/// After a downscale, a rotation and JPEG 50 the compression's ringing in
/// near-flat areas hid the lattice from the searches' own residual. On the
/// independent script's leaks (the same files; 25 Nov): seeds 1–5 996 → 998
/// of 1,050, held-out seeds 6–8 595 → 598 of 630 (½ + rotation 30° + JPEG
/// 50 90 → 95), none lost; the sharp autocorrelation as well read 1 fewer.
const READ_ACF_BLUR: f32 = 1.0;
/// Candidates from the reading residual, after the searches' own twelve.
/// Sharing twelve places among three lists instead pushed a quarter crop's
/// true lattice (twelfth) out: 1 of those 630 leaks lost.
const READ_CANDIDATES: usize = 2;
/// Whitened power (a bin's power over its neighbourhood's mean) above
/// which a bin is a spike, reset to 1 in the despiked autocorrelation. A
/// host with a fine regular pattern (a blueprint's grid, a UI's rules and
/// columns) puts its power in sharp spectral lines, up to 81 times their
/// neighbourhood's, and its lattice then fills every candidate list (a
/// quarter crop of a blue drawing sheet with a 50 px grid: all fourteen
/// were the grid's, its multiples or diagonals). Where the leak kept the
/// mark only weakly its lines stand a few times above their neighbours, so
/// the reset costs them little; where it kept the mark well, the other
/// lists find it. Noise alone exceeds 4 in 1.8 % of bins. On the
/// independent script's 1,680 leaks (25 Nov; eight seeds): the three
/// quarter crops of the KiCad screenshot missed before are read (score 1–2
/// → 19–20), none lost. Capping at 4 instead of resetting read the same
/// there but not a synthetic dot grid ten times stronger than the mark;
/// capping at 10 read none of the three.
const SPIKE_LEVEL: f32 = 4.0;
/// Blur of the despiked autocorrelation: sharp, its best two on the blue
/// sheet were still multiples of the grid.
const DESPIKED_ACF_BLUR: f32 = 1.0;
/// Candidates from the despiked autocorrelation, after the reading
/// residual's; a lattice already listed is not repeated.
const DESPIKED_CANDIDATES: usize = 2;
/// Square lattices kept per autocorrelation ([`Candidates::peak_squares`]):
/// each of its 24 strongest peaks taken as one side of a square
/// tile, ranked by the z of the three nearest lattice points the peak does
/// not explain (the side turned by 90° and the two diagonals). A table's
/// rows and columns make a dense host lattice that the density score
/// prefers, and a row multiple near the tile's period hides its vertical
/// side, while its horizontal side and diagonals still stand out (a
/// spreadsheet halved and saved at JPEG 60). Ranked by the density score
/// instead, squares with many empty points lose to a host's long ones. On
/// the independent script's 1,680 leaks: 2 kept gained 6 of the 9 that 3
/// did; 3 squares from 64 peaks instead of 24 gained 2 fewer.
pub const PEAK_SQUARES: usize = 3;
/// Lattices kept per autocorrelation from the peaks off its best lattice
/// ([`Candidates::off_host`]). A periodic host (a tessellation, grid
/// paper) puts its cells' lattice, their multiples and centred variants in
/// every place of every list, and the tile's peaks never join the 24
/// strongest. On a fresh image set (17 images never tuned on, 15 channels
/// of a third attack script, 510 leaks; 25 Nov) this read 415 → 421, none
/// lost: a Truchet wallpaper after ⅓ + JPEG 75, a quarter crop + JPEG 80,
/// and a crop + turn + halving + JPEG 60 (scores 1.6–2.8 → 7.9–19.3).
pub const OFF_HOST_LATTICES: usize = 2;
/// Density score of the best lattice below which no host is looked past:
/// a periodic host's lattice scores in the hundreds, the best lattice of a
/// leak without one (unmarked, or its mark lost) near zero. Ungated, the
/// search off it and its pool cost an unmarked 2 MP leak 27 % more
/// instructions (callgrind, one thread); gated at 20, 6.7 % (some tilted
/// views pass), at 40, 0.4 %, with the same 425 of the third script's 510
/// leaks read at all three.
const OFF_HOST_MIN_SCORE: f64 = 40.0;
/// Distance from a host lattice point within which a peak is the host's,
/// working pixels: the host's far peaks stay within it after JPEG and a
/// resampling once the host's basis is refined on every point.
const HOST_POINT_PX: f64 = 2.5;

/// [`lattices`] from an autocorrelation blurred by `sigma` pixels of
/// `prepared`: under perspective the lattice's scale drifts across the leak,
/// so its autocorrelation peaks smear by lag × drift; blurring gathers them
/// again (the windows of the perspective fit then make the frame exact).
/// The lattices off the best one's points come too
/// ([`Candidates::off_host`]; no peak squares).
///
/// `prepared` may be the working residual shrunk by `decimation` (its
/// `work_scale` divided too): periods are searched down to the same length
/// in working pixels, and the lattices are returned in working pixels.
pub fn lattices_blurred(prepared: &Prepared, sigma: f32, decimation: f64) -> Candidates {
    let (acfs, w, h) = whitened_autocorrelations(
        &prepared.residual,
        grid_px(prepared),
        &[AcfKind::blurred(sigma)],
    );
    let found = search(&acfs[0], w, h, prepared, MIN_PERIOD_PX / decimation);
    let undecimated = |list: Vec<Lattice>| -> Vec<Lattice> {
        list.into_iter()
            .map(|l| Lattice {
                u: scale(l.u, decimation),
                v: scale(l.v, decimation),
                ..l
            })
            .collect()
    };
    Candidates {
        lattices: undecimated(found.lattices),
        peak_squares: Vec::new(),
        off_host: undecimated(found.off_host),
    }
}

/// A JPEG block grid, in working pixels, when JPEG was the leak's last step.
fn grid_px(prepared: &Prepared) -> f64 {
    JPEG_BLOCK_PX * prepared.work_scale
}

/// What one autocorrelation's search found.
#[derive(Default)]
struct Found {
    /// Lattices, best first.
    lattices: Vec<Lattice>,
    /// The best [`PEAK_SQUARES`] peaks, each with itself turned by 90°.
    peak_squares: Vec<Lattice>,
    /// The best [`OFF_HOST_LATTICES`] lattices off the best lattice's points.
    off_host: Vec<Lattice>,
}

/// Lattice candidates, peak squares and lattices off a periodic host from
/// a centred autocorrelation (`w` × `h`, padded). (The perspective
/// search's central views use the lattices and the off-host ones; their
/// few peak squares cost three refinements each.)
fn search(acf: &Plane, w: usize, h: usize, prepared: &Prepared, min_period: f64) -> Found {
    let r = &prepared.residual;
    let (cx, cy) = ((w / 2) as isize, (h / 2) as isize);
    let max_lag = (r.width.min(r.height) as f64 * 0.7).min(w.min(h) as f64 / 2.0 - 2.0);
    if max_lag <= min_period {
        return Found::default();
    }
    let at = |dx: isize, dy: isize| acf.at_clamped(cx + dx, cy + dy);

    // Robust background level over the searched annulus.
    let mut ring = Vec::new();
    let step = 2;
    // Squared lengths: no square root per lag (perf put much of this
    // function's time next to it; the whole detection did not measurably change).
    let in_annulus = |dx: isize, dy: isize| {
        let len2 = (dx * dx + dy * dy) as f64;
        len2 >= min_period * min_period && len2 <= max_lag * max_lag
    };
    for dy in (0..=max_lag as isize).step_by(step) {
        for dx in (-(max_lag as isize)..=max_lag as isize).step_by(step) {
            if in_annulus(dx, dy) {
                ring.push(at(dx, dy));
            }
        }
    }
    if ring.len() < 16 {
        return Found::default();
    }
    let mid = ring.len() / 2;
    let median = *ring.select_nth_unstable_by(mid, f32::total_cmp).1;
    let mut deviations: Vec<f32> = ring.iter().map(|v| (v - median).abs()).collect();
    let mad = *deviations.select_nth_unstable_by(mid, f32::total_cmp).1;
    let sigma = (1.4826 * mad).max(1e-9);
    let z = |dx: isize, dy: isize| ((at(dx, dy) - median) / sigma) as f64;

    let maxima = local_maxima(&at, &z, max_lag, &in_annulus);
    let peaks: Vec<(f64, isize, isize)> = maxima.iter().take(PEAKS).copied().collect();
    let lattice_z = |p: [f64; 2]| -> f64 { nearest_z(&z, p) };
    let mut candidates = lattices_from_peaks(&peaks, &lattice_z, min_period, max_lag);
    // A strongly periodic host (a tessellation, grid paper, a table) puts
    // every strong peak on its own lattice, and the tile's peaks never
    // reach the list: the peaks off the best lattice's points (and off its
    // half-period points, where a centred host puts its own) are searched
    // again, host points counting as neither present nor missing.
    let host = candidates.first().filter(|l| l.score >= OFF_HOST_MIN_SCORE);
    let off_host = host.map_or_else(Vec::new, |&host| {
        let host = refine(acf, cx, cy, max_lag, host);
        let peaks: Vec<(f64, isize, isize)> = maxima
            .iter()
            .filter(|p| !near_half_lattice(&host, [p.1 as f64, p.2 as f64]))
            .take(PEAKS)
            .copied()
            .collect();
        let masked_z = |p: [f64; 2]| -> f64 {
            if near_half_lattice(&host, p) {
                Z_EMPTY
            } else {
                nearest_z(&z, p)
            }
        };
        // Refining may pull a side onto a strong host peak nearby: such a
        // lattice is the host's after all.
        let clear_of_host =
            |l: &Lattice| !near_half_lattice(&host, l.u) && !near_half_lattice(&host, l.v);
        lattices_from_peaks(&peaks, &masked_z, min_period, max_lag)
            .into_iter()
            .filter(clear_of_host)
            .map(|c| refine(acf, cx, cy, max_lag, c))
            .filter(clear_of_host)
            .take(OFF_HOST_LATTICES)
            .collect()
    });
    candidates.truncate(MAX_CANDIDATES);
    // Each peak as one side of a square tile, judged by the three lattice
    // points the peak itself does not explain: the side turned by 90° and
    // the two diagonals. A table's strongest peaks rarely have all three.
    let mut peak_squares: Vec<Lattice> = peaks
        .iter()
        .map(|&(_, px, py)| [px as f64, py as f64])
        .filter(|&side| norm(side) * std::f64::consts::SQRT_2 <= max_lag)
        .map(|side| {
            let turned = [-side[1], side[0]];
            let score = [turned, add(side, turned), sub(side, turned)]
                .into_iter()
                .map(|p| lattice_z(p).min(12.0))
                .sum();
            Lattice {
                u: side,
                v: turned,
                score,
            }
        })
        .collect();
    peak_squares.sort_by(|a, b| b.score.total_cmp(&a.score));
    peak_squares.truncate(PEAK_SQUARES);
    let peak_squares = peak_squares
        .into_iter()
        .map(|c| refine(acf, cx, cy, max_lag, c))
        .collect();
    Found {
        lattices: candidates
            .into_iter()
            .map(|c| refine(acf, cx, cy, max_lag, c))
            .collect(),
        peak_squares,
        off_host,
    }
}

/// Density score's charge for a predicted lattice point with no peak:
/// Σ (z − Z_EMPTY) rewards a lattice that explains many peaks and punishes
/// one that predicts peaks that are not there, so neither a sparser
/// sub-lattice nor a finer super-lattice beats the true one.
const Z_EMPTY: f64 = 4.0;

/// The local maxima of the autocorrelation in the upper half of the
/// annulus, strongest first, as (z, dx, dy).
fn local_maxima(
    at: &impl Fn(isize, isize) -> f32,
    z: &impl Fn(isize, isize) -> f64,
    max_lag: f64,
    in_annulus: &impl Fn(isize, isize) -> bool,
) -> Vec<(f64, isize, isize)> {
    let mut peaks: Vec<(f64, isize, isize)> = Vec::new();
    let ml = max_lag as isize;
    for dy in 0..=ml {
        for dx in -ml..=ml {
            if dy == 0 && dx <= 0 {
                continue;
            }
            if !in_annulus(dx, dy) {
                continue;
            }
            let v = at(dx, dy);
            let mut is_max = true;
            'n: for ny in -1..=1 {
                for nx in -1..=1 {
                    if (nx, ny) != (0, 0) && at(dx + nx, dy + ny) > v {
                        is_max = false;
                        break 'n;
                    }
                }
            }
            if is_max {
                peaks.push((z(dx, dy), dx, dy));
            }
        }
    }
    peaks.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    peaks
}

/// The largest z within a pixel of `p`.
fn nearest_z(z: &impl Fn(isize, isize) -> f64, p: [f64; 2]) -> f64 {
    let (px, py) = (p[0].round() as isize, p[1].round() as isize);
    let mut best = f64::NEG_INFINITY;
    for ny in -1..=1 {
        for nx in -1..=1 {
            best = best.max(z(px + nx, py + ny));
        }
    }
    best
}

/// Whether `p` lies within [`HOST_POINT_PX`] of a point of the lattice
/// spanned by half of `host`'s sides.
fn near_half_lattice(host: &Lattice, p: [f64; 2]) -> bool {
    let (u, v) = (scale(host.u, 0.5), scale(host.v, 0.5));
    let det = cross(u, v);
    if det.abs() < 1e-9 {
        return false;
    }
    // Coordinates of p in the (u, v) basis, rounded to the nearest point.
    let a = (cross(p, v) / det).round();
    let b = (cross(u, p) / det).round();
    norm(sub(p, add(scale(u, a), scale(v, b)))) <= HOST_POINT_PX
}

/// Lattices through the peaks, best first by their density score: bases
/// from the peaks and from their halves and thirds (a lattice's shortest
/// vector is sometimes masked by the host), each pair reduced and scored by
/// every lattice point it predicts (see [`Z_EMPTY`]); then the index-2
/// neighbours of the best [`DENSITY_CANDIDATES`].
fn lattices_from_peaks(
    peaks: &[(f64, isize, isize)],
    lattice_z: &impl Fn([f64; 2]) -> f64,
    min_period: f64,
    max_lag: f64,
) -> Vec<Lattice> {
    let density_score = |u: [f64; 2], v: [f64; 2]| -> f64 {
        let kmax = (max_lag / norm(u).min(norm(v))).ceil() as i32 + 1;
        let mut total = 0.0;
        for k in -kmax..=kmax {
            for l in 0..=kmax {
                if l == 0 && k <= 0 {
                    continue;
                }
                let p = add(scale(u, f64::from(k)), scale(v, f64::from(l)));
                let len = norm(p);
                if len >= min_period && len <= max_lag {
                    total += lattice_z(p).min(12.0) - Z_EMPTY;
                }
            }
        }
        total
    };
    let mut vectors: Vec<[f64; 2]> = Vec::new();
    for &(_, px, py) in peaks {
        for div in [1.0, 2.0, 3.0] {
            let p = [px as f64 / div, py as f64 / div];
            if norm(p) >= min_period {
                vectors.push(p);
            }
        }
    }
    let mut candidates: Vec<Lattice> = Vec::new();
    let mut seen = LatticeIndex::default();
    for (i, &a) in vectors.iter().enumerate() {
        for &b in vectors.iter().skip(i + 1) {
            let Some((u, v)) = reduce(a, b) else { continue };
            let (lu, lv) = (norm(u), norm(v));
            if lu < min_period || lv > max_lag || lv / lu > 1.6 {
                continue;
            }
            let sin = cross(u, v).abs() / (lu * lv);
            if sin < 0.7 {
                continue;
            }
            // No lattice is rejected for lying on the JPEG block grid: in
            // working pixels the grid is 8 × the work scale, so a mark's
            // lattice lies on it by coincidence for a third of the sizes of a
            // 2–8 MP issue (unattacked 4 and 6 MP covers went undetected),
            // and the spectrum's grid lines are zeroed above anyway.
            let lat = Lattice { u, v, score: 0.0 };
            if !seen.holds_same(&candidates, &lat) {
                seen.insert(&lat, candidates.len());
                candidates.push(lat);
            }
        }
    }
    for c in &mut candidates {
        c.score = density_score(c.u, c.v);
    }
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    candidates.truncate(DENSITY_CANDIDATES);
    // A host periodicity can make a finer lattice (the tile is a sub-lattice
    // of it) or a blurred leak a coarser one (its diagonals outshine its
    // sides) score best: the index-2 neighbours of the leaders join the list.
    let leaders: Vec<Lattice> = candidates.clone();
    for lead in leaders {
        let (u, v) = (lead.u, lead.v);
        let neighbours = [
            (scale(u, 2.0), v),
            (u, scale(v, 2.0)),
            (add(u, v), sub(u, v)),
            (scale(u, 0.5), v),
            (u, scale(v, 0.5)),
            (scale(add(u, v), 0.5), scale(sub(u, v), 0.5)),
        ];
        for (a, b) in neighbours {
            let Some((nu, nv)) = reduce(a, b) else {
                continue;
            };
            if norm(nu) < min_period || norm(nv) > max_lag {
                continue;
            }
            let lat = Lattice {
                u: nu,
                v: nv,
                score: density_score(nu, nv),
            };
            if !candidates
                .iter()
                .any(|c| same_lattice(c, &lat, SAME_LATTICE_PX))
            {
                candidates.push(lat);
            }
        }
    }
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    candidates
}

/// Where lattices lie, by their first side, so that finding one the same
/// as a new lattice ([`same_lattice`] within [`SAME_LATTICE_PX`]) looks at
/// a few neighbours, not at every lattice found so far: the pairs of 72
/// peak vectors made a few hundred candidates, and comparing each with all
/// before it took most of the search's time.
#[derive(Default)]
struct LatticeIndex {
    /// Indices of the lattices whose first side falls in each cell of a
    /// grid of [`SAME_LATTICE_PX`].
    cells: HashMap<(i64, i64), Vec<usize>>,
}

impl LatticeIndex {
    fn cell(p: [f64; 2]) -> (i64, i64) {
        (
            (p[0] / SAME_LATTICE_PX).floor() as i64,
            (p[1] / SAME_LATTICE_PX).floor() as i64,
        )
    }

    /// Records that `lattices[index]` is `lat`.
    fn insert(&mut self, lat: &Lattice, index: usize) {
        self.cells.entry(Self::cell(lat.u)).or_default().push(index);
    }

    /// Whether `lattices` holds one the same as `lat`. Such a lattice has
    /// its first side within the tolerance of ± either side of `lat`, so in
    /// one of the cells next to theirs.
    fn holds_same(&self, lattices: &[Lattice], lat: &Lattice) -> bool {
        [lat.u, scale(lat.u, -1.0), lat.v, scale(lat.v, -1.0)]
            .into_iter()
            .any(|side| {
                let (cx, cy) = Self::cell(side);
                (-1..=1).any(|dy| {
                    (-1..=1).any(|dx| {
                        self.cells.get(&(cx + dx, cy + dy)).is_some_and(|ids| {
                            ids.iter()
                                .any(|&i| same_lattice(&lattices[i], lat, SAME_LATTICE_PX))
                        })
                    })
                })
            })
    }
}

/// Least-squares fit of the basis to every lattice point visible in the
/// autocorrelation (sub-pixel peak positions): far points pin the period to
/// a small fraction of a pixel, which folding over many tiles needs.
fn refine(acf: &Plane, cx: isize, cy: isize, max_lag: f64, mut lat: Lattice) -> Lattice {
    let at = |x: isize, y: isize| f64::from(acf.at_clamped(cx + x, cy + y));
    for _ in 0..3 {
        let (mut suu, mut suv, mut svv) = (0.0, 0.0, 0.0);
        let (mut bu, mut bv) = ([0.0; 2], [0.0; 2]);
        let kmax = (max_lag / norm(lat.u).min(norm(lat.v))).ceil() as i32 + 1;
        for k in -kmax..=kmax {
            for l in 0..=kmax {
                if l == 0 && k <= 0 {
                    continue;
                }
                let p = add(scale(lat.u, f64::from(k)), scale(lat.v, f64::from(l)));
                if norm(p) > max_lag || norm(p) < 1.0 {
                    continue;
                }
                // Local maximum within ±2 px, then a parabolic sub-pixel fit.
                let (mut bx, mut by, mut bval) = (
                    p[0].round() as isize,
                    p[1].round() as isize,
                    f64::NEG_INFINITY,
                );
                let (px, py) = (bx, by);
                for ny in -2..=2 {
                    for nx in -2..=2 {
                        let v = at(px + nx, py + ny);
                        if v > bval {
                            (bx, by, bval) = (px + nx, py + ny, v);
                        }
                    }
                }
                if bval <= 0.0 {
                    continue;
                }
                let obs = subpixel_peak(&at, bx, by);
                let wgt = bval;
                let (kf, lf) = (f64::from(k), f64::from(l));
                suu += wgt * kf * kf;
                suv += wgt * kf * lf;
                svv += wgt * lf * lf;
                for d in 0..2 {
                    bu[d] += wgt * kf * obs[d];
                    bv[d] += wgt * lf * obs[d];
                }
            }
        }
        let det = suu * svv - suv * suv;
        if det.abs() < 1e-9 {
            break;
        }
        for d in 0..2 {
            lat.u[d] = (svv * bu[d] - suv * bv[d]) / det;
            lat.v[d] = (suu * bv[d] - suv * bu[d]) / det;
        }
    }
    lat
}

/// Sub-pixel position of the local maximum at (x, y): a parabola through
/// it and its neighbours, separately along x and y.
fn subpixel_peak(at: &impl Fn(isize, isize) -> f64, x: isize, y: isize) -> [f64; 2] {
    let centre = at(x, y);
    let offset = |m: f64, p: f64| {
        let den = m - 2.0 * centre + p;
        if den < 0.0 {
            (0.5 * (m - p) / den).clamp(-0.5, 0.5)
        } else {
            0.0
        }
    };
    [
        x as f64 + offset(at(x - 1, y), at(x + 1, y)),
        y as f64 + offset(at(x, y - 1), at(x, y + 1)),
    ]
}

/// Gauss–Lagrange reduction: the shortest basis of the lattice spanned by a, b.
fn reduce(mut a: [f64; 2], mut b: [f64; 2]) -> Option<([f64; 2], [f64; 2])> {
    if cross(a, b).abs() < 1e-6 {
        return None;
    }
    for _ in 0..32 {
        if norm(a) > norm(b) {
            std::mem::swap(&mut a, &mut b);
        }
        let mu = (dot(a, b) / dot(a, a)).round();
        if mu == 0.0 {
            break;
        }
        b = sub(b, scale(a, mu));
    }
    Some((a, b))
}

/// The lattice with its longer side divided by 2 or 3, when it has the
/// shape of the square tile's lattice with one side that many periods long:
/// sides at right angles within [`MULTIPLE_SIDE_TOLERANCE`] and a length
/// ratio within it of 2 or 3. After a rotation and JPEG the lattice points
/// between are weak, so the autocorrelation finds this shape, often below
/// the lattices the nearby search takes (devset, scale ½ + rotate 30° +
/// JPEG 50: three of the six failures had it at rank 3, exact once divided,
/// though their mark was then too weak to read: 7.3, 5.3, 1.9; samples ×
/// keys 1–8 after the same channel: 12 → 16 of 32 read).
pub fn one_side_divided(lat: &Lattice) -> Option<Lattice> {
    let (lu, lv) = (norm(lat.u), norm(lat.v));
    if lu.min(lv) <= 0.0 {
        return None;
    }
    if dot(lat.u, lat.v).abs() / (lu * lv) > MULTIPLE_SIDE_TOLERANCE {
        return None;
    }
    let ratio = lu.max(lv) / lu.min(lv);
    let k = ratio.round();
    if !(2.0..=3.0).contains(&k) || (ratio / k - 1.0).abs() > MULTIPLE_SIDE_TOLERANCE {
        return None;
    }
    Some(if lu > lv {
        Lattice {
            u: scale(lat.u, 1.0 / k),
            ..*lat
        }
    } else {
        Lattice {
            v: scale(lat.v, 1.0 / k),
            ..*lat
        }
    })
}

/// Relative tolerance of [`one_side_divided`]'s shape test (cosine of the
/// angle between the sides, and the length ratio's error): about 8°, 8 %,
/// room for an aspect change or a perspective's shear.
const MULTIPLE_SIDE_TOLERANCE: f64 = 0.08;

/// Working pixels within which two candidate lattices' vectors count as one.
pub const SAME_LATTICE_PX: f64 = 3.0;
/// The same for square lattices on single peaks ([`PEAK_SQUARES`]), which
/// are tried once each with no nearby search: a table's ten rows 1.8 %
/// shorter than the tile's period were 1.7 px from it (a spreadsheet
/// scaled to 0.4), and the fold over eight periods drifts by several
/// chips with that error.
pub const SAME_SQUARE_PX: f64 = 1.0;

/// Whether two lattices are the same up to sign and order of their vectors,
/// each vector within `tolerance_px`.
pub fn same_lattice(a: &Lattice, b: &Lattice, tolerance_px: f64) -> bool {
    let close = |p: [f64; 2], q: [f64; 2]| norm(sub(p, q)).min(norm(add(p, q))) < tolerance_px;
    (close(a.u, b.u) && close(a.v, b.v)) || (close(a.u, b.v) && close(a.v, b.u))
}

fn dot(a: [f64; 2], b: [f64; 2]) -> f64 {
    a[0] * b[0] + a[1] * b[1]
}
fn cross(a: [f64; 2], b: [f64; 2]) -> f64 {
    a[0] * b[1] - a[1] * b[0]
}
fn norm(a: [f64; 2]) -> f64 {
    dot(a, a).sqrt()
}
fn add(a: [f64; 2], b: [f64; 2]) -> [f64; 2] {
    [a[0] + b[0], a[1] + b[1]]
}
fn sub(a: [f64; 2], b: [f64; 2]) -> [f64; 2] {
    [a[0] - b[0], a[1] - b[1]]
}
fn scale(a: [f64; 2], s: f64) -> [f64; 2] {
    [a[0] * s, a[1] * s]
}

/// A pixel rectangle `(x0, y0, x1, y1)`, end-exclusive.
pub type Rect = (usize, usize, usize, usize);

/// A centred whitened autocorrelation with its padded width and height.
type Acf = (Plane, usize, usize);

/// Whitened autocorrelations of windows of one leak, each computed once
/// however many starting lattices search the same window.
#[derive(Default)]
pub struct WindowAcfs {
    done: Mutex<HashMap<Rect, Arc<Acf>>>,
}

impl WindowAcfs {
    fn get(&self, prepared: &Prepared, rect: Rect) -> Arc<Acf> {
        // A poisoned lock only means another search panicked; the map is still sound.
        let lock = || self.done.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(acf) = lock().get(&rect) {
            return Arc::clone(acf);
        }
        let acf = Arc::new(whitened_autocorrelation(
            &prepared.residual.crop(rect),
            grid_px(prepared),
        ));
        Arc::clone(lock().entry(rect).or_insert(acf))
    }
}

/// The lattice of one window of the leak, searched near `near` (the global
/// lattice): under perspective each part of a photo has its own local affine
/// map, which the global autocorrelation only averages. `None` when the
/// window shows no clear peak near either basis vector.
pub fn local_lattice(
    prepared: &Prepared,
    rect: Rect,
    near: &Lattice,
    windows: &WindowAcfs,
) -> Option<Lattice> {
    let (x0, y0, x1, y1) = rect;
    let (w, h) = (x1.checked_sub(x0)?, y1.checked_sub(y0)?);
    if w < 16 || h < 16 {
        return None;
    }
    let acf = windows.get(prepared, rect);
    let (acf, aw, ah) = (&acf.0, acf.1, acf.2);
    let (cx, cy) = ((aw / 2) as isize, (ah / 2) as isize);
    let at = |x: isize, y: isize| f64::from(acf.at_clamped(cx + x, cy + y));
    // Best sub-pixel peak within 15 % of the predicted vector.
    let find = |p: [f64; 2]| -> Option<[f64; 2]> {
        let radius = (0.15 * norm(p)).ceil() as isize;
        let (px, py) = (p[0].round() as isize, p[1].round() as isize);
        let (mut bx, mut by, mut best) = (px, py, f64::NEG_INFINITY);
        for dy in -radius..=radius {
            for dx in -radius..=radius {
                let v = at(px + dx, py + dy);
                if v > best {
                    (bx, by, best) = (px + dx, py + dy, v);
                }
            }
        }
        // Lags up to 0.7 of the window fit the zero padding without wrapping.
        let too_long = |lag: isize, size: usize| lag.unsigned_abs() as f64 > 0.7 * size as f64;
        if best <= 0.0 || too_long(bx, w) || too_long(by, h) {
            return None;
        }
        Some(subpixel_peak(&at, bx, by))
    };
    let u = find(near.u)?;
    let v = find(near.v)?;
    Some(Lattice { u, v, score: 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resized_copy_keeps_its_chip_share_of_the_short_side_below_the_clamp() {
        // 1200 × 900 issued at 900 / 288 = 3.125 px; halved, 1.5625 px, which
        // the leak's own size (clamped to 3 px) does not give.
        let half = as_resized(600, 450, 1.0).expect("the clamp binds at 450 px");
        let period = 450.0 / crate::embed::CHIPS_PER_SHORT_SIDE * crate::pattern::TILE as f64;
        assert!((half.u[0] - period).abs() < 1e-9 && half.u[1] == 0.0);
        assert!((half.v[1] - period).abs() < 1e-9 && half.v[0] == 0.0);
        assert_eq!(
            as_resized(450, 900, 0.5).map(|l| l.u[0]),
            Some(period * 0.5)
        );
        // At 864 px and above the issued geometry is already the resized one.
        assert_eq!(as_resized(1200, 900, 1.0), None);
        assert_eq!(as_resized(1000, 864, 1.0), None);
    }

    #[test]
    fn frequency_rings_depend_on_the_radius_only() {
        let (w, h) = (200, 100);
        assert_eq!(ring_of(0, 0, w, h), 0);
        // 0.25 cycle per pixel along x, along y (both signs) and diagonally.
        let r = ring_of(50, 0, w, h);
        assert_eq!(ring_of(0, 25, w, h), r);
        assert_eq!(ring_of(0, 75, w, h), r);
        let d = (0.25f64 / 2f64.sqrt() * 200.0).round() as usize;
        let e = (0.25f64 / 2f64.sqrt() * 100.0).round() as usize;
        assert!(ring_of(d, e, w, h).abs_diff(r) <= 1);
        assert_eq!(r, FLATTEN_RINGS * 25 / 71);
        assert_eq!(ring_of(100, 50, w, h), FLATTEN_RINGS - 1);
    }

    #[test]
    fn flattening_keeps_the_rms_and_lifts_a_broadband_pattern_out_of_banded_noise() {
        // A weak ±1 pattern (what the fold reads) under strong noise confined
        // to a few frequencies (what JPEG blocks or a screen grid leave).
        let (w, h) = (240usize, 200usize);
        let pattern = xorshift_signs(w * h);
        let waves = [
            (8.0f32, 0.0f32, 0.3f32),
            (7.5, 1.0, 1.1),
            (0.0, 8.0, 2.0),
            (3.0, 9.0, 0.7),
        ];
        let data: Vec<f32> = (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w) as f32, (i / w) as f32);
                let noise: f32 = waves
                    .iter()
                    .map(|&(fx, fy, phase)| {
                        let t = std::f32::consts::TAU * (fx * x / 24.0 + fy * y / 20.0) + phase;
                        3.0 * t.cos()
                    })
                    .sum();
                0.1 * pattern[i] + noise
            })
            .collect();
        let residual = Plane {
            data,
            width: w,
            height: h,
        };
        let flat = flatten_spectrum(&residual);
        let rms = |d: &[f32]| (d.iter().map(|v| v * v).sum::<f32>() / d.len() as f32).sqrt();
        assert!((rms(&flat.data) / rms(&residual.data) - 1.0).abs() < 1e-3);
        let before = crate::stats::normalized_correlation(&pattern, &residual.data);
        let after = crate::stats::normalized_correlation(&pattern, &flat.data);
        assert!(
            before < 7.0 && after > 3.0 * before,
            "z {before:.1} → {after:.1}"
        );
    }

    #[test]
    fn a_lattice_with_one_side_two_or_three_periods_long_is_divided() {
        let rot = |len: f64, deg: f64| {
            let a = deg.to_radians();
            [len * a.cos(), len * a.sin()]
        };
        let lat = |u, v| Lattice { u, v, score: 1.0 };
        let d = one_side_divided(&lat(rot(80.0, 30.0), rot(240.0, 120.0))).unwrap();
        assert!(same_lattice(
            &d,
            &lat(rot(80.0, 30.0), rot(80.0, 120.0)),
            1e-9
        ));
        let d = one_side_divided(&lat(rot(163.0, 12.0), rot(80.0, 100.0))).unwrap();
        assert!(same_lattice(
            &d,
            &lat(rot(81.5, 12.0), rot(80.0, 100.0)),
            1e-9
        ));
        // Square, 1.5 periods, or not at right angles: left alone.
        assert!(one_side_divided(&lat(rot(80.0, 30.0), rot(80.0, 120.0))).is_none());
        assert!(one_side_divided(&lat(rot(80.0, 30.0), rot(120.0, 120.0))).is_none());
        assert!(one_side_divided(&lat(rot(80.0, 30.0), rot(160.0, 75.0))).is_none());
    }

    #[test]
    fn the_detail_of_ink_is_taken_against_the_ink() {
        // Paper at 255 with a 2-px vertical ink line at 30 + a ±2 mark.
        let (w, h) = (32, 32);
        let mut ink = Plane::filled(w, h, 255.0);
        for y in 0..h {
            for x in [15, 16] {
                ink.data[y * w + x] = 30.0 + if (x + y) % 2 == 0 { 2.0 } else { -2.0 };
            }
        }
        let p = similar_mean(&ink, 3, 6.0);
        for y in 3..h - 3 {
            let got = p.data[y * w + 15];
            assert!((got - 30.0).abs() < 0.5, "ink predicted {got} at y {y}");
        }
    }

    #[test]
    fn reduction_finds_the_short_basis() {
        // (31, 10) − 3·(10, 0) = (1, 10): the reduced basis is (10, 0), (1, 10).
        let (u, v) = reduce([10.0, 0.0], [31.0, 10.0]).unwrap();
        assert!((norm(u) - 10.0).abs() < 1e-9);
        assert!(
            (v[0] - 1.0).abs() < 1e-9 && (v[1] - 10.0).abs() < 1e-9,
            "{v:?}"
        );
    }

    /// `n` reproducible ±1 values (xorshift32), for synthetic residuals.
    fn xorshift_signs(n: usize) -> Vec<f32> {
        let mut state = 0x2545_f491_u32;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                if state & 1 == 0 {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect()
    }

    /// `n` values uniform in [−0.5, 0.5), from a fixed xorshift stream.
    fn uniform_noise(n: usize) -> Vec<f32> {
        let mut state = 0x9e37_79b9_u32;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// A residual repeating a random 114 × 114 px tile, as left by a mark.
    fn periodic_residual(width: usize, height: usize, period: usize) -> Plane {
        let tile = xorshift_signs(period * period);
        let data = (0..width * height)
            .map(|i| tile[(i / width % period) * period + i % width % period])
            .collect();
        Plane {
            width,
            height,
            data,
        }
    }

    /// A working residual at the leak's own scale, with no reading residual.
    fn unshrunk(residual: Plane) -> Prepared {
        Prepared {
            residual,
            work_scale: 1.0,
            read_residual: None,
        }
    }

    #[test]
    fn a_mark_left_only_in_low_frequencies_is_found_by_the_blurred_search() {
        // The tile smoothed (as JPEG and downscaling leave it), under white
        // noise that fills the high frequencies the flat whitening weighs
        // as much as the low ones.
        // Noise amplitude: the sharp search alone misses the lattice from
        // 4 up (3.5 it still finds), the interleaved search finds it up to 7.
        const NOISE: f32 = 5.5;
        let (w, h, period) = (640, 480, 114);
        let mark = periodic_residual(w, h, period).gaussian(2.0);
        let noise = uniform_noise(w * h);
        let residual = Plane {
            data: mark
                .data
                .iter()
                .zip(&noise)
                .map(|(&m, &n)| m + NOISE * n)
                .collect(),
            ..mark
        };
        let prepared = unshrunk(residual);
        let is_true = |l: &Lattice| {
            (norm(l.u) - period as f64).abs() < 2.0 && (norm(l.v) - period as f64).abs() < 2.0
        };
        assert!(
            !lattices_blurred(&prepared, 0.0, 1.0)
                .lattices
                .iter()
                .take(2)
                .any(is_true),
            "the sharp search alone should miss it (raise NOISE)"
        );
        let found = lattices(&prepared);
        assert!(found.iter().take(2).any(is_true), "{found:?}");
    }
    #[test]
    fn the_spectral_blur_of_the_autocorrelation_is_the_spatial_one() {
        let residual = periodic_residual(300, 200, 50);
        let (sharp, w, h) = whitened_autocorrelation(&residual, 8.0);
        let (blurred, ..) = whitened_autocorrelations(&residual, 8.0, &[AcfKind::blurred(1.5)]);
        let spatial = sharp.gaussian(1.5);
        assert!((sharp.data[h / 2 * w + w / 2] - 1.0).abs() < 1e-4);
        let peak = spatial.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        // Away from the far lags, where the transform wraps and the plane clamps.
        let worst = (h / 4..3 * h / 4)
            .flat_map(|y| (w / 4..3 * w / 4).map(move |x| y * w + x))
            .map(|i| (blurred[0].data[i] - spatial.data[i]).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 0.01 * peak, "{worst} of {peak}");
    }

    #[test]
    fn a_halved_residual_gives_its_lattice_in_working_pixels_down_to_the_shortest_period() {
        for period in [40usize, 114] {
            let full = periodic_residual(640, 480, period);
            let prepared = Prepared {
                residual: full.resize_area(320, 240),
                work_scale: 0.5,
                read_residual: None,
            };
            let is_true = |l: &Lattice| {
                (norm(l.u) - period as f64).abs() < 2.0 && (norm(l.v) - period as f64).abs() < 2.0
            };
            let found = lattices_blurred(&prepared, 0.5, 2.0).lattices;
            assert!(
                found.iter().take(2).any(is_true),
                "period {period}: {found:?}"
            );
            if period < 2 * MIN_PERIOD_PX as usize {
                // Half the period is shorter than the search would go undecimated.
                let halved = |l: &Lattice| {
                    (2.0 * norm(l.u) - period as f64).abs() < 2.0
                        && (2.0 * norm(l.v) - period as f64).abs() < 2.0
                };
                assert!(!lattices_blurred(&prepared, 0.5, 1.0)
                    .lattices
                    .iter()
                    .any(halved));
            }
        }
    }

    #[test]
    fn the_reading_residual_weighs_a_near_flat_ripple_less_than_the_searches_do() {
        // Left half: texture (±20 levels); right half: flat with a ±0.5
        // ripple, what JPEG leaves where it has quantised the mark away.
        let (w, h) = (512, 256);
        let signs = xorshift_signs(w * h);
        let luma = Plane {
            width: w,
            height: h,
            data: (0..w * h)
                .map(|i| 128.0 + signs[i] * if i % w < w / 2 { 20.0 } else { 0.5 })
                .collect(),
        };
        let detail = Detail::against(&luma, &luma.box_mean(DETAIL_RADIUS));
        let rms = |plane: &Plane, x0: usize, x1: usize| {
            let (mut sum, mut n) = (0.0f64, 0usize);
            for y in 32..h - 32 {
                for x in x0..x1 {
                    sum += f64::from(plane.data[y * w + x]).powi(2);
                    n += 1;
                }
            }
            (sum / n as f64).sqrt()
        };
        let flat_to_texture = |plane: &Plane| rms(plane, 320, 480) / rms(plane, 32, 192);
        let search = flat_to_texture(&detail.normalised(SYNC_FLOOR));
        let read = flat_to_texture(&detail.normalised(READ_FLOOR));
        assert!(
            read < 0.75 * search,
            "flat / texture: reading {read}, search {search}"
        );
    }

    #[test]
    fn the_reading_residuals_lattices_come_after_the_searches_own() {
        let searches = unshrunk(periodic_residual(640, 480, 114));
        let own = lattices(&searches);
        let both = lattices(&Prepared {
            read_residual: Some(periodic_residual(640, 480, 90)),
            ..searches
        });
        let first = own
            .len()
            .min(MAX_CANDIDATES - READ_CANDIDATES - DESPIKED_CANDIDATES);
        assert!(first > 0, "{own:?}");
        assert_eq!(both[..first], own[..first]);
        assert!(both.len() <= MAX_CANDIDATES);
        let of_period = |p: f64| {
            both.iter()
                .position(|l| (norm(l.u) - p).abs() < 2.0 && (norm(l.v) - p).abs() < 2.0)
        };
        assert!(of_period(90.0).is_some_and(|i| i >= first), "{both:?}");
        assert!(of_period(114.0).is_some_and(|i| i < first), "{both:?}");
    }

    #[test]
    fn a_fine_regular_host_pattern_does_not_hide_the_lattice() {
        // A blueprint's grid: a dot every 50 px both ways, far stronger than
        // the mark, which JPEG left smoothed and noisy. The grid's lattice,
        // its multiples and diagonals fill every list but the despiked one.
        let (w, h, period) = (640, 480, 114);
        let mark = periodic_residual(w, h, period).gaussian(1.0);
        let noise: Vec<f32> = uniform_noise(w * h).iter().map(|n| 2.0 * n).collect();
        for dot in [5.0, 20.0, 60.0] {
            let data = mark
                .data
                .iter()
                .zip(&noise)
                .enumerate()
                .map(|(i, (&m, &n))| {
                    let (x, y) = (i % w, i / w);
                    m + n + if x % 50 < 2 && y % 50 < 2 { dot } else { 0.0 }
                })
                .collect();
            let prepared = unshrunk(Plane {
                data,
                ..mark.clone()
            });
            let found = lattices(&prepared);
            assert!(
                found.iter().any(|l| (norm(l.u) - period as f64).abs() < 2.0
                    && (norm(l.v) - period as f64).abs() < 2.0),
                "dot {dot}: {found:?}"
            );
        }
    }

    #[test]
    fn a_table_whose_rows_repeat_near_the_tile_period_does_not_hide_its_square() {
        // A spreadsheet halved: 12 px rows of text and rules, 55 px columns.
        // Ten rows (120 px) lie 2 px from the tile's period, so the rows'
        // peak drowns the tile's vertical one, and the table's own lattice
        // outscores every lattice with the tile's weaker horizontal side.
        let (w, h, period) = (800, 550, 122);
        let mark = periodic_residual(w, h, period).gaussian(1.0);
        let noise: Vec<f32> = uniform_noise(w * h).iter().map(|n| 2.0 * n).collect();
        let text = xorshift_signs(w * h);
        for ink in [6.0, 7.0, 8.0] {
            let data = mark
                .data
                .iter()
                .zip(&noise)
                .zip(&text)
                .enumerate()
                .map(|(i, ((&m, &n), &t))| {
                    let (x, y) = (i % w, i / w);
                    let rule = y % 12 == 0 || x % 55 == 0;
                    let glyphs = (2..9).contains(&(y % 12)) && (4..40).contains(&(x % 55));
                    m + n
                        + if rule {
                            ink
                        } else if glyphs {
                            ink * t
                        } else {
                            0.0
                        }
                })
                .collect();
            let prepared = unshrunk(Plane {
                data,
                ..mark.clone()
            });
            let found = candidates(&prepared);
            let is_tile = |l: &Lattice| {
                (norm(l.u) - period as f64).abs() < 1.0 && (norm(l.v) - period as f64).abs() < 1.0
            };
            assert!(
                found.peak_squares.iter().any(is_tile),
                "ink {ink}: {:?}",
                found.peak_squares
            );
        }
    }

    #[test]
    fn a_lattice_is_found_in_a_leak_shrunk_more_than_sevenfold() {
        // Regression: an 8700 × 5800 marked scan (work scale 0.118, JPEG grid
        // 0.94 working px) had every lattice discarded as "on the JPEG grid",
        // so no image with a long side over ~6,800 px was ever detected.
        for work_scale in [1.0, 0.47, 0.1177] {
            let prepared = Prepared {
                residual: periodic_residual(1024, 683, 114),
                work_scale,
                read_residual: None,
            };
            let found = lattices(&prepared);
            assert!(
                found
                    .iter()
                    .any(|l| (norm(l.u) - 114.0).abs() < 2.0 && (norm(l.v) - 114.0).abs() < 2.0),
                "work scale {work_scale}: {found:?}"
            );
        }
    }
}
