//! A port of `ftfy.fix_text` with its default configuration (ftfy 6.3), the text cleaning of
//! open_clip's tokenizer (`basic_clean`). Every step of the default `TextFixerConfig` is here:
//!
//! * `unescape_html` ("auto": not for a line containing `<`, nor for any line after it);
//! * `fix_encoding`: mojibake detection (`badness.is_bad`, the full `BADNESS_RE`), re-encoding
//!   in each of ftfy's single-byte encodings (latin-1, sloppy windows-1250/1251/1252/1253/1254/
//!   1257, iso-8859-2, macroman, cp437) and decoding as UTF-8 or ftfy's `utf-8-variants` (CESU-8
//!   surrogate pairs, `C0 80`), `restore_byte_a0`, `replace_lossy_sequences`,
//!   `decode_inconsistent_utf8` (`UTF8_DETECTOR_RE`), the latin-1 → windows-1252 step;
//! * `fix_c1_controls`, `fix_latin_ligatures`, `fix_character_width`, `uncurl_quotes`,
//!   `fix_line_breaks`, `remove_terminal_escapes`, `remove_control_chars`, NFC;
//!   (`fix_surrogates` has nothing to do on a Rust string: it cannot hold a lone surrogate).
//!
//! The character tables are ftfy's own, dumped by `scripts/gen_ftfy_tables.py`. Checked against
//! ftfy on a generated corpus of 3000 strings (`tests/tokenizer_fidelity.rs`). What can differ:
//! characters assigned after Unicode 14 (Python 3.11's tables; NFC and case here follow newer
//! Unicode) and segments longer than ftfy's `max_decode_length` (10⁶ characters), which no prompt
//! reaches.

use std::sync::OnceLock;

use unicode_normalization::UnicodeNormalization;

use super::html::ftfy_unescape_html;
use super::tables::{codec, set, tables, Atom};

/// ftfy's single-byte encodings, in the order it tries them (`chardata.CHARMAP_ENCODINGS`).
const CHARMAP_ENCODINGS: [&str; 10] = [
    "latin-1",
    "sloppy-windows-1252",
    "sloppy-windows-1251",
    "sloppy-windows-1250",
    "sloppy-windows-1253",
    "sloppy-windows-1254",
    "sloppy-windows-1257",
    "iso-8859-2",
    "macroman",
    "cp437",
];

/// `ftfy.fix_text(text)` with the default configuration.
pub fn fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut unescape = true;
    for segment in text.split_inclusive('\n') {
        if segment.contains('<') {
            unescape = false;
        }
        out.push_str(&fix_segment(segment, unescape));
    }
    out
}

/// `fix_and_explain` of one line: the fixers, repeated until nothing changes.
fn fix_segment(segment: &str, unescape: bool) -> String {
    let mut text = segment.to_string();
    loop {
        let orig = text.clone();
        if unescape {
            text = ftfy_unescape_html(&text);
        }
        text = fix_encoding(&text);
        text = fix_c1_controls(&text);
        text = text.chars().map(ligature).collect::<Vec<_>>().concat();
        let width = &tables().width;
        text = text.chars().map(|c| width.get(&c).cloned().unwrap_or_else(|| c.to_string())).collect();
        text = uncurl_quotes(&text);
        text = fix_line_breaks(&text);
        text = remove_terminal_escapes(&text);
        text.retain(|c| !is_control(c));
        text = text.nfc().collect();
        if text == orig {
            return text;
        }
    }
}

/// ftfy's `LIGATURES`.
fn ligature(c: char) -> String {
    match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "ʼn",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        _ => return c.to_string(),
    }
    .to_string()
}

fn uncurl_quotes(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\u{02bc}' | '\u{2018}'..='\u{201b}' => '\'',
            '\u{201c}'..='\u{201f}' => '"',
            c => c,
        })
        .collect()
}

fn fix_line_breaks(text: &str) -> String {
    text.replace("\r\n", "\n").replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n")
}

/// ftfy's `ANSI_RE`: `\x1b[` then digits (Unicode decimal digits, as Python's `\d`) and `;`, then
/// an ASCII letter.
fn remove_terminal_escapes(text: &str) -> String {
    static ANSI: OnceLock<regex::Regex> = OnceLock::new();
    let re = ANSI.get_or_init(|| regex::Regex::new(r"\x1b\[(?:\d|;)*[a-zA-Z]").expect("a valid pattern"));
    re.replace_all(text, "").into_owned()
}

/// ftfy's `CONTROL_CHARS`.
fn is_control(c: char) -> bool {
    matches!(c, '\0'..='\x08' | '\x0b' | '\x0e'..='\x1f' | '\x7f' | '\u{206a}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffc}')
}

/// `fix_c1_controls`: U+0080–U+009F read as the Windows-1252 bytes they are.
fn fix_c1_controls(text: &str) -> String {
    let Some(cp1252) = codec("sloppy-windows-1252") else { return text.to_string() };
    text.chars()
        .map(|c| match c {
            '\u{80}'..='\u{9f}' => cp1252.decode[c as usize].unwrap_or(c),
            c => c,
        })
        .collect()
}

