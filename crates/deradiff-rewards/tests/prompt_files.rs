//! Prompt files: every format reads the same prompts; every file that is not a prompt list — or
//! that a reference reader would reject — is an error naming the file and the place; nothing is
//! guessed; and no byte string panics or hangs the reader (a property test).

use std::path::{Path, PathBuf};

use deradiff_rewards::{
    parse_prompt_file, read_prompt_file, Error, PromptEntry, MAX_PROMPTS, MAX_PROMPT_BYTES, MAX_PROMPT_FILE_BYTES,
    MAX_YAML_NODES,
};
use proptest::prelude::*;

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("deradiff-prompt-files-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn file(name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let p = dir().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn texts(v: &[PromptEntry]) -> Vec<&str> {
    v.iter().map(|e| e.text.as_str()).collect()
}

fn ids(v: &[PromptEntry]) -> Vec<&str> {
    v.iter().map(|e| e.id.as_str()).collect()
}

#[test]
fn every_format_reads_the_same_prompts() {
    let want = ["a red cube", "two cats, \"sleeping\"", "a tree"];
    let files = [
        file("p.txt", "# comment\na red cube\n\ntwo cats, \"sleeping\"\n  a tree  \n"),
        file("p.text", "a red cube\ntwo cats, \"sleeping\"\na tree"),
        file("noext", "a red cube\ntwo cats, \"sleeping\"\na tree\n"),
        file(
            "p.jsonl",
            "\"a red cube\"\n{\"prompt\": \"two cats, \\\"sleeping\\\"\", \"id\": 7}\n\n{\"id\": \"t\", \"prompt\": \"a tree\"}\n",
        ),
        file("p.ndjson", "\"a red cube\"\n\"two cats, \\\"sleeping\\\"\"\n\"a tree\"\n"),
        file("p.csv", "id,prompt,category\n1,a red cube,x\n2,\"two cats, \"\"sleeping\"\"\",y\n3,a tree,z\n"),
        // PartiPrompts' layout: tab-separated, unquoted, the column spelled "Prompt".
        file("p.tsv", "Prompt\tCategory\na red cube\tx\ntwo cats, \"sleeping\"\ty\na tree\tz\n"),
        file("p.yaml", "- a red cube\n- prompt: 'two cats, \"sleeping\"'\n  id: 2\n- {prompt: a tree}\n"),
        file("n.yml", "animals:\n  - a red cube\n  - two cats, \"sleeping\"\nplants:\n  - a tree\n"),
        file("k.yaml", "prompts:\n  - a red cube\n  - two cats, \"sleeping\"\n  - a tree\n"),
        file("doc.yaml", "---\n- a red cube\n- two cats, \"sleeping\"\n- a tree\n...\n"),
        file("p.json", r#"["a red cube", {"prompt": "two cats, \"sleeping\"", "id": 2}, {"text": "a tree"}]"#),
        file("k.json", r#"{"prompts": ["a red cube", "two cats, \"sleeping\"", "a tree"]}"#),
        // Line ends: CRLF, a lone CR (classic Mac OS), a byte-order mark.
        file("crlf.txt", "a red cube\r\ntwo cats, \"sleeping\"\r\na tree\r\n"),
        file("cr.txt", "a red cube\rtwo cats, \"sleeping\"\ra tree\r"),
        file("cr.jsonl", "\"a red cube\"\r\"two cats, \\\"sleeping\\\"\"\r\"a tree\"\r"),
        file("cr.csv", "prompt\ra red cube\r\"two cats, \"\"sleeping\"\"\"\ra tree\r"),
        file("cr.yaml", "- a red cube\r- two cats, \"sleeping\"\r- a tree\r"),
        file("bom.txt", "\u{feff}a red cube\ntwo cats, \"sleeping\"\na tree\n"),
        file("bom.csv", "\u{feff}prompt\na red cube\n\"two cats, \"\"sleeping\"\"\"\na tree\n"),
        file("bom.yaml", "\u{feff}- a red cube\n- two cats, \"sleeping\"\n- a tree\n"),
    ];
    for p in &files {
        let got = read_prompt_file(p, None).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(texts(&got), want, "{}", p.display());
    }
    assert_eq!(ids(&read_prompt_file(&files[5], None).unwrap()), ["1", "2", "3"]);
    assert_eq!(ids(&read_prompt_file(&files[3], None).unwrap()), ["a red cube", "7", "t"]);
    // A named column; the default columns in any letter case.
    let caption = file("c.csv", "caption,prompt\nfrom caption,from prompt\n");
    assert_eq!(texts(&read_prompt_file(&caption, Some("caption")).unwrap()), ["from caption"]);
    assert_eq!(texts(&read_prompt_file(&caption, None).unwrap()), ["from prompt"]);
    let upper = file("u.jsonl", "{\"Caption\": \"x\"}\n");
    assert_eq!(texts(&read_prompt_file(&upper, None).unwrap()), ["x"]);
    // The same prompt twice is kept twice; an empty or null id means none.
    let twice = file("twice.jsonl", "{\"prompt\": \"a\", \"id\": \"\"}\n{\"prompt\": \"a\", \"id\": null}\n\"a\"\n");
    assert_eq!(ids(&read_prompt_file(&twice, None).unwrap()), ["a", "a", "a"]);
}

/// (file name, content, what the error must say): each is refused, naming the file.
fn bad_files() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let s = |t: &str| t.as_bytes().to_vec();
    // Nine levels of ten: 10⁹ strings once expanded ("billion laughs").
    let mut bomb =
        String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for (i, c) in ('b'..='i').enumerate() {
        let prev = (b'a' + i as u8) as char;
        bomb.push_str(&format!("{c}: &{c} [{}]\n", vec![format!("*{prev}"); 10].join(",")));
    }
    let deep = format!("{}x\n", "- ".repeat(200));
    let deep_flow = format!("{}{}", "[".repeat(100), "]".repeat(100));
    vec![
        ("empty.txt", s("\n\n# nothing\n"), "no prompt"),
        ("empty.yaml", s(""), "no prompt"),
        ("null.yaml", s("~\n"), "no prompt"),
        ("bad.jsonl", s("\"ok\"\n{not json\n"), "line 2"),
        ("num.jsonl", s("42\n"), "expected a string or an object"),
        ("nocol.jsonl", s("{\"title\": \"x\"}\n"), "without a field"),
        ("badid.jsonl", s("{\"prompt\": \"x\", \"id\": [1]}\n"), "not a string or an integer"),
        ("nocol.csv", s("title\nx\n"), "has no a field"),
        ("ragged.csv", s("prompt,id\na,1\nb\n"), "line 3"),
        ("headeronly.csv", s("prompt\n"), "no prompt"),
        ("bad.yaml", s("- [unclosed\n"), "YAML"),
        ("scalar.yaml", s("just a string\n"), "expected a list"),
        ("nested.yaml", s("- [a, b]\n"), "entry 1"),
        ("badid.yaml", s("- {prompt: x, id: [1]}\n"), "not a string or an integer"),
        ("notlist.yaml", s("animals: a cat\n"), "expected a list of prompts"),
        ("emptyprompt.csv", s("prompt\n\"\"\n"), "is empty"),
        ("blank.jsonl", s("\"   \"\n"), "is empty"),
        // Several YAML documents: which one did the user mean?
        ("two-docs.yaml", s("- a\n---\n- b\n"), "2 documents"),
        ("three-docs.yml", s("--- [a]\n--- [b]\n--- [c]\n"), "3 documents"),
        // Two different prompts with one id, in each format that has ids.
        ("dup.jsonl", s("{\"id\": 1, \"prompt\": \"a cat\"}\n{\"id\": 1, \"prompt\": \"a dog\"}\n"), "the id \"1\""),
        ("dup.csv", s("id,prompt\nk,a cat\nk,a dog\n"), "another prompt"),
        ("dup.yaml", s("- {id: 3, prompt: a cat}\n- {id: 3, prompt: a dog}\n"), "prompt #1"),
        ("dup-text.jsonl", s("\"a cat\"\n{\"id\": \"a cat\", \"prompt\": \"a dog\"}\n"), "another prompt"),
        ("dup.json", s(r#"[{"id": "x", "prompt": "a"}, {"id": "x", "prompt": "b"}]"#), "give each prompt its own id"),
        // Encodings.
        ("utf16le.txt", vec![0xff, 0xfe, b'a', 0, b'\n', 0], "UTF-16"),
        ("utf16be.csv", vec![0xfe, 0xff, 0, b'a'], "UTF-16"),
        ("utf32.yaml", vec![0xff, 0xfe, 0, 0, b'a', 0, 0, 0], "UTF-32"),
        ("latin1.txt", vec![b'c', b'a', b'f', 0xe9, b'\n'], "not UTF-8"),
        ("nul.txt", s("a cat\n\0\n"), "NUL byte at offset 6"),
        ("nul.jsonl", s("\"a\\u0000\"\n\0"), "NUL byte"),
        // Unknown extensions are not guessed.
        ("prompts.parquet", s("a cat\n"), ".parquet is not a prompt file format"),
        ("prompts.xlsx", s("a cat\n"), "name it .txt"),
        // Bounds.
        ("bomb.yaml", bomb.into_bytes(), "alias bomb"),
        ("deep.yaml", deep.into_bytes(), "more than 64 deep"),
        ("deepflow.yaml", deep_flow.into_bytes(), "more than 64 deep"),
        ("deep.json", format!("{}{}", "[".repeat(200), "]".repeat(200)).into_bytes(), "recursion limit"),
        ("long.txt", vec![b'a'; MAX_PROMPT_BYTES + 1], "MAX_PROMPT_BYTES"),
        (
            "longid.jsonl",
            format!("{{\"prompt\": \"a\", \"id\": \"{}\"}}\n", "i".repeat(MAX_PROMPT_BYTES + 1)).into_bytes(),
            "its id is",
        ),
    ]
}

#[test]
fn bad_files_name_the_file_and_the_place() {
    let cases = bad_files();
    assert!(cases.len() >= 35, "{}", cases.len());
    for (name, bytes, needle) in cases {
        let err = read_prompt_file(file(name, &bytes), None).unwrap_err();
        assert!(matches!(err, Error::PromptFile { .. }), "{name}: {err:?}");
        let err = err.to_string();
        assert!(err.contains(name) && err.contains(needle), "{name}: {err}");
    }
}

#[test]
fn a_column_that_the_format_would_ignore_is_an_error() {
    let cases: [(&str, &str, &str); 5] = [
        ("col.txt", "a cat\n", "plain text (one prompt per line), which has no columns"),
        ("col.jsonl", "{\"caption\": \"a\"}\n\"b\"\n", "line 2: a bare string, but the prompt column \"caption\""),
        ("col.yaml", "- a cat\n", "entry 1: a bare string"),
        ("col.json", r#"["a cat"]"#, "a bare string"),
        ("col.csv", "prompt\na\n", "has no a field \"caption\""),
    ];
    for (name, text, needle) in cases {
        let err = read_prompt_file(file(name, text), Some("caption")).unwrap_err().to_string();
        assert!(err.contains(name) && err.contains(needle), "{name}: {err}");
    }
    let err = read_prompt_file(file("blankcol.csv", "prompt\na\n"), Some("  ")).unwrap_err().to_string();
    assert!(err.contains("the column: is empty"), "{err}");
}

#[test]
fn what_is_not_a_regular_file_of_bounded_size_is_refused_without_blocking() {
    let err = read_prompt_file(dir(), None).unwrap_err().to_string();
    assert!(err.contains("is a folder, not a regular file"), "{err}");
    let err = read_prompt_file(dir().join("missing.txt"), None).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    // Larger than the limit (a sparse file: nothing is written or read).
    let big = dir().join("big.txt");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(MAX_PROMPT_FILE_BYTES + 1).unwrap();
    drop(f);
    let err = read_prompt_file(&big, None).unwrap_err().to_string();
    assert!(err.contains("larger than 256 MiB") && err.contains("MAX_PROMPT_FILE_BYTES"), "{err}");
    std::fs::remove_file(&big).unwrap();
    #[cfg(unix)]
    {
        let fifo = dir().join("fifo.txt");
        let _ = std::fs::remove_file(&fifo);
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // No writer: opening it for reading would block forever.
        let err = read_prompt_file(&fifo, None).unwrap_err().to_string();
        assert!(err.contains("FIFO"), "{err}");
        let err = read_prompt_file("/dev/zero", None).unwrap_err().to_string();
        assert!(err.contains("character device"), "{err}");
        let (a, b) = (dir().join("loop-a.txt"), dir().join("loop-b.txt"));
        let _ = (std::fs::remove_file(&a), std::fs::remove_file(&b));
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let err = read_prompt_file(&a, None).unwrap_err().to_string();
        assert!(err.contains("symbolic link loop"), "{err}");
    }
}

#[test]
fn counts_and_sizes_are_bounded() {
    // One line of 100 MB: refused as a prompt, not tokenised.
    let line = vec![b'a'; 100 << 20];
    let err = parse_prompt_file(Path::new("line.txt"), &line, None).unwrap_err().to_string();
    assert!(err.contains("104857600 bytes long") && err.contains("MAX_PROMPT_BYTES"), "{err}");
    // MAX_PROMPTS + 1 lines: refused while reading, in every format.
    let many = "a\n".repeat(MAX_PROMPTS + 1);
    let err = parse_prompt_file(Path::new("many.txt"), many.as_bytes(), None).unwrap_err().to_string();
    assert!(err.contains("more than 1000000 prompts"), "{err}");
    // MAX_PROMPTS prompts are fine (ids are the texts: distinct here).
    let ok: String = (0..1000).map(|i| format!("p{i}\n")).collect();
    assert_eq!(parse_prompt_file(Path::new("ok.txt"), ok.as_bytes(), None).unwrap().len(), 1000);
    // An alias bomb is refused quickly, before it is expanded.
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for (i, c) in ('b'..='z').enumerate() {
        let prev = (b'a' + i as u8) as char;
        bomb.push_str(&format!("{c}: &{c} [{}]\n", vec![format!("*{prev}"); 10].join(", ")));
    }
    let start = std::time::Instant::now();
    let err = parse_prompt_file(Path::new("bomb.yaml"), bomb.as_bytes(), None).unwrap_err().to_string();
    assert!(err.contains(&MAX_YAML_NODES.to_string()), "{err}");
    assert!(start.elapsed().as_secs_f64() < 2.0, "{:?}", start.elapsed());
    // Aliases that stay small are expanded as YAML says.
    let small = "base: &b [a cat, a dog]\nmore: *b\n";
    let err = parse_prompt_file(Path::new("alias.yaml"), small.as_bytes(), None);
    assert_eq!(texts(&err.unwrap()), ["a cat", "a dog", "a cat", "a dog"]);
}

/// Prompt-file-like text: the tokens every format's syntax is made of.
fn token_soup() -> impl Strategy<Value = Vec<u8>> {
    let tokens = prop::sample::select(vec![
        "- ", "a cat", "\n", "\r", "\r\n", "  ", ":", "&a ", "*a", "&b ", "*b", "[", "]", "{", "}", ",", "\"", "'",
        "prompt", "id", "caption", "#", "---\n", "...\n", "\t", "\u{feff}", "\\", "null", "7", "\0", "\u{ff}", "é",
        "|\n", ">\n", "!!str ", "? ",
    ]);
    prop::collection::vec(tokens, 0..120).prop_map(|t| t.concat().into_bytes())
}

const EXTENSIONS: [&str; 8] = ["txt", "jsonl", "csv", "tsv", "yaml", "yml", "json", "parquet"];

/// What a successful read must give: 1..=MAX_PROMPTS prompts, none blank, none too long, and
/// each id naming one prompt.
fn check(path: &Path, got: Result<Vec<PromptEntry>, Error>) {
    match got {
        Ok(entries) => {
            assert!(!entries.is_empty() && entries.len() <= MAX_PROMPTS, "{}", path.display());
            for e in &entries {
                assert!(!e.text.trim().is_empty() && e.text.len() <= MAX_PROMPT_BYTES && !e.id.is_empty());
                assert!(entries.iter().all(|o| o.id != e.id || o.text == e.text));
            }
        }
        Err(e) => assert!(matches!(e, Error::PromptFile { .. }), "{}: {e:?}", path.display()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any byte string, as any format: a prompt list or an error, never a panic or a hang.
    #[test]
    fn any_bytes_are_a_prompt_list_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..512), ext in 0..EXTENSIONS.len(), col in prop::option::of("[a-z]{1,7}")) {
        let path = PathBuf::from(format!("fuzz.{}", EXTENSIONS[ext]));
        check(&path, parse_prompt_file(&path, &bytes, col.as_deref()));
    }

    /// Text made of the formats' own syntax reaches past their first checks.
    #[test]
    fn syntax_soup_is_a_prompt_list_or_an_error(bytes in token_soup(), ext in 0..EXTENSIONS.len(), named in any::<bool>()) {
        let path = PathBuf::from(format!("soup.{}", EXTENSIONS[ext]));
        check(&path, parse_prompt_file(&path, &bytes, named.then_some("prompt")));
    }
}
