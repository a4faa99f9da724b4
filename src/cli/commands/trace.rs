//! `leakmark trace LEAK...|DIR [--json]`: find the mark in leaked images
//! and name the copy, its recipient and the recipient's chain up the
//! supplier tree, recording every trace in the ledger.
//!
//! Every copy in the ledger (issued, or reserved by a run that may have
//! died after writing the file) is tested as a hypothesis, which is more
//! robust than decoding bits; the detector's blind decoding still runs for
//! serials the ledger does not know.
//!
//! When the original of a document is at hand (the ledger's archived path,
//! if its SHA-256 still matches, or a file in `--originals DIR` with the
//! document's SHA-256), the leak is first read in informed mode against
//! the originals that look most like it; blind/ledger mode runs when that
//! finds nothing. Every hypothesis of both modes is charged in every
//! reported probability.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use leakmark::detect::{self, DetectOptions, Detection, KnownCopy, MIN_LEAK_PX};
use leakmark::embed::chip_px_for;
use leakmark::imageio::{self, LoadLimits};
use leakmark::informed::{self, InformedOptions};
use leakmark::ledger::{self, Document, IssuedCopy, Ledger, Supplier};
use leakmark::plane::Plane;
use leakmark::register::{Descriptor, Registration};
use leakmark::{stats, SecretKey};
use rayon::prelude::*;
use serde_json::Value;

use super::detect::{detection_json, path_value, to_value, Tally};
use super::evidence::EvidenceDir;
use crate::cli::output::{self, JsonObject, PROGRESS_MIN_FILES};
use crate::cli::{key_and_ledger, Context, Status};

