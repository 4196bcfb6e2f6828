//! The confusion matrix as a report shows it: rows are the true class, columns the predicted one,
//! each cell with its count and its share of the row (recall on the diagonal), shaded by that share
//! so a minority class's errors are as visible as the majority's.

use super::{drawing_error, short_label, text, PlotError, AXIS_TITLE_SIZE, TITLE_SIZE};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// A confusion matrix, `counts[true_class][predicted_class]`.
#[derive(Debug, Clone)]
pub struct Confusion {
    /// The caption.
    pub title: String,
    /// Class names, in index order.
    pub classes: Vec<String>,
    /// Square matrix of counts.
    pub counts: Vec<Vec<u64>>,
}

/// White to a dark blue by `share` in [0, 1].
fn shade(share: f64) -> RGBColor {
    let share = share.clamp(0.0, 1.0);
    let mix = |from: f64, to: f64| (from + (to - from) * share).round() as u8;
    RGBColor(mix(247.0, 8.0), mix(251.0, 69.0), mix(255.0, 148.0))
}

impl Confusion {
    pub(super) fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), PlotError> {
        let (width, height) = root.dim_in_pixel();
        let (width, height) = (width as i32, height as i32);
        let n = self.counts.len().max(1) as i32;
        let centered = Pos::new(HPos::Center, VPos::Center);
        root.draw(&Text::new(self.title.clone(), (width / 2, 36), text(TITLE_SIZE).pos(centered)))
            .map_err(drawing_error)?;

        // The grid: a square under the title, leaving room for class names on the left and below.
        let (left, top) = (250, 90);
        let side = (width - left - 40).min(height - top - 150);
        let cell = side / n;
        let value_size = (cell / 5).clamp(14, 40) as u32;
        let share_size = (cell / 8).clamp(12, 24) as u32;
        let class_size = (cell / 6).clamp(14, 24) as u32;
        for (row, counts) in self.counts.iter().enumerate() {
            let total: u64 = counts.iter().sum();
            for (column, count) in counts.iter().enumerate() {
                let share = if total > 0 { *count as f64 / total as f64 } else { 0.0 };
                let (x0, y0) = (left + column as i32 * cell, top + row as i32 * cell);
                let fill = shade(share);
                root.draw(&Rectangle::new([(x0, y0), (x0 + cell, y0 + cell)], fill.filled())).map_err(drawing_error)?;
                root.draw(&Rectangle::new([(x0, y0), (x0 + cell, y0 + cell)], RGBColor(160, 160, 160).stroke_width(1)))
                    .map_err(drawing_error)?;
                let ink = if share > 0.5 { WHITE } else { BLACK };
                let center = (x0 + cell / 2, y0 + cell / 2);
                root.draw(&Text::new(
                    count.to_string(),
                    (center.0, center.1 - value_size as i32 / 2),
                    text(value_size).color(&ink).pos(centered),
                ))
                .map_err(drawing_error)?;
                let share_text = if total > 0 { format!("{:.1}%", share * 100.0) } else { String::from("—") };
                root.draw(&Text::new(
                    share_text,
                    (center.0, center.1 + share_size as i32),
                    text(share_size).color(&ink).pos(centered),
                ))
                .map_err(drawing_error)?;
            }
        }
        let grid = cell * n;
        let right_aligned = Pos::new(HPos::Right, VPos::Center);
        for (index, class) in self.classes.iter().enumerate().take(self.counts.len()) {
            let name = short_label(class, 16);
            let middle = index as i32 * cell + cell / 2;
            root.draw(&Text::new(name.clone(), (left - 12, top + middle), text(class_size).pos(right_aligned)))
                .map_err(drawing_error)?;
            root.draw(&Text::new(name, (left + middle, top + grid + 24), text(class_size).pos(centered)))
                .map_err(drawing_error)?;
        }
        root.draw(&Text::new(
            "predicted class",
            (left + grid / 2, top + grid + 70),
            text(AXIS_TITLE_SIZE).pos(centered),
        ))
        .map_err(drawing_error)?;
        let vertical = text(AXIS_TITLE_SIZE).transform(FontTransform::Rotate270).pos(centered);
        root.draw(&Text::new("true class", (34, top + grid / 2), vertical)).map_err(drawing_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shading_runs_from_white_to_dark_blue() {
        assert_eq!(shade(0.0), RGBColor(247, 251, 255));
        assert_eq!(shade(1.0), RGBColor(8, 69, 148));
        assert_eq!(shade(7.0), shade(1.0), "shares are clamped");
    }
}
