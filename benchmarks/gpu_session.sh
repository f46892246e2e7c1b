#!/usr/bin/env bash
# One device call for the GPU figures of issues 9 and 10: the training step, its data path and tokenize
# (train_step.py), batched evaluation (eval_planning.py), and, when its source is carried, the reference
# step for the side-by-side ratio. JSON and logs go to $OUT (default benchmarks/results).
#
#   device run:  bash benchmarks/gpu_session.sh            (carry .refjowa and .bench for the reference)
#
# The device image brings its own python3 and torch; what it lacks of this package's dependencies
# (pydantic, safetensors, gymnasium, ale-py, opencv, rliable) must be carried as wheels in .wheels/ and
# is installed from there without network. Each part has its own time limit so one slow part cannot
# take the whole call.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .wheels ]; then
    python3 -m pip install --quiet --no-index --find-links .wheels --no-deps .wheels/*.whl 2>&1 | tail -2
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$OUT/gpu.csv" 2>&1
run() {  # name, seconds, command...
    local name=$1 limit=$2
    shift 2
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "$name: exit $? after $SECONDS s" | tee -a "$OUT/summary.txt"
}
run train_step 300 python3 benchmarks/train_step.py --out "$OUT/train_step.json"
run eval_planning 150 python3 benchmarks/eval_planning.py --steps 50 --tag gpu
cp benchmarks/results/eval_planning_gpu.json "$OUT/" 2>/dev/null
if [ -d .refjowa/src ] && [ -f .bench/ref_jowa_train_step.py ]; then
    run reference 120 env REF_SRC=.refjowa/src PEAK_TFLOPS=989 python3 .bench/ref_jowa_train_step.py
fi
