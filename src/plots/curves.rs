//! Accuracy or loss per epoch, train against validation, over every phase in order, with a dashed
//! line where each later phase starts (the assignment's "fine-tuning starts here").

use super::{
    dashed_swatch, draw_legend, drawing_error, padded_range, run_color, short_label, solid_swatch, text, PlotError,
    AXIS_TITLE_SIZE, GUIDE, LEGEND_SIZE, TICK_SIZE, TITLE_SIZE,
};
use crate::domain::worker_protocol::EpochMetrics;
use plotters::coord::Shift;
use plotters::prelude::*;

/// Which curve pair to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CurveMetric {
    /// Train and validation accuracy.
    Accuracy,
    /// Train and validation loss.
    Loss,
}

impl CurveMetric {
    /// The axis title.
    pub fn name(self) -> &'static str {
        match self {
            CurveMetric::Accuracy => "accuracy",
            CurveMetric::Loss => "loss",
        }
    }

    fn train(self, epoch: &EpochMetrics) -> Option<f64> {
        Some(match self {
            CurveMetric::Accuracy => epoch.train_acc,
            CurveMetric::Loss => epoch.train_loss,
        })
    }

    fn val(self, epoch: &EpochMetrics) -> Option<f64> {
        match self {
            CurveMetric::Accuracy => epoch.val_acc,
            CurveMetric::Loss => epoch.val_loss,
        }
    }
}

/// One run's epochs, in phase and epoch order.
#[derive(Debug, Clone)]
pub struct CurveRun {
    /// The legend's name for the run (used when several runs are overlaid).
    pub label: String,
    /// Its finished epochs.
    pub epochs: Vec<EpochMetrics>,
}

/// Curves of one run (train and val in two colours) or several (one colour per run, validation
/// solid, train dashed).
#[derive(Debug, Clone)]
pub struct Curves {
    /// Accuracy or loss.
    pub metric: CurveMetric,
    /// The caption.
    pub title: String,
    /// The runs; each needs at least one epoch.
    pub runs: Vec<CurveRun>,
}

/// A line to draw: its points (x = epoch number across phases), colour and dash.
struct Line {
    label: String,
    color: RGBColor,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

impl Curves {
    fn lines(&self) -> Vec<Line> {
        let overlay = self.runs.len() > 1;
        let mut lines = Vec::new();
        for (index, run) in self.runs.iter().enumerate() {
            let series = |value: &dyn Fn(&EpochMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
                // x counts epochs across phases from 1; an epoch without a value leaves a gap
                // in the points but keeps its place on the axis.
                run.epochs.iter().enumerate().filter_map(|(i, e)| value(e).map(|v| ((i + 1) as f64, v))).collect()
            };
            let train = series(&|e| self.metric.train(e));
            let val = series(&|e| self.metric.val(e));
            let name = short_label(&run.label, 28);
            let (train_label, val_label, train_color, val_color) = if overlay {
                (format!("{name} train"), format!("{name} val"), run_color(index), run_color(index))
            } else {
                (String::from("train"), String::from("val"), run_color(0), run_color(1))
            };
            if !val.is_empty() {
                lines.push(Line { label: val_label, color: val_color, dashed: false, points: val });
            }
            lines.push(Line { label: train_label, color: train_color, dashed: overlay, points: train });
        }
        lines
    }

    /// Where each later phase starts, as (x between the two epochs, phase number), once each.
    fn phase_starts(&self) -> Vec<(f64, u32)> {
        let mut starts: Vec<(f64, u32)> = Vec::new();
        for run in &self.runs {
            for (i, pair) in run.epochs.windows(2).enumerate() {
                if pair[1].phase != pair[0].phase {
                    let start = ((i + 1) as f64 + (i + 2) as f64) / 2.0;
                    if !starts.iter().any(|(x, phase)| (*x - start).abs() < 1e-9 && *phase == pair[1].phase) {
                        starts.push((start, pair[1].phase));
                    }
                }
            }
        }
        starts
    }

    pub(super) fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), PlotError> {
        let lines = self.lines();
        let epochs = self.runs.iter().map(|run| run.epochs.len()).max().unwrap_or(0).max(1);
        let values: Vec<f64> =
            lines.iter().flat_map(|line| line.points.iter().map(|(_, y)| *y)).filter(|v| v.is_finite()).collect();
        let low = values.iter().copied().fold(f64::INFINITY, f64::min);
        let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (mut low, mut high) = if values.is_empty() { (0.0, 1.0) } else { padded_range(low, high) };
        // Neither metric goes below 0, nor accuracy above 1: keep a sliver of room there so points
        // on the limit stay round, and leave the impossible ticks unlabelled.
        let (floor, ceiling) = match self.metric {
            CurveMetric::Accuracy => (0.0, 1.0),
            CurveMetric::Loss => (0.0, f64::INFINITY),
        };
        let sliver = (high - low) * 0.03;
        (low, high) = (low.max(floor - sliver), high.min(ceiling + sliver));
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, text(TITLE_SIZE))
            .margin(24)
            .x_label_area_size(70)
            .y_label_area_size(100)
            .build_cartesian_2d(0.5f64..(epochs as f64 + 0.5), low..high)
            .map_err(drawing_error)?;
        let integer_ticks = epochs.min(12);
        chart
            .configure_mesh()
            .x_desc("epoch (all phases)")
            .y_desc(self.metric.name())
            .axis_desc_style(text(AXIS_TITLE_SIZE))
            .label_style(text(TICK_SIZE))
            .x_labels(integer_ticks)
            // Only whole epochs are real; plotters may place ticks between them.
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 1e-6 {
                    format!("{}", x.round() as i64)
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| {
                if *y < floor - 1e-9 || *y > ceiling + 1e-9 {
                    String::new()
                } else {
                    format!("{y:.2}")
                }
            })
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(drawing_error)?;

