//! PNG figures of a study: samples in 2-D and mean reward against λ.
//!
//! Rendered with plotters' bitmap backend into memory and encoded with the `png` crate; text is
//! drawn with DejaVu Sans compiled into the binary (plotters' `ab_glyph` feature), so the figures
//! render identically on machines without any installed font.

use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{Error, Result};
use crate::metrics::rows_of;
use crate::study::StudyOutput;

/// The font family name the embedded DejaVu Sans is registered under.
pub const FONT: &str = "sans-serif";
/// Most target columns drawn in the scatter figure (evenly chosen among the targets).
pub const MAX_SCATTER_TARGETS: usize = 6;
/// Most points drawn per scatter panel (the first rows of each sample set).
pub const MAX_SCATTER_POINTS: usize = 1500;

/// Registers the embedded DejaVu Sans with plotters (once per process), so text renders on
/// machines without any installed font.
pub fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::Plot { what: "text".into(), detail: "the embedded DejaVu Sans font did not load".into() })
    }
}

fn plot_err<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> Error + '_ {
    move |e| Error::Plot { what: what.to_string(), detail: e.to_string() }
}

/// Encodes an RGB8 buffer as PNG ([`deradiff_core::io::encode_png_rgb8`]; `what` names the
/// figure in errors).
pub fn encode_png(rgb: &[u8], width: u32, height: u32, what: &str) -> Result<Vec<u8>> {
    deradiff_core::io::encode_png_rgb8(rgb, width, height).map_err(plot_err(what))
}

const REFERENCE: RGBColor = RGBColor(110, 110, 110);
const ANCHOR: RGBColor = RGBColor(230, 120, 20);
const DERADIFF: RGBColor = RGBColor(31, 100, 190);
const TARGET: RGBColor = RGBColor(30, 150, 70);

/// Up to `max` indices evenly spread over `0..n`.
fn spread(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    let mut idx: Vec<usize> = (0..max).map(|i| (i * (n - 1) + (max - 1) / 2) / (max - 1)).collect();
    idx.dedup();
    idx
}

/// The first two coordinates of the first [`MAX_SCATTER_POINTS`] rows.
fn points(t: &candle_core::Tensor) -> Result<Vec<(f64, f64)>> {
    let (flat, n, d) = rows_of(t, "samples")?;
    Ok((0..n.min(MAX_SCATTER_POINTS)).map(|i| (flat[i * d], flat[i * d + 1])).collect())
}

/// A robust common range: the 0.5 % and 99.5 % quantiles, widened by 10 %.
fn range(values: &mut Vec<f64>) -> (f64, f64) {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return (-1.0, 1.0);
    }
    values.sort_by(f64::total_cmp);
    let q = |p: f64| values[((values.len() - 1) as f64 * p).round() as usize];
    let (lo, hi) = (q(0.005), q(0.995));
    let pad = ((hi - lo) * 0.1).max(1e-6);
    (lo - pad, hi + pad)
}

struct Panel<'a> {
    title: String,
    points: &'a [(f64, f64)],
    color: RGBColor,
    /// Component means of the exact distribution drawn as crosses (weight ≥ 1 %).
    modes: Vec<(f64, f64)>,
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    panel: &Panel<'_>,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> Result<()> {
    let what = "samples.png";
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 17))
        .margin(6)
        .x_label_area_size(24)
        .y_label_area_size(34)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(plot_err(what))?;
    chart
        .configure_mesh()
        .x_labels(5)
        .y_labels(5)
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .label_style((FONT, 12))
        .draw()
        .map_err(plot_err(what))?;
    let style = panel.color.mix(0.45).filled();
    chart.draw_series(panel.points.iter().map(|&(x, y)| Circle::new((x, y), 2, style))).map_err(plot_err(what))?;
    chart
        .draw_series(panel.modes.iter().map(|&(x, y)| Cross::new((x, y), 6, BLACK.stroke_width(2))))
        .map_err(plot_err(what))?;
    Ok(())
}

