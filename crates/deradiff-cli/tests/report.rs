//! `sweep --save-images`, image-only sweeps and `deradiff report` end to end on the tiny Stable
//! Diffusion fixtures: the saved images are the scored ones (`deradiff score` on them gives the
//! rows' rewards), shards write only their rows' images, a resume rewrites none, a merge keeps the
//! paths valid; the report escapes hostile prompts, and (ignored unless Debian's chromium is
//! installed, as `.ci/run` does) opens in a headless browser with every image and figure loaded.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the binary under test.
fn deradiff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deradiff")).args(args).output().expect("the deradiff binary runs")
}

/// Its stdout and stderr.
fn text(o: &Output) -> String {
    [&o.stdout, &o.stderr].map(|b| String::from_utf8_lossy(b).into_owned()).concat()
}

/// A test fixture of another crate of the workspace (`deradiff-sd`, `deradiff-tune`).
fn fixture_of(krate: &str, name: &str) -> String {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    crates.join(krate).join("tests/fixtures").join(name).to_string_lossy().into_owned()
}

fn fixture(name: &str) -> String {
    fixture_of("deradiff-sd", name)
}

fn tune_fixture(name: &str) -> String {
    fixture_of("deradiff-tune", name)
}

/// A new, empty folder for one test.
fn out_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("report-{name}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Two prompts, the second hostile (markup, quotes, an ampersand, non-ASCII).
const PROMPTS: [&str; 2] = ["a red cube on a table", "<script>alert(\"x\")</script> & 'quotes' ünï 🙂"];

/// A prompt file of [`PROMPTS`] in `dir`.
fn prompts_file(dir: &Path) -> String {
    let path = dir.join("prompts.txt");
    std::fs::write(&path, PROMPTS.join("\n") + "\n").unwrap();
    path.to_str().unwrap().to_string()
}

/// A tiny SD sweep (2 steps, λ −0.5 and 1, 2 samples) with `extra` options into `out`.
fn sweep(prompts: &str, out: &Path, extra: &[&str]) -> Output {
    let (reference, aligned) = (fixture("tiny-sd"), fixture("tiny-aligned-unet"));
    let mut args = vec![
        "sweep",
        "--reference",
        &reference,
        "--aligned",
        &aligned,
        "--prompts-file",
        prompts,
        "--lambdas",
        "-0.5,1",
        "--steps",
        "2",
        "--samples",
        "2",
        "--scheduler",
        "ddim",
        "--save-images",
        "-q",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    deradiff(&args)
}

/// The rows of a results file (header skipped).
fn rows(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().skip(1).map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn images_of(row: &serde_json::Value) -> Vec<String> {
    row["images"].as_array().map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

#[test]
fn saved_images_are_the_scored_ones_and_the_report_escapes_prompts() {
    let dir = out_dir("scored");
    let prompts = prompts_file(&dir);
    let out = dir.join("sweep");
    let pickscore = tune_fixture("clip/clip-quick-gelu");
    let o = sweep(&prompts, &out, &["--pickscore", &pickscore]);
    assert!(o.status.success(), "{}", text(&o));
    let rows = rows(&out.join("sweep.jsonl"));
    assert_eq!(rows.len(), 4);
    let names: Vec<Vec<String>> = rows.iter().map(images_of).collect();
    assert_eq!(names[0], ["images/p0000-s0-l-0.500-n0.png", "images/p0000-s0-l-0.500-n1.png"]);
    assert_eq!(names[3], ["images/p0001-s1-l1.000-n0.png", "images/p0001-s1-l1.000-n1.png"]);
    // `deradiff score` on the saved files, in file-name order (prompt, then λ, then sample): each
    // row's pair of scores has the row's mean and SD, exactly.
    let mut files: Vec<(String, usize)> = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        files.extend(images_of(row).into_iter().map(|f| (f, r)));
    }
    files.sort();
    let text_of = |r: usize| PROMPTS[rows[r]["prompt_index"].as_u64().unwrap() as usize];
    let score_prompts = dir.join("score-prompts.txt");
    std::fs::write(&score_prompts, files.iter().map(|(_, r)| text_of(*r)).collect::<Vec<_>>().join("\n") + "\n")
        .unwrap();
    let scores = dir.join("scores.jsonl");
    let o = deradiff(&[
        "score",
        "--images",
        out.join("images").to_str().unwrap(),
        "--prompts-file",
        score_prompts.to_str().unwrap(),
        "--pickscore",
        &pickscore,
        "-q",
        "--out",
        scores.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let scored: Vec<serde_json::Value> =
        std::fs::read_to_string(&scores).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(scored.len(), 8);
    for (r, row) in rows.iter().enumerate() {
        let s: Vec<f64> = files
            .iter()
            .zip(&scored)
            .filter(|((_, fr), _)| *fr == r)
            .map(|(_, v)| v["pickscore"].as_f64().unwrap())
            .collect();
        // Mean and sample SD as a sweep computes them: bit for bit the row's.
        let mean = s.iter().sum::<f64>() / 2.0;
        let sd = s.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>().sqrt(); // n − 1 = 1
        let reward = &row["rewards"][0];
        assert_eq!(reward["mean"].as_f64(), Some(mean), "row {r}: {reward} vs {s:?}");
        assert_eq!(reward["std"].as_f64(), Some(sd), "row {r}: {reward} vs {s:?}");
    }
    // The report: every prompt escaped, the images referenced relatively, the curves drawn.
    let o = deradiff(&["report", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("4 sweep rows, 8 images"), "{}", text(&o));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(!html.contains("<script>alert"), "an unescaped prompt");
    assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;quotes&#39; ünï 🙂"));
    assert!(html.contains("src=\"images/p0001-s1-l1.000-n1.png\""));
    assert!(html.contains("src=\"report_files/reward_0.png\"") && out.join("report_files/reward_0.png").is_file());
    assert!(!html.contains("http://") && !html.contains("https://"), "the page loads nothing from the network");
}

#[test]
fn image_only_sweeps_shard_resume_and_merge_with_their_images() {
    let dir = out_dir("shards");
    let prompts = prompts_file(&dir);
    let out = dir.join("sweep");
    // Neither a reward nor --save-images: refused, naming both.
    let (reference, aligned) = (fixture("tiny-sd"), fixture("tiny-aligned-unet"));
    let o = deradiff(&[
        "sweep",
        "--reference",
        &reference,
        "--aligned",
        &aligned,
        "--prompt",
        "a cube",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--save-images") && text(&o).contains("--clip"), "{}", text(&o));
    // The testbed makes no images.
    let o = deradiff(&["sweep", "--save-images", "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--save-images applies to Stable Diffusion"), "{}", text(&o));
    // Shard 0 of 2 alone writes only its rows' images (items 0 and 2: λ = −0.5 of each prompt).
    let o = sweep(&prompts, &out, &["--shard", "0/2"]);
    assert!(o.status.success(), "{}", text(&o));
    let shard0 = rows(&out.join("sweep.shard-00000-of-00002.jsonl"));
    let listed: Vec<String> = shard0.iter().flat_map(images_of).collect();
    let mut on_disk: Vec<String> = std::fs::read_dir(out.join("images"))
        .unwrap()
        .map(|e| format!("images/{}", e.unwrap().file_name().to_str().unwrap()))
        .collect();
    on_disk.sort();
    assert_eq!(listed, on_disk);
    assert_eq!(listed.len(), 4);
    assert!(shard0.iter().all(|r| r["rewards"].as_array().unwrap().is_empty() && r["lambda"] == -0.5));
    // A resume computes nothing and writes no image: one removed stays removed.
    std::fs::remove_file(out.join(&listed[0])).unwrap();
    let o = sweep(&prompts, &out, &["--shard", "0/2"]);
    assert!(o.status.success() && text(&o).contains("0 rows computed, 2 resumed"), "{}", text(&o));
    assert!(!out.join(&listed[0]).exists());
    let o = sweep(&prompts, &out, &["--shard", "1/2"]);
    assert!(o.status.success(), "{}", text(&o));
    // The report of the folder merges the shards; the missing image is named.
    let o = deradiff(&["report", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("4 sweep rows, 7 images") && text(&o).contains("not on disk"), "{}", text(&o));
    // Merged into another folder: the paths lead to the images from there.
    let merged = dir.join("merged/all.jsonl");
    std::fs::create_dir_all(merged.parent().unwrap()).unwrap();
    let o = deradiff(&["merge", out.to_str().unwrap(), "--out", merged.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", text(&o));
    let rows = rows(&merged);
    assert_eq!(
        images_of(&rows[1]),
        ["../sweep/images/p0000-s0-l1.000-n0.png", "../sweep/images/p0000-s0-l1.000-n1.png"]
    );
    for row in &rows {
        for image in images_of(row).iter().filter(|i| !i.ends_with(&listed[0][7..])) {
            assert!(dir.join("merged").join(image).is_file(), "{image}");
        }
    }
    // Its report, beside it, finds the images by those paths.
    let o = deradiff(&["report", merged.to_str().unwrap()]);
    assert!(o.status.success() && text(&o).contains("4 sweep rows, 7 images"), "{}", text(&o));
    let html = std::fs::read_to_string(dir.join("merged/report.html")).unwrap();
    assert!(html.contains("src=\"../sweep/images/p0001-s1-l1.000-n1.png\""));
}

#[test]
fn reports_say_where_no_images_were_saved_and_show_tune_and_compare() {
    let dir = out_dir("kinds");
    // A testbed sweep (no images), compared with itself, and a tuning run.
    let sweep_dir = dir.join("sweep");
    let o = deradiff(&[
        "sweep",
        "--lambda-range",
        "0:1:3",
        "--prompts",
        "2",
        "--steps",
        "3",
        "--samples",
        "16",
        "-q",
        "--out",
        sweep_dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = deradiff(&["report", sweep_dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let html = std::fs::read_to_string(sweep_dir.join("report.html")).unwrap();
    assert!(html.contains("this sweep saved no images"), "{html}");
    assert!(html.contains("<dt>true</dt>") && html.contains("data-gain-0="), "the numbers are shown");
    let results = sweep_dir.join("sweep.jsonl");
    let results = results.to_str().unwrap();
    let compare = dir.join("compare");
    let o = deradiff(&["compare", results, results, "--reward", "proxy", "--out", compare.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = deradiff(&["report", compare.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let html = std::fs::read_to_string(compare.join("report.html")).unwrap();
    assert!(html.contains("Bland–Altman bias") && html.contains("src=\"bland_altman.png\""), "{html}");
    let tune = dir.join("tune");
    let o =
        deradiff(&["tune", "--budget", "4", "--steps", "3", "--samples", "16", "-q", "--out", tune.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = deradiff(&["report", tune.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let html = std::fs::read_to_string(tune.join("report.html")).unwrap();
    assert!(html.contains("Evaluations") && html.contains("src=\"bo_trace.png\""), "{html}");
    assert_eq!(html.matches("<tr><td class=\"num\">").count(), 4, "one row per evaluation");
    // A folder with nothing to report.
    let o = deradiff(&["report", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("holds no results to report"), "{}", text(&o));
}

/// The text of the element `<pre id="selftest">` in a DOM dump, unescaped.
fn selftest_of(dom: &str) -> Option<serde_json::Value> {
    let start = dom.find("<pre id=\"selftest\">")? + "<pre id=\"selftest\">".len();
    let end = start + dom[start..].find("</pre>")?;
    let text = dom[start..end].replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&amp;", "&");
    serde_json::from_str(&text).ok()
}

#[test]
#[ignore = "needs Debian's chromium; .ci/run installs it and runs it"]
fn the_report_opens_in_headless_chromium_with_every_image_and_a_working_filter() {
    let chromium = Path::new("/usr/bin/chromium");
    assert!(chromium.is_file(), "install Debian's chromium: apt-get install -y chromium");
    let dir = out_dir("browser");
    let prompts = prompts_file(&dir);
    let out = dir.join("sweep");
    let o = sweep(&prompts, &out, &["--pickscore", &tune_fixture("clip/clip-quick-gelu")]);
    assert!(o.status.success(), "{}", text(&o));
    let o = deradiff(&["report", out.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", text(&o));
    let page = std::fs::canonicalize(out.join("report.html")).unwrap();
    let browse = |extra: &[&str], url: String| {
        let profile = dir.join(format!("profile-{}", extra.len()));
        let _ = std::fs::remove_dir_all(&profile);
        let o = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                &format!("--user-data-dir={}", profile.display()),
                "--virtual-time-budget=10000",
            ])
            .args(extra)
            .arg(url)
            .output()
            .expect("chromium runs");
        assert!(o.status.success(), "{}", text(&o));
        o
    };
    // The filter "SCRIPT" (any case) keeps the hostile prompt's row only.
    let o = browse(&["--dump-dom"], format!("file://{}#selftest=SCRIPT", page.display()));
    let dom = String::from_utf8_lossy(&o.stdout);
    let check = selftest_of(&dom).unwrap_or_else(|| panic!("no self-check result in the page:\n{dom}"));
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["images"], 8 + 1, "8 images and one reward curve: {check}");
    assert_eq!(check["plots"], 1, "{check}");
    assert_eq!(check["broken"], serde_json::json!([]), "{check}");
    assert_eq!((check["visible"].as_u64(), check["total"].as_u64()), (Some(1), Some(2)), "{check}");
    assert_eq!(check["visible_rows"], serde_json::json!([1]), "{check}");
    assert_eq!(check["sorted_by_first_gain"].as_array().map(Vec::len), Some(2), "{check}");
    // No script of a prompt ran: the page's only alert would have stopped the dump.
    assert!(!dom.contains("<script>alert"), "an unescaped prompt in the DOM");
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-screenshot.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &[&format!("--screenshot={}", shot.display()), "--window-size=1100,900"],
        format!("file://{}", page.display()),
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(png.len() > 10_000 && png.starts_with(b"\x89PNG\r\n\x1a\n"), "a screenshot of {} bytes", png.len());
}
