//! A single-channel f32 image and the few filters the mark needs.
//!
//! Luma is kept on a 0–255 scale whatever the input's bit depth, so every
//! constant elsewhere (mask levels, white caps, PSNR) reads in 8-bit levels.

use image::DynamicImage;
use rayon::prelude::*;

/// A row-major plane of `f32` samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Plane {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height` samples, row-major.
    pub data: Vec<f32>,
}

impl Plane {
    /// A plane filled with `value`.
    pub fn filled(width: usize, height: usize, value: f32) -> Self {
        Plane {
            width,
            height,
            data: vec![value; width * height],
        }
    }

    /// Rec. 601 luma (the JPEG definition) of any image, on a 0–255 scale.
    /// Fully transparent pixels read as white, as most viewers show them.
    pub fn luma(image: &DynamicImage) -> Self {
        let (width, height) = (image.width() as usize, image.height() as usize);
        let rgba = image.to_rgba32f();
        let data = rgba
            .pixels()
            .map(|p| {
                let [r, g, b, a] = p.0;
                let y = 0.299 * r + 0.587 * g + 0.114 * b;
                255.0 * (y * a + (1.0 - a))
            })
            .collect();
        Plane {
            width,
            height,
            data,
        }
    }

    /// The pixels of the rectangle `(x0, y0, x1, y1)` (end-exclusive, inside the plane).
    pub fn crop(&self, (x0, y0, x1, y1): (usize, usize, usize, usize)) -> Plane {
        let mut data = Vec::with_capacity((x1 - x0) * (y1 - y0));
        for y in y0..y1 {
            data.extend_from_slice(&self.data[y * self.width + x0..y * self.width + x1]);
        }
        Plane {
            width: x1 - x0,
            height: y1 - y0,
            data,
        }
    }

    /// Sample at integer coordinates, clamped to the border.
    #[inline]
    pub fn at_clamped(&self, x: isize, y: isize) -> f32 {
        let xc = x.clamp(0, self.width as isize - 1) as usize;
        let yc = y.clamp(0, self.height as isize - 1) as usize;
        self.data[yc * self.width + xc]
    }

    /// Mean over a (2r+1)² box around each pixel, borders clamped (separable, O(N)).
    pub fn box_mean(&self, radius: usize) -> Plane {
        let (w, h) = (self.width, self.height);
        let horizontal = box_1d_rows(&self.data, w, h, radius);
        // Vertical pass from running column sums (f64, so long columns stay
        // exact): row y of the result needs rows y−r..=y+r, the ones past an
        // edge replaced by the edge row. No transposes: rows stay in cache.
        let mut prefix = vec![0.0f64; w * (h + 1)];
        for y in 0..h {
            let (done, rest) = prefix.split_at_mut((y + 1) * w);
            let prev = &done[y * w..];
            for ((p, &q), &v) in rest[..w]
                .iter_mut()
                .zip(prev)
                .zip(&horizontal[y * w..(y + 1) * w])
            {
                *p = q + f64::from(v);
            }
        }
        let n = (2 * radius + 1) as f64;
        let mut data = vec![0.0f32; w * h];
        data.par_chunks_mut(w).enumerate().for_each(|(y, out)| {
            let lo = y as isize - radius as isize;
            let hi = y + radius;
            let (below, above) = (lo.min(0).unsigned_abs(), hi.saturating_sub(h - 1));
            let (first, last) = (lo.max(0) as usize, hi.min(h - 1));
            let top = &prefix[first * w..(first + 1) * w];
            let bottom = &prefix[(last + 1) * w..(last + 2) * w];
            let (edge0, edge1) = (&horizontal[..w], &horizontal[(h - 1) * w..]);
            for x in 0..w {
                let sum = bottom[x] - top[x]
                    + below as f64 * f64::from(edge0[x])
                    + above as f64 * f64::from(edge1[x]);
                out[x] = (sum / n) as f32;
            }
        });
        Plane {
            width: w,
            height: h,
            data,
        }
    }

    /// Gaussian blur with standard deviation `sigma` pixels (separable, borders clamped).
    pub fn gaussian(&self, sigma: f32) -> Plane {
        if sigma <= 0.05 {
            return self.clone();
        }
        let radius = (3.0 * sigma).ceil() as isize;
        let kernel: Vec<f32> = (-radius..=radius)
            .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
            .collect();
        let norm: f32 = kernel.iter().sum();
        let kernel: Vec<f32> = kernel.iter().map(|k| k / norm).collect();
        let rows = conv_rows(&self.data, self.width, self.height, &kernel);
        let t = transpose(&rows, self.width, self.height);
        let cols = conv_rows(&t, self.height, self.width, &kernel);
        Plane {
            width: self.width,
            height: self.height,
            data: transpose(&cols, self.height, self.width),
        }
    }

