#!/usr/bin/env bash
# Fetches the wheels bench/gpu_wheels.txt lists for the GPU machine (Python 3.12, x86-64
# manylinux) into .whl/ at the repository root. Run here, where PyPI is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
grep -v '^#' bench/gpu_wheels.txt | while read -r req; do
    [ -n "$req" ] || continue
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .whl "$req"
done
ls -l .whl
