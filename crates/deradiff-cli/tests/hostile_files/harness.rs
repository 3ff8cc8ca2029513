//! The harness of the hostile-file cases: a scratch folder of hostile files, a case (arguments,
//! exit status, message), and a runner that checks each case ends in time and changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use deradiff_sd::RgbImage;

/// The binary under test: `DERADIFF_TEST_BIN` when set (worktrees that share one target folder,
/// where `target/debug/deradiff` may be another worktree's build), else cargo's.
pub fn bin() -> PathBuf {
    std::env::var_os("DERADIFF_TEST_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_deradiff")), PathBuf::from)
}

/// The crates folder (fixtures of other crates are read from there).
pub fn crates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A scratch folder with the files the cases read; removed when dropped.
pub struct Scratch {
    pub root: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Scratch {
    pub fn path(&self, name: &str) -> String {
        self.root.join(name).to_string_lossy().into_owned()
    }

    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) {
        let p = self.root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    fn copy(&self, from: &str, to: &str) {
        let to = self.root.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(self.root.join(from), to).unwrap();
    }

    fn fifo(&self, name: &str) {
        let p = self.root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        assert!(Command::new("mkfifo").arg(&p).status().unwrap().success(), "mkfifo {name}");
    }

    fn symlink(&self, target: &str, name: &str) {
        std::os::unix::fs::symlink(self.root.join(target), self.root.join(name)).unwrap();
    }

    fn socket(&self, name: &str) {
        let p = self.root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        // The listener closes when dropped; the socket file stays.
        drop(std::os::unix::net::UnixListener::bind(p).unwrap());
    }

    /// `args` split at spaces, `@name` standing for the path of `name` in the scratch folder,
    /// `@sd` for the tiny SD checkpoint and `@clip` for the tiny CLIP model.
    pub fn args(&self, args: &str) -> Vec<String> {
        args.split_whitespace()
            .map(|a| match a {
                "@sd" => crates().join("deradiff-sd/tests/fixtures/tiny-sd").to_string_lossy().into_owned(),
                "@clip" => crates().join("deradiff-tune/tests/fixtures/clip/clip-gelu").to_string_lossy().into_owned(),
                _ => match a.strip_prefix('@') {
                    Some(name) => self.path(name),
                    None => a.to_string(),
                },
            })
            .collect()
    }
}

/// Runs `deradiff` with `args` in `dir`, killed after `limit`: (exit code or None, stdout, stderr).
pub fn run(dir: &Path, args: &[String], limit: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return (None, String::new(), format!("hung: killed after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// A regular file's size, modification time and (below 1 MiB) bytes.
type Seen = (u64, SystemTime, Vec<u8>);

/// Every regular file under `dir` (links not followed).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Seen> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                let bytes = if m.len() < 1 << 20 { std::fs::read(&p).unwrap_or_default() } else { Vec::new() };
                out.insert(p, (m.len(), m.modified().unwrap(), bytes));
            }
        }
    }
    out
}

/// One case: its name, arguments, exit status, what its output must say, and the paths under
/// which it may write (only cases that succeed write).
pub struct Case {
    pub name: String,
    pub args: Vec<String>,
    pub code: i32,
    pub needles: Vec<String>,
    pub writes: Vec<PathBuf>,
}

/// A case of `args` (see [`Scratch::args`]).
pub fn case(s: &Scratch, name: &str, args: &str, code: i32, needles: &[&str]) -> Case {
    Case {
        name: name.into(),
        args: s.args(args),
        code,
        needles: needles.iter().map(|n| n.to_string()).collect(),
        writes: Vec::new(),
    }
}

