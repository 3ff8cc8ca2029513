#!/usr/bin/env python3
"""Tokenizer fidelity fixtures: hostile prompts tokenized by each reward's reference tokenizer,
and a broad ftfy corpus, for `crates/deradiff-rewards/tests/tokenizer_fidelity.rs`.

References (each reward's own code, not a re-implementation):

* HPS v2 / v2.1: `hpsv2/src/open_clip/tokenizer.py` (the package's vendored open_clip:
  `basic_clean` = `ftfy.fix_text` + `html.unescape` twice + strip, `whitespace_clean`, lower-case,
  its BPE, `<start_of_text>` / `<end_of_text>`, `tokenize(texts, 77)` cutting at 77 with the end
  token kept), through the package's own `tokenize` function, its module-level tokenizer built on
  a truncated merges list (the first N_MERGES merges of open_clip's `bpe_simple_vocab_16e6.txt.gz`,
  so the fixture stays small and the ids fit tiny text towers);
* CLIP score / PickScore: transformers 5's `CLIPTokenizer` (the tokenizers-backed one that
  `AutoTokenizer` / `CLIPProcessor` load) on three folders built from the same merges — `bpe/`
  (`vocab.json` + `merges.txt`, openai's config: padding with `<|endoftext|>`), `bpe-json/` (the
  `tokenizer.json` transformers saves for it) and `bpe-bang/` (OpenCLIP's Hub folders' config,
  laion/CLIP-ViT-H-14: padding with `!`) — `tok(p, padding="max_length", truncation=True,
  max_length=77)`;
* ImageReward: `ImageReward/models/BLIP/blip.py`'s `init_tokenizer` (transformers 4.46's slow
  `BertTokenizer` + `[DEC]`, `[ENC]`) on a WordPiece vocabulary made from the corpus (`bert/`),
  `tokenizer(p, padding="max_length", truncation=True, max_length=35)` as `ImageReward.score`.

`ftfy.fix_text` is also recorded on a broad generated corpus (`ftfy.json`): the Rust port of
the part of ftfy the tokenizer uses is tested against it.

The packages pin old dependencies; install them beside the main venv, then run with the venv:

    /work/venv/bin/pip install --target /work/fidelity-site --no-deps hpsv2 image-reward==1.5 \\
        transformers==4.46.3 tokenizers==0.20.3 timm==0.6.13 fairscale==0.4.13 huggingface_hub==0.26.5
    /work/venv/bin/python scripts/gen_fidelity_text_fixtures.py

(the script runs the pinned part itself in a subprocess with PYTHONPATH=/work/fidelity-site, or
$FIDELITY_SITE). The hpsv2 wheel lacks `bpe_simple_vocab_16e6.txt.gz`, which its tokenizer module
loads at import; the script copies open_clip's (the same file) into it when missing.

Writes `crates/deradiff-tune/tests/fixtures/fidelity/`: `prompts.json` (the prompts),
`ids.json` (per tokenizer, one string of space-separated ids per prompt, up to and including the
end token — the attention mask's length —: the rest is padding), `clean.json` (hpsv2's `whitespace_clean(basic_clean(p)).lower()`
per prompt, for messages), `ftfy.json` ([input, fix_text(input)] pairs), the tokenizer folders
and `reference.json` (versions, sizes). Seeded; re-running gives identical files.
"""

import gzip
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "crates", "deradiff-tune", "tests", "fixtures", "fidelity")
SITE = os.environ.get("FIDELITY_SITE", "/work/fidelity-site")
N_MERGES = 2000
CONTEXT = 77
BERT_LENGTH = 35

