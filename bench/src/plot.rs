//! SVG plots (plotters): a quantity over time, and a latency distribution.

use hdrhistogram::Histogram;
use plotters::prelude::*;
use std::path::Path;

/// One line of a chart: a name and its (x, y) points.
pub type Line = (String, Vec<(f64, f64)>);

const COLORS: [RGBColor; 4] = [BLUE, RED, GREEN, MAGENTA];

/// Draws `lines` into `path` as an SVG line chart.
///
/// # Errors
/// A message naming the file when drawing or writing fails.
pub fn lines(path: &Path, title: &str, x: &str, y: &str, lines: &[Line]) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("cannot draw {}: {e}", path.display());
    let points = lines.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_max) = (0f64, 0f64);
    for &(px, py) in points {
        x_max = x_max.max(px);
        y_max = y_max.max(py);
    }
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max.max(1e-9) * 1.02, 0f64..y_max.max(1e-9) * 1.05)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc(x)
        .y_desc(y)
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, (name, points)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| fail(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
    }
    if lines.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))
}

/// Draws the cumulative distribution of `h` (µs) into `path`, latency in ms
/// against the fraction of samples at or below it.
///
/// # Errors
/// As [`lines`].
pub fn cdf(path: &Path, title: &str, h: &Histogram<u64>) -> Result<(), String> {
    let points: Vec<(f64, f64)> = h
        .iter_quantiles(4)
        .map(|v| (v.value_iterated_to() as f64 / 1e3, v.quantile_iterated_to()))
        .collect();
    lines(
        path,
        title,
        "latency (ms)",
        "fraction at or below",
        &[("CDF".into(), points)],
    )
}