        let phase_starts = self.phase_starts();
        for (x, _) in &phase_starts {
            let dashes = DashedLineSeries::new(vec![(*x, low), (*x, high)], 10, 8, GUIDE.stroke_width(2));
            chart.draw_series(dashes).map_err(drawing_error)?;
        }

        let markers = epochs <= 60;
        for line in &lines {
            let style = line.color.stroke_width(3);
            let color = line.color;
            if line.dashed {
                let series = DashedLineSeries::new(line.points.clone(), 12, 8, style);
                chart.draw_series(series).map_err(drawing_error)?.label(&line.label).legend(dashed_swatch!(color, 3));
            } else {
                chart
                    .draw_series(LineSeries::new(line.points.clone(), style))
                    .map_err(drawing_error)?
                    .label(&line.label)
                    .legend(solid_swatch(color, 3));
            }
            if markers {
                let dots = line.points.iter().map(|point| Circle::new(*point, 5, color.filled()));
                chart.draw_series(dots).map_err(drawing_error)?;
            }
        }
        for (x, phase) in &phase_starts {
            // Where curves seldom are once a later phase starts: low for accuracy (it has risen),
            // high for loss (it has fallen); on a white box in case a curve is there anyway.
            let label = format!("phase {phase}");
            let style = text(LEGEND_SIZE).color(&GUIDE);
            let (width, height) = root.estimate_text_size(&label, &style).map_err(drawing_error)?;
            let (left, top) = match self.metric {
                CurveMetric::Accuracy => {
                    let (left, bottom) = chart.backend_coord(&(*x, low));
                    (left + 6, bottom - height as i32 - 12)
                }
                CurveMetric::Loss => {
                    let (left, top) = chart.backend_coord(&(*x, high));
                    (left + 6, top + 6)
                }
            };
            root.draw(&Rectangle::new(
                [(left, top), (left + width as i32 + 8, top + height as i32 + 6)],
                WHITE.mix(0.9).filled(),
            ))
            .map_err(drawing_error)?;
            root.draw(&Text::new(label, (left + 4, top + 3), style)).map_err(drawing_error)?;
        }
        if !phase_starts.is_empty() {
            // The phase marker gets its own legend entry, so a reader of a pasted figure knows it.
            chart
                .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())
                .map_err(drawing_error)?
                .label("next phase starts")
                .legend(dashed_swatch!(GUIDE, 2));
        }
        let position = match self.metric {
            CurveMetric::Accuracy => SeriesLabelPosition::LowerRight,
            CurveMetric::Loss => SeriesLabelPosition::UpperRight,
        };
        draw_legend(&mut chart, position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(phase: u32, epoch: u32, val: Option<f64>) -> EpochMetrics {
        EpochMetrics { phase, epoch, train_loss: 0.5, train_acc: 0.8, val_loss: val, val_acc: val, seconds: 1.0 }
    }

    #[test]
    fn phases_start_between_their_epochs_once_per_position() {
        let run = |label: &str| CurveRun {
            label: label.to_string(),
            epochs: vec![epoch(1, 1, None), epoch(1, 2, None), epoch(2, 1, None), epoch(3, 1, None)],
        };
        let curves = Curves { metric: CurveMetric::Loss, title: String::new(), runs: vec![run("a"), run("b")] };
        assert_eq!(curves.phase_starts(), [(2.5, 2), (3.5, 3)]);
    }

    #[test]
    fn one_run_is_train_and_val_and_several_are_labelled_by_run() {
        let epochs = vec![epoch(1, 1, Some(0.7)), epoch(1, 2, None), epoch(1, 3, Some(0.9))];
        let one = Curves {
            metric: CurveMetric::Accuracy,
            title: String::new(),
            runs: vec![CurveRun { label: String::from("q1"), epochs: epochs.clone() }],
        };
        let lines = one.lines();
        let labels: Vec<&str> = lines.iter().map(|line| line.label.as_str()).collect();
        assert_eq!(labels, ["val", "train"]);
        // A missing validation value leaves a gap; the next point keeps its epoch number.
        assert_eq!(lines[0].points, [(1.0, 0.7), (3.0, 0.9)]);
        let two = Curves {
            metric: CurveMetric::Accuracy,
            title: String::new(),
            runs: vec![
                CurveRun { label: String::from("a"), epochs: epochs.clone() },
                CurveRun { label: String::from("b"), epochs },
            ],
        };
        let labels: Vec<String> =
            two.lines().into_iter().map(|line| format!("{}:{}", line.label, line.dashed)).collect();
        assert_eq!(labels, ["a val:false", "a train:true", "b val:false", "b train:true"]);
    }
}
