//! The report's PNG plots (plotters, bitmap backend): grouped bars of helpfulness and of the
//! safety rates per model, helpfulness per category, the training loss curves, and line plots
//! of the rates by round (`rounds.png`), reward-model accuracy by rating
//! (`reward_models.png`), best-of-K rewards and gold against K (`rejection_sampling.png`),
//! PPO curves (`ppo.png`) and instruction adherence by turn with and without GAtt
//! (`adherence.png`). A plot whose data the run does not have is not drawn.
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

const COLORS: [RGBColor; 10] = [
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

/// Draws every plot the report has data for into `out`; returns their paths.
pub fn plot_all(r: &Report, out: &Path) -> Result<Vec<PathBuf>, ReportError> {
    if !font_available() {
        return Ok(Vec::new());
    }
    let mut written = Vec::new();
    if !r.graph.is_empty() {
        written.push(graph(&out.join("graph.png"), &r.graph)?);
    }
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
    if r.models.len() > 1 {
        written.push(rounds(&out.join("rounds.png"), r)?);
    }
    if !r.reward_models.is_empty() {
        written.push(reward_models(&out.join("reward_models.png"), r)?);
    }
    if !r.rejection_sampling.is_empty() {
        written.push(rejection_sampling(&out.join("rejection_sampling.png"), r)?);
    }
    if !r.ppo.is_empty() {
        written.push(ppo(&out.join("ppo.png"), r)?);
    }
    if !r.dialogues.is_empty() {
        written.push(adherence(&out.join("adherence.png"), r)?);
    }
    Ok(written)
}

/// The pipeline graph as boxes in layers (an instance one layer below the deepest instance it
/// reads), edges from producer to reader, each box coloured by what the last run did.
fn graph(path: &Path, nodes: &[super::pipeline_graph::GraphNode]) -> Result<PathBuf, ReportError> {
    let err = plot_err(path);
    let e = |x: &dyn std::fmt::Display| err(x.to_string());
    let mut depth = vec![0usize; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        // Nodes come dependencies first, so every producer's depth is known.
        depth[i] = n.deps.iter().filter(|(d, _)| *d < i).map(|(d, _)| depth[*d] + 1).max().unwrap_or(0);
    }
    let layers = depth.iter().max().map_or(1, |d| d + 1);
    let mut slot = vec![0usize; nodes.len()];
    let mut per_layer = vec![0usize; layers];
    for i in 0..nodes.len() {
        slot[i] = per_layer[depth[i]];
        per_layer[depth[i]] += 1;
    }
    let widest = per_layer.iter().copied().max().unwrap_or(1);
    let (box_w, gap_x) = (170i32, 24i32);
    let row_h = (1900 / layers as i32).clamp(30, 64);
    let box_h = (row_h * 2 / 3).min(40);
    let width = ((box_w + gap_x) * widest as i32 + 40).clamp(800, 3800);
    let height = (row_h * layers as i32 + 80).clamp(300, 2000);
    let root = BitMapBackend::new(path, (width as u32, height as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let center = |i: usize| -> (i32, i32) {
        let row_w = (box_w + gap_x) * per_layer[depth[i]] as i32 - gap_x;
        let x0 = (width - row_w) / 2 + (box_w + gap_x) * slot[i] as i32;
        (x0 + box_w / 2, 60 + row_h * depth[i] as i32 + box_h / 2)
    };
    let fill = |status: Option<&str>| match status {
        Some("ran") | Some("partial") => RGBColor(255, 190, 120),
        Some("cached") => RGBColor(150, 190, 250),
        Some(_) => RGBColor(240, 110, 110),
        None => RGBColor(200, 200, 200),
    };
    let title = ("sans-serif", 16).into_font();
    root.draw(&Text::new("Pipeline graph: orange ran, blue cached, red failed or skipped (last run)", (20, 16), title)).map_err(|x| e(&x))?;
    for (i, n) in nodes.iter().enumerate() {
        let (x, y) = center(i);
        for (d, _) in &n.deps {
            let (px, py) = center(*d);
            root.draw(&PathElement::new(vec![(px, py + box_h / 2), (x, y - box_h / 2)], RGBColor(120, 120, 120).stroke_width(1))).map_err(|x| e(&x))?;
        }
    }
    let label = ("sans-serif", 13).into_font();
    let small = ("sans-serif", 11).into_font();
    for (i, n) in nodes.iter().enumerate() {
        let (x, y) = center(i);
        let corners = [(x - box_w / 2, y - box_h / 2), (x + box_w / 2, y + box_h / 2)];
        root.draw(&Rectangle::new(corners, fill(n.status.as_deref()).filled())).map_err(|x| e(&x))?;
        root.draw(&Rectangle::new(corners, BLACK.stroke_width(1))).map_err(|x| e(&x))?;
        root.draw(&Text::new(n.name.clone(), (x - box_w / 2 + 6, y - box_h / 2 + 3), label.clone())).map_err(|x| e(&x))?;
        if box_h >= 30 {
            root.draw(&Text::new(n.kind.clone(), (x - box_w / 2 + 6, y + 2), small.clone())).map_err(|x| e(&x))?;
        }
    }
    root.present().map_err(|x| e(&x))?;
    Ok(path.to_path_buf())
}

/// One line of a line plot; points with a missing value are left out.
struct Line {
    name: String,
    color: RGBColor,
    /// 2 for the main series, 1 for companions (medians, held-so-far).
    width: u32,
    points: Vec<(f64, f64)>,
}

impl Line {
    fn new(name: impl Into<String>, color: RGBColor, width: u32, points: impl IntoIterator<Item = (f64, Option<f64>)>) -> Line {
        let points = points.into_iter().filter_map(|(x, y)| y.filter(|v| v.is_finite()).map(|y| (x, y))).collect();
        Line { name: name.into(), color, width, points }
    }
}

/// The axes of one panel.
struct Axes<'a> {
    title: &'a str,
    x: std::ops::Range<f64>,
    /// None: fitted to the data.
    y: Option<std::ops::Range<f64>>,
    x_desc: &'a str,
    y_desc: &'a str,
    /// Labels at integer x (categories, turns, log2 K); None: plain numbers.
    x_label: Option<&'a dyn Fn(i64) -> String>,
}

/// A y range holding every point, padded by 5 % (at least ±0.05 around a single value).
fn fit(lines: &[Line]) -> std::ops::Range<f64> {
    let ys = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.05).max(0.05);
    (lo - pad)..(hi + pad)
}

/// Where the legend hides the least data: for each place plotters offers at the right and left
/// edges (upper, middle, lower), the legend's box is estimated from the number of lines and the
/// longest name (about 20 px a line, 7 px a character) and the points and segment midpoints it
/// would cover are counted; the fewest wins, ties in the order upper right, middle right, lower
/// right, then the same at the left.
fn legend_place(x: &std::ops::Range<f64>, y: &std::ops::Range<f64>, lines: &[Line], plot_px: (u32, u32)) -> SeriesLabelPosition {
    let (w, h) = (x.end - x.start, y.end - y.start);
    let longest = lines.iter().map(|l| l.name.chars().count()).max().unwrap_or(0) as f64;
    let box_w = ((longest * 7.0 + 40.0) / plot_px.0.max(1) as f64).min(1.0) * w;
    let box_h = ((lines.len() as f64 * 20.0 + 12.0) / plot_px.1.max(1) as f64).min(1.0) * h;
    let mut marks: Vec<(f64, f64)> = Vec::new();
    for l in lines {
        marks.extend(l.points.iter().copied());
        marks.extend(l.points.windows(2).map(|p| ((p[0].0 + p[1].0) / 2.0, (p[0].1 + p[1].1) / 2.0)));
    }
    let mid = (y.start + y.end) / 2.0;
    let places = [
        (SeriesLabelPosition::UpperRight, true, y.end - box_h),
        (SeriesLabelPosition::MiddleRight, true, mid - box_h / 2.0),
        (SeriesLabelPosition::LowerRight, true, y.start),
        (SeriesLabelPosition::UpperLeft, false, y.end - box_h),
        (SeriesLabelPosition::MiddleLeft, false, mid - box_h / 2.0),
        (SeriesLabelPosition::LowerLeft, false, y.start),
    ];
    let mut best = (usize::MAX, SeriesLabelPosition::UpperRight);
    for (place, right, y0) in places {
        let (x0, x1) = if right { (x.end - box_w, x.end) } else { (x.start, x.start + box_w) };
        let covered = marks.iter().filter(|(px, py)| (x0..=x1).contains(px) && (y0..=y0 + box_h).contains(py)).count();
        if covered < best.0 {
            best = (covered, place);
        }
    }
    best.1
}

/// Draws `lines` into `area` (with markers, so a one-point line shows).
fn line_panel(area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>, axes: &Axes, lines: &[Line]) -> Result<(), String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let y = axes.y.clone().unwrap_or_else(|| fit(lines));
    let mut chart = ChartBuilder::on(area)
        .caption(axes.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(axes.x.clone(), y.clone())
        .map_err(|x| e(&x))?;
    let span = (axes.x.end - axes.x.start).round().max(1.0) as usize;
    let fmt = |v: &f64| match axes.x_label {
        Some(f) if (v - v.round()).abs() < 1e-6 => f(v.round() as i64),
        Some(_) => String::new(),
        None => format!("{v}"),
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(axes.x_desc).y_desc(axes.y_desc).x_label_formatter(&fmt);
    if axes.x_label.is_some() {
        mesh.x_labels((span + 1).min(26));
    }
    mesh.draw().map_err(|x| e(&x))?;
    for l in lines {
        let (color, width) = (l.color, l.width);
        let style = if width > 1 { color.stroke_width(width) } else { color.mix(0.6).stroke_width(1) };
        chart
            .draw_series(LineSeries::new(l.points.iter().copied(), style))
            .map_err(|x| e(&x))?
            .label(l.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], style));
        chart.draw_series(l.points.iter().map(|p| Circle::new(*p, width + 1, style.filled()))).map_err(|x| e(&x))?;
    }
    let (pw, ph) = chart.plotting_area().dim_in_pixel();
    let place = legend_place(&axes.x, &y, lines, (pw, ph));
    chart.configure_series_labels().position(place).background_style(WHITE.mix(0.85)).border_style(BLACK).draw().map_err(|x| e(&x))?;
    Ok(())
}

