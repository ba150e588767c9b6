//! PNG plots with plotters' bitmap backend: curves with a ±std band, the
//! complement-distribution profile on a log axis, and confusion heat maps.
//!
//! The text font (DejaVu Sans, licence in `DejaVuSans-LICENSE.txt`) is compiled in
//! and registered as plotters' `"sans-serif"`, so drawing needs no system fonts.
//! Inputs are plain numbers; nothing here reads run directories.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};

static FONT: &[u8] = include_bytes!("DejaVuSans.ttf");

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;
type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Line colours, one per series in order (matplotlib's "tab10" first four, then
/// more): `ce` is blue and `cot` orange in every plot of a comparison.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Registers the embedded font once; an error only if the bytes are not a font.
pub fn register_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Internal(
            "the embedded DejaVuSans.ttf is not a valid font".into(),
        ))
    }
}

fn failed(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(format!("drawing failed: {e}")),
    }
}

/// Creates `path`'s folder, draws `(width, height)` pixels with `body`, saves.
fn render(
    path: &Path,
    size: (u32, u32),
    title: &str,
    body: impl FnOnce(&Area) -> DrawResult,
) -> Result<()> {
    register_font()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let root = BitMapBackend::new(path, size).into_drawing_area();
    let drawn = (|| -> DrawResult {
        root.fill(&WHITE)?;
        let inner = root.titled(title, ("sans-serif", 22))?;
        body(&inner)?;
        root.present()?;
        Ok(())
    })();
    drawn.map_err(|e| failed(path, e))
}

/// One line with its band: `(x, mean, low, high)` points; `low == high` draws no
/// band.
#[derive(Debug, Clone, PartialEq)]
pub struct Band {
    /// Legend text.
    pub label: String,
    /// Index into [`PALETTE`].
    pub color: usize,
    /// `(x, mean, low, high)`, by x.
    pub points: Vec<(f64, f64, f64, f64)>,
}

/// One chart of [`draw_curves`].
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Caption.
    pub title: String,
    /// X axis description.
    pub x_label: String,
    /// Y axis description.
    pub y_label: String,
    /// The lines.
    pub bands: Vec<Band>,
}

/// Draws `panels` side by side into a PNG at `path`.
pub fn draw_curves(path: &Path, title: &str, panels: &[Panel]) -> Result<()> {
    let n = panels.len().max(1);
    render(path, (520 * n as u32, 420), title, |area| {
        for (panel, cell) in panels.iter().zip(area.split_evenly((1, n))) {
            draw_panel(&cell, panel)?;
        }
        Ok(())
    })
}

fn finite_bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

fn padded((lo, hi): (f64, f64), fraction: f64) -> (f64, f64) {
    let span = hi - lo;
    if span <= 0.0 {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    } else {
        (lo - span * fraction, hi + span * fraction)
    }
}

fn no_data(area: &Area, title: &str) -> DrawResult {
    let (w, h) = area.dim_in_pixel();
    let style =
        TextStyle::from(("sans-serif", 16).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
    area.draw(&Text::new(
        format!("{title}: no data"),
        (w as i32 / 2, h as i32 / 2),
        style,
    ))?;
    Ok(())
}

fn draw_panel(area: &Area, panel: &Panel) -> DrawResult {
    let points = || panel.bands.iter().flat_map(|b| b.points.iter());
    let (Some(xs), Some(ys)) = (
        finite_bounds(points().map(|p| p.0)),
        finite_bounds(points().flat_map(|p| [p.1, p.2, p.3])),
    ) else {
        return no_data(area, &panel.title);
    };
    let (x0, x1) = if xs.0 == xs.1 { padded(xs, 0.0) } else { xs };
    let (y0, y1) = padded(ys, 0.05);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .light_line_style(WHITE)
        .label_style(("sans-serif", 13))
        .draw()?;
    for band in &panel.bands {
        let c = color(band.color);
        let pts: Vec<_> = band
            .points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        if pts.iter().any(|p| p.3 > p.2) {
            let outline: Vec<(f64, f64)> = pts
                .iter()
                .map(|p| (p.0, p.3))
                .chain(pts.iter().rev().map(|p| (p.0, p.2)))
                .collect();
            chart.draw_series(std::iter::once(Polygon::new(outline, c.mix(0.18).filled())))?;
        }
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.1)),
                c.stroke_width(2),
            ))?
            .label(band.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        // Markers: an evaluation per epoch gives few points, and one point draws no line.
        chart.draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 2, c.filled())))?;
    }
    if panel.bands.iter().any(|b| !b.label.is_empty()) {
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
    }
    Ok(())
}

