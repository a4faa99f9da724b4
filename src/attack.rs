//! Deterministic simulator of the channels a leaked drawing travels through.
//!
//! A recipient who leaks a draft rarely forwards the file itself: it is
//! recompressed by a messenger, cropped, screenshotted, photographed off a
//! monitor, or printed and scanned. [`apply`] replays such channels so that
//! tests, benches and `leakmark audit` can measure how much of a mark
//! survives, and [`standard_suite`] names the set the project tunes against.
//! The suite is a model of the world, not the world: each [`Attack`] stands
//! for a family of real channels, with parameters picked to look like a
//! typical member of it. Knows nothing of marks, keys or detection.
//!
//! Every attack is a pure function of the image, its parameters and a `u64`
//! seed: the same inputs give the same bytes on every run and with any
//! number of threads. Randomness comes from ChaCha8 seeded per attack, is
//! drawn in a fixed order on one thread and mapped to numbers by this
//! module's own code (not `rand`'s distributions, whose values may change
//! between versions); rayon only splits work into rows whose values do not
//! depend on each other. Parameters are clamped to sane ranges instead of
//! rejected, so no image of at least 1×1 pixel makes an attack panic.
//!
//! Resampling, blur and warps are written out here in plain `f32` rather
//! than taken from `fast_image_resize`, which would be faster but picks SIMD
//! code paths at run time: a simulator whose bytes depend on the CPU would
//! make audit tables incomparable between machines.
//!
//! ```
//! use leakmark::attack::{self, Attack};
//!
//! let drawing = image::RgbImage::from_pixel(64, 48, image::Rgb([200, 120, 40]));
//! let thumbnail = attack::apply(&Attack::Scale { factor: 0.5 }, &drawing, 1);
//! assert_eq!(thumbnail.dimensions(), (32, 24));
//! ```

use image::{ImageFormat, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Background shown where a geometric attack uncovers canvas outside the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// White, as an editor or a paper scan shows it.
    White,
    /// Black, as a photo viewer or video frame shows it.
    Black,
}

impl Fill {
    fn rgb(self) -> [f32; 3] {
        match self {
            Fill::White => [255.0; 3],
            Fill::Black => [0.0; 3],
        }
    }
}

/// One simulated leak channel.
///
/// Each variant says which real channel it stands for. Out-of-range and
/// non-finite parameters are clamped to the range given in its doc (NaN
/// becomes a mild default), never rejected.
///
/// Lossy WebP is not simulated: `image` 0.25 only writes lossless WebP, and
/// the crates that encode lossy WebP bind the C library libwebp, a build
/// dependency this crate avoids. Messenger recompression, the channel that
/// would use it, is modelled by [`Attack::Jpeg`].
#[derive(Clone, Debug, PartialEq)]
pub enum Attack {
    /// No change: the file itself was forwarded (mail attachment, USB stick,
    /// file share). The baseline row of an audit.
    Identity,
    /// JPEG re-encoding with 4:2:0 chroma subsampling, then decoding:
    /// messengers, social networks, "save as JPEG" in any editor.
    /// Images with a side over 65 535 px (the JPEG limit) pass unchanged.
    Jpeg {
        /// Encoder quality, 1–100 (libjpeg scale).
        quality: u8,
    },
    /// Uniform rescale: thumbnails, "fit to slide", zooming before a
    /// screenshot. Shrinking averages the covered area (as good
    /// downscalers do), enlarging uses Catmull-Rom bicubic.
    Scale {
        /// Size ratio, clamped to 0.01–8.
        factor: f32,
    },
    /// Independent horizontal and vertical rescale: a drawing stretched to
    /// fill a slide or a document frame. Same resampling as [`Attack::Scale`].
    Aspect {
        /// Horizontal size ratio, clamped to 0.01–8.
        sx: f32,
        /// Vertical size ratio, clamped to 0.01–8.
        sy: f32,
    },
    /// Keeps an axis-aligned rectangle of the image's aspect ratio: the
    /// leaker cuts out the part that matters, or removes a title block.
    Crop {
        /// Fraction of the pixels kept, clamped to 0.01–1.
        keep_area: f32,
        /// Horizontal centre of the kept rectangle, relative (0 = left edge,
        /// 1 = right edge); moved inward so the rectangle stays inside.
        cx: f32,
        /// Vertical centre of the kept rectangle, relative (0 = top).
        cy: f32,
    },
    /// Rotation about the centre with the canvas enlarged to hold the whole
    /// image: straightening a photo, re-orienting a scan, a tilted paste into
    /// a slide. Multiples of 90° are lossless; other angles use bilinear
    /// interpolation with anti-aliased edges.
    Rotate {
        /// Angle in degrees, clockwise as displayed.
        degrees: f32,
        /// Colour of the uncovered corners.
        fill: Fill,
    },
    /// [`Attack::Rotate`] by a seeded angle: its magnitude is uniform between
    /// the two bounds and its sign is random. Stands for the arbitrary small
    /// tilt of hand-made corrections, which no fixed angle covers.
    RotateRandom {
        /// Smallest magnitude in degrees, clamped to 0–180.
        min_degrees: f32,
        /// Largest magnitude in degrees, clamped to 0–180.
        max_degrees: f32,
        /// Colour of the uncovered corners.
        fill: Fill,
    },
    /// Left–right mirror: "flip horizontal" in an editor or a selfie camera.
    MirrorH,
    /// Top–bottom mirror: "flip vertical", a slide flipped by mistake.
    MirrorV,
    /// Projective distortion: a photo of a print or a screen taken off-axis,
    /// or a "perspective correction" gone slightly wrong. Each corner moves
    /// independently by up to `jitter` times the image size (seeded); the
    /// output is the warped quad's bounding box on white, bilinear.
    Perspective {
        /// Largest corner displacement as a fraction of width/height,
        /// clamped to 0–0.2.
        jitter: f32,
    },
    /// Gaussian blur: a soft-focus photo, a "smooth" filter, a low-pass
    /// video codec.
    Blur {
        /// Standard deviation in pixels, clamped to 0–10.
        sigma: f32,
    },
    /// Median filter over a (2r+1)² square: "despeckle", "dust and
    /// scratches", phone noise reduction.
    Median {
        /// Radius `r` in pixels, clamped to 0–10.
        radius: u32,
    },
    /// Additive, independent per-channel, near-Gaussian noise (sum of four
    /// uniforms, so bounded at ±3.46 σ): sensor noise, film grain filters,
    /// deliberate dithering.
    Noise {
        /// Standard deviation in 8-bit levels, clamped to 0–100.
        sigma: f32,
    },
    /// Adds a constant to every channel: the brightness slider of a viewer
    /// or editor.
    Brightness {
        /// Levels added (out of 255), clamped to ±255.
        delta: f32,
    },
    /// Scales the distance from mid-grey (127.5): the contrast slider.
    Contrast {
        /// Multiplier, clamped to 0–10; below 1 flattens.
        factor: f32,
    },
    /// Power curve `out = 255 (in/255)^(1/gamma)`, as the midtone slider of a
    /// Levels dialog: colour-management or display-profile mismatches.
    Gamma {
        /// Gamma, clamped to 0.1–10; above 1 brightens the midtones.
        gamma: f32,
    },
    /// Rec. 601 luma copied to all three channels: "desaturate", a greyscale
    /// print or fax, a black-and-white photocopy.
    Grayscale,
    /// An opaque, logo-like block with text-like strokes pasted at a seeded
    /// position: a "CONFIDENTIAL" badge, a watermark of the leaking site, a
    /// sticker hiding the title block.
    Stamp {
        /// Fraction of the image covered, clamped to 0–0.9.
        area: f32,
    },
    /// A 1920×1080 desktop screenshot with the image shown in a viewer
    /// window (title bar, frame, dark client area) scaled to fit 60–80 % of
    /// the screen, a wallpaper and a taskbar around it (seeded layout).
    /// Stands for "screenshot instead of forwarding the file", lossless PNG.
    Screenshot,
    /// A phone photo of the image shown on a monitor: the display's
    /// sub-pixel grid aliased into colour moiré, an off-axis perspective
    /// view with the bezel around, raised black level, uneven lighting and
    /// glare, defocus blur, sensor noise, white-balance and tone-curve shifts,
    /// and JPEG at quality 85–75. The hardest everyday channel.
    ScreenCamera {
        /// Overall strength, clamped to 0–1; 0.5 is a typical casual photo.
        severity: f32,
    },
    /// Printing on an office printer and scanning back: CMYK clustered-dot
    /// halftone at classic screen angles with dot gain, ink impurity, tinted
    /// and mottled paper, small skew, a scanner resolution differing from the
    /// print's, optical blur, noise and JPEG at quality 88–72.
    PrintScan {
        /// Overall strength, clamped to 0–1; 0.5 is a typical office copy.
        severity: f32,
    },
    /// Several channels in sequence, each with its own seed derived from the
    /// chain's: a crop then a messenger, a screenshot then a recompression.
    Chain(Vec<Attack>),
}

