//! `leakmark issue DOC... (--to SUPPLIER... | --all) [--out DIR]`: one
//! marked copy per (document, recipient), recorded in the ledger.
//!
//! Resumable: for each pair the ledger first reserves a serial (or returns
//! the one reserved by an earlier run), then the copy is written to a
//! temporary file and renamed, then the ledger records its hash. A copy the
//! ledger marks issued whose file is still there with that hash is kept as
//! it is; anything else is (re)written with the same serial, and since
//! embedding is deterministic the bytes come out the same.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use leakmark::imageio::{self, LoadLimits, Loaded};
use leakmark::ledger::{self, CopyRecord, CopyState, Document, Ledger, NewDocument, Supplier};
use leakmark::{embed, pattern, SecretKey};
use rayon::prelude::*;

use crate::cli::args::IssueArgs;
use crate::cli::output;
use crate::cli::{key_and_ledger, Context, Status};

/// Copies the original at `path` into `dir` as `<sha256>.<extension>`,
/// read-only: written under a temporary name, checked against `sha`, then
/// renamed, so a half-written archive never passes for an original. A file
/// already archived there with that hash is kept as it is.
fn archive_original(path: &Path, dir: &Path, sha: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the archive folder {}", dir.display()))?;
    let ext = path
        .extension()
        .map_or_else(|| "img".to_owned(), |e| e.to_string_lossy().to_lowercase());
    let target = std::path::absolute(dir.join(format!("{sha}.{ext}")))
        .with_context(|| format!("cannot resolve the archive folder {}", dir.display()))?;
    if ledger::sha256_file(&target).is_ok_and(|h| h == sha) {
        return Ok(target);
    }
    let partial = dir.join(format!(".{sha}.{ext}.partial"));
    std::fs::copy(path, &partial).with_context(|| format!("cannot write {}", partial.display()))?;
    if ledger::sha256_file(&partial)? != sha {
        let _ = std::fs::remove_file(&partial);
        anyhow::bail!("it changed while it was being archived; issue it again");
    }
    let mut permissions = std::fs::metadata(&partial)?.permissions();
    permissions.set_readonly(true);
    std::fs::set_permissions(&partial, permissions)?;
    std::fs::rename(&partial, &target)
        .with_context(|| format!("cannot move the archived copy to {}", target.display()))?;
    Ok(target)
}

/// Issues every document to every recipient.
pub fn run(ctx: &Context, args: &IssueArgs) -> anyhow::Result<Status> {
    issue(ctx, args, true)
}

/// [`run`], printing one line per copy only when `per_copy_lines` is set
/// (the summary line and errors are always printed). `demo` issues dozens
/// of copies and shows only the summary.
pub fn issue(ctx: &Context, args: &IssueArgs, per_copy_lines: bool) -> anyhow::Result<Status> {
    let (key, mut ledger) = key_and_ledger(ctx)?;
    let recipients = resolve_recipients(&ledger, args)?;
    let folders = recipient_folders(&recipients)?;
    let mut failed = false;

    let docs = load_documents(
        &key,
        &mut ledger,
        &args.docs,
        args.archive.as_deref(),
        &ctx.limits(),
        &mut failed,
    )?;

    // Reserve (or find) every serial before any pixel is touched.
    let mut jobs = Vec::new();
    let mut kept = 0usize;
    for (doc_index, doc) in docs.iter().enumerate() {
        for (recipient, folder) in recipients.iter().zip(&folders) {
            let copy = ledger.allocate_or_get_copy(doc.document.id, recipient.id)?;
            let shown = args.out.join(folder).join(&doc.out_name);
            let target = std::path::absolute(&shown).with_context(|| {
                format!("cannot resolve the output folder {}", args.out.display())
            })?;
            if already_issued(&copy, &target) {
                if copy.output_path.as_deref() != Some(target.as_path()) {
                    // Same file, recorded under another spelling: record this one.
                    let sha = copy.output_sha256.clone().unwrap_or_default();
                    ledger.mark_copy_written(copy.id, &target, &sha)?;
                }
                kept += 1;
                if !per_copy_lines {
                    continue;
                }
                println!(
                    "kept     {} -> {}: {} (already issued)",
                    doc.name,
                    recipient.name,
                    shown.display()
                );
                continue;
            }
            jobs.push(Job {
                doc_index,
                recipient: recipient.clone(),
                copy,
                target,
                shown,
            });
        }
    }
    for job in &jobs {
        if let Some(dir) = job.target.parent() {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "cannot create folder {}: check that --out points to a writable place",
                    dir.display()
                )
            })?;
            remove_stale_temp_files(dir);
        }
    }

    let bar = output::progress(jobs.len(), 2, "issuing");
    let mut written = 0usize;
    let mut job_failures = 0usize;
    output::for_each_ordered(
        &jobs,
        |job| {
            // `doc_index` was taken from `docs` above.
            let doc = &docs[job.doc_index];
            write_copy(&key, doc, job)
        },
        |_, job, result| {
            bar.inc(1);
            let doc = &docs[job.doc_index];
            let outcome = result.and_then(|(psnr_db, sha)| {
                ledger.mark_copy_written(job.copy.id, &job.target, &sha)?;
                Ok(psnr_db)
            });
            match outcome {
                Ok(_) if !per_copy_lines => written += 1,
                Ok(psnr_db) => {
                    written += 1;
                    output::out_line(
                        &bar,
                        &format!(
                            "written  {} -> {}: {} (PSNR {psnr_db:.1} dB)",
                            doc.name,
                            job.recipient.name,
                            job.shown.display()
                        ),
                    )?;
                }
                Err(err) => {
                    job_failures += 1;
                    let err = err.context(format!(
                        "cannot issue {} to {} (re-run the same command to retry; the serial is kept)",
                        doc.name, job.recipient.name
                    ));
                    output::error_line(&bar, &err);
                }
            }
            Ok(())
        },
    )?;
    bar.finish_and_clear();

    println!(
        "{} cop{} of {} document{} for {} recipient{}: {written} written, {kept} already issued, {job_failures} failed",
        written + kept + job_failures,
        if written + kept + job_failures == 1 { "y" } else { "ies" },
        docs.len(),
        plural(docs.len()),
        recipients.len(),
        plural(recipients.len()),
    );
    Ok(if failed || job_failures > 0 {
        Status::Failed
    } else {
        Status::Success
    })
}

