//! One table of awkward and hostile input files, each with the exact outcome
//! it must get: a [`leakmark::Error`] variant, or correct handling (loaded
//! upright, at full depth, alpha kept, marked and found again).
//!
//! Every fixture is made in code, in a temporary folder: encoded with
//! `image` or `jpeg-encoder`, cut short, corrupted, or written byte by byte.

mod common;

use std::io::Cursor;
use std::path::Path;

use image::{
    DynamicImage, GenericImageView, GrayAlphaImage, GrayImage, ImageBuffer, ImageFormat, Luma,
    LumaA, Rgb, RgbImage, Rgba, RgbaImage,
};
use leakmark::detect::{detect, DetectOptions};
use leakmark::imageio::{self, LoadLimits, Loaded};
use leakmark::{embed, Error};

/// The serial every "marks" case embeds and must read back.
const SERIAL: u32 = 0x00C0_FFEE;

/// What a case must get.
enum Want {
    /// `imageio::load` fails with this variant (named for the report).
    Error(&'static str, fn(&Error) -> bool),
    /// `imageio::load` succeeds and the check holds.
    Loads(fn(&Loaded)),
    /// Loads, is marked, saved under `out` (next to the input), loaded again
    /// and blind detection reads [`SERIAL`]; then the check holds on
    /// (input, output).
    Marks(&'static str, fn(&Loaded, &Loaded)),
    /// Loads, but is too small to carry a mark: embedding gives
    /// `Error::TooSmall` and detection says "too small", not "no mark".
    TooSmallToMark,
}

struct Case {
    name: &'static str,
    /// The file name written (its extension may lie).
    file: &'static str,
    bytes: fn() -> Vec<u8>,
    limits: LoadLimits,
    want: Want,
}

macro_rules! err {
    ($variant:ident) => {
        Want::Error(stringify!($variant), |e| {
            matches!(e, Error::$variant { .. })
        })
    };
}

fn case(name: &'static str, file: &'static str, bytes: fn() -> Vec<u8>, want: Want) -> Case {
    Case {
        name,
        file,
        bytes,
        limits: LoadLimits::default(),
        want,
    }
}

// ---- fixture makers ----

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode fixture");
    out.into_inner()
}

/// A textured cover big enough to carry a mark (short side ≥ 384 px).
fn cover() -> RgbImage {
    common::photo(480, 400, 11)
}

fn small_rgb() -> DynamicImage {
    DynamicImage::ImageRgb8(common::photo(64, 48, 3))
}

/// The cover at 16 bits: the 8-bit value in the high byte and a
/// position-dependent low byte, so that truncation to 8 bits would show.
fn cover16() -> ImageBuffer<Rgb<u16>, Vec<u16>> {
    let c = cover();
    ImageBuffer::from_fn(c.width(), c.height(), |x, y| {
        let p = c.get_pixel(x, y).0;
        let low = ((x * 7 + y * 13) % 200) as u16;
        Rgb(p.map(|v| (u16::from(v) << 8) | low))
    })
}

fn grey_cover() -> GrayImage {
    DynamicImage::ImageRgb8(cover()).to_luma8()
}

/// RGBA cover: opaque, a fully transparent band and a half-transparent band.
fn rgba_cover() -> RgbaImage {
    let c = cover();
    RgbaImage::from_fn(c.width(), c.height(), |x, y| {
        let [r, g, b] = c.get_pixel(x, y).0;
        let a = if (100..160).contains(&y) {
            0
        } else if (200..240).contains(&y) {
            128
        } else {
            255
        };
        Rgba([r, g, b, a])
    })
}

fn png(img: &DynamicImage) -> Vec<u8> {
    encode(img, ImageFormat::Png)
}

fn jpeg_of(img: &DynamicImage) -> Vec<u8> {
    encode(img, ImageFormat::Jpeg)
}

fn progressive_jpeg(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, 85);
    enc.set_progressive(true);
    enc.encode(
        img.as_raw(),
        img.width() as u16,
        img.height() as u16,
        jpeg_encoder::ColorType::Rgb,
    )
    .expect("encode progressive JPEG");
    out
}

fn cut(mut bytes: Vec<u8>, keep: usize) -> Vec<u8> {
    bytes.truncate(keep);
    bytes
}

fn half(bytes: Vec<u8>) -> Vec<u8> {
    let n = bytes.len() / 2;
    cut(bytes, n)
}

