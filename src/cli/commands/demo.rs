//! `leakmark demo [--dir DIR]`: the whole story on `samples/`, in a scratch
//! folder, with the same code paths as the real commands.
//!
//! A new key and ledger, the sample supplier tree, every sample draft issued
//! to every tier-two vendor, one vendor's copy leaked as a phone-photo-like
//! JPEG (cropped, tilted, recompressed), and a ledger-informed trace of it,
//! checked against who really got that copy. Never writes into `samples/`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use image::DynamicImage;
use leakmark::attack::{self, Attack, Fill};
use leakmark::imageio;
use leakmark::ledger::{Ledger, SupplierNode};
use leakmark::SecretKey;

use crate::cli::args::{IssueArgs, LedgerCommand, SupplierCommand};
use crate::cli::commands::{issue, keygen, ledger, supplier, trace};
use crate::cli::output;
use crate::cli::{Context, Status};

/// The simulated leak: a vendor photographs half of the draft on its
/// screen, slightly tilted, and posts it as a JPEG. The parameters are
/// those of the suite's `crop50+rotate5+jpeg60`, which blind detection
/// survives on every sample draft (measured with three keys each:
/// p ≤ 1e-80), so the demo shows a realistic leak rather than a lucky one.
/// (Perspective 0.05 + JPEG 70 was also tried: it fails on the photo.)
fn leak_channel() -> Attack {
    Attack::Chain(vec![
        Attack::Crop {
            keep_area: 0.5,
            cx: 0.45,
            cy: 0.55,
        },
        Attack::Rotate {
            degrees: 5.0,
            fill: Fill::White,
        },
        Attack::Jpeg { quality: 60 },
    ])
}

/// Runs the demo; `Success` only when the trace names the vendor who
/// really received the leaked copy.
pub fn run(ctx: &Context, dir: Option<&Path>) -> anyhow::Result<Status> {
    let samples = find_samples()?;
    let drafts = list_drafts(&samples.join("drafts"))?;
    let scratch = scratch_dir(dir, &samples)?;
    println!("== leakmark demo in {}", scratch.display());
    println!(
        "   samples from {} ({} drafts)\n",
        samples.display(),
        drafts.len()
    );

    // The demo's own key and ledger: the global --key and --ledger are ignored.
    let key_path = scratch.join("demo.key");
    let ledger_path = scratch.join("leakmark.db");
    let demo_ctx = Context {
        key: Some(key_path.clone()),
        ledger: Some(ledger_path.clone()),
        max_pixels: ctx.max_pixels,
    };

    println!("== 1. a secret key");
    keygen::run(&key_path)?;
    println!("\n== 2. a ledger bound to it");
    ledger::run(&demo_ctx, LedgerCommand::Init { path: None })?;
    println!("\n== 3. the supplier tree");
    supplier::run(
        &demo_ctx,
        SupplierCommand::Import {
            file: samples.join("suppliers.csv"),
        },
    )?;
    supplier::run(&demo_ctx, SupplierCommand::List)?;

    let key = demo_ctx.load_key()?;
    let vendors = tier_two_vendors(&demo_ctx.open_ledger(&key)?)?;
    if vendors.is_empty() {
        return Err(anyhow!(
            "{} names no tier-two vendor (a supplier with a parent): add some",
            samples.join("suppliers.csv").display()
        ));
    }

    println!(
        "\n== 4. issue {} drafts to the {} tier-two vendors",
        drafts.len(),
        vendors.len()
    );
    let out = scratch.join("issued");
    let args = IssueArgs {
        docs: drafts.clone(),
        to: vendors.clone(),
        all: false,
        out: out.clone(),
        archive: Some(scratch.join("originals")),
    };
    if issue::issue(&demo_ctx, &args, false)? != Status::Success {
        return Err(anyhow!("issuing failed (see the errors above)"));
    }
    println!("   copies in {}/<vendor>/", out.display());

    // Pick the leaker from the key, which is new on every run: nothing is
    // staged for one vendor, yet a given key always picks the same copy.
    let pick = pick_from(&key);
    let vendor = &vendors[pick % vendors.len()];
    let draft = &drafts[(pick / vendors.len()) % drafts.len()];
    let draft_name = draft
        .file_name()
        .ok_or_else(|| anyhow!("internal error: draft without a file name"))?;
    let mut ledger = demo_ctx.open_ledger(&key)?;
    let copy = ledger
        .issued_copies(false)?
        .into_iter()
        .find(|c| {
            c.recipient_name == *vendor && Path::new(&c.document_name) == Path::new(draft_name)
        })
        .ok_or_else(|| anyhow!("internal error: the ledger has no copy for {vendor}"))?;
    let copy_path = copy
        .output_path
        .clone()
        .ok_or_else(|| anyhow!("internal error: the copy for {vendor} has no file"))?;

    println!("\n== 5. {vendor} leaks its copy of {}", copy.document_name);
    let leak_path = scratch.join("leak.jpg");
    let loaded = imageio::load(&copy_path, &demo_ctx.limits())?;
    let photo = attack::apply(&leak_channel(), &loaded.image.to_rgb8(), pick as u64);
    imageio::save(
        &DynamicImage::ImageRgb8(photo),
        &leak_path,
        Some(&copy_path),
        None,
    )?;
    println!(
        "   simulated phone photo: half of the page cropped, tilted 5°, JPEG quality 60\n   \
         -> {}",
        leak_path.display()
    );

    println!("\n== 6. trace the leak (key + ledger)");
    let report = trace::trace_one(&key, &mut ledger, &leak_path, &demo_ctx.limits())?;
    println!("   {}", report.human(&leak_path));
    let d = &report.detection;
    let named = report.copy.as_ref().map(|c| c.recipient_name.as_str());
    println!("\n== result");
    println!("   leak file:            {}", leak_path.display());
    match (&report.copy, d.detected) {
        (Some(found), true) => {
            println!("   document:             {}", found.document_name);
            println!("   named vendor:         {}", found.recipient_name);
            println!("   chain:                {}", report.chain_text());
        }
        (None, true) => println!("   a mark was found, but not from this ledger"),
        _ => println!("   no mark found"),
    }
    println!(
        "   false-alarm prob.:    {} (names someone only at <= 1e-12; {} hypotheses charged)",
        output::format_p(d.false_alarm_probability),
        d.hypotheses
    );
    let how = match (d.mode, &report.informed) {
        ("informed", Some(n)) => format!(
            "registered on the archived original of {}, which was subtracted; each issued \
             copy of it tested as a hypothesis",
            n.document
        ),
        _ => format!(
            "all {} issued copies tested as hypotheses, plus blind decoding",
            report.copies_tested
        ),
    };
    println!("   mode:                 {} ({how})", d.mode);
    if let Some(covered) = report.covered_text() {
        let part = covered.trim_start_matches("covers ");
        println!("   part leaked:          {part}");
    }
    if let Some(g) = &d.geometry {
        println!(
            "   geometry:             {}",
            output::format_geometry(g, report.issued_chip_px)
        );
    }
    let right = d.detected && named == Some(vendor.as_str());
    println!(
        "   really leaked by:     {vendor} -> {}",
        if right {
            "MATCH: the trace named the right vendor"
        } else {
            "MISMATCH"
        }
    );
    match (right, d.detected) {
        (true, _) => Ok(Status::Success),
        (false, false) => Ok(Status::NothingFound),
        (false, true) => Err(anyhow!(
            "the trace named {} but {vendor} received the leaked copy: this is a bug, please report it",
            named.unwrap_or("an unknown copy")
        )),
    }
}

