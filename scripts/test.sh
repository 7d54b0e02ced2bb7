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
# Bench targets are not built by the runs above; compile them (test profile, so the
# dependencies built for the tests are reused) so they cannot rot unnoticed.
cargo test --workspace --benches --no-run

# The CUDA backend: the `cuda` feature must build without CUDA installed, and its parity
# tests report that they were skipped (no GPU). Where the Python NVIDIA wheels are present
# (torch pulls them in), libnvrtc is put on the library path so the kernels are compiled too.
nvlib=$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null || true)
if [ -n "$nvlib" ] && [ -e "$nvlib/libnvrtc.so.13" ]; then
    export LD_LIBRARY_PATH="$nvlib:${LD_LIBRARY_PATH:-}"
fi
cargo build --features cuda
if command -v cargo-nextest >/dev/null 2>&1; then
    cargo nextest run -p kernels --features cuda --test cuda_parity --no-fail-fast --no-capture
else
    cargo test -p kernels --features cuda --test cuda_parity --no-fail-fast -- --nocapture
fi
