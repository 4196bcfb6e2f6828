//! Report-ready plots, rendered in the server with plotters (pure Rust, no libtorch): accuracy and
//! loss curves over every epoch with the phase boundaries marked, the ROC curve with its AUC in the
//! legend, and the confusion matrix. One run or several overlaid for a comparison.
//!
//! Each plot is plain data in, bytes out, with no I/O: SVG keeps its text as text (sharp at any
//! size, editable), PNG draws it with DejaVu Sans embedded in the binary, so a headless server
//! with no fonts installed still writes labels a report can use. Sizes are chosen for pasting
//! into a document at page width: 1200 px wide with 22–34 px text.

mod confusion;
mod curves;
mod roc;

pub use confusion::Confusion;
pub use curves::{CurveMetric, CurveRun, Curves};
pub use roc::{Roc, RocRun};

use plotters::coord::Shift;
use plotters::prelude::*;
use std::sync::Once;

/// DejaVu Sans (Bitstream Vera license, `fonts/DejaVuSans-LICENSE.txt`), for PNG text.
static FONT: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");

/// The family every plot asks for; registered once with the embedded font.
const FAMILY: &str = "sans-serif";

/// Text sizes in pixels: readable when a 1200 px plot is pasted at page width.
const TITLE_SIZE: u32 = 34;
const AXIS_TITLE_SIZE: u32 = 26;
const TICK_SIZE: u32 = 22;
const LEGEND_SIZE: u32 = 22;

/// Tableau's ten colours, the matplotlib default students know; run `i` gets colour `i % 10`.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Grey for reference lines (chance diagonal, phase boundaries).
const GUIDE: RGBColor = RGBColor(110, 110, 110);

/// The colour of run `index`.
fn run_color(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Scalable vector graphics, text kept as text.
    Svg,
    /// A bitmap, text drawn with the embedded font.
    Png,
}

impl Format {
    /// Parses a file extension (`svg`, `png`).
    pub fn from_extension(extension: &str) -> Option<Format> {
        match extension {
            "svg" => Some(Format::Svg),
            "png" => Some(Format::Png),
            _ => None,
        }
    }

    /// The file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Svg => "svg",
            Format::Png => "png",
        }
    }

    /// The HTTP content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Svg => "image/svg+xml",
            Format::Png => "image/png",
        }
    }
}

/// A plot, ready to render.
#[derive(Debug, Clone)]
pub enum Plot {
    /// Accuracy or loss per epoch.
    Curves(Curves),
    /// ROC curves with their AUCs.
    Roc(Roc),
    /// One confusion matrix.
    Confusion(Confusion),
}

/// Why a plot could not be rendered (a bug, not bad input: the callers check their data).
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// plotters refused to draw.
    #[error("drawing the plot failed: {0}")]
    Drawing(String),
    /// The bitmap could not be encoded.
    #[error("encoding the PNG failed: {0}")]
    Encoding(String),
}

fn drawing_error(err: impl std::fmt::Display) -> PlotError {
    PlotError::Drawing(err.to_string())
}

impl Plot {
    fn size(&self) -> (u32, u32) {
        match self {
            Plot::Curves(_) => (1200, 760),
            Plot::Roc(_) => (1000, 900),
            Plot::Confusion(_) => (1000, 900),
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), PlotError> {
        root.fill(&WHITE).map_err(drawing_error)?;
        match self {
            Plot::Curves(curves) => curves.draw(root),
            Plot::Roc(roc) => roc.draw(root),
            Plot::Confusion(confusion) => confusion.draw(root),
        }
    }
}

/// Renders a plot as SVG or PNG bytes.
pub fn render(plot: &Plot, format: Format) -> Result<Vec<u8>, PlotError> {
    register_font();
    let (width, height) = plot.size();
    match format {
        Format::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
                plot.draw(&root)?;
                root.present().map_err(drawing_error)?;
            }
            Ok(svg.into_bytes())
        }
        Format::Png => {
            let mut pixels = vec![0u8; width as usize * height as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
                plot.draw(&root)?;
                root.present().map_err(drawing_error)?;
            }
            let image = image::RgbImage::from_raw(width, height, pixels)
                .ok_or_else(|| PlotError::Encoding(String::from("pixel buffer of the wrong size")))?;
            let mut png = std::io::Cursor::new(Vec::new());
            image.write_to(&mut png, image::ImageFormat::Png).map_err(|err| PlotError::Encoding(err.to_string()))?;
            Ok(png.into_inner())
        }
    }
}

fn register_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        if plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            unreachable!("the embedded DejaVu Sans is a valid font (its unit tests render with it)");
        }
    });
}

/// A text style of the plots' family.
fn text(size: u32) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&BLACK)
}

/// A legend swatch for a dashed series: two dashes in 20 px, as the series is drawn (an
/// expression, because plotters wants the legend element's concrete type per call).
macro_rules! dashed_swatch {
    ($color:expr, $width:expr) => {
        move |(x, y): (i32, i32)| {
            EmptyElement::at((x, y))
                + PathElement::new(vec![(0, 0), (7, 0)], $color.stroke_width($width))
                + PathElement::new(vec![(12, 0), (20, 0)], $color.stroke_width($width))
        }
    };
}
pub(crate) use dashed_swatch;

