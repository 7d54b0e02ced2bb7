#!/usr/bin/env bash
# One-time set-up of what alignflow's tests and tools use besides cargo: Python packages from
# PyPI (pyarrow reads our Parquet files back to prove they are standard). Quiet and idempotent:
# a package already importable is not reinstalled. Failing to install is reported, not fatal:
# the tests that need the package then say they were skipped and why.
set -uo pipefail
need=()
python3 -c 'import pyarrow' 2>/dev/null || need+=("pyarrow")
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: pip install ${need[*]}" >&2
    python3 -m pip install --quiet --disable-pip-version-check "${need[@]}" >&2 \
        || echo "setup: could not install ${need[*]}; tests that need them will be skipped" >&2
fi
exit 0