ENTITIES = [
    "&amp;", "&amp;amp;", "&amp;amp;amp;", "&lt;", "&gt;", "&quot;", "&apos;", "&#39;", "&#x27;", "&#X41;",
    "&nbsp;", "&copy;", "&copy", "&AMP;", "&Amp;", "&eacute;", "&Eacute;", "&EACUTE;", "&eacute", "&notin;",
    "&notit;", "&not", "&hellip;", "&mdash;", "&ndash;", "&lsquo;", "&rdquo;", "&#8220;", "&#x201D;",
    "&#128512;", "&#x1F600;", "&#0;", "&#x110000;", "&#xD800;", "&#128;", "&#150;", "&#x80;", "&#1114111;",
    "&foo;", "&;", "&#;", "&#x;", "&#65", "&amp", "&lt", "&LT;", "&ThickSpace;", "&NewLine;", "&Tab;",
    "&lt;b&gt;bold&lt;/b&gt;", "<b>bold</b> &amp;", "&amp;quot;", "&amp;#39;", "&#38;amp;", "&zwj;", "&shy;",
    "&#x0A;", "&#13;", "&#x9F;", "&#1;", "&#x7F;", "&#65533;", "&#xFFFE;", "&#x1D;", "&DownBreve;",
    "&nGt;", "&acE;", "&fjlig;", "&#00000000065;", "&#x0000000041;", "&aMp;", "&QUOT;", "&COPY;",
    "&NotEqualTilde;", "&ouml;&auml;&uuml;", "AT&T", "R&D", "a & b", "&&&", "&#", "&#x", "&#x41",
    "&#9999999999;", "&lt;&lt;", "&Uuml;BER", "&szlig;", "&SZLIG;",
]
QUOTES = ["“", "”", "‘", "’", "„", "‚", "«", "»", "‹", "›", "″", "′", "‛", "‟", "`", "´", "＂", "＇", "〝", "〞",
          "「", "」", "『", "』", "“quoted”", "‘single’", "«guillemets»", "don’t", "it’s", "‚low‘", "„low“"]
FULLWIDTH = ["ＡＢＣａｂｃ", "０１２３", "！＂＃＄％＆（）＊＋，－．／", "：；＜＝＞？＠［＼］＾＿｀｛｜｝～", "　", "ｱｲｳｴｵ",
             "ｶﾞｷﾞ", "￥￦￠￡", "Ｈｅｌｌｏ　Ｗｏｒｌｄ", "ｍｏｎａ　ｌｉｓａ", "ﾟ", "･", "￣"]
EMOJI = ["😀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🇯🇵", "🏳️\u200d🌈", "☺️", "❤", "❤️", "✨", "🔥🔥🔥", "1️⃣",
         "#️⃣", "🧑🏿\u200d🚀", "🫠", "©️", "🐱‍👤", "🙂🙃", "🤖", "⭐️", "🌈", "🎨🖌️"]
COMBINING = ["e\u0301", "a\u0308\u0304", "Z\u0338\u0349\u0313a\u0335l\u0337g\u0336o\u0334", "\u0301start",
             "n\u0303", "ﬁ", "Å", "ᄀ\u1161", "가\u11a8", "\u0345", "ΐ", "ǅ", "İstanbul", "ΟΔΟΣ ΣΟΦΟΣ", "Straße",
             "ẞ", "o\u0328\u0304", "\u05d0\u05b8", "क\u094d\u0937", "\u0e01\u0e34\u0e4a", "a\u20dd",
             "x\u0345y", "ά", "ﬃ", "ĳ", "ŉ", "Ǆ", "ǈ", "ῼ", "ﬆ", "\u1e9e", "A\u030a", "\u212b", "\u2126"]
CONTROL = ["\x00", "\x01", "\x07", "\x08", "\t", "\n", "\r\n", "\r", "\x0b", "\x0c", "\x1b[31mred\x1b[0m",
           "\x1b]0;title\x07", "\x1b[1;32m", "\x1c", "\x1d", "\x1e", "\x1f", "\x7f", "\x80", "\x85", "\x9f",
           "\x92", "\x93quoted\x94", "\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u202a", "\u202e",
           "\u2028", "\u2029", "\u2060", "\ufeff", "\ufffc", "\ufffd", "\ufff9", "\U000e0041", "\U000f0000",
           "\ue000", "\u00ad", "\u061c", "\u180e", "\u2066", "\u206f", "\x1b", "\x1b[", "\x1b[0"]