/// Overwrites `len` bytes from `at` with a fixed junk pattern.
fn smash(mut bytes: Vec<u8>, at: usize, len: usize) -> Vec<u8> {
    for (i, b) in bytes.iter_mut().skip(at).take(len).enumerate() {
        *b = [0xDE, 0xAD, 0xBE, 0xEF][i % 4];
    }
    bytes
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFF_u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                0xEDB8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend(kind);
    out.extend(data);
    let crc = crc32(&out[start..]);
    out.extend(crc.to_be_bytes());
}

/// Rewrites a PNG's IHDR (width, height), fixing the CRC: a small file
/// claiming a huge image.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = png(&small_rgb());
    // Signature (8), length (4), "IHDR" (4), then width and height.
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// Inserts chunks right after IHDR.
fn png_with_chunks(bytes: Vec<u8>, chunks: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
    let mut out = bytes[..33].to_vec();
    for (kind, data) in chunks {
        png_chunk(&mut out, kind, data);
    }
    out.extend(&bytes[33..]);
    out
}

/// An EXIF block (TIFF, big-endian) holding only an orientation tag.
fn exif_orientation(orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2A\0\0\0\x08".to_vec();
    tiff.extend(1_u16.to_be_bytes());
    tiff.extend(0x0112_u16.to_be_bytes());
    tiff.extend(3_u16.to_be_bytes());
    tiff.extend(1_u32.to_be_bytes());
    tiff.extend(orientation.to_be_bytes());
    tiff.extend([0, 0]);
    tiff.extend(0_u32.to_be_bytes());
    tiff
}

/// A JPEG whose APP1 says how to turn it upright.
fn jpeg_with_orientation(img: &DynamicImage, orientation: u16) -> Vec<u8> {
    let jpeg = jpeg_of(img);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend(exif_orientation(orientation));
    let mut out = jpeg[..2].to_vec();
    out.extend([0xFF, 0xE1]);
    out.extend((app1.len() as u16 + 2).to_be_bytes());
    out.extend(app1);
    out.extend(&jpeg[2..]);
    out
}

/// The cover stored sideways: rotated 90° anticlockwise, so that EXIF
/// orientation 6 ("rotate 90° clockwise to view") puts it upright.
fn sideways_cover() -> DynamicImage {
    DynamicImage::ImageRgb8(image::imageops::rotate270(&cover()))
}

/// Opaque bytes carried as an ICC profile (not parsed by any encoder).
fn icc() -> Vec<u8> {
    (0..560_u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn with_icc(format: ImageFormat) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let ext = if format == ImageFormat::Png {
        "png"
    } else {
        "jpg"
    };
    let path = dir.path().join(format!("icc.{ext}"));
    imageio::save(&DynamicImage::ImageRgb8(cover()), &path, None, Some(&icc()))
        .expect("save fixture");
    std::fs::read(path).expect("read fixture")
}

fn gif_frames(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut out);
        for i in 0..n {
            let img = RgbaImage::from_fn(32, 24, |x, _| {
                Rgba([(x * 8) as u8, (i * 60) as u8, 90, 255])
            });
            enc.encode_frame(image::Frame::new(img))
                .expect("encode GIF frame");
        }
    }
    out
}

/// A two-page TIFF: a little-endian file with two IFDs, each one page of
/// 8×4 grey pixels, written by hand (no TIFF encoder writes pages).
fn tiff_two_pages() -> Vec<u8> {
    let (w, h) = (8_u32, 4_u32);
    let pixels: Vec<u8> = (0..w * h).map(|i| (i * 7) as u8).collect();
    let mut out = b"II*\0".to_vec();
    out.extend(8_u32.to_le_bytes());
    // Each IFD: count, 8 entries of 12 bytes, next offset; then the strip.
    let ifd_len = 2 + 8 * 12 + 4;
    let page_len = ifd_len + pixels.len();
    for page in 0..2_u32 {
        let ifd_at = 8 + page * page_len as u32;
        let strip_at = ifd_at + ifd_len as u32;
        let next = if page == 0 {
            ifd_at + page_len as u32
        } else {
            0
        };
        let entry = |out: &mut Vec<u8>, tag: u16, kind: u16, value: u32| {
            out.extend(tag.to_le_bytes());
            out.extend(kind.to_le_bytes());
            out.extend(1_u32.to_le_bytes());
            out.extend(value.to_le_bytes());
        };
        out.extend(8_u16.to_le_bytes());
        entry(&mut out, 256, 4, w); // ImageWidth
        entry(&mut out, 257, 4, h); // ImageLength
        entry(&mut out, 258, 3, 8); // BitsPerSample
        entry(&mut out, 259, 3, 1); // Compression: none
        entry(&mut out, 262, 3, 1); // Photometric: black is zero
        entry(&mut out, 273, 4, strip_at); // StripOffsets
        entry(&mut out, 278, 4, h); // RowsPerStrip
        entry(&mut out, 279, 4, pixels.len() as u32); // StripByteCounts
        out.extend(next.to_le_bytes());
        out.extend(&pixels);
    }
    out
}

