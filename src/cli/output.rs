//! Shared output machinery: the ordered parallel loop over files, panic
//! containment per file, progress bars, and number formatting.
//!
//! Workers run on rayon's pool and never print; results come back to the
//! calling thread, which prints them (and writes the ledger) in input order,
//! so the output does not depend on the thread count.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use leakmark::detect::Geometry;
use rayon::prelude::*;

/// File extensions picked up when a folder is given (case-insensitive).
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "jfif", "tif", "tiff", "webp", "gif"];

/// Fewer files than this get no progress bar: the answer comes quickly.
pub const PROGRESS_MIN_FILES: usize = 4;

/// Runs `work` on every item in parallel and hands each result to `sink`
/// on the calling thread, in input order, as soon as it and all earlier
/// ones are ready.
///
/// `work` runs under [`guarded`], so a panic on one item becomes that
/// item's error. If `sink` fails, the remaining items are skipped and the
/// error is returned.
pub fn for_each_ordered<T, R, W, S>(items: &[T], work: W, mut sink: S) -> anyhow::Result<()>
where
    T: Sync,
    R: Send,
    W: Fn(&T) -> anyhow::Result<R> + Sync,
    S: FnMut(usize, &T, anyhow::Result<R>) -> anyhow::Result<()>,
{
    let cancelled = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        let cancelled = &cancelled;
        let work = &work;
        scope.spawn(move || {
            items
                .par_iter()
                .enumerate()
                .for_each_with(tx, |tx, (i, item)| {
                    if cancelled.load(Ordering::Relaxed) {
                        return;
                    }
                    // A closed channel means the sink gave up: nothing to do.
                    let _ = tx.send((i, guarded(|| work(item))));
                });
        });
        let mut pending = BTreeMap::new();
        let mut next = 0;
        for (i, result) in rx {
            pending.insert(i, result);
            while let Some(result) = pending.remove(&next) {
                // `next` < items.len(): every index comes from `items`.
                if let Err(e) = sink(next, &items[next], result) {
                    cancelled.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                next += 1;
            }
        }
        Ok(())
    })
}

/// Runs `f`, turning a panic into an error that says it is a bug.
pub fn guarded<R>(f: impl FnOnce() -> anyhow::Result<R>) -> anyhow::Result<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(anyhow!(
            "internal error ({}); this is a bug in leakmark: please report it, with the file if you can",
            super::panic_message(payload.as_ref())
        )),
    }
}

/// Expands folders into the image files below them (sorted, recursive,
/// symlinked folders not followed); other paths are kept as given, so a
/// missing file gets its own error later.
pub fn expand_inputs(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let before = files.len();
            walk(input, &mut files)?;
            if files.len() == before {
                return Err(anyhow!(
                    "folder {} holds no image files ({}); check the path",
                    input.display(),
                    IMAGE_EXTENSIONS.join(", ")
                ));
            }
        } else {
            files.push(input.clone());
        }
    }
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let read_err = |e: std::io::Error| {
        anyhow::Error::new(e).context(format!(
            "cannot list folder {}: check that it exists and is readable",
            dir.display()
        ))
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(read_err)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    entries.sort();
    for path in entries {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk(&path, files)?;
        } else if is_image_name(&path) {
            files.push(path);
        }
    }
    Ok(())
}

fn is_image_name(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'));
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    !hidden && ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

/// A progress bar on stderr, or a hidden one when stderr is not a terminal
/// or there are fewer than `min` items. Never drawn on stdout.
pub fn progress(len: usize, min: usize, what: &str) -> ProgressBar {
    if len < min || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{spinner} {msg} [{bar:30}] {pos}/{len} ({elapsed}, about {eta} left)",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Prints one line on stdout without tearing the progress bar.
///
/// # Errors
///
/// When stdout is closed or full (a broken pipe ends the program quietly).
pub fn out_line(bar: &ProgressBar, line: &str) -> anyhow::Result<()> {
    bar.suspend(|| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").and_then(|()| out.flush())
    })?;
    Ok(())
}

/// Prints one `error:` line on stderr (the error chain, one line).
pub fn error_line(bar: &ProgressBar, err: &anyhow::Error) {
    bar.suspend(|| eprintln!("error: {err:#}"));
}

/// Prints one `note:` line on stderr.
pub fn note_line(bar: &ProgressBar, note: &str) {
    bar.suspend(|| eprintln!("note: {note}"));
}

/// A probability for people: `0.31`, `0.0042`, `3.2e-40`.
pub fn format_p(p: f64) -> String {
    if p >= 1e-3 {
        format!("{p:.2}")
    } else if p > 0.0 {
        format!("{p:.1e}")
    } else {
        // Below f64's range: the statistic underflowed.
        "< 1e-300".to_string()
    }
}

/// The recovered geometry in a few words. `issued_chip_px`, when the
/// issued document's size is known, turns chip size into a scale factor.
pub fn format_geometry(g: &Geometry, issued_chip_px: Option<f64>) -> String {
    let mut parts = Vec::new();
    let px = (g.px_per_chip[0] + g.px_per_chip[1]) / 2.0;
    match issued_chip_px {
        Some(chip) if chip > 0.0 => parts.push(format!("scale {:.2}", px / chip)),
        _ => parts.push(format!("{px:.2} px/chip")),
    }
    parts.push(format!("rotation {:.1}°", g.rotation_deg));
    if g.mirrored {
        parts.push("mirrored".to_string());
    }
    if g.shear_deg.abs() >= 0.5 {
        parts.push(format!("shear {:.1}°", g.shear_deg));
    }
    let aspect = g.px_per_chip[0] / g.px_per_chip[1];
    if aspect.is_finite() && (aspect - 1.0).abs() >= 0.02 {
        parts.push(format!("aspect {aspect:.2}"));
    }
    parts.join(", ")
}

/// A JSON object that keeps its fields in insertion order (the most useful
/// fields first, for people reading `--json` output), printed on one line.
#[derive(Debug, Default, Clone)]
pub struct JsonObject {
    fields: Vec<(String, serde_json::Value)>,
}

impl JsonObject {
    /// Appends a field (the caller keeps names unique).
    pub fn push(&mut self, name: &str, value: serde_json::Value) {
        self.fields.push((name.to_string(), value));
    }

    /// Appends a field unless one of that name is already there.
    pub fn push_new(&mut self, name: &str, value: serde_json::Value) {
        if !self.fields.iter().any(|(n, _)| n == name) {
            self.push(name, value);
        }
    }
}

impl std::fmt::Display for JsonObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("{")?;
        for (i, (name, value)) in self.fields.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            // A `String` key always serializes.
            let key = serde_json::Value::String(name.clone());
            write!(f, "{key}:{value}")?;
        }
        f.write_str("}")
    }
}

impl JsonObject {
    /// The fields, in order.
    pub fn into_fields(self) -> Vec<(String, serde_json::Value)> {
        self.fields
    }
}

/// Writes `bytes` to a temporary file in `path`'s folder, then renames it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let err = || format!("cannot write {}", path.display());
    let mut temp = tempfile::Builder::new()
        .prefix(".leakmark-")
        .suffix(".part")
        .tempfile_in(dir)
        .with_context(err)?;
    temp.write_all(bytes).with_context(err)?;
    // tempfile creates 0600; a report is not secret, so use the usual 0644.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(0o644);
        temp.as_file().set_permissions(mode).with_context(err)?;
    }
    temp.as_file().sync_all().with_context(err)?;
    temp.persist(path).map_err(|e| e.error).with_context(err)?;
    Ok(())
}