/// Runs every case on its own and reports all failures at once: the exit status, the message
/// (clap's "unexpected argument" and panics are failures), no hang (60 s), and no file of the
/// scratch folder changed, removed or created except under the case's `writes`.
pub fn run_cases(s: &Scratch, cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
        let before = snapshot(&s.root);
        let (code, stdout, stderr) = run(&s.root, &c.args, Duration::from_secs(60));
        let after = snapshot(&s.root);
        let text = format!("{stdout}{stderr}");
        let mut problems = Vec::new();
        if code != Some(c.code) {
            problems.push(format!("exit {code:?}, expected {}", c.code));
        }
        problems.extend(c.needles.iter().filter(|n| !text.contains(n.as_str())).map(|n| format!("no {n:?}")));
        if text.contains("unexpected argument") || text.contains("internal error") {
            problems.push("clap's unexpected argument, or a panic".into());
        }
        let allowed = |p: &Path| c.writes.iter().any(|w| p.starts_with(w));
        for (p, old) in &before {
            match after.get(p) {
                None => problems.push(format!("removed {}", p.display())),
                Some(new) if new != old && !allowed(p) => problems.push(format!("changed {}", p.display())),
                _ => {}
            }
        }
        for p in after.keys().filter(|p| !before.contains_key(*p) && !allowed(p)) {
            problems.push(format!("created {}", p.display()));
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}\n    output: {}", c.name, problems.join("; "), text.trim()));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// The scratch folder `name`: three shard files of a small analytic sweep (`sh/`) and folders
/// for `status` and `merge` with a FIFO, a foreign, a renamed, an empty shard file and a socket
/// in them; copies of the tiny UNets (`ref/unet`, `aligned`) with links to them; images; prompt
/// files; FIFOs, sockets, link loops and a dangling link. `big`: also the prompt files of the
/// bounds (a million and one lines, one line of 100 MB, a sparse file over the size limit).
pub fn scratch(name: &str, big: bool) -> Scratch {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hostile-files-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let s = Scratch { root };
    for k in 0..3 {
        let args = s.args(&format!("sweep --lambdas 0,1 --prompts 2 --steps 2 --samples 4 -q --shard {k}/3 --out @sh"));
        let (code, _, err) = run(&s.root, &args, Duration::from_secs(60));
        assert_eq!(code, Some(0), "{err}");
    }
    let shard = |k: usize| format!("sh/sweep.shard-{k:05}-of-00003.jsonl");
    for dir in ["st-fifo", "st-foreign", "st-renamed", "st-empty"] {
        for k in 0..2 {
            s.copy(&shard(k), &format!("{dir}/sweep.shard-{k:05}-of-00003.jsonl"));
        }
    }
    let third = |dir: &str| format!("{dir}/sweep.shard-00002-of-00003.jsonl");
    s.fifo(&third("st-fifo"));
    s.write(&third("st-foreign"), "{\"not\": \"a sweep\"}\n");
    s.copy(&shard(0), &third("st-renamed"));
    s.write(&third("st-empty"), "");
    s.socket("st-socket/sweep.shard-00000-of-00001.jsonl");
    s.copy(&shard(0), "mg-fifo/sweep.shard-00000-of-00002.jsonl");
    s.fifo("mg-fifo/sweep.shard-00001-of-00002.jsonl");
    std::fs::create_dir_all(s.root.join("mg-dir/sweep.shard-00000-of-00001.jsonl")).unwrap();
    s.copy(&shard(1), "shard1.csv");
    s.copy(&shard(0), "o-cmp/agreement.json");
    std::fs::hard_link(s.root.join(shard(2)), s.root.join("hard.jsonl")).unwrap();
    s.symlink(&shard(2), "soft.jsonl");
    // Models: copies, so that a case can never touch the repository's fixtures.
    for (from, to) in [("tiny-sd/unet", "ref/unet"), ("tiny-aligned-unet", "aligned")] {
        std::fs::create_dir_all(s.root.join(to)).unwrap();
        for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
            let from = crates().join("deradiff-sd/tests/fixtures").join(from).join(f);
            std::fs::copy(from, s.root.join(to).join(f)).unwrap();
        }
    }
    std::fs::hard_link(s.root.join("aligned/diffusion_pytorch_model.safetensors"), s.root.join("hard.safetensors"))
        .unwrap();
    s.symlink("aligned/diffusion_pytorch_model.safetensors", "soft.safetensors");
    s.symlink("aligned/diffusion_pytorch_model.safetensors", "weights.png");
    for i in 0..2 {
        let img = RgbImage::new(8, 8, vec![(40 * i) as u8; 8 * 8 * 3]).unwrap();
        img.save_png(s.root.join(format!("imgs/{i}.png"))).unwrap();
        img.save_png(s.root.join(format!("imgs-fifo/{i}.png"))).unwrap();
    }
    s.fifo("imgs-fifo/2.png");
    s.symlink("imgs/0.png", "img-link.jsonl");
    s.write("p.txt", "a red cube\na cat\n");
    s.write("p-cr.txt", "a red cube\ra cat\r");
    s.write("p-bom.txt", "\u{feff}a red cube\r\na cat\r\n");
    s.write("p-docs.yaml", "- a red cube\n---\n- a cat\n");
    s.write("p-dup.jsonl", "{\"id\": \"k\", \"prompt\": \"a red cube\"}\n{\"id\": \"k\", \"prompt\": \"a cat\"}\n");
    s.write("p-strings.jsonl", "\"a red cube\"\n\"a cat\"\n");
    s.write("p-dup.csv", "id,prompt\n1,a red cube\n1,a cat\n");
    s.write("p-col.csv", "prompt,caption\na red cube,x\n");
    s.write("p.parquet", "a red cube\n");
    s.write("p-utf16.txt", [0xff, 0xfe, b'a', 0]);
    s.write("p-nul.txt", "a cat\n\0");
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for (i, c) in ('b'..='k').enumerate() {
        bomb.push_str(&format!("{c}: &{c} [{}]\n", vec![format!("*{}", (b'a' + i as u8) as char); 10].join(", ")));
    }
    s.write("p-bomb.yaml", bomb);
    s.write("p-deep.yaml", format!("{}x\n", "- ".repeat(300)));
    if big {
        s.write("p-many.txt", (0..1_000_001).map(|i| format!("p{i}\n")).collect::<String>());
        s.write("p-line.txt", vec![b'a'; 100 << 20]);
        std::fs::File::create(s.root.join("p-huge.txt")).unwrap().set_len((256 << 20) + 1).unwrap();
    }
    for f in ["p-fifo.txt", "fifo.jsonl", "fifo.safetensors", "fifo.png", "fifo-dir"] {
        s.fifo(f);
    }
    s.socket("socket.jsonl");
    s.write("o-sweep/sweep.csv", "a red cube\n");
    s.write("o-sweep/prompts.csv", "prompt\na red cube\n");
    s.write("o-tune/bo.json", "[\"a red cube\"]\n");
    s.write("scores.jsonl", "\"a red cube\"\n\"a cat\"\n");
    for (a, b) in [("loop-a", "loop-b"), ("loop-a.jsonl", "loop-b.jsonl"), ("loop-a.safetensors", "loop-b.safetensors")]
    {
        s.symlink(b, a);
        s.symlink(a, b);
    }
    s.symlink("nowhere-dir", "dangling-dir");
    s
}
