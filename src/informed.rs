//! Informed detection: read the mark with the archived original at hand.
//!
//! Blind detection must find the tile's geometry from the mark itself, and
//! on photos of screens, prints and strong perspective that is what fails
//! (DESIGN.md, "What we measured"). With the original, the geometry comes
//! from the image content instead ([`crate::register`]), and the drawing's
//! own interference can be removed: the leak is resampled onto the
//! original's pixel grid, the original's tones are fitted to it locally
//! (a smooth per-region gain and offset, after matching the leak's blur),
//! and what is left — mostly mark and noise — is folded on the issued
//! copy's chip grid, which is known exactly: chip size from the original's
//! dimensions, tile origin at its top-left corner, pattern variant from the
//! ledger. No lattice, flip or variant search is needed.
//!
//! # Why the false-alarm bound still holds
//!
//! The registration, the blur and tone fit and the residual are computed
//! from the leak and the original alone, without the key; the sync chips
//! may correct the fold's shift, and the data chips give the blind serial.
//! None of these looks at the verify chips, which come from their own key
//! stream per serial (see [`crate::stats`]). So for each serial scored,
//! under "this copy's mark is not in the leak" the verify chips are i.i.d.
//! ±1 independent of the folded residual and the tail bound of
//! [`crate::stats`] holds. Each reading scores the blind serial and every
//! known copy of the document; the charge is [`INFORMED_READINGS`] ×
//! (1 + copies), plus whatever other hypotheses the caller says it tests on
//! the same leak ([`InformedOptions::extra_hypotheses`]).

use image::DynamicImage;

use crate::detect::{self, Detection, Geometry, KnownCopy};
use crate::embed::{chip_px_for, variant_for_image};
use crate::key::SecretKey;
use crate::plane::Plane;
use crate::register::{self, Homography, Registration};
use crate::stats;

/// Registrations read per leak and original: only the one the images
/// themselves rank best, so one charged geometric hypothesis.
pub const INFORMED_READINGS: u64 = 1;
/// Largest residual grid, pixels: a leak larger than this on the original's
/// grid is read at a coarser grid (the chips stay above a pixel).
const MAX_GRID_PX: f64 = 6.0e6;
/// Blurs (grid pixels) tried on the original to match the leak's sharpness.
const BLURS: [f32; 6] = [0.0, 0.5, 0.8, 1.2, 1.8, 2.7];
/// Side of the central window on which the blur is chosen, grid pixels.
const BLUR_WINDOW_PX: usize = 512;
/// Regularisation of the local gain fit, levels²: regions flatter than
/// this get an offset only (white paper is not "amplified").
const GAIN_EPS: f32 = 16.0;

/// What informed detection may use besides the key, the leak and the original.
#[derive(Clone, Debug, Default)]
pub struct InformedOptions {
    /// The document's pattern variant (from the ledger); `None` derives it
    /// from the original's pixels as `leakmark embed` does.
    pub variant: Option<u32>,
    /// Issued copies of this document to test as hypotheses.
    pub known_copies: Vec<KnownCopy>,
    /// Further pattern variants to read on the same residual (e.g. when it
    /// is not known whether the copy was made by `issue` or `embed`); each
    /// is one more charged reading.
    pub also_variants: Vec<u32>,
    /// Hypotheses the caller tests on the same leak elsewhere (other
    /// documents, a blind fallback): added to the charge.
    pub extra_hypotheses: u64,
}

/// The outcome of informed detection.
#[derive(Clone, Debug)]
pub struct InformedDetection {
    /// The detection, with `mode == "informed"`.
    pub detection: Detection,
    /// Where the leak sits on the original, when registration succeeded.
    pub registration: Option<Registration>,
    /// Sync-chip correlation of the fold, in standard deviations (0 when
    /// nothing was read): a check of the registration that does not touch
    /// the verify chips.
    pub sync_z: f64,
    /// Whether the sync chips moved the fold off the registration's grid.
    pub resynced: bool,
}

