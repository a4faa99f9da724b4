//! `trace --report DIR`: evidence a person can check by eye. For each leak
//! read in informed mode, a picture of the original (lightened, grey) with
//! the leak's outline in red and the box of the original it covers in blue;
//! and `report.md`, listing every leak's finding, its SHA-256 and its
//! picture.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use image::{DynamicImage, Rgb, RgbImage};
use imageproc::drawing::draw_line_segment_mut;
use leakmark::imageio::{self, LoadLimits};

use super::trace::{InformedNote, Report};
use crate::cli::output;

/// Long side of the pictures, pixels (the original is shrunk to it).
const PICTURE_PX: u32 = 1600;
/// The leak's edges, mapped onto the original.
const OUTLINE: Rgb<u8> = Rgb([220, 30, 30]);
/// The axis-aligned box of the original the leak covers.
const COVERED: Rgb<u8> = Rgb([30, 90, 220]);
/// Around the original, where the leak shows more than the page.
const MARGIN: Rgb<u8> = Rgb([70, 70, 70]);

/// A report folder being filled, one leak at a time, in input order.
pub struct EvidenceDir {
    dir: PathBuf,
    markdown: String,
    /// Picture file names already used (two leaks may share a file name).
    names: HashSet<String>,
}

impl EvidenceDir {
    /// Creates `dir` (and its parents) if needed.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create the report folder {}: check that --report points to a writable place",
                dir.display()
            )
        })?;
        Ok(EvidenceDir {
            dir: dir.to_path_buf(),
            markdown: String::from(
                "# leakmark trace report\n\nEach leak with what was found. Pictures: the \
                 original, lightened; red, the leak's edges mapped onto it; blue, the box of \
                 the original the leak covers (original pixels, end-exclusive).\n",
            ),
            names: HashSet::new(),
        })
    }

    /// Adds one leak's finding; draws its picture when informed mode
    /// registered it on an original. A picture that cannot be made is
    /// said in report.md and returned as a note: the trace itself stands.
    pub fn add(
        &mut self,
        leak: &Path,
        sha256: &str,
        report: &Report,
        limits: &LoadLimits,
    ) -> Option<String> {
        let md = &mut self.markdown;
        let _ = writeln!(md, "\n## `{}`\n", leak.display());
        let _ = writeln!(md, "- finding: {}", report.human(leak));
        let _ = writeln!(md, "- SHA-256 of the leak: `{sha256}`");
        let Some(note) = &report.informed else {
            let _ = writeln!(
                md,
                "- no picture: the leak was not registered on an archived original"
            );
            return None;
        };
        if let Some(covered) = report.covered_text() {
            let _ = writeln!(md, "- {covered}");
        }
        match self.picture(leak, note, limits) {
            Ok(name) => {
                let _ = writeln!(self.markdown, "\n![where the leak sits]({name})");
                None
            }
            Err(err) => {
                let _ = writeln!(self.markdown, "- no picture: {err:#}");
                Some(format!("no report picture: {err:#}"))
            }
        }
    }

    /// Draws and writes one leak's picture; returns its file name.
    fn picture(
        &mut self,
        leak: &Path,
        note: &InformedNote,
        limits: &LoadLimits,
    ) -> anyhow::Result<String> {
        let original = imageio::load(&note.original_path, limits)
            .with_context(|| format!("cannot load the original {}", note.original_path.display()))?
            .image;
        let name = self.picture_name(leak);
        // The leak given as the input: refused rather than overwritten.
        imageio::save(
            &DynamicImage::ImageRgb8(placement_picture(&original, note)),
            &self.dir.join(&name),
            Some(leak),
            None,
        )?;
        Ok(name)
    }

    /// Adds a leak that could not be read.
    pub fn add_error(&mut self, leak: &Path, err: &anyhow::Error) {
        let md = &mut self.markdown;
        let _ = writeln!(md, "\n## `{}`\n", leak.display());
        let _ = writeln!(md, "- could not be traced: {err:#}");
    }

    /// Writes `report.md`; returns its path.
    pub fn finish(self) -> anyhow::Result<PathBuf> {
        let path = self.dir.join("report.md");
        output::write_atomic(&path, self.markdown.as_bytes())?;
        Ok(path)
    }

    /// `<leak file stem>.where.png`, or `<stem>-2.where.png`, ... when
    /// taken: never the leak's own name, should the report folder hold it.
    fn picture_name(&mut self, leak: &Path) -> String {
        let stem = leak
            .file_stem()
            .map_or_else(|| "leak".into(), |s| s.to_string_lossy().into_owned());
        let stem: String = stem
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut name = format!("{stem}.where.png");
        let mut n = 2;
        while !self.names.insert(name.clone()) {
            name = format!("{stem}-{n}.where.png");
            n += 1;
        }
        name
    }
}