/// An animated PNG: acTL says 3 frames (only the default image is decoded).
fn apng() -> Vec<u8> {
    let mut actl = 3_u32.to_be_bytes().to_vec();
    actl.extend(0_u32.to_be_bytes());
    png_with_chunks(png(&small_rgb()), &[(b"acTL", actl)])
}

fn cmyk_jpeg() -> Vec<u8> {
    let c = cover();
    // A plain RGB → CMYK conversion (no profile), enough to carry the content.
    let cmyk: Vec<u8> = c
        .pixels()
        .flat_map(|p| {
            let [r, g, b] = p.0.map(|v| 255 - v);
            let k = r.min(g).min(b);
            [r - k, g - k, b - k, k]
        })
        .collect();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 92)
        .encode(
            &cmyk,
            c.width() as u16,
            c.height() as u16,
            jpeg_encoder::ColorType::Cmyk,
        )
        .expect("encode CMYK JPEG");
    out
}

fn palette_png() -> Vec<u8> {
    // Palette PNGs are drawings and screenshots: a line drawing quantised
    // to a 6×6×6 colour cube, written by hand.
    let c = common::drawing(480, 400, 4);
    let mut palette = Vec::new();
    for r in 0..6_u8 {
        for g in 0..6_u8 {
            for b in 0..6_u8 {
                palette.extend([r * 51, g * 51, b * 51]);
            }
        }
    }
    let q = |v: u8| (u16::from(v) * 5 + 127) / 255;
    let mut scanlines = Vec::new();
    for y in 0..c.height() {
        scanlines.push(0);
        for x in 0..c.width() {
            let [r, g, b] = c.get_pixel(x, y).0;
            scanlines.push((q(r) * 36 + q(g) * 6 + q(b)) as u8);
        }
    }
    let mut ihdr = Vec::new();
    ihdr.extend(c.width().to_be_bytes());
    ihdr.extend(c.height().to_be_bytes());
    ihdr.extend([8, 3, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"PLTE", &palette);
    png_chunk(&mut out, b"IDAT", &zlib_stored(&scanlines));
    png_chunk(&mut out, b"IEND", &[]);
    out
}

fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = data.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        out.extend(len.to_le_bytes());
        out.extend((!len).to_le_bytes());
        out.extend(*block);
    }
    let (mut a, mut b) = (1_u32, 0_u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend(((b << 16) | a).to_be_bytes());
    out
}

/// A JPEG whose SOF0 claims 65000 × 65000.
fn jpeg_claiming_65000() -> Vec<u8> {
    let mut jpeg = jpeg_of(&small_rgb());
    let sof = jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("baseline JPEG has SOF0");
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]);
    jpeg
}

