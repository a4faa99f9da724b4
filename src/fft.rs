//! Two-dimensional FFTs on row-major buffers (rows, then columns), parallel
//! over rows: complex ones, and real ones that keep only the non-redundant
//! half of the spectrum. A thin layer over rustfft and realfft; unnormalised
//! like them.

use rayon::prelude::*;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

use std::cell::RefCell;
use std::sync::Arc;

/// Largest per-thread scratch kept between transforms (the 128 × 128 tiles
/// of the alignment search fit; a whole leak's autocorrelation does not).
const KEPT_SCRATCH: usize = 1 << 16;

thread_local! {
    static SCRATCH: RefCell<Vec<Complex32>> = const { RefCell::new(Vec::new()) };
}

/// Forward and inverse plans for one `width` × `height` size.
pub struct Fft2 {
    width: usize,
    height: usize,
    row_fwd: Arc<dyn Fft<f32>>,
    row_inv: Arc<dyn Fft<f32>>,
    col_fwd: Arc<dyn Fft<f32>>,
    col_inv: Arc<dyn Fft<f32>>,
}

impl Fft2 {
    /// Plans transforms for `width` × `height` buffers.
    pub fn new(width: usize, height: usize) -> Self {
        let mut planner = FftPlanner::new();
        Fft2 {
            width,
            height,
            row_fwd: planner.plan_fft_forward(width),
            row_inv: planner.plan_fft_inverse(width),
            col_fwd: planner.plan_fft_forward(height),
            col_inv: planner.plan_fft_inverse(height),
        }
    }

    /// In-place forward transform.
    pub fn forward(&self, data: &mut [Complex32]) {
        self.run(data, &self.row_fwd, &self.col_fwd);
    }

    /// In-place inverse transform (unnormalised: divide by width × height).
    pub fn inverse(&self, data: &mut [Complex32]) {
        self.run(data, &self.row_inv, &self.col_inv);
    }

    /// Forward transform left in transposed order, `data[kx * height + ky]`:
    /// one transpose instead of two, for spectra that are only multiplied
    /// bin by bin and handed to [`Fft2::inverse_from_transposed`].
    pub fn forward_transposed(&self, data: &mut Vec<Complex32>) {
        self.half_run(data, &self.row_fwd, &self.col_fwd, self.width, self.height);
    }

    /// Inverse of a spectrum in transposed order (as [`Fft2::forward_transposed`]
    /// leaves it); the result is in normal row-major order, unnormalised.
    pub fn inverse_from_transposed(&self, data: &mut Vec<Complex32>) {
        self.half_run(data, &self.col_inv, &self.row_inv, self.height, self.width);
    }

    fn run(&self, data: &mut [Complex32], row: &Arc<dyn Fft<f32>>, col: &Arc<dyn Fft<f32>>) {
        let (w, h) = (self.width, self.height);
        assert_eq!(data.len(), w * h, "buffer does not match the plan");
        process_rows(data, w, row);
        // The transposed copy lives in a per-thread buffer: the many small
        // transforms of the alignment search would otherwise spend a tenth
        // of their time zeroing fresh allocations. It is taken out while in
        // use, so a transform that rayon runs on this thread meanwhile (work
        // stealing) gets a fresh one instead of a borrowed one.
        let mut t = take_scratch(w * h);
        transpose::transpose(data, &mut t, w, h);
        process_rows(&mut t, h, col);
        transpose::transpose(&t, data, h, w);
        keep_scratch(t);
    }

    /// Rows of length `w` (there are `h`), transpose, rows of length `h`;
    /// the transposed buffer becomes `data` and the old one is kept as scratch.
    fn half_run(
        &self,
        data: &mut Vec<Complex32>,
        first: &Arc<dyn Fft<f32>>,
        second: &Arc<dyn Fft<f32>>,
        w: usize,
        h: usize,
    ) {
        assert_eq!(data.len(), w * h, "buffer does not match the plan");
        process_rows(data, w, first);
        let mut t = take_scratch(w * h);
        transpose::transpose(data, &mut t, w, h);
        process_rows(&mut t, h, second);
        std::mem::swap(data, &mut t);
        keep_scratch(t);
    }
}

/// Transforms of real `width` × `height` buffers. A real image's spectrum is
/// Hermitian, so only the columns `kx ≤ width / 2` are kept: half the work
/// of [`Fft2`] on the same data.
pub struct RealFft2 {
    width: usize,
    height: usize,
    row_fwd: Arc<dyn RealToComplex<f32>>,
    row_inv: Arc<dyn ComplexToReal<f32>>,
    col_fwd: Arc<dyn Fft<f32>>,
    col_inv: Arc<dyn Fft<f32>>,
}

impl RealFft2 {
    /// Plans transforms for real `width` × `height` buffers.
    pub fn new(width: usize, height: usize) -> Self {
        let mut real = RealFftPlanner::new();
        let mut complex = FftPlanner::new();
        RealFft2 {
            width,
            height,
            row_fwd: real.plan_fft_forward(width),
            row_inv: real.plan_fft_inverse(width),
            col_fwd: complex.plan_fft_forward(height),
            col_inv: complex.plan_fft_inverse(height),
        }
    }

    /// Spectrum columns kept: `width / 2 + 1`.
    pub fn half_width(&self) -> usize {
        self.width / 2 + 1
    }