/// The original, grey and lightened, on a darker margin wide enough for the
/// leak's outline (a photo of a screen shows more than the page), shrunk
/// to [`PICTURE_PX`], with the leak's edges (red) and the covered box
/// (blue) drawn on it.
pub fn placement_picture(original: &DynamicImage, note: &InformedNote) -> RgbImage {
    let (w, h) = (f64::from(original.width()), f64::from(original.height()));
    let outline = leak_outline(note);
    // The picture spans the original and the outline, but at most half the
    // original's size beyond each side.
    let (mut x0, mut y0, mut x1, mut y1) = (0.0f64, 0.0f64, w, h);
    for &(x, y) in outline.iter().flatten() {
        (x0, y0) = (x0.min(x), y0.min(y));
        // + 1: an edge at x is drawn on pixel column x.
        (x1, y1) = (x1.max(x + 1.0), y1.max(y + 1.0));
    }
    let (x0, y0) = (x0.max(-0.5 * w).floor(), y0.max(-0.5 * h).floor());
    let (x1, y1) = (x1.min(1.5 * w).ceil(), y1.min(1.5 * h).ceil());
    let k = (f64::from(PICTURE_PX) / (x1 - x0).max(y1 - y0)).min(1.0);
    let to_canvas = |(x, y): (f64, f64)| (((x - x0) * k) as f32, ((y - y0) * k) as f32);
    let size = |len: f64| ((len * k).round() as u32).max(1);
    let grey = original
        .resize_exact(size(w), size(h), image::imageops::FilterType::Triangle)
        .to_luma8();
    let (ox, oy) = (((-x0) * k).round() as i64, ((-y0) * k).round() as i64);
    let mut canvas = RgbImage::from_fn(size(x1 - x0), size(y1 - y0), |x, y| {
        let (gx, gy) = (i64::from(x) - ox, i64::from(y) - oy);
        let inside = (0..i64::from(grey.width())).contains(&gx)
            && (0..i64::from(grey.height())).contains(&gy);
        if inside {
            let v = 110 + u16::from(grey.get_pixel(gx as u32, gy as u32).0[0]) * 145 / 255;
            Rgb([v as u8; 3])
        } else {
            MARGIN
        }
    });
    let thickness = (canvas.width().max(canvas.height()) / 500).max(1) as i32;
    let mut polyline = |points: &[(f64, f64)], colour: Rgb<u8>| {
        for (i, &a) in points.iter().enumerate() {
            let (a, b) = (to_canvas(a), to_canvas(points[(i + 1) % points.len()]));
            for dy in -thickness / 2..=thickness / 2 {
                for dx in -thickness / 2..=thickness / 2 {
                    let (ox, oy) = (dx as f32, dy as f32);
                    draw_line_segment_mut(
                        &mut canvas,
                        (a.0 + ox, a.1 + oy),
                        (b.0 + ox, b.1 + oy),
                        colour,
                    );
                }
            }
        }
    };
    let [bx0, by0, bx1, by1] = note.registration.covered.map(f64::from);
    polyline(&[(bx0, by0), (bx1, by0), (bx1, by1), (bx0, by1)], COVERED);
    if let Some(outline) = outline {
        polyline(&outline, OUTLINE);
    }
    canvas
}

