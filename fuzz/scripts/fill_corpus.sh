#!/usr/bin/env bash
# Fills fuzz/corpus/<target>/ (not committed) with the committed seeds and the real test
# fixtures of deradiff-sd / deradiff-tune. Run from anywhere; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
SD=../crates/deradiff-sd/tests/fixtures
TUNE=../crates/deradiff-tune/tests/fixtures
mkdir -p corpus/{weights,configs,tokenizer,results,prompts,merge}
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
ls corpus/* | head -0
for t in weights configs tokenizer results prompts merge; do echo "corpus/$t: $(ls corpus/$t | wc -l) files"; done