/// Hypotheses one informed reading charges for `copies` known copies.
pub fn informed_hypotheses(copies: usize) -> u64 {
    INFORMED_READINGS * (1 + copies as u64)
}

/// Detects the mark in `leak` using the unmarked `original` it was issued from.
///
/// # Examples
///
/// ```
/// use leakmark::informed::{detect_informed, InformedOptions};
///
/// let key = leakmark::SecretKey::from_bytes([7; 32]);
/// // A non-repeating "drawing": grey blocks of hashed shades.
/// let original = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(512, 400, |x, y| {
///     let cell = (x / 24).wrapping_mul(2_654_435_761) ^ (y / 20).wrapping_mul(40_503);
///     let v = 40 + (cell >> 7) % 180;
///     image::Rgb([v as u8, v as u8, v as u8])
/// }));
/// let variant = leakmark::embed::variant_for_image(&key, &original);
/// let marked = leakmark::embed::embed(&key, &original, 42, variant)?.image;
/// // The leak: the marked copy at 70 %.
/// let leak = marked.resize(358, 280, image::imageops::FilterType::Triangle);
/// let found = detect_informed(&key, &leak, &original, &InformedOptions::default());
/// assert_eq!(found.detection.serial, Some(42));
/// assert_eq!(found.detection.mode, "informed");
/// # Ok::<(), leakmark::Error>(())
/// ```
pub fn detect_informed(
    key: &SecretKey,
    leak: &DynamicImage,
    original: &DynamicImage,
    options: &InformedOptions,
) -> InformedDetection {
    let variant = options
        .variant
        .unwrap_or_else(|| variant_for_image(key, original));
    detect_informed_luma(
        key,
        &Plane::luma(leak),
        &Plane::luma(original),
        variant,
        options,
    )
}

/// [`detect_informed`] on luma planes (0–255), with the variant given.
pub fn detect_informed_luma(
    key: &SecretKey,
    leak: &Plane,
    original: &Plane,
    variant: u32,
    options: &InformedOptions,
) -> InformedDetection {
    let mut variants = vec![variant];
    for &v in &options.also_variants {
        if !variants.contains(&v) {
            variants.push(v);
        }
    }
    let copies_of = |v: u32| {
        options
            .known_copies
            .iter()
            .filter(|c| c.variant == v)
            .count()
    };
    let hypotheses = variants
        .iter()
        .map(|&v| informed_hypotheses(copies_of(v)))
        .sum::<u64>()
        .saturating_add(options.extra_hypotheses);
    let mut none = Detection {
        detected: false,
        serial: None,
        variant: None,
        false_alarm_probability: 1.0,
        score: 0.0,
        hypotheses,
        mode: "informed",
        geometry: None,
        candidates: 0,
        too_small: false,
    };
    if (leak.width.min(leak.height) as u32) < detect::MIN_LEAK_PX {
        none.too_small = true;
        return InformedDetection {
            detection: none,
            registration: None,
            sync_z: 0.0,
            resynced: false,
        };
    }
    let Some(registration) = register::register(leak, original) else {
        return InformedDetection {
            detection: none,
            registration: None,
            sync_z: 0.0,
            resynced: false,
        };
    };
    none.candidates = 1;
    let Some(grid) = residual_on_original(leak, original, &registration) else {
        return InformedDetection {
            detection: none,
            registration: Some(registration),
            sync_z: 0.0,
            resynced: false,
        };
    };
    // Every variant on the same residual; the best score (ties to the first).
    let (variant, reading) = variants
        .iter()
        .map(|&v| {
            let r = detect::read_on_grid(
                key,
                &grid.residual,
                grid.chip_px,
                grid.origin_px,
                v,
                &options.known_copies,
            );
            (v, r)
        })
        .reduce(|a, b| if b.1.z > a.1.z { b } else { a })
        .expect("variants holds at least the given one");
    let p = stats::false_alarm(reading.z, hypotheses);
    let detected = p <= stats::REPORT_THRESHOLD;
    let chip = chip_px_for(original.width as u32, original.height as u32);
    InformedDetection {
        detection: Detection {
            detected,
            serial: detected.then_some(reading.serial),
            variant: detected.then_some(variant),
            false_alarm_probability: p,
            score: reading.z,
            hypotheses,
            mode: "informed",
            geometry: detected.then(|| geometry_of(&registration, chip)),
            candidates: 1,
            too_small: false,
        },
        registration: Some(registration),
        sync_z: reading.sync_z,
        resynced: reading.shift_bins != (0, 0),
    }
}

