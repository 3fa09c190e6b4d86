//! `yap bench --plot FILE.png`: latency distributions (empirical CDFs) drawn with plotters.

use std::path::Path;

use anyhow::{Context, Result, bail};
use plotters::prelude::*;

/// Font files tried for labels (Debian's fonts-dejavu-core first).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

fn register_font() -> Result<()> {
    let path = FONTS
        .iter()
        .find(|p| Path::new(p).is_file())
        .context("no font for plot labels found; install fonts-dejavu-core")?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("cannot load font {path}"))
}

/// One curve: a label and its samples.
pub type Series = (String, Vec<f64>);

/// Draws one panel per metric; each panel holds the CDF of every series.
pub fn draw(path: &Path, panels: &[(&str, Vec<Series>)]) -> Result<()> {
    if panels.is_empty() {
        bail!("nothing to plot");
    }
    register_font()?;
    let width = 520 * panels.len() as u32;
    let root = BitMapBackend::new(path, (width, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((1, panels.len()));
    for (area, (metric, series)) in areas.iter().zip(panels) {
        let max_x = series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold(1.0f64, f64::max)
            * 1.05;
        let mut chart = ChartBuilder::on(area)
            .caption(*metric, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(0.0..max_x, 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("ms")
            .y_desc("fraction of turns")
            .label_style(("sans-serif", 13))
            .draw()?;
        for (i, (label, values)) in series.iter().enumerate() {
            let mut v = values.clone();
            v.sort_by(|a, b| a.total_cmp(b));
            let n = v.len().max(1) as f64;
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = v
                .iter()
                .enumerate()
                .map(|(k, x)| (*x, (k + 1) as f64 / n))
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(label.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
