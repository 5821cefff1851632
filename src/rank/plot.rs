//! `rank.svg`: standalone against inherited test accuracy, one labelled
//! point per architecture, the correlations in the caption.

use super::Report;
use crate::error::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

pub fn scatter(path: &Path, report: &Report) -> Result<()> {
    let pts: Vec<(f64, f64, usize)> = report
        .entries
        .iter()
        .filter_map(|e| match (e.inherited_test, e.standalone_test) {
            (Some(a), Some(b)) => Some((a * 100.0, b * 100.0, e.index)),
            _ => None,
        })
        .collect();
    if pts.is_empty() {
        return Ok(());
    }
    let range = |v: Vec<f64>| {
        let (a, b) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        let pad = ((b - a) * 0.08).max(0.2);
        (a - pad)..(b + pad)
    };
    let xr = range(pts.iter().map(|p| p.0).collect());
    let yr = range(pts.iter().map(|p| p.1).collect());
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.3}"));
    let caption = match &report.test {
        Some(s) => format!(
            "{}: Kendall τ {} · Spearman ρ {} · Pearson r {} · n = {}",
            report.config.name,
            fmt(s.kendall_tau),
            fmt(s.spearman_rho),
            fmt(s.pearson_r),
            s.n
        ),
        None => report.config.name.clone(),
    };
    let err = |e: &dyn std::fmt::Display| Error::Data {
        source_name: path.display().to_string(),
        message: format!("plot: {e}"),
    };
    let root = SVGBackend::new(path, (820, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 17))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(xr, yr)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("inherited test accuracy (%)")
        .y_desc(format!(
            "standalone test accuracy (%), {} epoch(s) from scratch",
            report.config.standalone.epochs
        ))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(pts.iter().map(|&(x, y, i)| {
            EmptyElement::at((x, y))
                + Circle::new((0, 0), 4, BLUE.filled())
                + Text::new(format!("{i}"), (6, -12), ("sans-serif", 12))
        }))
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
