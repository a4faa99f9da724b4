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
        let data = map_rgba(image, |[r, g, b, a]| {
            let y = 0.299 * r + 0.587 * g + 0.114 * b;
            255.0 * (y * a + (1.0 - a))
        });
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
        self.box_moments(radius, |v| [v], |[mean]| mean as f32)
    }

    /// Standard deviation over a (2r+1)² box around each pixel, borders clamped.
    pub fn local_std(&self, radius: usize) -> Plane {
        self.box_moments(
            radius,
            |v| [v, v * v],
            |[mean, mean_sq]| (mean_sq - mean * mean).max(0.0).sqrt() as f32,
        )
    }

    /// `combine` of the box means of `K` functions of each pixel, borders
    /// clamped. Rows go in blocks: a block sums its rows (and `r` more on
    /// each side) horizontally into a small buffer, then runs column sums
    /// down it in f64. No plane-sized intermediate: a few large buffers
    /// cost more in page faults than the arithmetic.
    fn box_moments<const K: usize>(
        &self,
        radius: usize,
        terms: impl Fn(f32) -> [f32; K] + Sync,
        combine: impl Fn([f64; K]) -> f32 + Sync,
    ) -> Plane {
        const BLOCK_ROWS: usize = 64;
        let (w, h, r) = (self.width, self.height, radius);
        let n = ((2 * r + 1) * (2 * r + 1)) as f64;
        let row = |y: isize| {
            let y = y.clamp(0, h as isize - 1) as usize;
            &self.data[y * w..(y + 1) * w]
        };
        let mut data = vec![0.0f32; w * h];
        let scratch = || (Vec::<[f32; K]>::new(), Vec::<[f64; K]>::new());
        data.par_chunks_mut(w * BLOCK_ROWS)
            .enumerate()
            .for_each_init(scratch, |(rows, sum), (block, out)| {
                let y0 = (block * BLOCK_ROWS) as isize;
                let out_rows = out.len() / w;
                // Horizontal box sums of rows y0 − r ..= y0 + out_rows − 1 + r.
                rows.clear();
                for k in 0..out_rows + 2 * r {
                    let src = row(y0 + k as isize - r as isize);
                    let at = |x: isize| terms(src[x.clamp(0, w as isize - 1) as usize]);
                    let mut acc = [0.0f64; K];
                    for x in -(r as isize)..=r as isize {
                        add(&mut acc, at(x), 1.0);
                    }
                    for x in 0..w as isize {
                        rows.push(acc.map(|v| v as f32));
                        add(&mut acc, at(x + r as isize + 1), 1.0);
                        add(&mut acc, at(x - r as isize), -1.0);
                    }
                }
                // Column sums down the block.
                sum.clear();
                sum.resize(w, [0.0; K]);
                for k in 0..=2 * r {
                    for (s, &v) in sum.iter_mut().zip(&rows[k * w..(k + 1) * w]) {
                        add(s, v, 1.0);
                    }
                }
                for (i, out) in out.chunks_mut(w).enumerate() {
                    if i > 0 {
                        let enter = &rows[(i + 2 * r) * w..(i + 2 * r + 1) * w];
                        let leave = &rows[(i - 1) * w..i * w];
                        for ((s, &a), &b) in sum.iter_mut().zip(enter).zip(leave) {
                            add(s, a, 1.0);
                            add(s, b, -1.0);
                        }
                    }
                    for (o, s) in out.iter_mut().zip(sum.iter()) {
                        *o = combine(s.map(|v| v / n));
                    }
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

/// `f` of every pixel's RGBA on a 0–1 scale, row-major, rows in parallel:
/// no float copy of the whole image (four times the size of an 8-bit one)
/// is made for the common pixel types.
pub(crate) fn map_rgba<T>(image: &DynamicImage, f: impl Fn([f32; 4]) -> T + Sync) -> Vec<T>
where
    T: Copy + Default + Send,
{
    fn run<S: Sync, T: Send>(
        out: &mut [T],
        width: usize,
        samples: &[S],
        channels: usize,
        rgba: impl Fn(&[S]) -> [f32; 4] + Sync,
        f: &(impl Fn([f32; 4]) -> T + Sync),
    ) {
        out.par_chunks_mut(width.max(1))
            .zip(samples.par_chunks((width * channels).max(1)))
            .for_each(|(out, row)| {
                for (o, px) in out.iter_mut().zip(row.chunks_exact(channels)) {
                    *o = f(rgba(px));
                }
            });
    }
    let w = image.width() as usize;
    let mut out = vec![T::default(); w * image.height() as usize];
    // As the image crate converts, so values match it bit for bit: colour
    // samples by division, grey ones by the reciprocal.
    let u8_ = |v: u8| f32::from(v) / 255.0;
    let u16_ = |v: u16| f32::from(v) / 65535.0;
    let grey8 = |v: u8| f32::from(v) * (1.0 / 255.0);
    let grey16 = |v: u16| f32::from(v) * (1.0 / 65535.0);
    let grey = |v: f32, a: f32| [v, v, v, a];
    match image {
        DynamicImage::ImageLuma8(b) => run(&mut out, w, b, 1, |p| grey(grey8(p[0]), 1.0), &f),
        DynamicImage::ImageLumaA8(b) => {
            run(&mut out, w, b, 2, |p| grey(grey8(p[0]), grey8(p[1])), &f);
        }
        DynamicImage::ImageRgb8(b) => {
            run(
                &mut out,
                w,
                b,
                3,
                |p| [u8_(p[0]), u8_(p[1]), u8_(p[2]), 1.0],
                &f,
            );
        }
        DynamicImage::ImageRgba8(b) => {
            run(&mut out, w, b, 4, |p| [p[0], p[1], p[2], p[3]].map(u8_), &f);
        }
        DynamicImage::ImageLuma16(b) => run(&mut out, w, b, 1, |p| grey(grey16(p[0]), 1.0), &f),
        DynamicImage::ImageLumaA16(b) => {
            run(&mut out, w, b, 2, |p| grey(grey16(p[0]), grey16(p[1])), &f);
        }
        DynamicImage::ImageRgb16(b) => {
            run(
                &mut out,
                w,
                b,
                3,
                |p| [u16_(p[0]), u16_(p[1]), u16_(p[2]), 1.0],
                &f,
            );
        }
        DynamicImage::ImageRgba16(b) => {
            run(
                &mut out,
                w,
                b,
                4,
                |p| [p[0], p[1], p[2], p[3]].map(u16_),
                &f,
            );
        }
        other => {
            let rgba = other.to_rgba32f();
            run(&mut out, w, &rgba, 4, |p| [p[0], p[1], p[2], p[3]], &f);
        }
    }
    out
}

/// Transposes a row-major `width` × `height` buffer (blocked, cache-friendly).
pub(crate) fn transpose<T: Copy + Default>(data: &[T], width: usize, height: usize) -> Vec<T> {
    let mut out = vec![T::default(); data.len()];
    transpose::transpose(data, &mut out, width, height);
    out
}

/// `acc += sign · v`, term by term, in f64.
#[inline]
fn add<const K: usize>(acc: &mut [f64; K], v: [f32; K], sign: f64) {
    for (a, v) in acc.iter_mut().zip(v) {
        *a += sign * f64::from(v);
    }
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
    fn box_mean_matches_the_direct_sum_with_clamped_borders() {
        // Taller than one block of rows, so block starts are covered too.
        let (w, h, r) = (7usize, 150usize, 3isize);
        let p = Plane {
            width: w,
            height: h,
            data: (0..w * h).map(|i| ((i * 37) % 101) as f32).collect(),
        };
        let b = p.box_mean(r as usize);
        for y in 0..h as isize {
            for x in 0..w as isize {
                let mut sum = 0.0;
                for dy in -r..=r {
                    for dx in -r..=r {
                        sum += p.at_clamped(x + dx, y + dy);
                    }
                }
                let direct = sum / ((2 * r + 1) * (2 * r + 1)) as f32;
                let got = b.data[y as usize * w + x as usize];
                assert!((got - direct).abs() < 1e-3, "({x}, {y}): {got} vs {direct}");
            }
        }
    }

    #[test]
    fn local_std_matches_the_direct_one() {
        let (w, h, r) = (9usize, 70usize, 2isize);
        let p = Plane {
            width: w,
            height: h,
            data: (0..w * h).map(|i| ((i * 53) % 97) as f32 * 2.5).collect(),
        };
        let s = p.local_std(r as usize);
        for y in 0..h as isize {
            for x in 0..w as isize {
                let box_: Vec<f64> = (-r..=r)
                    .flat_map(|dy| (-r..=r).map(move |dx| (dx, dy)))
                    .map(|(dx, dy)| f64::from(p.at_clamped(x + dx, y + dy)))
                    .collect();
                let mean = box_.iter().sum::<f64>() / box_.len() as f64;
                let var = box_.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / box_.len() as f64;
                let got = f64::from(s.data[y as usize * w + x as usize]);
                assert!(
                    (got - var.sqrt()).abs() < 1e-2,
                    "({x}, {y}): {got} vs {}",
                    var.sqrt()
                );
            }
        }
    }

    #[test]
    fn rgba_of_every_pixel_type_matches_the_image_crate() {
        let rgba8 = image::RgbaImage::from_fn(5, 3, |x, y| {
            image::Rgba([(x * 50) as u8, (y * 90) as u8, 7, (x * 60 + y) as u8])
        });
        let base = DynamicImage::ImageRgba8(rgba8);
        let types = [
            DynamicImage::ImageLuma8(base.to_luma8()),
            DynamicImage::ImageLumaA8(base.to_luma_alpha8()),
            DynamicImage::ImageRgb8(base.to_rgb8()),
            base.clone(),
            DynamicImage::ImageLuma16(base.to_luma16()),
            DynamicImage::ImageLumaA16(base.to_luma_alpha16()),
            DynamicImage::ImageRgb16(base.to_rgb16()),
            DynamicImage::ImageRgba16(base.to_rgba16()),
            DynamicImage::ImageRgb32F(base.to_rgb32f()),
        ];
        for image in types {
            let ours = map_rgba(&image, |p| p);
            let theirs: Vec<[f32; 4]> = image.to_rgba32f().pixels().map(|p| p.0).collect();
            assert_eq!(ours, theirs, "{:?}", image.color());
        }
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