/// `badness.is_bad`: whether `BADNESS_RE` matches anywhere.
pub(crate) fn is_bad(text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    let bad = &tables().bad;
    (0..=chars.len()).any(|start| bad.iter().any(|branch| matches_at(branch, &chars, start)))
}

fn matches_at(atoms: &[Atom], chars: &[char], pos: usize) -> bool {
    let Some((first, rest)) = atoms.split_first() else { return true };
    match first {
        Atom::Start => pos == 0 && matches_at(rest, chars, pos),
        Atom::Any => chars.get(pos).is_some_and(|&c| c != '\n') && matches_at(rest, chars, pos + 1),
        Atom::Set { set, negated, optional } => {
            let hit = chars.get(pos).is_some_and(|&c| set.contains(c) != *negated);
            (hit && matches_at(rest, chars, pos + 1)) || (*optional && matches_at(rest, chars, pos))
        }
    }
}

/// `possible_encoding(text, encoding)`: every character is ASCII other than `\x1a`, or what one of
/// the bytes 0x80–0xFF or 0x1A decodes to.
fn possible_encoding(text: &str, encoding: &str) -> bool {
    let Some(c) = codec(encoding) else { return false };
    text.chars()
        .all(|ch| (ch.is_ascii() && ch != '\x1a') || c.decode[0x80..].contains(&Some(ch)) || c.decode[0x1a] == Some(ch))
}

fn encode(text: &str, encoding: &str) -> Option<Vec<u8>> {
    let c = codec(encoding)?;
    text.chars().map(|ch| c.encode.get(&ch).copied()).collect()
}

/// `fix_encoding`: one step at a time until nothing changes.
pub(crate) fn fix_encoding(text: &str) -> String {
    let mut text = text.to_string();
    loop {
        let next = fix_encoding_step(&text);
        if next == text {
            return text;
        }
        text = next;
    }
}

fn fix_encoding_step(text: &str) -> String {
    if text.is_empty() || text.is_ascii() || !is_bad(text) {
        return text.to_string();
    }
    let mut possible = Vec::new();
    for encoding in CHARMAP_ENCODINGS {
        if !possible_encoding(text, encoding) {
            continue;
        }
        possible.push(encoding);
        let Some(mut bytes) = encode(text, encoding) else { continue };
        if encoding != "macroman" && altered_utf8().is_match(&bytes) {
            bytes = restore_byte_a0(&bytes);
        }
        if encoding.starts_with("sloppy") {
            bytes = lossy_utf8().replace_all(&bytes, "\u{fffd}".as_bytes()).into_owned();
        }
        if let Some(fixed) = decode_utf8_variants(&bytes) {
            return fixed;
        }
    }
    if utf8_detector_find(text, 0).is_some() {
        let fixed = decode_inconsistent_utf8(text);
        if fixed != text {
            return fixed;
        }
    }
    if possible.contains(&"latin-1") {
        if let (Some(bytes), Some(cp1252)) = (encode(text, "latin-1"), codec("windows-1252")) {
            let fixed: Option<String> = bytes.iter().map(|&b| cp1252.decode[b as usize]).collect();
            if let Some(fixed) = fixed {
                if fixed != text {
                    return fixed;
                }
            }
        }
    }
    if text.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c)) {
        return fix_c1_controls(text);
    }
    text.to_string()
}

fn altered_utf8() -> &'static regex::bytes::Regex {
    static RE: OnceLock<regex::bytes::Regex> = OnceLock::new();
    RE.get_or_init(|| {
        regex::bytes::Regex::new(
            r"(?-u)[\xc2\xc3\xc5\xce\xd0\xd9][ ]|[\xe2\xe3][ ][\x80-\x84\x86-\x9f\xa1-\xbf]|[\xe0-\xe3][\x80-\x84\x86-\x9f\xa1-\xbf][ ]|[\xf0][ ][\x80-\xbf][\x80-\xbf]|[\xf0][\x80-\xbf][ ][\x80-\xbf]|[\xf0][\x80-\xbf][\x80-\xbf][ ]",
        )
        .expect("a valid pattern")
    })
}

fn lossy_utf8() -> &'static regex::bytes::Regex {
    static RE: OnceLock<regex::bytes::Regex> = OnceLock::new();
    RE.get_or_init(|| {
        regex::bytes::Regex::new(
            r"(?-u)[\xc2-\xdf][\x1a]|[\xc2-\xc3][?]|\xed[\xa0-\xaf][\x1a?]\xed[\xb0-\xbf][\x1a?\x80-\xbf]|\xed[\xa0-\xaf][\x1a?\x80-\xbf]\xed[\xb0-\xbf][\x1a?]|[\xe0-\xef][\x1a?][\x1a\x80-\xbf]|[\xe0-\xef][\x1a\x80-\xbf][\x1a?]|[\xf0-\xf4][\x1a?][\x1a\x80-\xbf][\x1a\x80-\xbf]|[\xf0-\xf4][\x1a\x80-\xbf][\x1a?][\x1a\x80-\xbf]|[\xf0-\xf4][\x1a\x80-\xbf][\x1a\x80-\xbf][\x1a?]|\x1a",
        )
        .expect("a valid pattern")
    })
}

