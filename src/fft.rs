//! Two-dimensional complex FFTs on row-major buffers (rows, then columns),
//! parallel over rows. A thin layer over rustfft; unnormalised like it.

use rayon::prelude::*;
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
    fn fast_sizes() {
        assert_eq!(fast_size(7), 8);
        assert_eq!(fast_size(1537), 1600);
    }
}
