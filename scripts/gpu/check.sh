#!/usr/bin/env bash
# The GPU check of deradiff, in one run from the project root on a machine with an NVIDIA GPU, so
# that its minutes go to measuring, not building (docs/gpu.md, "Checking on a GPU"):
#
#   1. kernels:  every kernel's device path on the GPU against the CPU kernels (f32 / f16 / bf16);
#      fixtures: the tiny SD and SDXL realigned runs on the GPU in f32 / f16 / bf16 against the
#                same binary's CPU run in f32 (images within 1, 2 and 6 of 255);
#   2. bench:    scripts/gpu/bench.py, deradiff against diffusers + PyTorch on full-size random
#                SD 1.5 (512 px) and SDXL (1024 px) pipelines, f16 and bf16, one UNet and realigned;
#   3. the ratio table (deradiff ÷ diffusers per denoising step, peak memory both sides).
#
# What it needs, prepared where Rust and the network are (nothing is built here):
#   $BIN/deradiff       cargo build --release -p deradiff-cli --features cuda,cudnn
#   $BIN/device_check   cargo build --release -p deradiff-kernels --features cudnn --example device_check
#                       (both with the CUDA 13 recipe of docs/gpu.md; either may be xz-packed as
#                       NAME.xz, unpacked into $OUT)
#   $WHEELS/*.whl       diffusers 0.42.1 and importlib_metadata (`pip download --no-deps`), used
#                       when `import diffusers` fails
#   python3 with PyTorch built for CUDA: its site-packages' nvidia/*/lib folders provide cuBLAS and
#                       cuDNN 9 (libcudnn.so.9) to the binaries at run time.
#
# Environment: BIN (default gpu-bin), WHEELS (gpu-wheels), OUT (/tmp/deradiff-gpu-check), DEVICE
# (cuda:0), STAGES (default "kernels fixtures bench"; any subset), SD15_STEPS / SDXL_STEPS (the two
# step counts whose difference gives a per-step time: "4 16" / "3 9"), REPEATS (1).
set -euo pipefail

BIN=${BIN:-gpu-bin}
WHEELS=${WHEELS:-gpu-wheels}
OUT=${OUT:-/tmp/deradiff-gpu-check}
DEVICE=${DEVICE:-cuda:0}
STAGES=${STAGES:-kernels fixtures bench}
read -r SD15_NA SD15_NB <<<"${SD15_STEPS:-4 16}"
read -r SDXL_NA SDXL_NB <<<"${SDXL_STEPS:-3 9}"
REPEATS=${REPEATS:-1}
FIXTURES=crates/deradiff-sd/tests/fixtures
mkdir -p "$OUT"
[ -d "$FIXTURES/tiny-sd" ] || { echo "run this from the deradiff project root" >&2; exit 2; }

# A binary of $BIN, unpacked from NAME.xz into $OUT when only that is there.
binary() {
  if [ -x "$BIN/$1" ]; then echo "$BIN/$1"; return; fi
  if [ -f "$BIN/$1.xz" ]; then
    [ -x "$OUT/$1" ] || { xz -dc "$BIN/$1.xz" > "$OUT/$1"; chmod +x "$OUT/$1"; }
    echo "$OUT/$1"; return
  fi
  echo "missing $BIN/$1 (or $BIN/$1.xz): see the header of $0" >&2; exit 2
}

