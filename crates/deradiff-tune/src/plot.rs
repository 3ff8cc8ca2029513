//! PNG figures of λ search and agreement: mean reward vs λ with error bars, the Bayesian
//! optimisation trace, Bland–Altman, and the ECDF of absolute errors.
//!
//! Drawn as `deradiff-analytic` draws its figures: plotters' bitmap backend into memory, text in
//! DejaVu Sans compiled into the binary (no system font or library at build or run time),
//! encoded by the `png` crate. [`write_png`] writes atomically.

use std::path::Path;

use plotters::prelude::*;

use crate::bo::{BoPhase, BoResult};
use crate::error::{Error, Result};
use crate::stats::AgreementStats;
use crate::sweep::LambdaSummary;

use deradiff_analytic::plot::FONT;
const WIDTH: u32 = 900;
const HEIGHT: u32 = 620;

const BLUE: RGBColor = RGBColor(31, 100, 190);
const ORANGE: RGBColor = RGBColor(230, 120, 20);
const GREEN: RGBColor = RGBColor(30, 150, 70);
const GREY: RGBColor = RGBColor(110, 110, 110);
const RED: RGBColor = RGBColor(200, 40, 40);

use deradiff_analytic::plot::ensure_font;

fn plot_err<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> Error + '_ {
    move |e| Error::Plot { what: what.to_string(), detail: e.to_string() }
}

use deradiff_analytic::plot::encode_png;

/// Writes PNG bytes to `path` atomically (temporary file, then rename).
pub fn write_png(path: impl AsRef<Path>, png: &[u8]) -> Result<()> {
    crate::error::write_atomic(path.as_ref(), png)
}

/// The largest axis span drawn: beyond it ticks and padding overflow f64 (values of ±1e308).
const MAX_AXIS_SPAN: f64 = 1e300;

/// An axis range that plotters can draw: finite ends, `lo < hi`, a span of at most
/// [`MAX_AXIS_SPAN`]; a typed error otherwise (never a range that makes plotters spin).
fn axis((lo, hi): (f64, f64)) -> Result<(f64, f64)> {
    let span = hi - lo;
    if lo.is_finite() && hi.is_finite() && span.is_finite() && span > 0.0 && span <= MAX_AXIS_SPAN {
        Ok((lo, hi))
    } else {
        Err(Error::Plot {
            what: "axis".into(),
            detail: format!(
                "the values span [{lo:e}, {hi:e}], which cannot be drawn (finite values spanning at most \
                 {MAX_AXIS_SPAN:e} are needed)"
            ),
        })
    }
}

/// `(min, max)` of finite values, padded by `pad` of the span (at least `min_pad`).
fn padded(values: impl IntoIterator<Item = f64>, pad: f64, min_pad: f64) -> Result<(f64, f64)> {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return Ok((-1.0, 1.0));
    }
    let p = ((hi - lo) * pad).max(min_pad).max(1e-12 * lo.abs().max(hi.abs()));
    axis((lo - p, hi + p))
}

/// Widens `(lo, hi)` by `below` and `above` of its span: room for a legend.
fn room((lo, hi): (f64, f64), below: f64, above: f64) -> Result<(f64, f64)> {
    let span = hi - lo;
    axis((lo - below * span, hi + above * span))
}

fn finite_all(what: &str, values: impl IntoIterator<Item = f64>) -> Result<()> {
    if values.into_iter().all(f64::is_finite) {
        Ok(())
    } else {
        Err(Error::Plot { what: what.into(), detail: "the data contain NaN or infinite values".into() })
    }
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Tick labels with as many decimals as the axis span needs, and no "-0".
fn tick(v: f64, span: f64) -> String {
    let step = (span / 10.0).abs().max(1e-300);
    let decimals = (-step.log10().floor()).clamp(0.0, 12.0) as usize;
    let text = format!("{v:.decimals$}");
    if text.trim_start_matches('-').chars().all(|c| c == '0' || c == '.') {
        text.trim_start_matches('-').to_string()
    } else {
        text
    }
}

fn new_chart<'a, 'b>(
    root: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    caption: &str,
    x: (f64, f64),
    y: (f64, f64),
    x_desc: &str,
    y_desc: &str,
    what: &str,
) -> Result<Chart<'a, 'b>> {
    let mut chart = ChartBuilder::on(root)
        .caption(caption, (FONT, 21))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(plot_err(what))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|v| tick(*v, x.1 - x.0))
        .y_label_formatter(&|v| tick(*v, y.1 - y.0))
        .axis_desc_style((FONT, 16))
        .label_style((FONT, 13))
        .light_line_style(RGBColor(246, 246, 246))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(plot_err(what))?;
    Ok(chart)
}

fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, position: SeriesLabelPosition, what: &str) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .label_font((FONT, 15))
        .draw()
        .map_err(plot_err(what))
}

/// Mean reward against λ with error bars (± `z` standard errors, e.g. 1.96 for 95 %), the best
/// λ marked. `reward` names the y axis.
pub fn reward_vs_lambda_png(summaries: &[LambdaSummary], reward: &str, z: f64, title: &str) -> Result<Vec<u8>> {
    if !(z.is_finite() && z >= 0.0) {
        return Err(Error::Plot {
            what: "reward_vs_lambda.png".into(),
            detail: format!("the error-bar multiplier {z} is not ≥ 0"),
        });
    }
    let points: Vec<IntervalPoint> = summaries
        .iter()
        .map(|s| IntervalPoint { lambda: s.lambda, mean: s.mean, low: s.mean - z * s.sem, high: s.mean + z * s.sem })
        .collect();
    reward_interval_png(&points, reward, &format!("± {z} standard errors"), title)
}

/// A mean and an interval around it at one λ (see [`reward_interval_png`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IntervalPoint {
    /// λ.
    pub lambda: f64,
    /// The mean reward.
    pub mean: f64,
    /// The interval's lower end.
    pub low: f64,
    /// The interval's upper end.
    pub high: f64,
}

/// Mean reward against λ with an interval at each λ (`interval` says what it is: "± 1.96
/// standard errors", "95 % bootstrap interval"), the best λ marked. `reward` names the y axis.
pub fn reward_interval_png(points: &[IntervalPoint], reward: &str, interval: &str, title: &str) -> Result<Vec<u8>> {
    let what = "reward_vs_lambda.png";
    ensure_font()?;
    if points.is_empty() {
        return Err(Error::Plot { what: what.into(), detail: "no λ to plot".into() });
    }
    finite_all(what, points.iter().flat_map(|s| [s.lambda, s.mean, s.low, s.high]))?;
    let x = padded(points.iter().map(|s| s.lambda), 0.05, 0.05)?;
    let y = room(padded(points.iter().flat_map(|s| [s.low, s.high, s.mean]), 0.08, 1e-6)?, 0.3, 0.0)?;
    let best = points.iter().max_by(|a, b| a.mean.total_cmp(&b.mean)).map(|s| (s.lambda, s.mean));
    let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err(what))?;
        let mut chart = new_chart(&root, title, x, y, "λ", &format!("mean {reward}"), what)?;
        chart
            .draw_series(LineSeries::new(points.iter().map(|s| (s.lambda, s.mean)), BLUE.stroke_width(2)))
            .map_err(plot_err(what))?
            .label(format!("mean {reward} over prompts"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .draw_series(
                points
                    .iter()
                    .map(|s| ErrorBar::new_vertical(s.lambda, s.low, s.mean, s.high, BLUE.stroke_width(2), 10)),
            )
            .map_err(plot_err(what))?
            .label(interval)
            .legend(|(x, y)| PathElement::new(vec![(x + 10, y - 6), (x + 10, y + 6)], BLUE.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|s| Circle::new((s.lambda, s.mean), 4, BLUE.filled())))
            .map_err(plot_err(what))?;
        if let Some((bl, bm)) = best {
            chart
                .draw_series([Circle::new((bl, bm), 8, ORANGE.stroke_width(3))])
                .map_err(plot_err(what))?
                .label(format!("best: λ = {bl:.4}, {bm:.5}"))
                .legend(|(x, y)| Circle::new((x + 10, y), 6, ORANGE.stroke_width(3)));
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight, what)?;
        root.present().map_err(plot_err(what))?;
    }
    Ok(encode_png(&buf, WIDTH, HEIGHT, what)?)
}