PUNCT = ["!!!", "?!?!", "...", "…", "---", "—–-", "***", "@#$%^&*()", "''", '""', "'s", "'t'll've'd", "::",
         "~~~", "¡¿", "、。「」", "‼⁉", "§¶†‡", "<>", "<|endoftext|>", "<start_of_text>", "<end_of_text>",
         "<|startoftext|>a", "[CLS] [SEP] [PAD] [MASK] [UNK] [DEC] [ENC]", "<START_OF_TEXT>", "'S", "'LL",
         "...!!!???", "((( )))", "[[[", "]]]", "{}", "%%%", "\\\\", "//", "|", "^_^", ":-)", "<3", "--->",
         "==", "++", "#hashtag", "@user", "$100", "100%", "3.14159", "1,000,000", "½", "¼¾"]
WORDS = ["a photo of a cat", "Photorealistic portrait of an astronaut", "日本語のテキスト", "中文字符测试", "한국어 문장",
         "русский текст", "ελληνικά", "עברית", "العربية", "हिन्दी", "ไทย", "Tiếng Việt", "café", "naïve",
         "façade", "smörgåsbord", "Ⅻ", "①②③", "²³¹", "٣٤٥", "𝐀𝐁𝐂 𝕏", "ℌ", "µ", "K", "ﬀ ﬂ ﬃ ﬄ ﬅ ﬆ", "Ⓐ",
         "ǅungla", "a red cube on a blue table", "oil painting, trending on artstation", "8k, ultra detailed",
         "HDR", "Mona Lisa", "ÉCOLE", "Ångström", "Þórr", "Ærø", "Œuvre", "Dvořák", "Łódź", "Ñandú",
         "Москва", "ΑΘΗΝΑ", "İI ıi", "Ⅷ", "ﾊﾟﾝ", "Ｑ", "🄰🄱", "𝓈𝒸𝓇𝒾𝓅𝓉", "zebra's", "rock'n'roll",
         "won't", "they're", "I'LL", "we've", "you'd", "I'm", "O'Neil", "10x", "x86_64", "a-b_c.d"]
SEPARATORS = [" ", "", ", ", "\n", "\u3000", "\t", "  ", " - ", "\u00a0", "\r\n"]
WHITESPACE = [" ", "  ", "\t", "\u00a0", "\u3000", "\u2003", "\u202f", "\n\n", "\x1c", "\x85", "\u2028",
              " \t\n\r\x0b\x0c"]

MOJIBAKE_CODECS = ["sloppy-windows-1252", "latin-1", "sloppy-windows-1251", "mac_roman", "cp437",
                   "iso-8859-2", "sloppy-windows-1250", "sloppy-windows-1253", "sloppy-windows-1254"]
MOJIBAKE_SOURCES = ["café", "naïve résumé", "“quoted”", "don’t", "über", "Straße", "日本", "€100", "—dash—",
                    "São Paulo", "Ελλάδα", "Москва", "Łódź", "½ cup", "…", "•bullet", "™", "Ø", "ça va",
                    "Dvořák", "İstanbul", "l’été", "😀 emoji", "°C", "±5", "¿qué?", "¡hola!", "Ärger"]


def mojibake(rng, text):
    import ftfy.bad_codecs  # noqa: F401  (registers the sloppy codecs)
    codec = rng.choice(MOJIBAKE_CODECS)
    try:
        out = text.encode("utf-8").decode(codec)
    except UnicodeDecodeError:
        return text
    if rng.random() < 0.2:
        try:
            out = out.encode("utf-8").decode(rng.choice(MOJIBAKE_CODECS[:2]))
        except UnicodeDecodeError:
            pass
    return out


def fragment(rng):
    pool = rng.choice([ENTITIES, QUOTES, FULLWIDTH, EMOJI, COMBINING, CONTROL, PUNCT, WORDS, WORDS, WHITESPACE])
    text = rng.choice(pool)
    r = rng.random()
    if r < 0.1:
        text = text.upper()
    elif r < 0.15:
        text = text.title()
    return text