/// Applies `attack` to `image`; the same inputs always give the same bytes.
///
/// `seed` drives every random choice (corner jitter, stamp position, noise);
/// deterministic attacks ignore it. The output may have other dimensions
/// than the input. An image with a zero side is returned unchanged.
///
/// # Examples
///
/// ```
/// use leakmark::attack::{apply, Attack, Fill};
///
/// let img = image::RgbImage::from_pixel(40, 30, image::Rgb([90, 90, 90]));
/// let turned = apply(&Attack::Rotate { degrees: 90.0, fill: Fill::White }, &img, 0);
/// assert_eq!(turned.dimensions(), (30, 40));
/// ```
pub fn apply(attack: &Attack, image: &RgbImage, seed: u64) -> RgbImage {
    if image.width() == 0 || image.height() == 0 {
        return image.clone();
    }
    match attack {
        Attack::Identity => image.clone(),
        Attack::Jpeg { quality } => jpeg_roundtrip(image, *quality),
        Attack::Scale { factor } => {
            let f = param(*factor, 1.0, 0.01, 8.0);
            rescale(image, f, f)
        }
        Attack::Aspect { sx, sy } => rescale(
            image,
            param(*sx, 1.0, 0.01, 8.0),
            param(*sy, 1.0, 0.01, 8.0),
        ),
        Attack::Crop { keep_area, cx, cy } => crop(
            image,
            param(*keep_area, 1.0, 0.01, 1.0),
            param(*cx, 0.5, 0.0, 1.0),
            param(*cy, 0.5, 0.0, 1.0),
        ),
        Attack::Rotate { degrees, fill } => rotate(image, param(*degrees, 0.0, -1e6, 1e6), *fill),
        Attack::RotateRandom {
            min_degrees,
            max_degrees,
            fill,
        } => {
            let lo = param(*min_degrees, 0.0, 0.0, 180.0);
            let hi = param(*max_degrees, 0.0, 0.0, 180.0);
            let (lo, hi) = (lo.min(hi), lo.max(hi));
            let mut rng = rng_for(seed);
            let magnitude = lo + (hi - lo) * unit(&mut rng);
            let sign = if rng.next_u32() & 1 == 0 { 1.0 } else { -1.0 };
            rotate(image, sign * magnitude, *fill)
        }
        Attack::MirrorH => image::imageops::flip_horizontal(image),
        Attack::MirrorV => image::imageops::flip_vertical(image),
        Attack::Perspective { jitter } => perspective(image, param(*jitter, 0.0, 0.0, 0.2), seed),
        Attack::Blur { sigma } => {
            gaussian_blur(&Canvas::from_rgb(image), param(*sigma, 0.0, 0.0, 10.0)).to_rgb()
        }
        Attack::Median { radius } => match (*radius).min(10) {
            r @ 0..=2 => median_small(image, r),
            r => imageproc::filter::median_filter(image, r, r),
        },
        Attack::Noise { sigma } => {
            let sigma = param(*sigma, 0.0, 0.0, 100.0);
            let mut canvas = Canvas::from_rgb(image);
            add_noise(&mut canvas, &mut rng_for(seed), |_| sigma);
            canvas.to_rgb()
        }
        Attack::Brightness { delta } => {
            let delta = param(*delta, 0.0, -255.0, 255.0);
            map_levels(image, |v| v + delta)
        }
        Attack::Contrast { factor } => {
            let factor = param(*factor, 1.0, 0.0, 10.0);
            map_levels(image, |v| (v - 127.5) * factor + 127.5)
        }
        Attack::Gamma { gamma } => {
            let inv = 1.0 / param(*gamma, 1.0, 0.1, 10.0);
            map_levels(image, |v| 255.0 * (v / 255.0).powf(inv))
        }
        Attack::Grayscale => grayscale(image),
        Attack::Stamp { area } => stamp(image, param(*area, 0.0, 0.0, 0.9), seed),
        Attack::Screenshot => screenshot(image, seed),
        Attack::ScreenCamera { severity } => {
            screen_camera(image, param(*severity, 0.5, 0.0, 1.0), seed)
        }
        Attack::PrintScan { severity } => print_scan(image, param(*severity, 0.5, 0.0, 1.0), seed),
        Attack::Chain(steps) => {
            let mut current = image.clone();
            for (i, step) in steps.iter().enumerate() {
                current = apply(step, &current, derive_seed(seed, i as u64 + 1));
            }
            current
        }
    }
}

/// Pixel average of two copies, rounding halves up: the simplest collusion,
/// where two recipients blend their copies hoping to dilute both marks.
///
/// Colluders holding copies of different sizes would first scale one onto
/// the other, so `b` is resampled to `a`'s dimensions when they differ.
///
/// # Examples
///
/// ```
/// use image::{Rgb, RgbImage};
///
/// let a = RgbImage::from_pixel(16, 16, Rgb([10, 20, 30]));
/// let b = RgbImage::from_pixel(16, 16, Rgb([11, 40, 30]));
/// let mixed = leakmark::attack::collusion_average(&a, &b);
/// assert_eq!(mixed.get_pixel(3, 3), &Rgb([11, 30, 30]));
/// ```
pub fn collusion_average(a: &RgbImage, b: &RgbImage) -> RgbImage {
    let resized;
    let b = if a.dimensions() == b.dimensions() || b.width() == 0 || b.height() == 0 {
        b
    } else {
        let (w, h) = a.dimensions();
        resized = resize(&Canvas::from_rgb(b), w as usize, h as usize).to_rgb();
        &resized
    };
    if a.dimensions() != b.dimensions() {
        // `b` is empty and `a` is not: there is nothing to average with.
        return a.clone();
    }
    let mut out = a.clone();
    for (o, &v) in out.iter_mut().zip(b.iter()) {
        *o = (u16::from(*o) + u16::from(v)).div_ceil(2) as u8;
    }
    out
}

/// The named attack suite of `leakmark audit` and the robustness tests.
///
/// Names are stable identifiers (lower case, no spaces) for tables and test
/// output. Covers recompression, rescaling, cropping, rotation, flips,
/// perspective, filters, tone changes, overlays, the three physical or
/// screen channels, and three combinations seen in real leaks.
///
/// # Examples
///
/// ```
/// let suite = leakmark::attack::standard_suite();
/// assert_eq!(suite[0].0, "none");
/// assert!(suite.iter().any(|(name, _)| *name == "print-scan"));
/// ```
pub fn standard_suite() -> Vec<(&'static str, Attack)> {
    use Attack::*;
    let white = Fill::White;
    vec![
        ("none", Identity),
        ("jpeg-75", Jpeg { quality: 75 }),
        ("jpeg-50", Jpeg { quality: 50 }),
        ("jpeg-30", Jpeg { quality: 30 }),
        ("scale-0.5", Scale { factor: 0.5 }),
        ("scale-0.333", Scale { factor: 1.0 / 3.0 }),
        ("scale-1.5", Scale { factor: 1.5 }),
        ("scale-2.0", Scale { factor: 2.0 }),
        (
            "crop-keep-50",
            Crop {
                keep_area: 0.5,
                cx: 0.35,
                cy: 0.4,
            },
        ),
        (
            "crop-keep-25",
            Crop {
                keep_area: 0.25,
                cx: 0.7,
                cy: 0.65,
            },
        ),
        (
            "rotate-2",
            Rotate {
                degrees: 2.0,
                fill: white,
            },
        ),
        (
            "rotate-10",
            Rotate {
                degrees: 10.0,
                fill: white,
            },
        ),
        (
            "rotate-30",
            Rotate {
                degrees: 30.0,
                fill: white,
            },
        ),
        (
            "rotate-45",
            Rotate {
                degrees: 45.0,
                fill: white,
            },
        ),
        (
            "rotate-90",
            Rotate {
                degrees: 90.0,
                fill: white,
            },
        ),
        (
            "rotate-180",
            Rotate {
                degrees: 180.0,
                fill: white,
            },
        ),
        (
            "rotate-random",
            RotateRandom {
                min_degrees: 0.5,
                max_degrees: 45.0,
                fill: white,
            },
        ),
        ("aspect-1.0x0.8", Aspect { sx: 1.0, sy: 0.8 }),
        ("aspect-0.8x1.0", Aspect { sx: 0.8, sy: 1.0 }),
        ("mirror-h", MirrorH),
        ("mirror-v", MirrorV),
        ("perspective-0.05", Perspective { jitter: 0.05 }),
        ("perspective-0.10", Perspective { jitter: 0.10 }),
        ("blur-1", Blur { sigma: 1.0 }),
        ("median-1", Median { radius: 1 }),
        ("noise-5", Noise { sigma: 5.0 }),
        ("gamma-1.5", Gamma { gamma: 1.5 }),
        ("brightness+30", Brightness { delta: 30.0 }),
        ("contrast-0.7", Contrast { factor: 0.7 }),
        ("grayscale", Grayscale),
        ("stamp-10", Stamp { area: 0.10 }),
        ("screenshot", Screenshot),
        ("screen-camera", ScreenCamera { severity: 0.5 }),
        ("print-scan", PrintScan { severity: 0.5 }),
        (
            "crop50+rotate5+jpeg60",
            Chain(vec![
                Crop {
                    keep_area: 0.5,
                    cx: 0.45,
                    cy: 0.55,
                },
                Rotate {
                    degrees: 5.0,
                    fill: white,
                },
                Jpeg { quality: 60 },
            ]),
        ),
        (
            // A messenger's thumbnail: half size, then recompressed hard.
            "scale0.5+jpeg50",
            Chain(vec![Scale { factor: 0.5 }, Jpeg { quality: 50 }]),
        ),
        (
            "scale0.5+rotate30+jpeg50",
            Chain(vec![
                Scale { factor: 0.5 },
                Rotate {
                    degrees: 30.0,
                    fill: white,
                },
                Jpeg { quality: 50 },
            ]),
        ),
        (
            "perspective0.08+blur1+jpeg70",
            Chain(vec![
                Perspective { jitter: 0.08 },
                Blur { sigma: 1.0 },
                Jpeg { quality: 70 },
            ]),
        ),
    ]
}

// ---------------------------------------------------------------------------
// Parameters and randomness

/// Largest output of a geometric attack, in pixels, unless the input is
/// already larger (then 2.5 × the input, enough for any rotation or
/// perspective canvas). Keeps `Scale { factor: 8.0 }` on a big photo from
/// allocating gigabytes; 50 MP is above any phone camera's output.
const MAX_OUTPUT_PX: f64 = 50e6;

/// A finite parameter clamped to `lo..=hi`; NaN and infinities become `default`.
fn param(x: f32, default: f32, lo: f32, hi: f32) -> f32 {
    if x.is_finite() {
        x.clamp(lo, hi)
    } else {
        default
    }
}

/// SplitMix64 finaliser: spreads nearby seeds far apart.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seed of the `index`-th step of a chain.
fn derive_seed(seed: u64, index: u64) -> u64 {
    mix64(seed ^ mix64(index))
}

fn rng_for(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix64(seed))
}

