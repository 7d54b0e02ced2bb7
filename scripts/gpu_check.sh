#!/usr/bin/env bash
# The GPU check of the CUDA backend, one command on a machine with an NVIDIA GPU:
#   bash scripts/gpu_check.sh [OUT_DIR]
# 1. builds `alignflow` and the parity tests with `--features cuda` (or takes prebuilt ones
#    from $ALIGNFLOW_PREBUILT: `alignflow` and `cuda_parity`, optionally gzipped),
# 2. runs every CUDA parity test against the CPU reference,
# 3. times an SFT/pretraining step of a ~1.1B-parameter Llama in bf16 (tokens/s, TFLOP/s, MFU),
#    the same step in PyTorch eager on the same card where PyTorch is installed, and batched
#    decoding,
# 4. writes everything to OUT_DIR (default gpu-results/): nvidia-smi.txt, parity.log,
#    results.json (every benchmark's JSON by name), errors.txt (stderr tails, if any), and
#    prints a summary table.
# Knobs: GPU_CHECK_STEPS (6), GPU_CHECK_MICRO (rows per micro-batch, 8), GPU_CHECK_TORCH=0 (no
# PyTorch peer), GPU_CHECK_DECODE_BATCHES ("1 64"; empty for none), ALIGNFLOW_CUDA_PROFILE=1
# (a per-op breakdown of one extra, synchronised step in the train JSON), GPU_CHECK_ATTENTION
# (e.g. "simple fa2": the training step again with each named attention implementation,
# ALIGNFLOW_CUDA_ATTENTION, into train_attention_NAME.json), GPU_CHECK_MICRO_EXTRA (e.g. "16":
# the training step again at those micro-batch sizes, into train_microN.json).
# Needs the CUDA 13 driver; NVRTC and cuBLAS come from the CUDA toolkit or the pip wheels
# nvidia-cuda-nvrtc / nvidia-cublas (found automatically). Under 8 minutes on an H100.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-results}
mkdir -p "$OUT"
STEPS=${GPU_CHECK_STEPS:-6}
log() { echo "[gpu_check $(date +%H:%M:%S)] $*"; }

# --- CUDA libraries ----------------------------------------------------------------------
libdirs=()
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64 /usr/lib/x86_64-linux-gnu; do
  [ -e "$d/libnvrtc.so.13" ] || [ -e "$d/libcublas.so.13" ] && libdirs+=("$d")
done
if command -v python3 >/dev/null; then
  py=$(python3 - <<'PY' 2>/dev/null
import os, glob
try:
    import nvidia
    for p in nvidia.__path__:
        for d in glob.glob(os.path.join(p, "*", "lib")) + glob.glob(os.path.join(p, "cu13", "lib")):
            if glob.glob(os.path.join(d, "libnvrtc.so*")) or glob.glob(os.path.join(d, "libcublas.so*")):
                print(d)
except Exception:
    pass
PY
)
  for d in $py; do libdirs+=("$d"); done
fi
for d in "${libdirs[@]}"; do LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; done
export LD_LIBRARY_PATH
log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"

# --- binaries ----------------------------------------------------------------------------
BIN=$(mktemp -d)
if [ -n "${ALIGNFLOW_PREBUILT:-}" ]; then
  for f in alignflow cuda_parity; do
    if [ -e "$ALIGNFLOW_PREBUILT/$f.gz" ]; then gzip -dc "$ALIGNFLOW_PREBUILT/$f.gz" > "$BIN/$f"; else cp "$ALIGNFLOW_PREBUILT/$f" "$BIN/$f"; fi
    chmod +x "$BIN/$f"
  done
