//! ROC curves on the test set, one per run, each with its AUC in the legend, over the chance line.

use super::{
    dashed_swatch, draw_legend, drawing_error, run_color, short_label, solid_swatch, text, PlotError, AXIS_TITLE_SIZE,
    GUIDE, TICK_SIZE, TITLE_SIZE,
};
use plotters::coord::Shift;
use plotters::prelude::*;

/// One run's ROC curve.
#[derive(Debug, Clone)]
pub struct RocRun {
    /// The run's name (omitted from the legend when it is the only run).
    pub label: String,
    /// (false positive rate, true positive rate), in threshold order from (0, 0) to (1, 1).
    pub points: Vec<(f64, f64)>,
    /// Area under the curve, when defined.
    pub auc: Option<f64>,
}

/// ROC curves to overlay.
#[derive(Debug, Clone)]
pub struct Roc {
    /// The caption.
    pub title: String,
    /// One or more runs.
    pub runs: Vec<RocRun>,
}

impl Roc {
    fn legend(&self, run: &RocRun) -> String {
        let auc = match run.auc {
            Some(auc) => format!("AUC = {auc:.3}"),
            None => String::from("AUC undefined"),
        };
        if self.runs.len() == 1 {
            auc
        } else {
            format!("{} ({auc})", short_label(&run.label, 28))
        }
    }

    pub(super) fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), PlotError> {
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, text(TITLE_SIZE))
            .margin(24)
            .x_label_area_size(70)
            .y_label_area_size(100)
            .build_cartesian_2d(-0.01f64..1.01f64, -0.01f64..1.01f64)
            .map_err(drawing_error)?;
        chart
            .configure_mesh()
            .x_desc("false positive rate (1 − specificity)")
            .y_desc("true positive rate (recall)")
            .axis_desc_style(text(AXIS_TITLE_SIZE))
            .label_style(text(TICK_SIZE))
            .x_labels(6)
            .y_labels(6)
            .x_label_formatter(&|x| format!("{x:.1}"))
            .y_label_formatter(&|y| format!("{y:.1}"))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(drawing_error)?;
        chart
            .draw_series(DashedLineSeries::new(vec![(0.0, 0.0), (1.0, 1.0)], 10, 8, GUIDE.stroke_width(2)))
            .map_err(drawing_error)?
            .label("chance (AUC = 0.5)")
            .legend(dashed_swatch!(GUIDE, 2));
        for (index, run) in self.runs.iter().enumerate() {
            let color = run_color(index);
            chart
                .draw_series(LineSeries::new(run.points.clone(), color.stroke_width(3)))
                .map_err(drawing_error)?
                .label(self.legend(run))
                .legend(solid_swatch(color, 3));
        }
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight)
    }
}
