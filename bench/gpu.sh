#!/usr/bin/env bash
# One-call GPU check of the speed targets: exactness tests first, then every benchmark, then one table.
#
#   bash bench/gpu.sh                          # on a CUDA machine; results in bench/results/
#   RESULTS_DIR=/some/dir bash bench/gpu.sh    # gpu.json (every part's numbers + the target table) and gpu.log there
#   DEVICE=cpu bash bench/gpu.sh               # smoke run of the script itself on CPU (tiny shapes, no compile)
#
# Environment: PYTHON (default python3, or .venv/bin/python when it exists), BUDGET_S (wall-clock
# budget for the parts, default 360 s: each part's timeout is cut to what is left; the whole script
# ends within about BUDGET_S + 30 s), COMPILE (1: run
# the compiled d1024 part, the default on CUDA). A part that fails or times out is reported and the
# rest still runs; the table marks what did not run.
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
RESULTS_DIR=${RESULTS_DIR:-bench/results}
mkdir -p "$RESULTS_DIR"
PARTS=$(mktemp -d)
LOG="$RESULTS_DIR/gpu.log"
DEVICE=${DEVICE:-cuda}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
BUDGET_S=${BUDGET_S:-360}
START=$(date +%s)
if [ "$DEVICE" = cpu ]; then COMPILE=${COMPILE:-0}; else COMPILE=${COMPILE:-1}; fi

exec > >(tee "$LOG") 2>&1
TEE_PID=$!

