//! The setting in which two results files' headers differ, named with both values — what a
//! resume or a merge of files of different sweeps reports instead of two hashes.

use crate::model::Prompt;
use crate::results::SweepHeader;

/// A setting whose value differs between two headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Difference {
    /// The setting, in words ("the λ grid", "samples per prompt", …).
    pub(crate) field: String,
    /// Its value in the first header.
    pub(crate) first: String,
    /// Its value in the second.
    pub(crate) second: String,
}

fn differ(field: impl Into<String>, first: impl Into<String>, second: impl Into<String>) -> Option<Difference> {
    Some(Difference { field: field.into(), first: first.into(), second: second.into() })
}

/// The most values of a list shown in a message.
const SHOWN: usize = 12;

/// `values` as a comma-separated list, the first [`SHOWN`] of them, with their count when more.
fn list<T: std::fmt::Display>(values: &[T]) -> String {
    let shown: Vec<String> = values.iter().take(SHOWN).map(|v| v.to_string()).collect();
    if values.len() > SHOWN {
        format!("{}, … ({} values)", shown.join(", "), values.len())
    } else {
        shown.join(", ")
    }
}

/// A prompt entry in words: its id, seed and (where it has one that is not its id) its text.
fn entry(p: &Prompt) -> String {
    match p.text.as_deref().filter(|t| *t != p.id) {
        Some(t) => format!("prompt \"{}\" (text \"{t}\") with seed {}", p.id, p.seed),
        None => format!("prompt \"{}\" with seed {}", p.id, p.seed),
    }
}

/// The model descriptions `a` and `b` (one line each, parts separated by ", "), as the parts
/// that differ where both have the same parts, else whole.
fn model_difference(a: &str, b: &str) -> Option<Difference> {
    if a == b {
        return None;
    }
    let (pa, pb): (Vec<&str>, Vec<&str>) = (a.split(", ").collect(), b.split(", ").collect());
    if pa.len() == pb.len() && pa.first() == pb.first() {
        let diff: Vec<(&str, &str)> = pa.iter().zip(&pb).filter(|(x, y)| x != y).map(|(x, y)| (*x, *y)).collect();
        let (x, y): (Vec<&str>, Vec<&str>) = diff.into_iter().unzip();
        return differ("the model (its differing parts)", x.join(", "), y.join(", "));
    }
    differ("the model", a, b)
}

/// `n` entries, in words.
fn entries(n: usize) -> String {
    format!("{n} entr{}", if n == 1 { "y" } else { "ies" })
}

/// The prompt entries `a` and `b`: their count, else the first entry that differs.
fn prompts_difference(a: &[Prompt], b: &[Prompt]) -> Option<Difference> {
    if a.len() != b.len() {
        let first = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
        let at = |v: &[Prompt]| v.get(first).map_or("none".to_string(), entry);
        return differ(
            format!("the prompt entries (prompts × seeds; the first that differs is #{})", first + 1),
            format!("{}, #{}: {}", entries(a.len()), first + 1, at(a)),
            format!("{}, #{}: {}", entries(b.len()), first + 1, at(b)),
        );
    }
    let i = a.iter().zip(b).position(|(x, y)| x != y)?;
    differ(format!("prompt entry #{} (prompts × seeds, in order)", i + 1), entry(&a[i]), entry(&b[i]))
}

/// The λ grids `a` and `b`, compared as a results file's spec does (−0 as 0).
fn lambdas_difference(a: &[f64], b: &[f64]) -> Option<Difference> {
    let same = a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x + 0.0).to_bits() == (y + 0.0).to_bits());
    if same {
        return None;
    }
    differ("the λ grid", list(a), list(b))
}