/// Uniform in `[0, 1)` from the top 24 bits of one ChaCha word.
fn unit(rng: &mut ChaCha8Rng) -> f32 {
    (rng.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Uniform in `[-1, 1)`.
fn signed_unit(rng: &mut ChaCha8Rng) -> f32 {
    2.0 * unit(rng) - 1.0
}

/// Zero-mean, unit-variance, near-Gaussian: the sum of four 16-bit uniforms
/// from one ChaCha word, rescaled. Bounded at ±2√3; one word per sample
/// keeps 6 M samples (a 2 MP image) at about 50 ms.
fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let v = rng.next_u64();
    let sum = (v & 0xFFFF) + ((v >> 16) & 0xFFFF) + ((v >> 32) & 0xFFFF) + (v >> 48);
    (sum as f32 / 65_536.0 - 2.0) * 3f32.sqrt()
}

fn random_colour(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> Rgb<u8> {
    let mut c = [0u8; 3];
    for v in &mut c {
        *v = (lo + (hi - lo) * unit(rng)).round() as u8;
    }
    Rgb(c)
}

/// Output dimensions for a requested size, at least 1×1 and within the
/// output cap (shrunk uniformly if above it).
fn cap_dims(width: f64, height: f64, input_px: usize) -> (usize, usize) {
    let cap = MAX_OUTPUT_PX.max(2.5 * input_px as f64);
    let (mut w, mut h) = (width.max(1.0), height.max(1.0));
    if !(w.is_finite() && h.is_finite()) {
        return (1, 1);
    }
    if w * h > cap {
        let k = (cap / (w * h)).sqrt();
        w *= k;
        h *= k;
    }
    (w.round().max(1.0) as usize, h.round().max(1.0) as usize)
}

// ---------------------------------------------------------------------------
// Floating-point canvas, resampling and filters

/// Interleaved RGB in `f32`, 0–255 scale, for steps that should not round
/// to 8 bits in between. Invariant: `width, height >= 1`.
struct Canvas {
    width: usize,
    height: usize,
    data: Vec<f32>,
}

impl Canvas {
    fn from_rgb(img: &RgbImage) -> Self {
        Canvas {
            width: img.width() as usize,
            height: img.height() as usize,
            data: img.as_raw().iter().map(|&v| f32::from(v)).collect(),
        }
    }

    fn to_rgb(&self) -> RgbImage {
        let bytes = self
            .data
            .iter()
            .map(|&v| v.round().clamp(0.0, 255.0) as u8)
            .collect();
        // Invariant: `data` holds exactly width × height × 3 values.
        RgbImage::from_raw(self.width as u32, self.height as u32, bytes)
            .expect("canvas length matches its dimensions")
    }

    /// Bilinear sample at continuous coordinates, pixel centres at `i + 0.5`.
    /// Taps outside the image read `fill`, which anti-aliases the edge.
    fn sample(&self, x: f32, y: f32, fill: [f32; 3]) -> [f32; 3] {
        let (fx, fy) = (x - 0.5, y - 0.5);
        // Also rejects NaN.
        if !(fx > -1.0 && fy > -1.0 && fx < self.width as f32 && fy < self.height as f32) {
            return fill;
        }
        // Truncation is floor here because fx, fy > -1; `floor` itself is a
        // libm call on baseline x86-64 and doubled the cost of a warp.
        let (x0, y0) = ((fx + 1.0) as isize - 1, (fy + 1.0) as isize - 1);
        let (tx, ty) = (fx - x0 as f32, fy - y0 as f32);
        let tap = |xi: isize, yi: isize| -> [f32; 3] {
            if xi < 0 || yi < 0 || xi as usize >= self.width || yi as usize >= self.height {
                fill
            } else {
                let i = (yi as usize * self.width + xi as usize) * 3;
                [self.data[i], self.data[i + 1], self.data[i + 2]]
            }
        };
        let (a, b) = (tap(x0, y0), tap(x0 + 1, y0));
        let (c, d) = (tap(x0, y0 + 1), tap(x0 + 1, y0 + 1));
        let mut out = [0.0; 3];
        for (k, o) in out.iter_mut().enumerate() {
            let top = a[k] + (b[k] - a[k]) * tx;
            let bottom = c[k] + (d[k] - c[k]) * tx;
            *o = top + (bottom - top) * ty;
        }
        out
    }
}

/// Builds a canvas from a per-pixel function, rows in parallel; each value
/// depends only on its own coordinates, so the thread count cannot matter.
fn render<F>(width: usize, height: usize, pixel: F) -> Canvas
where
    F: Fn(usize, usize) -> [f32; 3] + Sync,
{
    let (width, height) = (width.max(1), height.max(1));
    let mut data = vec![0.0f32; width * height * 3];
    data.par_chunks_mut(width * 3)
        .enumerate()
        .for_each(|(y, row)| {
            for (x, px) in row.chunks_exact_mut(3).enumerate() {
                px.copy_from_slice(&pixel(x, y));
            }
        });
    Canvas {
        width,
        height,
        data,
    }
}

/// The source samples and weights of one output sample of a separable filter.
struct Taps {
    start: usize,
    weights: Vec<f32>,
}

/// Adds `weight` to source index `index`, clamped to the edge, growing the
/// tap window as needed (edge clamping folds outside taps onto the border).
fn push_tap(taps: &mut Taps, index: isize, len: usize, weight: f32) {
    let i = index.clamp(0, len as isize - 1) as usize;
    if taps.weights.is_empty() {
        taps.start = i;
    }
    while i < taps.start {
        taps.weights.insert(0, 0.0);
        taps.start -= 1;
    }
    let end = taps.start + taps.weights.len();
    if i >= end {
        taps.weights.resize(i - taps.start + 1, 0.0);
    }
    taps.weights[i - taps.start] += weight;
}

/// Taps mapping `src_len` samples onto `dst_len`: exact area averaging when
/// shrinking, Catmull-Rom when enlarging, identity when equal.
fn resample_taps(src_len: usize, dst_len: usize) -> Vec<Taps> {
    let ratio = src_len as f64 / dst_len as f64;
    (0..dst_len)
        .map(|i| {
            let mut taps = Taps {
                start: 0,
                weights: Vec::new(),
            };
            if src_len == dst_len {
                push_tap(&mut taps, i as isize, src_len, 1.0);
            } else if dst_len < src_len {
                let (lo, hi) = (i as f64 * ratio, (i + 1) as f64 * ratio);
                let first = lo.floor() as usize;
                let last = (hi.ceil() as usize).min(src_len);
                for j in first..last {
                    let overlap = hi.min(j as f64 + 1.0) - lo.max(j as f64);
                    if overlap > 0.0 {
                        push_tap(&mut taps, j as isize, src_len, (overlap / ratio) as f32);
                    }
                }
            } else {
                let x = (i as f64 + 0.5) * ratio - 0.5;
                let x0 = x.floor();
                let t = (x - x0) as f32;
                let weights = [
                    catmull_rom(t + 1.0),
                    catmull_rom(t),
                    catmull_rom(1.0 - t),
                    catmull_rom(2.0 - t),
                ];
                for (k, w) in weights.into_iter().enumerate() {
                    push_tap(&mut taps, x0 as isize - 1 + k as isize, src_len, w);
                }
            }
            taps
        })
        .collect()
}

/// Catmull-Rom cubic (Keys, a = −0.5) at distance `d >= 0`.
fn catmull_rom(d: f32) -> f32 {
    let d = d.abs();
    if d < 1.0 {
        (1.5 * d - 2.5) * d * d + 1.0
    } else if d < 2.0 {
        ((-0.5 * d + 2.5) * d - 4.0) * d + 2.0
    } else {
        0.0
    }
}

/// Normalised Gaussian taps, radius 3σ, edges clamped.
fn gaussian_taps(len: usize, sigma: f32) -> Vec<Taps> {
    let radius = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-radius..=radius)
        .map(|d| (-((d * d) as f32) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    (0..len as isize)
        .map(|i| {
            let mut taps = Taps {
                start: 0,
                weights: Vec::with_capacity(kernel.len()),
            };
            for (d, &k) in (-radius..=radius).zip(&kernel) {
                push_tap(&mut taps, i + d, len, k / total);
            }
            taps
        })
        .collect()
}

/// Filters along rows: output width is `taps.len()`.
fn convolve_rows(src: &Canvas, taps: &[Taps]) -> Canvas {
    let out_w = taps.len().max(1);
    let mut data = vec![0.0f32; out_w * src.height * 3];
    data.par_chunks_mut(out_w * 3)
        .zip(src.data.par_chunks(src.width * 3))
        .for_each(|(out, row)| {
            for (px, t) in out.chunks_exact_mut(3).zip(taps) {
                let window = &row[t.start * 3..(t.start + t.weights.len()) * 3];
                let mut acc = [0.0f32; 3];
                for (s, &w) in window.chunks_exact(3).zip(&t.weights) {
                    acc[0] += w * s[0];
                    acc[1] += w * s[1];
                    acc[2] += w * s[2];
                }
                px.copy_from_slice(&acc);
            }
        });
    Canvas {
        width: out_w,
        height: src.height,
        data,
    }
}

/// Filters along columns: output height is `taps.len()`. Works a whole row
/// at a time so the inner loop runs over contiguous memory.
fn convolve_cols(src: &Canvas, taps: &[Taps]) -> Canvas {
    let row_len = src.width * 3;
    let mut data = vec![0.0f32; row_len * taps.len().max(1)];
    data.par_chunks_mut(row_len)
        .zip(taps.par_iter())
        .for_each(|(out, t)| {
            for (k, &w) in t.weights.iter().enumerate() {
                let row = &src.data[(t.start + k) * row_len..][..row_len];
                for (o, &v) in out.iter_mut().zip(row) {
                    *o += w * v;
                }
            }
        });
    Canvas {
        width: src.width,
        height: taps.len().max(1),
        data,
    }
}

fn resize(src: &Canvas, width: usize, height: usize) -> Canvas {
    let (width, height) = (width.max(1), height.max(1));
    if (width, height) == (src.width, src.height) {
        return Canvas {
            width,
            height,
            data: src.data.clone(),
        };
    }
    let rows = convolve_rows(src, &resample_taps(src.width, width));
    convolve_cols(&rows, &resample_taps(src.height, height))
}

/// Separable Gaussian blur; σ below 0.05 px is a copy.
fn gaussian_blur(src: &Canvas, sigma: f32) -> Canvas {
    if sigma < 0.05 {
        return Canvas {
            width: src.width,
            height: src.height,
            data: src.data.clone(),
        };
    }
    let rows = convolve_rows(src, &gaussian_taps(src.width, sigma));
    convolve_cols(&rows, &gaussian_taps(src.height, sigma))
}

/// Adds near-Gaussian noise whose σ (in levels) may depend on the value.
/// Drawn sequentially from one stream, so the bytes never depend on threads.
fn add_noise(canvas: &mut Canvas, rng: &mut ChaCha8Rng, sigma: impl Fn(f32) -> f32) {
    for v in &mut canvas.data {
        *v += sigma(*v) * gaussian(rng);
    }
}

/// Applies a tone curve on 0–255 values through a 256-entry table.
fn map_levels(img: &RgbImage, curve: impl Fn(f32) -> f32) -> RgbImage {
    let lut: Vec<u8> = (0..=255u8)
        .map(|v| curve(f32::from(v)).round().clamp(0.0, 255.0) as u8)
        .collect();
    let mut out = img.clone();
    for v in out.iter_mut() {
        *v = lut[usize::from(*v)];
    }
    out
}

/// Median over a (2r+1)² window per channel, edges clamped, for r <= 2.
/// Selecting from the 9 or 25 values directly is far faster at these radii
/// than `imageproc`'s sliding histogram (1.3 s on 2 MP at r = 1, measured).
fn median_small(img: &RgbImage, radius: u32) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let r = radius.min(2) as isize;
    let src = img.as_raw();
    let mut out = vec![0u8; w * h * 3];
    out.par_chunks_mut(w * 3).enumerate().for_each(|(y, row)| {
        let mut window = [0u8; 25];
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            for (c, value) in px.iter_mut().enumerate() {
                let mut n = 0;
                for dy in -r..=r {
                    let yy = (y as isize + dy).clamp(0, h as isize - 1) as usize;
                    for dx in -r..=r {
                        let xx = (x as isize + dx).clamp(0, w as isize - 1) as usize;
                        window[n] = src[(yy * w + xx) * 3 + c];
                        n += 1;
                    }
                }
                let (_, median, _) = window[..n].select_nth_unstable(n / 2);
                *value = *median;
            }
        }
    });
    // Invariant: `out` holds exactly w × h × 3 values.
    RgbImage::from_raw(w as u32, h as u32, out).expect("buffer length matches dimensions")
}

fn grayscale(img: &RgbImage) -> RgbImage {
    let mut out = img.clone();
    for px in out.pixels_mut() {
        let [r, g, b] = px.0.map(u32::from);
        let y = ((299 * r + 587 * g + 114 * b + 500) / 1000) as u8;
        px.0 = [y; 3];
    }
    out
}

// ---------------------------------------------------------------------------
// Geometry

/// A 3×3 projective map, row-major, acting on `(x, y, 1)`.
#[derive(Clone, Copy, Debug)]
struct Homography([f64; 9]);

impl Homography {
    fn map(&self, x: f64, y: f64) -> (f64, f64) {
        let m = &self.0;
        let w = m[6] * x + m[7] * y + m[8];
        (
            (m[0] * x + m[1] * y + m[2]) / w,
            (m[3] * x + m[4] * y + m[5]) / w,
        )
    }

    /// Maps the rectangle `[0, w] × [0, h]` onto `quad` (top-left, top-right,
    /// bottom-right, bottom-left): Heckbert's closed-form square-to-quad
    /// ("Fundamentals of Texture Mapping", 1989) after scaling to the unit
    /// square. `None` if the quad is degenerate.
    fn rect_to_quad(w: f64, h: f64, quad: [(f64, f64); 4]) -> Option<Self> {
        let [(x0, y0), (x1, y1), (x2, y2), (x3, y3)] = quad;
        let (dx3, dy3) = (x0 - x1 + x2 - x3, y0 - y1 + y2 - y3);
        let (dx1, dx2, dy1, dy2) = (x1 - x2, x3 - x2, y1 - y2, y3 - y2);
        let det = dx1 * dy2 - dx2 * dy1;
        if !det.is_finite() || det.abs() < 1e-12 {
            return None;
        }
        let g = (dx3 * dy2 - dx2 * dy3) / det;
        let k = (dx1 * dy3 - dx3 * dy1) / det;
        let (a, b, c) = (x1 - x0 + g * x1, x3 - x0 + k * x3, x0);
        let (d, e, f) = (y1 - y0 + g * y1, y3 - y0 + k * y3, y0);
        Some(Homography([
            a / w,
            b / h,
            c,
            d / w,
            e / h,
            f,
            g / w,
            k / h,
            1.0,
        ]))
    }

    fn inverse(&self) -> Option<Self> {
        let [a, b, c, d, e, f, g, h, i] = self.0;
        let adjugate = [
            e * i - f * h,
            c * h - b * i,
            b * f - c * e,
            f * g - d * i,
            a * i - c * g,
            c * d - a * f,
            d * h - e * g,
            b * g - a * h,
            a * e - b * d,
        ];
        let det = a * adjugate[0] + b * adjugate[3] + c * adjugate[6];
        if !det.is_finite() || det.abs() < 1e-18 {
            return None;
        }
        Some(Homography(adjugate.map(|v| v / det)))
    }

    /// The inverse map of a clockwise rotation by `radians` (then scaling by
    /// `scale`) of a `w × h` image about its centre, placed centred on a
    /// `out_w × out_h` canvas: output coordinates to source coordinates.
    fn rotation_inverse(
        radians: f64,
        scale: f64,
        (w, h): (f64, f64),
        (out_w, out_h): (f64, f64),
    ) -> Self {
        let (sin, cos) = radians.sin_cos();
        let (cos, sin) = (cos / scale, sin / scale);
        let (cx, cy, ocx, ocy) = (w / 2.0, h / 2.0, out_w / 2.0, out_h / 2.0);
        Homography([
            cos,
            sin,
            cx - cos * ocx - sin * ocy,
            -sin,
            cos,
            cy + sin * ocx - cos * ocy,
            0.0,
            0.0,
            1.0,
        ])
    }
}

/// Resamples `src` onto an `out_w × out_h` canvas; `inverse` maps output
/// coordinates to source coordinates (both continuous, centres at `i + 0.5`).
fn warp(src: &Canvas, out_w: usize, out_h: usize, inverse: &Homography, fill: [f32; 3]) -> Canvas {
    render(out_w, out_h, |x, y| {
        let (u, v) = inverse.map(x as f64 + 0.5, y as f64 + 0.5);
        src.sample(u as f32, v as f32, fill)
    })
}

fn rescale(img: &RgbImage, sx: f32, sy: f32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (out_w, out_h) = cap_dims(
        f64::from(w) * f64::from(sx),
        f64::from(h) * f64::from(sy),
        (w as usize) * (h as usize),
    );
    resize(&Canvas::from_rgb(img), out_w, out_h).to_rgb()
}

fn crop(img: &RgbImage, keep_area: f32, cx: f32, cy: f32) -> RgbImage {
    let (w, h) = img.dimensions();
    let side = keep_area.sqrt();
    let cw = ((w as f32 * side).round() as u32).clamp(1, w);
    let ch = ((h as f32 * side).round() as u32).clamp(1, h);
    let x0 = (cx * w as f32 - cw as f32 / 2.0)
        .round()
        .clamp(0.0, (w - cw) as f32) as u32;
    let y0 = (cy * h as f32 - ch as f32 / 2.0)
        .round()
        .clamp(0.0, (h - ch) as f32) as u32;
    image::imageops::crop_imm(img, x0, y0, cw, ch).to_image()
}

fn rotate(img: &RgbImage, degrees: f32, fill: Fill) -> RgbImage {
    let d = f64::from(degrees).rem_euclid(360.0);
    let quarter = (d / 90.0).round();
    if (d - quarter * 90.0).abs() < 1e-3 {
        return match quarter as u32 % 4 {
            1 => image::imageops::rotate90(img),
            2 => image::imageops::rotate180(img),
            3 => image::imageops::rotate270(img),
            _ => img.clone(),
        };
    }
    let radians = d.to_radians();
    let (w, h) = (f64::from(img.width()), f64::from(img.height()));
    let (sin, cos) = (radians.sin().abs(), radians.cos().abs());
    // The small epsilon keeps exact sizes (e.g. 45° of 2×2) from gaining a
    // column through rounding noise.
    let (out_w, out_h) = cap_dims(
        (w * cos + h * sin - 1e-6).ceil(),
        (w * sin + h * cos - 1e-6).ceil(),
        (w * h) as usize,
    );
    // If the cap shrank the canvas, shrink the image with it.
    let scale = (out_w as f64 / (w * cos + h * sin)).min(1.0);
    let inverse =
        Homography::rotation_inverse(radians, scale, (w, h), (out_w as f64, out_h as f64));
    warp(&Canvas::from_rgb(img), out_w, out_h, &inverse, fill.rgb()).to_rgb()
}

/// The rectangle `w × h` with each corner moved by up to `jitter` of the
/// size, translated so its bounding box starts at `(margin, margin)`.
/// Returns the quad and the canvas size (bounding box plus margins).
fn jittered_quad(
    (w, h): (f64, f64),
    jitter: f64,
    margin: f64,
    rng: &mut ChaCha8Rng,
) -> ([(f64, f64); 4], (f64, f64)) {
    let mut quad = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)];
    for corner in &mut quad {
        corner.0 += jitter * w * f64::from(signed_unit(rng));
        corner.1 += jitter * h * f64::from(signed_unit(rng));
    }
    let min_x = quad.iter().map(|c| c.0).fold(f64::INFINITY, f64::min);
    let min_y = quad.iter().map(|c| c.1).fold(f64::INFINITY, f64::min);
    let max_x = quad.iter().map(|c| c.0).fold(f64::NEG_INFINITY, f64::max);
    let max_y = quad.iter().map(|c| c.1).fold(f64::NEG_INFINITY, f64::max);
    for corner in &mut quad {
        corner.0 += margin - min_x;
        corner.1 += margin - min_y;
    }
    let size = (max_x - min_x + 2.0 * margin, max_y - min_y + 2.0 * margin);
    (quad, size)
}