/// The leak minus the tone-matched original, on (a scaled copy of) the
/// original's pixel grid, over the covered box.
struct Residual {
    residual: Plane,
    /// Grid pixels per issued chip, per axis.
    chip_px: [f64; 2],
    /// Where issued chip (0, 0) lies in `residual`'s coordinates.
    origin_px: [f64; 2],
}

fn residual_on_original(leak: &Plane, original: &Plane, reg: &Registration) -> Option<Residual> {
    let (ow, oh) = (original.width, original.height);
    let [bx0, by0, bx1, by1] = reg.covered.map(f64::from);
    let h = &reg.homography;
    let j = h.jacobian((bx0 + bx1) / 2.0, (by0 + by1) / 2.0);
    let s = (j[0] * j[3] - j[1] * j[2]).abs().sqrt();
    // One grid pixel ≈ one leak pixel, never finer than the original.
    let area = ((bx1 - bx0) * (by1 - by0)).max(1.0);
    let k = s.min(1.0).min((MAX_GRID_PX / area).sqrt()).max(0.05);
    let (gw, gh) = (
        ((ow as f64 * k).round() as usize).max(1),
        ((oh as f64 * k).round() as usize).max(1),
    );
    let (kx, ky) = (gw as f64 / ow as f64, gh as f64 / oh as f64);
    let grid_o = if gw == ow && gh == oh {
        original.clone()
    } else {
        original.resize_area(gw, gh)
    };
    let gx0 = ((bx0 * kx).floor() as usize).min(gw);
    let gy0 = ((by0 * ky).floor() as usize).min(gh);
    let gx1 = ((bx1 * kx).ceil() as usize).min(gw);
    let gy1 = ((by1 * ky).ceil() as usize).min(gh);
    let (w, ht) = (gx1.checked_sub(gx0)?, gy1.checked_sub(gy0)?);
    if w < 16 || ht < 16 {
        return None;
    }
    // The leak sampled at every grid pixel of the box; `valid` where it exists.
    let mut lw = vec![0.0f32; w * ht];
    let mut valid = vec![0.0f32; w * ht];
    for y in 0..ht {
        let yf = (y + gy0) as f64 + 0.5;
        for x in 0..w {
            let xf = (x + gx0) as f64 + 0.5;
            if let Some((u, v)) = h.map(xf / kx, yf / ky) {
                if let Some(val) = register::sample(leak, u, v) {
                    lw[y * w + x] = val;
                    valid[y * w + x] = 1.0;
                }
            }
        }
    }
    let crop = |p: &Plane| Plane {
        width: w,
        height: ht,
        data: (gy0..gy1)
            .flat_map(|y| p.data[y * p.width + gx0..y * p.width + gx1].iter().copied())
            .collect(),
    };
    let leak_w = Plane {
        width: w,
        height: ht,
        data: lw,
    };
    let valid = Plane {
        width: w,
        height: ht,
        data: valid,
    };
    let chip = chip_px_for(ow as u32, oh as u32);
    let chip_k = chip * kx.min(ky);
    let radius = ((4.0 * chip_k).round() as usize).max(3);
    // Blur the original to the leak's sharpness: the blur whose fitted
    // residual is smallest on a central window of the box (enough pixels
    // to decide, a fraction of the cost of fitting the whole box six times).
    let (cw, ch) = (w.min(BLUR_WINDOW_PX), ht.min(BLUR_WINDOW_PX));
    let (cx0, cy0) = ((w - cw) / 2, (ht - ch) / 2);
    let window = |p: &Plane| Plane {
        width: cw,
        height: ch,
        data: (cy0..cy0 + ch)
            .flat_map(|y| {
                p.data[y * p.width + cx0..y * p.width + cx0 + cw]
                    .iter()
                    .copied()
            })
            .collect(),
    };
    let o_box = crop(&grid_o);
    let (leak_c, valid_c, o_c) = (window(&leak_w), window(&valid), window(&o_box));
    let mut best: Option<(f64, f32)> = None;
    for sigma in BLURS {
        let r = tone_fit(&leak_c, &o_c.gaussian(sigma), &valid_c, radius);
        let energy = r
            .data
            .iter()
            .map(|&v| f64::from(v.clamp(-20.0, 20.0)).powi(2))
            .sum::<f64>();
        if best.is_none_or(|b| energy < b.0) {
            best = Some((energy, sigma));
        }
    }
    let (_, sigma) = best?;
    let r = tone_fit(&leak_w, &o_box.gaussian(sigma), &valid, radius);
    // Local normalisation: edges the fit could not explain (misregistration,
    // lines, moiré) weigh no more than the flat areas that carry the mark.
    let energy = Plane {
        width: w,
        height: ht,
        data: r.data.iter().map(|v| v * v).collect(),
    }
    .box_mean(radius);
    let data = r
        .data
        .iter()
        .zip(&energy.data)
        .zip(&valid.data)
        .map(|((&v, &e), &m)| {
            if m > 0.0 {
                (v / (e.max(0.0).sqrt() + 0.5)).clamp(-2.5, 2.5)
            } else {
                0.0
            }
        })
        .collect();
    Some(Residual {
        residual: Plane {
            width: w,
            height: ht,
            data,
        },
        chip_px: [chip * kx, chip * ky],
        origin_px: [-(gx0 as f64), -(gy0 as f64)],
    })
}