/// A GIF whose logical screen and frame claim 65535 × 65535.
fn gif_claiming_huge() -> Vec<u8> {
    let mut gif = gif_frames(1);
    gif[6..10].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    let desc = gif
        .iter()
        .position(|&b| b == 0x2C)
        .expect("GIF has an image descriptor");
    gif[desc + 5..desc + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    gif
}

/// A lossless WebP whose VP8L header claims 16384 × 16384.
fn webp_claiming_huge() -> Vec<u8> {
    let mut webp = encode(&small_rgb(), ImageFormat::WebP);
    // RIFF (12), "VP8L" + size (8), signature 0x2F, then 14-bit width−1 and height−1.
    assert_eq!(&webp[12..16], b"VP8L");
    let bits: u32 = 0x3FFF | (0x3FFF << 14) | (u32::from(webp[24]) & 0xF0) << 24;
    webp[21..25].copy_from_slice(&bits.to_le_bytes());
    webp
}

/// A PackBits TIFF whose header claims 60000 × 60000 in one strip.
fn tiff_claiming_huge() -> Vec<u8> {
    let mut tiff = tiff_two_pages();
    let value = |entry: usize| 8 + 2 + entry * 12 + 8;
    // Entries: 0 width, 1 length, 3 compression, 6 rows per strip.
    for entry in [0, 1, 6] {
        tiff[value(entry)..value(entry) + 4].copy_from_slice(&60_000_u32.to_le_bytes());
    }
    tiff[value(3)..value(3) + 2].copy_from_slice(&32_773_u16.to_le_bytes());
    tiff
}

/// 4000 × 4000 black pixels: a few kB of PNG, 16 MB decoded.
fn zeros_4000() -> Vec<u8> {
    png(&DynamicImage::ImageLuma8(GrayImage::new(4000, 4000)))
}

// ---- checks on handled cases ----

fn is_png(l: &Loaded) {
    assert_eq!(l.format, ImageFormat::Png);
}

fn is_jpeg(l: &Loaded) {
    assert_eq!(l.format, ImageFormat::Jpeg);
}

fn is_gif(l: &Loaded) {
    assert_eq!(l.format, ImageFormat::Gif);
}

/// For the "marks" cases: the output image, loaded back.
fn same_size(i: &Loaded, o: &Loaded) {
    assert_eq!(i.image.dimensions(), o.image.dimensions());
}

fn sixteen_bit_kept(i: &Loaded, o: &Loaded) {
    same_size(i, o);
    assert_eq!(i.image.color(), o.image.color(), "colour type changed");
    let samples = o.image.to_rgb16().into_raw();
    // Truncated to 8 bits, every sample would be a multiple of 257.
    let wide = samples.iter().filter(|&&v| v % 257 != 0).count();
    assert!(
        wide * 10 > samples.len() * 9,
        "only {wide} of {} samples use 16 bits",
        samples.len()
    );
    // The low byte of unchanged pixels survives exactly.
    let (a, b) = (i.image.to_rgb16(), o.image.to_rgb16());
    let exact = a.iter().zip(b.iter()).filter(|(x, y)| x == y).count();
    assert!(exact > 0, "no sample survived unchanged");
}

fn colour_type_kept(i: &Loaded, o: &Loaded) {
    same_size(i, o);
    assert_eq!(i.image.color(), o.image.color());
}

fn alpha_kept_and_invisible_untouched(i: &Loaded, o: &Loaded) {
    colour_type_kept(i, o);
    let (a, b) = (i.image.to_rgba8(), o.image.to_rgba8());
    let mut visible_changed = 0;
    for (p, q) in a.pixels().zip(b.pixels()) {
        assert_eq!(p.0[3], q.0[3], "alpha changed");
        if p.0[3] == 0 {
            assert_eq!(p.0, q.0, "a fully transparent pixel was marked");
        } else if p.0 != q.0 {
            visible_changed += 1;
        }
    }
    assert!(visible_changed > 1000, "visible pixels carry the mark");
}

fn grey_alpha_kept(i: &Loaded, o: &Loaded) {
    colour_type_kept(i, o);
    let (a, b) = (i.image.to_luma_alpha8(), o.image.to_luma_alpha8());
    for (p, q) in a.pixels().zip(b.pixels()) {
        assert_eq!(p.0[1], q.0[1], "alpha changed");
        if p.0[1] == 0 {
            assert_eq!(p.0, q.0, "a fully transparent pixel was marked");
        }
    }
}

fn upright(i: &Loaded, o: &Loaded) {
    // Stored 400 × 480 sideways; upright it is the 480 × 400 cover.
    assert_eq!(i.image.dimensions(), (480, 400));
    same_size(i, o);
    let want = cover();
    let got = i.image.to_rgb8();
    let diff: u64 = want
        .pixels()
        .zip(got.pixels())
        .map(|(p, q)| u64::from(p.0[1].abs_diff(q.0[1])))
        .sum();
    let mean = diff as f64 / f64::from(want.width() * want.height());
    assert!(mean < 6.0, "not the upright cover: mean |Δ| {mean:.1}");
}

fn icc_kept(i: &Loaded, o: &Loaded) {
    same_size(i, o);
    assert_eq!(i.icc_profile.as_deref(), Some(&icc()[..]));
    assert_eq!(o.icc_profile, i.icc_profile, "ICC profile dropped");
}

fn rgb_from_cmyk(i: &Loaded, o: &Loaded) {
    assert_eq!(i.format, ImageFormat::Jpeg);
    assert_eq!(i.image.color().channel_count(), 3);
    same_size(i, o);
}

fn palette_to_rgb(i: &Loaded, o: &Loaded) {
    assert_eq!(i.image.color(), image::ColorType::Rgb8);
    colour_type_kept(i, o);
}

fn first_of_n(note: &'static str) -> impl Fn(&Loaded) {
    move |l| {
        assert_eq!(l.frames_note.as_deref(), Some(note));
    }
}

fn cases() -> Vec<Case> {
    use Want::{Loads, Marks, TooSmallToMark};
    let mut v = vec![
        // ---- empty, missing, not a file ----
        case("zero-byte .png", "empty.png", Vec::new, err!(EmptyFile)),
        case("zero-byte .jpg", "empty.jpg", Vec::new, err!(EmptyFile)),
        case("zero-byte .gif", "empty.gif", Vec::new, err!(EmptyFile)),
        // ---- not an image, or an unsupported one ----
        case(
            "text named .png",
            "notes.png",
            || b"meeting notes, not a drawing\n".to_vec(),
            err!(UnsupportedFormat),
        ),
        case(
            "PDF named .jpg",
            "drawing.jpg",
            || b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n1 0 obj\n<<>>\nendobj\n".to_vec(),
            err!(UnsupportedFormat),
        ),
        case(
            "BMP (not supported)",
            "scan.bmp",
            || {
                let mut bmp = b"BM".to_vec();
                bmp.extend([0; 60]);
                bmp
            },
            err!(UnsupportedFormat),
        ),
        case(
            "random bytes named .webp",
            "noise.webp",
            || {
                (0..4096_u32)
                    .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                    .collect()
            },
            err!(UnsupportedFormat),
        ),
        case(
            "a lone byte",
            "one.png",
            || vec![0x89],
            err!(UnsupportedFormat),
        ),
        // ---- truncated ----
        case(
            "PNG cut in half",
            "half.png",
            || half(png(&DynamicImage::ImageRgb8(cover()))),
            err!(Truncated),
        ),
        case(
            "PNG signature only",
            "sig.png",
            || b"\x89PNG\r\n\x1a\n".to_vec(),
            err!(Truncated),
        ),
        case(
            "PNG cut inside IHDR",
            "ihdr.png",
            || cut(png(&small_rgb()), 20),
            err!(Truncated),
        ),
        case(
            "PNG without its IEND chunk",
            "noend.png",
            || {
                let p = png(&DynamicImage::ImageRgb8(cover()));
                let n = p.len() - 12;
                cut(p, n)
            },
            err!(Truncated),
        ),
        case(
            "baseline JPEG cut in half",
            "half.jpg",
            || half(jpeg_of(&DynamicImage::ImageRgb8(cover()))),
            err!(Truncated),
        ),
        case(
            "progressive JPEG cut in half",
            "halfp.jpg",
            || half(progressive_jpeg(&cover())),
            err!(Truncated),
        ),
        case(
            "JPEG cut inside its headers",
            "hdr.jpg",
            || cut(jpeg_of(&small_rgb()), 100),
            err!(Truncated),
        ),
        case(
            "JPEG start marker only",
            "soi.jpg",
            || vec![0xFF, 0xD8, 0xFF],
            err!(Truncated),
        ),
        case(
            "TIFF cut in half",
            "half.tif",
            || half(encode(&DynamicImage::ImageRgb8(cover()), ImageFormat::Tiff)),
            err!(Truncated),
        ),
        case(
            "TIFF header only",
            "hdr.tif",
            || b"II*\0\x08\0\0\0".to_vec(),
            err!(Truncated),
        ),
        case(
            "WebP cut in half",
            "half.webp",
            || half(encode(&DynamicImage::ImageRgb8(cover()), ImageFormat::WebP)),
            err!(Truncated),
        ),
        case(
            "WebP RIFF header only",
            "hdr.webp",
            || b"RIFF\x24\0\0\0WEBPVP8L".to_vec(),
            err!(Truncated),
        ),
        case(
            "GIF cut in half",
            "half.gif",
            || half(gif_frames(1)),
            err!(Truncated),
        ),
        case(
            "GIF header only",
            "hdr.gif",
            || b"GIF89a\x20\0\x18\0".to_vec(),
            err!(Truncated),
        ),
        // ---- corrupt ----
        case(
            "PNG with a damaged IHDR (CRC mismatch)",
            "crc.png",
            || smash(png(&small_rgb()), 18, 4),
            err!(Decode),
        ),
        case(
            "PNG with junk in its compressed data",
            "junk.png",
            || {
                let p = png(&DynamicImage::ImageRgb8(cover()));
                let n = p.len();
                smash(p, n / 2, 64)
            },
            err!(Decode),
        ),
        case(
            "PNG claiming width 0",
            "zero.png",
            || png_claiming(0, 48),
            err!(Decode),
        ),
        case(
            "JPEG with a damaged frame header",
            "sof.jpg",
            || {
                let j = jpeg_of(&small_rgb());
                let sof = j.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap_or(0);
                smash(j, sof + 2, 8)
            },
            err!(Decode),
        ),
        case(
            "TIFF whose first page lies past its end",
            "ifd.tif",
            || b"II*\0\xFF\xFF\xFF\x00rest".to_vec(),
            err!(Truncated),
        ),
        case(
            "TIFF with an unknown compression",
            "comp.tif",
            || {
                let mut t = tiff_two_pages();
                // First IFD at 8: count (2), then entry 3 (Compression) value.
                t[8 + 2 + 3 * 12 + 8..8 + 2 + 3 * 12 + 10].copy_from_slice(&99_u16.to_le_bytes());
                t
            },
            err!(Decode),
        ),
        case(
            "WebP with junk in its bitstream",
            "junk.webp",
            || {
                let w = encode(&DynamicImage::ImageRgb8(cover()), ImageFormat::WebP);
                smash(w, 30, 200)
            },
            err!(Decode),
        ),
        case(
            "GIF with junk in its image data",
            "junk.gif",
            || {
                let g = gif_frames(1);
                let n = g.len();
                smash(g, n / 2, 32)
            },
            err!(Decode),
        ),
        // ---- decompression bombs and size limits ----
        case(
            "PNG claiming 60000 x 60000",
            "bomb.png",
            || png_claiming(60_000, 60_000),
            err!(TooLarge),
        ),
        case(
            "JPEG claiming 65000 x 65000",
            "bomb.jpg",
            jpeg_claiming_65000,
            err!(TooLarge),
        ),
        case(
            "GIF claiming 65535 x 65535",
            "bomb.gif",
            gif_claiming_huge,
            err!(TooLarge),
        ),
        case(
            "lossless WebP whose header alone claims 16384 x 16384",
            "bomb.webp",
            webp_claiming_huge,
            err!(Decode),
        ),
        Case {
            name: "2000 x 2000 WebP of a few kB over a 1 MP limit",
            file: "zeros.webp",
            bytes: || {
                encode(
                    &DynamicImage::ImageRgb8(RgbImage::new(2000, 2000)),
                    ImageFormat::WebP,
                )
            },
            limits: LoadLimits {
                max_pixels: 1_000_000,
                ..LoadLimits::default()
            },
            want: err!(TooLarge),
        },
        Case {
            name: "2000 x 2000 grey TIFF over a 1 MP limit",
            file: "zeros.tif",
            bytes: || {
                encode(
                    &DynamicImage::ImageLuma8(GrayImage::new(2000, 2000)),
                    ImageFormat::Tiff,
                )
            },
            limits: LoadLimits {
                max_pixels: 1_000_000,
                ..LoadLimits::default()
            },
            want: err!(TooLarge),
        },
        case(
            "TIFF claiming 60000 x 60000",
            "bomb.tif",
            tiff_claiming_huge,
            err!(TooLarge),
        ),
        Case {
            name: "4000 x 4000 PNG of a few kB over a 1 MP limit",
            file: "zeros.png",
            bytes: zeros_4000,
            limits: LoadLimits {
                max_pixels: 1_000_000,
                ..LoadLimits::default()
            },
            want: err!(TooLarge),
        },
        Case {
            name: "same PNG over a 1 MB memory limit",
            file: "zeros.png",
            bytes: zeros_4000,
            limits: LoadLimits {
                max_alloc_bytes: 1_000_000,
                ..LoadLimits::default()
            },
            want: err!(TooLarge),
        },
        Case {
            name: "same PNG with the limit raised (--max-pixels 20000000)",
            file: "zeros.png",
            bytes: zeros_4000,
            limits: LoadLimits {
                max_pixels: 20_000_000,
                ..LoadLimits::default()
            },
            want: Loads(|l| assert_eq!(l.image.dimensions(), (4000, 4000))),
        },
        // ---- lying extensions ----
        case(
            "PNG named .jpg",
            "really_png.jpg",
            || png(&small_rgb()),
            Loads(is_png),
        ),
        case(
            "JPEG named .png",
            "really_jpeg.png",
            || jpeg_of(&small_rgb()),
            Loads(is_jpeg),
        ),
        case(
            "GIF named .tif",
            "really_gif.tif",
            || gif_frames(1),
            Loads(is_gif),
        ),
        case(
            "JPEG with junk after its end marker",
            "trailer.jpg",
            || {
                let mut j = jpeg_of(&small_rgb());
                j.extend(b"\0\0camera maker notes after EOI");
                j
            },
            Loads(is_jpeg),
        ),
        // ---- tiny images ----
        case(
            "1 x 1 PNG",
            "dot.png",
            || png(&DynamicImage::ImageRgb8(RgbImage::new(1, 1))),
            TooSmallToMark,
        ),
        case(
            "64 x 48 JPEG",
            "thumb.jpg",
            || jpeg_of(&small_rgb()),
            TooSmallToMark,
        ),
        case(
            "1000 x 90 banner PNG",
            "banner.png",
            || png(&DynamicImage::ImageRgb8(common::photo(1000, 90, 5))),
            TooSmallToMark,
        ),
        // ---- depth, colour and alpha ----
        case(
            "16-bit RGB PNG",
            "deep.png",
            || png(&DynamicImage::ImageRgb16(cover16())),
            Marks("deep_marked.png", sixteen_bit_kept),
        ),
        case(
            "16-bit RGB TIFF",
            "deep.tif",
            || encode(&DynamicImage::ImageRgb16(cover16()), ImageFormat::Tiff),
            Marks("deep_marked.tif", sixteen_bit_kept),
        ),
        case(
            "16-bit grey PNG",
            "deep_grey.png",
            || {
                let c = cover16();
                let g = ImageBuffer::from_fn(c.width(), c.height(), |x, y| {
                    Luma([c.get_pixel(x, y).0[1]])
                });
                png(&DynamicImage::ImageLuma16(g))
            },
            Marks("deep_grey_marked.png", sixteen_bit_kept),
        ),
        case(
            "8-bit grey PNG",
            "grey.png",
            || png(&DynamicImage::ImageLuma8(grey_cover())),
            Marks("grey_marked.png", colour_type_kept),
        ),
        case(
            "grey + alpha PNG",
            "grey_alpha.png",
            || {
                let g = grey_cover();
                let ga = GrayAlphaImage::from_fn(g.width(), g.height(), |x, y| {
                    let a = if (100..160).contains(&y) { 0 } else { 255 };
                    LumaA([g.get_pixel(x, y).0[0], a])
                });
                png(&DynamicImage::ImageLumaA8(ga))
            },
            Marks("grey_alpha_marked.png", grey_alpha_kept),
        ),
        case(
            "RGBA PNG with transparent and half-transparent bands",
            "rgba.png",
            || png(&DynamicImage::ImageRgba8(rgba_cover())),
            Marks("rgba_marked.png", alpha_kept_and_invisible_untouched),
        ),
        case(
            "RGBA PNG saved as lossless WebP",
            "rgba_webp.png",
            || png(&DynamicImage::ImageRgba8(rgba_cover())),
            Marks("rgba_marked.webp", alpha_kept_and_invisible_untouched),
        ),
        case(
            "palette PNG",
            "palette.png",
            palette_png,
            Marks("palette_marked.png", palette_to_rgb),
        ),
        case(
            "CMYK JPEG",
            "cmyk.jpg",
            cmyk_jpeg,
            Marks("cmyk_marked.png", rgb_from_cmyk),
        ),
        case(
            "JPEG stored sideways (EXIF orientation 6)",
            "phone.jpg",
            || jpeg_with_orientation(&sideways_cover(), 6),
            Marks("phone_marked.png", upright),
        ),
        case(
            "PNG stored sideways (eXIf orientation 6)",
            "phone.png",
            || png_with_chunks(png(&sideways_cover()), &[(b"eXIf", exif_orientation(6))]),
            Marks("phone_png_marked.png", upright),
        ),
        case(
            "PNG with an ICC profile",
            "icc.png",
            || with_icc(ImageFormat::Png),
            Marks("icc_marked.png", icc_kept),
        ),
        case(
            "JPEG with an ICC profile, marked to JPEG",
            "icc.jpg",
            || with_icc(ImageFormat::Jpeg),
            Marks("icc_marked.jpg", icc_kept),
        ),
        // ---- animations and pages: the first frame, with a note ----
        case(
            "animated GIF (3 frames)",
            "anim.gif",
            || gif_frames(3),
            Loads(|l| first_of_n("animated GIF: first frame of 3 used")(l)),
        ),
        case(
            "animated PNG (acTL: 3 frames)",
            "anim.png",
            apng,
            Loads(|l| first_of_n("animated PNG: first frame of 3 used")(l)),
        ),
        case(
            "two-page TIFF",
            "pages.tif",
            tiff_two_pages,
            Loads(|l| {
                first_of_n("multi-page TIFF: first page of 2 used")(l);
                assert_eq!(l.image.dimensions(), (8, 4));
            }),
        ),
        case(
            "single-frame GIF has no note",
            "still.gif",
            || gif_frames(1),
            Loads(|l| assert_eq!(l.frames_note, None)),
        ),
    ];
    v.sort_by_key(|c| c.name);
    v
}

/// Runs one case; `Err` describes how it went wrong.
fn run(case: &Case, dir: &Path) -> Result<(), String> {
    let input = dir.join(case.file);
    std::fs::write(&input, (case.bytes)()).map_err(|e| e.to_string())?;
    let loaded = imageio::load(&input, &case.limits);
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(case, &input, loaded)));
    match result {
        Ok(r) => r,
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panic".to_owned())),
    }
}

