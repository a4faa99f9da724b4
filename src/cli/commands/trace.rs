//! `leakmark trace LEAK...|DIR [--json]`: find the mark in leaked images
//! and name the copy, its recipient and the recipient's chain up the
//! supplier tree, recording every trace in the ledger.
//!
//! Every copy in the ledger (issued, or reserved by a run that may have
//! died after writing the file) is tested as a hypothesis, which is more
//! robust than decoding bits; the detector's blind decoding still runs for
//! serials the ledger does not know.

use std::path::{Path, PathBuf};

use leakmark::detect::{self, DetectOptions, Detection, KnownCopy, MIN_LEAK_PX};
use leakmark::embed::chip_px_for;
use leakmark::imageio::{self, LoadLimits};
use leakmark::ledger::{self, IssuedCopy, Ledger, Supplier};
use leakmark::SecretKey;
use serde_json::Value;

use super::detect::{detection_json, path_value, to_value, Tally};
use crate::cli::output::{self, JsonObject, PROGRESS_MIN_FILES};
use crate::cli::{key_and_ledger, Context, Status};

/// Traces every leak; prints one line (or JSON object) each.
pub fn run(ctx: &Context, inputs: &[PathBuf], json: bool) -> anyhow::Result<Status> {
    let (key, mut ledger) = key_and_ledger(ctx)?;
    let files = output::expand_inputs(inputs)?;
    let known = ledger.issued_copies(true)?;
    let options = detect_options(&known);
    let limits = ctx.limits();
    let bar = output::progress(files.len(), PROGRESS_MIN_FILES, "tracing");
    let mut tally = Tally::default();
    output::for_each_ordered(
        &files,
        |path| trace_file(&key, path, &limits, &options),
        |_, path, result| {
            bar.inc(1);
            let outcome = result.and_then(|leak| {
                if let Some(note) = &leak.frames_note {
                    output::note_line(&bar, &format!("{}: {note}", path.display()));
                }
                let report = Report::build(&ledger, leak.detection, known.len())?;
                let obj = report.json(path);
                let recorded = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                ledger.record_trace(&recorded, &leak.sha256, &obj.to_string())?;
                Ok((report, obj))
            });
            match outcome {
                Ok((report, obj)) => {
                    tally.found |= report.detection.detected;
                    let line = if json {
                        obj.to_string()
                    } else {
                        report.human(path)
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

/// Traces one leak against every copy in the ledger, records the trace in
/// the ledger, and returns the report: the same steps as `trace`, for
/// `demo`, which needs the answer and not only its printed line.
pub fn trace_one(
    key: &SecretKey,
    ledger: &mut Ledger,
    path: &Path,
    limits: &LoadLimits,
) -> anyhow::Result<Report> {
    let known = ledger.issued_copies(true)?;
    let options = detect_options(&known);
    let leak = output::guarded(|| trace_file(key, path, limits, &options))?;
    let report = Report::build(ledger, leak.detection, known.len())?;
    let recorded = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    ledger.record_trace(&recorded, &leak.sha256, &report.json(path).to_string())?;
    Ok(report)
}

#[allow(clippy::needless_update)] // The detector may grow options; keep their defaults.
fn detect_options(known: &[IssuedCopy]) -> DetectOptions {
    DetectOptions {
        known_copies: known
            .iter()
            .map(|c| KnownCopy {
                variant: u32::from(c.variant),
                serial: c.serial,
            })
            .collect(),
        ..DetectOptions::default()
    }
}

/// What the worker found in one leak.
struct Leak {
    sha256: String,
    detection: Detection,
    frames_note: Option<String>,
}

fn trace_file(
    key: &SecretKey,
    path: &Path,
    limits: &LoadLimits,
    options: &DetectOptions,
) -> anyhow::Result<Leak> {
    let loaded = imageio::load(path, limits)?;
    let sha256 = ledger::sha256_file(path)?;
    let detection = detect::detect(key, &loaded.image, options);
    Ok(Leak {
        sha256,
        detection,
        frames_note: loaded.frames_note,
    })
}

/// A detection joined with what the ledger knows about its serial.
pub struct Report {
    /// What the detector found.
    pub detection: Detection,
    /// The copy carrying the serial, if the ledger has it.
    pub copy: Option<IssuedCopy>,
    /// The recipient and its ancestors up to the tier-one.
    pub chain: Vec<Supplier>,
    /// Chip size of the issued copy, pixels (from the document's size).
    pub issued_chip_px: Option<f64>,
    /// Copies tested as hypotheses.
    pub copies_tested: usize,
}

impl Report {
    fn build(ledger: &Ledger, detection: Detection, copies_tested: usize) -> anyhow::Result<Self> {
        let copy = match detection.serial.filter(|_| detection.detected) {
            Some(serial) => ledger.copy_by_serial(serial)?,
            None => None,
        };
        let (chain, issued_chip_px) = match &copy {
            Some(c) => {
                let chain = ledger.chain(c.recipient_id)?;
                let chip = ledger
                    .document(c.document_id)?
                    .map(|d| chip_px_for(d.width, d.height));
                (chain, chip)
            }
            None => (Vec::new(), None),
        };
        Ok(Report {
            detection,
            copy,
            chain,
            issued_chip_px,
            copies_tested,
        })
    }

    /// The chain as `vendor -> tier-one`.
    pub fn chain_text(&self) -> String {
        self.chain
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(" -> ")
    }

    /// One line for people.
    pub fn human(&self, path: &Path) -> String {
        let d = &self.detection;
        let path = path.display();
        let p = output::format_p(d.false_alarm_probability);
        let geometry = d
            .geometry
            .as_ref()
            .map(|g| format!(", {}", output::format_geometry(g, self.issued_chip_px)))
            .unwrap_or_default();
        if d.too_small {
            return format!(
                "{path}: too small to decide (needs at least {MIN_LEAK_PX} px on the short side)"
            );
        }
        if !d.detected {
            return format!(
                "{path}: no mark found (tried blind decoding and {} issued cop{} over {} geometric candidates; best p = {p})",
                self.copies_tested,
                if self.copies_tested == 1 { "y" } else { "ies" },
                d.candidates
            );
        }
        let serial = d.serial.map_or_else(|| "?".into(), |s| s.to_string());
        match &self.copy {
            Some(copy) => format!(
                "{path}: {} issued to {} (chain: {}), serial {serial}, p = {p}, {} mode{geometry}",
                copy.document_name,
                copy.recipient_name,
                self.chain_text(),
                d.mode
            ),
            None => format!(
                "{path}: mark found, serial {serial}, p = {p}, {} mode{geometry}; this ledger has no copy \
                 with that serial (marked by `leakmark embed`, or issued from another ledger)",
                d.mode
            ),
        }
    }

    fn json(&self, path: &Path) -> JsonObject {
        let mut obj = JsonObject::default();
        obj.push("path", path_value(path));
        obj.push("detected", Value::Bool(self.detection.detected));
        let copy = self.copy.as_ref();
        obj.push("in_ledger", Value::Bool(copy.is_some()));
        obj.push("document", to_value(&copy.map(|c| &c.document_name)));
        obj.push("recipient", to_value(&copy.map(|c| &c.recipient_name)));
        let chain: Vec<&str> = self.chain.iter().map(|s| s.name.as_str()).collect();
        obj.push("chain", to_value(&chain));
        obj.push(
            "document_sha256",
            to_value(&copy.map(|c| &c.document_sha256)),
        );
        obj.push("issued_at", to_value(&copy.map(|c| c.time)));
        obj.push(
            "copy_path",
            to_value(&copy.and_then(|c| c.output_path.as_ref())),
        );
        obj.push("copies_tested", to_value(&self.copies_tested));
        let scale = self
            .detection
            .geometry
            .as_ref()
            .zip(self.issued_chip_px)
            .map(|(g, chip)| (g.px_per_chip[0] + g.px_per_chip[1]) / 2.0 / chip);
        obj.push("scale", to_value(&scale));
        for (name, value) in detection_json(path, &self.detection).into_fields() {
            obj.push_new(&name, value);
        }
        obj
    }
}
