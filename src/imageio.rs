//! Decodes untrusted image files safely and writes images atomically.
//!
//! Leaked copies arrive from strangers: they may be truncated downloads,
//! decompression bombs, files with a lying extension, or crafted to crash a
//! decoder. [`load`] checks size limits before allocating, applies the EXIF
//! orientation so pixels are upright, catches decoder panics, and refuses
//! truncated JPEGs that `image` would otherwise fill with grey. [`save`]
//! never leaves a half-written file and never overwrites the original.
//!
//! Knows nothing of keys, marks or the ledger.
//!
//! # Examples
//!
//! ```
//! use leakmark::imageio::{self, LoadLimits};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let out = dir.path().join("draft.png");
//! let img = image::DynamicImage::new_rgb8(32, 16);
//! imageio::save(&img, &out, None, None)?;
//! let loaded = imageio::load(&out, &LoadLimits::default())?;
//! assert_eq!((loaded.image.width(), loaded.image.height()), (32, 16));
//! assert_eq!(loaded.format, image::ImageFormat::Png);
//! # Ok::<(), leakmark::Error>(())
//! ```

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Cursor, Read, Seek, SeekFrom, Write};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::codecs::tiff::TiffEncoder;
use image::codecs::webp::WebPEncoder;
use image::error::{DecodingError, ImageFormatHint, UnsupportedError, UnsupportedErrorKind};
use image::{DynamicImage, ImageDecoder, ImageEncoder, ImageError, ImageFormat, ImageReader};

use crate::{Error, Result};

/// Safety limits for decoding untrusted files.
///
/// Both are checked from the file's header, before the pixel buffer is
/// allocated, so a tiny file claiming a huge image costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadLimits {
    /// Largest accepted width × height, in pixels.
    pub max_pixels: u64,
    /// Largest accepted decoded buffer, in bytes (all decoder allocations together).
    pub max_alloc_bytes: u64,
}

impl LoadLimits {
    /// Default for [`LoadLimits::max_pixels`]: 100 megapixels. An A1 drawing
    /// scanned at 300 dpi is 70 MP; a 600 dpi A0 scan would need a raised limit.
    pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;
    /// Default for [`LoadLimits::max_alloc_bytes`]: 2 GiB, room for a
    /// 100 MP image at 16 bits per channel with alpha (800 MB) plus headroom.
    pub const DEFAULT_MAX_ALLOC_BYTES: u64 = 2 << 30;
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits {
            max_pixels: Self::DEFAULT_MAX_PIXELS,
            max_alloc_bytes: Self::DEFAULT_MAX_ALLOC_BYTES,
        }
    }
}

/// A decoded image plus what must survive to the output.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The pixels, with the EXIF orientation already applied: upright as a
    /// viewer shows them. Bit depth is kept (16-bit PNG/TIFF stay 16-bit).
    pub image: DynamicImage,
    /// The format found from the file's content (not its extension).
    pub format: ImageFormat,
    /// The embedded ICC colour profile, to copy into the output.
    pub icc_profile: Option<Vec<u8>>,
    /// Set when the file holds several frames or pages and only the first
    /// was decoded, e.g. "animated GIF: first frame of 12 used".
    pub frames_note: Option<String>,
}

/// Decodes the image file at `path` within `limits`.
///
/// The format is found from the file's content, so a PNG named `.jpg` loads.
/// Of animations and multi-page files only the first frame is decoded (see
/// [`Loaded::frames_note`]).
///
/// # Errors
///
/// - [`Error::Read`] if the file cannot be opened or read, or is a directory.
/// - [`Error::EmptyFile`] if it has 0 bytes.
/// - [`Error::UnsupportedFormat`] if its content is not PNG, JPEG, TIFF, WebP or GIF.
/// - [`Error::TooLarge`] if its header claims more than `limits` allow.
/// - [`Error::Truncated`] if it ends before its image data does.
/// - [`Error::Decode`] if it is otherwise corrupt, or the decoder panicked.
pub fn load(path: &Path, limits: &LoadLimits) -> Result<Loaded> {
    let read_err = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    if file.metadata().map_err(read_err)?.is_dir() {
        return Err(read_err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "it is a directory, not an image file",
        )));
    }
    decode_guarded(BufReader::new(file), path, limits)
}

/// Decodes an image held in memory within `limits`; errors name the path `<memory>`.
///
/// Behaves exactly like [`load`]: for bytes already read (a file hashed
/// before it is decoded), tests and fuzzing.
///
/// # Errors
///
/// As [`load`], except [`Error::Read`].
pub fn load_from_memory(bytes: &[u8], limits: &LoadLimits) -> Result<Loaded> {
    decode_guarded(Cursor::new(bytes), Path::new("<memory>"), limits)
}

/// `image` admits its decoders may panic on malicious input: catch that
/// here, at the file boundary, and report the file as corrupt.
fn decode_guarded<R: BufRead + Seek>(
    reader: R,
    path: &Path,
    limits: &LoadLimits,
) -> Result<Loaded> {
    // AssertUnwindSafe: nothing borrowed by the closure is used after a panic;
    // the reader is dropped with it.
    match panic::catch_unwind(AssertUnwindSafe(|| decode(reader, path, limits))) {
        Ok(result) => result,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            Err(Error::Decode {
                path: path.to_path_buf(),
                source: ImageError::Decoding(DecodingError::new(
                    ImageFormatHint::Unknown,
                    format!("the decoder crashed on this file ({what}); it is malformed"),
                )),
            })
        }
    }
}

