"""Writes the small committed tokenizer seeds from the tiny test fixtures (run from fuzz/).

Keeps the printable-ASCII base symbols (with and without `</w>`), the merges among them and
the two specials, so each seed is a few KB but still a working CLIP BPE tokenizer.
"""
import json

FIX = "../crates/deradiff-sd/tests/fixtures"
vocab = json.load(open(f"{FIX}/tiny-sd/tokenizer/vocab.json"))
merges = [l.rstrip("\n") for l in open(f"{FIX}/tiny-sd/tokenizer/merges.txt", encoding="utf-8")]
base = {c for c in "abcdefghijklmnopqrstuvwxyz0123456789!,.'"}
keep = {t: i for t, i in vocab.items() if t in base or (t.endswith("</w>") and t[:-4] in base) or t.startswith("<|")}
kept_merges = []
for line in merges[1:]:
    a, b = line.split(" ")
    if len(kept_merges) < 40 and a in keep and b in keep and (a + b) in vocab:
        keep[a + b] = vocab[a + b]
        kept_merges.append(line)
vocab_json = json.dumps(keep, ensure_ascii=False, separators=(",", ":"))
merges_txt = "#version: 0.2\n" + "\n".join(kept_merges) + "\n"
config = open(f"{FIX}/tiny-sd/tokenizer/tokenizer_config.json").read()
specials = open(f"{FIX}/tiny-sd/tokenizer/special_tokens_map.json").read()
prompt = "A red cube on a table, 4k!"
with open("seeds/tokenizer/vocab-merges", "wb") as f:
    f.write("\0".join([vocab_json, merges_txt, config, specials, prompt]).encode())

tj = json.load(open(f"{FIX}/tokenizer-json/tokenizer.json"))
tj["model"]["vocab"] = keep
tj["model"]["merges"] = [m.split(" ") if isinstance(tj["model"]["merges"][0], list) else m for m in kept_merges]
tcfg = open(f"{FIX}/tokenizer-json/tokenizer_config.json").read()
with open("seeds/tokenizer/tokenizer-json", "wb") as f:
    f.write("\0".join([json.dumps(tj, ensure_ascii=False, separators=(",", ":")), tcfg, prompt]).encode())
