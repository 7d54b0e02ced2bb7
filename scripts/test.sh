#!/usr/bin/env bash
# The project's test command (README, and .ci/run runs exactly this).
# Installs what the tests need that cargo does not (Python packages used to cross-check
# Parquet files and to build small fixtures), then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
if command -v cargo-nextest >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
else
    cargo test --workspace --no-fail-fast "$@"
fi
