#!/usr/bin/env bash
# Fills fuzz/corpus/<target>/ (not committed) with the committed seeds and the real test
# fixtures of deradiff-sd / deradiff-tune. Run from anywhere; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
SD=../crates/deradiff-sd/tests/fixtures
TUNE=../crates/deradiff-tune/tests/fixtures
mkdir -p corpus/{weights,configs,tokenizer,results,lora,prompts,merge}
cp -r seeds/* corpus/

# weights: every safetensors file of the fixtures (models up to 1.6 MB; run with -max_len=2000000).
for f in $(find "$SD" "$TUNE" -name '*.safetensors'); do
  cp "$f" "corpus/weights/$(echo "${f#../crates/}" | tr / _)"
done

# configs: every JSON file of the fixtures.
for f in $(find "$SD" "$TUNE" -name '*.json' ! -name 'vocab.json' ! -name 'tokenizer.json'); do
  cp "$f" "corpus/configs/$(echo "${f#../crates/}" | tr / _)"
done

# tokenizer: the full vocab + merges directories, NUL-joined as the target splits them, and the
# full tokenizer.json.
join() { local out=$1; shift; : > "$out"; local first=1
  for part in "$@"; do [ $first = 1 ] || printf '\0' >> "$out"; first=0; cat "$part" >> "$out" 2>/dev/null || true; done; }
n=0
for d in "$SD/tiny-sd/tokenizer" "$SD/tiny-sdxl/tokenizer_2" "$TUNE/clip/clip-gelu"; do
  n=$((n+1))
  join "corpus/tokenizer/fixture-vocab-$n" "$d/vocab.json" "$d/merges.txt" "$d/tokenizer_config.json" "$d/special_tokens_map.json"
done
join corpus/tokenizer/fixture-tokenizer-json "$SD/tokenizer-json/tokenizer.json" "$SD/tokenizer-json/tokenizer_config.json"
# BLIP's BERT tokenizer (ImageReward): its tokenizer.json, and its vocab.txt in the vocab slot.
IR="$TUNE/image_reward"
join corpus/tokenizer/fixture-bert-tokenizer-json "$IR/tokenizer.json"
join corpus/tokenizer/fixture-bert-vocab "$IR/vocab.txt" /dev/null /dev/null /dev/null
# lora: every LoRA file and peft folder of the fixtures, framed as the target reads a folder
# (layout byte, u16 config length, adapter_config.json, weights).
mkdir -p corpus/lora
python3 - "$SD/lora" corpus/lora <<'PY'
import os, struct, sys
src, out = sys.argv[1], sys.argv[2]
def seed(name, layout, config, weights):
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([layout]) + struct.pack("<H", len(config)) + config + weights)
for root, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".safetensors") or f == "reference.safetensors":
            continue
        weights = open(os.path.join(root, f), "rb").read()
        cfg = os.path.join(root, "adapter_config.json")
        name = os.path.relpath(os.path.join(root, f), src).replace("/", "_")
        if os.path.exists(cfg):
            seed(name, 1, open(cfg, "rb").read(), weights)
        else:
            seed(name, 2, b"", weights)
PY
for t in weights configs tokenizer results lora prompts merge; do echo "corpus/$t: $(ls corpus/$t | wc -l) files"; done
