#!/usr/bin/env bash
# Fetch the pure-Python peers that the GPU machine lacks into .whl/ (git-ignored), for
# gpu/run_gpu_checks.sh to install there: Liger-Kernel (benchmark peer), llama-models and
# rotary-embedding-torch (test oracles). Run here, on the CPU machine, before a GPU session:
#
#   bash gpu/fetch_wheels.sh
#   run(command="bash gpu/run_gpu_checks.sh", carry=[".whl"], timeout_s=240)
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    liger-kernel==0.8.5 llama-models==0.3.0 rotary-embedding-torch==0.9.1
ls .whl