    /// Forward transform of `data` (clobbered), the half spectrum left in
    /// transposed order, `out[kx * height + ky]` for `kx ≤ width / 2`.
    pub fn forward_transposed(&self, data: &mut [f32]) -> Vec<Complex32> {
        let (w, h, half) = (self.width, self.height, self.half_width());
        assert_eq!(data.len(), w * h, "buffer does not match the plan");
        let mut rows = vec![Complex32::new(0.0, 0.0); half * h];
        let scratch = || self.row_fwd.make_scratch_vec();
        data.par_chunks_mut(w)
            .zip(rows.par_chunks_mut(half))
            .for_each_init(scratch, |s, (row, out)| {
                // Lengths match the plan, the only error realfft reports here.
                let _ = self.row_fwd.process_with_scratch(row, out, s);
            });
        let mut t = vec![Complex32::new(0.0, 0.0); half * h];
        transpose::transpose(&rows, &mut t, half, h);
        process_rows(&mut t, h, &self.col_fwd);
        t
    }

    /// Inverse of a half spectrum in transposed order (as
    /// [`RealFft2::forward_transposed`] leaves it, clobbered), back to a
    /// real row-major buffer, unnormalised. Assumes Hermitian symmetry: the
    /// result is the real part of the full inverse.
    pub fn inverse_from_transposed(&self, spectrum: &mut [Complex32]) -> Vec<f32> {
        let (w, h, half) = (self.width, self.height, self.half_width());
        assert_eq!(spectrum.len(), half * h, "buffer does not match the plan");
        process_rows(spectrum, h, &self.col_inv);
        let mut rows = vec![Complex32::new(0.0, 0.0); half * h];
        transpose::transpose(spectrum, &mut rows, h, half);
        let mut out = vec![0.0f32; w * h];
        let scratch = || self.row_inv.make_scratch_vec();
        rows.par_chunks_mut(half)
            .zip(out.par_chunks_mut(w))
            .for_each_init(scratch, |s, (row, out)| {
                // The DC (and, for even widths, Nyquist) bins of a real
                // signal are real; their imaginary parts are dropped.
                row[0].im = 0.0;
                if w % 2 == 0 {
                    row[half - 1].im = 0.0;
                }
                let _ = self.row_inv.process_with_scratch(row, out, s);
            });
        out
    }
}

/// Transforms every row of length `len`, in parallel for large buffers.
/// One scratch buffer per task: `Fft::process` would allocate one per row.
fn process_rows(data: &mut [Complex32], len: usize, fft: &Arc<dyn Fft<f32>>) {
    let scratch = || vec![Complex32::new(0.0, 0.0); fft.get_inplace_scratch_len()];
    if data.len() >= 1 << 15 {
        data.par_chunks_mut(len)
            .for_each_init(scratch, |s, r| fft.process_with_scratch(r, s));
    } else {
        // Given many rows at once, rustfft transforms each in turn.
        fft.process_with_scratch(data, &mut scratch());
    }
}

/// This thread's scratch buffer, exactly `len` long (contents unspecified).
fn take_scratch(len: usize) -> Vec<Complex32> {
    let mut t = SCRATCH.take();
    t.resize(len, Complex32::new(0.0, 0.0));
    t
}

/// Keeps `t` as this thread's scratch when it is small enough to be worth it.
fn keep_scratch(t: Vec<Complex32>) {
    if t.len() <= KEPT_SCRATCH {
        SCRATCH.set(t);
    }
}

/// Smallest n ≥ `min` whose only prime factors are 2, 3 and 5 (fast FFT sizes).
pub fn fast_size(min: usize) -> usize {
    let mut n = min.max(1);
    loop {
        let mut m = n;
        for p in [2, 3, 5] {
            while m % p == 0 {
                m /= p;
            }
        }
        if m == 1 {
            return n;
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_then_inverse_is_identity_times_n() {
        let (w, h) = (12, 10);
        let orig: Vec<Complex32> = (0..w * h)
            .map(|i| Complex32::new((i % 7) as f32, (i % 3) as f32))
            .collect();
        let mut d = orig.clone();
        let f = Fft2::new(w, h);
        f.forward(&mut d);
        f.inverse(&mut d);
        for (a, b) in d.iter().zip(&orig) {
            assert!((a / (w * h) as f32 - b).norm() < 1e-4);
        }
    }

    #[test]
    fn transposed_round_trip_matches_the_plain_transforms() {
        let (w, h) = (12, 10);
        let orig: Vec<Complex32> = (0..w * h)
            .map(|i| Complex32::new((i % 7) as f32, (i % 5) as f32 - 2.0))
            .collect();
        let f = Fft2::new(w, h);
        let mut plain = orig.clone();
        f.forward(&mut plain);
        let mut t = orig.clone();
        f.forward_transposed(&mut t);
        for y in 0..h {
            for x in 0..w {
                assert!((t[x * h + y] - plain[y * w + x]).norm() < 1e-3);
            }
        }
        f.inverse_from_transposed(&mut t);
        for (a, b) in t.iter().zip(&orig) {
            assert!((a / (w * h) as f32 - b).norm() < 1e-4);
        }
    }

    #[test]
    fn real_transforms_match_the_complex_ones() {
        for (w, h) in [(12, 10), (15, 9)] {
            let orig: Vec<f32> = (0..w * h).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
            let mut plain: Vec<Complex32> = orig.iter().map(|&v| Complex32::new(v, 0.0)).collect();
            Fft2::new(w, h).forward(&mut plain);
            let f = RealFft2::new(w, h);
            let mut spectrum = f.forward_transposed(&mut orig.clone());
            for kx in 0..f.half_width() {
                for ky in 0..h {
                    assert!((spectrum[kx * h + ky] - plain[ky * w + kx]).norm() < 1e-3);
                }
            }
            let back = f.inverse_from_transposed(&mut spectrum);
            for (a, b) in back.iter().zip(&orig) {
                assert!((a / (w * h) as f32 - b).abs() < 1e-4, "{w}x{h}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn fast_sizes() {
        assert_eq!(fast_size(7), 8);
        assert_eq!(fast_size(1537), 1600);
    }
}