/// The leak's border in the original's pixels, point by point (a
/// homography keeps lines straight, but an edge may leave the plane where
/// it turns away: then `None`).
fn leak_outline(note: &InformedNote) -> Option<Vec<(f64, f64)>> {
    const STEPS: usize = 32;
    let to_original = note.registration.homography.inverse()?;
    let [lw, lh] = note.leak_size.map(f64::from);
    (0..4 * STEPS)
        .map(|i| {
            let t = (i % STEPS) as f64 / STEPS as f64;
            let (u, v) = match i / STEPS {
                0 => (t * lw, 0.0),
                1 => (lw, t * lh),
                2 => ((1.0 - t) * lw, lh),
                _ => (0.0, (1.0 - t) * lh),
            };
            to_original.map(u, v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use leakmark::register::{Homography, Registration};

    fn note(homography: Homography, covered: [u32; 4], leak_size: [u32; 2]) -> InformedNote {
        InformedNote {
            document: "doc".into(),
            original_path: PathBuf::from("doc.png"),
            original_size: [400, 300],
            leak_size,
            registration: Registration {
                homography,
                covered,
                similarity: 0.9,
                candidates: 1,
            },
        }
    }

    #[test]
    fn the_leak_outline_and_box_are_drawn_where_the_leak_sits() {
        let original = DynamicImage::ImageRgb8(RgbImage::from_pixel(400, 300, Rgb([255; 3])));
        // The leak is the original's region x 100–300, y 50–250, at half size.
        let h = Homography([0.5, 0.0, -50.0, 0.0, 0.5, -25.0, 0.0, 0.0, 1.0]);
        let pic = placement_picture(&original, &note(h, [100, 50, 300, 250], [100, 100]));
        assert_eq!(
            pic.dimensions(),
            (400, 300),
            "the leak lies inside the page"
        );
        let red = |x, y| pic.get_pixel(x, y).0 == OUTLINE.0;
        let blue = |x, y| pic.get_pixel(x, y).0 == COVERED.0;
        // Edges: the outline is drawn over the box, both on the same lines.
        assert!(red(200, 50) && red(100, 150) && red(300, 150) && red(200, 250));
        assert!(!red(200, 150) && !blue(200, 150) && !red(50, 150));
        // White paper is lightened grey, never coloured.
        assert_eq!(pic.get_pixel(10, 10).0, [255; 3]);
        // A leak showing more than the page (a photo of a screen): the
        // picture grows a margin to hold its outline.
        let shrunk = Homography([0.5, 0.0, 50.0, 0.0, 0.5, 50.0, 0.0, 0.0, 1.0]);
        let pic = placement_picture(&original, &note(shrunk, [0, 0, 400, 300], [300, 250]));
        // Leak corners at (−100, −100) and (500, 400) in the original.
        let red = |x, y| pic.get_pixel(x, y).0 == OUTLINE.0;
        assert_eq!(pic.dimensions(), (601, 501));
        assert_eq!(pic.get_pixel(50, 5).0, MARGIN.0);
        assert!(red(0, 0) && red(600, 500) && red(300, 0) && !red(300, 250));
        assert_eq!(pic.get_pixel(300, 250).0, [255; 3], "the page");
        // A box without outline (an outline that leaves the plane is not drawn).
        let away = Homography([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.01, 1.0]);
        let pic = placement_picture(&original, &note(away, [0, 0, 50, 50], [100, 200]));
        assert!(pic.pixels().any(|p| p.0 == COVERED.0));
        assert!(pic.pixels().all(|p| p.0 != OUTLINE.0));
    }

    #[test]
    fn picture_names_stay_distinct() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = EvidenceDir::create(dir.path()).unwrap();
        assert_eq!(e.picture_name(Path::new("a/leak.jpg")), "leak.where.png");
        assert_eq!(e.picture_name(Path::new("b/leak.png")), "leak-2.where.png");
        assert_eq!(e.picture_name(Path::new("c/leak")), "leak-3.where.png");
        assert_eq!(
            e.picture_name(Path::new("d/my leak?.jpg")),
            "my_leak_.where.png"
        );
    }
}