fn modes_of(m: &crate::GaussianMixture) -> Vec<(f64, f64)> {
    m.weights()
        .iter()
        .zip(m.means())
        .filter(|(w, _)| **w >= 0.01)
        .map(|(_, mean)| (mean[0], mean.get(1).copied().unwrap_or(0.0)))
        .collect()
}

/// The scatter figure: a column for the reference (top) and anchor (bottom), then one column per
/// target β (at most [`MAX_SCATTER_TARGETS`]) with DeRaDiff's samples at λ on top and the exact
/// target model's samples below. Crosses mark the modes of the exact distribution of each panel.
/// Needs d ≥ 2 (the first two coordinates are drawn).
pub fn samples_png(output: &StudyOutput) -> Result<Vec<u8>> {
    let what = "samples.png";
    ensure_font()?;
    let cfg = &output.config;
    if cfg.mixture.dim() < 2 {
        return Err(Error::Plot { what: what.into(), detail: "a scatter plot needs data of dimension ≥ 2".into() });
    }
    let chosen = spread(output.result.rows.len(), MAX_SCATTER_TARGETS);
    let reference = points(&output.samples.reference)?;
    let anchor = points(&output.samples.anchor)?;
    let mut derad = Vec::new();
    let mut target = Vec::new();
    for &i in &chosen {
        derad.push(points(&output.samples.deradiff[i])?);
        target.push(points(&output.samples.target[i])?);
    }
    let all = || reference.iter().chain(&anchor).chain(derad.iter().flatten()).chain(target.iter().flatten());
    let xr = range(&mut all().map(|p| p.0).collect::<Vec<_>>());
    let yr = range(&mut all().map(|p| p.1).collect::<Vec<_>>());

    let anchor_mixture = cfg.mixture.tilt(&cfg.reward, cfg.anchor_beta)?;
    let mut top = vec![Panel {
        title: "reference (λ = 0)".into(),
        points: &reference,
        color: REFERENCE,
        modes: modes_of(&cfg.mixture),
    }];
    let mut bottom = vec![Panel {
        title: format!("anchor β = {}", cfg.anchor_beta),
        points: &anchor,
        color: ANCHOR,
        modes: modes_of(&anchor_mixture),
    }];
    for (k, &i) in chosen.iter().enumerate() {
        let row = &output.result.rows[i];
        let exact = cfg.mixture.tilt(&cfg.reward, row.target_beta)?;
        top.push(Panel {
            title: format!("DeRaDiff λ = {:.3}", row.lambda),
            points: &derad[k],
            color: DERADIFF,
            modes: modes_of(&exact),
        });
        let beta = if row.target_beta.is_finite() { format!("{:.3}", row.target_beta) } else { "∞".into() };
        bottom.push(Panel {
            title: format!("exact model β = {beta}"),
            points: &target[k],
            color: TARGET,
            modes: modes_of(&exact),
        });
    }

    let cols = top.len();
    let (panel_w, panel_h, header) = (300u32, 300u32, 56u32);
    let (width, height) = (panel_w * cols as u32, header + 2 * panel_h);
    let mut buf = vec![0u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err(what))?;
        let (head, body) = root.split_vertically(header);
        head.draw_text(
            &format!(
                "Samples: DeRaDiff (anchor β = {}, weights [1−λ, λ]) vs exact aligned models — {}, {} steps",
                cfg.anchor_beta, output.result.scheduler, output.result.steps
            ),
            &(FONT, 20).into_text_style(&head),
            (12, 8),
        )
        .map_err(plot_err(what))?;
        head.draw_text(
            &format!(
                "top: reference and DeRaDiff at λ; bottom: anchor and the exact model at β_anchor/λ; × = modes of the exact distribution; {}",
                output.result.reward
            ),
            &(FONT, 14).into_text_style(&head).color(&RGBColor(70, 70, 70)),
            (12, 34),
        )
        .map_err(plot_err(what))?;
        let areas = body.split_evenly((2, cols));
        for (area, panel) in areas.iter().zip(top.iter().chain(bottom.iter())) {
            draw_panel(area, panel, xr, yr)?;
        }
        root.present().map_err(plot_err(what))?;
    }
    encode_png(&buf, width, height, what)
}

