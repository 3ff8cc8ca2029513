//! The report's page: HTML built as text, every text from the files escaped.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use super::{CompareData, SweepData, TuneData};
use crate::results::SweepRow;
use crate::stats::Stat;

/// The page's style and script, inline (the page loads nothing from elsewhere).
const CSS: &str = include_str!("page.css");
const JS: &str = include_str!("page.js");

/// `text` for HTML text and attribute values: `& < > " '` escaped.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path for an `src` attribute: its parts percent-encoded where a URL needs it (`#`, `?`, `%`,
/// spaces, non-ASCII), `/` kept, then HTML-escaped.
fn src(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    escape(&out)
}

/// A number as the tables show it.
fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.4}")
    } else {
        v.to_string()
    }
}

/// The whole page.
pub(crate) fn page(
    dir: &Path,
    sweep: Option<&SweepData>,
    tune: Option<&TuneData>,
    compare: Option<&CompareData>,
    notes: &[String],
) -> String {
    let mut h = String::new();
    let title = format!("deradiff report — {}", dir.display());
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" \
         content=\"width=device-width, initial-scale=1\">\n<meta http-equiv=\"Content-Security-Policy\" \
         content=\"default-src 'none'; img-src 'self' file:; style-src 'unsafe-inline'; script-src \
         'unsafe-inline'\">\n<title>{}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n\
         <h1>deradiff report</h1>\n<p class=\"source\">{}</p>\n",
        escape(&title),
        escape(&dir.display().to_string())
    );
    if !notes.is_empty() {
        h.push_str("<ul class=\"notes\">\n");
        for n in notes {
            let _ = writeln!(h, "<li>{}</li>", escape(n));
        }
        h.push_str("</ul>\n");
    }
    h.push_str("<pre id=\"selftest\" hidden></pre>\n");
    if let Some(s) = sweep {
        sweep_section(&mut h, dir, s);
    }
    if let Some(t) = tune {
        tune_section(&mut h, t);
    }
    if let Some(c) = compare {
        compare_section(&mut h, c);
    }
    let _ = write!(h, "<script>\n{JS}</script>\n</body>\n</html>\n");
    h
}

/// One prompt entry of a sweep: its rows by λ.
struct Entry<'a> {
    id: &'a str,
    seed: u64,
    text: Option<&'a str>,
    by_lambda: HashMap<u64, &'a SweepRow>,
}

/// A λ as a key (−0 as 0).
fn key(l: f64) -> u64 {
    (l + 0.0).to_bits()
}

/// The prompt entries (in the spec's order, then any other in the rows' order) and the sorted λ.
fn entries(s: &SweepData) -> (Vec<Entry<'_>>, Vec<f64>) {
    let mut out: Vec<Entry<'_>> = Vec::new();
    let mut index: HashMap<(&str, u64), usize> = HashMap::new();
    if let Some(spec) = &s.header.spec {
        for p in &spec.prompts {
            index.entry((p.id.as_str(), p.seed)).or_insert_with(|| {
                out.push(Entry { id: &p.id, seed: p.seed, text: p.text.as_deref(), by_lambda: HashMap::new() });
                out.len() - 1
            });
        }
    }
    let mut lambdas: Vec<f64> = s.header.spec.as_ref().map(|sp| sp.lambdas.clone()).unwrap_or_default();
    for r in &s.rows {
        let i = *index.entry((r.prompt.as_str(), r.seed)).or_insert_with(|| {
            out.push(Entry { id: &r.prompt, seed: r.seed, text: None, by_lambda: HashMap::new() });
            out.len() - 1
        });
        out[i].by_lambda.insert(key(r.lambda), r);
        lambdas.push(r.lambda);
    }
    let mut lambdas: Vec<f64> = lambdas.into_iter().map(|l| l + 0.0).collect();
    lambdas.sort_by(f64::total_cmp);
    lambdas.dedup();
    (out, lambdas)
}

/// A prompt entry's gain in reward `name`: its best mean over the grid minus its mean at λ = 0
/// (or at the smallest λ with a row where 0 has none).
fn gain(e: &Entry<'_>, lambdas: &[f64], name: &str) -> Option<f64> {
    let means: Vec<(f64, f64)> = lambdas
        .iter()
        .filter_map(|&l| e.by_lambda.get(&key(l)).and_then(|r| r.reward(name)).map(|s| (l, s.mean)))
        .collect();
    let base = means.iter().find(|(l, _)| *l == 0.0).or(means.first())?.1;
    let best = means.iter().map(|m| m.1).fold(f64::NEG_INFINITY, f64::max);
    Some(best - base)
}

