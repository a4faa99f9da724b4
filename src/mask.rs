//! Perceptual mask: how many levels of mark each pixel can hide.
//!
//! Texture hides a mark, flat areas show it, and thin lines or text on white
//! gain nothing from it (their huge residuals are clipped by the detector),
//! so they get the floor. Near-saturated pixels (white paper) are handled in
//! [`crate::embed`], which caps and shifts them. Knows nothing of keys.

use rayon::prelude::*;

use crate::plane::Plane;

/// Weight in flat areas. Flat areas carry most of a drawing's mark, so it is
/// not zero; 0.5 keeps the mark below one level RMS there at 42 dB.
pub const FLOOR: f32 = 0.5;
/// Weight in busy texture (photos).
pub const CEILING: f32 = 2.5;
/// Local standard deviation (levels) that earns a weight of 1.
const STD_PER_UNIT: f32 = 8.0;
/// Above this local std the area is an edge or a line, not texture: weight falls back to the floor.
const EDGE_STD: f32 = 28.0;
/// Levels of std over [`EDGE_STD`] that take the weight from ceiling to floor.
const EDGE_FALLOFF: f32 = 16.0;

/// SSIM's contrast constant C2 = (0.03 · 255)².
const SSIM_C2: f32 = 58.5225;
/// Fraction of sqrt(2σ² + C2) a mark of RMS amplitude a may reach: a window
/// of host std σ then keeps SSIM ≥ 1 − K² ≈ 0.99 (the contrast-structure term
/// is (2σ² + C2) / (2σ² + a² + C2)). Flat areas get ≈ 0.86 levels RMS.
/// 0.1125 measured: SSIM 0.9904–0.9936 on the ten devset images and the
/// samples at 42.6–47.4 dB. (0.115 gave 0.9900 once the tile lost its slow
/// drift, [`crate::embed::DRIFT_CHIPS`], which moved mark energy into the
/// 8×8 windows; 0.11 kept 0.9907 but cost downscale + JPEG: samples × keys
/// 1–8 over six such channels, 117 read of 192 against 125.)
const SSIM_K: f32 = 0.1125;

/// How much mark each pixel may carry.
pub struct Mask {
    /// Relative weight (multiplied by the embedding strength).
    pub weight: Plane,
    /// Absolute ceiling on the mark's RMS amplitude, levels: what keeps
    /// structural similarity at 0.99 whatever the strength.
    pub cap_levels: Plane,
}

/// Mask for a luma plane, for a mark whose chips are `chip_px` pixels wide.
pub fn perceptual_mask(luma: &Plane, chip_px: f64) -> Mask {
    let radius = (chip_px.round() as usize).max(2);
    let raw: Vec<f32> = luma
        .local_std(radius)
        .data
        .par_iter()
        .map(|&std| {
            let texture = (std / STD_PER_UNIT).clamp(FLOOR, CEILING);
            if std > EDGE_STD {
                let fall = ((std - EDGE_STD) / EDGE_FALLOFF).min(1.0);
                texture + (FLOOR - texture) * fall
            } else {
                texture
            }
        })
        .collect();
    // SSIM looks at 8×8 windows: the cap uses the smaller of the std over 3×3 and 9×9,
    // so flat pixels next to an edge are not credited with the edge.
    let cap: Vec<f32> = luma
        .local_std(1)
        .data
        .par_iter()
        .zip(luma.local_std(4).data.par_iter())
        .map(|(&a, &b)| {
            let std = a.min(b);
            SSIM_K * (2.0 * std * std + SSIM_C2).sqrt()
        })
        .collect();
    // Smooth so the weight never jumps from one pixel to the next.
    Mask {
        weight: Plane {
            data: raw,
            ..luma.clone()
        }
        .box_mean(radius),
        cap_levels: Plane {
            data: cap,
            ..luma.clone()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_gets_floor_texture_more_and_lines_floor() {
        let (w, h) = (64, 64);
        let mut luma = Plane::filled(w, h, 255.0);
        // Noise-like texture on the left half; a thin black line on the right.
        for y in 0..h {
            for x in 0..w / 2 {
                luma.data[y * w + x] = 128.0
                    + if (x * 7 + y * 13) % 5 < 2 {
                        20.0
                    } else {
                        -14.0
                    };
            }
            luma.data[y * w + 48] = 0.0;
        }
        let m = perceptual_mask(&luma, 2.0).weight;
        let at = |x: usize, y: usize| m.data[y * w + x];
        assert!(at(12, 32) > 1.5, "texture {}", at(12, 32));
        assert!(
            (at(60, 10) - FLOOR).abs() < 1e-3,
            "flat white {}",
            at(60, 10)
        );
        assert!(at(48, 32) < 1.0, "line {}", at(48, 32));
    }
}
