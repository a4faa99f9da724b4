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
/// Behaves exactly like [`load`]; meant for tests and fuzzing.
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
        .map_err(|e| classify(e, path, format, None, limits))?;

    let (width, height) = decoder.dimensions();
    let dims = Some((width, height));
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(too_large_pixels(path, width, height, limits));
    }
    image_limits
        .reserve(decoder.total_bytes())
        .map_err(|e| classify(e, path, format, dims, limits))?;

    let orientation = decoder
        .orientation()
        .map_err(|e| classify(e, path, format, dims, limits))?;
    let icc_profile = decoder
        .icc_profile()
        .map_err(|e| classify(e, path, format, dims, limits))?;
    let mut image =
        DynamicImage::from_decoder(decoder).map_err(|e| classify(e, path, format, dims, limits))?;

    if format == ImageFormat::Jpeg {
        check_jpeg_complete(&mut reader, len, path, limits)?;
    }
    image.apply_orientation(orientation);

    Ok(Loaded {
        image,
        format,
        icc_profile,
        frames_note,
    })
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
) -> Error {
    let path = path.to_path_buf();
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
                    limit: format!(
                        "{} bytes of decoding memory; raise --max-alloc-bytes",
                        limits.max_alloc_bytes
                    ),
                }
            }
        }
        ImageError::IoError(ref e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Error::Truncated {
                path,
                format: format_name(format).to_owned(),
                source: Some(error),
            }
        }
        ImageError::Unsupported(ref u) if matches!(u.kind(), UnsupportedErrorKind::Format(_)) => {
            Error::UnsupportedFormat { path }
        }
        source => Error::Decode { path, source },
    }
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
/// Files that end otherwise (some cameras append data after EOI) get a
/// strict-mode decode, which tells them apart from truncated ones.
fn check_jpeg_complete<R: BufRead + Seek>(
    reader: &mut R,
    len: u64,
    path: &Path,
    limits: &LoadLimits,
) -> Result<()> {
    // Long enough to step over any padding seen in practice.
    const TAIL_BYTES: u64 = 4096;
    let read_err = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let tail_len = len.min(TAIL_BYTES);
    reader
        .seek(SeekFrom::Start(len - tail_len))
        .map_err(read_err)?;
    let mut tail = Vec::new();
    reader
        .by_ref()
        .take(tail_len)
        .read_to_end(&mut tail)
        .map_err(read_err)?;
    let end = tail
        .iter()
        .rposition(|&b| b != 0 && !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    if tail[..end].ends_with(&[0xFF, 0xD9]) {
        return Ok(());
    }

    reader.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let side_px = usize::try_from(limits.max_pixels).unwrap_or(usize::MAX);
    let options = zune_jpeg::zune_core::options::DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(side_px)
        .set_max_height(side_px);
    let mut strict = zune_jpeg::JpegDecoder::new_with_options(&mut *reader, options);
    match strict.decode() {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::Truncated {
            path: path.to_path_buf(),
            format: "JPEG".to_owned(),
            source: Some(ImageError::Decoding(DecodingError::new(
                ImageFormatHint::Exact(ImageFormat::Jpeg),
                format!("no end-of-image marker, and a strict decode fails: {e}"),
            ))),
        }),
    }
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
    let old_permissions = std::fs::metadata(output).ok().map(|m| m.permissions());

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

/// JPEG quality of [`save`]: 95 keeps the mark's mid-frequency energy while
/// staying near a tenth of the PNG size for photos.
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
