#!/usr/bin/env python3
"""The data tables of deradiff's port of `ftfy.fix_text` (crates/deradiff-rewards/src/text/):
`ftfy_tables.txt`, read by `text/tables.rs`. The logic is Rust; these are ftfy's (and Python's)
tables, dumped so that the port uses the very same characters:

* `codec NAME` — the 256 code points each byte decodes to in ftfy's single-byte encodings
  (`chardata.CHARMAP_ENCODINGS`: latin-1, the `sloppy-windows-125x` codecs of
  `ftfy.bad_codecs.sloppy` — whose byte 0x1A is U+FFFD —, iso-8859-2, macroman, cp437) and the
  strict `windows-1252` (its five undefined bytes as `-`);
* `set NAME` — character sets as code-point ranges: the UTF-8 clue classes of
  `chardata.UTF8_DETECTOR_RE`, Python's `\\w` and `\\s` (the `re` module's, for `str`);
* `bad` — one line per branch of `badness.BADNESS_RE` (parsed with Python's own regex parser):
  atoms `[ranges]` (a leading `!` negates), `.` (any but a newline), `^` (text start), a `?`
  suffix for an optional atom;
* `entity NAME CODEPOINTS` — `html.entities.html5` (Python's `html.unescape` table);
  `ftfy_entity` — the extra upper-case names of `chardata.HTML_ENTITIES`;
* `width CHAR CODEPOINTS` — `chardata.WIDTH_MAP`.

    /work/venv/bin/python scripts/gen_ftfy_tables.py
"""

import html.entities
import os
import re
import sys

import ftfy
import ftfy.bad_codecs  # noqa: F401
from ftfy import badness, chardata

try:
    import re._parser as sre_parse
    from re._constants import (ANY, AT, AT_BEGINNING, BRANCH, CATEGORY, CATEGORY_SPACE, CATEGORY_WORD, IN,
                               LITERAL, MAX_REPEAT, NEGATE, RANGE)
except ImportError:  # Python < 3.11
    import sre_parse
    from sre_constants import (ANY, AT, AT_BEGINNING, BRANCH, CATEGORY, CATEGORY_SPACE, CATEGORY_WORD, IN,
                               LITERAL, MAX_REPEAT, NEGATE, RANGE)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "crates", "deradiff-rewards", "src", "text", "ftfy_tables.txt")


def ranges(codepoints):
    cps = sorted(set(codepoints))
    out, i = [], 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        out.append(f"{cps[i]:x}" if i == j else f"{cps[i]:x}-{cps[j]:x}")
        i = j + 1
    return ",".join(out)


def class_set(pattern):
    return [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and re.match(pattern, chr(c))]


WORD = class_set(r"\w")
SPACE = class_set(r"\s")


def atom(op, av):
    if op == LITERAL:
        return f"[{av:x}]"
    if op == ANY:
        return "."
    if op == AT:
        assert av == AT_BEGINNING
        return "^"
    if op == IN:
        neg, cps = False, []
        for o, a in av:
            if o == NEGATE:
                neg = True
            elif o == LITERAL:
                cps.append(a)
            elif o == RANGE:
                cps.extend(range(a[0], a[1] + 1))
            elif o == CATEGORY:
                cps.extend({CATEGORY_WORD: WORD, CATEGORY_SPACE: SPACE}[a])
            else:
                raise ValueError((o, a))
        return ("!" if neg else "") + "[" + ranges(cps) + "]"
    if op == MAX_REPEAT:
        lo, hi, sub = av
        assert (lo, hi) == (0, 1) and len(sub) == 1
        return atom(*sub[0]) + "?"
    raise ValueError((op, av))


def main():
    lines = [f"# ftfy {ftfy.__version__} tables (Python {sys.version.split()[0]}, unicodedata "
             f"{__import__('unicodedata').unidata_version}), made by scripts/gen_ftfy_tables.py: do not edit"]
    for enc in chardata.CHARMAP_ENCODINGS + ["windows-1252"]:
        cps = []
        for b in range(256):
            try:
                cps.append(f"{ord(bytes([b]).decode(enc)):x}")
            except UnicodeDecodeError:
                cps.append("-")
        if enc != "windows-1252":
            # The encoder must be the decoder's inverse (charmap codecs): check it.
            for b in range(256):
                assert chr(int(cps[b], 16)).encode(enc) == bytes([b]), (enc, b)
        lines.append(f"codec {enc} " + " ".join(cps))
    for name, chars in chardata.UTF8_CLUES.items():
        cps = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF and re.match(f"[{chars}]", chr(cp))]
        lines.append(f"set {name} {ranges(cps)}")
    lines.append(f"set word {ranges(WORD)}")
    lines.append(f"set space {ranges(SPACE)}")
    tree = sre_parse.parse(badness.BADNESS_RE.pattern, re.VERBOSE)
    assert len(tree) == 1 and tree[0][0] == BRANCH
    for branch in tree[0][1][1]:
        lines.append("bad " + " ".join(atom(op, av) for op, av in branch))
    for name, value in html.entities.html5.items():
        lines.append(f"entity {name} " + ",".join(f"{ord(c):x}" for c in value))
    for name, value in chardata.HTML_ENTITIES.items():
        if name[1:] not in html.entities.html5:
            lines.append(f"ftfy_entity {name[1:]} " + ",".join(f"{ord(c):x}" for c in value))
        else:
            assert html.entities.html5[name[1:]] == value
    for cp, value in sorted(chardata.WIDTH_MAP.items()):
        lines.append(f"width {cp:x} " + ",".join(f"{ord(c):x}" for c in value))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {OUT}: {len(lines)} lines")


if __name__ == "__main__":
    main()