fn perspective(img: &RgbImage, jitter: f32, seed: u64) -> RgbImage {
    let mut rng = rng_for(seed);
    let (w, h) = (f64::from(img.width()), f64::from(img.height()));
    let (quad, (bw, bh)) = jittered_quad((w, h), f64::from(jitter), 0.0, &mut rng);
    let (out_w, out_h) = cap_dims((bw - 1e-6).ceil(), (bh - 1e-6).ceil(), (w * h) as usize);
    // Scale the quad with the canvas if the cap shrank it.
    let k = (out_w as f64 / bw).min(out_h as f64 / bh).min(1.0);
    let quad = quad.map(|(x, y)| (x * k, y * k));
    let Some(inverse) = Homography::rect_to_quad(w, h, quad).and_then(|m| m.inverse()) else {
        // Unreachable for jitter <= 0.2 (the quad stays convex).
        return img.clone();
    };
    warp(
        &Canvas::from_rgb(img),
        out_w,
        out_h,
        &inverse,
        Fill::White.rgb(),
    )
    .to_rgb()
}

// ---------------------------------------------------------------------------
// Drawing: overlays, desktop chrome

/// Fills a rectangle, clipped to the image.
fn fill_rect(img: &mut RgbImage, x: i64, y: i64, w: i64, h: i64, colour: Rgb<u8>) {
    let x0 = x.clamp(0, i64::from(img.width()));
    let y0 = y.clamp(0, i64::from(img.height()));
    let x1 = (x + w).clamp(0, i64::from(img.width()));
    let y1 = (y + h).clamp(0, i64::from(img.height()));
    for yy in y0..y1 {
        for xx in x0..x1 {
            img.put_pixel(xx as u32, yy as u32, colour);
        }
    }
}

