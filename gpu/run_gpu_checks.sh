#!/usr/bin/env bash
# One-shot GPU checks for the Triton kernel (issue 5), sized for a lent H100: < 200 s wall.
#
#   1. versions (GPU, driver, torch, triton, transformers, liger)          -> $OUT/env.txt
#   2. tests/test_triton.py on CUDA (fp32/fp16/bf16, compiled kernels,
#      torch.compile fullgraph fwd+bwd, > 2**31 elements)       <= 75 s   -> $OUT/pytest_triton.log
#   3. tests/test_backends.py tests/test_compile.py              <= 30 s   -> $OUT/pytest_rest.log
#   4. benchmarks/bench_triton.py: prefill/decode/training bf16, then prefill fp32, fwd and
#      fwd+bwd, vs copy_, torch.compile, HF, Liger; then a small tile sweep (prefill
#      bf16, CUDA graphs); nothing starts after 65 s    <= 90 s   -> $OUT/bench_triton.{log,json}
#
# Every step runs under `timeout` and the script goes on past failures; $OUT/summary.txt
# records each step's exit status and duration, and the log ends with a compact table.
# Wheels in .whl/ (carried, git-ignored; fetch them here with gpu/fetch_wheels.sh) are
# installed to /tmp/site first: liger-kernel, llama-models, rotary-embedding-torch.
#
# Lead's call:  run(command="bash gpu/run_gpu_checks.sh", carry=[".whl"], timeout_s=240)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET
PY=${PY:-python3}
T0=$(date +%s)
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

note() { echo "[$(($(date +%s) - T0))s] $*" | tee -a "$SUMMARY"; }
step() {  # step NAME LIMIT_S LOG CMD...
    local name=$1 limit=$2 log=$3 t rc
    shift 3
    t=$(date +%s)
    timeout --kill-after=5 "$limit" "$@" >"$log" 2>&1
    rc=$?
    note "$name: rc=$rc in $(($(date +%s) - t))s (limit ${limit}s)$([ $rc = 124 ] && echo ' TIMED OUT')"
}

if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl >"$OUT/pip.log" 2>&1 && note "wheels installed: $(ls .whl | tr '\n' ' ')" \
        || note "wheel install FAILED (see pip.log)"
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1
    $PY - <<'EOF'
import importlib, platform, torch, triton
print("python", platform.python_version(), "| torch", torch.__version__, "| triton", triton.__version__)
print("cuda", torch.version.cuda, "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for m in ("transformers", "liger_kernel", "hypothesis", "xdist"):
    try:
        importlib.import_module(m)
        print(m, "present")
    except Exception as e:
        print(m, "MISSING", type(e).__name__, e)
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt" | tee -a "$SUMMARY"

XDIST=""
$PY -c "import xdist" 2>/dev/null && XDIST="-n 8"  # workers share Triton's compile cache
step "pytest tests/test_triton.py (CUDA)" 75 "$OUT/pytest_triton.log" \
    $PY -m pytest tests/test_triton.py -q -p no:cacheprovider $XDIST --durations=8
step "pytest tests/test_backends.py tests/test_compile.py" 30 "$OUT/pytest_rest.log" \
    $PY -m pytest tests/test_backends.py tests/test_compile.py -q -p no:cacheprovider $XDIST
step "benchmark" 90 "$OUT/bench_triton.log" \
    $PY benchmarks/bench_triton.py --sweep --budget-s 65 --out "$OUT/bench_triton.json"

{
    echo "== pytest tests/test_triton.py"
    grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest_triton.log" | tail -n 12
    echo "== pytest tests/test_backends.py tests/test_compile.py"
    grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/pytest_rest.log" | tail -n 12
    echo "== benchmark"
    grep -E "^1 GiB" "$OUT/bench_triton.log"
    sed -n '/^== summary/,$p' "$OUT/bench_triton.log"
} | tee -a "$SUMMARY"
note "done in $(($(date +%s) - T0))s; files: $(ls "$OUT" | tr '\n' ' ')"
exit 0
