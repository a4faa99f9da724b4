//! False-alarm probabilities: the one place where the decision threshold is argued.
//!
//! # The bound
//!
//! The detector folds the leak into tile space and reads one soft value rᵢ
//! per *verify* chip (N distinct chips, never counting a repeated tile twice).
//! For a hypothesised serial it computes
//!
//! ```text
//! z = Σ cᵢ rᵢ / ‖r‖
//! ```
//!
//! where cᵢ = ±1 are that serial's verify chips, drawn from a ChaCha20 stream
//! seeded by HMAC-SHA256(key, variant, serial). If the image does not carry
//! that serial's mark (unmarked, marked under another key, or marked with
//! another serial), the cᵢ are i.i.d. Rademacher *independent of r*, whatever
//! the image and whatever was done to it. Conditionally on r, z is then a
//! weighted sum of random signs with Σ aᵢ² = 1 (aᵢ = rᵢ/‖r‖), and two
//! inequalities bound its tail:
//!
//! ```text
//! P(z ≥ τ) ≤ exp(−τ²/2)                          (Hoeffding, 1963)
//! P(z ≥ τ) ≤ C · P(η ≥ τ),  η ~ N(0, 1),  C = 1 / (4 P(η ≥ √2)) ≈ 3.1787
//! ```
//!
//! The second is Bentkus and Dzindzalieta's comparison with the Gaussian
//! tail, with the smallest constant that holds for every weight vector and
//! every τ ("A tight Gaussian bound for weighted sums of Rademacher random
//! variables", Bernoulli 21 (2015) 1231–1237). With Mills' ratio,
//! P(η ≥ τ) ≤ φ(τ)/τ, it is about 0.79 τ times smaller than Hoeffding's in
//! the range that matters (τ ≈ 8: 6.3 times), which lowers the score a
//! reported serial needs by about 0.23. [`ln_tail`] takes the smaller of
//! the two; both are proved for any weights, so the minimum is too.
//!
//! No model of the image is assumed. Independence is made real by the
//! design: the geometry is chosen from the tile's periodicity and the sync
//! chips, the serial is decoded from the data chips, and those choices never
//! look at the verify chips, which come from separate key streams. A
//! wrongly decoded serial is just another independent hypothesis.
//!
//! # Charging every hypothesis
//!
//! Each (geometric candidate × serial) pair whose verify statistic may be
//! evaluated is one hypothesis; the reported probability is the union bound
//! `min(1, H · tail(z))`, tail being the bound above. H counts the most
//! geometric readings the search can ever make (every lattice candidate,
//! its perspective refinements and the perspective starts), not only those
//! it made before stopping, so stopping early at a clear answer costs
//! nothing in soundness. Blind decoding evaluates one serial per geometric
//! candidate (the one the data chips decode to); the ledger-informed mode
//! evaluates every issued copy on every candidate. A recipient is reported
//! only when this probability is at most [`REPORT_THRESHOLD`].

/// A recipient is named only when its false-alarm probability is at most this.
pub const REPORT_THRESHOLD: f64 = 1e-12;

/// Bentkus–Dzindzalieta constant `1 / (4 P(η ≥ √2))` (3.178655…), rounded up.
pub const GAUSSIAN_COMPARISON: f64 = 3.1787;

/// Tail bound for one hypothesis, as a natural logarithm: the smaller of
/// Hoeffding's `−z²/2` and `ln(C φ(z)/z)` (0 for z ≤ 0). See the module doc.
///
/// # Examples
///
/// ```
/// use leakmark::stats::ln_tail;
/// assert_eq!(ln_tail(0.5), -0.125); // Hoeffding is the smaller near 0
/// let gaussian = 3.1787f64.ln() - 32.0 - (8.0 * (2.0 * std::f64::consts::PI).sqrt()).ln();
/// assert!((ln_tail(8.0) - gaussian).abs() < 1e-12);
/// ```
pub fn ln_tail(z: f64) -> f64 {
    if z <= 0.0 {
        return 0.0;
    }
    let hoeffding = -0.5 * z * z;
    let gaussian =
        GAUSSIAN_COMPARISON.ln() + hoeffding - (z * (2.0 * std::f64::consts::PI).sqrt()).ln();
    hoeffding.min(gaussian)
}

/// Union-bound false-alarm probability for the best of `hypotheses` scores.
///
/// # Examples
///
/// ```
/// let p = leakmark::stats::false_alarm(8.0, 10);
/// assert!((p - 10.0 * leakmark::stats::ln_tail(8.0).exp()).abs() < 1e-24);
/// assert!(p < 10.0 * (-32.0f64).exp() / 6.0); // 6.3 times below Hoeffding
/// assert_eq!(leakmark::stats::false_alarm(0.5, 1_000), 1.0);
/// ```
pub fn false_alarm(z: f64, hypotheses: u64) -> f64 {
    let ln_p = (hypotheses.max(1) as f64).ln() + ln_tail(z);
    ln_p.exp().min(1.0)
}

/// The normalised correlation `Σ cᵢ rᵢ / ‖r‖` (0 when r is all zero).
pub fn normalized_correlation(chips: &[f32], values: &[f32]) -> f64 {
    let mut dot = 0.0f64;
    let mut energy = 0.0f64;
    for (&c, &r) in chips.iter().zip(values) {
        dot += f64::from(c) * f64::from(r);
        energy += f64::from(r) * f64::from(r);
    }
    if energy > 0.0 {
        dot / energy.sqrt()
    } else {
        0.0
    }
}