/// Draws rows of glyph-like strokes (words of 2–8 "letters" made of two or
/// three bars each) inside the rectangle, `glyph_px` high. Stands in for
/// text, which no font is needed to imitate at the scale of a mark.
fn draw_text_like(
    img: &mut RgbImage,
    (x, y, w, h): (i64, i64, i64, i64),
    glyph_px: i64,
    colour: Rgb<u8>,
    rng: &mut ChaCha8Rng,
) {
    let glyph_px = glyph_px.max(3);
    let stroke = (glyph_px / 7).max(1);
    let leading = glyph_px * 3 / 2;
    let mut line_y = y;
    while line_y + glyph_px <= y + h {
        let mut cursor = x;
        'line: loop {
            let letters = 2 + (rng.next_u32() % 7) as i64;
            for _ in 0..letters {
                let gw = (glyph_px as f32 * (0.4 + 0.4 * unit(rng))).round() as i64;
                if cursor + gw > x + w {
                    break 'line;
                }
                // Bit 0..4: left bar, right bar, top, middle, bottom bar.
                let mut shape = rng.next_u32() % 32;
                if shape.count_ones() < 2 {
                    shape |= 0b10001;
                }
                let bars = [
                    (0, 0, stroke, glyph_px),
                    (gw - stroke, 0, stroke, glyph_px),
                    (0, 0, gw, stroke),
                    (0, glyph_px / 2, gw, stroke),
                    (0, glyph_px - stroke, gw, stroke),
                ];
                for (bit, (bx, by, bw, bh)) in bars.into_iter().enumerate() {
                    if shape & (1 << bit) != 0 {
                        fill_rect(img, cursor + bx, line_y + by, bw, bh, colour);
                    }
                }
                cursor += gw + stroke.max(glyph_px / 5);
            }
            cursor += glyph_px / 2;
        }
        line_y += leading;
    }
}

fn stamp(img: &RgbImage, area: f32, seed: u64) -> RgbImage {
    let mut rng = rng_for(seed);
    let (w, h) = (f64::from(img.width()), f64::from(img.height()));
    let target = f64::from(area) * w * h;
    let mut out = img.clone();
    if target < 1.0 {
        return out;
    }
    // Logos and badges are wider than tall: aspect 1.5–4.
    let aspect = 1.5 + 2.5 * f64::from(unit(&mut rng));
    let mut bw = (target * aspect).sqrt();
    let mut bh = target / bw;
    if bw > w {
        bw = w;
        bh = (target / w).min(h);
    }
    if bh > h {
        bh = h;
        bw = (target / h).min(w);
    }
    let (bw, bh) = (bw.round().max(1.0) as i64, bh.round().max(1.0) as i64);
    let x = (f64::from(unit(&mut rng)) * (w - bw as f64 + 1.0)).floor() as i64;
    let y = (f64::from(unit(&mut rng)) * (h - bh as f64 + 1.0)).floor() as i64;
    let background = random_colour(&mut rng, 20.0, 235.0);
    let [r, g, b] = background.0.map(u32::from);
    let ink = if 299 * r + 587 * g + 114 * b > 128_000 {
        Rgb([20, 20, 20])
    } else {
        Rgb([245, 245, 245])
    };
    fill_rect(&mut out, x, y, bw, bh, background);
    let pad = (bh / 6).max(1);
    let frame = (bh / 24).max(1);
    // A frame line and two lines of "lettering".
    fill_rect(&mut out, x + pad / 2, y + pad / 2, bw - pad, frame, ink);
    fill_rect(
        &mut out,
        x + pad / 2,
        y + bh - pad / 2 - frame,
        bw - pad,
        frame,
        ink,
    );
    let inner = (x + pad, y + pad, bw - 2 * pad, bh - 2 * pad);
    draw_text_like(&mut out, inner, (bh - 2 * pad) * 2 / 5, ink, &mut rng);
    out
}

/// Desktop size of [`Attack::Screenshot`]: the most common monitor.
const DESKTOP: (u32, u32) = (1920, 1080);
/// Taskbar and title-bar heights of a 100 %-scaled desktop, in pixels.
const TASKBAR_PX: u32 = 48;
const TITLE_PX: u32 = 32;
/// Narrowest viewer window: the title bar needs room for its buttons.
const MIN_WINDOW_PX: u32 = 360;

fn screenshot(img: &RgbImage, seed: u64) -> RgbImage {
    let mut rng = rng_for(seed);
    let (cw, ch) = DESKTOP;
    let mut out = RgbImage::new(cw, ch);

    // Wallpaper: a vertical gradient between two seeded colours.
    let top = random_colour(&mut rng, 30.0, 200.0).0.map(f32::from);
    let bottom = random_colour(&mut rng, 30.0, 200.0).0.map(f32::from);
    for (y, row) in out.enumerate_rows_mut() {
        let t = y as f32 / (ch - 1) as f32;
        let colour = Rgb([0usize, 1, 2].map(|k| (top[k] + (bottom[k] - top[k]) * t).round() as u8));
        for (_, _, px) in row {
            *px = colour;
        }
    }

    // Taskbar with app icons and a clock.
    let bar_y = i64::from(ch - TASKBAR_PX);
    fill_rect(
        &mut out,
        0,
        bar_y,
        i64::from(cw),
        i64::from(TASKBAR_PX),
        Rgb([32, 33, 38]),
    );
    for i in 0..7 {
        let colour = random_colour(&mut rng, 60.0, 240.0);
        fill_rect(&mut out, 12 + i * 48, bar_y + 8, 32, 32, colour);
    }
    draw_text_like(
        &mut out,
        (i64::from(cw) - 110, bar_y + 16, 100, 20),
        12,
        Rgb([225, 225, 225]),
        &mut rng,
    );

    // The viewer window, with the image fitted into 60–80 % of the desktop.
    let fraction = 0.6 + 0.2 * unit(&mut rng);
    let avail_w = cw as f32 * fraction;
    let avail_h = (ch - TASKBAR_PX) as f32 * fraction - TITLE_PX as f32;
    let (w, h) = (img.width() as f32, img.height() as f32);
    let scale = (avail_w / w).min(avail_h / h);
    let shown_w = ((w * scale).round() as u32).clamp(1, avail_w as u32);
    let shown_h = ((h * scale).round() as u32).clamp(1, avail_h as u32);
    let client_w = shown_w.max(MIN_WINDOW_PX);
    let (win_w, win_h) = (client_w + 2, shown_h + TITLE_PX + 2);
    let win_x = (unit(&mut rng) * (cw - win_w + 1) as f32) as i64;
    let win_y = (unit(&mut rng) * (ch - TASKBAR_PX - win_h + 1) as f32) as i64;
    let (win_w, win_h) = (i64::from(win_w), i64::from(win_h));
    fill_rect(&mut out, win_x, win_y, win_w, win_h, Rgb([96, 98, 104]));
    fill_rect(
        &mut out,
        win_x + 1,
        win_y + 1,
        win_w - 2,
        i64::from(TITLE_PX),
        Rgb([243, 243, 243]),
    );
    draw_text_like(
        &mut out,
        (win_x + 12, win_y + 11, (win_w / 2).min(400), 12),
        11,
        Rgb([30, 30, 30]),
        &mut rng,
    );
    for i in 1..=3 {
        // Minimise, maximise, close glyphs.
        let bx = win_x + win_w - 1 - i * 46 + 18;
        fill_rect(&mut out, bx, win_y + 16, 10, 1, Rgb([30, 30, 30]));
        fill_rect(&mut out, bx + 4, win_y + 11, 1, 10, Rgb([30, 30, 30]));
    }
    let client_y = win_y + 1 + i64::from(TITLE_PX);
    fill_rect(
        &mut out,
        win_x + 1,
        client_y,
        win_w - 2,
        i64::from(shown_h),
        Rgb([28, 28, 28]),
    );
    let shown = resize(&Canvas::from_rgb(img), shown_w as usize, shown_h as usize).to_rgb();
    let image_x = win_x + 1 + i64::from((client_w - shown_w) / 2);
    image::imageops::replace(&mut out, &shown, image_x, client_y);
    out
}

// ---------------------------------------------------------------------------
// Physical channels

/// Zero-mean triangle wave of period 1, from −1 (at integers) to 1.
/// A cheap stand-in for a cosine where millions are needed per image.
fn triangle(t: f64) -> f32 {
    (1.0 - 4.0 * (frac(t) - 0.5).abs()) as f32
}

/// `t - t.floor()` for |t| < 2⁶³, without the libm call `floor` compiles to
/// on baseline x86-64 (it dominated the halftone loop).
fn frac(t: f64) -> f64 {
    let f = t - (t as i64) as f64;
    if f < 0.0 {
        f + 1.0
    } else {
        f
    }
}

/// JPEG round trip; see [`Attack::Jpeg`].
fn jpeg_roundtrip(img: &RgbImage, quality: u8) -> RgbImage {
    use jpeg_encoder::{ChromaSubsamplingMethod, ColorType, Encoder, SamplingFactor};
    let (Ok(w), Ok(h)) = (u16::try_from(img.width()), u16::try_from(img.height())) else {
        return img.clone();
    };
    let mut bytes = Vec::new();
    let mut encoder = Encoder::new(&mut bytes, quality.clamp(1, 100));
    // libjpeg and most phones subsample chroma 2×2 at every quality;
    // jpeg-encoder would switch to 4:4:4 at 90 and above.
    encoder.set_sampling_factor(SamplingFactor::F_2_2);
    encoder.set_chroma_subsampling_method(ChromaSubsamplingMethod::Average);
    if encoder.encode(img.as_raw(), w, h, ColorType::Rgb).is_err() {
        // Unreachable: the buffer length matches the dimensions.
        return img.clone();
    }
    match image::load_from_memory_with_format(&bytes, ImageFormat::Jpeg) {
        Ok(decoded) => decoded.to_rgb8(),
        // Unreachable: the bytes come from a conforming encoder.
        Err(_) => img.clone(),
    }
}