fn decode<R: BufRead + Seek>(mut reader: R, path: &Path, limits: &LoadLimits) -> Result<Loaded> {
    let read_err = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = reader.seek(SeekFrom::End(0)).map_err(read_err)?;
    if len == 0 {
        return Err(Error::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    reader.seek(SeekFrom::Start(0)).map_err(read_err)?;

    // The content decides the format: every supported format has a
    // signature, and extensions of leaked files lie.
    let format = ImageReader::new(&mut reader)
        .with_guessed_format()
        .map_err(read_err)?
        .format()
        .ok_or_else(|| Error::UnsupportedFormat {
            path: path.to_path_buf(),
        })?;
    let frames_note = frames_note(&mut reader, format);
    // A JPEG without its end marker is probably cut short; whether it is
    // decides how decode errors are reported, and is checked again below.
    let missing_end = match format {
        ImageFormat::Jpeg => !jpeg_ends_with_eoi(&mut reader, len).map_err(read_err)?,
        ImageFormat::WebP => webp_is_cut_short(&mut reader, len).map_err(read_err)?,
        ImageFormat::Gif => gif_is_cut_short(&mut reader).map_err(read_err)?,
        _ => false,
    };
    let tiff_icc_profile = if format == ImageFormat::Tiff {
        reader.seek(SeekFrom::Start(0)).map_err(read_err)?;
        tiff_icc_profile(&mut reader)
    } else {
        None
    };
    reader.seek(SeekFrom::Start(0)).map_err(read_err)?;

    // `into_decoder` enforces only the width/height limits, not `max_alloc`:
    // the buffer size is reserved by hand below, before any pixel is decoded.
    let side_px = u32::try_from(limits.max_pixels).unwrap_or(u32::MAX);
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(side_px);
    image_limits.max_image_height = Some(side_px);
    image_limits.max_alloc = Some(limits.max_alloc_bytes);
    let mut image_reader = ImageReader::with_format(&mut reader, format);
    image_reader.limits(image_limits.clone());
    let mut decoder = image_reader
        .into_decoder()
        .map_err(|e| classify(e, path, format, None, limits, missing_end))?;

    let (width, height) = decoder.dimensions();
    let dims = Some((width, height));
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(too_large_pixels(path, width, height, limits));
    }
    image_limits
        .reserve(decoder.total_bytes())
        .map_err(|e| classify(e, path, format, dims, limits, missing_end))?;

    let orientation = decoder
        .orientation()
        .map_err(|e| classify(e, path, format, dims, limits, missing_end))?;
    let icc_profile = decoder
        .icc_profile()
        .map_err(|e| classify(e, path, format, dims, limits, missing_end))?
        .or(tiff_icc_profile);
    let mut image = DynamicImage::from_decoder(decoder)
        .map_err(|e| classify(e, path, format, dims, limits, missing_end))?;

    if missing_end && format == ImageFormat::Jpeg {
        if let Some(cause) = strict_jpeg_error(&mut reader, limits) {
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                format: "JPEG".to_owned(),
                source: Some(ImageError::Decoding(DecodingError::new(
                    ImageFormatHint::Exact(ImageFormat::Jpeg),
                    format!("no end-of-image marker, and a strict decode fails: {cause}"),
                ))),
            });
        }
    }
    image.apply_orientation(orientation);

    Ok(Loaded {
        image,
        format,
        icc_profile,
        frames_note,
    })
}

/// image 0.25.10's TIFF decoder loses the ICC profile once limits are set
/// (its tag-value budget becomes the pixel buffer size), so read the profile
/// with a decoder of its own, under the tiff crate's default limits (tag
/// values up to 1 MiB). A failure only means no profile.
fn tiff_icc_profile<R: BufRead + Seek>(reader: &mut R) -> Option<Vec<u8>> {
    image::codecs::tiff::TiffDecoder::new(reader)
        .ok()?
        .icc_profile()
        .ok()
        .flatten()
}

fn too_large_pixels(path: &Path, width: u32, height: u32, limits: &LoadLimits) -> Error {
    Error::TooLarge {
        path: path.to_path_buf(),
        width,
        height,
        limit: format!("{} pixels", limits.max_pixels),
    }
}

/// Sorts a decoder error by what the user can do about it.
fn classify(
    error: ImageError,
    path: &Path,
    format: ImageFormat,
    dims: Option<(u32, u32)>,
    limits: &LoadLimits,
    missing_end: bool,
) -> Error {
    let path = path.to_path_buf();
    let error = one_line(error, format);
    match error {
        ImageError::Limits(_) => {
            let (width, height) = dims.unwrap_or((0, 0));
            if u64::from(width) * u64::from(height) > limits.max_pixels {
                too_large_pixels(&path, width, height, limits)
            } else {
                Error::TooLarge {
                    path,
                    width,
                    height,
                    limit: format!("{} bytes of decoding memory", limits.max_alloc_bytes),
                }
            }
        }
        ImageError::Decoding(_) if missing_end => Error::Truncated {
            path,
            format: format_name(format).to_owned(),
            source: Some(error),
        },
        // Some decoders (GIF) wrap the reader's end-of-file in a decoding error.
        ref e if ends_early(e) => Error::Truncated {
            path,
            format: format_name(format).to_owned(),
            source: Some(error),
        },
        ImageError::Unsupported(ref u) if matches!(u.kind(), UnsupportedErrorKind::Format(_)) => {
            Error::UnsupportedFormat { path }
        }
        source => Error::Decode { path, source },
    }
}

/// Whether the error, or any error it was caused by, is an unexpected end of file.
fn ends_early(error: &ImageError) -> bool {
    // `ImageError::source` skips the I/O error itself and returns its cause.
    if let ImageError::IoError(e) = error {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return true;
        }
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::UnexpectedEof {
                return true;
            }
        }
        cause = e.source();
    }
    false
}

/// Errors here are one line, but some decoders end their messages with a
/// line break (zune-jpeg's "Not enough bytes ...\n"): such an error is
/// replaced by a decoding error carrying the same text on one line.
fn one_line(error: ImageError, format: ImageFormat) -> ImageError {
    let mut multi_line = false;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = cause {
        multi_line |= e.to_string().contains(['\n', '\r']);
        cause = e.source();
    }
    if !multi_line {
        return error;
    }
    let text =
        std::error::Error::source(&error).map_or_else(|| error.to_string(), ToString::to_string);
    let flat: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let hint = ImageFormatHint::Exact(format);
    if ends_early(&error) {
        // Keep the end-of-file cause visible to `ends_early`.
        return ImageError::IoError(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            flat.join("; "),
        ));
    }
    ImageError::Decoding(DecodingError::new(hint, flat.join("; ")))
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Gif => "GIF",
        ImageFormat::WebP => "WebP",
        ImageFormat::Tiff => "TIFF",
        _ => "image",
    }
}