/// `samples/` under the current folder, else the one next to this crate's
/// `Cargo.toml` (so the demo runs from anywhere in a checkout).
fn find_samples() -> anyhow::Result<PathBuf> {
    let local = PathBuf::from("samples");
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    for candidate in [local, built] {
        if candidate.join("drafts").is_dir() && candidate.join("suppliers.csv").is_file() {
            return Ok(std::path::absolute(&candidate).unwrap_or(candidate));
        }
    }
    Err(anyhow!(
        "cannot find samples/ (with drafts/ and suppliers.csv): run the demo from the \
         leakmark checkout"
    ))
}

/// The images in `drafts/`, sorted.
fn list_drafts(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let drafts = output::expand_inputs(&[dir.to_path_buf()])?;
    if drafts.is_empty() {
        return Err(anyhow!("{} holds no drafts", dir.display()));
    }
    Ok(drafts)
}

/// The scratch folder: `dir` (created, must be empty) or a new temporary
/// folder that is kept so the user can look at the copies. Never inside
/// `samples/`.
fn scratch_dir(dir: Option<&Path>, samples: &Path) -> anyhow::Result<PathBuf> {
    let path = match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "cannot create {}: pass --dir a writable folder",
                    dir.display()
                )
            })?;
            let mut entries =
                std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
            if entries.next().is_some() {
                return Err(anyhow!(
                    "{} is not empty: pass --dir a new or empty folder \
                     (the demo never overwrites files)",
                    dir.display()
                ));
            }
            dir.to_path_buf()
        }
        None => tempfile::Builder::new()
            .prefix("leakmark-demo-")
            .tempdir()
            .context("cannot create a temporary folder: pass --dir DIR")?
            .keep(),
    };
    let path = path.canonicalize().unwrap_or(path);
    let samples = samples.canonicalize().unwrap_or(samples.to_path_buf());
    if path.starts_with(&samples) {
        return Err(anyhow!(
            "{} is inside samples/: pass --dir a folder outside it",
            path.display()
        ));
    }
    Ok(path)
}

/// Every supplier below a tier-one, in tree order.
fn tier_two_vendors(ledger: &Ledger) -> anyhow::Result<Vec<String>> {
    fn below(node: &SupplierNode, out: &mut Vec<String>) {
        for child in &node.children {
            out.push(child.supplier.name.clone());
            below(child, out);
        }
    }
    let mut vendors = Vec::new();
    for root in ledger.supplier_tree()? {
        below(&root, &mut vendors);
    }
    Ok(vendors)
}

/// A number derived from the key's fingerprint.
fn pick_from(key: &SecretKey) -> usize {
    key.fingerprint().bytes().fold(0usize, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(usize::from(b))
    })
}