fn screen_camera(img: &RgbImage, s: f32, seed: u64) -> RgbImage {
    let mut rng = rng_for(seed);
    let (w, h) = (f64::from(img.width()), f64::from(img.height()));
    let s64 = f64::from(s);

    // Framing: the screen fills most of the photo, seen slightly off-axis and
    // tilted, at 0.7–1.0 photo pixels per image pixel.
    let magnification = 0.95 - 0.15 * s64 * f64::from(unit(&mut rng)) - 0.1 * s64;
    let tilt = f64::from(signed_unit(&mut rng)) * (0.5 + 2.5 * s64);
    let jitter = 0.01 + 0.04 * s64;
    let margin = 0.04 * w.max(h) * magnification;
    let (quad, (bw, bh)) = jittered_quad(
        (w * magnification, h * magnification),
        jitter,
        margin,
        &mut rng,
    );
    let (out_w, out_h) = cap_dims(bw.round(), bh.round(), (w * h) as usize);
    let k = (out_w as f64 / bw).min(out_h as f64 / bh).min(1.0);
    let (qcx, qcy) = (bw * k / 2.0, bh * k / 2.0);
    let (sin, cos) = tilt.to_radians().sin_cos();
    let quad = quad.map(|(x, y)| {
        let (x, y) = (x * k - qcx, y * k - qcy);
        (x * cos - y * sin + qcx, x * sin + y * cos + qcy)
    });
    let Some(inverse) = Homography::rect_to_quad(w, h, quad).and_then(|m| m.inverse()) else {
        return jpeg_roundtrip(img, 80);
    };

    // Display: pixel pitch relative to the image's pixels, black level (a
    // lit LCD photographs as dark grey), peak white below clipping.
    let pitch = 0.75 + 0.5 * f64::from(unit(&mut rng));
    let black = 8.0 + 20.0 * s;
    let white = 250.0 - 25.0 * s;
    // Contrast of the display's sub-pixel pattern as the lens delivers it to
    // the sensor. Integration over a camera pixel leaves roughly a sixth of
    // it as moiré beats: 0.25 gives faint bands in a careful photo (about
    // 3 % of white), severity raises it to the clearly banded look of a
    // quick one (about 8 %).
    let moire = 0.25 + 0.45 * s;
    // Lighting: a linear fall-off, vignetting and a soft glare spot.
    let (gx, gy) = (
        signed_unit(&mut rng) * (0.05 + 0.2 * s),
        signed_unit(&mut rng) * (0.05 + 0.2 * s),
    );
    let vignette = 0.1 + 0.25 * s;
    let glare_at = (unit(&mut rng), unit(&mut rng));
    let glare_level = 6.0 + 30.0 * s * unit(&mut rng);
    let glare_radius = 0.15 + 0.15 * unit(&mut rng);

    // The picture as the display shows it, defocused. Outside the screen
    // reads as black: the bezel and the dark room.
    let src = Canvas::from_rgb(img);
    let shown = render(out_w, out_h, |x, y| {
        let (u, v) = inverse.map(x as f64 + 0.5, y as f64 + 0.5);
        src.sample(u as f32, v as f32, [0.0; 3])
            .map(|c| black + (white - black) * c / 255.0)
    });
    let shown = gaussian_blur(&shown, 0.6 + 1.4 * s);

    // The display grid as the sensor samples it, and the lighting. The grid
    // is applied after the blur on purpose: its beats form at the sensor and
    // are low-frequency, so blurring them as well would erase the moiré that
    // real screen photos show even when soft.
    let (ow, oh) = (out_w as f32, out_h as f32);
    let diag = ow.hypot(oh);
    // 2×2 sensor sub-samples: integrating the grid over a camera pixel is
    // what turns it into moiré rather than noise.
    const SUB: [(f64, f64); 4] = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)];
    let mut photo = render(out_w, out_h, |x, y| {
        let mut grid = [0.0f32; 3];
        for (ox, oy) in SUB {
            let (u, v) = inverse.map(x as f64 + ox, y as f64 + oy);
            let row = 1.0 + 0.6 * triangle(v * pitch);
            for (c, g) in grid.iter_mut().enumerate() {
                // R, G, B stripes side by side within each display pixel.
                *g += (1.0 + triangle(u * pitch - c as f64 / 3.0)) * row;
            }
        }
        let (fx, fy) = ((x as f32 + 0.5) / ow, (y as f32 + 0.5) / oh);
        let (rx, ry) = (fx - 0.5, fy - 0.5);
        let light = (1.0 + gx * rx + gy * ry - vignette * 2.0 * (rx * rx + ry * ry)).max(0.0);
        let (dx, dy) = ((fx - glare_at.0) * ow / diag, (fy - glare_at.1) * oh / diag);
        let glare =
            glare_level * (-(dx * dx + dy * dy) / (2.0 * glare_radius * glare_radius)).exp();
        let i = (y * out_w + x) * 3;
        let mut out = [0.0f32; 3];
        for (c, o) in out.iter_mut().enumerate() {
            let pattern = (1.0 - moire) + moire * grid[c] / 4.0;
            *o = shown.data[i + c] * pattern * light + glare;
        }
        out
    });

    // Shot-like sensor noise, stronger in brighter areas.
    let noise = 1.5 + 4.5 * s;
    add_noise(&mut photo, &mut rng, |v| {
        noise * (0.4 + 0.6 * (v.max(0.0) / 255.0).sqrt())
    });
    let mut out = photo.to_rgb();

    // Camera processing: white balance off by a few percent, tone curve.
    let gains = [0, 1, 2].map(|_| 1.0 + signed_unit(&mut rng) * (0.02 + 0.06 * s));
    let curve = 1.0 + signed_unit(&mut rng) * 0.2 * s;
    let luts: Vec<[u8; 256]> = gains
        .iter()
        .map(|&gain| {
            let mut lut = [0u8; 256];
            for (i, v) in lut.iter_mut().enumerate() {
                let x = (i as f32 * gain / 255.0).clamp(0.0, 1.0);
                *v = (255.0 * x.powf(curve)).round() as u8;
            }
            lut
        })
        .collect();
    for px in out.pixels_mut() {
        for (c, v) in px.0.iter_mut().enumerate() {
            *v = luts[c][usize::from(*v)];
        }
    }
    jpeg_roundtrip(&out, (85.0 - 10.0 * s).round() as u8)
}

/// One halftone screen: its direction in cell units per source pixel.
#[derive(Clone, Copy)]
struct Screen {
    cos: f64,
    sin: f64,
}

/// Whether a clustered-dot screen puts ink at cell position `(a, b)` for
/// `coverage` in 0–1: round dots growing from cell centres up to 50 %,
/// then round holes shrinking at the corners, so the inked fraction of a
/// cell equals `coverage`.
fn inked(coverage: f32, a: f64, b: f64) -> bool {
    let fa = (frac(a) - 0.5) as f32;
    let fb = (frac(b) - 0.5) as f32;
    if coverage <= 0.5 {
        fa * fa + fb * fb < coverage / std::f32::consts::PI
    } else {
        let (ca, cb) = (0.5 - fa.abs(), 0.5 - fb.abs());
        ca * ca + cb * cb >= (1.0 - coverage) / std::f32::consts::PI
    }
}