/// The Bayesian-optimisation trace: the final GP mean ± 2σ over the range, every evaluation
/// (numbered in order; initial design and acquisition steps in different colours), λ* as a
/// vertical line, and optionally a reference curve (a dense grid of the objective).
pub fn bo_trace_png(result: &BoResult, reference: Option<&[(f64, f64)]>, title: &str) -> Result<Vec<u8>> {
    let what = "bo_trace.png";
    ensure_font()?;
    let (lo, hi) = result.gp.range();
    let n = 300;
    let curve: Vec<(f64, f64, f64)> = (0..=n)
        .map(|i| {
            let l = lo + (hi - lo) * i as f64 / n as f64;
            let (m, s) = result.gp.predict(l);
            (l, m, s)
        })
        .collect();
    let reference = reference.unwrap_or(&[]);
    finite_all(what, reference.iter().flat_map(|p| [p.0, p.1]))?;
    let y = padded(
        curve
            .iter()
            .flat_map(|c| [c.1 - 2.0 * c.2, c.1 + 2.0 * c.2])
            .chain(result.history.iter().map(|e| e.value))
            .chain(reference.iter().map(|p| p.1)),
        0.06,
        1e-6,
    )?;
    let y = room(y, 0.35, 0.0)?;
    let x = axis((lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo)))?;
    let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err(what))?;
        let mut chart = new_chart(&root, title, x, y, "λ", "objective Ĵ(λ)", what)?;
        let mut band: Vec<(f64, f64)> = curve.iter().map(|c| (c.0, c.1 + 2.0 * c.2)).collect();
        band.extend(curve.iter().rev().map(|c| (c.0, c.1 - 2.0 * c.2)));
        chart
            .draw_series([Polygon::new(band, BLUE.mix(0.15).filled())])
            .map_err(plot_err(what))?
            .label("GP mean ± 2σ")
            .legend(|(x, y)| Rectangle::new([(x, y - 6), (x + 20, y + 6)], BLUE.mix(0.25).filled()));
        if !reference.is_empty() {
            chart
                .draw_series(LineSeries::new(reference.iter().copied(), GREY.stroke_width(1)))
                .map_err(plot_err(what))?
                .label("dense grid of Ĵ(λ)")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREY.stroke_width(1)));
        }
        chart
            .draw_series(LineSeries::new(curve.iter().map(|c| (c.0, c.1)), BLUE.stroke_width(2)))
            .map_err(plot_err(what))?
            .label("GP posterior mean")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        let (y0, y1) = y;
        let star = result.lambda_star;
        chart
            .draw_series(LineSeries::new([(star, y0), (star, y1)], RED.mix(0.8).stroke_width(2)))
            .map_err(plot_err(what))?
            .label(format!("λ* = {star:.4}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart
            .draw_series(
                result
                    .history
                    .iter()
                    .filter(|e| e.phase == BoPhase::Initial)
                    .map(|e| Circle::new((e.lambda, e.value), 6, ORANGE.filled())),
            )
            .map_err(plot_err(what))?
            .label("initial design")
            .legend(|(x, y)| Circle::new((x + 10, y), 6, ORANGE.filled()));
        chart
            .draw_series(
                result
                    .history
                    .iter()
                    .filter(|e| e.phase != BoPhase::Initial)
                    .map(|e| Circle::new((e.lambda, e.value), 6, GREEN.filled())),
            )
            .map_err(plot_err(what))?
            .label("chosen by the acquisition")
            .legend(|(x, y)| Circle::new((x + 10, y), 6, GREEN.filled()));
        chart
            .draw_series(result.history.iter().map(|e| {
                // Numbered above the marker, alternating sides so that neighbours stay legible.
                let dx = if e.index % 2 == 0 { 6 } else { -14 };
                EmptyElement::at((e.lambda, e.value))
                    + Text::new(format!("{}", e.index + 1), (dx, -22), (FONT, 13).into_font().color(&BLACK))
            }))
            .map_err(plot_err(what))?;
        legend(&mut chart, SeriesLabelPosition::LowerRight, what)?;
        root.present().map_err(plot_err(what))?;
    }
    Ok(encode_png(&buf, WIDTH, HEIGHT, what)?)
}

fn check_pairs(what: &str, original: &[f64], approx: &[f64]) -> Result<()> {
    if original.len() != approx.len() || original.is_empty() {
        return Err(Error::Plot {
            what: what.into(),
            detail: format!(
                "{} originals and {} approximations: give equal, non-zero counts",
                original.len(),
                approx.len()
            ),
        });
    }
    finite_all(what, original.iter().chain(approx).copied())
}