/// One PNG of `panels` side by side.
fn line_plot(path: &Path, height: u32, panels: &[(Axes, Vec<Line>)]) -> Result<PathBuf, ReportError> {
    let err = plot_err(path);
    let width = (560 * panels.len() as u32).max(800);
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| err(x.to_string()))?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for ((axes, lines), area) in panels.iter().zip(&areas) {
        line_panel(area, axes, lines).map_err(&err)?;
    }
    root.present().map_err(|x| err(x.to_string()))?;
    Ok(path.to_path_buf())
}

/// Helpfulness (greedy and sampled), violation rate and borderline false-refusal rate by model,
/// models in pipeline order (the SFT model, then each round's policy).
fn rounds(path: &Path, r: &Report) -> Result<PathBuf, ReportError> {
    let names: Vec<String> = r.models.iter().map(|m| m.name.clone()).collect();
    type Get = fn(&crate::eval::Metrics) -> Option<f64>;
    let series: [(&str, Get, usize); 3] = [("helpfulness", |m| m.helpfulness, 0), ("violation rate", |m| m.violation_rate, 3), ("false refusal (borderline)", |m| m.false_refusal_borderline, 2)];
    let mut lines = Vec::new();
    for (name, get, c) in series {
        lines.push(Line::new(format!("{name}, greedy"), COLORS[c], 2, r.models.iter().enumerate().map(|(i, m)| (i as f64, get(&m.report.greedy)))));
        lines.push(Line::new(format!("{name}, sampled"), COLORS[c], 1, r.models.iter().enumerate().map(|(i, m)| (i as f64, m.report.sampled.as_ref().and_then(get)))));
    }
    let label = |i: i64| names.get(i as usize).cloned().unwrap_or_default();
    let axes = Axes { title: "Rates by model (pipeline order)", x: -0.3..(names.len() as f64 - 0.7), y: Some(0.0..1.05), x_desc: "model", y_desc: "rate / score", x_label: Some(&label) };
    line_plot(path, 460, &[(axes, lines)])
}