/// `image` decodes truncated JPEGs as `Ok`, the missing part grey; a mark
/// detector would then report a confident "no mark". A complete JPEG ends
/// with the EOI marker (FF D9), maybe followed by zero or whitespace padding.
fn jpeg_ends_with_eoi<R: Read + Seek>(reader: &mut R, len: u64) -> io::Result<bool> {
    // Long enough to step over any padding seen in practice.
    const TAIL_BYTES: u64 = 4096;
    let tail_len = len.min(TAIL_BYTES);
    reader.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = Vec::new();
    reader.by_ref().take(tail_len).read_to_end(&mut tail)?;
    let end = tail
        .iter()
        .rposition(|&b| b != 0 && !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    Ok(tail[..end].ends_with(&[0xFF, 0xD9]))
}

/// A WebP file is one RIFF chunk whose header gives its size: a file
/// shorter than that was cut short (image-webp then reports a bit-stream
/// error rather than the end of the file).
fn webp_is_cut_short<R: Read + Seek>(reader: &mut R, len: u64) -> io::Result<bool> {
    reader.seek(SeekFrom::Start(4))?;
    let mut size = [0; 4];
    if reader.read_exact(&mut size).is_err() {
        return Ok(true);
    }
    Ok(len < 8 + u64::from(u32::from_le_bytes(size)))
}

/// A GIF whose block structure runs into the end of the file before its
/// trailer was cut short (the gif crate reports that as its own error kind,
/// not as an I/O error).
fn gif_is_cut_short<R: Read + Seek>(reader: &mut R) -> io::Result<bool> {
    reader.seek(SeekFrom::Start(0))?;
    let mut frames = 0;
    Ok(matches!(
        count_gif_frames(reader, &mut frames),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof
    ))
}

/// For JPEGs that do not end with EOI: some cameras append data after it,
/// and a file may lack only the marker itself. A strict-mode decode tells
/// those (`None`) from truncated files (`Some(cause)`).
fn strict_jpeg_error<R: BufRead + Seek>(reader: &mut R, limits: &LoadLimits) -> Option<String> {
    if let Err(e) = reader.seek(SeekFrom::Start(0)) {
        return Some(e.to_string());
    }
    let side_px = usize::try_from(limits.max_pixels).unwrap_or(usize::MAX);
    let options = zune_jpeg::zune_core::options::DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(side_px)
        .set_max_height(side_px);
    zune_jpeg::JpegDecoder::new_with_options(reader, options)
        .decode()
        .err()
        // zune-jpeg's messages may end with a line break; errors are one line.
        .map(|e| {
            e.to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
}

/// Describes the frames or pages that only-the-first-frame decoding drops.
/// Walks the container structure without decoding pixels; a walk that hits
/// malformed data reports what it counted so far.
fn frames_note<R: Read + Seek>(reader: &mut R, format: ImageFormat) -> Option<String> {
    let (walk, kind, unit): (Walk<R>, &str, &str) = match format {
        ImageFormat::Gif => (count_gif_frames, "animated GIF", "frame"),
        // `image` decodes the default image, in practice the first frame.
        ImageFormat::Png => (count_apng_frames, "animated PNG", "frame"),
        ImageFormat::WebP => (count_webp_frames, "animated WebP", "frame"),
        ImageFormat::Tiff => (count_tiff_pages, "multi-page TIFF", "page"),
        _ => return None,
    };
    let mut count = 0_u64;
    // Errors only end the walk early; the count so far stands.
    let _ = reader
        .seek(SeekFrom::Start(0))
        .and_then(|_| walk(reader, &mut count));
    (count > 1).then(|| format!("{kind}: first {unit} of {count} used"))
}

/// Walks a container from its start, counting frames into the `u64`.
type Walk<R> = fn(&mut R, &mut u64) -> io::Result<()>;

fn skip<R: Read>(reader: &mut R, n: u64) -> io::Result<()> {
    // Reads through the buffer rather than seeking, which would discard it.
    if io::copy(&mut reader.by_ref().take(n), &mut io::sink())? == n {
        Ok(())
    } else {
        Err(io::ErrorKind::UnexpectedEof.into())
    }
}

fn read_array<const N: usize, R: Read>(reader: &mut R) -> io::Result<[u8; N]> {
    let mut buf = [0; N];
    reader.read_exact(&mut buf)?;
    Ok(buf)
}

/// GIF: header, optional global palette, then blocks until the trailer.
fn count_gif_frames<R: Read + Seek>(reader: &mut R, frames: &mut u64) -> io::Result<()> {
    fn skip_sub_blocks<R: Read>(reader: &mut R) -> io::Result<()> {
        loop {
            let [len] = read_array(reader)?;
            if len == 0 {
                return Ok(());
            }
            skip(reader, u64::from(len))?;
        }
    }
    let header: [u8; 13] = read_array(reader)?;
    if header[10] & 0x80 != 0 {
        skip(reader, 3 << ((header[10] & 7) + 1))?;
    }
    loop {
        match read_array(reader)? {
            [0x2C] => {
                *frames += 1;
                let descriptor: [u8; 9] = read_array(reader)?;
                if descriptor[8] & 0x80 != 0 {
                    skip(reader, 3 << ((descriptor[8] & 7) + 1))?;
                }
                skip(reader, 1)?; // LZW minimum code size
                skip_sub_blocks(reader)?;
            }
            [0x21] => {
                skip(reader, 1)?; // extension label
                skip_sub_blocks(reader)?;
            }
            _ => return Ok(()), // trailer (0x3B) or junk
        }
    }
}

/// APNG: the acTL chunk, before the first IDAT, holds the frame count.
fn count_apng_frames<R: Read + Seek>(reader: &mut R, frames: &mut u64) -> io::Result<()> {
    skip(reader, 8)?; // signature
    loop {
        let header: [u8; 8] = read_array(reader)?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        match &header[4..] {
            b"acTL" => {
                *frames = u32::from_be_bytes(read_array(reader)?).into();
                return Ok(());
            }
            b"IDAT" | b"IEND" => return Ok(()),
            _ => {
                reader.seek(SeekFrom::Current(i64::from(len) + 4))?; // data + CRC
            }
        }
    }
}

/// WebP: a RIFF container; each animation frame is an ANMF chunk.
fn count_webp_frames<R: Read + Seek>(reader: &mut R, frames: &mut u64) -> io::Result<()> {
    skip(reader, 12)?; // "RIFF", size, "WEBP"
    loop {
        let header: [u8; 8] = read_array(reader)?;
        if &header[..4] == b"ANMF" {
            *frames += 1;
        }
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        reader.seek(SeekFrom::Current(i64::from(len) + i64::from(len & 1)))?;
    }
}

/// TIFF: a linked list of IFDs, one per page. BigTIFF is not walked.
fn count_tiff_pages<R: Read + Seek>(reader: &mut R, pages: &mut u64) -> io::Result<()> {
    let header: [u8; 8] = read_array(reader)?;
    let big_endian = match &header[..4] {
        b"MM\0*" => true,
        b"II*\0" => false,
        _ => return Ok(()),
    };
    let u16_of = |b: [u8; 2]| {
        if big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    };
    let u32_of = |b: [u8; 4]| {
        if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    let mut offset = u32_of([header[4], header[5], header[6], header[7]]);
    let mut seen = HashSet::new();
    while offset != 0 && seen.insert(offset) {
        reader.seek(SeekFrom::Start(offset.into()))?;
        let entries = u16_of(read_array(reader)?);
        *pages += 1;
        reader.seek(SeekFrom::Current(i64::from(entries) * 12))?;
        offset = u32_of(read_array(reader)?);
    }
    Ok(())
}

/// The format [`save`] writes for `output`, from its extension
/// (case-insensitive): `png` or none → PNG, `jpg`/`jpeg` → JPEG,
/// `tif`/`tiff` → TIFF, `webp` → WebP (lossless).
///
/// Lets the CLI reject a bad output path before doing any work.
///
/// # Errors
///
/// [`Error::Encode`] for any other extension (GIF's 256 colours would destroy a mark).
///
/// # Examples
///
/// ```
/// use std::path::Path;
/// use image::ImageFormat;
/// use leakmark::imageio::output_format;
///
/// assert_eq!(output_format(Path::new("out/draft.JPG"))?, ImageFormat::Jpeg);
/// assert_eq!(output_format(Path::new("draft"))?, ImageFormat::Png);
/// assert!(output_format(Path::new("draft.gif")).is_err());
/// # Ok::<(), leakmark::Error>(())
/// ```
pub fn output_format(output: &Path) -> Result<ImageFormat> {
    let Some(ext) = output.extension() else {
        return Ok(ImageFormat::Png);
    };
    match ext.to_str().map(str::to_ascii_lowercase).as_deref() {
        Some("png") => Ok(ImageFormat::Png),
        Some("jpg" | "jpeg") => Ok(ImageFormat::Jpeg),
        Some("tif" | "tiff") => Ok(ImageFormat::Tiff),
        Some("webp") => Ok(ImageFormat::WebP),
        _ => {
            let hint = ImageFormatHint::PathExtension(PathBuf::from(ext));
            Err(Error::Encode {
                path: output.to_path_buf(),
                source: ImageError::Unsupported(UnsupportedError::from_format_and_kind(
                    hint.clone(),
                    UnsupportedErrorKind::Format(hint),
                )),
            })
        }
    }
}

/// Writes `image` to `output` atomically, never over `input`.
///
/// The format comes from the extension (see [`output_format`]): PNG and TIFF
/// keep 16-bit samples; JPEG is written at quality 95 as 8-bit RGB, any alpha
/// composited on white; WebP is lossless 8-bit. `icc_profile` is embedded
/// where the encoder supports it (PNG, TIFF, JPEG and WebP do).
///
/// The image is encoded into a temporary file in the output's folder, synced
/// to disk, then renamed over `output`: a crash or error leaves either the
/// old file or the new one, and no temporary file. A new file gets mode 0644
/// on Unix; a replaced file keeps its permissions.
///
/// # Errors
///
/// - [`Error::WouldOverwriteInput`] if `output` is `input` under another
///   spelling, through a symlink, or as a hard link.
/// - [`Error::Encode`] if the extension is unsupported or encoding fails.
/// - [`Error::Write`] if the folder is missing or not writable, or the disk is full.
pub fn save(
    image: &DynamicImage,
    output: &Path,
    input: Option<&Path>,
    icc_profile: Option<&[u8]>,
) -> Result<()> {
    if let Some(input) = input {
        refuse_overwrite(output, input)?;
    }
    let format = output_format(output)?;
    let write_err = |source| Error::Write {
        path: output.to_path_buf(),
        source,
    };
    let dir = match output.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let old = std::fs::metadata(output).ok();
    // The rename below would replace a device or FIFO node itself (run as
    // root, `embed in.png /dev/null` would swap /dev/null for a PNG).
    if old.as_ref().is_some_and(|m| !m.is_file()) {
        return Err(write_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it exists and is not a regular file (a folder, device or FIFO); choose a file path",
        )));
    }
    let old_permissions = old.map(|m| m.permissions());

    // Dropping `temp` on any early return deletes the temporary file.
    let mut temp = tempfile::Builder::new()
        .prefix(".leakmark-")
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(write_err)?;
    {
        let mut writer = BufWriter::new(temp.as_file_mut());
        encode(image, format, icc_profile, &mut writer).map_err(|e| match e {
            ImageError::IoError(source) => write_err(source),
            source => Error::Encode {
                path: output.to_path_buf(),
                source,
            },
        })?;
        writer.flush().map_err(write_err)?;
    }
    let permissions = match old_permissions {
        Some(p) => Some(p),
        None => new_file_permissions(),
    };
    if let Some(p) = permissions {
        temp.as_file().set_permissions(p).map_err(write_err)?;
    }
    temp.as_file().sync_all().map_err(write_err)?;
    temp.persist(output).map_err(|e| write_err(e.error))?;
    // Makes the rename itself durable. Best effort: some file systems
    // refuse to sync a directory, and the data is already safe.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(unix)]
fn new_file_permissions() -> Option<std::fs::Permissions> {
    use std::os::unix::fs::PermissionsExt;
    // tempfile creates 0600; an image is not secret, so use the usual 0644.
    Some(std::fs::Permissions::from_mode(0o644))
}

#[cfg(not(unix))]
fn new_file_permissions() -> Option<std::fs::Permissions> {
    None
}

/// Fails if writing `output` would replace `input`: same canonical path
/// (catches `dir/./file`, `../dir/file` and symlinks) or, when both exist,
/// the same file on disk (catches hard links).
fn refuse_overwrite(output: &Path, input: &Path) -> Result<()> {
    let refuse = || {
        Err(Error::WouldOverwriteInput {
            output: output.to_path_buf(),
        })
    };
    let input_path = std::fs::canonicalize(input).or_else(|_| std::path::absolute(input));
    let output_path = std::fs::canonicalize(output).or_else(|_| {
        // A new output: resolve its folder, which must exist anyway.
        match (output.parent(), output.file_name()) {
            (Some(parent), Some(name)) => {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                std::fs::canonicalize(parent).map(|p| p.join(name))
            }
            _ => std::path::absolute(output),
        }
    });
    if let (Ok(a), Ok(b)) = (&input_path, &output_path) {
        // `components` also drops `.` segments the fallbacks may have kept.
        if a.components().eq(b.components()) {
            return refuse();
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(a), Ok(b)) = (std::fs::metadata(input), std::fs::metadata(output)) {
            if a.dev() == b.dev() && a.ino() == b.ino() {
                return refuse();
            }
        }
    }
    Ok(())
}

/// Converts `image` to a sample layout `format`'s encoder accepts, keeping
/// as much precision as it allows, and encodes it.
fn encode<W: Write + Seek>(
    image: &DynamicImage,
    format: ImageFormat,
    icc_profile: Option<&[u8]>,
    writer: W,
) -> image::ImageResult<()> {
    use DynamicImage as D;
    let wide = |img: &DynamicImage| -> DynamicImage {
        if img.color().has_alpha() {
            D::ImageRgba16(img.to_rgba16())
        } else {
            D::ImageRgb16(img.to_rgb16())
        }
    };
    let narrow = |img: &DynamicImage| -> DynamicImage {
        if img.color().has_alpha() {
            D::ImageRgba8(img.to_rgba8())
        } else {
            D::ImageRgb8(img.to_rgb8())
        }
    };
    // Encoders without ICC support return Err from `set_icc_profile`; the
    // pixels are still right, so that is not worth failing the save.
    fn with_icc<E: ImageEncoder>(mut encoder: E, icc: Option<&[u8]>) -> E {
        if let Some(icc) = icc {
            let _ = encoder.set_icc_profile(icc.to_vec());
        }
        encoder
    }
    match format {
        ImageFormat::Png => {
            let img = match image {
                D::ImageLuma8(_)
                | D::ImageLumaA8(_)
                | D::ImageRgb8(_)
                | D::ImageRgba8(_)
                | D::ImageLuma16(_)
                | D::ImageLumaA16(_)
                | D::ImageRgb16(_)
                | D::ImageRgba16(_) => Cow::Borrowed(image),
                _ => Cow::Owned(wide(image)),
            };
            let encoder = PngEncoder::new_with_quality(
                writer,
                CompressionType::Default,
                FilterType::Adaptive,
            );
            img.write_with_encoder(with_icc(encoder, icc_profile))
        }
        ImageFormat::Tiff => {
            let img = match image {
                D::ImageLumaA8(_) => Cow::Owned(D::ImageRgba8(image.to_rgba8())),
                D::ImageLuma8(_)
                | D::ImageRgb8(_)
                | D::ImageRgba8(_)
                | D::ImageLuma16(_)
                | D::ImageRgb16(_)
                | D::ImageRgba16(_)
                | D::ImageRgb32F(_)
                | D::ImageRgba32F(_) => Cow::Borrowed(image),
                _ => Cow::Owned(wide(image)),
            };
            img.write_with_encoder(with_icc(TiffEncoder::new(writer), icc_profile))
        }
        ImageFormat::WebP => {
            let img = match image {
                D::ImageLuma8(_) | D::ImageLumaA8(_) | D::ImageRgb8(_) | D::ImageRgba8(_) => {
                    Cow::Borrowed(image)
                }
                _ => Cow::Owned(narrow(image)),
            };
            img.write_with_encoder(with_icc(WebPEncoder::new_lossless(writer), icc_profile))
        }
        _ => {
            // JPEG, the only other format `output_format` returns.
            let img = D::ImageRgb8(rgb8_on_white(image));
            let encoder = JpegEncoder::new_with_quality(writer, JPEG_QUALITY);
            img.write_with_encoder(with_icc(encoder, icc_profile))
        }
    }
}

/// JPEG quality of [`save`]: 95 adds little loss on top of the mark (a
/// smooth 96 × 64 gradient round-trips within 6 levels, see
/// `jpeg_round_trips_closely_at_quality_95`). Not tuned against detection.
const JPEG_QUALITY: u8 = 95;

/// 8-bit RGB with any alpha composited on white, as a viewer would show it
/// on a page.
fn rgb8_on_white(image: &DynamicImage) -> image::RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    image::RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let a = u16::from(a);
        // c·a + 255·(255 − a), divided by 255 with rounding; at most 255.
        let mix = |c: u8| ((u16::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        image::Rgb([mix(r), mix(g), mix(b)])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GenericImageView, Rgb, Rgb32FImage, RgbImage, Rgba};
    use std::time::Instant;

    /// Deterministic noise: watermark-like content, poorly compressible.
    fn noise_rgb(width: u32, height: u32, seed: u32) -> RgbImage {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        RgbImage::from_fn(width, height, |_, _| {
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 24) as u8
            };
            Rgb([next(), next(), next()])
        })
    }

    /// Smooth content, so that lossy formats round-trip closely.
    fn gradient_rgb(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 128])
        })
    }

    fn encoded(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    fn limits() -> LoadLimits {
        LoadLimits::default()
    }

    fn dir_entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    // ---- hand-made PNGs: stored (uncompressed) zlib, so no encoder is needed ----

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

    fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(data);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }

    /// A PNG with the given header fields, extra chunks before IDAT, and
    /// raw (filter byte + samples) scanlines.
    fn craft_png(
        (width, height): (u32, u32),
        bit_depth: u8,
        color_type: u8,
        extra: &[(&[u8; 4], Vec<u8>)],
        scanlines: &[u8],
    ) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend(width.to_be_bytes());
        ihdr.extend(height.to_be_bytes());
        ihdr.extend([bit_depth, color_type, 0, 0, 0]);
        png_chunk(&mut out, b"IHDR", &ihdr);
        for (kind, data) in extra {
            png_chunk(&mut out, kind, data);
        }
        png_chunk(&mut out, b"IDAT", &zlib_stored(scanlines));
        png_chunk(&mut out, b"IEND", &[]);
        out
    }

    /// A JPEG with an EXIF APP1 segment carrying `orientation`, written by hand.
    fn jpeg_with_orientation(image: &DynamicImage, orientation: u16) -> Vec<u8> {
        let jpeg = encoded(image, ImageFormat::Jpeg);
        let mut tiff = b"MM\0\x2A\0\0\0\x08".to_vec(); // big-endian, IFD at 8
        tiff.extend(1_u16.to_be_bytes()); // one entry
        tiff.extend(0x0112_u16.to_be_bytes()); // Orientation
        tiff.extend(3_u16.to_be_bytes()); // SHORT
        tiff.extend(1_u32.to_be_bytes()); // count
        tiff.extend(orientation.to_be_bytes());
        tiff.extend([0, 0]); // value padding
        tiff.extend(0_u32.to_be_bytes()); // no next IFD
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend(tiff);
        let mut out = jpeg[..2].to_vec(); // SOI
        out.extend([0xFF, 0xE1]);
        out.extend((app1.len() as u16 + 2).to_be_bytes());
        out.extend(app1);
        out.extend(&jpeg[2..]);
        out
    }

    // ---- round trips ----

    #[test]
    fn lossless_formats_round_trip_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let original = DynamicImage::ImageRgb8(noise_rgb(67, 41, 1));
        for (name, format) in [
            ("a.png", ImageFormat::Png),
            ("a.tif", ImageFormat::Tiff),
            ("a.TIFF", ImageFormat::Tiff),
            ("a.webp", ImageFormat::WebP),
            ("no_extension", ImageFormat::Png),
        ] {
            let path = dir.path().join(name);
            save(&original, &path, None, None).unwrap();
            let loaded = load(&path, &limits()).unwrap();
            assert_eq!(loaded.format, format, "{name}");
            assert_eq!(loaded.image.to_rgb8(), original.to_rgb8(), "{name}");
            assert_eq!(loaded.frames_note, None, "{name}");
        }
    }

    #[test]
    fn jpeg_round_trips_closely_at_quality_95() {
        let dir = tempfile::tempdir().unwrap();
        let original = gradient_rgb(96, 64);
        for name in ["a.jpg", "a.JPEG"] {
            let path = dir.path().join(name);
            save(
                &DynamicImage::ImageRgb8(original.clone()),
                &path,
                None,
                None,
            )
            .unwrap();
            let loaded = load(&path, &limits()).unwrap();
            assert_eq!(loaded.format, ImageFormat::Jpeg);
            let back = loaded.image.to_rgb8();
            let max_diff = back
                .as_raw()
                .iter()
                .zip(original.as_raw())
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert!(max_diff <= 6, "{name}: max difference {max_diff}");
        }
    }

    #[test]
    fn jpeg_save_composites_alpha_on_white() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jpg");
        let transparent = image::RgbaImage::from_pixel(16, 16, Rgba([0, 0, 0, 0]));
        save(&DynamicImage::ImageRgba8(transparent), &path, None, None).unwrap();
        let loaded = load(&path, &limits()).unwrap();
        assert_eq!(loaded.image.color(), image::ColorType::Rgb8);
        assert!(loaded
            .image
            .to_rgb8()
            .pixels()
            .all(|p| p.0.iter().all(|&c| c >= 250)));
    }

    #[test]
    fn sixteen_bit_png_and_tiff_keep_sixteen_bits() {
        let dir = tempfile::tempdir().unwrap();
        // Values that are not multiples of 257, so 8-bit storage would show.
        let rgb16 = image::ImageBuffer::from_fn(23, 17, |x, y| {
            Rgb([(x * 2_851 + y) as u16, (y * 3_001 + 7) as u16, 1_234])
        });
        let grey16 =
            image::ImageBuffer::from_fn(23, 17, |x, y| image::Luma([(x * 997 + y * 13) as u16]));
        let rgba16 = image::ImageBuffer::from_fn(23, 17, |x, y| {
            Rgba([
                (x * 2_851) as u16,
                (y * 3_001) as u16,
                1_234,
                (x * y * 101) as u16,
            ])
        });
        let images = [
            DynamicImage::ImageRgb16(rgb16),
            DynamicImage::ImageLuma16(grey16),
            DynamicImage::ImageRgba16(rgba16),
        ];
        for image in &images {
            for name in ["a.png", "a.tif"] {
                let path = dir.path().join(name);
                save(image, &path, None, None).unwrap();
                let loaded = load(&path, &limits()).unwrap();
                assert_eq!(loaded.image, *image, "{name} {:?}", image.color());
            }
        }
    }

    #[test]
    fn float_images_save_as_sixteen_bit_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        let float = Rgb32FImage::from_pixel(8, 8, Rgb([0.5, 0.25, 1.0]));
        save(&DynamicImage::ImageRgb32F(float), &path, None, None).unwrap();
        let loaded = load(&path, &limits()).unwrap();
        assert_eq!(loaded.image.color(), image::ColorType::Rgb16);
    }

    #[test]
    fn animated_gif_loads_first_frame_with_note() {
        use image::codecs::gif::GifEncoder;
        let mut bytes = Vec::new();
        {
            let mut encoder = GifEncoder::new(&mut bytes);
            let frames = [255_u8, 0, 0].map(|red| {
                image::Frame::new(image::RgbaImage::from_pixel(
                    12,
                    10,
                    Rgba([red, 0, 90, 255]),
                ))
            });
            encoder.encode_frames(frames).unwrap();
        }
        let loaded = load_from_memory(&bytes, &limits()).unwrap();
        assert_eq!(loaded.format, ImageFormat::Gif);
        assert_eq!(loaded.image.dimensions(), (12, 10));
        assert_eq!(loaded.image.to_rgb8().get_pixel(3, 3).0[0], 255);
        assert_eq!(
            loaded.frames_note.as_deref(),
            Some("animated GIF: first frame of 3 used")
        );
    }

    #[test]
    fn animated_png_loads_still_image_with_note() {
        // fcTL: sequence, width, height, x, y, delay num/den, dispose, blend.
        let fctl = |sequence: u32| {
            let mut data = Vec::new();
            for v in [sequence, 4, 2, 0, 0] {
                data.extend(v.to_be_bytes());
            }
            data.extend([0, 1, 0, 10, 0, 0]);
            data
        };
        let actl = [2_u32.to_be_bytes(), 0_u32.to_be_bytes()].concat();
        let first = [0, 10, 20, 30, 40, 0, 50, 60, 70, 80];
        let mut png = craft_png((4, 2), 8, 0, &[(b"acTL", actl), (b"fcTL", fctl(0))], &first);
        let iend = png.split_off(png.len() - 12);
        png_chunk(&mut png, b"fcTL", &fctl(1));
        let mut fdat = 2_u32.to_be_bytes().to_vec();
        fdat.extend(zlib_stored(&[0, 99, 99, 99, 99, 0, 99, 99, 99, 99]));
        png_chunk(&mut png, b"fdAT", &fdat);
        png.extend(iend);

        let loaded = load_from_memory(&png, &limits()).unwrap();
        assert_eq!(
            loaded.image.to_luma8().as_raw(),
            &[10, 20, 30, 40, 50, 60, 70, 80]
        );
        assert_eq!(
            loaded.frames_note.as_deref(),
            Some("animated PNG: first frame of 2 used")
        );
    }

    #[test]
    fn animated_webp_loads_first_frame_with_note() {
        // Each frame: an ANMF chunk wrapping the VP8L chunk of a lossless
        // still, after a VP8X header (animation flag) and an ANIM chunk.
        let riff_chunk = |out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]| {
            out.extend(kind);
            out.extend((data.len() as u32).to_le_bytes());
            out.extend(data);
            if data.len() % 2 == 1 {
                out.push(0);
            }
        };
        let u24 = |v: u32| v.to_le_bytes()[..3].to_vec();
        let mut body = b"WEBP".to_vec();
        let vp8x = [vec![0x02, 0, 0, 0], u24(7), u24(5)].concat();
        riff_chunk(&mut body, b"VP8X", &vp8x);
        riff_chunk(&mut body, b"ANIM", &[255, 255, 255, 255, 0, 0]);
        for colour in [[200_u8, 0, 0], [0, 0, 200]] {
            let still = DynamicImage::ImageRgb8(RgbImage::from_pixel(8, 6, Rgb(colour)));
            let webp = encoded(&still, ImageFormat::WebP);
            let vp8l = &webp[12..]; // after "RIFF", size, "WEBP"
            let frame = [
                u24(0),
                u24(0),
                u24(7),
                u24(5),
                u24(100),
                vec![0],
                vp8l.to_vec(),
            ]
            .concat();
            riff_chunk(&mut body, b"ANMF", &frame);
        }
        let mut webp = b"RIFF".to_vec();
        webp.extend((body.len() as u32).to_le_bytes());
        webp.extend(body);

        let loaded = load_from_memory(&webp, &limits()).unwrap();
        assert_eq!(loaded.format, ImageFormat::WebP);
        assert_eq!(loaded.image.dimensions(), (8, 6));
        // Animation frames are composited onto the canvas, which may cost a level.
        let [red, _, blue] = loaded.image.to_rgb8().get_pixel(4, 3).0;
        assert!(
            red >= 190 && blue <= 10,
            "first frame is red, got {red}/{blue}"
        );
        assert_eq!(
            loaded.frames_note.as_deref(),
            Some("animated WebP: first frame of 2 used")
        );
    }

    #[test]
    fn single_frame_gif_has_no_note() {
        let image = DynamicImage::ImageRgb8(gradient_rgb(20, 20));
        let loaded = load_from_memory(&encoded(&image, ImageFormat::Gif), &limits()).unwrap();
        assert_eq!(loaded.frames_note, None);
    }

    #[test]
    fn tiff_walk_counts_pages() {
        // Little-endian header, IFD at 8 with no entries, next IFD at 14
        // with no entries, then the end of the list.
        let mut tiff = b"II*\0\x08\0\0\0".to_vec();
        tiff.extend([0, 0, 14, 0, 0, 0]);
        tiff.extend([0, 0, 0, 0, 0, 0]);
        let mut pages = 0;
        count_tiff_pages(&mut Cursor::new(&tiff), &mut pages).unwrap();
        assert_eq!(pages, 2);
        // A cycle (second IFD pointing back to the first) stops the walk.
        tiff[16..20].copy_from_slice(&8_u32.to_le_bytes());
        let mut pages = 0;
        count_tiff_pages(&mut Cursor::new(&tiff), &mut pages).unwrap();
        assert_eq!(pages, 2);
    }

    // ---- colour types ----

    #[test]
    fn grey_grey_alpha_and_rgba_pngs_load() {
        let grey = DynamicImage::ImageLuma8(image::GrayImage::from_fn(9, 7, |x, y| {
            image::Luma([(x * 20 + y) as u8])
        }));
        let grey_alpha = DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_fn(9, 7, |x, y| {
            image::LumaA([(x * 20) as u8, (y * 30) as u8])
        }));
        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_fn(9, 7, |x, y| {
            Rgba([x as u8, y as u8, 200, (x * y) as u8])
        }));
        for image in [grey, grey_alpha, rgba] {
            let loaded = load_from_memory(&encoded(&image, ImageFormat::Png), &limits()).unwrap();
            assert_eq!(loaded.image, image);
        }
    }

    #[test]
    fn palette_png_loads_as_rgb() {
        let palette = vec![255, 0, 0, 0, 255, 0, 0, 0, 255];
        // Two rows of four indices, each row after its filter byte (0: none).
        let scanlines = [0, 0, 1, 2, 0, 0, 2, 1, 0, 0];
        let png = craft_png((4, 2), 8, 3, &[(b"PLTE", palette)], &scanlines);
        let loaded = load_from_memory(&png, &limits()).unwrap();
        let rgb = loaded.image.to_rgb8();
        assert_eq!(rgb.dimensions(), (4, 2));
        assert_eq!(rgb.get_pixel(1, 0).0, [0, 255, 0]);
        assert_eq!(rgb.get_pixel(2, 0).0, [0, 0, 255]);
        assert_eq!(rgb.get_pixel(0, 1).0, [0, 0, 255]);
        assert_eq!(rgb.get_pixel(3, 1).0, [255, 0, 0]);
    }

    #[test]
    fn cmyk_jpeg_loads_as_rgb() {
        let cmyk = vec![0_u8; 16 * 16 * 4]; // no ink: white
        let mut bytes = Vec::new();
        jpeg_encoder::Encoder::new(&mut bytes, 90)
            .encode(&cmyk, 16, 16, jpeg_encoder::ColorType::Cmyk)
            .unwrap();
        let loaded = load_from_memory(&bytes, &limits()).unwrap();
        assert_eq!(loaded.image.dimensions(), (16, 16));
        assert_eq!(loaded.image.color().channel_count(), 3);
    }

    // ---- orientation and metadata ----

    #[test]
    fn exif_orientation_6_is_applied() {
        // Left half red, right half blue; orientation 6 means "rotate 90°
        // clockwise to display", which moves the left half to the top.
        let source = RgbImage::from_fn(40, 20, |x, _| {
            if x < 20 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        });
        let jpeg = jpeg_with_orientation(&DynamicImage::ImageRgb8(source), 6);
        let loaded = load_from_memory(&jpeg, &limits()).unwrap();
        let upright = loaded.image.to_rgb8();
        assert_eq!(upright.dimensions(), (20, 40));
        let top = upright.get_pixel(10, 5).0;
        let bottom = upright.get_pixel(10, 35).0;
        assert!(top[0] > 200 && top[2] < 60, "top is {top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "bottom is {bottom:?}");
    }

    #[test]
    fn icc_profile_survives_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        // Not a valid profile; the formats carry it as opaque bytes.
        let icc: Vec<u8> = (0..560_u32).map(|i| (i * 7 % 251) as u8).collect();
        let image = DynamicImage::ImageRgb8(gradient_rgb(16, 16));
        for name in ["a.png", "a.tif", "a.jpg", "a.webp"] {
            let path = dir.path().join(name);
            save(&image, &path, None, Some(&icc)).unwrap();
            let loaded = load(&path, &limits()).unwrap();
            assert_eq!(loaded.icc_profile.as_deref(), Some(&icc[..]), "{name}");
        }
    }

    // ---- bad input ----

    #[test]
    fn truncated_png_is_reported_as_truncated() {
        let png = encoded(
            &DynamicImage::ImageRgb8(noise_rgb(64, 64, 2)),
            ImageFormat::Png,
        );
        for cut in [png.len() / 2, png.len() - 20, 40] {
            let err = load_from_memory(&png[..cut], &limits()).unwrap_err();
            assert!(
                matches!(err, Error::Truncated { .. } | Error::Decode { .. }),
                "cut at {cut}: {err:?}"
            );
        }
        let err = load_from_memory(&png[..png.len() / 2], &limits()).unwrap_err();
        assert!(matches!(err, Error::Truncated { .. }), "{err:?}");
    }

    #[test]
    fn truncated_baseline_jpeg_is_reported_as_truncated() {
        let jpeg = encoded(
            &DynamicImage::ImageRgb8(noise_rgb(64, 64, 3)),
            ImageFormat::Jpeg,
        );
        for cut in [jpeg.len() * 6 / 10, jpeg.len() * 95 / 100, 300] {
            match load_from_memory(&jpeg[..cut], &limits()) {
                Err(Error::Truncated { .. }) => {}
                other => panic!(
                    "cut at {cut}: expected Truncated, got {:?}",
                    other.map(|_| ())
                ),
            }
        }
        // Only the EOI marker missing: every pixel is there, so it loads.
        let whole = load_from_memory(&jpeg, &limits()).unwrap();
        let no_eoi = load_from_memory(&jpeg[..jpeg.len() - 2], &limits()).unwrap();
        assert_eq!(no_eoi.image, whole.image);
    }

    #[test]
    fn truncated_progressive_jpeg_is_reported_as_truncated() {
        let image = noise_rgb(64, 64, 4);
        let mut jpeg = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut jpeg, 90);
        encoder.set_progressive(true);
        encoder
            .encode(image.as_raw(), 64, 64, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        assert!(load_from_memory(&jpeg, &limits()).is_ok());
        let err = load_from_memory(&jpeg[..jpeg.len() * 7 / 10], &limits()).unwrap_err();
        assert!(matches!(err, Error::Truncated { .. }), "{err:?}");
    }

    #[test]
    fn jpeg_with_padding_or_junk_after_eoi_loads() {
        let mut jpeg = encoded(
            &DynamicImage::ImageRgb8(gradient_rgb(32, 32)),
            ImageFormat::Jpeg,
        );
        jpeg.extend([0, 0, 0, b'\n']);
        assert!(load_from_memory(&jpeg, &limits()).is_ok());
        jpeg.extend(b"vendor trailer data after the end of the image");
        assert!(load_from_memory(&jpeg, &limits()).is_ok());
    }

    #[test]
    fn empty_file_is_reported_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.png");
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(
            load(&path, &limits()),
            Err(Error::EmptyFile { .. })
        ));
        let err = load_from_memory(&[], &limits()).unwrap_err();
        assert!(matches!(err, Error::EmptyFile { .. }));
        assert!(err.to_string().contains("<memory>"), "{err}");
    }

    #[test]
    fn garbage_is_reported_as_unsupported() {
        let garbage: Vec<u8> = (0..1000_u32).map(|i| (i * 31 % 256) as u8).collect();
        assert!(matches!(
            load_from_memory(&garbage, &limits()),
            Err(Error::UnsupportedFormat { .. })
        ));
        assert!(matches!(
            load_from_memory(b"%PDF-1.7 not an image", &limits()),
            Err(Error::UnsupportedFormat { .. })
        ));
    }

    #[test]
    fn signature_with_corrupt_body_is_a_decode_error() {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend([0xAB; 100]);
        let err = load_from_memory(&png, &limits()).unwrap_err();
        assert!(
            matches!(err, Error::Decode { .. } | Error::Truncated { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn missing_file_and_directory_are_read_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = load(&dir.path().join("missing.png"), &limits());
        assert!(matches!(missing, Err(Error::Read { .. })));
        assert!(matches!(
            load(dir.path(), &limits()),
            Err(Error::Read { .. })
        ));
    }

    #[test]
    fn png_named_jpg_loads_as_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("actually_png.jpg");
        let image = DynamicImage::ImageRgb8(noise_rgb(10, 10, 5));
        std::fs::write(&path, encoded(&image, ImageFormat::Png)).unwrap();
        let loaded = load(&path, &limits()).unwrap();
        assert_eq!(loaded.format, ImageFormat::Png);
        assert_eq!(loaded.image, image);
    }

    #[test]
    fn png_header_claiming_60000_squared_is_too_large() {
        let png = craft_png((60_000, 60_000), 8, 2, &[], &[0; 64]);
        let start = Instant::now();
        let err = load_from_memory(&png, &limits()).unwrap_err();
        match err {
            Error::TooLarge { width, height, .. } => assert_eq!((width, height), (60_000, 60_000)),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(start.elapsed().as_secs() < 2);
    }

    #[test]
    fn jpeg_header_claiming_65000_squared_is_too_large() {
        let mut jpeg = encoded(
            &DynamicImage::ImageRgb8(gradient_rgb(16, 16)),
            ImageFormat::Jpeg,
        );
        // SOF0: FF C0, length (2), precision (1), height (2), width (2).
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]);
        let start = Instant::now();
        let err = load_from_memory(&jpeg, &limits()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::TooLarge {
                    width: 65_000,
                    height: 65_000,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(start.elapsed().as_secs() < 2);
    }

    #[test]
    fn small_file_of_a_big_image_respects_the_memory_limit() {
        // 4000 × 4000 zeros compress to a few kB but need 16 MB decoded.
        let zeros = DynamicImage::ImageLuma8(image::GrayImage::new(4000, 4000));
        let png = encoded(&zeros, ImageFormat::Png);
        assert!(png.len() < 100_000);
        let tight = LoadLimits {
            max_pixels: LoadLimits::DEFAULT_MAX_PIXELS,
            max_alloc_bytes: 1_000_000,
        };
        let err = load_from_memory(&png, &tight).unwrap_err();
        assert!(
            matches!(
                err,
                Error::TooLarge {
                    width: 4000,
                    height: 4000,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("memory"), "{err}");
        // And the pixel limit alone.
        let few_pixels = LoadLimits {
            max_pixels: 1_000_000,
            ..LoadLimits::default()
        };
        assert!(matches!(
            load_from_memory(&png, &few_pixels),
            Err(Error::TooLarge { .. })
        ));
    }

    /// A reader that panics, standing in for a decoder bug.
    struct PanickingReader;

    impl Read for PanickingReader {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            panic!("decoder bug")
        }
    }
    impl BufRead for PanickingReader {
        fn fill_buf(&mut self) -> io::Result<&[u8]> {
            panic!("decoder bug")
        }
        fn consume(&mut self, _: usize) {}
    }
    impl Seek for PanickingReader {
        fn seek(&mut self, _: SeekFrom) -> io::Result<u64> {
            Ok(10)
        }
    }

    #[test]
    fn decoder_panic_becomes_decode_error() {
        let err = decode_guarded(PanickingReader, Path::new("x.png"), &limits()).unwrap_err();
        match err {
            Error::Decode { source, .. } => assert!(source.to_string().contains("decoder bug")),
            other => panic!("expected Decode, got {other:?}"),
        }
    }

    // ---- saving ----

    #[test]
    fn save_refuses_to_overwrite_input_under_any_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("original.png");
        let image = DynamicImage::ImageRgb8(noise_rgb(8, 8, 6));
        save(&image, &input, None, None).unwrap();
        let before = std::fs::read(&input).unwrap();
        let other = DynamicImage::ImageRgb8(noise_rgb(8, 8, 7));

        let dotted = dir.path().join(".").join("original.png");
        let dotdot = dir.path().join("sub").join("..").join("original.png");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let mut outputs = vec![input.clone(), dotted, dotdot];
        #[cfg(unix)]
        {
            let link = dir.path().join("link.png");
            std::os::unix::fs::symlink(&input, &link).unwrap();
            outputs.push(link);
            let hard = dir.path().join("hard.png");
            std::fs::hard_link(&input, &hard).unwrap();
            outputs.push(hard);
        }
        for output in &outputs {
            let err = save(&other, output, Some(&input), None).unwrap_err();
            assert!(
                matches!(err, Error::WouldOverwriteInput { .. }),
                "{output:?}: {err:?}"
            );
        }
        // Also when the input is named through a symlink.
        #[cfg(unix)]
        {
            let link = dir.path().join("link.png");
            let err = save(&other, &input, Some(&link), None).unwrap_err();
            assert!(matches!(err, Error::WouldOverwriteInput { .. }));
        }
        assert_eq!(std::fs::read(&input).unwrap(), before);

        // A different output is fine, and replaces an existing file.
        let output = dir.path().join("marked.png");
        save(&image, &output, Some(&input), None).unwrap();
        save(&other, &output, Some(&input), None).unwrap();
        assert_eq!(load(&output, &limits()).unwrap().image, other);
    }

    #[test]
    fn failed_saves_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let image = DynamicImage::ImageRgb8(noise_rgb(8, 8, 8));

        let missing = dir.path().join("missing").join("out.png");
        assert!(matches!(
            save(&image, &missing, None, None),
            Err(Error::Write { .. })
        ));

        let empty = DynamicImage::new_rgb8(0, 0);
        let err = save(&empty, &dir.path().join("empty.png"), None, None).unwrap_err();
        assert!(
            matches!(err, Error::Encode { .. } | Error::Write { .. }),
            "{err:?}"
        );

        // A directory in the way of the rename.
        std::fs::create_dir(dir.path().join("taken.png")).unwrap();
        assert!(matches!(
            save(&image, &dir.path().join("taken.png"), None, None),
            Err(Error::Write { .. })
        ));

        assert!(matches!(
            save(&image, &dir.path().join("out.gif"), None, None),
            Err(Error::Encode { .. })
        ));
        assert_eq!(dir_entries(dir.path()), ["taken.png"]);
    }

    #[cfg(unix)]
    #[test]
    fn saved_files_are_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.png");
        save(&DynamicImage::new_rgb8(4, 4), &path, None, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        #[test]
        fn corrupted_files_never_panic(
            which in 0_usize..4,
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..8),
            cut in proptest::prelude::any::<usize>(),
        ) {
            let image = DynamicImage::ImageRgb8(noise_rgb(24, 16, 9));
            let format = [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Tiff, ImageFormat::WebP][which];
            let mut bytes = encoded(&image, format);
            for (at, value) in edits {
                let len = bytes.len();
                bytes[at % len] = value;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            let _ = load_from_memory(&bytes, &limits());
        }
    }
}
