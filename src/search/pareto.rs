//! Pareto fronts (accuracy up, cost down) and the search's output files:
//! JSON and CSV of every evaluated architecture, one SVG plot per measure.

use super::Record;
use crate::error::{Error, Result};
use crate::train::checkpoint::write_atomic;
use plotters::prelude::*;
use std::path::Path;

/// A cost measure of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Params,
    Flops,
    Latency,
}

impl Measure {
    pub fn name(self) -> &'static str {
        match self {
            Measure::Params => "params",
            Measure::Flops => "flops",
            Measure::Latency => "latency_ms",
        }
    }

    pub fn of(self, r: &Record) -> Option<f64> {
        match self {
            Measure::Params => Some(r.params as f64),
            Measure::Flops => Some(r.flops as f64),
            Measure::Latency => r.latency_ms,
        }
    }
}

/// Whether each record is on the front of `measure`: no other record is at
/// least as accurate and at most as costly with one of them strict.
/// Early-rejected records are never on a front.
pub fn front(records: &[Record], measure: Measure) -> Vec<bool> {
    records
        .iter()
        .map(|r| {
            let (Some(c), false) = (measure.of(r), r.rejected_early) else {
                return false;
            };
            !records.iter().any(|o| {
                let Some(oc) = measure.of(o) else {
                    return false;
                };
                !o.rejected_early
                    && o.accuracy >= r.accuracy
                    && oc <= c
                    && (o.accuracy > r.accuracy || oc < c)
            })
        })
        .collect()
}

fn measures(records: &[Record]) -> Vec<Measure> {
    let mut m = vec![Measure::Params, Measure::Flops];
    if records.iter().any(|r| r.latency_ms.is_some()) {
        m.push(Measure::Latency);
    }
    m
}

/// Writes `results.json`, `results.csv` and `pareto-<measure>.svg` into `dir`.
pub fn write_outputs(dir: &Path, records: &[Record], title: &str) -> Result<()> {
    let ms = measures(records);
    let fronts: Vec<Vec<bool>> = ms.iter().map(|&m| front(records, m)).collect();
    let rows: Vec<serde_json::Value> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut v = serde_json::to_value(r).expect("record serializes");
            for (m, f) in ms.iter().zip(&fronts) {
                v[format!("front_{}", m.name())] = serde_json::Value::Bool(f[i]);
            }
            v
        })
        .collect();
    write_atomic(
        &dir.join("results.json"),
        serde_json::to_string_pretty(&rows)
            .expect("json")
            .as_bytes(),
    )?;
    let mut csv =
        String::from("accuracy,loss,images,params,flops,latency_ms,rejected_early,generation");
    for m in &ms {
        csv += &format!(",front_{}", m.name());
    }
    csv += ",arch\n";
    for (i, r) in records.iter().enumerate() {
        csv += &format!(
            "{},{},{},{},{},{},{},{}",
            r.accuracy,
            r.loss,
            r.images,
            r.params,
            r.flops,
            r.latency_ms.map(|l| l.to_string()).unwrap_or_default(),
            r.rejected_early,
            r.generation
        );
        for f in &fronts {
            csv += &format!(",{}", f[i]);
        }
        csv += &format!(",\"{}\"\n", r.arch.to_json().replace('"', "\"\""));
    }
    write_atomic(&dir.join("results.csv"), csv.as_bytes())?;
    for (m, f) in ms.iter().zip(&fronts) {
        plot(
            &dir.join(format!("pareto-{}.svg", m.name())),
            records,
            *m,
            f,
            title,
        )?;
    }
    Ok(())
}

fn plot(path: &Path, records: &[Record], m: Measure, on_front: &[bool], title: &str) -> Result<()> {
    let pts: Vec<(f64, f64, bool)> = records
        .iter()
        .zip(on_front)
        .filter(|(r, _)| !r.rejected_early)
        .filter_map(|(r, &f)| m.of(r).map(|c| (c, r.accuracy * 100.0, f)))
        .collect();
    if pts.is_empty() {
        return Ok(());
    }
    let (scale, unit) = match m {
        Measure::Params => (1e6, "parameters (M)"),
        Measure::Flops => (1e6, "FLOPs (M multiply-adds)"),
        Measure::Latency => (1.0, "latency (ms)"),
    };
    let xs = pts.iter().map(|p| p.0 / scale);
    let (x0, x1) = xs
        .clone()
        .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let ys = pts.iter().map(|p| p.1);
    let (y0, y1) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    let pad = |a: f64, b: f64| ((b - a) * 0.05).max(1e-3);
    let err = |e: &dyn std::fmt::Display| Error::Data {
        source_name: path.display().to_string(),
        message: format!("plot: {e}"),
    };
    let root = SVGBackend::new(path, (800, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (x0 - pad(x0, x1))..(x1 + pad(x0, x1)),
            (y0 - pad(y0, y1))..(y1 + pad(y0, y1)),
        )
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(unit)
        .y_desc("inherited accuracy (%)")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(
            pts.iter()
                .filter(|p| !p.2)
                .map(|p| Circle::new((p.0 / scale, p.1), 3, BLUE.mix(0.35).filled())),
        )
        .map_err(|e| err(&e))?
        .label("evaluated")
        .legend(|(x, y)| Circle::new((x, y), 3, BLUE.mix(0.35).filled()));
    let mut front: Vec<(f64, f64)> = pts
        .iter()
        .filter(|p| p.2)
        .map(|p| (p.0 / scale, p.1))
        .collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart
        .draw_series(LineSeries::new(front.clone(), RED.stroke_width(2)))
        .map_err(|e| err(&e))?
        .label("Pareto front")
        .legend(|(x, y)| PathElement::new(vec![(x - 8, y), (x + 8, y)], RED.stroke_width(2)));
    chart
        .draw_series(front.iter().map(|&p| Circle::new(p, 4, RED.filled())))
        .map_err(|e| err(&e))?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