# PyTorch's CUDA libraries (cuBLAS, cuDNN, …) for the binaries, and a lasting PTX JIT cache.
SITE=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
NV_LIBS=$(ls -d "$SITE"/nvidia/*/lib 2>/dev/null | paste -sd: - || true)
export LD_LIBRARY_PATH="${NV_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CUDA_CACHE_PATH=${CUDA_CACHE_PATH:-$OUT/cuda-cache}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true

status=0
stage() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if stage kernels; then
  echo "== 1a. kernels: device path on $DEVICE vs the CPU kernels"
  DERADIFF_DEVICE=$DEVICE "$(binary device_check)" || status=1
fi

if stage fixtures; then
  echo "== 1b. tiny realigned runs on $DEVICE vs the CPU in f32"
  DERADIFF=$(binary deradiff)
  run() {  # run NAME REFERENCE ALIGNED DEVICE DTYPE
    "$DERADIFF" sample --reference "$2" --aligned "$3" --lambda 0.5 --prompt "a red cube on a table" \
      --negative-prompt "blurry" --steps 6 --seed 3 --scheduler euler-a --device "$4" --dtype "$5" \
      --out "$OUT/fixtures/$1-$4-$5.png" --quiet
  }
  for fixture in "sd $FIXTURES/tiny-sd $FIXTURES/tiny-aligned-unet" "sdxl $FIXTURES/tiny-sdxl $FIXTURES/tiny-sdxl-aligned-unet"; do
    read -r name ref aligned <<<"$fixture"
    run "$name" "$ref" "$aligned" cpu f32
    for pair in "f32 1" "f16 2" "bf16 6"; do
      read -r dtype limit <<<"$pair"
      printf '%-5s %-5s ' "$name" "$dtype"
      if run "$name" "$ref" "$aligned" "$DEVICE" "$dtype"; then
        python3 scripts/gpu/compare_png.py "$OUT/fixtures/$name-$DEVICE-$dtype.png" "$OUT/fixtures/$name-cpu-f32.png" "$limit" || status=1
      else
        echo "FAIL: deradiff sample failed"; status=1
      fi
    done
  done
fi

if stage bench; then
  echo "== 2. per-step time against diffusers"
  DERADIFF=$(binary deradiff)
  if ! python3 -c 'import diffusers' 2>/dev/null; then
    ls "$WHEELS"/diffusers-*.whl >/dev/null 2>&1 || { echo "no diffusers and no wheels in $WHEELS" >&2; exit 2; }
    python3 -m pip install -q --no-index --no-deps --target "$OUT/site" "$WHEELS"/*.whl
    export PYTHONPATH="$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  for kind in sd15 sdxl; do
    tiny=$FIXTURES/tiny-sd; [ "$kind" = sdxl ] && tiny=$FIXTURES/tiny-sdxl
    [ -f "$OUT/$kind/model_index.json" ] || python3 scripts/gpu/make_random_pipeline.py "$kind" "$tiny" "$OUT/$kind"
  done
  python3 scripts/gpu/bench.py --deradiff "$DERADIFF" --reference "$OUT/sd15" --aligned "$OUT/sd15-aligned/unet" \
    --dtype f16 bf16 --size 512 --device "$DEVICE" --na "$SD15_NA" --nb "$SD15_NB" --repeats "$REPEATS" \
    --out "$OUT/sd15.json" || status=1
  python3 scripts/gpu/bench.py --deradiff "$DERADIFF" --reference "$OUT/sdxl" --aligned "$OUT/sdxl-aligned/unet" \
    --dtype f16 bf16 --size 1024 --guidance 5 --device "$DEVICE" --na "$SDXL_NA" --nb "$SDXL_NB" \
    --repeats "$REPEATS" --out "$OUT/sdxl.json" || status=1

  echo "== 3. deradiff ÷ diffusers per denoising step (goal ≤ 1.0, from 2.0–3.3 before issue 21)"
  python3 - "$OUT/sd15.json" "$OUT/sdxl.json" <<'EOF'
import json, os, sys
print("| model | size | dtype | | deradiff ms | diffusers ms | ratio | peak MiB deradiff / diffusers |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for path in sys.argv[1:]:
    if not os.path.exists(path):
        continue
    for r in json.load(open(path))["results"]:
        for label in ("one_unet", "realigned"):
            peaks = [r[f"deradiff_{label}_peak_mib"], r[f"diffusers_{label}_peak_mib"]]
            print(f"| {r['pipeline']} | {r['size']} | {r['dtype']} | {label.replace('_', ' ')} | "
                  f"{r[f'deradiff_{label}_ms']:.1f} | {r[f'diffusers_{label}_ms']:.1f} | {r[f'ratio_{label}']:.2f} | "
                  + " / ".join("-" if p is None else f"{p:.0f}" for p in peaks) + " |")
EOF
fi

[ "$status" = 0 ] && echo "check.sh: all stages passed" || echo "check.sh: some checks FAILED (see above)"
exit "$status"