/// A legend swatch for a solid series: a 20 px line.
/// The legend of a line plot: series labels in a white, bordered box at `position`.
fn draw_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<
        'a,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    position: SeriesLabelPosition,
) -> Result<(), PlotError> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font(text(LEGEND_SIZE))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(190, 190, 190))
        .margin(14)
        .draw()
        .map_err(drawing_error)
}

fn solid_swatch(color: RGBColor, width: u32) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
}

/// A readable label: long names are cut with an ellipsis so they never push the plot aside.
fn short_label(label: &str, max_chars: usize) -> String {
    if label.chars().count() <= max_chars {
        return label.to_string();
    }
    let kept: String = label.chars().take(max_chars.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// Pads a data range so lines do not touch the frame; a flat range gets a visible height.
fn padded_range(low: f64, high: f64) -> (f64, f64) {
    let span = high - low;
    let pad = if span > 1e-12 { span * 0.08 } else { high.abs().max(1.0) * 0.05 };
    (low - pad, high + pad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::worker_protocol::EpochMetrics;

    fn epoch(phase: u32, epoch: u32, train_acc: f64, val_acc: Option<f64>) -> EpochMetrics {
        EpochMetrics {
            phase,
            epoch,
            train_loss: 1.0 - train_acc,
            train_acc,
            val_loss: val_acc.map(|v| 1.0 - v),
            val_acc,
            seconds: 1.0,
        }
    }

    fn curves() -> Plot {
        let epochs = vec![epoch(1, 1, 0.6, Some(0.55)), epoch(1, 2, 0.7, Some(0.6)), epoch(2, 1, 0.8, Some(0.7))];
        Plot::Curves(Curves {
            metric: CurveMetric::Accuracy,
            title: String::from("q1 <&> accuracy"),
            runs: vec![CurveRun { label: String::from("q1"), epochs }],
        })
    }

    fn decode(png: &[u8]) -> image::RgbImage {
        image::load_from_memory_with_format(png, image::ImageFormat::Png).unwrap().to_rgb8()
    }

    #[test]
    fn svg_keeps_labels_as_escaped_text() {
        let svg = String::from_utf8(render(&curves(), Format::Svg).unwrap()).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        for label in ["epoch", "accuracy", "train", "val", "phase 2", "q1 &lt;&amp;&gt; accuracy"] {
            assert!(svg.contains(label), "missing {label:?}");
        }
    }

    #[test]
    fn png_has_the_promised_size_and_drawn_text() {
        let image = decode(&render(&curves(), Format::Png).unwrap());
        assert_eq!(image.dimensions(), (1200, 760));
        // Text is drawn with anti-aliasing: many grey levels, not just the two line colours.
        let greys = image.pixels().filter(|p| p[0] == p[1] && p[1] == p[2] && p[0] > 20 && p[0] < 235).count();
        assert!(greys > 2000, "too few anti-aliased text pixels ({greys}): was the font drawn?");
        // The train line is Tableau blue.
        assert!(image.pixels().any(|p| p.0 == [31, 119, 180]));
    }

    #[test]
    fn roc_legend_names_the_auc_and_confusion_shows_counts() {
        let roc = Plot::Roc(Roc {
            title: String::from("ROC"),
            runs: vec![RocRun {
                label: String::from("a"),
                points: vec![(0.0, 0.0), (0.0, 0.5), (1.0, 1.0)],
                auc: Some(0.75),
            }],
        });
        let svg = String::from_utf8(render(&roc, Format::Svg).unwrap()).unwrap();
        assert!(svg.contains("AUC = 0.750") && svg.contains("chance"), "{svg}");
        let confusion = Plot::Confusion(Confusion {
            title: String::from("Confusion matrix"),
            classes: vec![String::from("NORMAL"), String::from("PNEUMONIA")],
            counts: vec![vec![7, 3], vec![1, 9]],
        });
        let svg = String::from_utf8(render(&confusion, Format::Svg).unwrap()).unwrap();
        for label in
            ["NORMAL", "PNEUMONIA", "true class", "predicted class", "\n7\n</text>", "\n9\n</text>", "70.0%", "90.0%"]
        {
            assert!(svg.contains(label), "missing {label:?}");
        }
        assert_eq!(decode(&render(&confusion, Format::Png).unwrap()).dimensions(), (1000, 900));
    }

    #[test]
    fn labels_and_ranges_stay_readable() {
        assert_eq!(short_label("short", 10), "short");
        assert_eq!(short_label("a-very-long-run-name", 8), "a-very-…");
        assert_eq!(padded_range(0.5, 0.5), (0.45, 0.55));
        let (low, high) = padded_range(0.0, 1.0);
        assert!(low < 0.0 && high > 1.0);
    }
}