/// Draws the complement-distribution profile: one line per `(label, colour,
/// mean probability by rank)`, rank 1 (the largest wrong class) first, on a log y
/// axis. Non-positive values are left out (a log axis has no place for them).
pub fn draw_complement(
    path: &Path,
    title: &str,
    lines: &[(String, usize, Vec<f64>)],
) -> Result<()> {
    render(path, (640, 460), title, |area| {
        let ranks = lines.iter().map(|l| l.2.len()).max().unwrap_or(0);
        let Some((lo, hi)) = finite_bounds(
            lines
                .iter()
                .flat_map(|l| l.2.iter().copied())
                .filter(|&v| v > 0.0),
        ) else {
            return no_data(area, "complement");
        };
        let mut chart_builder = ChartBuilder::on(area);
        chart_builder
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(70);
        let y = decades(lo, hi);
        let ticks = log_ticks(&y);
        let mut chart = chart_builder
            .build_cartesian_2d(0i32..ranks as i32 + 1, y.log_scale().with_key_points(ticks))?;
        chart
            .configure_mesh()
            .x_desc("rank of the wrong class (by predicted probability)")
            .y_desc("mean predicted probability")
            .x_labels(ranks.clamp(1, 12) + 2)
            .x_label_formatter(&|r| {
                if *r >= 1 && *r <= ranks as i32 {
                    r.to_string()
                } else {
                    String::new()
                }
            })
            .y_labels(12)
            .y_label_formatter(&|v| probability_label(*v))
            .light_line_style(WHITE)
            .label_style(("sans-serif", 13))
            .draw()?;
        for (label, ci, values) in lines {
            let c = color(*ci);
            let pts: Vec<(i32, f64)> = values
                .iter()
                .enumerate()
                .filter(|(_, v)| **v > 0.0 && v.is_finite())
                .map(|(i, &v)| (i as i32 + 1, v))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
                .label(label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
        Ok(())
    })
}

/// `lo..hi` widened to whole powers of ten: plotters' log axis labels only the
/// powers of ten and the steps between them, so a range inside one decade
/// would get no labels at all.
fn decades(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let lo = 10f64.powf(lo.log10().floor());
    let mut hi = 10f64.powf(hi.log10().ceil());
    if hi <= lo {
        hi = lo * 10.0;
    }
    lo..hi
}

fn probability_label(v: f64) -> String {
    if v >= 1e-3 {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.0e}")
    }
}

/// Ticks at 1, 2, 3 and 5 times each power of ten in `range` (plotters' own log
/// axis labels only the powers of ten).
fn log_ticks(range: &std::ops::Range<f64>) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = range.start;
    while decade <= range.end * (1.0 + 1e-9) {
        for m in [1.0, 2.0, 3.0, 5.0] {
            let t = decade * m;
            if t <= range.end * (1.0 + 1e-9) {
                ticks.push(t);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// One confusion matrix for [`draw_confusion`].
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    /// Caption.
    pub title: String,
    /// `counts[gold][predicted]`.
    pub counts: Vec<Vec<usize>>,
}

/// Draws confusion matrices side by side: gold classes down, predicted across,
/// each cell's count written in it and shaded by its share of the matrix's
/// largest cell.
pub fn draw_confusion(path: &Path, title: &str, labels: &[String], maps: &[Heatmap]) -> Result<()> {
    let n = maps.len().max(1);
    render(path, (480 * n as u32, 500), title, |area| {
        for (map, cell) in maps.iter().zip(area.split_evenly((1, n))) {
            draw_heatmap(&cell, labels, map)?;
        }
        Ok(())
    })
}

/// A class name split into lines of at most `width` pixels (at word breaks).
fn wrap(area: &Area, text: &str, style: &TextStyle, width: u32) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line)
                if area
                    .estimate_text_size(&format!("{line} {word}"), style)
                    .map(|s| s.0 <= width)
                    .unwrap_or(false) =>
            {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

fn draw_heatmap(area: &Area, labels: &[String], map: &Heatmap) -> DrawResult {
    let k = map.counts.len();
    if k == 0 {
        return no_data(area, &map.title);
    }
    let name = |i: usize| labels.get(i).cloned().unwrap_or_else(|| i.to_string());
    let (w, h) = area.dim_in_pixel();
    let label_style = TextStyle::from(("sans-serif", 12).into_font());
    let left = (0..k)
        .filter_map(|i| area.estimate_text_size(&name(i), &label_style).ok())
        .map(|s| s.0)
        .max()
        .unwrap_or(20)
        .min(130)
        + 34;
    let (top, bottom) = (34u32, 56u32);
    let cell = ((w.saturating_sub(left + 16)) / k as u32)
        .min(h.saturating_sub(top + bottom) / k as u32)
        .max(8);
    let (x0, y0) = (left as i32, top as i32);
    let c = cell as i32;
    let centered = |size| {
        TextStyle::from(("sans-serif", size).into_font()).pos(Pos::new(HPos::Center, VPos::Center))
    };
    area.draw(&Text::new(
        map.title.clone(),
        (x0 + c * k as i32 / 2, 14),
        centered(16),
    ))?;
    let max = map
        .counts
        .iter()
        .flatten()
        .copied()
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    for (g, row) in map.counts.iter().enumerate() {
        for (p, &count) in row.iter().enumerate() {
            let t = count as f64 / max;
            let shade = |full: u8| (255.0 - (255.0 - f64::from(full)) * t).round() as u8;
            let fill = RGBColor(shade(8), shade(48), shade(107));
            let (cx, cy) = (x0 + p as i32 * c, y0 + g as i32 * c);
            area.draw(&Rectangle::new([(cx, cy), (cx + c, cy + c)], fill.filled()))?;
            area.draw(&Rectangle::new(
                [(cx, cy), (cx + c, cy + c)],
                BLACK.mix(0.15),
            ))?;
            let ink = if t > 0.55 { WHITE } else { BLACK };
            area.draw(&Text::new(
                count.to_string(),
                (cx + c / 2, cy + c / 2),
                centered(13).color(&ink),
            ))?;
        }
    }
    let right_aligned = label_style.clone().pos(Pos::new(HPos::Right, VPos::Center));
    for i in 0..k {
        area.draw(&Text::new(
            name(i),
            (x0 - 6, y0 + i as i32 * c + c / 2),
            right_aligned.clone(),
        ))?;
        for (j, line) in wrap(area, &name(i), &label_style, cell.saturating_sub(4))
            .iter()
            .enumerate()
        {
            let y = y0 + k as i32 * c + 10 + j as i32 * 14;
            area.draw(&Text::new(
                line.clone(),
                (x0 + i as i32 * c + c / 2, y),
                centered(12),
            ))?;
        }
    }
    let axis = TextStyle::from(("sans-serif", 13).into_font());
    area.draw(&Text::new(
        "predicted",
        (x0 + c * k as i32 / 2, y0 + k as i32 * c + 42),
        axis.clone().pos(Pos::new(HPos::Center, VPos::Center)),
    ))?;
    area.draw(&Text::new(
        "gold",
        (x0 - 6, y0 - 12),
        axis.pos(Pos::new(HPos::Right, VPos::Center)),
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_font_registers() {
        register_font().unwrap();
    }

    #[test]
    fn log_axis_spans_whole_decades() {
        let close = |r: std::ops::Range<f64>, lo: f64, hi: f64| {
            (r.start / lo - 1.0).abs() < 1e-12 && (r.end / hi - 1.0).abs() < 1e-12
        };
        assert!(close(decades(0.12, 0.4), 0.1, 1.0));
        assert!(close(decades(0.0012, 0.1), 0.001, 0.1));
        assert!(close(decades(0.1, 0.1), 0.1, 1.0));
        assert_eq!(probability_label(0.25), "0.25");
        assert_eq!(log_ticks(&(0.1..1.0)).len(), 5);
        assert_eq!(probability_label(0.0001), "1e-4");
    }

    #[test]
    fn plots_are_png_files() {
        let tmp = tempfile::tempdir().unwrap();
        let band = |label: &str, color, lift| Band {
            label: label.into(),
            color,
            points: (1..=5)
                .map(|s| {
                    (
                        s as f64,
                        1.0 / s as f64 + lift,
                        0.9 / s as f64 + lift,
                        1.1 / s as f64 + lift,
                    )
                })
                .collect(),
        };
        let panel = Panel {
            title: "loss".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            bands: vec![band("ce", 0, 0.0), band("cot", 1, 0.1)],
        };
        let empty = Panel {
            title: "dev".into(),
            x_label: "step".into(),
            y_label: "accuracy".into(),
            bands: vec![],
        };
        let curves = tmp.path().join("sub/curves.png");
        draw_curves(&curves, "test", &[panel, empty]).unwrap();
        let complement = tmp.path().join("complement.png");
        draw_complement(
            &complement,
            "test",
            &[
                ("ce".into(), 0, vec![0.3, 0.1, 0.01, 0.001]),
                ("cot".into(), 1, vec![0.2, 0.15, 0.1, 0.0]),
            ],
        )
        .unwrap();
        let confusion = tmp.path().join("confusion.png");
        let labels: Vec<String> = ["very negative", "negative", "neutral"]
            .map(String::from)
            .to_vec();
        let map = Heatmap {
            title: "ce".into(),
            counts: vec![vec![5, 1, 0], vec![2, 7, 1], vec![0, 3, 9]],
        };
        draw_confusion(&confusion, "test", &labels, &[map.clone(), map]).unwrap();
        for f in [curves, complement, confusion] {
            let bytes = std::fs::read(&f).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", f.display());
        }
    }
}