/// Held-out accuracy against gold by rating level, one line per reward-model instance.
fn reward_models(path: &Path, r: &Report) -> Result<PathBuf, ReportError> {
    let lines: Vec<Line> = r
        .reward_models
        .iter()
        .enumerate()
        .map(|(i, rm)| {
            let a = &rm.report["accuracy_by_rating"];
            Line::new(rm.instance.clone(), COLORS[i % COLORS.len()], 2, super::RATING_LEVELS.iter().enumerate().map(|(x, l)| (x as f64, a[*l].as_f64())))
        })
        .collect();
    let label = |i: i64| super::RATING_LEVELS.get(i as usize).map(|l| l.replace('_', " ")).unwrap_or_default();
    let axes = Axes { title: "Reward-model accuracy on held-out pairs, by rating", x: -0.3..3.3, y: Some(0.0..1.05), x_desc: "annotator rating of the pair", y_desc: "agreement with gold", x_label: Some(&label) };
    line_plot(path, 460, &[(axes, lines)])
}

/// Best-of-K against K (log2 axis): the reward models' max and median score, and the gold
/// helpfulness of the chosen answer and the gold median; one colour per instance.
fn rejection_sampling(path: &Path, r: &Report) -> Result<PathBuf, ReportError> {
    let mut reward = Vec::new();
    let mut gold = Vec::new();
    let mut max_k = 1usize;
    for (i, rs) in r.rejection_sampling.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let ks = super::k_values(&rs.report);
        max_k = max_k.max(ks.last().copied().unwrap_or(1));
        let at = |key: &str| -> Vec<(f64, Option<f64>)> { ks.iter().map(|k| ((*k as f64).log2(), rs.report[key][k.to_string().as_str()].as_f64())).collect() };
        reward.push(Line::new(format!("{} max", rs.instance), c, 2, at("max_reward_by_k")));
        reward.push(Line::new(format!("{} median", rs.instance), c, 1, at("median_reward_by_k")));
        gold.push(Line::new(format!("{} chosen", rs.instance), c, 2, at("gold_of_chosen_by_k")));
        gold.push(Line::new(format!("{} median", rs.instance), c, 1, at("gold_median_by_k")));
    }
    let label = |i: i64| if i >= 0 { format!("{}", 1u64 << i.min(62)) } else { String::new() };
    let x = -0.2..((max_k as f64).log2().max(1.0) + 0.2);
    let panels = [
        (Axes { title: "Reward-model score of the best of K", x: x.clone(), y: None, x_desc: "K (samples per prompt)", y_desc: "max / median reward", x_label: Some(&label) }, reward),
        (Axes { title: "Gold helpfulness of the chosen answer", x, y: None, x_desc: "K (samples per prompt)", y_desc: "gold of chosen / gold median", x_label: Some(&label) }, gold),
    ];
    line_plot(path, 460, &panels)
}

