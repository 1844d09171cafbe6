//! The report's figures: heatmaps like the paper's needle figures, radar charts across task
//! categories, and curves (score against ratio, speed against context). Each is drawn once, as SVG; [`png`] rasterizes it
//! (resvg, with an embedded font so labels render on machines without system fonts).

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use resvg::{tiny_skia, usvg};

/// Colours of successive series.
const PALETTE: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// Text safe inside SVG.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG's opening: white background, title and subtitle. The figure is widened to fit
/// its title (about 6.5 units a character at font size 13) and subtitle (5.5 at 11).
fn open(width: f64, height: f64, title: &str, subtitle: &str) -> String {
    let text_width = |text: &str, per_char: f64| 32.0 + per_char * text.chars().count() as f64;
    let width = width
        .max(text_width(title, 6.5))
        .max(text_width(subtitle, 5.5));
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"16\" y=\"20\" font-size=\"13\">{}</text>\n<text x=\"16\" y=\"36\">{}</text>\n",
        escape(title),
        escape(subtitle)
    )
}

/// A grid of scores in [0, 1] (`values[row][column]`, `None` where nothing was run): green
/// found, red missed, grey absent, each cell labelled with its percentage.
pub fn heatmap(
    title: &str,
    subtitle: &str,
    columns: &[String],
    rows: &[String],
    values: &[Vec<Option<f64>>],
) -> String {
    let (cell, left, top) = (56.0, 80.0, 48.0);
    let width = (left + cell * columns.len() as f64 + 20.0).max(460.0);
    let height = top + cell * rows.len() as f64 + 40.0;
    let mut svg = open(width, height, title, subtitle);
    for (j, row) in rows.iter().enumerate() {
        let y = top + cell * j as f64;
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            left - 6.0,
            y + cell / 2.0 + 4.0,
            escape(row)
        );
        for (i, value) in values[j].iter().enumerate() {
            let x = left + cell * i as f64;
            let (fill, label) = match value {
                None => ("#dddddd".to_string(), "-".to_string()),
                Some(s) => {
                    let (r, g) = ((255.0 * (1.0 - s)) as u8, (180.0 * s + 40.0) as u8);
                    (format!("rgb({r},{g},60)"), format!("{:.0}", 100.0 * s))
                }
            };
            let _ = writeln!(
                svg,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{cell}\" height=\"{cell}\" fill=\"{fill}\" stroke=\"white\"/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"white\">{label}</text>",
                x + cell / 2.0,
                y + cell / 2.0 + 4.0
            );
        }
    }
    for (i, column) in columns.iter().enumerate() {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            left + cell * i as f64 + cell / 2.0,
            top + cell * rows.len() as f64 + 16.0,
            escape(column)
        );
    }
    svg + "</svg>\n"
}