/// A document ready to issue.
struct Doc {
    path: PathBuf,
    /// Its file name, as recorded and printed.
    name: String,
    /// The file name of its copies.
    out_name: OsString,
    loaded: Loaded,
    document: Document,
}

/// One copy to write.
struct Job {
    doc_index: usize,
    recipient: Supplier,
    copy: CopyRecord,
    /// Where the copy goes, absolute (as recorded in the ledger).
    target: PathBuf,
    /// The same, as the user spelled `--out` (as printed).
    shown: PathBuf,
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn resolve_recipients(ledger: &Ledger, args: &IssueArgs) -> anyhow::Result<Vec<Supplier>> {
    if args.all {
        let all = ledger.suppliers()?;
        if all.is_empty() {
            return Err(anyhow!(
                "the ledger has no suppliers: add them with `leakmark supplier add NAME` \
                 or `leakmark supplier import FILE.csv`"
            ));
        }
        return Ok(all);
    }
    let mut seen = HashSet::new();
    let mut recipients = Vec::new();
    for name in &args.to {
        let supplier = ledger.supplier_by_name(name)?;
        if seen.insert(supplier.id) {
            recipients.push(supplier);
        }
    }
    Ok(recipients)
}

/// One folder name per recipient: the name itself when it is a safe file
/// name, else a cleaned-up name with the supplier's id appended. Refuses
/// two recipients that would share a folder (also on case-insensitive disks).
fn recipient_folders(recipients: &[Supplier]) -> anyhow::Result<Vec<String>> {
    let mut seen = HashSet::new();
    let mut folders = Vec::new();
    for r in recipients {
        let clean = sanitize(&r.name);
        let folder = if clean == r.name {
            clean
        } else {
            format!("{clean}-{}", r.id.0)
        };
        if !seen.insert(folder.to_lowercase()) {
            return Err(anyhow!(
                "two recipients would share the folder {folder:?}; rename one of them \
                 (folder names ignore case and replace characters not allowed in file names)"
            ));
        }
        folders.push(folder);
    }
    Ok(folders)
}

/// A supplier name made safe as one folder name on every common system.
fn sanitize(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let trimmed = cleaned.trim().trim_end_matches('.').trim_start_matches('.');
    if trimmed.is_empty() {
        "_".to_string()
    } else {
        trimmed.to_string()
    }
}

/// Loads, hashes and registers each document; a document that fails is
/// reported and skipped (setting `failed`), the others go on.
fn load_documents(
    key: &SecretKey,
    ledger: &mut Ledger,
    paths: &[PathBuf],
    archive: Option<&Path>,
    limits: &LoadLimits,
    failed: &mut bool,
) -> anyhow::Result<Vec<Doc>> {
    let loaded: Vec<anyhow::Result<(String, Loaded)>> = paths
        .par_iter()
        .map(|path| {
            output::guarded(|| {
                let sha = ledger::sha256_file(path)?;
                let loaded = imageio::load(path, limits)?;
                Ok((sha, loaded))
            })
        })
        .collect();
    let mut docs: Vec<Doc> = Vec::new();
    for (path, result) in paths.iter().zip(loaded) {
        let (sha, loaded) = match result {
            Ok(ok) => ok,
            Err(err) => {
                *failed = true;
                eprintln!("error: {err:#}");
                continue;
            }
        };
        if let Some(note) = &loaded.frames_note {
            eprintln!("note: {}: {note}", path.display());
        }
        let Some(file_name) = path.file_name() else {
            *failed = true;
            eprintln!("error: {} is not a file name", path.display());
            continue;
        };
        let name = file_name.to_string_lossy().into_owned();
        let (width, height) = (loaded.image.width(), loaded.image.height());
        if width.min(height) < embed::MIN_SHORT_SIDE {
            *failed = true;
            let err = anyhow::Error::new(leakmark::Error::TooSmall {
                width,
                height,
                min_px: embed::MIN_SHORT_SIDE,
            })
            .context(format!("cannot issue {}", path.display()));
            eprintln!("error: {err:#}");
            continue;
        }
        if let Some(same) = docs.iter().find(|d| d.document.sha256 == sha) {
            eprintln!(
                "note: {} has the same content as {}; issued once",
                path.display(),
                same.path.display()
            );
            continue;
        }
        if let Some(other) = docs.iter().find(|d| d.name == name) {
            *failed = true;
            eprintln!(
                "error: {} and {} have the same file name, so their copies would overwrite \
                 each other; issue them in separate runs with different --out folders",
                path.display(),
                other.path.display()
            );
            continue;
        }
        let out_name = copy_file_name(file_name);
        // Every copy of a document shares its pattern variant, derived from
        // the original's SHA-256 (so it is the same on every re-run).
        let digest = unhex(&sha).ok_or_else(|| anyhow!("internal error: bad SHA-256 {sha}"))?;
        let variant = u8::try_from(pattern::document_variant(key, &digest))
            .context("internal error: pattern variant above 255")?;
        let original = match archive {
            None => std::path::absolute(path).unwrap_or_else(|_| path.clone()),
            Some(dir) => match archive_original(path, dir, &sha) {
                Ok(archived) => archived,
                Err(err) => {
                    *failed = true;
                    eprintln!("error: cannot archive {}: {err:#}", path.display());
                    continue;
                }
            },
        };
        let document = ledger.register_document(&NewDocument {
            name: name.clone(),
            sha256: sha,
            original_path: Some(original),
            width,
            height,
            variant,
        })?;
        docs.push(Doc {
            path: path.clone(),
            name,
            out_name,
            loaded,
            document,
        });
    }
    Ok(docs)
}

/// The copy keeps the document's file name, unless its format cannot carry
/// a mark (GIF's palette): then it becomes a PNG.
fn copy_file_name(file_name: &std::ffi::OsStr) -> OsString {
    if imageio::output_format(Path::new(file_name)).is_ok() {
        file_name.to_os_string()
    } else {
        let mut name = Path::new(file_name).with_extension("png").into_os_string();
        if name.is_empty() {
            name = OsString::from("copy.png");
        }
        name
    }
}

/// Whether the ledger says this copy was issued and its file is on disk,
/// unchanged, at `target`.
fn already_issued(copy: &CopyRecord, target: &Path) -> bool {
    copy.state == CopyState::Issued
        && copy
            .output_sha256
            .as_deref()
            .is_some_and(|want| ledger::sha256_file(target).is_ok_and(|got| got == want))
}

/// Embeds the copy's serial, writes the file atomically, and hashes it.
fn write_copy(key: &SecretKey, doc: &Doc, job: &Job) -> anyhow::Result<(f64, String)> {
    let variant = u32::from(doc.document.variant);
    let marked = embed::embed(key, &doc.loaded.image, job.copy.serial, variant)?;
    imageio::save(
        &marked.image,
        &job.target,
        Some(&doc.path),
        doc.loaded.icc_profile.as_deref(),
    )?;
    let sha = ledger::sha256_file(&job.target)?;
    Ok((marked.psnr_db, sha))
}

fn unhex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 || !hex.is_ascii() {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Temp files older than this are leftovers of a killed run, never a live write.
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes `.leakmark-*.part` files left in `dir` by a run that was killed
/// mid-write. Only old ones: another process issuing into the same folder
/// right now has fresh temp files, and they are its own.
fn remove_stale_temp_files(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(".leakmark-") && name.ends_with(".part")) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_TEMP_AGE);
        if old {
            // Best effort: a file that cannot be removed is only clutter.
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_temp_files_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join(".leakmark-old.part");
        let fresh = dir.path().join(".leakmark-fresh.part");
        let copy = dir.path().join("draft.png");
        for p in [&old, &fresh, &copy] {
            std::fs::write(p, b"x").unwrap();
        }
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        for p in [&old, &copy] {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(two_hours_ago)
                .unwrap();
        }
        remove_stale_temp_files(dir.path());
        assert!(!old.exists(), "a killed run's old temp file is removed");
        assert!(fresh.exists(), "a live temp file is left to its writer");
        assert!(copy.exists(), "issued copies are never touched");
    }

    #[test]
    fn sanitize_keeps_plain_names_and_cleans_paths() {
        assert_eq!(sanitize("Moulds & Co"), "Moulds & Co");
        assert_eq!(sanitize("a/b"), "a_b");
        assert_eq!(sanitize(".."), "_");
        assert_eq!(sanitize("../etc"), "_etc");
    }
}