/// `leak − (a·original + b)` with a, b fitted locally (a guided-filter
/// style regression over boxes of `radius`, smoothed again), over the
/// pixels where `valid` is 1. The box is several chips wide, so the fit
/// follows tone curves, vignetting and glare but not the mark.
fn tone_fit(leak: &Plane, original: &Plane, valid: &Plane, radius: usize) -> Plane {
    let (w, h) = (leak.width, leak.height);
    let plane = |data: Vec<f32>| Plane {
        width: w,
        height: h,
        data,
    };
    let m = &valid.data;
    let mean_m = valid.box_mean(radius);
    let weighted = |f: &dyn Fn(usize) -> f32| -> Plane {
        let p = plane((0..w * h).map(|i| m[i] * f(i)).collect()).box_mean(radius);
        plane(
            p.data
                .iter()
                .zip(&mean_m.data)
                .map(|(&v, &n)| if n > 1e-3 { v / n } else { 0.0 })
                .collect(),
        )
    };
    let (o, l) = (&original.data, &leak.data);
    let mo = weighted(&|i| o[i]);
    let ml = weighted(&|i| l[i]);
    let moo = weighted(&|i| o[i] * o[i]);
    let mol = weighted(&|i| o[i] * l[i]);
    let a: Vec<f32> = (0..w * h)
        .map(|i| {
            let var = (moo.data[i] - mo.data[i] * mo.data[i]).max(0.0);
            let cov = mol.data[i] - mo.data[i] * ml.data[i];
            cov / (var + GAIN_EPS)
        })
        .collect();
    let b: Vec<f32> = (0..w * h).map(|i| ml.data[i] - a[i] * mo.data[i]).collect();
    let a_s = weighted(&|i| a[i]);
    let b_s = weighted(&|i| b[i]);
    plane(
        (0..w * h)
            .map(|i| m[i] * (l[i] - (a_s.data[i] * o[i] + b_s.data[i])))
            .collect(),
    )
}

