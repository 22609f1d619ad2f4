#!/usr/bin/env bash
# FlashAttention GPU check, from the source tree (no install): the CUDA tests, the kernel benchmark
# (scripts/flash_bench.py: flash_triton vs SDPA FlashAttention-2 / cuDNN / compiled FlexAttention),
# then the project benchmark (attnlab bench) when it exists. Each stage is time-boxed and a failing
# stage does not stop the next; the benchmark table is printed last.
#
#   scripts/gpu_check.sh OUTDIR
#
# Writes OUTDIR/gpu_check.log, tests.log, flash_bench.json, flash_bench.txt and OUTDIR/bench/.
# Environment: PYTHON (default python3), TEST_TIMEOUT, BENCH_TIMEOUT, FLEX_BUDGET, PROJECT_BENCH_TIMEOUT (seconds).
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUTDIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

echo "== 1. CUDA tests (CPU ones run in CI)"
XDIST=""
$PY -c "import xdist" 2>/dev/null && XDIST="-n 8"
start=$SECONDS
timeout "${TEST_TIMEOUT:-150}" $PY -m pytest -o addopts= -q -p no:cacheprovider $XDIST \
    tests/backends/test_backend_convention.py \
    tests/backends/test_flash_triton.py tests/backends/test_flash_torch.py tests/implementations/test_flash_impls.py \
    tests/backends/test_flash_decode.py tests/backends/test_flex.py tests/backends/test_paged_triton.py \
    -k "cuda or convention" --deselect tests/backends/test_flash_triton.py::test_interpreter_suite \
    --deselect tests/backends/test_flash_decode.py::test_interpreter_suite \
    --deselect tests/backends/test_paged_triton.py::test_interpreter_suite \
    >"$OUT/tests.log" 2>&1
echo "tests: exit $? after $((SECONDS - start)) s"
tail -n 15 "$OUT/tests.log"

echo "== 2. kernel benchmark"
start=$SECONDS
timeout "${BENCH_TIMEOUT:-260}" $PY scripts/flash_bench.py --tune --out "$OUT" --flex-budget "${FLEX_BUDGET:-170}"
echo "flash_bench: exit $? after $((SECONDS - start)) s"

echo "== 3. project benchmark"
if [ -f src/attnlab/cli/bench.py ]; then
    start=$SECONDS
    timeout "${PROJECT_BENCH_TIMEOUT:-80}" $PY -c "import sys; from attnlab.cli import main; sys.exit(main(sys.argv[1:]))" \
        bench --preset notebook --device cuda --mode both --out "$OUT/bench" || true
    echo "attnlab bench: done after $((SECONDS - start)) s"
else
    echo "no attnlab bench command in this tree"
fi

echo "== kernel benchmark table"
cat "$OUT/flash_bench.txt" 2>/dev/null || echo "no table (benchmark failed or timed out; see above)"
