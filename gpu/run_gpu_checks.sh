#!/usr/bin/env bash
# One-shot GPU checks for the Triton backend (issue 5), sized for a lent H100: < 220 s wall.
# Everything goes through the public API: ropekit.apply_rope[_qk](..., backend="triton"[, inplace=True])
# and ropekit.RotaryEmbedding(config, backend="triton").
#
#   1. versions (GPU, driver, torch, triton, transformers, liger)          -> $OUT/env.txt
#   2. smoke: apply_rope_qk (offset, cu_seqlens; also inplace=True), RotaryEmbedding and a
#      backward on CUDA, max error vs float64 rotation matrices <= 20 s -> $OUT/smoke.log
#   3. tests/test_triton.py on CUDA (fp32/fp16/bf16/fp64, compiled kernels,
#      torch.compile fullgraph fwd+bwd, > 2**31 elements)       <= 75 s   -> $OUT/pytest_triton.log
#   4. tests/test_backends.py tests/test_compile.py              <= 30 s   -> $OUT/pytest_rest.log
#   5. benchmarks/bench_triton.py: prefill/decode/training bf16, then prefill fp32, fwd and
#      fwd+bwd: apply_rope_qk (rows by offset / [s, n] tables), apply_rope_qk inplace=True (fwd),
#      RotaryEmbedding, vs copy_, torch.compile, HF, Liger; then a small tile sweep
#      (prefill bf16, CUDA graphs); nothing starts after 65 s
#                                                   <= 90 s   -> $OUT/bench_triton.{log,json}
#
# Every step runs under `timeout` and the script goes on past failures; $OUT/summary.txt
# records each step's exit status and duration, and the log ends with a compact table.
# Wheels in .whl/ (carried, git-ignored; fetch them here with gpu/fetch_wheels.sh) are
# installed to /tmp/site first: liger-kernel, llama-models, rotary-embedding-torch.
#
# Lead's call:  run(command="bash gpu/run_gpu_checks.sh", carry=[".whl"], timeout_s=260)
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

step "smoke (public API on CUDA)" 20 "$OUT/smoke.log" $PY - <<'EOF'
import torch, ropekit
from ropekit import spec
dev, d = "cuda", 128
freqs = ropekit.inv_freq(d)
angle = torch.arange(64, dtype=torch.float64)[:, None] * freqs
cos, sin = angle.cos().float().to(dev), angle.sin().float().to(dev)  # [R, n] rows 0..63
def err(y, x, pos):  # x, y [b, h, s, d]: max |y - exact| (float64 rotation matrices)
    want = torch.stack([spec.apply(xi.double().cpu(), pos, freqs) for xi in x])
    return float((y.double().cpu() - want).abs().max())
q = torch.randn(2, 16, 8, d, device=dev, dtype=torch.bfloat16).transpose(1, 2)  # bshd storage
k = torch.randn(2, 16, 2, d, device=dev, dtype=torch.bfloat16).transpose(1, 2)
pos = torch.arange(5, 21)
yq, yk = ropekit.apply_rope_qk(q, k, cos, sin, offset=5, backend="triton")
print("apply_rope_qk offset     bf16 max err", err(yq, q, pos), err(yk, k, pos))
q2, k2 = q.clone(), k.clone()
ropekit.apply_rope_qk(q2, k2, cos, sin, offset=5, backend="triton", inplace=True)
print("apply_rope_qk inplace  bf16 max err", err(q2, q, pos), err(k2, k, pos))
qt, kt = q[0].transpose(0, 1), k[0].transpose(0, 1)  # packed [t, h, d], t = 16
cu = torch.tensor([0, 10, 16], device=dev)
yt, _ = ropekit.apply_rope_qk(qt, kt, cos, sin, cu_seqlens=cu, layout="thd", backend="triton")
tpos = torch.cat([torch.arange(10), torch.arange(6)])
print("apply_rope_qk cu_seqlens bf16 max err", err(yt.transpose(0, 1)[None], q[:1], tpos))
rope = ropekit.RotaryEmbedding(ropekit.RopeConfig(head_dim=d), backend="triton").to(dev)
mq, mk = rope(q, k, offset=5)
print("RotaryEmbedding          bf16 max err", err(mq, q, pos), err(mk, k, pos))
x = q.float().detach().requires_grad_()
ropekit.apply_rope(x, cos[5:21], sin[5:21], backend="triton").sum().backward()
print("backward                 fp32 max err", err(x.grad, torch.ones_like(x), -pos))
torch.cuda.synchronize()
print("smoke ok")
EOF

XDIST=""
$PY -c "import xdist" 2>/dev/null && XDIST="-n 8"  # workers share Triton's compile cache
step "pytest tests/test_triton.py (CUDA)" 75 "$OUT/pytest_triton.log" \
    $PY -m pytest tests/test_triton.py -q -p no:cacheprovider $XDIST --durations=8
step "pytest tests/test_backends.py tests/test_compile.py" 30 "$OUT/pytest_rest.log" \
    $PY -m pytest tests/test_backends.py tests/test_compile.py -q -p no:cacheprovider $XDIST
step "benchmark" 90 "$OUT/bench_triton.log" \
    $PY benchmarks/bench_triton.py --sweep --budget-s 65 --out "$OUT/bench_triton.json"

{
    echo "== smoke"
    tail -n 7 "$OUT/smoke.log"
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