/// Bland–Altman: for each pair, the mean of original and approximation (x) against their
/// difference approximation − original (y), with the bias and the limits of agreement of
/// `stats`.
pub fn bland_altman_png(original: &[f64], approx: &[f64], stats: &AgreementStats, title: &str) -> Result<Vec<u8>> {
    let what = "bland_altman.png";
    ensure_font()?;
    check_pairs(what, original, approx)?;
    let points: Vec<(f64, f64)> = original.iter().zip(approx).map(|(x, y)| (0.5 * (x + y), y - x)).collect();
    let x = padded(points.iter().map(|p| p.0), 0.06, 1e-9)?;
    let y = padded(
        points.iter().map(|p| p.1).chain([stats.loa_low.value, stats.loa_high.value, 0.0, stats.bias.value]),
        0.12,
        1e-9,
    )?;
    let y = room(y, 0.0, 0.3)?;
    let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err(what))?;
        let mut chart =
            new_chart(&root, title, x, y, "mean of original and approximation", "approximation − original", what)?;
        let hline = |v: f64| [(x.0, v), (x.1, v)];
        chart.draw_series(LineSeries::new(hline(0.0), GREY.stroke_width(1))).map_err(plot_err(what))?;
        let pct = |s: &crate::stats::Stat| s.percent.map(|p| format!(" ({p:.3} %)")).unwrap_or_default();
        chart
            .draw_series(LineSeries::new(hline(stats.bias.value), BLUE.stroke_width(2)))
            .map_err(plot_err(what))?
            .label(format!("bias {:.4e}{}", stats.bias.value, pct(&stats.bias)))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(hline(stats.loa_low.value), RED.stroke_width(2)))
            .map_err(plot_err(what))?
            .label(format!(
                "limits of agreement [{:.4e}, {:.4e}] (bias ± {} SD)",
                stats.loa_low.value, stats.loa_high.value, stats.config.loa_z
            ))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart.draw_series(LineSeries::new(hline(stats.loa_high.value), RED.stroke_width(2))).map_err(plot_err(what))?;
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 5, ORANGE.mix(0.8).filled())))
            .map_err(plot_err(what))?
            .label(format!("{} pairs", points.len()))
            .legend(|(x, y)| Circle::new((x + 10, y), 5, ORANGE.filled()));
        legend(&mut chart, SeriesLabelPosition::UpperRight, what)?;
        root.present().map_err(plot_err(what))?;
    }
    Ok(encode_png(&buf, WIDTH, HEIGHT, what)?)
}

/// The empirical CDF of the absolute errors `|approximation − original|`, with the MAE and the
/// median absolute error of `stats` marked.
pub fn abs_error_ecdf_png(original: &[f64], approx: &[f64], stats: &AgreementStats, title: &str) -> Result<Vec<u8>> {
    let what = "abs_error_ecdf.png";
    ensure_font()?;
    check_pairs(what, original, approx)?;
    let mut abs: Vec<f64> = original.iter().zip(approx).map(|(x, y)| (y - x).abs()).collect();
    abs.sort_by(f64::total_cmp);
    let n = abs.len() as f64;
    let max = abs.last().copied().unwrap_or(0.0).max(1e-12);
    let x = axis((0.0, max * 1.08))?;
    let mut steps: Vec<(f64, f64)> = vec![(0.0, 0.0)];
    for (i, &a) in abs.iter().enumerate() {
        steps.push((a, i as f64 / n));
        steps.push((a, (i + 1) as f64 / n));
    }
    steps.push((x.1, 1.0));
    let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err(what))?;
        let mut chart =
            new_chart(&root, title, x, (0.0, 1.04), "|approximation − original|", "fraction of pairs ≤ x", what)?;
        chart
            .draw_series(LineSeries::new(steps, BLUE.stroke_width(2)))
            .map_err(plot_err(what))?
            .label(format!("ECDF of |Δ| ({} pairs)", abs.len()))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        let vline = |v: f64| [(v, 0.0), (v, 1.04)];
        chart
            .draw_series(LineSeries::new(vline(stats.mae.value), ORANGE.stroke_width(2)))
            .map_err(plot_err(what))?
            .label(format!("MAE {:.4e}", stats.mae.value))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ORANGE.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(vline(stats.median_abs.value), GREEN.stroke_width(2)))
            .map_err(plot_err(what))?
            .label(format!("median |Δ| {:.4e}", stats.median_abs.value))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN.stroke_width(2)));
        legend(&mut chart, SeriesLabelPosition::LowerRight, what)?;
        root.present().map_err(plot_err(what))?;
    }
    Ok(encode_png(&buf, WIDTH, HEIGHT, what)?)
}