def hostile_prompts():
    rng = random.Random(23)
    prompts = []
    for pool in [ENTITIES, QUOTES, FULLWIDTH, EMOJI, COMBINING, CONTROL, PUNCT, WORDS, WHITESPACE]:
        prompts.extend(pool)
    prompts += ["", " ", "\n", "\x00", "a"]
    prompts += [mojibake(rng, s) for s in MOJIBAKE_SOURCES]
    # Very long: the 77-token (CLIP) and 35-token (BERT) cuts, at and around the boundary.
    prompts += [" ".join(["a"] * n) for n in list(range(30, 38)) + list(range(70, 80))]
    prompts += [
        "a highly detailed photo of a red cube on a table, " * 20,
        "x" * 400,
        "🔥" * 100,
        "&amp;" * 60,
        "日本語" * 70,
        "!" * 300,
        ("“quoted” " * 40).strip(),
        "supercalifragilisticexpialidocious" * 12,
        "é" * 200,
        "a\u0301" * 150,
        "Ｆｕｌｌ　ｗｉｄｔｈ　" * 30,
        "\x1b[31m" * 40 + "red",
        " ".join(str(i) for i in range(200)),
    ]
    while len(prompts) < 640:
        k = rng.randint(1, 7)
        parts = [fragment(rng) for _ in range(k)]
        if rng.random() < 0.15:
            parts.append(mojibake(rng, rng.choice(MOJIBAKE_SOURCES)))
        text = rng.choice(SEPARATORS).join(parts) if rng.random() < 0.7 else "".join(
            p + rng.choice(SEPARATORS) for p in parts)
        prompts.append(text)
    return prompts


RANGES = [(0x20, 0x7e), (0x80, 0xff), (0x100, 0x24f), (0x2000, 0x206f), (0x2500, 0x257f), (0x400, 0x4ff),
          (0x370, 0x3ff), (0x4e00, 0x4e80), (0xff00, 0xffef), (0x1f300, 0x1f64f), (0x300, 0x36f),
          (0x20a0, 0x20cf), (0x2100, 0x214f), (0xfb00, 0xfb4f), (0x0, 0x1f), (0xe000, 0xe010), (0x3000, 0x303f),
          (0x2190, 0x21ff), (0x2200, 0x22ff), (0x600, 0x6ff), (0xac00, 0xac40), (0x1100, 0x11ff), (0x2460, 0x24ff)]


def ftfy_corpus():
    import unicodedata
    rng = random.Random(1)
    corpus = []
    while len(corpus) < 800:
        k = rng.randint(1, 5)
        corpus.append(rng.choice(SEPARATORS).join(fragment(rng) for _ in range(k)))
    while len(corpus) < 1600:
        words = [rng.choice(MOJIBAKE_SOURCES + WORDS) for _ in range(rng.randint(1, 4))]
        corpus.append(mojibake(rng, " ".join(words)))
    while len(corpus) < 2600:
        lo, hi = rng.choice(RANGES)
        chars = []
        for _ in range(rng.randint(1, 16)):
            if rng.random() < 0.3:
                lo, hi = rng.choice(RANGES)
            c = chr(rng.randint(lo, hi))
            if unicodedata.category(c) == "Cn" or 0xd800 <= ord(c) <= 0xdfff:
                continue
            chars.append(c)
        corpus.append("".join(chars))
    # All the Latin-1 and Windows-1252 characters after each other: the mojibake detector's domain.
    latin = [chr(c) for c in range(0xa0, 0x100)] + list("€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ")
    for _ in range(400):
        corpus.append("".join(rng.choice(latin + list("abcxyz ")) for _ in range(rng.randint(2, 8))))
    return corpus


def bpe_files():
    import open_clip
    src = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(src).read().decode("utf-8").split("\n")
    header, merges = lines[0], lines[1:1 + N_MERGES]
    return src, header, merges


