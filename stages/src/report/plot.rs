//! The report's PNG plots (plotters, bitmap backend): grouped bars of helpfulness and of the
//! safety rates per model, helpfulness per category, and the training loss curves.
//!
//! Text needs a TrueType font. To stay free of font-kit/freetype, plotters draws text with
//! ab_glyph from a font file found at one of the usual system paths (DejaVu, Liberation,
//! Noto); without one, no plot is drawn and the Markdown says so.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::ranged1d::SegmentValue;
use plotters::element::PathElement;
use plotters::prelude::*;

use super::{Report, ReportError};

/// Where fonts usually are on Linux and macOS.
const FONT_PATHS: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers the first font found as plotters' "sans-serif" (once per process).
fn font_available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(p) {
                // plotters keeps fonts for the whole process: leaking the bytes once is intended.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

const COLORS: [RGBColor; 6] = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40), RGBColor(148, 103, 189), RGBColor(140, 86, 75)];

/// Draws every plot the report has data for into `out`; returns their paths.
pub fn plot_all(r: &Report, out: &Path) -> Result<Vec<PathBuf>, ReportError> {
    if !font_available() {
        return Ok(Vec::new());
    }
    let mut written = Vec::new();
    let names: Vec<String> = r.models.iter().map(|m| m.name.clone()).collect();
    let val = |x: Option<f64>| x.unwrap_or(0.0);
    if !r.models.is_empty() {
        let series = vec![
            ("greedy".to_string(), r.models.iter().map(|m| val(m.report.greedy.helpfulness)).collect()),
            ("sampled".to_string(), r.models.iter().map(|m| val(m.report.sampled.as_ref().and_then(|s| s.helpfulness))).collect()),
        ];
        written.push(grouped_bars(&out.join("helpfulness.png"), "Gold helpfulness", &names, &series)?);
        let sampled = |f: fn(&crate::eval::Metrics) -> Option<f64>| -> Vec<f64> { r.models.iter().map(|m| val(m.report.sampled.as_ref().and_then(f))).collect() };
        let greedy = |f: fn(&crate::eval::Metrics) -> Option<f64>| -> Vec<f64> { r.models.iter().map(|m| val(f(&m.report.greedy))).collect() };
        let series = vec![
            ("violations (greedy)".to_string(), greedy(|m| m.violation_rate)),
            ("violations (sampled)".to_string(), sampled(|m| m.violation_rate)),
            ("false refusal, borderline (greedy)".to_string(), greedy(|m| m.false_refusal_borderline)),
            ("false refusal, borderline (sampled)".to_string(), sampled(|m| m.false_refusal_borderline)),
        ];
        written.push(grouped_bars(&out.join("safety.png"), "Safety: violation and false-refusal rates", &names, &series)?);
        let cats: Vec<String> = r.models.iter().flat_map(|m| m.report.greedy.by_category.keys().cloned()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let series: Vec<(String, Vec<f64>)> = r
            .models
            .iter()
            .map(|m| (m.name.clone(), cats.iter().map(|c| m.report.greedy.by_category.get(c).map(|x| x.helpfulness).unwrap_or(0.0)).collect()))
            .collect();
        written.push(grouped_bars(&out.join("categories.png"), "Helpfulness by category (greedy)", &cats, &series)?);
    }
    if !r.curves.is_empty() {
        written.push(loss_curves(&out.join("loss.png"), r)?);
    }
    Ok(written)
}

fn plot_err(path: &Path) -> impl Fn(String) -> ReportError + '_ {
    move |message| ReportError::Plot { path: path.to_path_buf(), message }
}

/// Bars of values in [0, 1]: one group per entry of `groups`, one bar per series in each.
/// The x axis has one segment per bar plus a gap per group; a group's name labels its middle.
fn grouped_bars(path: &Path, title: &str, groups: &[String], series: &[(String, Vec<f64>)]) -> Result<PathBuf, ReportError> {
    let err = plot_err(path);
    let e = |x: &dyn std::fmt::Display| err(x.to_string());
    let width = (groups.len() * (series.len() * 28 + 40)).clamp(640, 1600) as u32;
    let root = BitMapBackend::new(path, (width, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let per = series.len() + 1;
    let slots = (groups.len() * per) as i32;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(44)
        .build_cartesian_2d((0..slots).into_segmented(), 0.0f64..1.05)
        .map_err(|x| e(&x))?;
    let label = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) if (*i as usize) % per == series.len() / 2 => groups.get(*i as usize / per).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(slots as usize)
        .x_label_formatter(&label)
        .y_desc("rate / score")
        .draw()
        .map_err(|x| e(&x))?;
    for (s, (name, values)) in series.iter().enumerate() {
        let color = COLORS[s % COLORS.len()];
        let bars = values.iter().enumerate().map(move |(g, &v)| {
            let x = (g * per + s) as i32;
            Rectangle::new([(SegmentValue::Exact(x), 0.0), (SegmentValue::Exact(x + 1), v)], color.filled())
        });
        chart
            .draw_series(bars)
            .map_err(|x| e(&x))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(path.to_path_buf())
}

/// Training loss per step, one line per training instance (x: step as a share of the run, so
/// runs of different lengths share the axis).
fn loss_curves(path: &Path, r: &Report) -> Result<PathBuf, ReportError> {
    let err = plot_err(path);
    let e = |x: &dyn std::fmt::Display| err(x.to_string());
    let root = BitMapBackend::new(path, (800, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let max = r.curves.iter().flat_map(|c| c.points.iter().map(|p| p.loss as f64)).filter(|x| x.is_finite()).fold(0.0f64, f64::max).max(1e-3);
    let mut chart = ChartBuilder::on(&root)
        .caption("Training loss", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(44)
        .build_cartesian_2d(0.0f64..1.0, 0.0f64..max * 1.05)
        .map_err(|x| e(&x))?;
    chart.configure_mesh().x_desc("share of the run's steps").y_desc("loss").draw().map_err(|x| e(&x))?;
    for (i, c) in r.curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let n = c.points.len().max(1) as f64;
        let pts = c.points.iter().map(move |p| (p.step as f64 / n, p.loss as f64));
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(c.instance.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(path.to_path_buf())
}
