#!/usr/bin/env bash
# alignflow's CPU training step next to PyTorch eager, interleaved so both see the same machine
# load: for each preset, REPEATS rounds of (alignflow, PyTorch), then the medians and ratio.
#   bash scripts/peers/side_by_side.sh [ALIGNFLOW_BIN] [REPEATS]
# Needs torch + transformers (scripts/setup.sh installs them). Prints one JSON object per
# preset. Run it on an otherwise idle machine; `uptime` is recorded before and after.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/release/alignflow}
REPEATS=${2:-3}
STEPS=${STEPS:-30}
for preset in ${PRESETS:-mini small}; do
  load0=$(cut -d' ' -f1 /proc/loadavg)
  af=(); pt=(); peak=()
  for _ in $(seq "$REPEATS"); do
    a=$("$BIN" bench train --preset "$preset" --steps "$STEPS" --warmup 3 --threads 2 --json)
    p=$(python3 scripts/peers/bench_torch_train.py --preset "$preset" --steps "$STEPS" --warmup 3 --threads 2)
    af+=("$(echo "$a" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_s"])')")
    peak+=("$(echo "$a" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["gemm_peak_gflops"], d["gflops"])')")
    pt+=("$(echo "$p" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_s"])')")
  done
  load1=$(cut -d' ' -f1 /proc/loadavg)
  python3 - "$preset" "$load0" "$load1" "${af[*]}" "${pt[*]}" "${peak[*]}" <<'PY'
import json, sys, statistics as st
preset, l0, l1, af, pt, peak = sys.argv[1:]
af = [float(x) for x in af.split()]; pt = [float(x) for x in pt.split()]
pk = [float(x) for x in peak.split()]
peaks, gfl = pk[0::2], pk[1::2]
print(json.dumps({"preset": preset, "load_before": float(l0), "load_after": float(l1),
    "alignflow_tokens_per_s": af, "pytorch_tokens_per_s": pt,
    "alignflow_median": st.median(af), "pytorch_median": st.median(pt),
    "ratio": st.median(af) / st.median(pt),
    "share_of_gemm_peak": [g / p for g, p in zip(gfl, peaks)]}))
PY
done