/// The geometry of the issued tile in the leak, from the registration.
fn geometry_of(reg: &Registration, chip: f64) -> Geometry {
    let h: &Homography = &reg.homography;
    let [x0, y0, x1, y1] = reg.covered.map(f64::from);
    let j = h.jacobian((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    let ax = [j[0] * chip, j[2] * chip];
    let ay = [j[1] * chip, j[3] * chip];
    let norm = |v: [f64; 2]| (v[0] * v[0] + v[1] * v[1]).sqrt();
    let det = ax[0] * ay[1] - ax[1] * ay[0];
    let cos = (ax[0] * ay[0] + ax[1] * ay[1]) / (norm(ax) * norm(ay)).max(1e-12);
    let origin = h.map(0.0, 0.0).unwrap_or((f64::NAN, f64::NAN));
    let c = h.0;
    Geometry {
        px_per_chip: [norm(ax), norm(ay)],
        rotation_deg: (-ax[1]).atan2(ax[0]).to_degrees(),
        mirrored: det < 0.0,
        shear_deg: cos.clamp(-1.0, 1.0).acos().to_degrees() - 90.0,
        origin_px: [origin.0, origin.1],
        chip_to_leak: [ax[0], ay[0], ax[1], ay[1]],
        homography: Some([
            c[0] * chip,
            c[1] * chip,
            c[2],
            c[3] * chip,
            c[4] * chip,
            c[5],
            c[6] * chip,
            c[7] * chip,
            c[8],
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::{self, Attack};
    use crate::embed;
    use image::{Rgb, RgbImage};

    /// A small "render": smooth shading, shapes and strokes.
    fn render(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let (xf, yf) = (f64::from(x), f64::from(y));
            let shade = 150.0 + 60.0 * (xf / 97.0).sin() * (yf / 71.0).cos();
            let blob = if ((xf - 300.0).powi(2) + (yf - 200.0).powi(2)).sqrt() < 90.0 {
                -80.0
            } else {
                0.0
            };
            let stroke = if (x / 40 + y / 55) % 7 == 0 && x % 40 < 3 {
                -120.0
            } else {
                0.0
            };
            let v = (shade + blob + stroke).clamp(0.0, 255.0) as u8;
            Rgb([v, v.saturating_add(10), v / 2 + 60])
        })
    }

    #[test]
    fn informed_detection_reads_a_perspective_leak_with_jpeg() {
        let key = SecretKey::from_bytes([3; 32]);
        let original = DynamicImage::ImageRgb8(render(720, 540));
        let variant = 5;
        let marked = embed::embed(&key, &original, 0xC0FFEE, variant)
            .unwrap()
            .image;
        let chain = Attack::Chain(vec![
            Attack::Perspective { jitter: 0.15 },
            Attack::Jpeg { quality: 40 },
        ]);
        let leak = attack::apply(&chain, &marked.to_rgb8(), 11);
        let options = InformedOptions {
            variant: Some(variant),
            ..InformedOptions::default()
        };
        let found = detect_informed(&key, &DynamicImage::ImageRgb8(leak), &original, &options);
        assert!(found.detection.detected, "{found:?}");
        assert_eq!(found.detection.serial, Some(0xC0FFEE));
    }

    #[test]
    fn informed_detection_finds_nothing_in_an_unmarked_leak_or_under_another_key() {
        let key = SecretKey::from_bytes([3; 32]);
        let other = SecretKey::from_bytes([4; 32]);
        let original = DynamicImage::ImageRgb8(render(720, 540));
        let options = InformedOptions {
            variant: Some(5),
            known_copies: vec![KnownCopy {
                variant: 5,
                serial: 77,
            }],
            ..InformedOptions::default()
        };
        let unmarked = attack::apply(&Attack::Jpeg { quality: 70 }, &original.to_rgb8(), 1);
        let found = detect_informed(
            &key,
            &DynamicImage::ImageRgb8(unmarked),
            &original,
            &options,
        );
        assert!(found.registration.is_some());
        assert!(!found.detection.detected, "{found:?}");
        assert!(found.detection.false_alarm_probability > 1e-6);

        let marked = embed::embed(&other, &original, 77, 5).unwrap().image;
        let found = detect_informed(&key, &marked, &original, &options);
        assert!(!found.detection.detected, "{found:?}");
        assert!(found.detection.false_alarm_probability > 1e-6);
    }
}