    /// Area-averaging resize to `width` × `height` (box filter; for shrinking).
    pub fn resize_area(&self, width: usize, height: usize) -> Plane {
        let rows = resample_rows_area(&self.data, self.width, self.height, width);
        let t = transpose(&rows, width, self.height);
        let cols = resample_rows_area(&t, self.height, width, height);
        Plane {
            width,
            height,
            data: transpose(&cols, height, width),
        }
    }
}

/// Transposes a row-major `width` × `height` buffer (blocked, cache-friendly).
pub(crate) fn transpose<T: Copy + Default>(data: &[T], width: usize, height: usize) -> Vec<T> {
    let mut out = vec![T::default(); data.len()];
    transpose::transpose(data, &mut out, width, height);
    out
}

fn box_1d_rows(data: &[f32], width: usize, height: usize, radius: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; width * height];
    out.par_chunks_mut(width)
        .zip(data.par_chunks(width))
        .for_each(|(o, row)| {
            let n = (2 * radius + 1) as f64;
            let at = |i: isize| f64::from(row[i.clamp(0, width as isize - 1) as usize]);
            let r = radius as isize;
            let mut sum: f64 = (-r..=r).map(at).sum();
            for (x, v) in o.iter_mut().enumerate() {
                *v = (sum / n) as f32;
                let xi = x as isize;
                sum += at(xi + r + 1) - at(xi - r);
            }
        });
    out
}

fn conv_rows(data: &[f32], width: usize, height: usize, kernel: &[f32]) -> Vec<f32> {
    let radius = (kernel.len() / 2) as isize;
    let mut out = vec![0.0f32; width * height];
    out.par_chunks_mut(width)
        .zip(data.par_chunks(width))
        .for_each(|(o, row)| {
            let last = width as isize - 1;
            for (x, v) in o.iter_mut().enumerate() {
                let xi = x as isize;
                let mut acc = 0.0f32;
                if xi >= radius && xi + radius <= last {
                    let start = (xi - radius) as usize;
                    for (k, s) in kernel.iter().zip(&row[start..start + kernel.len()]) {
                        acc += k * s;
                    }
                } else {
                    for (j, k) in kernel.iter().enumerate() {
                        acc += k * row[(xi + j as isize - radius).clamp(0, last) as usize];
                    }
                }
                *v = acc;
            }
        });
    out
}

/// Resamples each row from `width` to `new_width` by exact area coverage.
fn resample_rows_area(data: &[f32], width: usize, height: usize, new_width: usize) -> Vec<f32> {
    let scale = width as f64 / new_width as f64;
    // Precompute, for each output sample, its source span and edge weights.
    let spans: Vec<(usize, usize, f64, f64)> = (0..new_width)
        .map(|i| {
            let a = i as f64 * scale;
            let b = ((i + 1) as f64 * scale).min(width as f64);
            (a.floor() as usize, (b.ceil() as usize).min(width), a, b)
        })
        .collect();
    let mut out = vec![0.0f32; new_width * height];
    out.par_chunks_mut(new_width)
        .zip(data.par_chunks(width))
        .for_each(|(o, row)| {
            for (v, &(lo, hi, a, b)) in o.iter_mut().zip(&spans) {
                let mut acc = 0.0f64;
                for (j, &s) in row.iter().enumerate().take(hi).skip(lo) {
                    let w = (b.min((j + 1) as f64) - a.max(j as f64)).max(0.0);
                    acc += w * f64::from(s);
                }
                *v = (acc / (b - a)) as f32;
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_mean_of_constant_is_constant() {
        let p = Plane::filled(17, 9, 3.5);
        assert!(p.box_mean(3).data.iter().all(|&v| (v - 3.5).abs() < 1e-5));
    }

    #[test]
    fn gaussian_preserves_mean_and_smooths() {
        let mut p = Plane::filled(20, 20, 0.0);
        p.data[10 * 20 + 10] = 100.0;
        let g = p.gaussian(1.5);
        let sum: f32 = g.data.iter().sum();
        assert!((sum - 100.0).abs() < 0.1);
        assert!(g.data[10 * 20 + 10] < 20.0);
    }

    #[test]
    fn area_resize_averages_blocks() {
        let p = Plane {
            width: 4,
            height: 2,
            data: vec![0.0, 2.0, 4.0, 6.0, 0.0, 2.0, 4.0, 6.0],
        };
        let r = p.resize_area(2, 1);
        assert_eq!(r.data, vec![1.0, 5.0]);
    }
}