else
  log "building with --features cuda"
  cargo build --release --features cuda 2>&1 | tail -3
  cp target/release/alignflow "$BIN/"
  t=$(cargo test --release -p kernels --features cuda --test cuda_parity --no-run --message-format=json 2>/dev/null \
      | python3 -c 'import sys,json
for l in sys.stdin:
    try: m=json.loads(l)
    except Exception: continue
    if m.get("profile",{}).get("test") and m.get("executable"): print(m["executable"])' | tail -1)
  cp "$t" "$BIN/cuda_parity"
fi
export ALIGNFLOW_CUDA_CACHE=${ALIGNFLOW_CUDA_CACHE:-$BIN/kernel-cache}

# --- 1. parity ---------------------------------------------------------------------------
log "parity tests"
timeout ${GPU_CHECK_PARITY_TIMEOUT:-150} "$BIN/cuda_parity" --test-threads 1 --nocapture > "$OUT/parity.log" 2>&1
parity_rc=$?
grep -E "^test |relative error|SKIPPED|panicked|test result" "$OUT/parity.log" | tail -120
log "parity exit code $parity_rc"

# --- 2. training step: alignflow, then PyTorch ---------------------------------------------
log "alignflow bench train --preset 1b"
timeout 150 "$BIN/alignflow" bench train --device cuda --preset 1b --steps "$STEPS" --warmup 2 --micro-batch "${GPU_CHECK_MICRO:-8}" --json \
  > "$OUT/train_alignflow.json" 2> "$OUT/train_alignflow.err"; echo "rc $?"; cat "$OUT/train_alignflow.json"; tail -3 "$OUT/train_alignflow.err"
for a in ${GPU_CHECK_ATTENTION:-}; do
  log "alignflow bench train --preset 1b, attention $a"
  ALIGNFLOW_CUDA_ATTENTION=$a timeout 150 "$BIN/alignflow" bench train --device cuda --preset 1b --steps "$STEPS" --warmup 2 --micro-batch "${GPU_CHECK_MICRO:-8}" --json \
    > "$OUT/train_attention_$a.json" 2> "$OUT/train_attention_$a.err"; echo "rc $?"; cat "$OUT/train_attention_$a.json"; tail -3 "$OUT/train_attention_$a.err"
done
for mb in ${GPU_CHECK_MICRO_EXTRA:-}; do
  log "alignflow bench train --preset 1b, micro-batch $mb"
  timeout 150 "$BIN/alignflow" bench train --device cuda --preset 1b --steps "$STEPS" --warmup 2 --micro-batch "$mb" --json \
    > "$OUT/train_micro$mb.json" 2> "$OUT/train_micro$mb.err"; echo "rc $?"; cat "$OUT/train_micro$mb.json"; tail -3 "$OUT/train_micro$mb.err"
done
if [ "${GPU_CHECK_TORCH:-1}" = 0 ]; then
  log "PyTorch peer skipped (GPU_CHECK_TORCH=0)"
elif python3 -c "import torch, transformers; assert torch.cuda.is_available()" 2>/dev/null; then
  log "PyTorch eager peer"
  timeout 150 python3 scripts/peers/bench_torch_train.py --preset 1b --device cuda --steps "$STEPS" --warmup 2 --micro-batch "${GPU_CHECK_MICRO:-8}" \
    > "$OUT/train_torch.json" 2> "$OUT/train_torch.err"; echo "rc $?"; cat "$OUT/train_torch.json"; tail -3 "$OUT/train_torch.err"
else
  log "PyTorch with CUDA not installed: no peer measurement"
fi

# --- 3. decoding ---------------------------------------------------------------------------
for b in ${GPU_CHECK_DECODE_BATCHES-1 64}; do
  log "alignflow bench generate batch $b"
  timeout 80 "$BIN/alignflow" bench generate --device cuda --model random:1b --batch $b --prompt-len 16 --new-tokens 128 --json \
    > "$OUT/generate_b$b.json" 2> "$OUT/generate_b$b.err"; echo "rc $?"; cat "$OUT/generate_b$b.json"; tail -3 "$OUT/generate_b$b.err"
done

# --- summary -------------------------------------------------------------------------------
python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
def load(n):
    try: return json.load(open(os.path.join(out, n)))
    except Exception: return None
a, t = load("train_alignflow.json"), load("train_torch.json")
print("\n=== summary ===")
if a: print(f"alignflow 1b train: {a['tokens_per_s']:.0f} tok/s, {a['tflops']:.0f} TFLOP/s, MFU {100*(a.get('mfu') or 0):.1f}%, {100*a['share_of_gemm_peak']:.0f}% of measured {a['gemm_peak_tflops']:.0f} TFLOP/s product peak, {a['peak_memory_gb']:.1f} GB")
if t: print(f"pytorch  1b train: {t['tokens_per_s']:.0f} tok/s ({t.get('attn','')}, torch {t.get('torch','')})")
if a and t: print(f"alignflow / pytorch: {a['tokens_per_s']/t['tokens_per_s']:.2f}x")
for b in (1, 64):
    g = load(f"generate_b{b}.json")
    if g: print(f"decode batch {b}: {g['tokens_per_s']:.0f} tok/s = {100*g['share_of_bound']:.0f}% of the {g['bandwidth_bound_tokens_per_s']:.0f} tok/s bandwidth bound")
PY
# --- bundle ---------------------------------------------------------------------------------
# One results.json (every benchmark's JSON object under its file name) and errors.txt (the
# non-empty stderr tails) instead of a file per run: remote GPU runners return few files.
# GPU_CHECK_BUNDLE=0 keeps the separate files.
if [ "${GPU_CHECK_BUNDLE:-1}" = 1 ]; then
python3 - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
res, errs = {}, []
for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    name = os.path.basename(f)[:-5]
    if name == "results":
        continue
    try:
        res[name] = json.load(open(f))
    except Exception as e:
        res[name] = {"unreadable": str(e)}
for f in sorted(glob.glob(os.path.join(out, "*.err"))):
    t = open(f, errors="replace").read()
    if t.strip():
        errs.append(f"== {os.path.basename(f)}\n{t[-4000:]}")
json.dump(res, open(os.path.join(out, "results.json"), "w"), indent=1)
if errs:
    open(os.path.join(out, "errors.txt"), "w").write("\n".join(errs))
for f in glob.glob(os.path.join(out, "*.err")) + glob.glob(os.path.join(out, "*.json")):
    if not f.endswith("results.json"):
        os.remove(f)
PY
fi
exit $parity_rc