/// `restore_byte_a0`: `\xc3 ` not before ` `, `quele`, `quela`, `quilo`, `s ` becomes `\xc3\xa0 `;
/// then in every `ALTERED_UTF8_RE` match, spaces become `\xa0`.
fn restore_byte_a0(bytes: &[u8]) -> Vec<u8> {
    let mut first = Vec::with_capacity(bytes.len() + 4);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0xc3 && bytes.get(i + 1) == Some(&b' ') {
            let after = &bytes[i + 2..];
            let skip = [&b" "[..], b"quele", b"quela", b"quilo", b"s "].iter().any(|p| after.starts_with(p));
            if !skip {
                first.extend_from_slice(b"\xc3\xa0 ");
                i += 2;
                continue;
            }
        }
        first.push(bytes[i]);
        i += 1;
    }
    altered_utf8()
        .replace_all(&first, |m: &regex::bytes::Captures<'_>| {
            m[0].iter().map(|&b| if b == b' ' { 0xa0 } else { b }).collect::<Vec<u8>>()
        })
        .into_owned()
}

/// Decodes UTF-8 as ftfy's `utf-8-variants` codec (strict): `C0 80` is U+0000 and a CESU-8
/// surrogate pair is its supplementary character; anything else invalid is `None`.
fn decode_utf8_variants(bytes: &[u8]) -> Option<String> {
    if !bytes.contains(&0xed) && !bytes.contains(&0xc0) {
        return String::from_utf8(bytes.to_vec()).ok();
    }
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = &bytes[i..];
        if b.len() >= 2 && b[0] == 0xc0 && b[1] == 0x80 {
            out.push('\0');
            i += 2;
            continue;
        }
        if b.len() >= 6
            && b[0] == 0xed
            && (0xa0..=0xaf).contains(&b[1])
            && (0x80..=0xbf).contains(&b[2])
            && b[3] == 0xed
            && (0xb0..=0xbf).contains(&b[4])
            && (0x80..=0xbf).contains(&b[5])
        {
            let cp = ((u32::from(b[1]) & 0x0f) << 16)
                + ((u32::from(b[2]) & 0x3f) << 10)
                + ((u32::from(b[4]) & 0x0f) << 6)
                + (u32::from(b[5]) & 0x3f)
                + 0x10000;
            out.push(char::from_u32(cp)?);
            i += 6;
            continue;
        }
        let len = match b[0] {
            0x00..=0x7f => 1,
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => return None,
        };
        let s = std::str::from_utf8(b.get(..len)?).ok()?;
        out.push_str(s);
        i += len;
    }
    Some(out)
}

/// The next match of `UTF8_DETECTOR_RE` at or after character `from`: `(start, end)` in
/// characters. The pattern is `(?<![continuation_strict])(first_of_2 cont | first_of_3 cont{2} |
/// first_of_4 cont{3})+`.
fn utf8_detector_find_chars(chars: &[char], from: usize) -> Option<(usize, usize)> {
    let (f2, f3, f4) = (set("utf8_first_of_2"), set("utf8_first_of_3"), set("utf8_first_of_4"));
    let (cont, strict) = (set("utf8_continuation"), set("utf8_continuation_strict"));
    let unit = |at: usize| -> Option<usize> {
        let c = *chars.get(at)?;
        for (n, ok) in [(1, f2.contains(c)), (2, f3.contains(c)), (3, f4.contains(c))] {
            if ok && (1..=n).all(|k| chars.get(at + k).is_some_and(|&d| cont.contains(d))) {
                return Some(n + 1);
            }
        }
        None
    };
    for start in from..chars.len() {
        if start > 0 && strict.contains(chars[start - 1]) {
            continue;
        }
        let mut end = start;
        while let Some(n) = unit(end) {
            end += n;
        }
        if end > start {
            return Some((start, end));
        }
    }
    None
}

fn utf8_detector_find(text: &str, from: usize) -> Option<(usize, usize)> {
    let chars: Vec<char> = text.chars().collect();
    utf8_detector_find_chars(&chars, from)
}

/// `decode_inconsistent_utf8`: each `UTF8_DETECTOR_RE` match shorter than the text that looks
/// bad is fixed on its own.
fn decode_inconsistent_utf8(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some((start, end)) = utf8_detector_find_chars(&chars, pos) {
        out.extend(&chars[pos..start]);
        let sub: String = chars[start..end].iter().collect();
        if end - start < chars.len() && is_bad(&sub) {
            out.push_str(&fix_encoding(&sub));
        } else {
            out.push_str(&sub);
        }
        pos = end;
    }
    out.extend(&chars[pos..]);
    out
}