/// PPO per iteration: reward, KL and gold, one line per instance.
fn ppo(path: &Path, r: &Report) -> Result<PathBuf, ReportError> {
    let mut iters = 1usize;
    let mut panels: Vec<(&str, &str, Vec<Line>)> = vec![("Reward (mean combined RM score)", "reward", Vec::new()), ("KL from the starting policy", "kl", Vec::new()), ("Gold helpfulness of the samples", "gold", Vec::new())];
    for (i, p) in r.ppo.iter().enumerate() {
        let curve = p.report["curve"].as_array().cloned().unwrap_or_default();
        iters = iters.max(curve.len());
        for (_, key, lines) in panels.iter_mut() {
            lines.push(Line::new(p.instance.clone(), COLORS[i % COLORS.len()], 2, curve.iter().enumerate().map(|(t, pt)| ((t + 1) as f64, pt[*key].as_f64()))));
        }
    }
    let label = |i: i64| i.to_string();
    let x = 0.7..(iters as f64 + 0.3);
    let panels: Vec<(Axes, Vec<Line>)> = panels
        .into_iter()
        .map(|(title, key, lines)| (Axes { title, x: x.clone(), y: None, x_desc: "iteration", y_desc: key, x_label: Some(&label) }, lines))
        .collect();
    line_plot(path, 420, &panels)
}