/// A radar chart: one polygon per series over the same axes, scores in [0, 100].
pub fn radar(title: &str, axes: &[String], series: &[(String, Vec<f64>)]) -> String {
    let (cx, cy, radius) = (300.0, 270.0, 170.0);
    let mut svg = open(
        width_for_legend(series),
        520.0,
        title,
        "score per category (0 at the centre, 100 at the rim)",
    );
    let point = |axis: usize, value: f64| {
        let angle =
            std::f64::consts::TAU * axis as f64 / axes.len() as f64 - std::f64::consts::FRAC_PI_2;
        let r = radius * value.clamp(0.0, 100.0) / 100.0;
        (cx + r * angle.cos(), cy + r * angle.sin())
    };
    for ring in [25.0, 50.0, 75.0, 100.0] {
        let pts: Vec<String> = (0..axes.len())
            .map(|a| {
                let (x, y) = point(a, ring);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = writeln!(
            svg,
            "<polygon points=\"{}\" fill=\"none\" stroke=\"#cccccc\"/>",
            pts.join(" ")
        );
    }
    for (a, axis) in axes.iter().enumerate() {
        let (x, y) = point(a, 100.0);
        let (lx, ly) = point(a, 106.0);
        // Labels sit outside the rim: left of it on the left side, right of it on the right.
        let anchor = match lx - cx {
            d if d > 1.0 => "start",
            d if d < -1.0 => "end",
            _ => "middle",
        };
        let _ = writeln!(
            svg,
            "<line x1=\"{cx}\" y1=\"{cy}\" x2=\"{x:.1}\" y2=\"{y:.1}\" stroke=\"#cccccc\"/><text x=\"{lx:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
            ly + 4.0 + 6.0 * (ly - cy).signum(),
            escape(axis)
        );
    }
    for (s, (name, values)) in series.iter().enumerate() {
        let colour = PALETTE[s % PALETTE.len()];
        let pts: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(a, v)| {
                let (x, y) = point(a, *v);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = writeln!(
            svg,
            "<polygon points=\"{}\" fill=\"{colour}\" fill-opacity=\"0.08\" stroke=\"{colour}\" stroke-width=\"1.5\"/>",
            pts.join(" ")
        );
        legend(&mut svg, s, name, colour);
    }
    svg + "</svg>\n"
}

/// Where the legend starts (x), right of the plot.
const LEGEND_X: f64 = 600.0;

/// A figure's width: the plot and a legend wide enough for its longest series name (about
/// 5.5 units a character at font size 11).
fn width_for_legend<T>(series: &[(String, T)]) -> f64 {
    let longest = series
        .iter()
        .map(|s| s.0.chars().count())
        .max()
        .unwrap_or(0);
    (LEGEND_X + 16.0 + 5.5 * longest as f64 + 20.0).max(760.0)
}

fn legend(svg: &mut String, index: usize, name: &str, colour: &str) {
    let y = 60.0 + 16.0 * index as f64;
    let _ = writeln!(
        svg,
        "<rect x=\"{LEGEND_X}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{colour}\"/><text x=\"{}\" y=\"{}\">{}</text>",
        y - 9.0,
        LEGEND_X + 16.0,
        y,
        escape(name)
    );
}

/// One axis of [`curves`]: the range drawn and the labelled ticks.
pub struct Axis {
    pub min: f64,
    pub max: f64,
    pub ticks: Vec<f64>,
    /// Written after each tick's number (`x` for ratios).
    pub suffix: &'static str,
}

impl Axis {
    /// Scores in percent: 0 to 100, a tick every 25.
    pub fn percent() -> Self {
        Self {
            min: 0.0,
            max: 100.0,
            ticks: vec![0.0, 25.0, 50.0, 75.0, 100.0],
            suffix: "",
        }
    }

    /// Compression ratios from 1× to `max`× (at least 2×), a tick at each whole ratio.
    pub fn ratios(max: f64) -> Self {
        let max = max.ceil().max(2.0);
        Self {
            min: 1.0,
            max,
            ticks: (1..=max as usize).map(|t| t as f64).collect(),
            suffix: "x",
        }
    }

    /// From 0 to a round number at or above `max`, with four or five round ticks.
    pub fn from_zero(max: f64) -> Self {
        let max = max.max(1e-9);
        let magnitude = 10f64.powf(max.log10().floor());
        let step = [0.2, 0.25, 0.5, 1.0, 2.0]
            .iter()
            .map(|m| m * magnitude)
            .find(|step| max / step <= 5.0)
            .unwrap_or(2.0 * magnitude);
        let top = (max / step).ceil() * step;
        Self {
            min: 0.0,
            max: top,
            ticks: (0..=(top / step).round() as usize)
                .map(|i| i as f64 * step)
                .collect(),
            suffix: "",
        }
    }

    fn fraction(&self, v: f64) -> f64 {
        ((v - self.min) / (self.max - self.min)).clamp(0.0, 1.0)
    }
}

/// A tick's number without float noise (0.3, not 0.30000000000000004).
fn tick_label(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

/// Lines of (x, y) points per series, e.g. score against compression ratio or tokens/s
/// against context; `reference` is drawn as a dashed horizontal line (the baseline's score).
pub fn curves(
    title: &str,
    (x_label, x_axis): (&str, &Axis),
    (y_label, y_axis): (&str, &Axis),
    series: &[(String, Vec<(f64, f64)>)],
    reference: Option<f64>,
) -> String {
    let (left, top, width, height) = (60.0, 50.0, 420.0, 300.0);
    let at = |x: f64, y: f64| {
        (
            left + width * x_axis.fraction(x),
            top + height * (1.0 - y_axis.fraction(y)),
        )
    };
    let mut svg = open(
        width_for_legend(series),
        420.0,
        title,
        &format!("{y_label} against {x_label}"),
    );
    let _ = writeln!(
        svg,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{width}\" height=\"{height}\" fill=\"none\" stroke=\"#999999\"/>"
    );
    for &tick in &y_axis.ticks {
        let (_, y) = at(x_axis.min, tick);
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}{}</text>",
            left - 6.0,
            y + 4.0,
            tick_label(tick),
            y_axis.suffix
        );
    }
    for &tick in &x_axis.ticks {
        let (x, _) = at(tick, y_axis.min);
        let _ = writeln!(
            svg,
            "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}{}</text>",
            top + height + 16.0,
            tick_label(tick),
            x_axis.suffix
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        left + width / 2.0,
        top + height + 34.0,
        escape(x_label)
    );
    if let Some(r) = reference {
        let (x0, y) = at(x_axis.min, r);
        let (x1, _) = at(x_axis.max, r);
        let _ = writeln!(
            svg,
            "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{x1}\" y2=\"{y:.1}\" stroke=\"#333333\" stroke-dasharray=\"4 3\"/><text x=\"{x1}\" y=\"{:.1}\" text-anchor=\"end\">baseline</text>",
            y - 4.0
        );
    }
    for (s, (name, points)) in series.iter().enumerate() {
        let colour = PALETTE[s % PALETTE.len()];
        let mut sorted = points.clone();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let pts: Vec<String> = sorted
            .iter()
            .map(|(x, y)| {
                let (px, py) = at(*x, *y);
                format!("{px:.1},{py:.1}")
            })
            .collect();
        if pts.len() > 1 {
            let _ = writeln!(
                svg,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\"/>",
                pts.join(" ")
            );
        }
        for p in &pts {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(
                svg,
                "<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{colour}\"/>"
            );
        }
        legend(&mut svg, s, name, colour);
    }
    svg + "</svg>\n"
}

/// Pixels per SVG unit in the PNG: sharp enough for a paper or a slide.
const PNG_SCALE: f32 = 2.0;

/// The font every label is set in (Ubuntu Light, from egui's font crate), as the
/// `sans-serif` the SVGs ask for.
fn font_database() -> Arc<usvg::fontdb::Database> {
    static FONTS: OnceLock<Arc<usvg::fontdb::Database>> = OnceLock::new();
    FONTS
        .get_or_init(|| {
            let mut db = usvg::fontdb::Database::new();
            db.load_font_data(epaint_default_fonts::UBUNTU_LIGHT.to_vec());
            let family = db
                .faces()
                .next()
                .and_then(|f| f.families.first())
                .map(|(name, _)| name.clone());
            if let Some(family) = family {
                db.set_sans_serif_family(family);
            }
            Arc::new(db)
        })
        .clone()
}

/// One of this module's SVG figures as a PNG image, at twice its SVG size.
pub fn png(svg: &str) -> Result<Vec<u8>, String> {
    let options = usvg::Options {
        fontdb: font_database(),
        ..usvg::Options::default()
    };
    let tree = usvg::Tree::from_str(svg, &options).map_err(|e| format!("parsing SVG: {e}"))?;
    let size = tree
        .size()
        .to_int_size()
        .scale_by(PNG_SCALE)
        .ok_or("empty figure")?;
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height()).ok_or("empty figure")?;
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(PNG_SCALE, PNG_SCALE),
        &mut pixmap.as_mut(),
    );
    pixmap
        .encode_png()
        .map_err(|e| format!("encoding PNG: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_well_formed_and_escape_text() {
        let h = heatmap(
            "a<b",
            "s",
            &["1".into(), "2".into()],
            &["0%".into()],
            &[vec![Some(1.0), None]],
        );
        assert!(h.contains("a&lt;b") && h.contains(">100<") && h.contains(">-<"));
        let r = radar(
            "r",
            &["x".into(), "y".into(), "z".into()],
            &[("m".into(), vec![10.0, 50.0, 100.0])],
        );
        assert_eq!(r.matches("<polygon").count(), 5);
        let c = curves(
            "c",
            ("ratio", &Axis::ratios(4.0)),
            ("score", &Axis::percent()),
            &[("h2o".into(), vec![(4.0, 30.0), (2.0, 60.0)])],
            Some(80.0),
        );
        assert!(c.contains("<polyline") && c.contains("baseline") && c.contains(">4x<"));
        for svg in [h, r, c] {
            assert_eq!(svg.matches("<svg").count(), 1);
            assert!(svg.ends_with("</svg>\n"));
            let image = png(&svg).unwrap();
            assert_eq!(&image[1..4], b"PNG");
        }
    }

    /// Axes from zero end at a round number at or above the data, with round ticks.
    #[test]
    fn axes_from_zero_have_round_ticks() {
        for (max, top, ticks) in [
            (37.2, 40.0, vec![0.0, 10.0, 20.0, 30.0, 40.0]),
            (152.4, 200.0, vec![0.0, 50.0, 100.0, 150.0, 200.0]),
            (8000.0, 8000.0, vec![0.0, 2000.0, 4000.0, 6000.0, 8000.0]),
            (0.3, 0.3, vec![0.0, 0.1, 0.2, 0.3]),
        ] {
            let axis = Axis::from_zero(max);
            assert!((axis.max - top).abs() < 1e-9, "{max}: top {}", axis.max);
            assert_eq!(axis.ticks.len(), ticks.len(), "{max}: {:?}", axis.ticks);
            for (got, want) in axis.ticks.iter().zip(&ticks) {
                assert!((got - want).abs() < 1e-9, "{max}: {:?}", axis.ticks);
            }
        }
    }

    /// Dark pixels (any channel below 128) of a rendered figure.
    fn dark_pixels(svg: &str) -> usize {
        let image = tiny_skia::Pixmap::decode_png(&png(svg).unwrap()).unwrap();
        image.pixels().iter().filter(|p| p.red() < 128).count()
    }

    #[test]
    fn png_labels_are_drawn_with_the_embedded_font() {
        let blank = open(200.0, 60.0, "", "") + "</svg>\n";
        let labelled = open(200.0, 60.0, "Needle 4x", "depth") + "</svg>\n";
        let image = tiny_skia::Pixmap::decode_png(&png(&labelled).unwrap()).unwrap();
        assert_eq!((image.width(), image.height()), (400, 120));
        assert_eq!(dark_pixels(&blank), 0);
        assert!(dark_pixels(&labelled) > 100, "the title was not rendered");
    }
}