/// The score a single hypothesis needs so that `hypotheses` of them stay
/// below probability `p`: the τ where `H · tail(τ) = p`, found by bisection
/// (the tail falls monotonically).
pub fn threshold(p: f64, hypotheses: u64) -> f64 {
    let target = p.ln() - (hypotheses.max(1) as f64).ln();
    if target >= 0.0 {
        return 0.0;
    }
    let (mut lo, mut hi) = (0.0f64, (-2.0 * target).sqrt());
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if ln_tail(mid) > target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// Peak signal-to-noise ratio between two planes on a 0–255 scale, in dB
/// (infinite when they are equal).
pub fn psnr(original: &[f32], marked: &[f32]) -> f64 {
    let n = original.len().min(marked.len()).max(1);
    let mse: f64 = original
        .iter()
        .zip(marked)
        .map(|(&a, &b)| f64::from(a - b).powi(2))
        .sum::<f64>()
        / n as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// Mean SSIM over 8×8 windows (stride 4) of two planes on a 0–255 scale.
pub fn ssim(original: &[f32], marked: &[f32], width: usize, height: usize) -> f64 {
    const C1: f64 = (0.01 * 255.0) * (0.01 * 255.0);
    const C2: f64 = (0.03 * 255.0) * (0.03 * 255.0);
    let (mut total, mut count) = (0.0f64, 0usize);
    let mut y = 0;
    while y + 8 <= height {
        let mut x = 0;
        while x + 8 <= width {
            let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0.0f64, 0.0, 0.0, 0.0, 0.0);
            for row in y..y + 8 {
                for col in x..x + 8 {
                    let a = f64::from(original[row * width + col]);
                    let b = f64::from(marked[row * width + col]);
                    sa += a;
                    sb += b;
                    saa += a * a;
                    sbb += b * b;
                    sab += a * b;
                }
            }
            let n = 64.0;
            let (ma, mb) = (sa / n, sb / n);
            let va = saa / n - ma * ma;
            let vb = sbb / n - mb * mb;
            let cov = sab / n - ma * mb;
            total += ((2.0 * ma * mb + C1) * (2.0 * cov + C2))
                / ((ma * ma + mb * mb + C1) * (va + vb + C2));
            count += 1;
            x += 4;
        }
        y += 4;
    }
    if count == 0 {
        1.0
    } else {
        total / count as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::{Rng, SeedableRng};

    #[test]
    fn threshold_inverts_false_alarm() {
        let tau = threshold(1e-12, 1000);
        assert!((false_alarm(tau, 1000) - 1e-12).abs() < 1e-15);
    }

    #[test]
    fn the_gaussian_comparison_tightens_hoeffding_only_where_it_is_smaller() {
        let c = 1.0 / (4.0 * 0.5 * 0.157_299_207_050_285_13); // erfc(1)
        assert!(GAUSSIAN_COMPARISON >= c && GAUSSIAN_COMPARISON - c < 1e-4);
        for z in [0.1, 1.0, 1.2, 1.3, 2.0, 5.0, 8.0, 20.0] {
            assert!(ln_tail(z) <= -0.5 * z * z, "z {z}");
        }
        assert_eq!(ln_tail(1.0), -0.5);
        let ratio = (-0.5 * 64.0f64 - ln_tail(8.0)).exp();
        assert!((6.2..6.4).contains(&ratio), "{ratio}");
        // The score the blind search (58 readings) needs: 7.96 with Hoeffding alone.
        let tau = threshold(1e-12, 58);
        assert!((7.72..7.74).contains(&tau), "{tau}");
    }

    #[test]
    fn bound_is_conservative_for_random_chips_on_a_fixed_residual() {
        // A fixed, very non-Gaussian "image" residual; random keyed chips.
        let r: Vec<f32> = (0..1000)
            .map(|i| {
                if i % 97 == 0 {
                    50.0
                } else {
                    (i % 7) as f32 - 3.0
                }
            })
            .collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let trials = 20_000;
        let mut exceed = [0usize; 3];
        let taus = [1.0, 2.0, 3.0];
        for _ in 0..trials {
            let chips: Vec<f32> = (0..1000)
                .map(|_| if rng.next_u32() & 1 == 1 { 1.0 } else { -1.0 })
                .collect();
            let z = normalized_correlation(&chips, &r);
            for (k, &t) in taus.iter().enumerate() {
                exceed[k] += usize::from(z >= t);
            }
        }
        for (k, &t) in taus.iter().enumerate() {
            let empirical = exceed[k] as f64 / trials as f64;
            assert!(empirical <= ln_tail(t).exp(), "tau {t}: {empirical}");
        }
    }

    #[test]
    fn psnr_matches_the_definition() {
        let a = [10.0, 20.0, 30.0, 40.0];
        let b = [10.0, 20.0, 30.0, 41.0];
        assert!((psnr(&a, &b) - 54.15).abs() < 0.01);
        assert!(psnr(&a, &a).is_infinite());
    }

    #[test]
    fn ssim_of_identical_planes_is_one() {
        let a: Vec<f32> = (0..256).map(|i| (i % 16 * 10) as f32).collect();
        assert!((ssim(&a, &a, 16, 16) - 1.0).abs() < 1e-9);
    }
}
