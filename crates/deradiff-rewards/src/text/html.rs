//! Python's `html.unescape` (the standard library's, HTML5 rules) and ftfy's `unescape_html`.

use super::tables::{codec, tables};

/// Python's `html._invalid_codepoints`: character references that decode to nothing.
fn invalid_codepoint(n: u32) -> bool {
    matches!(n, 0x1..=0x8 | 0xb | 0xe..=0x1f | 0x7f..=0x9f | 0xfdd0..=0xfdef) || (n & 0xfffe) == 0xfffe
}

/// A numeric character reference's text, as `html._replace_charref` decodes it (`None`: the
/// number is larger than any code point).
fn numeric(n: Option<u32>) -> String {
    let Some(n) = n else { return '\u{fffd}'.to_string() };
    match n {
        0x00 => return '\u{fffd}'.to_string(),
        0x0d => return '\r'.to_string(),
        // `_invalid_charrefs`: Windows-1252's characters (its undefined bytes as themselves).
        0x80..=0x9f => {
            if let Some(c) = codec("sloppy-windows-1252").and_then(|c| c.decode[n as usize]) {
                return c.to_string();
            }
        }
        _ => {}
    }
    if (0xd800..=0xdfff).contains(&n) || n > 0x10ffff {
        return '\u{fffd}'.to_string();
    }
    if invalid_codepoint(n) {
        return String::new();
    }
    char::from_u32(n).map(String::from).unwrap_or_default()
}

/// Parses digits in `radix`, saturating to `None` past `u32` (Python's ints do not overflow; any
/// such number is beyond U+10FFFF).
fn parse_number(digits: &str, radix: u32) -> Option<u32> {
    let mut n: u32 = 0;
    for d in digits.chars() {
        n = n.checked_mul(radix)?.checked_add(d.to_digit(radix)?)?;
    }
    Some(n)
}

/// One match of Python's `_charref` pattern at `rest` (which starts after an `&`): the length
/// in bytes of the reference (without the `&`) and its replacement; `None` where nothing
/// matches there.
fn charref(rest: &str) -> Option<(usize, String)> {
    let bytes = rest.as_bytes();
    if bytes.first() == Some(&b'#') {
        let (start, radix) = if matches!(bytes.get(1), Some(b'x' | b'X')) { (2, 16) } else { (1, 10) };
        let len = rest[start..].bytes().take_while(|b| (*b as char).is_digit(radix)).count();
        if len == 0 {
            return None;
        }
        let digits = &rest[start..start + len];
        let mut end = start + len;
        if bytes.get(end) == Some(&b';') {
            end += 1;
        }
        return Some((end, numeric(parse_number(digits, radix))));
    }
    // `[^\t\n\f <&#;]{1,32};?`
    let mut end = 0;
    for (count, c) in rest.chars().enumerate() {
        if count == 32 || matches!(c, '\t' | '\n' | '\x0c' | ' ' | '<' | '&' | '#' | ';') {
            break;
        }
        end += c.len_utf8();
    }
    if end == 0 {
        return None;
    }
    if bytes.get(end) == Some(&b';') {
        end += 1;
    }
    let name = &rest[..end];
    let html5 = &tables().html5;
    if let Some(v) = html5.get(name) {
        return Some((end, v.clone()));
    }
    // The longest prefix (at least 2 characters) that is an entity name.
    let bounds: Vec<usize> = name.char_indices().map(|(i, _)| i).skip(2).collect();
    for &cut in bounds.iter().rev() {
        if let Some(v) = html5.get(&name[..cut]) {
            return Some((end, format!("{v}{}", &name[cut..])));
        }
    }
    Some((end, format!("&{name}")))
}

/// Python's `html.unescape(s)`: named (HTML5 table, with the legacy names that need no `;`) and
/// numeric character references replaced as the standard library does.
pub fn html_unescape(s: &str) -> String {
    replace_references(s, charref)
}

/// Scans `s` left to right: at each `&`, `reference` of the text after it gives the length (in
/// bytes) it consumes and its replacement, or `None` to keep the `&` and go on after it.
fn replace_references(s: &str, reference: impl Fn(&str) -> Option<(usize, String)>) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match reference(after) {
            Some((len, text)) => {
                out.push_str(&text);
                rest = &after[len..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// ftfy's `unescape_html`: each `&#?[0-9A-Za-z]{1,24};` that is one of ftfy's entity names
/// (HTML5's with a `;`, and the upper-cased forms of the lower-case ones) or a numeric reference
/// that `html.unescape` decodes whole.
pub(crate) fn ftfy_unescape_html(s: &str) -> String {
    replace_references(s, |after| {
        let hash = usize::from(after.starts_with('#'));
        let run = after[hash..].bytes().take_while(u8::is_ascii_alphanumeric).count();
        if !(1..=24).contains(&run) || after.as_bytes().get(hash + run) != Some(&b';') {
            return None;
        }
        let reference = &after[..hash + run + 1];
        let whole = format!("&{reference}");
        let replaced = if let Some(v) = tables().ftfy_entities.get(reference) {
            v.clone()
        } else if hash == 1 {
            let unescaped = html_unescape(&whole);
            if unescaped.contains(';') {
                whole
            } else {
                unescaped
            }
        } else {
            whole
        };
        Some((reference.len(), replaced))
    })
}
