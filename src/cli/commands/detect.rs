//! `leakmark detect --key KEY [--json] [--original FILE] INPUT...`: blind
//! detection (or informed, against one original), in parallel over files,
//! one line per input.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use leakmark::detect::{self, DetectOptions, Detection, MIN_LEAK_PX};
use leakmark::informed::{self, InformedOptions};
use leakmark::plane::Plane;
use leakmark::{embed, imageio, ledger, pattern, SecretKey};
use serde::Serialize;
use serde_json::Value;

use crate::cli::output::{self, JsonObject, PROGRESS_MIN_FILES};
use crate::cli::{Context, Status};

/// Looks for a mark in every input; prints one line (or JSON object) each.
pub fn run(
    ctx: &Context,
    inputs: &[PathBuf],
    json: bool,
    original: Option<&Path>,
) -> anyhow::Result<Status> {
    let key = ctx.load_key()?;
    let files = output::expand_inputs(inputs)?;
    let limits = ctx.limits();
    let original = original
        .map(|p| load_original(&key, p, &limits))
        .transpose()?;
    let bar = output::progress(files.len(), PROGRESS_MIN_FILES, "detecting");
    let mut tally = Tally::default();
    output::for_each_ordered(
        &files,
        |path| detect_file(&key, path, &limits, original.as_ref()),
        |_, path, result| {
            bar.inc(1);
            match result {
                Ok((detection, note)) => {
                    if let Some(note) = note {
                        output::note_line(&bar, &format!("{}: {note}", path.display()));
                    }
                    tally.found |= detection.detected;
                    let line = if json {
                        detection_json(path, &detection).to_string()
                    } else {
                        human_line(path, &detection)
                    };
                    output::out_line(&bar, &line)
                }
                Err(err) => tally.report_error(&bar, path, &err, json),
            }
        },
    )?;
    bar.finish_and_clear();
    Ok(tally.status())
}

/// What the files of a batch added up to.
#[derive(Default)]
pub struct Tally {
    /// A mark was found in at least one file.
    pub found: bool,
    /// At least one file could not be processed.
    pub failed: bool,
}

impl Tally {
    /// grep's rule: an error wins, then found, then nothing found.
    pub fn status(&self) -> Status {
        if self.failed {
            Status::Failed
        } else if self.found {
            Status::Success
        } else {
            Status::NothingFound
        }
    }

    /// A file that could not be processed: counts it, prints its `error:`
    /// line, and with `--json` its JSON object, so the batch goes on.
    pub fn report_error(
        &mut self,
        bar: &indicatif::ProgressBar,
        path: &Path,
        err: &anyhow::Error,
        json: bool,
    ) -> anyhow::Result<()> {
        self.failed = true;
        output::error_line(bar, err);
        if json {
            output::out_line(bar, &error_json(path, err).to_string())?;
        }
        Ok(())
    }
}

/// An original for informed mode: its luma and the two pattern variants a
/// copy of it may carry (`issue` derives it from the file's SHA-256,
/// `embed` from the pixels); both are read, and both charged.
struct Original {
    luma: Plane,
    variants: [u32; 2],
}

fn load_original(
    key: &SecretKey,
    path: &Path,
    limits: &imageio::LoadLimits,
) -> anyhow::Result<Original> {
    let loaded = imageio::load(path, limits)
        .with_context(|| format!("cannot use {} as the original", path.display()))?;
    let sha = ledger::sha256_file(path)?;
    let digest: Vec<u8> = (0..sha.len() / 2)
        .filter_map(|i| u8::from_str_radix(sha.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    Ok(Original {
        luma: Plane::luma(&loaded.image),
        variants: [
            pattern::document_variant(key, &digest),
            embed::variant_for_image(key, &loaded.image),
        ],
    })
}

fn detect_file(
    key: &SecretKey,
    path: &Path,
    limits: &imageio::LoadLimits,
    original: Option<&Original>,
) -> anyhow::Result<(Detection, Option<String>)> {
    let loaded = imageio::load(path, limits)?;
    let detection = match original {
        None => detect::detect(key, &loaded.image, &DetectOptions::default()),
        Some(o) => {
            let found = informed::detect_informed_luma(
                key,
                &Plane::luma(&loaded.image),
                &o.luma,
                o.variants[0],
                &InformedOptions {
                    also_variants: vec![o.variants[1]],
                    ..InformedOptions::default()
                },
            );
            let mut d = found.detection;
            if found.registration.is_none() && !d.too_small {
                let note = "the input does not register on the original (not made from it, or too little of it left)";
                return Ok((d, Some(note.to_string())));
            }
            if let (Some(r), true) = (found.registration, d.detected) {
                d.candidates = r.candidates;
            }
            d
        }
    };
    Ok((detection, loaded.frames_note))
}

fn human_line(path: &Path, d: &Detection) -> String {
    let path = path.display();
    if d.detected {
        let serial = d.serial.map_or_else(|| "?".to_string(), |s| s.to_string());
        let geometry = d
            .geometry
            .as_ref()
            .map(|g| format!(", {}", output::format_geometry(g, None)))
            .unwrap_or_default();
        let mode = if d.mode == "informed" {
            ", informed mode"
        } else {
            ""
        };
        format!(
            "{path}: payload {serial}, p = {}{mode}{geometry}",
            output::format_p(d.false_alarm_probability)
        )
    } else if d.too_small {
        format!("{path}: too small to decide (needs at least {MIN_LEAK_PX} px on the short side)")
    } else {
        format!(
            "{path}: no mark found ({} geometric candidates tried, best p = {})",
            d.candidates,
            output::format_p(d.false_alarm_probability)
        )
    }
}

/// The JSON fields of one detection, in this order: `path`, `detected`,
/// `payload`, `false_alarm_probability` (null unless detected),
/// `best_false_alarm_probability`, then every other field of [`Detection`].
pub fn detection_json(path: &Path, d: &Detection) -> JsonObject {
    let mut obj = JsonObject::default();
    obj.push("path", path_value(path));
    obj.push("detected", Value::Bool(d.detected));
    obj.push("payload", to_value(&d.serial));
    let p = d.detected.then_some(d.false_alarm_probability);
    obj.push("false_alarm_probability", to_value(&p));
    obj.push(
        "best_false_alarm_probability",
        to_value(&d.false_alarm_probability),
    );
    if let Value::Object(fields) = to_value(d) {
        for (k, v) in fields {
            // `false_alarm_probability` is already there, with its own rule.
            obj.push_new(&k, v);
        }
    }
    obj
}

/// The JSON fields of a file that could not be processed.
pub fn error_json(path: &Path, err: &anyhow::Error) -> JsonObject {
    let mut obj = JsonObject::default();
    obj.push("path", path_value(path));
    obj.push("detected", Value::Bool(false));
    obj.push("payload", Value::Null);
    obj.push("false_alarm_probability", Value::Null);
    obj.push("error", Value::String(format!("{err:#}")));
    obj
}
/// A path as JSON text (lossy only for names that are not Unicode).
pub fn path_value(path: &Path) -> Value {
    Value::String(path.to_string_lossy().into_owned())
}

/// Serializes plain data; these types cannot fail to serialize.
pub fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}