/// The first setting in which headers `a` and `b` differ, but for their shard: the model,
/// samples per prompt, rewards, the spec's λ grid and prompt entries (when `whole_spec`, else
/// only the prompt entries), then the hashes they record. `None` when they agree.
pub(crate) fn header_difference(a: &SweepHeader, b: &SweepHeader, whole_spec: bool) -> Option<Difference> {
    if let Some(d) = model_difference(&a.model, &b.model) {
        return Some(d);
    }
    if a.samples_per_prompt != b.samples_per_prompt {
        return differ("samples per prompt", a.samples_per_prompt.to_string(), b.samples_per_prompt.to_string());
    }
    if a.rewards != b.rewards {
        return differ("the rewards", list(&a.rewards), list(&b.rewards));
    }
    if let (Some(x), Some(y)) = (&a.spec, &b.spec) {
        if whole_spec {
            if let Some(d) = lambdas_difference(&x.lambdas, &y.lambdas) {
                return Some(d);
            }
        }
        if let Some(d) = prompts_difference(&x.prompts, &y.prompts) {
            return Some(d);
        }
    }
    let show = |h: &Option<String>| h.clone().unwrap_or_else(|| "none".into());
    if a.prompts.is_some() && b.prompts.is_some() && a.prompts != b.prompts {
        return differ("the prompt set's hash (ids, texts, seeds)", show(&a.prompts), show(&b.prompts));
    }
    if whole_spec && a.spec_hash != b.spec_hash {
        return differ(
            "the spec's hash (its λ grid, prompts, seeds, model, samples, rewards)",
            show(&a.spec_hash),
            show(&b.spec_hash),
        );
    }
    if whole_spec && a.spec != b.spec {
        // The same hash over different specs: one header was edited by hand.
        return differ("the spec (recorded under the same hash: was one file edited?)", "one spec", "another");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SweepSpec;

    fn header(lambdas: Vec<f64>, prompts: Vec<Prompt>) -> SweepHeader {
        SweepHeader {
            format: crate::RESULTS_FORMAT.into(),
            version: crate::RESULTS_VERSION,
            model: "sd: reference r aligned a, EulerAncestral, 50 steps, guidance 7.5".into(),
            samples_per_prompt: 2,
            rewards: vec!["clip".into()],
            prompts: None,
            spec: Some(SweepSpec { lambdas, prompts }),
            spec_hash: Some("0".into()),
            shard: None,
        }
    }

    #[test]
    fn the_differing_setting_is_named_with_both_values() {
        let p = |id: &str, seed| Prompt::text(id, id, seed);
        let a = header(vec![0.0, 0.5, 1.0], vec![p("a cat", 0), p("a dog", 0)]);
        assert_eq!(header_difference(&a, &a.clone(), true), None);
        let mut b = a.clone();
        b.model = "sd: reference r aligned a, EulerAncestral, 25 steps, guidance 5".into();
        let d = header_difference(&a, &b, true).unwrap();
        assert_eq!((d.first.as_str(), d.second.as_str()), ("50 steps, guidance 7.5", "25 steps, guidance 5"));
        let b = header(vec![0.0, 0.5, 2.0], a.spec.clone().unwrap().prompts);
        let d = header_difference(&a, &b, true).unwrap();
        assert_eq!((d.field.as_str(), d.first.as_str(), d.second.as_str()), ("the λ grid", "0, 0.5, 1", "0, 0.5, 2"));
        // Unsharded resumes may extend the grid: only the prompts count there.
        assert_eq!(header_difference(&a, &b, false), None);
        let b = header(vec![0.0, 0.5, 1.0], vec![p("a cat", 0), p("a dog", 7)]);
        let d = header_difference(&a, &b, false).unwrap();
        assert!(d.field.contains("#2") && d.first.ends_with("seed 0") && d.second.ends_with("seed 7"), "{d:?}");
        let b = header(vec![0.0, 0.5, 1.0], vec![p("a cat", 0)]);
        let d = header_difference(&a, &b, true).unwrap();
        assert!(d.first.starts_with("2 entries") && d.second.starts_with("1 entry,"), "{d:?}");
        let mut b = a.clone();
        b.samples_per_prompt = 4;
        assert_eq!(header_difference(&a, &b, true).unwrap().second, "4");
    }
}
