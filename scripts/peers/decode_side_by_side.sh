#!/usr/bin/env bash
# Batch-1 decoding: alignflow (f32 and bf16 weights) next to transformers, interleaved so all
# see the same machine load, REPEATS rounds, then one JSON object with every figure.
#   bash scripts/peers/decode_side_by_side.sh MODEL_DIR [ALIGNFLOW_BIN] [REPEATS]
# MODEL_DIR is a Hugging Face checkpoint both can read (e.g. SmolLM2-135M-Instruct imported
# with `alignflow import gguf`). Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:?usage: decode_side_by_side.sh MODEL_DIR [ALIGNFLOW_BIN] [REPEATS]}
BIN=${2:-target/release/alignflow}
REPEATS=${3:-3}
NEW=${NEW_TOKENS:-64}
load0=$(cut -d' ' -f1 /proc/loadavg)
rows=()
for _ in $(seq "$REPEATS"); do
  rows+=("$("$BIN" bench generate --model "$MODEL" --new-tokens "$NEW" --precision f32 --threads 2 --json)")
  rows+=("$("$BIN" bench generate --model "$MODEL" --new-tokens "$NEW" --precision bf16 --threads 2 --json)")
  rows+=("$(python3 scripts/peers/bench_hf_generate.py --model "$MODEL" --new-tokens "$NEW" --threads 2 2>/dev/null | tail -1)")
done
load1=$(cut -d' ' -f1 /proc/loadavg)
printf '%s\n' "${rows[@]}" | python3 -c '
import json, sys, statistics as st
rows = [json.loads(l) for l in sys.stdin if l.strip()]
f32 = [r for r in rows if r.get("precision") == "f32"]
bf = [r for r in rows if r.get("precision") == "bf16"]
hf = [r for r in rows if "peer" in r]
med = lambda rs, k: st.median(r[k] for r in rs)
print(json.dumps({"load_before": float(sys.argv[1]), "load_after": float(sys.argv[2]),
  "f32_tokens_per_s": [r["tokens_per_s"] for r in f32],
  "f32_share_of_bound": [r["share_of_bound"] for r in f32],
  "read_bandwidth_gb_s": [r["read_bandwidth_gb_s"] for r in f32 + bf],
  "bf16_tokens_per_s": [r["tokens_per_s"] for r in bf],
  "transformers_tokens_per_s": [r["tokens_per_s"] for r in hf],
  "f32_median_share_of_bound": med(f32, "share_of_bound"),
  "bf16_over_f32": med(bf, "tokens_per_s") / med(f32, "tokens_per_s"),
  "f32_over_transformers": med(f32, "tokens_per_s") / med(hf, "tokens_per_s")}))
' "$load0" "$load1"