# The table is written however the script ends (a part's timeout, a signal): every part's own
# table is in the log as it finishes, and gpu.json gathers what finished.
finish() {
    trap - EXIT
    echo "=== targets ($(( $(date +%s) - START ))s in)"
    $PYTHON bench/gpu_report.py "$PARTS" "$RESULTS_DIR/gpu.json"
    echo "one circuit on an 8-layer d1024 model: not run by this script (needs a trained checkpoint and a corpus)"
    echo "gpu.sh done in $(( $(date +%s) - START ))s"
    rm -rf "$PARTS"
    exec 1>&- 2>&-
    wait "$TEE_PID" 2>/dev/null
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

# part NAME CAP_S CMD...: run CMD with timeout min(CAP_S, time left - 20 s); never stops the script.
part() {
    local name=$1 cap=$2; shift 2
    local t; t=$(left); t=$(( t - 20 )); [ "$t" -gt "$cap" ] && t=$cap
    if [ "$t" -lt 10 ]; then echo "=== $name: NOT RUN (time budget spent)"; return; fi
    echo "=== $name (timeout ${t}s, $(( $(date +%s) - START ))s in)"
    timeout --signal=INT --kill-after=10 "$t" "$@"
    local rc=$?
    if [ $rc -ne 0 ]; then echo "=== $name: FAILED (exit $rc$([ $rc -eq 124 ] && echo ', timed out'))"; fi
}

echo "gpu.sh: device $DEVICE, python $PYTHON, budget ${BUDGET_S}s, results in $RESULTS_DIR, git $(git rev-parse --short HEAD 2>/dev/null)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$PYTHON -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"

# Shapes: the issue's presets on the GPU; on CPU a tiny config so the script itself can be checked.
if [ "$DEVICE" = cpu ]; then
    SHAPE_D512=(--config configs/tiny.yaml); SHAPE_D1024=(--config configs/tiny.yaml)
    TS=(--repeats 2 --warmup 1); REP=(--repeats 2)
else
    SHAPE_D512=(--preset d512); SHAPE_D1024=(--preset d1024)
    TS=(--repeats 10 --warmup 3); REP=(--repeats 10)
fi
EAGER=plain,nosink,dense,dense_sinkmask,sparse,sparse_ref,recipe,recipe_ref

# 1. Exactness on this device first: a wrong kernel shows before any timing.
echo "=== exactness tests (timeout 150s)"
timeout 150 $PYTHON -m pytest -q -p no:cacheprovider tests/test_sink_attention.py tests/test_fast_topk.py tests/test_topk_triton.py -rs 2>&1 \
    | tee "$PARTS/tests.out"
rc=$?
{ echo "rc=$rc"; tail -n 1 "$PARTS/tests.out"; } > "$PARTS/tests.txt"
[ $rc -ne 0 ] && echo "=== exactness tests: FAILED (exit $rc); timings below measure code that is not exact"

# The parts in order of importance: what the time budget cuts is the tail.
# Default methods: weight top-k by torch.topk's threshold, AbsTopK by the Triton kernel; the
# "alternative methods" runs use bisection for the weight top-k and the torch.topk threshold for AbsTopK.
d512() { SH=("${SHAPE_D512[@]}"); }
d1024() { SH=("${SHAPE_D1024[@]}"); }

# 2. Training steps, eager, every variant interleaved.
d512; part "train_step d512 eager" 90 $PYTHON bench/train_step.py --device "$DEVICE" "${SH[@]}" "${TS[@]}" \
    --variants $EAGER --out "$PARTS/train_step_d512.json"
d1024; part "train_step d1024 eager" 120 $PYTHON bench/train_step.py --device "$DEVICE" "${SH[@]}" "${TS[@]}" \
    --variants plain,nosink,dense,dense_sinkmask,sparse,recipe --out "$PARTS/train_step_d1024.json"

# 3. The top-k sweep and AbsTopK alone, every method (which one is fastest on this GPU).
d1024; part "sparsify d1024" 45 $PYTHON bench/sparsify.py --device "$DEVICE" "${SH[@]}" "${REP[@]}" \
    --out "$PARTS/sparsify_d1024.json"
d1024; part "abstopk d1024" 45 $PYTHON bench/abstopk.py --device "$DEVICE" "${SH[@]}" "${REP[@]}" \
    --out "$PARTS/abstopk_d1024.json"

# 4. Where the sparse and recipe steps spend their time (torch.profiler, 3 steps each), d512.
d512; part "profile d512" 60 $PYTHON bench/train_step.py --device "$DEVICE" "${SH[@]}" --repeats 2 --warmup 2 \
    --variants dense,sparse,recipe --profile sparse,recipe --out "$PARTS/profile_d512.json"

# 5. Compiled d1024 (MFU target; whether the whole recipe compiles). Compilation is most of its time.
if [ "$COMPILE" = 1 ]; then
    # in small parts, so that what compiles in time is kept: dense and plain first (the MFU target),
    # then the recipe (does it compile), then nosink and sparse (the other ratios compiled)
    d1024; part "train_step d1024 compiled dense, plain" 120 $PYTHON bench/train_step.py --device "$DEVICE" \
        "${SH[@]}" "${TS[@]}" --compile --variants dense,plain --out "$PARTS/train_step_d1024_compiled.json"
    d1024; part "train_step d1024 compiled recipe" 100 $PYTHON bench/train_step.py --device "$DEVICE" "${SH[@]}" \
        "${TS[@]}" --compile --variants dense,recipe --out "$PARTS/train_step_d1024_compiled_recipe.json"
    d1024; part "train_step d1024 compiled nosink, sparse" 100 $PYTHON bench/train_step.py --device "$DEVICE" \
        "${SH[@]}" "${TS[@]}" --compile --variants dense,nosink,sparse \
        --out "$PARTS/train_step_d1024_compiled_more.json"
else
    echo "=== train_step d1024 compiled: NOT RUN (COMPILE=$COMPILE)"
fi

# 6. What is left: the alternative methods in whole steps, the d512 microbenchmarks.
for p in d512 d1024; do
    $p; part "train_step $p eager, alternative methods" 60 $PYTHON bench/train_step.py --device "$DEVICE" \
        "${SH[@]}" "${TS[@]}" --variants dense,sparse,recipe --topk-method bisect --abstopk-method topk \
        --out "$PARTS/train_step_${p}_alt.json"
done
d512; part "sparsify d512" 30 $PYTHON bench/sparsify.py --device "$DEVICE" "${SH[@]}" "${REP[@]}" \
    --out "$PARTS/sparsify_d512.json"
d512; part "abstopk d512" 30 $PYTHON bench/abstopk.py --device "$DEVICE" "${SH[@]}" "${REP[@]}" \
    --out "$PARTS/abstopk_d512.json"

# 7. One table of the targets: finish(), on exit.
