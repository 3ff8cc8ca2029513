//! The data of the ftfy port: ftfy's (and Python's) tables as `scripts/gen_ftfy_tables.py`
//! dumps them into `ftfy_tables.txt`, parsed once.

use std::collections::HashMap;
use std::sync::OnceLock;

/// Sorted, disjoint inclusive code-point ranges.
#[derive(Debug, Clone, Default)]
pub(crate) struct CharSet(Vec<(u32, u32)>);

impl CharSet {
    fn parse(text: &str) -> Self {
        let hex = |s: &str| u32::from_str_radix(s, 16).expect("ftfy_tables.txt: a hex code point");
        let mut v: Vec<(u32, u32)> = text
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|r| match r.split_once('-') {
                Some((a, b)) => (hex(a), hex(b)),
                None => (hex(r), hex(r)),
            })
            .collect();
        v.sort_unstable();
        Self(v)
    }

    /// Whether `c` is in the set.
    pub(crate) fn contains(&self, c: char) -> bool {
        let c = c as u32;
        match self.0.binary_search_by(|&(lo, _)| lo.cmp(&c)) {
            Ok(_) => true,
            Err(0) => false,
            Err(i) => self.0[i - 1].1 >= c,
        }
    }
}

/// One atom of a `BADNESS_RE` branch.
#[derive(Debug, Clone)]
pub(crate) enum Atom {
    /// A character class (negated when the flag is set), optional when `optional`.
    Set { set: CharSet, negated: bool, optional: bool },
    /// `.`: any character but `\n`.
    Any,
    /// `^`: the start of the text.
    Start,
}

/// A single-byte codec: what each byte decodes to (`None`: undefined, strict windows-1252 only).
pub(crate) struct Codec {
    pub(crate) decode: [Option<char>; 256],
    pub(crate) encode: HashMap<char, u8>,
}

pub(crate) struct Tables {
    pub(crate) codecs: HashMap<String, Codec>,
    pub(crate) sets: HashMap<String, CharSet>,
    pub(crate) bad: Vec<Vec<Atom>>,
    /// `html.entities.html5`: names (with their `;` where the name has one) → text.
    pub(crate) html5: HashMap<String, String>,
    /// ftfy's `HTML_ENTITIES` (keys without the leading `&`).
    pub(crate) ftfy_entities: HashMap<String, String>,
    pub(crate) width: HashMap<char, String>,
}

fn chars_of(list: &str) -> String {
    list.split(',').map(|h| char::from_u32(u32::from_str_radix(h, 16).expect("hex")).expect("a scalar value")).collect()
}

fn parse_atom(tok: &str) -> Atom {
    match tok {
        "." => return Atom::Any,
        "^" => return Atom::Start,
        _ => {}
    }
    let (tok, optional) = match tok.strip_suffix('?') {
        Some(t) => (t, true),
        None => (tok, false),
    };
    let (tok, negated) = match tok.strip_prefix('!') {
        Some(t) => (t, true),
        None => (tok, false),
    };
    let inner = tok.strip_prefix('[').and_then(|t| t.strip_suffix(']')).expect("ftfy_tables.txt: a [set]");
    Atom::Set { set: CharSet::parse(inner), negated, optional }
}

fn parse() -> Tables {
    let mut t = Tables {
        codecs: HashMap::new(),
        sets: HashMap::new(),
        bad: Vec::new(),
        html5: HashMap::new(),
        ftfy_entities: HashMap::new(),
        width: HashMap::new(),
    };
    for line in include_str!("ftfy_tables.txt").lines() {
        let mut parts = line.splitn(3, ' ');
        let (kind, a, b) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        match kind {
            "codec" => {
                let mut decode = [None; 256];
                for (slot, h) in decode.iter_mut().zip(b.split(' ')) {
                    *slot = u32::from_str_radix(h, 16).ok().and_then(char::from_u32);
                }
                let encode = decode.iter().enumerate().filter_map(|(i, c)| c.map(|c| (c, i as u8))).collect();
                t.codecs.insert(a.to_string(), Codec { decode, encode });
            }
            "set" => {
                t.sets.insert(a.to_string(), CharSet::parse(b));
            }
            "bad" => {
                let rest = line.strip_prefix("bad ").unwrap_or("");
                t.bad.push(rest.split(' ').map(parse_atom).collect());
            }
            "entity" => {
                t.html5.insert(a.to_string(), chars_of(b));
            }
            "ftfy_entity" => {
                t.ftfy_entities.insert(a.to_string(), chars_of(b));
            }
            "width" => {
                let c = chars_of(a).chars().next().expect("a width-map key");
                t.width.insert(c, chars_of(b));
            }
            _ => {}
        }
    }
    for (name, value) in &t.html5 {
        if name.ends_with(';') {
            t.ftfy_entities.insert(name.clone(), value.clone());
        }
    }
    t
}

/// The tables (parsed on first use).
pub(crate) fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(parse)
}

/// A named character set of the tables.
pub(crate) fn set(name: &str) -> &'static CharSet {
    static EMPTY: OnceLock<CharSet> = OnceLock::new();
    tables().sets.get(name).unwrap_or_else(|| EMPTY.get_or_init(CharSet::default))
}

/// A codec of the tables.
pub(crate) fn codec(name: &str) -> Option<&'static Codec> {
    tables().codecs.get(name)
}
