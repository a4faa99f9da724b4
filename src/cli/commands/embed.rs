//! `leakmark embed --key KEY --payload N INPUT OUTPUT`: mark one image
//! without a ledger.

use std::path::Path;

use anyhow::anyhow;
use leakmark::{embed, imageio};

use crate::cli::{Context, Status};

/// Marks `input` with `payload` and writes `output`.
pub fn run(ctx: &Context, payload: &str, input: &Path, output: &Path) -> anyhow::Result<Status> {
    // Checked before anything is read, so a typo costs nothing.
    let serial = parse_payload(payload)?;
    // Fails early on an unsupported extension, before the slow part.
    imageio::output_format(output)?;
    let key = ctx.load_key()?;
    let loaded = imageio::load(input, &ctx.limits())?;
    if let Some(note) = &loaded.frames_note {
        eprintln!("note: {}: {note}", input.display());
    }
    let variant = embed::variant_for_image(&key, &loaded.image);
    let marked = embed::embed(&key, &loaded.image, serial, variant)
        .map_err(|e| anyhow::Error::new(e).context(format!("cannot mark {}", input.display())))?;
    imageio::save(
        &marked.image,
        output,
        Some(input),
        loaded.icc_profile.as_deref(),
    )?;
    println!(
        "wrote {}: payload {serial}, PSNR {:.1} dB, pattern variant {}, chip {:.2} px, strength {:.2}",
        output.display(),
        marked.psnr_db,
        marked.variant,
        marked.chip_px,
        marked.strength
    );
    Ok(Status::Success)
}

/// Reads a payload: a decimal whole number with 0 <= N < 2^32.
fn parse_payload(text: &str) -> anyhow::Result<u32> {
    let digits = text.trim();
    let unsigned = digits.strip_prefix(['-', '+']).unwrap_or(digits);
    if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
        return Err(anyhow!(
            "payload {text:?} is not a whole number: give a decimal N with 0 <= N < 2^32"
        ));
    }
    if digits.starts_with('-') && unsigned.bytes().any(|b| b != b'0') {
        return Err(leakmark::Error::PayloadRange(text.to_string()).into());
    }
    unsigned
        .parse::<u32>()
        .map_err(|_| leakmark::Error::PayloadRange(text.to_string()).into())
}

#[cfg(test)]
mod tests {
    use super::parse_payload;

    #[test]
    fn payload_accepts_the_u32_range_only() {
        assert_eq!(parse_payload("0").ok(), Some(0));
        assert_eq!(parse_payload("4294967295").ok(), Some(u32::MAX));
        assert_eq!(parse_payload("+7").ok(), Some(7));
        assert_eq!(parse_payload("-0").ok(), Some(0));
        for bad in [
            "-1",
            "4294967296",
            "99999999999999999999999",
            "1e3",
            "0x10",
            "",
            "abc",
            "1.5",
        ] {
            let err = parse_payload(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("2^32"), "{bad}: {err}");
        }
    }
}