/// Traces every leak; prints one line (or JSON object) each.
pub fn run(
    ctx: &Context,
    inputs: &[PathBuf],
    json: bool,
    originals_dir: Option<&Path>,
    report_dir: Option<&Path>,
) -> anyhow::Result<Status> {
    let (key, mut ledger) = key_and_ledger(ctx)?;
    let mut evidence = report_dir.map(EvidenceDir::create).transpose()?;
    let files = output::expand_inputs(inputs)?;
    let known = ledger.issued_copies(true)?;
    let options = detect_options(&ledger, &known)?;
    let limits = ctx.limits();
    let (originals, notes) = load_originals(&ledger, &known, originals_dir, &limits)?;
    let bar = output::progress(files.len(), PROGRESS_MIN_FILES, "tracing");
    for note in &notes {
        output::note_line(&bar, note);
    }
    let mut tally = Tally::default();
    output::for_each_ordered(
        &files,
        |path| trace_file(&key, path, &limits, &options, &originals),
        |_, path, result| {
            bar.inc(1);
            let outcome = result.and_then(|leak| {
                if let Some(note) = &leak.frames_note {
                    output::note_line(&bar, &format!("{}: {note}", path.display()));
                }
                let report = Report::build(&ledger, leak.detection, known.len(), leak.informed)?;
                let obj = report.json(path);
                let recorded = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                ledger.record_trace(&recorded, &leak.sha256, &obj.to_string())?;
                if let Some(note) = evidence
                    .as_mut()
                    .and_then(|e| e.add(path, &leak.sha256, &report, &limits))
                {
                    output::note_line(&bar, &format!("{}: {note}", path.display()));
                }
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
                Err(err) => {
                    if let Some(evidence) = &mut evidence {
                        evidence.add_error(path, &err);
                    }
                    tally.report_error(&bar, path, &err, json)
                }
            }
        },
    )?;
    bar.finish_and_clear();
    if let Some(evidence) = evidence {
        let written = evidence.finish()?;
        eprintln!("report written to {}", written.display());
    }
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
    let options = detect_options(ledger, &known)?;
    let (originals, _) = load_originals(ledger, &known, None, limits)?;
    let leak = output::guarded(|| trace_file(key, path, limits, &options, &originals))?;
    let report = Report::build(ledger, leak.detection, known.len(), leak.informed)?;
    let recorded = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    ledger.record_trace(&recorded, &leak.sha256, &report.json(path).to_string())?;
    Ok(report)
}

#[allow(clippy::needless_update)] // The detector may grow options; keep their defaults.
fn detect_options(ledger: &Ledger, known: &[IssuedCopy]) -> anyhow::Result<DetectOptions> {
    // The chip of every document a copy was issued from, so that an
    // unscaled crop of a copy is read at its document's chip.
    let issued_docs: HashSet<_> = known.iter().map(|c| c.document_id).collect();
    let issued_chip_px: Vec<f64> = ledger
        .documents()?
        .iter()
        .filter(|d| issued_docs.contains(&d.id))
        .map(|d| chip_px_for(d.width, d.height))
        .collect();
    Ok(DetectOptions {
        known_copies: known
            .iter()
            .map(|c| KnownCopy {
                variant: u32::from(c.variant),
                serial: c.serial,
            })
            .collect(),
        issued_chip_px,
        ..DetectOptions::default()
    })
}

/// What the worker found in one leak.
struct Leak {
    sha256: String,
    detection: Detection,
    informed: Option<InformedNote>,
    frames_note: Option<String>,
}

/// An archived original the ledger vouches for, ready for informed mode.
pub struct Original {
    document: Document,
    path: PathBuf,
    /// Its luma, when the originals fit in [`ORIGINALS_KEPT_BYTES`];
    /// otherwise read again for each leak it is tried on.
    luma: Option<Arc<Plane>>,
    descriptor: Descriptor,
    copies: Vec<KnownCopy>,
}

impl Original {
    /// Its luma: the kept one, or read from its file again, which must
    /// still have the ledger's SHA-256 (checked when the trace started; a
    /// file swapped since is not used). Read once, then hashed and decoded
    /// from the same bytes, so what is checked is what is used.
    fn luma(&self, limits: &LoadLimits) -> Option<Arc<Plane>> {
        if let Some(luma) = &self.luma {
            return Some(Arc::clone(luma));
        }
        let size = std::fs::metadata(&self.path).ok()?.len();
        if size > limits.max_alloc_bytes {
            return None;
        }
        let bytes = std::fs::read(&self.path).ok()?;
        if ledger::sha256_bytes(&bytes) != self.document.sha256 {
            return None;
        }
        let loaded = imageio::load_from_memory(&bytes, limits).ok()?;
        Some(Arc::new(Plane::luma(&loaded.image)))
    }
}

/// Luma kept in memory across leaks, bytes (f32 per pixel: 1 GiB holds
/// about 22 originals of 12 MP). A larger ledger of originals is read
/// from disk per leak, for the few originals tried on it.
const ORIGINALS_KEPT_BYTES: u64 = 1 << 30;

/// Originals registered per leak when the ledger holds more: the ones
/// whose global descriptor is closest to the leak's.
const ORIGINALS_PER_LEAK: usize = 3;

/// What informed mode did on one leak, for the report.
#[derive(Clone, Debug)]
pub struct InformedNote {
    /// The document whose original the leak was registered on.
    pub document: String,
    /// The original's file.
    pub original_path: PathBuf,
    /// The original's size, pixels.
    pub original_size: [u32; 2],
    /// The leak's size, pixels.
    pub leak_size: [u32; 2],
    /// Where the leak sits on it.
    pub registration: Registration,
}

/// The originals available for informed mode: for each document of the
/// ledger, a file in `dir` with the document's SHA-256, or else its
/// archived `original_path` if that file still has the recorded SHA-256.
/// A changed or missing archived original is not used; each gets a note.
pub fn load_originals(
    ledger: &Ledger,
    known: &[IssuedCopy],
    dir: Option<&Path>,
    limits: &LoadLimits,
) -> anyhow::Result<(Vec<Original>, Vec<String>)> {
    let documents = ledger.documents()?;
    let mut by_hash: Vec<(String, PathBuf)> = Vec::new();
    if let Some(dir) = dir {
        if !dir.is_dir() {
            anyhow::bail!(
                "--originals {} is not a folder: give the folder holding the archived originals",
                dir.display()
            );
        }
        for file in output::expand_inputs(&[dir.to_path_buf()])? {
            by_hash.push((ledger::sha256_file(&file)?, file));
        }
    }
    let mut notes = Vec::new();
    let mut found: Vec<(Document, PathBuf)> = Vec::new();
    for doc in documents {
        let path = if let Some((_, p)) = by_hash.iter().find(|(h, _)| *h == doc.sha256) {
            p.clone()
        } else if let Some(p) = &doc.original_path {
            match ledger::sha256_file(p) {
                Ok(h) if h == doc.sha256 => p.clone(),
                Ok(_) => {
                    notes.push(format!(
                        "the original of {} at {} has changed since it was issued (its SHA-256 differs \
                         from the ledger's); it is not used: restore the archived file or pass \
                         --originals DIR holding the unchanged original",
                        doc.name,
                        p.display()
                    ));
                    continue;
                }
                Err(_) => {
                    if dir.is_none() {
                        notes.push(format!(
                            "the original of {} is not at {} any more; tracing without it \
                             (pass --originals DIR to use informed mode)",
                            doc.name,
                            p.display()
                        ));
                    }
                    continue;
                }
            }
        } else {
            continue;
        };
        found.push((doc, path));
    }
    // Kept in memory only if all fit (sizes from the ledger, so the
    // decision comes before decoding); decoded in parallel, once each, for
    // the descriptors, so a large archive never sits in memory at once.
    let total: u64 = found
        .iter()
        .map(|(d, _)| u64::from(d.width) * u64::from(d.height) * 4)
        .sum();
    let keep = total <= ORIGINALS_KEPT_BYTES;
    let loaded: Vec<(Option<Arc<Plane>>, Descriptor)> = found
        .par_iter()
        .map(|(doc, path)| {
            let loaded = imageio::load(path, limits)
                .with_context(|| format!("cannot load the original of {}", doc.name))?;
            let luma = Plane::luma(&loaded.image);
            let descriptor = Descriptor::of(&luma);
            Ok((keep.then(|| Arc::new(luma)), descriptor))
        })
        .collect::<anyhow::Result<_>>()?;
    let out = found
        .into_iter()
        .zip(loaded)
        .map(|((doc, path), (luma, descriptor))| Original {
            copies: known
                .iter()
                .filter(|c| c.document_id == doc.id)
                .map(|c| KnownCopy {
                    variant: u32::from(c.variant),
                    serial: c.serial,
                })
                .collect(),
            luma,
            descriptor,
            path,
            document: doc,
        })
        .collect();
    Ok((out, notes))
}

fn trace_file(
    key: &SecretKey,
    path: &Path,
    limits: &LoadLimits,
    options: &DetectOptions,
    originals: &[Original],
) -> anyhow::Result<Leak> {
    let loaded = imageio::load(path, limits)?;
    let sha256 = ledger::sha256_file(path)?;
    let luma = Plane::luma(&loaded.image);
    let (detection, informed) = trace_luma(key, &luma, options, originals, limits);
    Ok(Leak {
        sha256,
        detection,
        informed,
        frames_note: loaded.frames_note,
    })
}

/// Informed mode on the originals most like the leak, then blind/ledger
/// mode if that found nothing. The charge is fixed before anything runs:
/// every informed reading that may be made plus the blind search.
fn trace_luma(
    key: &SecretKey,
    luma: &Plane,
    options: &DetectOptions,
    originals: &[Original],
    limits: &LoadLimits,
) -> (Detection, Option<InformedNote>) {
    let mut picked: Vec<&Original> = originals.iter().collect();
    if picked.len() > ORIGINALS_PER_LEAK {
        let d = Descriptor::of(luma);
        // Most similar first; ties to the ledger's order.
        let mut scored: Vec<(f64, usize)> = picked
            .iter()
            .enumerate()
            .map(|(i, o)| (d.similarity(&o.descriptor), i))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        picked = scored
            .iter()
            .take(ORIGINALS_PER_LEAK)
            .map(|&(_, i)| picked[i])
            .collect();
    }
    let blind = detect::hypotheses_charged(options);
    let informed_total: u64 = picked
        .iter()
        .map(|o| informed::informed_hypotheses(o.copies.len()))
        .sum();
    let total = blind.saturating_add(informed_total);
    let mut best: Option<(informed::InformedDetection, &Original)> = None;
    for original in &picked {
        // Gone or changed since the trace started: its readings stay charged.
        let Some(original_luma) = original.luma(limits) else {
            continue;
        };
        let own = informed::informed_hypotheses(original.copies.len());
        let found = informed::detect_informed_luma(
            key,
            luma,
            &original_luma,
            u32::from(original.document.variant),
            &InformedOptions {
                variant: Some(u32::from(original.document.variant)),
                known_copies: original.copies.clone(),
                extra_hypotheses: total - own,
                ..InformedOptions::default()
            },
        );
        let better = match &best {
            None => true,
            Some((b, _)) => {
                // A registration beats none; then the stronger score.
                (found.registration.is_some(), found.detection.score)
                    > (b.registration.is_some(), b.detection.score)
            }
        };
        if better {
            best = Some((found, original));
        }
    }
    let note = best.as_ref().and_then(|(f, o)| {
        f.registration.clone().map(|registration| InformedNote {
            document: o.document.name.clone(),
            original_path: o.path.clone(),
            original_size: [o.document.width, o.document.height],
            leak_size: [luma.width as u32, luma.height as u32],
            registration,
        })
    });
    if let Some((found, _)) = &best {
        if found.detection.detected {
            return (found.detection.clone(), note);
        }
    }
    let mut detection = detect::detect_luma(key, luma, options);
    if !picked.is_empty() {
        // The informed readings were tried too: charge them.
        detection.hypotheses = total;
        detection.false_alarm_probability = stats::false_alarm(detection.score, total);
        if detection.false_alarm_probability > stats::REPORT_THRESHOLD {
            detection.detected = false;
            detection.serial = None;
            detection.variant = None;
            detection.geometry = None;
        }
    }
    (detection, note)
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
    /// What informed mode did, when an original was at hand and the leak registered on it.
    pub informed: Option<InformedNote>,
}

impl Report {
    fn build(
        ledger: &Ledger,
        detection: Detection,
        copies_tested: usize,
        informed: Option<InformedNote>,
    ) -> anyhow::Result<Self> {
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
            informed,
        })
    }

    /// Where the leak sits on the original, for people: `covers x 10–900,
    /// y 0–640 of the original floor_plan.png (2002×1412)`.
    pub fn covered_text(&self) -> Option<String> {
        let n = self.informed.as_ref()?;
        let [x0, y0, x1, y1] = n.registration.covered;
        Some(format!(
            "covers x {x0}–{x1}, y {y0}–{y1} of the original {} ({}×{})",
            n.document, n.original_size[0], n.original_size[1]
        ))
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
        let mut geometry = d
            .geometry
            .as_ref()
            .map(|g| format!(", {}", output::format_geometry(g, self.issued_chip_px)))
            .unwrap_or_default();
        if d.mode == "informed" {
            if let Some(covered) = self.covered_text() {
                geometry = format!("{geometry}, {covered}");
            }
        }
        if d.too_small {
            return format!(
                "{path}: too small to decide (needs at least {MIN_LEAK_PX} px on the short side)"
            );
        }
        if !d.detected {
            let informed = self
                .informed
                .as_ref()
                .map(|n| {
                    format!(
                        ", and informed mode on the original of {} (registered, similarity {:.2})",
                        n.document, n.registration.similarity
                    )
                })
                .unwrap_or_default();
            return format!(
                "{path}: no mark found (tried blind decoding and {} issued cop{} over {} geometric candidates{informed}; best p = {p})",
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
        let informed = self.informed.as_ref();
        obj.push("original", to_value(&informed.map(|n| &n.original_path)));
        obj.push(
            "covered_box",
            to_value(&informed.map(|n| n.registration.covered)),
        );
        obj.push("registration", to_value(&informed.map(|n| &n.registration)));
        for (name, value) in detection_json(path, &self.detection).into_fields() {
            obj.push_new(&name, value);
        }
        obj
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leakmark::ledger::DocumentId;

    #[test]
    fn an_original_not_kept_in_memory_is_read_again_when_tried_and_only_if_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.png");
        let image = image::RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 5) as u8, 90])
        });
        image.save(&path).unwrap();
        let sha256 = ledger::sha256_file(&path).unwrap();
        let expected = Plane::luma(&image::DynamicImage::ImageRgb8(image));
        let original = |luma| Original {
            document: Document {
                id: DocumentId(1),
                name: "o.png".into(),
                sha256: sha256.clone(),
                original_path: None,
                width: 64,
                height: 48,
                variant: 0,
                created_at: 0,
            },
            path: path.clone(),
            luma,
            descriptor: Descriptor::of(&expected),
            copies: Vec::new(),
        };
        let limits = LoadLimits::default();
        let kept = original(Some(Arc::new(expected.clone())));
        let read = original(None);
        assert_eq!(kept.luma(&limits).unwrap().data, expected.data);
        assert_eq!(read.luma(&limits).unwrap().data, expected.data);
        // Swapped since the trace started (another valid image): not used.
        image::RgbImage::from_pixel(64, 48, image::Rgb([200, 10, 10]))
            .save(&path)
            .unwrap();
        assert!(read.luma(&limits).is_none());
        // Gone since the trace started: nothing to register on.
        std::fs::remove_file(&path).unwrap();
        assert!(read.luma(&limits).is_none());
        assert!(kept.luma(&limits).is_some());
    }
}