fn check(case: &Case, input: &Path, loaded: leakmark::Result<Loaded>) -> Result<(), String> {
    let key = common::key(7);
    match (&case.want, loaded) {
        (Want::Error(name, is), Err(e)) => {
            if !is(&e) {
                return Err(format!("wanted Error::{name}, got {e:?}"));
            }
            one_line_naming_the_file(&e, input)
        }
        (Want::Error(name, _), Ok(l)) => Err(format!(
            "wanted Error::{name}, but it loaded as {:?} {:?}",
            l.format,
            l.image.dimensions()
        )),
        (_, Err(e)) => Err(format!("wanted it to load, got {e:?}")),
        (Want::Loads(check), Ok(l)) => {
            check(&l);
            Ok(())
        }
        (Want::TooSmallToMark, Ok(l)) => {
            let variant = embed::variant_for_image(&key, &l.image);
            match embed::embed(&key, &l.image, SERIAL, variant) {
                Err(Error::TooSmall { .. }) => {}
                Err(e) => return Err(format!("embed: wanted TooSmall, got {e:?}")),
                Ok(_) => return Err("embed: wanted TooSmall, but it marked".into()),
            }
            let d = detect(&key, &l.image, &DetectOptions::default());
            if !d.too_small || d.detected {
                return Err(format!("detect: wanted too_small, got {d:?}"));
            }
            Ok(())
        }
        (Want::Marks(out_name, check), Ok(l)) => {
            let variant = embed::variant_for_image(&key, &l.image);
            let marked = embed::embed(&key, &l.image, SERIAL, variant)
                .map_err(|e| format!("embed: {e:?}"))?;
            let output = input.with_file_name(out_name);
            imageio::save(
                &marked.image,
                &output,
                Some(input),
                l.icc_profile.as_deref(),
            )
            .map_err(|e| format!("save: {e:?}"))?;
            let back = imageio::load(&output, &LoadLimits::default())
                .map_err(|e| format!("reload: {e:?}"))?;
            let d = detect(&key, &back.image, &DetectOptions::default());
            if !d.detected || d.serial != Some(SERIAL) {
                return Err(format!(
                    "marked copy: wanted serial {SERIAL}, got {:?} (p {:.1e})",
                    d.serial, d.false_alarm_probability
                ));
            }
            check(&l, &back);
            Ok(())
        }
    }
}