/// Mean reward against λ: the exact mean reward of `p_ref · exp(r λ / β_anchor)` as a curve, the
/// sampled exact target models and DeRaDiff at every target λ as markers, and the anchor (λ = 1).
pub fn reward_curve_png(output: &StudyOutput) -> Result<Vec<u8>> {
    let what = "reward_vs_lambda.png";
    ensure_font()?;
    let cfg = &output.config;
    let rows = &output.result.rows;
    let lmax = rows.iter().map(|r| r.lambda).fold(1.0f64, f64::max) * 1.08;
    let n_curve = 200;
    let mut curve = Vec::with_capacity(n_curve + 1);
    for i in 0..=n_curve {
        let lambda = lmax * i as f64 / n_curve as f64;
        let beta = if lambda == 0.0 { f64::INFINITY } else { cfg.anchor_beta / lambda };
        let tilted = cfg.mixture.tilt(&cfg.reward, beta)?;
        curve.push((lambda, cfg.reward.exact_mean(&tilted)?));
    }
    let derad: Vec<(f64, f64)> = rows.iter().map(|r| (r.lambda, r.deradiff_mean_reward)).collect();
    let target: Vec<(f64, f64)> = rows.iter().map(|r| (r.lambda, r.target_model_mean_reward)).collect();
    let mut ys: Vec<f64> = curve.iter().chain(&derad).chain(&target).map(|p| p.1).collect();
    ys.retain(|y| y.is_finite());
    let (ymin, ymax) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| (a.min(y), b.max(y)));
    let pad = ((ymax - ymin) * 0.08).max(1e-3);
    let (y0, y1) = (ymin - pad, ymax + pad);

    let (width, height) = (900u32, 620u32);
    let mut buf = vec![0u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err(what))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "Mean reward vs λ — anchor β = {}, {}, {} steps, {} samples",
                    cfg.anchor_beta, output.result.scheduler, output.result.steps, output.result.samples
                ),
                (FONT, 21),
            )
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..lmax, y0..y1)
            .map_err(plot_err(what))?;
        chart
            .configure_mesh()
            .x_desc("λ = β_anchor / β_target")
            .y_desc(format!("mean reward, {}", output.result.reward))
            .axis_desc_style((FONT, 16))
            .label_style((FONT, 13))
            .light_line_style(RGBColor(246, 246, 246))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(plot_err(what))?;
        chart
            .draw_series(LineSeries::new([(1.0, y0), (1.0, y1)], ANCHOR.mix(0.6).stroke_width(2)))
            .map_err(plot_err(what))?
            .label("anchor (λ = 1)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ANCHOR.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(curve.iter().copied(), BLACK.stroke_width(2)))
            .map_err(plot_err(what))?
            .label("exact E[r] of the model aligned at β_anchor/λ")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
        chart
            .draw_series(
                target
                    .iter()
                    .map(|&(x, y)| EmptyElement::at((x, y)) + Rectangle::new([(-6, -6), (6, 6)], TARGET.filled())),
            )
            .map_err(plot_err(what))?
            .label("exact target model, sampled")
            .legend(|(x, y)| Rectangle::new([(x + 4, y - 6), (x + 16, y + 6)], TARGET.filled()));
        chart.draw_series(LineSeries::new(derad.iter().copied(), DERADIFF.stroke_width(2))).map_err(plot_err(what))?;
        chart
            .draw_series(derad.iter().map(|&(x, y)| Circle::new((x, y), 5, DERADIFF.filled())))
            .map_err(plot_err(what))?
            .label("DeRaDiff (reference + anchor), sampled")
            .legend(|(x, y)| Circle::new((x + 10, y), 5, DERADIFF.filled()));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(180, 180, 180))
            .label_font((FONT, 15))
            .draw()
            .map_err(plot_err(what))?;
        root.present().map_err(plot_err(what))?;
    }
    encode_png(&buf, width, height, what)
}