def write_bpe_dirs():
    """vocab.json + merges.txt in the layout of openai/clip-vit-*'s Hub folders."""
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer
    src, header, merges = bpe_files()
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    enc = {t: i for i, t in enumerate(vocab)}
    assert len(enc) == len(vocab)
    specials = {
        "openai": {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                   "pad_token": "<|endoftext|>"},
        "bang": {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                 "pad_token": "!"},
    }
    for name, sp in [("bpe", specials["openai"]), ("bpe-bang", specials["bang"])]:
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "vocab.json"), "w") as f:
            json.dump(enc, f, ensure_ascii=False, separators=(",", ":"))
        with open(os.path.join(d, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        cfg = dict(sp, model_max_length=CONTEXT, do_lower_case=True, tokenizer_class="CLIPTokenizer")
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(cfg, f, indent=1)
    # tokenizer.json as transformers 5 saves it for the `bpe` folder.
    tok = CLIPTokenizer.from_pretrained(os.path.join(OUT, "bpe"))
    tmp = os.path.join(OUT, "_save")
    tok.save_pretrained(tmp)
    d = os.path.join(OUT, "bpe-json")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(tmp, "tokenizer.json")) as f:
        saved = json.load(f)
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump(saved, f, ensure_ascii=False, separators=(",", ":"))
    shutil.copy(os.path.join(OUT, "bpe", "tokenizer_config.json"), os.path.join(d, "tokenizer_config.json"))
    shutil.rmtree(tmp)
    return src


def hf_ids(prompts):
    from transformers import AutoTokenizer
    out = {}
    for name in ["bpe", "bpe-json", "bpe-bang"]:
        tok = AutoTokenizer.from_pretrained(os.path.join(OUT, name))
        assert type(tok).__name__ == "CLIPTokenizer", type(tok)
        enc = tok(prompts, padding="max_length", truncation=True, max_length=CONTEXT)
        rows = []
        for row, mask in zip(enc.input_ids, enc.attention_mask):
            n = sum(mask)
            assert len(row) == CONTEXT and row[n - 1] == tok.eos_token_id, (name, row)
            assert all(x == tok.pad_token_id for x in row[n:]), (name, row)
            rows.append(" ".join(map(str, row[:n])))
        out["hf-" + name] = rows
        out["hf-" + name + "-pad"] = tok.pad_token_id
    return out


def bert_vocab(prompts):
    """A WordPiece vocabulary from the corpus: every character (some left out, to meet [UNK]),
    its `##` form, and the most frequent words."""
    from collections import Counter
    from transformers import BasicTokenizer
    basic = BasicTokenizer(do_lower_case=True)
    words = Counter()
    chars = set()
    for p in prompts:
        for w in basic.tokenize(p):
            words[w] += 1
            chars.update(w)
    chars = sorted(c for c in chars if ord(c) % 13 != 0)
    vocab = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    vocab += [w for w, _ in words.most_common(300) if w not in vocab and len(w) > 1]
    vocab += ["##ing", "##ed", "##s", "##er", "##est", "##ly", "photo", "cat", "red", "cube", "##ube"]
    seen, out = set(), []
    for v in vocab:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def pinned(prompts_path, out_path):
    """Runs in the pinned environment: hpsv2's open_clip tokenize and ImageReward's BERT."""
    import torch  # noqa: F401
    site_tok = os.path.join(SITE, "hpsv2", "src", "open_clip", "tokenizer.py")
    gz = os.path.join(os.path.dirname(site_tok), "bpe_simple_vocab_16e6.txt.gz")
    src, header, merges = bpe_files()
    if not os.path.exists(gz):
        shutil.copy(src, gz)
    spec = importlib.util.spec_from_file_location("hps_tokenizer", site_tok)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    trunc = os.path.join(OUT, "_merges.txt.gz")
    with gzip.open(trunc, "wb") as f:
        f.write((header + "\n" + "\n".join(merges)).encode("utf-8"))
    mod._tokenizer = mod.SimpleTokenizer(bpe_path=trunc)
    os.remove(trunc)
    with open(prompts_path) as f:
        prompts = json.load(f)
    tokens = mod.tokenize(prompts, context_length=CONTEXT)
    eot = mod._tokenizer.encoder["<end_of_text>"]
    oc_rows, clean = [], []
    for p, row in zip(prompts, tokens.tolist()):
        n = min(len(mod._tokenizer.encode(p)) + 2, CONTEXT)
        ids = row[:n]
        assert ids[-1] == eot and all(x == 0 for x in row[n:])
        oc_rows.append(" ".join(map(str, ids)))
        clean.append(mod.whitespace_clean(mod.basic_clean(p)).lower())
    # ImageReward's init_tokenizer on the corpus vocabulary (bert-base-uncased's is not shipped).
    import transformers
    from transformers import BertTokenizer
    assert transformers.__version__ == "4.46.3", transformers.__version__
    bert_dir = os.path.join(OUT, "bert")
    os.makedirs(bert_dir, exist_ok=True)
    with open(os.path.join(bert_dir, "vocab.txt"), "w") as f:
        f.write("\n".join(bert_vocab(prompts)) + "\n")
    tokenizer = BertTokenizer(os.path.join(bert_dir, "vocab.txt"))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    bert_rows = []
    for p in prompts:
        enc = tokenizer(p, padding="max_length", truncation=True, max_length=BERT_LENGTH)
        ids = enc.input_ids
        n = sum(enc.attention_mask)
        assert ids[n - 1] == tokenizer.sep_token_id and all(x == tokenizer.pad_token_id for x in ids[n:])
        bert_rows.append(" ".join(map(str, ids[:n])))
    import ftfy
    with open(out_path, "w") as f:
        json.dump({"open_clip": oc_rows, "clean": clean, "bert": bert_rows, "ftfy": ftfy.__version__,
                   "transformers_pinned": transformers.__version__, "eot": eot}, f)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--pinned":
        pinned(sys.argv[2], sys.argv[3])
        return
    import ftfy
    import transformers
    os.makedirs(OUT, exist_ok=True)
    prompts = hostile_prompts()
    assert len(prompts) >= 500
    with open(os.path.join(OUT, "prompts.json"), "w") as f:
        json.dump(prompts, f, ensure_ascii=False, indent=0)
    corpus = ftfy_corpus()
    with open(os.path.join(OUT, "ftfy.json"), "w") as f:
        json.dump([[s, ftfy.fix_text(s)] for s in corpus], f, ensure_ascii=False, indent=0)
    bpe_src = write_bpe_dirs()
    ids = hf_ids(prompts)
    tmp = os.path.join(OUT, "_pinned.json")
    env = dict(os.environ, PYTHONPATH=SITE)
    subprocess.run([sys.executable, __file__, "--pinned", os.path.join(OUT, "prompts.json"), tmp], check=True, env=env)
    with open(tmp) as f:
        pin = json.load(f)
    os.remove(tmp)
    ids["open_clip"] = pin["open_clip"]
    ids["bert"] = pin["bert"]
    with open(os.path.join(OUT, "ids.json"), "w") as f:
        json.dump(ids, f, indent=0)
    with open(os.path.join(OUT, "clean.json"), "w") as f:
        json.dump(pin["clean"], f, ensure_ascii=False, indent=0)
    changed = sum(1 for s in corpus if ftfy.fix_text(s) != s)
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({
            "prompts": len(prompts),
            "ftfy_corpus": len(corpus),
            "ftfy_changed": changed,
            "n_merges": N_MERGES,
            "bpe_source": "open_clip " + os.path.basename(bpe_src) + f" (first {N_MERGES} merges)",
            "versions": {"ftfy": ftfy.__version__, "transformers": transformers.__version__,
                         "transformers_pinned (ImageReward)": pin["transformers_pinned"],
                         "python": sys.version.split()[0]},
            "open_clip_reference": "hpsv2/src/open_clip/tokenizer.py tokenize(texts, 77)",
            "bert_reference": "ImageReward/models/BLIP/blip.py init_tokenizer (BertTokenizer + [DEC], [ENC]), "
                              "max_length=35",
            "clip_reference": "transformers AutoTokenizer (CLIPTokenizer), padding=max_length, truncation, 77",
        }, f, indent=1)
    print(f"{len(prompts)} prompts, {len(corpus)} ftfy strings ({changed} changed by fix_text)")


if __name__ == "__main__":
    main()