/// Every error is one line (cause chain included) and names the file.
fn one_line_naming_the_file(e: &Error, input: &Path) -> Result<(), String> {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if text.contains('\n') {
        return Err(format!("message spans lines: {text:?}"));
    }
    if !text.contains(&*input.to_string_lossy()) {
        return Err(format!("message does not name the file: {text}"));
    }
    Ok(())
}

#[test]
fn every_bad_input_gets_its_exact_error_or_correct_handling() {
    let cases = cases();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        // A folder per case: same-named files of different cases never meet.
        let dir = tempfile::tempdir().expect("tempdir");
        if let Err(why) = run(case, dir.path()) {
            failures.push(format!("{} ({}): {why}", case.name, case.file));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn missing_file_and_folder_are_read_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    for path in [dir.path().join("nowhere.png"), dir.path().to_path_buf()] {
        match imageio::load(&path, &LoadLimits::default()) {
            Err(Error::Read { .. }) => {}
            other => panic!("{}: wanted Error::Read, got {other:?}", path.display()),
        }
    }
}

#[test]
fn a_bomb_is_refused_before_any_memory_is_spent() {
    let start = std::time::Instant::now();
    for bytes in [
        png_claiming(60_000, 60_000),
        jpeg_claiming_65000(),
        gif_claiming_huge(),
    ] {
        let err = imageio::load_from_memory(&bytes, &LoadLimits::default()).unwrap_err();
        assert!(err.to_string().contains("--max-pixels"), "{err}");
    }
    assert!(start.elapsed().as_secs() < 2, "{:?}", start.elapsed());
}