/// Adherence (and held at every turn so far) by turn, with and without GAtt; helpfulness by
/// turn beside it. Without a pairing, every `eval_dialogue` instance is drawn.
fn adherence(path: &Path, r: &Report) -> Result<PathBuf, ReportError> {
    let p = r.gatt_pairing;
    let mut chosen: Vec<(String, usize)> = Vec::new();
    if let Some(i) = p.with_gatt {
        chosen.push((format!("with GAtt ({})", r.dialogues[i].instance), i));
    }
    if let Some(i) = p.without_gatt {
        chosen.push((format!("without GAtt ({})", r.dialogues[i].instance), i));
    }
    if chosen.is_empty() {
        chosen = r.dialogues.iter().enumerate().map(|(i, d)| (d.instance.clone(), i)).collect();
    }
    let (mut adh, mut helpful, mut turns) = (Vec::new(), Vec::new(), 1usize);
    for (k, (name, i)) in chosen.iter().enumerate() {
        let rep = &r.dialogues[*i].report;
        let c = COLORS[k % COLORS.len()];
        let at = |key: &str| -> Vec<(f64, Option<f64>)> { super::dialogue::series(rep, key).into_iter().enumerate().map(|(t, v)| ((t + 1) as f64, v)).collect() };
        turns = turns.max(super::dialogue::series(rep, "adherence").len());
        adh.push(Line::new(name.clone(), c, 2, at("adherence")));
        adh.push(Line::new(format!("{name}, held so far"), c, 1, at("adherence_all_so_far")));
        helpful.push(Line::new(name.clone(), c, 2, at("helpfulness_by_turn")));
    }
    let label = |i: i64| i.to_string();
    let x = 0.5..(turns as f64 + 0.5);
    let panels = [
        (Axes { title: "Instruction adherence by turn", x: x.clone(), y: Some(0.0..1.05), x_desc: "turn", y_desc: "share of dialogues obeying", x_label: Some(&label) }, adh),
        (Axes { title: "Gold helpfulness by turn", x, y: Some(0.0..1.05), x_desc: "turn", y_desc: "helpfulness", x_label: Some(&label) }, helpful),
    ];
    line_plot(path, 460, &panels)
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

#[cfg(test)]
mod tests {
    use super::super::dialogue::{DialogueEval, Pairing};
    use super::super::StageReport;
    use super::*;

    #[test]
    fn the_legend_goes_where_the_lines_are_not() {
        let flat = |name: &str, y: f64| Line::new(name, COLORS[0], 2, (1..=20).map(|t| (t as f64, Some(y))));
        let (x, y, px) = (0.5..20.5, 0.0..1.05, (480, 330));
        // Near 1.0 and near 0.15 (adherence with and without GAtt): the empty middle.
        let two = [flat("with", 0.98), flat("without", 0.15)];
        assert!(matches!(legend_place(&x, &y, &two, px), SeriesLabelPosition::MiddleRight));
        // Everything high: below it; everything low: above it (the first place without data).
        assert!(matches!(legend_place(&x, &y, &[flat("a", 0.95)], px), SeriesLabelPosition::MiddleRight));
        assert!(matches!(legend_place(&x, &y, &[flat("a", 0.95), flat("b", 0.5)], px), SeriesLabelPosition::LowerRight));
        assert!(matches!(legend_place(&x, &y, &[flat("a", 0.1)], px), SeriesLabelPosition::UpperRight));
        // A line rising to the right under a wide legend (a long name): the lower right is free.
        let rising = [Line::new("a name long enough for a wide legend box", COLORS[0], 2, (1..=20).map(|t| (t as f64, Some(t as f64 / 20.0))))];
        let place = legend_place(&x, &y, &rising, px);
        assert!(matches!(place, SeriesLabelPosition::LowerRight), "{place:?}");
    }

    /// Synthetic RLHF and dialogue reports draw all four of their plots (none of the model
    /// plots: there are no models), and a report with nothing draws nothing.
    #[test]
    fn each_section_with_data_draws_its_plot() {
        if !font_available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let st = |instance: &str, report: serde_json::Value| StageReport { instance: instance.into(), report };
        let turns: Vec<f64> = (0..20).map(|t| 1.0 - t as f64 / 40.0).collect();
        let r = Report {
            pipeline: "p".into(),
            models: Vec::new(),
            curves: Vec::new(),
            onnx_judges: Vec::new(),
            reward_models: vec![
                st("rm_helpful@1", serde_json::json!({"accuracy_by_rating": {"significantly_better": 0.9, "better": 0.8, "slightly_better": 0.6, "negligibly_better": 0.5}})),
                st("rm_safe@1", serde_json::json!({"accuracy_by_rating": {"better": 0.7}})),
            ],
            rejection_sampling: vec![st(
                "rs@1",
                serde_json::json!({"max_reward_by_k": {"1": 0.4, "2": 0.5, "4": 0.6}, "median_reward_by_k": {"1": 0.4, "2": 0.4, "4": 0.4},
                                   "gold_of_chosen_by_k": {"1": 0.3, "2": 0.35, "4": 0.4}, "gold_median_by_k": {"1": 0.3, "2": 0.3, "4": 0.3}}),
            )],
            ppo: vec![st("ppo@1", serde_json::json!({"curve": [{"reward": 0.4, "kl": 0.0, "gold": 0.3}, {"reward": 0.5, "kl": 0.1, "gold": null}]}))],
            graph: Vec::new(),
            dialogues: vec![
                DialogueEval { instance: "a_gatt".into(), model: Some("gatt".into()), report: serde_json::json!({"adherence": turns, "helpfulness_by_turn": turns}) },
                DialogueEval { instance: "a_sft".into(), model: Some("sft".into()), report: serde_json::json!({"adherence": [0.2, null, 0.1]}) },
            ],
            gatt_pairing: Pairing { with_gatt: Some(0), without_gatt: Some(1) },
        };
        let written = plot_all(&r, dir.path()).unwrap();
        let names: Vec<String> = written.iter().map(|p| p.file_name().unwrap().to_string_lossy().to_string()).collect();
        assert_eq!(names, ["reward_models.png", "rejection_sampling.png", "ppo.png", "adherence.png"]);
        for p in &written {
            let bytes = std::fs::read(p).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", p.display());
        }
        let empty = Report { reward_models: Vec::new(), rejection_sampling: Vec::new(), ppo: Vec::new(), dialogues: Vec::new(), ..r };
        assert!(plot_all(&empty, &dir.path().join("empty")).unwrap().is_empty());
    }
}