fn print_scan(img: &RgbImage, s: f32, seed: u64) -> RgbImage {
    let mut rng = rng_for(seed);
    let (w, h) = (f64::from(img.width()), f64::from(img.height()));
    let s64 = f64::from(s);

    // The page lies skewed on the glass; the scan's resolution differs from
    // the print's by up to ±6 %.
    let skew = f64::from(signed_unit(&mut rng)) * (0.3 + 1.2 * s64);
    let scale = 1.0 + 0.06 * f64::from(signed_unit(&mut rng));
    let margin = 0.02 * w.max(h) * scale + 2.0;
    let radians = skew.to_radians();
    let (sin, cos) = (radians.sin().abs(), radians.cos().abs());
    let (out_w, out_h) = cap_dims(
        ((w * cos + h * sin) * scale + 2.0 * margin).ceil(),
        ((w * sin + h * cos) * scale + 2.0 * margin).ceil(),
        (w * h) as usize,
    );
    let fit = (out_w as f64 / ((w * cos + h * sin) * scale + 2.0 * margin)).min(1.0);
    let inverse =
        Homography::rotation_inverse(radians, scale * fit, (w, h), (out_w as f64, out_h as f64));

    // Halftone: cell period in image pixels (a 2000 px drawing on A4 at
    // 150 lpi has cells of about 1.6 px), classic angles C 15°, M 75°, Y 0°,
    // K 45°; dot gain adds up to `gain` coverage at 50 %.
    let period = 1.5 + 1.5 * s64;
    let screens = [15.0f64, 75.0, 0.0, 45.0].map(|deg| {
        let (sin, cos) = deg.to_radians().sin_cos();
        Screen {
            cos: cos / period,
            sin: sin / period,
        }
    });
    let gain = 0.06 + 0.12 * s;
    // Transmittance of each ink per RGB channel: real inks are impure.
    const INKS: [[f32; 3]; 4] = [
        [0.12, 0.78, 0.95],
        [0.88, 0.16, 0.62],
        [0.96, 0.90, 0.12],
        [0.10, 0.10, 0.11],
    ];
    let paper = [
        246.0 - 6.0 * unit(&mut rng),
        243.0 - 6.0 * unit(&mut rng),
        234.0 - 10.0 * unit(&mut rng),
    ];

    // 2×2 scan sub-samples per pixel (3×3 cost 1.4 s on 2 MP and looked the
    // same after the optical blur); the map is affine, so their offsets in
    // image coordinates are the same everywhere.
    let (u0, v0) = inverse.map(0.0, 0.0);
    // Stored per ink as offsets in screen (cell) coordinates.
    let offsets: Vec<[(f64, f64); 4]> = [0.25, 0.75]
        .iter()
        .flat_map(|&oy| [0.25, 0.75].map(|ox| (ox, oy)))
        .map(|(ox, oy)| {
            let (u, v) = inverse.map(ox - 0.5, oy - 0.5);
            let (du, dv) = (u - u0, v - v0);
            screens.map(|sc| (du * sc.cos + dv * sc.sin, dv * sc.cos - du * sc.sin))
        })
        .collect();
    let src = Canvas::from_rgb(img);
    let scan = render(out_w, out_h, |x, y| {
        let (u, v) = inverse.map(x as f64 + 0.5, y as f64 + 0.5);
        // Outside the image is the page's white margin.
        let [r, g, b] = src
            .sample(u as f32, v as f32, [255.0; 3])
            .map(|c| 1.0 - (c / 255.0).clamp(0.0, 1.0));
        let k = r.min(g).min(b);
        let cmy = [r, g, b].map(|c| if k < 1.0 { (c - k) / (1.0 - k) } else { 0.0 });
        let coverage = [cmy[0], cmy[1], cmy[2], k].map(|c| c + gain * 4.0 * c * (1.0 - c));
        let centre = screens.map(|sc| (u * sc.cos + v * sc.sin, v * sc.cos - u * sc.sin));
        let mut sum = [0.0f32; 3];
        for deltas in &offsets {
            let mut light = paper;
            for (((&(a, b), &(da, db)), &cov), ink) in
                centre.iter().zip(deltas).zip(&coverage).zip(&INKS)
            {
                if inked(cov, a + da, b + db) {
                    for (l, t) in light.iter_mut().zip(ink) {
                        *l *= t;
                    }
                }
            }
            for (acc, l) in sum.iter_mut().zip(light) {
                *acc += l;
            }
        }
        sum.map(|v| v / offsets.len() as f32)
    });

    // Ink spread and scanner optics, then paper mottling (a coarse random
    // field, smoothly enlarged) and sensor noise.
    let mut scan = gaussian_blur(&scan, 0.5 + 0.6 * s);
    let cell = 24;
    let (mw, mh) = (out_w / cell + 2, out_h / cell + 2);
    let mottle_sigma = 1.5 + 3.0 * s;
    let mut mottle = Canvas {
        width: mw,
        height: mh,
        data: vec![0.0; mw * mh * 3],
    };
    for px in mottle.data.chunks_exact_mut(3) {
        px.fill(mottle_sigma * gaussian(&mut rng));
    }
    let mottle = resize(&mottle, out_w, out_h);
    for (v, m) in scan.data.iter_mut().zip(&mottle.data) {
        *v += m;
    }
    let noise = 1.0 + 2.5 * s;
    add_noise(&mut scan, &mut rng, |_| noise);
    jpeg_roundtrip(&scan.to_rgb(), (88.0 - 16.0 * s).round() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth, colourful test picture with no two pixels alike along x or y.
    fn smooth(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
            Rgb([
                (40.0 + 170.0 * fx) as u8,
                (60.0 + 150.0 * fy) as u8,
                (128.0 + 80.0 * (6.0 * fx + 4.0 * fy).sin()) as u8,
            ])
        })
    }

    /// A drawing-like picture: white paper with dark lines.
    fn drawing(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            if x % 23 == 3 || y % 17 == 5 || (x + 2 * y) % 41 == 0 {
                Rgb([30, 30, 40])
            } else {
                Rgb([250, 250, 250])
            }
        })
    }

    fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
        assert_eq!(a.dimensions(), b.dimensions());
        let mse = a
            .iter()
            .zip(b.iter())
            .map(|(&p, &q)| (f64::from(p) - f64::from(q)).powi(2))
            .sum::<f64>()
            / a.as_raw().len() as f64;
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }

    fn mean(img: &RgbImage) -> f64 {
        img.iter().map(|&v| f64::from(v)).sum::<f64>() / img.as_raw().len() as f64
    }

    #[test]
    fn scale_half_halves_dimensions() {
        let out = apply(&Attack::Scale { factor: 0.5 }, &smooth(200, 120), 0);
        assert_eq!(out.dimensions(), (100, 60));
    }

    #[test]
    fn scale_down_and_up_keeps_smooth_image_close() {
        let img = smooth(240, 160);
        let down = apply(&Attack::Scale { factor: 0.5 }, &img, 0);
        let back = apply(&Attack::Scale { factor: 2.0 }, &down, 0);
        assert_eq!(back.dimensions(), img.dimensions());
        assert!(psnr(&img, &back) > 35.0, "{}", psnr(&img, &back));
    }

    #[test]
    fn scale_down_averages_the_covered_area() {
        let checker = RgbImage::from_fn(64, 64, |x, y| {
            if (x + y) % 2 == 0 {
                Rgb([0; 3])
            } else {
                Rgb([200; 3])
            }
        });
        let out = apply(&Attack::Scale { factor: 0.5 }, &checker, 0);
        assert!(out.iter().all(|&v| v == 100));
    }

    #[test]
    fn scale_one_is_identity() {
        let img = smooth(50, 40);
        assert_eq!(apply(&Attack::Scale { factor: 1.0 }, &img, 0), img);
    }

    #[test]
    fn aspect_changes_each_axis_independently() {
        let out = apply(&Attack::Aspect { sx: 1.0, sy: 0.8 }, &smooth(100, 50), 0);
        assert_eq!(out.dimensions(), (100, 40));
        let out = apply(&Attack::Aspect { sx: 0.8, sy: 1.0 }, &smooth(100, 50), 0);
        assert_eq!(out.dimensions(), (80, 50));
    }

    #[test]
    fn rotate_90_swaps_dims_and_moves_top_left_to_top_right() {
        let mut img = smooth(40, 30);
        img.put_pixel(0, 0, Rgb([255, 0, 0]));
        let out = apply(
            &Attack::Rotate {
                degrees: 90.0,
                fill: Fill::White,
            },
            &img,
            0,
        );
        assert_eq!(out.dimensions(), (30, 40));
        assert_eq!(out.get_pixel(29, 0), &Rgb([255, 0, 0]));
        let back = apply(
            &Attack::Rotate {
                degrees: -90.0,
                fill: Fill::White,
            },
            &out,
            0,
        );
        assert_eq!(back, img);
    }

    #[test]
    fn rotate_any_angle_turns_the_same_way_as_quarter_turns() {
        // A dark blob near the top-left corner should end near the top-right
        // after 89.5° as after the lossless 90°.
        let mut img = RgbImage::from_pixel(80, 50, Rgb([255; 3]));
        fill_rect(&mut img, 4, 4, 6, 6, Rgb([0; 3]));
        let exact = apply(
            &Attack::Rotate {
                degrees: 90.0,
                fill: Fill::White,
            },
            &img,
            0,
        );
        let near = apply(
            &Attack::Rotate {
                degrees: 89.5,
                fill: Fill::White,
            },
            &img,
            0,
        );
        let darkest = |im: &RgbImage| {
            let (mut sx, mut sy, mut n) = (0.0, 0.0, 0.0);
            for (x, y, p) in im.enumerate_pixels() {
                if p.0[0] < 100 {
                    sx += f64::from(x);
                    sy += f64::from(y);
                    n += 1.0;
                }
            }
            (sx / n, sy / n)
        };
        let (a, b) = (darkest(&exact), darkest(&near));
        assert!(
            (a.0 - b.0).abs() < 2.0 && (a.1 - b.1).abs() < 2.0,
            "{a:?} vs {b:?}"
        );
    }

    #[test]
    fn rotate_45_expands_canvas_and_fills_corners() {
        let img = RgbImage::from_pixel(100, 100, Rgb([10, 20, 30]));
        let out = apply(
            &Attack::Rotate {
                degrees: 45.0,
                fill: Fill::White,
            },
            &img,
            0,
        );
        assert_eq!(out.dimensions(), (142, 142));
        assert_eq!(out.get_pixel(0, 0), &Rgb([255; 3]));
        assert_eq!(out.get_pixel(71, 71), &Rgb([10, 20, 30]));
        let black = apply(
            &Attack::Rotate {
                degrees: 45.0,
                fill: Fill::Black,
            },
            &img,
            0,
        );
        assert_eq!(black.get_pixel(141, 141), &Rgb([0; 3]));
    }

    #[test]
    fn rotate_random_is_seeded() {
        let img = smooth(60, 40);
        let attack = Attack::RotateRandom {
            min_degrees: 5.0,
            max_degrees: 40.0,
            fill: Fill::White,
        };
        assert_eq!(apply(&attack, &img, 3), apply(&attack, &img, 3));
        assert_ne!(apply(&attack, &img, 3), apply(&attack, &img, 4));
    }

    #[test]
    fn mirror_twice_is_identity() {
        let img = smooth(37, 23);
        let once = apply(&Attack::MirrorH, &img, 0);
        assert_ne!(once, img);
        assert_eq!(once.get_pixel(36, 5), img.get_pixel(0, 5));
        assert_eq!(apply(&Attack::MirrorH, &once, 0), img);
        let twice = apply(
            &Attack::Chain(vec![Attack::MirrorV, Attack::MirrorV]),
            &img,
            0,
        );
        assert_eq!(twice, img);
    }

    #[test]
    fn jpeg_changes_pixels_but_keeps_plausible_psnr() {
        let img = smooth(256, 192);
        let q75 = apply(&Attack::Jpeg { quality: 75 }, &img, 0);
        let q30 = apply(&Attack::Jpeg { quality: 30 }, &img, 0);
        assert_eq!(q75.dimensions(), img.dimensions());
        assert_ne!(q75, img);
        let (p75, p30) = (psnr(&img, &q75), psnr(&img, &q30));
        assert!(p75 > 30.0 && p75 < 60.0, "q75: {p75} dB");
        assert!(p30 > 25.0 && p30 < p75, "q30: {p30} dB, q75: {p75} dB");
    }

    #[test]
    fn jpeg_subsamples_chroma_even_at_quality_100() {
        // One-pixel red/green stripes survive 4:4:4 at q100 but are smeared
        // into olive by 4:2:0.
        let img = RgbImage::from_fn(64, 64, |x, _| {
            if x % 2 == 0 {
                Rgb([220, 30, 30])
            } else {
                Rgb([30, 160, 30])
            }
        });
        let out = apply(&Attack::Jpeg { quality: 100 }, &img, 0);
        assert!(psnr(&img, &out) < 25.0, "{}", psnr(&img, &out));
    }

    #[test]
    fn crop_quarter_keeps_a_quarter_at_the_requested_place() {
        let img = RgbImage::from_fn(200, 100, |x, y| Rgb([x as u8, y as u8, 0]));
        let attack = Attack::Crop {
            keep_area: 0.25,
            cx: 0.7,
            cy: 0.65,
        };
        let out = apply(&attack, &img, 0);
        assert_eq!(out.dimensions(), (100, 50));
        let (x0, y0) = (out.get_pixel(0, 0).0[0], out.get_pixel(0, 0).0[1]);
        assert_eq!((x0, y0), (90, 40));
        // Exact copy of the region.
        assert_eq!(out.get_pixel(10, 20), img.get_pixel(100, 60));
        // A centre near the edge is moved inward.
        let corner = Attack::Crop {
            keep_area: 0.25,
            cx: 1.0,
            cy: 0.0,
        };
        let out = apply(&corner, &img, 0);
        assert_eq!(out.get_pixel(0, 0), &Rgb([100, 0, 0]));
    }

    #[test]
    fn perspective_is_seeded_and_zero_jitter_is_identity() {
        let img = smooth(120, 90);
        let p = Attack::Perspective { jitter: 0.1 };
        let a = apply(&p, &img, 7);
        assert_eq!(a, apply(&p, &img, 7));
        assert_ne!(a, apply(&p, &img, 8));
        let (w, h) = a.dimensions();
        assert!(
            (90..=150).contains(&w) && (65..=115).contains(&h),
            "{w}x{h}"
        );
        assert_eq!(apply(&Attack::Perspective { jitter: 0.0 }, &img, 7), img);
    }

    #[test]
    fn homography_maps_rect_corners_onto_quad() {
        let quad = [(3.0, 1.0), (90.0, 7.0), (85.0, 60.0), (-2.0, 50.0)];
        let m = Homography::rect_to_quad(80.0, 50.0, quad).unwrap();
        let inv = m.inverse().unwrap();
        for (&(x, y), q) in [(0.0, 0.0), (80.0, 0.0), (80.0, 50.0), (0.0, 50.0)]
            .iter()
            .zip(quad)
        {
            let (mx, my) = m.map(x, y);
            assert!((mx - q.0).abs() < 1e-9 && (my - q.1).abs() < 1e-9);
            let (bx, by) = inv.map(mx, my);
            assert!((bx - x).abs() < 1e-9 && (by - y).abs() < 1e-9);
        }
    }

    #[test]
    fn blur_keeps_mean_and_smooths_edges() {
        let img = drawing(80, 60);
        let out = apply(&Attack::Blur { sigma: 1.0 }, &img, 0);
        assert!((mean(&img) - mean(&out)).abs() < 1.0);
        assert!(out.get_pixel(3, 30).0[0] > 60, "line should be lighter");
        assert!(
            out.get_pixel(4, 30).0[0] < 240,
            "next to a line should be darker"
        );
    }

    #[test]
    fn median_removes_isolated_specks() {
        let mut img = RgbImage::from_pixel(30, 30, Rgb([200; 3]));
        img.put_pixel(10, 10, Rgb([0; 3]));
        let out = apply(&Attack::Median { radius: 1 }, &img, 0);
        assert_eq!(out.get_pixel(10, 10), &Rgb([200; 3]));
    }

    #[test]
    fn small_median_matches_imageproc_away_from_edges() {
        let img = apply(&Attack::Noise { sigma: 40.0 }, &smooth(40, 30), 3);
        for r in 1..=2u32 {
            let ours = median_small(&img, r);
            let reference = imageproc::filter::median_filter(&img, r, r);
            for y in r..30 - r {
                for x in r..40 - r {
                    assert_eq!(
                        ours.get_pixel(x, y),
                        reference.get_pixel(x, y),
                        "r={r} ({x},{y})"
                    );
                }
            }
        }
    }

    #[test]
    fn noise_has_the_requested_spread() {
        let img = RgbImage::from_pixel(200, 200, Rgb([128; 3]));
        let out = apply(&Attack::Noise { sigma: 5.0 }, &img, 11);
        let var = out
            .iter()
            .map(|&v| (f64::from(v) - 128.0).powi(2))
            .sum::<f64>()
            / out.as_raw().len() as f64;
        assert!((var.sqrt() - 5.0).abs() < 0.3, "σ = {}", var.sqrt());
        assert!((mean(&out) - 128.0).abs() < 0.1);
    }

    #[test]
    fn tone_attacks_follow_their_formulas() {
        let img = RgbImage::from_fn(16, 16, |x, y| Rgb([(x * 16 + y) as u8, 100, 255]));
        let bright = apply(&Attack::Brightness { delta: 30.0 }, &img, 0);
        assert_eq!(&bright.get_pixel(0, 0).0[1..], &[130, 255]);
        let flat = apply(&Attack::Contrast { factor: 0.7 }, &img, 0);
        assert_eq!(flat.get_pixel(0, 0).0[2], 217);
        let gamma = apply(&Attack::Gamma { gamma: 1.5 }, &img, 0);
        assert!(
            gamma.get_pixel(0, 0).0[1] > 100,
            "gamma > 1 brightens midtones"
        );
        assert_eq!(apply(&Attack::Gamma { gamma: 1.0 }, &img, 0), img);
        let grey = apply(&Attack::Grayscale, &img, 0);
        assert!(grey.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
        assert_eq!(grey.get_pixel(0, 0).0[0], 88); // 0.587·100 + 0.114·255
    }

    #[test]
    fn stamp_covers_about_the_requested_area() {
        let img = RgbImage::from_pixel(300, 200, Rgb([128, 128, 128]));
        for seed in 0..5 {
            let out = apply(&Attack::Stamp { area: 0.1 }, &img, seed);
            let changed = out
                .pixels()
                .zip(img.pixels())
                .filter(|(a, b)| a != b)
                .count();
            let fraction = changed as f64 / (300.0 * 200.0);
            assert!(
                (0.08..=0.103).contains(&fraction),
                "seed {seed}: {fraction}"
            );
        }
    }

    #[test]
    fn screenshot_shows_the_image_on_a_desktop() {
        let img = RgbImage::from_pixel(400, 300, Rgb([255, 0, 255]));
        let out = apply(&Attack::Screenshot, &img, 5);
        assert_eq!(out.dimensions(), DESKTOP);
        let magenta = out.pixels().filter(|p| p.0 == [255, 0, 255]).count() as f64;
        let fraction = magenta / (1920.0 * 1080.0);
        // 60–80 % of the usable height, squared, times the aspect share.
        assert!((0.2..=0.5).contains(&fraction), "{fraction}");
    }

    #[test]
    fn screen_camera_keeps_content_but_changes_everything() {
        let img = smooth(300, 200);
        let out = apply(&Attack::ScreenCamera { severity: 0.5 }, &img, 2);
        let (w, h) = out.dimensions();
        assert!(
            (200..=340).contains(&w) && (130..=230).contains(&h),
            "{w}x{h}"
        );
        // The centre still shows the picture's colours, roughly.
        let c = out.get_pixel(w / 2, h / 2).0;
        let s = img.get_pixel(150, 100).0;
        for k in 0..3 {
            assert!(
                (i32::from(c[k]) - i32::from(s[k])).abs() < 70,
                "{c:?} vs {s:?}"
            );
        }
    }

    #[test]
    fn print_scan_halftones_onto_tinted_paper() {
        let img = drawing(300, 200);
        let out = apply(&Attack::PrintScan { severity: 0.5 }, &img, 9);
        let (w, h) = out.dimensions();
        assert!(
            (290..=350).contains(&w) && (190..=240).contains(&h),
            "{w}x{h}"
        );
        // White margin is paper: lighter than mid-grey, darker than pure white.
        let corner = out.get_pixel(1, 1).0;
        assert!(
            corner.iter().all(|&v| (200..=252).contains(&v)),
            "{corner:?}"
        );
        // A flat mid-grey prints as dots: the scan is far from flat.
        let grey = RgbImage::from_pixel(120, 120, Rgb([128; 3]));
        let scan = apply(&Attack::PrintScan { severity: 0.0 }, &grey, 1);
        let centre = image::imageops::crop_imm(&scan, 30, 30, 60, 60).to_image();
        let m = mean(&centre);
        let sd = (centre
            .iter()
            .map(|&v| (f64::from(v) - m).powi(2))
            .sum::<f64>()
            / centre.as_raw().len() as f64)
            .sqrt();
        assert!(sd > 4.0, "σ = {sd}");
    }

    #[test]
    fn collusion_average_is_the_rounded_mean() {
        let a = RgbImage::from_pixel(20, 20, Rgb([0, 100, 255]));
        let b = RgbImage::from_pixel(20, 20, Rgb([1, 50, 255]));
        assert_eq!(
            collusion_average(&a, &b).get_pixel(5, 5),
            &Rgb([1, 75, 255])
        );
        let small = RgbImage::from_pixel(10, 10, Rgb([1, 50, 255]));
        assert_eq!(collusion_average(&a, &small).dimensions(), (20, 20));
    }

    #[test]
    fn same_seed_gives_same_bytes_whatever_the_thread_count() {
        let img = smooth(64, 48);
        let run = || -> Vec<RgbImage> {
            standard_suite()
                .iter()
                .map(|(_, a)| apply(a, &img, 42))
                .collect()
        };
        let single = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(run);
        let multi = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap()
            .install(run);
        assert_eq!(single, multi);
    }

    #[test]
    fn chain_steps_get_distinct_seeds() {
        let img = smooth(64, 48);
        let noise = Attack::Noise { sigma: 10.0 };
        let out = apply(
            &Attack::Chain(vec![noise.clone(), Attack::Identity]),
            &img,
            1,
        );
        let other = apply(&Attack::Chain(vec![Attack::Identity, noise]), &img, 1);
        assert_ne!(out, other);
    }

    #[test]
    fn standard_suite_names_are_unique_and_cover_the_brief() {
        let suite = standard_suite();
        let mut names: Vec<_> = suite.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), suite.len());
        assert!(suite.len() >= 37);
    }

    #[test]
    fn nothing_panics_on_tiny_images() {
        for (w, h) in [(16, 16), (1, 1), (2, 17), (23, 3)] {
            let img = smooth(w, h);
            for (name, attack) in standard_suite() {
                let out = apply(&attack, &img, 1);
                assert!(out.width() > 0 && out.height() > 0, "{name} on {w}x{h}");
            }
        }
    }

    #[test]
    fn nothing_panics_on_extreme_parameters() {
        for (w, h) in [(16, 16), (1, 1)] {
            extreme_parameters_on(&smooth(w, h));
        }
        let empty = RgbImage::new(0, 5);
        assert_eq!(
            apply(&Attack::ScreenCamera { severity: 1.0 }, &empty, 0),
            empty
        );
    }

    fn extreme_parameters_on(img: &RgbImage) {
        let values = [
            f32::NAN,
            f32::NEG_INFINITY,
            -1e9,
            -1.0,
            0.0,
            1e-7,
            0.5,
            1.0,
            3.0,
            1e9,
            f32::INFINITY,
        ];
        for &v in &values {
            let attacks = [
                Attack::Jpeg { quality: 0 },
                Attack::Jpeg { quality: 255 },
                Attack::Scale { factor: v },
                Attack::Aspect { sx: v, sy: 1.0 - v },
                Attack::Crop {
                    keep_area: v,
                    cx: v,
                    cy: -v,
                },
                Attack::Rotate {
                    degrees: v,
                    fill: Fill::Black,
                },
                Attack::RotateRandom {
                    min_degrees: v,
                    max_degrees: -v,
                    fill: Fill::White,
                },
                Attack::Perspective { jitter: v },
                Attack::Blur { sigma: v },
                Attack::Median { radius: u32::MAX },
                Attack::Noise { sigma: v },
                Attack::Brightness { delta: v },
                Attack::Contrast { factor: v },
                Attack::Gamma { gamma: v },
                Attack::Stamp { area: v },
                Attack::ScreenCamera { severity: v },
                Attack::PrintScan { severity: v },
            ];
            for attack in &attacks {
                let out = apply(attack, img, 3);
                assert!(out.width() > 0 && out.height() > 0, "{attack:?}");
            }
        }
    }

    /// Run with `cargo test --release attack -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing, not behaviour"]
    fn each_attack_takes_well_under_a_second_on_2_mp() {
        let img = drawing(1732, 1155);
        for (name, attack) in standard_suite() {
            let start = std::time::Instant::now();
            let out = apply(&attack, &img, 1);
            let ms = start.elapsed().as_secs_f64() * 1e3;
            eprintln!("{name:32} {ms:8.1} ms  -> {}x{}", out.width(), out.height());
        }
    }
}
