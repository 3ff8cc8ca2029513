#!/usr/bin/env bash
# The screenshot of docs/report.png: a tiny Stable Diffusion sweep on the test fixtures (saved
# images, PickScore and the aesthetic predictor of the tiny reward fixtures), its report, and
# Debian's chromium (apt-get install -y chromium) screenshotting it headless. Run from the
# repository root after `cargo build -p deradiff-cli`; DERADIFF names another binary.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${DERADIFF:-target/debug/deradiff}
out=$(mktemp -d)
fixtures=crates/deradiff-sd/tests/fixtures
rewards=crates/deradiff-tune/tests/fixtures
printf '%s\n' "a red cube on a table" "a watercolor fox in the snow" "<b>bold</b> & \"quoted\" prompts are escaped" \
  > "$out/prompts.txt"
"$bin" sweep --reference $fixtures/tiny-sd --aligned $fixtures/tiny-aligned-unet \
  --prompts-file "$out/prompts.txt" --lambda-range 0:1.5:4 --steps 3 --samples 2 --scheduler ddim \
  --pickscore $rewards/clip/clip-quick-gelu \
  --aesthetic $rewards/clip/clip-quick-gelu --aesthetic-mlp $rewards/aesthetic/mlp-16.safetensors \
  --save-images -q --out "$out/sweep"
bin=$(realpath "$bin")
(cd "$out" && "$bin" report sweep)
profile=$(mktemp -d)
/usr/bin/chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
  --user-data-dir="$profile" --virtual-time-budget=5000 --window-size=1000,900 \
  --screenshot="$out/shot.png" "file://$out/sweep/report.html" 2>/dev/null
# Quantised to 256 colours with Pillow where it is installed (PYTHON=…): a small PNG.
"${PYTHON:-python3}" -c "import sys; from PIL import Image; Image.open(sys.argv[1]).convert('RGB').quantize(256).save(sys.argv[2], optimize=True)" \
  "$out/shot.png" docs/report.png 2>/dev/null || cp "$out/shot.png" docs/report.png
rm -rf "$out" "$profile"
echo "wrote docs/report.png"