fn sweep_section(h: &mut String, dir: &Path, s: &SweepData) {
    let (entries, lambdas) = entries(s);
    let rewards = &s.header.rewards;
    let _ = write!(
        h,
        "<section id=\"sweep\">\n<h2>Sweep</h2>\n<p>{} rows ({}) · {} prompt entries × {} λ · {} samples per (λ, \
         prompt) · rewards: {}</p>\n<p class=\"meta\">model: {}</p>\n",
        s.rows.len(),
        escape(&s.source),
        entries.len(),
        lambdas.len(),
        s.header.samples_per_prompt,
        if rewards.is_empty() { "none (images only)".to_string() } else { escape(&rewards.join(", ")) },
        escape(&s.header.model)
    );
    if !s.curves.is_empty() {
        h.push_str("<div class=\"curves\">\n");
        for (reward, file) in &s.curves {
            let _ = writeln!(
                h,
                "<figure><img class=\"plot\" src=\"{}\" alt=\"{} against λ\"><figcaption>mean {} over prompt \
                 entries against λ, with a 95 % percentile bootstrap interval (2000 resamples of the entries)\
                 </figcaption></figure>",
                src(file),
                escape(reward),
                escape(reward)
            );
        }
        h.push_str("</div>\n");
    }
    h.push_str(
        "<div class=\"controls\">\n<label>Filter prompts <input id=\"filter\" type=\"search\" \
         placeholder=\"text or id\"></label>\n<label>Sort <select id=\"sort\">\n<option value=\"\">sweep order</option>\n",
    );
    for (i, r) in rewards.iter().enumerate() {
        let _ = writeln!(h, "<option value=\"{i}\">gain in {} (largest first)</option>", escape(r));
    }
    h.push_str(
        "</select></label>\n<span id=\"shown\"></span>\n</div>\n<p class=\"meta\">gain: a prompt's best mean reward \
         over the grid minus its mean at λ = 0 (or at the smallest λ where 0 is not in the grid)</p>\n\
         <table id=\"grid\">\n<thead><tr><th>prompt</th>",
    );
    for l in &lambdas {
        let _ = write!(h, "<th>λ = {}</th>", escape(&format!("{l}")));
    }
    h.push_str("</tr></thead>\n<tbody>\n");
    for (order, e) in entries.iter().enumerate() {
        let text = e.text.unwrap_or(e.id);
        let _ = write!(
            h,
            "<tr data-order=\"{order}\" data-prompt=\"{}\"",
            escape(&format!("{}\n{}", text.to_lowercase(), e.id.to_lowercase()))
        );
        let mut gains = Vec::new();
        for (i, r) in rewards.iter().enumerate() {
            if let Some(g) = gain(e, &lambdas, r) {
                let _ = write!(h, " data-gain-{i}=\"{g:e}\"");
                gains.push(format!("{} {:+.4}", escape(r), g));
            }
        }
        let _ = write!(
            h,
            "><th class=\"prompt\"><div class=\"ptext\">{}</div><div class=\"meta\">{}seed {}{}</div></th>",
            escape(text),
            if e.text.is_some_and(|t| t != e.id) { format!("id {} · ", escape(e.id)) } else { String::new() },
            e.seed,
            if gains.is_empty() { String::new() } else { format!(" · gain: {}", gains.join(", ")) }
        );
        for l in &lambdas {
            cell(h, dir, e.by_lambda.get(&key(*l)).copied(), *l, text);
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody>\n</table>\n</section>\n");
}

/// One (prompt, λ) cell: its images and its rewards (empty where the row is missing).
fn cell(h: &mut String, dir: &Path, row: Option<&SweepRow>, lambda: f64, text: &str) {
    let Some(row) = row else {
        h.push_str("<td class=\"missing\">no row</td>");
        return;
    };
    h.push_str("<td>");
    if !row.images.is_empty() {
        h.push_str("<div class=\"imgs\">");
        for image in &row.images {
            if dir.join(image).is_file() {
                let _ = write!(
                    h,
                    "<img src=\"{}\" loading=\"lazy\" alt=\"{} at λ = {lambda}\" title=\"{}\">",
                    src(image),
                    escape(&text.chars().take(200).collect::<String>()),
                    escape(image)
                );
            } else {
                let _ = write!(h, "<div class=\"missing\">missing: {}</div>", escape(image));
            }
        }
        h.push_str("</div>");
    }
    h.push_str("<dl class=\"r\">");
    for r in &row.rewards {
        let _ = write!(h, "<dt>{}</dt><dd>{} ± {}</dd>", escape(&r.name), num(r.mean), num(r.std));
    }
    if let Some(sat) = row.saturation {
        let _ = write!(h, "<dt>saturation</dt><dd>{sat:.3}</dd>");
    }
    h.push_str("</dl></td>");
}

/// A field of a JSON object as text.
fn field(v: &serde_json::Value, name: &str) -> String {
    match v.get(name) {
        Some(serde_json::Value::Number(n)) => n.as_f64().map(num).unwrap_or_else(|| n.to_string()),
        Some(serde_json::Value::String(s)) => escape(s),
        Some(serde_json::Value::Null) | None => "—".into(),
        Some(other) => escape(&other.to_string()),
    }
}

fn tune_section(h: &mut String, t: &TuneData) {
    let bo = &t.bo;
    let pair = |name: &str| match bo.get(name).and_then(|v| v.as_array()) {
        Some(a) if a.len() == 2 => {
            let v = |i: usize| num(a[i].as_f64().unwrap_or(f64::NAN));
            format!("λ = {}, {}", v(0), v(1))
        }
        _ => "—".into(),
    };
    let _ = write!(
        h,
        "<section id=\"tune\">\n<h2>Tuning run (Bayesian optimisation of λ)</h2>\n<table>\n<tr><th>λ*</th><td \
         class=\"num\">{}</td></tr>\n<tr><th>value at λ*</th><td class=\"num\">{}</td></tr>\n<tr><th>best observed</th>\
         <td>{}</td></tr>\n<tr><th>best predicted (posterior mean)</th><td>{}</td></tr>\n<tr><th>converged</th><td>{}</td>\
         </tr>\n</table>\n",
        field(bo, "lambda_star"),
        field(bo, "value_star"),
        pair("best_observed"),
        pair("best_predicted"),
        field(bo, "converged")
    );
    if let Some(trace) = &t.trace {
        let _ = writeln!(
            h,
            "<figure><img class=\"plot\" src=\"{}\" alt=\"BO trace\"><figcaption>the evaluations and the final \
             posterior (GP mean ± 2σ)</figcaption></figure>",
            src(trace)
        );
    } else {
        h.push_str("<p class=\"missing\">bo_trace.png (the posterior figure) is not in the folder</p>\n");
    }
    h.push_str(
        "<h3>Evaluations</h3>\n<table>\n<thead><tr><th>#</th><th>λ</th><th>value</th><th>phase</th>\
         <th>acquisition</th><th>best λ so far</th><th>best value so far</th></tr></thead>\n<tbody>\n",
    );
    for e in bo.get("history").and_then(|v| v.as_array()).into_iter().flatten() {
        let index = e.get("index").and_then(|v| v.as_u64()).map_or("—".into(), |i| (i + 1).to_string());
        let _ = writeln!(
            h,
            "<tr><td class=\"num\">{index}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td \
             class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            field(e, "lambda"),
            field(e, "value"),
            field(e, "phase"),
            field(e, "acquisition"),
            field(e, "best_lambda"),
            field(e, "best_value")
        );
    }
    h.push_str("</tbody>\n</table>\n</section>\n");
}

fn compare_section(h: &mut String, c: &CompareData) {
    let s = &c.stats;
    let _ = write!(
        h,
        "<section id=\"compare\">\n<h2>Agreement (compare)</h2>\n<p>{} pairs; mean of the originals {}</p>\n\
         <table>\n<thead><tr><th>statistic</th><th>value</th><th>% of mean</th></tr></thead>\n<tbody>\n",
        s.n,
        num(s.reference_mean)
    );
    let rows: [(&str, &Stat); 11] = [
        ("MAE", &s.mae),
        ("MAE, bootstrap mean", &s.mae_bootstrap_mean),
        ("MAE, CI low", &s.mae_ci_low),
        ("MAE, CI high", &s.mae_ci_high),
        ("RMSE", &s.rmse),
        ("median |Δ|", &s.median_abs),
        ("max |Δ|", &s.max_abs),
        ("Bland–Altman bias", &s.bias),
        ("SD of the differences", &s.sd_diff),
        ("lower limit of agreement", &s.loa_low),
        ("upper limit of agreement", &s.loa_high),
    ];
    for (name, stat) in rows {
        let pct = stat.percent.map_or("—".into(), |p| format!("{p:.3} %"));
        let _ = writeln!(
            h,
            "<tr><th>{name}</th><td class=\"num\">{}</td><td class=\"num\">{pct}</td></tr>",
            num(stat.value)
        );
    }
    h.push_str("</tbody>\n</table>\n<div class=\"curves\">\n");
    for f in &c.figures {
        let _ = writeln!(h, "<figure><img class=\"plot\" src=\"{}\" alt=\"{}\"></figure>", src(f), escape(f));
    }
    h.push_str("</div>\n</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes_and_encodes_paths() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(escape("ünï 🙂"), "ünï 🙂");
        assert_eq!(src("images/p0000-s1-l0.500.png"), "images/p0000-s1-l0.500.png");
        assert_eq!(src("../a b/#x?.png"), "../a%20b/%23x%3F.png");
        // A hostile path in a results file stays a path: no scheme, no attribute break-out.
        assert_eq!(src("javascript:alert(1)"), "javascript%3Aalert%281%29");
        assert_eq!(src("x\" onerror=\"alert(1)"), "x%22%20onerror%3D%22alert%281%29");
    }
}
