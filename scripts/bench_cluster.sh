#!/usr/bin/env bash
# Scaling of a cluster run on one machine (BENCHMARKS-cluster.md): the same pipeline
# (world -> tokenizer -> tokenize -> pretrain (data-parallel sft) -> row-wise eval) as
#   A  1 process  x 1 worker   (RAYON_NUM_THREADS=1)
#   B  1 process  x 2 workers  (RAYON_NUM_THREADS=2)
#   C  2 processes x 1 worker  (RAYON_NUM_THREADS=1 each, loopback)
#   D  2 processes x 2 workers (RAYON_NUM_THREADS=2 each, loopback; oversubscribed on 2 cores)
# each on a fresh workspace (REPEAT=n rounds, interleaved); prints per-stage seconds from
# `run --json` of process 0 and the CPU seconds of all processes, then checks that the tables
# and weights of every configuration equal A's byte for byte.
# Usage: [REPEAT=n] scripts/bench_cluster.sh [BINARY] [OUTDIR]
set -euo pipefail
BIN=${1:-target/release/alignflow}
BIN=$(realpath "$BIN")
OUT=${2:-$(mktemp -d)}
mkdir -p "$OUT"
cd "$OUT"
cat > bench.toml <<'TOML'
[pipeline]
name = "cluster_bench"
seed = 23

[stages.world]
kind = "assistant_world"
[stages.world.params]
pretrain = 3000
sft = 16
rl_prompts = 0
preference_prompts = 0
eval = 64
eval_borderline = 0
gatt_dialogues = 0
eval_dialogues = 0

[stages.bpe]
kind = "train_tokenizer"
inputs = { text = "world.pretrain" }
params = { vocab_size = 600, column = "text" }

[stages.pretrain_tokens]
kind = "tokenize"
inputs = { table = "world.pretrain", tokenizer = "bpe.tokenizer" }

[stages.pretrain]
kind = "sft"
inputs = { data = "pretrain_tokens.tokens", tokenizer = "bpe.tokenizer" }
params = { mode = "pretrain", hidden_size = 128, layers = 4, heads = 4, kv_heads = 2, intermediate_size = 344, max_seq_len = 256, seq_len = 128, batch_size = 16, shards = 4, max_steps = 30, lr = 3e-3, warmup_steps = 3 }

[stages.eval_pretrain]
kind = "eval"
inputs = { model = "pretrain.model", prompts = "world.eval" }
params = { samples = 1, max_new_tokens = 24 }
TOML
printf '127.0.0.1:24101\n127.0.0.1:24102\n' > hosts
stages() {
  python3 -c '
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(sys.argv[2], "total %.2f" % r["seconds"], " ".join("%s %.2f" % (s["name"], s["seconds"]) for s in r["stages"]))
' "$1" "$2"
}
one() { # name workers threads
  rm -rf "ws_$1"
  RAYON_NUM_THREADS=$3 /usr/bin/time -f "%U %S" -o "$1.cpu" "$BIN" run bench.toml --workspace "ws_$1" --workers "$2" --json > "$1.json" 2> "$1.err"
  stages "$1.json" "$1"
  echo "$1 cpu_seconds(user+sys, all processes) $(awk '{s+=$1+$2} END {printf "%.1f", s}' "$1.cpu")"
}
two() { # name workers threads
  rm -rf "ws_$1"
  RAYON_NUM_THREADS=$3 /usr/bin/time -f "%U %S" -o "$1.p1.cpu" "$BIN" run bench.toml --workspace "ws_$1" --workers "$2" --processes 2 --process-id 1 --hostfile hosts --json > "$1.p1.json" 2> "$1.p1.err" &
  local p1=$!
  RAYON_NUM_THREADS=$3 /usr/bin/time -f "%U %S" -o "$1.cpu" "$BIN" run bench.toml --workspace "ws_$1" --workers "$2" --processes 2 --process-id 0 --hostfile hosts --json > "$1.json" 2> "$1.err"
  wait $p1
  stages "$1.json" "$1"
  echo "$1 cpu_seconds(user+sys, all processes) $(cat "$1.cpu" "$1.p1.cpu" | awk '{s+=$1+$2} END {printf "%.1f", s}')"
}
for rep in $(seq 1 "${REPEAT:-1}"); do
  echo "round $rep, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  one A_1proc_1w 1 1
  two C_2proc_1w 1 1
  one B_1proc_2w 2 2
  two D_2proc_2w 2 2
  echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
done
python3 - <<'PY'
import json, filecmp
def fp(name):
    r = json.loads(open(name + ".json").read().strip().splitlines()[-1])
    return {s["name"]: s["fingerprint"] for s in r["stages"]}
base = fp("A_1proc_1w")
for run in ["B_1proc_2w", "C_2proc_1w", "D_2proc_2w"]:
    f = fp(run)
    for stage, out, file in [("pretrain", "model", "model.safetensors"), ("pretrain_tokens", "tokens", "table.parquet"), ("eval_pretrain", "results", "table.parquet")]:
        a = f"ws_A_1proc_1w/artifacts/{base[stage]}/{out}/{file}"
        b = f"ws_{run}/artifacts/{f[stage]}/{out}/{file}"
        print(run, stage, "identical to A" if filecmp.cmp(a, b, shallow=False) else "DIFFERS from A")
PY
